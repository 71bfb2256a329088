//! Drop accounting: turns what the kernel says about datapath flows (dump entries, and
//! notifications of flows created, changed and deleted) into drop totals that only grow.
//!
//! Every flow's last counts are remembered, not only drop flows', with what the flow did
//! with packets since then. An increase is credited to the drops only for the time the
//! flow dropped:
//! - a notification marks a boundary: the increase since the last observation belongs to
//!   the actions the flow had until then (a forwarding flow changed into a drop credits
//!   nothing from before the change); a delete brings the flow's final counts;
//! - between two dumps with no notification in between, the increase is credited when the
//!   flow did the same thing at both ends, and not at all when its actions changed unseen
//!   (an under-count rather than an over-count);
//! - a count below the last one means the flow started over (re-created under the same
//!   UFID, or its statistics cleared): its whole count is new;
//! - a flow nothing was heard of before a dump found it is new since the last dump, and
//!   its whole count is credited to its present actions; only the first look at the table
//!   takes counts as baselines. (With notifications lost, this over-counts a flow that
//!   was rewritten into a drop before any dump saw it; docs/collectors.md gives measured errors.)
//!
//! The kernel's dump is not a snapshot, so a flow a dump did not reach is kept for
//! [`GRACE`] more complete dumps before it is forgotten. Notifications and dump replies
//! come over two sockets; the caller applies every queued notification before each dump
//! chunk, and an entry of the dump in progress is ignored for a flow a notification
//! already spoke about during that dump (the notification is as new or newer).

use std::collections::{BTreeMap, HashMap};

use super::attribution::{Attribution, Dest};
use super::parse::{self, Actions, DropReason, Flow, Lineage};
use crate::roles::Role;

/// Complete dumps a flow may be missing from before it is forgotten.
pub const GRACE: u64 = 2;

/// in_port of drops from ports the topology does not name (deleted since, or left out by
/// the device filter).
pub const OTHER_PORT: &str = "other";

/// Per datapath: its name and every port's label (name or "other") and role.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub datapath: String,
    pub ports: HashMap<u32, (String, Role)>,
}

/// What a flow does with the packets it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not known yet (created by a notification that left its actions out).
    Unknown,
    Forwards,
    Drops {
        in_port: Option<u32>,
        reason: DropReason,
    },
}

impl State {
    fn of(actions: Option<Actions>, in_port: Option<u32>) -> State {
        match actions {
            None => State::Unknown,
            Some(Actions { drop: None, .. }) => State::Forwards,
            Some(Actions {
                drop: Some(reason), ..
            }) => State::Drops { in_port, reason },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    packets: u64,
    bytes: u64,
    state: State,
    /// The collection that last saw the flow alive (in a dump or a notification).
    seen: u64,
    /// The collection whose dump was in progress when a notification last spoke about
    /// the flow; its dump entries are older news then.
    touched: u64,
    /// Deleted during a dump in progress; kept until that dump ends so that its stale
    /// entry does not bring the flow back.
    deleted: bool,
    /// Its key and recirculations, the last time a message carried them (in
    /// [`Lineages`]; none when they say nothing).
    lineage: Option<u32>,
    /// The VM port its drops were attributed to.
    dest: Dest,
}

/// Lineages stored once however many flows share them (the flows of one OpenFlow path
/// do), with how many flows hold each.
#[derive(Debug, Default)]
struct Lineages {
    ids: HashMap<Lineage, u32>,
    values: Vec<Option<(Lineage, u32)>>,
    free: Vec<u32>,
}

impl Lineages {
    fn intern(&mut self, l: Lineage) -> u32 {
        if let Some(&i) = self.ids.get(&l) {
            if let Some(Some((_, refs))) = self.values.get_mut(i as usize) {
                *refs += 1;
            }
            return i;
        }
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.values.push(None);
                u32::try_from(self.values.len() - 1).unwrap_or(u32::MAX)
            }
        };
        if let Some(slot) = self.values.get_mut(i as usize) {
            *slot = Some((l, 1));
        }
        self.ids.insert(l, i);
        i
    }

    fn release(&mut self, i: u32) {
        let Some(slot) = self.values.get_mut(i as usize) else {
            return;
        };
        if let Some((l, refs)) = slot {
            *refs -= 1;
            if *refs == 0 {
                self.ids.remove(l);
                *slot = None;
                self.free.push(i);
            }
        }
    }

    fn get(&self, i: Option<u32>) -> Option<Lineage> {
        self.values
            .get(i? as usize)
            .copied()
            .flatten()
            .map(|(l, _)| l)
    }
}

/// Drop totals by (datapath, in_port label, role, reason): (packets, bytes).
pub type Totals = BTreeMap<(String, String, Role, DropReason), (u64, u64)>;

#[derive(Debug)]
pub struct Accounting {
    max_flows: usize,
    flows: HashMap<(u32, u128), Record>,
    names: HashMap<u32, Names>,
    totals: Totals,
    /// Collections started; 0 before the first.
    generation: u64,
    /// The datapath whose dump is in progress.
    dumping: Option<u32>,
    /// True until the first collection ends: flows seen then set baselines only, so a
    /// restart does not count live flows' old packets again.
    initial: bool,
    /// Flows not tracked because `max_flows` were already.
    pub untracked: u64,
    /// The same drops, by the VM port they were heading to.
    pub attribution: Attribution,
    /// Drops of the dump in progress whose flows' parents were not known yet: attributed
    /// when the dump ends.
    pending: Vec<Pending>,
    lineages: Lineages,
}

/// A drop credited to the totals and not yet attributed.
#[derive(Debug)]
struct Pending {
    key: (u32, u128),
    lineage: Option<Lineage>,
    from: String,
    role: Role,
    reason: DropReason,
    counts: (u64, u64),
}

impl Accounting {
    pub fn new(max_flows: usize) -> Self {
        Accounting {
            max_flows,
            flows: HashMap::new(),
            names: HashMap::new(),
            totals: Totals::new(),
            generation: 0,
            dumping: None,
            initial: true,
            untracked: 0,
            attribution: Attribution::new(),
            pending: Vec::new(),
            lineages: Lineages::default(),
        }
    }

    /// Stores a flow's record with its lineage, keeping the recirculation links in step.
    fn put(&mut self, key: (u32, u128), r: Record, lineage: Option<Lineage>) {
        let new = lineage
            .filter(|l| *l != Lineage::default())
            .map(|l| self.lineages.intern(l));
        let old = self
            .flows
            .insert(key, Record { lineage: new, ..r })
            .and_then(|o| o.lineage);
        if old != new {
            if let Some(l) = self.lineages.get(old) {
                self.attribution.link(key.0, key.1, &l, false);
            }
            if let Some(l) = self.lineages.get(new) {
                self.attribution.link(key.0, key.1, &l, true);
            }
        }
        if let Some(o) = old {
            self.lineages.release(o);
        }
    }

    fn remove(&mut self, key: (u32, u128)) {
        if let Some(r) = self.flows.remove(&key) {
            self.forget_lineage(key, r.lineage);
        }
    }

    /// Unlinks a lineage a flow no longer holds, and releases it.
    fn forget_lineage(&mut self, key: (u32, u128), old: Option<u32>) {
        if let Some(l) = self.lineages.get(old) {
            self.attribution.link(key.0, key.1, &l, false);
        }
        if let Some(o) = old {
            self.lineages.release(o);
        }
    }

    /// Keeps the flows `keep` says; the others' links go with them.
    fn retain(&mut self, mut keep: impl FnMut(&(u32, u128), &Record) -> bool) {
        let mut gone = Vec::new();
        self.flows.retain(|k, r| {
            let kept = keep(k, r);
            if !kept {
                gone.push((*k, r.lineage));
            }
            kept
        });
        for (k, old) in gone {
            self.forget_lineage(k, old);
        }
    }

    pub fn tracked(&self) -> usize {
        self.flows.len()
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Whether drops of this flow can be attributed now (its datapath and port are named).
    pub fn knows(&self, f: &Flow) -> bool {
        self.names
            .get(&f.dp_ifindex)
            .is_some_and(|n| f.in_port.is_none_or(|p| n.ports.contains_key(&p)))
    }

    /// Names a datapath's ports; totals of ports that are gone end with them.
    pub fn set_names(&mut self, dp_ifindex: u32, names: Names) {
        self.totals.retain(|(dp, port, role, _), _| {
            dp != &names.datapath
                || port == OTHER_PORT
                || names.ports.values().any(|(n, r)| n == port && r == role)
        });
        self.names.insert(dp_ifindex, names);
    }

    /// A datapath that is gone takes its flows with it; its totals stay, so its counters
    /// resume where they were if it comes back under the same name.
    pub fn forget_datapaths(&mut self, keep: &[u32]) {
        self.retain(|(dp, _), _| keep.contains(dp));
        self.names.retain(|dp, _| keep.contains(dp));
    }

    /// Makes sure the series of these (port, role) pairs exist, at 0 until they drop.
    pub fn ensure_ports(&mut self, datapath: &str, ports: &[(&str, Role)]) {
        for (port, role) in ports {
            for reason in DropReason::ALL {
                self.totals
                    .entry((datapath.to_owned(), (*port).to_owned(), *role, reason))
                    .or_default();
            }
        }
    }

    /// Credits an increase of a flow whose lineage and attribution are `lineage`, `dest`.
    fn credit(
        &mut self,
        (dp, id): (u32, u128),
        state: State,
        (packets, bytes): (u64, u64),
        lineage: Option<&Lineage>,
        dest: &mut Dest,
    ) {
        let State::Drops { in_port, reason } = state else {
            return;
        };
        if packets == 0 && bytes == 0 {
            return;
        }
        // A datapath nobody named: the listener reads the topology before it applies a
        // notification about an unknown one, so this is a datapath already gone again.
        let Some(names) = self.names.get(&dp) else {
            return;
        };
        let (port, role) = in_port
            .and_then(|p| names.ports.get(&p))
            .map(|(n, r)| (n.as_str(), *r))
            .unwrap_or((OTHER_PORT, Role::Other));
        let t = self
            .totals
            .entry((names.datapath.clone(), port.to_owned(), role, reason))
            .or_default();
        t.0 = t.0.saturating_add(packets);
        t.1 = t.1.saturating_add(bytes);
        let defer = self.dumping == Some(dp);
        let counts = (packets, bytes);
        if !self
            .attribution
            .credit(dp, lineage, dest, port, role, reason, counts, defer)
        {
            self.pending.push(Pending {
                key: (dp, id),
                lineage: lineage.copied(),
                from: port.to_owned(),
                role,
                reason,
                counts,
            });
        }
    }

    /// Attributes the drops the dump left pending, now that it brought every parent it
    /// could; the flows remember where theirs went.
    fn settle(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            let mut dest = self.flows.get(&p.key).map_or(Dest::Unknown, |r| r.dest);
            self.attribution.credit(
                p.key.0,
                p.lineage.as_ref(),
                &mut dest,
                &p.from,
                p.role,
                p.reason,
                p.counts,
                false,
            );
            if let Some(r) = self.flows.get_mut(&p.key) {
                r.dest = dest;
            }
        }
    }

    pub fn begin_collect(&mut self) {
        self.generation += 1;
    }

    pub fn end_collect(&mut self) {
        self.initial = false;
    }

    /// A notification: OVS_FLOW_CMD_NEW, _SET or _DEL.
    pub fn notify(&mut self, f: &Flow) {
        let key = (f.dp_ifindex, f.id);
        let during_dump = self.dumping == Some(f.dp_ifindex);
        let generation = self.generation;
        let Some(r) = self.flows.get(&key).copied().filter(|r| !r.deleted) else {
            if f.cmd == parse::OVS_FLOW_CMD_DEL {
                // Never seen: where its packets went before is unknown.
                return;
            }
            if self.flows.len() >= self.max_flows && !self.flows.contains_key(&key) {
                self.untracked += 1;
                return;
            }
            // New (or new again after a delete): counts so far, if any, belong to a
            // history not seen here, so they are the baseline.
            self.put(
                key,
                Record {
                    packets: f.packets,
                    bytes: f.bytes,
                    state: State::of(f.actions, f.in_port),
                    seen: generation,
                    touched: if during_dump { generation } else { 0 },
                    deleted: false,
                    lineage: None,
                    dest: Dest::Unknown,
                },
                f.lineage,
            );
            return;
        };
        let mut r = r;
        // Up to this boundary the flow did what it did before.
        let lineage = self.lineages.get(r.lineage);
        self.credit(key, r.state, increase(&r, f), lineage.as_ref(), &mut r.dest);
        if f.cmd == parse::OVS_FLOW_CMD_DEL {
            if during_dump {
                self.put(
                    key,
                    Record {
                        deleted: true,
                        touched: generation,
                        ..r
                    },
                    lineage,
                );
            } else {
                self.remove(key);
            }
            return;
        }
        let state = match State::of(f.actions, f.in_port) {
            State::Unknown => r.state,
            s => s,
        };
        self.put(
            key,
            Record {
                packets: f.packets,
                bytes: f.bytes,
                state,
                seen: generation,
                touched: if during_dump { generation } else { r.touched },
                deleted: false,
                lineage: None,
                dest: r.dest,
            },
            known_lineage(f, lineage),
        );
    }

    pub fn begin_dump(&mut self, dp_ifindex: u32) {
        self.dumping = Some(dp_ifindex);
    }

    /// One entry of the dump in progress.
    pub fn dumped(&mut self, f: &Flow) {
        let key = (f.dp_ifindex, f.id);
        let generation = self.generation;
        let state = State::of(f.actions, f.in_port);
        match self.flows.get(&key).copied() {
            Some(r) if r.touched == generation => {
                // A notification spoke during this dump; this entry may be older news.
                if !r.deleted {
                    if let Some(r) = self.flows.get_mut(&key) {
                        r.seen = generation;
                    }
                }
            }
            Some(r) => {
                let credited = if f.packets < r.packets {
                    // Started over: everything it counted is under its present actions.
                    state
                } else {
                    match (r.state, state) {
                        (State::Unknown, s) => s,
                        (a, b) if a == b => a,
                        // Its actions changed with no notification to say when.
                        _ => State::Forwards,
                    }
                };
                let mut dest = r.dest;
                let lineage = self.lineages.get(r.lineage);
                self.credit(key, credited, increase(&r, f), lineage.as_ref(), &mut dest);
                self.put(
                    key,
                    Record {
                        packets: f.packets,
                        bytes: f.bytes,
                        state,
                        seen: generation,
                        touched: r.touched,
                        deleted: false,
                        lineage: None,
                        dest,
                    },
                    known_lineage(f, lineage),
                );
            }
            None => {
                if self.flows.len() >= self.max_flows {
                    self.untracked += 1;
                    return;
                }
                let mut dest = Dest::Unknown;
                // Born since the last dump, unless this is the first look at the table.
                if !self.initial {
                    self.credit(
                        key,
                        state,
                        (f.packets, f.bytes),
                        f.lineage.as_ref(),
                        &mut dest,
                    );
                }
                self.put(
                    key,
                    Record {
                        packets: f.packets,
                        bytes: f.bytes,
                        state,
                        seen: generation,
                        touched: 0,
                        deleted: false,
                        lineage: None,
                        dest,
                    },
                    f.lineage,
                );
            }
        }
    }

    /// Ends the dump of `dp_ifindex`. Only a complete dump says anything about the flows
    /// it did not reach: those missing from `GRACE` + 1 complete dumps in a row are gone.
    pub fn end_dump(&mut self, dp_ifindex: u32, complete: bool) {
        self.dumping = None;
        self.settle();
        let generation = self.generation;
        self.retain(|(dp, _), r| {
            *dp != dp_ifindex || !(r.deleted || complete && r.seen + GRACE < generation)
        });
    }
}

/// A message's lineage, or the one known before where it leaves key or actions out.
fn known_lineage(f: &Flow, old: Option<Lineage>) -> Option<Lineage> {
    match (f.lineage, old) {
        // A key without actions keeps the recirculations known before.
        (Some(mut n), Some(o)) if f.actions.is_none() => {
            n.recircs = o.recircs;
            n.more = o.more;
            Some(n)
        }
        (Some(n), _) => Some(n),
        (None, o) => o,
    }
}

/// Packets and bytes since the last observation; all of them if the flow started over.
fn increase(r: &Record, f: &Flow) -> (u64, u64) {
    if f.packets >= r.packets {
        (f.packets - r.packets, f.bytes.saturating_sub(r.bytes))
    } else {
        (f.packets, f.bytes)
    }
}

#[cfg(test)]
#[path = "tests/accounting.rs"]
mod tests;
