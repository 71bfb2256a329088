//! The fleet view against a real Prometheus scraping 21 exporters at once, each in a
//! network namespace of its own with its own procfs and sysfs roots naming one of three
//! kernels (7 nodes each: an out-of-tree OVS module on the first, Debian's in-tree one on
//! the others, a kernel build string that label values must escape on the third) and its
//! own ovsdb-server naming its Open vSwitch version and a VM port. The incident's
//! signature, bad-checksum packets marked invalid by conntrack, is sent to the nodes of
//! the second kernel only: the fleet query grouping by kernel release must name that
//! release alone, with its 7 nodes, and every query of the fleet dashboard must return
//! data. A 22nd exporter replays the OVS bed's capture, so the datapath series exist too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Prometheus, repo, selectors};
use crate::common::{self, ConntrackBed, Exporter, Netns, send_segments, tcp, tcp_segment};

const PROM_PORT: u16 = 19190;
const EXPORTER_PORT: u16 = 9479;
const NODES_PER_KERNEL: usize = 7;
/// The signature's packets per suspect node.
const SIGNATURE_PACKETS: u64 = 5;

/// A kernel of the fleet: (release, build string, module taint, module version, OVS version).
struct Kernel {
    release: &'static str,
    version: &'static str,
    taint: &'static str,
    module_version: &'static str,
    ovs_version: &'static str,
}

const KERNELS: [Kernel; 3] = [
    Kernel {
        release: "5.10.0-33-cloud-amd64",
        version: "#1 SMP Debian 5.10.226-1 (2024-10-03)",
        taint: "O",
        module_version: "2.17.9",
        ovs_version: "2.15.0",
    },
    // The suspect.
    Kernel {
        release: "6.1.0-28-cloud-amd64",
        version: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)",
        taint: "",
        module_version: "",
        ovs_version: "3.1.0",
    },
    Kernel {
        release: "6.12.9+bpo-cloud-amd64",
        version: "#1 SMP PREEMPT_DYNAMIC \"custom\\build\" 6.12.9",
        taint: "",
        module_version: "",
        ovs_version: "3.5.0",
    },
];
const SUSPECT: usize = 1;

/// A procfs root whose kernel files name `k` and whose netfilter files are the reading
/// process's own (its network namespace's), and a sysfs root with the OVS module.
fn roots(dir: &Path, k: &Kernel, srcversion: &str) -> (PathBuf, PathBuf) {
    let proc = dir.join("proc");
    let sys = dir.join("sys");
    std::fs::create_dir_all(proc.join("sys/kernel")).unwrap();
    std::os::unix::fs::symlink("/proc/self/net", proc.join("net")).unwrap();
    std::os::unix::fs::symlink("/proc/sys/net", proc.join("sys/net")).unwrap();
    std::fs::write(
        proc.join("sys/kernel/osrelease"),
        format!("{}\n", k.release),
    )
    .unwrap();
    std::fs::write(proc.join("sys/kernel/version"), format!("{}\n", k.version)).unwrap();
    let module = sys.join("module/openvswitch");
    std::fs::create_dir_all(&module).unwrap();
    std::fs::write(module.join("initstate"), "live\n").unwrap();
    std::fs::write(module.join("taint"), format!("{}\n", k.taint)).unwrap();
    if !k.module_version.is_empty() {
        std::fs::write(module.join("version"), format!("{}\n", k.module_version)).unwrap();
        std::fs::write(module.join("srcversion"), format!("{srcversion}\n")).unwrap();
    }
    (proc, sys)
}

struct Node {
    bed: ConntrackBed,
    _db: common::ovsdb::Db,
    _tap: std::os::fd::OwnedFd,
    _exporter: Exporter,
    target: String,
}

fn result(v: &serde_json::Value) -> &Vec<serde_json::Value> {
    v["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
}

fn value(r: &serde_json::Value) -> f64 {
    r["value"][1].as_str().unwrap().parse().unwrap()
}

#[test]
fn the_fleet_query_names_the_suspect_kernel_and_every_fleet_panel_has_data() {
    if !common::require_root(
        "the_fleet_query_names_the_suspect_kernel_and_every_fleet_panel_has_data",
    ) {
        return;
    }
    assert!(common::ovsdb::available("fleet"), "ovsdb-server is needed");
    let dir = std::env::temp_dir().join(format!("pp-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let hub = Netns::new("fleet-hub");

    let mut nodes: Vec<Node> = Vec::new();
    let mut zones = None;
    for n in 0..KERNELS.len() * NODES_PER_KERNEL {
        let k = &KERNELS[n / NODES_PER_KERNEL];
        let bed = ConntrackBed::new();
        bed.set_checksum(true);
        // The link Prometheus scrapes by: 10.220.n.1 (hub) – 10.220.n.2 (node).
        common::sh(&format!(
            "ip -n {} link add h{n} type veth peer name m0 netns {}",
            hub.name, bed.srv.name
        ));
        hub.exec(&format!(
            "ip addr add 10.220.{n}.1/30 dev h{n} && ip link set h{n} up"
        ));
        bed.srv.exec(&format!(
            "ip addr add 10.220.{n}.2/30 dev m0 && ip link set m0 up"
        ));
        // A VM port whose conntrack zone the tunnel's traffic is tracked in, as OVS's
        // ct(zone=N) does.
        if zones.is_none() {
            zones = Some(common::nflog::kernel_attaches_conntrack(&bed.srv));
        }
        bed.srv.exec(
            "nft add table inet ppz \
             && nft add chain inet ppz pre '{ type filter hook prerouting priority -300; }' \
             && nft add rule inet ppz pre iifname s0 ct zone set 7",
        );
        let tap = bed.srv.enter(|| common::open_tap("tap0"));
        bed.srv.exec("ip link set tap0 up");
        let port_id = format!("519d7cc4-7593-4944-af80-6a8a9b4f{n:04x}");
        let db = common::ovsdb::Db::new(&format!("fleet{n}"));
        db.plug(
            "tap0",
            &[
                &format!("external_ids:iface-id={port_id}"),
                &format!("external_ids:vm-uuid=0c1e6a4e-6d0e-4b59-9f0a-7a3c2f1d{n:04x}"),
            ],
        );
        db.vsctl(&[
            "set",
            "Bridge",
            "br-int",
            &format!("external_ids:ct-zone-{port_id}=\"7\""),
        ]);
        db.vsctl(&[
            "set",
            "Open_vSwitch",
            ".",
            &format!("ovs_version={}", k.ovs_version),
            &format!("external_ids:system-id=node{n}"),
            "external_ids:ovn-remote=tcp:10.0.0.1:6642",
        ]);
        let (proc, sys) = roots(&dir.join(format!("node{n}")), k, "5A6D1C0B8E7F4A3B2C1D0E9");
        let exporter = Exporter::start_on(
            &bed.srv,
            "0.0.0.0",
            EXPORTER_PORT,
            None,
            &[
                &format!("--path.procfs={}", proc.display()),
                &format!("--path.sysfs={}", sys.display()),
                &format!("--collector.ovsdb.socket={}", db.socket()),
                "--collector.conntrack_invalid",
                &format!(
                    "--collector.conntrack_invalid.state-file={}",
                    dir.join(format!("node{n}/state")).display()
                ),
                "--collector.interfaces.tunnel-regex=^s0$",
            ],
        );
        nodes.push(Node {
            bed,
            _db: db,
            _tap: tap,
            _exporter: exporter,
            target: format!("10.220.{n}.2:{EXPORTER_PORT}"),
        });
    }
    // The OVS bed's capture, replayed, as a node of the first kernel: the datapath series.
    let replayed = Netns::new("fleet-ovs");
    let r = nodes.len();
    common::sh(&format!(
        "ip -n {} link add h{r} type veth peer name m0 netns {}",
        hub.name, replayed.name
    ));
    hub.exec(&format!(
        "ip addr add 10.220.{r}.1/30 dev h{r} && ip link set h{r} up"
    ));
    replayed.exec(&format!(
        "ip addr add 10.220.{r}.2/30 dev m0 && ip link set m0 up"
    ));
    let (proc, sys) = roots(
        &dir.join("replayed"),
        &KERNELS[0],
        "5A6D1C0B8E7F4A3B2C1D0E9",
    );
    std::fs::remove_file(proc.join("net")).unwrap();
    std::fs::remove_file(proc.join("sys/net")).unwrap();
    std::os::unix::fs::symlink(repo("tests/fixtures/ovs/proc/net"), proc.join("net")).unwrap();
    std::os::unix::fs::symlink(
        repo("tests/fixtures/ovs/proc/sys/net"),
        proc.join("sys/net"),
    )
    .unwrap();
    let _replay = Exporter::start_on(
        &replayed,
        "0.0.0.0",
        EXPORTER_PORT,
        None,
        &[
            &format!("--debug.netlink-replay-dir={}", repo("tests/fixtures/ovs")),
            &format!("--path.procfs={}", proc.display()),
            &format!("--path.sysfs={}", sys.display()),
            "--collector.ovsdb.socket=/nonexistent/db.sock",
        ],
    );
    let mut targets: Vec<String> = nodes.iter().map(|n| n.target.clone()).collect();
    targets.push(format!("10.220.{r}.2:{EXPORTER_PORT}"));
    // No cluster label: a global view adds it to every series alike (external labels),
    // so the dashboard's `cluster=~"$cluster"` at All and its `on (cluster, instance)`
    // joins must work without one.
    let prom = Prometheus::start_on(&hub, &dir, PROM_PORT, &targets, "");
    let up = |p: &Prometheus| {
        result(&p.query("count(up == 1)"))
            .first()
            .map_or(0.0, value)
    };
    common::wait_for(
        "every exporter to be scraped",
        Duration::from_secs(60),
        || up(&prom) == targets.len() as f64,
    );

    // The signature on the suspect kernel's nodes: one bad-checksum FIN/ACK, a scrape,
    // the rest.
    let suspect: Vec<&Node> = nodes
        .iter()
        .skip(SUSPECT * NODES_PER_KERNEL)
        .take(NODES_PER_KERNEL)
        .collect();
    let send = |count: u64, first_port: u16| {
        for node in &suspect {
            node.bed.cli.enter(move || {
                let segs: Vec<Vec<u8>> = (0..count)
                    .map(|i| {
                        tcp_segment(first_port + i as u16, 8080, tcp::FIN | tcp::ACK, &[], true)
                    })
                    .collect();
                send_segments(&segs);
            });
        }
    };
    send(SIGNATURE_PACKETS, 31000);

    // The exporters count every packet the kernel marked invalid for its checksum (the
    // series exist at 0 from the start, so increase() sees the first one too)...
    let counted = |p: &Prometheus| {
        let v = p.query(
            "sum by (instance) (packetpath_conntrack_invalid_packets_total{reason=\"bad_checksum\"}) > 0",
        );
        result(&v).iter().map(value).collect::<Vec<f64>>()
    };
    common::wait_for(
        "the signature to be scraped",
        Duration::from_secs(30),
        || counted(&prom) == vec![SIGNATURE_PACKETS as f64; NODES_PER_KERNEL],
    );
    // ... and the fleet query grouping by kernel release names the suspect alone.
    let signature = "instance:packetpath_conntrack_bad_checksum_packets:increase_signature_window";
    let by_release = format!(
        "count by (kernel_release) (({signature} > 0) * on (cluster, instance) group_left (kernel_release) packetpath_node_info)"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let named = loop {
        let v = prom.query(&by_release);
        let r = result(&v).clone();
        if r.first()
            .is_some_and(|x| value(x) == NODES_PER_KERNEL as f64)
            || Instant::now() > deadline
        {
            break r;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(named.len(), 1, "only the suspect kernel: {named:?}");
    assert_eq!(
        named[0]["metric"]["kernel_release"],
        KERNELS[SUSPECT].release
    );
    assert_eq!(value(&named[0]), NODES_PER_KERNEL as f64);
    for node in &suspect {
        assert_eq!(node.bed.nft_invalid_drops(), SIGNATURE_PACKETS);
    }
    // The inventory: three kernels of 7 nodes (8 for the first, with the replay), label
    // values as the nodes wrote them, escapes included.
    let inventory = prom.query("count by (kernel_release, kernel_version, ovs_module, ovs_module_version, ovs_version) (packetpath_node_info)");
    let mut got: Vec<(String, String, String, String, String, f64)> = result(&inventory)
        .iter()
        .map(|r| {
            let m = &r["metric"];
            let s = |k: &str| m[k].as_str().unwrap_or("").to_owned();
            (
                s("kernel_release"),
                s("kernel_version"),
                s("ovs_module"),
                s("ovs_module_version"),
                s("ovs_version"),
                value(r),
            )
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let want: Vec<(String, String, String, String, String, f64)> = vec![
        (
            KERNELS[0].release.into(),
            KERNELS[0].version.into(),
            "out_of_tree".into(),
            "2.17.9".into(),
            "".into(),
            1.0,
        ),
        (
            KERNELS[0].release.into(),
            KERNELS[0].version.into(),
            "out_of_tree".into(),
            "2.17.9".into(),
            "2.15.0".into(),
            7.0,
        ),
        (
            KERNELS[1].release.into(),
            KERNELS[1].version.into(),
            "in_tree".into(),
            "".into(),
            "3.1.0".into(),
            7.0,
        ),
        (
            KERNELS[2].release.into(),
            KERNELS[2].version.into(),
            "in_tree".into(),
            "".into(),
            "3.5.0".into(),
            7.0,
        ),
    ];
    let mut want = want;
    want.sort_by(|a, b| a.0.cmp(&b.0).then(a.4.cmp(&b.4)));
    got.sort_by(|a, b| a.0.cmp(&b.0).then(a.4.cmp(&b.4)));
    assert_eq!(got, want);

    // Every query of the fleet dashboard returns data (the cluster variable at All).
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("dashboards/packetpath-fleet.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 6, "{exprs:?}");
    for e in &exprs {
        let q = e
            .replace("$__rate_interval", "30s")
            .replace("$__range", "5m")
            .replace("$cluster", ".*");
        let v = prom.query(&q);
        assert_eq!(v["status"], "success", "{q}: {v}");
        if result(&v).is_empty() {
            // Where the kernel gives NFLOG no conntrack zone, no VM port can be named; the
            // drop monitor's series are the host namespace's alone (tests/kernel_drops_vm.rs
            // checks them): those panels may be empty here, nothing else.
            let vm_port = q.contains("vm_port");
            let kernel = q.contains("kernel_vm_path");
            assert!(
                (vm_port && zones == Some(false)) || kernel,
                "{q} returned no data; its series: {:?}",
                selectors(&q)
            );
            eprintln!("{q}: no data here (zones: {zones:?})");
        }
    }
    drop(prom);
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
