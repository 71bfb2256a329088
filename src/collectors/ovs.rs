//! `ovs`: the OVS kernel datapath over generic netlink: per-datapath lookup statistics and
//! per-vport counters, with the same roles as the interfaces collector.
//!
//! The families (ovs_datapath, ovs_vport, ovs_flow) are resolved once and again whenever a
//! request fails: the openvswitch module can be unloaded and reloaded, and its families
//! then come back under new ids.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::interfaces::{COUNTERS, Stats};
use super::shared::PerScrape;
use super::{CollectError, Collector, Config, Spec};
use crate::netlink::genl::{self, GENL_HDRLEN};
use crate::netlink::wire::{self, DecodeError};
use crate::netlink::{Protocol, Request, Transport, TransportError};
use crate::render::Family;
use crate::roles::RoleRules;

pub const SPEC: Spec = Spec {
    name: "ovs",
    help: "OVS kernel datapath lookups, masks and flows, and per-vport counters (generic netlink).",
    default_enabled: true,
    build: |c| Arc::new(Ovs::new(c)),
};

const FAMILY: &str = "ovs_datapath";
const VPORT_FAMILY: &str = "ovs_vport";
const OVS_DATAPATH_VERSION: u8 = 2;
const OVS_VPORT_VERSION: u8 = 1;
const OVS_DP_CMD_GET: u8 = 3;
const OVS_VPORT_CMD_GET: u8 = 3;
/// struct ovs_header: the datapath's ifindex.
const OVS_HDRLEN: usize = 4;

const OVS_DP_ATTR_NAME: u16 = 1;
const OVS_DP_ATTR_STATS: u16 = 3;
const OVS_DP_ATTR_MEGAFLOW_STATS: u16 = 4;
const OVS_DP_ATTR_MASKS_CACHE_SIZE: u16 = 7;

const OVS_VPORT_ATTR_PORT_NO: u16 = 1;
const OVS_VPORT_ATTR_TYPE: u16 = 2;
const OVS_VPORT_ATTR_NAME: u16 = 3;
const OVS_VPORT_ATTR_STATS: u16 = 6;
const OVS_VPORT_ATTR_IFINDEX: u16 = 8;
const OVS_VPORT_ATTR_NETNSID: u16 = 9;
const OVS_VPORT_ATTR_UPCALL_STATS: u16 = 10;
const OVS_VPORT_UPCALL_ATTR_SUCCESS: u16 = 0;
const OVS_VPORT_UPCALL_ATTR_FAIL: u16 = 1;

/// Ids of the OVS generic netlink families on the running kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    pub datapath: u16,
    pub vport: u16,
    pub flow: u16,
}

/// Resolves the OVS families; forgets them after a failure so a reloaded module's new ids
/// are picked up on the next scrape.
#[derive(Debug, Default)]
pub struct FamilyCache(Mutex<Option<Families>>);

impl FamilyCache {
    pub fn get(&self, t: &dyn Transport) -> Result<Families, CollectError> {
        if let Some(f) = *self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(f);
        }
        let reply = t
            .exchange(&genl::families_request())
            .map_err(|e| CollectError::new(format!("listing generic netlink families: {e}")))?;
        let all = genl::parse_families(&reply)
            .map_err(|e| CollectError::new(format!("listing generic netlink families: {e}")))?;
        let id = |family: &str| -> Result<u16, CollectError> {
            all.iter()
                .find(|(n, _)| n == family)
                .map(|(_, f)| f.id)
                .ok_or_else(|| {
                    CollectError::absent(format!(
                        "openvswitch module not loaded (no generic netlink family {family})"
                    ))
                })
        };
        let f = Families {
            datapath: id(FAMILY)?,
            vport: id(VPORT_FAMILY)?,
            flow: id("ovs_flow")?,
        };
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
        Ok(f)
    }

    /// Runs `f` with the families; if it fails, forgets them and tries once more with
    /// fresh ones, so a module that went away is reported as such, not as a stale id's
    /// ENOENT.
    pub fn with<T>(
        &self,
        t: &dyn Transport,
        f: impl Fn(&Families) -> Result<T, CollectError>,
    ) -> Result<T, CollectError> {
        let families = self.get(t)?;
        match f(&families) {
            Ok(v) => Ok(v),
            Err(first) => {
                self.forget();
                let fresh = self.get(t);
                tracing::debug!(error = %first, old = ?families, fresh = ?fresh, "OVS request failed; families resolved again");
                let fresh = fresh?;
                if fresh == families {
                    return Err(first);
                }
                f(&fresh).inspect_err(|_| self.forget())
            }
        }
    }

    pub fn forget(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// struct ovs_dp_stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DpStats {
    pub hit: u64,
    pub missed: u64,
    pub lost: u64,
    pub flows: u64,
}

/// struct ovs_dp_megaflow_stats; `cache_hit` only where the kernel has the mask cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MegaflowStats {
    pub mask_hit: u64,
    pub masks: u32,
    pub cache_hit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datapath {
    pub ifindex: u32,
    pub name: String,
    pub stats: Option<DpStats>,
    pub megaflow: Option<MegaflowStats>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vport {
    pub port_no: u32,
    pub ty: u32,
    pub name: String,
    pub ifindex: Option<u32>,
    /// Set when the vport's netdev lives in another network namespace than the datapath.
    pub netnsid: Option<i32>,
    /// struct ovs_vport_stats: the first eight counters of rtnl_link_stats64, in order.
    pub stats: Option<Stats>,
    /// (success, fail) from OVS_VPORT_ATTR_UPCALL_STATS, on kernels that send it.
    pub upcalls: Option<(u64, u64)>,
}

/// Reads the u64 at field `i` of a struct, zero when an older kernel's struct is shorter.
fn field(payload: &[u8], i: usize) -> u64 {
    wire::read_u64_ne(payload, i * 8).unwrap_or(0)
}

fn ovs_body(dp_ifindex: u32) -> Vec<u8> {
    dp_ifindex.to_ne_bytes().to_vec()
}

pub fn dp_request(f: &Families) -> Request {
    genl::request(
        f.datapath,
        OVS_DP_CMD_GET,
        OVS_DATAPATH_VERSION,
        "ovs_dp_get",
        true,
        &ovs_body(0),
    )
}

pub fn vport_request(f: &Families, dp_ifindex: u32) -> Request {
    let mut r = genl::request(
        f.vport,
        OVS_VPORT_CMD_GET,
        OVS_VPORT_VERSION,
        "ovs_vport_get",
        true,
        &ovs_body(dp_ifindex),
    );
    r.scope = Some(dp_ifindex);
    r
}

/// The datapath ifindex (struct ovs_header) and the attributes after it.
pub fn split_ovs<'a>(
    family: &'static str,
    payload: &'a [u8],
) -> Result<(u32, &'a [u8]), DecodeError> {
    let (_, rest) = genl::split(family, payload)?;
    let short = DecodeError::ShortStruct {
        family,
        what: "ovs_header",
        len: payload.len(),
        need: GENL_HDRLEN + OVS_HDRLEN,
    };
    let ifindex = wire::read_u32_ne(rest, 0).ok_or(short.clone())?;
    Ok((ifindex, rest.get(OVS_HDRLEN..).ok_or(short)?))
}

pub fn parse_datapaths(buf: &[u8]) -> Result<Vec<Datapath>, DecodeError> {
    let mut out = Vec::new();
    for m in wire::data_messages(FAMILY, buf, true)? {
        let (ifindex, attrs) = split_ovs(FAMILY, m.payload)?;
        let mut dp = Datapath {
            ifindex,
            name: String::new(),
            stats: None,
            megaflow: None,
        };
        let mut has_mask_cache = false;
        for a in wire::attrs(FAMILY, "OVS_DP_ATTR", attrs) {
            let a = a?;
            match a.ty {
                OVS_DP_ATTR_NAME => dp.name = a.name(),
                OVS_DP_ATTR_STATS => {
                    dp.stats = Some(DpStats {
                        hit: field(a.payload, 0),
                        missed: field(a.payload, 1),
                        lost: field(a.payload, 2),
                        flows: field(a.payload, 3),
                    })
                }
                OVS_DP_ATTR_MEGAFLOW_STATS => {
                    dp.megaflow = Some(MegaflowStats {
                        mask_hit: field(a.payload, 0),
                        masks: wire::read_u32_ne(a.payload, 8).unwrap_or(0),
                        cache_hit: Some(field(a.payload, 2)),
                    })
                }
                OVS_DP_ATTR_MASKS_CACHE_SIZE => has_mask_cache = true,
                _ => {}
            }
        }
        // n_cache_hit was padding before the mask cache existed (Linux 5.9); the cache-size
        // attribute arrived with it, so its presence says the field is real.
        if let Some(mf) = dp.megaflow.as_mut().filter(|_| !has_mask_cache) {
            mf.cache_hit = None;
        }
        out.push(dp);
    }
    Ok(out)
}

pub fn parse_vports(buf: &[u8]) -> Result<Vec<Vport>, DecodeError> {
    let mut out = Vec::new();
    for m in wire::data_messages(VPORT_FAMILY, buf, true)? {
        let (_, attrs) = split_ovs(VPORT_FAMILY, m.payload)?;
        let mut v = Vport {
            port_no: 0,
            ty: 0,
            name: String::new(),
            ifindex: None,
            netnsid: None,
            stats: None,
            upcalls: None,
        };
        for a in wire::attrs(VPORT_FAMILY, "OVS_VPORT_ATTR", attrs) {
            let a = a?;
            match a.ty {
                OVS_VPORT_ATTR_PORT_NO => {
                    v.port_no = a.u32_ne(VPORT_FAMILY, "OVS_VPORT_ATTR_PORT_NO")?
                }
                OVS_VPORT_ATTR_TYPE => v.ty = a.u32_ne(VPORT_FAMILY, "OVS_VPORT_ATTR_TYPE")?,
                OVS_VPORT_ATTR_NAME => v.name = a.name(),
                OVS_VPORT_ATTR_IFINDEX => {
                    v.ifindex = Some(a.u32_ne(VPORT_FAMILY, "OVS_VPORT_ATTR_IFINDEX")?)
                }
                OVS_VPORT_ATTR_NETNSID => {
                    v.netnsid = Some(a.u32_ne(VPORT_FAMILY, "OVS_VPORT_ATTR_NETNSID")? as i32)
                }
                OVS_VPORT_ATTR_STATS => v.stats = Some(Stats::decode(a.payload, 8)),
                OVS_VPORT_ATTR_UPCALL_STATS => {
                    let (mut ok, mut fail) = (0, 0);
                    for u in wire::attrs(VPORT_FAMILY, "OVS_VPORT_ATTR_UPCALL_STATS", a.payload) {
                        let u = u?;
                        match u.ty {
                            OVS_VPORT_UPCALL_ATTR_SUCCESS => {
                                ok = wire::read_u64_ne(u.payload, 0).unwrap_or(0)
                            }
                            OVS_VPORT_UPCALL_ATTR_FAIL => {
                                fail = wire::read_u64_ne(u.payload, 0).unwrap_or(0)
                            }
                            _ => {}
                        }
                    }
                    v.upcalls = Some((ok, fail));
                }
                _ => {}
            }
        }
        out.push(v);
    }
    Ok(out)
}

/// OVS_VPORT_TYPE_* as a link kind for role rules. NETDEV says nothing (OVS even lists
/// its own genev_sys_6081 as NETDEV), so those are looked up by ifindex.
fn kind_of_type(ty: u32) -> Option<&'static str> {
    match ty {
        2 => Some("openvswitch"),
        3 => Some("gre"),
        4 => Some("vxlan"),
        5 => Some("geneve"),
        _ => None,
    }
}

/// Link kinds of NETDEV vports by ifindex, asked of rtnetlink once per device.
#[derive(Debug, Default)]
pub struct LinkKinds(Mutex<HashMap<u32, (String, Option<String>)>>);

impl LinkKinds {
    fn request(ifindex: u32) -> Request {
        let mut payload = vec![0u8; 16]; // struct ifinfomsg
        payload[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        Request {
            protocol: Protocol::Route,
            name: "rtnl_getlink_index",
            scope: Some(ifindex),
            ty: 18, // RTM_GETLINK
            flags: wire::NLM_F_REQUEST,
            payload,
        }
    }

    /// The link kind of each vport (None when it has none or the lookup fails); forgets
    /// devices that are gone, so the cache holds the current ports only.
    pub fn resolve(&self, t: &dyn Transport, vports: &[Vport]) -> Vec<Option<String>> {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|idx, (name, _)| {
            vports
                .iter()
                .any(|v| v.ifindex == Some(*idx) && v.name == *name)
        });
        vports
            .iter()
            .map(|v| {
                if let Some(k) = kind_of_type(v.ty) {
                    return Some(k.to_owned());
                }
                let idx = v.ifindex?;
                if let Some((_, kind)) = cache.get(&idx) {
                    return kind.clone();
                }
                let kind = t
                    .exchange(&Self::request(idx))
                    .ok()
                    .and_then(|b| crate::collectors::interfaces::parse_one(&b).ok().flatten())
                    .and_then(|l| l.kind);
                cache.insert(idx, (v.name.clone(), kind.clone()));
                kind
            })
            .collect()
    }
}

/// A datapath with its ports, as both OVS collectors need them.
pub struct Topology {
    pub datapath: Datapath,
    pub vports: Vec<Vport>,
    pub roles: Vec<&'static str>,
}

/// Which OVS collector asks for the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    Ovs = 0,
    Flows = 1,
}

/// The topology one scrape reads once for both OVS collectors.
pub struct SharedTopology {
    rules: RoleRules,
    kinds: LinkKinds,
    shared: PerScrape<Families, Vec<Topology>>,
}

impl SharedTopology {
    pub fn new(rules: RoleRules) -> Self {
        SharedTopology {
            rules,
            kinds: LinkKinds::default(),
            shared: PerScrape::default(),
        }
    }

    /// The topology for `reader` in this scrape.
    pub fn get(
        &self,
        t: &dyn Transport,
        f: &Families,
        reader: Reader,
    ) -> Result<Arc<Vec<Topology>>, CollectError> {
        self.shared.get(f, reader as u8, || {
            fetch_topology(t, f, &self.kinds, &self.rules)
        })
    }

    /// A fresh dump outside any scrape (a flow on a port not seen yet); the next scrape's
    /// readers may share it.
    pub fn refresh(
        &self,
        t: &dyn Transport,
        f: &Families,
    ) -> Result<Arc<Vec<Topology>>, CollectError> {
        self.shared
            .refresh(f, || fetch_topology(t, f, &self.kinds, &self.rules))
    }
}

fn transport_error(e: TransportError) -> CollectError {
    CollectError::new(e.to_string())
}

/// Dumps every datapath and its vports.
pub fn fetch_topology(
    t: &dyn Transport,
    f: &Families,
    kinds: &LinkKinds,
    rules: &RoleRules,
) -> Result<Vec<Topology>, CollectError> {
    let dps = parse_datapaths(&t.exchange(&dp_request(f)).map_err(transport_error)?)
        .map_err(|e| CollectError::new(format!("datapath dump: {e}")))?;
    dps.into_iter()
        .map(|datapath| {
            let vports = parse_vports(
                &t.exchange(&vport_request(f, datapath.ifindex))
                    .map_err(transport_error)?,
            )
            .map_err(|e| CollectError::new(format!("vport dump of {}: {e}", datapath.name)))?;
            let roles = kinds
                .resolve(t, &vports)
                .iter()
                .zip(&vports)
                .map(|(kind, v)| rules.classify(&v.name, kind.as_deref()).as_str())
                .collect();
            Ok(Topology {
                datapath,
                vports,
                roles,
            })
        })
        .collect()
}

pub fn render(topo: &[Topology], devices: &super::interfaces::Options) -> Vec<Family> {
    const DP: &[&str] = &["datapath"];
    let mut lookups = Family::counter(
        "packetpath_ovs_datapath_lookups_total",
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
            Family::counter(&format!("packetpath_ovs_vport_{}_total", c.stem), &help, VP)
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
                    f.push(&[dp, &v.name, role], (c.get)(s) as f64);
                }
            }
            if let Some((ok, fail)) = v.upcalls {
                upcalls.push(&[dp, &v.name, role, "success"], ok as f64);
                upcalls.push(&[dp, &v.name, role, "fail"], fail as f64);
            }
        }
    }
    let mut out = vec![lookups, flows, masks, mask_hits, cache_hits, upcalls];
    out.append(&mut vport_families);
    out
}

pub struct Ovs {
    transport: Arc<dyn Transport>,
    devices: super::interfaces::Options,
    families: FamilyCache,
    topology: Arc<SharedTopology>,
}

impl Ovs {
    pub fn new(c: &Config) -> Self {
        Ovs {
            transport: c.transport.clone(),
            devices: c.interfaces.clone(),
            families: FamilyCache::default(),
            topology: c.ovs_topology.clone(),
        }
    }
}

impl Collector for Ovs {
    fn collect(&self) -> Result<Vec<Family>, CollectError> {
        let t = self.transport.as_ref();
        let topo = self
            .families
            .with(t, |f| self.topology.get(t, f, Reader::Ovs))?;
        Ok(render(&topo, &self.devices))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One datapath, ovs-system, with these vports and roles.
    fn topology(vports: Vec<Vport>, roles: Vec<&'static str>) -> [Topology; 1] {
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
            ty: 1,
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
            vec!["tunnel", "vm", "vm"],
        );
        let devices = crate::collectors::interfaces::Options {
            device_include: None,
            device_exclude: Some(regex::Regex::new("^tap2$").unwrap()),
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
            ty: 1,
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
            vec!["vm", "other"],
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
