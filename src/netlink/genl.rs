//! Generic netlink: resolving a family by name and framing requests to it.

use super::wire::{self, DecodeError};
use super::{Protocol, Request};

/// The generic netlink controller's fixed message type (NLMSG_MIN_TYPE).
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_VERSION: u16 = 3;
/// struct genlmsghdr: cmd, version, reserved.
pub const GENL_HDRLEN: usize = 4;
const FAMILY: &str = "nlctrl";

/// A resolved generic netlink family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub id: u16,
    pub version: u32,
}

/// CTRL_CMD_GETFAMILY for `family` (e.g. "ovs_datapath"); `name` names the request in
/// captures.
pub fn family_request(family: &str, name: &'static str) -> Request {
    let mut payload = vec![CTRL_CMD_GETFAMILY, 1, 0, 0];
    let mut cname = family.as_bytes().to_vec();
    cname.push(0);
    wire::push_attr(&mut payload, CTRL_ATTR_FAMILY_NAME, &cname);
    Request {
        protocol: Protocol::Generic,
        name,
        scope: None,
        ty: GENL_ID_CTRL,
        flags: wire::NLM_F_REQUEST,
        payload,
    }
}

/// The controller's answer: `Ok(None)` when no such family is registered (ENOENT).
pub fn parse_family(buf: &[u8]) -> Result<Option<Family>, DecodeError> {
    let msgs = match wire::data_messages(FAMILY, buf, false) {
        Ok(m) => m,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    for m in msgs {
        let (_, attrs) = split(FAMILY, m.payload)?;
        let (mut id, mut version) = (None, 0);
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
                CTRL_ATTR_VERSION => version = a.u32_ne(FAMILY, "CTRL_ATTR_VERSION")?,
                _ => {}
            }
        }
        if let Some(id) = id {
            return Ok(Some(Family { id, version }));
        }
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
    fn family_request_layout() {
        let r = family_request("ovs_flow", "x");
        assert_eq!(r.ty, 0x10);
        // genlmsghdr, then attribute len 13 (4 + "ovs_flow\0"), type 2, padded to 16.
        assert_eq!(&r.payload[..8], &[3, 1, 0, 0, 13, 0, 2, 0]);
        assert_eq!(&r.payload[8..17], b"ovs_flow\0");
        assert_eq!(r.payload.len(), 4 + 16);
    }

    #[test]
    fn absent_family_is_none_not_an_error() {
        let mut buf = wire::request(wire::NLMSG_ERROR, 0, 1, &(-libc::ENOENT).to_ne_bytes());
        buf[..4].copy_from_slice(&20u32.to_ne_bytes());
        assert_eq!(parse_family(&buf), Ok(None));
    }
}
