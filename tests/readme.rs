//! README's metrics table must list exactly the families the exporter emits, with their
//! types, and every label the families carry.

use std::collections::BTreeMap;
use std::path::Path;

fn read(p: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap()
}

/// name -> (type, labels) from README rows of the form "| `name` | type | labels | …".
fn documented() -> BTreeMap<String, (String, Vec<String>)> {
    read("README.md")
        .lines()
        .filter(|l| l.starts_with("| `packetpath_") || l.starts_with("| `process_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let labels = cells[3]
                .split(',')
                .map(|s| s.trim().trim_matches(|c| c == '(' || c == ')').to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            (
                cells[1].trim_matches('`').to_owned(),
                (cells[2].to_owned(), labels),
            )
        })
        .collect()
}

/// name -> (type, label names seen) from the golden expositions (real output on captures).
fn emitted() -> BTreeMap<String, (String, Vec<String>)> {
    let mut out: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for f in [
        "tests/golden/metrics.txt",
        "tests/golden/metrics-procfs.txt",
        "tests/golden/metrics-ovs.txt",
        "tests/golden/metrics-ovsdb.txt",
    ] {
        for line in read(f).lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').unwrap();
                out.entry(name.to_owned()).or_default().0 = ty.to_owned();
            } else if !line.starts_with('#') {
                let Some((name, labels)) = line.split_once('{') else {
                    continue;
                };
                if name == "packetpath_exporter_build_info" {
                    continue; // masked in the golden files
                }
                let entry = out.entry(name.to_owned()).or_default();
                for pair in labels.split("\",") {
                    let key = pair.split('=').next().unwrap().to_owned();
                    if !entry.1.contains(&key) {
                        entry.1.push(key);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn readme_metrics_table_matches_real_output() {
    let doc = documented();
    let real = emitted();
    // Rows that name a kernel newer than the test bed's may be missing from real output.
    let readme = read("README.md");
    let newer_kernel_only = |name: &str| {
        readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}`")))
            // Opt-in collectors that change the host are checked against live output
            // (tests/netns_conntrack_invalid.rs, tests/ovs_vm.rs), not golden files.
            .is_some_and(|l| l.contains("(Linux 6.2+)") || l.contains("(opt-in"))
    };
    let doc_names: Vec<_> = doc
        .keys()
        .filter(|n| real.contains_key(*n) || !newer_kernel_only(n))
        .collect();
    let real_names: Vec<_> = real.keys().collect();
    assert_eq!(
        doc_names, real_names,
        "README metrics table and real output list different metrics"
    );
    for (name, (ty, labels)) in &real {
        let (doc_ty, doc_labels) = &doc[name];
        assert_eq!(doc_ty, ty, "{name}: README says {doc_ty}, output says {ty}");
        for l in labels {
            assert!(
                doc_labels.contains(l),
                "{name}: label {l} missing from README"
            );
        }
    }
    // Per-CPU conntrack adds `cpu`, documented as optional on every conntrack counter.
    for (name, (ty, labels)) in &doc {
        let stats = name.starts_with("packetpath_conntrack_")
            && !name.starts_with("packetpath_conntrack_invalid_")
            || name == "packetpath_conntrack_invalid_total";
        if stats && ty == "counter" {
            assert_eq!(labels, &["cpu"], "{name}");
        }
    }
}
