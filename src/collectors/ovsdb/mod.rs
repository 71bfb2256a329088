//! `ovsdb`: which VM and Neutron port each VM port belongs to, from the Open vSwitch
//! database's `Interface` table (followed live by `common::ovsdb`).
//!
//! One info series per Interface that carries `external_ids:iface-id` (what os-vif,
//! libvirt and OVN write), joinable on `device` with every interface series, plus
//! whether OVN has wired the port and the Interface's error.

use std::sync::Arc;

use super::common::Scrape;
use super::common::ovsdb::VmPort;
use super::{CollectError, Collector, Spec};
use crate::metrics;
use crate::render::Family;

pub const SPEC: Spec = Spec {
    name: "ovsdb",
    help: "VM and Neutron port identity of VM ports, from the Open vSwitch database (OVSDB monitor).",
    default_enabled: true,
    args: super::flags::<Options>,
    build: |m, r| {
        let o = super::options::<Options>(m)?;
        r.ovsdb.start();
        Ok(Arc::new(Ovsdb {
            max_ports: o.max_ports as usize,
        }))
    },
};

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// VM ports the ovsdb collector labels at most; the rest are counted in packetpath_vm_ports.
    #[arg(id = "collector.ovsdb.max-ports", long = "collector.ovsdb.max-ports", value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_ports: u32,
}

/// `ports` sorted by device.
pub fn render(ports: &[VmPort], max: usize) -> Vec<Family> {
    const INFO: &[&str] = &["device", "port_id", "instance_id", "mac", "status"];
    let mut info = Family::gauge(
        metrics::VM_PORT_INFO,
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
    for p in ports.iter().take(max) {
        info.push(
            &[&p.device, &p.port_id, &p.instance_id, &p.mac, &p.status],
            1.0,
        );
        installed.push(&[&p.device], if p.ovn_installed { 1.0 } else { 0.0 });
        if let Some(e) = &p.error {
            errors.push(&[&p.device, e], 1.0);
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
    max_ports: usize,
}

impl Collector for Ovsdb {
    fn collect(&self, scrape: &Scrape) -> Result<Vec<Family>, CollectError> {
        Ok(render(&scrape.ovsdb()?, self.max_ports))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::common::ovsdb::table::{Interface, Table};
    use crate::collectors::common::ovsdb::vm_port;
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
        let mut ports: Vec<_> = rows
            .iter()
            .filter_map(|i| vm_port(i, &Table::default()))
            .collect();
        ports.sort_by(|a, b| a.device.cmp(&b.device));
        assert_eq!(ports.len(), 3);
        let mut out = Vec::new();
        crate::render::encode_text(render(&ports, 2), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("packetpath_vm_port_info{device=\"tap1\",port_id=\"p1\",instance_id=\"i1\",mac=\"fa:16:3e:00:00:01\",status=\"active\"} 1\n"), "{text}");
        assert!(text.contains("packetpath_vm_port_info{device=\"tap3\",port_id=\"p3\",instance_id=\"\",mac=\"\",status=\"\"} 1\n"), "{text}");
        // Past the cap (sorted by device): vnet0 is counted, not labelled.
        assert!(!text.contains("vnet0"), "{text}");
        assert!(text.contains("packetpath_vm_ports 3\n"), "{text}");
        assert!(text.contains("packetpath_vm_port_ovn_installed{device=\"tap1\"} 1\n"));
        assert!(text.contains("packetpath_vm_port_ovn_installed{device=\"tap3\"} 0\n"));
        let mut ports: Vec<_> = rows
            .iter()
            .filter_map(|i| vm_port(i, &Table::default()))
            .collect();
        ports.sort_by(|a, b| a.device.cmp(&b.device));
        let mut out = Vec::new();
        crate::render::encode_text(render(&ports, 10), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("packetpath_vm_port_info{device=\"vnet0\",port_id=\"p2\",instance_id=\"i2\",mac=\"\",status=\"\"} 1\n"), "{text}");
        assert!(text.contains("packetpath_vm_port_error_info{device=\"vnet0\",error=\"could not open network device vnet0 (No such device)\"} 1\n"), "{text}");
        assert!(
            !text.contains("packetpath_vm_port_error_info{device=\"tap3\""),
            "{text}"
        );
    }
}
