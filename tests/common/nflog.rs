//! What the running kernel's nfnetlink_log can do.

use std::time::{Duration, Instant};

use neli::consts::socket::{Msg, NlFamily};
use neli::socket::NlSocket;
use neli::utils::Groups;
use packetpath_exporter::collectors::conntrack_invalid::nflog::{
    NFNL_SUBSYS_ULOG, NFULA_CFG_CMD, NFULA_CFG_FLAGS, NFULNL_CFG_CMD_BIND, NFULNL_CFG_F_CONNTRACK,
    NFULNL_MSG_CONFIG,
};
use packetpath_exporter::netlink::wire;

use super::Netns;

/// Whether this kernel accepts NFULNL_CFG_F_CONNTRACK on an NFLOG group (it attaches each
/// packet's conntrack entry, so the zone, to the messages: nf_conntrack_netlink built
/// with CONFIG_NETFILTER_NETLINK_GLUE_CT), asked in `ns` on group 0, which must be free.
pub fn kernel_attaches_conntrack(ns: &Netns) -> bool {
    let sock = ns.enter(|| {
        NlSocket::connect(NlFamily::Netfilter, None, Groups::empty()).expect("nfnetlink socket")
    });
    packetpath_exporter::netlink::set_recv_timeout(&sock, Duration::from_millis(200))
        .expect("SO_RCVTIMEO");
    let config = |seq: u32, attr: u16, data: &[u8]| -> i32 {
        // nfgenmsg: AF_UNSPEC, version 0, group 0 (big endian).
        let mut p = vec![0u8, 0, 0, 0];
        wire::push_attr(&mut p, attr, data);
        let ty = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
        let msg = wire::request(ty, wire::NLM_F_REQUEST | wire::NLM_F_ACK, seq, &p);
        sock.send(&msg, Msg::empty()).expect("send");
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = vec![0u8; 8192];
        while Instant::now() < deadline {
            let Ok((n, _)) = sock.recv(&mut buf[..], Msg::empty()) else {
                continue;
            };
            for m in wire::messages("nfnetlink_log", &buf[..n]).flatten() {
                if m.seq == seq && m.ty == wire::NLMSG_ERROR {
                    return i32::from_ne_bytes(m.payload[..4].try_into().unwrap());
                }
            }
        }
        panic!("no answer to NFLOG config {seq}");
    };
    assert_eq!(
        config(1, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]),
        0,
        "binding NFLOG group 0"
    );
    let rc = config(2, NFULA_CFG_FLAGS, &NFULNL_CFG_F_CONNTRACK.to_be_bytes());
    assert!(rc == 0 || rc == -libc::EOPNOTSUPP, "flags: {rc}");
    rc == 0
}
