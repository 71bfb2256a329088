//! The verdict on hand-written expositions.

use super::super::analysis::{Context, Report, analyse};
use super::super::exposition::parse;

const OK: &str = "packetpath_scrape_collector_success{collector=\"interfaces\"} 1\n\
    packetpath_scrape_collector_success{collector=\"ovs_flows\"} 1\n";

fn report(before: &str, after: &str, classifying: bool) -> Report {
    analyse(
        &parse(&format!("{OK}{before}")).unwrap(),
        &parse(&format!("{OK}{after}")).unwrap(),
        Context {
            source: "test".into(),
            interval_seconds: 10.0,
            classifier: "test".into(),
            classifying,
        },
    )
}

fn drop_series(reason: &str, v: u64) -> String {
    format!(
        "packetpath_ovs_drop_flow_packets_total{{datapath=\"ovs-system\",in_port=\"genev_sys_6081\",in_port_role=\"tunnel\",reason=\"{reason}\"}} {v}\n"
    )
}

#[test]
fn policy_drops_warn_invalid_drops_are_loss() {
    let r = report(
        &drop_series("explicit", 5),
        &drop_series("explicit", 12),
        true,
    );
    assert!(!r.verdict.loss, "{r:?}");
    assert!(r.findings[0].text.starts_with(
        "7 packets dropped by datapath flow ovs-system: in_port(genev_sys_6081) → drop"
    ));
    assert!(
        r.verdict
            .summary
            .contains("no datapath drops of invalid packets"),
        "{}",
        r.verdict.summary
    );
    let r = report(
        &drop_series("ct_invalid", 5),
        &drop_series("ct_invalid", 12),
        false,
    );
    assert!(r.verdict.loss);
    assert!(r.verdict.summary.starts_with("Conntrack marked 7 packets invalid and ct_state(+inv) datapath flows dropped them in 10 s"), "{}", r.verdict.summary);
}

#[test]
fn a_family_missing_from_the_first_sample_counts_nothing() {
    // The collector failed in the first sample: the lifetime total is not this interval's.
    let vm = "packetpath_interface_receive_packets_total{device=\"tap0\",role=\"vm\"} 1\n\
              packetpath_interface_transmit_dropped_total{device=\"tap0\",role=\"vm\"} 900\n";
    let r = report("", vm, true);
    assert!(!r.verdict.loss, "{r:?}");
    // A device that appeared while its family was there counts from 0.
    let before = "packetpath_interface_transmit_dropped_total{device=\"tap9\",role=\"vm\"} 0\n\
                  packetpath_interface_receive_packets_total{device=\"tap9\",role=\"vm\"} 0\n";
    let r = report(before, &format!("{before}{vm}"), true);
    assert!(r.verdict.loss);
    assert_eq!(
        r.vm_ports
            .iter()
            .find(|p| p.device == "tap0")
            .unwrap()
            .transmit_dropped,
        900
    );
}

const TAP0: &str = "packetpath_vm_port_info{device=\"tap0\",port_id=\"p0\",instance_id=\"i0\",mac=\"\",status=\"active\"} 1\n\
    packetpath_interface_receive_packets_total{device=\"tap0\",role=\"vm\"} 0\n";
const TAP1: &str = "packetpath_vm_port_info{device=\"tap1\",port_id=\"p1\",instance_id=\"i1\",mac=\"\",status=\"active\"} 1\n\
    packetpath_interface_receive_packets_total{device=\"tap1\",role=\"vm\"} 0\n";

/// An exposition with VM ports tap0 and tap1 and `series` after them.
fn two_vm_ports(series: &[String]) -> String {
    format!("{TAP0}{TAP1}{}", series.concat())
}

fn bad_checksums(v: u64) -> String {
    format!(
        "packetpath_conntrack_invalid_packets_total{{family=\"ipv4\",protocol=\"tcp\",reason=\"bad_checksum\",size_class=\"lt60\",tcp_flags=\"fin\"}} {v}\n"
    )
}

fn zone(device: &str, reason: &str, v: u64) -> String {
    format!(
        "packetpath_vm_port_conntrack_invalid_packets_total{{device=\"{device}\",reason=\"{reason}\"}} {v}\n"
    )
}

fn inbound(device: &str, reason: &str, v: u64) -> String {
    format!(
        "packetpath_vm_port_inbound_drop_packets_total{{device=\"{device}\",from_role=\"tunnel\",reason=\"{reason}\"}} {v}\n"
    )
}

#[test]
fn the_verdict_names_every_vm_port_whose_zone_had_the_bad_checksums() {
    // Two VM ports with bad checksums in their zones, all of them counted by the flow.
    let before = two_vm_ports(&[
        bad_checksums(0),
        drop_series("ct_invalid", 0),
        inbound("tap0", "ct_invalid", 0),
        inbound("tap1", "ct_invalid", 0),
        zone("tap1", "bad_checksum", 1),
    ]);
    let after = two_vm_ports(&[
        bad_checksums(5),
        drop_series("ct_invalid", 5),
        inbound("tap0", "ct_invalid", 3),
        inbound("tap1", "ct_invalid", 2),
        zone("tap0", "bad_checksum", 3),
        zone("tap1", "bad_checksum", 3),
    ]);
    let r = report(&before, &after, true);
    assert_eq!(
        r.verdict.summary,
        "5 packets (5 shorter than 60 bytes, mostly TCP FIN/ACK) from genev_sys_6081 failed conntrack's checksum check in 10 s and were marked invalid (nf_conntrack_checksum=?); the datapath flow ovs-system: in_port(genev_sys_6081) ct_state(+inv) → drop dropped 5 of them before they reached tap0 (instance i0, port p0) and tap1 (instance i1, port p1)."
    );
    let texts: Vec<&str> = r.findings.iter().map(|f| f.text.as_str()).collect();
    assert_eq!(
        texts[2..],
        [
            "tap0 (instance i0, port p0): 3 packets marked invalid in its conntrack zone (bad_checksum 3); 3 packets dropped on the way to it by datapath flows (ct_invalid from tunnel 3)",
            "tap1 (instance i1, port p1): 2 packets marked invalid in its conntrack zone (bad_checksum 2); 2 packets dropped on the way to it by datapath flows (ct_invalid from tunnel 2)",
        ]
    );

    // One VM port: the verdict the OVS test bed reads.
    let after = two_vm_ports(&[
        bad_checksums(5),
        drop_series("ct_invalid", 5),
        inbound("tap0", "ct_invalid", 5),
        inbound("tap1", "ct_invalid", 0),
        zone("tap0", "bad_checksum", 5),
    ]);
    let r = report(&before, &after, true);
    assert!(
        r.verdict.summary.ends_with(
            "; the datapath flow ovs-system: in_port(genev_sys_6081) ct_state(+inv) → drop dropped 5 of them before they reached tap0 (instance i0, port p0)."
        ),
        "{}",
        r.verdict.summary
    );

    // Without per-VM series, two VM ports: none can be named.
    let r = report(
        &two_vm_ports(&[bad_checksums(0), drop_series("ct_invalid", 0)]),
        &two_vm_ports(&[bad_checksums(5), drop_series("ct_invalid", 5)]),
        true,
    );
    assert!(!r.vm_attribution);
    assert!(
        r.verdict
            .summary
            .ends_with(" dropped 5 of them before they reached a VM port."),
        "{}",
        r.verdict.summary
    );
}

#[test]
fn ct_invalid_drops_name_the_vm_ports_they_were_heading_to() {
    let before = two_vm_ports(&[
        drop_series("ct_invalid", 0),
        inbound("tap0", "ct_invalid", 0),
        inbound("tap1", "ct_invalid", 0),
    ]);
    let after = two_vm_ports(&[
        drop_series("ct_invalid", 7),
        inbound("tap0", "ct_invalid", 2),
        inbound("tap1", "ct_invalid", 5),
        zone("tap1", "invalid_state", 5),
    ]);
    let r = report(&before, &after, true);
    assert_eq!(
        r.verdict.summary,
        "Conntrack marked 7 packets invalid and ct_state(+inv) datapath flows dropped them in 10 s, most by ovs-system: in_port(genev_sys_6081) ct_state(+inv) → drop (none of them for a bad checksum). Of those counted, 5 were on the way to tap1 (instance i1, port p1) and 2 to tap0 (instance i0, port p0)."
    );
    // tap1's zone series appeared in the second sample. With neither its family nor the
    // classifier's in the first, nothing says the classifier ran then: left out. With
    // the classifier's there, it counts from 0.
    assert_eq!(r.vm_losses[0].device, "tap1");
    assert!(r.vm_losses[0].invalid.is_empty(), "{:?}", r.vm_losses[0]);
    let r = report(
        &format!("{before}{}", bad_checksums(0)),
        &format!("{after}{}", bad_checksums(0)),
        true,
    );
    assert_eq!(r.vm_losses[0].invalid_for("invalid_state"), 5);
}

#[test]
fn no_loss_says_what_it_could_not_check() {
    let r = report("", "", false);
    assert_eq!(
        r.verdict.summary,
        "No loss signal in 10 s: no tunnel device here, no VM port; no datapath drops of invalid packets; not checked, their source unavailable: conntrack drops, bad checksums, kernel drops that lose VM traffic."
    );
}

fn kernel(device: &str, role: &str, reason: &str, v: u64) -> String {
    format!(
        "packetpath_kernel_drop_packets_total{{device=\"{device}\",role=\"{role}\",reason=\"{reason}\"}} {v}\n"
    )
}

const DROPS: &str = "packetpath_scrape_collector_success{collector=\"drops\"} 1\n\
    packetpath_kernel_drop_monitor_active 1\n";

#[test]
fn kernel_drops_that_lose_vm_traffic_are_the_verdict() {
    // A TAP nobody holds, beside what a healthy node drops all day.
    let before = two_vm_ports(&[
        DROPS.to_owned(),
        kernel("tap0", "vm", "DEV_READY", 0),
        kernel("genev_sys_6081", "tunnel", "NOT_SPECIFIED", 10),
    ]);
    let after = two_vm_ports(&[
        DROPS.to_owned(),
        kernel("tap0", "vm", "DEV_READY", 30),
        kernel("genev_sys_6081", "tunnel", "NOT_SPECIFIED", 50),
        kernel("eth0", "other", "NO_SOCKET", 70),
        kernel("genev_sys_6081", "tunnel", "NETFILTER_DROP", 6),
    ]);
    let r = report(&before, &after, true);
    assert!(r.verdict.loss);
    assert_eq!(
        r.verdict.summary,
        "The kernel dropped 30 packets on VM port tap0 (instance i0, port p0) in 10 s for DEV_READY: nobody holds the TAP (the VM is down, or being migrated). Also: 6 for NETFILTER_DROP on genev_sys_6081."
    );
    assert!(r.verdict.fix.as_deref().unwrap().contains("virsh domstate"));
    let k = r.kernel_drops.as_ref().unwrap();
    // Those that lose VM traffic first; the uplink is not a tunnel or VM port.
    let rows: Vec<(&str, &str, u64)> = k
        .top
        .iter()
        .map(|d| (d.device.as_str(), d.reason.as_str(), d.packets))
        .collect();
    assert_eq!(
        rows,
        [
            ("tap0", "DEV_READY", 30),
            ("genev_sys_6081", "NETFILTER_DROP", 6),
            ("genev_sys_6081", "NOT_SPECIFIED", 40),
        ]
    );
    assert!((k.top[0].per_second - 3.0).abs() < 1e-9);
    let texts: Vec<&str> = r.findings.iter().map(|f| f.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "30 packets dropped by the kernel on VM port tap0 (instance i0, port p0) for DEV_READY: nobody holds the TAP (the VM is down, or being migrated)",
            "6 packets dropped by the kernel on tunnel device genev_sys_6081 for NETFILTER_DROP: a host firewall rule dropped them",
        ]
    );
}

#[test]
fn a_healthy_nodes_kernel_drops_are_no_loss() {
    let before = two_vm_ports(&[
        DROPS.to_owned(),
        kernel("tap1", "vm", "OVS_DROP_EXPLICIT", 0),
    ]);
    let after = two_vm_ports(&[
        DROPS.to_owned(),
        kernel("tap1", "vm", "OVS_DROP_EXPLICIT", 4),
        kernel("tap1", "vm", "NOT_SPECIFIED", 3),
        kernel("", "local", "TCP_OLD_DATA", 2),
    ]);
    let r = report(&before, &after, true);
    assert!(!r.verdict.loss, "{r:?}");
    assert!(
        r.verdict
            .summary
            .contains("no kernel drops that lose VM traffic"),
        "{}",
        r.verdict.summary
    );
    // A drop flow's drops warn: the datapath flows say whether they were ct_state(+inv).
    assert_eq!(r.findings.len(), 1);
    assert!(r.findings[0].text.contains("OVS drop flows dropped them"));
}

#[test]
fn kernel_drops_need_the_collector_in_both_samples() {
    // The drops collector failed in the first sample: the lifetime total is not this
    // interval's.
    let after = two_vm_ports(&[DROPS.to_owned(), kernel("tap0", "vm", "FULL_RING", 900)]);
    let r = report(&two_vm_ports(&[]), &after, true);
    assert!(!r.verdict.loss, "{r:?}");
    assert!(r.kernel_drops.as_ref().unwrap().top.is_empty());
    // A reason new in the second sample, with the monitor there in the first, counts from 0.
    let r = report(&two_vm_ports(&[DROPS.to_owned()]), &after, true);
    assert!(r.verdict.loss);
    assert_eq!(
        r.verdict.fix.as_deref(),
        Some(
            "Look inside the guest (CPU, virtio queues, ring size) and at the vhost threads on the host."
        )
    );
}

#[test]
fn reasons_that_lose_vm_traffic() {
    use super::super::analysis::Severity;
    use super::super::kernel_drops::meaning;
    let severity = |r: &str| meaning(r).map(|m| m.severity);
    for r in [
        "FULL_RING",
        "DEV_READY",
        "TAP_FILTER",
        "TAP_TXFILTER",
        "QDISC_DROP",
        "NETFILTER_DROP",
        "OVS_DROP_METER",
        "OVS_DROP_RECURSION_LIMIT",
        "function:tun_net_xmit",
    ] {
        assert_eq!(severity(r), Some(Severity::Loss), "{r}");
    }
    for r in [
        "OVS_DROP_EXPLICIT",
        "OVS_DROP_LAST_ACTION",
        "function:ovs_dp_process_packet",
    ] {
        assert_eq!(severity(r), Some(Severity::Warning), "{r}");
    }
    for r in [
        "NOT_SPECIFIED",
        "NO_SOCKET",
        "TCP_OLD_DATA",
        "function:udp_queue_rcv_one_skb",
        "",
    ] {
        assert_eq!(severity(r), None, "{r}");
    }
}
