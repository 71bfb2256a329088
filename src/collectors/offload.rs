//! `offload`: checksum and segmentation offloads of the devices that carry tunnel traffic,
//! from one ethtool-netlink `ETHTOOL_MSG_FEATURES_GET` dump per scrape (Linux 5.6+).
//!
//! A checksum a device leaves to hardware that never computes it, or a GSO segment whose
//! checksum is finished after conntrack looked at it, is how a checksum fault shows up
//! as conntrack-invalid packets. Feature names are the kernel's own (`ethtool -k`), read
//! once from its `ETH_SS_FEATURES` string set; the dump asks for compact bitsets so a
//! node with thousands of TAPs costs a few hundred bytes per device.
//!
//! By default only devices with role `tunnel` or `ovs` and the uplinks (the devices of
//! the default routes, with their bond slaves and VLAN parents) are exported; VM ports
//! opt in with `--collector.offload.vm-ports`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use regex::Regex;

use super::interfaces::{self, Link, SharedLinks};
use super::{CollectError, Collector, Config, Spec};
use crate::netlink::genl;
use crate::netlink::wire::{self, DecodeError};
use crate::netlink::{Protocol, Request, Transport};
use crate::render::Family;
use crate::roles::{Role, RoleRules};

pub const SPEC: Spec = Spec {
    name: "offload",
    help: "Checksum and segmentation offloads of tunnel, OVS and uplink devices (ethtool netlink, Linux 5.6+).",
    default_enabled: true,
    build: |c| Arc::new(Offload::new(c)),
};

const FAMILY: &str = "ethtool";
const ETHTOOL_GENL_VERSION: u8 = 1;
const ETHTOOL_MSG_STRSET_GET: u8 = 1;
const ETHTOOL_MSG_FEATURES_GET: u8 = 11;
const ETHTOOL_A_HEADER_DEV_INDEX: u16 = 1;
const ETHTOOL_A_HEADER_DEV_NAME: u16 = 2;
const ETHTOOL_A_HEADER_FLAGS: u16 = 3;
const ETHTOOL_FLAG_COMPACT_BITSETS: u32 = 1;
const ETHTOOL_A_FEATURES_HEADER: u16 = 1;
const ETHTOOL_A_FEATURES_WANTED: u16 = 3;
const ETHTOOL_A_FEATURES_ACTIVE: u16 = 4;
const ETHTOOL_A_BITSET_NOMASK: u16 = 1;
const ETHTOOL_A_BITSET_BITS: u16 = 3;
const ETHTOOL_A_BITSET_VALUE: u16 = 4;
const ETHTOOL_A_BITSET_BITS_BIT: u16 = 1;
const ETHTOOL_A_BITSET_BIT_INDEX: u16 = 1;
const ETHTOOL_A_BITSET_BIT_VALUE: u16 = 3;
const ETHTOOL_A_STRSET_HEADER: u16 = 1;
const ETHTOOL_A_STRSET_STRINGSETS: u16 = 2;
const ETHTOOL_A_STRINGSETS_STRINGSET: u16 = 1;
const ETHTOOL_A_STRINGSET_ID: u16 = 1;
const ETHTOOL_A_STRINGSET_STRINGS: u16 = 3;
const ETHTOOL_A_STRINGS_STRING: u16 = 1;
const ETHTOOL_A_STRING_INDEX: u16 = 1;
const ETHTOOL_A_STRING_VALUE: u16 = 2;
const ETH_SS_FEATURES: u32 = 4;

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

const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTMSG_LEN: usize = 12;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_MULTIPATH: u16 = 9;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u32 = 254;
const RTN_UNICAST: u8 = 1;
/// struct rtnexthop: len, flags, hops, ifindex.
const RTNH_LEN: usize = 8;

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Export VM ports too (one series per feature and port).
    pub vm_ports: bool,
    /// Devices exported whatever their role; role `other` becomes `uplink` (the tunnel
    /// network's devices where the default route does not use them).
    pub device_include: Option<Regex>,
}

/// One device's features: bit indices wanted and active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    pub ifindex: u32,
    pub name: String,
    pub wanted: Vec<u32>,
    pub active: Vec<u32>,
}

fn header(flags: u32) -> Vec<u8> {
    let mut h = Vec::new();
    wire::push_attr(&mut h, ETHTOOL_A_HEADER_FLAGS, &flags.to_ne_bytes());
    h
}

pub fn features_request(family: u16) -> Request {
    let mut body = Vec::new();
    wire::push_attr(
        &mut body,
        ETHTOOL_A_FEATURES_HEADER | wire::NLA_F_NESTED,
        &header(ETHTOOL_FLAG_COMPACT_BITSETS),
    );
    genl::request(
        family,
        ETHTOOL_MSG_FEATURES_GET,
        ETHTOOL_GENL_VERSION,
        "ethtool_features_get",
        true,
        &body,
    )
}

/// The global (no device) ETH_SS_FEATURES string set: every feature's name by bit.
pub fn names_request(family: u16) -> Request {
    let mut id = Vec::new();
    wire::push_attr(
        &mut id,
        ETHTOOL_A_STRINGSET_ID,
        &ETH_SS_FEATURES.to_ne_bytes(),
    );
    let mut set = Vec::new();
    wire::push_attr(
        &mut set,
        ETHTOOL_A_STRINGSETS_STRINGSET | wire::NLA_F_NESTED,
        &id,
    );
    let mut body = Vec::new();
    wire::push_attr(
        &mut body,
        ETHTOOL_A_STRSET_HEADER | wire::NLA_F_NESTED,
        &header(0),
    );
    wire::push_attr(
        &mut body,
        ETHTOOL_A_STRSET_STRINGSETS | wire::NLA_F_NESTED,
        &set,
    );
    genl::request(
        family,
        ETHTOOL_MSG_STRSET_GET,
        ETHTOOL_GENL_VERSION,
        "ethtool_strset_features",
        false,
        &body,
    )
}

/// Feature names by bit index, from the string set reply.
pub fn parse_names(buf: &[u8]) -> Result<Vec<String>, DecodeError> {
    let mut names = Vec::new();
    for m in wire::data_messages(FAMILY, buf, false)? {
        let (_, attrs) = genl::split(FAMILY, m.payload)?;
        for a in wire::attrs(FAMILY, "ETHTOOL_A_STRSET", attrs) {
            let a = a?;
            if a.ty != ETHTOOL_A_STRSET_STRINGSETS {
                continue;
            }
            for set in wire::attrs(FAMILY, "ETHTOOL_A_STRINGSETS", a.payload) {
                let set = set?;
                if set.ty != ETHTOOL_A_STRINGSETS_STRINGSET {
                    continue;
                }
                let (mut id, mut strings) = (None, None);
                for s in wire::attrs(FAMILY, "ETHTOOL_A_STRINGSET", set.payload) {
                    let s = s?;
                    match s.ty {
                        ETHTOOL_A_STRINGSET_ID => {
                            id = Some(s.u32_ne(FAMILY, "ETHTOOL_A_STRINGSET_ID")?)
                        }
                        ETHTOOL_A_STRINGSET_STRINGS => strings = Some(s.payload),
                        _ => {}
                    }
                }
                if id != Some(ETH_SS_FEATURES) {
                    continue;
                }
                for st in wire::attrs(FAMILY, "ETHTOOL_A_STRINGS", strings.unwrap_or_default()) {
                    let st = st?;
                    if st.ty != ETHTOOL_A_STRINGS_STRING {
                        continue;
                    }
                    let (mut index, mut value) = (None, None);
                    for f in wire::attrs(FAMILY, "ETHTOOL_A_STRING", st.payload) {
                        let f = f?;
                        match f.ty {
                            ETHTOOL_A_STRING_INDEX => {
                                index = Some(f.u32_ne(FAMILY, "ETHTOOL_A_STRING_INDEX")?)
                            }
                            ETHTOOL_A_STRING_VALUE => value = Some(f.name()),
                            _ => {}
                        }
                    }
                    // The kernel sends indices in order; an index past a sane bound
                    // would only make the table huge, so it is ignored.
                    if let (Some(i), Some(v)) = (index, value) {
                        let i = i as usize;
                        if i < 4096 {
                            if names.len() <= i {
                                names.resize(i + 1, String::new());
                            }
                            if let Some(slot) = names.get_mut(i) {
                                *slot = v;
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(names)
}

/// The bits set in a bitset: compact (a u32 array, bit i of word i/32) or verbose (one
/// nest per bit; in a list without a mask every listed bit is set).
fn bitset(payload: &[u8]) -> Result<Vec<u32>, DecodeError> {
    let mut set = Vec::new();
    let mut nomask = false;
    let mut verbose = None;
    for a in wire::attrs(FAMILY, "ETHTOOL_A_BITSET", payload) {
        let a = a?;
        match a.ty {
            ETHTOOL_A_BITSET_NOMASK => nomask = true,
            ETHTOOL_A_BITSET_VALUE => {
                for (w, chunk) in a.payload.chunks_exact(4).enumerate() {
                    let word = u32::from_ne_bytes([
                        chunk.first().copied().unwrap_or(0),
                        chunk.get(1).copied().unwrap_or(0),
                        chunk.get(2).copied().unwrap_or(0),
                        chunk.get(3).copied().unwrap_or(0),
                    ]);
                    for b in 0..32u32 {
                        if word & (1 << b) != 0 {
                            set.push(w as u32 * 32 + b);
                        }
                    }
                }
            }
            ETHTOOL_A_BITSET_BITS => verbose = Some(a.payload),
            _ => {}
        }
    }
    for bit in wire::attrs(FAMILY, "ETHTOOL_A_BITSET_BITS", verbose.unwrap_or_default()) {
        let bit = bit?;
        if bit.ty != ETHTOOL_A_BITSET_BITS_BIT {
            continue;
        }
        let (mut index, mut value) = (None, false);
        for f in wire::attrs(FAMILY, "ETHTOOL_A_BITSET_BIT", bit.payload) {
            let f = f?;
            match f.ty {
                ETHTOOL_A_BITSET_BIT_INDEX => {
                    index = Some(f.u32_ne(FAMILY, "ETHTOOL_A_BITSET_BIT_INDEX")?)
                }
                ETHTOOL_A_BITSET_BIT_VALUE => value = true,
                _ => {}
            }
        }
        if let Some(i) = index.filter(|_| value || nomask) {
            set.push(i);
        }
    }
    Ok(set)
}

/// Decodes a FEATURES_GET dump: one message per device.
pub fn parse_features(buf: &[u8]) -> Result<Vec<Features>, DecodeError> {
    let mut out = Vec::new();
    for m in wire::data_messages(FAMILY, buf, true)? {
        let (_, attrs) = genl::split(FAMILY, m.payload)?;
        let mut f = Features {
            ifindex: 0,
            name: String::new(),
            wanted: Vec::new(),
            active: Vec::new(),
        };
        for a in wire::attrs(FAMILY, "ETHTOOL_A_FEATURES", attrs) {
            let a = a?;
            match a.ty {
                ETHTOOL_A_FEATURES_HEADER => {
                    for h in wire::attrs(FAMILY, "ETHTOOL_A_HEADER", a.payload) {
                        let h = h?;
                        match h.ty {
                            ETHTOOL_A_HEADER_DEV_INDEX => {
                                f.ifindex = h.u32_ne(FAMILY, "ETHTOOL_A_HEADER_DEV_INDEX")?
                            }
                            ETHTOOL_A_HEADER_DEV_NAME => f.name = h.name(),
                            _ => {}
                        }
                    }
                }
                ETHTOOL_A_FEATURES_WANTED => f.wanted = bitset(a.payload)?,
                ETHTOOL_A_FEATURES_ACTIVE => f.active = bitset(a.payload)?,
                _ => {}
            }
        }
        out.push(f);
    }
    Ok(out)
}

pub fn routes_request() -> Request {
    Request {
        protocol: Protocol::Route,
        name: "rtnl_getroute",
        scope: None,
        ty: RTM_GETROUTE,
        flags: wire::NLM_F_REQUEST | wire::NLM_F_DUMP,
        payload: vec![0; RTMSG_LEN],
    }
}

/// The output devices of the main table's default routes (IPv4 and IPv6, multipath too).
pub fn parse_default_devices(buf: &[u8]) -> Result<Vec<u32>, DecodeError> {
    let mut out = Vec::new();
    for m in wire::data_messages("rtnetlink", buf, true)? {
        if m.ty != RTM_NEWROUTE {
            continue;
        }
        let p = m.payload;
        let short = || DecodeError::ShortStruct {
            family: "rtnetlink",
            what: "rtmsg",
            len: p.len(),
            need: RTMSG_LEN,
        };
        let dst_len = *p.get(1).ok_or_else(short)?;
        let mut table = u32::from(*p.get(4).ok_or_else(short)?);
        let rtype = *p.get(7).ok_or_else(short)?;
        let rest = p.get(RTMSG_LEN..).ok_or_else(short)?;
        let (mut oif, mut has_dst, mut hops) = (None, false, Vec::new());
        for a in wire::attrs("rtnetlink", "rtmsg", rest) {
            let a = a?;
            match a.ty {
                RTA_DST => has_dst = true,
                RTA_OIF => oif = Some(a.u32_ne("rtnetlink", "RTA_OIF")?),
                RTA_TABLE => table = a.u32_ne("rtnetlink", "RTA_TABLE")?,
                RTA_MULTIPATH => {
                    let mut at = 0;
                    while let Some(len) = wire::read_u16_ne(a.payload, at) {
                        if let Some(idx) = wire::read_u32_ne(a.payload, at + 4) {
                            hops.push(idx);
                        }
                        let len = usize::from(len).max(RTNH_LEN);
                        at += (len + 3) & !3;
                    }
                }
                _ => {}
            }
        }
        if dst_len == 0 && !has_dst && table == RT_TABLE_MAIN && rtype == RTN_UNICAST {
            out.extend(oif);
            out.extend(hops);
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The uplinks: the default routes' devices, the devices under them (bond slaves, bridge
/// ports, a VLAN's parent) and under those, two levels deep.
pub fn uplinks(links: &[Link], default_devices: &[u32]) -> HashSet<u32> {
    let mut set: HashSet<u32> = default_devices.iter().copied().collect();
    for _ in 0..2 {
        let below: Vec<u32> = links
            .iter()
            .filter_map(|l| {
                let idx = l.index as u32;
                if l.master.is_some_and(|m| set.contains(&m)) {
                    return Some(idx);
                }
                // IFLA_LINK is a VLAN's parent, but a veth's peer: only stacked kinds.
                let stacked = matches!(l.kind.as_deref(), Some("vlan" | "macvlan" | "ipvlan"));
                l.link.filter(|_| stacked && set.contains(&idx))
            })
            .collect();
        set.extend(below);
    }
    set
}

/// The role label of a device the collector exports, or None when it is not exported.
fn role_label(
    link: &Link,
    rules: &RoleRules,
    opts: &Options,
    uplinks: &HashSet<u32>,
) -> Option<&'static str> {
    let role = rules.classify(&link.name, link.kind.as_deref());
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
    rules: &RoleRules,
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
        let Some(role) = role_label(link, rules, opts, uplinks) else {
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
    links: Arc<SharedLinks>,
    rules: RoleRules,
    opts: Options,
    /// The ethtool family's id and the feature names; the family is built into the
    /// kernel, so both hold until a request fails.
    cache: Mutex<Option<(u16, Arc<Vec<String>>)>>,
}

impl Offload {
    pub fn new(c: &Config) -> Self {
        Offload {
            transport: c.transport.clone(),
            links: c.links.clone(),
            rules: c.roles.clone(),
            opts: c.offload.clone(),
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
    fn collect(&self) -> Result<Vec<Family>, CollectError> {
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
        let links = interfaces::links(&self.links, t, interfaces::Reader::Offload)?;
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
            &self.rules,
            &self.opts,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = wire::request(ty, wire::NLM_F_MULTI, 1, payload);
        let len = (wire::NLMSG_HDRLEN + payload.len()) as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    fn done() -> Vec<u8> {
        let mut d = wire::request(wire::NLMSG_DONE, wire::NLM_F_MULTI, 1, &0i32.to_ne_bytes());
        d[..4].copy_from_slice(&20u32.to_ne_bytes());
        d
    }

    fn link(index: i32, name: &str, kind: Option<&str>, master: Option<u32>) -> Link {
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

    #[test]
    fn compact_and_verbose_bitsets_agree() {
        let mut compact = Vec::new();
        wire::push_attr(&mut compact, ETHTOOL_A_BITSET_NOMASK, &[]);
        wire::push_attr(&mut compact, 2, &40u32.to_ne_bytes());
        let words = [(1u32 << 3) | (1 << 31), 1 << 2];
        wire::push_attr(
            &mut compact,
            ETHTOOL_A_BITSET_VALUE,
            &[words[0].to_ne_bytes(), words[1].to_ne_bytes()].concat(),
        );
        assert_eq!(bitset(&compact).unwrap(), vec![3, 31, 34]);

        let mut bits = Vec::new();
        for (i, on) in [(3u32, true), (5, false), (34, true)] {
            let mut b = Vec::new();
            wire::push_attr(&mut b, ETHTOOL_A_BITSET_BIT_INDEX, &i.to_ne_bytes());
            wire::push_attr(&mut b, 2, b"x\0");
            if on {
                wire::push_attr(&mut b, ETHTOOL_A_BITSET_BIT_VALUE, &[]);
            }
            wire::push_attr(&mut bits, ETHTOOL_A_BITSET_BITS_BIT, &b);
        }
        let mut verbose = Vec::new();
        wire::push_attr(&mut verbose, ETHTOOL_A_BITSET_BITS, &bits);
        assert_eq!(bitset(&verbose).unwrap(), vec![3, 34]);
        // Truncated input is an error naming the attribute, never a panic.
        let err = bitset(&verbose[..verbose.len() - 3]).unwrap_err();
        assert!(err.to_string().contains("ETHTOOL_A_BITSET"), "{err}");
    }

    #[test]
    fn default_routes_and_what_lies_under_them() {
        let route = |dst_len: u8, table: u8, oif: u32, extra: &[(u16, Vec<u8>)]| {
            let mut p = vec![2, dst_len, 0, 0, table, 3, 0, RTN_UNICAST, 0, 0, 0, 0];
            wire::push_attr(&mut p, RTA_OIF, &oif.to_ne_bytes());
            for (t, v) in extra {
                wire::push_attr(&mut p, *t, v);
            }
            msg(RTM_NEWROUTE, &p)
        };
        let mut mp = Vec::new();
        for idx in [7u32, 8] {
            mp.extend_from_slice(&8u16.to_ne_bytes());
            mp.extend_from_slice(&[0, 0]);
            mp.extend_from_slice(&idx.to_ne_bytes());
        }
        let buf = [
            route(0, 254, 4, &[]),
            route(24, 254, 5, &[(RTA_DST, vec![10, 0, 0, 0])]),
            route(0, 200, 6, &[]),
            route(
                0,
                252,
                9,
                &[(RTA_TABLE, RT_TABLE_MAIN.to_ne_bytes().to_vec())],
            ),
            route(0, 254, 4, &[(RTA_MULTIPATH, mp)]),
            done(),
        ]
        .concat();
        assert_eq!(parse_default_devices(&buf).unwrap(), vec![4, 7, 8, 9]);

        let mut vlan = link(4, "bond0.100", Some("vlan"), None);
        vlan.link = Some(3);
        let links = vec![
            link(1, "eth0", None, Some(3)),
            link(2, "eth1", None, Some(3)),
            link(3, "bond0", Some("bond"), None),
            vlan,
            link(5, "tap0", Some("tun"), Some(10)),
        ];
        let mut up: Vec<u32> = uplinks(&links, &[4]).into_iter().collect();
        up.sort_unstable();
        assert_eq!(up, vec![1, 2, 3, 4]);
    }

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
                render(&features, &names, &links, &up, &RoleRules::default(), opts),
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
