//! The seed incident in a real OVS kernel datapath: tests/vm/run.sh boots a Debian kernel
//! in qemu with OVS 3.1, a Geneve tunnel feeding br-int and a TAP "VM", sends good and
//! corrupt-checksum TCP through the tunnel, and hands back the exporter's /metrics beside
//! the kernel tools' own numbers. Every asserted number must equal the kernel's.
//!
//! `UPDATE_FIXTURES=1` also rewrites tests/fixtures/ovs from the netlink replies the guest
//! captured.

mod common;
#[path = "vm/results.rs"]
mod vm_results;

use std::path::{Path, PathBuf};

use common::Metrics;
use vm_results::{
    Results, conntrack_sum, dp_flows, dpctl_lookups, dpctl_port_packets, key_values, sysfs,
};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Boots the bed once; the run takes about 30 s warm.
fn run_bed() -> Option<Results> {
    let out = std::env::temp_dir().join(format!("pp-vm-{}", std::process::id()));
    let exporter = PathBuf::from(common::BIN);
    let results = common::boot_ovs_bed("seed_incident_in_a_real_ovs_datapath", &out, |cmd| {
        cmd.env(
            "PP_EXPORTER_FLAGS",
            "--collector.ovs --collector.ovs_flows --collector.conntrack_invalid",
        )
        .arg("--exporter")
        .arg(&exporter);
        // `cargo test` builds the examples beside the binaries; run.sh builds it otherwise.
        let pptraffic = exporter.parent().map(|d| d.join("examples/pptraffic"));
        if let Some(p) = pptraffic.filter(|p| p.exists()) {
            cmd.arg("--pptraffic").arg(p);
        }
    })?;
    Some(Results::read(&results))
}

fn metrics(r: &Results, phase: &str) -> Metrics {
    common::checked_metrics(r.get(&format!("{phase}/metrics")))
}

/// The one `+inv` drop flow of a dump: (packets, bytes).
fn inv_drop_flow(r: &Results, block: &str) -> (u64, u64) {
    let flows: Vec<_> = dp_flows(r.get(block))
        .into_iter()
        .filter(|f| f.has("ct_state(0x30/0x30)") && f.actions == "drop")
        .collect();
    assert_eq!(flows.len(), 1, "{block}: {flows:?}");
    (flows[0].packets, flows[0].bytes)
}

/// Whether a logfmt line is about collector `c`.
fn about(line: &str, c: &str) -> bool {
    line.split_whitespace()
        .any(|f| f == format!("collector={c}"))
}

fn success(m: &Metrics, c: &str) -> f64 {
    m.value("packetpath_scrape_collector_success", &[("collector", c)])
}

/// Datapath, vport, drop-flow and conntrack numbers of one phase against the kernel tools.
fn check_phase(r: &Results, phase: &str, drop_total: f64) {
    let m = metrics(r, phase);
    for c in [
        "interfaces",
        "conntrack",
        "conntrack_invalid",
        "ovs",
        "ovs_flows",
        "ovsdb",
    ] {
        assert_eq!(success(&m, c), 1.0, "{phase}: {c}");
    }
    // The VM port's identity as os-vif wrote it in OVSDB, on the same device name as the
    // incident's series, so they join on it.
    let (id, one) = m
        .select("packetpath_vm_port_info", &[("device", "tap0")])
        .next()
        .unwrap_or_else(|| panic!("{phase}: no identity for tap0"));
    assert_eq!(one, 1.0);
    assert_eq!(
        (
            id["port_id"].as_str(),
            id["instance_id"].as_str(),
            id["mac"].as_str(),
            id["status"].as_str()
        ),
        (
            "519d7cc4-7593-4944-af80-6a8a9b4f4e9a",
            "0c1e6a4e-6d0e-4b59-9f0a-7a3c2f1d2e3f",
            "02:00:00:00:00:02",
            "active"
        ),
        "{phase}"
    );
    assert!(
        m.get(
            "packetpath_interface_transmit_packets_total",
            &[("device", "tap0"), ("role", "vm")]
        )
        .is_some(),
        "{phase}"
    );
    assert_eq!(m.value("packetpath_vm_ports", &[]), 1.0, "{phase}");
    let show = r.get(&format!("{phase}/dpctl-show"));
    let dp = [("datapath", "ovs-system")];
    let lookups = |result: &str| {
        m.value(
            "packetpath_ovs_datapath_lookups_total",
            &[("datapath", "ovs-system"), ("result", result)],
        )
    };
    let (hit, missed, lost) = dpctl_lookups(show).expect("lookups line");
    assert_eq!(
        (lookups("hit"), lookups("missed"), lookups("lost")),
        (hit as f64, missed as f64, lost as f64),
        "{phase}"
    );
    let line = |prefix: &str| -> String {
        show.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {show}"))
            .to_owned()
    };
    let flows: f64 = line("flows: ")
        .trim_start_matches("flows: ")
        .parse()
        .unwrap();
    assert_eq!(
        m.value("packetpath_ovs_datapath_flows", &dp),
        flows,
        "{phase}"
    );
    let masks = line("masks: ");
    let field = |k: &str| -> f64 {
        masks
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(k))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        m.value("packetpath_ovs_datapath_mask_hits_total", &dp),
        field("hit:"),
        "{phase}"
    );
    assert_eq!(
        m.value("packetpath_ovs_datapath_masks", &dp),
        field("total:"),
        "{phase}"
    );

    // The TAP's transmit is what the VM read, what ovs-dpctl counts for the port and what
    // sysfs says; the tunnel's receive is sysfs's (ovs-dpctl prints 0 for OVS's own
    // genev_sys_6081). The OVS vport counters would repeat these numbers (the kernel fills
    // them from the netdev's), so netdev vports have none.
    let sys = r.get(&format!("{phase}/sysfs"));
    let vm = key_values(r.get(&format!("{phase}/vm-reader")));
    assert_eq!(
        m.select("packetpath_ovs_vport_transmit_packets_total", &[])
            .count(),
        0,
        "{phase}"
    );
    // Roles of the datapath's ports, as the drop attribution labels them.
    let roles = |v: &str| {
        m.select("packetpath_ovs_drop_flow_packets_total", &[("in_port", v)])
            .next()
            .unwrap()
            .0["in_port_role"]
            .clone()
    };
    assert_eq!(
        roles("genev_sys_6081"),
        "tunnel",
        "OVS lists it as NETDEV; the role comes from its link kind"
    );
    assert_eq!(roles("tap0"), "vm");
    // The interfaces collector sees the same devices.
    let iface = |stem: &str, d: &str| {
        m.value(
            &format!("packetpath_interface_{stem}_total"),
            &[("device", d)],
        )
    };
    assert_eq!(iface("transmit_packets", "tap0"), vm["frames"] as f64);
    assert_eq!(
        iface("transmit_bytes", "tap0"),
        vm["bytes"] as f64,
        "{phase}"
    );
    assert_eq!(
        iface("transmit_packets", "tap0"),
        dpctl_port_packets(show, "tap0").unwrap().1 as f64
    );
    assert_eq!(
        iface("transmit_packets", "tap0"),
        sysfs(sys, "tap0", "tx_packets").unwrap() as f64
    );
    assert_eq!(
        iface("receive_packets", "genev_sys_6081"),
        sysfs(sys, "genev_sys_6081", "rx_packets").unwrap() as f64
    );

    // Drop attribution: the +inv drop flow, attributed to the tunnel port.
    let drop = [
        ("in_port", "genev_sys_6081"),
        ("in_port_role", "tunnel"),
        ("reason", "ct_invalid"),
    ];
    assert_eq!(
        m.value("packetpath_ovs_drop_flow_packets_total", &drop),
        drop_total,
        "{phase}"
    );
    // Every reason of the tunnel and VM ports exists (4 reasons, 2 ports); only the +inv
    // drop flow drops.
    let all: Vec<_> = m
        .select("packetpath_ovs_drop_flow_packets_total", &[])
        .collect();
    assert_eq!(all.len(), 8, "{phase}: {all:?}");
    assert_eq!(
        all.iter().map(|(_, v)| v).sum::<f64>(),
        drop_total,
        "{phase}: {all:?}"
    );
    // The same drops by destination: the drop flow recirculates from the ct() flow,
    // whose zone (0) OVSDB gives to tap0; none is left unattributed.
    let to_vm = |reason: &str| {
        m.value(
            "packetpath_vm_port_inbound_drop_packets_total",
            &[
                ("device", "tap0"),
                ("from_role", "tunnel"),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(to_vm("ct_invalid"), drop_total, "{phase}");
    assert_eq!(
        m.select("packetpath_vm_port_inbound_drop_packets_total", &[])
            .map(|(_, v)| v)
            .sum::<f64>(),
        drop_total,
        "{phase}"
    );
    assert_eq!(
        m.select(
            "packetpath_vm_port_inbound_drop_unattributed_packets_total",
            &[]
        )
        .map(|(_, v)| v)
        .sum::<f64>(),
        0.0,
        "{phase}"
    );
    assert_eq!(m.value("packetpath_ovs_flows_dump_truncated", &dp), 0.0);
    assert_eq!(
        m.value(
            "packetpath_ovs_datapath_flows_by_action",
            &[("in_port_role", "tunnel"), ("action", "drop")]
        ),
        1.0
    );

    // Conntrack, summed over CPUs, against `conntrack -S`.
    let invalid = conntrack_sum(r.get(&format!("{phase}/conntrack-S")), "invalid").unwrap();
    assert_eq!(
        m.value("packetpath_conntrack_invalid_total", &[]),
        invalid as f64,
        "{phase}"
    );
}

#[test]
fn seed_incident_in_a_real_ovs_datapath() {
    let Some(r) = run_bed() else { return };
    assert!(
        r.block("exporter-start-failed").is_none(),
        "{}",
        r.get("exporter-start-failed")
    );

    // checksum=1: every corrupt packet after the primer is dropped as ct_invalid by the
    // datapath flow, and conntrack counts them (plus the primer's bad SYN).
    let plan = key_values(r.get("checksum1/plan"));
    let (pkts, bytes) = inv_drop_flow(&r, "checksum1/dump-flows");
    assert_eq!(
        pkts, plan["bad"],
        "the kernel's own drop flow counts the corrupt packets"
    );
    check_phase(&r, "checksum1", pkts as f64);
    let m1 = metrics(&r, "checksum1");
    let drop = [("in_port", "genev_sys_6081"), ("reason", "ct_invalid")];
    assert_eq!(
        m1.value("packetpath_ovs_drop_flow_bytes_total", &drop),
        bytes as f64
    );
    assert_eq!(
        m1.value("packetpath_conntrack_invalid_total", &[]),
        (plan["bad"] + plan["prime_bad_syn"]) as f64
    );
    assert_eq!(
        m1.value(
            "packetpath_conntrack_sysctl",
            &[("name", "nf_conntrack_checksum")]
        ),
        1.0
    );
    // Six of the corrupt packets were FIN/ACKs with 54-byte frames, under the Ethernet minimum.
    assert_eq!(plan["bad_finack"], 6);

    // OVS's ct() action logs invalid packets through nf_log like the host's conntrack does,
    // so the classifier sees them: all bad checksums, all frames under 60 bytes, and with
    // no input device (the datapath calls conntrack without one).
    let inv = |m: &Metrics, flags: &str| {
        m.value(
            "packetpath_conntrack_invalid_packets_total",
            &[
                ("family", "ipv4"),
                ("protocol", "tcp"),
                ("reason", "bad_checksum"),
                ("size_class", "lt60"),
                ("tcp_flags", flags),
            ],
        )
    };
    assert_eq!(inv(&m1, "fin"), plan["bad_finack"] as f64);
    assert_eq!(
        inv(&m1, "syn"),
        (plan["bad_syn"] + plan["prime_bad_syn"]) as f64
    );
    // Only those two classes counted; the TCP bad-checksum classes all exist at 0 from the
    // start (2 families x 4 size classes x 7 flag sets).
    let classes: Vec<_> = m1
        .select("packetpath_conntrack_invalid_packets_total", &[])
        .collect();
    assert_eq!(classes.iter().filter(|(_, v)| *v > 0.0).count(), 2);
    assert_eq!(classes.len(), 56);
    assert_eq!(
        m1.value("packetpath_conntrack_invalid_log_messages_total", &[]),
        m1.value("packetpath_conntrack_invalid_total", &[])
    );
    for lossless in ["overruns", "lost", "errors"] {
        assert_eq!(
            m1.value(
                &format!("packetpath_conntrack_invalid_log_{lossless}_total"),
                &[]
            ),
            0.0
        );
    }
    assert_eq!(
        m1.select("packetpath_conntrack_invalid_device_packets_total", &[])
            .count(),
        0
    );

    // checksum=0: the corrupt SYNs reach the TAP; nothing more is attributed to ct_invalid.
    let plan0 = key_values(r.get("checksum0/plan"));
    assert_eq!(inv_drop_flow(&r, "checksum0/dump-flows").0, pkts);
    check_phase(&r, "checksum0", pkts as f64);
    let m0 = metrics(&r, "checksum0");
    assert_eq!(
        m0.value("packetpath_conntrack_invalid_total", &[]),
        m1.value("packetpath_conntrack_invalid_total", &[])
    );
    let tap = |m: &Metrics| {
        m.value(
            "packetpath_interface_transmit_packets_total",
            &[("device", "tap0")],
        )
    };
    assert_eq!(tap(&m0) - tap(&m1), (plan0["good"] + plan0["bad"]) as f64);

    // Fault: vswitchd stopped, datapath deleted, module unloaded. The OVS collectors report
    // failure, the others go on, and the log says why once, without a storm.
    let mf = metrics(&r, "fault");
    assert_eq!((success(&mf, "ovs"), success(&mf, "ovs_flows")), (0.0, 0.0));
    assert_eq!(
        (success(&mf, "interfaces"), success(&mf, "conntrack")),
        (1.0, 1.0)
    );
    assert!(
        mf.select("packetpath_ovs_datapath_lookups_total", &[])
            .next()
            .is_none()
    );
    // The tunnel still receives; the TAP gets nothing.
    let plan_f = key_values(r.get("fault/plan"));
    let iface = |m: &Metrics, stem: &str, d: &str| {
        m.value(
            &format!("packetpath_interface_{stem}_total"),
            &[("device", d)],
        )
    };
    assert_eq!(
        iface(&mf, "receive_packets", "genev_sys_6081")
            - iface(&m0, "receive_packets", "genev_sys_6081"),
        plan_f["good"] as f64
    );
    assert_eq!(
        iface(&mf, "transmit_packets", "tap0"),
        iface(&m0, "transmit_packets", "tap0")
    );
    let log = r.get("fault/exporter-log");
    for c in ["ovs", "ovs_flows"] {
        let lines: Vec<&str> = log.lines().filter(|l| about(l, c)).collect();
        assert_eq!(lines.len(), 1, "{c}: one line, not a storm:\n{log}");
        assert!(
            lines[0].contains("level=info") && lines[0].contains("openvswitch module not loaded"),
            "{}",
            lines[0]
        );
    }
    // A scrape must never load the module by itself.
    assert_eq!(r.get("fault/autoload").trim(), "openvswitch not loaded");

    // Recovered: module and vswitchd back; the collectors recover and the drop counter
    // continues from where it was (the new datapath's flow counts exactly the new batch).
    let plan_r = key_values(r.get("recovered/plan"));
    let (new_drops, _) = inv_drop_flow(&r, "recovered/dump-flows");
    assert_eq!(new_drops, plan_r["bad"]);
    check_phase(&r, "recovered", (pkts + new_drops) as f64);
    let mr = metrics(&r, "recovered");
    assert_eq!(
        inv(&mr, "fin"),
        (plan["bad_finack"] + plan_r["bad_finack"]) as f64
    );
    assert_eq!(
        inv(&mr, "syn"),
        (plan["bad_syn"] + plan["prime_bad_syn"] + plan_r["bad_syn"] + plan_r["prime_bad_syn"])
            as f64
    );
    let log = r.get("recovered/exporter-log");
    for c in ["ovs", "ovs_flows"] {
        assert_eq!(log.lines().filter(|l| about(l, c)).count(), 2, "{log}");
        assert!(
            log.contains(&format!(
                "level=info msg=\"collector recovered\" collector={c}"
            )),
            "{log}"
        );
    }

    // diagnose on the node: exit 1, and a verdict that names the tunnel device, the VM
    // port (by instance and Neutron port) and the drop flow, with the exact count.
    let out = r.get("diagnose/output");
    assert_eq!(r.get("diagnose/status").trim(), "1", "{out}");
    assert!(
        out.contains(
            "5 packets (5 shorter than 60 bytes, mostly TCP FIN/ACK) from genev_sys_6081 failed conntrack's checksum check"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "the datapath flow ovs-system: in_port(genev_sys_6081) ct_state(+inv) → drop dropped 5 of them before they reached \
             tap0 (instance 0c1e6a4e-6d0e-4b59-9f0a-7a3c2f1d2e3f, port 519d7cc4-7593-4944-af80-6a8a9b4f4e9a)"
        ),
        "{out}"
    );
    assert!(
        out.contains("NFLOG group 0 is owned by the exporter at http://127.0.0.1:9479/metrics; its classification is used"),
        "{out}"
    );
    assert!(
        out.contains("Likely fix: Set net.netfilter.nf_conntrack_checksum=0"),
        "{out}"
    );

    if std::env::var("UPDATE_FIXTURES").as_deref() == Ok("1") {
        save_fixtures(&r);
    }
}

/// Writes the guest's captured netlink replies (od hex dumps), its conntrack procfs files
/// (under proc/) and the kernel tools' view of the same moment to tests/fixtures/ovs.
fn save_fixtures(r: &Results) {
    let dir = repo("tests/fixtures/ovs");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for name in r.names() {
        let Some(file) = name.strip_prefix("capture/") else {
            continue;
        };
        let bytes: Vec<u8> = r
            .get(name)
            .split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        std::fs::write(dir.join(file), bytes).unwrap();
    }
    for name in r.names() {
        if let Some(file) = name.strip_prefix("capture-proc/") {
            let path = dir.join("proc").join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, r.get(name)).unwrap();
        }
    }
    for (block, file) in [
        ("capture-dpctl-show", "ovs-dpctl-show.txt"),
        ("capture-dump-flows", "ovs-dpctl-dump-flows.txt"),
        ("capture-conntrack-S", "conntrack-S.txt"),
    ] {
        std::fs::write(dir.join(file), r.get(block)).unwrap();
    }
}
