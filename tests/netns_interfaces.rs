//! The interfaces collector against the running kernel: devices with known traffic in
//! namespaces this test creates; every counter must equal sysfs, and the roles be right.

mod common;

use std::collections::BTreeMap;
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

/// device -> (master, operstate, MTU) as `ip -j link` shows them.
fn ip_links(ns: &Netns) -> BTreeMap<String, (String, String, u64)> {
    let links: serde_json::Value = serde_json::from_str(&ns.exec("ip -j link show")).unwrap();
    links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let text = |k: &str| l[k].as_str().unwrap_or("").to_owned();
            let state = (text("master"), text("operstate").to_lowercase());
            (
                text("ifname"),
                (state.0, state.1, l["mtu"].as_u64().unwrap()),
            )
        })
        .collect()
}

/// The same, as the exporter says it.
fn exported_links(m: &Metrics) -> BTreeMap<String, (String, String, u64)> {
    m.select("packetpath_interface_info", &[])
        .map(|(l, _)| {
            let dev = l["device"].clone();
            let mtu = m.value("packetpath_interface_mtu_bytes", &[("device", &dev)]);
            let state = (l["master"].clone(), l["operstate"].clone(), mtu as u64);
            (dev, state)
        })
        .collect()
}

/// Scrapes while `ip` shows the same before and after; the scrape must show it too.
fn scrape_matching_ip(ns: &Netns, exporter: &Exporter, after: &str) {
    for _ in 0..20 {
        let before = ip_links(ns);
        let m = exporter.scrape();
        if ip_links(ns) == before {
            assert_eq!(exported_links(&m), before, "after {after}");
            return;
        }
    }
    panic!("the links kept changing after {after}");
}

#[test]
fn link_changes_show_at_the_next_scrape() {
    if !require_root("link_changes_show_at_the_next_scrape") {
        return;
    }
    // Between scrapes only the counters are read while nothing announces a change on
    // RTNLGRP_LINK; every change must show at the very next scrape all the same.
    let ns = Netns::new("linkcache");
    ns.exec(
        "ip link add x0 type veth peer name x1 && ip link add br0 type bridge \
         && ip tuntap add t0 mode tap && ip link set x0 up && ip link set x1 up \
         && ip link set br0 up",
    );
    let dir = std::env::temp_dir().join(format!("pp-linkcache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    common::sh(&format!("chmod 0777 {}", dir.display()));
    let capture = format!("--debug.netlink-capture-dir={}", dir.display());
    let args = [
        "--collector.disable-defaults",
        "--collector.interfaces",
        &capture,
    ];
    let e = Exporter::start(&ns, 19630, Some("65534"), &args);
    let counters = dir.join("rtnl_getstats.bin");
    let counters_alone = || {
        let _ = std::fs::remove_file(&counters);
        scrape_matching_ip(&ns, &e, "nothing");
        counters.exists()
    };
    wait_for(
        "a scrape that reads the counters alone",
        Duration::from_secs(10),
        counters_alone,
    );
    for change in [
        "ip link set x0 mtu 1400",
        "ip link set x1 master br0",
        "ip link set x0 down",
        "ip link set x0 up",
        "ip link set t0 name t1",
        "ip link add d0 type veth peer name d1",
        "ip link set d0 up",
        "ip link del d0",
        "ip link set x1 nomaster",
        "ip link set br0 down",
    ] {
        ns.exec(change);
        scrape_matching_ip(&ns, &e, change);
    }
    wait_for(
        "counters alone again",
        Duration::from_secs(10),
        counters_alone,
    );
    // And they equal sysfs.
    scrape_matching_sysfs(&ns, &e);
    e.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
