//! `ovs_flows`: which datapath flows drop traffic, and from which port.
//!
//! One OVS_FLOW_CMD_GET dump per datapath and scrape, streamed (the table can hold 100k+
//! flows) and capped by `--collector.ovs_flows.max-flows`. A flow drops when its action
//! list is empty or holds an explicit drop; it is attributed to conntrack when its key
//! matches `ct_state(+inv)`, the seed incident's signature.
//!
//! Datapath flows are evicted after ~10 s idle and re-created, so a sum over live flows
//! goes down. This collector therefore keeps the last count of each drop flow (by UFID, or
//! by key bytes where there is none) and adds only increases to running totals: the
//! totals are counters, and a lower bound (packets between the last scrape and an
//! eviction are missed).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use super::ovs::{self, Families, FamilyCache, LinkKinds, Topology};
use super::{CollectError, Collector, Config, Spec, interfaces};
use crate::netlink::genl;
use crate::netlink::wire::{self, Control, DecodeError};
use crate::netlink::{Request, Transport};
use crate::render::Family;
use crate::roles::RoleRules;

pub const SPEC: Spec = Spec {
    name: "ovs_flows",
    help: "Drop attribution from the OVS datapath flow table: drop flows by in_port and reason (generic netlink).",
    default_enabled: true,
    build: |c| Arc::new(OvsFlows::new(c)),
};

const FAMILY: &str = "ovs_flow";
const OVS_FLOW_VERSION: u8 = 1;
const OVS_FLOW_CMD_GET: u8 = 3;

const OVS_FLOW_ATTR_KEY: u16 = 1;
const OVS_FLOW_ATTR_ACTIONS: u16 = 2;
const OVS_FLOW_ATTR_STATS: u16 = 3;
const OVS_FLOW_ATTR_UFID: u16 = 9;
const OVS_FLOW_ATTR_UFID_FLAGS: u16 = 10;
const OVS_UFID_F_OMIT_MASK: u32 = 1 << 1;

const OVS_KEY_ATTR_IN_PORT: u16 = 3;
const OVS_KEY_ATTR_TUNNEL: u16 = 16;
const OVS_KEY_ATTR_CT_STATE: u16 = 22;
const OVS_CS_F_INVALID: u32 = 0x10;

const OVS_ACTION_ATTR_OUTPUT: u16 = 1;
const OVS_ACTION_ATTR_USERSPACE: u16 = 2;
const OVS_ACTION_ATTR_RECIRC: u16 = 7;
const OVS_ACTION_ATTR_CT: u16 = 12;
/// Linux 6.4+: an explicit drop carrying a u32 reason.
const OVS_ACTION_ATTR_DROP: u16 = 24;

#[derive(Debug, Clone)]
pub struct Options {
    /// Flows read per datapath and scrape; past it the dump stops and says so.
    pub max_flows: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { max_flows: 200_000 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The flow's key matches ct_state(+inv): conntrack marked the packets invalid.
    CtInvalid,
    /// An explicit drop action (newer kernels), not conntrack's.
    Explicit,
    /// No actions at all: OVS's way of dropping.
    NoAction,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::CtInvalid => "ct_invalid",
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
    Other,
}

impl ActionClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionClass::Drop => "drop",
            ActionClass::Output => "output",
            ActionClass::Recirculate => "recirculate",
            ActionClass::Userspace => "userspace",
            ActionClass::Other => "other",
        }
    }
}

/// What the collector needs of one datapath flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSummary {
    /// The UFID, or a hash of the key bytes (high bit set) where the flow has none.
    pub id: u128,
    pub in_port: Option<u32>,
    pub ct_state: Option<u32>,
    pub tunnel: bool,
    pub action: ActionClass,
    pub drop: Option<DropReason>,
    pub packets: u64,
    pub bytes: u64,
}

pub fn flow_request(f: &Families, dp_ifindex: u32) -> Request {
    let mut body = dp_ifindex.to_ne_bytes().to_vec();
    // The mask is only needed to print flows; the masked key already says +inv.
    wire::push_attr(
        &mut body,
        OVS_FLOW_ATTR_UFID_FLAGS,
        &OVS_UFID_F_OMIT_MASK.to_ne_bytes(),
    );
    let mut r = genl::request(
        f.flow,
        OVS_FLOW_CMD_GET,
        OVS_FLOW_VERSION,
        "ovs_flow_get",
        true,
        &body,
    );
    r.scope = Some(dp_ifindex);
    r
}

/// Decodes one OVS_FLOW_CMD_NEW message of a flow dump.
pub fn parse_flow(payload: &[u8]) -> Result<FlowSummary, DecodeError> {
    let (_, attrs) = ovs::split_ovs(FAMILY, payload)?;
    let mut f = FlowSummary {
        id: 0,
        in_port: None,
        ct_state: None,
        tunnel: false,
        action: ActionClass::Drop,
        drop: None,
        packets: 0,
        bytes: 0,
    };
    let mut key_bytes: &[u8] = &[];
    let mut ufid = None;
    let mut actions_seen = false;
    let (mut output, mut recirc, mut userspace, mut explicit, mut any) =
        (false, false, false, false, false);
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
                            f.ct_state = Some(k.u32_ne(FAMILY, "OVS_KEY_ATTR_CT_STATE")?)
                        }
                        OVS_KEY_ATTR_TUNNEL => f.tunnel = !k.payload.is_empty(),
                        _ => {}
                    }
                }
            }
            OVS_FLOW_ATTR_ACTIONS => {
                actions_seen = true;
                for act in wire::attrs(FAMILY, "OVS_FLOW_ATTR_ACTIONS", a.payload) {
                    any = true;
                    match act?.ty {
                        OVS_ACTION_ATTR_OUTPUT => output = true,
                        OVS_ACTION_ATTR_USERSPACE => userspace = true,
                        OVS_ACTION_ATTR_RECIRC | OVS_ACTION_ATTR_CT => recirc = true,
                        OVS_ACTION_ATTR_DROP => explicit = true,
                        _ => {}
                    }
                }
            }
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
    let drops = actions_seen && (!any || explicit) && !output && !userspace && !recirc;
    f.action = if drops {
        ActionClass::Drop
    } else if output {
        ActionClass::Output
    } else if recirc {
        ActionClass::Recirculate
    } else if userspace {
        ActionClass::Userspace
    } else {
        ActionClass::Other
    };
    if drops {
        f.drop = Some(if f.ct_state.is_some_and(|s| s & OVS_CS_F_INVALID != 0) {
            DropReason::CtInvalid
        } else if explicit {
            DropReason::Explicit
        } else {
            DropReason::NoAction
        });
    }
    Ok(f)
}

/// Outcome of reading one datapath's flow dump.
#[derive(Debug, Default)]
pub struct Dump {
    pub flows: usize,
    pub truncated: bool,
}

/// Streams a flow dump into `on_flow`, stopping after `max` flows.
pub fn read_dump(
    t: &dyn Transport,
    req: &Request,
    max: usize,
    on_flow: &mut dyn FnMut(FlowSummary),
) -> Result<Dump, CollectError> {
    let mut dump = Dump::default();
    let mut done = false;
    let mut failure: Option<DecodeError> = None;
    t.stream(req, &mut |chunk| {
        for m in wire::messages(FAMILY, chunk) {
            let step = m
                .and_then(|m| wire::control(FAMILY, m))
                .and_then(|c| match c {
                    Control::Data(m) => parse_flow(m.payload).map(Some),
                    Control::Done => {
                        done = true;
                        Ok(None)
                    }
                    Control::Skip => Ok(None),
                });
            match step {
                Ok(Some(_)) if dump.flows >= max => {
                    // A flow past the cap: the dump really is cut short.
                    dump.truncated = true;
                    return false;
                }
                Ok(Some(f)) => {
                    on_flow(f);
                    dump.flows += 1;
                }
                Ok(None) if done => return false,
                Ok(None) => {}
                Err(e) => {
                    failure = Some(e);
                    return false;
                }
            }
        }
        true
    })
    .map_err(|e| CollectError::new(e.to_string()))?;
    match failure {
        Some(e) => Err(CollectError::new(format!("flow dump: {e}"))),
        None if !done && !dump.truncated => Err(CollectError::new(format!(
            "flow dump: {}",
            DecodeError::Unterminated { family: FAMILY }
        ))),
        None => Ok(dump),
    }
}

/// What drop totals are kept by: input port name, its role, and the reason.
type DropKey = (String, &'static str, DropReason);
/// Drop totals: packets and bytes.
type Totals = HashMap<DropKey, (u64, u64)>;

#[derive(Debug, Default)]
struct DatapathState {
    /// Last seen (packets, bytes) and scrape generation of every live drop flow.
    flows: HashMap<u128, (u64, u64, u64)>,
    totals: Totals,
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    datapaths: HashMap<String, DatapathState>,
}

/// What one scrape saw of one datapath, for rendering.
pub struct Seen {
    pub datapath: String,
    pub by_action: HashMap<(&'static str, ActionClass), u64>,
    pub totals: Vec<(DropKey, (u64, u64))>,
    pub truncated: bool,
}

/// in_port of drop flows from ports the device filter leaves out.
const OTHER_PORT: &str = "other";

pub struct OvsFlows {
    transport: Arc<dyn Transport>,
    rules: RoleRules,
    opts: Options,
    /// The interfaces collector's include/exclude filter: ports it leaves out count as
    /// in_port="other" here (same role), so cardinality stays bounded and sums exact.
    devices: interfaces::Options,
    families: FamilyCache,
    kinds: LinkKinds,
    state: Mutex<State>,
}

impl OvsFlows {
    pub fn new(c: &Config) -> Self {
        OvsFlows {
            transport: c.transport.clone(),
            rules: c.roles.clone(),
            opts: c.ovs_flows.clone(),
            devices: c.interfaces.clone(),
            families: FamilyCache::default(),
            kinds: LinkKinds::default(),
            state: Mutex::new(State::default()),
        }
    }

    fn scan(&self, f: &Families, topo: &Topology, state: &mut State) -> Result<Seen, CollectError> {
        let generation = state.generation;
        let ports: HashMap<u32, (&str, &'static str)> = topo
            .vports
            .iter()
            .zip(&topo.roles)
            // The device filter is applied here, once per port, not per flow.
            .map(|(v, r)| {
                let name = if self.devices.wants(&v.name) {
                    v.name.as_str()
                } else {
                    OTHER_PORT
                };
                (v.port_no, (name, *r))
            })
            .collect();
        let dp = state
            .datapaths
            .entry(topo.datapath.name.clone())
            .or_default();
        let mut by_action: HashMap<(&'static str, ActionClass), u64> = HashMap::new();
        let req = flow_request(f, topo.datapath.ifindex);
        let dump = read_dump(
            self.transport.as_ref(),
            &req,
            self.opts.max_flows,
            &mut |flow| {
                let (name, role) = flow
                    .in_port
                    .and_then(|p| ports.get(&p).copied())
                    .unwrap_or(("", "other"));
                *by_action.entry((role, flow.action)).or_default() += 1;
                let Some(reason) = flow.drop else { return };
                let last = dp
                    .flows
                    .insert(flow.id, (flow.packets, flow.bytes, generation));
                // A count below the last one means the identity now names a new flow.
                let (dp_, db_) = match last {
                    Some((lp, lb, _)) if flow.packets >= lp => {
                        (flow.packets - lp, flow.bytes.saturating_sub(lb))
                    }
                    _ => (flow.packets, flow.bytes),
                };
                let port = match (name, flow.in_port) {
                    ("", Some(p)) => format!("port{p}"),
                    ("", None) => "none".to_owned(),
                    (n, _) => n.to_owned(),
                };
                let t = dp.totals.entry((port, role, reason)).or_default();
                t.0 = t.0.saturating_add(dp_);
                t.1 = t.1.saturating_add(db_);
            },
        )?;
        // Flows missing from a complete dump were evicted: their counts are already in the
        // totals. A truncated dump proves nothing about the flows it did not reach, so
        // those are kept a few scrapes more, never for ever (memory stays bounded).
        let keep = if dump.truncated { 3 } else { 0 };
        dp.flows.retain(|_, (_, _, g)| generation - *g <= keep);
        // Totals follow the ports that exist, so deleted VM ports do not pile up; flows
        // from ports the vport dump did not name ("port<N>", "none") are kept as they are.
        dp.totals.retain(|(port, role, _), _| {
            ports.values().any(|(n, r)| n == port && r == role)
                || port.starts_with("port")
                || port == "none"
                || port == OTHER_PORT
        });
        let mut totals: Vec<_> = dp.totals.iter().map(|(k, v)| (k.clone(), *v)).collect();
        totals.sort();
        Ok(Seen {
            datapath: topo.datapath.name.clone(),
            by_action,
            totals,
            truncated: dump.truncated,
        })
    }
}

pub fn render(seen: &[Seen]) -> Vec<Family> {
    const L: &[&str] = &["datapath", "in_port", "in_port_role", "reason"];
    let mut packets = Family::counter(
        "packetpath_ovs_drop_flow_packets_total",
        "Packets dropped by datapath flows, by input port and reason (a lower bound: evicted flows' last packets are missed).",
        L,
    );
    let mut bytes = Family::counter(
        "packetpath_ovs_drop_flow_bytes_total",
        "Bytes dropped by datapath flows, by input port and reason (a lower bound).",
        L,
    );
    let mut by_action = Family::gauge(
        "packetpath_ovs_datapath_flows_by_action",
        "Datapath flows in the last dump by the role of their input port and their action class.",
        &["datapath", "in_port_role", "action"],
    );
    let mut truncated = Family::gauge(
        "packetpath_ovs_flows_dump_truncated",
        "1 if the last flow dump stopped at --collector.ovs_flows.max-flows, so drop counts are incomplete.",
        &["datapath"],
    );
    for s in seen {
        let dp = s.datapath.as_str();
        for ((port, role, reason), (p, b)) in &s.totals {
            packets.push(&[dp, port, role, reason.as_str()], *p as f64);
            bytes.push(&[dp, port, role, reason.as_str()], *b as f64);
        }
        let mut classes: Vec<_> = s.by_action.iter().collect();
        classes.sort();
        for ((role, action), n) in classes {
            by_action.push(&[dp, role, action.as_str()], *n as f64);
        }
        truncated.push(&[dp], if s.truncated { 1.0 } else { 0.0 });
    }
    vec![packets, bytes, by_action, truncated]
}

impl Collector for OvsFlows {
    fn collect(&self) -> Result<Vec<Family>, CollectError> {
        let t = self.transport.as_ref();
        self.families.with(t, |f| {
            let topo = ovs::fetch_topology(t, f, &self.kinds, &self.rules)?;
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.generation += 1;
            let seen = topo
                .iter()
                .map(|tp| self.scan(f, tp, &mut state))
                .collect::<Result<Vec<_>, _>>()?;
            // Datapaths that are gone take their flow memory with them; their totals stay,
            // so the counters resume where they were if the datapath comes back.
            for (name, dp) in state.datapaths.iter_mut() {
                if !topo.iter().any(|t| &t.datapath.name == name) {
                    dp.flows.clear();
                }
            }
            Ok(render(&seen))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// genlmsghdr + ovs_header + attributes.
    fn flow_msg(attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut p = vec![1, 1, 0, 0, 7, 0, 0, 0];
        for (ty, data) in attrs {
            wire::push_attr(&mut p, *ty, data);
        }
        p
    }

    fn key(in_port: u32, ct_state: Option<u32>) -> Vec<u8> {
        let mut k = Vec::new();
        wire::push_attr(&mut k, OVS_KEY_ATTR_IN_PORT, &in_port.to_ne_bytes());
        if let Some(s) = ct_state {
            wire::push_attr(&mut k, OVS_KEY_ATTR_CT_STATE, &s.to_ne_bytes());
        }
        k
    }

    fn stats(p: u64, b: u64) -> Vec<u8> {
        [p.to_ne_bytes(), b.to_ne_bytes()].concat()
    }

    #[test]
    fn classifies_drop_reasons_and_actions() {
        let inv = parse_flow(&flow_msg(&[
            (OVS_FLOW_ATTR_KEY, key(2, Some(0x30))),
            (OVS_FLOW_ATTR_ACTIONS, vec![]),
            (OVS_FLOW_ATTR_STATS, stats(12, 648)),
        ]))
        .unwrap();
        assert_eq!(
            (inv.in_port, inv.drop, inv.action),
            (Some(2), Some(DropReason::CtInvalid), ActionClass::Drop)
        );
        assert_eq!((inv.packets, inv.bytes), (12, 648));

        let mut out = Vec::new();
        wire::push_attr(&mut out, OVS_ACTION_ATTR_OUTPUT, &3u32.to_ne_bytes());
        let fwd = parse_flow(&flow_msg(&[
            (OVS_FLOW_ATTR_KEY, key(2, Some(0x21))),
            (OVS_FLOW_ATTR_ACTIONS, out),
        ]))
        .unwrap();
        assert_eq!((fwd.drop, fwd.action), (None, ActionClass::Output));

        let mut explicit = Vec::new();
        wire::push_attr(&mut explicit, OVS_ACTION_ATTR_DROP, &0u32.to_ne_bytes());
        let ex = parse_flow(&flow_msg(&[
            (OVS_FLOW_ATTR_KEY, key(1, None)),
            (OVS_FLOW_ATTR_ACTIONS, explicit),
        ]))
        .unwrap();
        assert_eq!(ex.drop, Some(DropReason::Explicit));

        let bare = parse_flow(&flow_msg(&[
            (OVS_FLOW_ATTR_KEY, key(1, Some(0x21))),
            (OVS_FLOW_ATTR_ACTIONS, vec![]),
        ]))
        .unwrap();
        assert_eq!(bare.drop, Some(DropReason::NoAction));

        let mut ct = Vec::new();
        wire::push_attr(&mut ct, OVS_ACTION_ATTR_CT, &[]);
        wire::push_attr(&mut ct, OVS_ACTION_ATTR_RECIRC, &1u32.to_ne_bytes());
        let rc = parse_flow(&flow_msg(&[
            (OVS_FLOW_ATTR_KEY, key(1, None)),
            (OVS_FLOW_ATTR_ACTIONS, ct),
        ]))
        .unwrap();
        assert_eq!((rc.drop, rc.action), (None, ActionClass::Recirculate));
    }

    #[test]
    fn identity_is_the_ufid_or_a_key_hash() {
        let ufid: Vec<u8> = (1..=16).collect();
        let a = parse_flow(&flow_msg(&[
            (OVS_FLOW_ATTR_UFID, ufid.clone()),
            (OVS_FLOW_ATTR_KEY, key(1, None)),
        ]))
        .unwrap();
        let b = parse_flow(&flow_msg(&[
            (OVS_FLOW_ATTR_UFID, ufid),
            (OVS_FLOW_ATTR_KEY, key(2, None)),
        ]))
        .unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(a.id >> 127, 0);
        let c = parse_flow(&flow_msg(&[(OVS_FLOW_ATTR_KEY, key(1, None))])).unwrap();
        let d = parse_flow(&flow_msg(&[(OVS_FLOW_ATTR_KEY, key(2, None))])).unwrap();
        assert_ne!(c.id, d.id);
        assert_eq!(c.id >> 127, 1);
    }

    /// A kernel stand-in: one datapath "ovs-system" (ifindex 7) with ports 1 (br-int,
    /// internal) and 2 (genev_sys_6081, netdev), and a flow table the test rewrites.
    struct FakeKernel {
        flows: Mutex<Vec<Vec<u8>>>,
    }

    fn nlmsg(ty: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = wire::request(ty, flags, 0, payload);
        m[..4].copy_from_slice(&((wire::NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        m
    }

    fn done() -> Vec<u8> {
        nlmsg(wire::NLMSG_DONE, wire::NLM_F_MULTI, &0i32.to_ne_bytes())
    }

    fn family_reply(id: u16, name: &[u8]) -> Vec<u8> {
        let mut p = vec![1, 2, 0, 0];
        wire::push_attr(&mut p, 1, &id.to_ne_bytes());
        wire::push_attr(&mut p, 2, name);
        nlmsg(0x10, wire::NLM_F_MULTI, &p)
    }

    impl Transport for FakeKernel {
        fn stream(
            &self,
            req: &Request,
            sink: &mut dyn FnMut(&[u8]) -> bool,
        ) -> Result<crate::netlink::StreamEnd, crate::netlink::TransportError> {
            let reply = match req.name {
                "genl_families" => [
                    family_reply(30, b"ovs_datapath\0"),
                    family_reply(31, b"ovs_vport\0"),
                    family_reply(32, b"ovs_flow\0"),
                    done(),
                ]
                .concat(),
                "ovs_dp_get" => {
                    let mut p = vec![1, 2, 0, 0, 7, 0, 0, 0];
                    wire::push_attr(&mut p, 1, b"ovs-system\0");
                    [nlmsg(30, wire::NLM_F_MULTI, &p), done()].concat()
                }
                "ovs_vport_get" => {
                    let port = |no: u32, ty: u32, name: &[u8]| {
                        let mut p = vec![1, 1, 0, 0, 7, 0, 0, 0];
                        wire::push_attr(&mut p, 1, &no.to_ne_bytes());
                        wire::push_attr(&mut p, 2, &ty.to_ne_bytes());
                        wire::push_attr(&mut p, 3, name);
                        nlmsg(31, wire::NLM_F_MULTI, &p)
                    };
                    [
                        port(1, 2, b"br-int\0"),
                        port(2, 1, b"genev_sys_6081\0"),
                        done(),
                    ]
                    .concat()
                }
                "ovs_flow_get" => {
                    let mut r: Vec<u8> = self
                        .flows
                        .lock()
                        .unwrap()
                        .iter()
                        .flat_map(|f| nlmsg(32, wire::NLM_F_MULTI, f))
                        .collect();
                    r.extend(done());
                    r
                }
                other => panic!("unexpected request {other}"),
            };
            sink(&reply);
            Ok(crate::netlink::StreamEnd::default())
        }
    }

    fn inv_drop(ufid: u8, packets: u64) -> Vec<u8> {
        flow_msg(&[
            (OVS_FLOW_ATTR_UFID, vec![ufid; 16]),
            (OVS_FLOW_ATTR_KEY, key(2, Some(0x30))),
            (OVS_FLOW_ATTR_ACTIONS, vec![]),
            (OVS_FLOW_ATTR_STATS, stats(packets, packets * 54)),
        ])
    }

    fn scrape(c: &OvsFlows) -> String {
        let mut out = Vec::new();
        crate::render::encode_text(c.collect().unwrap(), &mut out);
        String::from_utf8(out).unwrap()
    }

    fn collector(kernel: Arc<FakeKernel>, max_flows: usize) -> OvsFlows {
        filtered(kernel, max_flows, Default::default())
    }

    fn filtered(
        kernel: Arc<FakeKernel>,
        max_flows: usize,
        interfaces: interfaces::Options,
    ) -> OvsFlows {
        let config = Config {
            procfs: "/proc".into(),
            sysfs: "/sys".into(),
            transport: kernel,
            roles: RoleRules::default(),
            interfaces,
            conntrack: Default::default(),
            ovs_flows: Options { max_flows },
            conntrack_invalid: Default::default(),
        };
        OvsFlows::new(&config)
    }

    const SERIES: &str = "packetpath_ovs_drop_flow_packets_total{datapath=\"ovs-system\",in_port=\"genev_sys_6081\",in_port_role=\"tunnel\",reason=\"ct_invalid\"}";

    #[test]
    fn drop_counts_stay_monotonic_across_flow_eviction() {
        let kernel = Arc::new(FakeKernel {
            flows: Mutex::new(vec![inv_drop(1, 10)]),
        });
        let c = collector(kernel.clone(), 1000);
        assert!(scrape(&c).contains(&format!("{SERIES} 10\n")));
        *kernel.flows.lock().unwrap() = vec![inv_drop(1, 15)];
        assert!(scrape(&c).contains(&format!("{SERIES} 15\n")));
        // Flow 1 evicted, flow 2 created: the live sum fell to 3, the counter goes on.
        *kernel.flows.lock().unwrap() = vec![inv_drop(2, 3)];
        assert!(scrape(&c).contains(&format!("{SERIES} 18\n")));
        // The same identity with a lower count is a new flow: all its packets count.
        *kernel.flows.lock().unwrap() = vec![inv_drop(2, 1)];
        let text = scrape(&c);
        assert!(text.contains(&format!("{SERIES} 19\n")), "{text}");
        assert!(text.contains("packetpath_ovs_drop_flow_bytes_total{datapath=\"ovs-system\",in_port=\"genev_sys_6081\",in_port_role=\"tunnel\",reason=\"ct_invalid\"} 1026\n"));
        assert!(text.contains("packetpath_ovs_datapath_flows_by_action{datapath=\"ovs-system\",in_port_role=\"tunnel\",action=\"drop\"} 1\n"));
        assert!(text.contains("packetpath_ovs_flows_dump_truncated{datapath=\"ovs-system\"} 0\n"));
        // Only the live drop flow is remembered.
        assert_eq!(
            c.state.lock().unwrap().datapaths["ovs-system"].flows.len(),
            1
        );
    }

    #[test]
    fn the_flow_cap_stops_the_dump_and_says_so() {
        let kernel = Arc::new(FakeKernel {
            flows: Mutex::new(vec![inv_drop(1, 4), inv_drop(2, 5), inv_drop(3, 6)]),
        });
        let c = collector(kernel, 2);
        let text = scrape(&c);
        assert!(text.contains(&format!("{SERIES} 9\n")), "{text}");
        assert!(text.contains("packetpath_ovs_flows_dump_truncated{datapath=\"ovs-system\"} 1\n"));
        // Exactly at the cap is a complete dump.
        let kernel = Arc::new(FakeKernel {
            flows: Mutex::new(vec![inv_drop(1, 4), inv_drop(2, 5)]),
        });
        let text = scrape(&collector(kernel, 2));
        assert!(
            text.contains("packetpath_ovs_flows_dump_truncated{datapath=\"ovs-system\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn ports_the_device_filter_leaves_out_count_as_other() {
        let kernel = Arc::new(FakeKernel {
            flows: Mutex::new(vec![inv_drop(1, 4), inv_drop(2, 5)]),
        });
        let devices = interfaces::Options {
            device_include: None,
            device_exclude: Some(regex::Regex::new("^genev").unwrap()),
        };
        let text = scrape(&filtered(kernel, 1000, devices));
        assert!(!text.contains("genev_sys_6081"), "{text}");
        assert!(
            text.contains("packetpath_ovs_drop_flow_packets_total{datapath=\"ovs-system\",in_port=\"other\",in_port_role=\"tunnel\",reason=\"ct_invalid\"} 9\n"),
            "{text}"
        );
    }

    #[test]
    fn short_or_garbled_messages_are_errors() {
        assert!(parse_flow(&[1, 1]).is_err());
        assert!(parse_flow(&[1, 1, 0, 0, 7, 0, 0, 0, 200, 0, 1, 0]).is_err());
    }
}
