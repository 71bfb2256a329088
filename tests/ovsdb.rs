//! The ovsdb collector against a real ovsdb-server from Debian's openvswitch-switch, on a
//! private database and socket the test creates (no ovs-vswitchd, no kernel module): ports
//! written the os-vif way and the libvirt way, changed while the exporter runs, the server
//! killed and started again, a socket the exporter may not open, and 2,000 ports.

mod common;

use std::time::Duration;

use common::ovsdb::{self, Db};
use common::{Exporter, Metrics, Netns, require_root, wait_for};

/// Root for the namespaces and the unprivileged run, and ovsdb-server itself.
fn prerequisites(test: &str) -> bool {
    require_root(test) && ovsdb::available(test)
}

fn exporter(ns: &Netns, port: u16, db: &Db, user: Option<&str>) -> Exporter {
    let socket = format!("--collector.ovsdb.socket={}", db.socket());
    Exporter::start(
        ns,
        port,
        user,
        &["--collector.disable-defaults", "--collector.ovsdb", &socket],
    )
}

fn success(m: &Metrics) -> f64 {
    m.value(
        "packetpath_scrape_collector_success",
        &[("collector", "ovsdb")],
    )
}

/// The info series of a device: (port_id, instance_id, mac, status), if there is one.
fn info(m: &Metrics, device: &str) -> Option<(String, String, String, String)> {
    m.select("packetpath_vm_port_info", &[("device", device)])
        .next()
        .map(|(l, _)| {
            (
                l["port_id"].clone(),
                l["instance_id"].clone(),
                l["mac"].clone(),
                l["status"].clone(),
            )
        })
}

fn owned(a: &str, b: &str, c: &str, d: &str) -> Option<(String, String, String, String)> {
    Some((a.into(), b.into(), c.into(), d.into()))
}

const OS_VIF_PORT: &str = "519d7cc4-7593-4944-af80-6a8a9b4f4e9a";
const OS_VIF_VM: &str = "0c1e6a4e-6d0e-4b59-9f0a-7a3c2f1d2e3f";

#[test]
fn identity_from_os_vif_and_libvirt_follows_the_database() {
    if !prerequisites("identity_from_os_vif_and_libvirt_follows_the_database") {
        return;
    }
    let db = Db::new("identity");
    // os-vif's plug: the tap with Neutron's port, the instance and its state.
    db.plug(
        "tap519d7cc4-75",
        &[
            "type=internal",
            &format!("external_ids:iface-id={OS_VIF_PORT}"),
            "external_ids:iface-status=active",
            "external_ids:attached-mac=fa:16:3e:11:22:33",
            &format!("external_ids:vm-uuid={OS_VIF_VM}"),
        ],
    );
    // libvirt's <virtualport type='openvswitch'>: vm-id, not vm-uuid.
    db.plug(
        "vnet0",
        &[
            "external_ids:iface-id=p-libvirt",
            "external_ids:vm-id=i-libvirt",
            "external_ids:attached-mac=52:54:00:00:00:01",
        ],
    );
    // A tunnel port carries no iface-id: no VM port.
    db.plug("gnv0", &["type=geneve", "options:remote_ip=192.0.2.1"]);

    let ns = Netns::new("ovsdb");
    let e = exporter(&ns, 19600, &db, None);
    wait_for("the first sync", Duration::from_secs(10), || {
        success(&e.scrape()) == 1.0
    });
    let m = e.scrape();
    assert_eq!(
        info(&m, "tap519d7cc4-75"),
        owned(OS_VIF_PORT, OS_VIF_VM, "fa:16:3e:11:22:33", "active")
    );
    assert_eq!(
        info(&m, "vnet0"),
        owned("p-libvirt", "i-libvirt", "52:54:00:00:00:01", "")
    );
    assert_eq!(info(&m, "gnv0"), None);
    assert_eq!(m.value("packetpath_vm_ports", &[]), 2.0);
    assert_eq!(
        m.value("packetpath_vm_port_ovn_installed", &[("device", "vnet0")]),
        0.0
    );
    common::promtool_check(&e.scrape_text());

    // Changed, added and deleted while the exporter runs: the next scrapes show it.
    db.vsctl(&[
        "set",
        "Interface",
        "tap519d7cc4-75",
        "external_ids:iface-status=inactive",
        "external_ids:ovn-installed=true",
    ]);
    db.plug("tap2", &["external_ids:iface-id=p2"]);
    db.vsctl(&["del-port", "br-int", "vnet0"]);
    wait_for("the changes", Duration::from_secs(5), || {
        let m = e.scrape();
        info(&m, "vnet0").is_none()
            && info(&m, "tap2") == owned("p2", "", "", "")
            && info(&m, "tap519d7cc4-75")
                == owned(OS_VIF_PORT, OS_VIF_VM, "fa:16:3e:11:22:33", "inactive")
    });
    let m = e.scrape();
    assert_eq!(
        m.value(
            "packetpath_vm_port_ovn_installed",
            &[("device", "tap519d7cc4-75")]
        ),
        1.0
    );
    assert_eq!(m.value("packetpath_vm_ports", &[]), 2.0);

    // ovsdb-server killed: success 0 and one log line; started again: all back.
    db.kill();
    wait_for(
        "success 0 while the server is down",
        Duration::from_secs(10),
        || success(&e.scrape()) == 0.0,
    );
    db.serve();
    wait_for(
        "the resync after the restart",
        Duration::from_secs(15),
        || {
            let m = e.scrape();
            success(&m) == 1.0 && info(&m, "tap2") == owned("p2", "", "", "")
        },
    );
    let log = e.stop();
    let down: Vec<_> = log
        .lines()
        .filter(|l| l.contains("collector=ovsdb") && l.contains("reports success 0"))
        .collect();
    assert_eq!(down.len(), 1, "one line while it was down: {log}");
    assert!(
        down[0].contains("closed the connection") || down[0].contains("nothing listens"),
        "{log}"
    );
    assert!(
        log.contains("collector=ovsdb") && log.contains("collector recovered"),
        "{log}"
    );
}

#[test]
fn a_socket_it_may_not_open_says_so_and_a_missing_one_is_absent() {
    if !prerequisites("a_socket_it_may_not_open_says_so_and_a_missing_one_is_absent") {
        return;
    }
    let db = Db::new("perm");
    // As on Debian: the socket's directory open to root only.
    std::fs::set_permissions(&db.dir, std::os::unix::fs::PermissionsExt::from_mode(0o770)).unwrap();
    let ns = Netns::new("ovsdb-perm");
    let e = exporter(&ns, 19601, &db, Some("65534"));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(success(&e.scrape()), 0.0);
    let log = e.stop();
    assert!(
        log.lines().any(|l| l.contains("collector=ovsdb")
            && l.contains("permission denied on")
            && l.contains("run as root or in group openvswitch")),
        "{log}"
    );

    let missing = Netns::new("ovsdb-missing");
    let e = Exporter::start(
        &missing,
        19602,
        None,
        &[
            "--collector.disable-defaults",
            "--collector.ovsdb",
            "--collector.ovsdb.socket=/nonexistent/db.sock",
        ],
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(success(&e.scrape()), 0.0);
    let log = e.stop();
    assert!(
        log.lines().any(|l| l.contains("level=info")
            && l.contains("no ovsdb-server socket at /nonexistent/db.sock")),
        "{log}"
    );
}

#[test]
fn two_thousand_ports() {
    if !prerequisites("two_thousand_ports") {
        return;
    }
    let db = Db::new("2000");
    // One transaction: ovs-vsctl chains commands with `--`.
    let mut args: Vec<String> = Vec::new();
    for i in 0..2000 {
        let name = format!("tap{i:04}");
        args.extend(
            [
                "--",
                "add-port",
                "br-int",
                &name,
                "--",
                "set",
                "Interface",
                &name,
            ]
            .map(str::to_owned),
        );
        args.push(format!("external_ids:iface-id=port-{i}"));
        args.push(format!("external_ids:vm-uuid=vm-{}", i / 2));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    db.vsctl(&refs);
    let ns = Netns::new("ovsdb-2000");
    let e = exporter(&ns, 19603, &db, None);
    wait_for("the first sync", Duration::from_secs(15), || {
        success(&e.scrape()) == 1.0
    });
    let m = e.scrape();
    assert_eq!(m.value("packetpath_vm_ports", &[]), 2000.0);
    assert_eq!(m.select("packetpath_vm_port_info", &[]).count(), 2000);
    assert_eq!(info(&m, "tap1999"), owned("port-1999", "vm-999", "", ""));
    e.stop();
}
