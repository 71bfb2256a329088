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

#[test]
fn lineages_are_stored_once_and_released_with_their_flows() {
    use crate::collectors::ovs_flows::parse::{Lineage, Recirc};
    let mut a = acct();
    let shared = Lineage {
        recirc_id: 0,
        recircs: [
            Some(Recirc {
                id: 16,
                zone: Some(3),
            }),
            None,
        ],
        ..Lineage::default()
    };
    let with = |id: u128, cmd: u8, l: Lineage| Flow {
        lineage: Some(l),
        ..flow(cmd, id, forwards(), 0)
    };
    for id in 1..=3 {
        a.notify(&with(id, OVS_FLOW_CMD_NEW, shared));
    }
    // A key that says nothing is not stored at all.
    a.notify(&with(4, OVS_FLOW_CMD_NEW, Lineage::default()));
    assert_eq!(a.lineages.ids.len(), 1);
    assert_eq!(
        a.lineages
            .values
            .iter()
            .flatten()
            .map(|(_, n)| n)
            .sum::<u32>(),
        3
    );
    // A flow whose key changes moves to another entry.
    let other = Lineage {
        recirc_id: 9,
        ..shared
    };
    a.notify(&with(1, OVS_FLOW_CMD_SET, other));
    assert_eq!(a.lineages.ids.len(), 2);
    for id in 1..=4 {
        a.notify(&with(id, OVS_FLOW_CMD_DEL, shared));
    }
    assert!(a.lineages.ids.is_empty());
    assert!(a.lineages.values.iter().all(Option::is_none));
    // Freed slots are used again.
    a.notify(&with(5, OVS_FLOW_CMD_NEW, other));
    assert_eq!(a.lineages.values.len(), 2);
}
