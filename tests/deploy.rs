//! Deployment files: the systemd unit is hardened as documented and `systemd-analyze
//! verify` has nothing to say about it.

mod common;

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
        "AmbientCapabilities=CAP_NET_ADMIN CAP_SYS_ADMIN",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_SYS_ADMIN",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_NETLINK AF_UNIX AF_INET AF_INET6",
        "ExecStart=/usr/local/bin/packetpath-exporter ",
        // The state file outlives a crash (systemd would delete it on every stop).
        "RuntimeDirectory=packetpath-exporter",
        "RuntimeDirectoryPreserve=yes",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "{UNIT} lacks {line}"
        );
    }
    // conntrack_invalid must be able to write its sysctls back on exit.
    assert!(!unit.contains("ProtectKernelTunables=yes"));
    // Shipped on, by name (it changes host settings, so it is not on by default).
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    for on in ["--collector.conntrack_invalid", "--collector.drops"] {
        assert!(exec.split_whitespace().any(|a| a == on), "{exec}");
    }
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
    let _ = std::fs::remove_dir_all(&dir);
    common::assert_silent(&out, "systemd-analyze verify");
}

#[test]
fn daemonset_is_least_privilege_and_its_flags_parse() {
    let docs = common::yaml_docs(repo("deploy/kubernetes/daemonset.yaml"));
    let ds = common::kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    // SYS_ADMIN: the kernel asks it of whoever receives the drop monitor's alerts.
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN", "SYS_ADMIN"])
    );
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    // Root with every capability but NET_ADMIN and SYS_ADMIN dropped: the CRI gives a non-root container
    // no ambient capabilities (tests/container.rs runs both under the CRI's rules).
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["runAsNonRoot"], false);
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for path in [
        "/host/proc",
        "/host/proc/sys/net/netfilter",
        "/host/sys",
        "/run/packetpath-exporter",
        "/run/openvswitch",
        "/run/ovn",
    ] {
        assert!(mounts.contains(&path), "{path} not mounted");
    }
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/-/healthy", "{probe}");
    }
    for r in ["requests", "limits"] {
        assert!(
            c["resources"][r]["memory"].is_string() && c["resources"][r]["cpu"].is_string(),
            "{r}"
        );
    }
    assert_eq!(c["ports"][0]["containerPort"], 9479);
    // The arguments are flags this exporter accepts.
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let parsed = packetpath_exporter::cli::parse_from(
        std::iter::once("packetpath-exporter".to_owned()).chain(args.clone()),
    );
    assert!(parsed.is_ok(), "DaemonSet args are rejected by the CLI");
    for on in ["--collector.conntrack_invalid", "--collector.drops"] {
        assert!(
            args.iter().any(|a| a == on),
            "the DaemonSet runs {on}: {args:?}"
        );
    }
    assert_eq!(
        common::kind(&docs, "Service")["spec"]["ports"][0]["port"],
        9479
    );
    let endpoint = &common::kind(&docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    // The scrape's instance is the node, and its job the one PacketpathExporterDown
    // watches (the operator's default job would be namespace/name).
    let relabel = |target: &str| {
        endpoint["relabelings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["targetLabel"] == target)
            .unwrap_or_else(|| panic!("no relabeling sets {target}"))
            .clone()
    };
    assert_eq!(
        relabel("instance")["sourceLabels"][0],
        "__meta_kubernetes_pod_node_name"
    );
    let thresholds = std::fs::read_to_string(repo("alerts/thresholds.env")).unwrap();
    let job = thresholds
        .lines()
        .find_map(|l| l.strip_prefix("JOB="))
        .expect("JOB in thresholds.env");
    assert_eq!(relabel("job")["replacement"], job);
}

#[test]
fn prometheus_rule_and_dashboard_configmap_equal_their_sources() {
    let rule = common::yaml_docs(repo("deploy/kubernetes/prometheusrule.yaml"));
    let rules = common::yaml_docs(repo("alerts/packetpath.rules.yml"));
    assert_eq!(rule[0]["kind"], "PrometheusRule");
    assert!(
        rule[0]["spec"] == rules[0],
        "deploy/kubernetes/prometheusrule.yaml differs from alerts/packetpath.rules.yml: run deploy/kubernetes/render.sh"
    );
    // Both dashboards, the per-node one and the fleet's, and nothing else.
    let cm = common::yaml_docs(repo("deploy/kubernetes/dashboard-configmap.yaml"));
    let mut keys: Vec<&String> = cm[0]["data"].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["packetpath-fleet.json", "packetpath.json"]);
    for key in keys {
        let embedded: serde_json::Value =
            serde_json::from_str(cm[0]["data"][key].as_str().unwrap()).unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(repo(&format!("dashboards/{key}"))).unwrap(),
        )
        .unwrap();
        assert!(
            embedded == dashboard,
            "{key} in the dashboard ConfigMap is stale: run deploy/kubernetes/render.sh"
        );
    }
}

const MANIFESTS: [&str; 3] = [
    "deploy/kubernetes/daemonset.yaml",
    "deploy/kubernetes/prometheusrule.yaml",
    "deploy/kubernetes/dashboard-configmap.yaml",
];

/// Runs a schema validator on `files`: (success, stdout + stderr).
fn validate(program: &str, args: &[&str], files: &[String]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program}: {e} (tests/run.sh installs the schema validators under .cache)")
        });
    (out.status.success(), common::said(&out))
}

/// kubernetes-validate (PyPI) checks the built-in kinds strictly (unknown fields fail);
/// the prometheus-operator CRD schemas (npm @kubernetes-models/prometheus-operator) check
/// the PodMonitor and the PrometheusRule. Both must also reject a broken copy.
#[test]
fn manifests_match_the_published_schemas() {
    let kv = repo(".cache/kubernetes-validate/bin/kubernetes-validate");
    let crd_dir = Path::new(&repo(".cache/k8s-schema")).to_owned();
    // The script runs beside its node_modules; copied each time so edits take effect.
    std::fs::copy(
        repo("tests/k8s-schema/validate-crds.mjs"),
        crd_dir.join("validate-crds.mjs"),
    )
    .unwrap_or_else(|e| panic!("{}: {e}: run tests/run.sh once", crd_dir.display()));
    let crd_script = crd_dir.join("validate-crds.mjs").display().to_string();
    let files: Vec<String> = MANIFESTS.iter().map(|f| repo(f)).collect();

    let (ok, text) = validate(&kv, &["--strict"], &files);
    assert!(ok, "{text}");
    for resource in [
        "daemonset/packetpath-exporter",
        "service/packetpath-exporter",
        "configmap/packetpath-exporter-dashboard",
    ] {
        assert!(
            text.contains(&format!("passed for resource {resource} ")),
            "{resource} not validated:\n{text}"
        );
    }
    let (ok, text) = validate("node", &[&crd_script], &files);
    assert!(ok, "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("valid ")).count(),
        2,
        "{text}"
    );
    assert!(text.contains("PodMonitor/packetpath-exporter"), "{text}");
    assert!(
        text.contains("PrometheusRule/packetpath-exporter"),
        "{text}"
    );

    // Broken copies: a misspelt pod field, a PodMonitor interval that is no duration.
    let dir = std::env::temp_dir().join(format!("pp-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ds = std::fs::read_to_string(repo(MANIFESTS[0])).unwrap();
    let misspelt = dir.join("misspelt.yaml");
    std::fs::write(&misspelt, ds.replace("hostNetwork:", "hostNetwrk:")).unwrap();
    let (ok, text) = validate(&kv, &["--strict"], &[misspelt.display().to_string()]);
    assert!(!ok && text.contains("hostNetwrk"), "{text}");
    let interval = dir.join("interval.yaml");
    std::fs::write(
        &interval,
        ds.replace("interval: 30s", "interval: 30 seconds"),
    )
    .unwrap();
    let (ok, text) = validate("node", &[&crd_script], &[interval.display().to_string()]);
    assert!(
        !ok && text.contains("interval must match pattern"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// One image tag: the crate's version, in the DaemonSet and in the build and run lines of docs/deployment.md.
#[test]
fn one_image_tag() {
    let tag = format!(
        "localhost/packetpath-exporter:{}",
        env!("CARGO_PKG_VERSION")
    );
    let docs = common::yaml_docs(repo("deploy/kubernetes/daemonset.yaml"));
    let ds = common::kind(&docs, "DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        tag.as_str(),
        "the DaemonSet's image"
    );
    let readme = std::fs::read_to_string(repo("docs/deployment.md")).unwrap();
    let build = readme
        .lines()
        .find(|l| l.contains("buildah bud --target prebuilt"))
        .expect("the build line in docs/deployment.md");
    assert!(build.contains(&format!("-t {tag} ")), "{build}");
    let run = readme
        .lines()
        .skip_while(|l| !l.contains("podman run --network host"))
        .find(|l| !l.trim_end().ends_with('\\'))
        .expect("the podman run line in docs/deployment.md");
    assert!(run.trim_start().starts_with(&tag), "{run}");
}
