//! Entry points for the fuzz targets in `fuzz/`: one function per family of decoders of
//! kernel or network bytes. Each hands arbitrary bytes to the real decoders and drops what
//! they return; a decoder may refuse any input, but must never panic, overflow or hang.
//!
//! The targets name only these functions, so a decoder that moves is fixed here and
//! nowhere else. Not part of the exporter's interface.

use serde_json::Value;

use crate::collectors::common::link_cache;
use crate::collectors::common::links as interfaces;
use crate::collectors::common::ovs;
use crate::collectors::common::ovsdb::client::{monitor_request, split_messages};
use crate::collectors::common::ovsdb::table::Table;
use crate::collectors::{conntrack, conntrack_invalid, drops, offload, ovs_flows};
use crate::diagnose::exposition;
use crate::netlink::{genl, wire};
use crate::roles::Role;

const FAMILY: &str = "fuzz";

/// Attributes nest at most this deep in what [`netlink_wire`] walks.
const MAX_NEST: usize = 4;

/// The generic netlink layer: message framing (`messages`, `control`, `data_messages`),
/// the attribute walk (`attrs`, nested) and the attribute accessors.
pub fn netlink_wire(data: &[u8]) {
    let _ = wire::data_messages(FAMILY, data, true);
    let _ = wire::data_messages(FAMILY, data, false);
    for m in wire::messages(FAMILY, data) {
        let Ok(m) = m else { break };
        let _ = wire::control(FAMILY, m);
        // The attributes start after the family header: none, genlmsghdr or nfgenmsg,
        // genlmsghdr + ovs_header, ifinfomsg.
        for header in [0, 4, 8, 16] {
            if let Some(rest) = m.payload.get(header..) {
                walk_attrs(rest, 0);
            }
        }
    }
    // Reads near the end of the buffer and of the address space.
    let at = data.first().map_or(0, |&b| usize::from(b));
    for at in [at, data.len().saturating_sub(at), usize::MAX - at] {
        let _ = wire::read_u16_ne(data, at);
        let _ = wire::read_u32_ne(data, at);
        let _ = wire::read_u64_ne(data, at);
    }
}

fn walk_attrs(buf: &[u8], depth: usize) {
    for a in wire::attrs(FAMILY, "fuzz", buf) {
        let Ok(a) = a else { return };
        let _ = a.u8(FAMILY, "u8");
        let _ = a.u32_ne(FAMILY, "u32_ne");
        let _ = a.u32_be(FAMILY, "u32_be");
        let _ = a.string(FAMILY, "string");
        let _ = a.name();
        if depth < MAX_NEST {
            walk_attrs(a.payload, depth + 1);
        }
    }
}

/// rtnetlink: the link dump and the single-link reply (interfaces), the statistics dump
/// (the link cache's counters), the route dump (offload's uplinks).
pub fn rtnetlink(data: &[u8]) {
    let _ = interfaces::parse(data);
    let _ = interfaces::parse_one(data);
    let _ = offload::parse_default_devices(data);
    // RTM_NEWSTATS messages of the counters-only read.
    for m in wire::messages(FAMILY, data).flatten() {
        let _ = link_cache::parse_stats(m.payload);
    }
}

/// Conntrack statistics: the ctnetlink per-CPU dump and global reply, and the text of
/// /proc/net/stat/nf_conntrack.
pub fn conntrack(data: &[u8]) {
    let _ = conntrack::parse_stats_cpu(data);
    let _ = conntrack::parse_stats(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = conntrack::parse_proc_stat("nf_conntrack", text);
        // The conntrack_invalid governor's read of the same file.
        let _ = conntrack_invalid::governor::parse_invalid(text);
    }
}

/// The generic netlink controller's family dump: every family, and multicast groups
/// looked up by name (OVS's flow notifications, and nlctrl's own group, which every
/// kernel has).
pub fn genl_ctrl(data: &[u8]) {
    let _ = genl::parse_families(data);
    let _ = genl::parse_mcast_group(data, ovs_flows::parse::FAMILY, ovs_flows::monitor::GROUP);
    let _ = genl::parse_mcast_group(data, "nlctrl", "notify");
}

/// The OVS datapath and vport dumps.
pub fn ovs_dp(data: &[u8]) {
    let _ = ovs::parse_datapaths(data);
    let _ = ovs::parse_vports(data);
}

/// OVS datapath flows, a dump chunk or a notification datagram, decoded message by
/// message as the flow monitor and the dump reader do, and each flow accounted and
/// attributed (as a notification, then as an entry of a dump) to two VM ports.
pub fn ovs_flow(data: &[u8]) {
    use crate::collectors::common::Devices;
    use crate::collectors::common::ovsdb::VmPort;
    use crate::collectors::ovs_flows::accounting::{Accounting, Names};
    let port = |device: &str, mac: &str, zone: u16| VmPort {
        device: device.into(),
        port_id: device.into(),
        instance_id: String::new(),
        mac: mac.into(),
        status: String::new(),
        ovn_installed: true,
        error: None,
        ct_zone: Some(zone),
    };
    let ports = [
        port("tapA", "fa:16:3e:00:00:0a", 1),
        port("tapB", "fa:16:3e:00:00:0b", 1),
    ];
    let mut acct = Accounting::new(64);
    acct.attribution
        .set_ports(Some(&ports), &Devices::default());
    let mut flows = Vec::new();
    for m in wire::messages(ovs_flows::parse::FAMILY, data) {
        let Ok(m) = m else { break };
        if let Ok(wire::Control::Data(m)) = wire::control(ovs_flows::parse::FAMILY, m) {
            if let Ok(f) = ovs_flows::parse::parse_flow(m.payload) {
                flows.push(f);
            }
        }
    }
    for f in &flows {
        let names = Names {
            datapath: "ovs-system".into(),
            ports: [(f.in_port.unwrap_or(0), ("tapA".into(), Role::Vm))].into(),
        };
        acct.set_names(f.dp_ifindex, names);
    }
    for round in 0..2 {
        acct.begin_collect();
        for f in &flows {
            acct.begin_dump(f.dp_ifindex);
            match round {
                0 => acct.notify(f),
                _ => acct.dumped(f),
            }
            acct.end_dump(f.dp_ifindex, true);
        }
        acct.end_collect();
    }
}

/// The drop monitor's messages, one datagram as the listener receives it, counted as the
/// listener counts them.
pub fn net_dm(data: &[u8]) {
    let mut pending = drops::counts::Pending::default();
    for m in wire::messages(drops::alert::FAMILY, data) {
        let Ok(m) = m else { break };
        if let Ok(wire::Control::Data(m)) = wire::control(drops::alert::FAMILY, m) {
            if let Ok(drops::alert::Message::Alert(a)) = drops::alert::parse(m.payload) {
                pending.add(drops::counts::Raw::of(&a));
            }
        }
    }
}

/// ethtool netlink: the feature-name string set and the features dump.
pub fn ethtool(data: &[u8]) {
    let _ = offload::parse_names(data);
    let _ = offload::parse_features(data);
}

/// One NFLOG datagram as the conntrack_invalid listener receives it: every message
/// decoded (its conntrack zone from NFULA_CT too), classified and counted.
pub fn nflog(data: &[u8]) {
    // A small device cap, so the "other device" slot is reached too.
    conntrack_invalid::counts::Counts::new(2).ingest(data);
    let _ = conntrack_invalid::zone_of(data);
}

/// What ovsdb-server writes on the socket: back-to-back JSON-RPC messages, split as the
/// client splits them, each applied to the cached tables the way the client applies a
/// monitor reply (`result`) or an `update` notification (`params[1]`), and read as a
/// get_schema answer; and what a daemon answers on its unixctl socket.
pub fn ovsdb(data: &[u8]) {
    let mut table = Table::default();
    let values = match split_messages(data) {
        Ok((values, _)) => values,
        Err(_) => return,
    };
    for v in &values {
        let updates = [
            Some(v),
            v.get("result"),
            v.get("params").and_then(|p| p.get(1)),
        ];
        for u in updates.into_iter().flatten() {
            let _ = table.apply(u);
        }
    }
    // A table-updates value on its own, as one JSON document.
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        let _ = table.apply(&v);
    }
    for i in table.rows.values() {
        let _ = crate::collectors::common::ovsdb::vm_port(i, &table);
    }
    let _ = crate::collectors::common::ovsdb::node(&table);
    // A get_schema answer, turned into the monitor request.
    for v in &values {
        if let Some(schema) = v.get("result") {
            let _ = monitor_request(schema);
        }
    }
    // What a daemon answers on its control socket (`ovn-controller`'s `version`).
    if let Ok(Some(Ok(text))) = crate::collectors::node::unixctl::reply(data) {
        let _ = crate::collectors::node::unixctl::parse_version(&text);
    }
}

/// The Prometheus text exposition that `diagnose` reads from a running exporter (the body
/// must be UTF-8 there too).
pub fn exposition(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = exposition::parse(text);
    }
}
