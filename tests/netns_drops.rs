//! What the drops collector can be checked against on this host, whose kernel has no
//! drop monitor (its counts are proven in the qemu bed, tests/kernel_drops_vm.rs): it
//! says how to get the monitor and changes nothing; and the link facts it names devices
//! with — each link's MAC and, for a veth, the index its peer has in another namespace —
//! are the running kernel's.

mod common;

use std::time::Duration;

use common::{Exporter, Netns, require_root};
use packetpath_exporter::collectors::common::links;
use packetpath_exporter::netlink::KernelTransport;

#[test]
fn without_a_drop_monitor_it_says_how_to_get_one_and_changes_nothing() {
    if !require_root("without_a_drop_monitor_it_says_how_to_get_one_and_changes_nothing") {
        return;
    }
    let ns = Netns::new("drops");
    let state = std::env::temp_dir().join(format!("pp-drops-state-{}", std::process::id()));
    let _ = std::fs::remove_file(&state);
    let e = Exporter::start(
        &ns,
        19521,
        None,
        &[
            "--collector.disable-defaults",
            "--collector.drops",
            &format!("--collector.drops.state-file={}", state.display()),
        ],
    );
    let m = e.scrape();
    assert_eq!(
        m.value(
            "packetpath_scrape_collector_success",
            &[("collector", "drops")]
        ),
        0.0
    );
    // No series of its own while it cannot count.
    assert!(!e.scrape_text().contains("packetpath_kernel_drop"));
    let log = e.stop();
    // Said once, at start, with what to do.
    assert_eq!(log.matches("modprobe drop_monitor").count(), 1, "{log}");
    assert!(
        !state.exists(),
        "a monitor it never started is not recorded"
    );
}

#[test]
fn links_carry_their_mac_and_a_veth_peer_in_another_namespace() {
    if !require_root("links_carry_their_mac_and_a_veth_peer_in_another_namespace") {
        return;
    }
    let here = Netns::new("drops-here");
    let there = Netns::new("drops-there");
    here.exec(&format!(
        "ip link add vhere address 02:00:00:00:00:01 type veth peer name vthere address 02:00:00:00:00:02 netns {}",
        there.name
    ));
    // The peer's index where it lives.
    let peer_index: u32 = there
        .exec("cat /sys/class/net/vthere/ifindex")
        .trim()
        .parse()
        .unwrap();
    // A veth pair inside one namespace has no peer elsewhere.
    here.exec("ip link add va type veth peer name vb");
    let got = here.enter(|| links::read(&KernelTransport::new(Duration::from_secs(5))).unwrap());
    let find = |n: &str| got.iter().find(|l| l.name == n).unwrap().clone();
    let vhere = find("vhere");
    assert_eq!(vhere.mac, Some([2, 0, 0, 0, 0, 1]));
    assert_eq!(vhere.link, Some(peer_index));
    assert!(vhere.link_netnsid.is_some(), "{vhere:?}");
    let va = find("va");
    assert_eq!(va.link_netnsid, None, "{va:?}");
    assert_eq!(find("lo").mac, Some([0; 6]));
}
