//! `offload`: checksum and segmentation offloads of the devices that carry tunnel traffic,
//! from ethtool-netlink `ETHTOOL_MSG_FEATURES_GET` (Linux 5.6+).
//!
//! A checksum a device leaves to hardware that never computes it, or a GSO segment whose
//! checksum is finished after conntrack looked at it, is how a checksum fault shows up
//! as conntrack-invalid packets. Feature names are the kernel's own (`ethtool -k`), read
//! once from its `ETH_SS_FEATURES` string set; replies carry compact bitsets, a few
//! hundred bytes per device.
//!
//! By default only devices with role `tunnel` or `ovs` and the uplinks (`uplinks.rs`: the
//! devices of the default routes and those under them) are exported; VM ports opt in with
//! `--collector.offload.vm-ports`. The devices are chosen from the link list the scrape
//! already has, and the kernel is asked for those only: one request per device, or one
//! dump of every device when that is cheaper (see [`one_dump`]). `ethtool.rs` speaks the
//! ethtool family.

mod ethtool;
mod uplinks;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use regex::Regex;

use super::common::links::Link;
use super::common::{Devices, Scrape};
use super::{CollectError, Collector, Spec};
use crate::netlink::Transport;
use crate::netlink::genl;
use crate::render::Family;
use crate::roles::Role;
use ethtool::{FAMILY, device_features_request, names_request};
pub use ethtool::{Features, features_request, parse_device_features, parse_features, parse_names};
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
    /// Export the offload features of VM ports too (two series per feature and port: active and wanted).
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
        "packetpath_interface_offload_active",
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

/// Whether one dump of every device is taken instead of a request per exported device.
///
/// A request costs a socket, a send and a receive besides the kernel's work for the
/// device; a dump does that work for every device but pays the rest once. Measured in
/// a namespace of 2,004 devices (2,000 TAPs) on 2 cores, best of 15: the dump took
/// 2.5 ms (1.3 µs a device), a request 10 µs, 8 times a device's share of the dump.
///
/// - Up to [`FEW`] exported devices are always asked for one by one: that costs at most
///   0.6 ms, the kernel does only their work, and the path does not depend on how many
///   devices the host has. The default (tunnel, OVS and uplink devices) is a handful on
///   any node, however many VM ports it has: 5 requests take 50 µs where a dump of
///   2,000 TAPs took 2.5 ms, and its reply 330 KB.
/// - Beyond that, a dump once the exported devices are more than an eighth of all of
///   them: `--collector.offload.vm-ports` on a node full of TAPs, where 2,000 requests
///   would take 20 ms against the dump's 2.5 ms.
fn one_dump(exported: usize, devices: usize) -> bool {
    exported > FEW && exported.saturating_mul(REQUEST_COST_IN_DUMPED_DEVICES) > devices
}

/// Exported devices that are always asked for one by one (see [`one_dump`]).
const FEW: usize = 64;

/// What one per-device request costs, in devices' worth of a dump (see [`one_dump`]).
const REQUEST_COST_IN_DUMPED_DEVICES: usize = 8;

impl Offload {
    /// The features of every device, from one dump.
    fn dump(&self, t: &dyn Transport, family: u16) -> Result<Vec<Features>, CollectError> {
        t.exchange(&features_request(family))
            .map_err(|e| {
                self.forget_family();
                CollectError::new(format!("features dump: {e}"))
            })
            .and_then(|b| {
                parse_features(&b).map_err(|e| CollectError::new(format!("features dump: {e}")))
            })
    }

    /// The features of the devices `indices`, one request each, in that order. A device
    /// removed since the link dump (ENODEV) is left out, as a dump would have left it.
    fn features_of(
        &self,
        t: &dyn Transport,
        family: u16,
        indices: &[u32],
    ) -> Result<Vec<Features>, CollectError> {
        let mut out = Vec::with_capacity(indices.len());
        for &i in indices {
            let reply = t
                .exchange(&device_features_request(family, i))
                .map_err(|e| {
                    self.forget_family();
                    CollectError::new(format!("features of ifindex {i}: {e}"))
                })?;
            match parse_device_features(&reply) {
                Ok(f) => out.extend(f),
                Err(e) if e.errno() == Some(libc::ENODEV) => {}
                Err(e) => {
                    return Err(CollectError::new(format!("features of ifindex {i}: {e}")));
                }
            }
        }
        Ok(out)
    }

    /// A failed request may mean a stale family id: look it up again next time.
    fn forget_family(&self) {
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Collector for Offload {
    fn collect(&self, scrape: &Scrape) -> Result<Vec<Family>, CollectError> {
        let t = self.transport.as_ref();
        let (id, names) = self.family()?;
        let links = scrape.links()?;
        let defaults = t
            .exchange(&routes_request())
            .map_err(|e| CollectError::new(format!("route dump: {e}")))
            .and_then(|b| {
                parse_default_devices(&b).map_err(|e| CollectError::new(format!("route dump: {e}")))
            })?;
        let up = uplinks(&links, &defaults);
        // In link order, which is the order a dump lists devices in.
        let exported: Vec<u32> = links
            .iter()
            .filter(|l| role_label(l, &self.devices, &self.opts, &up).is_some())
            .map(|l| l.index as u32)
            .collect();
        let features = if one_dump(exported.len(), links.len()) {
            self.dump(t, id)?
        } else {
            self.features_of(t, id, &exported)?
        };
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
        operstate: 6,
        ..Link::default()
    }
}

#[cfg(test)]
mod tests {
    use super::test_link as link;
    use super::*;
    use crate::netlink::wire;

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

    /// Replays tests/fixtures/netlink and notes every request.
    struct Recording {
        replay: crate::netlink::ReplayTransport,
        /// A device whose request is answered with this errno instead.
        fail: Option<(u32, i32)>,
        seen: Mutex<Vec<(&'static str, Option<u32>, bool)>>,
    }

    impl Transport for Recording {
        fn stream(
            &self,
            req: &crate::netlink::Request,
            sink: &mut dyn FnMut(&[u8]) -> bool,
        ) -> Result<crate::netlink::StreamEnd, crate::netlink::TransportError> {
            let dump = req.flags & wire::NLM_F_DUMP == wire::NLM_F_DUMP;
            self.seen.lock().unwrap().push((req.name, req.scope, dump));
            if let Some((_, errno)) = self.fail.filter(|(i, _)| req.scope == Some(*i)) {
                // NLMSG_ERROR: the negative errno, then the request's header.
                let mut p = (-errno).to_ne_bytes().to_vec();
                p.extend_from_slice(&[0; 16]);
                let m = wire::request(wire::NLMSG_ERROR, 0, 1, &p);
                sink(&m);
                return Ok(Default::default());
            }
            self.replay.stream(req, sink)
        }
    }

    fn replayed(opts: Options, fail: Option<(u32, i32)>) -> (Offload, Arc<Recording>) {
        let t = Arc::new(Recording {
            replay: crate::netlink::ReplayTransport {
                dir: concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/netlink").into(),
            },
            fail,
            seen: Mutex::new(Vec::new()),
        });
        let o = Offload {
            transport: t.clone(),
            devices: Devices::default(),
            opts,
            cache: Mutex::new(None),
        };
        (o, t)
    }

    /// A collection over `t`, as the scraper would hand one to the collector.
    fn scrape_of(t: &Arc<Recording>) -> Scrape {
        Scrape::new(1, super::super::common::Resources::for_tests(t.clone()))
    }

    fn features_requests(t: &Recording) -> Vec<(Option<u32>, bool)> {
        let seen = t.seen.lock().unwrap();
        seen.iter()
            .filter(|(n, _, _)| *n == "ethtool_features_get")
            .map(|(_, scope, dump)| (*scope, *dump))
            .collect()
    }

    #[test]
    fn only_the_exported_devices_are_asked_for() {
        // s0 carries the default route (2), genev_sys_6081 (7) and vx0 (8) are tunnels; the
        // other six devices of the capture are not asked about.
        let (o, t) = replayed(Options::default(), None);
        let fams = o.collect(&scrape_of(&t)).unwrap();
        assert_eq!(
            features_requests(&t),
            vec![(Some(2), false), (Some(7), false), (Some(8), false)]
        );
        // Each device's own reply says what the dump said of it (both were captured in
        // the same namespace).
        let (id, _) = o.family().unwrap();
        let dumped: Vec<Features> = o
            .dump(t.as_ref(), id)
            .unwrap()
            .into_iter()
            .filter(|f| [2, 7, 8].contains(&f.ifindex))
            .collect();
        assert_eq!(o.features_of(t.as_ref(), id, &[2, 7, 8]).unwrap(), dumped);
        let mut text = Vec::new();
        crate::render::encode_text(fams, &mut text);
        let text = String::from_utf8(text).unwrap();
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 60);

        // A VM port opted in is one more request.
        let (o, t) = replayed(
            Options {
                vm_ports: true,
                device_include: None,
            },
            None,
        );
        o.collect(&scrape_of(&t)).unwrap_err(); // tap0 (9) was not captured on its own
        assert_eq!(features_requests(&t).last(), Some(&(Some(9), false)));
    }

    #[test]
    fn a_device_gone_since_the_link_dump_is_left_out() {
        let (o, t) = replayed(Options::default(), Some((7, libc::ENODEV)));
        let fams = o.collect(&scrape_of(&t)).unwrap();
        assert_eq!(features_requests(&t).len(), 3);
        let mut text = Vec::new();
        crate::render::encode_text(fams, &mut text);
        let text = String::from_utf8(text).unwrap();
        assert!(!text.contains("genev_sys_6081"), "{text}");
        assert!(text.contains("device=\"vx0\""), "{text}");

        // Any other error fails the collection.
        let (o, _) = replayed(Options::default(), Some((7, libc::EPERM)));
        let e = o.collect(&scrape_of(&t)).unwrap_err();
        assert!(e.message.contains("features of ifindex 7"), "{e}");
    }

    #[test]
    fn a_dump_only_when_most_of_many_devices_are_exported() {
        assert!(!one_dump(0, 0));
        assert!(!one_dump(5, 2005), "the default on a node with 2,000 TAPs");
        assert!(
            !one_dump(13, 14),
            "a few devices are always asked for one by one"
        );
        assert!(!one_dump(64, 65));
        assert!(one_dump(65, 65));
        assert!(
            one_dump(2003, 2005),
            "--collector.offload.vm-ports with 2,000 TAPs"
        );
        assert!(!one_dump(100, 800) && one_dump(101, 800));
    }
}
