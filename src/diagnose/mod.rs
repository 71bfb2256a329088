//! `packetpath-exporter diagnose`: the seed incident's evidence chain in one command.
//!
//! Two samples of every series, `--interval` apart, from this host's collectors (the same
//! code the exporter runs, no HTTP server) or from a running exporter (`--from URL`),
//! read back through the text format so both paths analyse the same thing; then a report
//! and one verdict. Exit status: 0 no loss signal, 1 a loss signal, 2 usage errors or no
//! source readable at all, 128 + N after signal N (settings restored first).

pub mod analysis;
pub mod client;
pub mod exposition;
pub mod kernel_drops;
pub mod output;
pub mod verdict;

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::cli::{DIAGNOSE_INTERVAL, Sources, duration_in};
use crate::collectors::REGISTRY;
use crate::collectors::conntrack_invalid::{self, CLASS_FAMILY};
use crate::logging::{Format as LogFormat, LogLevel};
use crate::scrape::Scraper;
use analysis::Context;
use client::{ClientOptions, Url};
use exposition::Sample;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Parser, Debug)]
#[command(
    name = "packetpath-exporter diagnose",
    about = "Where packets die between the tunnel and a VM's TAP: two samples --interval apart, the evidence chain, one verdict.",
    long_about = "Where packets die between the tunnel and a VM's TAP.\n\n\
        Takes two samples --interval apart, from this host's kernel (the exporter's collectors, no HTTP server) or from a running exporter (--from URL), and prints, per tunnel and VM port: what arrived on the tunnel, what was delivered to the VM, which datapath flows dropped packets and why, conntrack-invalid packets and (when it can classify them) why, the conntrack settings, and the offloads of the devices involved; then one verdict with the likely fix.\n\n\
        With CAP_NET_ADMIN and NFLOG group 0 free it classifies invalid packets itself for the interval and restores every setting it changed; when an exporter owns the group it uses that exporter's numbers (--exporter).\n\n\
        Exit status: 0 no loss signal; 1 a loss signal; 2 bad usage, or no source could be read at all; 130 on Ctrl-C (after restoring what it changed). A source this host lacks (no OVS, no ethtool netlink) is reported, not an error.",
    term_width = 100,
    max_term_width = 100
)]
pub struct Args {
    /// Time between the two samples (ms, s, m, h; 100ms to 24h).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration_in(DIAGNOSE_INTERVAL.0, DIAGNOSE_INTERVAL.1))]
    pub interval: Duration,

    /// Output format: text (tables; colour and a countdown on a terminal) or json.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,

    /// Read a running exporter's metrics instead of this host's kernel (http or https URL; user:password@ for basic auth).
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,

    /// CA certificates (PEM) that sign the exporter's certificate; default the system's.
    #[arg(long = "from.ca-file", value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,

    /// Client certificate (PEM) for an exporter that asks for one.
    #[arg(long = "from.cert-file", value_name = "FILE")]
    pub cert_file: Option<std::path::PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long = "from.key-file", value_name = "FILE")]
    pub key_file: Option<std::path::PathBuf>,

    /// Do not verify the exporter's certificate.
    #[arg(long = "from.insecure-skip-verify")]
    pub insecure_skip_verify: bool,

    /// Basic auth user name.
    #[arg(long = "from.username", value_name = "USER")]
    pub username: Option<String>,

    /// File holding the basic auth password.
    #[arg(long = "from.password-file", value_name = "FILE")]
    pub password_file: Option<std::path::PathBuf>,

    /// The local exporter whose conntrack_invalid numbers to use when it owns NFLOG group 0 (the --from.* TLS and auth flags apply to it).
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:9479/metrics"
    )]
    pub exporter: String,

    /// Log messages at or above this level on stderr (collectors' own reasons are in the report).
    #[arg(long = "log.level", value_enum, default_value = "error")]
    pub log_level: LogLevel,

    #[command(flatten)]
    pub sources: Sources,

    /// Every flag as parsed, for the collectors' own options.
    #[arg(skip)]
    pub matches: clap::ArgMatches,
}

/// `diagnose`'s command line, with the collectors' flags.
pub fn command() -> clap::Command {
    crate::collectors::with_flags(Args::command(), false)
}

/// Runs the subcommand on `argv` (the words after `diagnose`).
pub fn main(argv: Vec<OsString>) -> ExitCode {
    let args = std::iter::once(OsString::from("packetpath-exporter diagnose")).chain(argv);
    let matches = command().try_get_matches_from(args);
    let args = match matches.and_then(|m| {
        Args::from_arg_matches(&m).map(|mut a| {
            a.matches = m;
            a
        })
    }) {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = std::io::Write::write_all(&mut std::io::stdout(), e.to_string().as_bytes());
                return ExitCode::SUCCESS;
            }
            eprintln!("packetpath-exporter diagnose: {}", crate::cli::one_line(&e));
            return ExitCode::from(2);
        }
    };
    crate::logging::init(args.log_level, LogFormat::Logfmt);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("packetpath-exporter diagnose: start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let format = args.format;
    match runtime.block_on(run(args)) {
        Ok(report) => {
            let text = match format {
                Format::Json => output::json(&report),
                Format::Text => output::text(&report, &style()),
            };
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
            ExitCode::from(u8::from(report.verdict.loss))
        }
        Err(f) => {
            eprintln!("packetpath-exporter diagnose: {}", f.line);
            ExitCode::from(f.code)
        }
    }
}

/// Colour and width on a terminal, plain text when piped.
fn style() -> output::Style {
    let tty = std::io::stdout().is_terminal();
    output::Style {
        colour: tty && std::env::var_os("NO_COLOR").is_none(),
        width: tty.then(terminal_width).flatten(),
    }
}

fn terminal_width() -> Option<usize> {
    // SAFETY: TIOCGWINSZ fills a winsize; fd 1 is only read.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_col > 0 {
        return Some(usize::from(ws.ws_col));
    }
    std::env::var("COLUMNS").ok()?.parse().ok()
}

/// SIGINT, SIGTERM and SIGHUP (a closed ssh session), caught from the start: once settings are changed, a signal must
/// end in their restoration, never in the default handler's immediate exit.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> Result<Signals, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let err = |e: std::io::Error| format!("signal handler: {e}");
        Ok(Signals {
            int: signal(SignalKind::interrupt()).map_err(err)?,
            term: signal(SignalKind::terminate()).map_err(err)?,
            hup: signal(SignalKind::hangup()).map_err(err)?,
        })
    }
}

/// Waits out the interval, counting down on stderr when it is a terminal; Ctrl-C or
/// SIGTERM ends the wait early with 128 + the signal (the caller restores what it changed).
async fn countdown(signals: &mut Signals, interval: Duration) -> Result<(), Failure> {
    let tty = std::io::stderr().is_terminal();
    let now = Instant::now();
    // The flag bounds the interval; no instant past the clock's end either way.
    let end = now.checked_add(interval).unwrap_or(now);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if tty {
            eprint!("\rsampling: {} s left ", left.as_secs_f64().ceil() as u64);
        }
        let tick = left.min(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = signals.int.recv() => return Err(Failure { line: "interrupted".into(), code: 130 }),
            _ = signals.term.recv() => return Err(Failure { line: "terminated".into(), code: 143 }),
            _ = signals.hup.recv() => return Err(Failure { line: "hung up".into(), code: 129 }),
        }
    }
    if tty {
        eprint!("\r\x1b[K");
    }
    Ok(())
}

fn parse(text: &str, what: &str) -> Result<Vec<Sample>, String> {
    exposition::parse(text).map_err(|e| format!("{what} is not Prometheus metrics: {e}"))
}

fn client_options(a: &Args) -> ClientOptions {
    ClientOptions {
        ca_file: a.ca_file.clone(),
        cert_file: a.cert_file.clone(),
        key_file: a.key_file.clone(),
        insecure_skip_verify: a.insecure_skip_verify,
        username: a.username.clone(),
        password_file: a.password_file.clone(),
    }
}

async fn remote(url: &Url, o: &ClientOptions) -> Result<Vec<Sample>, Failure> {
    let text = client::fetch(url, o)
        .await
        .map_err(|e| Failure::usage(format!("cannot read {url}: {e}")))?;
    parse(&text, &url.to_string()).map_err(Failure::usage)
}

/// Why there is no report: one line, and the exit status (2, or 130 for a signal).
pub struct Failure {
    pub line: String,
    pub code: u8,
}

impl Failure {
    fn usage(line: impl Into<String>) -> Failure {
        Failure {
            line: line.into(),
            code: 2,
        }
    }
}

/// At least one source other than the classifier was read, or there is nothing to say.
fn readable(report: &analysis::Report) -> Result<(), Failure> {
    if report
        .sources
        .iter()
        .any(|s| s.ok && s.collector != "conntrack_invalid")
    {
        return Ok(());
    }
    let why: Vec<String> = report
        .sources
        .iter()
        .map(|s| match &s.note {
            Some(n) => format!("{}: {n}", s.collector),
            None => s.collector.clone(),
        })
        .collect();
    Err(Failure::usage(if why.is_empty() {
        format!("{} has no packetpath collector series", report.source)
    } else {
        format!("no source could be read ({})", why.join("; "))
    }))
}

async fn run(a: Args) -> Result<analysis::Report, Failure> {
    let mut signals = Signals::register().map_err(Failure::usage)?;
    if let Some(raw) = &a.from {
        let url = Url::parse(raw).map_err(Failure::usage)?;
        let o = client_options(&a);
        let before = remote(&url, &o).await?;
        let t0 = Instant::now();
        countdown(&mut signals, a.interval).await?;
        let after = remote(&url, &o).await?;
        let classifying = after.iter().any(|s| s.name == CLASS_FAMILY);
        let classifier = if classifying {
            format!("classified by the exporter at {url}")
        } else {
            format!(
                "not classified: the exporter at {url} does not run the conntrack_invalid collector"
            )
        };
        let ctx = Context {
            source: format!("the exporter at {url}"),
            interval_seconds: t0.elapsed().as_secs_f64(),
            classifier,
            classifying,
        };
        let report = analysis::analyse(&before, &after, ctx);
        readable(&report)?;
        return Ok(report);
    }
    local(a, &mut signals).await
}

/// Undoes every collector's changes however `local` ends.
struct Restore(Arc<Scraper>);

impl Drop for Restore {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// One sample of this host, and of the exporter that owns NFLOG group 0 when there is one.
async fn sample(
    scraper: &Arc<Scraper>,
    exporter: Option<&(Url, ClientOptions)>,
) -> Result<(Vec<Sample>, Option<Result<Vec<Sample>, Failure>>), Failure> {
    let ours = parse(
        &String::from_utf8_lossy(&scraper.scrape().await),
        "this host",
    )
    .map_err(Failure::usage)?;
    let theirs = match exporter {
        Some((url, o)) => Some(remote(url, o).await),
        None => None,
    };
    Ok((ours, theirs))
}

async fn local(a: Args, signals: &mut Signals) -> Result<analysis::Report, Failure> {
    let names: Vec<&'static str> = REGISTRY.iter().map(|s| s.name).collect();
    let timeout = Duration::from_secs(5);
    let (collectors, resources) =
        crate::cli::build(&a.sources, &a.matches, &names, timeout).map_err(Failure::usage)?;
    let scraper = Scraper::new(collectors, resources, timeout);
    let _restore = Restore(scraper.clone());
    // The exporter owning NFLOG group 0 has the classification; read its numbers too.
    let group = scraper.failure("conntrack_invalid");
    let taken = group.as_ref().is_some_and(|e| e.taken);
    let exporter = match taken {
        true => Some((
            Url::parse(&a.exporter).map_err(Failure::usage)?,
            client_options(&a),
        )),
        false => None,
    };
    let (mut before, theirs_before) = sample(&scraper, exporter.as_ref()).await?;
    let t0 = Instant::now();
    countdown(signals, a.interval).await?;
    let (mut after, theirs_after) = sample(&scraper, exporter.as_ref()).await?;
    // A listener that died during the interval did not classify all of it.
    let group_after = scraper.failure("conntrack_invalid");
    scraper.shutdown();

    let shown = exporter
        .as_ref()
        .map_or(a.exporter.clone(), |(u, _)| u.to_string());
    let (classifier, classifying) = match (group.clone(), theirs_before, theirs_after) {
        (None, ..) => match group_after {
            None => ("classified here for the interval (nf_conntrack_log_invalid set to log to NFLOG group 0, then restored)".to_owned(), true),
            Some(why) => (format!("classified here for part of the interval only: {why}"), false),
        },
        (Some(_), Some(Ok(b)), Some(Ok(af))) if taken => {
            // The classifier's series, and the invalid packets it attributes to VM ports.
            let theirs = |v: Vec<Sample>| -> Vec<Sample> {
                v.into_iter()
                    .filter(|s| {
                        conntrack_invalid::exports(&s.name)
                            || s.name == crate::metrics::VM_PORT_CONNTRACK_INVALID_PACKETS
                    })
                    .collect()
            };
            let (b, af) = (theirs(b), theirs(af));
            let used = af.iter().any(|s| s.name == CLASS_FAMILY);
            before.extend(b);
            after.extend(af);
            if used {
                (format!("NFLOG group 0 is owned by the exporter at {shown}; its classification is used"), true)
            } else {
                (format!("NFLOG group 0 is owned by another process, and the exporter at {shown} does not classify"), false)
            }
        }
        (Some(_), b, af) if taken => {
            let why = [b, af]
                .into_iter()
                .flatten()
                .find_map(Result::err)
                .map(|f| f.line)
                .unwrap_or_default();
            (format!("NFLOG group 0 is owned by another process (ulogd or an exporter): no classification ({why})"), false)
        }
        (Some(why), ..) => (format!("not classified: {why}"), false),
    };
    let mut report = analysis::analyse(
        &before,
        &after,
        Context {
            source: format!("this host ({})", hostname()),
            interval_seconds: t0.elapsed().as_secs_f64(),
            classifier,
            classifying,
        },
    );
    if group.is_none() {
        // The value diagnose itself set for the interval says nothing about the host.
        report.settings.remove("nf_conntrack_log_invalid");
    }
    for s in &mut report.sources {
        if !s.ok {
            s.note = scraper.failure(&s.collector).map(|e| e.message);
        }
    }
    readable(&report)?;
    Ok(report)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}
