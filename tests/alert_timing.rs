//! How fast the packet-path alerts fire, and how much background they stay quiet under,
//! measured by `promtool test rules` on the shipped rules. the "Alert timing" table of docs/alerts.md is
//! this test's output: the test fails when the table and the rules disagree, and
//! `UPDATE_DOCS=1` rewrites the table.
//!
//! The shipped configuration: conntrack_invalid on, and the ovsdb collector naming two VM
//! ports, tap1 and tap2, so invalid packets are attributed to a VM port by their conntrack
//! zone and datapath drops to the VM port they were heading to.
//!
//! The incident at rate r, after 20 minutes of scrapes: every packet of it is a short
//! FIN/ACK from the tunnel to tap1 with a bad checksum, so conntrack's invalid counter, the
//! classifier's bad_checksum class (there from the start at 0) and tap1's bad_checksum
//! series (which appears with its first packet) rise by r a second, and the tunnel
//! receives r more than the VMs get. The datapath counts a drop only while its megaflow
//! lives: a packet that finds none goes through the slow path and is in no flow's
//! counters, and OVS forgets an idle megaflow after 10 s. So at 1/min and 1/10 s it counts
//! none of the incident's drops; at 10/s all but the first. Beside it run 100 packets a
//! second to the VMs and 5 to other ports (a gap with no loss behind it). The background
//! at rate b, from the start: late RSTs of forgotten connections from the tunnel to tap1,
//! invalid for out_of_window in its zone and dropped as ct_invalid heading to it, at b a
//! second, every drop counted by the datapath (the worst case for staying quiet), and
//! nothing with a bad checksum. The kernel's drop monitor (a 6.6+ kernel, where a drop
//! flow's drop is a kernel drop) reports the drops the datapath counts as
//! OVS_DROP_EXPLICIT on tap1, the port they were heading to, and has its loss reasons'
//! other series at 0; a packet the slow path handles is consumed with its upcall, no kernel
//! drop (unless ovs-vswitchd executes an explicit drop action for it, which the model does
//! not assume). Scrapes are 15 s apart, as Prometheus' default.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

const ALERTS: [&str; 6] = [
    "PacketpathTunnelToVMLoss",
    "PacketpathConntrackBadChecksum",
    "PacketpathOVSDropFlowsFromTunnel",
    "PacketpathKernelDropsOnVMPath",
    "PacketpathConntrackInvalidSpike",
    "PacketpathChecksumValidationDroppingTunnelTraffic",
];

/// Incident rates: (column, events per second).
const RATES: [(&str, f64); 3] = [
    ("1 event/min", 1.0 / 60.0),
    ("1 event/10 s", 0.1),
    ("10 events/s", 10.0),
];

/// Background rates tried, per second.
const BACKGROUND: [f64; 9] = [0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0];

const SCRAPE_S: u32 = 15;
/// How long an incident is watched for its alerts, and a background for silence.
const INCIDENT_S: u32 = 30 * 60;
/// How long each node has been scraped when its incident starts: longer than the signature
/// window, as on a node Prometheus has watched for a while.
const HISTORY_S: u32 = 20 * 60;
const BACKGROUND_S: u32 = 2 * 3600;

fn repo(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(p)
        .display()
        .to_string()
}

/// `promtool` series values: `per_sample` added every scrape for `samples` scrapes.
fn ramp(per_sample: f64, samples: u32) -> String {
    format!("0+{per_sample}x{samples}")
}

fn series(out: &mut String, name: &str, instance: &str, labels: &str, values: &str) {
    let sep = if labels.is_empty() { "" } else { "," };
    writeln!(
        out,
        "      - series: '{name}{{instance=\"{instance}\"{sep}{labels}}}'\n        values: '{values}'"
    )
    .unwrap();
}

/// How long OVS keeps an idle megaflow (its default `max-idle`, 10 s).
const IDLE_TIMEOUT_S: f64 = 10.0;

/// A counter's value at every scrape, `count(t)` at t seconds; with `lazy`, no series
/// (`_`) until it first counts, as for the series that appear with their first packet.
fn counter(samples: u32, lazy: bool, count: impl Fn(f64) -> f64) -> String {
    (0..=samples)
        .map(|i| {
            let v = count(f64::from(i * SCRAPE_S));
            if lazy && v == 0.0 {
                "_".to_owned()
            } else {
                format!("{v}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Events at `rate` a second from `start` by t: the first at 1/rate after it.
fn events(rate: f64, start: f64, t: f64) -> f64 {
    (rate * (t - start) + 1e-9).floor().max(0.0)
}

/// One node's series: `invalid` packets a second from the tunnel to tap1, bad checksums
/// (the incident) or late RSTs (the background).
fn node(out: &mut String, instance: &str, invalid: f64, bad_checksum: bool, samples: u32) {
    // The incident starts after HISTORY_S; the background runs throughout.
    let start = if bad_checksum {
        f64::from(HISTORY_S)
    } else {
        0.0
    };
    let n = move |t: f64| events(invalid, start, t);
    // Drops the datapath counts: the incident's while its megaflow lives past the first
    // packet; the background's all.
    let counted = move |t: f64| {
        if !bad_checksum {
            n(t)
        } else if 1.0 / invalid < IDLE_TIMEOUT_S {
            (n(t) - 1.0).max(0.0)
        } else {
            0.0
        }
    };
    let (reason, flags) = if bad_checksum {
        ("bad_checksum", "fin")
    } else {
        ("out_of_window", "rst")
    };
    for (device, port, vm) in [
        (
            "tap1",
            "519d7cc4-7593-4944-af80-6a8a9b4f4e9a",
            "0c1e6a4e-6d0e-4b59-9f0a-7a3c2f1d2e3f",
        ),
        (
            "tap2",
            "7f3b2a10-c4d5-4e6f-8a9b-0c1d2e3f4a5b",
            "3d2c1b0a-9f8e-4d7c-b6a5-4f3e2d1c0b9a",
        ),
    ] {
        series(
            out,
            "packetpath_vm_port_info",
            instance,
            &format!(
                "device=\"{device}\",port_id=\"{port}\",instance_id=\"{vm}\",mac=\"\",status=\"active\""
            ),
            &format!("1x{samples}"),
        );
        series(
            out,
            "packetpath_interface_transmit_packets_total",
            instance,
            &format!("device=\"{device}\",role=\"vm\""),
            &ramp(50.0 * f64::from(SCRAPE_S), samples),
        );
        series(
            out,
            "packetpath_vm_port_inbound_drop_packets_total",
            instance,
            &format!("device=\"{device}\",from_role=\"tunnel\",reason=\"ct_invalid\""),
            &if device == "tap1" {
                counter(samples, false, counted)
            } else {
                format!("0x{samples}")
            },
        );
        for reason in ["FULL_RING", "DEV_READY", "NETFILTER_DROP"] {
            series(
                out,
                "packetpath_kernel_drop_packets_total",
                instance,
                &format!("device=\"{device}\",role=\"vm\",reason=\"{reason}\""),
                &format!("0x{samples}"),
            );
        }
    }
    series(
        out,
        "packetpath_kernel_drop_packets_total",
        instance,
        "device=\"tap1\",role=\"vm\",reason=\"OVS_DROP_EXPLICIT\"",
        &counter(samples, true, counted),
    );
    series(
        out,
        "packetpath_vm_port_conntrack_invalid_packets_total",
        instance,
        &format!("device=\"tap1\",reason=\"{reason}\""),
        &counter(samples, true, n),
    );
    series(
        out,
        "packetpath_vm_port_inbound_drop_unattributed_packets_total",
        instance,
        "from_role=\"tunnel\",reason=\"ct_invalid\"",
        &format!("0x{samples}"),
    );
    series(
        out,
        "packetpath_interface_receive_packets_total",
        instance,
        "device=\"genev_sys_6081\",role=\"tunnel\"",
        &counter(samples, false, |t| 105.0 * t + n(t)),
    );
    series(
        out,
        "packetpath_conntrack_invalid_total",
        instance,
        "",
        &counter(samples, false, n),
    );
    series(
        out,
        "packetpath_conntrack_invalid_packets_total",
        instance,
        &format!(
            "family=\"ipv4\",protocol=\"tcp\",reason=\"{reason}\",size_class=\"lt60\",tcp_flags=\"{flags}\""
        ),
        // TCP bad-checksum classes exist from the start; others appear with their first packet.
        &counter(samples, !bad_checksum, n),
    );
    series(
        out,
        "packetpath_ovs_drop_flow_packets_total",
        instance,
        "datapath=\"ovs-system\",in_port=\"genev_sys_6081\",in_port_role=\"tunnel\",reason=\"ct_invalid\"",
        &counter(samples, false, counted),
    );
    series(
        out,
        "packetpath_conntrack_sysctl",
        instance,
        "name=\"nf_conntrack_checksum\"",
        &format!("1x{samples}"),
    );
}

fn incident(rate: f64) -> String {
    format!("incident-{rate}")
}

fn background(rate: f64) -> String {
    format!("background-{rate}")
}

/// A promtool test file that expects no alert at every evaluation: its failures say when
/// and for which node each alert fired. Recording rules are evaluated before the alerts
/// that read them (promtool's order is random otherwise, which moves a firing time by a
/// scrape from one run to the next).
fn test_file(rules: &str) -> String {
    let samples = BACKGROUND_S / SCRAPE_S;
    let mut out = format!(
        "rule_files:\n  - {rules}\nevaluation_interval: {SCRAPE_S}s\ngroup_eval_order:\n  - packetpath-recording\n  - packetpath-alerts\ntests:\n  - interval: {SCRAPE_S}s\n    input_series:\n"
    );
    for (_, r) in RATES {
        node(&mut out, &incident(r), r, true, samples);
    }
    for b in BACKGROUND {
        node(&mut out, &background(b), b, false, samples);
    }
    out.push_str("    alert_rule_test:\n");
    let mut t = 30;
    while t <= BACKGROUND_S {
        for a in ALERTS {
            writeln!(
                out,
                "      - eval_time: {t}s\n        alertname: {a}\n        exp_alerts: []"
            )
            .unwrap();
        }
        t += if t < HISTORY_S + INCIDENT_S { 30 } else { 300 };
    }
    out
}

/// "1h2m30s" -> seconds.
fn seconds(d: &str) -> u32 {
    let (mut total, mut n) = (0, 0);
    for c in d.chars() {
        match c {
            '0'..='9' => n = n * 10 + c.to_digit(10).unwrap_or(0),
            'h' => (total, n) = (total + n * 3600, 0),
            'm' => (total, n) = (total + n * 60, 0),
            's' => (total, n) = (total + n, 0),
            _ => {}
        }
    }
    total
}

/// (alert, node) -> the first evaluation at which it was firing.
fn first_firing(promtool_output: &str) -> BTreeMap<(String, String), u32> {
    let mut first = BTreeMap::new();
    for block in promtool_output.split("alertname: ").skip(1) {
        let Some((alert, rest)) = block.split_once(", time: ") else {
            continue;
        };
        let at = seconds(rest.split(',').next().unwrap_or_default());
        let got = rest.split("got:").nth(1).unwrap_or_default();
        for inst in got.split("instance=\"").skip(1) {
            let node = inst.split('"').next().unwrap_or_default().to_owned();
            let e = first.entry((alert.to_owned(), node)).or_insert(at);
            *e = (*e).min(at);
        }
    }
    first
}

/// (alert, node) -> the `device` label of every alert that fired ("" for none).
fn devices_firing(promtool_output: &str) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for block in promtool_output.split("alertname: ").skip(1) {
        let Some((alert, rest)) = block.split_once(", time: ") else {
            continue;
        };
        let got = rest.split("got:").nth(1).unwrap_or_default();
        for labels in got.split("Labels:{").skip(1) {
            let labels = labels.split('}').next().unwrap_or_default();
            let value = |key: &str| {
                labels
                    .split(&format!("{key}=\""))
                    .nth(1)
                    .and_then(|v| v.split('"').next())
                    .unwrap_or_default()
                    .to_owned()
            };
            out.entry((alert.to_owned(), value("instance")))
                .or_default()
                .insert(value("device"));
        }
    }
    out
}

fn duration(s: u32) -> String {
    match (s / 60, s % 60) {
        (0, s) => format!("{s} s"),
        (m, 0) => format!("{m} min"),
        (m, s) => format!("{m} min {s} s"),
    }
}

fn rate(r: f64) -> String {
    format!("{r}/s")
}

fn table(first: &BTreeMap<(String, String), u32>, severities: &BTreeMap<String, String>) -> String {
    let mut out = String::from(
        "| Alert | Severity | 1 event/min | 1 event/10 s | 10 events/s | Quiet under background up to |\n|---|---|---|---|---|---|\n",
    );
    for a in ALERTS {
        let fired = |node: String| first.get(&(a.to_owned(), node)).copied();
        let cells: Vec<String> = RATES
            .iter()
            .map(|(_, r)| match fired(incident(*r)) {
                Some(t) if t <= HISTORY_S + INCIDENT_S => duration(t - HISTORY_S),
                _ => "—".to_owned(),
            })
            .collect();
        let quiet: Vec<f64> = BACKGROUND
            .iter()
            .copied()
            .take_while(|b| fired(background(*b)).is_none())
            .collect();
        let tolerated = match (quiet.last(), quiet.len() == BACKGROUND.len()) {
            (_, true) => format!("≥ {} (all tried)", rate(BACKGROUND[BACKGROUND.len() - 1])),
            (Some(b), false) => rate(*b),
            (None, false) => format!("< {}", rate(BACKGROUND[0])),
        };
        writeln!(
            out,
            "| `{a}` | {} | {} | {} | {} | {tolerated} |",
            severities.get(a).map_or("?", String::as_str),
            cells[0],
            cells[1],
            cells[2]
        )
        .unwrap();
    }
    out
}

fn severities() -> BTreeMap<String, String> {
    let rules = std::fs::read_to_string(repo("alerts/packetpath.rules.yml")).unwrap();
    rules
        .split("- alert: ")
        .skip(1)
        .filter_map(|b| {
            let name = b.lines().next()?.trim().to_owned();
            let sev = b
                .split("severity: ")
                .nth(1)?
                .lines()
                .next()?
                .trim()
                .to_owned();
            Some((name, sev))
        })
        .collect()
}

const BEGIN: &str = "<!-- alert-timing: generated by tests/alert_timing.rs -->\n";
const END: &str = "<!-- alert-timing end -->";

#[test]
fn readme_alert_timing_table_is_what_promtool_measures() {
    let dir = std::env::temp_dir().join(format!("pp-alert-timing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("timing.test.yml");
    std::fs::write(&file, test_file(&repo("alerts/packetpath.rules.yml"))).unwrap();
    let out = match Command::new("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()
    {
        Ok(out) => common::said(&out),
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("promtool not available ({e}); skipping outside CI");
            return;
        }
        Err(e) => panic!("promtool is required under CI=true: {e}"),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let first = first_firing(&out);
    for ((alert, node), t) in &first {
        assert!(
            !node.starts_with("incident-") || *t > HISTORY_S,
            "{alert} fired on {node} before its incident started"
        );
    }
    // The measurement itself must be sound: the flood fires everything it should, and
    // the smallest background fires nothing.
    assert!(
        first.contains_key(&(ALERTS[0].to_owned(), incident(10.0))),
        "{out}"
    );
    for a in ALERTS {
        assert!(
            !first.contains_key(&(a.to_owned(), background(BACKGROUND[0]))),
            "{a} fires on the smallest background"
        );
    }
    // The incident's loss alert names its VM port, tap1, and never the node alone (the
    // VM port's alert stands for the node's) nor tap2.
    for ((alert, node), devices) in devices_firing(&out) {
        if alert == ALERTS[0] && node.starts_with("incident-") {
            assert_eq!(
                devices,
                BTreeSet::from(["tap1".to_owned()]),
                "{alert} on {node}"
            );
        }
    }
    let want = table(&first, &severities());
    let readme_path = repo("docs/alerts.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let (start, end) = (
        readme
            .find(BEGIN)
            .expect("docs/alerts.md has the alert timing markers")
            + BEGIN.len(),
        readme
            .find(END)
            .expect("docs/alerts.md has the alert timing end marker"),
    );
    if std::env::var("UPDATE_DOCS").is_ok() {
        let updated = format!("{}{want}{}", &readme[..start], &readme[end..]);
        std::fs::write(&readme_path, updated).unwrap();
        return;
    }
    assert_eq!(
        &readme[start..end],
        want,
        "the alert timing table in docs/alerts.md is stale: UPDATE_DOCS=1 cargo test --test alert_timing"
    );
}

#[test]
fn durations_parse_as_promtool_prints_them() {
    assert_eq!(seconds("6m30s"), 390);
    assert_eq!(seconds("1h0m0s"), 3600);
    assert_eq!(seconds("45s"), 45);
    assert_eq!(duration(390), "6 min 30 s");
    assert_eq!(duration(120), "2 min");
}
