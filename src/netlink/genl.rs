//! Generic netlink: resolving a family by name and framing requests to it.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use super::wire::{self, DecodeError};
use super::{Protocol, Request};

/// The generic netlink controller's fixed message type (NLMSG_MIN_TYPE).
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_VERSION: u16 = 3;
const CTRL_ATTR_MAXATTR: u16 = 5;
const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;
/// struct genlmsghdr: cmd, version, reserved.
pub const GENL_HDRLEN: usize = 4;
const FAMILY: &str = "nlctrl";

/// A resolved generic netlink family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub id: u16,
    pub version: u32,
    /// The highest attribute number the family knows (newer kernels add attributes).
    pub maxattr: u32,
}

/// A dump of every registered family. Asking for one family by name would make the
/// kernel try to load its module (request_module), and an exporter must not load
/// openvswitch on a host that does not use it; a dump never does.
pub fn families_request() -> Request {
    Request {
        protocol: Protocol::Generic,
        name: "genl_families",
        scope: None,
        ty: GENL_ID_CTRL,
        flags: wire::NLM_F_REQUEST | wire::NLM_F_DUMP,
        payload: vec![CTRL_CMD_GETFAMILY, 1, 0, 0],
    }
}

/// The controller's dump: every family's name, id and version.
pub fn parse_families(buf: &[u8]) -> Result<Vec<(String, Family)>, DecodeError> {
    let mut out = Vec::new();
    for m in wire::data_messages(FAMILY, buf, true)? {
        let (_, attrs) = split(FAMILY, m.payload)?;
        let (mut id, mut version, mut maxattr, mut name) = (None, 0, 0, None);
        for a in wire::attrs(FAMILY, "CTRL_ATTR", attrs) {
            let a = a?;
            match a.ty {
                CTRL_ATTR_FAMILY_ID => {
                    let [lo, hi] = a.payload.get(..2).and_then(|s| s.try_into().ok()).ok_or(
                        DecodeError::AttrSize {
                            family: FAMILY,
                            attr: "CTRL_ATTR_FAMILY_ID",
                            len: a.payload.len(),
                            expected: 2,
                        },
                    )?;
                    id = Some(u16::from_ne_bytes([lo, hi]));
                }
                CTRL_ATTR_FAMILY_NAME => {
                    name = Some(a.string(FAMILY, "CTRL_ATTR_FAMILY_NAME")?.to_owned())
                }
                CTRL_ATTR_VERSION => version = a.u32_ne(FAMILY, "CTRL_ATTR_VERSION")?,
                CTRL_ATTR_MAXATTR => maxattr = a.u32_ne(FAMILY, "CTRL_ATTR_MAXATTR")?,
                _ => {}
            }
        }
        if let (Some(name), Some(id)) = (name, id) {
            out.push((
                name,
                Family {
                    id,
                    version,
                    maxattr,
                },
            ));
        }
    }
    Ok(out)
}

/// The family's id and the id of its multicast group `group`, from the controller's dump
/// (both from the same dump, so they belong to the same registration of the family);
/// `None` when the family or the group is not there.
pub fn parse_mcast_group(
    buf: &[u8],
    family: &str,
    group: &str,
) -> Result<Option<(u16, u32)>, DecodeError> {
    for m in wire::data_messages(FAMILY, buf, true)? {
        let (_, attrs) = split(FAMILY, m.payload)?;
        let (mut name, mut groups, mut family_id) = (None, None, None);
        for a in wire::attrs(FAMILY, "CTRL_ATTR", attrs) {
            let a = a?;
            match a.ty {
                CTRL_ATTR_FAMILY_NAME => name = Some(a.string(FAMILY, "CTRL_ATTR_FAMILY_NAME")?),
                CTRL_ATTR_FAMILY_ID => {
                    family_id = a
                        .payload
                        .get(..2)
                        .and_then(|b| <[u8; 2]>::try_from(b).ok())
                        .map(u16::from_ne_bytes)
                }
                CTRL_ATTR_MCAST_GROUPS => groups = Some(a.payload),
                _ => {}
            }
        }
        if name != Some(family) {
            continue;
        }
        let Some(family_id) = family_id else {
            return Ok(None);
        };
        for g in wire::attrs(FAMILY, "CTRL_ATTR_MCAST_GROUPS", groups.unwrap_or_default()) {
            let (mut gname, mut id) = (None, None);
            for a in wire::attrs(FAMILY, "CTRL_ATTR_MCAST_GRP", g?.payload) {
                let a = a?;
                match a.ty {
                    CTRL_ATTR_MCAST_GRP_NAME => {
                        gname = Some(a.string(FAMILY, "CTRL_ATTR_MCAST_GRP_NAME")?)
                    }
                    CTRL_ATTR_MCAST_GRP_ID => {
                        id = Some(a.u32_ne(FAMILY, "CTRL_ATTR_MCAST_GRP_ID")?)
                    }
                    _ => {}
                }
            }
            if gname == Some(group) {
                return Ok(id.map(|id| (family_id, id)));
            }
        }
        return Ok(None);
    }
    Ok(None)
}

/// Splits a generic netlink payload into its command and what follows genlmsghdr.
pub fn split<'a>(family: &'static str, payload: &'a [u8]) -> Result<(u8, &'a [u8]), DecodeError> {
    match (payload.first(), payload.get(GENL_HDRLEN..)) {
        (Some(&cmd), Some(rest)) => Ok((cmd, rest)),
        _ => Err(DecodeError::ShortStruct {
            family,
            what: "genlmsghdr",
            len: payload.len(),
            need: GENL_HDRLEN,
        }),
    }
}

/// A request to family `id`: genlmsghdr then `body` (family header and attributes).
pub fn request(
    id: u16,
    cmd: u8,
    version: u8,
    name: &'static str,
    dump: bool,
    body: &[u8],
) -> Request {
    let mut payload = vec![cmd, version, 0, 0];
    payload.extend_from_slice(body);
    Request {
        protocol: Protocol::Generic,
        name,
        scope: None,
        ty: id,
        flags: wire::NLM_F_REQUEST | if dump { wire::NLM_F_DUMP } else { 0 },
        payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_dump_decodes_names_and_ids() {
        let fam = |id: u16, name: &[u8]| {
            let mut p = vec![1, 2, 0, 0];
            wire::push_attr(&mut p, CTRL_ATTR_FAMILY_ID, &id.to_ne_bytes());
            wire::push_attr(&mut p, CTRL_ATTR_FAMILY_NAME, name);
            wire::push_attr(&mut p, CTRL_ATTR_VERSION, &2u32.to_ne_bytes());
            let mut m = wire::request(GENL_ID_CTRL, wire::NLM_F_MULTI, 1, &p);
            m[..4].copy_from_slice(&((16 + p.len()) as u32).to_ne_bytes());
            m
        };
        let mut buf = [fam(16, b"nlctrl\0"), fam(30, b"ovs_datapath\0")].concat();
        let mut done = wire::request(wire::NLMSG_DONE, wire::NLM_F_MULTI, 1, &0i32.to_ne_bytes());
        done[..4].copy_from_slice(&20u32.to_ne_bytes());
        buf.extend(done);
        assert_eq!(
            parse_mcast_group(&buf, "ovs_datapath", "ovs_flow").unwrap(),
            None
        );
        let got = parse_families(&buf).unwrap();
        assert_eq!(
            got[1],
            (
                "ovs_datapath".to_owned(),
                Family {
                    id: 30,
                    version: 2,
                    maxattr: 0
                }
            )
        );
        assert_eq!(got.len(), 2);
        assert!(parse_families(&buf[..buf.len() - 20]).is_err());
    }

    #[test]
    fn multicast_groups_are_found_by_family_and_name() {
        let mut groups = Vec::new();
        let mut g = Vec::new();
        wire::push_attr(&mut g, CTRL_ATTR_MCAST_GRP_NAME, b"ovs_flow\0");
        wire::push_attr(&mut g, CTRL_ATTR_MCAST_GRP_ID, &9u32.to_ne_bytes());
        wire::push_attr(&mut groups, 1, &g);
        let mut p = vec![1, 2, 0, 0];
        wire::push_attr(&mut p, CTRL_ATTR_FAMILY_ID, &32u16.to_ne_bytes());
        wire::push_attr(&mut p, CTRL_ATTR_FAMILY_NAME, b"ovs_flow\0");
        wire::push_attr(&mut p, CTRL_ATTR_MCAST_GROUPS, &groups);
        let mut buf = wire::request(GENL_ID_CTRL, wire::NLM_F_MULTI, 1, &p);
        buf[..4].copy_from_slice(&((16 + p.len()) as u32).to_ne_bytes());
        let whole = buf.len();
        let mut done = wire::request(wire::NLMSG_DONE, wire::NLM_F_MULTI, 1, &0i32.to_ne_bytes());
        done[..4].copy_from_slice(&20u32.to_ne_bytes());
        buf.extend(done);
        assert_eq!(
            parse_mcast_group(&buf, "ovs_flow", "ovs_flow").unwrap(),
            Some((32, 9))
        );
        assert_eq!(parse_mcast_group(&buf, "ovs_flow", "other").unwrap(), None);
        assert!(parse_mcast_group(&buf[..whole - 4], "ovs_flow", "ovs_flow").is_err());
    }
}
