//! The uplinks: the devices a tunnel's encapsulated packets leave and arrive by, found
//! from the main table's default routes and what lies under their devices.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::HashSet;

use crate::collectors::common::links::Link;
use crate::netlink::wire::{self, DecodeError};
use crate::netlink::{Protocol, Request};

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
/// A route that only names a nexthop object (RTA_NH_ID, with nexthop_compat_mode=0) has
/// no device here: such uplinks need --collector.offload.device-include.
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

/// The uplinks: the default routes' devices, the devices under them (bond slaves, Linux
/// bridge ports, a VLAN's parent) and under those, two levels deep. When the default
/// route is on an OVS bridge's internal port (br-ex), the bridge's physical ports are
/// under OVS's own master, ovs-system: its ports that are NICs or bonds count too.
pub fn uplinks(links: &[Link], default_devices: &[u32]) -> HashSet<u32> {
    let mut set: HashSet<u32> = default_devices.iter().copied().collect();
    let ovs = |l: &Link| l.kind.as_deref() == Some("openvswitch");
    if links
        .iter()
        .any(|l| ovs(l) && set.contains(&(l.index as u32)))
    {
        let masters: HashSet<u32> = links
            .iter()
            .filter(|l| ovs(l))
            .map(|l| l.index as u32)
            .collect();
        set.extend(
            links
                .iter()
                .filter(|l| l.master.is_some_and(|m| masters.contains(&m)))
                .filter(|l| matches!(l.kind.as_deref(), None | Some("bond" | "team" | "vlan")))
                .map(|l| l.index as u32),
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::offload::test_link as link;

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

        // The default route on br-ex: the NIC in the bridge is an uplink, the TAP is not.
        let links = vec![
            link(10, "ovs-system", Some("openvswitch"), None),
            link(11, "br-ex", Some("openvswitch"), Some(10)),
            link(12, "eno1", None, Some(10)),
            link(13, "tap0", Some("tun"), Some(10)),
            link(14, "genev_sys_6081", Some("geneve"), Some(10)),
        ];
        let mut up: Vec<u32> = uplinks(&links, &[11]).into_iter().collect();
        up.sort_unstable();
        assert_eq!(up, vec![11, 12]);
    }
}
