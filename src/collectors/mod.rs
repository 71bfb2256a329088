//! The collectors, and the one list that registers them.
//!
//! Every collector is one module with three steps: `fetch` (netlink or files), `parse`
//! (pure, bytes to a typed snapshot, unit-tested on captured bytes) and `render` (const
//! metric families built on each scrape).

pub mod conntrack;
pub mod conntrack_invalid;
pub mod interfaces;
pub mod offload;
pub mod ovs;
pub mod ovs_flows;
pub mod ovsdb;
pub mod shared;

use std::path::PathBuf;
use std::sync::Arc;

use crate::netlink::Transport;
use crate::render::Family;
use crate::roles::RoleRules;

/// Why a collector produced nothing this scrape; logged once per distinct message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CollectError {
    pub message: String,
    /// The source is simply not there (module not loaded): logged at info, not warn.
    pub absent: bool,
}

impl CollectError {
    pub fn new(message: impl Into<String>) -> Self {
        CollectError {
            message: message.into(),
            absent: false,
        }
    }

    pub fn absent(message: impl Into<String>) -> Self {
        CollectError {
            message: message.into(),
            absent: true,
        }
    }
}

pub trait Collector: Send + Sync + 'static {
    /// Runs on a blocking thread; must not panic and should finish well inside the timeout.
    fn collect(&self) -> Result<Vec<Family>, CollectError>;

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

/// What collectors are built from: paths, the netlink transport, and per-collector options.
#[derive(Clone)]
pub struct Config {
    pub procfs: PathBuf,
    pub sysfs: PathBuf,
    pub transport: Arc<dyn Transport>,
    pub roles: RoleRules,
    pub interfaces: interfaces::Options,
    pub conntrack: conntrack::Options,
    pub ovs_flows: ovs_flows::Options,
    pub conntrack_invalid: conntrack_invalid::Options,
    /// The OVS datapaths and ports, read once per scrape for both OVS collectors.
    pub ovs_topology: Arc<ovs::SharedTopology>,
    pub ovsdb: ovsdb::Options,
    /// The links, read once per scrape for `interfaces` and `offload`.
    pub links: Arc<interfaces::SharedLinks>,
    pub offload: offload::Options,
}

/// The enabled collectors, by name, in registry order.
pub type Enabled = Vec<(&'static str, Arc<dyn Collector>)>;

pub struct Spec {
    pub name: &'static str,
    pub help: &'static str,
    pub default_enabled: bool,
    pub build: fn(&Config) -> Arc<dyn Collector>,
}

/// Every collector the exporter has. Adding one means adding a module and a line here.
pub const REGISTRY: &[Spec] = &[
    interfaces::SPEC,
    conntrack::SPEC,
    conntrack_invalid::SPEC,
    ovs::SPEC,
    ovs_flows::SPEC,
    ovsdb::SPEC,
    offload::SPEC,
];

pub fn spec(name: &str) -> Option<&'static Spec> {
    REGISTRY.iter().find(|s| s.name == name)
}
