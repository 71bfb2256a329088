//! The link list: one rtnetlink `RTM_GETLINK` dump, read once per scrape for every
//! collector that needs it (`interfaces`, `offload`), and single-link lookups.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use crate::collectors::CollectError;
use crate::metrics;
use crate::netlink::wire::{self, Attr, DecodeError, Walk};
use crate::netlink::{self, Protocol, Request, Transport};

const FAMILY: &str = "rtnetlink";
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const IFINFOMSG_LEN: usize = 16;
const IFLA_ADDRESS: u16 = 1;
const IFLA_STATS: u16 = 7;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_OPERSTATE: u16 = 16;
const IFLA_LINKINFO: u16 = 18;
const IFLA_STATS64: u16 = 23;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_INFO_KIND: u16 = 1;

/// The counters of `struct rtnl_link_stats64` that the exporter uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    pub rx_missed: u64,
    pub rx_nohandler: u64,
}

impl Stats {
    /// Decodes rtnl_link_stats64 (u64 fields) or the legacy rtnl_link_stats (u32 fields).
    /// Older kernels send shorter structs: absent trailing fields read as zero.
    pub fn decode(payload: &[u8], width: usize) -> Stats {
        let field = |i: usize| -> u64 {
            let at = i * width;
            match width {
                8 => wire::read_u64_ne(payload, at).unwrap_or(0),
                _ => wire::read_u32_ne(payload, at).map_or(0, u64::from),
            }
        };
        Stats {
            rx_packets: field(0),
            tx_packets: field(1),
            rx_bytes: field(2),
            tx_bytes: field(3),
            rx_errors: field(4),
            tx_errors: field(5),
            rx_dropped: field(6),
            tx_dropped: field(7),
            rx_missed: field(15),
            rx_nohandler: field(23),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Link {
    pub index: i32,
    pub name: String,
    pub kind: Option<String>,
    pub master: Option<u32>,
    /// IFLA_LINK: a VLAN's parent, a veth's peer. It names a device in another namespace
    /// when [`Link::link_netnsid`] is set.
    pub link: Option<u32>,
    /// IFLA_LINK_NETNSID: the namespace (as this one numbers it) that `link` is in.
    pub link_netnsid: Option<i32>,
    /// IFLA_ADDRESS: the device's hardware address, when it is a 6-byte MAC.
    pub mac: Option<[u8; 6]>,
    pub operstate: u8,
    pub mtu: Option<u32>,
    pub stats: Option<Stats>,
}

pub fn request() -> Request {
    Request {
        protocol: Protocol::Route,
        name: "rtnl_getlink",
        ty: RTM_GETLINK,
        flags: wire::NLM_F_REQUEST | wire::NLM_F_DUMP,
        scope: None,
        payload: vec![0; IFINFOMSG_LEN],
    }
}

/// The request for one link by ifindex (a reply of one RTM_NEWLINK, no dump).
pub fn request_one(ifindex: u32) -> Request {
    let mut payload = vec![0u8; IFINFOMSG_LEN];
    if let Some(at) = payload.get_mut(4..8) {
        at.copy_from_slice(&ifindex.to_ne_bytes());
    }
    Request {
        protocol: Protocol::Route,
        name: "rtnl_getlink_index",
        scope: Some(ifindex),
        ty: RTM_GETLINK,
        flags: wire::NLM_F_REQUEST,
        payload,
    }
}

/// The link list, decoded datagram by datagram as the dump arrives: the raw reply
/// (~1.5 KiB a link, 3 MB at 2,000 links) is never held whole. A dump that raced a
/// change is taken again, as [`Transport::exchange`] does.
pub fn read(t: &dyn Transport) -> Result<Vec<Link>, CollectError> {
    let mut dump = LinkDump::default();
    let mut failure = None;
    netlink::stream_consistent(t, &request(), &mut |piece| match piece {
        Some(chunk) => dump.feed(chunk).unwrap_or_else(|e| {
            failure = Some(e);
            false
        }),
        None => {
            (dump, failure) = (LinkDump::default(), None);
            true
        }
    })
    .map_err(|e| CollectError::new(format!("link dump failed: {e}")))?;
    failure
        .map_or_else(|| dump.finish(), Err)
        .map_err(|e| CollectError::new(format!("link dump: {e}")))
}

/// An RTM_GETLINK dump decoded as it arrives.
#[derive(Default)]
struct LinkDump {
    links: Vec<Link>,
    done: bool,
}

impl LinkDump {
    /// Decodes one chunk of the reply; false once the dump is complete.
    fn feed(&mut self, chunk: &[u8]) -> Result<bool, DecodeError> {
        let links = &mut self.links;
        let walked = wire::walk(FAMILY, chunk, &mut |m| {
            if m.ty == RTM_NEWLINK {
                links.push(parse_link(m.payload)?);
            }
            Ok(true)
        })?;
        self.done = walked == Walk::Done;
        Ok(walked == Walk::More)
    }

    fn finish(self) -> Result<Vec<Link>, DecodeError> {
        if self.done {
            Ok(self.links)
        } else {
            Err(DecodeError::Unterminated { family: FAMILY })
        }
    }
}

/// Decodes an RTM_GETLINK dump reply.
pub fn parse(buf: &[u8]) -> Result<Vec<Link>, DecodeError> {
    let mut dump = LinkDump::default();
    dump.feed(buf)?;
    dump.finish()
}

/// Decodes the reply to a single-link RTM_GETLINK (no dump, so no NLMSG_DONE).
pub fn parse_one(buf: &[u8]) -> Result<Option<Link>, DecodeError> {
    wire::data_messages(FAMILY, buf, false)?
        .into_iter()
        .find(|m| m.ty == RTM_NEWLINK)
        .map(|m| parse_link(m.payload))
        .transpose()
}

fn parse_link(p: &[u8]) -> Result<Link, DecodeError> {
    let short = || DecodeError::ShortStruct {
        family: FAMILY,
        what: "ifinfomsg",
        len: p.len(),
        need: IFINFOMSG_LEN,
    };
    let index = wire::read_u32_ne(p, 4).ok_or_else(short)? as i32;
    let rest = p.get(IFINFOMSG_LEN..).ok_or_else(short)?;
    let mut link = Link {
        index,
        name: String::new(),
        kind: None,
        master: None,
        link: None,
        link_netnsid: None,
        mac: None,
        operstate: 0,
        mtu: None,
        stats: None,
    };
    let mut legacy_stats = None;
    for a in wire::attrs(FAMILY, "ifinfomsg", rest) {
        let a: Attr = a?;
        match a.ty {
            IFLA_IFNAME => link.name = a.name(),
            IFLA_MTU => link.mtu = Some(a.u32_ne(FAMILY, "IFLA_MTU")?),
            IFLA_MASTER => link.master = Some(a.u32_ne(FAMILY, "IFLA_MASTER")?),
            IFLA_LINK => link.link = Some(a.u32_ne(FAMILY, "IFLA_LINK")?),
            IFLA_LINK_NETNSID => {
                link.link_netnsid = Some(a.u32_ne(FAMILY, "IFLA_LINK_NETNSID")? as i32)
            }
            IFLA_ADDRESS => link.mac = <[u8; 6]>::try_from(a.payload).ok(),
            IFLA_OPERSTATE => link.operstate = a.u8(FAMILY, "IFLA_OPERSTATE")?,
            IFLA_STATS64 => link.stats = Some(Stats::decode(a.payload, 8)),
            IFLA_STATS => legacy_stats = Some(Stats::decode(a.payload, 4)),
            IFLA_LINKINFO => {
                for i in wire::attrs(FAMILY, "IFLA_LINKINFO", a.payload) {
                    let i = i?;
                    if i.ty == IFLA_INFO_KIND {
                        link.kind = Some(i.string(FAMILY, "IFLA_INFO_KIND")?.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    link.stats = link.stats.or(legacy_stats);
    Ok(link)
}

pub fn operstate_name(v: u8) -> &'static str {
    // IF_OPER_* from linux/if.h.
    match v {
        1 => "notpresent",
        2 => "down",
        3 => "lowerlayerdown",
        4 => "testing",
        5 => "dormant",
        6 => "up",
        _ => "unknown",
    }
}

/// One counter of [`Stats`]: the interface series' name, HELP, and how to read it.
pub struct Counter {
    pub name: &'static str,
    pub help: &'static str,
    pub get: fn(&Stats) -> u64,
}

/// The first eight are also `struct ovs_vport_stats`, field for field.
pub const COUNTERS: &[Counter] = &[
    Counter {
        name: metrics::INTERFACE_RECEIVE_PACKETS,
        help: "Packets received by the device.",
        get: |s| s.rx_packets,
    },
    Counter {
        name: metrics::INTERFACE_TRANSMIT_PACKETS,
        help: "Packets transmitted by the device; for a VM's TAP this is delivery to the VM.",
        get: |s| s.tx_packets,
    },
    Counter {
        name: "packetpath_interface_receive_bytes_total",
        help: "Bytes received by the device.",
        get: |s| s.rx_bytes,
    },
    Counter {
        name: "packetpath_interface_transmit_bytes_total",
        help: "Bytes transmitted by the device; for a VM's TAP this is delivery to the VM.",
        get: |s| s.tx_bytes,
    },
    Counter {
        name: metrics::INTERFACE_RECEIVE_ERRORS,
        help: "Receive errors reported by the device.",
        get: |s| s.rx_errors,
    },
    Counter {
        name: metrics::INTERFACE_TRANSMIT_ERRORS,
        help: "Transmit errors reported by the device.",
        get: |s| s.tx_errors,
    },
    Counter {
        name: metrics::INTERFACE_RECEIVE_DROPPED,
        help: "Received packets dropped by the device or the stack before delivery.",
        get: |s| s.rx_dropped,
    },
    Counter {
        name: metrics::INTERFACE_TRANSMIT_DROPPED,
        help: "Packets dropped on transmit; for a TAP, packets the VM did not drain in time.",
        get: |s| s.tx_dropped,
    },
    Counter {
        name: "packetpath_interface_receive_missed_total",
        help: "Packets missed by the device for lack of buffer space (rx_missed_errors).",
        get: |s| s.rx_missed,
    },
    Counter {
        name: "packetpath_interface_receive_nohandler_total",
        help: "Packets received with no protocol handler, e.g. on an inactive bond slave.",
        get: |s| s.rx_nohandler,
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{StreamEnd, TransportError};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn link_msg(index: u32, name: &str) -> Vec<u8> {
        let mut p = vec![0u8; IFINFOMSG_LEN];
        p[4..8].copy_from_slice(&index.to_ne_bytes());
        wire::push_attr(&mut p, IFLA_IFNAME, format!("{name}\0").as_bytes());
        wire::request(RTM_NEWLINK, wire::NLM_F_MULTI, 1, &p)
    }

    /// Its first dump races a change after one link; the second sends two links, one
    /// datagram each, then DONE, or stops short when `short`.
    struct Racing {
        tries: AtomicUsize,
        short: bool,
    }

    impl Transport for Racing {
        fn stream(
            &self,
            _req: &Request,
            sink: &mut dyn FnMut(&[u8]) -> bool,
        ) -> Result<StreamEnd, TransportError> {
            if self.tries.fetch_add(1, Ordering::Relaxed) == 0 {
                sink(&link_msg(1, "old"));
                return Ok(StreamEnd { interrupted: true });
            }
            let done = wire::request(wire::NLMSG_DONE, wire::NLM_F_MULTI, 1, &[0; 4]);
            let mut replies = vec![link_msg(2, "a"), link_msg(3, "b")];
            if !self.short {
                replies.push(done);
            }
            for r in replies {
                if !sink(&r) {
                    break;
                }
            }
            Ok(StreamEnd::default())
        }
    }

    #[test]
    fn links_are_decoded_as_they_arrive_and_a_raced_dump_is_taken_again() {
        let t = Racing {
            tries: AtomicUsize::new(0),
            short: false,
        };
        let got = read(&t).unwrap();
        let names: Vec<&str> = got.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "only the second try's links");
        assert_eq!(t.tries.load(Ordering::Relaxed), 2);

        let t = Racing {
            tries: AtomicUsize::new(0),
            short: true,
        };
        let e = read(&t).unwrap_err();
        assert!(e.message.contains("link dump: "), "{e}");
    }
}
