//! conntrack_invalid's governor against the running kernel: a flood of bad-checksum
//! FIN/ACKs over `--collector.conntrack_invalid.max-rate` pauses logging (the sysctl goes
//! back to the value recorded before the collector started), the packets of the pause are
//! counted from the kernel's own invalid counter, and logging resumes after the back-off.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{ConntrackBed, Exporter, Metrics, netfilter_sysctl, require_root, tcp, tcp_segment};
use common::{set_netfilter_sysctl, wait_for};

const MESSAGES: &str = "packetpath_conntrack_invalid_log_messages_total";
const ACTIVE: &str = "packetpath_conntrack_invalid_logging_active";
const PAUSES: &str = "packetpath_conntrack_invalid_logging_pauses_total";
const UNCLASSIFIED: &str = "packetpath_conntrack_invalid_unclassified_packets_total";

fn scalar(m: &Metrics, name: &str) -> f64 {
    m.value(name, &[])
}

/// The exporter in the server namespace on `port` with only conntrack_invalid, at most
/// 100 log messages a second, its state in a temporary file named after `tag` (returned
/// with it).
fn start_governed(bed: &ConntrackBed, port: u16, tag: &str) -> (Exporter, PathBuf) {
    let state = std::env::temp_dir().join(format!("{tag}-{}.state", std::process::id()));
    let state_flag = format!(
        "--collector.conntrack_invalid.state-file={}",
        state.display()
    );
    let e = Exporter::start(
        &bed.srv,
        port,
        None,
        &[
            "--collector.disable-defaults",
            "--collector.conntrack_invalid",
            "--collector.conntrack_invalid.max-rate=100",
            &state_flag,
        ],
    );
    (e, state)
}

#[test]
fn a_flood_pauses_logging_counts_what_it_missed_and_logging_resumes() {
    if !require_root("a_flood_pauses_logging_counts_what_it_missed_and_logging_resumes") {
        return;
    }
    let bed = ConntrackBed::new();
    bed.set_checksum(true);
    // Someone logs UDP's invalid packets already: that is what a pause puts back.
    set_netfilter_sysctl(&bed.srv, "nf_conntrack_log_invalid", "17");
    let (e, _state) = start_governed(&bed, 19520, "pp-ctgov");
    let log_invalid = || netfilter_sysctl(&bed.srv, "nf_conntrack_log_invalid");
    assert_eq!(log_invalid(), "255");
    let m0 = e.scrape();
    assert_eq!(scalar(&m0, ACTIVE), 1.0);
    assert_eq!(scalar(&m0, PAUSES), 0.0);
    assert_eq!(scalar(&m0, UNCLASSIFIED), 0.0);
    let kernel0 = bed.proc_invalid();
    let mut port = 47000u16;
    let mut send = |n: u16| {
        let segs = (0..n)
            .map(|i| tcp_segment(port.wrapping_add(i), 80, tcp::FIN | tcp::ACK, &[], true))
            .collect();
        port = port.wrapping_add(n);
        bed.send_raw(libc::IPPROTO_TCP, segs);
    };

    // 2,000 in a burst: far over 100 a second.
    send(2000);
    wait_for("the governor to pause", Duration::from_secs(5), || {
        scalar(&e.scrape(), ACTIVE) == 0.0
    });
    assert_eq!(log_invalid(), "17");
    let settled = || {
        let a = scalar(&e.scrape(), MESSAGES);
        std::thread::sleep(Duration::from_millis(300));
        a == scalar(&e.scrape(), MESSAGES)
    };
    wait_for(
        "queued messages to be read",
        Duration::from_secs(5),
        settled,
    );
    let m1 = e.scrape();
    assert_eq!(scalar(&m1, PAUSES), 1.0);
    let classified = scalar(&m1, MESSAGES);
    assert!(
        (100.0..2000.0).contains(&classified),
        "classified {classified}"
    );

    // While paused every invalid packet is the kernel's count alone: exactly.
    send(500);
    let m2 = e.scrape();
    assert_eq!(scalar(&m2, MESSAGES), classified);
    assert_eq!(scalar(&m2, UNCLASSIFIED) - scalar(&m1, UNCLASSIFIED), 500.0);
    // Classified + unclassified against the kernel's count: never more, and less only by
    // the packets in flight while the sysctl changed, which the log names.
    let kernel = (bed.proc_invalid() - kernel0) as f64;
    assert_eq!(kernel, 2500.0);
    let ours = scalar(&m2, MESSAGES) + scalar(&m2, UNCLASSIFIED);
    eprintln!(
        "classified {} unclassified {} kernel {kernel}",
        scalar(&m2, MESSAGES),
        scalar(&m2, UNCLASSIFIED)
    );
    assert!(ours <= kernel, "{ours} > {kernel}");

    // The first back-off is 10 s; logging is ours again after it.
    wait_for("logging to resume", Duration::from_secs(15), || {
        scalar(&e.scrape(), ACTIVE) == 1.0
    });
    assert_eq!(log_invalid(), "255");
    let m3 = e.scrape();
    send(50);
    wait_for("50 messages", Duration::from_secs(5), || {
        scalar(&e.scrape(), MESSAGES) == scalar(&m3, MESSAGES) + 50.0
    });
    let m4 = e.scrape();
    assert_eq!(scalar(&m4, UNCLASSIFIED), scalar(&m3, UNCLASSIFIED));
    assert_eq!(scalar(&m4, ACTIVE), 1.0);
    assert_eq!(scalar(&m4, PAUSES), 1.0);
    common::promtool_check(&e.scrape_text());
    let log = e.stop();
    assert_eq!(log_invalid(), "17", "{log}");
    let in_flight: f64 = log
        .lines()
        .filter_map(|l| l.split("in_flight=").nth(1)?.split_whitespace().next())
        .map(|n| n.parse::<f64>().unwrap())
        .sum();
    eprintln!("in flight at the pause and the resume: {in_flight}");
    assert!(
        ours >= kernel - in_flight,
        "{ours} + {in_flight} < {kernel}"
    );
    assert_eq!(log.matches("logging paused").count(), 1, "{log}");
    assert_eq!(log.matches("logging resumed").count(), 1, "{log}");
}

#[test]
fn a_setting_changed_by_someone_else_during_a_pause_is_theirs() {
    if !require_root("a_setting_changed_by_someone_else_during_a_pause_is_theirs") {
        return;
    }
    let bed = ConntrackBed::new();
    bed.set_checksum(true);
    let (e, state) = start_governed(&bed, 19521, "pp-ctgov2");
    let log_invalid = || netfilter_sysctl(&bed.srv, "nf_conntrack_log_invalid");
    let segs = (0..1000)
        .map(|i| tcp_segment(48000 + i, 80, tcp::FIN | tcp::ACK, &[], true))
        .collect();
    bed.send_raw(libc::IPPROTO_TCP, segs);
    wait_for("the governor to pause", Duration::from_secs(5), || {
        scalar(&e.scrape(), ACTIVE) == 0.0
    });
    assert_eq!(log_invalid(), "0");
    // An operator turns logging on for TCP while the collector has it paused.
    set_netfilter_sysctl(&bed.srv, "nf_conntrack_log_invalid", "6");
    // The back-off ends: the governor finds the value is not the one it left.
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(log_invalid(), "6");
    // Not paused by the governor any more: the setting is the operator's.
    assert_eq!(scalar(&e.scrape(), ACTIVE), 1.0);
    let log = e.stop();
    assert_eq!(log_invalid(), "6", "{log}");
    assert!(log.contains("changed by someone else"), "{log}");
    // The loggers it set are put back all the same, and the state file goes.
    assert_ne!(netfilter_sysctl(&bed.srv, "nf_log/2"), "nfnetlink_log");
    assert!(!state.exists());
}
