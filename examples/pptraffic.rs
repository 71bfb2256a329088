//! Traffic with known counts for the OVS test bed (tests/vm/), where no packet tool exists.
//!
//! ```text
//! pptraffic tcp --src A --dst B --sport N --dport N [--flags syn|finack|ack|rst] [--count N]
//!               [--bad-checksum] [--interval-ms N] [--seq-offset N]
//! pptraffic churn --src A --dst B --dport N --tuples N [--first N] [--repeat K]
//!                 [--per-tick N] [--tick-ms N] [--flags syn|finack|ack] [--bad-checksum]
//! pptraffic tap-reader --dev NAME --count-file PATH [--answer-syn]
//! pptraffic nflog-zones --seconds N
//! ```
//!
//! `tcp` sends `count` zero-payload TCP segments from a raw socket with headers built here
//! (20-byte IP + 20-byte TCP: a 54-byte Ethernet frame, under the 60-byte minimum, like the
//! FIN/ACKs of the incident). Packet `i` goes to port `dport + i`, so SYNs open distinct
//! connections. The TCP checksum is right unless `--bad-checksum`; the kernel fills in the
//! IP checksum.
//!
//! `churn` sends `tuples` distinct 5-tuples to `dst`:`dport`, each `repeat` times (default
//! 3), from one raw socket, to make many short-lived exact-match datapath flows. Tuple `n`
//! (`first` ≤ n < `first + tuples`) has source port 1024 + n % 64512 and source address
//! `src` + n / 64512. Tuples go in batches of `per-tick` (default 50), one tick every
//! `tick-ms` (default 250): at tick t the first copy of batch t, the second of batch t-1
//! and so on, so the copies of a tuple are a tick apart and its first packet's upcall has
//! time to install the flow the others hit. A tick that starts late (the sender could not
//! keep up) is not made up for; `late_ticks` counts them. It prints `key value` lines:
//! `tuples`, `packets`, `first`, `ticks`, `late_ticks`, `elapsed_ms`.
//!
//! `flows` installs `count` exact-match flows into datapath `dp` over generic netlink, in
//! batches (`ovs-dpctl add-flow` would take a process per flow): every `drop-every`-th has
//! no actions (a drop), the rest output to the datapath's local port. Flow `i` matches
//! IPv4 source 10.0.0.0 + `start` + i, protocol 253 (no L4 key needed), and has UFID i.
//! It is the load for the ovs_flows benchmark (bench/ovs-flows-vm.sh).
//!
//! `measure` runs a command with its output discarded and prints its wall time and peak
//! RSS (`wall_ms N`, `maxrss_kb N`, from wait4).
//!
//! `nflog-zones` binds NFLOG group 0 with NFULNL_CFG_F_CONNTRACK for `seconds` and prints
//! one line per logged packet: `prefix`, `indev` (ifindex), the IPv4 `src`/`dst`, TCP
//! `flags` (hex), whether NFULA_CT came with it (`ct yes|no`) and its CTA_ZONE (`zone N`;
//! ctnetlink leaves the attribute out for zone 0). It answers whether conntrack-invalid
//! messages of packets tracked by the OVS datapath carry the zone OVS gave them. The
//! nf_log sysctls (`nf_conntrack_log_invalid`, `nf_log/2`) are the caller's to set.
//!
//! `--seq-offset N` adds N to `tcp`'s sequence numbers: with `--answer-syn` on the reader,
//! `tcp --flags syn` then `tcp --flags ack --seq-offset 1` (same ports) establish a
//! connection, and `--flags finack --seq-offset 1` is a FIN/ACK inside it.
//!
//! `tap-reader` is the "VM": it creates (or attaches to) TAP device `dev`, reads frames
//! until killed, and after every frame rewrites `count-file` as `frames N` and `bytes N`
//! lines (written aside and renamed, so a reader never sees half a file). With `--answer-syn`
//! it answers every TCP SYN with a SYN/ACK (sequence number 0x2000_0000, the ACK number
//! `tcp` puts in its ACK segments) written to the TAP. The file exists,
//! with zeros, as soon as the device does.

use std::io::{Error, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::exit;

const USAGE: &str = "usage:
  pptraffic tcp --src A --dst B --sport N --dport N [--flags syn|finack|ack|rst] [--count N]
                [--bad-checksum] [--interval-ms N] [--seq-offset N]
  pptraffic churn --src A --dst B --dport N --tuples N [--first N] [--repeat K]
                  [--per-tick N] [--tick-ms N] [--flags syn|finack|ack] [--bad-checksum]
  pptraffic tap-reader --dev NAME --count-file PATH [--answer-syn]
  pptraffic flows --dp NAME --count N [--start N] [--drop-every K]
  pptraffic measure COMMAND [ARG...]
  pptraffic nflog-zones [--seconds N]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("tcp") => Tcp::parse(&args[1..]).and_then(|t| t.send()),
        Some("churn") => Churn::parse(&args[1..]).and_then(|c| c.send()),
        Some("tap-reader") => TapReader::parse(&args[1..]).and_then(|t| t.run()),
        Some("flows") => install_flows(&args[1..]),
        Some("measure") => measure(&args[1..]),
        Some("nflog-zones") => nflog_zones(&args[1..]),
        _ => Err(USAGE.to_string()),
    };
    if let Err(e) = result {
        eprintln!("pptraffic: {e}");
        exit(2);
    }
}

/// Pairs `--name value` and bare `--switch` arguments; `switches` lists the bare ones.
fn options<'a>(
    args: &'a [String],
    switches: &[&str],
) -> Result<Vec<(&'a str, Option<&'a str>)>, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(name) = it.next() {
        if !name.starts_with("--") {
            return Err(format!("unexpected argument {name}\n{USAGE}"));
        }
        if switches.contains(&name.as_str()) {
            out.push((name.as_str(), None));
        } else {
            let value = it.next().ok_or_else(|| format!("{name} needs a value"))?;
            out.push((name.as_str(), Some(value.as_str())));
        }
    }
    Ok(out)
}

fn parse<T: std::str::FromStr>(name: &str, value: Option<&str>) -> Result<T, String> {
    let value = value.unwrap_or_default();
    value
        .parse()
        .map_err(|_| format!("{name}: cannot parse {value:?}"))
}

struct Tcp {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    count: u32,
    bad_checksum: bool,
    interval_ms: u64,
    seq_offset: u32,
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;

impl Tcp {
    fn parse(args: &[String]) -> Result<Tcp, String> {
        let (mut src, mut dst, mut sport, mut dport) = (None, None, None, None);
        let mut t = Tcp {
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            sport: 0,
            dport: 0,
            flags: SYN,
            count: 1,
            bad_checksum: false,
            interval_ms: 0,
            seq_offset: 0,
        };
        for (name, value) in options(args, &["--bad-checksum"])? {
            match name {
                "--src" => src = Some(parse(name, value)?),
                "--dst" => dst = Some(parse(name, value)?),
                "--sport" => sport = Some(parse(name, value)?),
                "--dport" => dport = Some(parse(name, value)?),
                "--count" => t.count = parse(name, value)?,
                "--interval-ms" => t.interval_ms = parse(name, value)?,
                "--seq-offset" => t.seq_offset = parse(name, value)?,
                "--bad-checksum" => t.bad_checksum = true,
                "--flags" => t.flags = parse_flags(value)?,
                _ => return Err(format!("tcp: unknown option {name}\n{USAGE}")),
            }
        }
        let missing = |what: &str| format!("tcp: {what} is required\n{USAGE}");
        t.src = src.ok_or_else(|| missing("--src"))?;
        t.dst = dst.ok_or_else(|| missing("--dst"))?;
        t.sport = sport.ok_or_else(|| missing("--sport"))?;
        t.dport = dport.ok_or_else(|| missing("--dport"))?;
        if u32::from(t.dport) + t.count > 65536 {
            return Err("tcp: --dport + --count runs past port 65535".into());
        }
        Ok(t)
    }

    fn send(&self) -> Result<(), String> {
        let sock = RawSocket::new()?;
        for i in 0..self.count {
            let dport = self.dport + i as u16;
            sock.send(self.dst, &self.packet(i, dport))?;
            if self.interval_ms > 0 {
                std::thread::sleep(std::time::Duration::from_millis(self.interval_ms));
            }
        }
        println!(
            "sent {} tcp {} {}:{} -> {}:{}..{} checksum={}",
            self.count,
            flags_name(self.flags),
            self.src,
            self.sport,
            self.dst,
            self.dport,
            u32::from(self.dport) + self.count.max(1) - 1,
            if self.bad_checksum { "bad" } else { "good" }
        );
        Ok(())
    }

    /// IPv4 + TCP headers, no payload.
    fn packet(&self, i: u32, dport: u16) -> Vec<u8> {
        segment(&Segment {
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport,
            flags: self.flags,
            id: (i as u16).wrapping_add(1),
            bad_checksum: self.bad_checksum,
            seq_offset: self.seq_offset,
        })
    }
}

fn parse_flags(value: Option<&str>) -> Result<u8, String> {
    match value.unwrap_or_default() {
        "syn" => Ok(SYN),
        "finack" => Ok(FIN | ACK),
        "ack" => Ok(ACK),
        "rst" => Ok(RST),
        other => Err(format!("--flags: syn, finack, ack or rst, not {other}")),
    }
}

fn flags_name(flags: u8) -> &'static str {
    match flags {
        SYN => "syn",
        ACK => "ack",
        RST => "rst",
        _ => "finack",
    }
}

/// The header fields of one zero-payload TCP segment.
struct Segment {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    /// IP ID; 0 lets the kernel choose one.
    id: u16,
    bad_checksum: bool,
    /// Added to the sequence number (1: the segments after a SYN of the same port).
    seq_offset: u32,
}

/// IPv4 + TCP headers, no payload; the IP checksum is left to the kernel.
fn segment(s: &Segment) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45; // version 4, 5-word header
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[4..6].copy_from_slice(&s.id.to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64; // TTL
    p[9] = libc::IPPROTO_TCP as u8;
    p[12..16].copy_from_slice(&s.src.octets());
    p[16..20].copy_from_slice(&s.dst.octets());

    let t = &mut p[20..];
    t[0..2].copy_from_slice(&s.sport.to_be_bytes());
    t[2..4].copy_from_slice(&s.dport.to_be_bytes());
    let seq = 0x1000_0000u32
        .wrapping_add(u32::from(s.dport) << 8)
        .wrapping_add(s.seq_offset);
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    if s.flags & ACK != 0 {
        t[8..12].copy_from_slice(&0x2000_0001u32.to_be_bytes());
    }
    t[12] = 5 << 4; // data offset: 5 words
    t[13] = s.flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());

    let mut csum = tcp_checksum(s.src, s.dst, &p[20..]);
    if s.bad_checksum {
        csum ^= 0x5a5a;
    }
    p[36..38].copy_from_slice(&csum.to_be_bytes());
    p
}

/// A raw IPv4 socket that sends whole IP packets.
struct RawSocket(OwnedFd);

impl RawSocket {
    fn new() -> Result<RawSocket, String> {
        // IPPROTO_RAW implies IP_HDRINCL: the kernel sends our IP header as is, filling in
        // only the IP checksum (and the ID when it is 0).
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(format!("raw socket: {}", Error::last_os_error()));
        }
        // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
        Ok(RawSocket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn send(&self, dst: Ipv4Addr, packet: &[u8]) -> Result<(), String> {
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: valid fd, buffer and sockaddr_in of the given length.
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n != packet.len() as isize {
            return Err(format!("sendto {dst}: {}", Error::last_os_error()));
        }
        Ok(())
    }
}

/// Many distinct 5-tuples, each sent `repeat` times a tick apart (see the module doc).
struct Churn {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
    tuples: u32,
    first: u32,
    repeat: u32,
    per_tick: u32,
    tick_ms: u64,
    flags: u8,
    bad_checksum: bool,
}

/// Source ports of churn tuples: 1024..=65535.
const CHURN_PORTS: u32 = 65536 - 1024;

impl Churn {
    fn parse(args: &[String]) -> Result<Churn, String> {
        let (mut src, mut dst, mut dport, mut tuples) = (None, None, None, None);
        let mut c = Churn {
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            dport: 0,
            tuples: 0,
            first: 0,
            repeat: 3,
            per_tick: 50,
            tick_ms: 250,
            flags: SYN,
            bad_checksum: false,
        };
        for (name, value) in options(args, &["--bad-checksum"])? {
            match name {
                "--src" => src = Some(parse(name, value)?),
                "--dst" => dst = Some(parse(name, value)?),
                "--dport" => dport = Some(parse(name, value)?),
                "--tuples" => tuples = Some(parse(name, value)?),
                "--first" => c.first = parse(name, value)?,
                "--repeat" => c.repeat = parse(name, value)?,
                "--per-tick" => c.per_tick = parse(name, value)?,
                "--tick-ms" => c.tick_ms = parse(name, value)?,
                "--flags" => c.flags = parse_flags(value)?,
                "--bad-checksum" => c.bad_checksum = true,
                _ => return Err(format!("churn: unknown option {name}\n{USAGE}")),
            }
        }
        let missing = |what: &str| format!("churn: {what} is required\n{USAGE}");
        c.src = src.ok_or_else(|| missing("--src"))?;
        c.dst = dst.ok_or_else(|| missing("--dst"))?;
        c.dport = dport.ok_or_else(|| missing("--dport"))?;
        c.tuples = tuples.ok_or_else(|| missing("--tuples"))?;
        if c.repeat == 0 || c.per_tick == 0 {
            return Err("churn: --repeat and --per-tick must be at least 1".into());
        }
        let last = c
            .first
            .checked_add(c.tuples)
            .ok_or("churn: --first + --tuples overflows")?;
        if u32::from(c.src).checked_add(last / CHURN_PORTS).is_none() {
            return Err("churn: source addresses run past 255.255.255.255".into());
        }
        Ok(c)
    }

    /// Source address and port of tuple `n`.
    fn tuple(&self, n: u32) -> (Ipv4Addr, u16) {
        let src = Ipv4Addr::from(u32::from(self.src).wrapping_add(n / CHURN_PORTS));
        (src, (1024 + n % CHURN_PORTS) as u16)
    }

    fn send(&self) -> Result<(), String> {
        use std::time::{Duration, Instant};
        let sock = RawSocket::new()?;
        let batches = self.tuples.div_ceil(self.per_tick);
        let ticks = if batches == 0 {
            0
        } else {
            batches + self.repeat - 1
        };
        let started = Instant::now();
        let (mut packets, mut late) = (0u64, 0u32);
        for tick in 0..ticks {
            // Copy `r` of batch `tick - r`, oldest batch first.
            for r in (0..self.repeat).rev() {
                let Some(batch) = tick.checked_sub(r).filter(|b| *b < batches) else {
                    continue;
                };
                let from = batch * self.per_tick;
                let to = (from + self.per_tick).min(self.tuples);
                for i in from..to {
                    let (src, sport) = self.tuple(self.first + i);
                    let packet = segment(&Segment {
                        src,
                        dst: self.dst,
                        sport,
                        dport: self.dport,
                        flags: self.flags,
                        id: (r + 1) as u16,
                        bad_checksum: self.bad_checksum,
                        seq_offset: 0,
                    });
                    sock.send(self.dst, &packet).map_err(|e| {
                        format!("{e} (after {packets} packets, tuple {})", self.first + i)
                    })?;
                    packets += 1;
                }
            }
            let next = Duration::from_millis(self.tick_ms.saturating_mul(u64::from(tick) + 1));
            match next.checked_sub(started.elapsed()) {
                Some(wait) if tick + 1 < ticks => std::thread::sleep(wait),
                Some(_) => {}
                None => late += 1,
            }
        }
        println!("tuples {}", self.tuples);
        println!("packets {packets}");
        println!("first {}", self.first);
        println!("ticks {ticks}");
        println!("late_ticks {late}");
        println!("elapsed_ms {}", started.elapsed().as_millis());
        Ok(())
    }
}

/// Ones' complement sum over the IPv4 pseudo-header and the segment (checksum field zero).
fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let mut bytes = Vec::with_capacity(12 + segment.len() + 1);
    bytes.extend_from_slice(&src.octets());
    bytes.extend_from_slice(&dst.octets());
    bytes.extend_from_slice(&[0, libc::IPPROTO_TCP as u8]);
    bytes.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    bytes.extend_from_slice(segment);
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let mut sum: u32 = bytes
        .chunks_exact(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

struct TapReader {
    dev: String,
    count_file: String,
    answer_syn: bool,
}

impl TapReader {
    fn parse(args: &[String]) -> Result<TapReader, String> {
        let (mut dev, mut count_file, mut answer_syn) = (None, None, false);
        for (name, value) in options(args, &["--answer-syn"])? {
            match name {
                "--answer-syn" => answer_syn = true,
                "--dev" => dev = value.map(str::to_string),
                "--count-file" => count_file = value.map(str::to_string),
                _ => return Err(format!("tap-reader: unknown option {name}\n{USAGE}")),
            }
        }
        let dev = dev.ok_or_else(|| format!("tap-reader: --dev is required\n{USAGE}"))?;
        if dev.is_empty() || dev.len() >= libc::IFNAMSIZ {
            return Err(format!("tap-reader: bad device name {dev:?}"));
        }
        Ok(TapReader {
            dev,
            count_file: count_file
                .ok_or_else(|| format!("tap-reader: --count-file is required\n{USAGE}"))?,
            answer_syn,
        })
    }

    fn run(&self) -> Result<(), String> {
        let fd = open_tap(&self.dev)?;
        let (mut frames, mut bytes) = (0u64, 0u64);
        self.write_count(frames, bytes)?;
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: valid fd and buffer of the given length.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let err = Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("read {}: {err}", self.dev));
            }
            frames += 1;
            bytes += n as u64;
            if self.answer_syn
                && let Some(reply) = syn_ack(&buf[..n as usize])
            {
                // SAFETY: valid fd and buffer of the given length.
                let w = unsafe { libc::write(fd.as_raw_fd(), reply.as_ptr().cast(), reply.len()) };
                if w < 0 {
                    return Err(format!("write {}: {}", self.dev, Error::last_os_error()));
                }
            }
            self.write_count(frames, bytes)?;
        }
    }

    fn write_count(&self, frames: u64, bytes: u64) -> Result<(), String> {
        let tmp = format!("{}.tmp", self.count_file);
        let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{tmp}: {e}"))?;
        writeln!(f, "frames {frames}\nbytes {bytes}").map_err(|e| format!("{tmp}: {e}"))?;
        std::fs::rename(&tmp, &self.count_file).map_err(|e| format!("{}: {e}", self.count_file))
    }
}

/// The VM's answer to a TCP SYN (flags exactly SYN) in an Ethernet frame: a SYN/ACK with
/// sequence number 0x2000_0000 (so `tcp --flags ack|finack --seq-offset 1` is the next
/// segment of that connection), right checksums, addresses and ports swapped.
fn syn_ack(frame: &[u8]) -> Option<Vec<u8>> {
    if frame.len() < 54 || frame[12..14] != [0x08, 0x00] || frame[14] != 0x45 {
        return None;
    }
    let ip = &frame[14..];
    if ip[9] != libc::IPPROTO_TCP as u8 || ip[20 + 13] != SYN {
        return None;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let seq = u32::from_be_bytes([ip[24], ip[25], ip[26], ip[27]]);
    let mut out = Vec::with_capacity(54);
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&frame[0..6]);
    out.extend_from_slice(&[0x08, 0x00]);
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = libc::IPPROTO_TCP as u8;
    p[12..16].copy_from_slice(&dst.octets());
    p[16..20].copy_from_slice(&src.octets());
    let ipsum = !fold(&p[..20]);
    p[10..12].copy_from_slice(&ipsum.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&ip[22..24]);
    t[2..4].copy_from_slice(&ip[20..22]);
    t[4..8].copy_from_slice(&0x2000_0000u32.to_be_bytes());
    t[8..12].copy_from_slice(&seq.wrapping_add(1).to_be_bytes());
    t[12] = 5 << 4;
    t[13] = SYN | ACK;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let csum = tcp_checksum(dst, src, &p[20..]);
    p[36..38].copy_from_slice(&csum.to_be_bytes());
    out.extend_from_slice(&p);
    Some(out)
}

/// The ones' complement sum of `b` (16-bit words), folded.
fn fold(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Opens /dev/net/tun as TAP `name` without packet information headers: every read is one
/// Ethernet frame. The device lives while the fd is open (unless made persistent elsewhere).
fn open_tap(name: &str) -> Result<OwnedFd, String> {
    // SAFETY: open(2) on a NUL-terminated constant path.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("open /dev/net/tun: {}", Error::last_os_error()));
    }
    // SAFETY: fd was just returned by open(2) and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF takes a struct ifreq, whose layout IfReq reproduces.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if rc != 0 {
        return Err(format!("TUNSETIFF {name}: {}", Error::last_os_error()));
    }
    Ok(fd)
}

/// Installs exact-match datapath flows in batches of messages per send(2).
fn install_flows(args: &[String]) -> Result<(), String> {
    use neli::consts::socket::{Msg, NlFamily};
    use neli::socket::NlSocket;
    use neli::utils::Groups;
    use packetpath_exporter::netlink::{KernelTransport, Transport, genl, wire};

    let (mut dp, mut count, mut start, mut drop_every) = (String::new(), 0u32, 0u32, 2u32);
    for (name, value) in options(args, &[])? {
        match name {
            "--dp" => dp = value.unwrap_or_default().to_string(),
            "--count" => count = parse(name, value)?,
            "--start" => start = parse(name, value)?,
            "--drop-every" => drop_every = parse(name, value)?,
            _ => return Err(format!("unknown option {name}\n{USAGE}")),
        }
    }
    let t = KernelTransport::new(std::time::Duration::from_secs(10));
    let families = genl::parse_families(
        &t.exchange(&genl::families_request())
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let flow_family = families
        .iter()
        .find(|(n, _)| n == "ovs_flow")
        .map(|(_, f)| f.id)
        .ok_or("no ovs_flow family: is openvswitch loaded?")?;
    let name = std::ffi::CString::new(dp.clone()).map_err(|e| e.to_string())?;
    // SAFETY: a valid C string.
    let dp_ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if dp_ifindex == 0 {
        return Err(format!("no datapath {dp}"));
    }
    let sock =
        NlSocket::connect(NlFamily::Generic, None, Groups::empty()).map_err(|e| e.to_string())?;
    sock.set_recv_buffer_size(8 << 20)
        .map_err(|e| e.to_string())?;
    let mut batch = Vec::with_capacity(64 * 1024);
    let (mut sent, mut errors) = (0u32, 0u32);
    let mut reply = vec![0u8; 64 * 1024];
    for i in 0..count {
        let n = start + i;
        let mut key = Vec::new();
        wire::push_attr(&mut key, 3, &0u32.to_ne_bytes()); // in_port: the local port
        wire::push_attr(&mut key, 4, &[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]); // eth src, dst
        wire::push_attr(&mut key, 6, &0x0800u16.to_be_bytes()); // eth_type
        let mut ipv4 = (0x0a00_0000u32 + n).to_be_bytes().to_vec();
        ipv4.extend_from_slice(&Ipv4Addr::new(10, 255, 0, 1).octets());
        ipv4.extend_from_slice(&[253, 0, 64, 0]); // proto, tos, ttl, frag=no
        wire::push_attr(&mut key, 7, &ipv4);
        let mut actions = Vec::new();
        if drop_every == 0 || n % drop_every != 0 {
            wire::push_attr(&mut actions, 1, &0u32.to_ne_bytes()); // output: the local port
        }
        let mut ufid = [0u8; 16];
        ufid[..4].copy_from_slice(&n.to_be_bytes());
        ufid[15] = 0x5a;
        let mut body = vec![1, 1, 0, 0]; // OVS_FLOW_CMD_NEW, version 1
        body.extend_from_slice(&dp_ifindex.to_ne_bytes());
        wire::push_attr(&mut body, 1, &key);
        wire::push_attr(&mut body, 2, &actions);
        wire::push_attr(&mut body, 9, &ufid);
        // NLM_F_CREATE; no ACK, so only failures answer.
        batch.extend(wire::request(
            flow_family,
            wire::NLM_F_REQUEST | 0x400,
            n,
            &body,
        ));
        if batch.len() > 60 * 1024 || i + 1 == count {
            sock.send(&batch, Msg::empty()).map_err(|e| e.to_string())?;
            batch.clear();
            sent = i + 1;
            // Drain error replies so they do not fill the socket.
            while let Ok((len, _)) = sock.recv(&mut reply[..], Msg::DONTWAIT) {
                errors += wire::messages("ovs_flow", reply.get(..len).unwrap_or_default())
                    .flatten()
                    .filter(|m| m.ty == wire::NLMSG_ERROR)
                    .count() as u32;
            }
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    while let Ok((len, _)) = sock.recv(&mut reply[..], Msg::DONTWAIT) {
        errors += wire::messages("ovs_flow", reply.get(..len).unwrap_or_default())
            .flatten()
            .filter(|m| m.ty == wire::NLMSG_ERROR)
            .count() as u32;
    }
    println!(
        "installed {} flows into {dp} ({errors} errors)",
        sent - errors
    );
    if errors > 0 {
        return Err(format!("{errors} flows were refused"));
    }
    Ok(())
}

/// Runs a command and reports its wall time and peak RSS.
fn measure(args: &[String]) -> Result<(), String> {
    let (cmd, rest) = args.split_first().ok_or(USAGE)?;
    let started = std::time::Instant::now();
    let child = std::process::Command::new(cmd)
        .args(rest)
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{cmd}: {e}"))?;
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 on our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if pid < 0 {
        return Err(format!("wait4: {}", Error::last_os_error()));
    }
    println!("wall_ms {}", started.elapsed().as_millis());
    println!("maxrss_kb {}", usage.ru_maxrss);
    println!("status {status}");
    Ok(())
}

/// Netlink attributes `(type without flags, payload)` of `b`.
fn nl_attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

/// One NFULNL_MSG_CONFIG request for group 0 with one attribute; waits for its ack.
fn nflog_config(fd: &OwnedFd, seq: u32, ty: u16, data: &[u8]) -> Result<(), String> {
    let alen = 4 + data.len();
    let mut msg = vec![0u8; 16];
    msg.extend_from_slice(&[0, 0, 0, 0]); // nfgenmsg: AF_UNSPEC, version 0, group 0
    msg.extend_from_slice(&(alen as u16).to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(data);
    msg.resize((msg.len() + 3) & !3, 0);
    let total = msg.len() as u32;
    msg[0..4].copy_from_slice(&total.to_ne_bytes());
    msg[4..6].copy_from_slice(&((4u16 << 8) | 1).to_ne_bytes()); // NFULNL_MSG_CONFIG
    msg[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg[8..12].copy_from_slice(&seq.to_ne_bytes());
    // SAFETY: valid fd and buffer.
    if unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(format!("nflog config send: {}", Error::last_os_error()));
    }
    let mut buf = vec![0u8; 8192];
    // SAFETY: valid fd and buffer.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 20 {
        return Err(format!("nflog config ack: {}", Error::last_os_error()));
    }
    let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    if errno != 0 {
        return Err(format!(
            "nflog config {ty}: {}",
            Error::from_raw_os_error(-errno)
        ));
    }
    Ok(())
}

fn nflog_zones(args: &[String]) -> Result<(), String> {
    let mut seconds = 10u64;
    for (name, value) in options(args, &[])? {
        match name {
            "--seconds" => seconds = parse(name, value)?,
            _ => return Err(format!("nflog-zones: unknown option {name}\n{USAGE}")),
        }
    }
    // SAFETY: socket(2) with constant arguments.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if raw < 0 {
        return Err(format!("netlink socket: {}", Error::last_os_error()));
    }
    // SAFETY: raw was just returned by socket(2).
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: valid fd, option and length.
    unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    nflog_config(&fd, 1, 1, &[1])?; // NFULA_CFG_CMD: NFULNL_CFG_CMD_BIND
    let mut mode = 128u32.to_be_bytes().to_vec();
    mode.extend_from_slice(&[2, 0]); // NFULNL_COPY_PACKET
    nflog_config(&fd, 2, 2, &mode)?; // NFULA_CFG_MODE
    nflog_config(&fd, 3, 6, &4u16.to_be_bytes())?; // NFULA_CFG_FLAGS: NFULNL_CFG_F_CONNTRACK
    println!("bound NFLOG group 0 with NFULNL_CFG_F_CONNTRACK for {seconds} s");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let mut buf = vec![0u8; 65536];
    while std::time::Instant::now() < deadline {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            continue;
        }
        let mut b = &buf[..n as usize];
        while b.len() >= 16 {
            let len = (u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize).min(b.len());
            let ty = u16::from_ne_bytes([b[4], b[5]]);
            if len < 16 {
                break;
            }
            if ty == 4 << 8 && len > 20 {
                print_nflog(&b[20..len]);
            }
            b = &b[((len + 3) & !3).min(b.len())..];
        }
    }
    Ok(())
}

fn print_nflog(attrs: &[u8]) {
    let (mut prefix, mut indev, mut ct, mut zone) = (String::new(), 0u32, "no", 0u16);
    let mut line = String::new();
    for (ty, v) in nl_attrs(attrs) {
        match ty {
            10 => {
                prefix = String::from_utf8_lossy(v)
                    .trim_end_matches('\0')
                    .to_string()
            }
            4 if v.len() >= 4 => indev = u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
            9 if v.len() >= 20 && v[0] >> 4 == 4 => {
                let hl = usize::from(v[0] & 15) * 4;
                let src = Ipv4Addr::new(v[12], v[13], v[14], v[15]);
                let dst = Ipv4Addr::new(v[16], v[17], v[18], v[19]);
                let flags = if v[9] == 6 && v.len() > hl + 13 {
                    v[hl + 13]
                } else {
                    0
                };
                line = format!("src {src} dst {dst} proto {} flags 0x{flags:02x}", v[9]);
            }
            18 => {
                ct = "yes";
                for (cty, cv) in nl_attrs(v) {
                    if cty == 18 && cv.len() >= 2 {
                        zone = u16::from_be_bytes([cv[0], cv[1]]);
                    }
                }
            }
            _ => {}
        }
    }
    println!("prefix {prefix:?} indev {indev} {line} ct {ct} zone {zone}");
}
