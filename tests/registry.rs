//! The registry is the one list of collectors: `--help`, the collector table of docs/flags.md and the
//! golden expositions name the same set, derived from it here.

use std::collections::BTreeSet;

use packetpath_exporter::cli::{Exit, parse_from};
use packetpath_exporter::collectors::REGISTRY;

fn registry() -> BTreeSet<&'static str> {
    REGISTRY.iter().map(|s| s.name).collect()
}

fn read(p: &str) -> String {
    std::fs::read_to_string(format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn help_lists_every_collector_and_no_other() {
    let Err(Exit::Info(help)) = parse_from(["packetpath-exporter", "--help"]) else {
        panic!("--help did not print help");
    };
    let toggles: BTreeSet<&str> = help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--collector."))
        .filter(|name| !name.contains(['.', '<']) && *name != "disable-defaults")
        .collect();
    assert_eq!(toggles, registry(), "{help}");
    for s in REGISTRY {
        let default = if s.default_enabled { "on" } else { "off" };
        assert!(
            help.contains(&format!(
                "Enable the {} collector (default {default})",
                s.name
            )),
            "{help}"
        );
        // Every flag of the collector's own is under its name.
        for arg in (s.args)() {
            let long = arg.get_long().unwrap_or_default();
            assert!(
                long.starts_with(&format!("collector.{}.", s.name)),
                "{} declares --{long}",
                s.name
            );
            assert!(help.contains(&format!("--{long}")), "--{long} not in help");
            // Listed with its collector, after the exporter's own flags.
            let at = |flag: &str| help.find(&format!("--{flag} ")).unwrap_or(0);
            assert!(
                at(long) > at("path.sysfs"),
                "--{long} among the exporter's own flags"
            );
            assert!(
                at(long) < at(&format!("no-collector.{}", s.name)),
                "--{long} away from its collector"
            );
        }
    }
}

#[test]
fn readme_collector_table_is_the_registry() {
    let readme = read("docs/flags.md");
    let table = readme
        .split("\nCollectors:\n")
        .nth(1)
        .expect("docs/flags.md has a Collectors: table");
    let rows: Vec<(&str, &str)> = table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .filter_map(|l| {
            let mut cells = l.split('|').map(str::trim).skip(1);
            let name = cells.next()?.trim_matches('`');
            let default = cells.next()?.trim_matches('*');
            Some((name, default))
        })
        .collect();
    let named: BTreeSet<&str> = rows.iter().map(|(n, _)| *n).collect();
    assert_eq!(named, registry());
    for (name, default) in rows {
        let spec = REGISTRY.iter().find(|s| s.name == name).unwrap();
        let want = if spec.default_enabled { "on" } else { "off" };
        assert_eq!(default, want, "docs/flags.md's default for {name}");
    }
}

#[test]
fn golden_expositions_cover_the_registry() {
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(format!("{}/tests/golden", env!("CARGO_MANIFEST_DIR"))).unwrap()
    {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("packetpath_scrape_collector_success{collector=\"") {
                seen.insert(rest.split('"').next().unwrap().to_owned());
            }
        }
    }
    let seen: BTreeSet<&str> = seen.iter().map(String::as_str).collect();
    assert!(seen.is_subset(&registry()), "goldens name {seen:?}");
    // Goldens replay captured netlink replies. The collectors they leave out change host
    // state as they start (off by default): conntrack_invalid is proven against the kernel
    // in tests/netns_conntrack_invalid.rs, drops (the kernel-wide drop monitor, which this
    // host's kernel lacks) in the qemu bed, tests/kernel_drops_vm.rs.
    let missing: Vec<&str> = registry().difference(&seen).copied().collect();
    assert_eq!(missing, ["conntrack_invalid", "drops"]);
}
