//! `node`: what the node runs, so a fleet can group any signal by it: the kernel release
//! and build, the `openvswitch` module's identity, the Open vSwitch version and datapath
//! types from its database, OVN's chassis name and ovn-controller's version.
//!
//! One info series per node (`packetpath_node_info`), one per datapath type the database
//! configured (`packetpath_node_ovs_datapath_info`) with what the datapath supports
//! (`packetpath_node_ovs_datapath_capability`). A part that is absent (no module, no
//! database, no OVN) is an empty label, never a failure.

mod host;
pub(crate) mod unixctl;

use std::path::PathBuf;
use std::sync::Arc;

use super::common::Scrape;
use super::common::ovsdb::Node as OvsdbNode;
use super::{CollectError, Collector, Spec};
use crate::metrics;
use crate::render::Family;

pub use host::{Kernel, Module};

pub const SPEC: Spec = Spec {
    name: "node",
    help: "What the node runs: kernel release, openvswitch module, Open vSwitch and OVN versions (procfs, sysfs, OVSDB, ovn-controller).",
    default_enabled: true,
    args: super::flags::<Options>,
    build: |m, r| {
        let o = super::options::<Options>(m)?;
        r.ovsdb.start();
        Ok(Arc::new(NodeCollector {
            // The running kernel does not change under the process; the module can be
            // reloaded, so it is read on every scrape.
            kernel: host::kernel(&r.procfs),
            sysfs: r.sysfs.clone(),
            ovn_controller: unixctl::Daemon::new(o.ovn_rundir, OVN_CONTROLLER),
        }))
    },
};

/// The daemon whose version and chassis OVN's label values are.
const OVN_CONTROLLER: &str = "ovn-controller";
/// The Open_vSwitch row's key for the chassis name ovn-controller registers under, and
/// the key that says OVN is configured at all.
const SYSTEM_ID: &str = "system-id";
const OVN_REMOTE: &str = "ovn-remote";

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Where ovn-controller keeps its pidfile and control socket, asked for its version.
    #[arg(
        id = "collector.node.ovn-rundir",
        long = "collector.node.ovn-rundir",
        value_name = "DIR",
        default_value = "/run/ovn"
    )]
    pub ovn_rundir: PathBuf,
}

/// Everything the node series say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub kernel: Kernel,
    pub module: Module,
    /// Empty when the database is not there.
    pub ovsdb: Arc<OvsdbNode>,
    pub ovn_version: String,
}

const INFO: &[&str] = &[
    "kernel_release",
    "kernel_version",
    "ovs_module",
    "ovs_module_srcversion",
    "ovs_module_version",
    "ovs_version",
    "ovs_db_version",
    "ovs_datapath_types",
    "ovn_chassis",
    "ovn_version",
];

/// A capability's value as a number: `true` 1, `false` 0, a number itself; else none.
fn capability(v: &str) -> Option<f64> {
    match v {
        "true" => Some(1.0),
        "false" => Some(0.0),
        _ => v.parse::<f64>().ok().filter(|n| n.is_finite()),
    }
}

pub fn render(s: &Snapshot) -> Vec<Family> {
    let sys = &s.ovsdb.system;
    let chassis = if sys.external_ids.contains_key(OVN_REMOTE) {
        sys.external_ids.get(SYSTEM_ID).cloned().unwrap_or_default()
    } else {
        String::new()
    };
    let mut info = Family::gauge(
        metrics::NODE_INFO,
        "What the node runs: kernel, openvswitch module, Open vSwitch and OVN (empty where absent); always 1.",
        INFO,
    );
    info.push(
        &[
            &s.kernel.release,
            &s.kernel.version,
            &s.module.origin,
            &s.module.srcversion,
            &s.module.version,
            &sys.ovs_version,
            &sys.db_version,
            &sys.datapath_types.join(","),
            &chassis,
            &s.ovn_version,
        ],
        1.0,
    );
    let mut datapaths = Family::gauge(
        "packetpath_node_ovs_datapath_info",
        "Datapath types configured in the Open vSwitch database, with the datapath's version; always 1.",
        &["datapath_type", "datapath_version"],
    );
    let mut capabilities = Family::gauge(
        "packetpath_node_ovs_datapath_capability",
        "What ovs-vswitchd found the datapath type supports (Datapath table): 1 or 0, or the number it recorded.",
        &["datapath_type", "capability"],
    );
    for (kind, dp) in &s.ovsdb.datapaths {
        datapaths.push(&[kind, &dp.version], 1.0);
        for (name, value) in &dp.capabilities {
            if let Some(v) = capability(value) {
                capabilities.push(&[kind, name], v);
            }
        }
    }
    vec![info, datapaths, capabilities]
}

pub struct NodeCollector {
    kernel: Kernel,
    sysfs: PathBuf,
    ovn_controller: unixctl::Daemon,
}

impl Collector for NodeCollector {
    fn collect(&self, scrape: &Scrape) -> Result<Vec<Family>, CollectError> {
        let ovsdb = scrape.ovsdb_node().unwrap_or_default();
        let ovn_version = if ovsdb.system.external_ids.contains_key(OVN_REMOTE) {
            self.ovn_controller.version()
        } else {
            String::new()
        };
        Ok(render(&Snapshot {
            kernel: self.kernel.clone(),
            module: host::module(&self.sysfs),
            ovsdb,
            ovn_version,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::common::ovsdb::table::{Datapath, System};

    fn text(s: &Snapshot) -> String {
        let mut out = Vec::new();
        crate::render::encode_text(render(s), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_ovn_chassis_with_the_kernel_module() {
        let s = Snapshot {
            kernel: Kernel {
                release: "6.1.0-28-cloud-amd64".into(),
                version: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)".into(),
            },
            module: Module {
                origin: "in_tree".into(),
                srcversion: "D0E6D3EB3A4F2C1B9E8A7F6".into(),
                version: String::new(),
            },
            ovsdb: Arc::new(OvsdbNode {
                system: System {
                    ovs_version: "3.1.0".into(),
                    db_version: "8.3.1".into(),
                    datapath_types: vec!["netdev".into(), "system".into()],
                    datapaths: [("system".to_owned(), "u1".to_owned())].into(),
                    external_ids: [
                        ("system-id".to_owned(), "compute-1".to_owned()),
                        ("ovn-remote".to_owned(), "tcp:10.0.0.1:6642".to_owned()),
                    ]
                    .into(),
                },
                datapaths: vec![(
                    "system".into(),
                    Datapath {
                        version: "<built-in>".into(),
                        capabilities: [
                            ("ct_state".to_owned(), "true".to_owned()),
                            ("ct_zero_snat".to_owned(), "false".to_owned()),
                            ("max_vlan_headers".to_owned(), "2".to_owned()),
                            ("odd".to_owned(), "maybe".to_owned()),
                        ]
                        .into(),
                    },
                )],
            }),
            ovn_version: "23.03.1".into(),
        };
        let t = text(&s);
        assert!(t.contains("packetpath_node_info{kernel_release=\"6.1.0-28-cloud-amd64\",kernel_version=\"#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)\",ovs_module=\"in_tree\",ovs_module_srcversion=\"D0E6D3EB3A4F2C1B9E8A7F6\",ovs_module_version=\"\",ovs_version=\"3.1.0\",ovs_db_version=\"8.3.1\",ovs_datapath_types=\"netdev,system\",ovn_chassis=\"compute-1\",ovn_version=\"23.03.1\"} 1\n"), "{t}");
        assert!(t.contains("packetpath_node_ovs_datapath_info{datapath_type=\"system\",datapath_version=\"<built-in>\"} 1\n"), "{t}");
        assert!(t.contains("packetpath_node_ovs_datapath_capability{datapath_type=\"system\",capability=\"ct_state\"} 1\n"));
        assert!(t.contains("packetpath_node_ovs_datapath_capability{datapath_type=\"system\",capability=\"ct_zero_snat\"} 0\n"));
        assert!(t.contains("packetpath_node_ovs_datapath_capability{datapath_type=\"system\",capability=\"max_vlan_headers\"} 2\n"));
        assert!(!t.contains("\"odd\""), "{t}");
    }

    #[test]
    fn nothing_known_is_empty_labels_and_odd_values_are_escaped() {
        let t = text(&Snapshot::default());
        assert!(t.contains("packetpath_node_info{kernel_release=\"\",kernel_version=\"\",ovs_module=\"\",ovs_module_srcversion=\"\",ovs_module_version=\"\",ovs_version=\"\",ovs_db_version=\"\",ovs_datapath_types=\"\",ovn_chassis=\"\",ovn_version=\"\"} 1\n"), "{t}");
        // A system-id without OVN configured is no chassis.
        let mut s = Snapshot::default();
        Arc::make_mut(&mut s.ovsdb).system.external_ids =
            [("system-id".to_owned(), "x".to_owned())].into();
        s.kernel.release = "6.1.0-\"odd\"\\build".into();
        let t = text(&s);
        assert!(
            t.contains("kernel_release=\"6.1.0-\\\"odd\\\"\\\\build\""),
            "{t}"
        );
        assert!(t.contains("ovn_chassis=\"\""), "{t}");
    }
}
