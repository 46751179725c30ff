//! The deployment material of `packaging/kubernetes/` and `packaging/grafana/`, validated
//! offline.
//!
//! `tools/validate-manifests` (run with the Python of `target/manifest-venv`, which
//! `tools/install-deps test` creates) checks every document strictly: Kubernetes' own kinds
//! against kubernetes-validate's shipped OpenAPI schemas (the oldest and newest Kubernetes
//! versions we claim), operator kinds against the operators' CRD schemas vendored in
//! `tests/schemas/crds/` (provenance and licences in its README), and the pods the operators
//! build from their resources (CloudNativePG's pod patch, Zalando's init containers, sidecars
//! and additional volumes, PGO's instance sidecars) against the `Pod` schema. These tests run it
//! as a child process, show that it rejects a misspelt field at each level, hold the generated
//! files (PrometheusRules, the dashboard's ConfigMap) to their sources, and check on the built
//! pods what makes each recipe work: a memory limit, the guard loaded, the exporter sharing the
//! segment directory as the segment's owner.
//!
//! Without the validator these tests fail, naming the command that installs it.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use oomguard_cli::exporter::METRIC_NAMES;
use oomguard_tests::{run_output, workspace_root};
use serde_json::Value;

/// The stacks, each a directory of `packaging/kubernetes/`.
const STACKS: [&str; 4] = ["official-image", "cloudnativepg", "zalando", "crunchy-pgo"];

/// Kubernetes versions validated against: 1.28 (cgroup v2 `memory.oom.group`: one kill takes the whole container) and the
/// newest kubernetes-validate ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.28", "1.37"];

/// `tools/validate-manifests ARGS`, run to completion: (success, stdout, stderr).
fn validate(args: &[&str]) -> (bool, String, String) {
    oomguard_tests::validate_manifests(args)
}

/// Every manifest file: the stacks' YAML and the dashboard's ConfigMap (relative paths).
fn manifest_files() -> Vec<String> {
    let mut files = Vec::new();
    for stack in STACKS {
        let dir = workspace_root().join("packaging/kubernetes").join(stack);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".yaml"))
            .collect();
        names.sort();
        assert!(names.len() >= 3, "{stack}: {names:?}");
        files.extend(
            names
                .into_iter()
                .map(|n| format!("packaging/kubernetes/{stack}/{n}")),
        );
    }
    files.push("packaging/grafana/oomguard-dashboard-configmap.yaml".to_owned());
    files
}

/// The YAML documents of `file` as JSON (parsed by PyYAML in the validator).
fn documents(file: &str) -> Vec<Value> {
    let (ok, stdout, stderr) = validate(&["--to-json", file]);
    assert!(ok, "{file}: {stderr}");
    match serde_json::from_str(&stdout).expect("JSON from --to-json") {
        Value::Array(docs) => docs,
        other => panic!("{other}"),
    }
}

fn read(relative: &str) -> String {
    let path = workspace_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn every_manifest_validates_offline_against_kubernetes_and_operator_schemas() {
    let files = manifest_files();
    for version in KUBERNETES_VERSIONS {
        let mut args = vec!["--kubernetes-version", version];
        args.extend(files.iter().map(String::as_str));
        let (ok, stdout, stderr) = validate(&args);
        assert!(ok, "Kubernetes {version}:\n{stderr}\n{stdout}");
        for file in &files {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with(&format!("ok {file} "))),
                "{file} not validated:\n{stdout}"
            );
        }
        let core = format!("by kubernetes {version} strict schema");
        for (what, by) in [
            ("StatefulSet/postgres by", core.as_str()),
            ("StatefulSet/postgres pod postgres-0 by", core.as_str()),
            ("Service/postgres by", core.as_str()),
            ("ConfigMap/acid-pg-oomguard by", core.as_str()),
            ("ConfigMap/oomguard-dashboard by", core.as_str()),
            ("Cluster/pg by", "postgresql.cnpg.io_clusters.v1.json"),
            ("Cluster/pg pod pg-1 by", core.as_str()),
            ("postgresql/acid-pg by", "acid.zalan.do_postgresqls.v1.json"),
            ("postgresql/acid-pg pod acid-pg-0 by", core.as_str()),
            (
                "PostgresCluster/hippo by",
                "postgres-operator.crunchydata.com_postgresclusters.v1beta1.json",
            ),
            (
                "PostgresCluster/hippo pod hippo-instance1-0 by",
                core.as_str(),
            ),
            ("PodMonitor/", "monitoring.coreos.com_podmonitors.v1.json"),
            (
                "PrometheusRule/",
                "monitoring.coreos.com_prometheusrules.v1.json",
            ),
        ] {
            assert!(
                stdout.lines().any(|l| l.contains(what) && l.contains(by)),
                "no line with {what:?} and {by:?}:\n{stdout}"
            );
        }
        assert_eq!(
            stdout.lines().filter(|l| l.contains("PodMonitor/")).count(),
            4,
            "a PodMonitor per stack"
        );
    }
}

/// Writes `text` with `from` replaced by `to` (which must occur) into `dir/name`.
fn mutated(dir: &Path, source: &str, from: &str, to: &str, name: &str) -> String {
    let text = read(source);
    assert!(text.contains(from), "{source} has no {from:?}");
    let path = dir.join(name);
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path.display().to_string()
}

#[test]
fn the_validator_rejects_a_misspelt_field_at_every_level() {
    let dir = tempfile::tempdir().unwrap();
    let k = "packaging/kubernetes";
    let cases = [
        (
            mutated(
                dir.path(),
                &format!("{k}/official-image/postgres.yaml"),
                "  serviceName: postgres",
                "  serviceName: postgres",
                "unchanged.yaml",
            ),
            None,
        ),
        (
            mutated(
                dir.path(),
                &format!("{k}/official-image/postgres.yaml"),
                "readOnly: true",
                "readOnlyy: true",
                "statefulset.yaml",
            ),
            Some("'readOnlyy' was unexpected"),
        ),
        (
            mutated(
                dir.path(),
                &format!("{k}/cloudnativepg/cluster.yaml"),
                "  instances: 3",
                "  instance: 3",
                "cluster.yaml",
            ),
            Some("'instance' was unexpected"),
        ),
        (
            mutated(
                dir.path(),
                &format!("{k}/cloudnativepg/cluster.yaml"),
                r#""readOnly": true"#,
                r#""readonly": true"#,
                "podpatch.yaml",
            ),
            Some("'readonly' was unexpected"),
        ),
        (
            mutated(
                dir.path(),
                &format!("{k}/cloudnativepg/cluster.yaml"),
                "/spec/containers/0/volumeMounts/-",
                "/spec/containerz/0/volumeMounts/-",
                "podpatch-path.yaml",
            ),
            Some("cnpg.io/podPatch does not apply"),
        ),
        (
            mutated(
                dir.path(),
                &format!("{k}/zalando/postgresql.yaml"),
                "        - key: ld.so.preload",
                "        - kee: ld.so.preload",
                "zalando.yaml",
            ),
            Some("configMap/items/0: 'key' is a required property"),
        ),
        (
            mutated(
                dir.path(),
                &format!("{k}/zalando/postgresql.yaml"),
                "targetContainers: [\"postgres\", \"oomguard-exporter\"]",
                "targetContainers: [\"postgres\", \"exporter\"]",
                "zalando-target.yaml",
            ),
            Some("targets no such container"),
        ),
        (
            mutated(
                dir.path(),
                &format!("{k}/crunchy-pgo/postgrescluster.yaml"),
                "      replicas: 2",
                "      replica: 2",
                "pgo.yaml",
            ),
            Some("'replica' was unexpected"),
        ),
        (
            mutated(
                dir.path(),
                &format!("{k}/crunchy-pgo/postgrescluster.yaml"),
                "        - name: dshm",
                "        - name: shm",
                "pgo-mount.yaml",
            ),
            Some("mounts volume 'shm', which the pod does not have"),
        ),
        (
            mutated(
                dir.path(),
                &format!("{k}/zalando/podmonitor.yaml"),
                "    - port: oomguard",
                "    - prot: oomguard",
                "podmonitor.yaml",
            ),
            Some("'prot' was unexpected"),
        ),
    ];
    for (file, expected) in &cases {
        let (ok, stdout, stderr) = validate(&[file.as_str()]);
        match expected {
            None => assert!(ok, "the unchanged copy passes: {stderr}"),
            Some(message) => {
                assert!(!ok, "{file} passed:\n{stdout}");
                assert!(
                    stderr.contains(message),
                    "{file}: expected {message:?} in:\n{stderr}"
                );
            }
        }
    }
    // A kind with no schema is an error, not a skip.
    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(
        &unknown,
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n",
    )
    .unwrap();
    let (ok, _, stderr) = validate(&[unknown.to_str().unwrap()]);
    assert!(!ok && stderr.contains("Widget"), "{stderr}");
}

#[test]
fn generated_files_are_what_the_generator_writes_from_their_sources() {
    let out = tempfile::tempdir().unwrap();
    let (status, _, stderr) = run_output(
        Command::new("bash")
            .arg(workspace_root().join("tools/generate-packaging"))
            .arg(out.path()),
    );
    assert!(status.status.success(), "{stderr}");
    let mut generated = vec!["packaging/grafana/oomguard-dashboard-configmap.yaml".to_owned()];
    generated
        .extend(STACKS.map(|s| format!("packaging/kubernetes/{s}/oomguard-prometheusrule.yaml")));
    for file in &generated {
        let fresh = std::fs::read_to_string(out.path().join(file)).unwrap();
        assert!(
            fresh == read(file),
            "{file} differs from what tools/generate-packaging writes: run it"
        );
    }
}

#[test]
fn each_prometheus_rule_holds_exactly_the_rule_file_groups() {
    let rules = documents("packaging/prometheus/oomguard-alerts.yaml");
    let groups = &rules[0]["groups"];
    assert!(groups.as_array().is_some_and(|g| !g.is_empty()), "{groups}");
    for stack in STACKS {
        let file = format!("packaging/kubernetes/{stack}/oomguard-prometheusrule.yaml");
        let docs = documents(&file);
        assert_eq!(docs.len(), 1, "{file}");
        assert_eq!(docs[0]["kind"], "PrometheusRule");
        assert_eq!(&docs[0]["spec"]["groups"], groups, "{file} drifted");
    }
}

/// The container named `name` of `pod`, in `containers` or `initContainers`.
fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    ["containers", "initContainers"]
        .iter()
        .flat_map(|group| pod["spec"][group].as_array().into_iter().flatten())
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {pod}"))
}

fn env_of<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

/// The volume `container` mounts at `path`, and the mount.
fn mounted_at<'a>(pod: &'a Value, container: &'a Value, path: &str) -> (&'a Value, &'a Value) {
    let mount = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"] == path)
        .unwrap_or_else(|| panic!("{} mounts nothing at {path}", container["name"]));
    let volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    (volume, mount)
}

fn is_memory_empty_dir(volume: &Value) -> bool {
    volume["emptyDir"]["medium"] == "Memory"
}

/// The uid a container runs as: its own securityContext, else the pod's.
fn uid_of(pod: &Value, container: &Value) -> Option<i64> {
    container["securityContext"]["runAsUser"]
        .as_i64()
        .or_else(|| pod["spec"]["securityContext"]["runAsUser"].as_i64())
}

/// Where `container` breaks the `restricted` Pod Security Standard (the fields it checks for a
/// container: privilege escalation, capabilities, non-root, seccomp), taking the pod's security
/// context where the container's does not say; empty when it complies.
fn restricted_violations(pod: &Value, container: &Value) -> Vec<String> {
    let own = &container["securityContext"];
    let pods = &pod["spec"]["securityContext"];
    let either = |field: &str| {
        if own[field].is_null() {
            &pods[field]
        } else {
            &own[field]
        }
    };
    let mut violations = Vec::new();
    if own["allowPrivilegeEscalation"] != false {
        violations.push("allowPrivilegeEscalation is not false".to_owned());
    }
    if !own["privileged"].is_null() && own["privileged"] != false {
        violations.push("privileged".to_owned());
    }
    let dropped = own["capabilities"]["drop"].as_array();
    if !dropped.is_some_and(|d| d.iter().any(|c| c == "ALL")) {
        violations.push("capabilities.drop lacks ALL".to_owned());
    }
    let added = own["capabilities"]["add"].as_array().into_iter().flatten();
    for capability in added.filter(|c| *c != "NET_BIND_SERVICE") {
        violations.push(format!("adds capability {capability}"));
    }
    if either("runAsNonRoot") != true {
        violations.push("runAsNonRoot is not true".to_owned());
    }
    if either("runAsUser") == 0 {
        violations.push("runAsUser is 0".to_owned());
    }
    let seccomp = either("seccompProfile")["type"].as_str();
    if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
        violations.push(format!("seccompProfile.type is {seccomp:?}"));
    }
    violations
}

/// `KEY=VALUE` of a configuration file's text.
fn conf_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn each_recipe_limits_memory_loads_the_guard_and_shares_the_segment_with_the_exporter() {
    let pods_file = tempfile::NamedTempFile::new().unwrap();
    let pods_path = pods_file.path().to_str().unwrap().to_owned();
    let files: Vec<String> = STACKS
        .iter()
        .map(|s| {
            let name = match *s {
                "official-image" => "postgres.yaml",
                "cloudnativepg" => "cluster.yaml",
                "zalando" => "postgresql.yaml",
                _ => "postgrescluster.yaml",
            };
            format!("packaging/kubernetes/{s}/{name}")
        })
        .collect();
    let mut args = vec!["--pods", pods_path.as_str()];
    args.extend(files.iter().map(String::as_str));
    let (ok, _, stderr) = validate(&args);
    assert!(ok, "{stderr}");
    let pods: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(pods_file.path()).unwrap()).unwrap();
    assert_eq!(pods.len(), 4, "one pod per stack");

    let zalando_conf = documents("packaging/kubernetes/zalando/postgresql.yaml")[0]["data"].clone();
    let pgo_conf = read("packaging/kubernetes/crunchy-pgo/oomguard.conf");
    let dockerfile = read("packaging/kubernetes/crunchy-pgo/Dockerfile");

    // (stack, postgres container, postgres uid)
    for (stack, entry, (postgres_name, uid)) in STACKS
        .iter()
        .zip(&pods)
        .zip([
            ("postgres", 999),
            ("postgres", 26),
            ("postgres", 101),
            ("database", 26),
        ])
        .map(|((s, p), c)| (*s, p, c))
    {
        let pod = &entry["pod"];
        let postgres = container(pod, postgres_name);
        let exporter = container(pod, "oomguard-exporter");
        assert!(
            postgres["resources"]["limits"]["memory"].is_string(),
            "{stack}: the guard derives its limit from a memory limit"
        );
        let (shm, _) = mounted_at(pod, postgres, "/dev/shm");
        assert!(
            is_memory_empty_dir(shm),
            "{stack}: /dev/shm is a memory emptyDir"
        );

        // Where the guard keeps its segment.
        let segment_dir = match stack {
            "zalando" => conf_value(
                zalando_conf["oomguard.conf"].as_str().unwrap(),
                "OOM_GUARD_DIR",
            ),
            "crunchy-pgo" => conf_value(&pgo_conf, "OOM_GUARD_DIR"),
            _ => env_of(postgres, "OOM_GUARD_DIR"),
        }
        .unwrap_or_else(|| panic!("{stack}: OOM_GUARD_DIR not set for PostgreSQL"));
        assert_eq!(
            env_of(exporter, "OOM_GUARD_DIR"),
            Some(segment_dir),
            "{stack}"
        );
        let (theirs, _) = mounted_at(pod, postgres, segment_dir);
        let (ours, _) = mounted_at(pod, exporter, segment_dir);
        assert_eq!(theirs["name"], ours["name"], "{stack}: one volume for both");
        assert!(
            is_memory_empty_dir(ours),
            "{stack}: the segment is in memory"
        );
        assert_eq!(
            uid_of(pod, exporter),
            Some(uid),
            "{stack}: exporter as the postgres uid"
        );

        let command: Vec<&str> = exporter["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(
            command
                .windows(3)
                .any(|w| w == ["exporter", "--listen", "0.0.0.0:10187"]),
            "{stack}: {command:?}"
        );
        assert_eq!(exporter["ports"][0]["name"], "oomguard", "{stack}");
        assert_eq!(exporter["ports"][0]["containerPort"], 10187, "{stack}");

        // Pod security: what the recipe adds meets `restricted` (Zalando's operator copies no
        // securityContext of a sidecar: there only the init container can).
        let added: &[&str] = match stack {
            "crunchy-pgo" => &["oomguard-exporter"],
            "zalando" => &["oomguard-install"],
            _ => &["oomguard-install", "oomguard-exporter"],
        };
        for name in added {
            let violations = restricted_violations(pod, container(pod, name));
            assert!(violations.is_empty(), "{stack} {name}: {violations:?}");
        }
        // The check itself sees a container that breaks the standard.
        let mut loose = exporter.clone();
        loose["securityContext"] = serde_json::json!({"runAsUser": 0});
        let violations = restricted_violations(pod, &loose);
        for expected in [
            "allowPrivilegeEscalation is not false",
            "capabilities.drop lacks ALL",
            "runAsUser is 0",
        ] {
            assert!(violations.iter().any(|v| v == expected), "{violations:?}");
        }

        // How the guard is loaded.
        let library = match stack {
            "official-image" | "cloudnativepg" => {
                env_of(postgres, "LD_PRELOAD").unwrap().to_owned()
            }
            "zalando" => {
                let (volume, mount) = mounted_at(pod, postgres, "/etc/ld.so.preload");
                assert_eq!(mount["subPath"], "ld.so.preload");
                assert_eq!(volume["configMap"]["name"], "acid-pg-oomguard");
                let (conf, _) = mounted_at(pod, postgres, "/etc/oomguard");
                assert_eq!(conf["configMap"]["items"][0]["path"], "oomguard.conf");
                zalando_conf["ld.so.preload"]
                    .as_str()
                    .unwrap()
                    .trim()
                    .to_owned()
            }
            _ => {
                // Modes set explicitly: the checkout's could be 0664, which the guard rejects.
                assert!(dockerfile
                    .contains("COPY --chmod=0644 oomguard.conf /etc/oomguard/oomguard.conf"));
                let line = "RUN echo /usr/lib64/oomguard/liboomguard.so >> /etc/ld.so.preload";
                assert!(dockerfile.contains(line), "{dockerfile}");
                assert!(dockerfile.contains(
                    "--chmod=0644 /out/liboomguard.so /usr/lib64/oomguard/liboomguard.so"
                ));
                // The build fails unless the loader really starts the guard inside postgres:
                // the pattern it greps for is what glibc's LD_DEBUG=libs prints, here too.
                let pattern = "calling init: /usr/lib64/oomguard/liboomguard.so";
                assert!(dockerfile.contains(pattern), "{dockerfile}");
                let library = oomguard_tests::library_path();
                let postgres = oomguard_cluster::PgBinaries::discover()
                    .expect("PostgreSQL server binaries")
                    .postgres;
                let (_, _, stderr) = oomguard_tests::run_output(
                    oomguard_tests::plain(&mut std::process::Command::new(&postgres))
                        .env("LD_DEBUG", "libs")
                        .env("LD_PRELOAD", &library)
                        .arg("--version"),
                );
                let here = format!("calling init: {}", library.display());
                assert!(stderr.contains(&here), "LD_DEBUG=libs said:\n{stderr}");
                continue;
            }
        };
        // An init container installs it into the volume the library path lies in.
        let install_dir = Path::new(&library)
            .parent()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let (lib_volume, _) = mounted_at(pod, postgres, &install_dir);
        let installer = container(pod, "oomguard-install");
        let (installed, _) = mounted_at(pod, installer, &install_dir);
        assert_eq!(lib_volume["name"], installed["name"], "{stack}");
        let install: Vec<&str> = installer["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            install[1..],
            ["install", "--to", install_dir.as_str()],
            "{stack}"
        );
        assert!(library.ends_with("/liboomguard.so"), "{stack}: {library}");
    }
}

/// Every `oomguard_…` identifier in `text`.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("oomguard_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_dashboard_queries_only_exported_metrics_and_its_config_map_embeds_it() {
    let text = read("packaging/grafana/oomguard-dashboard.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap().to_owned();
            let names = metric_names_in(&expr);
            assert!(!names.is_empty(), "{expr}");
            // Every domain-labelled series is filtered by the `domain` variable.
            let unlabelled = ["oomguard_up", "oomguard_stale_domains"];
            if names.iter().any(|n| !unlabelled.contains(&n.as_str())) {
                assert!(expr.contains("domain=~\"$domain\""), "{expr}");
            }
            exprs.push(expr);
        }
    }
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names_in(e)).collect();
    let known: BTreeSet<String> = METRIC_NAMES.iter().map(|n| n.to_string()).collect();
    let unknown: Vec<&String> = used.difference(&known).collect();
    assert!(unknown.is_empty(), "not exported: {unknown:?}");
    for wanted in [
        "oomguard_allocated_bytes",
        "oomguard_limit_bytes",
        "oomguard_cgroup_memory_usage_bytes",
        "oomguard_cgroup_memory_limit_bytes",
        "oomguard_denied_allocations_total",
        "oomguard_refusals_total",
        "oomguard_kernel_tight",
        "oomguard_reclaimed_orphan_bytes_total",
        "oomguard_tracked_processes",
        "oomguard_stale_domains",
    ] {
        assert!(
            used.contains(wanted),
            "the dashboard does not show {wanted}"
        );
    }
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("rate(oomguard_denied_allocations_total")),
        "refusals as a rate"
    );
    // Budget refusals (a session's own limit) and the container short of memory read apart.
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("domain, cause)") && e.contains("oomguard_refusals_total")),
        "refusals by cause"
    );
    // Domains of different pods stay apart: a default domain name is the same in every pod
    // (cgroup v2 paths inside containers all read `0::/`), so every series is selected by
    // namespace and pod as well (variables from the scrape's labels).
    for expr in &exprs {
        assert!(
            expr.contains(r#"pod=~"$pod""#) && expr.contains(r#"namespace=~"$namespace""#),
            "not selected by namespace and pod: {expr}"
        );
    }
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let domain = variables
        .iter()
        .find(|v| v["name"] == "domain")
        .expect("a domain variable");
    assert!(
        domain["definition"].as_str().unwrap().contains("domain)"),
        "{domain}"
    );

    let docs = documents("packaging/grafana/oomguard-dashboard-configmap.yaml");
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        docs[0]["data"]["oomguard-dashboard.json"].as_str(),
        Some(text.as_str()),
        "the ConfigMap embeds exactly the dashboard JSON"
    );
}
