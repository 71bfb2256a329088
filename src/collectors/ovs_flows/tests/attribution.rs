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
