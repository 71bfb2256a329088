//! conntrack_invalid's per-VM-port counts against the running kernel: nftables puts the
//! packets of two links into conntrack zones 7 and 9 before conntrack sees them (as OVS's
//! ct(zone=N) does for a VM port), a private ovsdb-server names the VM ports those zones
//! belong to (`ct-zone-<iface-id>` on br-int, as ovn-controller writes it), and
//! bad-checksum FIN/ACKs are sent through each link.
//!
//! The zone reaches the collector only where the kernel attaches the packet's conntrack
//! entry to NFLOG messages (NFULA_CT: nf_conntrack_netlink built with
//! CONFIG_NETFILTER_NETLINK_GLUE_CT, as Debian's and RHEL's kernels are). On a kernel
//! without it the test checks what the collector promises there instead: it says so once,
//! classifies as before and exports no per-port series.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::ovsdb::{self, Db};
use common::{ConntrackBed, Exporter, Metrics, require_root, tcp, tcp_segment, wait_for};
use packetpath_exporter::metrics::VM_PORT_CONNTRACK_INVALID_PACKETS as VM_PORT;

const MESSAGES: &str = "packetpath_conntrack_invalid_log_messages_total";

/// The bed: the client reaches the server over c0/s0 (zone 7) and c1/s1 (zone 9).
fn zoned_bed() -> ConntrackBed {
    let bed = ConntrackBed::new();
    bed.set_checksum(true);
    bed.add_second_link();
    // Before conntrack (priority -200), as OVS's ct(zone=N) template.
    bed.srv.exec(
        "nft add table inet ppz && nft add chain inet ppz pre '{ type filter hook prerouting priority -300; }' && nft add rule inet ppz pre iifname s0 ct zone set 7 && nft add rule inet ppz pre iifname s1 ct zone set 9",
    );
    bed
}

/// Bad-checksum FIN/ACKs through c0 (to 10.201.0.2) or c1 (to 10.201.1.2).
fn send_finacks(bed: &ConntrackBed, link: u8, base: u16, n: u16) {
    let dst: std::net::IpAddr = [10, 201, link, 2].into();
    let segs: Vec<Vec<u8>> = (0..n)
        .map(|i| tcp_segment(base + i, 80, tcp::FIN | tcp::ACK, &[], true))
        .collect();
    let rx = |dev: &str| -> u64 {
        bed.srv
            .exec(&format!("cat /sys/class/net/{dev}/statistics/rx_packets"))
            .trim()
            .parse()
            .unwrap()
    };
    let dev = if link == 0 { "s0" } else { "s1" };
    let want = rx(dev) + u64::from(n);
    bed.cli
        .enter(move || common::send_raw_to(dst, libc::IPPROTO_TCP, &segs, None));
    wait_for("segments at the server", Duration::from_secs(5), || {
        rx(dev) >= want
    });
}

fn state_file(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pp-ctz-{tag}-{}.state", std::process::id()))
}

fn port(m: &Metrics, device: &str) -> Option<f64> {
    m.get(VM_PORT, &[("device", device), ("reason", "bad_checksum")])
}

#[test]
fn invalid_packets_are_credited_to_the_vm_port_of_their_zone() {
    let test = "invalid_packets_are_credited_to_the_vm_port_of_their_zone";
    if !require_root(test) || !ovsdb::available(test) {
        return;
    }
    let bed = zoned_bed();
    let db = Db::new("ctzones");
    db.plug("tapA", &["external_ids:iface-id=port-a"]);
    db.plug("tapB", &["external_ids:iface-id=port-b"]);
    let zones = |a: &str, b: &str| {
        db.vsctl(&[
            "set",
            "Bridge",
            "br-int",
            &format!("external_ids:ct-zone-port-a={a}"),
            &format!("external_ids:ct-zone-port-b={b}"),
        ]);
    };
    zones("7", "9");
    let supported = common::nflog::kernel_attaches_conntrack(&bed.srv);
    let state = state_file("zones");
    let socket = format!("--collector.ovsdb.socket={}", db.socket());
    let state_flag = format!(
        "--collector.conntrack_invalid.state-file={}",
        state.display()
    );
    let e = Exporter::start(
        &bed.srv,
        19510,
        None,
        &[
            "--collector.disable-defaults",
            "--collector.conntrack_invalid",
            "--collector.ovsdb",
            &socket,
            &state_flag,
        ],
    );
    let success =
        |m: &Metrics, c: &str| m.value("packetpath_scrape_collector_success", &[("collector", c)]);
    wait_for("OVSDB's first sync", Duration::from_secs(10), || {
        success(&e.scrape(), "ovsdb") == 1.0
    });
    let heard = |n: f64| {
        wait_for(&format!("{n} messages"), Duration::from_secs(5), || {
            e.scrape().value(MESSAGES, &[]) == n
        })
    };
    // The first collection is the baseline; packets after it are credited.
    let m0 = e.scrape();
    assert_eq!(m0.select(VM_PORT, &[]).count(), 0);
    send_finacks(&bed, 0, 46000, 3);
    send_finacks(&bed, 1, 46100, 2);
    heard(5.0);
    let m = e.scrape();
    common::promtool_check(&e.scrape_text());
    if !supported {
        assert_eq!(m.select(VM_PORT, &[]).count(), 0);
        let log = e.stop();
        let said = log
            .lines()
            .filter(|l| l.contains("no per-VM-port counts"))
            .count();
        assert_eq!(said, 1, "{log}");
        eprintln!("{test}: this kernel has no NFULA_CT; checked the fallback only");
        return;
    }
    assert_eq!(port(&m, "tapA"), Some(3.0));
    assert_eq!(port(&m, "tapB"), Some(2.0));
    assert_eq!(m.select(VM_PORT, &[("device", "tapA")]).count(), 6);

    // ovn-controller swaps the zones: what either zone counts until a collection has
    // seen the swap is nobody's; afterwards each zone is its new port's.
    zones("9", "7");
    std::thread::sleep(Duration::from_secs(1));
    // This collection sees the swap, and credits neither zone's packets of before it.
    e.scrape();
    send_finacks(&bed, 0, 46200, 4);
    heard(9.0);
    let m = e.scrape();
    assert_eq!(port(&m, "tapA"), Some(3.0));
    assert_eq!(port(&m, "tapB"), Some(2.0 + 4.0));

    // OVSDB down: nothing credited, and the collector still succeeds.
    db.kill();
    wait_for(
        "the exporter to lose OVSDB",
        Duration::from_secs(10),
        || success(&e.scrape(), "ovsdb") == 0.0,
    );
    send_finacks(&bed, 1, 46300, 2);
    heard(11.0);
    let m = e.scrape();
    assert_eq!(success(&m, "conntrack_invalid"), 1.0);
    assert_eq!(port(&m, "tapA"), Some(3.0));
    assert_eq!(port(&m, "tapB"), Some(6.0));
    e.stop();
}
