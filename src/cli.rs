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
    version,
    about = "Prometheus exporter for packet-path health between tunnel and VM ports.",
    term_width = 200,
    max_term_width = 200
)]
pub struct Args {
    /// Address to listen on for HTTP; ":PORT" listens on every address.
    #[arg(
        long = "web.listen-address",
        value_name = "ADDR",
        default_value = ":9479"
    )]
    pub listen_address: String,

    /// Path under which to expose metrics.
    #[arg(long = "web.telemetry-path", value_name = "PATH", default_value = "/metrics", value_parser = parse_http_path)]
    pub telemetry_path: String,

    /// Concurrent scrapes served at most; more get 503 (0: no limit).
    #[arg(long = "web.max-requests", value_name = "N", default_value_t = 40)]
    pub max_requests: usize,

    /// Web configuration file (exporter-toolkit format) that enables TLS and/or basic auth.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Time a client has to send its request headers, also the longest a keep-alive connection may idle.
    #[arg(long = "web.read-header-timeout", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub read_header_timeout: Duration,

    /// Time a client has to read a response, from its first byte; a client that reads
    /// slower gives its connection back.
    #[arg(long = "web.write-timeout", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
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

    /// Time each collector may take per scrape before it counts as failed.
    #[arg(long = "scrape.timeout", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
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

/// Accepts Prometheus-style durations: 500ms, 5s, 1m.
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
        _ => return Err(format!("{s:?} is not a duration like 5s (units: ms, s, m)")),
    };
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// Parsed command line: the typed flags plus which collectors are enabled.
pub struct Cli {
    pub args: Args,
    pub enabled: Vec<&'static str>,
    /// Every flag as parsed; collectors read their own options from it.
    pub matches: ArgMatches,
}

fn command() -> clap::Command {
    collectors::with_flags(Args::command(), true)
}

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
                        return Exit::Usage(format!(
                            "unknown collector {name:?} (known: {})",
                            known.join(", ")
                        ));
                    }
                }
            }
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            Exit::Usage(first.strip_prefix("error: ").unwrap_or(first).to_owned())
        }
    }
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
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("s").is_err());
    }
}
