//! `packetpath-exporter diagnose` against the running kernel: the seed's short bad-checksum
//! FIN/ACKs injected during the interval must give exit 1 and a verdict that names the
//! checksum cause with the exact count; a quiet namespace exit 0; bad input one line and 2.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    BIN, ConntrackBed, Netns, netfilter_sysctl, require_root, send_segments, tcp, tcp_segment,
};

/// Runs diagnose in `ns`; `during` runs while it samples. Returns (status, stdout, stderr).
fn diagnose_in(ns: &Netns, args: &[&str], during: impl FnOnce()) -> (i32, String, String) {
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, BIN, "diagnose"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn diagnose");
    during();
    let out = child.wait_with_output().expect("wait for diagnose");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `n` zero-payload FIN/ACKs with a corrupt checksum (54-byte frames) into the server.
fn inject(bed: &ConntrackBed, first_port: u16, n: u16) {
    let segs: Vec<Vec<u8>> = (0..n)
        .map(|i| tcp_segment(first_port + i, 80, tcp::FIN | tcp::ACK, &[], true))
        .collect();
    // Well inside the interval: the first sample is taken within milliseconds of start.
    std::thread::sleep(Duration::from_millis(1500));
    bed.cli.enter(move || send_segments(&segs));
}

#[test]
fn bad_checksum_finacks_during_the_interval_are_the_verdict() {
    if !require_root("bad_checksum_finacks_during_the_interval_are_the_verdict") {
        return;
    }
    let bed = ConntrackBed::new();
    bed.set_checksum(true);
    let log_invalid = netfilter_sysctl(&bed.srv, "nf_conntrack_log_invalid");

    let (code, out, err) = diagnose_in(&bed.srv, &["--interval", "4s"], || inject(&bed, 42000, 7));
    assert_eq!(code, 1, "{out}\n{err}");
    assert_eq!(bed.nft_invalid_drops(), 7, "the kernel dropped exactly 7");
    assert!(
        out.contains(
            "7 packets (7 shorter than 60 bytes, mostly TCP FIN/ACK) failed conntrack's checksum check"
        ),
        "{out}"
    );
    assert!(out.contains("nf_conntrack_checksum=1)"), "{out}");
    assert!(
        out.contains("Likely fix: Set net.netfilter.nf_conntrack_checksum=0"),
        "{out}"
    );
    assert!(out.contains("LOSS bad checksum: 7 packets"), "{out}");
    assert!(out.contains("invalid 7, drop 0"), "{out}");
    assert!(out.contains("classified here for the interval"), "{out}");
    // Piped: no colour, no countdown.
    assert!(
        !out.contains('\x1b') && !err.contains("sampling"),
        "{out}{err}"
    );
    assert_eq!(
        netfilter_sysctl(&bed.srv, "nf_conntrack_log_invalid"),
        log_invalid,
        "diagnose restored what it changed"
    );

    // The same as JSON, with the class the classifier put them in.
    let (code, out, err) = diagnose_in(&bed.srv, &["--interval", "4s", "--format", "json"], || {
        inject(&bed, 43000, 5)
    });
    assert_eq!(code, 1, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(v["verdict"]["loss"], true);
    let classes = v["conntrack"]["classified"].as_array().unwrap();
    assert_eq!(classes.len(), 1, "{out}");
    assert_eq!(classes[0]["reason"], "bad_checksum");
    assert_eq!(classes[0]["size_class"], "lt60");
    assert_eq!(classes[0]["tcp_flags"], "fin");
    assert_eq!(classes[0]["packets"], 5);
    assert_eq!(v["conntrack"]["stats"]["invalid"], 5);
    assert_eq!(v["conntrack"]["classifying"], true);
    assert_eq!(v["settings"]["nf_conntrack_checksum"], 1);
    assert_eq!(bed.nft_invalid_drops(), 12);

    // With checksum validation off (the incident's fix) the same packets are no signal.
    bed.set_checksum(false);
    let (code, out, err) = diagnose_in(&bed.srv, &["--interval", "4s"], || inject(&bed, 44000, 7));
    assert!(
        !out.contains("bad_checksum") && !out.contains("LOSS"),
        "{out}\n{err}"
    );
    assert!(out.contains("nf_conntrack_checksum=0"), "{out}");
    // A FIN/ACK of no connection is still invalid (not new), only not for its checksum:
    // a warning, not a loss signal.
    assert!(out.contains("invalid 7, drop 0"), "{out}");
    assert!(
        out.contains("WARN conntrack marked 7 packets invalid: 7 tcp invalid_state fin"),
        "{out}"
    );
    assert_eq!(code, 0, "{out}\n{err}");
}

#[test]
fn a_quiet_namespace_has_no_loss_signal() {
    if !require_root("a_quiet_namespace_has_no_loss_signal") {
        return;
    }
    let ns = Netns::new("quiet");
    ns.exec("ip link add q0 type veth peer name q1 && ip link set q0 up && ip link set q1 up");
    let (code, out, err) = diagnose_in(&ns, &["--interval", "2s"], || {});
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("Verdict: no loss signal"), "{out}");
    assert!(out.contains("No loss signal in 2"), "{out}");
    // What this host lacks is reported, not an error.
    assert!(
        out.contains("ovsdb unavailable (no ovsdb-server socket"),
        "{out}"
    );
    assert!(out.contains("offload ok"), "{out}");
    assert!(err.is_empty(), "{err}");
}

fn one_line(args: &[&str], contains: &str) {
    let out = Command::new(BIN)
        .arg("diagnose")
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(
        err.starts_with("packetpath-exporter diagnose: ") && err.contains(contains),
        "{args:?}: {err}"
    );
    assert!(out.stdout.is_empty());
}

/// A server that answers every request with `body` as a 200.
fn serve(body: &'static str) -> u16 {
    serve_in_turn(vec![body.to_string()])
}

#[test]
fn bad_input_is_one_line_and_status_2() {
    one_line(&["--bogus"], "unexpected argument '--bogus'");
    one_line(&["--interval", "0s"], "must be more than zero");
    one_line(&["--format", "xml"], "invalid value 'xml'");
    one_line(
        &["--from", "node:9479"],
        "is not a URL like http://node:9479/metrics",
    );
    // Port 1 on loopback: nothing listens there.
    one_line(
        &["--from", "http://127.0.0.1:1/metrics", "--interval", "1s"],
        "cannot read http://127.0.0.1:1/metrics: Connection refused",
    );
    let port = serve("<html><body>hello</body></html>\n");
    let url = format!("http://127.0.0.1:{port}/metrics");
    one_line(
        &["--from", &url, "--interval", "1s"],
        &format!("{url} is not Prometheus metrics: line 1: not a metric sample"),
    );
    // Metrics, but not an exporter of ours.
    let port = serve("node_cpu_seconds_total{cpu=\"0\"} 12.5\n");
    let url = format!("http://127.0.0.1:{port}/metrics");
    one_line(
        &["--from", &url, "--interval", "1s"],
        &format!("the exporter at {url} has no packetpath collector series"),
    );
    let out = Command::new(BIN)
        .args(["diagnose", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        help.contains("Exit status: 0 no loss signal; 1 a loss signal; 2"),
        "{help}"
    );
    assert!(help.contains("--from <URL>"), "{help}");
}

#[test]
fn an_exporter_that_owns_the_group_lends_its_numbers() {
    if !require_root("an_exporter_that_owns_the_group_lends_its_numbers") {
        return;
    }
    let bed = ConntrackBed::new();
    bed.set_checksum(true);
    // The exporter of this namespace, on the address diagnose asks by default.
    let e = common::Exporter::start(&bed.srv, 9479, None, &["--collector.conntrack_invalid"]);
    let (code, out, err) = diagnose_in(&bed.srv, &["--interval", "4s"], || inject(&bed, 45000, 6));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains(
            "NFLOG group 0 is owned by the exporter at http://127.0.0.1:9479/metrics; its classification is used"
        ),
        "{out}"
    );
    assert!(
        out.contains("6 packets (6 shorter than 60 bytes, mostly TCP FIN/ACK) failed conntrack's checksum check"),
        "{out}"
    );
    assert!(
        out.contains("conntrack_invalid unavailable (NFLOG group 0 is already bound"),
        "{out}"
    );
    e.stop();
}

/// Reads a tmux pane (with its colour codes; lines tmux wrapped joined again, so a line
/// wider than the terminal shows as such).
fn pane(session: &str) -> String {
    common::sh(&format!("tmux capture-pane -p -e -J -t {session}"))
}

#[test]
fn on_a_terminal_it_counts_down_and_fits_the_width() {
    if !require_root("on_a_terminal_it_counts_down_and_fits_the_width") {
        return;
    }
    let ns = Netns::new("tty");
    // A 15-character uplink name that a 70-column terminal cannot show whole.
    ns.exec(
        "ip link add uplink-very-lon type veth peer name up-peer && ip addr add 10.9.1.1/24 dev uplink-very-lon \
         && ip link set uplink-very-lon up && ip link set up-peer up \
         && ip route add default via 10.9.1.2",
    );
    let session = format!("pp-diag-{}", std::process::id());
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", &session])
        .output();
    common::sh(&format!(
        "tmux new-session -d -s {session} -x 70 -y 60 \
         'ip netns exec {} {BIN} diagnose --interval 6s; echo EXIT=$?; sleep 60'",
        ns.name
    ));
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &self.0])
                .output();
        }
    }
    let _kill = Kill(session.clone());
    let mut seen = Vec::new();
    common::wait_for("the countdown", Duration::from_secs(5), || {
        let p = pane(&session);
        if let Some(i) = p.find("sampling: ") {
            seen.push(p[i..].lines().next().unwrap_or_default().trim().to_owned());
        }
        seen.len() >= 2 && seen.first() != seen.last()
    });
    assert!(seen.iter().all(|s| s.ends_with(" s left")), "{seen:?}");
    let mut done = String::new();
    common::wait_for("the report", Duration::from_secs(15), || {
        done = pane(&session);
        done.contains("EXIT=")
    });
    assert!(done.contains("EXIT=0"), "{done}");
    assert!(
        !done.contains("sampling: "),
        "the countdown is cleared: {done}"
    );
    let plain = packetpath_exporter::diagnose::output::strip_escapes(&done);
    for l in plain.lines() {
        assert!(l.chars().count() <= 70, "wider than the terminal: {l:?}");
    }
    assert!(plain.contains("uplink-very-…  uplink"), "{plain}");
    assert!(plain.contains("Verdict: no loss signal"), "{plain}");
    // The verdict in green, the headings bold.
    let verdict = done.lines().find(|l| l.contains("Verdict:")).unwrap();
    assert!(
        verdict.contains("\x1b[1m") && verdict.contains("32m"),
        "{verdict:?}"
    );
}

#[test]
fn ctrl_c_during_the_interval_restores_the_settings() {
    if !require_root("ctrl_c_during_the_interval_restores_the_settings") {
        return;
    }
    let bed = ConntrackBed::new();
    let before = netfilter_sysctl(&bed.srv, "nf_conntrack_log_invalid");
    assert_ne!(before.trim(), "255");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &bed.srv.name,
            BIN,
            "diagnose",
            "--interval",
            "60s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for(
        "diagnose to set log_invalid",
        Duration::from_secs(10),
        || netfilter_sysctl(&bed.srv, "nf_conntrack_log_invalid").trim() == "255",
    );
    // `ip netns exec` execs the command: the child is diagnose itself.
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert_eq!(err.trim(), "packetpath-exporter diagnose: interrupted");
    assert!(out.stdout.is_empty());
    assert_eq!(
        netfilter_sysctl(&bed.srv, "nf_conntrack_log_invalid"),
        before
    );
}

/// A server that answers its n-th request with `bodies[n]` (the last one after that).
fn serve_in_turn(bodies: Vec<String>) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for (n, s) in l.incoming().enumerate() {
            let Ok(mut s) = s else { continue };
            let body = &bodies[n.min(bodies.len() - 1)];
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/diagnose")
            .join(name),
    )
    .unwrap()
}

/// diagnose --from on two samples of a node with three VM ports (tests/fixtures/diagnose):
/// every VM port that lost packets on their way in is named, with its counts and reasons,
/// and the verdict names the one whose conntrack zone had the bad checksums. The text is
/// tests/golden/diagnose-vms.txt (`UPDATE_GOLDEN=1` rewrites it), the measured interval
/// written as <interval>.
/// diagnose --from on the fixtures `before` and `after`, as text with the URL and the
/// measured interval masked, against tests/golden/`golden` (`UPDATE_GOLDEN=1` rewrites
/// it); the exit status must be `code`.
fn golden_text(before: &str, after: &str, golden: &str, code: i32) {
    let port = serve_in_turn(vec![fixture(before), fixture(after)]);
    let url = format!("http://127.0.0.1:{port}/metrics");
    let out = Command::new(BIN)
        .args(["diagnose", "--from", &url, "--interval", "1s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace(&url, "<url>");
    assert_eq!(out.status.code(), Some(code), "{text}");
    let interval = text
        .split("two samples ")
        .nth(1)
        .and_then(|t| t.split(" apart").next())
        .expect("the interval in the heading")
        .to_owned();
    let text = text.replace(&format!(" {interval}"), " <interval>");
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(golden);
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(&golden, &text).unwrap();
    }
    assert_eq!(text, std::fs::read_to_string(&golden).unwrap());
}

#[test]
fn every_vm_port_that_lost_packets_is_named() {
    golden_text("before.txt", "after.txt", "diagnose-vms.txt", 1);

    // The same as JSON: one entry per VM port, the unattributed drop apart.
    let port = serve_in_turn(vec![fixture("before.txt"), fixture("after.txt")]);
    let url = format!("http://127.0.0.1:{port}/metrics");
    let out = Command::new(BIN)
        .args([
            "diagnose",
            "--from",
            &url,
            "--interval",
            "1s",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let vms = v["vm_losses"].as_array().unwrap();
    let summary: Vec<(String, String, u64)> = vms
        .iter()
        .flat_map(|vm| {
            let device = vm["device"].as_str().unwrap().to_owned();
            vm["invalid"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| {
                    (
                        "invalid".to_owned(),
                        k["reason"].as_str().unwrap().to_owned(),
                        k["packets"].as_u64().unwrap(),
                    )
                })
                .chain(vm["dropped"].as_array().unwrap().iter().map(|k| {
                    (
                        format!("dropped from {}", k["from_role"].as_str().unwrap()),
                        k["reason"].as_str().unwrap().to_owned(),
                        k["packets"].as_u64().unwrap(),
                    )
                }))
                .map(move |(what, reason, n)| (format!("{device} {what}"), reason, n))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "tap519d7cc4-75 invalid".to_owned(),
                "bad_checksum".to_owned(),
                3
            ),
            (
                "tap7f3b2a10-c4 invalid".to_owned(),
                "invalid_state".to_owned(),
                3
            ),
            (
                "tap7f3b2a10-c4 dropped from tunnel".to_owned(),
                "ct_invalid".to_owned(),
                3
            ),
            (
                "tapa1b2c3d4-e5 dropped from tunnel".to_owned(),
                "no_action".to_owned(),
                4
            ),
        ]
    );
    assert_eq!(
        vms[0]["instance_id"],
        "0c1e6a4e-6d0e-4b59-9f0a-7a3c2f1d2e3f"
    );
    assert_eq!(vms[0]["port_id"], "519d7cc4-7593-4944-af80-6a8a9b4f4e9a");
    assert_eq!(v["unattributed_drops"][0]["packets"], 1);
    assert_eq!(v["vm_attribution"], true);
}

/// diagnose --from on a node with the drops collector (tests/fixtures/diagnose/drops-*):
/// the kernel's drops on the tunnel and VM ports, those that lose VM traffic first, the
/// monitor's lost reports, and a verdict from the busiest loss reason (a guest that does
/// not read its queue); a drop flow's OVS_DROP_EXPLICIT is a warning, NOT_SPECIFIED and
/// the uplink's NO_SOCKET background. The text is tests/golden/diagnose-drops.txt.
#[test]
fn kernel_drops_on_the_vm_path_are_listed_and_judged() {
    golden_text(
        "drops-before.txt",
        "drops-after.txt",
        "diagnose-drops.txt",
        1,
    );
}
