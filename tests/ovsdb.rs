//! The ovsdb collector against a real ovsdb-server from Debian's openvswitch-switch, on a
//! private database and socket the test creates (no ovs-vswitchd, no kernel module): ports
//! written the os-vif way and the libvirt way, changed while the exporter runs, the server
//! killed and started again, a socket the exporter may not open, and 2,000 ports. And the
//! node collector's OVSDB labels on the same kind of database: the Open_vSwitch row as
//! ovs-ctl and ovn-controller's configuration write it, a Datapath row, the database gone.

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

/// A kernel release with a double quote and a backslash: the exposition must escape both.
const RELEASE: &str = "6.1.0-\"odd\"\\build";
const BUILD: &str = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)";
const SRCVERSION: &str = "D0E6D3EB3A4F2C1B9E8A7F6";
const OVN_VERSION: &str = "24.03.2";

/// The files the node collector reads, under a private --path.procfs/--path.sysfs, and
/// an ovn-rundir of its own; removed when dropped.
struct HostTree(std::path::PathBuf);

impl HostTree {
    fn new(tag: &str) -> HostTree {
        let dir = std::env::temp_dir().join(format!("pp-node-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (path, text) in [
            ("proc/sys/kernel/osrelease", format!("{RELEASE}\n")),
            ("proc/sys/kernel/version", format!("{BUILD}\n")),
            // An in-tree module, as Debian's kernel loads it: live, no taint, no version.
            ("sys/module/openvswitch/initstate", "live\n".to_owned()),
            (
                "sys/module/openvswitch/srcversion",
                format!("{SRCVERSION}\n"),
            ),
            ("sys/module/openvswitch/taint", "\n".to_owned()),
        ] {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        std::fs::create_dir_all(dir.join("run/ovn")).unwrap();
        HostTree(dir)
    }

    fn arg(&self, flag: &str, sub: &str) -> String {
        format!("{flag}={}", self.0.join(sub).display())
    }

    /// A stand-in ovn-controller: its pidfile and a control socket that answers `version`
    /// as the real one does, to every connection.
    fn ovn_controller(&self) {
        let run = self.0.join("run/ovn");
        let listener =
            std::os::unix::net::UnixListener::bind(run.join("ovn-controller.4242.ctl")).unwrap();
        std::fs::write(run.join("ovn-controller.pid"), "4242\n").unwrap();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for mut c in listener.incoming().flatten() {
                let mut buf = [0u8; 512];
                let n = c.read(&mut buf).unwrap_or(0);
                let req: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap_or_default();
                let reply = serde_json::json!({
                    "id": req["id"],
                    "result": format!("ovn-controller {OVN_VERSION}\nOpen vSwitch Library 3.3.0\nOpenFlow versions 0x6:0x6\nSB DB Schema 20.33.0\n"),
                    "error": null,
                });
                let _ = c.write_all(reply.to_string().as_bytes());
            }
        });
    }
}

impl Drop for HostTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn node_exporter(ns: &Netns, port: u16, socket: &str, tree: &HostTree) -> Exporter {
    Exporter::start(
        ns,
        port,
        None,
        &[
            "--collector.disable-defaults",
            "--collector.node",
            &format!("--collector.ovsdb.socket={socket}"),
            &tree.arg("--path.procfs", "proc"),
            &tree.arg("--path.sysfs", "sys"),
            &tree.arg("--collector.node.ovn-rundir", "run/ovn"),
        ],
    )
}

/// packetpath_node_info's labels, after checking the scrape: one series of value 1, and
/// the node collector succeeded.
fn node_info(m: &Metrics) -> std::collections::BTreeMap<String, String> {
    assert_eq!(
        m.value(
            "packetpath_scrape_collector_success",
            &[("collector", "node")]
        ),
        1.0
    );
    let all: Vec<_> = m.select("packetpath_node_info", &[]).collect();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].1, 1.0);
    all[0].0.clone()
}

/// The OVSDB and OVN labels of packetpath_node_info, in INFO's order.
fn ovs_labels(m: &Metrics) -> [String; 5] {
    let l = node_info(m);
    [
        "ovs_version",
        "ovs_db_version",
        "ovs_datapath_types",
        "ovn_chassis",
        "ovn_version",
    ]
    .map(|k| l[k].clone())
}

fn strings<const N: usize>(v: [&str; N]) -> [String; N] {
    v.map(str::to_owned)
}

/// The kernel's labels are the tree's, whatever the database says.
fn assert_kernel(m: &Metrics) {
    let l = node_info(m);
    assert_eq!(l["kernel_release"], RELEASE, "parsed back unescaped");
    assert_eq!(l["kernel_version"], BUILD);
    assert_eq!(l["ovs_module"], "in_tree");
    assert_eq!(l["ovs_module_srcversion"], SRCVERSION);
    assert_eq!(l["ovs_module_version"], "");
}

#[test]
fn node_info_follows_the_open_vswitch_row_and_its_datapaths() {
    if !prerequisites("node_info_follows_the_open_vswitch_row_and_its_datapaths") {
        return;
    }
    let db = Db::new("node");
    let tree = HostTree::new("live");
    // What ovs-vswitchd writes when it starts; the start script has not set the versions.
    db.vsctl(&["set", "Open_vSwitch", ".", "datapath_types=[netdev,system]"]);
    let ns = Netns::new("ovsdb-node");
    let e = node_exporter(&ns, 19604, &db.socket(), &tree);
    wait_for("the first sync", Duration::from_secs(10), || {
        ovs_labels(&e.scrape())[2] == "netdev,system"
    });
    let m = e.scrape();
    assert_kernel(&m);
    assert_eq!(ovs_labels(&m), strings(["", "", "netdev,system", "", ""]));
    assert_eq!(
        m.select("packetpath_node_ovs_datapath_info", &[]).count(),
        0
    );
    // The quote and the backslash escaped as the exposition format says.
    let text = e.scrape_text();
    assert!(
        text.contains(r#"kernel_release="6.1.0-\"odd\"\\build""#),
        "{text}"
    );
    common::promtool_check(&text);

    // What ovs-ctl does once ovsdb-server runs: the versions of the binaries and schema.
    let schema = common::sh("ovsdb-tool schema-version /usr/share/openvswitch/vswitch.ovsschema");
    let schema = schema.trim();
    db.vsctl(&[
        "set",
        "Open_vSwitch",
        ".",
        "ovs_version=3.1.0",
        &format!("db_version={schema}"),
    ]);
    wait_for("the versions", Duration::from_secs(5), || {
        ovs_labels(&e.scrape()) == strings(["3.1.0", schema, "netdev,system", "", ""])
    });

    // A system-id alone is no OVN chassis; with ovn-remote it is, and ovn-controller is
    // asked its version on its control socket.
    tree.ovn_controller();
    db.vsctl(&[
        "set",
        "Open_vSwitch",
        ".",
        "external_ids:system-id=compute-1",
    ]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(ovs_labels(&e.scrape())[3..], strings(["", ""]));
    db.vsctl(&[
        "set",
        "Open_vSwitch",
        ".",
        "external_ids:ovn-remote=tcp:192.0.2.10:6642",
    ]);
    wait_for("the chassis", Duration::from_secs(5), || {
        ovs_labels(&e.scrape())
            == strings(["3.1.0", schema, "netdev,system", "compute-1", OVN_VERSION])
    });

    // What ovn-controller and ovs-vswitchd leave for br-int's type: a Datapath row with the
    // datapath's capabilities and no version, which ovs-vswitchd records on the bridge
    // instead (`<unknown>` for the kernel's own module).
    db.vsctl(&["set", "Bridge", "br-int", "datapath_version=\"<unknown>\""]);
    db.add_datapath(
        "system",
        &[
            "capabilities:ct_state=true",
            "capabilities:max_vlan_headers=2",
        ],
    );
    // A row that carries a version of its own, for a type no bridge uses.
    db.add_datapath(
        "netdev",
        &[
            "datapath_version=\"<built-in>\"",
            "capabilities:recirc=false",
        ],
    );
    wait_for("the datapaths", Duration::from_secs(5), || {
        e.scrape()
            .select("packetpath_node_ovs_datapath_info", &[])
            .count()
            == 2
    });
    let m = e.scrape();
    assert_kernel(&m);
    let mut datapaths: Vec<(String, String, f64)> = m
        .select("packetpath_node_ovs_datapath_info", &[])
        .map(|(l, v)| (l["datapath_type"].clone(), l["datapath_version"].clone(), v))
        .collect();
    datapaths.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        datapaths,
        [
            ("netdev".to_owned(), "<built-in>".to_owned(), 1.0),
            ("system".to_owned(), "<unknown>".to_owned(), 1.0),
        ]
    );
    let mut caps: Vec<(String, String, f64)> = m
        .select("packetpath_node_ovs_datapath_capability", &[])
        .map(|(l, v)| (l["datapath_type"].clone(), l["capability"].clone(), v))
        .collect();
    caps.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    assert_eq!(
        caps,
        [
            ("netdev".to_owned(), "recirc".to_owned(), 0.0),
            ("system".to_owned(), "ct_state".to_owned(), 1.0),
            ("system".to_owned(), "max_vlan_headers".to_owned(), 2.0),
        ]
    );
    common::promtool_check(&e.scrape_text());

    // The database gone, socket and all: every OVSDB label empty, the rest as before.
    db.kill();
    let _ = std::fs::remove_file(db.socket());
    wait_for("the labels to empty", Duration::from_secs(10), || {
        ovs_labels(&e.scrape()) == strings(["", "", "", "", ""])
    });
    let m = e.scrape();
    assert_kernel(&m);
    assert_eq!(
        m.select("packetpath_node_ovs_datapath_info", &[]).count(),
        0
    );
    assert_eq!(
        m.select("packetpath_node_ovs_datapath_capability", &[])
            .count(),
        0
    );
    e.stop();

    // No database from the start: the same, from the first scrape on.
    let missing = Netns::new("ovsdb-node-missing");
    let e = node_exporter(&missing, 19605, "/nonexistent/db.sock", &tree);
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..3 {
        let m = e.scrape();
        assert_kernel(&m);
        assert_eq!(ovs_labels(&m), strings(["", "", "", "", ""]));
        assert_eq!(
            m.select("packetpath_node_ovs_datapath_info", &[]).count(),
            0
        );
    }
    e.stop();
}
