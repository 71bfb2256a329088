use super::test_support::{flow_msg, key};
use super::*;

fn action(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    wire::push_attr(&mut a, ty, payload);
    a
}

fn userspace(cookie: u16) -> Vec<u8> {
    let mut u = Vec::new();
    wire::push_attr(&mut u, 1, &7u32.to_ne_bytes());
    let mut c = cookie.to_ne_bytes().to_vec();
    c.extend([0u8; 22]);
    wire::push_attr(&mut u, OVS_USERSPACE_ATTR_USERDATA, &c);
    action(OVS_ACTION_ATTR_USERSPACE, &u)
}

fn class(actions: Vec<u8>, ct_state: Option<u32>) -> Actions {
    parse_flow(&flow_msg(
        OVS_FLOW_CMD_GET,
        &[
            (OVS_FLOW_ATTR_KEY, key(2, ct_state)),
            (OVS_FLOW_ATTR_ACTIONS, actions),
        ],
    ))
    .unwrap()
    .actions
    .unwrap()
}

fn dropped(reason: DropReason) -> Actions {
    Actions {
        class: ActionClass::Drop,
        drop: Some(reason),
    }
}

fn kept(class: ActionClass) -> Actions {
    Actions { class, drop: None }
}

#[test]
fn drops_are_flows_that_hand_nothing_on() {
    let out = action(OVS_ACTION_ATTR_OUTPUT, &3u32.to_ne_bytes());
    assert_eq!(class(vec![], Some(0x30)), dropped(DropReason::CtInvalid));
    assert_eq!(class(vec![], Some(0x21)), dropped(DropReason::NoAction));
    assert_eq!(class(out.clone(), Some(0x21)), kept(ActionClass::Output));
    assert_eq!(
        class(action(OVS_ACTION_ATTR_DROP, &0u32.to_ne_bytes()), None),
        dropped(DropReason::Explicit)
    );
    // ct() alone commits and goes nowhere; with recirc it goes on.
    let ct = action(OVS_ACTION_ATTR_CT, &[]);
    assert_eq!(class(ct.clone(), None), dropped(DropReason::NoAction));
    let recirc = [ct, action(OVS_ACTION_ATTR_RECIRC, &1u32.to_ne_bytes())].concat();
    assert_eq!(class(recirc, None), kept(ActionClass::Recirculate));
    // A clone that outputs hands a copy on.
    assert_eq!(
        class(action(OVS_ACTION_ATTR_CLONE, &out), None),
        kept(ActionClass::Output)
    );
    // check_pkt_len: either branch may output.
    let mut cpl = Vec::new();
    wire::push_attr(&mut cpl, 1, &1500u16.to_ne_bytes());
    wire::push_attr(&mut cpl, OVS_CHECK_PKT_LEN_ATTR_ACTIONS_IF_LESS_EQUAL, &out);
    assert_eq!(
        class(action(OVS_ACTION_ATTR_CHECK_PKT_LEN, &cpl), None),
        kept(ActionClass::Output)
    );
}

#[test]
fn logged_and_sampled_drops_are_drops() {
    // OVN's logged drop ACL: userspace(controller(...)) and nothing else.
    assert_eq!(
        class(userspace(USER_ACTION_COOKIE_CONTROLLER), None),
        dropped(DropReason::Controller)
    );
    // ct_invalid wins over the log.
    assert_eq!(
        class(userspace(USER_ACTION_COOKIE_CONTROLLER), Some(0x30)),
        dropped(DropReason::CtInvalid)
    );
    // OVN's drop sampling: sample(actions(userspace(flow_sample))) and nothing else.
    let mut sample = Vec::new();
    wire::push_attr(&mut sample, 1, &u32::MAX.to_ne_bytes());
    wire::push_attr(
        &mut sample,
        OVS_SAMPLE_ATTR_ACTIONS,
        &userspace(USER_ACTION_COOKIE_FLOW_SAMPLE),
    );
    assert_eq!(
        class(action(OVS_ACTION_ATTR_SAMPLE, &sample), None),
        dropped(DropReason::NoAction)
    );
    // psample (Linux 6.11+) observes only.
    assert_eq!(
        class(action(25, &[0; 8]), None),
        dropped(DropReason::NoAction)
    );
    // Logged and forwarded is not a drop.
    let out = action(OVS_ACTION_ATTR_OUTPUT, &3u32.to_ne_bytes());
    assert_eq!(
        class(
            [userspace(USER_ACTION_COOKIE_CONTROLLER), out].concat(),
            None
        ),
        kept(ActionClass::Output)
    );
    // Slow path: ovs-vswitchd handles every packet and may forward it.
    assert_eq!(
        class(userspace(USER_ACTION_COOKIE_SLOW_PATH), None),
        kept(ActionClass::Userspace)
    );
    // A userspace action without an OVS cookie is not assumed to drop.
    assert_eq!(
        class(action(OVS_ACTION_ATTR_USERSPACE, &[]), None),
        kept(ActionClass::Userspace)
    );
}

#[test]
fn identity_is_the_ufid_or_a_key_hash() {
    let ufid: Vec<u8> = (1..=16).collect();
    let a = parse_flow(&flow_msg(
        OVS_FLOW_CMD_GET,
        &[
            (OVS_FLOW_ATTR_UFID, ufid.clone()),
            (OVS_FLOW_ATTR_KEY, key(1, None)),
        ],
    ))
    .unwrap();
    let b = parse_flow(&flow_msg(OVS_FLOW_CMD_DEL, &[(OVS_FLOW_ATTR_UFID, ufid)])).unwrap();
    assert_eq!(a.id, b.id);
    assert_eq!(a.id >> 127, 0);
    // A terse delete: no key, no actions.
    assert_eq!(
        (b.cmd, b.actions, b.in_port),
        (OVS_FLOW_CMD_DEL, None, None)
    );
    let c = parse_flow(&flow_msg(
        OVS_FLOW_CMD_GET,
        &[(OVS_FLOW_ATTR_KEY, key(1, None))],
    ))
    .unwrap();
    let d = parse_flow(&flow_msg(
        OVS_FLOW_CMD_GET,
        &[(OVS_FLOW_ATTR_KEY, key(2, None))],
    ))
    .unwrap();
    assert_ne!(c.id, d.id);
    assert_eq!(c.id >> 127, 1);
}

#[test]
fn short_garbled_or_too_deep_messages_are_errors() {
    assert!(parse_flow(&[1, 1]).is_err());
    assert!(parse_flow(&[1, 1, 0, 0, 7, 0, 0, 0, 200, 0, 1, 0]).is_err());
    let mut deep = action(OVS_ACTION_ATTR_OUTPUT, &1u32.to_ne_bytes());
    for _ in 0..20 {
        deep = action(OVS_ACTION_ATTR_CLONE, &deep);
    }
    let e = parse_flow(&flow_msg(
        OVS_FLOW_CMD_GET,
        &[(OVS_FLOW_ATTR_ACTIONS, deep)],
    ))
    .unwrap_err();
    assert!(e.to_string().contains("OVS_FLOW_ATTR_ACTIONS"), "{e}");
}
