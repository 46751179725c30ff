//! The packaged Prometheus alerting rules (`packaging/prometheus/oomguard-alerts.yaml`): they
//! pass `promtool check rules`, their unit tests (`oomguard-alerts.test.yaml`) pass
//! `promtool test rules` and cover every alert, and they use only metric names the exporter
//! exports.
//!
//! The names are checked against `oomguard_cli::exporter::METRIC_NAMES`, which the exporter's own
//! unit test holds equal to what its encoder writes (a segment with every optional part present,
//! both formats). The real binary is scraped too, over the segment of a guarded `accounting`
//! probe: every name it serves is in the list, and every name of the list but the cgroup ones
//! (present only once the guard has read its cgroup) is served.
//!
//! promtool comes with Debian's `prometheus` package; without it these tests fail, never skip.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use oomguard_cli::exporter::{LISTEN_ENV, METRIC_NAMES};
use oomguard_tests::{guarded, plain, probe, workspace_root};

const RULES: &str = "oomguard-alerts.yaml";
const RULE_TESTS: &str = "oomguard-alerts.test.yaml";

fn packaging_dir() -> PathBuf {
    workspace_root().join("packaging/prometheus")
}

fn read_packaged(name: &str) -> String {
    let path = packaging_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `promtool`, or a failure that says how to install it.
fn promtool() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "promtool not found in PATH: install it (Debian/Ubuntu: \
             `apt-get install --no-install-recommends prometheus`, which provides \
             /usr/bin/promtool; or run .ci/run)"
        )
    })
}

/// Runs `promtool ARGS` in the packaging directory; panics with its output unless it succeeds.
fn run_promtool(args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(packaging_dir())
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// Every `oomguard_…` identifier outside YAML comments in `text` (expressions, series,
/// annotations; the group name `oomguard` is not one).
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(|line| line.split(|c: char| !is_ident(c)))
        .filter(|word| word.starts_with("oomguard_"))
        .map(str::to_owned)
        .collect()
}

/// The values of `key:` lines (as in `- alert: Name`), in order.
fn values_of(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start().trim_start_matches("- ");
            line.strip_prefix(key)?
                .strip_prefix(':')
                .map(|v| v.trim().to_owned())
        })
        .collect()
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let checked = run_promtool(&["check", "rules", RULES]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run_promtool(&["test", "rules", RULE_TESTS]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_is_unit_tested_and_labelled_for_routing() {
    let rules = read_packaged(RULES);
    let tests = read_packaged(RULE_TESTS);
    let alerts = values_of(&rules, "alert");
    assert!(alerts.len() >= 7, "{alerts:?}");
    assert_eq!(values_of(&rules, "name"), ["oomguard"], "one group");
    let tested: BTreeSet<String> = values_of(&tests, "alertname").into_iter().collect();
    for alert in &alerts {
        assert!(
            tested.contains(alert),
            "{alert} has no case in {RULE_TESTS}"
        );
    }
    // Every rule has a severity, a summary and a description.
    for key in ["severity", "summary", "description"] {
        assert_eq!(
            values_of(&rules, key).len(),
            alerts.len(),
            "each alert needs a {key}"
        );
    }
    for severity in values_of(&rules, "severity") {
        assert!(
            ["critical", "warning", "info"].contains(&severity.as_str()),
            "{severity}"
        );
    }
}

#[test]
fn the_rules_and_their_tests_use_only_exported_metric_names() {
    let known: BTreeSet<&str> = METRIC_NAMES.iter().copied().collect();
    for file in [RULES, RULE_TESTS] {
        let used = metric_names_in(&read_packaged(file));
        assert!(!used.is_empty(), "{file} names no metric");
        let unknown: Vec<&String> = used
            .iter()
            .filter(|name| !known.contains(name.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} uses {unknown:?}, which the exporter does not export (METRIC_NAMES: \
             {METRIC_NAMES:?})"
        );
    }
}

/// A guarded `accounting` probe holding memory until dropped.
struct HoldingProbe(Child);

impl Drop for HoldingProbe {
    fn drop(&mut self) {
        // Closing stdin lets it free, say "freed" and wait again; killing it is enough here.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `oomguard exporter`, killed (by its pid) when dropped.
struct RunningExporter {
    child: Child,
    addr: String,
}

impl Drop for RunningExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_exporter(dir: &Path) -> RunningExporter {
    let binary = workspace_root().join("target/release/oomguard");
    assert!(
        binary.is_file(),
        "{} not found: run `cargo build --release` first",
        binary.display()
    );
    let mut child = plain(&mut Command::new(binary))
        .env_remove(LISTEN_ENV)
        .args(["exporter", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start oomguard exporter");
    let stderr = child.stderr.take().unwrap();
    let (lines, rx) = mpsc::channel();
    // Drains stderr for the exporter's whole life so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split('/').next().unwrap().to_owned();
                    return RunningExporter { child, addr };
                }
                seen.push(line);
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the exporter did not say where it listens; stderr: {seen:#?}");
            }
        }
    }
}

/// `GET /metrics` over HTTP/1.0 in the classic text format; returns the body.
fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    body.to_owned()
}

#[test]
fn the_real_exporter_serves_the_listed_names_over_a_guarded_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(probe("accounting"));
    guarded(&mut command, dir.path(), &[])
        .args(["hold", "1048576", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut probe = HoldingProbe(command.spawn().expect("start the accounting probe"));
    let mut line = String::new();
    BufReader::new(probe.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim_end(), "held", "the probe holds its 4 MiB");

    let exporter = start_exporter(dir.path());
    let body = scrape(&exporter.addr);
    let served: BTreeSet<String> = body
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| line.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    let listed: BTreeSet<String> = METRIC_NAMES.iter().map(|&n| n.to_owned()).collect();
    let unlisted: Vec<&String> = served.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "served but not in METRIC_NAMES: {unlisted:?}\n{body}"
    );
    let cgroup_read = served
        .iter()
        .any(|name| name.starts_with("oomguard_cgroup_memory_"));
    let missing: Vec<&String> = listed
        .difference(&served)
        .filter(|name| cgroup_read || !name.starts_with("oomguard_cgroup_memory_"))
        .collect();
    assert!(
        missing.is_empty(),
        "in METRIC_NAMES but not served: {missing:?}\n{body}"
    );
    assert!(
        body.lines().any(|l| l == "oomguard_up 1"),
        "the probe's segment was read:\n{body}"
    );
    drop(exporter);
    drop(probe);
}
