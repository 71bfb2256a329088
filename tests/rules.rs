//! Alert rules and the dashboard: promtool-clean, unit-tested, and naming only series the
//! exporter really emits (the README table, itself checked against real output).

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
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
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

/// Every `packetpath_…` name in a text, minus rate-window suffixes and the like.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("packetpath_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

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
fn rules_pass_promtool_check_and_unit_tests() {
    if let Some(out) = promtool(&["check", "rules", &path("alerts/packetpath.rules.yml")]) {
        assert!(out.contains("SUCCESS: 2 rules found"), "{out}");
    }
    if let Some(out) = promtool(&["test", "rules", &path("alerts/tests/packetpath.test.yml")]) {
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

#[test]
fn rules_and_dashboard_name_only_emitted_metrics() {
    let known = documented();
    assert!(known.len() > 20);
    let rules = std::fs::read_to_string(path("alerts/packetpath.rules.yml")).unwrap();
    let used = names_in(
        &rules
            .lines()
            .filter(|l| l.trim_start().starts_with("expr:"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert!(!used.is_empty());
    for n in &used {
        assert!(
            known.contains(n),
            "rule names {n}, which the exporter does not emit"
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
    assert_eq!(vars, ["datasource", "instance"]);
}
