//! Drop accounting on a busy node, against the kernel's and OpenFlow's own counters, on
//! three kernel generations: tests/vm/run.sh boots Debian bullseye (Linux 5.10, OVS 2.15),
//! bookworm (6.1, OVS 3.1) and trixie (6.12, OVS 3.5) in turn and runs the churn scenario
//! (tests/vm/guest/scenario-churn.sh) with OVS's defaults: flows idle out after 10 s and
//! the revalidator runs. Every asserted number is a relation between the exporter's series
//! and what the guest's kernel tools reported:
//!
//! - `modify`: a forwarding datapath flow rewritten in place into a drop (same UFID, its
//!   counters kept) credits exactly the packets dropped after the change;
//! - `recreate`: a ct_state=+inv drop flow evicted and re-created under the same UFID with
//!   no scrape in between counts both lives;
//! - `logged`: a flow that only sends packets to the controller (OVN's logged drop ACLs)
//!   counts as a drop, reason="controller";
//! - `churn`: ~20,000 short-lived exact-match flows, half of them drops, scraped every
//!   ~15 s: the drop totals equal the datapath's own hit count during drop-only windows;
//! - `reload`: nf_conntrack and openvswitch unloaded and reloaded: no counter leaps, the
//!   collectors recover and count the new flows.
//!
//! `PP_CHURN_RELEASES` (comma-separated) picks the releases; default all three.
//! `PP_CHURN_RESULTS=PATH` checks an existing results.txt instead of booting.

mod common;
#[path = "vm/results.rs"]
mod vm_results;

use std::path::Path;

use common::Metrics;
use vm_results::{Results, conntrack_sum, dp_flows, key_values};

const TUNNEL: (&str, &str) = ("in_port", "genev_sys_6081");

fn run_bed(release: &str) -> Option<Results> {
    common::boot_release("churn", release, 900).map(|p| Results::read(&p))
}

fn metrics(r: &Results, block: &str) -> Metrics {
    common::checked_metrics(r.get(block))
}

/// Drops from the tunnel port with one of `reasons`.
fn drops(m: &Metrics, reasons: &[&str]) -> f64 {
    m.select("packetpath_ovs_drop_flow_packets_total", &[TUNNEL])
        .filter(|(l, _)| reasons.contains(&l["reason"].as_str()))
        .map(|(_, v)| v)
        .sum()
}

/// How much the drops of `reasons` rose over a phase.
fn rise(r: &Results, phase: &str, reasons: &[&str]) -> f64 {
    let before = metrics(r, &format!("{phase}/metrics-before"));
    let after = metrics(r, &format!("{phase}/metrics-after"));
    drops(&after, reasons) - drops(&before, reasons)
}

/// The drops split by destination add up to the drop-flow totals, for every role and
/// reason: the per-VM series and the unattributed ones are credited in the same step.
fn split_adds_up(m: &Metrics, what: &str) {
    let sum = |name: &str, role_label: &str, role: &str, reason: &str| -> f64 {
        m.select(name, &[(role_label, role), ("reason", reason)])
            .map(|(_, v)| v)
            .sum()
    };
    for role in ["tunnel", "vm", "ovs", "other"] {
        for reason in ["ct_invalid", "controller", "explicit", "no_action"] {
            let split = sum(
                "packetpath_vm_port_inbound_drop_packets_total",
                "from_role",
                role,
                reason,
            ) + sum(
                "packetpath_vm_port_inbound_drop_unattributed_packets_total",
                "from_role",
                role,
                reason,
            );
            let total = sum(
                "packetpath_ovs_drop_flow_packets_total",
                "in_port_role",
                role,
                reason,
            );
            assert_eq!(split, total, "{what}: {role} {reason}");
        }
    }
}

/// How much tap0's ct_invalid drops from the tunnel rose over a phase.
fn vm_rise(r: &Results, phase: &str) -> f64 {
    let v = |block: &str| {
        metrics(r, &format!("{phase}/{block}")).value(
            "packetpath_vm_port_inbound_drop_packets_total",
            &[
                ("device", "tap0"),
                ("from_role", "tunnel"),
                ("reason", "ct_invalid"),
            ],
        )
    };
    v("metrics-after") - v("metrics-before")
}

/// `no_action`, or `explicit` where the kernel has the explicit drop action (6.4+) and
/// OVS uses it.
const PLAIN_DROP: &[&str] = &["no_action", "explicit"];

fn all_collectors(m: &Metrics, want: f64, what: &str) {
    for c in ["interfaces", "conntrack", "ovs", "ovs_flows"] {
        assert_eq!(
            m.value("packetpath_scrape_collector_success", &[("collector", c)]),
            want,
            "{what}: {c}"
        );
    }
}

/// Exactness needs every notification: the listener ran and nothing overflowed.
fn heard_everything(m: &Metrics, what: &str) {
    assert_eq!(
        m.value("packetpath_ovs_flow_monitor_active", &[]),
        1.0,
        "{what}"
    );
    assert_eq!(
        m.value("packetpath_ovs_flow_notification_overruns_total", &[]),
        0.0,
        "{what}"
    );
    assert_eq!(
        m.value("packetpath_ovs_flow_notification_errors_total", &[]),
        0.0,
        "{what}"
    );
}

fn check(release: &str, r: &Results) {
    // modify: forwarded, then rewritten in place into a drop; only what came after counts.
    let plan = key_values(r.get("modify/plan"));
    let after = metrics(r, "modify/metrics-after");
    all_collectors(&after, 1.0, release);
    heard_everything(&after, release);
    assert_eq!(
        plan["packets_after"] - plan["packets_when_modified"],
        plan["dropped_after_change"],
        "{release}: the datapath flow's own counters"
    );
    assert_eq!(
        rise(r, "modify", PLAIN_DROP),
        plan["dropped_after_change"] as f64,
        "{release}: a forwarding flow changed into a drop"
    );
    let ufid = |block: &str| -> Vec<String> {
        r.get(block)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("ufid:")?.split(',').next())
            .map(str::to_owned)
            .collect()
    };
    let (fwd, modified) = (
        ufid("modify/dump-flows-forwarding"),
        ufid("modify/dump-flows-modified"),
    );
    assert!(
        fwd.iter().any(|u| modified.contains(u)),
        "{release}: the same UFID before and after the change: {fwd:?} {modified:?}"
    );

    // recreate: both lives of the +inv drop flow count.
    let plan_text = r.get("recreate/plan");
    let plan = key_values(plan_text);
    assert!(
        plan_text.lines().any(|l| l == "same_ufid yes"),
        "{release}: re-created under the same UFID: {plan_text}"
    );
    assert_eq!(
        rise(r, "recreate", &["ct_invalid"]),
        (plan["a_datapath_packets"] + plan["b_datapath_packets"]) as f64,
        "{release}: a flow evicted and re-created between two scrapes"
    );
    // Both lives go to the VM: the flow recirculates from ct() in tap0's zone.
    assert_eq!(
        vm_rise(r, "recreate"),
        (plan["a_datapath_packets"] + plan["b_datapath_packets"]) as f64,
        "{release}: drops of the re-created flow attributed to tap0"
    );

    // logged: sent to the controller and nowhere else is a drop.
    let plan = key_values(r.get("logged/plan"));
    assert!(plan["datapath_packets"] > 0, "{release}");
    assert_eq!(
        rise(r, "logged", &["controller"]),
        plan["datapath_packets"] as f64,
        "{release}: a logged drop"
    );

    // churn: thousands of short-lived flows, against the datapath's own hit counter.
    let truth = key_values(r.get("churn/truth"));
    let after = metrics(r, "churn/metrics-after");
    heard_everything(&after, release);
    let counted = rise(r, "churn", PLAIN_DROP);
    assert!(truth["flows_created"] >= 4_000, "{release}: {truth:?}");
    assert_eq!(
        counted, truth["drop_window_hits"] as f64,
        "{release}: churn drops against the kernel's hits in drop-only windows"
    );
    assert!(counted <= truth["drop_packets_sent"] as f64, "{release}");
    // No forwarding packet became a drop.
    assert!(truth["forward_window_hits"] > 0, "{release}");

    for phase in ["modify", "recreate", "logged", "churn", "reload"] {
        for block in ["metrics-before", "metrics-after"] {
            split_adds_up(
                &metrics(r, &format!("{phase}/{block}")),
                &format!("{release} {phase}/{block}"),
            );
        }
    }

    // reload: modules out and back; nothing leaps, everything recovers.
    let unloaded = metrics(r, "reload/metrics-unloaded");
    for c in ["ovs", "ovs_flows"] {
        assert_eq!(
            unloaded.value("packetpath_scrape_collector_success", &[("collector", c)]),
            0.0,
            "{release}: {c} with openvswitch unloaded"
        );
    }
    // The kernel allowed to load modules again: a scrape still loads none.
    let autoload = metrics(r, "reload/metrics-autoload");
    for c in ["conntrack", "ovs", "ovs_flows"] {
        assert_eq!(
            autoload.value("packetpath_scrape_collector_success", &[("collector", c)]),
            0.0,
            "{release}: {c} with its module unloaded and modprobe allowed"
        );
    }
    assert_eq!(
        r.get("reload/modules-autoload"),
        r.get("reload/modules-after-scrape"),
        "{release}: a scrape loaded a module"
    );
    let after = metrics(r, "reload/metrics-after");
    all_collectors(&after, 1.0, release);
    let invalid = after.value("packetpath_conntrack_invalid_total", &[]);
    assert_eq!(
        invalid,
        conntrack_sum(r.get("reload/conntrack-S"), "invalid").unwrap() as f64,
        "{release}: conntrack statistics start over with the module, no 2^32 leap"
    );
    let inv_flow: u64 = dp_flows(r.get("reload/dump-flows"))
        .iter()
        .filter(|f| f.has("ct_state(0x30/0x30)"))
        .map(|f| f.packets)
        .sum();
    let before = metrics(r, "reload/metrics-before");
    assert_eq!(
        drops(&after, &["ct_invalid"]) - drops(&before, &["ct_invalid"]),
        inv_flow as f64,
        "{release}: the new datapath's drop flow continues the totals"
    );
}

#[test]
fn drop_accounting_under_churn_on_three_kernel_generations() {
    // Checks a run that is already there instead of booting (while changing this test).
    if let Ok(path) = std::env::var("PP_CHURN_RESULTS") {
        check("given results", &Results::read(Path::new(&path)));
        return;
    }
    let releases =
        std::env::var("PP_CHURN_RELEASES").unwrap_or_else(|_| "bullseye,bookworm,trixie".into());
    for release in releases.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some(r) = run_bed(release) else { return };
        check(release, &r);
    }
}
