//! The metrics table (docs/metrics.md) must list exactly the families the exporter emits, with their
//! types, and every label the families carry.

use std::collections::BTreeMap;
use std::path::Path;

fn read(p: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap()
}

/// name -> (type, labels) from docs/metrics.md rows of the form "| `name` | type | labels | …".
fn documented() -> BTreeMap<String, (String, Vec<String>)> {
    read("docs/metrics.md")
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
        "tests/golden/metrics-ovs-vm.txt",
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
    let readme = read("docs/metrics.md");
    let newer_kernel_only = |name: &str| {
        readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}`")))
            // Opt-in collectors that change the host are checked against live output
            // (tests/netns_conntrack_invalid.rs, tests/ovs_vm.rs), not golden files.
            // Vport counters only exist for vports whose netdev is in another namespace,
            // which no capture has.
            .is_some_and(|l| {
                l.contains("(Linux 6.2+)")
                    || l.contains("(opt-in")
                    || l.contains("(other-namespace vports only)")
            })
    };
    let doc_names: Vec<_> = doc
        .keys()
        .filter(|n| real.contains_key(*n) || !newer_kernel_only(n))
        .collect();
    let real_names: Vec<_> = real.keys().collect();
    assert_eq!(
        doc_names, real_names,
        "the metrics table of docs/metrics.md and real output list different metrics"
    );
    for (name, (ty, labels)) in &real {
        let (doc_ty, doc_labels) = &doc[name];
        assert_eq!(
            doc_ty, ty,
            "{name}: docs/metrics.md says {doc_ty}, output says {ty}"
        );
        for l in labels {
            assert!(
                doc_labels.contains(l),
                "{name}: label {l} missing from docs/metrics.md"
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

/// The cardinality budget docs/metrics.md states: series per VM port in the default configuration,
/// counted in real output (the OVS bed's capture, with its VM port tap0 given an identity
/// and a conntrack zone in a real ovsdb-server), with no offload series and no repeated
/// vport counters for it.
#[test]
fn readme_cardinality_budget_matches_real_output() {
    let file = "tests/golden/metrics-ovs-vm.txt";
    let series: Vec<String> = read(file)
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("=\"tap0\""))
        .map(str::to_owned)
        .collect();
    let from = |prefix: &str| series.iter().filter(|l| l.starts_with(prefix)).count();
    let netlink = read("tests/golden/metrics.txt");
    assert!(
        netlink.contains("device=\"tap0\",role=\"vm\""),
        "the capture has a VM port"
    );
    assert!(
        !netlink
            .lines()
            .any(|l| l.starts_with("packetpath_interface_offload_") && l.contains("\"tap0\"")),
        "offload adds no per-VM series by default"
    );
    assert!(
        !read(file)
            .lines()
            .any(|l| l.starts_with("packetpath_ovs_vport_") && l.contains("\"tap0\"")),
        "no vport counters repeat the interface series"
    );
    let total = series.len();
    assert_eq!(
        (
            from("packetpath_interface_"),
            from("packetpath_ovs_drop_flow_"),
            from("packetpath_vm_port_inbound_drop_"),
            from("packetpath_vm_port_info") + from("packetpath_vm_port_ovn_installed"),
            total
        ),
        (12, 8, 8, 2, 30)
    );
    let readme = read("docs/metrics.md");
    assert!(
        readme.contains(&format!("each VM port costs **{total} series**")),
        "docs/metrics.md states another budget than the {total} series of real output"
    );
}
