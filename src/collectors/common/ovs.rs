//! The OVS kernel datapath as several collectors need it: the generic netlink families
//! (`ovs_datapath`, `ovs_vport`, `ovs_flow`), the datapaths and their ports with roles.
//!
//! The families are resolved once and again whenever a request fails: the openvswitch
//! module can be unloaded and reloaded, and its families then come back under new ids.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::HashMap;
use std::sync::Mutex;

use super::Devices;
use super::links::{self, Stats};
use crate::collectors::CollectError;
use crate::netlink::genl::{self, GENL_HDRLEN};
use crate::netlink::wire::{self, DecodeError};
use crate::netlink::{Request, Transport, TransportError};
use crate::roles::Role;

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

/// enum ovs_vport_type.
pub const OVS_VPORT_TYPE_NETDEV: u32 = 1;
pub const OVS_VPORT_TYPE_INTERNAL: u32 = 2;
pub const OVS_VPORT_TYPE_GRE: u32 = 3;
pub const OVS_VPORT_TYPE_VXLAN: u32 = 4;
pub const OVS_VPORT_TYPE_GENEVE: u32 = 5;

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
        OVS_VPORT_TYPE_INTERNAL => Some("openvswitch"),
        OVS_VPORT_TYPE_GRE => Some("gre"),
        OVS_VPORT_TYPE_VXLAN => Some("vxlan"),
        OVS_VPORT_TYPE_GENEVE => Some("geneve"),
        _ => None,
    }
}

/// Link kinds of NETDEV vports by ifindex, asked of rtnetlink once per device.
#[derive(Debug, Default)]
pub struct LinkKinds(Mutex<HashMap<u32, (String, Option<String>)>>);

impl LinkKinds {
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
                    .exchange(&links::request_one(idx))
                    .ok()
                    .and_then(|b| links::parse_one(&b).ok().flatten())
                    .and_then(|l| l.kind);
                cache.insert(idx, (v.name.clone(), kind.clone()));
                kind
            })
            .collect()
    }
}

/// A datapath with its ports and their roles, in the order of `vports`.
pub struct Topology {
    pub datapath: Datapath,
    pub vports: Vec<Vport>,
    pub roles: Vec<Role>,
}

/// The OVS datapaths of one read, and the family ids they were read under.
pub struct View {
    pub families: Families,
    pub datapaths: Vec<Topology>,
}

/// The OVS families and the link kinds of NETDEV ports, kept between scrapes.
#[derive(Debug, Default)]
pub struct Source {
    pub families: FamilyCache,
    kinds: LinkKinds,
}

impl Source {
    /// Dumps every datapath and its ports, resolving the families again when a reloaded
    /// module has changed them.
    pub fn read(&self, t: &dyn Transport, devices: &Devices) -> Result<View, CollectError> {
        self.families.with(t, |f| {
            Ok(View {
                families: *f,
                datapaths: fetch_topology(t, f, &self.kinds, devices)?,
            })
        })
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
    devices: &Devices,
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
                .map(|(kind, v)| devices.role(&v.name, kind.as_deref()))
                .collect();
            Ok(Topology {
                datapath,
                vports,
                roles,
            })
        })
        .collect()
}
