//! Decoders on bytes captured from a real kernel (6.18; see tests/capture_fixtures.rs for
//! the exact scenario and command), plus truncated and corrupted variants of them.

use std::path::Path;

use packetpath_exporter::collectors::common::links as interfaces;
use packetpath_exporter::collectors::conntrack::{self, STATS};
use packetpath_exporter::netlink::wire::DecodeError;

fn fixture(path: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A statistic's name as `conntrack -S` prints it: its series' name without the frame.
fn short(s: &conntrack::Stat) -> &'static str {
    s.metric
        .trim_start_matches("packetpath_conntrack_")
        .trim_end_matches("_total")
}

fn stat_index(name: &str) -> usize {
    STATS.iter().position(|s| short(s) == name).unwrap()
}

#[test]
fn link_dump_decodes_devices_kinds_masters_and_traffic() {
    let links = interfaces::parse(&fixture("netlink/rtnl_getlink.bin")).unwrap();
    let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "lo",
            "s0",
            "veth-b",
            "veth-a",
            "br0",
            "gs-peer",
            "genev_sys_6081",
            "vx0",
            "tap0"
        ]
    );
    let by = |n: &str| links.iter().find(|l| l.name == n).unwrap();
    let kind = |n: &str| by(n).kind.clone();
    assert_eq!(kind("lo"), None);
    assert_eq!(kind("veth-a").as_deref(), Some("veth"));
    assert_eq!(kind("br0").as_deref(), Some("bridge"));
    assert_eq!(kind("vx0").as_deref(), Some("vxlan"));
    assert_eq!(kind("tap0").as_deref(), Some("tun"));
    assert_eq!(by("veth-b").master, Some(by("br0").index as u32));
    assert_eq!(by("veth-a").master, None);
    assert_eq!(by("lo").mtu, Some(65536));
    assert_eq!(by("vx0").mtu, Some(1450));
    assert_eq!(interfaces::operstate_name(by("veth-a").operstate), "up");
    // The capture sent 5 frames of 100 bytes out of veth-a.
    let a = by("veth-a").stats.unwrap();
    assert_eq!((a.tx_packets, a.tx_bytes), (5, 500));
    let b = by("veth-b").stats.unwrap();
    assert_eq!((b.rx_packets, b.rx_bytes), (5, 500));
    // 3 corrupt SYNs (40-byte IP packets) arrived on s0, plus the ARP exchange.
    assert!(by("s0").stats.unwrap().rx_packets >= 3);
}

#[test]
fn ctnetlink_stats_decode_per_cpu_and_global() {
    let cpus = conntrack::parse_stats_cpu(&fixture("netlink/ctnetlink_stats_cpu.bin")).unwrap();
    // Captured on a 2-CPU machine after 3 corrupt SYNs; per CPU, the decoder must agree
    // with what `conntrack -S` printed at capture time.
    assert_eq!(cpus.iter().map(|c| c.cpu).collect::<Vec<_>>(), [0, 1]);
    let inv = stat_index("invalid");
    let said = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conntrack-S.txt"),
    )
    .unwrap();
    for line in said.lines() {
        let field = |k: &str| -> u64 {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{k}=")))
                .unwrap()
                .parse()
                .unwrap()
        };
        let cpu = cpus
            .iter()
            .find(|c| u64::from(c.cpu) == field("cpu"))
            .unwrap();
        for stat in STATS {
            assert_eq!(
                cpu.values[stat_index(short(stat))],
                Some(field(short(stat))),
                "{} {line}",
                stat.metric
            );
        }
    }
    assert_eq!(cpus.iter().map(|c| c.values[inv].unwrap()).sum::<u64>(), 3);
    // Every statistic this kernel maintains was present.
    assert!(cpus.iter().all(|c| c.values.iter().all(Option::is_some)));

    let (entries, max) = conntrack::parse_stats(&fixture("netlink/ctnetlink_stats.bin")).unwrap();
    let proc_max: u64 = String::from_utf8(fixture("proc/sys/net/netfilter/nf_conntrack_max"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(max, Some(proc_max));
    assert!(entries.is_some());
}

#[test]
fn ctnetlink_without_cap_net_admin_is_a_kernel_eperm() {
    let err =
        conntrack::parse_stats_cpu(&fixture("netlink-eperm/ctnetlink_stats_cpu.bin")).unwrap_err();
    assert_eq!(
        err,
        DecodeError::Kernel {
            family: "ctnetlink",
            errno: 1
        }
    );
    assert_eq!(
        err.to_string(),
        "ctnetlink: kernel answered errno 1 (Operation not permitted (os error 1))"
    );
}

#[test]
fn procfs_stat_agrees_with_ctnetlink_from_the_same_moment() {
    let text = String::from_utf8(fixture("proc/net/stat/nf_conntrack")).unwrap();
    let from_proc = conntrack::parse_proc_stat("nf_conntrack", &text).unwrap();
    let from_nl = conntrack::parse_stats_cpu(&fixture("netlink/ctnetlink_stats_cpu.bin")).unwrap();
    assert_eq!(from_proc.len(), from_nl.len());
    for (p, n) in from_proc.iter().zip(&from_nl) {
        assert_eq!(p.values, n.values, "cpu {}", n.cpu);
    }
}

#[test]
fn procfs_stat_errors_are_typed() {
    assert_eq!(
        conntrack::parse_proc_stat("f", "").unwrap_err(),
        conntrack::ProcStatError::Empty { path: "f".into() }
    );
    let err = conntrack::parse_proc_stat("f", "entries invalid\n00000001 zz\n").unwrap_err();
    assert_eq!(err.to_string(), "f: line 2: \"zz\" is not a hex counter");
    // An older kernel without some columns: those statistics are absent, not zero.
    let old = conntrack::parse_proc_stat("f", "entries invalid drop\n1 a 2\n").unwrap();
    assert_eq!(old[0].values[stat_index("invalid")], Some(10));
    assert_eq!(old[0].values[stat_index("clash_resolve")], None);
}

/// Every strict prefix of a dump lacks its NLMSG_DONE and must be an error, never a panic
/// or a silently short result.
#[test]
fn truncated_replies_are_errors() {
    for (name, buf) in [
        ("rtnl_getlink", fixture("netlink/rtnl_getlink.bin")),
        (
            "ctnetlink_stats_cpu",
            fixture("netlink/ctnetlink_stats_cpu.bin"),
        ),
    ] {
        for end in 0..buf.len() {
            let cut = &buf[..end];
            let failed = match name {
                "rtnl_getlink" => interfaces::parse(cut).is_err(),
                _ => conntrack::parse_stats_cpu(cut).is_err(),
            };
            assert!(
                failed,
                "{name} truncated to {end} bytes decoded without error"
            );
        }
    }
}

/// Corrupting any single byte (every position, several values) never panics.
#[test]
fn corrupted_replies_never_panic() {
    for path in [
        "netlink/rtnl_getlink.bin",
        "netlink/ctnetlink_stats_cpu.bin",
        "netlink/ctnetlink_stats.bin",
        "netlink-eperm/ctnetlink_stats_cpu.bin",
    ] {
        let orig = fixture(path);
        for i in 0..orig.len() {
            for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut b = orig.clone();
                b[i] = v;
                let _ = interfaces::parse(&b);
                let _ = conntrack::parse_stats_cpu(&b);
                let _ = conntrack::parse_stats(&b);
            }
        }
    }
}

#[test]
fn short_stats64_from_older_kernels_reads_as_zero_padded() {
    // A link message whose IFLA_STATS64 carries only the first 4 counters.
    let mut attrs = Vec::new();
    let name = b"eth9\0";
    attrs.extend_from_slice(&((4 + name.len()) as u16).to_ne_bytes());
    attrs.extend_from_slice(&3u16.to_ne_bytes()); // IFLA_IFNAME
    attrs.extend_from_slice(name);
    attrs.resize(12, 0);
    attrs.extend_from_slice(&(4u16 + 32).to_ne_bytes());
    attrs.extend_from_slice(&23u16.to_ne_bytes()); // IFLA_STATS64
    for v in [11u64, 22, 33, 44] {
        attrs.extend_from_slice(&v.to_ne_bytes());
    }
    let mut payload = vec![0u8; 16]; // ifinfomsg
    payload[4..8].copy_from_slice(&9i32.to_ne_bytes());
    payload.extend_from_slice(&attrs);
    let mut msg = Vec::new();
    msg.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&16u16.to_ne_bytes()); // RTM_NEWLINK
    msg.extend_from_slice(&[0; 10]);
    msg.extend_from_slice(&payload);
    msg.extend_from_slice(&20u32.to_ne_bytes());
    msg.extend_from_slice(&3u16.to_ne_bytes()); // NLMSG_DONE
    msg.extend_from_slice(&[0; 14]);
    let links = interfaces::parse(&msg).unwrap();
    assert_eq!(links.len(), 1);
    let s = links[0].stats.unwrap();
    assert_eq!(
        (s.rx_packets, s.tx_packets, s.rx_bytes, s.tx_bytes),
        (11, 22, 33, 44)
    );
    assert_eq!((s.rx_dropped, s.rx_missed, s.rx_nohandler), (0, 0, 0));
    assert_eq!(links[0].name, "eth9");
}

#[path = "vm/results.rs"]
mod vm_results;

mod ovs_fixtures {
    //! Replies captured in the qemu test bed (OVS 3.1 on Debian's 6.1 kernel) by a second
    //! exporter with --debug.netlink-capture-dir, right after the seed scenario's checksum=1
    //! phase; the kernel tools' output of the same moment is stored beside them
    //! (regenerate with `UPDATE_FIXTURES=1 cargo test --test ovs_vm`).

    use super::fixture;
    use super::vm_results::{dp_flows, dpctl_lookups, dpctl_port_packets};
    use packetpath_exporter::collectors::common::{links as interfaces, ovs};
    use packetpath_exporter::collectors::ovs_flows::parse::{
        self as ovs_flows, ActionClass, DropReason,
    };
    use packetpath_exporter::netlink::genl;

    /// A per-datapath capture, named by the datapath's ifindex.
    fn per_dp(request: &str) -> Vec<u8> {
        let dp = &ovs::parse_datapaths(&fixture("ovs/ovs_dp_get.bin")).unwrap()[0];
        fixture(&format!("ovs/{request}@{}.bin", dp.ifindex))
    }

    fn text(name: &str) -> String {
        String::from_utf8(fixture(&format!("ovs/{name}"))).unwrap()
    }

    #[test]
    fn families_datapath_and_vports_agree_with_ovs_dpctl() {
        let fams = genl::parse_families(&fixture("ovs/genl_families.bin")).unwrap();
        for name in ["ovs_datapath", "ovs_vport", "ovs_flow"] {
            assert!(fams.iter().any(|(n, _)| n == name), "{name}");
        }
        let show = text("ovs-dpctl-show.txt");
        let dps = ovs::parse_datapaths(&fixture("ovs/ovs_dp_get.bin")).unwrap();
        assert_eq!(dps.len(), 1);
        let dp = &dps[0];
        assert_eq!(dp.name, "ovs-system");
        let s = dp.stats.unwrap();
        assert_eq!(Some((s.hit, s.missed, s.lost)), dpctl_lookups(&show));
        assert!(show.contains(&format!("flows: {}\n", s.flows)));
        let mf = dp.megaflow.unwrap();
        assert!(
            show.contains(&format!("masks: hit:{} total:{} ", mf.mask_hit, mf.masks)),
            "{show}"
        );
        // A 6.1 kernel has the mask cache, so n_cache_hit is real.
        assert!(mf.cache_hit.is_some());

        let vports = ovs::parse_vports(&per_dp("ovs_vport_get")).unwrap();
        let mut names: Vec<&str> = vports.iter().map(|v| v.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["br-int", "genev_sys_6081", "ovs-system", "tap0"]);
        let tap = vports.iter().find(|v| v.name == "tap0").unwrap();
        let st = tap.stats.unwrap();
        assert_eq!(
            dpctl_port_packets(&show, "tap0"),
            Some((st.rx_packets, st.tx_packets))
        );
        assert_eq!(
            (tap.ty, tap.upcalls),
            (1, None),
            "NETDEV; 6.1 sends no upcall stats"
        );
        let geneve = vports.iter().find(|v| v.name == "genev_sys_6081").unwrap();
        assert_eq!(geneve.ty, 1, "OVS's own geneve device is listed as NETDEV");
        // Its link kind comes from rtnetlink, asked by ifindex.
        let link = interfaces::parse_one(&fixture(&format!(
            "ovs/rtnl_getlink_index@{}.bin",
            geneve.ifindex.unwrap()
        )))
        .unwrap()
        .unwrap();
        assert_eq!(
            (link.name.as_str(), link.kind.as_deref()),
            ("genev_sys_6081", Some("geneve"))
        );
    }

    #[test]
    fn flow_dump_matches_ovs_dpctl_dump_flows() {
        let buf = per_dp("ovs_flow_get");
        let mut flows = Vec::new();
        for m in packetpath_exporter::netlink::wire::data_messages("ovs_flow", &buf, true).unwrap()
        {
            flows.push(ovs_flows::parse_flow(m.payload).unwrap());
        }
        let printed = dp_flows(&text("ovs-dpctl-dump-flows.txt"));
        assert_eq!(flows.len(), printed.len());
        let inv = flows
            .iter()
            .find(|f| f.actions.is_some_and(|a| a.drop.is_some()))
            .unwrap();
        let inv_printed = printed
            .iter()
            .find(|f| f.has("ct_state(0x30/0x30)"))
            .unwrap();
        assert_eq!(inv.actions.unwrap().drop, Some(DropReason::CtInvalid));
        assert_eq!(
            (inv.packets, inv.bytes),
            (inv_printed.packets, inv_printed.bytes)
        );
        assert_eq!(inv.packets, 12, "the 12 corrupt packets after priming");
        assert!(inv.tunnel);
        let mut classes: Vec<ActionClass> =
            flows.iter().map(|f| f.actions.unwrap().class).collect();
        classes.sort();
        assert_eq!(
            classes,
            [
                ActionClass::Drop,
                ActionClass::Output,
                ActionClass::Recirculate
            ]
        );
        // Every packet counted by the kernel's printout is in the decoded flows.
        assert_eq!(
            flows.iter().map(|f| f.packets).sum::<u64>(),
            printed.iter().map(|f| f.packets).sum::<u64>()
        );
        // Identities are UFIDs, all distinct.
        let mut ids: Vec<u128> = flows.iter().map(|f| f.id).collect();
        ids.dedup();
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn truncated_and_corrupted_ovs_replies() {
        let dp = fixture("ovs/ovs_dp_get.bin");
        let vp = per_dp("ovs_vport_get");
        for end in 0..dp.len() {
            assert!(
                ovs::parse_datapaths(&dp[..end]).is_err(),
                "dp truncated to {end}"
            );
        }
        for end in 0..vp.len() {
            assert!(
                ovs::parse_vports(&vp[..end]).is_err(),
                "vport truncated to {end}"
            );
        }
        let fl = per_dp("ovs_flow_get");
        for buf in [&dp, &vp, &fl] {
            for i in 0..buf.len() {
                for v in [0x00, 0x7f, 0xff] {
                    let mut b = buf.to_vec();
                    b[i] = v;
                    let _ = ovs::parse_datapaths(&b);
                    let _ = ovs::parse_vports(&b);
                    if let Ok(msgs) =
                        packetpath_exporter::netlink::wire::data_messages("ovs_flow", &b, false)
                    {
                        for m in msgs {
                            let _ = ovs_flows::parse_flow(m.payload);
                        }
                    }
                }
            }
        }
    }
}
