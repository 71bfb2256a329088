//! The Open vSwitch database as collectors need it: which VM and Neutron port each VM
//! port belongs to, from the `Interface` table, and the conntrack zone ovn-controller
//! gave it, from the `Bridge` table; what Open vSwitch the node runs, from the
//! `Open_vSwitch` and `Datapath` tables.
//!
//! [`client`] keeps a live copy of the table over the database's unix socket (`monitor`,
//! `update`, `echo`) on a thread of its own, started by the first collector that asks
//! for it; [`table`] applies the updates. A scrape takes one snapshot of the VM ports.

pub mod client;
pub mod table;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use self::client::Client;
use self::table::{Datapath, Interface, System, Table};
use crate::collectors::{CollectError, Worker};

/// A VM port: an Interface with an `iface-id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPort {
    pub device: String,
    pub port_id: String,
    /// `vm-uuid` (os-vif) or `vm-id` (libvirt); empty when neither is there.
    pub instance_id: String,
    pub mac: String,
    pub status: String,
    pub ovn_installed: bool,
    pub error: Option<String>,
    /// The port's conntrack zone (`ct-zone-<port_id>` in a bridge's external_ids, which
    /// ovn-controller writes); `None` without OVN, or when bridges disagree.
    pub ct_zone: Option<u16>,
}

pub fn vm_port(i: &Interface, table: &Table) -> Option<VmPort> {
    let id = |k: &str| i.id(k).unwrap_or("").to_owned();
    Some(VmPort {
        device: i.name.clone(),
        port_id: i.id("iface-id")?.to_owned(),
        instance_id: i
            .id("vm-uuid")
            .or_else(|| i.id("vm-id"))
            .unwrap_or("")
            .to_owned(),
        mac: id("attached-mac"),
        status: id("iface-status"),
        ovn_installed: i.id("ovn-installed") == Some("true"),
        error: i.error.clone().filter(|e| !e.is_empty()),
        ct_zone: i.id("iface-id").and_then(|p| table.ct_zone(p)),
    })
}

/// The VM ports of one snapshot, sorted by device.
pub type Ports = Vec<VmPort>;

/// What the database says of the node: its Open_vSwitch row (empty when the database has
/// none yet) and the datapath types it configured, with their Datapath rows (the version
/// the bridges of the type carry when the row has none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub system: System,
    /// (datapath type, its Datapath row), sorted by type.
    pub datapaths: Vec<(String, Datapath)>,
}

pub fn node(table: &Table) -> Node {
    let system = table.system().cloned().unwrap_or_default();
    let datapaths = system
        .datapaths
        .iter()
        .filter_map(|(kind, uuid)| {
            let row = table.datapaths.get(uuid)?;
            let dp = Datapath {
                version: table.datapath_version(kind, row),
                capabilities: row.capabilities.clone(),
            };
            Some((kind.clone(), dp))
        })
        .collect();
    Node { system, datapaths }
}

/// Why the copy cannot be read now, if it cannot.
fn synchronised(view: &client::View) -> Result<(), CollectError> {
    match &view.down {
        Some((why, true)) => Err(CollectError::absent(why.clone())),
        Some((why, false)) => Err(CollectError::new(why.clone())),
        None => Ok(()),
    }
}

/// The database's socket and, once asked for, the client following it.
pub struct Source {
    socket: PathBuf,
    client: OnceLock<(Arc<Client>, Worker)>,
}

impl Source {
    pub fn new(socket: PathBuf) -> Source {
        Source {
            socket,
            client: OnceLock::new(),
        }
    }

    /// Starts following the database, once; collectors that need it call this at build.
    pub fn start(&self) -> &Arc<Client> {
        let (client, _) = self.client.get_or_init(|| {
            let client = Client::new(self.socket.clone());
            let runner = client.clone();
            (client, Worker::spawn("ovsdb-client", move || runner.run()))
        });
        client
    }

    /// A number that changes whenever the copy does; `None` before anyone asked for it.
    pub fn generation(&self) -> Option<u64> {
        self.client.get().map(|(c, _)| c.view().generation)
    }

    /// The VM ports now, or why there is no synchronised copy.
    pub fn ports(&self) -> Result<Ports, CollectError> {
        let view = self.start().view();
        synchronised(&view)?;
        let mut ports: Ports = view
            .table
            .rows
            .values()
            .filter_map(|i| vm_port(i, &view.table))
            .collect();
        ports.sort_by(|a, b| a.device.cmp(&b.device));
        Ok(ports)
    }

    /// What the database says the node runs, or why there is no synchronised copy.
    pub fn node(&self) -> Result<Node, CollectError> {
        let view = self.start().view();
        synchronised(&view)?;
        Ok(node(&view.table))
    }

    /// Stops the client, if it runs.
    pub fn shutdown(&self) {
        if let Some((client, worker)) = self.client.get() {
            client.stop.store(true, Ordering::Relaxed);
            worker.join();
        }
    }
}
