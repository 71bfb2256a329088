//! The `ovs_flow` multicast group: the kernel tells its listeners about every datapath
//! flow created, changed and deleted, a deleted flow with its final statistics. While
//! anyone listens the kernel builds these messages for every flow operation of
//! ovs-vswitchd (genl_has_listeners); nobody needs to ask for them.
//!
//! The socket is read without blocking, by the listener thread between scrapes and by the
//! scrape itself before each dump chunk, always under the accounting lock, so
//! notifications are applied in the order the kernel sent them.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use neli::consts::socket::{Msg, NlFamily};
use neli::socket::NlSocket;
use neli::utils::Groups;

use super::parse::{self, Flow};
use crate::netlink::wire::{self, Control};

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

/// Keeps the socket open while the listener waits on it, even if the monitor is replaced
/// meanwhile.
pub struct Waiter(Arc<NlSocket>);

impl Waiter {
    /// Waits until something can be read, or `timeout`.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
    }
}

pub struct Monitor {
    sock: Arc<NlSocket>,
    /// The ovs_flow family's id when the group was joined: a reloaded module gets new ids.
    pub family: u16,
    buf: Vec<u8>,
}

impl Monitor {
    /// Joins multicast group `group` of the ovs_flow family `family`.
    pub fn open(family: u16, group: u32) -> std::io::Result<Monitor> {
        let sock = NlSocket::connect(NlFamily::Generic, None, Groups::empty())?;
        crate::netlink::set_recv_buffer(&sock, RCVBUF);
        sock.add_mcast_membership(Groups::new_groups(&[group]))?;
        Ok(Monitor {
            sock: Arc::new(sock),
            family,
            buf: vec![0; 64 * 1024],
        })
    }

    /// A handle to wait on without holding the monitor (and the lock around it).
    pub fn waiter(&self) -> Waiter {
        Waiter(self.sock.clone())
    }

    /// Reads what is queued, without waiting, hands each flow notification to `on` and
    /// counts it in `d`. Fails only when the socket is broken.
    pub fn drain(&mut self, d: &mut Drained, on: &mut dyn FnMut(&Flow)) -> std::io::Result<()> {
        for _ in 0..MAX_BATCH {
            let n = match self.sock.recv(&mut self.buf[..], Msg::DONTWAIT) {
                Ok((n, _)) => n,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    d.overruns += 1;
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let datagram = self.buf.get(..n).unwrap_or_default();
            for m in wire::messages(parse::FAMILY, datagram) {
                let flow = m
                    .and_then(|m| wire::control(parse::FAMILY, m))
                    .and_then(|c| match c {
                        Control::Data(m) if m.ty == self.family => {
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
        }
        Ok(())
    }
}
