//! The packaged Prometheus alerting rules (`packaging/prometheus/oomguard-alerts.yaml`): they
//! pass `promtool check rules`, their unit tests (`oomguard-alerts.test.yaml`) pass
//! `promtool test rules` and cover every alert, and they use only metric names (and `cause`
//! label values) the exporter exports.
//!
//! The names are checked against `oomguard_cli::exporter::METRIC_NAMES`, which the exporter's own
//! unit test holds equal to what its encoder writes (a segment with every optional part present,
//! both formats). The real binary is scraped too, over the segment of a guarded `accounting`
//! probe: every name it serves is in the list, and every name of the list but the cgroup ones
//! (present only once the guard has read its cgroup) is served.
//!
//! promtool comes with Debian's `prometheus` package; without it these tests fail, never skip.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use oomguard_cli::exporter::METRIC_NAMES;
use oomguard_core::budget::RefusalCause;
use oomguard_tests::{http_get, promtool, workspace_root, Exporter};

const RULES: &str = "oomguard-alerts.yaml";
const RULE_TESTS: &str = "oomguard-alerts.test.yaml";

fn packaging_dir() -> PathBuf {
    workspace_root().join("packaging/prometheus")
}

fn read_packaged(name: &str) -> String {
    let path = packaging_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
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

/// Every value given to the `cause` label in `text` (`cause="x"`, `cause!="x"`, `cause: x`).
fn cause_values_in(text: &str) -> BTreeSet<String> {
    let mut values = BTreeSet::new();
    for piece in text.split("cause").skip(1) {
        let value = piece
            .trim_start_matches(['!', '=', ':', ' ', '"'])
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("");
        if !value.is_empty() && piece.starts_with(['!', '=', ':']) {
            values.insert(value.to_owned());
        }
    }
    values
}

#[test]
fn the_refusal_alerts_use_the_exporters_causes_and_their_tests_cover_each() {
    let exported: BTreeSet<String> = RefusalCause::ALL
        .iter()
        .map(|cause| cause.name().to_owned())
        .collect();
    let rules = read_packaged(RULES);
    let in_rules = cause_values_in(&rules);
    assert_eq!(
        in_rules,
        BTreeSet::from(["backend_budget".to_owned()]),
        "the rules tell budget refusals from the others, by the exporter's name"
    );
    assert!(
        in_rules.is_subset(&exported),
        "{in_rules:?} vs {exported:?}"
    );
    // The unit tests feed every cause the exporter serves, and no other.
    assert_eq!(cause_values_in(&read_packaged(RULE_TESTS)), exported);
}

/// `GET /metrics` over HTTP/1.0 in the classic text format (no `Accept` header), which must
/// answer 200; returns the body.
fn scrape(addr: &str) -> String {
    let response = http_get(addr, "/metrics", None);
    let head = &response.head;
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    response.body
}

#[test]
fn the_real_exporter_serves_the_listed_names_over_a_guarded_process() {
    let dir = tempfile::tempdir().unwrap();
    // A guarded process that was refused once and holds memory again: every family has
    // samples, the latest refusal's time included.
    let probe = oomguard_tests::refused_probe(dir.path(), &[]);

    let exporter = Exporter::start(dir.path());
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
    // The probe is no PostgreSQL server, so it records no postmaster settings: those are
    // scraped from a real server in `configuration_fit.rs`.
    let missing: Vec<&String> = listed
        .difference(&served)
        .filter(|name| cgroup_read || !name.starts_with("oomguard_cgroup_memory_"))
        .filter(|name| !name.starts_with("oomguard_postgres_"))
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
