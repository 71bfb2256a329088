//! Decoding one datapath flow message (a dump entry or a notification) and deciding, from
//! its actions, whether the flow drops what it matches.
//!
//! A flow drops when no action hands the packet on: nothing outputs it, recirculates it or
//! gives it to ovs-vswitchd to process. Sending a copy to the controller (OVN's logged
//! ACLs), sampling it (sFlow, IPFIX, OVN's drop sampling through `sample()` or
//! `psample()`) or running it through conntrack does not hand it on.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::hash::{Hash, Hasher};

use crate::collectors::common::ovs;
use crate::netlink::wire::{self, DecodeError};

pub const FAMILY: &str = "ovs_flow";

pub const OVS_FLOW_CMD_NEW: u8 = 1;
pub const OVS_FLOW_CMD_DEL: u8 = 2;
pub const OVS_FLOW_CMD_GET: u8 = 3;
pub const OVS_FLOW_CMD_SET: u8 = 4;

pub const OVS_FLOW_ATTR_KEY: u16 = 1;
pub const OVS_FLOW_ATTR_ACTIONS: u16 = 2;
pub const OVS_FLOW_ATTR_STATS: u16 = 3;
pub const OVS_FLOW_ATTR_MASK: u16 = 7;
pub const OVS_FLOW_ATTR_UFID: u16 = 9;

pub const OVS_KEY_ATTR_IN_PORT: u16 = 3;
/// struct ovs_key_ethernet: eth_src[6], eth_dst[6].
pub const OVS_KEY_ATTR_ETHERNET: u16 = 4;
pub const OVS_KEY_ATTR_TUNNEL: u16 = 16;
pub const OVS_KEY_ATTR_RECIRC_ID: u16 = 20;
pub const OVS_KEY_ATTR_CT_STATE: u16 = 22;
pub const OVS_KEY_ATTR_CT_ZONE: u16 = 23;
pub const OVS_CS_F_INVALID: u32 = 0x10;

pub const OVS_ACTION_ATTR_OUTPUT: u16 = 1;
pub const OVS_ACTION_ATTR_USERSPACE: u16 = 2;
pub const OVS_ACTION_ATTR_SAMPLE: u16 = 6;
pub const OVS_ACTION_ATTR_RECIRC: u16 = 7;
pub const OVS_ACTION_ATTR_CT: u16 = 12;
pub const OVS_ACTION_ATTR_TRUNC: u16 = 13;
pub const OVS_ACTION_ATTR_CLONE: u16 = 20;
pub const OVS_ACTION_ATTR_CHECK_PKT_LEN: u16 = 21;
/// Linux 6.4+: an explicit drop carrying a u32 reason.
pub const OVS_ACTION_ATTR_DROP: u16 = 24;

pub const OVS_CT_ATTR_ZONE: u16 = 2;

const OVS_SAMPLE_ATTR_ACTIONS: u16 = 2;
const OVS_CHECK_PKT_LEN_ATTR_ACTIONS_IF_GREATER: u16 = 2;
const OVS_CHECK_PKT_LEN_ATTR_ACTIONS_IF_LESS_EQUAL: u16 = 3;

pub const OVS_USERSPACE_ATTR_USERDATA: u16 = 2;
/// ovs-vswitchd's user_action_cookie starts with a u16 type (host order). Its values
/// have been stable since OVS 2.6; 2.15 through 3.5 use these.
pub const USER_ACTION_COOKIE_SFLOW: u16 = 1;
pub const USER_ACTION_COOKIE_SLOW_PATH: u16 = 2;
pub const USER_ACTION_COOKIE_FLOW_SAMPLE: u16 = 3;
pub const USER_ACTION_COOKIE_IPFIX: u16 = 4;
pub const USER_ACTION_COOKIE_CONTROLLER: u16 = 5;

/// Nested actions are walked this deep at most (the kernel allows 16 levels of clone).
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The flow's key matches ct_state(+inv): conntrack marked the packets invalid.
    CtInvalid,
    /// Sent to the controller and nowhere else: OVN's logged drop ACLs (and packets the
    /// controller consumes, such as DHCP requests it answers itself).
    Controller,
    /// An explicit drop action (newer kernels), not conntrack's.
    Explicit,
    /// No action hands the packet on: OVS's usual way of dropping.
    NoAction,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        DropReason::CtInvalid,
        DropReason::Controller,
        DropReason::Explicit,
        DropReason::NoAction,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::CtInvalid => "ct_invalid",
            DropReason::Controller => "controller",
            DropReason::Explicit => "explicit",
            DropReason::NoAction => "no_action",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActionClass {
    Drop,
    Output,
    Recirculate,
    Userspace,
}

impl ActionClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionClass::Drop => "drop",
            ActionClass::Output => "output",
            ActionClass::Recirculate => "recirculate",
            ActionClass::Userspace => "userspace",
        }
    }
}

/// What a flow's actions do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    pub class: ActionClass,
    /// Set when the flow drops.
    pub drop: Option<DropReason>,
}

/// A recirculation in a flow's actions: the recirculation id the packet comes back
/// with, and the conntrack zone of the `ct()` action that ran before it, if one did
/// (zone 0 when `ct()` names none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Recirc {
    pub id: u32,
    pub zone: Option<u16>,
}

/// Recirculations remembered per flow; a flow with more is marked [`Lineage::more`].
pub const MAX_RECIRCS: usize = 2;

/// What a flow says about where its packets are heading: the facts drop attribution
/// follows from one flow to the flows its packets recirculate into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Lineage {
    /// The key's recirculation id: 0 for a packet's first pass.
    pub recirc_id: u32,
    /// The conntrack zone the key matches exactly (needs the mask).
    pub ct_zone: Option<u16>,
    /// The destination MAC the key matches in full (needs the mask).
    pub eth_dst: Option<[u8; 6]>,
    /// Where the actions recirculate to; empty when the message has no actions.
    pub recircs: [Option<Recirc>; MAX_RECIRCS],
    /// The actions recirculate to more places than [`MAX_RECIRCS`].
    pub more: bool,
}

impl Lineage {
    pub fn recircs(&self) -> impl Iterator<Item = Recirc> + '_ {
        self.recircs.iter().flatten().copied()
    }
}

/// What the collector needs of one datapath flow message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// OVS_FLOW_CMD_*: GET in a dump, NEW/SET/DEL in notifications.
    pub cmd: u8,
    pub dp_ifindex: u32,
    /// The UFID, or a hash of the key bytes (high bit set) where the flow has none.
    pub id: u128,
    pub in_port: Option<u32>,
    pub tunnel: bool,
    /// None when the message leaves the actions out (a terse delete notification).
    pub actions: Option<Actions>,
    /// None when the message leaves the key out.
    pub lineage: Option<Lineage>,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct Walk {
    /// Something hands the packet on: output, recirculation, ovs-vswitchd.
    output: bool,
    recirc: bool,
    userspace: bool,
    controller: bool,
    explicit: bool,
    recircs: [Option<Recirc>; MAX_RECIRCS],
    more: bool,
}

impl Walk {
    fn recirculate(&mut self, r: Recirc) {
        match self.recircs.iter_mut().find(|x| x.is_none()) {
            Some(slot) => *slot = Some(r),
            None => self.more = true,
        }
    }
}

/// The zone a `ct()` action runs in.
fn ct_zone(ct: &[u8]) -> Result<u16, DecodeError> {
    for a in wire::attrs(FAMILY, "OVS_CT_ATTR", ct) {
        let a = a?;
        if a.ty == OVS_CT_ATTR_ZONE {
            return a.u16_ne(FAMILY, "OVS_CT_ATTR_ZONE");
        }
    }
    Ok(0)
}

/// Walks an action list, nested ones (clone, sample, check_pkt_len) included; `zone` is
/// the zone of the last `ct()` before it.
fn walk(list: &[u8], depth: usize, w: &mut Walk, mut zone: Option<u16>) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::Nesting {
            family: FAMILY,
            attr: "OVS_FLOW_ATTR_ACTIONS",
        });
    }
    for a in wire::attrs(FAMILY, "OVS_ACTION_ATTR", list) {
        let a = a?;
        match a.ty {
            OVS_ACTION_ATTR_OUTPUT | OVS_ACTION_ATTR_TRUNC => w.output = true,
            OVS_ACTION_ATTR_RECIRC => {
                w.recirc = true;
                let id = a.u32_ne(FAMILY, "OVS_ACTION_ATTR_RECIRC")?;
                w.recirculate(Recirc { id, zone });
            }
            OVS_ACTION_ATTR_CT => zone = Some(ct_zone(a.payload)?),
            OVS_ACTION_ATTR_DROP => w.explicit = true,
            OVS_ACTION_ATTR_USERSPACE => match cookie_type(a.payload)? {
                Some(USER_ACTION_COOKIE_CONTROLLER) => w.controller = true,
                Some(
                    USER_ACTION_COOKIE_SFLOW
                    | USER_ACTION_COOKIE_FLOW_SAMPLE
                    | USER_ACTION_COOKIE_IPFIX,
                ) => {}
                // Slow path (ovs-vswitchd processes every packet) or a cookie we do not
                // know: the packet may well be forwarded, so it is not counted as dropped.
                _ => w.userspace = true,
            },
            OVS_ACTION_ATTR_CLONE => walk(a.payload, depth + 1, w, zone)?,
            OVS_ACTION_ATTR_SAMPLE => {
                for s in wire::attrs(FAMILY, "OVS_SAMPLE_ATTR", a.payload) {
                    let s = s?;
                    if s.ty == OVS_SAMPLE_ATTR_ACTIONS {
                        walk(s.payload, depth + 1, w, zone)?;
                    }
                }
            }
            OVS_ACTION_ATTR_CHECK_PKT_LEN => {
                for s in wire::attrs(FAMILY, "OVS_CHECK_PKT_LEN_ATTR", a.payload) {
                    let s = s?;
                    if matches!(
                        s.ty,
                        OVS_CHECK_PKT_LEN_ATTR_ACTIONS_IF_GREATER
                            | OVS_CHECK_PKT_LEN_ATTR_ACTIONS_IF_LESS_EQUAL
                    ) {
                        walk(s.payload, depth + 1, w, zone)?;
                    }
                }
            }
            // meters, header rewrites, dec_ttl's expiry branch, psample: the packet
            // goes on to the next action, or nowhere.
            _ => {}
        }
    }
    Ok(())
}

/// The cookie type of a userspace action, if it carries an OVS cookie.
fn cookie_type(userspace: &[u8]) -> Result<Option<u16>, DecodeError> {
    for u in wire::attrs(FAMILY, "OVS_USERSPACE_ATTR", userspace) {
        let u = u?;
        if u.ty == OVS_USERSPACE_ATTR_USERDATA {
            return Ok(u
                .payload
                .get(..2)
                .and_then(|b| <[u8; 2]>::try_from(b).ok())
                .map(u16::from_ne_bytes));
        }
    }
    Ok(None)
}

/// Classifies an action list; `ct_invalid` says whether the key matches ct_state(+inv).
pub fn classify(list: &[u8], ct_invalid: bool) -> Result<Actions, DecodeError> {
    walk_actions(list, ct_invalid).map(|(a, _)| a)
}

fn walk_actions(list: &[u8], ct_invalid: bool) -> Result<(Actions, Walk), DecodeError> {
    let mut w = Walk::default();
    walk(list, 0, &mut w, None)?;
    let class = if w.output {
        ActionClass::Output
    } else if w.recirc {
        ActionClass::Recirculate
    } else if w.userspace {
        ActionClass::Userspace
    } else {
        ActionClass::Drop
    };
    let reason = if ct_invalid {
        DropReason::CtInvalid
    } else if w.controller {
        DropReason::Controller
    } else if w.explicit {
        DropReason::Explicit
    } else {
        DropReason::NoAction
    };
    let drop = (class == ActionClass::Drop).then_some(reason);
    Ok((Actions { class, drop }, w))
}

/// The key's attributes attribution reads (masked values, as the kernel stores them).
#[derive(Debug, Default)]
struct KeyFacts {
    recirc_id: u32,
    ct_zone: Option<u16>,
    eth_dst: Option<[u8; 6]>,
}

/// A value of the wrong size is not a fact: attribution then knows less, and drop
/// counting goes on.
fn key_facts(attrs: &[u8], what: &'static str) -> Result<KeyFacts, DecodeError> {
    let mut k = KeyFacts::default();
    for a in wire::attrs(FAMILY, what, attrs) {
        let a = a?;
        match a.ty {
            OVS_KEY_ATTR_RECIRC_ID => {
                k.recirc_id = a.u32_ne(FAMILY, "OVS_KEY_ATTR_RECIRC_ID").unwrap_or(0)
            }
            OVS_KEY_ATTR_CT_ZONE => k.ct_zone = a.u16_ne(FAMILY, "OVS_KEY_ATTR_CT_ZONE").ok(),
            OVS_KEY_ATTR_ETHERNET => {
                k.eth_dst = a
                    .exact::<12>(FAMILY, "OVS_KEY_ATTR_ETHERNET")
                    .ok()
                    .and_then(|e| <[u8; 6]>::try_from(e.get(6..)?).ok());
            }
            _ => {}
        }
    }
    Ok(k)
}

/// Decodes one OVS_FLOW_CMD_* message: a dump entry or a notification.
pub fn parse_flow(payload: &[u8]) -> Result<Flow, DecodeError> {
    let cmd = payload.first().copied().unwrap_or_default();
    let (dp_ifindex, attrs) = ovs::split_ovs(FAMILY, payload)?;
    let mut f = Flow {
        cmd,
        dp_ifindex,
        id: 0,
        in_port: None,
        tunnel: false,
        actions: None,
        lineage: None,
        packets: 0,
        bytes: 0,
    };
    let mut key_bytes: &[u8] = &[];
    let mut mask_bytes: Option<&[u8]> = None;
    let mut ufid = None;
    let mut actions = None;
    let mut ct_invalid = false;
    for a in wire::attrs(FAMILY, "OVS_FLOW_ATTR", attrs) {
        let a = a?;
        match a.ty {
            OVS_FLOW_ATTR_KEY => {
                key_bytes = a.payload;
                for k in wire::attrs(FAMILY, "OVS_FLOW_ATTR_KEY", a.payload) {
                    let k = k?;
                    match k.ty {
                        OVS_KEY_ATTR_IN_PORT => {
                            f.in_port = Some(k.u32_ne(FAMILY, "OVS_KEY_ATTR_IN_PORT")?)
                        }
                        OVS_KEY_ATTR_CT_STATE => {
                            ct_invalid =
                                k.u32_ne(FAMILY, "OVS_KEY_ATTR_CT_STATE")? & OVS_CS_F_INVALID != 0
                        }
                        OVS_KEY_ATTR_TUNNEL => f.tunnel = !k.payload.is_empty(),
                        _ => {}
                    }
                }
            }
            OVS_FLOW_ATTR_MASK => mask_bytes = Some(a.payload),
            OVS_FLOW_ATTR_ACTIONS => actions = Some(a.payload),
            // The kernel leaves the statistics out while a flow has matched nothing.
            OVS_FLOW_ATTR_STATS => {
                f.packets = wire::read_u64_ne(a.payload, 0).unwrap_or(0);
                f.bytes = wire::read_u64_ne(a.payload, 8).unwrap_or(0);
            }
            OVS_FLOW_ATTR_UFID => ufid = Some(a.payload),
            _ => {}
        }
    }
    f.id = match ufid.and_then(|u| <[u8; 16]>::try_from(u).ok()) {
        Some(u) => u128::from_ne_bytes(u) & !(1u128 << 127),
        None => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            key_bytes.hash(&mut h);
            (1u128 << 127) | u128::from(h.finish())
        }
    };
    let walked = actions.map(|a| walk_actions(a, ct_invalid)).transpose()?;
    if !key_bytes.is_empty() {
        let key = key_facts(key_bytes, "OVS_FLOW_ATTR_KEY")?;
        // Without the mask, whether a value is matched in full is unknown.
        let mask = mask_bytes
            .map(|m| key_facts(m, "OVS_FLOW_ATTR_MASK"))
            .transpose()?
            .unwrap_or_default();
        let (recircs, more) = walked
            .as_ref()
            .map_or(([None; MAX_RECIRCS], false), |(_, w)| (w.recircs, w.more));
        f.lineage = Some(Lineage {
            recirc_id: key.recirc_id,
            ct_zone: key.ct_zone.filter(|_| mask.ct_zone == Some(u16::MAX)),
            eth_dst: key.eth_dst.filter(|_| mask.eth_dst == Some([0xff; 6])),
            recircs,
            more,
        });
    }
    f.actions = walked.map(|(a, _)| a);
    Ok(f)
}

/// Message builders for the collector's unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// genlmsghdr + ovs_header + attributes.
    pub(crate) fn flow_msg(cmd: u8, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut p = vec![cmd, 1, 0, 0, 7, 0, 0, 0];
        for (ty, data) in attrs {
            wire::push_attr(&mut p, *ty, data);
        }
        p
    }

    pub(crate) fn key(in_port: u32, ct_state: Option<u32>) -> Vec<u8> {
        let mut k = Vec::new();
        wire::push_attr(&mut k, OVS_KEY_ATTR_IN_PORT, &in_port.to_ne_bytes());
        if let Some(s) = ct_state {
            wire::push_attr(&mut k, OVS_KEY_ATTR_CT_STATE, &s.to_ne_bytes());
        }
        k
    }
}

#[cfg(test)]
#[path = "tests/lineage.rs"]
mod lineage_tests;
#[cfg(test)]
#[path = "tests/parse.rs"]
mod tests;
