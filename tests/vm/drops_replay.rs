//! The drops scenario's `capture` phase replayed: what netlink gave an exporter running
//! the drops collector alone, recorded in the guest (`--debug.netlink-capture-dir`),
//! handed back in hex, and replayed here through the exporter's replay transport. Included
//! by tests/kernel_drops_vm.rs.

use std::time::Duration;

use super::DROPS;
use super::common::Metrics;
use super::vm_results::Results;

/// The capture phase's recording (what netlink gave an exporter running the drops
/// collector alone), replayed through the exporter's own replay transport on this host:
/// the same code, from the recorded bytes, counts what the live exporter counted.
pub fn replay_capture(rel: &str, r: &Results, live: &Metrics) {
    let dir = std::env::temp_dir().join(format!("pp-drops-replay-{rel}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for name in r.names() {
        let Some(file) = name.strip_prefix("capture/") else {
            continue;
        };
        if !(file.ends_with(".bin") || file.ends_with(".stream")) {
            continue;
        }
        let bytes: Vec<u8> = r
            .get(name)
            .split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap_or_else(|_| panic!("{rel}: {name}: {h}")))
            .collect();
        std::fs::write(dir.join(file), bytes).unwrap();
    }
    assert!(
        dir.join("net_dm_alerts.stream").exists(),
        "{rel}: no recording of the alerts: {:?}",
        r.names()
    );
    let state = dir.join("drop-monitor.state");
    let cli = packetpath_exporter::cli::parse_from([
        "packetpath-exporter".to_owned(),
        "--collector.disable-defaults".into(),
        "--collector.drops".into(),
        "--collector.ovsdb.socket=/nonexistent/db.sock".into(),
        format!("--collector.drops.state-file={}", state.display()),
        format!("--debug.netlink-replay-dir={}", dir.display()),
    ])
    .unwrap_or_else(|_| panic!("flags rejected"));
    let (collectors, resources) = cli.build().unwrap();
    let scraper =
        packetpath_exporter::scrape::Scraper::new(collectors, resources, Duration::from_secs(5));
    assert!(
        std::fs::read_to_string(&state)
            .unwrap_or_default()
            .contains("mode 1"),
        "{rel}: the replayed session is recorded in its state file"
    );
    // The series the live exporter had, lo's aside (its scrapes' own connections).
    let want: Vec<(String, f64)> = live
        .select(DROPS, &[])
        .filter(|(l, _)| l["device"] != "lo")
        .map(|(l, v)| (format!("{l:?}"), v))
        .collect();
    assert!(want.iter().any(|(_, v)| *v > 0.0), "{rel}: {want:?}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The listener reads the whole recording at once; its first periodic check, 2 s in,
    // finds the recording's end and ends the session, so the scrapes come before.
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    let got = loop {
        let text = String::from_utf8(rt.block_on(scraper.scrape()).to_vec()).unwrap();
        let m = Metrics::parse(&text);
        let got: Vec<(String, f64)> = m
            .select(DROPS, &[])
            .filter(|(l, _)| l["device"] != "lo")
            .map(|(l, v)| (format!("{l:?}"), v))
            .collect();
        if got == want || std::time::Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(got, want, "{rel}: replayed against live");
    scraper.shutdown();
    assert!(!state.exists(), "{rel}: state file left after shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}
