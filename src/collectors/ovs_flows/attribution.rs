//! Which VM port a drop flow's packets were heading to.
//!
//! A packet from the tunnel takes two or more datapath flows: the first matches it as it
//! arrives and runs `ct(zone=N),recirc(X)`; the flow that drops it matches `recirc_id(X)`
//! and `ct_state(...)`, with the destination masked out of its own key. So a drop flow
//! inherits from the flows that recirculate into its recirculation id (following chains
//! of recirculations without a `ct()` up to the flow that ran one), and the zone of their
//! `ct()` names the port: ovn-controller gives every local VIF a zone of its own and
//! writes it into the integration bridge's external_ids (`ct-zone-<logical port>`).
//! Where a zone names no single port (ML2/OVS's firewall shares one zone per network), a
//! destination MAC that the drop flow or its parents match in full picks the port whose
//! `attached-mac` it is.
//!
//! Nothing is guessed: parents in two different zones, a zone or MAC that names no single
//! VM port, the VM port the packet came from, or no OVSDB view all leave the drop
//! unattributed. Each flow remembers the port it was attributed to; if its lineage later
//! names another (a zone given to another port, a recirculation id reused), the flow is
//! never attributed again, so no drop is credited to the wrong VM.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::parse::{DropReason, Lineage};
use crate::collectors::common::Devices;
use crate::collectors::common::ovsdb::VmPort;
use crate::roles::Role;

/// Chains of recirculations without `ct()` are followed this deep at most.
const MAX_DEPTH: usize = 8;

/// What a flow was attributed to so far; kept with the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dest {
    #[default]
    Unknown,
    /// An interned VM port (see [`Attribution::device`]).
    Port(u32),
    /// Its lineage named two ports: never attributed again.
    Conflict,
}

/// What the lineage says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    Port(u32),
    /// Two different zones among the parents.
    Conflict,
    /// Facts that name no single VM port.
    Unattributed,
    /// No fact at all (no parent known, no zone, no MAC): the flow's earlier answer holds.
    NoFacts,
}

/// What the flows recirculating into one recirculation id say about its packets.
#[derive(Debug, Default)]
struct Edges {
    /// Zones of the `ct()` run before the recirculation (or matched by the parent's key),
    /// with how many parents say so.
    zones: HashMap<u16, u32>,
    /// Parents that recirculate with no zone known: their own recirculation id, to follow.
    inherit: HashMap<u128, u32>,
    /// Destination MACs the parents match in full.
    macs: HashMap<[u8; 6], u32>,
}

impl Edges {
    fn is_empty(&self) -> bool {
        self.zones.is_empty() && self.inherit.is_empty() && self.macs.is_empty()
    }
}

fn bump<K: std::hash::Hash + Eq>(m: &mut HashMap<K, u32>, k: K, add: bool) {
    if add {
        *m.entry(k).or_default() += 1;
    } else if let Some(n) = m.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            m.remove(&k);
        }
    }
}

/// Per-VM totals: (device, from_role, reason) → (packets, bytes).
pub type VmTotals = BTreeMap<(String, Role, DropReason), (u64, u64)>;
/// Drops no single VM port was found for: (from_role, reason) → (packets, bytes).
pub type Unattributed = BTreeMap<(Role, DropReason), (u64, u64)>;

#[derive(Debug, Default)]
pub struct Attribution {
    /// Whether an OVSDB view of the VM ports is there at all.
    available: bool,
    interned: HashMap<String, u32>,
    names: Vec<String>,
    by_zone: HashMap<u16, Vec<u32>>,
    by_mac: HashMap<[u8; 6], Vec<u32>>,
    /// The VM ports of the last view.
    current: BTreeSet<u32>,
    edges: HashMap<(u32, u32), Edges>,
    totals: VmTotals,
    unattributed: Unattributed,
    /// A zone or MAC named no VM port since the last [`Attribution::set_ports`]: the view
    /// may be older than the flows (a port just plugged).
    pub stale: bool,
}

impl Attribution {
    pub fn new() -> Self {
        let mut a = Attribution::default();
        for reason in DropReason::ALL {
            a.unattributed.entry((Role::Tunnel, reason)).or_default();
        }
        a
    }

    pub fn totals(&self) -> &VmTotals {
        &self.totals
    }

    pub fn unattributed(&self) -> &Unattributed {
        &self.unattributed
    }

    fn intern(&mut self, device: &str) -> u32 {
        if let Some(&i) = self.interned.get(device) {
            return i;
        }
        let i = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(device.to_owned());
        self.interned.insert(device.to_owned(), i);
        i
    }

    pub fn device(&self, port: u32) -> Option<&str> {
        self.names.get(port as usize).map(String::as_str)
    }

    /// The VM ports now (`None`: no OVSDB view, so nothing can be attributed). Ports the
    /// device filter leaves out are not candidates; series of ports that are gone end,
    /// and every reason from the tunnel exists at 0 for every port.
    pub fn set_ports(&mut self, ports: Option<&[VmPort]>, devices: &Devices) {
        self.stale = false;
        let Some(ports) = ports else {
            self.available = false;
            return;
        };
        self.available = true;
        self.by_zone.clear();
        self.by_mac.clear();
        self.current.clear();
        let wanted: Vec<&VmPort> = ports.iter().filter(|p| devices.wants(&p.device)).collect();
        for p in &wanted {
            let i = self.intern(&p.device);
            self.current.insert(i);
            if let Some(z) = p.ct_zone {
                self.by_zone.entry(z).or_default().push(i);
            }
            if let Some(mac) = parse_mac(&p.mac) {
                self.by_mac.entry(mac).or_default().push(i);
            }
        }
        self.totals
            .retain(|(d, _, _), _| wanted.iter().any(|p| &p.device == d));
        for p in wanted {
            for reason in DropReason::ALL {
                self.totals
                    .entry((p.device.clone(), Role::Tunnel, reason))
                    .or_default();
            }
        }
    }

    /// Records what a flow's actions say about the recirculations they lead to (`add`),
    /// or forgets it.
    pub fn link(&mut self, dp: u32, id: u128, l: &Lineage, add: bool) {
        for r in l.recircs() {
            let e = self.edges.entry((dp, r.id)).or_default();
            match r.zone.or(l.ct_zone) {
                Some(z) => bump(&mut e.zones, z, add),
                None if l.recirc_id != 0 => {
                    if add {
                        e.inherit.insert(id, l.recirc_id);
                    } else {
                        e.inherit.remove(&id);
                    }
                }
                None => {}
            }
            if let Some(mac) = l.eth_dst {
                bump(&mut e.macs, mac, add);
            }
            if e.is_empty() {
                self.edges.remove(&(dp, r.id));
            }
        }
    }

    /// Forgets every link, before they are made again from the flows that remain.
    pub fn unlink_all(&mut self) {
        self.edges.clear();
    }

    /// Zones of the packets that come back with recirculation id `x`.
    fn zones_of(&self, dp: u32, x: u32, depth: usize, out: &mut BTreeSet<u16>) {
        let Some(e) = self.edges.get(&(dp, x)) else {
            return;
        };
        out.extend(e.zones.keys().copied());
        if depth >= MAX_DEPTH {
            return;
        }
        for &parent in e.inherit.values() {
            if parent != x {
                self.zones_of(dp, parent, depth + 1, out);
            }
        }
    }

    fn lookup(&mut self, dp: u32, l: &Lineage, from: &str) -> Lookup {
        if !self.available {
            return Lookup::Unattributed;
        }
        let mut zones = BTreeSet::new();
        match l.ct_zone {
            Some(z) => {
                zones.insert(z);
            }
            None if l.recirc_id != 0 => self.zones_of(dp, l.recirc_id, 0, &mut zones),
            None => {}
        }
        if zones.len() > 1 {
            return Lookup::Conflict;
        }
        let by_zone: &[u32] = zones
            .first()
            .and_then(|z| self.by_zone.get(z))
            .map_or(&[], Vec::as_slice);
        let mac = l.eth_dst.or_else(|| {
            let e = self.edges.get(&(dp, l.recirc_id))?;
            let mut macs = e.macs.keys();
            macs.next().filter(|_| macs.next().is_none()).copied()
        });
        let found = match by_zone {
            [one] => Some(*one),
            _ => {
                let by_mac = mac
                    .and_then(|m| self.by_mac.get(&m))
                    .map_or(&[][..], Vec::as_slice);
                let mut fits = by_mac
                    .iter()
                    .filter(|p| by_zone.len() < 2 || by_zone.contains(p));
                fits.next().filter(|_| fits.next().is_none()).copied()
            }
        };
        match found {
            Some(p) if self.device(p) == Some(from) => Lookup::Unattributed,
            Some(p) => Lookup::Port(p),
            None if zones.is_empty() && mac.is_none() => Lookup::NoFacts,
            None => {
                self.stale = true;
                Lookup::Unattributed
            }
        }
    }

    /// Credits a drop of a flow whose input port is labelled `from` (role `role`) to the
    /// VM port its lineage names, or to the unattributed totals; `dest` is the flow's
    /// memory of where it was attributed before. With `defer`, a flow about which nothing
    /// is known yet is left alone and `false` returned: a dump in progress may still bring
    /// its parents (a dump lists flows in no particular order).
    #[allow(clippy::too_many_arguments)]
    pub fn credit(
        &mut self,
        dp: u32,
        lineage: Option<&Lineage>,
        dest: &mut Dest,
        from: &str,
        role: Role,
        reason: DropReason,
        (packets, bytes): (u64, u64),
        defer: bool,
    ) -> bool {
        let now = lineage.map_or(Lookup::NoFacts, |l| self.lookup(dp, l, from));
        if defer && now == Lookup::NoFacts && *dest == Dest::Unknown && self.available {
            return false;
        }
        let port = match (now, *dest) {
            (_, Dest::Conflict) | (Lookup::Conflict, _) => {
                *dest = Dest::Conflict;
                None
            }
            (Lookup::Port(p), Dest::Port(q)) if p != q => {
                *dest = Dest::Conflict;
                None
            }
            (Lookup::Port(p), _) => {
                *dest = Dest::Port(p);
                Some(p)
            }
            // Its parents are gone (they often die first): the answer they gave holds.
            (Lookup::NoFacts, Dest::Port(q)) if self.available && self.current.contains(&q) => {
                Some(q)
            }
            _ => None,
        };
        let device = port.and_then(|p| self.device(p)).map(str::to_owned);
        let t = match device {
            Some(d) => self.totals.entry((d, role, reason)).or_default(),
            None => self.unattributed.entry((role, reason)).or_default(),
        };
        t.0 = t.0.saturating_add(packets);
        t.1 = t.1.saturating_add(bytes);
        true
    }
}

/// `fa:16:3e:11:22:33` (any case).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::ovs_flows::accounting::{Accounting, Names};
    use crate::collectors::ovs_flows::parse::{
        ActionClass, Actions, Flow, OVS_FLOW_CMD_DEL, OVS_FLOW_CMD_NEW, OVS_FLOW_CMD_SET, Recirc,
    };

    const DP: u32 = 7;
    const TUNNEL: u32 = 2;
    const TAP_A: u32 = 3;
    const MAC_A: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 0xb];

    fn port(device: &str, mac: &str, zone: Option<u16>) -> VmPort {
        VmPort {
            device: device.into(),
            port_id: format!("{device}-port"),
            instance_id: String::new(),
            mac: mac.into(),
            status: "active".into(),
            ovn_installed: true,
            error: None,
            ct_zone: zone,
        }
    }

    /// OVN's two local VMs: tapA in zone 3, tapB in zone 4.
    fn ovn_ports() -> Vec<VmPort> {
        vec![
            port("tapA", "fa:16:3e:00:00:0a", Some(3)),
            port("tapB", "FA:16:3E:00:00:0B", Some(4)),
        ]
    }

    fn acct(ports: Option<&[VmPort]>) -> Accounting {
        let mut a = Accounting::new(1000);
        a.set_names(
            DP,
            Names {
                datapath: "ovs-system".into(),
                ports: [
                    (1, ("br-int".to_owned(), Role::Ovs)),
                    (TUNNEL, ("genev_sys_6081".to_owned(), Role::Tunnel)),
                    (TAP_A, ("tapA".to_owned(), Role::Vm)),
                ]
                .into(),
            },
        );
        a.attribution.set_ports(ports, &Devices::default());
        a.begin_collect();
        a.end_collect();
        a
    }

    fn lineage(recirc_id: u32, recircs: &[(u32, Option<u16>)]) -> Lineage {
        let mut l = Lineage {
            recirc_id,
            ..Lineage::default()
        };
        for (slot, (id, zone)) in l.recircs.iter_mut().zip(recircs) {
            *slot = Some(Recirc {
                id: *id,
                zone: *zone,
            });
        }
        l
    }

    fn msg(cmd: u8, id: u128, in_port: u32, l: Lineage, drop: bool, packets: u64) -> Flow {
        let actions = if drop {
            Actions {
                class: ActionClass::Drop,
                drop: Some(DropReason::CtInvalid),
            }
        } else {
            Actions {
                class: ActionClass::Recirculate,
                drop: None,
            }
        };
        Flow {
            cmd,
            dp_ifindex: DP,
            id,
            in_port: Some(in_port),
            tunnel: in_port == TUNNEL,
            actions: Some(actions),
            lineage: Some(l),
            packets,
            bytes: packets * 60,
        }
    }

    /// A first-pass flow from the tunnel: ct(zone), recirc(x).
    fn parent(a: &mut Accounting, id: u128, zone: Option<u16>, x: u32) {
        a.notify(&msg(
            OVS_FLOW_CMD_NEW,
            id,
            TUNNEL,
            lineage(0, &[(x, zone)]),
            false,
            0,
        ));
    }

    /// A drop flow matching recirc_id(x), created, then counting `packets`.
    fn drop_flow(a: &mut Accounting, id: u128, x: u32, packets: u64) {
        let l = lineage(x, &[]);
        a.notify(&msg(OVS_FLOW_CMD_NEW, id, TUNNEL, l, true, 0));
        a.notify(&msg(OVS_FLOW_CMD_SET, id, TUNNEL, l, true, packets));
    }

    fn vm(a: &Accounting, device: &str) -> u64 {
        a.attribution
            .totals()
            .get(&(device.to_owned(), Role::Tunnel, DropReason::CtInvalid))
            .map_or(0, |t| t.0)
    }

    fn unattributed(a: &Accounting) -> u64 {
        a.attribution.unattributed()[&(Role::Tunnel, DropReason::CtInvalid)].0
    }

    fn dropped(a: &Accounting) -> u64 {
        a.totals()
            .iter()
            .filter(|((_, _, role, reason), _)| {
                *role == Role::Tunnel && *reason == DropReason::CtInvalid
            })
            .map(|(_, t)| t.0)
            .sum()
    }

    /// VM series and the unattributed series add up to the drop-flow totals.
    fn sums(a: &Accounting) {
        assert_eq!(vm(a, "tapA") + vm(a, "tapB") + unattributed(a), dropped(a));
    }

    #[test]
    fn each_vm_gets_the_drops_of_its_zone() {
        let ports = ovn_ports();
        let mut a = acct(Some(&ports));
        // Every reason from the tunnel is there at 0 for both ports from the start.
        assert_eq!(a.attribution.totals().len(), 8);
        parent(&mut a, 1, Some(3), 10);
        parent(&mut a, 2, Some(4), 11);
        drop_flow(&mut a, 3, 10, 5);
        drop_flow(&mut a, 4, 11, 2);
        assert_eq!(
            (vm(&a, "tapA"), vm(&a, "tapB"), unattributed(&a)),
            (5, 2, 0)
        );
        // Bytes follow packets.
        let t = a.attribution.totals()[&("tapA".to_owned(), Role::Tunnel, DropReason::CtInvalid)];
        assert_eq!(t.1, 300);
        // The parent idles out first; the drop flow's last packets still go to tapA.
        a.notify(&msg(
            OVS_FLOW_CMD_DEL,
            1,
            TUNNEL,
            lineage(0, &[(10, Some(3))]),
            false,
            9,
        ));
        a.notify(&msg(OVS_FLOW_CMD_DEL, 3, TUNNEL, lineage(10, &[]), true, 7));
        assert_eq!(
            (vm(&a, "tapA"), vm(&a, "tapB"), unattributed(&a)),
            (7, 2, 0)
        );
        sums(&a);
    }

    #[test]
    fn chains_without_ct_are_followed_to_the_zone() {
        let ports = ovn_ports();
        let mut a = acct(Some(&ports));
        parent(&mut a, 1, Some(4), 10);
        // recirc_id(10) → recirc(20) with no ct(): the zone is still 4.
        a.notify(&msg(
            OVS_FLOW_CMD_NEW,
            2,
            TUNNEL,
            lineage(10, &[(20, None)]),
            false,
            0,
        ));
        drop_flow(&mut a, 3, 20, 6);
        assert_eq!(
            (vm(&a, "tapA"), vm(&a, "tapB"), unattributed(&a)),
            (0, 6, 0)
        );
        sums(&a);
    }

    #[test]
    fn what_names_no_single_port_is_unattributed() {
        let ports = ovn_ports();
        let mut a = acct(Some(&ports));
        // Two parents in different zones recirculate into 10.
        parent(&mut a, 1, Some(3), 10);
        parent(&mut a, 2, Some(4), 10);
        drop_flow(&mut a, 3, 10, 4);
        // A router's zone, which is no VM port's.
        parent(&mut a, 4, Some(1), 12);
        drop_flow(&mut a, 5, 12, 3);
        // No parent known at all, and a first-pass drop.
        drop_flow(&mut a, 6, 99, 2);
        drop_flow(&mut a, 7, 0, 1);
        assert_eq!(
            (vm(&a, "tapA"), vm(&a, "tapB"), unattributed(&a)),
            (0, 0, 10)
        );
        // Once in conflict, never attributed again, even when one parent is left.
        a.notify(&msg(
            OVS_FLOW_CMD_DEL,
            2,
            TUNNEL,
            lineage(0, &[(10, Some(4))]),
            false,
            0,
        ));
        a.notify(&msg(OVS_FLOW_CMD_SET, 3, TUNNEL, lineage(10, &[]), true, 9));
        assert_eq!((vm(&a, "tapA"), unattributed(&a)), (0, 15));
        sums(&a);
    }

    #[test]
    fn a_zone_given_to_another_port_credits_no_one_else() {
        let ports = ovn_ports();
        let mut a = acct(Some(&ports));
        parent(&mut a, 1, Some(3), 10);
        drop_flow(&mut a, 3, 10, 4);
        assert_eq!(vm(&a, "tapA"), 4);
        // ovn-controller unbinds tapA and gives zone 3 to tapC.
        let moved = vec![
            port("tapB", "fa:16:3e:00:00:0b", Some(4)),
            port("tapC", "fa:16:3e:00:00:0c", Some(3)),
        ];
        a.attribution.set_ports(Some(&moved), &Devices::default());
        a.notify(&msg(
            OVS_FLOW_CMD_SET,
            3,
            TUNNEL,
            lineage(10, &[]),
            true,
            10,
        ));
        // tapA's series ended with its port; tapC gets none of the old flow's drops.
        assert_eq!(vm(&a, "tapC"), 0);
        assert!(!a.attribution.totals().keys().any(|(d, _, _)| d == "tapA"));
        assert_eq!(unattributed(&a), 6);
        // A recirculation id reused after its flows died starts afresh, for tapC.
        a.notify(&msg(
            OVS_FLOW_CMD_DEL,
            3,
            TUNNEL,
            lineage(10, &[]),
            true,
            10,
        ));
        a.notify(&msg(
            OVS_FLOW_CMD_DEL,
            1,
            TUNNEL,
            lineage(0, &[(10, Some(3))]),
            false,
            0,
        ));
        parent(&mut a, 8, Some(3), 10);
        drop_flow(&mut a, 9, 10, 2);
        assert_eq!(vm(&a, "tapC"), 2);
    }

    #[test]
    fn a_dump_may_list_the_drop_flow_before_its_parent() {
        use crate::collectors::ovs_flows::parse::OVS_FLOW_CMD_GET;
        let ports = ovn_ports();
        let mut a = acct(Some(&ports));
        // Nothing heard of either (the monitor joined after they were made).
        a.begin_collect();
        a.begin_dump(DP);
        a.dumped(&msg(OVS_FLOW_CMD_GET, 3, TUNNEL, lineage(10, &[]), true, 4));
        a.dumped(&msg(
            OVS_FLOW_CMD_GET,
            1,
            TUNNEL,
            lineage(0, &[(10, Some(4))]),
            false,
            9,
        ));
        a.dumped(&msg(OVS_FLOW_CMD_GET, 5, TUNNEL, lineage(77, &[]), true, 2));
        a.end_dump(DP, true);
        a.end_collect();
        assert_eq!((vm(&a, "tapB"), unattributed(&a)), (4, 2));
        // The flow remembers: its parent gone, its next packets are still tapB's.
        a.notify(&msg(
            OVS_FLOW_CMD_DEL,
            1,
            TUNNEL,
            lineage(0, &[(10, Some(4))]),
            false,
            9,
        ));
        a.notify(&msg(OVS_FLOW_CMD_DEL, 3, TUNNEL, lineage(10, &[]), true, 6));
        assert_eq!((vm(&a, "tapB"), unattributed(&a)), (6, 2));
        sums(&a);
    }

    #[test]
    fn without_ovsdb_nothing_is_attributed() {
        let mut a = acct(None);
        parent(&mut a, 1, Some(3), 10);
        drop_flow(&mut a, 3, 10, 4);
        assert_eq!(unattributed(&a), 4);
        assert!(a.attribution.totals().is_empty());
        sums(&a);
    }

    #[test]
    fn a_full_mac_picks_the_port_in_a_shared_zone() {
        // ML2/OVS: one zone for the network's ports.
        let ports = vec![
            port("tapA", "fa:16:3e:00:00:0a", Some(5)),
            port("tapB", "fa:16:3e:00:00:0b", Some(5)),
        ];
        let mut a = acct(Some(&ports));
        let mut p = lineage(0, &[(10, Some(5))]);
        p.eth_dst = Some(MAC_B);
        a.notify(&msg(OVS_FLOW_CMD_NEW, 1, TUNNEL, p, false, 0));
        drop_flow(&mut a, 2, 10, 3);
        // Its own key's MAC when it has one.
        let mut own = lineage(11, &[]);
        own.eth_dst = Some(MAC_A);
        a.notify(&msg(OVS_FLOW_CMD_NEW, 3, TUNNEL, own, true, 0));
        a.notify(&msg(OVS_FLOW_CMD_SET, 3, TUNNEL, own, true, 2));
        assert_eq!(
            (vm(&a, "tapA"), vm(&a, "tapB"), unattributed(&a)),
            (2, 3, 0)
        );
        sums(&a);
    }

    #[test]
    fn a_vm_own_traffic_is_not_inbound() {
        let ports = ovn_ports();
        let mut a = acct(Some(&ports));
        // OVN runs from-lport ACLs in the VM's own zone: drops of what tapA sends.
        a.notify(&msg(
            OVS_FLOW_CMD_NEW,
            1,
            TAP_A,
            lineage(0, &[(10, Some(3))]),
            false,
            0,
        ));
        let l = lineage(10, &[]);
        a.notify(&msg(OVS_FLOW_CMD_NEW, 2, TAP_A, l, true, 0));
        a.notify(&msg(OVS_FLOW_CMD_SET, 2, TAP_A, l, true, 5));
        assert_eq!(vm(&a, "tapA"), 0);
        assert_eq!(
            a.attribution.unattributed()[&(Role::Vm, DropReason::CtInvalid)].0,
            5
        );
    }

    #[test]
    fn macs_parse() {
        assert_eq!(parse_mac("fa:16:3e:00:00:0A"), Some(MAC_A));
        for bad in [
            "",
            "fa:16:3e:00:00",
            "fa:16:3e:00:00:0a:01",
            "fa:16:3e:00:00:0g",
            "fa:16:3e:0:00:0a",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
