//! Reads the results.txt that tests/vm/run.sh hands back from the guest, for tests that
//! assert on it. Include it from a test file with
//! `#[path = "vm/results.rs"] mod vm_results;`.
//!
//! The file is a series of blocks, each the output (stdout and stderr) of one command:
//!
//! ```text
//! === BEGIN checksum1/dump-flows ===
//! ...
//! [exit status 1]              only when the command failed
//! === END checksum1/dump-flows ===
//! === DONE ===                 once, at the end of a run that went through
//! ```
//!
//! The helpers below read the kernel tools' own formats (`ovs-dpctl show -s`,
//! `ovs-dpctl dump-flows -m`, `conntrack -S`) and the scenario's `dev stat value` and
//! `key value` blocks. They return `None` or an empty list rather than panic, so the test
//! says which value is missing.
#![allow(dead_code)]

use std::collections::BTreeMap;

pub struct Results {
    blocks: Vec<(String, String)>,
    /// The guest wrote `=== DONE ===`.
    pub done: bool,
}

impl Results {
    pub fn parse(text: &str) -> Results {
        let mut blocks = Vec::new();
        let mut open: Option<(String, String)> = None;
        let mut done = false;
        for line in text.lines() {
            if let Some(name) = marker(line, "=== BEGIN ") {
                open = Some((name.to_string(), String::new()));
            } else if let Some(name) = marker(line, "=== END ") {
                if let Some((open_name, body)) = open.take()
                    && open_name == name
                {
                    blocks.push((open_name, body));
                }
            } else if line == "=== DONE ===" {
                done = true;
            } else if let Some((_, body)) = open.as_mut() {
                body.push_str(line);
                body.push('\n');
            }
        }
        Results { blocks, done }
    }

    pub fn read(path: &std::path::Path) -> Results {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Results::parse(&text)
    }

    /// The body of block `name` (the last one, should a name repeat).
    pub fn block(&self, name: &str) -> Option<&str> {
        self.blocks
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, body)| body.as_str())
    }

    /// Like `block`, with a panic naming the block when it is missing.
    pub fn get(&self, name: &str) -> &str {
        self.block(name)
            .unwrap_or_else(|| panic!("no block {name} in the results (have: {:?})", self.names()))
    }

    pub fn names(&self) -> Vec<&str> {
        self.blocks.iter().map(|(n, _)| n.as_str()).collect()
    }
}

fn marker<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.strip_prefix(prefix)?.strip_suffix(" ===")
}

/// The exit status of a block's command, `None` when it succeeded.
pub fn exit_status(body: &str) -> Option<i32> {
    body.lines().rev().find_map(|l| {
        l.strip_prefix("[exit status ")?
            .strip_suffix(']')?
            .parse()
            .ok()
    })
}

/// `key value` lines (plan, vm-reader) as a map; other lines are skipped.
pub fn key_values(body: &str) -> BTreeMap<String, u64> {
    body.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// A value of the `sysfs` block: `dev stat value` lines.
pub fn sysfs(body: &str, dev: &str, stat: &str) -> Option<u64> {
    body.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == dev && f.next()? == stat)
            .then(|| f.next()?.parse().ok())
            .flatten()
    })
}

/// A `conntrack -S` field summed over the per-CPU lines.
pub fn conntrack_sum(body: &str, field: &str) -> Option<u64> {
    let mut total = None;
    for line in body.lines().filter(|l| l.starts_with("cpu=")) {
        for kv in line.split_whitespace() {
            if let Some((k, v)) = kv.split_once('=')
                && k == field
            {
                *total.get_or_insert(0) += v.parse::<u64>().ok()?;
            }
        }
    }
    total
}

/// `lookups: hit:H missed:M lost:L` of `ovs-dpctl show -s`.
pub fn dpctl_lookups(body: &str) -> Option<(u64, u64, u64)> {
    let line = body
        .lines()
        .find_map(|l| l.trim().strip_prefix("lookups: "))?;
    let value = |key: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix(':')?.parse().ok())
    };
    Some((value("hit")?, value("missed")?, value("lost")?))
}

/// `ovs-dpctl show -s` packet counters of one port: (RX packets, TX packets).
pub fn dpctl_port_packets(body: &str, port: &str) -> Option<(u64, u64)> {
    let mut lines = body.lines().skip_while(|l| {
        let l = l.trim();
        !(l.starts_with("port ") && l.split_whitespace().nth(2) == Some(port))
    });
    lines.next()?;
    let packets = |l: &str, dir: &str| -> Option<u64> {
        l.trim()
            .strip_prefix(dir)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let rx = packets(lines.next()?, "RX packets:")?;
    let tx = packets(lines.next()?, "TX packets:")?;
    Some((rx, tx))
}

/// One line of `ovs-dpctl dump-flows -m`.
#[derive(Debug, Clone)]
pub struct DpFlow {
    /// The match, as printed (`recirc_id(0x1),...,ipv4(...)`).
    pub key: String,
    pub packets: u64,
    pub bytes: u64,
    pub actions: String,
}

impl DpFlow {
    /// True when the match has this exact field, e.g. `ct_state(0x30/0x30)` (+trk+inv).
    pub fn has(&self, field: &str) -> bool {
        self.key.contains(field)
    }
}

pub fn dp_flows(body: &str) -> Vec<DpFlow> {
    body.lines()
        .filter_map(|line| {
            let line = line.trim();
            // `ufid:..., <match>, packets:N, bytes:N, used:..., flags:..., dp:..., actions:...`
            let (head, actions) = line.split_once(", actions:")?;
            let stats_at = head.find(", packets:")?;
            let key = &head[..stats_at];
            // -m prints a `ufid:...` before the match.
            let key = match key.strip_prefix("ufid:") {
                Some(rest) => rest.split_once(", ").map_or(rest, |(_, k)| k),
                None => key,
            };
            let stat = |name: &str| -> Option<u64> {
                head[stats_at..]
                    .split(", ")
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix(':')?.parse().ok())
            };
            Some(DpFlow {
                key: key.to_string(),
                packets: stat("packets")?,
                bytes: stat("bytes")?,
                actions: actions.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shortened from a run of the seed scenario.
    const SAMPLE: &str = "\
console noise is never here, but a stray line is ignored
=== BEGIN checksum1/plan ===
nf_conntrack_checksum 1
bad 12
good 20
=== END checksum1/plan ===
=== BEGIN checksum1/dpctl-show ===
system@ovs-system:
  lookups: hit:65 missed:3 lost:0
  flows: 3
  port 2: tap0
    RX packets:0 errors:0 dropped:0 overruns:0 frame:0
    TX packets:21 errors:0 dropped:0 aborted:0 carrier:0
    collisions:0
    RX bytes:0  TX bytes:1134 (1.1 KiB)
  port 3: genev_sys_6081 (geneve: packet_type=ptap)
    RX packets:0 errors:? dropped:? overruns:? frame:?
    TX packets:0 errors:? dropped:? aborted:? carrier:?
=== END checksum1/dpctl-show ===
=== BEGIN checksum1/dump-flows ===
ufid:1b584072-10ef-4470-b084-283615b9eec7, recirc_id(0x1),dp_hash(0/0),tunnel(tun_id=0x64,src=192.168.100.1,dst=192.168.100.2,ttl=0/0,flags(-df-csum+key)),in_port(genev_sys_6081),ct_state(0x30/0x30),eth_type(0x0800),ipv4(src=0.0.0.0/0.0.0.0,frag=no), packets:12, bytes:648, used:1.352s, flags:SF., dp:ovs, actions:drop
ufid:939d0921-cf42-499a-b026-f894bd73041e, recirc_id(0x1),ct_state(0x21/0x31),eth_type(0x0800),ipv4(frag=no), packets:20, bytes:1080, used:1.502s, flags:S, dp:ovs, actions:ct(commit),tap0
=== END checksum1/dump-flows ===
=== BEGIN checksum1/conntrack-S ===
cpu=0   \tfound=0 invalid=1 insert=0 insert_failed=0 drop=0
cpu=1   \tfound=0 invalid=12 insert=0 insert_failed=0 drop=0
=== END checksum1/conntrack-S ===
=== BEGIN checksum1/sysfs ===
genev_sys_6081 rx_packets 34
tap0 tx_packets 21
=== END checksum1/sysfs ===
=== BEGIN fault/openflow ===
ovs-ofctl: br-int is not a bridge or a socket
[exit status 1]
=== END fault/openflow ===
=== BEGIN truncated ===
no end marker: the guest died here
=== DONE ===
";

    #[test]
    fn blocks_and_done() {
        let r = Results::parse(SAMPLE);
        assert!(r.done);
        assert_eq!(
            r.names(),
            [
                "checksum1/plan",
                "checksum1/dpctl-show",
                "checksum1/dump-flows",
                "checksum1/conntrack-S",
                "checksum1/sysfs",
                "fault/openflow"
            ]
        );
        assert_eq!(exit_status(r.get("fault/openflow")), Some(1));
        assert_eq!(exit_status(r.get("checksum1/sysfs")), None);
        assert!(!Results::parse("=== BEGIN a ===\nx\n=== END a ===\n").done);
    }

    #[test]
    fn kernel_tool_formats() {
        let r = Results::parse(SAMPLE);
        let plan = key_values(r.get("checksum1/plan"));
        assert_eq!((plan["bad"], plan["good"]), (12, 20));
        assert_eq!(
            dpctl_lookups(r.get("checksum1/dpctl-show")),
            Some((65, 3, 0))
        );
        assert_eq!(
            dpctl_port_packets(r.get("checksum1/dpctl-show"), "tap0"),
            Some((0, 21))
        );
        assert_eq!(
            dpctl_port_packets(r.get("checksum1/dpctl-show"), "genev_sys_6081"),
            Some((0, 0))
        );
        assert_eq!(
            conntrack_sum(r.get("checksum1/conntrack-S"), "invalid"),
            Some(13)
        );
        assert_eq!(conntrack_sum(r.get("checksum1/conntrack-S"), "nope"), None);
        assert_eq!(
            sysfs(r.get("checksum1/sysfs"), "tap0", "tx_packets"),
            Some(21)
        );
        let flows = dp_flows(r.get("checksum1/dump-flows"));
        assert_eq!(flows.len(), 2);
        let drop = flows.iter().find(|f| f.has("ct_state(0x30/0x30)")).unwrap();
        assert_eq!(
            (drop.packets, drop.bytes, drop.actions.as_str()),
            (12, 648, "drop")
        );
        assert!(drop.key.starts_with("recirc_id(0x1)"));
        assert_eq!(flows[1].actions, "ct(commit),tap0");
    }
}
