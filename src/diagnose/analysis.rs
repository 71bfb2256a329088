//! From two samples of the exporter's series to the evidence chain of the seed incident:
//! arrived on the tunnel, delivered to the VM, dropped by which datapath flow, conntrack
//! invalid and why, the settings and offloads behind it; then one verdict.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::exposition::Sample;

/// A collector's state in the second sample.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SourceState {
    pub collector: String,
    pub ok: bool,
    /// Why not, or how (conntrack's source), in one sentence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Port {
    pub device: String,
    pub role: String,
    /// Packets the device received (for a tunnel: arrived from other hypervisors).
    pub received: u64,
    /// Packets it transmitted (for a VM port: delivered to the VM).
    pub transmitted: u64,
    pub receive_dropped: u64,
    pub transmit_dropped: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_id: Option<String>,
}

impl Port {
    /// `tap0 (instance 0c1e…, port 519d…)` when the identity is known.
    pub fn display(&self) -> String {
        match (&self.instance_id, &self.port_id) {
            (Some(i), Some(p)) if !i.is_empty() || !p.is_empty() => {
                format!("{} (instance {i}, port {p})", self.device)
            }
            _ => self.device.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FlowDrop {
    pub datapath: String,
    pub in_port: String,
    pub in_port_role: String,
    pub reason: String,
    pub packets: u64,
}

impl FlowDrop {
    /// The datapath flow, as an operator reads it in `ovs-dpctl dump-flows`.
    pub fn flow(&self) -> String {
        let what = match self.reason.as_str() {
            "ct_invalid" => "ct_state(+inv) → drop",
            "explicit" => "→ drop (an explicit drop action)",
            "no_action" => "→ (no action: dropped)",
            "controller" => "→ userspace(controller) then drop (a logged drop)",
            _ => "→ drop",
        };
        format!("{}: in_port({}) {what}", self.datapath, self.in_port)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InvalidClass {
    pub family: String,
    pub protocol: String,
    pub reason: String,
    pub size_class: String,
    pub tcp_flags: String,
    pub packets: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Conntrack {
    pub invalid: u64,
    pub drop: u64,
    pub insert_failed: u64,
    pub early_drop: u64,
    /// Where the classification came from, or why there is none.
    pub classifier: String,
    pub classified: Vec<InvalidClass>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Offload {
    pub device: String,
    pub role: String,
    /// feature -> active
    pub features: BTreeMap<String, bool>,
}

impl Offload {
    pub fn rx_checksum(&self) -> Option<bool> {
        self.features.get("rx-checksum").copied()
    }

    /// Any transmit checksum offload (virtual devices use ip-generic, NICs ipv4/ipv6).
    pub fn tx_checksum(&self) -> Option<bool> {
        let tx: Vec<bool> = self
            .features
            .iter()
            .filter(|(f, _)| f.starts_with("tx-checksum-ip"))
            .map(|(_, v)| *v)
            .collect();
        (!tx.is_empty()).then(|| tx.iter().any(|v| *v))
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Loss,
    Warning,
    Info,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// A loss signal was found (exit status 1).
    pub loss: bool,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub source: String,
    pub interval_seconds: f64,
    pub sources: Vec<SourceState>,
    pub tunnels: Vec<Port>,
    pub vm_ports: Vec<Port>,
    pub drops: Vec<FlowDrop>,
    pub conntrack: Option<Conntrack>,
    pub settings: BTreeMap<String, u64>,
    pub offload: Vec<Offload>,
    pub findings: Vec<Finding>,
    pub verdict: Verdict,
}

/// Counter increases between two samples, by series.
struct Deltas<'a> {
    before: HashMap<(&'a str, &'a BTreeMap<String, String>), f64>,
    after: &'a [Sample],
}

impl<'a> Deltas<'a> {
    fn new(before: &'a [Sample], after: &'a [Sample]) -> Self {
        Deltas {
            before: before
                .iter()
                .map(|s| ((s.name.as_str(), &s.labels), s.value))
                .collect(),
            after,
        }
    }

    /// Every series of `name` in the second sample with its increase. A series new in the
    /// second sample counts from 0 (a device or class that appeared); a decrease is a
    /// counter reset, so the second value is the increase.
    fn of(&self, name: &'a str) -> impl Iterator<Item = (&'a Sample, u64)> + '_ {
        self.after
            .iter()
            .filter(move |s| s.name == name)
            .map(move |s| {
                let old = self
                    .before
                    .get(&(s.name.as_str(), &s.labels))
                    .copied()
                    .unwrap_or(0.0);
                let inc = if s.value >= old {
                    s.value - old
                } else {
                    s.value
                };
                (s, inc.max(0.0).round() as u64)
            })
    }

    fn sum(&self, name: &'a str) -> u64 {
        self.of(name).map(|(_, d)| d).sum()
    }
}

fn gauges<'a>(after: &'a [Sample], name: &'a str) -> impl Iterator<Item = &'a Sample> {
    after.iter().filter(move |s| s.name == name)
}

/// What the caller knows about the conntrack_invalid classifier that the samples do not
/// say: it ran here, an exporter's numbers were used, or why there are none.
pub struct Context {
    pub source: String,
    pub interval_seconds: f64,
    pub classifier: String,
}

fn ports(d: &Deltas, after: &[Sample], role: &str) -> Vec<Port> {
    let mut by_device: BTreeMap<String, Port> = BTreeMap::new();
    for (s, inc) in d.of("packetpath_interface_receive_packets_total") {
        if s.label("role") != role {
            continue;
        }
        by_device.insert(
            s.label("device").to_owned(),
            Port {
                device: s.label("device").to_owned(),
                role: role.to_owned(),
                received: inc,
                transmitted: 0,
                receive_dropped: 0,
                transmit_dropped: 0,
                errors: 0,
                instance_id: None,
                port_id: None,
            },
        );
    }
    for (name, field) in [
        ("packetpath_interface_transmit_packets_total", 0),
        ("packetpath_interface_receive_dropped_total", 1),
        ("packetpath_interface_transmit_dropped_total", 2),
        ("packetpath_interface_receive_errors_total", 3),
        ("packetpath_interface_transmit_errors_total", 3),
    ] {
        for (s, inc) in d.of(name) {
            if let Some(p) = by_device.get_mut(s.label("device")) {
                match field {
                    0 => p.transmitted += inc,
                    1 => p.receive_dropped += inc,
                    2 => p.transmit_dropped += inc,
                    _ => p.errors += inc,
                }
            }
        }
    }
    for s in gauges(after, "packetpath_vm_port_info") {
        if let Some(p) = by_device.get_mut(s.label("device")) {
            p.instance_id = Some(s.label("instance_id").to_owned());
            p.port_id = Some(s.label("port_id").to_owned());
        }
    }
    by_device.into_values().collect()
}

fn sources(after: &[Sample]) -> Vec<SourceState> {
    let netlink = gauges(after, "packetpath_conntrack_source_info")
        .find(|s| s.value == 1.0)
        .map(|s| s.label("source").to_owned());
    gauges(after, "packetpath_scrape_collector_success")
        .map(|s| SourceState {
            collector: s.label("collector").to_owned(),
            ok: s.value == 1.0,
            note: match s.label("collector") {
                "conntrack" => netlink.as_ref().map(|n| format!("source {n}")),
                _ => None,
            },
        })
        .collect()
}

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

pub fn analyse(before: &[Sample], after: &[Sample], ctx: Context) -> Report {
    let d = Deltas::new(before, after);
    let tunnels = ports(&d, after, "tunnel");
    let vm_ports = ports(&d, after, "vm");
    let mut drops: Vec<FlowDrop> = d
        .of("packetpath_ovs_drop_flow_packets_total")
        .filter(|(_, inc)| *inc > 0)
        .map(|(s, inc)| FlowDrop {
            datapath: s.label("datapath").to_owned(),
            in_port: s.label("in_port").to_owned(),
            in_port_role: s.label("in_port_role").to_owned(),
            reason: s.label("reason").to_owned(),
            packets: inc,
        })
        .collect();
    drops.sort_by_key(|x| std::cmp::Reverse(x.packets));
    let sources = sources(after);
    let ok = |c: &str| sources.iter().any(|s| s.collector == c && s.ok);

    let conntrack = ok("conntrack").then(|| {
        let mut classified: Vec<InvalidClass> = d
            .of("packetpath_conntrack_invalid_packets_total")
            .filter(|(_, inc)| *inc > 0)
            .map(|(s, inc)| InvalidClass {
                family: s.label("family").to_owned(),
                protocol: s.label("protocol").to_owned(),
                reason: s.label("reason").to_owned(),
                size_class: s.label("size_class").to_owned(),
                tcp_flags: s.label("tcp_flags").to_owned(),
                packets: inc,
            })
            .collect();
        classified.sort_by_key(|k| std::cmp::Reverse(k.packets));
        Conntrack {
            invalid: d.sum("packetpath_conntrack_invalid_total"),
            drop: d.sum("packetpath_conntrack_drop_total"),
            insert_failed: d.sum("packetpath_conntrack_insert_failed_total"),
            early_drop: d.sum("packetpath_conntrack_early_drop_total"),
            classifier: ctx.classifier.clone(),
            classified,
        }
    });
    let settings: BTreeMap<String, u64> = gauges(after, "packetpath_conntrack_sysctl")
        .map(|s| (s.label("name").to_owned(), s.value as u64))
        .collect();
    let mut offload: BTreeMap<(String, String), Offload> = BTreeMap::new();
    for s in gauges(after, "packetpath_interface_offload_active") {
        offload
            .entry((s.label("device").to_owned(), s.label("role").to_owned()))
            .or_insert_with(|| Offload {
                device: s.label("device").to_owned(),
                role: s.label("role").to_owned(),
                features: BTreeMap::new(),
            })
            .features
            .insert(s.label("feature").to_owned(), s.value == 1.0);
    }
    let offload: Vec<Offload> = offload.into_values().collect();
    let lost = d
        .of("packetpath_ovs_datapath_lookups_total")
        .filter(|(s, _)| s.label("result") == "lost")
        .map(|(_, i)| i)
        .sum::<u64>();

    let mut report = Report {
        source: ctx.source,
        interval_seconds: ctx.interval_seconds,
        sources,
        tunnels,
        vm_ports,
        drops,
        conntrack,
        settings,
        offload,
        findings: Vec::new(),
        verdict: Verdict {
            loss: false,
            summary: String::new(),
            fix: None,
        },
    };
    judge(&mut report, lost);
    report
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

fn judge(r: &mut Report, lost: u64) {
    let iv = secs(r.interval_seconds);
    let mut f = Vec::new();
    let mut loss = |text: String| f.push((Severity::Loss, text));
    let ct = r.conntrack.clone();
    let bad: Vec<&InvalidClass> = ct
        .as_ref()
        .map(|c| {
            c.classified
                .iter()
                .filter(|k| k.reason == "bad_checksum")
                .collect()
        })
        .unwrap_or_default();
    let bad_total: u64 = bad.iter().map(|k| k.packets).sum();
    let inv_drops: Vec<&FlowDrop> = r
        .drops
        .iter()
        .filter(|x| x.reason == "ct_invalid")
        .collect();
    let inv_from_tunnel: u64 = inv_drops
        .iter()
        .filter(|x| x.in_port_role == "tunnel")
        .map(|x| x.packets)
        .sum();
    let checksum_on = r.settings.get("nf_conntrack_checksum").copied();
    let mismatch = offload_mismatch(&r.offload);
    let starved: Vec<&Port> = r
        .vm_ports
        .iter()
        .filter(|p| p.transmit_dropped > 0)
        .collect();

    let mut summary = None;
    let mut fix = None;
    if bad_total > 0 {
        let short: u64 = bad
            .iter()
            .filter(|k| k.size_class == "lt60")
            .map(|k| k.packets)
            .sum();
        let mut flags: BTreeMap<&str, u64> = BTreeMap::new();
        for k in &bad {
            *flags.entry(k.tcp_flags.as_str()).or_default() += k.packets;
        }
        let top_flags = flags
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(f, _)| match *f {
                "fin" => "FIN/ACK",
                "rst" => "RST",
                "syn" => "SYN",
                "synack" => "SYN/ACK",
                "ack" => "ACK",
                _ => "other",
            })
            .unwrap_or("other");
        let proto = bad
            .first()
            .map_or("tcp", |k| k.protocol.as_str())
            .to_uppercase();
        let what = if short * 2 >= bad_total {
            format!(
                "{} ({} shorter than 60 bytes, mostly {proto} {top_flags})",
                count(bad_total, "packet", "packets"),
                short
            )
        } else {
            format!(
                "{} (mostly {proto} {top_flags})",
                count(bad_total, "packet", "packets")
            )
        };
        let tunnel = r
            .tunnels
            .iter()
            .max_by_key(|t| t.received)
            .map(|t| t.device.clone());
        let from = tunnel
            .as_deref()
            .filter(|_| inv_from_tunnel > 0)
            .map(|t| format!(" from {t}"))
            .unwrap_or_default();
        let mut s = format!(
            "{what}{from} failed conntrack's checksum check in {iv} and were marked invalid (nf_conntrack_checksum={})",
            checksum_on.map_or("?".into(), |v| v.to_string())
        );
        if let Some(flow) = inv_drops.iter().max_by_key(|x| x.packets) {
            s.push_str(&format!(
                "; the datapath flow {} dropped {} of them",
                flow.flow(),
                inv_from_tunnel.max(flow.packets)
            ));
            if let Some(vm) = r.vm_ports.iter().max_by_key(|p| p.transmitted) {
                s.push_str(&format!(" before they reached {}", vm.display()));
            }
        }
        s.push('.');
        summary = Some(s);
        let mut x = "Set net.netfilter.nf_conntrack_checksum=0 (sysctl -w, and persist it in /etc/sysctl.d): conntrack then stops validating checksums, these packets are tracked instead of invalid and no ct_state(+inv) drop matches them; the VM's own TCP stack still checks every checksum.".to_owned();
        if !mismatch.is_empty() {
            x.push_str(&format!(
                " Offload differs on the path ({}): the device that hands these packets on with a partial checksum is where to look; 'ethtool -K <device> tx off' makes the kernel finish the checksum in software.",
                mismatch.join("; ")
            ));
        } else if compared(&r.offload) {
            x.push_str(" Checksum offload is the same on the tunnel and the uplinks, so the fault is in the kernel's handling of these packets (short frames), not a device setting.");
        }
        fix = Some(x);
        loss(format!(
            "bad checksum: {}",
            count(bad_total, "packet", "packets")
        ));
    }
    for x in &r.drops {
        loss(format!(
            "{} dropped by datapath flow {}",
            count(x.packets, "packet", "packets"),
            x.flow()
        ));
    }
    if summary.is_none() && inv_from_tunnel > 0 {
        let why = match &ct {
            Some(c) if c.classified.is_empty() => format!(
                " (conntrack counted {} invalid; {})",
                c.invalid, c.classifier
            ),
            _ => String::new(),
        };
        summary = Some(format!(
            "{} from the tunnel were marked invalid by conntrack and dropped by a ct_state(+inv) datapath flow in {iv}{why}.",
            count(inv_from_tunnel, "packet", "packets")
        ));
        fix = Some("Run diagnose with CAP_NET_ADMIN (or enable the conntrack_invalid collector) to see why conntrack marks them invalid; a bad checksum is fixed with nf_conntrack_checksum=0.".into());
    }
    if summary.is_none()
        && let Some(x) = r.drops.first()
    {
        summary = Some(format!(
            "Datapath flows dropped {} in {iv}, most by {} ({}).",
            count(r.drops.iter().map(|x| x.packets).sum(), "packet", "packets"),
            x.flow(),
            x.reason
        ));
        fix = Some("Find the OpenFlow rule behind it: ovs-appctl dpctl/dump-flows, then ovs-appctl ofproto/trace for the in_port; explicit drops usually come from security groups or ACLs.".into());
    }
    if lost > 0 {
        loss(format!(
            "{} lost between the datapath and ovs-vswitchd (upcalls failed)",
            count(lost, "packet", "packets")
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
        loss(format!(
            "{} could not be delivered to {} (the VM did not drain its queue)",
            count(p.transmit_dropped, "packet", "packets"),
            p.display()
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
            "Look inside the guest (CPU, virtio queues) and at vhost threads on the host.".into(),
        );
    }
    if let Some(c) = &ct {
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
                loss(format!("{n} {what}"));
                if summary.is_none() {
                    summary = Some(format!(
                        "Conntrack is dropping traffic: {n} {what} in {iv}."
                    ));
                    fix = Some("Raise net.netfilter.nf_conntrack_max or find the connection flood (conntrack -L | sort).".into());
                }
            }
        }
        if c.invalid > 0 && bad_total == 0 && inv_from_tunnel == 0 {
            let classes: Vec<String> = c
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
        if t.receive_dropped + t.errors > 0 {
            f.push((
                Severity::Warning,
                format!(
                    "{} dropped {} and counted {} on receive",
                    t.device,
                    count(t.receive_dropped, "packet", "packets"),
                    count(t.errors, "error", "errors")
                ),
            ));
        }
    }
    for m in &mismatch {
        f.push((Severity::Info, m.clone()));
    }
    let any_loss = f.iter().any(|(s, _)| *s == Severity::Loss);
    r.findings = f
        .into_iter()
        .map(|(severity, text)| Finding { severity, text })
        .collect();
    r.verdict = Verdict {
        loss: any_loss,
        summary: summary.unwrap_or_else(|| {
            if any_loss {
                "Packets were lost; see the findings.".into()
            } else {
                let arrived: u64 = r.tunnels.iter().map(|t| t.received).sum();
                let delivered: u64 = r.vm_ports.iter().map(|p| p.transmitted).sum();
                let tunnels = match r.tunnels.len() {
                    0 => "no tunnel device here".to_owned(),
                    n => format!(
                        "{} arrived on {}",
                        count(arrived, "packet", "packets"),
                        count(n as u64, "tunnel device", "tunnel devices")
                    ),
                };
                let vms = match r.vm_ports.len() {
                    0 => "no VM port".to_owned(),
                    n => format!(
                        "{} delivered to {}",
                        count(delivered, "packet", "packets"),
                        count(n as u64, "VM port", "VM ports")
                    ),
                };
                format!(
                    "No loss signal in {iv}: {tunnels}, {vms}; no datapath drops, no conntrack drops, no bad checksums."
                )
            }
        }),
        fix,
    };
}
