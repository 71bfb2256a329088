//! Bad input ends the program with one clear line on stderr and a non-zero status.

mod common;

use common::{one_line_error, run};

#[test]
fn invalid_regex() {
    one_line_error(
        &["--collector.interfaces.tunnel-regex=geneve(["],
        2,
        "invalid value 'geneve([' for '--collector.interfaces.tunnel-regex <REGEX>': regex parse error",
    );
}

#[test]
fn unknown_collector() {
    let known: Vec<&str> = packetpath_exporter::collectors::REGISTRY
        .iter()
        .map(|s| s.name)
        .collect();
    one_line_error(
        &["--collector.conntrack_bogus"],
        2,
        &format!(
            "unknown collector \"conntrack_bogus\" (known: {})",
            known.join(", ")
        ),
    );
}

#[test]
fn unknown_flag() {
    one_line_error(
        &["--web.listen-adress=:1"],
        2,
        "unexpected argument '--web.listen-adress' found; a similar argument exists: '--web.listen-address'",
    );
    one_line_error(
        &["--log.level=trace"],
        2,
        "[possible values: debug, info, warn, error]",
    );
}

/// Usage errors exit 2, whatever the flag: a listen address that is no address, and
/// duration flags past their range (which once overflowed the clock on every connection).
#[test]
fn usage_errors_exit_two() {
    one_line_error(
        &["--web.listen-address=bogus:x"],
        2,
        "invalid value 'bogus:x' for '--web.listen-address <ADDR>': the port must be a number from 0 to 65535",
    );
    for flag in [
        "--web.read-header-timeout",
        "--web.write-timeout",
        "--scrape.timeout",
    ] {
        one_line_error(
            &[&format!("{flag}=9300000000000000000s")],
            2,
            "must be from",
        );
    }
    one_line_error(
        &["--web.max-requests=18446744073709551616"],
        2,
        "--web.max-requests",
    );
}

#[test]
fn unreadable_paths() {
    one_line_error(
        &["--path.procfs=/nonexistent/proc"],
        1,
        "--path.procfs /nonexistent/proc: No such file or directory",
    );
    one_line_error(
        &["--path.sysfs=/etc/hostname"],
        1,
        "--path.sysfs /etc/hostname: Not a directory",
    );
}

#[test]
fn port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    one_line_error(
        &[
            &format!("--web.listen-address={addr}"),
            "--path.procfs=/proc",
        ],
        1,
        &format!("listen on {addr}: Address already in use"),
    );
}

#[test]
fn version_and_help() {
    let (c, out, _) = run(&["--version"]);
    assert_eq!(c, 0);
    // The version and the revision packetpath_exporter_build_info carries.
    let revision = out
        .strip_prefix(&format!(
            "packetpath-exporter {} (revision ",
            env!("CARGO_PKG_VERSION")
        ))
        .and_then(|r| r.strip_suffix(")\n"))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(
        revision == "unknown" || revision.chars().all(|c| c.is_ascii_hexdigit()),
        "{out:?}"
    );
    let (c, help, _) = run(&["--help"]);
    assert_eq!(c, 0);
    for flag in [
        "--web.listen-address",
        "--web.telemetry-path",
        "--web.max-requests",
        "--collector.disable-defaults",
        "--path.procfs",
        "--path.sysfs",
        "--log.level",
        "--log.format",
        "--collector.interfaces.device-include",
        "--collector.interfaces.device-exclude",
        "--collector.interfaces.tunnel-regex",
        "--collector.interfaces.vm-regex",
        "--collector.conntrack.per-cpu",
        "--collector.ovs_flows.max-flows",
        "--collector.ovs",
        "--no-collector.ovs_flows",
        "--collector.interfaces",
        "--no-collector.interfaces",
        "--collector.conntrack",
        "--no-collector.conntrack",
    ] {
        // One line per flag: the flag, then its description on the same line.
        let line = help
            .lines()
            .find(|l| l.split_whitespace().next() == Some(flag))
            .unwrap_or_else(|| panic!("--help lacks {flag}:\n{help}"));
        let described = line.trim_start().trim_start_matches(flag).trim_start();
        let described = described
            .strip_prefix('<')
            .map_or(described, |r| r.split_once('>').unwrap().1);
        assert!(
            described.trim().len() > 10,
            "{flag} has no description on its line: {line:?}"
        );
    }
    assert!(!help.contains("--debug."), "debug flags are hidden");
    assert!(
        help.contains("Exit status: 0 stopped by SIGTERM or SIGINT")
            && help.contains("2 bad usage"),
        "{help}"
    );
    // diagnose is a subcommand --help lists, and `help` explains either.
    assert!(
        help.lines()
            .any(|l| l.trim_start().starts_with("diagnose  Where packets die")),
        "{help}"
    );
    let (c, out, _) = run(&["help"]);
    assert_eq!((c, out.lines().next()), (0, help.lines().next()));
    let (c, out, _) = run(&["help", "diagnose"]);
    assert_eq!(c, 0);
    assert!(
        out.starts_with("Where packets die between the tunnel and a VM's TAP."),
        "{out}"
    );
    assert!(
        out.contains("Usage: packetpath-exporter diagnose [OPTIONS]"),
        "{out}"
    );
    // Its flags after the exporter's are a usage error, not a silent exporter run.
    one_line_error(
        &["--log.level=debug", "diagnose"],
        2,
        "the subcommand 'diagnose' cannot be used with '--log.level <LOG_LEVEL>'",
    );
}

#[test]
fn telemetry_path_the_router_would_misread() {
    for bad in ["/:metrics", "/{x}", "/-/healthy"] {
        one_line_error(
            &[&format!("--web.telemetry-path={bad}")],
            2,
            "--web.telemetry-path",
        );
    }
}
