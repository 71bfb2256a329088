//! The findings and the one verdict: which signals mean packets were lost, and what the
//! likely fix is. Loss: bad checksums, drops by `ct_state(+inv)` flows, lost upcalls,
//! conntrack drops, a VM not draining its TAP. Drops by other flows are policy (security
//! groups, ACLs) and only a warning, as are invalid packets nothing dropped.

use std::collections::BTreeMap;

use super::analysis::{
    FlowDrop, InboundDrop, InvalidClass, Offload, Port, Report, Severity, Verdict, VmLoss,
};

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

/// "a", "a and b", "a, b and c".
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// "ct_invalid from tunnel 3, no_action from vm 1".
fn drops_list(drops: &[InboundDrop]) -> String {
    drops
        .iter()
        .map(|k| format!("{} from {} {}", k.reason, k.from_role, k.packets))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One VM port's losses in words, and whether they are a loss signal: bad checksums in
/// its zone, or drops by ct_state(+inv) flows. Other invalid packets that no counted flow
/// dropped, and policy drops, are warnings, as for the node.
fn vm_finding(v: &VmLoss) -> (Severity, String) {
    let mut parts = Vec::new();
    if !v.invalid.is_empty() {
        let n: u64 = v.invalid.iter().map(|k| k.packets).sum();
        let why: Vec<String> = v
            .invalid
            .iter()
            .map(|k| format!("{} {}", k.reason, k.packets))
            .collect();
        parts.push(format!(
            "{} marked invalid in its conntrack zone ({})",
            count(n, "packet", "packets"),
            why.join(", ")
        ));
    }
    if !v.dropped.is_empty() {
        let n: u64 = v.dropped.iter().map(|k| k.packets).sum();
        parts.push(format!(
            "{} dropped on the way to it by datapath flows ({})",
            count(n, "packet", "packets"),
            drops_list(&v.dropped)
        ));
    }
    let loss =
        v.invalid_for("bad_checksum") > 0 || v.dropped.iter().any(|k| k.reason == "ct_invalid");
    let severity = if loss {
        Severity::Loss
    } else {
        Severity::Warning
    };
    (severity, format!("{}: {}", v.display(), parts.join("; ")))
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
    // The VM ports whose conntrack zones had them, when the source attributes invalid
    // packets to VM ports, and the ct-invalid drops from the tunnel counted on their way
    // to those ports.
    let victims: Vec<&VmLoss> = r
        .vm_losses
        .iter()
        .filter(|v| v.invalid_for("bad_checksum") > 0)
        .collect();
    let names: Vec<String> = victims.iter().map(|v| v.display()).collect();
    let to_victims: u64 = victims
        .iter()
        .map(|v| v.dropped_for("tunnel", "ct_invalid"))
        .sum();
    let from = inv_flow
        .filter(|f| f.in_port_role == "tunnel" && (victims.is_empty() || to_victims > 0))
        .map(|f| format!(" from {}", f.in_port))
        .unwrap_or_default();
    let checksum = r
        .settings
        .get("nf_conntrack_checksum")
        .map_or("?".to_owned(), |v| v.to_string());
    let mut s = format!(
        "{what}{from} failed conntrack's checksum check in {iv} and were marked invalid (nf_conntrack_checksum={checksum})"
    );
    let zones = if victims.len() == 1 { "zone" } else { "zones" };
    if !victims.is_empty() {
        match inv_flow.filter(|f| f.in_port_role == "tunnel" && to_victims > 0) {
            Some(flow) if to_victims <= total => s.push_str(&format!(
                "; the datapath flow {} dropped {to_victims} of them before they reached {}",
                flow.flow(),
                and_list(&names)
            )),
            Some(flow) => s.push_str(&format!(
                "; the datapath flow {} dropped {to_victims} invalid packets on their way to {}, these among them",
                flow.flow(),
                and_list(&names)
            )),
            None => s.push_str(&format!(
                "; they were in the conntrack {zones} of {}, where ct_state(+inv) flows drop them (no datapath flow counted them: a packet handled in the slow path is in no flow's counters)",
                and_list(&names)
            )),
        }
    } else if let Some(flow) = inv_flow {
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
        // Without per-VM series only one VM port can be named with certainty: the node's
        // counters do not say which VM a dropped packet was for.
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
    for v in &r.vm_losses {
        f.push(vm_finding(v));
    }
    if !r.unattributed_drops.is_empty() {
        let n: u64 = r.unattributed_drops.iter().map(|k| k.packets).sum();
        f.push((
            Severity::Info,
            format!(
                "{} dropped on the way to no single VM port ({})",
                count(n, "packet", "packets"),
                drops_list(&r.unattributed_drops)
            ),
        ));
    }
    if summary.is_none()
        && let Some(flow) = inv_flow
    {
        let why = match &r.conntrack {
            c if c.classifying => " (none of them for a bad checksum)".to_owned(),
            c => format!(" (why invalid is unknown: {})", c.classifier),
        };
        let mut heading: Vec<(u64, String)> = r
            .vm_losses
            .iter()
            .map(|v| {
                let n: u64 = v
                    .dropped
                    .iter()
                    .filter(|k| k.reason == "ct_invalid")
                    .map(|k| k.packets)
                    .sum();
                (n, v.display())
            })
            .filter(|(n, _)| *n > 0)
            .collect();
        heading.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        let heading = match heading.as_slice() {
            [] => String::new(),
            [(n, first), rest @ ..] => {
                let were = if *n == 1 { "was" } else { "were" };
                let mut to = vec![format!("{n} {were} on the way to {first}")];
                to.extend(rest.iter().map(|(n, d)| format!("{n} to {d}")));
                format!(" Of those counted, {}.", and_list(&to))
            }
        };
        summary = Some(format!(
            "Conntrack marked {} invalid and ct_state(+inv) datapath flows dropped them in {iv}, most by {}{why}.{heading}",
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
    if let Some(k) = &r.kernel_drops {
        f.extend(super::kernel_drops::findings(k));
        if summary.is_none()
            && let Some((s, x)) = super::kernel_drops::story(k, &iv)
        {
            summary = Some(s);
            fix = Some(x);
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
    check(
        r.kernel_drops.is_some(),
        "kernel drops that lose VM traffic",
    );
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
#[path = "verdict_tests.rs"]
mod tests;
