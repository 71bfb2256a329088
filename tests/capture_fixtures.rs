//! Regenerates the netlink and procfs fixtures under tests/fixtures from this kernel.
//! Not a test: run it deliberately, as root, when the decoders or the scenario change:
//!
//!     cargo test --test capture_fixtures -- --ignored
//!
//! The scenario, in a fresh namespace pair: lo; veth-a <-> veth-b (enslaved to bridge br0);
//! genev_sys_6081 <-> gs-peer (a veth carrying OVS's tunnel device name); vx0 (vxlan);
//! tap0 (a persistent tap); s0 with conntrack active and the default route; veth-a with
//! its transmit checksum off. 5 frames of 100 bytes leave veth-a,
//! and 3 TCP SYNs with corrupt checksums arrive on s0 with nf_conntrack_checksum=1.
//! The exporter then runs in that namespace with --debug.netlink-capture-dir, as root
//! (tests/fixtures/netlink) and as nobody (tests/fixtures/netlink-eperm: the kernel's
//! EPERM answer to ctnetlink), and the procfs files it reads are copied beside them. The
//! exporter asks for the offload features of the devices it exports, one request each;
//! the features dump of every device, what it takes instead when it exports most of many
//! devices, is captured beside them.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{ConntrackBed, Exporter, require_root, send_frames, sh, wait_for};

#[test]
#[ignore = "regenerates tests/fixtures from the running kernel; run with --ignored as root"]
fn capture_fixtures() {
    assert!(require_root("capture_fixtures"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut bed = ConntrackBed::new();
    let ns = &bed.srv;
    ns.exec("ip link add veth-a type veth peer name veth-b && ip link add br0 type bridge && ip link set veth-b master br0");
    ns.exec("ip link add genev_sys_6081 type veth peer name gs-peer");
    ns.exec(
        "ip link add vx0 type vxlan id 42 dstport 4789 local 10.201.0.2 remote 10.201.0.9 dev s0",
    );
    ns.exec("ip tuntap add dev tap0 mode tap");
    // s0 carries the default route (the offload collector's uplink); veth-a's transmit
    // checksum is off, so the features dump holds a 0 where the others have 1.
    ns.exec("ip route add default via 10.201.0.1 dev s0");
    for l in [
        "veth-a",
        "veth-b",
        "br0",
        "genev_sys_6081",
        "gs-peer",
        "vx0",
        "tap0",
    ] {
        ns.exec(&format!("ip link set {l} up"));
    }
    ns.exec("ethtool -K veth-a tx off");
    ns.enter(|| send_frames("veth-a", 5, 100));
    bed.set_checksum(true);
    bed.send(3, 0);
    wait_for("3 invalid drops", Duration::from_secs(5), || {
        bed.nft_invalid_drops() == 3
    });

    for (dir, user) in [("netlink", None), ("netlink-eperm", Some("65534"))] {
        let out = root.join(dir);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        sh(&format!("chmod 0777 {}", out.display()));
        let capture = format!("--debug.netlink-capture-dir={}", out.display());
        let e = Exporter::start(&bed.srv, 19490, user, &[&capture]);
        e.scrape();
        e.stop();
        let dump = out.clone();
        bed.srv.enter(move || capture_features_dump(&dump));
        sh(&format!(
            "chmod 0755 {0} && chmod 0644 {0}/*",
            out.display()
        ));
    }

    let proc = root.join("proc");
    let _ = std::fs::remove_dir_all(&proc);
    std::fs::create_dir_all(proc.join("net/stat")).unwrap();
    std::fs::create_dir_all(proc.join("sys/net/netfilter")).unwrap();
    let files = [
        "net/stat/nf_conntrack",
        "sys/net/netfilter/nf_conntrack_count",
    ];
    let sysctls = packetpath_exporter::collectors::conntrack::SYSCTLS
        .iter()
        .map(|s| format!("sys/net/netfilter/{s}"));
    for f in files.iter().map(|s| s.to_string()).chain(sysctls) {
        let text = bed.srv.exec(&format!("cat /proc/{f}"));
        std::fs::write(proc.join(&f), text).unwrap();
    }
    // What the kernel's own tool said at capture time, for the parser tests to agree with.
    std::fs::write(root.join("conntrack-S.txt"), bed.srv.exec("conntrack -S")).unwrap();
    std::fs::write(root.join("ip-link.txt"), bed.srv.exec("ip -s -d link show")).unwrap();
}

/// Saves the ethtool features dump of every device as `DIR/ethtool_features_get.bin`,
/// from the calling thread's namespace. The dump is open to all: root's and nobody's
/// are the same.
fn capture_features_dump(dir: &Path) {
    use packetpath_exporter::collectors::offload::features_request;
    use packetpath_exporter::netlink::{CaptureTransport, KernelTransport, Transport, genl};
    let kernel = KernelTransport::new(Duration::from_secs(5));
    let families = genl::parse_families(&kernel.exchange(&genl::families_request()).unwrap());
    let id = families
        .unwrap()
        .into_iter()
        .find(|(name, _)| name == "ethtool")
        .expect("the kernel has the ethtool netlink family")
        .1
        .id;
    let capture = CaptureTransport {
        inner: kernel,
        dir: dir.to_owned(),
    };
    capture.exchange(&features_request(id)).unwrap();
}
