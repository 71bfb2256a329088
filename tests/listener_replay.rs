//! Listeners run from recorded bytes: the conntrack_invalid collector, built through the
//! exporter's own command line, replays an NFLOG stream captured from this kernel
//! (tests/fixtures/nflog/nflog_group0.stream) through the subscription transport, the
//! same code that reads the kernel's socket, and changes and restores settings in a
//! procfs stand-in instead of the host's.
//!
//! Refresh the recording (as root) with:
//!
//!     cargo test --test listener_replay -- --ignored

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{ConntrackBed, Exporter, Metrics, require_root, sh, wait_for};
use packetpath_exporter::cli::parse_from;
use packetpath_exporter::scrape::Scraper;

/// What the recording holds: corrupt-checksum SYNs, each logged by conntrack as invalid.
const BAD_SYNS: u16 = 5;
const CLASS: &[(&str, &str)] = &[
    ("family", "ipv4"),
    ("protocol", "tcp"),
    ("reason", "bad_checksum"),
    ("size_class", "lt60"),
    ("tcp_flags", "syn"),
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nflog")
}

/// The three settings the collector changes, in a procfs stand-in, as a host has them
/// before anything logs invalid packets.
fn procfs_stand_in() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pp-replay-procfs-{}", std::process::id()));
    let nf = dir.join("sys/net/netfilter");
    std::fs::create_dir_all(nf.join("nf_log")).unwrap();
    std::fs::write(nf.join("nf_conntrack_log_invalid"), "0\n").unwrap();
    std::fs::write(nf.join("nf_log/2"), "NONE\n").unwrap();
    std::fs::write(nf.join("nf_log/10"), "NONE\n").unwrap();
    dir
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap().trim().to_owned()
}

#[test]
fn the_nflog_listener_replays_a_recorded_stream_exactly() {
    let procfs = procfs_stand_in();
    let nf = procfs.join("sys/net/netfilter");
    let state = procfs.join("state");
    let cli = parse_from([
        "packetpath-exporter".into(),
        "--collector.disable-defaults".into(),
        "--collector.conntrack_invalid".into(),
        format!("--path.procfs={}", procfs.display()),
        format!("--debug.netlink-replay-dir={}", fixtures().display()),
        format!(
            "--collector.conntrack_invalid.state-file={}",
            state.display()
        ),
    ])
    .unwrap_or_else(|_| panic!("flags rejected"));
    let (collectors, resources) = cli.build().unwrap();
    let scraper = Scraper::new(collectors, resources, Duration::from_secs(5));
    // While it runs, the settings are the collector's, and the originals are on record.
    assert_eq!(read(&nf.join("nf_conntrack_log_invalid")), "255");
    assert_eq!(read(&nf.join("nf_log/2")), "nfnetlink_log");
    assert!(read(&state).contains("nf_conntrack_log_invalid 0"));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let text = String::from_utf8(rt.block_on(scraper.scrape()).to_vec()).unwrap();
        let m = Metrics::parse(&text);
        let heard = m.value("packetpath_conntrack_invalid_log_messages_total", &[]);
        if heard >= f64::from(BAD_SYNS) || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        m.value(
            "packetpath_scrape_collector_success",
            &[("collector", "conntrack_invalid")]
        ),
        1.0
    );
    assert_eq!(
        m.value("packetpath_conntrack_invalid_log_messages_total", &[]),
        f64::from(BAD_SYNS)
    );
    assert_eq!(
        m.value("packetpath_conntrack_invalid_packets_total", CLASS),
        f64::from(BAD_SYNS)
    );
    assert_eq!(
        m.value("packetpath_conntrack_invalid_log_lost_total", &[]),
        0.0
    );
    assert_eq!(
        m.value("packetpath_conntrack_invalid_log_errors_total", &[]),
        0.0
    );

    // Shutdown puts the stand-in's settings back and forgets the state file.
    scraper.shutdown();
    assert_eq!(read(&nf.join("nf_conntrack_log_invalid")), "0");
    assert_eq!(read(&nf.join("nf_log/2")), "NONE");
    assert_eq!(read(&nf.join("nf_log/10")), "NONE");
    assert!(!state.exists());
    std::fs::remove_dir_all(&procfs).unwrap();
}

#[test]
#[ignore = "records tests/fixtures/nflog from the running kernel; run with --ignored as root"]
fn record_the_nflog_stream() {
    assert!(require_root("record_the_nflog_stream"));
    let out = fixtures();
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let mut bed = ConntrackBed::new();
    bed.set_checksum(true);
    let state = std::env::temp_dir().join(format!("pp-record-{}.state", std::process::id()));
    let e = Exporter::start(
        &bed.srv,
        19491,
        None,
        &[
            "--collector.disable-defaults",
            "--collector.conntrack_invalid",
            &format!(
                "--collector.conntrack_invalid.state-file={}",
                state.display()
            ),
            &format!("--debug.netlink-capture-dir={}", out.display()),
        ],
    );
    bed.send(BAD_SYNS, 0);
    wait_for("the kernel's invalid drops", Duration::from_secs(5), || {
        bed.nft_invalid_drops() == u64::from(BAD_SYNS)
    });
    wait_for("the exporter's messages", Duration::from_secs(5), || {
        e.scrape()
            .get("packetpath_conntrack_invalid_log_messages_total", &[])
            == Some(f64::from(BAD_SYNS))
    });
    let m = e.scrape();
    assert_eq!(
        m.value("packetpath_conntrack_invalid_packets_total", CLASS),
        f64::from(BAD_SYNS)
    );
    e.stop();
    sh(&format!(
        "chmod 0755 {0} && chmod 0644 {0}/*",
        out.display()
    ));
    let stream = out.join("nflog_group0.stream");
    assert!(std::fs::metadata(&stream).unwrap().len() > 0);
}
