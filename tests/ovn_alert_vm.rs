//! The product as shipped pages for the seed incident at its real rate, on a real OVN
//! chassis, and names the victim VM.
//!
//! tests/vm/run.sh --scenario ovn boots Debian trixie (Linux 6.12, OVS 3.5, OVN 25.03) under
//! qemu: NB/SB databases, ovn-northd and ovn-controller in the guest, a logical switch with
//! two local VM ports (A, B) in a Neutron-like security group and a faked remote chassis
//! sending through Geneve with OVN's option. The exporter runs in the guest with the
//! DaemonSet's own container args (read from deploy/kubernetes/daemonset.yaml here, host
//! paths adapted). Debian's Prometheus on this host scrapes it every 15 s through qemu's
//! user network and evaluates the shipped alerts/packetpath.rules.yml every 15 s.
//!
//! Traffic: one short bad-checksum FIN/ACK a minute from the tunnel to VM A inside a
//! connection established just before (the seed's trickle), while VM B gets good SYNs and
//! late RSTs (conntrack-invalid) at 0.3/s.
//!
//! Pass: PacketpathTunnelToVMLoss fires within 10 minutes of the first loss, with A's
//! `instance_id`, `port_id` and `device`, and never names B; the per-VM drop counters equal
//! the datapath's drop flows attributed through their recirculation lineage (drop flow
//! `recirc_id(X)` ← flow with `ct(zone=N),recirc(X)` ← br-int's `ct-zone-<iface-id>=N`);
//! the per-VM conntrack-invalid counters equal what was sent; the node collector's
//! `packetpath_node_info` and datapath series equal what the guest's kernel and daemons
//! say (`uname`, sysfs, ovs-vsctl, ovn-controller's own `version` answer). The test stops
//! the traffic once the alert has fired (or 10 minutes after the first loss) and appends
//! Prometheus's view (alert history, the exporter's series) to results.txt as `host/…`
//! blocks.
//!
//! `PP_OVN_RULES=FILE` evaluates FILE instead of alerts/packetpath.rules.yml.
//!
//! Needs root, qemu (run.sh installs it) and Debian's `prometheus`: without them the test
//! skips locally and fails under CI=true.

mod common;
#[path = "vm/results.rs"]
mod vm_results;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vm_results::{DpFlow, Results, conntrack_sum, dp_flows, exit_status, key_values, sysfs};

const ALERT: &str = "PacketpathTunnelToVMLoss";
/// The scenario's VM ports (tests/vm/guest/scenario-ovn.sh).
const A_PORT: &str = "3f1c2a6e-8b1d-4c3a-9e55-1a2b3c4d5e01";
const A_VM: &str = "a1a1a1a1-0000-4000-8000-00000000000a";
const A_TAP: &str = "tap3f1c2a6e-8b";
const A_MAC: &str = "fa:16:3e:00:00:0a";
const B_PORT: &str = "7d2e4b10-5c6d-4e7f-8a9b-0c1d2e3f4a5b";
const B_VM: &str = "b2b2b2b2-0000-4000-8000-00000000000b";
const B_TAP: &str = "tap7d2e4b10-5c";
/// The alert must fire within this long after the first loss.
const FIRE_WITHIN: Duration = Duration::from_secs(600);
/// How long the traffic goes on once the alert has fired (B must stay quiet meanwhile).
const AFTER_FIRING: Duration = Duration::from_secs(30);

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The DaemonSet container's args with the host paths it mounts (/host/proc, /host/sys)
/// put back where the guest has them, and the flags the test adds because the args lack
/// them (the per-VM conntrack-invalid series need the conntrack_invalid collector).
fn daemonset_args() -> (Vec<String>, Vec<String>) {
    let docs = common::yaml_docs(repo("deploy/kubernetes/daemonset.yaml"));
    let ds = common::kind(&docs, "DaemonSet");
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    let c = containers
        .iter()
        .find(|c| c["name"] == "packetpath-exporter")
        .unwrap_or(&containers[0]);
    let args: Vec<String> = c["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().expect("string arg").to_string())
                .collect()
        })
        .unwrap_or_default();
    let adapted = args
        .iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) if v.starts_with("/host/") => format!("{k}={}", &v["/host".len()..]),
            _ => a.clone(),
        })
        .collect::<Vec<_>>();
    let mut extra = Vec::new();
    if !adapted.iter().any(|a| a == "--collector.conntrack_invalid") {
        extra.push("--collector.conntrack_invalid".to_string());
    }
    (adapted, extra)
}

/// GET on loopback; the body, de-chunked.
fn http_get(port: u16, path: &str) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    if !head.starts_with("http/1.") || !head.contains(" 200") {
        return None;
    }
    let body = raw[split + 4..].to_vec();
    Some(if head.contains("transfer-encoding: chunked") {
        dechunk(&body)
    } else {
        body
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let Ok(size) = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16) else {
            break;
        };
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    out
}

struct Prom {
    port: u16,
}

impl Prom {
    fn api(&self, path: &str) -> Option<serde_json::Value> {
        serde_json::from_slice(&http_get(self.port, path)?).ok()
    }
    fn query(&self, q: &str) -> Vec<serde_json::Value> {
        self.api(&format!("/api/v1/query?query={}", common::url_encode(q)))
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    }
    /// (state, labels) of every PacketpathTunnelToVMLoss alert now.
    fn alerts(&self) -> Vec<(String, BTreeMap<String, String>)> {
        let Some(v) = self.api("/api/v1/alerts") else {
            return Vec::new();
        };
        v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == ALERT)
            .map(|a| {
                (
                    a["state"].as_str().unwrap_or("").to_string(),
                    labels(&a["labels"]),
                )
            })
            .collect()
    }
}

fn labels(v: &serde_json::Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect()
}

fn names_vm(l: &BTreeMap<String, String>, port: &str, vm: &str, tap: &str) -> bool {
    l.get("port_id").map(String::as_str) == Some(port)
        || l.get("instance_id").map(String::as_str) == Some(vm)
        || l.get("device").map(String::as_str) == Some(tap)
}

fn is_a(l: &BTreeMap<String, String>) -> bool {
    l.get("port_id").map(String::as_str) == Some(A_PORT)
        && l.get("instance_id").map(String::as_str) == Some(A_VM)
        && l.get("device").map(String::as_str) == Some(A_TAP)
}

/// `key value` lines served by the guest's busybox httpd.
fn progress(port: u16) -> Option<BTreeMap<String, String>> {
    let body = http_get(port, "/progress")?;
    Some(
        String::from_utf8_lossy(&body)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Appends a block to results.txt, after the guest's (the reader takes blocks anywhere).
fn append_block(results: &Path, name: &str, body: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(results)
        .unwrap();
    let nl = if body.ends_with('\n') || body.is_empty() {
        ""
    } else {
        "\n"
    };
    write!(f, "=== BEGIN {name} ===\n{body}{nl}=== END {name} ===\n").unwrap();
}

/// `{a="b", c=d}` (ovs-vsctl's map format) as a map.
fn ovs_map(s: &str) -> BTreeMap<String, String> {
    s.trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .split(", ")
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.trim_matches('"').to_string(),
                v.trim_matches('"').to_string(),
            )
        })
        .collect()
}

/// The value of `name(...)` in a flow's key or actions, up to its closing parenthesis.
fn field<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    let at = s.find(&format!("{name}("))? + name.len() + 1;
    let mut depth = 1;
    for (i, c) in s[at..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&s[at..at + i]);
                }
            }
            _ => {}
        }
    }
    None
}

fn hex_or_dec(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Why a datapath flow drops, as the exporter's `reason` label names it; None when it
/// forwards or recirculates. `ovs-dpctl` prints both an empty action list and the explicit
/// drop action as `drop`: both come back as "explicit" (the comparison adds the exporter's
/// explicit and no_action).
fn drop_reason(f: &DpFlow) -> Option<&'static str> {
    let a = f.actions.as_str();
    let inv = field(&f.key, "ct_state").is_some_and(|cs| {
        let (v, m) = cs.split_once('/').unwrap_or((cs, "0xffffffff"));
        let (v, m) = (hex_or_dec(v).unwrap_or(0), hex_or_dec(m).unwrap_or(0));
        v & m & 0x10 != 0
    });
    if a == "drop" || a.starts_with("drop(") {
        Some(if inv { "ct_invalid" } else { "explicit" })
    } else if a.starts_with("userspace(") && a.contains("controller") && !a.contains("),") {
        Some("controller")
    } else {
        None
    }
}

/// Datapath drop packets per destination VM device and reason, through the recirculation
/// lineage: recirc_id X → the zone of the flow(s) whose actions are ct(zone=N),recirc(X) →
/// the port whose ct-zone-<iface-id> is N → its Interface. Drops whose lineage names no VM
/// (or two) come back under device "".
fn lineage(
    flows: &[DpFlow],
    zones: &BTreeMap<u64, String>,
) -> (BTreeMap<(String, String), u64>, Vec<String>) {
    let mut recirc_zone: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for f in flows {
        let (Some(ct), Some(r)) = (field(&f.actions, "ct"), field(&f.actions, "recirc")) else {
            continue;
        };
        let zone = ct
            .split(',')
            .find_map(|p| p.strip_prefix("zone="))
            .and_then(hex_or_dec)
            .unwrap_or(0);
        if let Some(r) = hex_or_dec(r) {
            recirc_zone.entry(r).or_default().insert(zone);
        }
    }
    let mut out = BTreeMap::new();
    let mut why = Vec::new();
    for f in flows {
        // from_role="tunnel": what came in through the Geneve port.
        let Some(reason) = drop_reason(f).filter(|_| f.has("in_port(genev_sys_6081)")) else {
            continue;
        };
        let rid = field(&f.key, "recirc_id").and_then(hex_or_dec).unwrap_or(0);
        let device = match recirc_zone.get(&rid) {
            Some(z) if z.len() == 1 => zones.get(z.iter().next().unwrap()).cloned(),
            _ => None,
        }
        .unwrap_or_default();
        why.push(format!(
            "{} packets {} reason {reason} recirc_id {rid:#x} zones {:?} -> {device:?}",
            f.key,
            f.packets,
            recirc_zone.get(&rid)
        ));
        *out.entry((device, reason.to_string())).or_default() += f.packets;
    }
    (out, why)
}

/// Block `name`'s text without its final newline; the command that wrote it succeeded.
fn output<'a>(r: &'a Results, name: &str) -> &'a str {
    let body = r.get(name);
    assert_eq!(exit_status(body), None, "{name} failed: {body}");
    body.trim_end_matches('\n')
}

/// `value` with ovs-vsctl's quotes removed (`"<built-in>"` → `<built-in>`).
fn unquote(value: &str) -> &str {
    value.trim().trim_matches('"')
}

/// A capability's value as the exporter exports it: 1, 0 or the number; None otherwise.
fn capability(value: &str) -> Option<f64> {
    match value {
        "true" => Some(1.0),
        "false" => Some(0.0),
        v => v.parse().ok(),
    }
}

/// The node collector's series equal what the guest's kernel and daemons said (blocks
/// `final/node/…`): uname, the module's sysfs files, ovs-vswitchd's version as the scenario
/// recorded it the way ovs-ctl does, the Open_vSwitch row, ovn-controller's own answer to
/// `version` on its control socket, and the Datapath row ovn-controller made for br-int.
fn what_the_node_runs(r: &Results, m: &common::Metrics) {
    let module: BTreeMap<&str, &str> = output(r, "final/node/module")
        .lines()
        .map(|l| l.split_once(' ').unwrap_or((l, "")))
        .collect();
    assert_eq!(module["initstate"], "live", "{module:?}");
    assert!(
        !module["taint"].contains('O'),
        "an in-tree module: {module:?}"
    );
    assert_eq!(module["version"], "(none)", "{module:?}");
    // Debian's kernels have no CONFIG_MODULE_SRCVERSION_ALL: no srcversion for the
    // kernel's own module, and then the label is empty.
    let srcversion = match module["srcversion"] {
        "(none)" => "",
        v => v,
    };
    // "ovs-vswitchd (Open vSwitch) 3.5.0": what ovs-ctl records as ovs_version.
    let ovs_version = output(r, "final/node/ovs-vswitchd-version")
        .lines()
        .find(|l| l.contains("Open vSwitch"))
        .and_then(|l| l.rsplit(' ').next())
        .expect("ovs-vswitchd --version");
    let row = output(r, "final/node/open-vswitch");
    let column = |name: &str| {
        row.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim())
            })
            .unwrap_or_else(|| panic!("no {name} in {row}"))
    };
    assert_eq!(unquote(column("ovs_version")), ovs_version, "{row}");
    let ids = ovs_map(column("external_ids"));
    // `[netdev, system]`, comma-separated and sorted by the exporter.
    let mut types: Vec<&str> = output(r, "final/node/datapath-types")
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .filter(|t| !t.is_empty())
        .collect();
    types.sort();
    assert!(types.contains(&"system"), "{types:?}");
    // ovn-controller's answer: "ovn-controller 25.03.0\nOpen vSwitch Library 3.5.0\n…".
    let answer = output(r, "final/node/ovn-controller-version");
    let ovn_version = answer
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("ovn-controller "))
        .unwrap_or_else(|| panic!("ovn-controller's version answer: {answer}"));
    assert_eq!(
        output(r, "final/node/ovn-controller--version")
            .lines()
            .next(),
        answer.lines().next(),
        "the running daemon is the installed one"
    );
    let want: BTreeMap<String, String> = [
        ("kernel_release", output(r, "final/node/uname-r")),
        ("kernel_version", output(r, "final/node/uname-v")),
        ("ovs_module", "in_tree"),
        ("ovs_module_srcversion", srcversion),
        ("ovs_module_version", ""),
        ("ovs_version", ovs_version),
        ("ovs_db_version", unquote(column("db_version"))),
        ("ovs_datapath_types", &types.join(",")),
        ("ovn_chassis", "ch1"),
        ("ovn_version", ovn_version),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(ids["system-id"], "ch1", "{ids:?}");
    assert!(!want["ovs_db_version"].is_empty());
    let info: Vec<_> = m.select("packetpath_node_info", &[]).collect();
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!((&info[0].0, info[0].1), (&want, 1.0));
    eprintln!("packetpath_node_info: {want:?}");

    // br-int's Datapath row: every capability with a numeric value; its version, or (the
    // row has none) the one ovs-vswitchd recorded on br-int, of the same type.
    let dp = output(r, "final/node/datapath-system");
    let (version, caps) = dp
        .split_once('\n')
        .unwrap_or_else(|| panic!("the system Datapath row: {dp}"));
    let br_int = output(r, "final/node/br-int-datapath");
    let (br_type, br_version) = br_int
        .split_once('\n')
        .unwrap_or_else(|| panic!("br-int's datapath: {br_int}"));
    assert!(matches!(unquote(br_type), "" | "system"), "{br_int}");
    let version = match unquote(version) {
        "" => unquote(br_version),
        v => v,
    };
    assert!(!version.is_empty(), "{dp}\n{br_int}");
    let want_caps: BTreeMap<String, f64> = ovs_map(caps)
        .into_iter()
        .filter_map(|(k, v)| Some((k, capability(&v)?)))
        .collect();
    assert_eq!(want_caps.get("ct_state"), Some(&1.0), "{dp}");
    let (l, one) = m
        .select(
            "packetpath_node_ovs_datapath_info",
            &[("datapath_type", "system")],
        )
        .next()
        .expect("no packetpath_node_ovs_datapath_info{datapath_type=\"system\"}");
    assert_eq!((l["datapath_version"].as_str(), one), (version, 1.0));
    let got_caps: BTreeMap<String, f64> = m
        .select(
            "packetpath_node_ovs_datapath_capability",
            &[("datapath_type", "system")],
        )
        .map(|(l, v)| (l["capability"].clone(), v))
        .collect();
    assert_eq!(got_caps, want_caps);
    eprintln!("system datapath {}: {got_caps:?}", l["datapath_version"]);
}

#[test]
fn ovn_chassis_pages_for_the_seed_trickle_and_names_the_victim() {
    let test = "ovn_chassis_pages_for_the_seed_trickle_and_names_the_victim";
    if !common::require_root(test) {
        return;
    }
    let have = |c: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("prometheus") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: no prometheus (Debian package prometheus; tests/run.sh installs it) and CI=true: refusing to skip"
        );
        eprintln!("skipping {test}: no prometheus");
        return;
    }
    let started = Instant::now();
    let out = std::env::temp_dir().join(format!("pp-ovn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("prom")).unwrap();
    let results = out.join("results.txt");

    let (args, extra) = daemonset_args();
    let (metrics_port, progress_port, stop_port, prom_port) =
        (free_port(), free_port(), free_port(), free_port());

    // PP_OVN_RULES: evaluate another rules file instead of the shipped one (to try a rework).
    let rules = std::env::var_os("PP_OVN_RULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo("alerts/packetpath.rules.yml"));
    // Prometheus first: it scrapes the exporter from the moment it answers.
    std::fs::write(
        out.join("prom/prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 15s\n  evaluation_interval: 15s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: packetpath\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let _prom_child = common::spawn_prometheus(&[], &out.join("prom"), prom_port);
    let prom = Prom { port: prom_port };
    common::wait_for("prometheus to be ready", Duration::from_secs(60), || {
        http_get(prom_port, "/-/ready").is_some()
    });

    let exporter = PathBuf::from(common::BIN);
    let mut cmd = Command::new(repo("tests/vm/run.sh"));
    cmd.args([
        "--release",
        "trixie",
        "--scenario",
        "ovn",
        "--timeout",
        "960",
    ])
    .arg("--out")
    .arg(&out)
    .arg("--exporter")
    .arg(&exporter)
    .args(["--forward", &format!("{metrics_port}:9479")])
    .args(["--forward", &format!("{progress_port}:9470")])
    .args(["--forward", &format!("{stop_port}:9471")])
    .env("PP_EXPORTER_ARGS", args.join(" "))
    .env("PP_EXPORTER_FLAGS", extra.join(" "))
    // The test stops the traffic; this is the guest's own limit.
    .env("PP_OVN_TRAFFIC_S", "780")
    .stdin(Stdio::null());
    if let Some(p) = exporter
        .parent()
        .map(|d| d.join("examples/pptraffic"))
        .filter(|p| p.exists())
    {
        cmd.arg("--pptraffic").arg(p);
    }
    let mut bed = cmd.spawn().expect("tests/vm/run.sh");

    // Watch: the guest's progress (when A's first loss left), Prometheus's alerts.
    let mut first_loss: Option<Instant> = None;
    let mut fired: Option<Instant> = None;
    let mut stop_sent = false;
    let mut history = format!("rules {}\n", rules.display());
    let mut b_named = Vec::new();
    let mut last_states = String::new();
    let status = loop {
        if let Some(s) = bed.try_wait().unwrap() {
            break s;
        }
        let now = Instant::now();
        if first_loss.is_none()
            && progress(progress_port)
                .and_then(|p| p.get("a_bad_finack").and_then(|v| v.parse::<u64>().ok()))
                .is_some_and(|n| n >= 1)
        {
            first_loss = Some(now);
            history.push_str(&format!(
                "t+{:.0}s first loss sent to A\n",
                (now - started).as_secs_f64()
            ));
        }
        let alerts = prom.alerts();
        let states = format!("{alerts:?}");
        if states != last_states {
            history.push_str(&format!(
                "t+{:.0}s {ALERT}: {states}\n",
                (now - started).as_secs_f64()
            ));
            last_states = states;
        }
        for (state, l) in &alerts {
            if names_vm(l, B_PORT, B_VM, B_TAP) {
                b_named.push(format!("{state} {l:?}"));
            }
            if state == "firing" && is_a(l) && fired.is_none() {
                fired = Some(now);
            }
        }
        let done = fired.is_some_and(|f| now - f >= AFTER_FIRING)
            || first_loss.is_some_and(|f| now - f >= FIRE_WITHIN + AFTER_FIRING);
        if done && !stop_sent {
            // A connection to the guest's port 9471 ends its traffic loop.
            stop_sent = TcpStream::connect(("127.0.0.1", stop_port))
                .and_then(|mut s| s.write_all(b"stop\n"))
                .is_ok();
            history.push_str(&format!(
                "t+{:.0}s stop sent: {stop_sent}\n",
                (now - started).as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_secs(5));
    };

    // Prometheus's own record of the whole run, then results.txt gets it for diagnosis.
    let alerts_series = prom.query(&format!(
        "max_over_time(ALERTS{{alertname=\"{ALERT}\"}}[30m])"
    ));
    let all_alerts = prom.query("max_over_time(ALERTS[30m])");
    let first_firing = prom.query(&format!(
        "min_over_time(timestamp(ALERTS{{alertname=\"{ALERT}\",alertstate=\"firing\"}})[30m:15s])"
    ));
    let vm_series = prom.query("{__name__=~\"packetpath_vm_port_.*\"}");
    // The fleet rules over the run: the VM ports affected, and the signature grouped by
    // what the node runs (one node here; its kernel must be the one named).
    let affected =
        prom.query("max_over_time(instance_device:packetpath_vm_port_affected:info[30m])");
    let by_kernel = prom.query(
        "max_over_time((count by (kernel_release, ovn_version) ((instance:packetpath_conntrack_bad_checksum_packets:increase_signature_window > 0) * on (instance) group_left (kernel_release, ovn_version) packetpath_node_info))[30m:15s])",
    );
    let up = prom.query("up");
    let rules = prom.api("/api/v1/rules").unwrap_or_default();
    history.push_str(&format!(
        "bed exited {status} after {:.0}s\n",
        started.elapsed().as_secs_f64()
    ));
    append_block(&results, "host/alert-history", &history);
    let pretty = |v: &[serde_json::Value]| serde_json::to_string_pretty(v).unwrap();
    append_block(&results, "host/alerts-over-run", &pretty(&all_alerts));
    append_block(&results, "host/first-firing", &pretty(&first_firing));
    append_block(&results, "host/vm-port-series", &pretty(&vm_series));
    append_block(&results, "host/fleet-affected", &pretty(&affected));
    append_block(&results, "host/fleet-by-kernel", &pretty(&by_kernel));
    append_block(&results, "host/up", &pretty(&up));
    append_block(
        &results,
        "host/rules",
        &serde_json::to_string_pretty(&rules["data"]).unwrap(),
    );
    append_block(
        &results,
        "host/exporter-args",
        &format!(
            "daemonset (adapted): {}\nadded by the test: {}",
            args.join(" "),
            extra.join(" ")
        ),
    );
    eprintln!("{test}: results in {}", results.display());
    assert!(
        status.success(),
        "{test}: the OVN bed failed ({status}); see {} and {}",
        results.display(),
        out.join("console.log").display()
    );
    let r = Results::read(&results);

    // The bed itself: OVN programmed the chassis, conntrack saw every invalid.
    let plan = key_values(r.get("traffic/plan"));
    let (a_bad, b_rst) = (plan["a_bad_finack"], plan["b_late_rst"]);
    assert!(a_bad >= 1, "{:?}", plan);
    let ct_invalid = conntrack_sum(r.get("final/conntrack-S"), "invalid").expect("invalid");
    assert_eq!(
        ct_invalid,
        a_bad + b_rst,
        "conntrack -S invalid = A's bad + B's RSTs"
    );

    // Everything sent arrived on the tunnel; A got the SYN and ACK of each connection (its
    // SYN/ACKs left through the tunnel), B its good SYNs: the NIC the host scrapes through
    // is in none of these counts.
    let sys = r.get("final/sysfs");
    let a_conn = plan["a_connections"];
    assert_eq!(a_conn, a_bad, "one connection per bad FIN/ACK");
    assert_eq!(
        sysfs(sys, "genev_sys_6081", "rx_packets"),
        Some(2 * a_conn + a_bad + b_rst + plan["b_good_syn"]),
        "genev_sys_6081 rx_packets"
    );
    assert_eq!(sysfs(sys, "genev_sys_6081", "tx_packets"), Some(a_conn));
    assert_eq!(sysfs(sys, B_TAP, "tx_packets"), Some(plan["b_good_syn"]));
    assert_eq!(sysfs(sys, A_TAP, "tx_packets"), Some(2 * a_conn));

    // The alert: fired for A, within the limit, and never named B.
    let first_loss = first_loss.expect("the guest never reported A's first loss");
    let fired_at = fired.unwrap_or_else(|| {
        panic!(
            "{test}: {ALERT} never fired for A (instance_id {A_VM}, port_id {A_PORT}, device {A_TAP}) \
             within {FIRE_WITHIN:?} of the first loss; history:\n{history}\nALERTS: {}",
            pretty(&alerts_series)
        )
    });
    assert!(
        fired_at - first_loss <= FIRE_WITHIN,
        "fired {:?} after the first loss",
        fired_at - first_loss
    );
    eprintln!(
        "{test}: {ALERT} fired for A {:.0}s after the first loss",
        (fired_at - first_loss).as_secs_f64()
    );
    assert!(b_named.is_empty(), "{ALERT} named VM B: {b_named:?}");
    for s in &alerts_series {
        let l = labels(&s["metric"]);
        assert!(
            !names_vm(&l, B_PORT, B_VM, B_TAP),
            "ALERTS named VM B: {l:?}"
        );
    }
    assert!(
        alerts_series.iter().any(|s| {
            let l = labels(&s["metric"]);
            is_a(&l) && l.get("alertstate").map(String::as_str) == Some("firing")
        }),
        "no firing ALERTS series for A: {}",
        pretty(&alerts_series)
    );

    // The exporter at the end (traffic stopped) against the datapath's own flows.
    let m = common::checked_metrics(r.get("final/metrics"));
    // Every collector the DaemonSet names ran, the drop monitor's among them, and the
    // node collector it runs by default.
    for c in ["conntrack_invalid", "drops", "ovs_flows", "ovsdb", "node"] {
        assert_eq!(
            m.value("packetpath_scrape_collector_success", &[("collector", c)]),
            1.0,
            "{c} in the shipped configuration"
        );
    }
    what_the_node_runs(&r, &m);
    // What a global view pulls: A among the VM ports affected, with its VM, B never; and
    // the fleet query grouping the signature by kernel names this node's kernel and OVN.
    let affected: Vec<BTreeMap<String, String>> =
        affected.iter().map(|s| labels(&s["metric"])).collect();
    assert!(
        affected.iter().any(is_a),
        "instance_device:packetpath_vm_port_affected:info never named A: {affected:?}"
    );
    assert!(
        !affected.iter().any(|l| names_vm(l, B_PORT, B_VM, B_TAP)),
        "the fleet rules named VM B: {affected:?}"
    );
    let node = m
        .select("packetpath_node_info", &[])
        .next()
        .expect("node info")
        .0;
    let named: Vec<BTreeMap<String, String>> =
        by_kernel.iter().map(|s| labels(&s["metric"])).collect();
    assert_eq!(
        named,
        vec![BTreeMap::from([
            ("kernel_release".to_owned(), node["kernel_release"].clone()),
            ("ovn_version".to_owned(), node["ovn_version"].clone()),
        ])],
        "the signature grouped by kernel release and OVN version"
    );
    let (info, one) = m
        .select("packetpath_vm_port_info", &[("device", A_TAP)])
        .next()
        .unwrap_or_else(|| panic!("no packetpath_vm_port_info for {A_TAP}"));
    assert_eq!(one, 1.0);
    assert_eq!(
        (
            info["port_id"].as_str(),
            info["instance_id"].as_str(),
            info["mac"].as_str(),
            info["status"].as_str()
        ),
        (A_PORT, A_VM, A_MAC, "active")
    );
    // zone -> device, from br-int's ct-zone-<iface-id> and the Interfaces' iface-id.
    let ext = ovs_map(r.get("final/br-int-external-ids"));
    let mut iface_dev = BTreeMap::new();
    let ifaces = r.get("final/interfaces");
    let mut name = String::new();
    for line in ifaces.lines() {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim() {
                "name" => name = v.trim().trim_matches('"').to_string(),
                "external_ids" => {
                    if let Some(id) = ovs_map(v).get("iface-id") {
                        iface_dev.insert(id.clone(), name.clone());
                    }
                }
                _ => {}
            }
        }
    }
    let zones: BTreeMap<u64, String> = ext
        .iter()
        .filter_map(|(k, v)| {
            let id = k.strip_prefix("ct-zone-")?;
            Some((v.parse().ok()?, iface_dev.get(id)?.clone()))
        })
        .collect();
    assert!(
        zones.values().any(|d| d == A_TAP) && zones.values().any(|d| d == B_TAP),
        "zones {zones:?} from {ext:?} and {iface_dev:?}"
    );
    // The exporter's counters are cumulative, the dump shows the flows alive now: they agree
    // because no flow that counted a packet died during the run (B's live on a packet every
    // 3.3 s; each of A's is made by an upcall, counts 0 and idles out 10 s later).
    let flows = dp_flows(r.get("final/dump-flows"));
    let (expected, why) = lineage(&flows, &zones);
    append_block(
        &results,
        "host/lineage",
        &format!("zones {zones:?}\n{}\n", why.join("\n")),
    );
    assert!(
        m.select("packetpath_vm_port_inbound_drop_packets_total", &[])
            .next()
            .is_some(),
        "no packetpath_vm_port_inbound_drop_packets_total series"
    );
    // The exporter's reasons compared with each of the lineage's (named first): its
    // "explicit" is the exporter's explicit and no_action together.
    let reason_groups = [
        &["ct_invalid"][..],
        &["controller"],
        &["explicit", "no_action"],
    ];
    // The lineage's packets for VM port `dev` ("" for unattributed) and a group's first reason.
    let lineage_packets = |dev: &str, reason: &str| -> f64 {
        expected
            .get(&(dev.to_string(), reason.to_string()))
            .copied()
            .unwrap_or(0) as f64
    };
    for dev in [A_TAP, B_TAP] {
        for reasons in reason_groups {
            let want = lineage_packets(dev, reasons[0]);
            let got: f64 = reasons
                .iter()
                .flat_map(|reason| {
                    m.select(
                        "packetpath_vm_port_inbound_drop_packets_total",
                        &[("device", dev), ("from_role", "tunnel"), ("reason", reason)],
                    )
                })
                .map(|(_, v)| v)
                .sum();
            let reason = reasons.join("+");
            assert_eq!(
                got,
                want,
                "{dev} {reason}: exporter vs the datapath's drop flows through their lineage:\n{}",
                why.join("\n")
            );
        }
    }
    for reasons in reason_groups {
        let want = lineage_packets("", reasons[0]);
        let got: f64 = reasons
            .iter()
            .filter_map(|reason| {
                m.get(
                    "packetpath_vm_port_inbound_drop_unattributed_packets_total",
                    &[("from_role", "tunnel"), ("reason", reason)],
                )
            })
            .sum();
        assert_eq!(got, want, "unattributed {reasons:?}:\n{}", why.join("\n"));
    }
    // The trickle is in the per-VM conntrack-invalid series whatever the datapath counted.
    let ct = |dev: &str, reason: Option<&str>| -> f64 {
        let mut l = vec![("device", dev)];
        if let Some(r) = reason {
            l.push(("reason", r));
        }
        m.select("packetpath_vm_port_conntrack_invalid_packets_total", &l)
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(
        ct(A_TAP, Some("bad_checksum")),
        a_bad as f64,
        "A's bad checksums"
    );
    assert_eq!(ct(A_TAP, None), a_bad as f64, "A's invalids");
    assert_eq!(
        ct(B_TAP, Some("bad_checksum")),
        0.0,
        "B has no bad checksums"
    );
    assert_eq!(ct(B_TAP, None), b_rst as f64, "B's late RSTs");
    eprintln!("{test}: passed in {:.0}s", started.elapsed().as_secs_f64());
}

/// The lineage on a dump from the bed: B's drop flow counts for B through recirc 0x2
/// (zone 2); A's pair (recirc 0x4, zone 1) exists with 0 packets.
#[test]
fn lineage_attributes_drop_flows_through_their_recirculation() {
    let dump = include_str!("vm/ovn-dump-flows.txt");
    let zones = BTreeMap::from([(1, A_TAP.to_string()), (2, B_TAP.to_string())]);
    let (got, why) = lineage(&dp_flows(dump), &zones);
    assert_eq!(
        got,
        BTreeMap::from([
            ((A_TAP.to_string(), "ct_invalid".to_string()), 0),
            ((B_TAP.to_string(), "ct_invalid".to_string()), 25),
        ]),
        "{why:?}"
    );
    assert_eq!(
        ovs_map(
            r#"{ct-zone-3f1c2a6e-8b1d-4c3a-9e55-1a2b3c4d5e01="1", ovn-startup-ts="1796494291927"}"#
        )["ct-zone-3f1c2a6e-8b1d-4c3a-9e55-1a2b3c4d5e01"],
        "1"
    );
}
