//! `ovsdb`: which VM and Neutron port each VM port belongs to, from the Open vSwitch
//! database's `Interface` table.
//!
//! Fetch: [`client`] keeps a live copy of the table over the database's unix socket
//! (`monitor`, `update`, `echo`), on a thread of its own. Parse: [`table`] applies the
//! updates. Render: one info series per Interface that carries `external_ids:iface-id`
//! (what os-vif, libvirt and OVN write), joinable on `device` with every interface
//! series, plus whether OVN has wired the port and the Interface's error.

pub mod client;
pub mod table;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use self::client::Client;
use self::table::Interface;
use super::{CollectError, Collector, Config, Spec, Worker};
use crate::render::Family;

pub const SPEC: Spec = Spec {
    name: "ovsdb",
    help: "VM and Neutron port identity of VM ports, from the Open vSwitch database (OVSDB monitor).",
    default_enabled: true,
    build: |c| Arc::new(Ovsdb::new(c)),
};

#[derive(Debug, Clone)]
pub struct Options {
    pub socket: PathBuf,
    /// VM ports exported at most (the rest are counted, not labelled).
    pub max_ports: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            socket: "/run/openvswitch/db.sock".into(),
            max_ports: 4096,
        }
    }
}

/// A VM port: an Interface with an `iface-id`.
pub struct VmPort<'a> {
    pub device: &'a str,
    pub port_id: &'a str,
    /// `vm-uuid` (os-vif) or `vm-id` (libvirt); empty when neither is there.
    pub instance_id: &'a str,
    pub mac: &'a str,
    pub status: &'a str,
    pub ovn_installed: bool,
    pub error: Option<&'a str>,
}

pub fn vm_port(i: &Interface) -> Option<VmPort<'_>> {
    Some(VmPort {
        device: i.name.as_str(),
        port_id: i.id("iface-id")?,
        instance_id: i.id("vm-uuid").or_else(|| i.id("vm-id")).unwrap_or(""),
        mac: i.id("attached-mac").unwrap_or(""),
        status: i.id("iface-status").unwrap_or(""),
        ovn_installed: i.id("ovn-installed") == Some("true"),
        error: i.error.as_deref().filter(|e| !e.is_empty()),
    })
}

pub fn render(ports: &mut [VmPort<'_>], max: usize) -> Vec<Family> {
    const INFO: &[&str] = &["device", "port_id", "instance_id", "mac", "status"];
    let mut info = Family::gauge(
        "packetpath_vm_port_info",
        "VM ports in the Open vSwitch database with their Neutron port, instance, MAC and status; always 1.",
        INFO,
    );
    let mut installed = Family::gauge(
        "packetpath_vm_port_ovn_installed",
        "1 when ovn-controller has wired the VM port (external_ids:ovn-installed), else 0.",
        &["device"],
    );
    let mut errors = Family::gauge(
        "packetpath_vm_port_error_info",
        "The Open vSwitch database's error for a VM port (a TAP it could not open, say); always 1.",
        &["device", "error"],
    );
    ports.sort_by(|a, b| a.device.cmp(b.device));
    for p in ports.iter().take(max) {
        info.push(&[p.device, p.port_id, p.instance_id, p.mac, p.status], 1.0);
        installed.push(&[p.device], if p.ovn_installed { 1.0 } else { 0.0 });
        if let Some(e) = p.error {
            errors.push(&[p.device, e], 1.0);
        }
    }
    vec![
        info,
        installed,
        errors,
        Family::single_gauge(
            "packetpath_vm_ports",
            "VM ports (Interfaces with an iface-id) in the Open vSwitch database, also those past --collector.ovsdb.max-ports.",
            ports.len() as f64,
        ),
    ]
}

pub struct Ovsdb {
    client: Arc<Client>,
    max_ports: usize,
    worker: Worker,
}

impl Ovsdb {
    pub fn new(c: &Config) -> Self {
        let client = Client::new(c.ovsdb.socket.clone());
        let runner = client.clone();
        Ovsdb {
            client,
            max_ports: c.ovsdb.max_ports,
            worker: Worker::spawn("ovsdb-client", move || runner.run()),
        }
    }
}

impl Collector for Ovsdb {
    fn collect(&self) -> Result<Vec<Family>, CollectError> {
        let view = self.client.view.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((why, absent)) = &view.down {
            return Err(if *absent {
                CollectError::absent(why.clone())
            } else {
                CollectError::new(why.clone())
            });
        }
        let mut ports: Vec<VmPort<'_>> = view.table.rows.values().filter_map(vm_port).collect();
        Ok(render(&mut ports, self.max_ports))
    }

    fn shutdown(&self) {
        self.client.stop.store(true, Ordering::Relaxed);
        self.worker.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn iface(name: &str, ids: &[(&str, &str)], error: Option<&str>) -> Interface {
        Interface {
            name: name.into(),
            external_ids: ids
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn os_vif_and_libvirt_identities_and_the_cap() {
        let rows = [
            iface(
                "tap1",
                &[
                    ("iface-id", "p1"),
                    ("vm-uuid", "i1"),
                    ("attached-mac", "fa:16:3e:00:00:01"),
                    ("iface-status", "active"),
                    ("ovn-installed", "true"),
                ],
                None,
            ),
            iface(
                "vnet0",
                &[("iface-id", "p2"), ("vm-id", "i2")],
                Some("could not open network device vnet0 (No such device)"),
            ),
            iface("br-int", &[], None),
            iface("tap3", &[("iface-id", "p3")], Some("")),
        ];
        let mut ports: Vec<_> = rows.iter().filter_map(vm_port).collect();
        assert_eq!(ports.len(), 3);
        let mut out = Vec::new();
        crate::render::encode_text(render(&mut ports, 2), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("packetpath_vm_port_info{device=\"tap1\",port_id=\"p1\",instance_id=\"i1\",mac=\"fa:16:3e:00:00:01\",status=\"active\"} 1\n"), "{text}");
        assert!(text.contains("packetpath_vm_port_info{device=\"tap3\",port_id=\"p3\",instance_id=\"\",mac=\"\",status=\"\"} 1\n"), "{text}");
        // Past the cap (sorted by device): vnet0 is counted, not labelled.
        assert!(!text.contains("vnet0"), "{text}");
        assert!(text.contains("packetpath_vm_ports 3\n"), "{text}");
        assert!(text.contains("packetpath_vm_port_ovn_installed{device=\"tap1\"} 1\n"));
        assert!(text.contains("packetpath_vm_port_ovn_installed{device=\"tap3\"} 0\n"));
        let mut ports: Vec<_> = rows.iter().filter_map(vm_port).collect();
        let mut out = Vec::new();
        crate::render::encode_text(render(&mut ports, 10), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("packetpath_vm_port_info{device=\"vnet0\",port_id=\"p2\",instance_id=\"i2\",mac=\"\",status=\"\"} 1\n"), "{text}");
        assert!(text.contains("packetpath_vm_port_error_info{device=\"vnet0\",error=\"could not open network device vnet0 (No such device)\"} 1\n"), "{text}");
        assert!(
            !text.contains("packetpath_vm_port_error_info{device=\"tap3\""),
            "{text}"
        );
    }
}
