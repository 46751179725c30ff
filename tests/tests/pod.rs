//! The official-image Kubernetes recipe run as a real pod (`podman kube play`), scraped by a real
//! Prometheus with the recipe's alert rules, then restarted 50 times.
//!
//! The pod is the one `tools/validate-manifests --pods` builds from
//! `packaging/kubernetes/official-image/postgres.yaml` (the StatefulSet's template), changed only
//! where a single machine without a registry or a cluster needs it: the images are the local
//! ones (`containers::images`, `containers::artifact_image`), the memory limit is 768Mi instead
//! of 2Gi (so that the hog meets it quickly), the pod uses the host's network with PostgreSQL
//! listening on its socket only (shared with the test through a directory) and the exporter on
//! a free loopback port (no container ports: podman maps them, which the host's network cannot
//! have), the volume claim and the emptyDirs are host directories (the test counts
//! the segments in one), the password is a literal, and the readiness probe (TCP) is dropped.
//! The init container, the securityContext (the restricted settings, uid 999), the environment
//! (`LD_PRELOAD`, `OOM_GUARD_DIR`) and the exporter's command are the recipe's.
//!
//! - [`the_recipe_pod_refuses_the_hog_and_prometheus_sees_it`]: the init container copies the
//!   guard, PostgreSQL 17 loads it, the hog ends in `ERROR: out of memory` (`oom_kill` unchanged,
//!   both sessions answer); Prometheus (Debian's) scrapes the sidecar: `oomguard_refusals_total`
//!   moves, `OomguardRefusedAllocations` is pending or firing, and every query of the Grafana
//!   dashboard (and its variables) returns data.
//! - Then, in the same pod, 50 restarts of the PostgreSQL container (every fifth a SIGKILL of the
//!   whole container instead of a clean stop): the segment directory holds at most two segments
//!   of the server's uid, the exporter reports the live domain after each, and the guard never
//!   falls back to private accounting.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oomguard_cli::demo::HASH_AGGREGATE_HOG;
use oomguard_tests::containers::{artifact_image, images, kube_down, kube_play, Container};
use oomguard_tests::{http_get, validate_manifests, workspace_root};
use postgres::error::SqlState;
use serde_json::{json, Value};

/// The uid the recipe runs the pod as (`postgres` in the official image).
const POSTGRES_UID: u32 = 999;
const NAMESPACE: &str = "oomguard-test";
const POD: &str = "postgres-0";
const RESTARTS: usize = 50;
/// How long Prometheus may take to show what the test waits for.
const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(90);

/// A host directory for a pod volume, owned by `uid` with `mode`.
fn volume_dir(parent: &Path, name: &str, uid: u32, mode: u32) -> PathBuf {
    let dir = parent.join(name);
    fs::create_dir_all(&dir).unwrap();
    chown(&dir, Some(uid), Some(uid)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
    dir
}

/// The pod the StatefulSet of the recipe makes, as `tools/validate-manifests` builds it.
fn recipe_pod() -> Value {
    let pods_file = tempfile::NamedTempFile::new().unwrap();
    let pods_path = pods_file.path().to_str().unwrap();
    let recipe = "packaging/kubernetes/official-image/postgres.yaml";
    let (ok, _, stderr) = validate_manifests(&["--pods", pods_path, recipe]);
    assert!(ok, "{stderr}");
    let pods: Value = serde_json::from_str(&fs::read_to_string(pods_file.path()).unwrap()).unwrap();
    pods[0]["pod"].clone()
}

/// The container of `pod` named `name` (containers or initContainers), mutable.
fn container_mut<'a>(pod: &'a mut Value, name: &str) -> &'a mut Value {
    let group = ["containers", "initContainers"]
        .into_iter()
        .find(|group| {
            pod["spec"][group]
                .as_array()
                .is_some_and(|list| list.iter().any(|c| c["name"] == name))
        })
        .unwrap_or_else(|| panic!("the recipe's pod has no container {name}"));
    pod["spec"][group]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == name)
        .unwrap()
}

/// The recipe's pod changed as the module documentation says; the host directories under `dir`.
fn local_pod(dir: &Path, socket: &Path, segments: &Path, exporter_port: u16) -> Value {
    let mut pod = recipe_pod();
    let postgres_image = images(17).official;
    let artifact = artifact_image();
    pod["metadata"]["name"] = json!(POD);
    // podman runs init containers on every start of the pod only when asked.
    pod["metadata"]["annotations"] = json!({"io.podman.annotations.init.container.type": "always"});
    pod["spec"]["hostNetwork"] = json!(true);
    // podman takes container ports for port mappings, which the host's network cannot have.
    for group in ["containers", "initContainers"] {
        for container in pod["spec"][group].as_array_mut().into_iter().flatten() {
            container.as_object_mut().unwrap().remove("ports");
        }
    }

    let postgres = container_mut(&mut pod, "postgres");
    assert_eq!(
        postgres["image"], "postgres:17-bookworm",
        "the recipe's image"
    );
    postgres["image"] = json!(postgres_image);
    postgres["args"] = json!(["postgres", "-c", "listen_addresses="]);
    postgres["resources"] = json!({"requests": {"memory": "768Mi"}, "limits": {"memory": "768Mi"}});
    postgres
        .as_object_mut()
        .unwrap()
        .remove("readinessProbe")
        .expect("the recipe's readiness probe");
    for env in postgres["env"].as_array_mut().unwrap() {
        if env["name"] == "POSTGRES_PASSWORD" {
            *env = json!({"name": "POSTGRES_PASSWORD", "value": "not-a-secret"});
        }
    }
    postgres["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "socket", "mountPath": "/var/run/postgresql"}));

    let exporter = container_mut(&mut pod, "oomguard-exporter");
    let command = exporter["command"].as_array_mut().unwrap();
    let listen = command.iter().position(|a| a == "--listen").unwrap() + 1;
    command[listen] = json!(format!("127.0.0.1:{exporter_port}"));
    for name in ["oomguard-exporter", "oomguard-install"] {
        let container = container_mut(&mut pod, name);
        assert_eq!(
            container["image"],
            "registry.example.invalid/oomguard:0.1.0"
        );
        container["image"] = json!(artifact);
    }

    // Volumes: every one a host directory.
    let uid = POSTGRES_UID;
    let mut volumes = Vec::new();
    for volume in pod["spec"]["volumes"].as_array().unwrap() {
        let name = volume["name"].as_str().unwrap();
        let path = match name {
            "oomguard-segments" => segments.to_owned(),
            // An emptyDir is writable by every uid; the data volume is owned by the pod's.
            "data" => volume_dir(dir, name, uid, 0o700),
            "dshm" => volume_dir(Path::new("/dev/shm"), &dir_name(dir, name), 0, 0o1777),
            _ => volume_dir(dir, name, 0, 0o777),
        };
        volumes.push(json!({"name": name, "hostPath": {"path": path, "type": "Directory"}}));
    }
    volumes.push(json!({"name": "socket", "hostPath": {"path": socket, "type": "Directory"}}));
    pod["spec"]["volumes"] = json!(volumes);
    pod
}

/// A name for a directory outside `dir` that still says which test it belongs to.
fn dir_name(dir: &Path, name: &str) -> String {
    format!(
        "{}-{name}",
        dir.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_start_matches('.')
    )
}

/// The pod, taken down on drop.
struct Pod {
    yaml: PathBuf,
    shm_dirs: Vec<PathBuf>,
}

impl Drop for Pod {
    fn drop(&mut self) {
        kube_down(&self.yaml);
        for dir in &self.shm_dirs {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// A Prometheus server (Debian's `prometheus`) scraping the exporter every second with the
/// recipe's alert rules, killed on drop.
struct Prometheus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(exporter: &str) -> Prometheus {
        let binary = Path::new("/usr/bin/prometheus");
        assert!(
            binary.is_file(),
            "{} not found: tools/install-deps test installs Debian's prometheus package",
            binary.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let rules = workspace_root().join("packaging/prometheus/oomguard-alerts.yaml");
        let config = dir.path().join("prometheus.yml");
        // The labels a PodMonitor's scrape would carry, which the dashboard selects by.
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [{rules:?}]\n\
                 scrape_configs:\n  - job_name: oomguard\n    static_configs:\n\
                 \x20     - targets: [{exporter:?}]\n\
                 \x20       labels: {{namespace: {NAMESPACE}, pod: {POD}}}\n"
            ),
        )
        .unwrap();
        let address = format!("127.0.0.1:{}", oomguard_tests::free_loopback_port());
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            child,
            address,
            _dir: dir,
        };
        prometheus.wait_for("Prometheus is ready", || {
            std::net::TcpStream::connect(&prometheus.address).is_ok()
                && http_get(&prometheus.address, "/-/ready", None).status == 200
        });
        prometheus
    }

    /// Polls `done` until it holds, failing after [`PROMETHEUS_DEADLINE`] with `what`.
    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + PROMETHEUS_DEADLINE;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {PROMETHEUS_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The result vector of instant query `expr`.
    fn query(&self, expr: &str) -> Vec<Value> {
        let encoded =
            percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC);
        let response = http_get(
            &self.address,
            &format!("/api/v1/query?query={encoded}"),
            None,
        );
        let body: Value = serde_json::from_str(&response.body)
            .unwrap_or_else(|e| panic!("{expr}: {e}: {}", response.body));
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The states of the alerts named `name`.
    fn alert_states(&self, name: &str) -> Vec<String> {
        let response = http_get(&self.address, "/api/v1/alerts", None);
        let body: Value = serde_json::from_str(&response.body).unwrap();
        body["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == name)
            .map(|a| a["state"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every query of the dashboard, its template variables' included, with the variables replaced
/// by what this scrape carries: (where, expression, the label a variable query reads).
fn dashboard_queries() -> Vec<(String, String, Option<String>)> {
    let path = workspace_root().join("packaging/grafana/oomguard-dashboard.json");
    let dashboard: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    let substitute = |expr: &str| {
        expr.replace("$namespace", NAMESPACE)
            .replace("$pod", POD)
            .replace("$domain", ".+")
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
    };
    let mut queries = Vec::new();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(query) = variable["query"]["query"].as_str() else {
            continue; // the datasource variable
        };
        // label_values(SELECTOR, LABEL)
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {query}"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        queries.push((
            format!("variable {}", variable["name"]),
            substitute(selector.trim()),
            Some(label.trim().to_owned()),
        ));
    }
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push((format!("panel {}", panel["title"]), substitute(expr), None));
            }
        }
    }
    queries
}

/// The names of the guard's segments of the server's uid in `dir`.
fn segments_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(&format!("oomguard-{POSTGRES_UID}-")))
        .collect()
}

/// The `domain` label of the exporter's `oomguard_up 1` series.
fn live_domains(exporter: &str) -> BTreeSet<String> {
    let metrics = http_get(exporter, "/metrics", None);
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    metrics
        .body
        .lines()
        .filter(|line| line.starts_with("oomguard_allocated_bytes{"))
        .filter_map(|line| line.split("domain=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_recipe_pod_refuses_the_hog_and_prometheus_sees_it() {
    let dir = tempfile::Builder::new()
        .prefix("oomguard-pod")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let socket = volume_dir(dir.path(), "socket", 0, 0o1777);
    // The segment directory is a memory emptyDir in the recipe: here a directory on /dev/shm.
    let segments = volume_dir(
        Path::new("/dev/shm"),
        &dir_name(dir.path(), "segments"),
        0,
        0o777,
    );
    let exporter_port = oomguard_tests::free_loopback_port();
    let exporter = format!("127.0.0.1:{exporter_port}");
    let pod_spec = local_pod(dir.path(), &socket, &segments, exporter_port);
    let yaml = dir.path().join("pod.yaml");
    fs::write(&yaml, serde_json::to_string_pretty(&pod_spec).unwrap()).unwrap();
    let shm_dirs = vec![
        segments.clone(),
        Path::new("/dev/shm").join(dir_name(dir.path(), "dshm")),
    ];
    let _pod = Pod {
        yaml: yaml.clone(),
        shm_dirs,
    };
    kube_play(&yaml);
    let postgres = Container::adopt(&format!("{POD}-postgres"), socket.clone());
    postgres.wait_ready();
    assert!(
        Container::maps_guard(postgres.pid()),
        "the postmaster does not map the guard the init container installed; log:\n{}",
        postgres.logs()
    );
    let installed = fs::read_dir(dir.path().join("oomguard-lib"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<BTreeSet<_>>();
    assert!(installed.contains("liboomguard.so"), "{installed:?}");

    let prometheus = Prometheus::start(&exporter);
    prometheus.wait_for("the exporter scraped with refusals_total present", || {
        !prometheus
            .query("oomguard_refusals_total{namespace=\"oomguard-test\"}")
            .is_empty()
    });

    // The hog, refused.
    let mut idle = postgres.connect();
    let oom_kills_before = postgres.oom_kills();
    let mut hog = postgres.connect();
    hog.batch_execute(HASH_AGGREGATE_HOG[0]).unwrap();
    let error = hog
        .batch_execute(HASH_AGGREGATE_HOG[1])
        .expect_err("the hog cannot finish in 768Mi");
    assert_eq!(
        error.code(),
        Some(&SqlState::OUT_OF_MEMORY),
        "{error}; log:\n{}",
        postgres.logs()
    );
    hog.simple_query("SELECT 1").expect("the hog's session");
    idle.simple_query("SELECT 1").expect("the idle session");
    let oom_kills_after = postgres.oom_kills();
    assert_eq!(
        oom_kills_before, oom_kills_after,
        "the kernel killed a process"
    );

    prometheus.wait_for("oomguard_refusals_total moved", || {
        !prometheus
            .query("sum(oomguard_refusals_total) > 0")
            .is_empty()
    });
    prometheus.wait_for("OomguardRefusedAllocations pending or firing", || {
        prometheus
            .alert_states("OomguardRefusedAllocations")
            .iter()
            .any(|s| s == "pending" || s == "firing")
    });
    let mut empty = Vec::new();
    let queries = dashboard_queries();
    for (place, expr, label) in &queries {
        let result = prometheus.query(expr);
        let has_data = match label {
            None => !result.is_empty(),
            Some(label) => result
                .iter()
                .any(|s| s["metric"][label.as_str()].is_string()),
        };
        if !has_data {
            empty.push(format!("{place}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
    eprintln!(
        "pod: ERROR out of memory, oom_kill {oom_kills_before} -> {oom_kills_after}; all {} \
         dashboard queries returned data; OomguardRefusedAllocations {:?}",
        queries.len(),
        prometheus.alert_states("OomguardRefusedAllocations")
    );
    drop((idle, hog));

    // Restarts: clean stops, and every fifth a SIGKILL of the whole container.
    let mut most_segments = 0;
    for round in 1..=RESTARTS {
        if round % 5 == 0 {
            postgres.kill();
        } else {
            postgres.stop();
        }
        postgres.restart_stopped();
        let mut client = postgres.connect();
        client.simple_query("SELECT 1").unwrap();
        let segments_now = segments_in(&segments);
        most_segments = most_segments.max(segments_now.len());
        assert!(
            segments_now.len() <= 2,
            "after {round} restarts: {segments_now:?}"
        );
        // The exporter reports the live domain: the segment the running postmaster maps.
        let maps = fs::read_to_string(format!("/proc/{}/maps", postgres.pid())).unwrap();
        let live = maps
            .lines()
            .filter_map(|line| line.rsplit('/').next())
            .find(|name| name.starts_with(&format!("oomguard-{POSTGRES_UID}-")))
            .unwrap_or_else(|| panic!("after {round} restarts the postmaster maps no segment"))
            .to_owned();
        let reported = live_domains(&exporter);
        assert!(
            reported.contains(&live),
            "after {round} restarts the exporter reports {reported:?}, the server uses {live}"
        );
    }
    let logs = postgres.logs();
    assert!(
        !logs.contains("privately"),
        "the guard fell back to private accounting:\n{logs}"
    );
    eprintln!(
        "pod: {RESTARTS} restarts ({} SIGKILLs): at most {most_segments} segments of uid \
         {POSTGRES_UID} in the segment directory, {} at the end; the exporter reported the live \
         domain after each",
        RESTARTS / 5,
        segments_in(&segments).len()
    );
}
