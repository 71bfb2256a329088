//! `conntrack_invalid` (opt-in): why conntrack marks packets invalid, from the kernel's own
//! log of them.
//!
//! With `net.netfilter.nf_conntrack_log_invalid` set, conntrack logs every packet it marks
//! invalid with the reason ("nf_ct_proto_6: bad checksum "). Bound to nfnetlink_log, those
//! logs arrive as NFLOG group 0 messages carrying the reason, the input device and the
//! packet's headers. A background thread classifies each one by reason, protocol, frame
//! size and TCP flags; scrapes only read the counters.
//!
//! It changes host settings, so it is off by default, binds the group before touching
//! anything (never stealing it from ulogd or another listener), records what it changed in
//! a state file, and puts it all back on exit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use neli::consts::socket::{Msg, NlFamily};
use neli::socket::NlSocket;
use neli::utils::Groups;

use super::common::{Resources, Scrape};
use super::{CollectError, Collector, Spec};
use crate::netlink::wire::{self, DecodeError, Message};
use crate::render::Family;

pub const SPEC: Spec = Spec {
    name: "conntrack_invalid",
    help: "Conntrack-invalid packets classified by reason, size and TCP flags (NFLOG group 0; changes nf_conntrack_log_invalid while running).",
    default_enabled: false,
    args: super::flags::<Options>,
    build: |m, r| Ok(Arc::new(ConntrackInvalid::start(r, &super::options(m)?))),
};

const FAMILY: &str = "nfnetlink_log";
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_IFINDEX_INDEV: u16 = 4;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NFULA_SEQ: u16 = 12;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_NLBUFSIZ: u16 = 3;
const NFULA_CFG_TIMEOUT: u16 = 4;
const NFULA_CFG_FLAGS: u16 = 6;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULNL_CFG_F_SEQ: u16 = 1;
/// Enough of each packet for an IPv6 header and a full TCP header.
const COPY_RANGE: u32 = 128;

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// nf_conntrack_log_invalid while the conntrack_invalid collector runs: an IP protocol
    /// number, or 255 for all.
    #[arg(
        id = "collector.conntrack_invalid.protocol",
        long = "collector.conntrack_invalid.protocol",
        alias = "collector.conntrack-invalid.protocol",
        value_name = "N",
        default_value_t = 255,
        value_parser = clap::value_parser!(u8).range(1..)
    )]
    pub protocol: u8,

    /// Where conntrack_invalid records the settings it changed, to restore them after a crash; {netns} becomes the namespace's inode.
    #[arg(
        id = "collector.conntrack_invalid.state-file",
        long = "collector.conntrack_invalid.state-file",
        alias = "collector.conntrack-invalid.state-file",
        value_name = "PATH",
        default_value = "/run/packetpath-exporter/conntrack-invalid-{netns}.state"
    )]
    pub state_file: PathBuf,

    /// Input devices conntrack_invalid counts separately; the rest count as "other".
    #[arg(
        id = "collector.conntrack_invalid.max-devices",
        long = "collector.conntrack_invalid.max-devices",
        alias = "collector.conntrack-invalid.max-devices",
        value_name = "N",
        default_value_t = 64
    )]
    pub max_devices: usize,
}

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
    /// Logged by conntrack ("nf_ct_…" prefix). Anything else on group 0 (an iptables or
    /// nftables NFLOG rule, say) only advances the sequence numbers.
    pub from_conntrack: bool,
}

/// The kernel's reason text (after "nf_ct_proto_N: ") in a bounded set.
pub fn reason_of(prefix: &str) -> Reason {
    let text = prefix
        .split_once(": ")
        .map_or(prefix, |(_, rest)| rest)
        .trim()
        .to_ascii_lowercase();
    if text.contains("checksum") {
        Reason::BadChecksum
    } else if text.starts_with("seq is") || text.starts_with("ack is") || text.contains("window") {
        Reason::OutOfWindow
    } else if text.contains("flag") {
        Reason::InvalidFlags
    } else if text.contains("truncated") || text.contains("short") || text.contains("malformed") {
        Reason::Truncated
    } else if text.contains("state") || text.contains("rst") || text.contains("invalid") {
        Reason::InvalidState
    } else {
        Reason::Other
    }
}

fn proto_of(family: IpFamily, p: u8) -> Proto {
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

fn size_of_frame(ip_len: usize) -> SizeClass {
    // The Ethernet frame the packet came in: 14 header bytes around the IP packet.
    match ip_len + 14 {
        0..60 => SizeClass::Lt60,
        60..128 => SizeClass::S60to127,
        128..1024 => SizeClass::S128to1023,
        _ => SizeClass::Ge1024,
    }
}

fn flags_of(tcp_flags: u8) -> TcpFlags {
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
fn ipv6_upper_layer(p: &[u8], first: u8) -> (u8, Option<usize>) {
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

/// NFULA_SEQ of a packet message, read past any other attribute's problems.
fn seq_of(m: &Message) -> Option<u32> {
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
    let (mut prefix, mut payload, mut indev, mut seq) = (None, None, None, None);
    for a in wire::attrs(FAMILY, "NFULA", attrs) {
        let a = a?;
        match a.ty {
            NFULA_PREFIX => prefix = Some(a.string(FAMILY, "NFULA_PREFIX")?),
            NFULA_PAYLOAD => payload = Some(a.payload),
            NFULA_IFINDEX_INDEV => indev = Some(a.u32_be(FAMILY, "NFULA_IFINDEX_INDEV")?),
            NFULA_SEQ => seq = Some(a.u32_be(FAMILY, "NFULA_SEQ")?),
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
        from_conntrack: prefix.starts_with("nf_ct_"),
    }))
}

/// Counters the listener thread writes and scrapes read.
pub struct Counts {
    classes: Vec<AtomicU64>,
    devices: Mutex<HashMap<u32, u64>>,
    max_devices: usize,
    pub messages: AtomicU64,
    pub overruns: AtomicU64,
    pub lost: AtomicU64,
    pub errors: AtomicU64,
    last_seq: Mutex<Option<u32>>,
}

/// Marks "other devices" once the device cap is reached.
const OTHER_DEVICE: u32 = u32::MAX;

/// The record's slot among all label combinations (variants index their `ALL`).
fn class_index(r: &Record) -> usize {
    let i = r.family as usize;
    let i = i * Proto::ALL.len() + r.proto as usize;
    let i = i * Reason::ALL.len() + r.reason as usize;
    let i = i * SizeClass::ALL.len() + r.size as usize;
    i * TcpFlags::ALL.len() + r.flags as usize
}

const CLASSES: usize = 2 * 7 * 6 * 4 * 7;

impl Counts {
    pub fn new(max_devices: usize) -> Counts {
        Counts {
            classes: (0..CLASSES).map(|_| AtomicU64::new(0)).collect(),
            devices: Mutex::new(HashMap::new()),
            max_devices,
            messages: AtomicU64::new(0),
            overruns: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_seq: Mutex::new(None),
        }
    }

    pub fn record(&self, r: &Record) {
        self.track_seq(r.seq);
        if !r.from_conntrack {
            return;
        }
        self.messages.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = self.classes.get(class_index(r)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(dev) = r.indev {
            let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
            let named = devices.len() - usize::from(devices.contains_key(&OTHER_DEVICE));
            let key = if devices.contains_key(&dev) || named < self.max_devices {
                dev
            } else {
                OTHER_DEVICE
            };
            *devices.entry(key).or_default() += 1;
        }
    }

    fn track_seq(&self, seq: Option<u32>) {
        if let Some(seq) = seq {
            // NFULA_SEQ counts every message the instance sent: a jump is messages lost.
            let mut last = self.last_seq.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(prev) = *last {
                let gap = seq.wrapping_sub(prev).wrapping_sub(1);
                if gap < u32::MAX / 2 {
                    self.lost.fetch_add(u64::from(gap), Ordering::Relaxed);
                }
            }
            *last = Some(seq);
        }
    }

    /// Decodes and counts every message in one datagram.
    pub fn ingest(&self, datagram: &[u8]) {
        for m in wire::messages(FAMILY, datagram) {
            let Ok(m) = m else {
                self.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match parse_record(&m) {
                Ok(Some(r)) => self.record(&r),
                // Messages not counted still took a sequence number: note it, or the next
                // one would count them as lost.
                Ok(None) => self.track_seq(seq_of(&m)),
                Err(_) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    self.track_seq(seq_of(&m));
                }
            }
        }
    }

    /// (name, count) of each device counted, by the name it has now. Devices gone since
    /// (a VM's TAP, deleted with the VM) are forgotten: their series end and their slot
    /// goes to the next device, instead of TAP churn filling the cap with dead ifindexes.
    fn live_devices(&self, name: impl Fn(u32) -> Option<String>) -> Vec<(String, u64)> {
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let mut live = Vec::with_capacity(devices.len());
        devices.retain(|idx, n| match name(*idx) {
            Some(dev) => {
                live.push((dev, *n));
                true
            }
            None => false,
        });
        live
    }

    pub fn render(&self) -> Vec<Family> {
        let mut classes = Family::counter(
            CLASS_FAMILY,
            "Packets conntrack logged as invalid, by IP family, protocol, the kernel's reason, Ethernet frame size class and TCP flags.",
            &["family", "protocol", "reason", "size_class", "tcp_flags"],
        );
        for (i, c) in self.classes.iter().enumerate() {
            let v = c.load(Ordering::Relaxed);
            let (i, f) = (i / TcpFlags::ALL.len(), i % TcpFlags::ALL.len());
            let (i, s) = (i / SizeClass::ALL.len(), i % SizeClass::ALL.len());
            let (i, r) = (i / Reason::ALL.len(), i % Reason::ALL.len());
            let (fam, p) = (i / Proto::ALL.len(), i % Proto::ALL.len());
            // TCP bad-checksum series exist from the start at 0, so the first packet of
            // the seed incident's signature is an increase, not a new series.
            let preset = Proto::ALL.get(p) == Some(&Proto::Tcp)
                && Reason::ALL.get(r) == Some(&Reason::BadChecksum);
            if v == 0 && !preset {
                continue;
            }
            classes.push(
                &[
                    IpFamily::ALL.get(fam).map_or("other", |x| x.as_str()),
                    Proto::ALL.get(p).map_or("other", |x| x.as_str()),
                    Reason::ALL.get(r).map_or("other", |x| x.as_str()),
                    SizeClass::ALL.get(s).map_or("other", |x| x.as_str()),
                    TcpFlags::ALL.get(f).map_or("other", |x| x.as_str()),
                ],
                v as f64,
            );
        }
        let mut devices = Family::counter(
            "packetpath_conntrack_invalid_device_packets_total",
            "Conntrack-invalid packets by input device (capped; the rest count as device=\"other\").",
            &["device"],
        );
        let mut by_dev = self.live_devices(device_name);
        by_dev.sort();
        for (name, n) in &by_dev {
            devices.push(&[name], *n as f64);
        }
        let single = |name: &str, help: &str, v: &AtomicU64| {
            let mut f = Family::counter(name, help, &[]);
            f.push(&[], v.load(Ordering::Relaxed) as f64);
            f
        };
        vec![
            classes,
            devices,
            single(
                "packetpath_conntrack_invalid_log_messages_total",
                "NFLOG messages about invalid packets received from the kernel.",
                &self.messages,
            ),
            single(
                "packetpath_conntrack_invalid_log_overruns_total",
                "Times the NFLOG socket overflowed (ENOBUFS): messages were lost.",
                &self.overruns,
            ),
            single(
                "packetpath_conntrack_invalid_log_lost_total",
                "NFLOG messages lost, from gaps in the kernel's sequence numbers.",
                &self.lost,
            ),
            single(
                "packetpath_conntrack_invalid_log_errors_total",
                "NFLOG messages that could not be decoded.",
                &self.errors,
            ),
        ]
    }
}

/// The device's name now; None once it no longer exists.
fn device_name(idx: u32) -> Option<String> {
    if idx == OTHER_DEVICE {
        return Some("other".into());
    }
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(idx, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// The host settings this collector changes, as they were before it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub log_invalid: String,
    pub nf_log_v4: String,
    pub nf_log_v6: String,
}

impl Settings {
    fn paths(procfs: &Path) -> [PathBuf; 3] {
        let nf = procfs.join("sys/net/netfilter");
        [
            nf.join("nf_conntrack_log_invalid"),
            nf.join("nf_log/2"),
            nf.join("nf_log/10"),
        ]
    }

    pub fn read(procfs: &Path) -> std::io::Result<Settings> {
        let [a, b, c] = Settings::paths(procfs);
        let read = |p: &Path| std::fs::read_to_string(p).map(|s| s.trim().to_owned());
        Ok(Settings {
            log_invalid: read(&a)?,
            nf_log_v4: read(&b)?,
            nf_log_v6: read(&c)?,
        })
    }

    /// Writes every setting, trying all three even when one fails. Applying, the loggers
    /// go first (so nothing logs to syslog meanwhile); restoring, logging stops first.
    pub fn write(&self, procfs: &Path, restoring: bool) -> Result<(), String> {
        let [a, b, c] = Settings::paths(procfs);
        let mut steps = vec![(b, &self.nf_log_v4), (c, &self.nf_log_v6)];
        if restoring {
            steps.insert(0, (a, &self.log_invalid));
        } else {
            steps.push((a, &self.log_invalid));
        }
        let errors: Vec<String> = steps
            .into_iter()
            .filter_map(|(path, value)| {
                std::fs::write(&path, value)
                    .err()
                    .map(|e| format!("{}: {e}", path.display()))
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn to_state(&self) -> String {
        format!(
            "nf_conntrack_log_invalid {}\nnf_log/2 {}\nnf_log/10 {}\n",
            self.log_invalid, self.nf_log_v4, self.nf_log_v6
        )
    }

    fn from_state(text: &str) -> Option<Settings> {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ').map(str::to_owned))
        };
        Some(Settings {
            log_invalid: get("nf_conntrack_log_invalid")?,
            nf_log_v4: get("nf_log/2")?,
            nf_log_v6: get("nf_log/10")?,
        })
    }
}

fn config_msg(family: u8, group: u16, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut payload = vec![family, 0];
    payload.extend_from_slice(&group.to_be_bytes());
    for (ty, data) in attrs {
        wire::push_attr(&mut payload, *ty, data);
    }
    payload
}

/// Sends one NFULNL_MSG_CONFIG with an ACK requested and returns the kernel's errno.
fn configure(sock: &NlSocket, seq: u32, payload: &[u8]) -> Result<(), i32> {
    let ty = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
    let msg = wire::request(ty, wire::NLM_F_REQUEST | 0x4, seq, payload);
    sock.send(&msg, Msg::empty())
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    let mut buf = vec![0u8; 8192];
    loop {
        let (n, _) = sock
            .recv(&mut buf[..], Msg::empty())
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        for m in wire::messages(FAMILY, buf.get(..n).unwrap_or_default()).flatten() {
            if m.seq == seq && m.ty == wire::NLMSG_ERROR {
                let code = wire::read_u32_ne(m.payload, 0).map_or(0, |c| c as i32);
                return if code < 0 {
                    Err(code.saturating_neg())
                } else {
                    Ok(())
                };
            }
        }
    }
}

/// The classifier's main family; `diagnose` reads it back.
pub const CLASS_FAMILY: &str = "packetpath_conntrack_invalid_packets_total";

/// Whether a family is this collector's (the `conntrack` collector's
/// `packetpath_conntrack_invalid_total` shares the prefix but is not).
pub fn exports(family: &str) -> bool {
    family.starts_with("packetpath_conntrack_invalid_")
        && family != "packetpath_conntrack_invalid_total"
}

/// Why the collector does not run when another process listens to the group.
pub const GROUP_TAKEN: &str =
    "NFLOG group 0 is already bound by another process (ulogd?); not taking it";

/// Whether this process holds CAP_NET_ADMIN (bit 12 of CapEff in /proc/self/status).
fn has_net_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

/// Binds NFLOG group 0 and sets its copy mode; the group's owner is the caller's socket.
fn bind_group(sock: &NlSocket) -> Result<(), String> {
    // No PF_BIND: it would make nfnetlink_log the logger for the family before the group
    // is ours (and even when it is not); the nf_log sysctls below do that, recorded.
    match configure(
        sock,
        2,
        &config_msg(0, 0, &[(NFULA_CFG_CMD, vec![NFULNL_CFG_CMD_BIND])]),
    ) {
        Ok(()) => {}
        // nfnetlink_log answers EPERM both without CAP_NET_ADMIN and when another socket
        // owns the group; the capability set tells the two apart.
        Err(libc::EBUSY) => return Err(GROUP_TAKEN.into()),
        Err(libc::EPERM) if has_net_admin() => return Err(GROUP_TAKEN.into()),
        Err(libc::EPERM) => return Err("binding NFLOG group 0 needs CAP_NET_ADMIN".into()),
        Err(e) => {
            return Err(format!(
                "binding NFLOG group 0: {} (is nfnetlink_log built or loaded?)",
                wire::Errno(e)
            ));
        }
    }
    let mut mode = COPY_RANGE.to_be_bytes().to_vec();
    mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
    let attrs = [
        (NFULA_CFG_MODE, mode),
        // Batch messages into large datagrams, flushed at least every 100 ms.
        (NFULA_CFG_NLBUFSIZ, (128u32 * 1024).to_be_bytes().to_vec()),
        (NFULA_CFG_TIMEOUT, 10u32.to_be_bytes().to_vec()),
        (NFULA_CFG_FLAGS, NFULNL_CFG_F_SEQ.to_be_bytes().to_vec()),
    ];
    configure(sock, 3, &config_msg(0, 0, &attrs))
        .map_err(|e| format!("configuring NFLOG group 0: {}", wire::Errno(e)))
}

/// Shared between the listener thread, scrapes and shutdown.
struct Shared {
    counts: Counts,
    /// Why the collector is not running, if it is not.
    failure: Mutex<Option<String>>,
    stop: AtomicBool,
    /// What to write back on exit, once the settings were changed.
    restore: Mutex<Option<Settings>>,
}

pub struct ConntrackInvalid {
    shared: Arc<Shared>,
    procfs: PathBuf,
    state_file: PathBuf,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl ConntrackInvalid {
    pub fn start(r: &Resources, o: &Options) -> Self {
        let state_file = per_namespace(&o.state_file);
        let shared = Arc::new(Shared {
            counts: Counts::new(o.max_devices),
            failure: Mutex::new(None),
            stop: AtomicBool::new(false),
            restore: Mutex::new(None),
        });
        let me = ConntrackInvalid {
            shared: shared.clone(),
            procfs: r.procfs.clone(),
            state_file,
            thread: Mutex::new(None),
        };
        match me.setup(o.protocol) {
            Ok(sock) => {
                let spawned = std::thread::Builder::new()
                    .name("nflog-listener".into())
                    .spawn(move || listen(sock, &shared));
                match spawned {
                    Ok(h) => *me.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(h),
                    Err(e) => me.fail(format!("could not start the NFLOG listener: {e}")),
                }
            }
            Err(why) => me.fail(why),
        }
        me
    }

    fn fail(&self, why: String) {
        *self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// Binds the group, then changes the settings, recording the originals first.
    fn setup(&self, protocol: u8) -> Result<NlSocket, String> {
        let sock = NlSocket::connect(NlFamily::Netfilter, None, Groups::empty())
            .map_err(|e| format!("opening an nfnetlink socket: {e}"))?;
        bind_group(&sock)?;
        let original = match std::fs::read_to_string(&self.state_file)
            .ok()
            .and_then(|t| Settings::from_state(&t))
        {
            Some(left) => {
                tracing::warn!(
                    state_file = %self.state_file.display(),
                    "found leftover settings from a run that did not exit cleanly; restoring those on exit"
                );
                left
            }
            None => Settings::read(&self.procfs)
                .map_err(|e| format!("reading conntrack log settings: {e}"))?,
        };
        if let Some(dir) = self.state_file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(&self.state_file, original.to_state())
            .map_err(|e| format!("writing state file {}: {e}", self.state_file.display()))?;
        *self
            .shared
            .restore
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(original.clone());
        let ours = Settings {
            log_invalid: protocol.to_string(),
            nf_log_v4: "nfnetlink_log".into(),
            nf_log_v6: "nfnetlink_log".into(),
        };
        if let Err(e) = ours.write(&self.procfs, false) {
            self.restore();
            return Err(format!("changing conntrack log settings: {e}"));
        }
        tracing::info!(
            nf_conntrack_log_invalid = %ours.log_invalid,
            previous = %original.log_invalid.as_str(),
            "logging conntrack-invalid packets to NFLOG group 0; settings are restored on exit"
        );
        crate::netlink::set_recv_buffer(&sock, 8 << 20);
        Ok(sock)
    }

    fn restore(&self) {
        let Some(original) = self
            .shared
            .restore
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        match original.write(&self.procfs, true) {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.state_file);
                tracing::info!(nf_conntrack_log_invalid = %original.log_invalid, "conntrack log settings restored");
            }
            Err(e) => {
                tracing::error!(error = %e, state_file = %self.state_file.display(), "could not restore conntrack log settings; the state file keeps them")
            }
        }
    }
}

/// Replaces `{netns}` in the state file path with this network namespace's inode, so
/// exporters in different namespaces (qrouter-…, say) never take each other's settings.
fn per_namespace(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    if !text.contains("{netns}") {
        return path.to_path_buf();
    }
    use std::os::unix::fs::MetadataExt;
    let id = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
    PathBuf::from(text.replace("{netns}", &id.to_string()))
}

/// The listener: reads datagrams until told to stop; ENOBUFS means the kernel dropped
/// messages for want of socket buffer, and is counted, never ignored.
fn listen(sock: NlSocket, shared: &Shared) {
    // Wake up regularly to see whether shutdown asked the thread to stop.
    let _ = crate::netlink::set_recv_timeout(&sock, std::time::Duration::from_millis(200));
    let mut buf = vec![0u8; 256 * 1024];
    while !shared.stop.load(Ordering::Relaxed) {
        match sock.recv(&mut buf[..], Msg::empty()) {
            Ok((n, _)) => shared.counts.ingest(buf.get(..n).unwrap_or_default()),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                shared.counts.overruns.fetch_add(1, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                *shared.failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("NFLOG socket: {e}"));
                return;
            }
        }
    }
}

impl Collector for ConntrackInvalid {
    fn preflight(&self) -> Result<(), CollectError> {
        match self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            Some(why) => Err(CollectError::new(why)),
            None => Ok(()),
        }
    }

    fn collect(&self, _: &Scrape) -> Result<Vec<Family>, CollectError> {
        self.preflight()?;
        Ok(self.shared.counts.render())
    }

    fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
        self.restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_from_kernel_texts() {
        assert_eq!(
            reason_of("nf_ct_proto_6: bad checksum "),
            Reason::BadChecksum
        );
        assert_eq!(
            reason_of("nf_ct_proto_17: bad checksum "),
            Reason::BadChecksum
        );
        assert_eq!(
            reason_of(
                "nf_ct_proto_6: SEQ is over the upper bound (over the window of the receiver)"
            ),
            Reason::OutOfWindow
        );
        assert_eq!(
            reason_of("nf_ct_proto_6: ACK is under the lower bound (possible overly delayed ACK)"),
            Reason::OutOfWindow
        );
        assert_eq!(
            reason_of("nf_ct_proto_6: invalid tcp flag combination "),
            Reason::InvalidFlags
        );
        assert_eq!(
            reason_of("nf_ct_proto_6: truncated packet "),
            Reason::Truncated
        );
        assert_eq!(
            reason_of("nf_ct_proto_6: invalid state "),
            Reason::InvalidState
        );
        assert_eq!(reason_of("nf_ct_proto_1: something new "), Reason::Other);
    }

    #[test]
    fn tcp_flag_classes() {
        assert_eq!(flags_of(0x02), TcpFlags::Syn);
        assert_eq!(flags_of(0x12), TcpFlags::SynAck);
        assert_eq!(flags_of(0x11), TcpFlags::Fin);
        assert_eq!(flags_of(0x04), TcpFlags::Rst);
        assert_eq!(flags_of(0x14), TcpFlags::Rst);
        assert_eq!(flags_of(0x18), TcpFlags::Ack);
        assert_eq!(flags_of(0x07), TcpFlags::Other);
        assert_eq!(flags_of(0x00), TcpFlags::Other);
    }

    #[test]
    fn frame_sizes() {
        // The seed's FIN/ACK: 20 + 20 bytes of IP and TCP, a 54-byte frame.
        assert_eq!(size_of_frame(40), SizeClass::Lt60);
        assert_eq!(size_of_frame(46), SizeClass::S60to127);
        assert_eq!(size_of_frame(113), SizeClass::S60to127);
        assert_eq!(size_of_frame(114), SizeClass::S128to1023);
        assert_eq!(size_of_frame(1500), SizeClass::Ge1024);
    }

    fn packet_msg(family: u8, prefix: &[u8], payload: &[u8], seq: u32) -> Vec<u8> {
        let mut p = vec![family, 0, 0, 0];
        wire::push_attr(&mut p, NFULA_PREFIX, prefix);
        wire::push_attr(&mut p, NFULA_IFINDEX_INDEV, &7u32.to_be_bytes());
        wire::push_attr(&mut p, NFULA_SEQ, &seq.to_be_bytes());
        wire::push_attr(&mut p, NFULA_PAYLOAD, payload);
        let mut m = wire::request(NFNL_SUBSYS_ULOG << 8, 0, 0, &p);
        m[..4].copy_from_slice(&((16 + p.len()) as u32).to_ne_bytes());
        m
    }

    fn finack_v4() -> Vec<u8> {
        let mut ip = vec![
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let mut tcp = vec![0u8; 20];
        tcp[12] = 5 << 4;
        tcp[13] = 0x11;
        ip.extend(tcp);
        ip
    }

    /// An IPv6 packet: fixed header with `first` as Next Header, then `rest`.
    fn v6(first: u8, rest: &[u8]) -> Vec<u8> {
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend((rest.len() as u16).to_be_bytes());
        ip.extend([first, 64]);
        ip.extend([0u8; 32]);
        ip.extend(rest);
        ip
    }

    #[test]
    fn ipv6_extension_headers_are_walked_to_the_transport() {
        let mut fin_ack = vec![0u8; 20];
        fin_ack[12] = 5 << 4;
        fin_ack[13] = 0x11;
        let ext = |next: u8, len8: u8| -> Vec<u8> {
            let mut h = vec![next, len8];
            h.resize((usize::from(len8) + 1) * 8, 0);
            h
        };
        let frag = |next: u8, offset: u16| -> Vec<u8> {
            let mut h = vec![next, 0];
            h.extend((offset << 3).to_be_bytes());
            h.extend([0, 0, 0, 1]);
            h
        };
        let ah = [vec![6, 4], vec![0; 22]].concat(); // (4 + 2) * 4 bytes
        let cases: Vec<(&str, Vec<u8>, Proto, TcpFlags)> = vec![
            ("no extension", v6(6, &fin_ack), Proto::Tcp, TcpFlags::Fin),
            (
                "hop-by-hop, destination options",
                v6(0, &[ext(60, 0), ext(6, 1), fin_ack.clone()].concat()),
                Proto::Tcp,
                TcpFlags::Fin,
            ),
            (
                "routing, first fragment",
                v6(43, &[ext(44, 0), frag(6, 0), fin_ack.clone()].concat()),
                Proto::Tcp,
                TcpFlags::Fin,
            ),
            (
                "AH",
                v6(51, &[ah, fin_ack.clone()].concat()),
                Proto::Tcp,
                TcpFlags::Fin,
            ),
            (
                "later fragment: no TCP header in it",
                v6(44, &[frag(6, 185), vec![0xff; 16]].concat()),
                Proto::Tcp,
                TcpFlags::Other,
            ),
            (
                "cut inside an extension",
                v6(60, &[60, 2, 0, 0]),
                Proto::Other,
                TcpFlags::None,
            ),
            (
                "ICMPv6 after hop-by-hop",
                v6(0, &[ext(58, 0), vec![128, 0, 0, 0]].concat()),
                Proto::Icmpv6,
                TcpFlags::None,
            ),
        ];
        for (what, packet, proto, flags) in cases {
            let m = packet_msg(10, b"nf_ct_proto_6: bad checksum \0", &packet, 1);
            let msg = wire::messages(FAMILY, &m).next().unwrap().unwrap();
            let r = parse_record(&msg).unwrap().unwrap();
            assert_eq!(
                (r.family, r.proto, r.flags),
                (IpFamily::V6, proto, flags),
                "{what}"
            );
        }
    }

    #[test]
    fn classifies_a_seed_finack_and_counts_gaps() {
        let counts = Counts::new(4);
        let mut dgram = packet_msg(2, b"nf_ct_proto_6: bad checksum \0", &finack_v4(), 10);
        dgram.extend(packet_msg(
            2,
            b"nf_ct_proto_6: bad checksum \0",
            &finack_v4(),
            13,
        ));
        counts.ingest(&dgram);
        assert_eq!(counts.messages.load(Ordering::Relaxed), 2);
        assert_eq!(counts.lost.load(Ordering::Relaxed), 2);
        let r = Record {
            family: IpFamily::V4,
            proto: Proto::Tcp,
            reason: Reason::BadChecksum,
            size: SizeClass::Lt60,
            flags: TcpFlags::Fin,
            indev: Some(7),
            seq: None,
            from_conntrack: true,
        };
        assert_eq!(counts.classes[class_index(&r)].load(Ordering::Relaxed), 2);
        let mut out = Vec::new();
        crate::render::encode_text(counts.render(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("packetpath_conntrack_invalid_packets_total{family=\"ipv4\",protocol=\"tcp\",reason=\"bad_checksum\",size_class=\"lt60\",tcp_flags=\"fin\"} 2\n"), "{text}");
    }

    #[test]
    fn undecodable_and_uncounted_messages_are_not_lost_messages() {
        let counts = Counts::new(4);
        let bad = b"nf_ct_proto_6: bad checksum \0";
        let mut dgram = packet_msg(2, bad, &finack_v4(), 1);
        // Seq 2: an IP header cut short (a decode error); seq 3: a bridge-family message.
        dgram.extend(packet_msg(2, bad, &[0x45], 2));
        dgram.extend(packet_msg(7, bad, &finack_v4(), 3));
        dgram.extend(packet_msg(2, bad, &finack_v4(), 4));
        counts.ingest(&dgram);
        assert_eq!(counts.messages.load(Ordering::Relaxed), 2);
        assert_eq!(counts.errors.load(Ordering::Relaxed), 1);
        assert_eq!(counts.lost.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn other_nflog_users_are_not_counted_as_invalid() {
        let counts = Counts::new(4);
        let mut dgram = packet_msg(2, b"nf_ct_proto_6: bad checksum \0", &finack_v4(), 1);
        dgram.extend(packet_msg(2, b"DROP-IN \0", &finack_v4(), 2));
        dgram.extend(packet_msg(
            2,
            b"nf_ct_proto_6: bad checksum \0",
            &finack_v4(),
            3,
        ));
        counts.ingest(&dgram);
        assert_eq!(counts.messages.load(Ordering::Relaxed), 2);
        assert_eq!(counts.lost.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn malformed_messages_are_counted_never_panic() {
        let counts = Counts::new(4);
        let good = packet_msg(2, b"nf_ct_proto_6: bad checksum \0", &finack_v4(), 1);
        for end in 0..good.len() {
            counts.ingest(&good[..end]);
        }
        // A payload cut before the IP header's protocol field.
        counts.ingest(&packet_msg(2, b"x\0", &[0x45, 0], 2));
        assert!(counts.errors.load(Ordering::Relaxed) >= 2);
        let mut x: u32 = 99;
        for _ in 0..2000 {
            let junk: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            counts.ingest(&junk);
        }
    }

    #[test]
    fn device_cardinality_is_capped_and_gone_devices_free_their_slot() {
        let counts = Counts::new(2);
        let from = |dev: u32| Record {
            family: IpFamily::V4,
            proto: Proto::Udp,
            reason: Reason::Other,
            size: SizeClass::Lt60,
            flags: TcpFlags::None,
            indev: Some(dev),
            seq: None,
            from_conntrack: true,
        };
        for dev in 1..=5 {
            counts.record(&from(dev));
        }
        let name = |gone: u32| {
            move |i: u32| match i {
                OTHER_DEVICE => Some("other".to_owned()),
                i => (i != gone).then(|| format!("d{i}")),
            }
        };
        let mut live = counts.live_devices(name(0));
        live.sort();
        let want = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
            v.iter().map(|(d, n)| (d.to_string(), *n)).collect()
        };
        assert_eq!(live, want(&[("d1", 1), ("d2", 1), ("other", 3)]));
        // Device 1 is deleted: its series ends and device 6 takes its slot.
        counts.live_devices(name(1));
        counts.record(&from(6));
        counts.record(&from(7));
        let mut live = counts.live_devices(name(1));
        live.sort();
        assert_eq!(live, want(&[("d2", 1), ("d6", 1), ("other", 4)]));
    }

    #[test]
    fn state_file_is_per_namespace() {
        let plain = Path::new("/run/x.state");
        assert_eq!(per_namespace(plain), plain);
        let p = per_namespace(Path::new("/run/x-{netns}.state"))
            .display()
            .to_string();
        let id = p.trim_start_matches("/run/x-").trim_end_matches(".state");
        assert!(
            !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()),
            "{p}"
        );
    }

    #[test]
    fn state_file_round_trip() {
        let s = Settings {
            log_invalid: "0".into(),
            nf_log_v4: "nf_log_ipv4".into(),
            nf_log_v6: "NONE".into(),
        };
        assert_eq!(Settings::from_state(&s.to_state()), Some(s));
        assert_eq!(Settings::from_state("nf_log/2 x\n"), None);
    }
}
