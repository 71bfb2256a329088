//! The kernel's own drops (the `drops` collector, on its drop monitor) on the tunnel
//! devices and VM ports: which reasons lose VM traffic, what each means, and the health of
//! the monitor that counted them.

use serde::Serialize;

use super::analysis::{Deltas, Severity, VmIdentity, gauges, identity};
use super::exposition::Sample;
use crate::metrics;

/// Rows of the table: the busiest (device, reason) pairs, those that lose VM traffic first.
const TOP: usize = 10;

/// Packets the kernel dropped on one tunnel device or VM port for one reason.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KernelDrop {
    pub device: String,
    pub role: String,
    /// The kernel's drop reason, or `function:<name>` on kernels without reasons.
    pub reason: String,
    pub packets: u64,
    /// `packets` over the interval (JSON only: the text gives the interval's packets).
    pub per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_id: Option<String>,
}

impl KernelDrop {
    pub fn display(&self) -> String {
        identity(&self.device, &self.instance_id, &self.port_id)
    }

    /// What the reason says about the VM's traffic, when it loses it.
    pub fn meaning(&self) -> Option<Meaning> {
        meaning(&self.reason)
    }
}

/// The drops collector's view of the interval.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KernelDrops {
    /// The busiest drops on tunnel devices and VM ports, those that lose VM traffic first.
    pub top: Vec<KernelDrop>,
    /// (device, reason) pairs left out of `top`.
    pub more: usize,
    /// Drop reports the kernel could not queue, and times the socket overflowed: each
    /// makes the counts a lower bound.
    pub reports_lost: u64,
    pub socket_overruns: u64,
    /// Whether the drop monitor was running at the second sample (None: not exported).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor_active: Option<bool>,
}

/// What a reason that loses VM traffic means: its severity, the cause in words, the fix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Meaning {
    pub severity: Severity,
    pub cause: &'static str,
    pub fix: &'static str,
}

const FULL_RING: Meaning = Meaning {
    severity: Severity::Loss,
    cause: "the guest is not reading its queue",
    fix: "Look inside the guest (CPU, virtio queues, ring size) and at the vhost threads on the host.",
};
const DEV_READY: Meaning = Meaning {
    severity: Severity::Loss,
    cause: "nobody holds the TAP (the VM is down, or being migrated)",
    fix: "Check the VM's state (virsh domstate, Nova): a stopped, crashed or paused VM, or a QEMU that is gone, leaves its TAP without a reader.",
};
const TAP_FILTER: Meaning = Meaning {
    severity: Severity::Loss,
    cause: "a filter on the TAP rejects them",
    fix: "A filter on the TAP (its MAC filter or an attached eBPF filter) rejects the frames: find who set it.",
};
const QDISC_DROP: Meaning = Meaning {
    severity: Severity::Loss,
    cause: "the device's queueing discipline dropped them",
    fix: "Look at tc -s qdisc show dev <device>: a full queue or a policer.",
};
const NETFILTER_DROP: Meaning = Meaning {
    severity: Severity::Loss,
    cause: "a host firewall rule dropped them",
    fix: "A host firewall rule drops VM traffic: find it with nft list ruleset or iptables-save -c (whose counter moves).",
};
const OVS_FLOW: Meaning = Meaning {
    severity: Severity::Warning,
    cause: "OVS drop flows dropped them (a ct_state=+inv rule, a security group or an ACL)",
    fix: "Look at the datapath flows above and ovs-dpctl dump-flows | grep drop: ct_state(+inv) drops are loss, others policy.",
};
const OVS_OTHER: Meaning = Meaning {
    severity: Severity::Loss,
    cause: "the OVS datapath dropped them (a meter, the recursion limit, conntrack or an action that failed)",
    fix: "The reason names the datapath's failure: ovs-appctl dpctl/dump-flows and ovs-vswitchd's log for the flows involved.",
};
const OVS_FUNCTION: Meaning = Meaning {
    severity: Severity::Warning,
    cause: "the OVS datapath dropped them (a drop flow or a failed upcall or action; this kernel gives no reason)",
    fix: "Look at the datapath flows above, ovs-dpctl dump-flows | grep drop, and ovs-appctl upcall/show.",
};
const TUN_XMIT: Meaning = Meaning {
    severity: Severity::Loss,
    cause: "the TAP could not deliver them (a full ring, no reader or a filter; this kernel gives no reason)",
    fix: "Look at the VM first (is it running, is the guest reading its queue), then at filters on the TAP.",
};

/// The reasons that lose traffic on its way to a VM, when seen on a tunnel device or VM
/// port; None for what a healthy node drops all day (NO_SOCKET, NOT_SPECIFIED, TCP_*, …).
pub fn meaning(reason: &str) -> Option<Meaning> {
    match reason {
        "FULL_RING" => Some(FULL_RING),
        "DEV_READY" => Some(DEV_READY),
        "TAP_FILTER" | "TAP_TXFILTER" => Some(TAP_FILTER),
        "QDISC_DROP" => Some(QDISC_DROP),
        "NETFILTER_DROP" => Some(NETFILTER_DROP),
        "OVS_DROP_EXPLICIT" | "OVS_DROP_LAST_ACTION" => Some(OVS_FLOW),
        r if r.starts_with("OVS_DROP_") => Some(OVS_OTHER),
        "function:tun_net_xmit" => Some(TUN_XMIT),
        r if r.starts_with("function:ovs_") || r == "function:do_execute_actions" => {
            Some(OVS_FUNCTION)
        }
        _ => None,
    }
}

/// The drops collector's series over the interval; None when the source has no drops
/// collector (neither its success nor its monitor's gauge).
pub(super) fn collect(
    d: &Deltas,
    after: &[Sample],
    ids: &VmIdentity,
    interval_seconds: f64,
) -> Option<KernelDrops> {
    let present = gauges(after, metrics::SCRAPE_COLLECTOR_SUCCESS)
        .any(|s| s.label("collector") == "drops")
        || gauges(after, metrics::KERNEL_DROP_MONITOR_ACTIVE)
            .next()
            .is_some();
    if !present {
        return None;
    }
    let mut all: Vec<KernelDrop> = d
        .of_lazy(
            metrics::KERNEL_DROP_PACKETS,
            metrics::KERNEL_DROP_MONITOR_ACTIVE,
        )
        .filter(|(s, inc)| *inc > 0 && matches!(s.label("role"), "tunnel" | "vm"))
        .map(|(s, inc)| {
            let device = s.label("device");
            let (instance_id, port_id) = ids.of(device);
            KernelDrop {
                device: device.to_owned(),
                role: s.label("role").to_owned(),
                reason: s.label("reason").to_owned(),
                packets: inc,
                per_second: if interval_seconds > 0.0 {
                    inc as f64 / interval_seconds
                } else {
                    0.0
                },
                instance_id,
                port_id,
            }
        })
        .collect();
    all.sort_by_key(|k| {
        (
            k.meaning().map_or(Severity::Info, |m| m.severity),
            std::cmp::Reverse(k.packets),
        )
    });
    let more = all.len().saturating_sub(TOP);
    all.truncate(TOP);
    let counter = |name: &'static str| {
        d.of_lazy(name, metrics::KERNEL_DROP_MONITOR_ACTIVE)
            .map(|(_, inc)| inc)
            .sum()
    };
    Some(KernelDrops {
        top: all,
        more,
        reports_lost: counter(metrics::KERNEL_DROP_REPORTS_LOST),
        socket_overruns: counter(metrics::KERNEL_DROP_SOCKET_OVERRUNS),
        monitor_active: gauges(after, metrics::KERNEL_DROP_MONITOR_ACTIVE)
            .next()
            .map(|s| s.value == 1.0),
    })
}

fn packets(n: u64) -> String {
    if n == 1 {
        "1 packet".to_owned()
    } else {
        format!("{n} packets")
    }
}

/// Where a drop was: "VM port tap0 (…)" or "tunnel device genev_sys_6081".
fn place(k: &KernelDrop) -> String {
    match k.role.as_str() {
        "vm" => format!("VM port {}", k.display()),
        _ => format!("tunnel device {}", k.device),
    }
}

/// One finding per drop that loses VM traffic, and the monitor's own troubles.
pub(super) fn findings(k: &KernelDrops) -> Vec<(Severity, String)> {
    let mut out: Vec<(Severity, String)> = k
        .top
        .iter()
        .filter_map(|d| {
            let m = d.meaning()?;
            Some((
                m.severity,
                format!(
                    "{} dropped by the kernel on {} for {}: {}",
                    packets(d.packets),
                    place(d),
                    d.reason,
                    m.cause
                ),
            ))
        })
        .collect();
    if k.monitor_active == Some(false) {
        out.push((
            Severity::Warning,
            "the kernel's drop monitor is not running: kernel drops went uncounted".to_owned(),
        ));
    }
    let mut lost = Vec::new();
    if k.reports_lost > 0 {
        lost.push(format!(
            "the kernel could not queue {} for the drop monitor",
            if k.reports_lost == 1 {
                "1 drop report".to_owned()
            } else {
                format!("{} drop reports", k.reports_lost)
            }
        ));
    }
    if k.socket_overruns > 0 {
        lost.push(format!(
            "the drop monitor's socket overflowed {}",
            if k.socket_overruns == 1 {
                "once".to_owned()
            } else {
                format!("{} times", k.socket_overruns)
            }
        ));
    }
    if !lost.is_empty() {
        out.push((
            Severity::Warning,
            format!(
                "{}: kernel drop counts are a lower bound",
                lost.join(" and ")
            ),
        ));
    }
    out
}

/// The verdict's sentence and fix for the busiest drop that loses VM traffic, if any.
pub(super) fn story(k: &KernelDrops, iv: &str) -> Option<(String, String)> {
    let mut loss = k
        .top
        .iter()
        .filter(|d| d.meaning().is_some_and(|m| m.severity == Severity::Loss));
    let first = loss.next()?;
    let m = first.meaning()?;
    let mut s = format!(
        "The kernel dropped {} on {} in {iv} for {}: {}.",
        packets(first.packets),
        place(first),
        first.reason,
        m.cause
    );
    let rest: Vec<String> = loss
        .take(3)
        .map(|d| format!("{} for {} on {}", d.packets, d.reason, d.device))
        .collect();
    if !rest.is_empty() {
        s.push_str(&format!(" Also: {}.", rest.join(", ")));
    }
    Some((s, m.fix.replace("<device>", &first.device)))
}
