//! The `ovs_flow` multicast group: the kernel tells its listeners about every datapath
//! flow created, changed and deleted, a deleted flow with its final statistics. While
//! anyone listens the kernel builds these messages for every flow operation of
//! ovs-vswitchd (genl_has_listeners); nobody needs to ask for them.
//!
//! The socket is read without blocking, by the listener thread between scrapes and by the
//! scrape itself before each dump chunk, always under the accounting lock, so
//! notifications are applied in the order the kernel sent them.

use super::parse::{self, Flow};
use crate::netlink::subscribe::{Spec, Subscription, Waiter};
use crate::netlink::wire::{self, Control};
use crate::netlink::{Protocol, Transport, TransportError};

/// The group's name in the ovs_flow family (OVS_FLOW_MCGROUP).
pub const GROUP: &str = "ovs_flow";

/// Room for bursts of notifications (one message each, a few hundred bytes) while a
/// scrape holds the lock; beyond it the kernel drops them and says ENOBUFS.
const RCVBUF: i32 = 16 << 20;
/// Datagrams read per call at most, so one call never holds the lock for long.
const MAX_BATCH: usize = 4096;

/// What the monitor has read since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub new: u64,
    pub set: u64,
    pub del: u64,
    /// ENOBUFS: the socket overflowed and notifications were lost.
    pub overruns: u64,
    /// Messages that could not be decoded.
    pub errors: u64,
}

pub struct Monitor {
    sub: Subscription,
    /// The ovs_flow family's id when the group was joined: a reloaded module gets new ids.
    pub family: u16,
}

impl Monitor {
    /// Joins multicast group `group` of the ovs_flow family `family` (recorded as
    /// `ovs_flow_notifications.stream` when the transport records).
    pub fn open(t: &dyn Transport, family: u16, group: u32) -> Result<Monitor, TransportError> {
        let sub = t.subscribe(Spec {
            protocol: Protocol::Generic,
            name: "ovs_flow_notifications",
            groups: vec![group],
            rcvbuf: RCVBUF,
        })?;
        Ok(Monitor { sub, family })
    }

    /// A handle to wait on without holding the monitor (and the lock around it).
    pub fn waiter(&self) -> Waiter {
        self.sub.waiter()
    }

    /// Reads what is queued, without waiting, hands each flow notification to `on` and
    /// counts it in `d`. Fails only when the socket is broken.
    pub fn drain(&mut self, d: &mut Drained, on: &mut dyn FnMut(&Flow)) -> std::io::Result<()> {
        let overruns = self.sub.received().overruns;
        let family = self.family;
        let result = self.sub.drain(MAX_BATCH, &mut |datagram| {
            for m in wire::messages(parse::FAMILY, datagram) {
                let flow = m
                    .and_then(|m| wire::control(parse::FAMILY, m))
                    .and_then(|c| match c {
                        Control::Data(m) if m.ty == family => {
                            parse::parse_flow(m.payload).map(Some)
                        }
                        _ => Ok(None),
                    });
                match flow {
                    Ok(Some(f)) => {
                        match f.cmd {
                            parse::OVS_FLOW_CMD_NEW => d.new += 1,
                            parse::OVS_FLOW_CMD_SET => d.set += 1,
                            parse::OVS_FLOW_CMD_DEL => d.del += 1,
                            _ => continue,
                        }
                        on(&f);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        d.errors += 1;
                        tracing::debug!(error = %e, "undecodable ovs_flow notification");
                    }
                }
            }
        });
        d.overruns += self.sub.received().overruns - overruns;
        result
    }
}
