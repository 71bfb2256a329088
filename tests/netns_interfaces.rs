//! The interfaces collector against the running kernel: devices with known traffic in
//! namespaces this test creates; every counter must equal sysfs, and the roles be right.

mod common;

use std::time::Duration;

use common::{Exporter, Metrics, Netns, require_root, send_frames, wait_for};

/// (metric, sysfs statistics file) for every counter the collector exports.
const PAIRS: &[(&str, &str)] = &[
    ("packetpath_interface_receive_packets_total", "rx_packets"),
    ("packetpath_interface_transmit_packets_total", "tx_packets"),
    ("packetpath_interface_receive_bytes_total", "rx_bytes"),
    ("packetpath_interface_transmit_bytes_total", "tx_bytes"),
    ("packetpath_interface_receive_errors_total", "rx_errors"),
    ("packetpath_interface_transmit_errors_total", "tx_errors"),
    ("packetpath_interface_receive_dropped_total", "rx_dropped"),
    ("packetpath_interface_transmit_dropped_total", "tx_dropped"),
    (
        "packetpath_interface_receive_missed_total",
        "rx_missed_errors",
    ),
    (
        "packetpath_interface_receive_nohandler_total",
        "rx_nohandler",
    ),
];

/// Scrapes while sysfs holds still (read before and after), then checks every counter of
/// every device against sysfs. Returns the scrape.
fn scrape_matching_sysfs(ns: &Netns, exporter: &Exporter) -> Metrics {
    let quiet = |mut s: std::collections::BTreeMap<(String, String), u64>| {
        s.retain(|(d, _), _| d != "lo");
        s
    };
    for _ in 0..5 {
        let before = ns.sysfs_stats();
        let m = exporter.scrape();
        if quiet(ns.sysfs_stats()) != quiet(before.clone()) {
            continue;
        }
        // lo carries the scrape itself, so it cannot hold still; every other device must.
        let devices: std::collections::BTreeSet<&String> = before
            .keys()
            .map(|(d, _)| d)
            .filter(|d| *d != "lo")
            .collect();
        assert!(!devices.is_empty());
        for dev in devices {
            for (metric, file) in PAIRS {
                let want = before[&(dev.clone(), (*file).to_owned())];
                let got = m.value(metric, &[("device", dev)]);
                assert_eq!(got, want as f64, "{metric} for {dev} in {}", ns.name);
            }
        }
        let exported = m.select("packetpath_interface_info", &[]).count();
        assert_eq!(
            exported,
            before.keys().filter(|(_, s)| s == "rx_packets").count()
        );
        return m;
    }
    panic!(
        "sysfs counters in {} never held still across a scrape",
        ns.name
    );
}

#[test]
fn veth_tap_and_vxlan_counters_and_roles_match_the_kernel() {
    if !require_root("veth_tap_and_vxlan_counters_and_roles_match_the_kernel") {
        return;
    }
    let a = Netns::new("ifa");
    let b = Netns::new("ifb");
    // veth-a <-> veth-b, veth-b enslaved to a bridge; an underlay to namespace b and a
    // vxlan tunnel over it; a veth end carrying OVS's tunnel device name.
    a.exec("ip link add veth-a type veth peer name veth-b && ip link add br0 type bridge && ip link set veth-b master br0");
    a.exec("ip link add genev_sys_6081 type veth peer name gs-peer");
    sh_link(&a, &b);
    a.exec(
        "ip link add vx0 type vxlan id 42 dstport 4789 local 10.200.0.1 remote 10.200.0.2 dev ul-a",
    );
    b.exec(
        "ip link add vx0 type vxlan id 42 dstport 4789 local 10.200.0.2 remote 10.200.0.1 dev ul-b",
    );
    for l in [
        "veth-a",
        "veth-b",
        "br0",
        "vx0",
        "genev_sys_6081",
        "gs-peer",
    ] {
        a.exec(&format!("ip link set {l} up"));
    }
    b.exec("ip link set vx0 up");

    // The "VM": a TAP whose fd this test holds open.
    let tap = a.enter(|| common::open_tap("tap0"));
    a.exec("ip link set tap0 up");

    a.enter(|| {
        send_frames("veth-a", 5, 100);
        send_frames("vx0", 7, 80);
        send_frames("tap0", 4, 90); // host -> VM: the TAP's transmit
    });
    // The VM reads what the host sent: only then does the kernel count the TAP's transmit.
    assert_eq!(common::read_tap(&tap, 4), vec![90; 4]);
    common::write_tap(&tap, 3, 64); // VM -> host: the TAP's receive
    wait_for(
        "7 frames through the vxlan tunnel",
        Duration::from_secs(10),
        || b.sysfs_stats()[&("vx0".to_owned(), "rx_packets".to_owned())] == 7,
    );

    let ea = Exporter::start(&a, 19479, None, &["--no-collector.conntrack"]);
    let eb = Exporter::start(&b, 19479, None, &["--no-collector.conntrack"]);
    let m = scrape_matching_sysfs(&a, &ea);
    let mb = scrape_matching_sysfs(&b, &eb);

    // Exact traffic, as sent.
    let v = |m: &Metrics, metric: &str, dev: &str| m.value(metric, &[("device", dev)]);
    // vxlan counts received bytes after pulling the inner Ethernet header (80 - 14).
    let expected: &[(&Metrics, &str, &str, f64)] = &[
        (&m, "transmit_packets", "veth-a", 5.0),
        (&m, "transmit_bytes", "veth-a", 500.0),
        (&m, "receive_packets", "veth-b", 5.0),
        (&m, "transmit_packets", "vx0", 7.0),
        (&mb, "receive_packets", "vx0", 7.0),
        (&mb, "receive_bytes", "vx0", 7.0 * 66.0),
        (&m, "transmit_packets", "tap0", 4.0),
        (&m, "transmit_bytes", "tap0", 360.0),
        (&m, "receive_packets", "tap0", 3.0),
        (&m, "receive_bytes", "tap0", 192.0),
    ];
    for (scrape, stem, dev, want) in expected {
        let metric = format!("packetpath_interface_{stem}_total");
        assert_eq!(v(scrape, &metric, dev), *want, "{metric} {dev}");
    }

    // Roles, kinds, masters, state.
    let info = |dev: &str| {
        let (labels, value) = m
            .select("packetpath_interface_info", &[("device", dev)])
            .next()
            .unwrap_or_else(|| panic!("no info for {dev}"));
        assert_eq!(value, 1.0);
        let l = |k: &str| labels[k].clone();
        (l("role"), l("kind"), l("master"), l("operstate"))
    };
    let s = |x: &str| x.to_owned();
    assert_eq!(info("vx0"), (s("tunnel"), s("vxlan"), s(""), s("unknown")));
    assert_eq!(
        info("genev_sys_6081"),
        (s("tunnel"), s("veth"), s(""), s("up"))
    );
    // tun never sets an operstate of its own.
    assert_eq!(info("tap0"), (s("vm"), s("tun"), s(""), s("unknown")));
    assert_eq!(info("veth-a"), (s("other"), s("veth"), s(""), s("up")));
    assert_eq!(info("veth-b"), (s("other"), s("veth"), s("br0"), s("up")));
    assert_eq!(info("br0").0, "other");
    assert_eq!(info("lo"), (s("other"), s(""), s(""), s("unknown")));
    assert_eq!(
        m.value(
            "packetpath_interface_receive_packets_total",
            &[("device", "tap0")]
        ),
        m.value(
            "packetpath_interface_receive_packets_total",
            &[("device", "tap0"), ("role", "vm")]
        )
    );
    assert_eq!(
        m.value("packetpath_interface_mtu_bytes", &[("device", "vx0")]),
        1450.0
    );
    assert_eq!(
        m.value("packetpath_interface_mtu_bytes", &[("device", "veth-a")]),
        1500.0
    );
    assert_eq!(
        m.value(
            "packetpath_scrape_collector_success",
            &[("collector", "interfaces")]
        ),
        1.0
    );

    // Role overrides and device filters.
    drop(ea);
    let ea = Exporter::start(
        &a,
        19479,
        None,
        &[
            "--no-collector.conntrack",
            "--collector.interfaces.vm-regex=^veth-",
            "--collector.interfaces.device-exclude=^(lo|gs-peer)$",
        ],
    );
    let m = ea.scrape();
    let role = |dev: &str| {
        m.select("packetpath_interface_info", &[("device", dev)])
            .next()
            .map(|(l, _)| l["role"].clone())
    };
    assert_eq!(role("veth-a").as_deref(), Some("vm"));
    assert_eq!(role("tap0").as_deref(), Some("other"));
    assert_eq!(role("lo"), None);
    assert_eq!(role("gs-peer"), None);
    assert_eq!(role("vx0").as_deref(), Some("tunnel"));
    drop(tap);
}

fn sh_link(a: &Netns, b: &Netns) {
    common::sh(&format!(
        "ip -n {} link add ul-a type veth peer name ul-b netns {}",
        a.name, b.name
    ));
    a.exec("ip addr add 10.200.0.1/30 dev ul-a && ip link set ul-a up");
    b.exec("ip addr add 10.200.0.2/30 dev ul-b && ip link set ul-b up");
}

#[test]
fn two_hundred_veth_pairs_with_traffic_match_sysfs() {
    if !require_root("two_hundred_veth_pairs_with_traffic_match_sysfs") {
        return;
    }
    let ns = Netns::new("veth200");
    let mut batch = String::new();
    for i in 0..200 {
        batch.push_str(&format!("link add p{i}a type veth peer name p{i}b\n"));
    }
    for i in 0..200 {
        batch.push_str(&format!("link set p{i}a up\nlink set p{i}b up\n"));
    }
    let file = std::env::temp_dir().join(format!("{}.batch", ns.name));
    std::fs::write(&file, batch).expect("write batch");
    common::sh(&format!("ip -n {} -batch {}", ns.name, file.display()));
    let _ = std::fs::remove_file(&file);

    // Pair i carries (i % 5) + 1 frames of 60 + i % 40 bytes.
    let plan: Vec<(usize, usize)> = (0..200).map(|i| (i % 5 + 1, 60 + i % 40)).collect();
    let sent = plan.clone();
    ns.enter(move || {
        for (i, (count, len)) in sent.iter().enumerate() {
            send_frames(&format!("p{i}a"), *count, *len);
        }
    });
    let e = Exporter::start(&ns, 19479, None, &["--no-collector.conntrack"]);
    let m = scrape_matching_sysfs(&ns, &e);
    for (i, (count, len)) in plan.iter().enumerate() {
        let (a, b) = (format!("p{i}a"), format!("p{i}b"));
        assert_eq!(
            m.value(
                "packetpath_interface_transmit_packets_total",
                &[("device", &a)]
            ),
            *count as f64
        );
        assert_eq!(
            m.value(
                "packetpath_interface_transmit_bytes_total",
                &[("device", &a)]
            ),
            (count * len) as f64
        );
        assert_eq!(
            m.value(
                "packetpath_interface_receive_packets_total",
                &[("device", &b)]
            ),
            *count as f64
        );
        assert_eq!(
            m.value(
                "packetpath_interface_receive_bytes_total",
                &[("device", &b)]
            ),
            (count * len) as f64
        );
    }
    assert_eq!(m.select("packetpath_interface_info", &[]).count(), 401);
}
