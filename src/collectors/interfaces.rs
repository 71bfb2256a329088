//! `interfaces`: per-device counters from one rtnetlink RTM_GETLINK dump.
//!
//! Direction follows the kernel's view of each device: for a VM's TAP, *transmit* is
//! host → VM (delivery to the guest) and *receive* is what the guest sent.

use std::collections::HashMap;
use std::sync::Arc;

use regex::Regex;

use super::shared::PerScrape;
use super::{CollectError, Collector, Config, Spec};
use crate::netlink::wire::{self, Attr, Control, DecodeError};
use crate::netlink::{self, Protocol, Request, Transport};
use crate::render::Family;
use crate::roles::RoleRules;

pub const SPEC: Spec = Spec {
    name: "interfaces",
    help: "Per-interface packet, byte, error and drop counters with tunnel/vm/ovs roles (rtnetlink).",
    default_enabled: true,
    build: |c| Arc::new(Interfaces::new(c)),
};

const FAMILY: &str = "rtnetlink";
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const IFINFOMSG_LEN: usize = 16;
const IFLA_STATS: u16 = 7;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_OPERSTATE: u16 = 16;
const IFLA_LINKINFO: u16 = 18;
const IFLA_STATS64: u16 = 23;
const IFLA_INFO_KIND: u16 = 1;

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub device_include: Option<Regex>,
    pub device_exclude: Option<Regex>,
}

impl Options {
    /// Whether a device passes --collector.interfaces.device-include/exclude (the OVS
    /// vport series follow the same filter).
    pub fn wants(&self, device: &str) -> bool {
        self.device_include
            .as_ref()
            .is_none_or(|re| re.is_match(device))
            && !self
                .device_exclude
                .as_ref()
                .is_some_and(|re| re.is_match(device))
    }
}

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: i32,
    pub name: String,
    pub kind: Option<String>,
    pub master: Option<u32>,
    /// IFLA_LINK: a VLAN's parent, a veth's peer. It may name a device in another
    /// namespace (IFLA_LINK_NETNSID, not read), so only stacked kinds' values are used.
    pub link: Option<u32>,
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

pub fn fetch(t: &dyn Transport) -> Result<Vec<u8>, CollectError> {
    t.exchange(&request())
        .map_err(|e| CollectError::new(format!("link dump failed: {e}")))
}

/// The link list one scrape reads once for `interfaces` and `offload`.
pub type SharedLinks = PerScrape<(), Vec<Link>>;

/// Who reads [`SharedLinks`].
#[derive(Debug, Clone, Copy)]
pub enum Reader {
    Interfaces = 0,
    Offload = 1,
}

/// This scrape's links for `reader`, decoded datagram by datagram as the dump arrives:
/// the raw reply (~1.5 KiB a link, 3 MB at 2,000 links) is never held whole.
pub fn links(
    shared: &SharedLinks,
    t: &dyn Transport,
    reader: Reader,
) -> Result<Arc<Vec<Link>>, CollectError> {
    shared.get(&(), reader as u8, || {
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
    })
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
        for m in wire::messages(FAMILY, chunk) {
            match wire::control(FAMILY, m?)? {
                Control::Data(m) if m.ty == RTM_NEWLINK => self.links.push(parse_link(m.payload)?),
                Control::Data(_) | Control::Skip => {}
                Control::Done => {
                    self.done = true;
                    return Ok(false);
                }
            }
        }
        Ok(true)
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

/// One counter of [`Stats`]: metric name stem, HELP, and how to read it.
pub struct Counter {
    pub stem: &'static str,
    pub help: &'static str,
    pub get: fn(&Stats) -> u64,
}

/// The first eight are also `struct ovs_vport_stats`, field for field.
pub const COUNTERS: &[Counter] = &[
    Counter {
        stem: "receive_packets",
        help: "Packets received by the device.",
        get: |s| s.rx_packets,
    },
    Counter {
        stem: "transmit_packets",
        help: "Packets transmitted by the device; for a VM's TAP this is delivery to the VM.",
        get: |s| s.tx_packets,
    },
    Counter {
        stem: "receive_bytes",
        help: "Bytes received by the device.",
        get: |s| s.rx_bytes,
    },
    Counter {
        stem: "transmit_bytes",
        help: "Bytes transmitted by the device; for a VM's TAP this is delivery to the VM.",
        get: |s| s.tx_bytes,
    },
    Counter {
        stem: "receive_errors",
        help: "Receive errors reported by the device.",
        get: |s| s.rx_errors,
    },
    Counter {
        stem: "transmit_errors",
        help: "Transmit errors reported by the device.",
        get: |s| s.tx_errors,
    },
    Counter {
        stem: "receive_dropped",
        help: "Received packets dropped by the device or the stack before delivery.",
        get: |s| s.rx_dropped,
    },
    Counter {
        stem: "transmit_dropped",
        help: "Packets dropped on transmit; for a TAP, packets the VM did not drain in time.",
        get: |s| s.tx_dropped,
    },
    Counter {
        stem: "receive_missed",
        help: "Packets missed by the device for lack of buffer space (rx_missed_errors).",
        get: |s| s.rx_missed,
    },
    Counter {
        stem: "receive_nohandler",
        help: "Packets received with no protocol handler, e.g. on an inactive bond slave.",
        get: |s| s.rx_nohandler,
    },
];

pub fn render(links: &[Link], rules: &RoleRules, opts: &Options) -> Vec<Family> {
    const DR: &[&str] = &["device", "role"];
    let mut families: Vec<Family> = COUNTERS
        .iter()
        .map(|c| {
            Family::counter(
                &format!("packetpath_interface_{}_total", c.stem),
                c.help,
                DR,
            )
        })
        .collect();
    let mut info = Family::gauge(
        "packetpath_interface_info",
        "Interface context: role in the packet path, link kind, master device and operational state.",
        &["device", "role", "kind", "master", "operstate"],
    );
    let mut mtu = Family::gauge(
        "packetpath_interface_mtu_bytes",
        "Interface MTU in bytes.",
        &["device"],
    );

    let names: HashMap<u32, &str> = links
        .iter()
        .map(|l| (l.index as u32, l.name.as_str()))
        .collect();
    for l in links.iter().filter(|l| opts.wants(&l.name)) {
        let role = rules.classify(&l.name, l.kind.as_deref()).as_str();
        let master = l.master.and_then(|m| names.get(&m).copied()).unwrap_or("");
        info.push(
            &[
                &l.name,
                role,
                l.kind.as_deref().unwrap_or(""),
                master,
                operstate_name(l.operstate),
            ],
            1.0,
        );
        if let Some(v) = l.mtu {
            mtu.push(&[&l.name], f64::from(v));
        }
        if let Some(s) = &l.stats {
            for (fam, c) in families.iter_mut().zip(COUNTERS) {
                fam.push(&[&l.name, role], (c.get)(s) as f64);
            }
        }
    }
    families.push(info);
    families.push(mtu);
    families
}

pub struct Interfaces {
    transport: Arc<dyn Transport>,
    links: Arc<SharedLinks>,
    rules: RoleRules,
    opts: Options,
}

impl Interfaces {
    pub fn new(c: &Config) -> Self {
        Interfaces {
            transport: c.transport.clone(),
            links: c.links.clone(),
            rules: c.roles.clone(),
            opts: c.interfaces.clone(),
        }
    }
}

impl Collector for Interfaces {
    fn collect(&self) -> Result<Vec<Family>, CollectError> {
        let links = links(&self.links, self.transport.as_ref(), Reader::Interfaces)?;
        Ok(render(&links, &self.rules, &self.opts))
    }
}

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
        let got = links(&SharedLinks::default(), &t, Reader::Interfaces).unwrap();
        let names: Vec<&str> = got.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "only the second try's links");
        assert_eq!(t.tries.load(Ordering::Relaxed), 2);

        let t = Racing {
            tries: AtomicUsize::new(0),
            short: true,
        };
        let e = links(&SharedLinks::default(), &t, Reader::Interfaces).unwrap_err();
        assert!(e.message.contains("link dump: "), "{e}");
    }
}
