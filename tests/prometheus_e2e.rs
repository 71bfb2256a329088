//! The rules and the dashboard against a real Prometheus (Debian's server, on loopback in a
//! namespace the test creates) scraping real exporters:
//!
//! - the exporter in the conntrack test bed's server namespace, with `s0` as the tunnel
//!   (traffic arrives there) and a TAP as the VM (nothing is delivered to it), and the
//!   conntrack_invalid collector on;
//! - a second exporter replaying the netlink replies captured in the OVS test bed, so the
//!   OVS series exist too; both see tap0's identity and conntrack zone in a private
//!   ovsdb-server, and nftables tracks what comes in by the tunnel in that zone.
//!
//! Clean traffic (good SYNs to other ports) with a healthy node's background (a late RST
//! every 2 s, marked invalid) must leave every packet-path alert inactive for 150 s; the
//! seed incident's trickle, one bad-checksum FIN/ACK every 30 s, must fire
//! PacketpathConntrackBadChecksum (the rules' signature window is scaled from 15 to 2
//! minutes and its count from 5 to 3 events, so it fires in about a minute and a half);
//! a flood of corrupt-checksum SYNs must bring PacketpathTunnelToVMLoss,
//! PacketpathConntrackInvalidSpike and PacketpathConntrackBadChecksum to `firing`. Then every metric that a rule or a dashboard
//! panel names must return data, and every expression must evaluate without error.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use packetpath_exporter::metrics::VM_PORT_CONNTRACK_INVALID_PACKETS;

use common::{
    ConntrackBed, Exporter, KillOnDrop, Netns, require_root, send_segments, tcp, tcp_segment,
    tcp_syn,
};

/// The drops collector's series.
const KERNEL_DROP_PREFIX: &str = "packetpath_kernel_";
/// The fleet rule naming each VM port that loses packets.
const VM_PORT_AFFECTED: &str = "instance_device:packetpath_vm_port_affected:info";
const PROM_PORT: u16 = 19090;
/// The identity os-vif gives the test's VM port in OVSDB.
const PORT_ID: &str = "519d7cc4-7593-4944-af80-6a8a9b4f4e9a";
const VM_ID: &str = "0c1e6a4e-6d0e-4b59-9f0a-7a3c2f1d2e3f";
/// How long the trickle may take to fire, and how long the background must stay quiet.
const TRICKLE: Duration = Duration::from_secs(150);
/// Every alert about the packet path (not the exporter's own health).
const ALL_PACKET_PATH: [&str; 5] = [
    "PacketpathTunnelToVMLoss",
    "PacketpathConntrackInvalidSpike",
    "PacketpathConntrackBadChecksum",
    "PacketpathOVSDropFlowsFromTunnel",
    "PacketpathChecksumValidationDroppingTunnelTraffic",
];
const ALERTS: [&str; 3] = [
    "PacketpathTunnelToVMLoss",
    "PacketpathConntrackInvalidSpike",
    "PacketpathConntrackBadChecksum",
];

fn repo(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(p)
        .display()
        .to_string()
}

#[path = "prometheus/fleet.rs"]
mod fleet;

pub struct Prometheus {
    _child: KillOnDrop,
    ns: String,
    port: u16,
}

impl Prometheus {
    /// Starts Debian's prometheus in `ns` with the rules rendered for a fast test: 1 s
    /// scrapes, 10 s rate windows, 5 s `for:`, and a 2-minute signature window in which 3
    /// bad checksums (not 5 in 15 minutes) are the signature.
    fn start(ns: &Netns, dir: &Path, targets: &[u16]) -> Prometheus {
        let targets: Vec<String> = targets.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        Prometheus::start_on(ns, dir, PROM_PORT, &targets, "")
    }

    /// The same on `port`, scraping `targets` (host:port), with `scrape_extra` appended
    /// to the scrape configuration (indented as its keys).
    fn start_on(
        ns: &Netns,
        dir: &Path,
        port: u16,
        targets: &[String],
        scrape_extra: &str,
    ) -> Prometheus {
        let mut env = String::from(
            "RATE_WINDOW=10s\nSIGNATURE_WINDOW=2m\nSIGNATURE_WINDOW_SECONDS=120\nBAD_CHECKSUM_MIN_EVENTS=3\nTUNNEL_LOSS_FOR=5s\nINVALID_SPIKE_PPS=1\nINVALID_SPIKE_FOR=5s\nBAD_CHECKSUM_FOR=5s\n",
        );
        // The file's own values follow; render.sh uses the first value of a key.
        env.push_str(&std::fs::read_to_string(repo("alerts/thresholds.env")).unwrap());
        std::fs::write(dir.join("thresholds.env"), env).unwrap();
        let out = Command::new(repo("alerts/render.sh"))
            .arg(dir.join("thresholds.env"))
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::write(dir.join("rules.yml"), &out.stdout).unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: packetpath\n    static_configs:\n      - targets: [{}]\n{scrape_extra}",
                dir.join("rules.yml").display(),
                targets.join(", ")
            ),
        )
        .unwrap();
        let p = Prometheus {
            _child: common::spawn_prometheus(&["ip", "netns", "exec", &ns.name], dir, port),
            ns: ns.name.clone(),
            port,
        };
        common::wait_for("prometheus to be ready", Duration::from_secs(30), || {
            common::http_get_in(&p.ns, port, "/-/ready", &[])
                .is_some_and(|(h, _)| h.starts_with("HTTP/1.1 200"))
        });
        p
    }

    fn api(&self, path: &str) -> serde_json::Value {
        let (head, body) =
            common::http_get_in(&self.ns, self.port, path, &[]).expect("prometheus API");
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(&body)
        } else {
            body
        };
        let v: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{path}: {e}: {head}"));
        v
    }

    fn query(&self, q: &str) -> serde_json::Value {
        self.api(&format!("/api/v1/query?query={}", common::url_encode(q)))
    }

    /// Alert name → state ("pending", "firing") for alerts now active.
    fn active(&self) -> Vec<(String, String)> {
        let v = self.api("/api/v1/alerts");
        v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap().to_owned(),
                    a["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// Runs `f` on a thread of its own in the client namespace.
fn in_client(cli: &Netns, f: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
    let path = format!("/run/netns/{}", cli.name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: a valid namespace fd; affects this thread only.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
}

/// Sends SYNs from the client namespace until stopped, ~100 a second, on fresh ports.
fn traffic(cli: &Netns, corrupt: bool, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    in_client(cli, move || {
        let mut port: u16 = if corrupt { 20000 } else { 50000 };
        while !stop.load(Ordering::Relaxed) {
            let batch: Vec<Vec<u8>> = (0..10)
                .map(|_| {
                    port = port.wrapping_add(1).max(1024);
                    tcp_syn(port, 8080, corrupt)
                })
                .collect();
            send_segments(&batch);
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// One segment every `every` from the client namespace until stopped, the first at once:
/// `flags` to port 8080 from fresh ports, with a bad checksum if `corrupt`.
fn paced(
    cli: &Netns,
    every: Duration,
    flags: u8,
    corrupt: bool,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    in_client(cli, move || {
        let mut port: u16 = if corrupt { 30000 } else { 40000 };
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                port += 1;
                send_segments(&[tcp_segment(port, 8080, flags, &[], corrupt)]);
                next += every;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

fn wait_alerts(p: &Prometheus, want: &[&str], timeout: Duration) -> Vec<(String, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let active = p.active();
        let firing = |n: &str| active.iter().any(|(a, s)| a == n && s == "firing");
        if want.iter().all(|n| firing(n)) || Instant::now() > deadline {
            return active;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Metric selectors (`name{matchers}`) and recording-rule names in a PromQL expression.
fn selectors(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("packetpath") {
        let tail = &rest[i..];
        // A label value such as job="packetpath" is not a metric.
        if rest[..i].ends_with('"') || !(tail[10..].starts_with('_') || tail[10..].starts_with(':'))
        {
            rest = &tail[10..];
            continue;
        }
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        // A recording rule's level comes before the metric: `instance_device:packetpath_…`.
        let level = rest[..i]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_lowercase() || *c == '_' || *c == ':')
            .last()
            .map_or(i, |(j, _)| j);
        let level = &rest[level..i];
        let level = if level.ends_with(':') { level } else { "" };
        let mut sel = format!("{level}{}", &tail[..end]);
        let mut next = &tail[end..];
        if next.starts_with('{') {
            let close = next.find('}').unwrap() + 1;
            sel.push_str(&next[..close]);
            next = &next[close..];
        }
        out.insert(sel);
        rest = next;
    }
    out
}

#[test]
fn selectors_keep_a_recording_rules_level() {
    assert_eq!(
        selectors(
            "instance:packetpath_vm_delivery_packets:rate / instance:packetpath_tunnel_receive_packets:rate > -1 \
             and sum(rate(packetpath_conntrack_invalid_total{job=\"packetpath\"}[5m]))"
        ),
        BTreeSet::from([
            "instance:packetpath_vm_delivery_packets:rate".to_owned(),
            "instance:packetpath_tunnel_receive_packets:rate".to_owned(),
            "packetpath_conntrack_invalid_total{job=\"packetpath\"}".to_owned(),
        ])
    );
}

#[test]
fn alerts_fire_on_the_incident_and_every_expression_returns_data() {
    if !require_root("alerts_fire_on_the_incident_and_every_expression_returns_data") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pp-prom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let bed = ConntrackBed::new();
    bed.set_checksum(true);
    // An uplink (the default route's device) for the offload rules to compare with.
    bed.srv.exec(
        "ip link add up0 type veth peer name up1 && ip link set up0 up && ip link set up1 up \
         && ip route add default dev up0",
    );
    // What goes by the tunnel, both ways, is tracked in tap0's conntrack zone, as OVS's
    // ct(zone=N) for a VM port does (before conntrack: priority -300).
    let zones = common::nflog::kernel_attaches_conntrack(&bed.srv);
    bed.srv.exec(
        "nft add table inet ppz \
         && nft add chain inet ppz pre '{ type filter hook prerouting priority -300; }' \
         && nft add rule inet ppz pre iifname s0 ct zone set 7 \
         && nft add chain inet ppz out '{ type filter hook output priority -300; }' \
         && nft add rule inet ppz out oifname s0 ct zone set 7",
    );
    let tap = bed.srv.enter(|| common::open_tap("tap0"));
    bed.srv.exec("ip link set tap0 up");
    let state = format!(
        "--collector.conntrack_invalid.state-file={}",
        dir.join("state").display()
    );
    // The VM's identity, as os-vif writes it, in a private ovsdb-server.
    assert!(common::ovsdb::available("e2e"), "ovsdb-server is needed");
    let db = common::ovsdb::Db::new("e2e");
    db.plug(
        "tap0",
        &[
            &format!("external_ids:iface-id={PORT_ID}"),
            &format!("external_ids:vm-uuid={VM_ID}"),
        ],
    );
    // tap0's zone, as ovn-controller records it.
    db.vsctl(&[
        "set",
        "Bridge",
        "br-int",
        &format!("external_ids:ct-zone-{PORT_ID}=\"7\""),
    ]);
    let ovsdb = format!("--collector.ovsdb.socket={}", db.socket());
    let live = Exporter::start(
        &bed.srv,
        19491,
        None,
        &[
            "--collector.conntrack_invalid",
            &state,
            "--collector.interfaces.tunnel-regex=^s0$",
            &ovsdb,
        ],
    );
    let replay = format!("--debug.netlink-replay-dir={}", repo("tests/fixtures/ovs"));
    let procfs = format!("--path.procfs={}", repo("tests/fixtures/ovs/proc"));
    // The captured datapath has a tap0 too: with the identity above, its drops by VM port.
    let ovs = Exporter::start(&bed.srv, 19492, None, &[&replay, &procfs, &ovsdb]);
    let prom = Prometheus::start(&bed.srv, &dir, &[19491, 19492]);

    // Clean traffic with a healthy node's background: the tunnel receives, nothing reaches
    // the VM, but nothing is dropped either (it goes to other ports), and a late RST of a
    // forgotten connection every 2 s is marked invalid: no alert may even be pending, for
    // as long as the trickle below takes.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = traffic(&bed.cli, false, stop.clone());
    let rsts = paced(
        &bed.cli,
        Duration::from_secs(2),
        tcp::RST,
        false,
        stop.clone(),
    );
    let quiet_until = Instant::now() + TRICKLE;
    while Instant::now() < quiet_until {
        let active = prom.active();
        for name in ALL_PACKET_PATH {
            assert!(
                !active.iter().any(|(a, _)| a == name),
                "{name} active on clean traffic with background RSTs: {active:?}"
            );
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    let rst_invalid = prom.query(
        "sum(packetpath_conntrack_invalid_packets_total{reason!=\"bad_checksum\",tcp_flags=\"rst\"})",
    );
    assert_ne!(
        rst_invalid["data"]["result"][0]["value"][1]
            .as_str()
            .unwrap_or("0"),
        "0",
        "the background RSTs must be marked invalid for the quiet phase to mean anything: {rst_invalid}"
    );
    let gap =
        prom.query("instance:packetpath_tunnel_receive_packets:rate - instance:packetpath_vm_delivery_packets:rate");
    let gap_now: f64 = gap["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap_or("0")
        .parse()
        .unwrap();
    assert!(
        gap_now > 1.0,
        "the clean phase must open a tunnel/VM gap for the test to mean anything: {gap}"
    );
    // The trickle: one short FIN/ACK with a bad checksum every 30 s, beside the same clean
    // traffic and background. The signature alert fires on it.
    let trickle = paced(
        &bed.cli,
        Duration::from_secs(30),
        tcp::FIN | tcp::ACK,
        true,
        stop.clone(),
    );
    let active = wait_alerts(&prom, &["PacketpathConntrackBadChecksum"], TRICKLE);
    assert!(
        active
            .iter()
            .any(|(a, s)| a == "PacketpathConntrackBadChecksum" && s == "firing"),
        "one bad-checksum FIN/ACK every 30 s did not fire PacketpathConntrackBadChecksum: {active:?}"
    );
    stop.store(true, Ordering::Relaxed);
    for t in [sender, rsts, trickle] {
        t.join().unwrap();
    }

    // The incident: corrupt checksums, marked invalid and dropped.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = traffic(&bed.cli, true, stop.clone());
    let active = wait_alerts(&prom, &ALERTS, Duration::from_secs(90));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    for name in ALERTS {
        assert!(
            active.iter().any(|(a, s)| a == name && s == "firing"),
            "{name} did not fire: {active:?}"
        );
    }

    // Every metric a rule or a panel names returns data, and every expression evaluates.
    let rules = std::fs::read_to_string(dir.join("rules.yml")).unwrap();
    let mut exprs: Vec<String> = Vec::new();
    // Recording rules and the series they are made of: where the kernel gives no zones,
    // those of the per-VM-port invalids have nothing to record.
    let mut recorded: Vec<(String, usize)> = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(l) = lines.next() {
        if let Some(r) = l.trim().strip_prefix("- record: ") {
            recorded.push((r.to_owned(), exprs.len()));
        }
        let Some(e) = l.trim().strip_prefix("expr: ") else {
            continue;
        };
        let mut e = e.to_owned();
        if e == ">-" {
            e.clear();
            while let Some(n) = lines.peek().filter(|n| n.starts_with("          ")) {
                e.push_str(n.trim());
                e.push(' ');
                lines.next();
            }
        }
        exprs.push(e);
    }
    // A series and the recording rules built on it: (rule or series name) prefixes.
    let built_on = |series: &str| -> Vec<String> {
        recorded
            .iter()
            .filter(|(_, i)| exprs.get(*i).is_some_and(|e| e.contains(series)))
            .map(|(r, _)| r.clone())
            .chain([series.to_owned()])
            .collect()
    };
    let zoneless = built_on(VM_PORT_CONNTRACK_INVALID_PACKETS);
    // The kernel's drop monitor exists only in the host's network namespace, and this
    // test's exporter runs in one of its own: no kernel-drop series here.
    let hostns_only = built_on(KERNEL_DROP_PREFIX);
    // The VM ports affected exist only while one loses packets, which no VM port here does
    // where the kernel gives no zone (the replayed datapath's counts do not move): the OVN
    // bed (tests/ovn_alert_vm.rs) checks them on a real chassis, promtool their values.
    let while_lost = built_on(VM_PORT_AFFECTED);
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo("dashboards/packetpath.json")).unwrap())
            .unwrap();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().unwrap();
            exprs.push(
                e.replace("$__rate_interval", "30s")
                    .replace("$__range", "5m")
                    .replace("$instance", ".*")
                    .replace("$vm", ".*"),
            );
        }
    }
    assert!(exprs.len() > 30, "{}", exprs.len());
    let mut checked = BTreeSet::new();
    for e in &exprs {
        let v = prom.query(e);
        assert_eq!(v["status"], "success", "{e}: {v}");
        for sel in selectors(e) {
            if !checked.insert(sel.clone()) {
                continue;
            }
            if !zones && zoneless.iter().any(|z| sel.starts_with(z.as_str())) {
                // This kernel gives NFLOG no conntrack zone: no per-VM-port invalids
                // (tests/netns_conntrack_invalid_zones.rs checks that promise; the OVN
                // bed, tests/ovn_alert_vm.rs, checks the series on Debian's kernel).
                eprintln!("{sel}: not on this kernel (no NFULA_CT)");
                continue;
            }
            if !zones && while_lost.iter().any(|z| sel.starts_with(z.as_str())) {
                eprintln!("{sel}: only while a VM port loses packets");
                continue;
            }
            if hostns_only.iter().any(|z| sel.starts_with(z.as_str())) {
                // tests/kernel_drops_vm.rs checks these series against real kernels, and
                // tests/rules.rs the rules and panels on them.
                eprintln!("{sel}: not in a network namespace (the drop monitor's are the host's)");
                continue;
            }
            // A recording rule that keeps only non-zero values is empty while nothing is
            // dropped; what it is made of must still be there.
            let query = recorded
                .iter()
                .find(|(r, _)| *r == sel)
                .and_then(|(_, i)| exprs.get(*i)?.trim().strip_suffix("> 0"))
                .map_or_else(|| sel.clone(), str::to_owned);
            let v = prom.query(&format!("count({query})"));
            let n = v["data"]["result"].as_array().map_or(0, Vec::len);
            assert!(n > 0, "{query} (named by {e}) returned no data");
        }
    }
    assert!(checked.len() > 25, "{checked:?}");
    // The join recipe of docs/collectors.md: the VM port's series carry its Neutron port and instance.
    let joined = prom.query(
        "packetpath_interface_transmit_packets_total{device=\"tap0\"} * on (instance, device) group_left (port_id, instance_id) packetpath_vm_port_info",
    );
    let metric = &joined["data"]["result"][0]["metric"];
    assert_eq!(
        (metric["port_id"].as_str(), metric["instance_id"].as_str()),
        (Some(PORT_ID), Some(VM_ID)),
        "{joined}"
    );
    drop(prom);
    drop(tap);
    drop(live);
    drop(ovs);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}
