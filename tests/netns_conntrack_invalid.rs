//! The conntrack_invalid collector against the running kernel. Packets that conntrack
//! marks invalid for known reasons (bad checksums, impossible TCP flags, a truncated
//! header, a FIN/ACK of no connection) are sent from a peer namespace; every class must be
//! counted exactly, agree with the kernel's own counters, and the host settings the
//! collector changes must be put back, after a clean stop and after a hard kill. A group
//! already taken by someone else is left alone.
//!
//! What the kernel logs (verified on 6.18; the prefix is "nf_ct_proto_N: TEXT "):
//! - bad TCP or UDP checksum with nf_conntrack_checksum=1: "bad checksum";
//! - bad ICMP checksum: "bad hw icmp checksum";
//! - SYN|FIN|RST, SYN|FIN, no flags: "invalid tcp flag combination";
//! - a TCP header shorter than its data offset: "truncated packet";
//! - a FIN/ACK or RST with a good checksum and no connection: "invalid new";
//! - a bare ACK of no connection is not invalid (nf_conntrack_tcp_loose picks it up).
//!
//! Conntrack's statistics count the rejected ICMP packet as `error`, not `invalid`; every
//! other one here as `invalid`. nftables' `ct state invalid` matches them all.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    ConntrackBed, Exporter, Metrics, Netns, icmp_echo, netfilter_sysctl, require_root,
    set_netfilter_sysctl, tcp, tcp_segment, udp_datagram, wait_for,
};
use neli::consts::socket::{Msg, NlFamily};
use neli::socket::NlSocket;
use neli::utils::Groups;
use packetpath_exporter::netlink::wire;

const PACKETS: &str = "packetpath_conntrack_invalid_packets_total";
const DEVICES: &str = "packetpath_conntrack_invalid_device_packets_total";
const MESSAGES: &str = "packetpath_conntrack_invalid_log_messages_total";
const OVERRUNS: &str = "packetpath_conntrack_invalid_log_overruns_total";
const LOST: &str = "packetpath_conntrack_invalid_log_lost_total";
const ERRORS: &str = "packetpath_conntrack_invalid_log_errors_total";
const STATS_INVALID: &str = "packetpath_conntrack_invalid_total";

/// A directory for one test's state file, removed when dropped.
struct StateDir(PathBuf);

impl StateDir {
    fn new(tag: &str) -> StateDir {
        let dir = std::env::temp_dir().join(format!("pp-ctinv-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create state dir");
        StateDir(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("conntrack-invalid.state")
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The exporter in the server namespace with conntrack and conntrack_invalid only.
/// The exporter with conntrack_invalid on, its defaults, and `state`'s file.
fn start_invalid(ns: &Netns, port: u16, state: &StateDir) -> Exporter {
    start(
        ns,
        port,
        &state.file(),
        "--collector.conntrack_invalid",
        &[],
    )
}

/// packetpath_scrape_collector_success of `collector`.
fn success(m: &Metrics, collector: &str) -> f64 {
    m.value(
        "packetpath_scrape_collector_success",
        &[("collector", collector)],
    )
}

fn start(ns: &Netns, port: u16, state: &Path, enable: &str, extra: &[&str]) -> Exporter {
    let state = state.display().to_string();
    let mut args = vec![
        "--collector.disable-defaults",
        "--collector.conntrack",
        enable,
        "--collector.conntrack_invalid.state-file",
        &state,
    ];
    args.extend_from_slice(extra);
    Exporter::start(ns, port, None, &args)
}

/// A conntrack bed with checksum checking on and the exporter (conntrack_invalid enabled,
/// its own state file) in the server namespace.
fn checksum_bed(tag: &str, port: u16) -> (ConntrackBed, StateDir, Exporter) {
    let bed = ConntrackBed::new();
    bed.set_checksum(true);
    let state = StateDir::new(tag);
    let e = start(
        &bed.srv,
        port,
        &state.file(),
        "--collector.conntrack_invalid",
        &[],
    );
    (bed, state, e)
}

/// The three settings the collector changes, as the namespace has them now.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LogSettings {
    log_invalid: String,
    nf_log_v4: String,
    nf_log_v6: String,
}

impl LogSettings {
    fn read(ns: &Netns) -> LogSettings {
        LogSettings {
            log_invalid: netfilter_sysctl(ns, "nf_conntrack_log_invalid"),
            nf_log_v4: netfilter_sysctl(ns, "nf_log/2"),
            nf_log_v6: netfilter_sysctl(ns, "nf_log/10"),
        }
    }

    fn collecting(protocol: &str) -> LogSettings {
        LogSettings {
            log_invalid: protocol.into(),
            nf_log_v4: "nfnetlink_log".into(),
            nf_log_v6: "nfnetlink_log".into(),
        }
    }
}

/// Settings unlike the kernel's defaults (0, nf_log_ipv4, nf_log_ipv6), so that a restore
/// that writes defaults instead of what it found is caught.
fn set_unusual_settings(ns: &Netns) -> LogSettings {
    set_netfilter_sysctl(ns, "nf_conntrack_log_invalid", "17");
    set_netfilter_sysctl(ns, "nf_log/10", "NONE");
    let s = LogSettings::read(ns);
    assert_eq!(s.log_invalid, "17");
    assert_eq!(s.nf_log_v6, "NONE");
    assert_ne!(s.nf_log_v4, "nfnetlink_log");
    s
}

fn scalar(m: &Metrics, name: &str) -> f64 {
    m.value(name, &[])
}

type Class = (String, String, String, String, String);

/// Every `packetpath_conntrack_invalid_packets_total` series that counted something:
/// (family, protocol, reason, size_class, tcp_flags) -> value. (The TCP bad-checksum
/// series exist at 0 from the start; the first test checks them.)
fn classes(m: &Metrics) -> BTreeMap<Class, f64> {
    m.select(PACKETS, &[])
        .filter(|(_, v)| *v != 0.0)
        .map(|(l, v)| {
            let get = |k: &str| l.get(k).cloned().unwrap_or_else(|| format!("<no {k}>"));
            let key = (
                get("family"),
                get("protocol"),
                get("reason"),
                get("size_class"),
                get("tcp_flags"),
            );
            (key, v)
        })
        .collect()
}

/// One kind of invalid packet the test sends, and the series it must land in.
struct Kind {
    what: &'static str,
    proto: i32,
    packets: Vec<Vec<u8>>,
    /// protocol, reason, size_class, tcp_flags (family is ipv4).
    want: [&'static str; 4],
}

/// The size class of the Ethernet frame that carries `l4` behind a 20-byte IPv4 header.
fn size_class(l4: &[u8]) -> &'static str {
    match 14 + 20 + l4.len() {
        0..60 => "lt60",
        60..128 => "60to127",
        128..1024 => "128to1023",
        _ => "ge1024",
    }
}

fn kinds() -> Vec<Kind> {
    let tcp_p = libc::IPPROTO_TCP;
    let fin_ack = tcp::FIN | tcp::ACK;
    let seg = |n: u16, base: u16, flags: u8, payload: usize, corrupt: bool| -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| tcp_segment(base + i, 80, flags, &vec![b'x'; payload], corrupt))
            .collect()
    };
    let truncated: Vec<Vec<u8>> = (0..2)
        .map(|i| {
            // A data offset of 15 words (60 bytes) on a 20-byte segment.
            let mut s = tcp_segment(41900 + i, 80, tcp::SYN, &[], false);
            s[12] = 15 << 4;
            s
        })
        .collect();
    vec![
        // The seed incident: zero-payload FIN/ACKs under the 60-byte minimum.
        Kind {
            what: "bad-checksum FIN/ACK, 54-byte frames",
            proto: tcp_p,
            packets: [
                seg(4, 41000, fin_ack, 0, true),
                seg(3, 41010, fin_ack, 5, true),
            ]
            .concat(),
            want: ["tcp", "bad_checksum", "lt60", "fin"],
        },
        // Frames of exactly 60 and 127 bytes: both edges of the class.
        Kind {
            what: "bad-checksum SYN with payload, 60..127-byte frames",
            proto: tcp_p,
            packets: [
                seg(3, 41100, tcp::SYN, 6, true),
                seg(2, 41110, tcp::SYN, 73, true),
            ]
            .concat(),
            want: ["tcp", "bad_checksum", "60to127", "syn"],
        },
        // Invalid for another reason with a good checksum; 128-byte frames (the edge).
        // An impossible combination is "other", whatever flags it holds: fin, syn and rst
        // name the segments a connection really sends.
        Kind {
            what: "good-checksum SYN|FIN|RST, 128-byte frames",
            proto: tcp_p,
            packets: seg(4, 41200, tcp::SYN | tcp::FIN | tcp::RST, 74, false),
            want: ["tcp", "invalid_flags", "128to1023", "other"],
        },
        Kind {
            what: "bad-checksum ACK|PSH, 1024-byte frames",
            proto: tcp_p,
            packets: seg(3, 41300, tcp::ACK | tcp::PSH, 970, true),
            want: ["tcp", "bad_checksum", "ge1024", "ack"],
        },
        Kind {
            what: "bad-checksum SYN/ACK",
            proto: tcp_p,
            packets: seg(2, 41400, tcp::SYN | tcp::ACK, 0, true),
            want: ["tcp", "bad_checksum", "lt60", "synack"],
        },
        Kind {
            what: "bad-checksum RST/ACK",
            proto: tcp_p,
            packets: seg(2, 41500, tcp::RST | tcp::ACK, 0, true),
            want: ["tcp", "bad_checksum", "lt60", "rst"],
        },
        Kind {
            what: "good-checksum segment with no flags",
            proto: tcp_p,
            packets: seg(2, 41600, 0, 0, false),
            want: ["tcp", "invalid_flags", "lt60", "other"],
        },
        // With checksum checking off this is the seed's packet too: a FIN/ACK of no
        // connection is invalid by state ("invalid new").
        Kind {
            what: "good-checksum FIN/ACK of no connection",
            proto: tcp_p,
            packets: seg(3, 41700, fin_ack, 0, false),
            want: ["tcp", "invalid_state", "lt60", "fin"],
        },
        Kind {
            what: "truncated TCP header",
            proto: tcp_p,
            packets: truncated,
            want: ["tcp", "truncated", "lt60", "syn"],
        },
        Kind {
            what: "bad-checksum UDP",
            proto: libc::IPPROTO_UDP,
            packets: (0..3)
                .map(|i| udp_datagram(42000 + i, 53, b"abcd", true))
                .collect(),
            want: ["udp", "bad_checksum", "lt60", "none"],
        },
        Kind {
            what: "bad-checksum ICMP echo, 110-byte frames",
            proto: libc::IPPROTO_ICMP,
            packets: (0..2).map(|i| icmp_echo(7, i, &[0; 68], true)).collect(),
            want: ["icmp", "bad_checksum", "60to127", "none"],
        },
    ]
}

#[test]
fn every_class_of_invalid_packet_is_counted_exactly() {
    if !require_root("every_class_of_invalid_packet_is_counted_exactly") {
        return;
    }
    let (bed, _state, e) = checksum_bed("classes", 19500);
    let kinds = kinds();
    // The test's own arithmetic first: each kind's frames are in the class it expects.
    for k in &kinds {
        for p in &k.packets {
            assert_eq!(size_class(p), k.want[2], "{}", k.what);
        }
    }
    let total: usize = kinds.iter().map(|k| k.packets.len()).sum();

    let m0 = e.scrape();
    assert_eq!(success(&m0, "conntrack_invalid"), 1.0);
    // The seed signature's series exist before the first such packet, so its first
    // increase is seen: every TCP bad-checksum class, both families.
    let seed = [
        ("family", "ipv4"),
        ("protocol", "tcp"),
        ("reason", "bad_checksum"),
        ("size_class", "lt60"),
        ("tcp_flags", "fin"),
    ];
    assert_eq!(m0.value(PACKETS, &seed), 0.0);
    let preset = m0.select(PACKETS, &[("protocol", "tcp"), ("reason", "bad_checksum")]);
    assert_eq!(preset.count(), 2 * 4 * 7);
    let nft0 = bed.nft_invalid_drops();
    let proc0 = bed.proc_invalid();
    for k in &kinds {
        bed.send_raw(k.proto, k.packets.clone());
    }
    wait_for(
        "nftables to count every invalid packet",
        Duration::from_secs(5),
        || bed.nft_invalid_drops() - nft0 == total as u64,
    );
    wait_for(
        "the exporter to receive every log message",
        Duration::from_secs(5),
        || scalar(&e.scrape(), MESSAGES) - scalar(&m0, MESSAGES) >= total as f64,
    );
    // Anything late or doubled would show up by now.
    std::thread::sleep(Duration::from_millis(500));
    let text = e.scrape_text();
    common::promtool_check(&text);
    let m1 = Metrics::parse(&text);

    let mut want: BTreeMap<Class, f64> = BTreeMap::new();
    for k in &kinds {
        let [p, r, s, f] = k.want.map(str::to_owned);
        *want.entry(("ipv4".into(), p, r, s, f)).or_default() += k.packets.len() as f64;
    }
    let before = classes(&m0);
    let got: BTreeMap<Class, f64> = classes(&m1)
        .into_iter()
        .map(|(c, v)| {
            let d = v - before.get(&c).copied().unwrap_or(0.0);
            (c, d)
        })
        .filter(|(_, d)| *d != 0.0)
        .collect();
    let missing: Vec<_> = want
        .iter()
        .filter(|(c, v)| got.get(*c) != Some(*v))
        .collect();
    let extra: Vec<_> = got.iter().filter(|(c, _)| !want.contains_key(*c)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "per-class counts differ\n  expected but not found: {missing:#?}\n  found but not expected: {extra:#?}"
    );

    let delta = |name: &str| scalar(&m1, name) - scalar(&m0, name);
    let total = total as f64;
    assert_eq!(got.values().sum::<f64>(), total);
    assert_eq!(delta(MESSAGES), total);
    assert_eq!(delta(OVERRUNS), 0.0);
    assert_eq!(delta(LOST), 0.0);
    assert_eq!(scalar(&m1, OVERRUNS), 0.0);
    assert_eq!(scalar(&m1, LOST), 0.0);
    assert_eq!(scalar(&m1, ERRORS), 0.0);
    // The kernel's own counts of the same packets. conntrack counts an ICMP packet it
    // rejects (a bad checksum here) as `error`, not `invalid`, although it logs it and
    // nftables sees it as ct state invalid.
    let icmp: f64 = kinds
        .iter()
        .filter(|k| k.proto == libc::IPPROTO_ICMP)
        .map(|k| k.packets.len() as f64)
        .sum();
    assert_eq!(delta(STATS_INVALID), total - icmp);
    assert_eq!(delta("packetpath_conntrack_error_total"), icmp);
    assert_eq!(scalar(&m1, STATS_INVALID), bed.proc_invalid() as f64);
    assert_eq!((bed.proc_invalid() - proc0) as f64, total - icmp);
    // Every one came in on s0.
    let dev = |m: &Metrics| m.get(DEVICES, &[("device", "s0")]).unwrap_or(0.0);
    assert_eq!(dev(&m1) - dev(&m0), total);
    assert_eq!(m1.select(DEVICES, &[]).count(), 1, "{text}");
    e.stop();
}

#[test]
fn devices_past_the_cap_count_as_other_until_a_slot_frees() {
    if !require_root("devices_past_the_cap_count_as_other_until_a_slot_frees") {
        return;
    }
    let bed = ConntrackBed::new();
    bed.set_checksum(true);
    // A second link into the server, on its own subnet: c1 -> s1.
    bed.add_second_link();
    let state = StateDir::new("devcap");
    let e = start(
        &bed.srv,
        19501,
        &state.file(),
        "--collector.conntrack_invalid",
        &["--collector.conntrack_invalid.max-devices", "1"],
    );
    let finacks = |n: u16| -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| tcp_segment(43000 + i, 80, tcp::FIN | tcp::ACK, &[], true))
            .collect()
    };
    bed.send_raw(libc::IPPROTO_TCP, finacks(3));
    wait_for("3 messages", Duration::from_secs(5), || {
        scalar(&e.scrape(), MESSAGES) == 3.0
    });
    // Bad-checksum FIN/ACKs to s1's address, out of c1. Their checksums were computed for
    // SERVER's address and then corrupted: wrong for s1's too (5 messages below prove it).
    let s1_rx = || -> u64 {
        bed.srv
            .exec("cat /sys/class/net/s1/statistics/rx_packets")
            .trim()
            .parse()
            .unwrap()
    };
    let send_to_s1 = |segs: Vec<Vec<u8>>| {
        let want = s1_rx() + segs.len() as u64;
        let s1: std::net::IpAddr = [10, 201, 1, 2].into();
        bed.cli
            .enter(move || common::send_raw_to(s1, libc::IPPROTO_TCP, &segs, None));
        wait_for("segments at s1", Duration::from_secs(5), || s1_rx() >= want);
    };
    send_to_s1(finacks(2));
    wait_for("5 messages", Duration::from_secs(5), || {
        scalar(&e.scrape(), MESSAGES) == 5.0
    });
    let devices = || -> BTreeMap<String, f64> {
        e.scrape()
            .select(DEVICES, &[])
            .map(|(l, v)| (l["device"].clone(), v))
            .collect()
    };
    let counted = |v: &[(&str, f64)]| -> BTreeMap<String, f64> {
        v.iter().map(|(d, n)| (d.to_string(), *n)).collect()
    };
    assert_eq!(devices(), counted(&[("s0", 3.0), ("other", 2.0)]));

    // s0 deleted (a VM's TAP gone with the VM): its series ends and s1 takes the slot.
    bed.srv.exec("ip link del s0");
    assert_eq!(devices(), counted(&[("other", 2.0)]));
    send_to_s1(finacks(2));
    wait_for("7 messages", Duration::from_secs(5), || {
        scalar(&e.scrape(), MESSAGES) == 7.0
    });
    assert_eq!(devices(), counted(&[("s1", 2.0), ("other", 2.0)]));
    e.stop();
}

/// IPv6 packets with a Destination Options header before TCP are classified by their TCP
/// header, as conntrack itself finds it.
#[test]
fn ipv6_extension_headers_are_walked() {
    if !require_root("ipv6_extension_headers_are_walked") {
        return;
    }
    let bed = ConntrackBed::new();
    bed.set_checksum(true);
    // New namespaces inherit this host's disable_ipv6=1.
    for (ns, dev, addr) in [
        (&bed.cli, "c0", "fd00:201::1"),
        (&bed.srv, "s0", "fd00:201::2"),
    ] {
        ns.exec(&format!(
            "echo 0 > /proc/sys/net/ipv6/conf/{dev}/disable_ipv6 && ip -6 addr add {addr}/64 dev {dev} nodad"
        ));
    }
    let state = StateDir::new("v6");
    let e = start_invalid(&bed.srv, 19506, &state);
    let server: std::net::IpAddr = "fd00:201::2".parse().unwrap();
    // Bad-checksum FIN/ACKs: 3 behind an 8-byte Destination Options header (PadN), 2 bare.
    let dest_opts = [0u8, 0, 1, 4, 0, 0, 0, 0];
    let finacks = |base: u16, n: u16| -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| tcp_segment(base + i, 80, tcp::FIN | tcp::ACK, &[], true))
            .collect()
    };
    let (with, bare) = (finacks(44000, 3), finacks(44100, 2));
    let want = bed.s0_rx_packets() + 5;
    bed.cli.enter(move || {
        common::send_raw_to(server, libc::IPPROTO_TCP, &with, Some(&dest_opts));
        common::send_raw_to(server, libc::IPPROTO_TCP, &bare, None);
    });
    wait_for("packets at the server", Duration::from_secs(10), || {
        bed.s0_rx_packets() >= want
    });
    wait_for("5 messages", Duration::from_secs(5), || {
        scalar(&e.scrape(), MESSAGES) == 5.0
    });
    // Ethernet frames of 82 (14 + 40 + 8 + 20) and 74 bytes.
    let want: BTreeMap<Class, f64> = [(
        (
            "ipv6".to_owned(),
            "tcp".to_owned(),
            "bad_checksum".to_owned(),
            "60to127".to_owned(),
            "fin".to_owned(),
        ),
        5.0,
    )]
    .into();
    assert_eq!(classes(&e.scrape()), want);
    e.stop();
}

#[test]
fn settings_are_restored_after_sigterm() {
    if !require_root("settings_are_restored_after_sigterm") {
        return;
    }
    let bed = ConntrackBed::new();
    let original = set_unusual_settings(&bed.srv);
    let state = StateDir::new("restore");
    let e = start_invalid(&bed.srv, 19502, &state);
    assert_eq!(LogSettings::read(&bed.srv), LogSettings::collecting("255"));
    assert!(state.file().exists(), "no state file while running");
    let m = e.scrape();
    assert_eq!(success(&m, "conntrack_invalid"), 1.0);
    // What the collector set shows in the conntrack collector's own gauge.
    assert_eq!(
        m.value(
            "packetpath_conntrack_sysctl",
            &[("name", "nf_conntrack_log_invalid")]
        ),
        255.0
    );
    let log = e.stop();
    assert_eq!(LogSettings::read(&bed.srv), original, "log was:\n{log}");
    assert!(
        !state.file().exists(),
        "state file left after a clean exit:\n{log}"
    );
    assert!(!log.contains("leftover"), "{log}");

    // --collector.conntrack_invalid.protocol, through the dashed alias of every name.
    let e = start(
        &bed.srv,
        19502,
        &state.file(),
        "--collector.conntrack-invalid",
        &["--collector.conntrack-invalid.protocol", "6"],
    );
    assert_eq!(LogSettings::read(&bed.srv), LogSettings::collecting("6"));
    let log = e.stop();
    assert_eq!(LogSettings::read(&bed.srv), original, "log was:\n{log}");
    assert!(!state.file().exists(), "{log}");

    // SIGINT (Ctrl-C) restores too.
    let e = start_invalid(&bed.srv, 19502, &state);
    assert_eq!(LogSettings::read(&bed.srv), LogSettings::collecting("255"));
    // SAFETY: kill(2) on our child.
    assert_eq!(unsafe { libc::kill(e.pid(), libc::SIGINT) }, 0);
    wait_for(
        "the state file to go after SIGINT",
        Duration::from_secs(5),
        || !state.file().exists(),
    );
    assert_eq!(LogSettings::read(&bed.srv), original);
}

#[test]
fn a_hard_kill_leaves_a_state_file_that_the_next_run_restores_from() {
    if !require_root("a_hard_kill_leaves_a_state_file_that_the_next_run_restores_from") {
        return;
    }
    let bed = ConntrackBed::new();
    let original = set_unusual_settings(&bed.srv);
    let state = StateDir::new("leftover");
    let e = start_invalid(&bed.srv, 19503, &state);
    assert_eq!(LogSettings::read(&bed.srv), LogSettings::collecting("255"));
    drop(e); // SIGKILL: no chance to restore
    assert!(state.file().exists(), "the state file must survive a kill");
    assert_eq!(LogSettings::read(&bed.srv), LogSettings::collecting("255"));

    // The next run finds the changed settings in place; it must restore the originals
    // from the state file, not what it finds.
    let e = start_invalid(&bed.srv, 19503, &state);
    assert_eq!(LogSettings::read(&bed.srv), LogSettings::collecting("255"));
    assert_eq!(success(&e.scrape(), "conntrack_invalid"), 1.0);
    let log = e.stop();
    assert_eq!(
        log.lines().filter(|l| l.contains("leftover")).count(),
        1,
        "log was:\n{log}"
    );
    assert_eq!(LogSettings::read(&bed.srv), original, "log was:\n{log}");
    assert!(!state.file().exists(), "{log}");
}

/// An NFLOG listener of the test's own: another program (ulogd, say) holding group 0.
struct NflogListener {
    sock: NlSocket,
}

const NFULNL_MSG_PACKET: u16 = 4 << 8;
const NFULNL_MSG_CONFIG: u16 = (4 << 8) | 1;
const NFULA_PREFIX: u16 = 10;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;

impl NflogListener {
    /// Binds NFLOG group 0 in `ns`, copying whole packets.
    fn bind(ns: &Netns) -> NflogListener {
        let sock = ns.enter(|| {
            NlSocket::connect(NlFamily::Netfilter, None, Groups::empty()).expect("nfnetlink socket")
        });
        packetpath_exporter::netlink::set_recv_timeout(
            &sock,
            std::time::Duration::from_millis(200),
        )
        .expect("SO_RCVTIMEO");
        let l = NflogListener { sock };
        assert_eq!(
            l.config(1, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]),
            0,
            "bind"
        );
        let mut mode = 0xffffu32.to_be_bytes().to_vec();
        mode.extend_from_slice(&[2, 0]); // NFULNL_COPY_PACKET, pad
        assert_eq!(l.config(2, NFULA_CFG_MODE, &mode), 0, "mode");
        // One message per datagram, sent at once (the default batches up to 100, for 1 s).
        assert_eq!(
            l.config(3, NFULA_CFG_QTHRESH, &1u32.to_be_bytes()),
            0,
            "qthresh"
        );
        l
    }

    /// One NFULNL_MSG_CONFIG for group 0 with an ACK; returns the kernel's error code.
    fn config(&self, seq: u32, attr: u16, data: &[u8]) -> i32 {
        let mut payload = vec![libc::AF_UNSPEC as u8, 0];
        payload.extend_from_slice(&0u16.to_be_bytes());
        wire::push_attr(&mut payload, attr, data);
        let msg = wire::request(NFULNL_MSG_CONFIG, wire::NLM_F_REQUEST | 0x4, seq, &payload);
        self.sock.send(&msg, Msg::empty()).expect("send config");
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = vec![0u8; 8192];
        while Instant::now() < deadline {
            let Ok((n, _)) = self.sock.recv(&mut buf[..], Msg::empty()) else {
                continue;
            };
            for m in wire::messages("nfnetlink_log", &buf[..n]).flatten() {
                if m.seq == seq && m.ty == wire::NLMSG_ERROR {
                    return i32::from_ne_bytes(m.payload[..4].try_into().unwrap());
                }
            }
        }
        panic!("no answer to NFLOG config {seq}");
    }

    /// The prefixes of the packet messages received within `wait`.
    fn prefixes(&self, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        while Instant::now() < deadline {
            let Ok((n, _)) = self.sock.recv(&mut buf[..], Msg::empty()) else {
                continue;
            };
            for m in wire::messages("nfnetlink_log", &buf[..n]).flatten() {
                if m.ty != NFULNL_MSG_PACKET {
                    continue;
                }
                for a in wire::attrs("nfnetlink_log", "NFULA", &m.payload[4..]).flatten() {
                    if a.ty & 0x7fff == NFULA_PREFIX {
                        let text = String::from_utf8_lossy(a.payload);
                        out.push(text.trim_end_matches('\0').to_owned());
                    }
                }
            }
        }
        out
    }
}

#[test]
fn a_group_bound_by_someone_else_is_left_alone() {
    if !require_root("a_group_bound_by_someone_else_is_left_alone") {
        return;
    }
    let bed = ConntrackBed::new();
    bed.set_checksum(true);
    let listener = NflogListener::bind(&bed.srv);
    set_netfilter_sysctl(&bed.srv, "nf_log/2", "nfnetlink_log");
    set_netfilter_sysctl(&bed.srv, "nf_conntrack_log_invalid", "255");
    let theirs = LogSettings::read(&bed.srv);
    let state = StateDir::new("conflict");
    let send_finacks = |n: u16| {
        let segs = (0..n)
            .map(|i| tcp_segment(44000 + i, 80, tcp::FIN | tcp::ACK, &[], true))
            .collect();
        bed.send_raw(libc::IPPROTO_TCP, segs);
    };
    // The listener works before the exporter starts...
    send_finacks(1);
    assert_eq!(
        listener.prefixes(Duration::from_millis(500)),
        ["nf_ct_proto_6: bad checksum "]
    );

    let e = start_invalid(&bed.srv, 19504, &state);
    for _ in 0..3 {
        let m = e.scrape();
        assert_eq!(success(&m, "conntrack_invalid"), 0.0);
        assert_eq!(m.select(PACKETS, &[]).count(), 0);
        // The other collectors are unaffected.
        assert_eq!(success(&m, "conntrack"), 1.0);
    }
    assert_eq!(LogSettings::read(&bed.srv), theirs);
    assert!(!state.file().exists(), "a state file for nothing changed");
    // ...while it runs...
    send_finacks(2);
    assert_eq!(
        listener.prefixes(Duration::from_millis(500)),
        ["nf_ct_proto_6: bad checksum "; 2]
    );
    let log = e.stop();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("NFLOG group 0 is already bound"))
        .collect();
    assert_eq!(said.len(), 1, "log was:\n{log}");
    // Said at start, before the exporter listens, not at the first scrape.
    let line = |what: &str| log.lines().position(|l| l.contains(what));
    assert!(
        line("NFLOG group 0 is already bound") < line("msg=listening"),
        "log was:\n{log}"
    );
    // ...and after it stopped: nothing was "restored" over the other program's settings.
    assert_eq!(LogSettings::read(&bed.srv), theirs, "log was:\n{log}");
    assert!(!state.file().exists());
    send_finacks(1);
    assert_eq!(
        listener.prefixes(Duration::from_millis(500)),
        ["nf_ct_proto_6: bad checksum "]
    );
}

/// Drops the kernel counted on the namespace's nfnetlink (protocol 12) sockets: messages
/// that found a full receive buffer.
fn nfnetlink_drops(ns: &Netns) -> u64 {
    ns.exec("cat /proc/net/netlink")
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"12")).then(|| f.get(8)?.parse::<u64>().ok())?
        })
        .sum()
}

#[test]
fn messages_lost_while_the_exporter_is_stalled_are_counted_exactly() {
    if !require_root("messages_lost_while_the_exporter_is_stalled_are_counted_exactly") {
        return;
    }
    let bed = ConntrackBed::new();
    bed.set_checksum(true);
    let _state = StateDir::new("loss");
    // The flood is the point here: no governor pausing it (see
    // tests/netns_conntrack_invalid_governor.rs).
    let e = start(
        &bed.srv,
        19505,
        &_state.file(),
        "--collector.conntrack_invalid",
        &["--collector.conntrack_invalid.max-rate=1000000000"],
    );
    let m0 = e.scrape();
    let nft0 = bed.nft_invalid_drops();
    let finack = tcp_segment(45000, 80, tcp::FIN | tcp::ACK, &[], true);
    // Stop the exporter and send until its NFLOG socket overflows.
    // SAFETY: kill(2) on our child.
    assert_eq!(unsafe { libc::kill(e.pid(), libc::SIGSTOP) }, 0);
    let mut sent = 0u64;
    while nfnetlink_drops(&bed.srv) == 0 {
        assert!(sent < 2_000_000, "no overflow after {sent} packets");
        bed.send_raw(libc::IPPROTO_TCP, vec![finack.clone(); 50_000]);
        sent += 50_000;
        std::thread::sleep(Duration::from_millis(200)); // let the kernel deliver, or find the socket full
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(e.pid(), libc::SIGCONT) }, 0);
    // A gap in NFULA_SEQ shows only when a later message arrives: send one more.
    std::thread::sleep(Duration::from_millis(500));
    bed.send_raw(libc::IPPROTO_TCP, vec![finack.clone()]);
    let kernel = (bed.nft_invalid_drops() - nft0) as f64;
    assert_eq!(kernel, (sent + 1) as f64);
    wait_for(
        "messages + lost to account for every invalid packet",
        Duration::from_secs(10),
        || {
            let m = e.scrape();
            scalar(&m, MESSAGES) + scalar(&m, LOST) - scalar(&m0, MESSAGES) >= kernel
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let m = e.scrape();
    let messages = scalar(&m, MESSAGES) - scalar(&m0, MESSAGES);
    let lost = scalar(&m, LOST);
    assert!(
        lost > 0.0 && messages > 0.0,
        "messages {messages} lost {lost}"
    );
    assert_eq!(messages + lost, kernel, "messages {messages} lost {lost}");
    assert!(scalar(&m, OVERRUNS) >= 1.0);
    assert_eq!(scalar(&m, ERRORS), 0.0);
    assert_eq!(classes(&m).values().sum::<f64>(), messages);
    e.stop();
}
