//! `ovs`: the OVS kernel datapath: per-datapath lookup statistics and per-vport
//! counters, from the scrape's OVS topology (`common::ovs`, generic netlink
//! `ovs_datapath` and `ovs_vport` dumps), with the same roles as the interfaces collector.

use std::sync::Arc;

use super::common::links::COUNTERS;
use super::common::ovs::Topology;
use super::common::{Devices, Scrape};
use super::{CollectError, Collector, Spec};
use crate::metrics;
use crate::render::Family;

pub const SPEC: Spec = Spec {
    name: "ovs",
    help: "OVS kernel datapath lookups, masks and flows, and per-vport counters (generic netlink).",
    default_enabled: true,
    args: Vec::new,
    build: |_, r| {
        Ok(Arc::new(Ovs {
            devices: r.devices.clone(),
        }))
    },
};

const INTERFACE_PREFIX: &str = "packetpath_interface_";

pub fn render(topo: &[Topology], devices: &Devices) -> Vec<Family> {
    const DP: &[&str] = &["datapath"];
    let mut lookups = Family::counter(
        metrics::OVS_DATAPATH_LOOKUPS,
        "Datapath flow-table lookups by result: hit, missed (sent to ovs-vswitchd) or lost (upcall failed).",
        &["datapath", "result"],
    );
    let mut flows = Family::gauge(
        "packetpath_ovs_datapath_flows",
        "Flows in the datapath flow table.",
        DP,
    );
    let mut masks = Family::gauge(
        "packetpath_ovs_datapath_masks",
        "Megaflow masks in the datapath.",
        DP,
    );
    let mut mask_hits = Family::counter(
        "packetpath_ovs_datapath_mask_hits_total",
        "Masks visited by flow lookups; divided by lookups, the cost of a lookup.",
        DP,
    );
    let mut cache_hits = Family::counter(
        "packetpath_ovs_datapath_mask_cache_hits_total",
        "Lookups answered by the datapath's mask cache.",
        DP,
    );
    const VP: &[&str] = &["datapath", "vport", "role"];
    // ovs_vport_stats carries the first eight interface counters.
    let vport_counters = COUNTERS.get(..8).unwrap_or_default();
    let mut vport_families: Vec<Family> = vport_counters
        .iter()
        .map(|c| {
            let help = format!(
                "{} (as the OVS vport counts it)",
                c.help.trim_end_matches('.')
            );
            // packetpath_interface_X_total → packetpath_ovs_vport_X_total
            let name = c
                .name
                .replacen(INTERFACE_PREFIX, "packetpath_ovs_vport_", 1);
            Family::counter(&name, &help, VP)
        })
        .collect();
    let mut upcalls = Family::counter(
        "packetpath_ovs_vport_upcalls_total",
        "Upcalls from the vport to ovs-vswitchd by result.",
        &["datapath", "vport", "role", "result"],
    );
    for t in topo {
        let dp = t.datapath.name.as_str();
        if let Some(s) = t.datapath.stats {
            lookups.push(&[dp, "hit"], s.hit as f64);
            lookups.push(&[dp, "missed"], s.missed as f64);
            lookups.push(&[dp, "lost"], s.lost as f64);
            flows.push(&[dp], s.flows as f64);
        }
        if let Some(m) = t.datapath.megaflow {
            masks.push(&[dp], f64::from(m.masks));
            mask_hits.push(&[dp], m.mask_hit as f64);
            if let Some(c) = m.cache_hit {
                cache_hits.push(&[dp], c as f64);
            }
        }
        for (v, role) in t
            .vports
            .iter()
            .zip(&t.roles)
            .filter(|(v, _)| devices.wants(&v.name))
        {
            // The kernel fills a vport's counters from its netdev's: where the interfaces
            // collector sees that netdev (same namespace), they would repeat its numbers.
            let seen_by_interfaces = v.ifindex.is_some() && v.netnsid.is_none();
            if let Some(s) = v.stats.as_ref().filter(|_| !seen_by_interfaces) {
                for (f, c) in vport_families.iter_mut().zip(vport_counters) {
                    f.push(&[dp, &v.name, role.as_str()], (c.get)(s) as f64);
                }
            }
            if let Some((ok, fail)) = v.upcalls {
                upcalls.push(&[dp, &v.name, role.as_str(), "success"], ok as f64);
                upcalls.push(&[dp, &v.name, role.as_str(), "fail"], fail as f64);
            }
        }
    }
    let mut out = vec![lookups, flows, masks, mask_hits, cache_hits, upcalls];
    out.append(&mut vport_families);
    out
}

pub struct Ovs {
    devices: Devices,
}

impl Collector for Ovs {
    fn collect(&self, scrape: &Scrape) -> Result<Vec<Family>, CollectError> {
        Ok(render(&scrape.ovs()?.datapaths, &self.devices))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::common::links::Stats;
    use crate::collectors::common::ovs::{Datapath, Vport};
    use crate::roles::Role;

    /// One datapath, ovs-system, with these vports and roles.
    fn topology(vports: Vec<Vport>, roles: Vec<Role>) -> [Topology; 1] {
        [Topology {
            datapath: Datapath {
                ifindex: 7,
                name: "ovs-system".into(),
                stats: None,
                megaflow: None,
            },
            vports,
            roles,
        }]
    }

    #[test]
    fn vport_series_follow_the_device_filter() {
        let vport = |no: u32, name: &str| Vport {
            port_no: no,
            ty: crate::collectors::common::ovs::OVS_VPORT_TYPE_NETDEV,
            name: name.into(),
            ifindex: None,
            netnsid: None,
            stats: Some(Stats::default()),
            upcalls: None,
        };
        let topo = topology(
            vec![
                vport(1, "genev_sys_6081"),
                vport(2, "tap1"),
                vport(3, "tap2"),
            ],
            vec![Role::Tunnel, Role::Vm, Role::Vm],
        );
        let devices = Devices {
            exclude: Some(regex::Regex::new("^tap2$").unwrap()),
            ..Devices::default()
        };
        let mut out = Vec::new();
        crate::render::encode_text(render(&topo, &devices), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("vport=\"tap1\""));
        assert!(text.contains("vport=\"genev_sys_6081\""));
        assert!(!text.contains("tap2"), "{text}");
    }

    #[test]
    fn vport_counters_only_where_the_interfaces_collector_cannot_see_the_netdev() {
        let vport = |name: &str, ifindex: Option<u32>, netnsid: Option<i32>| Vport {
            port_no: 1,
            ty: crate::collectors::common::ovs::OVS_VPORT_TYPE_NETDEV,
            name: name.into(),
            ifindex,
            netnsid,
            stats: Some(Stats::default()),
            upcalls: Some((3, 0)),
        };
        let topo = topology(
            vec![
                vport("tap1", Some(11), None),
                vport("veth-ns", Some(12), Some(4)),
            ],
            vec![Role::Vm, Role::Other],
        );
        let mut out = Vec::new();
        crate::render::encode_text(render(&topo, &Default::default()), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains(
                "packetpath_ovs_vport_receive_packets_total{datapath=\"ovs-system\",vport=\"tap1\""
            ),
            "{text}"
        );
        assert!(text.contains("packetpath_ovs_vport_receive_packets_total{datapath=\"ovs-system\",vport=\"veth-ns\""), "{text}");
        // Upcalls are the vport's own: kept for every vport.
        assert!(
            text.contains(
                "packetpath_ovs_vport_upcalls_total{datapath=\"ovs-system\",vport=\"tap1\""
            ),
            "{text}"
        );
    }
}
