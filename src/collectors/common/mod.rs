//! What several collectors share, in one neutral place: no collector imports another.
//!
//! [`Resources`] are built once at start from the flags every collector may use (paths,
//! the netlink transport, the device filter and roles, the Open vSwitch database's
//! socket). [`Scrape`] is one collection: its number and the kernel reads that several
//! collectors need (the link list, the OVS topology, the OVSDB view), each read at most
//! once per collection, by the first collector that asks, however long the collection
//! takes. A read that fails fails the same way for every collector of that collection.

pub mod devices;
pub mod link_cache;
pub mod links;
pub mod ovs;
pub mod ovsdb;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use devices::{DeviceArgs, Devices};

use super::CollectError;
use crate::netlink::Transport;

/// The flags of what collectors share.
#[derive(clap::Args, Debug, Clone)]
pub struct SharedArgs {
    #[command(flatten)]
    pub devices: DeviceArgs,

    /// The Open vSwitch database's unix socket, followed by the collectors that name VM ports.
    #[arg(
        id = "collector.ovsdb.socket",
        long = "collector.ovsdb.socket",
        value_name = "PATH",
        default_value = "/run/openvswitch/db.sock"
    )]
    pub ovsdb_socket: PathBuf,
}

/// Built once at start; every collector gets the same.
pub struct Resources {
    pub procfs: PathBuf,
    pub sysfs: PathBuf,
    pub transport: Arc<dyn Transport>,
    pub devices: Devices,
    /// What the last collection read of the links, so the next one may read only their
    /// counters while no link changed.
    pub link_cache: link_cache::LinkCache,
    /// The OVS generic netlink families and the link kinds of OVS ports.
    pub ovs: ovs::Source,
    /// The Open vSwitch database, followed live once a collector has asked for it.
    pub ovsdb: ovsdb::Source,
}

impl Resources {
    pub fn new(
        procfs: PathBuf,
        sysfs: PathBuf,
        transport: Arc<dyn Transport>,
        shared: &SharedArgs,
    ) -> Arc<Resources> {
        Arc::new(Resources {
            procfs,
            sysfs,
            transport,
            devices: Devices::from(&shared.devices),
            link_cache: link_cache::LinkCache::default(),
            ovs: ovs::Source::default(),
            ovsdb: ovsdb::Source::new(shared.ovsdb_socket.clone()),
        })
    }

    /// Resources for tests: replayed or counted netlink, default flags.
    pub fn for_tests(transport: Arc<dyn Transport>) -> Arc<Resources> {
        Resources::new(
            "/proc".into(),
            "/sys".into(),
            transport,
            &SharedArgs {
                devices: DeviceArgs::default(),
                ovsdb_socket: "/nonexistent/db.sock".into(),
            },
        )
    }

    /// Stops what runs in the background (the OVSDB client); on exit.
    pub fn shutdown(&self) {
        self.ovsdb.shutdown();
    }
}

/// A read shared by the collectors of one collection: the first to ask reads while the
/// others wait for it; its result, success or failure, is every collector's.
struct Once<T>(Mutex<Option<Result<Arc<T>, CollectError>>>);

impl<T> Default for Once<T> {
    fn default() -> Self {
        Once(Mutex::new(None))
    }
}

impl<T> Once<T> {
    fn get(
        &self,
        read: impl FnOnce() -> Result<Arc<T>, CollectError>,
    ) -> Result<Arc<T>, CollectError> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = slot.as_ref() {
            return r.clone();
        }
        let r = read();
        *slot = Some(r.clone());
        r
    }
}

/// One collection, handed to every collector's `collect`.
pub struct Scrape {
    /// The collection's number, from 1; concurrent HTTP scrapes that share a collection
    /// share its number.
    pub number: u64,
    resources: Arc<Resources>,
    links: Once<Vec<links::Link>>,
    ovs: Once<ovs::View>,
    ovsdb: Once<ovsdb::Ports>,
    ovsdb_node: Once<ovsdb::Node>,
}

impl Scrape {
    pub fn new(number: u64, resources: Arc<Resources>) -> Scrape {
        Scrape {
            number,
            resources,
            links: Once::default(),
            ovs: Once::default(),
            ovsdb: Once::default(),
            ovsdb_node: Once::default(),
        }
    }

    /// This collection's link list: a full dump when any link may have changed since the
    /// last collection, else the last one's links with fresh counters (`link_cache.rs`).
    pub fn links(&self) -> Result<Arc<Vec<links::Link>>, CollectError> {
        let r = &self.resources;
        let t = r.transport.as_ref();
        self.links.get(|| r.link_cache.read(t, || links::read(t)))
    }

    /// This collection's OVS datapaths with their ports and the families they were read
    /// under.
    pub fn ovs(&self) -> Result<Arc<ovs::View>, CollectError> {
        let r = &self.resources;
        self.ovs
            .get(|| r.ovs.read(r.transport.as_ref(), &r.devices).map(Arc::new))
    }

    /// This collection's VM ports from the Open vSwitch database, or why there are none.
    pub fn ovsdb(&self) -> Result<Arc<ovsdb::Ports>, CollectError> {
        self.ovsdb
            .get(|| self.resources.ovsdb.ports().map(Arc::new))
    }

    /// This collection's view of what Open vSwitch the node runs, from the database.
    pub fn ovsdb_node(&self) -> Result<Arc<ovsdb::Node>, CollectError> {
        self.ovsdb_node
            .get(|| self.resources.ovsdb.node().map(Arc::new))
    }
}
