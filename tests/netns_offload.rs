//! The offload collector against the running kernel: devices in a namespace this test
//! creates, features switched with `ethtool -K`, every exported value compared with what
//! `ethtool -k` prints for the same device.

mod common;

use std::collections::BTreeMap;

use common::{Exporter, Metrics, Netns, require_root, sh};

/// Kernel feature name -> the name `ethtool -k` prints it under (it keeps the old ioctl
/// names for some).
fn ethtool_name(feature: &str) -> &str {
    match feature {
        "rx-checksum" => "rx-checksumming",
        "rx-gro" => "generic-receive-offload",
        "tx-generic-segmentation" => "generic-segmentation-offload",
        f => f,
    }
}

/// `ethtool -k dev`: feature -> (active, wanted when it differs or the feature is not fixed).
fn ethtool_k(ns: &Netns, dev: &str) -> BTreeMap<String, (bool, Option<bool>)> {
    ns.exec(&format!("ethtool -k {dev}"))
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once(": ")?;
            let active = rest.starts_with("on");
            let wanted = if rest.contains("[requested on]") {
                Some(true)
            } else if rest.contains("[requested off]") {
                Some(false)
            } else if rest.contains("[fixed]") {
                None
            } else {
                Some(active)
            };
            Some((name.to_owned(), (active, wanted)))
        })
        .collect()
}

/// Every exported (device, feature) equals `ethtool -k`; returns how many were compared.
fn matches_ethtool(ns: &Netns, m: &Metrics) -> usize {
    let mut compared = 0;
    for (labels, v) in m.select("packetpath_interface_offload_active", &[]) {
        let (dev, feature) = (&labels["device"], &labels["feature"]);
        let k = ethtool_k(ns, dev);
        let (active, wanted) = k
            .get(ethtool_name(feature))
            .unwrap_or_else(|| panic!("ethtool -k {dev} has no {feature}: {k:?}"));
        assert_eq!(v, f64::from(u8::from(*active)), "{dev} {feature} active");
        if let Some(w) = wanted {
            let got = m.value(
                "packetpath_interface_offload_wanted",
                &[("device", dev), ("feature", feature)],
            );
            assert_eq!(got, f64::from(u8::from(*w)), "{dev} {feature} wanted");
        }
        compared += 1;
    }
    compared
}

fn active(m: &Metrics, dev: &str, feature: &str) -> f64 {
    m.value(
        "packetpath_interface_offload_active",
        &[("device", dev), ("feature", feature)],
    )
}

#[test]
fn offload_features_follow_ethtool() {
    if !require_root("offload_features_follow_ethtool") {
        return;
    }
    let ns = Netns::new("offload");
    // va carries the default route (an uplink), vx0 is a tunnel, vb is included by name
    // (an uplink the default route does not use), and the TAPs are VM ports that only an
    // opt-in exports.
    ns.exec(
        "ip link add va type veth peer name vb && ip addr add 10.9.0.1/24 dev va \
         && ip link set va up && ip link set vb up && ip route add default via 10.9.0.2 dev va \
         && ip link add vx0 type vxlan external dstport 4789 && ip link set vx0 up \
         && for i in 0 1 2 3 4 5 6 7 8 9; do ip tuntap add tap$i mode tap; done",
    );
    let args = ["--collector.offload.device-include=^vb$"];
    let e = Exporter::start(&ns, 19620, Some("65534"), &args);
    let m = e.scrape();
    assert_eq!(
        m.value(
            "packetpath_scrape_collector_success",
            &[("collector", "offload")]
        ),
        1.0,
        "unprivileged: the features dump needs no capability"
    );
    let roles: BTreeMap<String, String> = m
        .select(
            "packetpath_interface_offload_active",
            &[("feature", "rx-checksum")],
        )
        .map(|(l, _)| (l["device"].clone(), l["role"].clone()))
        .collect();
    let want: BTreeMap<String, String> = [("va", "uplink"), ("vb", "uplink"), ("vx0", "tunnel")]
        .map(|(d, r)| (d.to_owned(), r.to_owned()))
        .into();
    assert_eq!(roles, want, "no VM port by default");
    assert_eq!(matches_ethtool(&ns, &m), 30);
    for dev in ["va", "vb"] {
        assert_eq!(active(&m, dev, "tx-checksum-ip-generic"), 1.0, "{dev}");
        assert_eq!(active(&m, dev, "rx-checksum"), 1.0, "{dev}");
    }
    common::promtool_check(&e.scrape_text());

    ns.exec("ethtool -K va tx off");
    let m = e.scrape();
    assert_eq!(active(&m, "va", "tx-checksum-ip-generic"), 0.0);
    assert_eq!(active(&m, "vb", "tx-checksum-ip-generic"), 1.0);
    // Without a transmit checksum the kernel drops TSO: requested, not active.
    assert_eq!(active(&m, "va", "tx-tcp-segmentation"), 0.0);
    assert_eq!(
        m.value(
            "packetpath_interface_offload_wanted",
            &[("device", "va"), ("feature", "tx-tcp-segmentation")]
        ),
        1.0
    );
    assert_eq!(matches_ethtool(&ns, &m), 30);

    ns.exec("ethtool -K vb rx off");
    let m = e.scrape();
    assert_eq!(active(&m, "vb", "rx-checksum"), 0.0);
    assert_eq!(active(&m, "va", "rx-checksum"), 1.0);
    assert_eq!(matches_ethtool(&ns, &m), 30);
    e.stop();

    let e = Exporter::start(&ns, 19621, None, &["--collector.offload.vm-ports"]);
    let m = e.scrape();
    let taps = m
        .select("packetpath_interface_offload_active", &[("role", "vm")])
        .count();
    assert_eq!(taps, 10 * 10, "ten features of ten TAPs when opted in");
    assert_eq!(matches_ethtool(&ns, &m), 120);
    e.stop();
}

/// Splits a netlink dump into messages (length-prefixed, 4-byte aligned).
fn messages(buf: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        out.push(&buf[at..at + len]);
        at += (len + 3) & !3;
    }
    out
}

#[test]
fn a_kernel_without_the_ethtool_family_is_one_sentence() {
    if !require_root("a_kernel_without_the_ethtool_family_is_one_sentence") {
        return;
    }
    // The running kernel's own family list, captured, with the ethtool family taken out:
    // what a kernel older than 5.6 answers.
    let dir = std::env::temp_dir().join(format!("pp-offload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ns = Netns::new("noethtool");
    let capture = format!("--debug.netlink-capture-dir={}", dir.display());
    let e = Exporter::start(
        &ns,
        19622,
        None,
        &[
            "--collector.disable-defaults",
            "--collector.offload",
            &capture,
        ],
    );
    e.scrape();
    e.stop();
    let families = std::fs::read(dir.join("genl_families.bin")).unwrap();
    let kept: Vec<u8> = messages(&families)
        .into_iter()
        .filter(|m| !m.windows(8).any(|w| w == b"ethtool\0"))
        .flat_map(|m| {
            let mut v = m.to_vec();
            v.resize((v.len() + 3) & !3, 0);
            v
        })
        .collect();
    assert!(
        kept.len() < families.len(),
        "the capture had the ethtool family"
    );
    std::fs::write(dir.join("genl_families.bin"), kept).unwrap();
    let replay = format!("--debug.netlink-replay-dir={}", dir.display());
    let e = Exporter::start(
        &ns,
        19623,
        None,
        &[
            "--collector.disable-defaults",
            "--collector.offload",
            &replay,
        ],
    );
    let m = e.scrape();
    assert_eq!(
        m.value(
            "packetpath_scrape_collector_success",
            &[("collector", "offload")]
        ),
        0.0
    );
    assert!(
        m.select("packetpath_interface_offload_active", &[])
            .next()
            .is_none()
    );
    e.scrape();
    let log = e.stop();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("collector=offload"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("level=info")
            && lines[0].contains("kernel has no ethtool netlink family (Linux 5.6 or later"),
        "{log}"
    );
    let _ = sh(&format!("rm -rf {}", dir.display()));
}
