use super::test_support::{flow_msg, key};
use super::*;

fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    wire::push_attr(&mut a, ty, payload);
    a
}

fn ethernet(dst: [u8; 6]) -> Vec<u8> {
    attr(
        OVS_KEY_ATTR_ETHERNET,
        &[[0x52, 0x54, 0, 0, 0, 1], dst].concat(),
    )
}

#[test]
fn ct_zones_recirculations_and_full_matches_are_read() {
    // recirc_id(0),eth(dst=fa:16:3e:00:00:0a) actions:ct(zone=3),recirc(0x10),
    // clone(ct,recirc(0x11)); the mask matches the MAC in full, not the zone.
    let mac = [0xfa, 0x16, 0x3e, 0, 0, 0xa];
    let k = [
        key(2, None),
        attr(OVS_KEY_ATTR_RECIRC_ID, &0u32.to_ne_bytes()),
        ethernet(mac),
        attr(OVS_KEY_ATTR_CT_ZONE, &3u16.to_ne_bytes()),
    ]
    .concat();
    let m = [
        ethernet([0xff; 6]),
        attr(OVS_KEY_ATTR_CT_ZONE, &0x00ffu16.to_ne_bytes()),
    ]
    .concat();
    let ct3 = attr(
        OVS_ACTION_ATTR_CT,
        &attr(OVS_CT_ATTR_ZONE, &3u16.to_ne_bytes()),
    );
    let inner = [
        attr(OVS_ACTION_ATTR_CT, &[]),
        attr(OVS_ACTION_ATTR_RECIRC, &0x11u32.to_ne_bytes()),
    ]
    .concat();
    let actions = [
        ct3,
        attr(OVS_ACTION_ATTR_RECIRC, &0x10u32.to_ne_bytes()),
        attr(OVS_ACTION_ATTR_CLONE, &inner),
    ]
    .concat();
    let msg = |mask: Option<&Vec<u8>>| {
        let mut attrs = vec![
            (OVS_FLOW_ATTR_KEY, k.clone()),
            (OVS_FLOW_ATTR_ACTIONS, actions.clone()),
        ];
        if let Some(m) = mask {
            attrs.push((OVS_FLOW_ATTR_MASK, m.clone()));
        }
        parse_flow(&flow_msg(OVS_FLOW_CMD_GET, &attrs)).unwrap()
    };
    let l = msg(Some(&m)).lineage.unwrap();
    assert_eq!(l.recirc_id, 0);
    assert_eq!(l.eth_dst, Some(mac));
    assert_eq!(l.ct_zone, None, "the zone is matched in part only");
    assert_eq!(
        l.recircs().collect::<Vec<_>>(),
        [
            Recirc {
                id: 0x10,
                zone: Some(3)
            },
            Recirc {
                id: 0x11,
                zone: Some(0)
            }
        ]
    );
    assert!(!l.more);
    // Without the mask nothing is known to be matched in full.
    let l = msg(None).lineage.unwrap();
    assert_eq!((l.eth_dst, l.ct_zone), (None, None));
    // A zone of the wrong size fails the flow, naming the attribute.
    let bad = [
        attr(OVS_ACTION_ATTR_CT, &attr(OVS_CT_ATTR_ZONE, &[3])),
        attr(OVS_ACTION_ATTR_RECIRC, &1u32.to_ne_bytes()),
    ]
    .concat();
    let e = parse_flow(&flow_msg(
        OVS_FLOW_CMD_GET,
        &[
            (OVS_FLOW_ATTR_KEY, key(2, None)),
            (OVS_FLOW_ATTR_ACTIONS, bad),
        ],
    ))
    .unwrap_err();
    assert!(e.to_string().contains("OVS_CT_ATTR_ZONE"), "{e}");
    // A message without a key has no lineage.
    let f = parse_flow(&flow_msg(OVS_FLOW_CMD_DEL, &[])).unwrap();
    assert_eq!(f.lineage, None);
}
