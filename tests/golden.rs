//! The binary end to end on captured inputs: netlink replies replayed from
//! tests/fixtures/netlink*, procfs from tests/fixtures/proc. The exposition must equal the
//! checked-in golden files (UPDATE_GOLDEN=1 rewrites them) and pass `promtool check metrics`.

mod common;

use common::promtool_check;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_packetpath-exporter");

fn dir(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// The exporter on an ephemeral loopback port; the port is read from its "listening" log.
pub struct Running {
    child: Child,
    pub port: u16,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Running {
    pub fn start(args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .arg("--web.listen-address=127.0.0.1:0")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn exporter");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let port = loop {
            line.clear();
            assert!(
                err.read_line(&mut line).unwrap() > 0,
                "exporter exited before listening"
            );
            if let Some(rest) = line.split("address=127.0.0.1:").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        // Keep draining stderr so the exporter never blocks on a full pipe.
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while err.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Running { child, port, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the exporter has logged after its "listening" line.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn get(&self, path: &str, headers: &[&str]) -> (String, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        for h in headers {
            req.push_str(&format!("{h}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (
            String::from_utf8_lossy(&raw[..split]).into_owned(),
            raw[split + 4..].to_vec(),
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Masks what legitimately differs between runs: durations, build facts, the process's
/// own CPU, memory, descriptors and start time.
fn normalize(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with("process_") {
                format!("{} <process>", l.rsplit_once(' ').unwrap().0)
            } else if l.starts_with("packetpath_scrape_collector_duration_seconds{") {
                format!("{} <duration>", l.rsplit_once(' ').unwrap().0)
            } else if l.starts_with("packetpath_exporter_build_info{") {
                "packetpath_exporter_build_info{<build facts>} 1".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn golden(name: &str, replay: &str) {
    golden_with(name, replay, &[]);
}

fn golden_with(name: &str, replay: &str, extra: &[&str]) {
    golden_ovsdb_with(
        name,
        replay,
        "/nonexistent/packetpath-golden/db.sock",
        extra,
        |_| true,
    );
}

fn golden_ovsdb_with(
    name: &str,
    replay: &str,
    socket: &str,
    extra: &[&str],
    ready: impl Fn(&str) -> bool,
) {
    // A capture with its own procfs files (the OVS bed's) is one machine's view.
    let replay_dir = replay;
    let own = dir(replay).join("proc");
    let replay = format!("--debug.netlink-replay-dir={}", dir(replay).display());
    let proc = if own.exists() {
        own
    } else {
        dir("tests/fixtures/proc")
    };
    let procfs = format!("--path.procfs={}", proc.display());
    // The same for sysfs (the OVS bed's has the openvswitch module; this host's none).
    let own = dir(replay_dir).join("sys");
    let sys = if own.exists() {
        own
    } else {
        dir("tests/fixtures/sys")
    };
    let sysfs = format!("--path.sysfs={}", sys.display());
    // No ovsdb-server unless the test gives one, whatever the machine runs: the ovsdb
    // collector then reports success 0.
    let socket = format!("--collector.ovsdb.socket={socket}");
    let mut args = vec![replay.as_str(), &procfs, &sysfs, &socket];
    args.extend_from_slice(extra);
    let e = Running::start(&args);
    compare(name, &e, ready);
}

/// Scrapes `e` until `ready` says the exposition is complete, then compares it with
/// tests/golden/`name`.
fn compare(name: &str, e: &Running, ready: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (head, body) = loop {
        let (head, body) = e.get("/metrics", &[]);
        if ready(&String::from_utf8_lossy(&body)) || std::time::Instant::now() > deadline {
            break (head, body);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    let text = String::from_utf8(body).unwrap();
    promtool_check(&text);
    let got = normalize(&text);
    let path = dir("tests/golden").join(name);
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "{} differs; rerun with UPDATE_GOLDEN=1 and review the diff\n--- got ---\n{got}",
        path.display()
    );
}

#[test]
fn golden_netlink() {
    golden("metrics.txt", "tests/fixtures/netlink");
}

/// Captured in the qemu OVS test bed (tests/fixtures/ovs): netlink replies and the conntrack
/// procfs files of the same moment.
#[test]
fn golden_ovs_datapath() {
    golden_with(
        "metrics-ovs.txt",
        "tests/fixtures/ovs",
        // The bed's capture predates the offload collector.
        &["--collector.conntrack.per-cpu", "--no-collector.offload"],
    );
}

/// The same captures with the tunnel port filtered out: its interface and vport series go,
/// and its drop flows count under in_port="other" with the tunnel role kept.
#[test]
fn golden_ovs_datapath_with_a_device_filter() {
    golden_with(
        "metrics-ovs-filtered.txt",
        "tests/fixtures/ovs",
        &[
            "--collector.conntrack.per-cpu",
            "--collector.interfaces.device-exclude=^genev",
            "--no-collector.offload",
        ],
    );
}

#[test]
fn golden_procfs_fallback_without_cap_net_admin() {
    golden("metrics-procfs.txt", "tests/fixtures/netlink-eperm");
}

#[test]
fn gzip_landing_page_and_health() {
    let replay = format!(
        "--debug.netlink-replay-dir={}",
        dir("tests/fixtures/netlink").display()
    );
    let procfs = format!("--path.procfs={}", dir("tests/fixtures/proc").display());
    let e = Running::start(&[&replay, &procfs, "--web.telemetry-path=/probe"]);
    let (_, plain) = e.get("/probe", &[]);
    let (head, gz) = e.get("/probe", &["Accept-Encoding: gzip"]);
    assert!(
        head.to_ascii_lowercase().contains("content-encoding: gzip"),
        "{head}"
    );
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut unzipped)
        .unwrap();
    assert_eq!(
        normalize(&unzipped),
        normalize(&String::from_utf8(plain).unwrap())
    );

    let (head, landing) = e.get("/", &[]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let landing = String::from_utf8(landing).unwrap();
    assert!(
        landing.contains("<a href=\"/probe\">/probe</a>"),
        "{landing}"
    );
    assert!(
        landing.contains("<li>interfaces</li><li>conntrack</li>"),
        "{landing}"
    );
    assert!(landing.contains(env!("CARGO_PKG_VERSION")));

    let (head, body) = e.get("/-/healthy", &[]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"OK\n");
    let (head, _) = e.get("/metrics", &[]);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

#[test]
fn a_failing_collector_does_not_fail_the_scrape() {
    // A replay directory without the ctnetlink captures, and a procfs without conntrack:
    // conntrack fails (success 0) while interfaces are still served.
    let empty = std::env::temp_dir().join(format!("pp-empty-proc-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let only_links = std::env::temp_dir().join(format!("pp-links-{}", std::process::id()));
    std::fs::create_dir_all(&only_links).unwrap();
    std::fs::copy(
        dir("tests/fixtures/netlink/rtnl_getlink.bin"),
        only_links.join("rtnl_getlink.bin"),
    )
    .unwrap();
    let e = Running::start(&[
        &format!("--debug.netlink-replay-dir={}", only_links.display()),
        &format!("--path.procfs={}", empty.display()),
        "--collector.disable-defaults",
        "--collector.interfaces",
        "--collector.conntrack",
    ]);
    let (head, body) = e.get("/metrics", &[]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("packetpath_scrape_collector_success{collector=\"conntrack\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("packetpath_scrape_collector_success{collector=\"interfaces\"} 1\n"),
        "{text}"
    );
    assert!(text.contains(
        "packetpath_interface_transmit_packets_total{device=\"veth-a\",role=\"other\"} 5\n"
    ));
    assert!(!text.contains("packetpath_conntrack_"));
    for _ in 0..3 {
        e.get("/metrics", &[]);
    }
    // The cause is logged once, clearly, not once per scrape.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = e.log();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains("level=info msg=\"source not available; the collector reports success 0 until it appears\" collector=conntrack reason=\"nf_conntrack not loaded ("), "{log}");
    assert!(
        log.contains(
            "net/stat/nf_conntrack does not exist); not asking ctnetlink, which would load it"
        ),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&empty);
    let _ = std::fs::remove_dir_all(&only_links);
}

/// A real ovsdb-server with a port plugged by os-vif (wired by OVN) and one by libvirt.
#[test]
fn golden_ovsdb() {
    if !common::ovsdb::available("golden_ovsdb") {
        return;
    }
    let db = common::ovsdb::Db::new("golden");
    db.plug(
        "tap519d7cc4-75",
        &[
            "external_ids:iface-id=519d7cc4-7593-4944-af80-6a8a9b4f4e9a",
            "external_ids:iface-status=active",
            "external_ids:attached-mac=fa:16:3e:11:22:33",
            "external_ids:vm-uuid=0c1e6a4e-6d0e-4b59-9f0a-7a3c2f1d2e3f",
            "external_ids:ovn-installed=true",
        ],
    );
    db.plug(
        "vnet0",
        &[
            "external_ids:iface-id=5b4f2a10-0c8e-4a55-9d3e-1f2e3d4c5b6a",
            "external_ids:vm-id=7d1c0b2a-3e4f-4a5b-8c6d-9e0f1a2b3c4d",
            "external_ids:attached-mac=52:54:00:12:34:56",
        ],
    );
    // What ovs-vswitchd writes when the TAP is gone (no ovs-vswitchd here, so by hand).
    db.vsctl(&[
        "set",
        "Interface",
        "vnet0",
        "error=\"could not open network device vnet0 (No such device)\"",
    ]);
    let socket = format!("--collector.ovsdb.socket={}", db.socket());
    let e = Running::start(&["--collector.disable-defaults", "--collector.ovsdb", &socket]);
    compare("metrics-ovsdb.txt", &e, |t| {
        t.contains("packetpath_scrape_collector_success{collector=\"ovsdb\"} 1")
    });
}

/// The OVS bed's capture with the bed's VM port (tap0) plugged into a real ovsdb-server
/// as os-vif and ovn-controller describe it: every per-VM series the default
/// configuration gives a port (the cardinality budget of docs/metrics.md is counted here).
#[test]
fn golden_ovs_with_vm_identity() {
    if !common::ovsdb::available("golden_ovs_with_vm_identity") {
        return;
    }
    let db = common::ovsdb::Db::new("golden-ovs");
    db.plug(
        "tap0",
        &[
            "external_ids:iface-id=8d1c5f0e-6a3b-4c2d-9e1f-0a2b3c4d5e6f",
            "external_ids:iface-status=active",
            "external_ids:attached-mac=fa:16:3e:00:00:01",
            "external_ids:vm-uuid=3f2e1d0c-4b5a-4968-8776-a5b4c3d2e1f0",
            "external_ids:ovn-installed=true",
        ],
    );
    db.vsctl(&[
        "set",
        "Bridge",
        "br-int",
        "external_ids:ct-zone-8d1c5f0e-6a3b-4c2d-9e1f-0a2b3c4d5e6f=\"3\"",
    ]);
    // What the bed's start script, ovs-vswitchd and ovn-controller write of the node: the
    // versions, the datapath types, and the kernel datapath's row with what it supports.
    db.vsctl(&[
        "set",
        "Open_vSwitch",
        ".",
        "ovs_version=3.1.0",
        "db_version=8.3.1",
        "datapath_types=netdev,system",
        "external_ids:system-id=compute-1",
        "external_ids:ovn-remote=tcp:10.0.0.1:6642",
    ]);
    // ovs-vswitchd records the datapath's version on the bridges, not in the Datapath row.
    db.vsctl(&[
        "set",
        "Bridge",
        "br-int",
        "datapath_type=system",
        "datapath_version=\"<unknown>\"",
    ]);
    db.add_datapath(
        "system",
        &[
            "capabilities:ct_state=true",
            "capabilities:recirc=true",
            "capabilities:max_vlan_headers=2",
        ],
    );
    golden_ovsdb_with(
        "metrics-ovs-vm.txt",
        "tests/fixtures/ovs",
        &db.socket(),
        &["--collector.conntrack.per-cpu", "--no-collector.offload"],
        |t| {
            t.contains("packetpath_scrape_collector_success{collector=\"ovsdb\"} 1")
                && t.contains("datapath_version=\"<unknown>\"")
        },
    );
}

/// The process_* series against the kernel's view of the same process.
#[test]
fn process_series_follow_procfs() {
    let e = Running::start(&["--collector.disable-defaults", "--collector.interfaces"]);
    let body = String::from_utf8(e.get("/metrics", &[]).1).unwrap();
    promtool_check(&body);
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
    };
    let proc = format!("/proc/{}", e.pid());
    let limits = std::fs::read_to_string(format!("{proc}/limits")).unwrap();
    let soft: f64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(value("process_max_fds"), soft);
    let fds = std::fs::read_dir(format!("{proc}/fd")).unwrap().count() as f64;
    // While it counted, it also held the scrape's connection and the directory it counts;
    // the server may not have closed that connection yet when the test looks.
    let open = value("process_open_fds");
    assert!(open == fds + 2.0 || open == fds + 1.0, "{fds} {body}");
    let stat = std::fs::read_to_string(format!("{proc}/stat")).unwrap();
    let after_comm = stat.rsplit_once(')').unwrap().1;
    // Field 22 (starttime) is the 20th after the command name.
    let start_ticks: f64 = after_comm
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let btime: f64 = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
        .unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let start = btime + start_ticks / hz;
    assert!(
        (value("process_start_time_seconds") - start).abs() < 1.0,
        "{start} {body}"
    );
    let rss_kib = common::rss_kib(e.pid()) as f64;
    let rss = value("process_resident_memory_bytes");
    assert!(
        (rss - rss_kib * 1024.0).abs() < 0.2 * rss,
        "{rss} vs {rss_kib} KiB"
    );
}
