//! Deployment files: the systemd unit is hardened as documented and `systemd-analyze
//! verify` has nothing to say about it.

use std::path::Path;
use std::process::Command;

fn repo(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(p)
        .display()
        .to_string()
}

const UNIT: &str = "deploy/systemd/packetpath-exporter.service";

#[test]
fn systemd_unit_is_hardened() {
    let unit = std::fs::read_to_string(repo(UNIT)).unwrap();
    for line in [
        "DynamicUser=yes",
        "AmbientCapabilities=CAP_NET_ADMIN",
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_NETLINK AF_UNIX AF_INET AF_INET6",
        "ExecStart=/usr/local/bin/packetpath-exporter ",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "{UNIT} lacks {line}"
        );
    }
    // conntrack_invalid must be able to write its sysctls back on exit.
    assert!(!unit.contains("ProtectKernelTunables=yes"));
}

#[test]
fn systemd_analyze_verify_is_clean() {
    // Verify the unit as shipped, with ExecStart pointing at the binary under test (verify
    // checks that the executable exists).
    let unit = std::fs::read_to_string(repo(UNIT)).unwrap();
    let dir = std::env::temp_dir().join(format!("pp-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("packetpath-exporter.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/packetpath-exporter",
            env!("CARGO_BIN_EXE_packetpath-exporter"),
        ),
    )
    .unwrap();
    let out = match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
    {
        Ok(o) => o,
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("systemd-analyze not available ({e}); skipping outside CI");
            return;
        }
        Err(e) => panic!("systemd-analyze is required under CI=true: {e}"),
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}
