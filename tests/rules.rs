//! Alert rules and the dashboard: promtool-clean, unit-tested, and naming only series the
//! exporter really emits (the README table, itself checked against real output).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn path(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(p)
        .display()
        .to_string()
}

fn promtool(args: &[&str]) -> Option<String> {
    match Command::new("promtool").args(args).output() {
        Ok(out) => {
            let said = common::said(&out);
            assert!(out.status.success(), "promtool {args:?}:\n{said}");
            Some(said)
        }
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("promtool not available ({e}); skipping outside CI");
            None
        }
        Err(e) => panic!("promtool is required under CI=true: {e}"),
    }
}

/// Every `packetpath_…` name in a text, minus rate-window suffixes and the like; not the
/// metric part of a recorded series' name (`instance:packetpath_…:rate`), which is no
/// series of the exporter's.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("packetpath_") {
        let in_longer_name = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !in_longer_name {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

/// A recording rule's name: level:metric:operations.
const RECORD_NAME: &str = r"[a-z_]+:packetpath_[a-z0-9_]+:[a-z0-9_]+";

fn documented() -> BTreeSet<String> {
    names_in(
        &std::fs::read_to_string(path("README.md"))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("| `packetpath_"))
            .map(|l| l.split('|').nth(1).unwrap())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

#[test]
fn rules_file_is_the_rendered_template() {
    let out = Command::new(path("alerts/render.sh"))
        .output()
        .expect("run alerts/render.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).unwrap();
    assert!(
        !rendered.contains("${"),
        "a placeholder has no value in thresholds.env"
    );
    let committed = std::fs::read_to_string(path("alerts/packetpath.rules.yml")).unwrap();
    assert!(
        rendered == committed,
        "alerts/packetpath.rules.yml is stale: run alerts/render.sh > alerts/packetpath.rules.yml"
    );
}

/// "15m" -> 900.
fn duration_seconds(d: &str) -> u64 {
    let (n, unit) = d.split_at(d.len() - 1);
    let n: u64 = n.parse().unwrap();
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => panic!("{d}: not a duration in s, m or h"),
    }
}

/// SIGNATURE_WINDOW_SECONDS, which the rules compare with time(), is SIGNATURE_WINDOW.
#[test]
fn signature_window_seconds_is_the_signature_window() {
    let env = std::fs::read_to_string(path("alerts/thresholds.env")).unwrap();
    let value = |key: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} in thresholds.env"))
            .to_owned()
    };
    assert_eq!(
        duration_seconds(&value("SIGNATURE_WINDOW")),
        value("SIGNATURE_WINDOW_SECONDS").parse::<u64>().unwrap()
    );
}

/// Alert names in the rules file, in order.
fn alerts() -> Vec<String> {
    std::fs::read_to_string(path("alerts/packetpath.rules.yml"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: ").map(str::to_owned))
        .collect()
}

#[test]
fn every_alert_has_severity_runbook_and_unit_tests() {
    let rules = std::fs::read_to_string(path("alerts/packetpath.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(path("alerts/tests/packetpath.test.yml")).unwrap();
    let readme = std::fs::read_to_string(path("README.md")).unwrap();
    let names = alerts();
    assert_eq!(names.len(), 13);
    for (i, block) in rules.split("- alert: ").skip(1).enumerate() {
        let name = &names[i];
        assert!(name.starts_with("Packetpath"), "{name}");
        for key in ["severity: ", "summary: ", "description: ", "runbook_url: "] {
            assert!(block.contains(key), "{name} lacks {key}");
        }
        // The runbook anchor is a README heading.
        let anchor = format!("#{}", name.to_lowercase());
        assert!(
            block.contains(&format!("{anchor}\"")),
            "{name}: runbook anchor"
        );
        assert!(
            readme.contains(&format!("\n### {name}\n")),
            "README has no runbook heading for {name}"
        );
        // Unit tests: at least one firing case (expected labels) for it.
        let firing = tests
            .split("alertname: ")
            .skip(1)
            .any(|t| t.starts_with(name.as_str()) && t.contains("exp_labels"));
        assert!(firing, "{name} has no firing unit test");
    }
}

/// Recording rule names in the rules file, in order.
fn records() -> Vec<String> {
    std::fs::read_to_string(path("alerts/packetpath.rules.yml"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: ").map(str::to_owned))
        .collect()
}

/// Every recording rule is named level:metric:operations and has a case in
/// alerts/tests/recording.test.yml that queries it and expects samples.
#[test]
fn every_recording_rule_is_named_and_unit_tested() {
    let names = records();
    assert_eq!(names.len(), 18);
    let form = regex::Regex::new(&format!("^{RECORD_NAME}$")).unwrap();
    let tests: yaml_serde::Value = yaml_serde::from_str(
        &std::fs::read_to_string(path("alerts/tests/recording.test.yml")).unwrap(),
    )
    .unwrap();
    // The expressions of the cases that expect at least one sample.
    let exprs: Vec<&str> = tests["tests"]
        .as_sequence()
        .expect("recording.test.yml has tests")
        .iter()
        .flat_map(|t| t["promql_expr_test"].as_sequence().into_iter().flatten())
        .filter(|c| {
            c["exp_samples"]
                .as_sequence()
                .is_some_and(|s| !s.is_empty())
        })
        .filter_map(|c| c["expr"].as_str())
        .collect();
    for name in &names {
        assert!(
            form.is_match(name),
            "{name} is not named level:metric:operations"
        );
        // The name itself, not part of a longer one.
        let alone = regex::Regex::new(&format!(
            r"(^|[^A-Za-z0-9_:]){}($|[^A-Za-z0-9_:])",
            regex::escape(name)
        ))
        .unwrap();
        assert!(
            exprs.iter().any(|e| alone.is_match(e)),
            "{name} has no promql_expr_test with expected samples in alerts/tests/recording.test.yml"
        );
    }
}

#[test]
fn rules_pass_promtool_check_and_unit_tests() {
    if let Some(out) = promtool(&["check", "rules", &path("alerts/packetpath.rules.yml")]) {
        assert!(out.contains("SUCCESS: 31 rules found"), "{out}");
    }
    for tests in [
        "alerts/tests/packetpath.test.yml",
        "alerts/tests/quiet.test.yml",
        "alerts/tests/recording.test.yml",
    ] {
        if let Some(out) = promtool(&["test", "rules", &path(tests)]) {
            assert!(out.contains("SUCCESS"), "{tests}: {out}");
        }
    }
}

#[test]
fn rules_and_dashboard_name_only_emitted_metrics() {
    let known: BTreeSet<String> = documented();
    assert!(known.len() > 20);
    let rules = std::fs::read_to_string(path("alerts/packetpath.rules.yml")).unwrap();
    // Every line but comments: expressions span lines, and annotations run queries too.
    let code = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let used = names_in(&code);
    assert!(!used.is_empty());
    for n in &used {
        assert!(
            known.contains(n),
            "rule names {n}, which the exporter does not emit"
        );
    }
    // ... and recorded series only as a rule records them.
    let recorded: BTreeSet<String> = records().into_iter().collect();
    let record_name = regex::Regex::new(RECORD_NAME).unwrap();
    for m in record_name.find_iter(&code) {
        assert!(
            recorded.contains(m.as_str()),
            "rule names {}, which no rule records",
            m.as_str()
        );
    }

    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path("dashboards/packetpath.json")).unwrap())
            .unwrap();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
        // No hard-coded datasource: every panel follows the variable.
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
    assert!(exprs.len() >= 8);
    for e in &exprs {
        for n in names_in(e) {
            assert!(
                known.contains(&n),
                "dashboard expression names {n}, which the exporter does not emit: {e}"
            );
        }
        for m in record_name.find_iter(e) {
            assert!(
                recorded.contains(m.as_str()),
                "dashboard expression names {}, which no rule records: {e}",
                m.as_str()
            );
        }
        assert!(
            e.contains("instance=~\"$instance\""),
            "expression ignores the instance variable: {e}"
        );
    }
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "instance", "vm"]);
}

/// The dashboard's table of VMs losing inbound packets, on two VM ports of a node scraped
/// for 40 minutes, over the last 15: A's bad checksums from 31m (its series appears with
/// the first, and counts it), B's ct-invalid drops from the tunnel, and B's zeros left out;
/// each row with the port's identity.
#[test]
fn dashboard_vm_loss_table_counts_both_per_vm_series() {
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path("dashboards/packetpath.json")).unwrap())
            .unwrap();
    let panel = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == "VMs losing inbound packets, by reason")
        .expect("the VM loss table");
    let expr = panel["targets"][0]["expr"]
        .as_str()
        .unwrap()
        .replace("$__range", "15m")
        .replace("$instance", ".*")
        .replace("$vm", ".*");
    let mut test = String::from(
        "rule_files: []\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n",
    );
    let mut series = |s: &str, values: &str| {
        test.push_str(&format!(
            "      - series: '{s}'\n        values: '{values}'\n"
        ));
    };
    for d in ["A", "B"] {
        series(
            &format!(
                "packetpath_vm_port_info{{instance=\"node1\",device=\"tap{d}\",port_id=\"p{d}\",instance_id=\"i{d}\",mac=\"\",status=\"active\"}}"
            ),
            "1x40",
        );
    }
    // The collectors' series that exist from the first scrape.
    series(
        "packetpath_conntrack_invalid_packets_total{instance=\"node1\",family=\"ipv4\",protocol=\"tcp\",reason=\"bad_checksum\",size_class=\"lt60\",tcp_flags=\"fin\"}",
        "0x30 1+1x9",
    );
    series(
        "packetpath_ovs_drop_flow_packets_total{instance=\"node1\",datapath=\"ovs-system\",in_port=\"genev_sys_6081\",in_port_role=\"tunnel\",reason=\"ct_invalid\"}",
        "0+18x40",
    );
    series(
        "packetpath_vm_port_conntrack_invalid_packets_total{instance=\"node1\",device=\"tapA\",reason=\"bad_checksum\"}",
        "_x31 1+1x9",
    );
    for (d, reason, values) in [
        ("A", "ct_invalid", "0x40"),
        ("B", "ct_invalid", "0+18x40"),
        ("B", "no_action", "0x40"),
    ] {
        series(
            &format!(
                "packetpath_vm_port_inbound_drop_packets_total{{instance=\"node1\",device=\"tap{d}\",from_role=\"tunnel\",reason=\"{reason}\"}}"
            ),
            values,
        );
    }
    test.push_str(&format!(
        "    promql_expr_test:\n      - expr: '{expr}'\n        eval_time: 40m\n        exp_samples:\n"
    ));
    for (labels, value) in [
        (
            "counted_as=\"invalid in its conntrack zone\",device=\"tapA\",instance=\"node1\",instance_id=\"iA\",port_id=\"pA\",reason=\"bad_checksum\"",
            10,
        ),
        (
            "counted_as=\"dropped by a datapath flow\",device=\"tapB\",from_role=\"tunnel\",instance=\"node1\",instance_id=\"iB\",port_id=\"pB\",reason=\"ct_invalid\"",
            270,
        ),
    ] {
        test.push_str(&format!(
            "          - labels: '{{{labels}}}'\n            value: {value}\n"
        ));
    }
    let dir = std::env::temp_dir().join(format!("pp-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("vm-loss.test.yml");
    std::fs::write(&file, test).unwrap();
    let out = promtool(&["test", "rules", &file.display().to_string()]);
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(out) = out {
        assert!(out.contains("SUCCESS"), "{out}");
    }
}
