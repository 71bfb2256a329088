//! `offload`: checksum and segmentation offloads of the devices that carry tunnel traffic,
//! from one ethtool-netlink `ETHTOOL_MSG_FEATURES_GET` dump per scrape (Linux 5.6+).
//!
//! A checksum a device leaves to hardware that never computes it, or a GSO segment whose
//! checksum is finished after conntrack looked at it, is how a checksum fault shows up
//! as conntrack-invalid packets. Feature names are the kernel's own (`ethtool -k`), read
//! once from its `ETH_SS_FEATURES` string set; the dump asks for compact bitsets so a
//! node with thousands of TAPs costs a few hundred bytes per device.
//!
//! By default only devices with role `tunnel` or `ovs` and the uplinks (`uplinks.rs`: the
//! devices of the default routes and those under them) are exported; VM ports opt in with
//! `--collector.offload.vm-ports`. `ethtool.rs` speaks the ethtool family.

mod ethtool;
mod uplinks;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use regex::Regex;

use super::common::links::Link;
use super::common::{Devices, Scrape};
use super::{CollectError, Collector, Spec};
use crate::metrics;
use crate::netlink::Transport;
use crate::netlink::genl;
use crate::render::Family;
use crate::roles::Role;
use ethtool::{FAMILY, features_request, names_request};
pub use ethtool::{Features, parse_features, parse_names};
use uplinks::routes_request;
pub use uplinks::{parse_default_devices, uplinks};

pub const SPEC: Spec = Spec {
    name: "offload",
    help: "Checksum and segmentation offloads of tunnel, OVS and uplink devices (ethtool netlink, Linux 5.6+).",
    default_enabled: true,
    args: super::flags::<Options>,
    build: |m, r| Ok(Arc::new(Offload::new(r, super::options(m)?))),
};

/// The features exported, as the kernel names them.
pub const FEATURES: &[&str] = &[
    "rx-checksum",
    "tx-checksum-ip-generic",
    "tx-checksum-ipv4",
    "tx-checksum-ipv6",
    "tx-scatter-gather",
    "tx-tcp-segmentation",
    "tx-generic-segmentation",
    "rx-gro",
    "tx-udp_tnl-segmentation",
    "tx-udp_tnl-csum-segmentation",
];

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Options {
    /// Export the offload features of VM ports too (one series per feature and port).
    #[arg(id = "collector.offload.vm-ports", long = "collector.offload.vm-ports")]
    pub vm_ports: bool,

    /// Export the offload features of devices matching this regex as uplinks (role uplink unless they have a role): the tunnel network's devices where the default route does not use them.
    #[arg(id = "collector.offload.device-include", long = "collector.offload.device-include", value_name = "REGEX", value_parser = super::common::devices::parse_regex)]
    pub device_include: Option<Regex>,
}

/// The role label of a device the collector exports, or None when it is not exported.
fn role_label(
    link: &Link,
    devices: &Devices,
    opts: &Options,
    uplinks: &HashSet<u32>,
) -> Option<&'static str> {
    let role = devices.role(&link.name, link.kind.as_deref());
    let include = opts
        .device_include
        .as_ref()
        .is_some_and(|re| re.is_match(&link.name));
    // A device named by --collector.offload.device-include is an uplink the default route
    // does not use, unless its role says otherwise.
    match role {
        Role::Tunnel | Role::Ovs => Some(role.as_str()),
        Role::Vm if opts.vm_ports || include => Some(role.as_str()),
        Role::Other if include || uplinks.contains(&(link.index as u32)) => Some("uplink"),
        _ => None,
    }
}

pub fn render(
    features: &[Features],
    names: &[String],
    links: &[Link],
    uplinks: &HashSet<u32>,
    devices: &Devices,
    opts: &Options,
) -> Vec<Family> {
    const L: &[&str] = &["device", "role", "feature"];
    let mut active = Family::gauge(
        metrics::INTERFACE_OFFLOAD_ACTIVE,
        "Whether an offload feature is active on the device (1) or not (0), as ethtool -k shows it.",
        L,
    );
    let mut wanted = Family::gauge(
        "packetpath_interface_offload_wanted",
        "Whether an offload feature is requested on the device (1) or not (0); wanted but not active means the device or its lower devices cannot do it.",
        L,
    );
    let bits: Vec<(&str, Option<u32>)> = FEATURES
        .iter()
        .map(|f| (*f, names.iter().position(|n| n == f).map(|i| i as u32)))
        .collect();
    let by_index: HashMap<u32, &Link> = links.iter().map(|l| (l.index as u32, l)).collect();
    for f in features {
        let Some(link) = by_index.get(&f.ifindex) else {
            continue;
        };
        let Some(role) = role_label(link, devices, opts, uplinks) else {
            continue;
        };
        for (feature, bit) in &bits {
            // A feature this kernel does not have has no series.
            let Some(bit) = bit else { continue };
            let labels = [f.name.as_str(), role, feature];
            active.push(&labels, f64::from(u8::from(f.active.contains(bit))));
            wanted.push(&labels, f64::from(u8::from(f.wanted.contains(bit))));
        }
    }
    vec![active, wanted]
}

pub struct Offload {
    transport: Arc<dyn Transport>,
    devices: Devices,
    opts: Options,
    /// The ethtool family's id and the feature names; the family is built into the
    /// kernel, so both hold until a request fails.
    cache: Mutex<Option<(u16, Arc<Vec<String>>)>>,
}

impl Offload {
    pub fn new(r: &super::common::Resources, opts: Options) -> Self {
        Offload {
            transport: r.transport.clone(),
            devices: r.devices.clone(),
            opts,
            cache: Mutex::new(None),
        }
    }

    fn family(&self) -> Result<(u16, Arc<Vec<String>>), CollectError> {
        if let Some(c) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(c);
        }
        let t = self.transport.as_ref();
        let listing = |e: &dyn std::fmt::Display| {
            CollectError::new(format!("listing generic netlink families: {e}"))
        };
        let all = genl::parse_families(
            &t.exchange(&genl::families_request())
                .map_err(|e| listing(&e))?,
        )
        .map_err(|e| listing(&e))?;
        let id = all
            .iter()
            .find(|(n, _)| n == FAMILY)
            .map(|(_, f)| f.id)
            .ok_or_else(|| {
                CollectError::absent(
                    "kernel has no ethtool netlink family (Linux 5.6 or later with CONFIG_ETHTOOL_NETLINK)",
                )
            })?;
        let names = t
            .exchange(&names_request(id))
            .map_err(|e| CollectError::new(format!("reading the feature names: {e}")))
            .and_then(|b| {
                parse_names(&b).map_err(|e| CollectError::new(format!("feature names: {e}")))
            })?;
        let c = (id, Arc::new(names));
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        Ok(c)
    }
}

impl Collector for Offload {
    fn collect(&self, scrape: &Scrape) -> Result<Vec<Family>, CollectError> {
        let t = self.transport.as_ref();
        let (id, names) = self.family()?;
        let features = t
            .exchange(&features_request(id))
            .map_err(|e| {
                *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
                CollectError::new(format!("features dump: {e}"))
            })
            .and_then(|b| {
                parse_features(&b).map_err(|e| CollectError::new(format!("features dump: {e}")))
            })?;
        let links = scrape.links()?;
        let defaults = t
            .exchange(&routes_request())
            .map_err(|e| CollectError::new(format!("route dump: {e}")))
            .and_then(|b| {
                parse_default_devices(&b).map_err(|e| CollectError::new(format!("route dump: {e}")))
            })?;
        let up = uplinks(&links, &defaults);
        Ok(render(
            &features,
            &names,
            &links,
            &up,
            &self.devices,
            &self.opts,
        ))
    }
}

/// A link for unit tests.
#[cfg(test)]
fn test_link(index: i32, name: &str, kind: Option<&str>, master: Option<u32>) -> Link {
    Link {
        index,
        name: name.into(),
        kind: kind.map(Into::into),
        master,
        link: None,
        operstate: 6,
        mtu: None,
        stats: None,
    }
}

#[cfg(test)]
mod tests {
    use super::test_link as link;
    use super::*;

    #[test]
    fn only_tunnel_ovs_and_uplinks_by_default() {
        let names: Vec<String> = ["tx-scatter-gather", "tx-checksum-ipv4", "rx-checksum"]
            .map(String::from)
            .to_vec();
        let links = vec![
            link(1, "eth0", None, None),
            link(2, "genev_sys_6081", Some("geneve"), Some(3)),
            link(3, "ovs-system", Some("openvswitch"), None),
            link(4, "tap0", Some("tun"), Some(3)),
            link(5, "veth9", Some("veth"), None),
        ];
        let features: Vec<Features> = links
            .iter()
            .map(|l| Features {
                ifindex: l.index as u32,
                name: l.name.clone(),
                wanted: vec![0, 2],
                active: vec![0],
            })
            .collect();
        let up: HashSet<u32> = [1].into();
        let text = |opts: &Options| {
            let mut out = Vec::new();
            crate::render::encode_text(
                render(&features, &names, &links, &up, &Devices::default(), opts),
                &mut out,
            );
            String::from_utf8(out).unwrap()
        };
        let default = text(&Options::default());
        for device in ["eth0", "genev_sys_6081", "ovs-system"] {
            assert!(
                default.contains(&format!("device=\"{device}\"")),
                "{default}"
            );
        }
        assert!(
            !default.contains("tap0") && !default.contains("veth9"),
            "{default}"
        );
        assert!(default.contains(
            "packetpath_interface_offload_active{device=\"eth0\",role=\"uplink\",feature=\"rx-checksum\"} 0"
        ));
        assert!(default.contains(
            "packetpath_interface_offload_wanted{device=\"eth0\",role=\"uplink\",feature=\"rx-checksum\"} 1"
        ));
        assert!(default.contains(
            "packetpath_interface_offload_active{device=\"genev_sys_6081\",role=\"tunnel\",feature=\"tx-scatter-gather\"} 1"
        ));
        // Features the kernel does not name have no series.
        assert!(!default.contains("tx-checksum-ipv6"));
        let more = text(&Options {
            vm_ports: true,
            device_include: Some(Regex::new("^veth").unwrap()),
        });
        assert!(more.contains("device=\"tap0\",role=\"vm\""), "{more}");
        assert!(more.contains("device=\"veth9\",role=\"uplink\""), "{more}");
    }
}
