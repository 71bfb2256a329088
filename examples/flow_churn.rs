//! Drop accounting under flow churn, without a kernel: the cost of the `ovs_flows`
//! collector's notification path and accounting at a steady `--flows` live datapath flows
//! with `--rate` flow creations and as many deletions per second, for `--seconds`
//! simulated seconds, with a full dump every `--scrape` seconds (the scrape).
//!
//! Every notification and dump entry is a real OVS_FLOW_CMD_* message (UFID, key, actions,
//! stats) decoded by the collector's own parser and applied to its accounting, exactly as
//! the listener and the scrape do; only the kernel (building the messages, the recv
//! syscall) is left out. Prints the CPU seconds spent (getrusage), the share of one core
//! that is at the simulated rate, and resident memory each simulated minute.
//!
//! ```text
//! cargo run --release --example flow_churn -- [--flows 100000] [--rate 10000]
//!     [--seconds 600] [--scrape 15]
//! ```

use packetpath_exporter::collectors::ovs_flows::accounting::{Accounting, Names};
use packetpath_exporter::collectors::ovs_flows::parse::{self, Flow};
use packetpath_exporter::netlink::wire;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One OVS_FLOW_CMD_* message as the kernel sends it: a terse delete carries the UFID
/// and stats only.
fn message(cmd: u8, id: u64, packets: u64) -> Vec<u8> {
    let mut p = vec![cmd, 1, 0, 0, 7, 0, 0, 0];
    let mut ufid = [0u8; 16];
    ufid[..8].copy_from_slice(&id.to_ne_bytes());
    wire::push_attr(&mut p, parse::OVS_FLOW_ATTR_UFID, &ufid);
    if cmd != parse::OVS_FLOW_CMD_DEL {
        let mut key = Vec::new();
        wire::push_attr(&mut key, parse::OVS_KEY_ATTR_IN_PORT, &2u32.to_ne_bytes());
        // A typical megaflow key: ethernet, ipv4, tcp and conntrack fields.
        wire::push_attr(&mut key, 4, &[0u8; 12]); // ethernet
        wire::push_attr(&mut key, 7, &[0u8; 12]); // ipv4
        wire::push_attr(&mut key, 9, &[0u8; 4]); // tcp
        wire::push_attr(
            &mut key,
            parse::OVS_KEY_ATTR_CT_STATE,
            &0x21u32.to_ne_bytes(),
        );
        wire::push_attr(&mut key, 23, &[0u8; 2]); // ct_zone
        wire::push_attr(&mut key, 24, &[0u8; 4]); // ct_mark
        wire::push_attr(&mut p, parse::OVS_FLOW_ATTR_KEY, &key);
        let mut actions = Vec::new();
        if id % 2 == 1 {
            wire::push_attr(
                &mut actions,
                parse::OVS_ACTION_ATTR_OUTPUT,
                &3u32.to_ne_bytes(),
            );
        }
        wire::push_attr(&mut p, parse::OVS_FLOW_ATTR_ACTIONS, &actions);
    }
    if packets > 0 {
        let stats = [packets.to_ne_bytes(), (packets * 54).to_ne_bytes()].concat();
        wire::push_attr(&mut p, parse::OVS_FLOW_ATTR_STATS, &stats);
    }
    p
}

fn decode(m: &[u8]) -> Flow {
    match parse::parse_flow(m) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("flow_churn: {e}");
            std::process::exit(1);
        }
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let flows = arg("--flows", 100_000);
    let rate = arg("--rate", 10_000);
    let seconds = arg("--seconds", 600);
    let scrape = arg("--scrape", 15).max(1);
    let mut acct = Accounting::new(200_000);
    let names = Names {
        datapath: "ovs-system".into(),
        ports: [(
            2,
            (
                "genev_sys_6081".to_owned(),
                packetpath_exporter::roles::Role::Tunnel,
            ),
        )]
        .into(),
    };
    acct.set_names(7, names.clone());
    // The live table: flow ids [oldest, next).
    let (mut oldest, mut next) = (0u64, flows);
    for id in 0..flows {
        acct.notify(&decode(&message(parse::OVS_FLOW_CMD_NEW, id, 0)));
    }
    let start = cpu_seconds();
    println!("minute rss_kib tracked");
    for s in 1..=seconds {
        for _ in 0..rate {
            // The oldest flow idles out with 3 packets; a new one takes its place.
            acct.notify(&decode(&message(parse::OVS_FLOW_CMD_DEL, oldest, 3)));
            oldest += 1;
            acct.notify(&decode(&message(parse::OVS_FLOW_CMD_NEW, next, 0)));
            next += 1;
        }
        if s % scrape == 0 {
            acct.begin_collect();
            acct.set_names(7, names.clone());
            acct.begin_dump(7);
            for id in oldest..next {
                acct.dumped(&decode(&message(parse::OVS_FLOW_CMD_GET, id, 1)));
            }
            acct.end_dump(7, true);
            acct.end_collect();
        }
        if s % 60 == 0 {
            println!("{} {} {}", s / 60, rss_kib(), acct.tracked());
        }
    }
    let cpu = cpu_seconds() - start;
    let dropped: u64 = acct.totals().values().map(|t| t.0).sum();
    println!("flows {flows} rate {rate}/s seconds {seconds} scrape_every {scrape}s");
    println!(
        "notifications {} dump_entries {}",
        2 * rate * seconds,
        (seconds / scrape) * flows
    );
    println!(
        "cpu_seconds {cpu:.2} core_share_at_rate {:.4}",
        cpu / seconds as f64
    );
    // Every even flow drops 3 packets in its life: deleted ones count 3 each.
    let deleted_drops = oldest.div_ceil(2) * 3;
    println!("dropped_total {dropped} deleted_drop_flows_x3 {deleted_drops}");
}
