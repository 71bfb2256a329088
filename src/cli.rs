//! Command line, with node_exporter's flag names, and its translation into collectors.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};

use crate::collectors::common::{Resources, SharedArgs};
use crate::collectors::{self, Enabled, REGISTRY};
use crate::logging::{Format, LogLevel};
use crate::netlink::{CaptureTransport, KernelTransport, ReplayTransport, Transport};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "packetpath-exporter",
    version = LONG_VERSION,
    about = "Prometheus exporter for packet-path health between tunnel and VM ports.",
    after_help = EXIT_STATUS,
    term_width = 200,
    max_term_width = 200
)]
pub struct Args {
    /// Address to listen on for HTTP; ":PORT" listens on every address.
    #[arg(
        long = "web.listen-address",
        value_name = "ADDR",
        default_value = ":9479",
        value_parser = parse_listen_address
    )]
    pub listen_address: String,

    /// Path under which to expose metrics.
    #[arg(long = "web.telemetry-path", value_name = "PATH", default_value = "/metrics", value_parser = parse_http_path)]
    pub telemetry_path: String,

    /// Concurrent scrapes served at most; more get 503 (0: no limit; at most 100000).
    #[arg(long = "web.max-requests", value_name = "N", default_value_t = 40, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub max_requests: u32,

    /// Web configuration file (exporter-toolkit format) that enables TLS and/or basic auth.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Time a client has to send its request headers, also the longest a keep-alive connection may idle (100ms to 1h).
    #[arg(long = "web.read-header-timeout", value_name = "DURATION", default_value = "30s", value_parser = duration_in(WEB_TIMEOUT.0, WEB_TIMEOUT.1))]
    pub read_header_timeout: Duration,

    /// Time a client has to read a response, from its first byte; a client that reads
    /// slower gives its connection back (100ms to 1h).
    #[arg(long = "web.write-timeout", value_name = "DURATION", default_value = "30s", value_parser = duration_in(WEB_TIMEOUT.0, WEB_TIMEOUT.1))]
    pub write_timeout: Duration,

    /// Disable every collector that is on by default; enable some again with --collector.<name>.
    #[arg(long = "collector.disable-defaults")]
    pub disable_defaults: bool,

    /// Only log messages at or above this level.
    #[arg(long = "log.level", value_enum, default_value = "info")]
    pub log_level: LogLevel,

    /// Log line format.
    #[arg(long = "log.format", value_enum, default_value = "logfmt")]
    pub log_format: Format,

    /// Time each collector may take per scrape before it counts as failed (10ms to 1h).
    #[arg(long = "scrape.timeout", value_name = "DURATION", default_value = "5s", value_parser = duration_in(SCRAPE_TIMEOUT.0, SCRAPE_TIMEOUT.1))]
    pub scrape_timeout: Duration,

    /// Where collectors read from and how.
    #[command(flatten)]
    pub sources: Sources,
}

/// Where the collectors read from, and their options; shared with `diagnose`.
#[derive(clap::Args, Debug, Clone)]
pub struct Sources {
    /// Mount point of procfs.
    #[arg(long = "path.procfs", value_name = "DIR", default_value = "/proc")]
    pub procfs: PathBuf,

    /// Mount point of sysfs.
    #[arg(long = "path.sysfs", value_name = "DIR", default_value = "/sys")]
    pub sysfs: PathBuf,

    /// What several collectors share: the device filter and roles, the OVSDB socket.
    #[command(flatten)]
    pub shared: SharedArgs,

    /// Serve netlink replies from DIR/<request>.bin instead of the kernel (for tests).
    #[arg(long = "debug.netlink-replay-dir", value_name = "DIR", hide = true)]
    pub netlink_replay_dir: Option<PathBuf>,

    /// Save every netlink reply to DIR/<request>.bin (to make test fixtures).
    #[arg(long = "debug.netlink-capture-dir", value_name = "DIR", hide = true)]
    pub netlink_capture_dir: Option<PathBuf>,
}

/// HOST:PORT, [IPv6]:PORT or :PORT; whether HOST resolves is the bind's to say.
fn parse_listen_address(s: &str) -> Result<String, String> {
    let bad = || "must be HOST:PORT, [IPv6]:PORT or :PORT".to_owned();
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>()
        .map_err(|_| "the port must be a number from 0 to 65535".to_owned())?;
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_'),
    };
    if !host_ok {
        return Err(bad());
    }
    Ok(s.to_owned())
}

fn parse_http_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err("must start with '/'".into());
    }
    // The router would take these for captures or wildcards, or clash with its own routes.
    if s.contains(['{', '}']) || s.split('/').any(|seg| seg.starts_with([':', '*'])) {
        return Err("must be a plain path (no {, }, :name or *name segments)".into());
    }
    if s == "/-/healthy" || s.contains("//") {
        return Err("must not be /-/healthy or contain an empty segment".into());
    }
    Ok(s.to_owned())
}

/// Accepts Prometheus-style durations: 500ms, 5s, 1m, 1h; never zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 5s"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "{s:?} is not a duration like 5s (units: ms, s, m, h)"
            ));
        }
    };
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// `d` as the flags write it: 500ms, 30s, 5m, 1h.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        _ if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        _ if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        _ if ms % 1000 == 0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// A duration flag's parser, refusing values outside `min..=max` (a usage error, with
/// the range): time arithmetic on flag values then never overflows.
pub fn duration_in(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let d = parse_duration(s)?;
        if d < min || d > max {
            return Err(format!(
                "must be from {} to {}",
                show_duration(min),
                show_duration(max)
            ));
        }
        Ok(d)
    }
}

/// The ranges of the duration flags.
pub const WEB_TIMEOUT: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));
pub const SCRAPE_TIMEOUT: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(3600));
pub const DIAGNOSE_INTERVAL: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(24 * 3600));

/// Parsed command line: the typed flags plus which collectors are enabled.
pub struct Cli {
    pub args: Args,
    pub enabled: Vec<&'static str>,
    /// Every flag as parsed; collectors read their own options from it.
    pub matches: ArgMatches,
}

/// The exporter's command line: the exporter itself with no subcommand, and `diagnose`
/// (which `main` hands its arguments to when it comes first), listed with `help`.
fn command() -> clap::Command {
    collectors::with_flags(Args::command(), true)
        .subcommand(crate::diagnose::command().name("diagnose"))
        .args_conflicts_with_subcommands(true)
}

/// `--version`: the crate version and the revision packetpath_exporter_build_info carries.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("PACKETPATH_REVISION"),
    ")"
);

/// The exit statuses, as `--help` and docs/flags.md give them.
pub const EXIT_STATUS: &str = "Exit status: 0 stopped by SIGTERM or SIGINT (after undoing what it changed on the host); 1 could not run (a port in use, a path it cannot read, a collector that cannot be set up); 2 bad usage (a flag or value it does not take). `diagnose --help` gives diagnose's.";

/// Why the program should exit instead of running.
pub enum Exit {
    /// --help or --version: print to stdout, exit 0.
    Info(String),
    /// Bad input: one line for stderr, exit 2.
    Usage(String),
}

pub fn parse_from<I, T>(argv: I) -> Result<Cli, Exit>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command().try_get_matches_from(argv).map_err(clap_exit)?;
    let args = Args::from_arg_matches(&matches).map_err(clap_exit)?;
    let enabled = collectors::enabled(&matches, args.disable_defaults);
    Ok(Cli {
        args,
        enabled,
        matches,
    })
}

fn clap_exit(e: clap::Error) -> Exit {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Exit::Info(e.to_string()),
        _ => {
            if e.kind() == ErrorKind::UnknownArgument {
                if let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
                    let flag = arg.split('=').next().unwrap_or(arg);
                    let name = flag
                        .strip_prefix("--collector.")
                        .or_else(|| flag.strip_prefix("--no-collector."));
                    if let Some(name) = name.filter(|n| !n.contains('.')) {
                        let known: Vec<_> = REGISTRY.iter().map(|s| s.name).collect();
                        let near = known
                            .iter()
                            .filter(|k| edits(k, name) <= 2)
                            .min_by_key(|k| edits(k, name));
                        return Exit::Usage(format!(
                            "unknown collector {name:?} (known: {}){}",
                            known.join(", "),
                            near.map(|k| format!("; did you mean {k:?}?"))
                                .unwrap_or_default()
                        ));
                    }
                }
            }
            Exit::Usage(one_line(&e))
        }
    }
}

/// The edit distance between two names (Levenshtein), for suggestions.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A clap error as one line: its first, with the values the flag takes and clap's tip (a
/// flag or value of a similar name) when it gives them.
pub fn one_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("invalid arguments");
    let mut out = first.strip_prefix("error: ").unwrap_or(first).to_owned();
    for l in lines.map(str::trim) {
        if let Some(tip) = l.strip_prefix("tip: ") {
            out.push_str("; ");
            out.push_str(tip);
        } else if l.starts_with("[possible values:") {
            out.push(' ');
            out.push_str(l);
        }
    }
    out
}

fn check_dir(flag: &str, p: &Path) -> Result<(), String> {
    std::fs::read_dir(p)
        .map(|_| ())
        .map_err(|e| format!("{flag} {}: {e}", p.display()))
}

impl Cli {
    /// Checks the paths and builds the enabled collectors.
    pub fn build(&self) -> Result<(Enabled, Arc<Resources>), String> {
        build(
            &self.args.sources,
            &self.matches,
            &self.enabled,
            self.args.scrape_timeout,
        )
    }
}

/// Checks the paths and builds what collectors share and the collectors `enabled` names,
/// each from its own flags in `matches`.
pub fn build(
    a: &Sources,
    matches: &ArgMatches,
    enabled: &[&'static str],
    timeout: Duration,
) -> Result<(Enabled, Arc<Resources>), String> {
    check_dir("--path.procfs", &a.procfs)?;
    check_dir("--path.sysfs", &a.sysfs)?;
    let kernel = KernelTransport::new(timeout);
    let transport: Arc<dyn Transport> = match (&a.netlink_replay_dir, &a.netlink_capture_dir) {
        (Some(dir), _) => {
            check_dir("--debug.netlink-replay-dir", dir)?;
            Arc::new(ReplayTransport { dir: dir.clone() })
        }
        (None, Some(dir)) => {
            check_dir("--debug.netlink-capture-dir", dir)?;
            Arc::new(CaptureTransport {
                inner: kernel,
                dir: dir.clone(),
            })
        }
        (None, None) => Arc::new(kernel),
    };
    let resources = Resources::new(a.procfs.clone(), a.sysfs.clone(), transport, &a.shared);
    let built = collectors::build(enabled, matches, &resources)?;
    Ok((built, resources))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(args: &[&str]) -> String {
        match parse_from(std::iter::once("packetpath-exporter").chain(args.iter().copied())) {
            Err(Exit::Usage(s)) => s,
            Err(Exit::Info(_)) => panic!("info for {args:?}"),
            Ok(_) => panic!("accepted {args:?}"),
        }
    }

    fn enabled(args: &[&str]) -> Vec<&'static str> {
        match parse_from(std::iter::once("packetpath-exporter").chain(args.iter().copied())) {
            Ok(c) => c.enabled,
            Err(_) => panic!("rejected {args:?}"),
        }
    }

    #[test]
    fn collector_selection() {
        assert_eq!(
            enabled(&[]),
            vec![
                "interfaces",
                "conntrack",
                "ovs",
                "ovs_flows",
                "ovsdb",
                "offload",
                "node"
            ]
        );
        assert_eq!(
            enabled(&["--no-collector.conntrack", "--no-collector.ovs_flows"]),
            vec!["interfaces", "ovs", "ovsdb", "offload", "node"]
        );
        assert_eq!(
            enabled(&["--collector.disable-defaults", "--collector.conntrack"]),
            vec!["conntrack"]
        );
        // The last of --collector.X / --no-collector.X wins.
        assert_eq!(
            enabled(&[
                "--collector.disable-defaults",
                "--no-collector.interfaces",
                "--collector.interfaces"
            ]),
            vec!["interfaces"]
        );
    }

    #[test]
    fn bad_input_is_one_line() {
        assert_eq!(
            usage(&["--collector.bogus"]),
            "unknown collector \"bogus\" (known: interfaces, conntrack, conntrack_invalid, ovs, ovs_flows, ovsdb, offload, drops, node)"
        );
        assert_eq!(
            usage(&["--no-collector.bogus"]),
            "unknown collector \"bogus\" (known: interfaces, conntrack, conntrack_invalid, ovs, ovs_flows, ovsdb, offload, drops, node)"
        );
        let re = usage(&["--collector.interfaces.device-include", "(tap"]);
        assert!(
            re.starts_with("invalid value '(tap' for '--collector.interfaces.device-include"),
            "{re}"
        );
        assert!(re.contains("unclosed group"), "{re}");
        assert!(!re.contains('\n'));
        assert!(usage(&["--scrape.timeout", "5x"]).contains("not a duration"));
        assert_eq!(
            usage(&["--collector.ovs_flow"]),
            "unknown collector \"ovs_flow\" (known: interfaces, conntrack, conntrack_invalid, ovs, ovs_flows, ovsdb, offload, drops, node); did you mean \"ovs_flows\"?"
        );
        assert_eq!(
            usage(&["--web.listen-adress=:1"]),
            "unexpected argument '--web.listen-adress' found; a similar argument exists: '--web.listen-address'"
        );
        assert_eq!(
            usage(&["--log.level=trace"]),
            "invalid value 'trace' for '--log.level <LOG_LEVEL>' [possible values: debug, info, warn, error]"
        );
        for bad in ["bogus:x", "9479", "a b:1", "[::1:80", ":70000"] {
            let u = usage(&[&format!("--web.listen-address={bad}")]);
            assert!(u.starts_with("invalid value"), "{bad}: {u}");
        }
        for good in [
            ":9479",
            "127.0.0.1:0",
            "[::1]:9479",
            "localhost:9479",
            "node-1.example:80",
        ] {
            assert!(parse_listen_address(good).is_ok(), "{good}");
        }
        assert_eq!(edits("ovs_flow", "ovs_flows"), 1);
        assert_eq!(edits("conntrak", "conntrack"), 1);
    }

    #[test]
    fn telemetry_paths() {
        assert_eq!(parse_http_path("/metrics"), Ok("/metrics".into()));
        assert_eq!(parse_http_path("/"), Ok("/".into()));
        for bad in [
            "metrics",
            "/-/healthy",
            "/:x",
            "/*rest",
            "/{",
            "/a{b",
            "/a//b",
        ] {
            assert!(parse_http_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(show_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(show_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(
            usage(&["--web.read-header-timeout=9300000000000000000s"]),
            "invalid value '9300000000000000000s' for '--web.read-header-timeout <DURATION>': must be from 100ms to 1h"
        );
    }

    /// Every duration flag of both commands, fed extremes: a usage error or a value in its
    /// range, whose deadline from now exists; never a panic.
    #[test]
    fn every_duration_flag_takes_extremes_without_overflow() {
        let commands = [
            command(),
            crate::collectors::with_flags(
                <crate::diagnose::Args as clap::CommandFactory>::command(),
                false,
            ),
        ];
        let extremes = [
            "0s",
            "1ms",
            "99ms",
            "100ms",
            "1h",
            "24h",
            "25h",
            "18446744073709551615ms",
            "18446744073709551615s",
            "18446744073709551615m",
            "18446744073709551615h",
            "18446744073709551616s",
            "99999999999999999999999h",
            "-1s",
            "1.5s",
            "5",
            "",
            "5\u{0}s",
        ];
        let mut flags = 0;
        for cmd in commands {
            for arg in cmd.get_arguments() {
                let Some(names) = arg.get_value_names() else {
                    continue;
                };
                if names.iter().all(|n| n.as_str() != "DURATION") {
                    continue;
                }
                flags += 1;
                let long = arg.get_long().unwrap();
                for v in extremes {
                    let got = cmd
                        .clone()
                        .try_get_matches_from(["x".to_owned(), format!("--{long}={v}")]);
                    let Ok(m) = got else { continue };
                    let d = *m.get_one::<Duration>(arg.get_id().as_str()).unwrap();
                    assert!(
                        !d.is_zero() && d <= Duration::from_secs(24 * 3600),
                        "--{long}={v} gave {d:?}"
                    );
                    assert!(std::time::Instant::now().checked_add(d).is_some());
                    assert!(tokio::time::Instant::now().checked_add(d).is_some());
                }
            }
        }
        // --web.read-header-timeout, --web.write-timeout, --scrape.timeout and diagnose's
        // --interval.
        assert_eq!(flags, 4);
    }
}
