//! The collectors, and the one list that registers them.
//!
//! A collector is one module or folder with three steps: `fetch` (netlink or files, or
//! the scrape's shared reads in [`common`]), `parse` (pure, bytes to a typed snapshot,
//! unit-tested on captured bytes) and `render` (metric families built on each scrape).
//! It declares its own flags (`--collector.<name>.*`) and builds itself from them in its
//! [`Spec`]; adding a collector is adding its module and one line to [`REGISTRY`].

pub mod common;
pub mod conntrack;
pub mod conntrack_invalid;
pub mod drops;
pub mod interfaces;
pub mod node;
pub mod offload;
pub mod ovs;
pub mod ovs_flows;
pub mod ovsdb;

use std::sync::Arc;

use clap::{ArgMatches, FromArgMatches};

use self::common::{Resources, Scrape};
use crate::render::Family;

/// Why a collector produced nothing this scrape; logged once per distinct message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CollectError {
    pub message: String,
    /// The source is simply not there (module not loaded): logged at info, not warn.
    pub absent: bool,
    /// Another process holds the source (an NFLOG group bound by ulogd or another
    /// exporter): `diagnose` then asks that exporter instead.
    pub taken: bool,
}

impl CollectError {
    pub fn new(message: impl Into<String>) -> Self {
        CollectError {
            message: message.into(),
            absent: false,
            taken: false,
        }
    }

    pub fn absent(message: impl Into<String>) -> Self {
        CollectError {
            absent: true,
            ..CollectError::new(message)
        }
    }

    pub fn taken(message: impl Into<String>) -> Self {
        CollectError {
            taken: true,
            ..CollectError::new(message)
        }
    }
}

pub trait Collector: Send + Sync + 'static {
    /// Runs on the collector's own thread; must not panic and should finish well inside
    /// the timeout. What several collectors read comes from `scrape`.
    fn collect(&self, scrape: &Scrape) -> Result<Vec<Family>, CollectError>;

    /// Why the collector cannot run at all, when that is known at start (a group held by
    /// another process); it is logged then, not at the first scrape.
    fn preflight(&self) -> Result<(), CollectError> {
        Ok(())
    }

    /// Undoes whatever the collector changed on the host; called once, on exit.
    fn shutdown(&self) {}
}

/// A collector's background thread (a listener, a client): started with the collector,
/// joined on shutdown after the collector has told it to stop.
pub struct Worker(std::sync::Mutex<Option<std::thread::JoinHandle<()>>>);

impl Worker {
    pub fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Worker {
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(f)
            .map_err(|e| tracing::error!(thread = name, error = %e, "could not start thread"))
            .ok();
        Worker(std::sync::Mutex::new(handle))
    }

    pub fn join(&self) {
        if let Some(h) = self.0.lock().ok().and_then(|mut t| t.take()) {
            let _ = h.join();
        }
    }
}

/// The enabled collectors, by name, in registry order.
pub type Enabled = Vec<(&'static str, Arc<dyn Collector>)>;

/// How a [`Spec`] builds its collector: from the parsed command line and what collectors
/// share; an error is a usage error (one line).
pub type Build = fn(&ArgMatches, &Arc<Resources>) -> Result<Arc<dyn Collector>, String>;

/// A collector as the command line and the scraper know it.
pub struct Spec {
    pub name: &'static str,
    /// One sentence for `--help`.
    pub help: &'static str,
    pub default_enabled: bool,
    /// The collector's own flags, all named `--collector.<name>.*` (see [`flags`]).
    pub args: fn() -> Vec<clap::Arg>,
    pub build: Build,
}

/// The arguments of a `clap::Args` options struct, for [`Spec::args`]. Give every
/// argument an `id` equal to its long name: all collectors share one command line.
pub fn flags<T: clap::Args>() -> Vec<clap::Arg> {
    T::augment_args(clap::Command::new("collector"))
        .get_arguments()
        .cloned()
        .collect()
}

/// A collector's options read back from the parsed command line.
pub fn options<T: FromArgMatches>(m: &ArgMatches) -> Result<T, String> {
    T::from_arg_matches(m).map_err(|e| e.to_string())
}

/// A collector's options with the given flags (for tests and tools): its own arguments
/// alone, parsed from `argv`.
pub fn options_from<T: clap::Args + FromArgMatches>(argv: &[&str]) -> Result<T, String> {
    let m = T::augment_args(clap::Command::new("collector").no_binary_name(true))
        .try_get_matches_from(argv)
        .map_err(|e| e.to_string())?;
    options(&m)
}

/// Every collector the exporter has. Adding one means adding a module (or folder) and a
/// line here.
pub const REGISTRY: &[Spec] = &[
    interfaces::SPEC,
    conntrack::SPEC,
    conntrack_invalid::SPEC,
    ovs::SPEC,
    ovs_flows::SPEC,
    ovsdb::SPEC,
    offload::SPEC,
    drops::SPEC,
    node::SPEC,
];

pub fn spec(name: &str) -> Option<&'static Spec> {
    REGISTRY.iter().find(|s| s.name == name)
}

/// `cmd` with every collector's own flags and, with `toggles`, its
/// `--collector.<name>` / `--no-collector.<name>` switches.
pub fn with_flags(mut cmd: clap::Command, toggles: bool) -> clap::Command {
    use clap::{Arg, ArgAction};
    for spec in REGISTRY {
        // Listed in registry order, after the exporter's own flags: an order the options
        // got in the collector's own command would interleave them with those.
        cmd = cmd.args(
            (spec.args)()
                .into_iter()
                .map(|a| a.display_order(None::<usize>)),
        );
        if !toggles {
            continue;
        }
        let on = format!("collector.{}", spec.name);
        let off = format!("no-collector.{}", spec.name);
        let default = if spec.default_enabled { "on" } else { "off" };
        // node_exporter names use underscores; accept dashes too (--collector.conntrack-invalid).
        let dashed = spec.name.replace('_', "-");
        cmd = cmd
            .arg(
                Arg::new(on.clone())
                    .long(on.clone())
                    .alias(format!("collector.{dashed}"))
                    .action(ArgAction::SetTrue)
                    .overrides_with(off.clone())
                    .help(format!(
                        "Enable the {} collector (default {default}): {}",
                        spec.name, spec.help
                    )),
            )
            .arg(
                Arg::new(off.clone())
                    .long(off.clone())
                    .alias(format!("no-collector.{dashed}"))
                    .action(ArgAction::SetTrue)
                    .overrides_with(on)
                    .help(format!("Disable the {} collector.", spec.name)),
            );
    }
    cmd
}

/// The collectors the switches of [`with_flags`] enable, in registry order.
pub fn enabled(m: &ArgMatches, disable_defaults: bool) -> Vec<&'static str> {
    REGISTRY
        .iter()
        .filter(|s| {
            let on = m.get_flag(&format!("collector.{}", s.name));
            let off = m.get_flag(&format!("no-collector.{}", s.name));
            !off && (on || (s.default_enabled && !disable_defaults))
        })
        .map(|s| s.name)
        .collect()
}

/// Builds the collectors `names` names, each from its own flags in `m`.
pub fn build(
    names: &[&'static str],
    m: &ArgMatches,
    resources: &Arc<Resources>,
) -> Result<Enabled, String> {
    names
        .iter()
        .filter_map(|name| spec(name))
        .map(|s| Ok((s.name, (s.build)(m, resources)?)))
        .collect()
}
