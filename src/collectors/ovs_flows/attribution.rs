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
        let (interned, current) = (&self.interned, &self.current);
        self.totals
            .retain(|(d, _, _), _| interned.get(d).is_some_and(|i| current.contains(i)));
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

    /// Zones of the packets that come back with recirculation id `x`; each id is looked
    /// at once (`seen`), so loops and shared ancestors cost nothing more.
    fn zones_of(
        &self,
        dp: u32,
        x: u32,
        depth: usize,
        seen: &mut BTreeSet<u32>,
        out: &mut BTreeSet<u16>,
    ) {
        if !seen.insert(x) {
            return;
        }
        let Some(e) = self.edges.get(&(dp, x)) else {
            return;
        };
        out.extend(e.zones.keys().copied());
        if depth >= MAX_DEPTH {
            return;
        }
        for &parent in e.inherit.values() {
            self.zones_of(dp, parent, depth + 1, seen, out);
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
            None if l.recirc_id != 0 => {
                self.zones_of(dp, l.recirc_id, 0, &mut BTreeSet::new(), &mut zones)
            }
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
#[path = "tests/attribution.rs"]
mod tests;
