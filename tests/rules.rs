//! Alert rules and the dashboard: promtool-clean, unit-tested, and naming only series the
//! exporter really emits (the table in docs/metrics.md, itself checked against real output).

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
        &std::fs::read_to_string(path("docs/metrics.md"))
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
    let runbooks = std::fs::read_to_string(path("docs/runbooks.md")).unwrap();
    let names = alerts();
    assert_eq!(names.len(), 13);
    for (i, block) in rules.split("- alert: ").skip(1).enumerate() {
        let name = &names[i];
        assert!(name.starts_with("Packetpath"), "{name}");
        for key in ["severity: ", "summary: ", "description: ", "runbook_url: "] {
            assert!(block.contains(key), "{name} lacks {key}");
        }
        // The runbook anchor is a heading of docs/runbooks.md.
        let anchor = format!("#{}", name.to_lowercase());
        assert!(
            block.contains(&format!("{anchor}\"")),
            "{name}: runbook anchor"
        );
        assert!(
            runbooks.contains(&format!("\n## {name}\n")),
            "docs/runbooks.md has no runbook heading for {name}"
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

fn dashboard(p: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path(p)).unwrap()).unwrap()
}

/// Every non-null `uid` anywhere in a dashboard.
fn uids(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "uid" && !v.is_null() {
                    out.push(v.clone());
                }
                uids(v, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| uids(v, out)),
        _ => {}
    }
}

/// Each series an expression selects, with its label matchers (what is between the
/// braces after the name; empty without).
fn selectors(expr: &str) -> Vec<(String, String)> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut i = 0;
    while i < expr.len() {
        let rest = &expr[i..];
        let len = rest.find(|c: char| !is_name(c)).unwrap_or(rest.len());
        if len == 0 {
            i += rest.chars().next().unwrap().len_utf8();
            continue;
        }
        let name = &rest[..len];
        if name.contains("packetpath_") {
            let after = &rest[len..];
            let matchers = after
                .strip_prefix('{')
                .map_or("", |m| &m[..m.find('}').unwrap()]);
            out.push((name.to_owned(), matchers.to_owned()));
        }
        i += len;
    }
    out
}

/// The series a global view is fed (federation or remote-write): the packetpath-fleet
/// group's records and packetpath_node_info.
fn fleet_series() -> BTreeSet<String> {
    let rules = std::fs::read_to_string(path("alerts/packetpath.rules.yml")).unwrap();
    let group = rules
        .split("\n  - name: ")
        .find(|g| g.starts_with("packetpath-fleet\n"))
        .expect("the packetpath-fleet group");
    let mut fleet: BTreeSet<String> = group
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: ").map(str::to_owned))
        .collect();
    assert_eq!(fleet.len(), 6, "{fleet:?}");
    fleet.insert("packetpath_node_info".into());
    fleet
}

/// The fleet dashboard runs on a global view fed only by the fleet series: it names no
/// other, filters every selector by the cluster variable and joins on (cluster, instance),
/// which work alike where no cluster label exists (one Prometheus); it follows the
/// datasource variable and has no fixed UID, so that it imports anywhere.
#[test]
fn fleet_dashboard_reads_only_what_a_global_view_holds() {
    let dash = dashboard("dashboards/packetpath-fleet.json");
    assert_eq!(dash["title"], "packetpath: fleet");
    assert!(dash["uid"].is_null(), "a fixed dashboard UID");
    let mut all = Vec::new();
    uids(&dash, &mut all);
    assert!(!all.is_empty());
    for u in &all {
        assert_eq!(u, "${datasource}", "a fixed UID");
    }

    let vars = dash["templating"]["list"].as_array().unwrap();
    let names: Vec<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["datasource", "cluster"]);
    assert_eq!(vars[0]["type"], "datasource");
    assert_eq!(vars[0]["query"], "prometheus");
    let cluster = &vars[1];
    assert_eq!(
        cluster["query"]["query"],
        "label_values(packetpath_node_info, cluster)"
    );
    assert_eq!(cluster["multi"], true);
    assert_eq!(cluster["includeAll"], true);
    // All must match series without a cluster label too.
    assert_eq!(cluster["allValue"], ".*");

    let mut known = documented();
    known.extend(records());
    let fleet = fleet_series();
    let mut used = BTreeSet::new();
    let mut exprs = 0;
    for p in dash["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap();
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        assert!(
            p["description"].as_str().is_some_and(|d| d.len() > 20),
            "{title} has no description"
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}");
        for t in targets {
            let e = t["expr"].as_str().unwrap();
            exprs += 1;
            let sel = selectors(e);
            assert!(!sel.is_empty(), "{title}: {e}");
            for (name, matchers) in sel {
                assert!(
                    known.contains(&name),
                    "{title}: {name} is neither emitted nor recorded: {e}"
                );
                assert!(
                    fleet.contains(&name),
                    "{title}: {name} is not among the series a global view is fed: {e}"
                );
                assert!(
                    matchers.contains("cluster=~\"$cluster\""),
                    "{title}: {name} is not filtered by the cluster variable: {e}"
                );
                used.insert(name);
            }
            assert_eq!(
                e.matches(" on (").count(),
                e.matches(" on (cluster, instance) ").count(),
                "{title}: a join not on (cluster, instance): {e}"
            );
            assert!(!e.contains("ignoring"), "{title}: {e}");
        }
    }
    assert!(exprs >= 15, "{exprs} expressions");
    assert_eq!(used, fleet, "the dashboard leaves some fleet series unused");
}

/// The remote-write relabelling of docs/deployment.md and federation match[] keep the series the fleet
/// dashboard reads, and nothing else the exporter or the rules make.
#[test]
fn readme_ships_the_fleet_series_to_a_global_view() {
    let readme = std::fs::read_to_string(path("docs/deployment.md")).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == "- source_labels: [__name__]")
        .expect("the write_relabel_configs of docs/deployment.md");
    let re = lines[at + 1]
        .trim()
        .strip_prefix("regex: '")
        .and_then(|r| r.strip_suffix('\''))
        .expect("the regex on the line after source_labels");
    assert_eq!(lines[at + 2].trim(), "action: keep");
    assert!(
        readme.contains(&format!("- '{{__name__=~\"{re}\"}}'")),
        "the federation match[] differs from the remote-write regex"
    );
    // Prometheus anchors relabelling regexes.
    let re = regex::Regex::new(&format!("^(?:{re})$")).unwrap();
    let mut candidates = documented();
    candidates.extend(records());
    let kept: BTreeSet<String> = candidates.into_iter().filter(|n| re.is_match(n)).collect();
    assert_eq!(kept, fleet_series());
}

const SIGNATURE: &str =
    "instance:packetpath_conntrack_bad_checksum_packets:increase_signature_window";
const VERSIONS: &str = "ovn_version=\"24.03.2\",ovs_version=\"3.1.0\"";

/// A node as the fleet series show it: cluster and instance, its kernel (release, build)
/// when it has packetpath_node_info, its signature.
struct Node {
    labels: &'static str,
    kernel: Option<(&'static str, &'static str)>,
    signature: u32,
}

/// An expression and the samples it must return: labels, value.
type Expect<'a> = (&'a str, Vec<(String, &'a str)>);

/// One promtool test group: the nodes' series for 5 minutes, the expressions at the end.
fn fleet_case(nodes: &[Node], expects: &[Expect]) -> String {
    let mut t = String::from("  - interval: 1m\n    input_series:\n");
    for n in nodes {
        let (labels, v) = (n.labels, n.signature);
        t += &format!("      - series: '{SIGNATURE}{{{labels}}}'\n        values: '{v}x5'\n");
        if let Some((release, build)) = n.kernel {
            t += &format!(
                "      - series: 'packetpath_node_info{{{labels},kernel_release=\"{release}\",kernel_version=\"{build}\",ovs_module=\"in_tree\",{VERSIONS}}}'\n        values: '1x5'\n"
            );
        }
    }
    t += "    promql_expr_test:\n";
    for (expr, samples) in expects {
        t += &format!("      - expr: '{expr}'\n        eval_time: 5m\n        exp_samples:\n");
        for (labels, value) in samples {
            t += &format!("          - labels: '{{{labels}}}'\n            value: {value}\n");
        }
    }
    t
}

/// The fleet dashboard's ranking and its table by kernel on a global view (two clusters,
/// one instance name in both, a node without packetpath_node_info) and on one Prometheus
/// without a cluster label: the suspect kernel alone has a share, the node without
/// packetpath_node_info is still ranked, and the two nodes named alike stay apart.
#[test]
fn fleet_dashboard_names_the_suspect_version() {
    let dash = dashboard("dashboards/packetpath-fleet.json");
    let panel = |title: &str| -> Vec<String> {
        dash["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("no panel {title}"))["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["expr"].as_str().unwrap().replace("$cluster", ".*"))
            .collect()
    };
    let ranked = &panel("Nodes with the signature, ranked")[0];
    let by_kernel = panel("The signature by kernel");
    assert_eq!(by_kernel.len(), 4);

    const OLD: (&str, &str) = ("6.1.0-18-amd64", "#1 Debian 6.1.76-1");
    const NEW: (&str, &str) = ("6.12.9-amd64", "#1 Debian 6.12.9-1");
    let kernel = |(release, build): (&str, &str)| {
        format!("kernel_release=\"{release}\",kernel_version=\"{build}\"")
    };
    let (old, new) = (kernel(OLD), kernel(NEW));
    let ranked_on_old = |labels: &str| format!("{labels},kernel_release=\"{}\",{VERSIONS}", OLD.0);
    let mut test = String::from("rule_files: []\nevaluation_interval: 1m\ntests:\n");
    // A global view: two clusters, an instance name in both.
    let global = [
        Node {
            labels: "cluster=\"c1\",instance=\"a\"",
            kernel: Some(OLD),
            signature: 12,
        },
        Node {
            labels: "cluster=\"c1\",instance=\"b\"",
            kernel: Some(OLD),
            signature: 0,
        },
        Node {
            labels: "cluster=\"c2\",instance=\"a\"",
            kernel: Some(NEW),
            signature: 0,
        },
        Node {
            labels: "cluster=\"c2\",instance=\"c\"",
            kernel: Some(NEW),
            signature: 0,
        },
        // The node collector off: ranked all the same, under no version.
        Node {
            labels: "cluster=\"c2\",instance=\"d\"",
            kernel: None,
            signature: 3,
        },
    ];
    test += &fleet_case(
        &global,
        &[
            (
                ranked,
                vec![
                    (ranked_on_old("cluster=\"c1\",instance=\"a\""), "12"),
                    (
                        format!("__name__=\"{SIGNATURE}\",cluster=\"c2\",instance=\"d\""),
                        "3",
                    ),
                ],
            ),
            (&by_kernel[0], vec![(old.clone(), "12"), (new.clone(), "0")]),
            (&by_kernel[1], vec![(old.clone(), "1"), (new.clone(), "0")]),
            (&by_kernel[2], vec![(old.clone(), "2"), (new.clone(), "2")]),
            (
                &by_kernel[3],
                vec![(old.clone(), "0.5"), (new.clone(), "0")],
            ),
        ],
    );
    // One Prometheus, no cluster label.
    let single = [
        Node {
            labels: "instance=\"a\"",
            kernel: Some(OLD),
            signature: 5,
        },
        Node {
            labels: "instance=\"b\"",
            kernel: Some(NEW),
            signature: 0,
        },
    ];
    test += &fleet_case(
        &single,
        &[
            (ranked, vec![(ranked_on_old("instance=\"a\""), "5")]),
            (&by_kernel[3], vec![(old, "1"), (new, "0")]),
        ],
    );
    let dir = std::env::temp_dir().join(format!("pp-fleet-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fleet.test.yml");
    std::fs::write(&file, test).unwrap();
    let out = promtool(&["test", "rules", &file.display().to_string()]);
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(out) = out {
        assert!(out.contains("SUCCESS"), "{out}");
    }
}
