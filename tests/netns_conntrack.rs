//! The conntrack collector against the running kernel: TCP segments with deliberately
//! wrong checksums, sent from a peer namespace into one where conntrack is active
//! (nftables `ct state invalid counter drop`), must move the invalid counter exactly.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{ConntrackBed, Exporter, Metrics, require_root, wait_for};

fn invalid(m: &Metrics) -> f64 {
    m.value("packetpath_conntrack_invalid_total", &[])
}

#[test]
fn bad_checksums_count_as_invalid_exactly_when_checksum_checking_is_on() {
    if !require_root("bad_checksums_count_as_invalid_exactly_when_checksum_checking_is_on") {
        return;
    }
    let mut bed = ConntrackBed::new();
    let e = Exporter::start(&bed.srv, 19480, None, &["--no-collector.interfaces"]);
    let per_cpu = Exporter::start(
        &bed.srv,
        19481,
        None,
        &["--no-collector.interfaces", "--collector.conntrack.per-cpu"],
    );
    const N: u16 = 9;
    const M: u16 = 6;

    bed.set_checksum(true);
    let m0 = e.scrape();
    assert_eq!(
        m0.value(
            "packetpath_conntrack_sysctl",
            &[("name", "nf_conntrack_checksum")]
        ),
        1.0
    );
    assert_eq!(
        m0.value("packetpath_conntrack_source_info", &[("source", "netlink")]),
        1.0
    );
    bed.send(N, M);
    wait_for(
        "nftables to count the invalid drops",
        Duration::from_secs(5),
        || bed.nft_invalid_drops() == u64::from(N),
    );
    let m1 = e.scrape();
    assert_eq!(invalid(&m1) - invalid(&m0), f64::from(N));
    assert_eq!(invalid(&m1), bed.proc_invalid() as f64);
    // (The M good SYNs are answered by RSTs: their entries close at once, and the scrapes
    // themselves add loopback entries, so the table size says nothing exact here.)

    // Per CPU, the series add up to the same total.
    let pc = per_cpu.scrape();
    let cpus: Vec<_> = pc
        .select("packetpath_conntrack_invalid_total", &[])
        .collect();
    assert!(!cpus.is_empty());
    assert!(cpus.iter().all(|(l, _)| l.contains_key("cpu")));
    assert_eq!(cpus.iter().map(|(_, v)| v).sum::<f64>(), invalid(&m1));

    bed.set_checksum(false);
    let m2 = e.scrape();
    assert_eq!(
        m2.value(
            "packetpath_conntrack_sysctl",
            &[("name", "nf_conntrack_checksum")]
        ),
        0.0
    );
    bed.send(N, M);
    // Give the kernel time to have counted anything it was going to count.
    std::thread::sleep(Duration::from_millis(300));
    let m3 = e.scrape();
    assert_eq!(invalid(&m3) - invalid(&m2), 0.0);
    assert_eq!(bed.nft_invalid_drops(), u64::from(N));
    assert_eq!(invalid(&m3), bed.proc_invalid() as f64);
}

#[test]
fn unprivileged_exporter_falls_back_to_procfs_and_agrees_with_ctnetlink() {
    if !require_root("unprivileged_exporter_falls_back_to_procfs_and_agrees_with_ctnetlink") {
        return;
    }
    let mut bed = ConntrackBed::new();
    bed.set_checksum(true);
    bed.send(4, 2);
    wait_for(
        "nftables to count the invalid drops",
        Duration::from_secs(5),
        || bed.nft_invalid_drops() == 4,
    );
    let root = Exporter::start(&bed.srv, 19482, None, &[]);
    let nobody = Exporter::start(&bed.srv, 19483, Some("65534"), &[]);

    // Live output from both privilege levels is clean for promtool.
    common::promtool_check(&root.scrape_text());
    common::promtool_check(&nobody.scrape_text());
    let r = root.scrape();
    let n = nobody.scrape();
    for _ in 0..2 {
        nobody.scrape();
    }
    // Both collectors still succeed; the source says how conntrack was read.
    for c in ["interfaces", "conntrack"] {
        assert_eq!(
            n.value("packetpath_scrape_collector_success", &[("collector", c)]),
            1.0,
            "{c}"
        );
    }
    assert_eq!(
        n.value("packetpath_conntrack_source_info", &[("source", "procfs")]),
        1.0
    );
    assert_eq!(
        r.value("packetpath_conntrack_source_info", &[("source", "netlink")]),
        1.0
    );
    assert_eq!(invalid(&n), 4.0);
    assert_eq!(invalid(&r), 4.0);
    assert_eq!(
        n.value("packetpath_conntrack_entries_limit", &[]),
        r.value("packetpath_conntrack_entries_limit", &[])
    );
    assert_eq!(
        n.value(
            "packetpath_interface_receive_packets_total",
            &[("device", "s0")]
        ),
        r.value(
            "packetpath_interface_receive_packets_total",
            &[("device", "s0")]
        )
    );
    // The same conntrack series from either source.
    let names = |m: &Metrics| -> BTreeSet<String> {
        m.samples
            .iter()
            .map(|(n, _, _)| n.clone())
            .filter(|n| n.starts_with("packetpath_conntrack_"))
            .collect()
    };
    assert_eq!(names(&n), names(&r));

    // The fallback is explained once, not on every scrape.
    let log = nobody.stop();
    let notices = log
        .matches("reading conntrack statistics from procfs")
        .count();
    assert_eq!(notices, 1, "log was:\n{log}");
    assert!(log.contains("needs CAP_NET_ADMIN"), "log was:\n{log}");
    assert!(!log.contains("level=warn"), "log was:\n{log}");
}
