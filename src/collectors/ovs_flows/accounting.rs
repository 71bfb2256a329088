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
//!   was rewritten into a drop before any dump saw it; README gives measured errors.)
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
    /// Its key and recirculations, the last time a message carried them.
    lineage: Option<Lineage>,
    /// The VM port its drops were attributed to.
    dest: Dest,
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
        }
    }

    /// Stores a flow's record, keeping the recirculation links in step.
    fn put(&mut self, key: (u32, u128), r: Record) {
        let old = self.flows.insert(key, r).and_then(|o| o.lineage);
        if old != r.lineage {
            if let Some(l) = old {
                self.attribution.link(key.0, key.1, &l, false);
            }
            if let Some(l) = r.lineage {
                self.attribution.link(key.0, key.1, &l, true);
            }
        }
    }

    fn remove(&mut self, key: (u32, u128)) {
        if let Some(l) = self.flows.remove(&key).and_then(|o| o.lineage) {
            self.attribution.link(key.0, key.1, &l, false);
        }
    }

    /// Keeps the flows `keep` says, and the links of those only.
    fn retain(&mut self, mut keep: impl FnMut(&(u32, u128), &Record) -> bool) {
        let before = self.flows.len();
        self.flows.retain(|k, r| keep(k, r));
        if self.flows.len() != before {
            self.attribution.unlink_all();
            for (k, r) in &self.flows {
                if let Some(l) = &r.lineage {
                    self.attribution.link(k.0, k.1, l, true);
                }
            }
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
                    lineage: f.lineage,
                    dest: Dest::Unknown,
                },
            );
            return;
        };
        let mut r = r;
        // Up to this boundary the flow did what it did before.
        let lineage = r.lineage;
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
                lineage: known_lineage(f, r.lineage),
                dest: r.dest,
            },
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
                self.credit(
                    key,
                    credited,
                    increase(&r, f),
                    r.lineage.as_ref(),
                    &mut dest,
                );
                self.put(
                    key,
                    Record {
                        packets: f.packets,
                        bytes: f.bytes,
                        state,
                        seen: generation,
                        touched: r.touched,
                        deleted: false,
                        lineage: known_lineage(f, r.lineage),
                        dest,
                    },
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
                        lineage: f.lineage,
                        dest,
                    },
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
mod tests {
    use super::*;
    use crate::collectors::ovs_flows::parse::{
        ActionClass, OVS_FLOW_CMD_DEL, OVS_FLOW_CMD_GET, OVS_FLOW_CMD_NEW, OVS_FLOW_CMD_SET,
    };

    const DP: u32 = 7;
    const TUNNEL: u32 = 2;

    fn names() -> Names {
        Names {
            datapath: "ovs-system".into(),
            ports: [
                (1, ("br-int".to_owned(), Role::Ovs)),
                (TUNNEL, ("genev_sys_6081".to_owned(), Role::Tunnel)),
                (3, ("tap0".to_owned(), Role::Vm)),
            ]
            .into(),
        }
    }

    fn acct() -> Accounting {
        let mut a = Accounting::new(1000);
        a.set_names(DP, names());
        a
    }

    fn drops(reason: DropReason) -> Option<Actions> {
        Some(Actions {
            class: ActionClass::Drop,
            drop: Some(reason),
        })
    }

    fn forwards() -> Option<Actions> {
        Some(Actions {
            class: ActionClass::Output,
            drop: None,
        })
    }

    fn flow(cmd: u8, id: u128, actions: Option<Actions>, packets: u64) -> Flow {
        Flow {
            cmd,
            dp_ifindex: DP,
            id,
            in_port: Some(TUNNEL),
            tunnel: false,
            actions,
            lineage: None,
            packets,
            bytes: packets * 54,
        }
    }

    fn total(a: &Accounting, reason: DropReason) -> u64 {
        a.totals()
            .get(&(
                "ovs-system".to_owned(),
                "genev_sys_6081".to_owned(),
                Role::Tunnel,
                reason,
            ))
            .map_or(0, |t| t.0)
    }

    /// One collection that dumps `entries`, applying `during` before the first entry as
    /// if those notifications were queued while the dump ran.
    fn collect(a: &mut Accounting, during: &[Flow], entries: &[Flow]) {
        a.begin_collect();
        a.begin_dump(DP);
        for n in during {
            a.notify(n);
        }
        for e in entries {
            a.dumped(e);
        }
        a.end_dump(DP, true);
        a.end_collect();
    }

    /// A collection whose dump holds one flow.
    fn dump(a: &mut Accounting, id: u128, actions: Option<Actions>, packets: u64) {
        collect(a, &[], &[flow(OVS_FLOW_CMD_GET, id, actions, packets)]);
    }

    /// A collection whose dump is empty.
    fn dump_none(a: &mut Accounting) {
        collect(a, &[], &[]);
    }

    use DropReason::{Controller, CtInvalid, NoAction};

    #[test]
    fn a_forwarding_flow_changed_into_a_drop_credits_only_what_it_dropped() {
        let mut a = acct();
        dump_none(&mut a);
        a.notify(&flow(OVS_FLOW_CMD_NEW, 1, forwards(), 0));
        dump(&mut a, 1, forwards(), 20);
        // The revalidator rewrites it in place at 39 forwarded packets; 5 are dropped.
        a.notify(&flow(OVS_FLOW_CMD_SET, 1, drops(NoAction), 39));
        dump(&mut a, 1, drops(NoAction), 44);
        assert_eq!(total(&a, NoAction), 5);
        assert_eq!(a.totals().values().map(|t| t.1).sum::<u64>(), 5 * 54);
    }

    #[test]
    fn without_the_notification_a_changed_flow_credits_nothing_rather_than_too_much() {
        let mut a = acct();
        dump_none(&mut a);
        dump(&mut a, 1, forwards(), 39);
        dump(&mut a, 1, drops(NoAction), 44);
        assert_eq!(total(&a, NoAction), 0);
        dump(&mut a, 1, drops(NoAction), 50);
        assert_eq!(total(&a, NoAction), 6);
    }

    #[test]
    fn a_flow_evicted_and_recreated_between_scrapes_counts_both_lives() {
        let mut a = acct();
        dump_none(&mut a);
        a.notify(&flow(OVS_FLOW_CMD_NEW, 9, drops(CtInvalid), 0));
        a.notify(&flow(OVS_FLOW_CMD_DEL, 9, None, 6));
        a.notify(&flow(OVS_FLOW_CMD_NEW, 9, drops(CtInvalid), 0));
        dump(&mut a, 9, drops(CtInvalid), 4);
        assert_eq!(total(&a, CtInvalid), 10);
    }

    #[test]
    fn flows_that_live_and_die_between_scrapes_count() {
        let mut a = acct();
        dump_none(&mut a);
        for id in 0..100u128 {
            let actions = if id % 2 == 0 {
                drops(NoAction)
            } else {
                forwards()
            };
            a.notify(&flow(OVS_FLOW_CMD_NEW, id, actions, 0));
            a.notify(&flow(OVS_FLOW_CMD_DEL, id, None, 3));
        }
        dump_none(&mut a);
        assert_eq!(total(&a, NoAction), 150);
        assert_eq!(a.tracked(), 0);
    }

    #[test]
    fn without_notifications_a_recreated_flow_is_a_lower_bound() {
        let mut a = acct();
        dump_none(&mut a);
        dump(&mut a, 9, drops(CtInvalid), 6);
        // Evicted and re-created with fewer packets: only its new count is known.
        dump(&mut a, 9, drops(CtInvalid), 4);
        assert_eq!(total(&a, CtInvalid), 10);
        // Re-created with more packets than before: under-counted by the old count.
        dump_none(&mut a);
        dump(&mut a, 9, drops(CtInvalid), 9);
        assert_eq!(total(&a, CtInvalid), 15);
    }

    #[test]
    fn a_flow_one_dump_skipped_is_not_counted_again() {
        let mut a = acct();
        dump_none(&mut a);
        dump(&mut a, 3, drops(NoAction), 10);
        for _ in 0..GRACE {
            dump_none(&mut a);
        }
        dump(&mut a, 3, drops(NoAction), 12);
        assert_eq!(total(&a, NoAction), 12);
        // Missing from GRACE + 1 complete dumps: forgotten.
        for _ in 0..=GRACE {
            dump_none(&mut a);
        }
        assert_eq!(a.tracked(), 0);
    }

    #[test]
    fn a_stale_dump_entry_never_brings_a_deleted_flow_back() {
        let mut a = acct();
        dump_none(&mut a);
        dump(&mut a, 4, drops(CtInvalid), 5);
        // Deleted while the next dump runs; the dump's entry was taken before that.
        collect(
            &mut a,
            &[flow(OVS_FLOW_CMD_DEL, 4, None, 8)],
            &[flow(OVS_FLOW_CMD_GET, 4, drops(CtInvalid), 7)],
        );
        assert_eq!(total(&a, CtInvalid), 8);
        assert_eq!(a.tracked(), 0);
        // A change notified during the dump wins over the dump's older entry.
        a.notify(&flow(OVS_FLOW_CMD_NEW, 5, forwards(), 0));
        collect(
            &mut a,
            &[flow(OVS_FLOW_CMD_SET, 5, drops(CtInvalid), 30)],
            &[flow(OVS_FLOW_CMD_GET, 5, forwards(), 28)],
        );
        dump(&mut a, 5, drops(CtInvalid), 33);
        assert_eq!(total(&a, CtInvalid), 11);
    }

    #[test]
    fn the_first_look_sets_baselines_so_a_restart_counts_nothing_old() {
        let mut a = acct();
        dump(&mut a, 1, drops(CtInvalid), 1000);
        assert_eq!(total(&a, CtInvalid), 0);
        dump(&mut a, 1, drops(CtInvalid), 1003);
        assert_eq!(total(&a, CtInvalid), 3);
        // A flow born after the first look counts in full.
        dump(&mut a, 2, drops(CtInvalid), 2);
        assert_eq!(total(&a, CtInvalid), 5);
    }

    #[test]
    fn logged_drops_count_under_their_own_reason() {
        let mut a = acct();
        dump_none(&mut a);
        a.notify(&flow(OVS_FLOW_CMD_NEW, 1, drops(Controller), 0));
        a.notify(&flow(OVS_FLOW_CMD_DEL, 1, None, 4));
        assert_eq!(total(&a, Controller), 4);
    }

    #[test]
    fn ports_that_change_hands_do_not_inherit_totals() {
        let mut a = acct();
        a.ensure_ports("ovs-system", &[("tap0", Role::Vm)]);
        dump_none(&mut a);
        let mut f = flow(OVS_FLOW_CMD_NEW, 1, None, 0);
        f.in_port = Some(3);
        f.actions = drops(NoAction);
        a.notify(&f);
        f.cmd = OVS_FLOW_CMD_DEL;
        f.packets = 7;
        a.notify(&f);
        let key = |port: &str, role| ("ovs-system".to_owned(), port.to_owned(), role, NoAction);
        assert_eq!(a.totals()[&key("tap0", Role::Vm)].0, 7);
        // Port 3 now belongs to another VM: tap0's series ends, tap9's starts at 0.
        let mut n = names();
        n.ports.insert(3, ("tap9".to_owned(), Role::Vm));
        a.set_names(DP, n);
        a.ensure_ports("ovs-system", &[("tap9", Role::Vm)]);
        assert!(!a.totals().contains_key(&key("tap0", Role::Vm)));
        assert_eq!(a.totals()[&key("tap9", Role::Vm)].0, 0);
        // A port nobody names counts as other.
        f.cmd = OVS_FLOW_CMD_NEW;
        f.in_port = Some(42);
        f.packets = 0;
        a.notify(&f);
        f.cmd = OVS_FLOW_CMD_DEL;
        f.packets = 2;
        a.notify(&f);
        assert_eq!(a.totals()[&key(OTHER_PORT, Role::Other)].0, 2);
    }

    #[test]
    fn memory_is_bounded_by_max_flows() {
        let mut a = Accounting::new(10);
        a.set_names(DP, names());
        dump_none(&mut a);
        for id in 0..25u128 {
            a.notify(&flow(OVS_FLOW_CMD_NEW, id, drops(NoAction), 0));
        }
        assert_eq!((a.tracked(), a.untracked), (10, 15));
        let entries: Vec<_> = (100..120u128)
            .map(|id| flow(OVS_FLOW_CMD_GET, id, drops(NoAction), 1))
            .collect();
        collect(&mut a, &[], &entries);
        assert_eq!(a.tracked(), 10);
        assert_eq!(a.untracked, 35);
    }
}
