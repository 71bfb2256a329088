//! The Debian package (packaging/deb/build.sh) installed into a throwaway root that has
//! nothing but an empty dpkg database, as dpkg installs it anywhere: its files where Debian
//! keeps them, the systemd unit the one in deploy/systemd run from /usr/bin, the rules
//! promtool-clean, and the exporter started from the installed binary serving /metrics.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{KillOnDrop, said, wait_for};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}:\n{}", said(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_debian_package_installs_and_its_exporter_runs() {
    if !Path::new("/usr/bin/dpkg-deb").exists() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "dpkg-deb is needed under CI=true"
        );
        eprintln!("no dpkg-deb; skipping outside CI");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("pp-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let binary = common::static_binary();
    let deb = run(Command::new(repo.join("packaging/deb/build.sh"))
        .arg(&binary)
        .arg(dir.join("out")));
    let deb = deb.trim();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        deb.ends_with(&format!("packetpath-exporter_{version}_amd64.deb")),
        "{deb}"
    );
    let info = run(Command::new("dpkg-deb").args(["--field", deb]));
    for field in [
        "Package: packetpath-exporter",
        &format!("Version: {version}"),
        "Architecture: amd64",
    ] {
        assert!(info.contains(field), "{info}");
    }

    // A root with nothing in it but an empty dpkg database.
    let root = dir.join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--log=/dev/null", "--force-script-chrootless", "-i", deb]));
    let status = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["-s", "packetpath-exporter"]));
    assert!(status.contains("Status: install ok installed"), "{status}");
    let files = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["-L", "packetpath-exporter"]));
    for f in [
        "/usr/bin/packetpath-exporter",
        "/usr/lib/systemd/system/packetpath-exporter.service",
        "/usr/share/packetpath-exporter/alerts/packetpath.rules.yml",
        "/usr/share/packetpath-exporter/alerts/thresholds.env",
        "/usr/share/packetpath-exporter/alerts/render.sh",
        "/usr/share/packetpath-exporter/dashboards/packetpath.json",
        "/usr/share/packetpath-exporter/dashboards/packetpath-fleet.json",
        "/usr/share/doc/packetpath-exporter/copyright",
        "/usr/share/doc/packetpath-exporter/docs/runbooks.md",
    ] {
        assert!(
            files.lines().any(|l| l == f),
            "{f} not in the package:\n{files}"
        );
        assert!(root.join(&f[1..]).exists(), "{f} not installed");
    }
    // The unit is the repository's, its own user, capabilities and state directory with
    // it, run from where the package puts the binary.
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/packetpath-exporter.service"))
            .unwrap();
    let shipped =
        std::fs::read_to_string(repo.join("deploy/systemd/packetpath-exporter.service")).unwrap();
    assert_eq!(
        unit,
        shipped.replace(
            "ExecStart=/usr/local/bin/packetpath-exporter",
            "ExecStart=/usr/bin/packetpath-exporter"
        )
    );
    for line in [
        "DynamicUser=yes",
        "AmbientCapabilities=CAP_NET_ADMIN CAP_SYS_ADMIN",
        "RuntimeDirectory=packetpath-exporter",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line}");
    }
    let rules = root.join("usr/share/packetpath-exporter/alerts/packetpath.rules.yml");
    if Path::new("/usr/bin/promtool").exists() {
        run(Command::new("promtool")
            .args(["check", "rules"])
            .arg(&rules));
    }

    // The installed exporter runs and serves.
    let exe = root.join("usr/bin/packetpath-exporter");
    let v = run(Command::new(&exe).arg("--version"));
    assert!(
        v.starts_with(&format!("packetpath-exporter {version} (revision ")),
        "{v}"
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _child = KillOnDrop(
        Command::new(&exe)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args([
                "--collector.disable-defaults",
                "--collector.interfaces",
                "--collector.node",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut body = String::new();
    wait_for(
        "the installed exporter to serve",
        Duration::from_secs(10),
        || {
            body = Command::new("curl")
                .args([
                    "-s",
                    "--max-time",
                    "5",
                    &format!("http://127.0.0.1:{port}/metrics"),
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            body.contains("packetpath_scrape_collector_success{collector=\"interfaces\"} 1")
        },
    );
    assert!(body.contains("packetpath_node_info{"), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}
