//! Keeps the benchmark harness alive in CI: `oomguard-bench --quick` (allocation workloads only,
//! a few seconds) must run every workload, plain and guarded, and report a numeric ratio for each,
//! and write its Markdown report. The ratios' values are not asserted: performance is measured
//! (by hand, `oomguard-bench --all`), not tested.
//!
//! Needs `cargo build --release` first (the release `oomguard-bench` and `liboomguard.so`).

use std::process::Command;

use oomguard_tests::{library_path, workspace_root};

/// Labels of the allocation workloads as `oomguard-bench` prints them.
const WORKLOADS: [&str; 5] = ["small 1T", "small 2T", "pglike", "calloc", "fork"];

/// The number after `key` on `line`, if it parses as a finite float.
fn number_after(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
    value.is_finite().then_some(value)
}

#[test]
fn quick_mode_reports_every_workload_with_a_ratio() {
    let bench = workspace_root().join("target/release/oomguard-bench");
    assert!(
        bench.is_file(),
        "{} not found: run `cargo build --release` first",
        bench.display()
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let markdown = dir.path().join("results.md");
    let out = Command::new(&bench)
        .arg("--quick")
        .arg("--library")
        .arg(library_path())
        .arg("--markdown")
        .arg(&markdown)
        .env_remove("LD_PRELOAD")
        .output()
        .expect("run oomguard-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "oomguard-bench --quick failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );

    for label in WORKLOADS {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{label} ")))
            .unwrap_or_else(|| panic!("no line for workload `{label}` in:\n{stdout}"));
        let ratio = number_after(line, "B/A median ")
            .unwrap_or_else(|| panic!("no numeric B/A median on the `{label}` line: {line}"));
        assert!(ratio > 0.0, "ratio of `{label}` is {ratio}: {line}");
        for side in ["A ", "B "] {
            assert!(
                number_after(line, side).is_some(),
                "no numeric ns/op after `{side}` on the `{label}` line: {line}"
            );
        }
    }
    assert!(
        stdout.contains("instructions per malloc+free pair"),
        "no instruction-count line in:\n{stdout}"
    );

    let md = std::fs::read_to_string(&markdown).expect("the Markdown report was written");
    for label in WORKLOADS {
        assert!(
            md.lines().any(|l| l.starts_with(&format!("| {label} |"))),
            "no table row for `{label}` in the Markdown report:\n{md}"
        );
    }
    assert!(md.contains("## Budget"), "no budget section in:\n{md}");
}
