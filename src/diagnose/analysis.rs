//! From two samples of the exporter's series to the evidence chain of the seed incident:
//! arrived on the tunnel, delivered to the VM, dropped by which datapath flow, conntrack
//! invalid and why, the settings and offloads behind it; then one verdict.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::exposition::Sample;
use super::kernel_drops::KernelDrops;
use crate::collectors::conntrack_invalid::CLASS_FAMILY;
use crate::metrics;

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
    pub receive_errors: u64,
    pub transmit_errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_id: Option<String>,
}

/// `tap0 (instance 0c1e…, port 519d…)` when the identity is known.
pub(super) fn identity(
    device: &str,
    instance_id: &Option<String>,
    port_id: &Option<String>,
) -> String {
    match (instance_id, port_id) {
        (Some(i), Some(p)) if !i.is_empty() || !p.is_empty() => {
            format!("{device} (instance {i}, port {p})")
        }
        _ => device.to_owned(),
    }
}

impl Port {
    /// `tap0 (instance 0c1e…, port 519d…)` when the identity is known.
    pub fn display(&self) -> String {
        identity(&self.device, &self.instance_id, &self.port_id)
    }
}

/// Packets dropped by datapath flows on their way to a VM port (or to no single one), by
/// the role of the port they came in by and the flow's reason.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InboundDrop {
    pub from_role: String,
    pub reason: String,
    pub packets: u64,
}

/// Packets conntrack marked invalid in a VM port's conntrack zone, by the kernel's reason.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ZoneInvalid {
    pub reason: String,
    pub packets: u64,
}

/// A VM port that lost packets on their way in during the interval.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VmLoss {
    pub device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_id: Option<String>,
    /// Dropped by datapath flows on their way to it (a lower bound: packets handled in
    /// the slow path are in no flow's counters), busiest first.
    pub dropped: Vec<InboundDrop>,
    /// Marked invalid in its conntrack zone, busiest first.
    pub invalid: Vec<ZoneInvalid>,
}

impl VmLoss {
    pub fn display(&self) -> String {
        identity(&self.device, &self.instance_id, &self.port_id)
    }

    pub fn invalid_for(&self, reason: &str) -> u64 {
        self.invalid
            .iter()
            .filter(|k| k.reason == reason)
            .map(|k| k.packets)
            .sum()
    }

    pub fn dropped_for(&self, from_role: &str, reason: &str) -> u64 {
        self.dropped
            .iter()
            .filter(|k| k.from_role == from_role && k.reason == reason)
            .map(|k| k.packets)
            .sum()
    }

    fn total(&self) -> u64 {
        self.dropped.iter().map(|k| k.packets).sum::<u64>()
            + self.invalid.iter().map(|k| k.packets).sum::<u64>()
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

/// The conntrack collector's statistics over the interval.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CtStats {
    pub invalid: u64,
    pub drop: u64,
    pub insert_failed: u64,
    pub early_drop: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Conntrack {
    /// None when the conntrack collector could not read them.
    pub stats: Option<CtStats>,
    /// Where the classification came from, or why there is none.
    pub classifier: String,
    /// Whether invalid packets were classified for the whole interval.
    pub classifying: bool,
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
    pub conntrack: Conntrack,
    pub settings: BTreeMap<String, u64>,
    pub offload: Vec<Offload>,
    /// Whether the source attributes drops and invalid packets to VM ports at all.
    pub vm_attribution: bool,
    /// VM ports that lost packets on their way in: those with bad checksums first, then by
    /// the packets they lost.
    pub vm_losses: Vec<VmLoss>,
    /// Datapath drops that resolve to no single VM port.
    pub unattributed_drops: Vec<InboundDrop>,
    /// The kernel's drops on tunnel devices and VM ports; None without the drops collector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_drops: Option<KernelDrops>,
    /// What the node runs (`packetpath_node_info`'s labels); None without the node collector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<BTreeMap<String, String>>,
    pub findings: Vec<Finding>,
    pub verdict: Verdict,
}

/// Counter increases between two samples, by series.
pub(super) struct Deltas<'a> {
    before: HashMap<(&'a str, &'a BTreeMap<String, String>), f64>,
    families: HashSet<&'a str>,
    after: &'a [Sample],
}

impl<'a> Deltas<'a> {
    fn new(before: &'a [Sample], after: &'a [Sample]) -> Self {
        Deltas {
            before: before
                .iter()
                .map(|s| ((s.name.as_str(), &s.labels), s.value))
                .collect(),
            families: before.iter().map(|s| s.name.as_str()).collect(),
            after,
        }
    }

    /// Every series of `name` in the second sample with its increase. A series new in the
    /// second sample counts from 0 (a device or class that appeared) when its family was
    /// there before; a family that was not (its collector failed in the first sample) has
    /// no increase to tell, and is left out rather than counted for its whole life. A
    /// decrease is a counter reset: the second value is the increase.
    pub(super) fn of(&self, name: &'a str) -> impl Iterator<Item = (&'a Sample, u64)> + '_ {
        self.of_lazy(name, name)
    }

    /// As [`Deltas::of`], for a family whose series appear with their first packet: it
    /// may be missing from the first sample although its collector ran, which `proxy`, a
    /// family the same collector always exports, tells.
    pub(super) fn of_lazy(
        &self,
        name: &'a str,
        proxy: &'a str,
    ) -> impl Iterator<Item = (&'a Sample, u64)> + '_ {
        let known = self.families.contains(name) || self.families.contains(proxy);
        self.after
            .iter()
            .filter(move |s| s.name == name)
            .filter_map(move |s| {
                let old = match self.before.get(&(s.name.as_str(), &s.labels)) {
                    Some(v) => *v,
                    None if known => 0.0,
                    None => return None,
                };
                let inc = if s.value >= old {
                    s.value - old
                } else {
                    s.value
                };
                Some((s, inc.max(0.0).round() as u64))
            })
    }

    fn sum(&self, name: &'a str) -> u64 {
        self.of(name).map(|(_, d)| d).sum()
    }
}

pub(super) fn gauges<'a>(after: &'a [Sample], name: &'a str) -> impl Iterator<Item = &'a Sample> {
    after.iter().filter(move |s| s.name == name)
}

/// VM ports' identities (instance, Neutron port) from the `ovsdb` collector, by device.
pub(super) struct VmIdentity(HashMap<String, (String, String)>);

impl VmIdentity {
    fn new(after: &[Sample]) -> Self {
        VmIdentity(
            gauges(after, metrics::VM_PORT_INFO)
                .map(|s| {
                    (
                        s.label("device").to_owned(),
                        (
                            s.label("instance_id").to_owned(),
                            s.label("port_id").to_owned(),
                        ),
                    )
                })
                .collect(),
        )
    }

    /// (instance_id, port_id) of a device, when the ovsdb collector knows it.
    pub(super) fn of(&self, device: &str) -> (Option<String>, Option<String>) {
        match self.0.get(device) {
            Some((i, p)) => (Some(i.clone()), Some(p.clone())),
            None => (None, None),
        }
    }
}

/// What the caller knows about the conntrack_invalid classifier that the samples do not
/// say: it ran here, an exporter's numbers were used, or why there are none.
pub struct Context {
    pub source: String,
    pub interval_seconds: f64,
    pub classifier: String,
    /// Invalid packets were classified for the whole interval (a count of 0 means none).
    pub classifying: bool,
}

fn ports(d: &Deltas, ids: &VmIdentity, role: &str) -> Vec<Port> {
    let mut by_device: BTreeMap<String, Port> = BTreeMap::new();
    for (s, inc) in d.of(metrics::INTERFACE_RECEIVE_PACKETS) {
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
                receive_errors: 0,
                transmit_errors: 0,
                instance_id: None,
                port_id: None,
            },
        );
    }
    for (name, field) in [
        (metrics::INTERFACE_TRANSMIT_PACKETS, 0),
        (metrics::INTERFACE_RECEIVE_DROPPED, 1),
        (metrics::INTERFACE_TRANSMIT_DROPPED, 2),
        (metrics::INTERFACE_RECEIVE_ERRORS, 3),
        (metrics::INTERFACE_TRANSMIT_ERRORS, 4),
    ] {
        for (s, inc) in d.of(name) {
            if let Some(p) = by_device.get_mut(s.label("device")) {
                match field {
                    0 => p.transmitted += inc,
                    1 => p.receive_dropped += inc,
                    2 => p.transmit_dropped += inc,
                    3 => p.receive_errors += inc,
                    _ => p.transmit_errors += inc,
                }
            }
        }
    }
    for p in by_device.values_mut() {
        (p.instance_id, p.port_id) = ids.of(&p.device);
    }
    by_device.into_values().collect()
}

/// The VM ports that lost packets on their way in, and the drops no single port accounts
/// for, from the per-VM series of `ovs_flows` and `conntrack_invalid`.
fn vm_losses(d: &Deltas, ids: &VmIdentity) -> (Vec<VmLoss>, Vec<InboundDrop>) {
    let mut by_device: BTreeMap<String, VmLoss> = BTreeMap::new();
    for (s, inc) in d.of_lazy(
        metrics::VM_PORT_INBOUND_DROP_PACKETS,
        metrics::OVS_DROP_FLOW_PACKETS,
    ) {
        if inc == 0 {
            continue;
        }
        vm(&mut by_device, s.label("device"))
            .dropped
            .push(InboundDrop {
                from_role: s.label("from_role").to_owned(),
                reason: s.label("reason").to_owned(),
                packets: inc,
            });
    }
    for (s, inc) in d.of_lazy(metrics::VM_PORT_CONNTRACK_INVALID_PACKETS, CLASS_FAMILY) {
        if inc == 0 {
            continue;
        }
        vm(&mut by_device, s.label("device"))
            .invalid
            .push(ZoneInvalid {
                reason: s.label("reason").to_owned(),
                packets: inc,
            });
    }
    for v in by_device.values_mut() {
        (v.instance_id, v.port_id) = ids.of(&v.device);
    }
    let mut vms: Vec<VmLoss> = by_device.into_values().collect();
    for v in &mut vms {
        v.dropped.sort_by_key(|k| std::cmp::Reverse(k.packets));
        v.invalid.sort_by_key(|k| std::cmp::Reverse(k.packets));
    }
    // The seed incident's victims first, then by what they lost.
    vms.sort_by_key(|v| {
        (
            std::cmp::Reverse(v.invalid_for("bad_checksum")),
            std::cmp::Reverse(v.total()),
        )
    });
    let mut unattributed: Vec<InboundDrop> = d
        .of_lazy(
            metrics::VM_PORT_INBOUND_DROP_UNATTRIBUTED_PACKETS,
            metrics::OVS_DROP_FLOW_PACKETS,
        )
        .filter(|(_, inc)| *inc > 0)
        .map(|(s, inc)| InboundDrop {
            from_role: s.label("from_role").to_owned(),
            reason: s.label("reason").to_owned(),
            packets: inc,
        })
        .collect();
    unattributed.sort_by_key(|k| std::cmp::Reverse(k.packets));
    (vms, unattributed)
}

fn vm<'m>(m: &'m mut BTreeMap<String, VmLoss>, device: &str) -> &'m mut VmLoss {
    m.entry(device.to_owned()).or_insert_with(|| VmLoss {
        device: device.to_owned(),
        instance_id: None,
        port_id: None,
        dropped: Vec::new(),
        invalid: Vec::new(),
    })
}

fn sources(after: &[Sample]) -> Vec<SourceState> {
    let netlink = gauges(after, metrics::CONNTRACK_SOURCE_INFO)
        .find(|s| s.value == 1.0)
        .map(|s| s.label("source").to_owned());
    gauges(after, metrics::SCRAPE_COLLECTOR_SUCCESS)
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

pub fn analyse(before: &[Sample], after: &[Sample], ctx: Context) -> Report {
    let d = Deltas::new(before, after);
    let ids = VmIdentity::new(after);
    let tunnels = ports(&d, &ids, "tunnel");
    let vm_ports = ports(&d, &ids, "vm");
    let mut drops: Vec<FlowDrop> = d
        .of(metrics::OVS_DROP_FLOW_PACKETS)
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

    let mut classified: Vec<InvalidClass> = d
        .of(CLASS_FAMILY)
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
    let conntrack = Conntrack {
        stats: ok("conntrack").then(|| CtStats {
            invalid: d.sum(metrics::CONNTRACK_INVALID),
            drop: d.sum(metrics::CONNTRACK_DROP),
            insert_failed: d.sum(metrics::CONNTRACK_INSERT_FAILED),
            early_drop: d.sum(metrics::CONNTRACK_EARLY_DROP),
        }),
        classifier: ctx.classifier.clone(),
        classifying: ctx.classifying,
        classified,
    };
    let settings: BTreeMap<String, u64> = gauges(after, metrics::CONNTRACK_SYSCTL)
        .map(|s| (s.label("name").to_owned(), s.value as u64))
        .collect();
    let mut offload: BTreeMap<(String, String), Offload> = BTreeMap::new();
    for s in gauges(after, metrics::INTERFACE_OFFLOAD_ACTIVE) {
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
        .of(metrics::OVS_DATAPATH_LOOKUPS)
        .filter(|(s, _)| s.label("result") == "lost")
        .map(|(_, i)| i)
        .sum::<u64>();

    let vm_attribution = after.iter().any(|s| {
        s.name == metrics::VM_PORT_INBOUND_DROP_PACKETS
            || s.name == metrics::VM_PORT_CONNTRACK_INVALID_PACKETS
    });
    let (vm_losses, unattributed_drops) = vm_losses(&d, &ids);
    let kernel_drops = super::kernel_drops::collect(&d, after, &ids, ctx.interval_seconds);

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
        vm_attribution,
        vm_losses,
        unattributed_drops,
        kernel_drops,
        node: after
            .iter()
            .find(|s| s.name == metrics::NODE_INFO)
            .map(|s| s.labels.clone()),
        findings: Vec::new(),
        verdict: Verdict {
            loss: false,
            summary: String::new(),
            fix: None,
        },
    };
    super::verdict::judge(&mut report, lost);
    report
}
