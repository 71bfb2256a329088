//! The `drops` collector against the kernel's own count of dropped packets, on three kernel
//! generations: tests/vm/run.sh boots Debian bullseye (Linux 5.10: no drop reasons, the
//! dropping function stands in), bookworm (6.1) and trixie (6.12) in turn and runs the
//! drops scenario (tests/vm/guest/scenario-drops.sh). The guest counts every `kfree_skb`
//! in the kernel (a hist trigger keyed by reason; on 5.10 one tracefs instance per
//! function) from before the first induced drop; each phase induces drops of a reason of
//! its own, and the exporter's rise over the phase must equal the kernel's:
//!
//! - `full_ring`: a TAP whose reader never reads: FULL_RING (`function:tun_net_xmit`),
//!   sent − tx_queue_len, on the VM port (`device="tap0"`, `role="vm"`: the frames are for
//!   its `attached-mac`, although they arrived on the tunnel);
//! - `dev_ready`: a TAP in OVS that no process holds: DEV_READY on 6.12, NOT_SPECIFIED on
//!   6.1 (OVS's plain kfree_skb), `function:do_execute_actions` on 5.10, on that VM port;
//! - `netfilter`: an nftables input rule on the underlay: NETFILTER_DROP
//!   (`function:nf_hook_slow`) on `ul0`, role `other`;
//! - `tunnel_fw`: the same firewall dropping Geneve (UDP 6081) on the underlay:
//!   NETFILTER_DROP on the tunnel device (`genev_sys_6081`, role `tunnel`), although the
//!   packets arrived on `ul0`: encapsulated traffic is the tunnel's;
//! - `ovs_drop`: an OpenFlow drop rule: OVS_DROP_EXPLICIT on 6.12, and no drop at all on
//!   5.10 and 6.1, where the datapath frees the packet with `consume_skb`;
//! - `netns`: SYNs to a closed port in another namespace: NO_SOCKET there (`role="other_netns"`)
//!   and NO_SOCKET here for the RSTs back (`ul0`);
//! - `flood`: 100,000 drops as fast as the bed sends them: exporter + reports lost = kernel;
//! - `neighbour`: a second exporter with the collector changes nothing (success 0), its
//!   exit leaves the first counting; `restart`: after `kill -9` a fresh exporter stops the
//!   orphaned session and counts again; `exit`: SIGTERM stops monitoring and removes the
//!   state file; `competitor`: dropwatch stops the monitor under the exporter and the module
//!   is unloaded and loaded again: success 0 meanwhile, then a new session counts exactly
//!   (`recovered`).
//!
//! Drops the exporter cannot see are left out of the equality, each for a stated reason
//! (see [`unseen`]): packets without a MAC header never reach the drop monitor's packet
//! alerts (netlink messages freed unread), and the scrapes' own TCP connections over `lo`
//! drop what a closing socket still held, after the scrape that would count them.
//!
//! - `capture`: an exporter with the collector alone records its netlink traffic; replayed
//!   here through the exporter's replay transport, it counts what the live one counted.
//!
//! `PP_DROPS_RELEASES` (comma-separated) picks the releases; default all three.
//! `PP_DROPS_RESULTS=PATH` checks an existing results.txt instead of booting.

mod common;
#[path = "vm/drops_replay.rs"]
mod drops_replay;
#[path = "vm/results.rs"]
mod vm_results;

use std::collections::BTreeMap;
use std::path::Path;

use common::Metrics;
use vm_results::{Results, key_values, sysfs};

const DROPS: &str = "packetpath_kernel_drop_packets_total";
const LOST: &str = "packetpath_kernel_drop_reports_lost_total";
const OVERRUNS: &str = "packetpath_kernel_drop_socket_overruns_total";
const ACTIVE: &str = "packetpath_kernel_drop_monitor_active";
const SUCCESS: &str = "packetpath_scrape_collector_success";

fn run_bed(release: &str) -> Option<Results> {
    common::boot_release("drops", release, 400).map(|p| Results::read(&p))
}

fn metrics(r: &Results, block: &str) -> Metrics {
    common::checked_metrics(r.get(block))
}

/// The kernel's count: `reason count` lines (`function:NAME count` and `all count` on 5.10).
fn kernel(r: &Results, block: &str) -> BTreeMap<String, i64> {
    key_values(r.get(block))
        .into_iter()
        .map(|(k, v)| (k, v as i64))
        .collect()
}

/// How much the kernel's count of each reason rose over a phase (reasons that rose only).
fn kernel_rise(r: &Results, phase: &str) -> BTreeMap<String, i64> {
    let before = kernel(r, &format!("{phase}/kernel-before"));
    kernel(r, &format!("{phase}/kernel-after"))
        .into_iter()
        .map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0);
            (k, d)
        })
        .filter(|(_, d)| *d != 0)
        .collect()
}

/// The exporter's drops by (reason, device, role).
fn series(m: &Metrics) -> BTreeMap<(String, String, String), f64> {
    m.select(DROPS, &[])
        .map(|(l, v)| {
            (
                (l["reason"].clone(), l["device"].clone(), l["role"].clone()),
                v,
            )
        })
        .collect()
}

/// How much each of the exporter's series rose between two scrapes (series that rose only).
fn series_rise(before: &Metrics, after: &Metrics) -> BTreeMap<(String, String, String), i64> {
    let b = series(before);
    series(after)
        .into_iter()
        .map(|(k, v)| {
            let d = v - b.get(&k).copied().unwrap_or(0.0);
            (k, d as i64)
        })
        .filter(|(_, d)| *d != 0)
        .collect()
}

/// The exporter's rise summed by reason.
fn by_reason(rise: &BTreeMap<(String, String, String), i64>) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for ((reason, _, _), d) in rise {
        *out.entry(reason.clone()).or_insert(0) += d;
    }
    out
}

/// The rise of one (reason, device, role).
fn on(rise: &BTreeMap<(String, String, String), i64>, reason: &str, dev: &str, role: &str) -> i64 {
    rise.get(&(reason.into(), dev.into(), role.into()))
        .copied()
        .unwrap_or(0)
}

struct Kernel {
    release: String,
    /// 6.1 and 6.12: the kernel's reasons; 5.10: `function:NAME` only.
    reasons: bool,
    /// 6.12: OVS's own drop reasons (an OpenFlow drop is a drop, not consume_skb).
    ovs_reasons: bool,
    /// 6.1: reasons, but OVS frees what it cannot output with a plain kfree_skb.
    ovs_plain_kfree: bool,
}

impl Kernel {
    fn of(r: &Results, label: &str) -> Kernel {
        let release = r
            .get("boot")
            .lines()
            .find_map(|l| l.strip_prefix("release "))
            .unwrap_or("?")
            .to_owned();
        let reasons = r.get("kernel-setup").lines().next() == Some("mode hist");
        let uname = r.get("boot");
        let ovs_reasons = reasons && !uname.contains(" 6.1.");
        Kernel {
            release: format!("{label} ({release})"),
            reasons,
            ovs_reasons,
            ovs_plain_kfree: reasons && !ovs_reasons,
        }
    }

    /// The reason label of a drop: the kernel's name, or the function on 5.10.
    fn reason<'a>(&self, name: &'a str, function: &'a str) -> String {
        if self.reasons {
            name.to_owned()
        } else {
            format!("function:{function}")
        }
    }
}

/// Reasons whose kernel count includes drops the exporter can never see, with why:
/// - NOT_SPECIFIED (6.1, 6.12), and on 5.10 every function not counted one by one
///   (`all`): netlink messages freed unread (OVS's upcalls and dumps, the exporter's own
///   sockets) have no MAC header, and the drop monitor skips those in packet mode;
/// - QUEUE_PURGE (6.12), `function:sk_stream_kill_queues` (5.10): what the
///   scrapes' own TCP connections over `lo` still hold when they close, dropped after the
///   scrape that would have to count it.
fn unseen(reason: &str) -> bool {
    matches!(
        reason,
        "NOT_SPECIFIED" | "QUEUE_PURGE" | "all" | "function:sk_stream_kill_queues"
    )
}

/// A phase that sent frames to a TAP no process holds: every one dropped for that VM port.
/// 6.1's OVS frees them with a plain kfree_skb (NOT_SPECIFIED, which the scrapes' close
/// drops share: the kernel's count is at least the frames, the exporter's on tap1 exactly
/// them).
fn to_tap_nobody_holds(k: &Kernel, r: &Results, phase: &str) {
    let rel = &k.release;
    let (kr, rise) = standard(k, r, phase);
    let sent = plan(r, phase)["sent"] as i64;
    if k.ovs_plain_kfree {
        let ns = kr.get("NOT_SPECIFIED").copied().unwrap_or(0);
        assert!(ns >= sent, "{rel} {phase}: kernel {kr:?}");
        assert_eq!(
            on(&rise, "NOT_SPECIFIED", "tap1", "vm"),
            sent,
            "{rel} {phase}: {rise:?}"
        );
    } else {
        let dev_ready = k.reason("DEV_READY", "do_execute_actions");
        assert_eq!(
            kr.get(&dev_ready).copied(),
            Some(sent),
            "{rel} {phase}: kernel {kr:?}"
        );
        assert_eq!(
            on(&rise, &dev_ready, "tap1", "vm"),
            sent,
            "{rel} {phase}: {rise:?}"
        );
    }
}

/// Counts by reason (the kernel's), and by (reason, device, role) (the exporter's).
type ByReason = BTreeMap<String, i64>;
type BySeries = BTreeMap<(String, String, String), i64>;

/// Every reason the kernel or the exporter counted in `phase` (but [`unseen`] ones) rose
/// by the same amount in both. Returns the exporter's rise by series.
fn phase_agrees(
    k: &Kernel,
    r: &Results,
    phase: &str,
    before: &str,
    after: &str,
) -> (ByReason, BySeries) {
    let kr = kernel_rise(r, phase);
    let mb = metrics(r, before);
    let ma = metrics(r, after);
    let rise = series_rise(&mb, &ma);
    let er = by_reason(&rise);
    let what = format!("{}: {phase}", k.release);
    eprintln!("{what}: kernel {kr:?}\n{what}: exporter {rise:?}");
    for reason in kr.keys().chain(er.keys()) {
        if unseen(reason) {
            continue;
        }
        let kernel = kr.get(reason).copied().unwrap_or(0);
        let exporter = er.get(reason).copied().unwrap_or(0);
        assert_eq!(
            exporter, kernel,
            "{what}: {reason}: the exporter counted {exporter}, the kernel {kernel} (exporter by series {rise:?}; kernel {kr:?})"
        );
    }
    // What the exporter cannot see, it cannot count either: never more than the kernel.
    for reason in er.keys().filter(|r| unseen(r)) {
        let kernel = kr.get(reason).copied().unwrap_or(0);
        assert!(
            er[reason] <= kernel.max(0) + 2,
            "{what}: {reason}: exporter {} > kernel {kernel}",
            er[reason]
        );
    }
    if !k.reasons {
        // 5.10: whatever the exporter saw, the kernel counted in `all`.
        let total: i64 = er.values().sum();
        assert!(
            total <= kr.get("all").copied().unwrap_or(0),
            "{what}: {er:?} {kr:?}"
        );
    }
    for m in [&mb, &ma] {
        assert_eq!(m.value(ACTIVE, &[]), 1.0, "{what}: monitor active");
        assert_eq!(m.value(SUCCESS, &[("collector", "drops")]), 1.0, "{what}");
        assert_eq!(m.value(OVERRUNS, &[]), 0.0, "{what}: socket overruns");
    }
    (kr, rise)
}

fn standard(k: &Kernel, r: &Results, phase: &str) -> (ByReason, BySeries) {
    phase_agrees(
        k,
        r,
        phase,
        &format!("{phase}/metrics-before"),
        &format!("{phase}/metrics-after"),
    )
}

fn plan(r: &Results, phase: &str) -> BTreeMap<String, u64> {
    key_values(r.get(&format!("{phase}/plan")))
}

fn check(label: &str, r: &Results) {
    assert!(r.done, "{label}: the guest did not finish");
    let k = Kernel::of(r, label);
    let rel = k.release.clone();
    assert!(
        r.block("exporter-start-failed").is_none(),
        "{rel}: the exporter did not start with the drops collector: {}",
        r.get("exporter-start-failed")
    );

    // Pre-created series: VM ports and the tunnel, before any drop.
    let setup = metrics(r, "setup/metrics");
    assert_eq!(
        setup.value(SUCCESS, &[("collector", "drops")]),
        1.0,
        "{rel}"
    );
    if k.reasons {
        for (dev, role) in [
            ("tap0", "vm"),
            ("tap1", "vm"),
            ("tap2", "vm"),
            ("genev_sys_6081", "tunnel"),
        ] {
            for reason in [
                "FULL_RING",
                "DEV_READY",
                "TAP_FILTER",
                "NETFILTER_DROP",
                "QDISC_DROP",
            ] {
                assert!(
                    setup
                        .get(
                            DROPS,
                            &[("device", dev), ("role", role), ("reason", reason)]
                        )
                        .is_some(),
                    "{rel}: no pre-created series {dev} {role} {reason}"
                );
            }
        }
        // The cardinality budget: what a VM port that dropped nothing costs, as docs/metrics.md says.
        let per_port = setup
            .select(DROPS, &[("device", "tap2")])
            .filter(|(_, v)| *v == 0.0)
            .count();
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md"))
                .unwrap();
        assert!(
            readme.contains(&format!("`drops` adds **{per_port} series** per VM port")),
            "{rel}: docs/metrics.md states another drops budget than the {per_port} series of real output"
        );
    }

    // full_ring: the ring holds tx_queue_len frames, the rest are dropped, for tap0.
    let (kr, rise) = standard(&k, r, "full_ring");
    let queue: i64 = r
        .get("setup/tap-queues")
        .lines()
        .find_map(|l| {
            l.strip_prefix("tap0 ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("tap0's tx_queue_len");
    let full_ring = k.reason("FULL_RING", "tun_net_xmit");
    let sent = plan(r, "full_ring")["sent"] as i64;
    assert_eq!(
        kr.get(&full_ring).copied(),
        Some(sent - queue),
        "{rel}: kernel {kr:?}"
    );
    assert_eq!(
        on(&rise, &full_ring, "tap0", "vm"),
        sent - queue,
        "{rel}: {rise:?}"
    );
    let tx_dropped = |b: &str| sysfs(r.get(b), "tap0", "tx_dropped").unwrap() as i64;
    assert_eq!(
        tx_dropped("full_ring/sysfs"),
        sent - queue,
        "{rel}: tap0's own tx_dropped"
    );

    to_tap_nobody_holds(&k, r, "dev_ready");

    // netfilter: the host's own firewall, on the underlay device.
    let (kr, rise) = standard(&k, r, "netfilter");
    let nf = k.reason("NETFILTER_DROP", "nf_hook_slow");
    let sent = plan(r, "netfilter")["sent"] as i64;
    assert_eq!(kr.get(&nf).copied(), Some(sent), "{rel}: kernel {kr:?}");
    assert_eq!(on(&rise, &nf, "ul0", "other"), sent, "{rel}: {rise:?}");

    // tunnel_fw: the host's firewall drops Geneve on the underlay: encapsulated traffic,
    // counted for the tunnel device although it arrived on ul0.
    let (kr, rise) = standard(&k, r, "tunnel_fw");
    let sent = plan(r, "tunnel_fw")["sent"] as i64;
    assert_eq!(kr.get(&nf).copied(), Some(sent), "{rel}: kernel {kr:?}");
    assert_eq!(
        on(&rise, &nf, "genev_sys_6081", "tunnel"),
        sent,
        "{rel}: {rise:?}"
    );

    // ovs_drop: a drop on 6.12, consume_skb (no drop) before.
    let (kr, rise) = standard(&k, r, "ovs_drop");
    let sent = plan(r, "ovs_drop")["sent"] as i64;
    let ovs: i64 = kr
        .iter()
        .filter(|(reason, _)| reason.starts_with("OVS_DROP_"))
        .map(|(_, d)| d)
        .sum();
    if k.ovs_reasons {
        assert_eq!(ovs, sent, "{rel}: kernel {kr:?}");
        let to_c: i64 = rise
            .iter()
            .filter(|((reason, dev, role), _)| {
                reason.starts_with("OVS_DROP_") && dev == "tap2" && role == "vm"
            })
            .map(|(_, d)| d)
            .sum();
        assert_eq!(to_c, sent, "{rel}: {rise:?}");
    } else {
        assert_eq!(ovs, 0, "{rel}: kernel {kr:?}");
        assert!(
            !rise.keys().any(|(_, dev, _)| dev == "tap2"),
            "{rel}: consume_skb counted as a drop: {rise:?}"
        );
    }

    // netns: remote's NO_SOCKET is another namespace's, the RSTs back are ul0's.
    let (kr, rise) = standard(&k, r, "netns");
    let no_socket = k.reason("NO_SOCKET", "tcp_v4_rcv");
    let sent = plan(r, "netns")["sent"] as i64;
    assert_eq!(
        kr.get(&no_socket).copied(),
        Some(2 * sent),
        "{rel}: kernel {kr:?}"
    );
    assert_eq!(
        on(&rise, &no_socket, "", "other_netns"),
        sent,
        "{rel}: {rise:?}"
    );
    assert_eq!(
        on(&rise, &no_socket, "ul0", "other"),
        sent,
        "{rel}: {rise:?}"
    );

    // flood: exporter + reports the kernel could not queue = the kernel's count.
    let kr = kernel_rise(r, "flood");
    let mb = metrics(r, "flood/metrics-before");
    let ma = metrics(r, "flood/metrics-after");
    let rise = series_rise(&mb, &ma);
    let er = by_reason(&rise);
    let lost = (ma.value(LOST, &[]) - mb.value(LOST, &[])) as i64;
    let sent = plan(r, "flood")["sent"] as i64;
    eprintln!(
        "{rel}: flood: kernel {kr:?}, exporter {rise:?}, lost {lost}, plan {:?}",
        plan(r, "flood")
    );
    assert_eq!(
        kr.get(&full_ring).copied(),
        Some(sent),
        "{rel}: kernel {kr:?}"
    );
    assert_eq!(
        ma.value(OVERRUNS, &[]),
        0.0,
        "{rel}: flood: socket overruns"
    );
    let seen: i64 = kr
        .keys()
        .filter(|r| !unseen(r))
        .map(|r| er.get(r).copied().unwrap_or(0))
        .sum();
    let kernel_seen: i64 = kr.iter().filter(|(r, _)| !unseen(r)).map(|(_, d)| d).sum();
    assert_eq!(
        seen + lost,
        kernel_seen,
        "{rel}: flood: exporter {seen} + lost {lost} against the kernel's {kernel_seen} ({kr:?}; {rise:?})"
    );
    assert_eq!(
        er.get(&full_ring).copied().unwrap_or(0) + lost,
        sent,
        "{rel}: flood: FULL_RING + lost"
    );

    // neighbour: a second instance runs nothing and stops nothing.
    let second = metrics(r, "neighbour/metrics-second");
    assert_eq!(
        second.value(SUCCESS, &[("collector", "drops")]),
        0.0,
        "{rel}: the second exporter while the first monitors"
    );
    assert_eq!(second.get(ACTIVE, &[]).unwrap_or(0.0), 0.0, "{rel}");
    let (kr, rise) = standard(&k, r, "neighbour");
    let sent = plan(r, "neighbour")["sent"] as i64;
    assert_eq!(
        kr.get(&full_ring).copied(),
        Some(sent),
        "{rel}: kernel {kr:?}"
    );
    assert_eq!(
        on(&rise, &full_ring, "tap0", "vm"),
        sent,
        "{rel}: the first kept counting"
    );

    // restart: kill -9, then a fresh exporter takes the orphaned session over.
    assert!(
        r.get("restart/state-file-orphaned")
            .contains("drop-monitor.state"),
        "{rel}: the killed exporter's state file: {}",
        r.get("restart/state-file-orphaned")
    );
    let (kr, rise) = standard(&k, r, "restart");
    let p = plan(r, "restart");
    assert_eq!(
        kr.get(&full_ring).copied(),
        Some(p["sent_a"] as i64),
        "{rel}: {kr:?}"
    );
    assert_eq!(
        kr.get(&nf).copied(),
        Some(p["sent_host"] as i64),
        "{rel}: {kr:?}"
    );
    assert_eq!(
        on(&rise, &full_ring, "tap0", "vm"),
        p["sent_a"] as i64,
        "{rel}: {rise:?}"
    );
    assert_eq!(
        on(&rise, &nf, "ul0", "other"),
        p["sent_host"] as i64,
        "{rel}: {rise:?}"
    );

    // competitor: the module is in use while the exporter monitors; dropwatch's start is
    // refused and changes nothing; its stop ends the exporter's session (success 0), the
    // module goes (success 0, said how to load it) and comes back: a new session counts.
    let rc = |block: &str| r.get(block).lines().last().unwrap_or("").to_owned();
    assert_ne!(
        rc("competitor/rmmod-in-use"),
        "rc 0",
        "{rel}: unloaded while monitoring"
    );
    // Debian bullseye has no dropwatch package: the rest needs it.
    if r.block("competitor/no-dropwatch").is_some() {
        assert!(
            rel.contains("bullseye"),
            "{rel}: only bullseye goes without dropwatch"
        );
    } else {
        let drops_ok = |block: &str| metrics(r, block).value(SUCCESS, &[("collector", "drops")]);
        assert_eq!(drops_ok("competitor/metrics-dropwatch-start"), 1.0, "{rel}");
        assert_eq!(drops_ok("competitor/metrics-stopped"), 0.0, "{rel}");
        assert_eq!(
            rc("competitor/rmmod"),
            "rc 0",
            "{rel}: {}",
            r.get("competitor/rmmod")
        );
        assert_eq!(drops_ok("competitor/metrics-unloaded"), 0.0, "{rel}");
        let log = r.get("competitor/exporter-log");
        assert!(
            log.contains("another program stopped the kernel's drop monitor")
                && log.contains("modprobe drop_monitor"),
            "{rel}: {log}"
        );
        assert_eq!(drops_ok("recovered/metrics-before"), 1.0, "{rel}");
        to_tap_nobody_holds(&k, r, "recovered");
    }

    // exit: SIGTERM stops the session and removes the state file; a next one starts.
    assert!(
        r.get("exit/term").contains("exit status 0"),
        "{rel}: {}",
        r.get("exit/term")
    );
    assert!(
        !r.get("exit/state-file").contains("drop-monitor.state"),
        "{rel}: state file left after SIGTERM: {}",
        r.get("exit/state-file")
    );
    let next = metrics(r, "exit/metrics-next");
    assert_eq!(next.value(SUCCESS, &[("collector", "drops")]), 1.0, "{rel}");
    assert_eq!(next.value(ACTIVE, &[]), 1.0, "{rel}");

    drops_replay::replay_capture(&rel, r, &metrics(r, "capture/metrics"));
}

#[test]
fn kernel_drops_against_the_kernels_count_on_three_kernel_generations() {
    // Checks a run that is already there instead of booting (while changing this test).
    if let Ok(path) = std::env::var("PP_DROPS_RESULTS") {
        check("given results", &Results::read(Path::new(&path)));
        return;
    }
    let releases =
        std::env::var("PP_DROPS_RELEASES").unwrap_or_else(|_| "bullseye,bookworm,trixie".into());
    for release in releases.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let started = std::time::Instant::now();
        let Some(r) = run_bed(release) else { return };
        eprintln!("drops on {release}: bed {:.0?}", started.elapsed());
        check(release, &r);
    }
}
