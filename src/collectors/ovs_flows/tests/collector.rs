use super::*;
use parse::test_support::{flow_msg, key};
use parse::{OVS_FLOW_ATTR_ACTIONS, OVS_FLOW_ATTR_KEY, OVS_FLOW_ATTR_STATS, OVS_FLOW_ATTR_UFID};

fn stats(p: u64, b: u64) -> Vec<u8> {
    [p.to_ne_bytes(), b.to_ne_bytes()].concat()
}

/// A kernel stand-in: one datapath "ovs-system" (ifindex 7) with ports 1 (br-int,
/// internal) and 2 (genev_sys_6081, netdev), and a flow table the test rewrites.
struct FakeKernel {
    flows: Mutex<Vec<Vec<u8>>>,
    /// A directory holding `ovs_flow_notifications.stream`: the multicast group is
    /// then offered (as group 5) and those notifications replayed.
    notifications: Option<std::path::PathBuf>,
}

impl FakeKernel {
    fn new(flows: Vec<Vec<u8>>) -> Arc<FakeKernel> {
        Arc::new(FakeKernel {
            flows: Mutex::new(flows),
            notifications: None,
        })
    }
}

fn nlmsg(ty: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = wire::request(ty, flags, 0, payload);
    m[..4].copy_from_slice(&((wire::NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
    m
}

fn done() -> Vec<u8> {
    nlmsg(wire::NLMSG_DONE, wire::NLM_F_MULTI, &0i32.to_ne_bytes())
}

fn family_reply(id: u16, name: &[u8], group: Option<(&[u8], u32)>) -> Vec<u8> {
    let mut p = vec![1, 2, 0, 0];
    wire::push_attr(&mut p, 1, &id.to_ne_bytes());
    wire::push_attr(&mut p, 2, name);
    if let Some((gname, gid)) = group {
        // CTRL_ATTR_MCAST_GROUPS { 1: { NAME, ID } }
        let mut g = Vec::new();
        wire::push_attr(&mut g, 1, gname);
        wire::push_attr(&mut g, 2, &gid.to_ne_bytes());
        let mut groups = Vec::new();
        wire::push_attr(&mut groups, 1, &g);
        wire::push_attr(&mut p, 7, &groups);
    }
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
                family_reply(30, b"ovs_datapath\0", None),
                family_reply(31, b"ovs_vport\0", None),
                family_reply(32, b"ovs_flow\0", Some((b"ovs_flow\0", 5))),
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

    fn subscribe(
        &self,
        spec: crate::netlink::subscribe::Spec,
    ) -> Result<crate::netlink::subscribe::Subscription, TransportError> {
        assert_eq!(spec.groups, [5], "joins the ovs_flow group");
        match &self.notifications {
            Some(dir) => crate::netlink::subscribe::Subscription::replay(spec, dir),
            None => Err(TransportError::NoSubscriptions { name: spec.name }),
        }
    }
}

fn inv_drop(ufid: u8, packets: u64) -> Vec<u8> {
    flow_msg(
        parse::OVS_FLOW_CMD_NEW,
        &[
            (OVS_FLOW_ATTR_UFID, vec![ufid; 16]),
            (OVS_FLOW_ATTR_KEY, key(2, Some(0x30))),
            (OVS_FLOW_ATTR_ACTIONS, vec![]),
            (OVS_FLOW_ATTR_STATS, stats(packets, packets * 54)),
        ],
    )
}

fn scrape(c: &OvsFlows) -> String {
    let mut out = Vec::new();
    let s = Scrape::new(1, c.shared.resources.clone());
    crate::render::encode_text(c.collect(&s).unwrap(), &mut out);
    String::from_utf8(out).unwrap()
}

fn collector(kernel: Arc<FakeKernel>, max_flows: usize) -> OvsFlows {
    filtered(kernel, max_flows, Devices::default())
}

fn filtered(kernel: Arc<FakeKernel>, max_flows: usize, devices: Devices) -> OvsFlows {
    let mut r = Resources::for_tests(kernel);
    Arc::get_mut(&mut r).unwrap().devices = devices;
    let max = max_flows.to_string();
    let opts = crate::collectors::options_from(&["--collector.ovs_flows.max-flows", &max]);
    OvsFlows::new(&r, opts.unwrap())
}

const SERIES: &str = "packetpath_ovs_drop_flow_packets_total{datapath=\"ovs-system\",in_port=\"genev_sys_6081\",in_port_role=\"tunnel\",reason=\"ct_invalid\"}";

#[test]
fn drop_counts_stay_monotonic_across_flow_eviction() {
    let kernel = FakeKernel::new(vec![inv_drop(1, 10)]);
    let c = collector(kernel.clone(), 1000);
    // The first look sets the baseline: a restart counts nothing old again.
    let text = scrape(&c);
    assert!(text.contains(&format!("{SERIES} 0\n")), "{text}");
    *kernel.flows.lock().unwrap() = vec![inv_drop(1, 15)];
    assert!(scrape(&c).contains(&format!("{SERIES} 5\n")));
    // Flow 1 evicted, flow 2 created: the live sum fell to 3, the counter goes on.
    *kernel.flows.lock().unwrap() = vec![inv_drop(2, 3)];
    assert!(scrape(&c).contains(&format!("{SERIES} 8\n")));
    // The same identity with a lower count is a new flow: all its packets count.
    *kernel.flows.lock().unwrap() = vec![inv_drop(2, 1)];
    let text = scrape(&c);
    assert!(text.contains(&format!("{SERIES} 9\n")), "{text}");
    assert!(text.contains("packetpath_ovs_drop_flow_bytes_total{datapath=\"ovs-system\",in_port=\"genev_sys_6081\",in_port_role=\"tunnel\",reason=\"ct_invalid\"} 486\n"));
    assert!(text.contains("packetpath_ovs_datapath_flows_by_action{datapath=\"ovs-system\",in_port_role=\"tunnel\",action=\"drop\"} 1\n"));
    assert!(text.contains("packetpath_ovs_flows_dump_truncated{datapath=\"ovs-system\"} 0\n"));
    // Every reason of the tunnel port exists from the first scrape, at 0 until it drops.
    assert!(text.contains("packetpath_ovs_drop_flow_packets_total{datapath=\"ovs-system\",in_port=\"genev_sys_6081\",in_port_role=\"tunnel\",reason=\"controller\"} 0\n"), "{text}");
    assert!(
        text.contains("packetpath_ovs_flow_monitor_active 0\n"),
        "{text}"
    );
    // Flow 1 is kept for the grace period, flow 2 is live.
    assert_eq!(c.shared.lock().acct.tracked(), 2);
    for _ in 0..=accounting::GRACE {
        scrape(&c);
    }
    assert_eq!(c.shared.lock().acct.tracked(), 1);
}

#[test]
fn the_flow_cap_stops_the_dump_and_says_so() {
    let kernel = FakeKernel::new(vec![]);
    let c = collector(kernel.clone(), 2);
    scrape(&c);
    *kernel.flows.lock().unwrap() = vec![inv_drop(1, 4), inv_drop(2, 5), inv_drop(3, 6)];
    let text = scrape(&c);
    assert!(text.contains(&format!("{SERIES} 9\n")), "{text}");
    assert!(text.contains("packetpath_ovs_flows_dump_truncated{datapath=\"ovs-system\"} 1\n"));
    // Exactly at the cap is a complete dump.
    let kernel = FakeKernel::new(vec![inv_drop(1, 4), inv_drop(2, 5)]);
    let text = scrape(&collector(kernel, 2));
    assert!(
        text.contains("packetpath_ovs_flows_dump_truncated{datapath=\"ovs-system\"} 0\n"),
        "{text}"
    );
}

#[test]
fn ports_the_device_filter_leaves_out_count_as_other() {
    let kernel = FakeKernel::new(vec![]);
    let devices = Devices {
        exclude: Some(regex::Regex::new("^genev").unwrap()),
        ..Devices::default()
    };
    let c = filtered(kernel.clone(), 1000, devices);
    scrape(&c);
    *kernel.flows.lock().unwrap() = vec![inv_drop(1, 4), inv_drop(2, 5)];
    let text = scrape(&c);
    assert!(!text.contains("genev_sys_6081"), "{text}");
    assert!(
        text.contains("packetpath_ovs_drop_flow_packets_total{datapath=\"ovs-system\",in_port=\"other\",in_port_role=\"tunnel\",reason=\"ct_invalid\"} 9\n"),
        "{text}"
    );
}

#[test]
fn a_flow_that_lived_and_died_between_scrapes_counts_from_its_notifications() {
    // The kernel announced a ct_state(+inv) drop flow from the tunnel port, then its
    // deletion with its final 7 packets: no dump ever saw it.
    let dir = std::env::temp_dir().join(format!("pp-ovs-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let notify = |cmd: u8, packets: u64| {
        let mut m = flow_msg(
            cmd,
            &[
                (OVS_FLOW_ATTR_UFID, vec![9; 16]),
                (OVS_FLOW_ATTR_KEY, key(2, Some(0x30))),
                (OVS_FLOW_ATTR_ACTIONS, vec![]),
                (OVS_FLOW_ATTR_STATS, stats(packets, packets * 54)),
            ],
        );
        m = nlmsg(32, 0, &m);
        let mut rec = (m.len() as u32).to_le_bytes().to_vec();
        rec.extend(m);
        rec
    };
    let stream = [
        notify(parse::OVS_FLOW_CMD_NEW, 0),
        notify(parse::OVS_FLOW_CMD_DEL, 7),
    ]
    .concat();
    std::fs::write(dir.join("ovs_flow_notifications.stream"), stream).unwrap();
    let kernel = Arc::new(FakeKernel {
        flows: Mutex::new(vec![]),
        notifications: Some(dir.clone()),
    });
    let c = collector(kernel, 1000);
    let mut text = scrape(&c);
    // The listener thread may take the replay before or during the first scrape.
    for _ in 0..100 {
        if text.contains("packetpath_ovs_flow_notifications_total{command=\"del\"} 1\n") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        text = scrape(&c);
    }
    assert!(
        text.contains("packetpath_ovs_flow_monitor_active 1\n"),
        "{text}"
    );
    assert!(
        text.contains("packetpath_ovs_flow_notifications_total{command=\"new\"} 1\n"),
        "{text}"
    );
    assert!(text.contains(&format!("{SERIES} 7\n")), "{text}");
    assert!(
        text.contains("packetpath_ovs_flow_notification_errors_total 0\n"),
        "{text}"
    );
    c.shutdown();
    std::fs::remove_dir_all(dir).unwrap();
}
