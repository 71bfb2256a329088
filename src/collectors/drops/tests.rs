use super::alert::{Alert, Cause, Config, NET_DM_ALERT_MODE_PACKET, Origin};
use super::counts::{Context, MAX_CAUSES, PENDING_KEYS, Pending, Raw, Totals, parse_mac};
use super::session::State;
use crate::collectors::common::devices::Devices;
use crate::collectors::common::links::Link;
use crate::collectors::common::ovsdb::VmPort;

const VM_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const ETH0_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 9];

fn link(index: i32, name: &str, kind: Option<&str>) -> Link {
    Link {
        index,
        name: name.into(),
        kind: kind.map(Into::into),
        operstate: 6,
        ..Link::default()
    }
}

fn links() -> Vec<Link> {
    let mut eth0 = link(2, "eth0", None);
    eth0.mac = Some(ETH0_MAC);
    // The host side of a veth whose peer is ifindex 3 in another namespace.
    let mut meta = link(9, "vethmeta0", Some("veth"));
    meta.link = Some(3);
    meta.link_netnsid = Some(0);
    vec![
        link(1, "lo", None),
        eth0,
        link(3, "br-ex", None),
        link(7, "genev_sys_6081", Some("geneve")),
        link(8, "tap0", Some("tun")),
        meta,
    ]
}

fn ports() -> Vec<VmPort> {
    vec![VmPort {
        device: "tap0".into(),
        port_id: "p0".into(),
        instance_id: String::new(),
        mac: "fa:16:3e:00:00:01".into(),
        status: String::new(),
        ovn_installed: true,
        error: None,
        ct_zone: None,
    }]
}

fn raw(ifindex: u32, dst: Option<[u8; 6]>, reason: &str) -> Raw {
    Raw::of(&Alert {
        origin: Origin::Software,
        ifindex: Some(ifindex),
        device: None,
        cause: Cause::Reason(reason.into()),
        orig_len: None,
        dst,
    })
}

fn series(t: &Totals, family: usize) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let f = &t.render()[family];
    let mut text = Vec::new();
    crate::render::encode_text(vec![f.clone()], &mut text);
    for line in String::from_utf8(text).unwrap().lines() {
        if line.starts_with('#') {
            continue;
        }
        let (k, v) = line.rsplit_once(' ').unwrap();
        out.push((k.to_owned(), v.parse().unwrap()));
    }
    out
}

fn value(t: &Totals, labels: &str) -> f64 {
    let key = format!("packetpath_kernel_drop_packets_total{{{labels}}}");
    series(t, 0)
        .into_iter()
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("no {key} in {:?}", series(t, 0)))
        .1
}

#[test]
fn a_frame_for_a_vm_is_the_vm_ports_and_the_rest_the_ingress_devices() {
    let (links, ports) = (links(), ports());
    let cx = Context::new(&links, &ports, &Devices::default());
    let mut p = Pending::default();
    // Arrived on the tunnel, heading to tap0's guest: tap0's.
    for _ in 0..3 {
        p.add(raw(7, Some(VM_MAC), "FULL_RING"));
    }
    // Arrived on the tunnel for no VM: the tunnel's.
    p.add(raw(7, Some([2, 0, 0, 0, 0, 5]), "OVS_DROP_EXPLICIT"));
    // Generated here.
    p.add(raw(0, None, "NO_SOCKET"));
    // An index only another namespace has.
    p.add(raw(40, None, "NO_SOCKET"));
    // Index 3 is br-ex here and a veth peer elsewhere: a broadcast is nobody's here ...
    p.add(raw(3, None, "NO_SOCKET"));
    // ... and the unicast to eth0's address on eth0 (not a peer's index) is eth0's.
    p.add(raw(2, Some(ETH0_MAC), "NO_SOCKET"));
    let mut t = Totals::default();
    t.credit(p, &cx, 64, true);
    assert_eq!(
        value(&t, r#"device="tap0",role="vm",reason="FULL_RING""#),
        3.0
    );
    assert_eq!(
        value(
            &t,
            r#"device="genev_sys_6081",role="tunnel",reason="OVS_DROP_EXPLICIT""#
        ),
        1.0
    );
    assert_eq!(
        value(&t, r#"device="",role="local",reason="NO_SOCKET""#),
        1.0
    );
    assert_eq!(
        value(&t, r#"device="",role="other_netns",reason="NO_SOCKET""#),
        2.0
    );
    assert_eq!(
        value(&t, r#"device="eth0",role="other",reason="NO_SOCKET""#),
        1.0
    );
    // VM ports and tunnels start at 0 for the reasons that lose VM traffic.
    assert_eq!(
        value(
            &t,
            r#"device="genev_sys_6081",role="tunnel",reason="DEV_READY""#
        ),
        0.0
    );
    assert_eq!(
        value(&t, r#"device="tap0",role="vm",reason="QDISC_DROP""#),
        0.0
    );
    // 5 reasons × (tap0, the tunnel), plus the 4 other series counted above.
    assert_eq!(series(&t, 0).len(), 2 * 5 + 4);
}

#[test]
fn without_reasons_the_function_stands_in_and_nothing_is_pre_created() {
    let (links, ports) = (links(), ports());
    let cx = Context::new(&links, &ports, &Devices::default());
    let mut p = Pending::default();
    p.add(Raw::of(&Alert {
        origin: Origin::Software,
        ifindex: Some(7),
        device: None,
        cause: Cause::Function("tun_net_xmit".into()),
        orig_len: None,
        dst: Some(VM_MAC),
    }));
    let mut t = Totals::default();
    t.credit(p, &cx, 64, false);
    assert_eq!(
        series(&t, 0),
        vec![(
            r#"packetpath_kernel_drop_packets_total{device="tap0",role="vm",reason="function:tun_net_xmit"}"#
                .to_owned(),
            1.0
        )]
    );
}

#[test]
fn hardware_drops_are_said_apart() {
    let (links, ports) = (links(), ports());
    let cx = Context::new(&links, &ports, &Devices::default());
    let mut p = Pending::default();
    p.add(Raw::of(&Alert {
        origin: Origin::Hardware,
        ifindex: Some(2),
        device: Some("eth0".into()),
        cause: Cause::Trap("ingress_vlan_filter".into()),
        orig_len: None,
        dst: None,
    }));
    let mut t = Totals::default();
    t.credit(p, &cx, 64, false);
    assert!(series(&t, 0).is_empty());
    assert_eq!(
        series(&t, 1),
        vec![(
            r#"packetpath_kernel_hardware_drop_packets_total{device="eth0",role="other",trap="ingress_vlan_filter"}"#
                .to_owned(),
            1.0
        )]
    );
}

#[test]
fn devices_and_causes_are_capped_and_counts_kept() {
    let mut links = links();
    for i in 100..110 {
        links.push(link(i, &format!("eth{i}"), None));
    }
    let ports = ports();
    let cx = Context::new(&links, &ports, &Devices::default());
    let mut p = Pending::default();
    for i in 100..110 {
        p.add(raw(i, None, "NO_SOCKET"));
    }
    p.add(raw(8, None, "FULL_RING"));
    let mut t = Totals::default();
    t.credit(p, &cx, 3, true);
    // The first three devices (by index) have series of their own, seven count as
    // "other"; tap0 (a VM port) is never capped.
    assert_eq!(
        value(&t, r#"device="other",role="other",reason="NO_SOCKET""#),
        7.0
    );
    assert_eq!(
        value(&t, r#"device="tap0",role="vm",reason="FULL_RING""#),
        1.0
    );
    // A device with a series keeps it on later scrapes.
    let mut p = Pending::default();
    p.add(raw(100, None, "NO_SOCKET"));
    t.credit(p, &cx, 3, true);
    assert_eq!(
        value(&t, r#"device="eth100",role="other",reason="NO_SOCKET""#),
        2.0
    );
    // Causes past the cap count as "other".
    let mut p = Pending::default();
    for i in 0..MAX_CAUSES + 5 {
        p.add(raw(100, None, &format!("R{i}")));
    }
    t.credit(p, &cx, 3, true);
    let total: f64 = series(&t, 0)
        .iter()
        .filter(|(k, _)| k.contains(r#"device="eth100""#) && !k.contains("NO_SOCKET"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, (MAX_CAUSES + 5) as f64);
    // NO_SOCKET and FULL_RING came first: MAX_CAUSES - 2 of the new ones fit.
    assert_eq!(
        value(&t, r#"device="eth100",role="other",reason="other""#),
        7.0
    );
}

#[test]
fn the_pending_map_is_bounded_and_loses_no_count() {
    let mut p = Pending::default();
    let n = 3 * PENDING_KEYS as u32;
    for i in 0..n {
        let mac = [2, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8, 1];
        p.add(raw(i + 1, Some(mac), "NO_SOCKET"));
    }
    assert!(p.counts.len() <= 2 * PENDING_KEYS + 1, "{}", p.counts.len());
    assert_eq!(p.counts.values().sum::<u64>(), u64::from(n));
}

#[test]
fn multicast_destinations_name_no_port() {
    let r = raw(7, Some([0x01, 0, 0x5e, 0, 0, 1]), "NO_SOCKET");
    assert_eq!(r.dst, None);
    assert_eq!(parse_mac("fa:16:3e:00:00:01"), Some(VM_MAC));
    assert_eq!(parse_mac("fa:16:3e:00:00"), None);
    assert_eq!(parse_mac("fa:16:3e:00:00:01:02"), None);
    assert_eq!(parse_mac("zz:16:3e:00:00:01"), None);
}

#[test]
fn a_session_is_orphaned_only_when_its_writer_is_gone_in_this_boot() {
    let config = Config {
        mode: NET_DM_ALERT_MODE_PACKET,
        trunc_len: 6,
        queue_len: 1000,
    };
    let s = State {
        pid: 4242,
        start_time: 99,
        boot_id: "b1".into(),
        config,
    };
    assert_eq!(State::from_text(&s.to_text()), Some(s.clone()));
    assert!(s.orphaned("b1", &config, false));
    // Its writer still runs: another exporter's session.
    assert!(!s.orphaned("b1", &config, true));
    // A file from an earlier boot says nothing about this one's monitor.
    assert!(!s.orphaned("b2", &config, false));
    // Running with another configuration: somebody else started it since.
    let theirs = Config {
        trunc_len: 0,
        ..config
    };
    assert!(!s.orphaned("b1", &theirs, false));
    assert_eq!(State::from_text("pid x\n"), None);
}

#[test]
fn a_pid_is_alive_only_with_its_start_time() {
    let procfs = std::path::Path::new("/proc");
    let me = super::session::me(procfs, Config::default());
    assert!(me.start_time > 0);
    // This very process is never "another exporter".
    assert!(!super::session::alive(&me));
    let parent = std::os::unix::process::parent_id();
    let start = super::session::start_time(procfs, parent).unwrap();
    let other = State {
        pid: parent,
        start_time: start,
        ..me.clone()
    };
    assert!(super::session::alive(&other));
    let reused = State {
        start_time: start + 1,
        ..other
    };
    assert!(!super::session::alive(&reused));
}
