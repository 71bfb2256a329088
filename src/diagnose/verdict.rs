//! The findings and the one verdict: which signals mean packets were lost, and what the
//! likely fix is. Loss: bad checksums, drops by `ct_state(+inv)` flows, lost upcalls,
//! conntrack drops, a VM not draining its TAP. Drops by other flows are policy (security
//! groups, ACLs) and only a warning, as are invalid packets nothing dropped.

use std::collections::BTreeMap;

use super::analysis::{FlowDrop, InvalidClass, Offload, Port, Report, Severity, Verdict};

fn count(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// The interval in words: "10 s".
fn secs(s: f64) -> String {
    format!("{} s", (s * 10.0).round() / 10.0)
}

/// Offload differences between the tunnel devices and the uplinks, in words.
fn offload_mismatch(offload: &[Offload]) -> Vec<String> {
    let mut out = Vec::new();
    for t in offload.iter().filter(|o| o.role == "tunnel") {
        for u in offload.iter().filter(|o| o.role == "uplink") {
            for (what, a, b) in [
                ("rx checksum", t.rx_checksum(), u.rx_checksum()),
                ("tx checksum", t.tx_checksum(), u.tx_checksum()),
            ] {
                if let (Some(a), Some(b)) = (a, b)
                    && a != b
                {
                    let on = |v: bool| if v { "on" } else { "off" };
                    out.push(format!(
                        "{what} offload is {} on {} but {} on {}",
                        on(a),
                        t.device,
                        on(b),
                        u.device
                    ));
                }
            }
        }
    }
    out
}

/// Whether there was a tunnel device and an uplink to compare.
fn compared(offload: &[Offload]) -> bool {
    offload.iter().any(|o| o.role == "tunnel") && offload.iter().any(|o| o.role == "uplink")
}

fn flags_name(f: &str) -> &'static str {
    match f {
        "fin" => "FIN/ACK",
        "rst" => "RST",
        "syn" => "SYN",
        "synack" => "SYN/ACK",
        "ack" => "ACK",
        _ => "other",
    }
}

/// The sentence about bad checksums, the fix, and whether most were short frames.
fn checksum_story(
    r: &Report,
    bad: &[&InvalidClass],
    inv_flow: Option<&FlowDrop>,
    mismatch: &[String],
) -> (String, String) {
    let iv = secs(r.interval_seconds);
    let total: u64 = bad.iter().map(|k| k.packets).sum();
    let short: u64 = bad
        .iter()
        .filter(|k| k.size_class == "lt60")
        .map(|k| k.packets)
        .sum();
    let mut flags: BTreeMap<&str, u64> = BTreeMap::new();
    for k in bad {
        *flags.entry(k.tcp_flags.as_str()).or_default() += k.packets;
    }
    let top = flags
        .iter()
        .max_by_key(|(_, n)| **n)
        .map_or("other", |(f, _)| flags_name(f));
    let proto = bad
        .first()
        .map_or("tcp", |k| k.protocol.as_str())
        .to_uppercase();
    let mostly_short = short * 2 >= total;
    let what = if mostly_short {
        format!(
            "{} ({short} shorter than 60 bytes, mostly {proto} {top})",
            count(total, "packet", "packets")
        )
    } else {
        format!(
            "{} (mostly {proto} {top})",
            count(total, "packet", "packets")
        )
    };
    let from = inv_flow
        .filter(|f| f.in_port_role == "tunnel")
        .map(|f| format!(" from {}", f.in_port))
        .unwrap_or_default();
    let checksum = r
        .settings
        .get("nf_conntrack_checksum")
        .map_or("?".to_owned(), |v| v.to_string());
    let mut s = format!(
        "{what}{from} failed conntrack's checksum check in {iv} and were marked invalid (nf_conntrack_checksum={checksum})"
    );
    if let Some(flow) = inv_flow {
        if flow.packets <= total {
            s.push_str(&format!(
                "; the datapath flow {} dropped {} of them",
                flow.flow(),
                flow.packets
            ));
        } else {
            s.push_str(&format!(
                "; the datapath flow {} dropped {} invalid packets, these among them",
                flow.flow(),
                flow.packets
            ));
        }
        // Only one VM port can be named with certainty: the counters do not say which
        // VM a dropped packet was for.
        if let [vm] = r.vm_ports.as_slice() {
            s.push_str(&format!(" before they reached {}", vm.display()));
        } else {
            s.push_str(" before they reached a VM port");
        }
    }
    s.push('.');
    let mut fix = "Set net.netfilter.nf_conntrack_checksum=0 (sysctl -w, and persist it in /etc/sysctl.d): conntrack then stops validating checksums, these packets are tracked instead of invalid and no ct_state(+inv) drop matches them; the VM's own TCP stack still checks every checksum.".to_owned();
    if !mismatch.is_empty() {
        fix.push_str(&format!(
            " Offload differs on the path ({}): the device that hands these packets on with a partial checksum is where to look; 'ethtool -K <device> tx off' makes the kernel finish the checksum in software.",
            mismatch.join("; ")
        ));
    } else if compared(&r.offload) && mostly_short {
        fix.push_str(" Checksum offload is the same on the tunnel and the uplinks, so the fault is in the kernel's handling of these short frames, not a device setting.");
    } else if compared(&r.offload) {
        fix.push_str(
            " Checksum offload is the same on the tunnel and the uplinks: not a device setting.",
        );
    }
    (s, fix)
}

pub fn judge(r: &mut Report, lost: u64) {
    let iv = secs(r.interval_seconds);
    let ok = |c: &str| r.sources.iter().any(|s| s.collector == c && s.ok);
    let mut f: Vec<(Severity, String)> = Vec::new();
    let bad: Vec<&InvalidClass> = r
        .conntrack
        .classified
        .iter()
        .filter(|k| k.reason == "bad_checksum")
        .collect();
    let bad_total: u64 = bad.iter().map(|k| k.packets).sum();
    let inv_drops: Vec<&FlowDrop> = r
        .drops
        .iter()
        .filter(|x| x.reason == "ct_invalid")
        .collect();
    // The +inv flow to name: the busiest one from a tunnel port, else the busiest at all.
    let inv_flow = inv_drops
        .iter()
        .filter(|x| x.in_port_role == "tunnel")
        .max_by_key(|x| x.packets)
        .or_else(|| inv_drops.iter().max_by_key(|x| x.packets))
        .copied();
    let inv_total: u64 = inv_drops.iter().map(|x| x.packets).sum();
    let mismatch = offload_mismatch(&r.offload);
    let starved: Vec<&Port> = r
        .vm_ports
        .iter()
        .filter(|p| p.transmit_dropped > 0)
        .collect();

    let mut summary = None;
    let mut fix = None;
    if bad_total > 0 {
        let (s, x) = checksum_story(r, &bad, inv_flow, &mismatch);
        summary = Some(s);
        fix = Some(x);
        f.push((
            Severity::Loss,
            format!("bad checksum: {}", count(bad_total, "packet", "packets")),
        ));
    }
    for x in &r.drops {
        let n = count(x.packets, "packet", "packets");
        if x.reason == "ct_invalid" {
            f.push((
                Severity::Loss,
                format!("{n} dropped by datapath flow {}", x.flow()),
            ));
        } else {
            f.push((
                Severity::Warning,
                format!(
                    "{n} dropped by datapath flow {} (policy, usually: a security group or ACL)",
                    x.flow()
                ),
            ));
        }
    }
    if summary.is_none()
        && let Some(flow) = inv_flow
    {
        let why = match &r.conntrack {
            c if c.classifying => " (none of them for a bad checksum)".to_owned(),
            c => format!(" (why invalid is unknown: {})", c.classifier),
        };
        summary = Some(format!(
            "Conntrack marked {} invalid and ct_state(+inv) datapath flows dropped them in {iv}, most by {}{why}.",
            count(inv_total, "packet", "packets"),
            flow.flow()
        ));
        fix = Some(if r.conntrack.classifying {
            "Look at the invalid classes above: out-of-window or invalid-state packets usually mean asymmetric routing or a connection conntrack lost (a restart, a full table).".into()
        } else {
            "Run diagnose as root (CAP_NET_ADMIN) or enable the conntrack_invalid collector to see why conntrack marks them invalid; a bad checksum is fixed with nf_conntrack_checksum=0.".into()
        });
    }
    if lost > 0 {
        f.push((
            Severity::Loss,
            format!(
                "{} lost between the datapath and ovs-vswitchd (upcalls failed)",
                count(lost, "packet", "packets")
            ),
        ));
        if summary.is_none() {
            summary = Some(format!(
                "The datapath lost {} in {iv}: upcalls to ovs-vswitchd failed.",
                count(lost, "packet", "packets")
            ));
            fix = Some("ovs-vswitchd is overloaded or its handler threads are starved: check its CPU and ovs-appctl upcall/show.".into());
        }
    }
    for p in &starved {
        f.push((
            Severity::Loss,
            format!(
                "{} could not be delivered to {} (the VM did not drain its queue)",
                count(p.transmit_dropped, "packet", "packets"),
                p.display()
            ),
        ));
    }
    if summary.is_none()
        && let Some(p) = starved.first()
    {
        summary = Some(format!(
            "{} dropped {} on the way into the VM in {iv}: the guest did not drain its queue.",
            p.display(),
            count(p.transmit_dropped, "packet", "packets")
        ));
        fix = Some(
            "Look inside the guest (CPU, virtio queues) and at the vhost threads on the host."
                .into(),
        );
    }
    if let Some(c) = &r.conntrack.stats {
        for (n, what) in [
            (
                c.drop,
                "dropped by conntrack because no entry could be created",
            ),
            (
                c.insert_failed,
                "conntrack entries that could not be inserted",
            ),
            (
                c.early_drop,
                "conntrack entries evicted because the table was full",
            ),
        ] {
            if n > 0 {
                f.push((Severity::Loss, format!("{n} {what}")));
                if summary.is_none() {
                    summary = Some(format!(
                        "Conntrack is dropping traffic: {n} {what} in {iv}."
                    ));
                    fix = Some("Raise net.netfilter.nf_conntrack_max or find the connection flood (conntrack -L | sort).".into());
                }
            }
        }
        if c.invalid > 0 && bad_total == 0 && inv_drops.is_empty() {
            let classes: Vec<String> = r
                .conntrack
                .classified
                .iter()
                .take(3)
                .map(|k| format!("{} {} {} {}", k.packets, k.protocol, k.reason, k.tcp_flags))
                .collect();
            f.push((
                Severity::Warning,
                format!(
                    "conntrack marked {} invalid{} (not necessarily dropped: late RSTs and retransmissions are normal background)",
                    count(c.invalid, "packet", "packets"),
                    if classes.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", classes.join(", "))
                    }
                ),
            ));
        }
    }
    for t in &r.tunnels {
        if t.receive_dropped + t.receive_errors > 0 {
            f.push((
                Severity::Warning,
                format!(
                    "{} dropped {} and counted {} on receive",
                    t.device,
                    count(t.receive_dropped, "packet", "packets"),
                    count(t.receive_errors, "error", "errors")
                ),
            ));
        }
    }
    for m in &mismatch {
        f.push((Severity::Info, m.clone()));
    }
    let loss = f.iter().any(|(s, _)| *s == Severity::Loss);
    let summary = summary.unwrap_or_else(|| no_loss(r, &iv, ok("ovs_flows")));
    r.findings = f
        .into_iter()
        .map(|(severity, text)| super::analysis::Finding { severity, text })
        .collect();
    r.verdict = Verdict { loss, summary, fix };
}

/// "7 packets arrived on 2 tunnel devices", or `none` when there is no such device.
fn devices(n: usize, packets: u64, none: &str, verb: &str, device: &str) -> String {
    if n == 0 {
        return none.to_owned();
    }
    format!(
        "{} {verb} {}",
        count(packets, "packet", "packets"),
        count(n as u64, device, &format!("{device}s"))
    )
}

/// "No loss signal", saying only what was looked at.
fn no_loss(r: &Report, iv: &str, datapath: bool) -> String {
    let arrived: u64 = r.tunnels.iter().map(|t| t.received).sum();
    let delivered: u64 = r.vm_ports.iter().map(|p| p.transmitted).sum();
    let tunnels = devices(
        r.tunnels.len(),
        arrived,
        "no tunnel device here",
        "arrived on",
        "tunnel device",
    );
    let vms = devices(
        r.vm_ports.len(),
        delivered,
        "no VM port",
        "delivered to",
        "VM port",
    );
    let mut checked = Vec::new();
    let mut unchecked = Vec::new();
    let mut check = |done: bool, what: &'static str| {
        if done {
            checked.push(format!("no {what}"));
        } else {
            unchecked.push(what);
        }
    };
    check(datapath, "datapath drops of invalid packets");
    check(r.conntrack.stats.is_some(), "conntrack drops");
    check(r.conntrack.classifying, "bad checksums");
    let mut s = format!("No loss signal in {iv}: {tunnels}, {vms}");
    if !checked.is_empty() {
        s.push_str(&format!("; {}", checked.join(", ")));
    }
    if !unchecked.is_empty() {
        s.push_str(&format!(
            "; not checked, their source unavailable: {}",
            unchecked.join(", ")
        ));
    }
    s.push('.');
    s
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn no_loss_says_what_it_could_not_check() {
        let r = report("", "", false);
        assert_eq!(
            r.verdict.summary,
            "No loss signal in 10 s: no tunnel device here, no VM port; no datapath drops of invalid packets; not checked, their source unavailable: conntrack drops, bad checksums."
        );
    }
}
