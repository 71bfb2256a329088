//! Decoding conntrack's log messages: one NFLOG packet message into a [`Record`] (the
//! kernel's reason, protocol, frame size class and TCP flags). Pure, no I/O.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use crate::netlink::wire::{self, DecodeError, Message};

pub(super) const FAMILY: &str = "nfnetlink_log";
pub const NFNL_SUBSYS_ULOG: u16 = 4;
pub(super) const NFULNL_MSG_PACKET: u16 = 0;
pub(super) const NFULA_IFINDEX_INDEV: u16 = 4;
pub(super) const NFULA_PAYLOAD: u16 = 9;
pub(super) const NFULA_PREFIX: u16 = 10;
pub(super) const NFULA_SEQ: u16 = 12;
/// The packet's conntrack entry, nested ctnetlink attributes (NFULNL_CFG_F_CONNTRACK).
pub(super) const NFULA_CT: u16 = 18;
/// Inside NFULA_CT: the entry's zone, be16; absent for zone 0 (nfnetlink_conntrack.h).
pub(super) const CTA_ZONE: u16 = 18;

macro_rules! label_enum {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
    };
}

label_enum!(IpFamily { V4 => "ipv4", V6 => "ipv6" });
label_enum!(Proto { Tcp => "tcp", Udp => "udp", Icmp => "icmp", Icmpv6 => "icmpv6", Sctp => "sctp", Gre => "gre", Other => "other" });
label_enum!(Reason {
    BadChecksum => "bad_checksum",
    OutOfWindow => "out_of_window",
    InvalidState => "invalid_state",
    InvalidFlags => "invalid_flags",
    Truncated => "truncated",
    Other => "other",
});
label_enum!(SizeClass { Lt60 => "lt60", S60to127 => "60to127", S128to1023 => "128to1023", Ge1024 => "ge1024" });
label_enum!(TcpFlags { Syn => "syn", SynAck => "synack", Fin => "fin", Rst => "rst", Ack => "ack", Other => "other", None => "none" });

/// What one log message says about one invalid packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub family: IpFamily,
    pub proto: Proto,
    pub reason: Reason,
    pub size: SizeClass,
    pub flags: TcpFlags,
    pub indev: Option<u32>,
    pub seq: Option<u32>,
    /// The conntrack zone of the entry the packet was attached to: `None` without NFULA_CT
    /// (the flag not set, or no entry yet: ICMP errors are logged before the lookup), 0
    /// when NFULA_CT has no CTA_ZONE.
    pub zone: Option<u16>,
    /// Logged by conntrack ("nf_ct_…" prefix). Anything else on group 0 (an iptables or
    /// nftables NFLOG rule, say) only advances the sequence numbers.
    pub from_conntrack: bool,
}

/// The kernel's reason text (after "nf_ct_proto_N: ") in a bounded set. Matched in place,
/// ignoring ASCII case: this runs for every message.
pub fn reason_of(prefix: &str) -> Reason {
    let prefix = prefix.as_bytes();
    let text = prefix
        .windows(2)
        .position(|w| w == b": ")
        .and_then(|at| prefix.get(at + 2..))
        .unwrap_or(prefix)
        .trim_ascii();
    let has = |word: &str| {
        text.windows(word.len())
            .any(|w| w.eq_ignore_ascii_case(word.as_bytes()))
    };
    let starts = |word: &str| {
        text.get(..word.len())
            .is_some_and(|t| t.eq_ignore_ascii_case(word.as_bytes()))
    };
    if has("checksum") {
        Reason::BadChecksum
    } else if starts("seq is") || starts("ack is") || has("window") {
        Reason::OutOfWindow
    } else if has("flag") {
        Reason::InvalidFlags
    } else if has("truncated") || has("short") || has("malformed") {
        Reason::Truncated
    } else if has("state") || has("rst") || has("invalid") {
        Reason::InvalidState
    } else {
        Reason::Other
    }
}

pub(super) fn proto_of(family: IpFamily, p: u8) -> Proto {
    match (family, p) {
        (_, 6) => Proto::Tcp,
        (_, 17) => Proto::Udp,
        (IpFamily::V4, 1) => Proto::Icmp,
        (IpFamily::V6, 58) => Proto::Icmpv6,
        (_, 132) => Proto::Sctp,
        (_, 47) => Proto::Gre,
        _ => Proto::Other,
    }
}

pub(super) fn size_of_frame(ip_len: usize) -> SizeClass {
    // The Ethernet frame the packet came in: 14 header bytes around the IP packet.
    match ip_len + 14 {
        0..60 => SizeClass::Lt60,
        60..128 => SizeClass::S60to127,
        128..1024 => SizeClass::S128to1023,
        _ => SizeClass::Ge1024,
    }
}

pub(super) fn flags_of(tcp_flags: u8) -> TcpFlags {
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    const KNOWN: u8 = 0x3f; // FIN SYN RST PSH ACK URG
    match tcp_flags & KNOWN {
        f if f & (SYN | FIN | RST) == SYN && f & ACK == 0 => TcpFlags::Syn,
        f if f & (SYN | FIN | RST) == SYN => TcpFlags::SynAck,
        f if f & (SYN | RST) == 0 && f & FIN != 0 => TcpFlags::Fin,
        f if f & (SYN | FIN) == 0 && f & RST != 0 => TcpFlags::Rst,
        f if f & (SYN | FIN | RST) == 0 && f & ACK != 0 => TcpFlags::Ack,
        _ => TcpFlags::Other,
    }
}

/// Follows IPv6 extension headers from the fixed header's Next Header to the upper-layer
/// protocol: (protocol, offset of its header). The offset is None when the header is not
/// in this packet: a non-first fragment, or the payload cut short (then the protocol is
/// the last extension header reached, which classifies as "other").
pub(super) fn ipv6_upper_layer(p: &[u8], first: u8) -> (u8, Option<usize>) {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const AH: u8 = 51;
    const DEST_OPTS: u8 = 60;
    const MOBILITY: u8 = 135;
    const HIP: u8 = 139;
    const SHIM6: u8 = 140;
    let (mut next, mut at) = (first, 40usize);
    // Each header is at least 8 bytes, so the walk ends with the packet; the bound only
    // keeps it short on a long chain.
    for _ in 0..16 {
        let len = match next {
            HOP_BY_HOP | ROUTING | DEST_OPTS | MOBILITY | HIP | SHIM6 => {
                p.get(at + 1).map(|l| (usize::from(*l) + 1) * 8)
            }
            AH => p.get(at + 1).map(|l| (usize::from(*l) + 2) * 4),
            FRAGMENT => match wire::read_u16_ne(p, at + 2).map(u16::from_be) {
                Some(off) if off >> 3 != 0 => return (p.get(at).copied().unwrap_or(next), None),
                Some(_) => Some(8),
                None => None,
            },
            _ => return (next, Some(at)),
        };
        match (len, p.get(at).copied()) {
            (Some(len), Some(n)) => {
                next = n;
                at += len;
            }
            _ => return (next, None),
        }
    }
    (next, None)
}

/// CTA_ZONE of the ctnetlink attributes in NFULA_CT; 0 when absent (the kernel leaves the
/// default zone out).
pub fn zone_of(ct: &[u8]) -> Result<u16, DecodeError> {
    for a in wire::attrs(FAMILY, "CTA", ct) {
        let a = a?;
        if a.ty == CTA_ZONE {
            return a.u16_be(FAMILY, "CTA_ZONE");
        }
    }
    Ok(0)
}

/// NFULA_SEQ of a packet message, read past any other attribute's problems.
pub(super) fn seq_of(m: &Message) -> Option<u32> {
    if m.ty != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET {
        return None;
    }
    wire::attrs(FAMILY, "NFULA", m.payload.get(4..)?)
        .map_while(Result::ok)
        .find(|a| a.ty == NFULA_SEQ)
        .and_then(|a| a.u32_be(FAMILY, "NFULA_SEQ").ok())
}

/// Decodes one NFULNL_MSG_PACKET into a [`Record`]; other messages give `None`.
pub fn parse_record(m: &Message) -> Result<Option<Record>, DecodeError> {
    if m.ty != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET {
        return Ok(None);
    }
    let short = |what, need| DecodeError::ShortStruct {
        family: FAMILY,
        what,
        len: m.payload.len(),
        need,
    };
    let family = match m.payload.first() {
        Some(2) => IpFamily::V4,
        Some(10) => IpFamily::V6,
        Some(_) => return Ok(None),
        None => return Err(short("nfgenmsg", 4)),
    };
    let attrs = m.payload.get(4..).ok_or_else(|| short("nfgenmsg", 4))?;
    let (mut prefix, mut payload, mut indev, mut seq, mut zone) = (None, None, None, None, None);
    for a in wire::attrs(FAMILY, "NFULA", attrs) {
        let a = a?;
        match a.ty {
            NFULA_PREFIX => prefix = Some(a.string(FAMILY, "NFULA_PREFIX")?),
            NFULA_PAYLOAD => payload = Some(a.payload),
            NFULA_IFINDEX_INDEV => indev = Some(a.u32_be(FAMILY, "NFULA_IFINDEX_INDEV")?),
            NFULA_SEQ => seq = Some(a.u32_be(FAMILY, "NFULA_SEQ")?),
            NFULA_CT => zone = Some(zone_of(a.payload)?),
            _ => {}
        }
    }
    let p = payload.ok_or(DecodeError::ShortStruct {
        family: FAMILY,
        what: "NFULA_PAYLOAD",
        len: 0,
        need: 20,
    })?;
    let ip_short = |need| DecodeError::ShortStruct {
        family: FAMILY,
        what: "NFULA_PAYLOAD IP header",
        len: p.len(),
        need,
    };
    let (ip_len, l4proto, l4_at) = match family {
        IpFamily::V4 => {
            let ihl = usize::from(p.first().ok_or_else(|| ip_short(20))? & 0x0f) * 4;
            let total = wire::read_u16_ne(p, 2)
                .map(u16::from_be)
                .ok_or_else(|| ip_short(20))?;
            (
                usize::from(total),
                *p.get(9).ok_or_else(|| ip_short(20))?,
                Some(ihl),
            )
        }
        IpFamily::V6 => {
            let plen = wire::read_u16_ne(p, 4)
                .map(u16::from_be)
                .ok_or_else(|| ip_short(40))?;
            let (upper, at) = ipv6_upper_layer(p, *p.get(6).ok_or_else(|| ip_short(40))?);
            (usize::from(plen) + 40, upper, at)
        }
    };
    let proto = proto_of(family, l4proto);
    let flags = match proto {
        // The flags byte sits 13 bytes into the TCP header; a cut header (or a later
        // fragment, which has none) says "other".
        Proto::Tcp => l4_at
            .and_then(|at| p.get(at + 13))
            .map_or(TcpFlags::Other, |f| flags_of(*f)),
        _ => TcpFlags::None,
    };
    let prefix = prefix.unwrap_or_default();
    Ok(Some(Record {
        family,
        proto,
        reason: reason_of(prefix),
        size: size_of_frame(ip_len),
        flags,
        indev,
        seq,
        zone,
        from_conntrack: prefix.starts_with("nf_ct_"),
    }))
}
