//! `oomguard limit` (and the derived-limit parts of `status` and the exporter) as a user runs
//! them: on fixture cgroup trees (`OOM_GUARD_CGROUP_ROOT`), before any guarded process ran (what
//! the guard would derive), against a segment that a real guarded probe derived its limit in, with
//! bad settings, and with `--data-dir` of a real stopped PostgreSQL cluster.

use std::io::Write;
use std::path::Path;

use oomguard_cluster::{default_settings, Cluster, ClusterOptions};
use oomguard_tests::{cgroup_v2_fixture, oomguard_command, run_output, while_holding};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// `oomguard limit --dir SEGMENTS` with the cgroup root at `root` and `env` added; `args` after
/// `limit`. Returns stdout, panicking with stderr unless it succeeds.
fn limit(segments: &Path, root: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let mut command = oomguard_command();
    command
        .arg("limit")
        .arg("--dir")
        .arg(segments)
        .args(args)
        .env("OOM_GUARD_CGROUP_ROOT", root)
        .envs(env.iter().copied());
    let (out, stdout, stderr) = run_output(&mut command);
    assert!(
        out.status.success(),
        "{command:?}: {}\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

fn limit_json(segments: &Path, root: &Path, env: &[(&str, &str)], args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let stdout = limit(segments, root, env, &all);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

fn has_line(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l.trim_end() == line),
        "no line {line:?} in\n{text}"
    );
}

#[test]
fn without_a_segment_it_derives_what_the_guard_would() {
    let fixture = tempfile::tempdir().unwrap();
    let root = cgroup_v2_fixture(fixture.path(), "536870912", 50 * MIB, 10 * MIB);
    let segments = tempfile::tempdir().unwrap();
    let env = [("OOM_GUARD_SHARED_MEMORY", "100Mi")];

    let text = limit(segments.path(), &root, &env, &[]);
    assert!(
        text.starts_with(&format!(
            "domain         none in {} yet: what the guard would derive",
            segments.path().display()
        )),
        "{text}"
    );
    has_line(
        &text,
        "limit          348.0 MiB derived (OOM_GUARD_LIMIT is unset or auto)",
    );
    has_line(
        &text,
        "cgroup limit     512.0 MiB  memory.max of our own cgroup (v2 /sys/fs/cgroup); MemTotal \
         16.0 GiB",
    );
    has_line(
        &text,
        "− shared memory  100.0 MiB  from OOM_GUARD_SHARED_MEMORY; not in huge pages, so \
         subtracted (huge pages are not)",
    );
    has_line(
        &text,
        "− reserve         64.0 MiB  default: 10% of the cgroup limit, at least 64 MiB",
    );
    has_line(&text, "= derived        348.0 MiB  in force");

    let json = limit_json(segments.path(), &root, &env, &[]);
    let report = &json[0];
    assert_eq!(report["domain"], Value::Null);
    assert_eq!(report["limit_bytes"], 348 * MIB);
    assert_eq!(report["derived_bytes"], 348 * MIB);
    assert_eq!(report["limit_source"], "derived");
    let inputs = &report["inputs"];
    assert_eq!(inputs["cgroup_state"], "v2");
    assert_eq!(inputs["cgroup_dir"], "/sys/fs/cgroup");
    assert_eq!(inputs["cgroup_limit_bytes"], 512 * MIB);
    assert_eq!(inputs["cgroup_limit_origin"], "cgroup");
    assert_eq!(inputs["cgroup_levels_up"], 0);
    assert_eq!(inputs["mem_total_bytes"], 16u64 << 30);
    assert_eq!(inputs["shared_memory_bytes"], 100 * MIB);
    assert_eq!(inputs["shared_memory_source"], "OOM_GUARD_SHARED_MEMORY");
    assert_eq!(inputs["huge_pages"], false);
    assert_eq!(inputs["reserve_bytes"], 64 * MIB);
    assert_eq!(inputs["reserve_source"], "default");
    assert_eq!(inputs["reserve_percent"], Value::Null);
    assert_eq!(report["drift"], Value::Null);

    // A percentage reserve, and OOM_GUARD_LIMIT taking over.
    let json = limit_json(
        segments.path(),
        &root,
        &[
            ("OOM_GUARD_SHARED_MEMORY", "100Mi"),
            ("OOM_GUARD_RESERVE", "20%"),
        ],
        &[],
    );
    let reserve = 536870912 / 100 * 20;
    assert_eq!(json[0]["inputs"]["reserve_bytes"], reserve);
    assert_eq!(json[0]["inputs"]["reserve_percent"], 20);
    assert_eq!(json[0]["inputs"]["reserve_source"], "OOM_GUARD_RESERVE");
    assert_eq!(json[0]["limit_bytes"], 412 * MIB - reserve);
    let json = limit_json(segments.path(), &root, &[("OOM_GUARD_LIMIT", "200Mi")], &[]);
    assert_eq!(json[0]["limit_bytes"], 200 * MIB);
    assert_eq!(json[0]["limit_source"], "OOM_GUARD_LIMIT");
    assert_eq!(
        json[0]["derived_bytes"],
        448 * MIB,
        "no shared memory known"
    );
    assert_eq!(json[0]["inputs"]["shared_memory_source"], "not seen yet");

    // Unlimited: MemTotal is the cgroup limit.
    let unlimited = tempfile::tempdir().unwrap();
    let root = cgroup_v2_fixture(unlimited.path(), "max", 0, 0);
    let json = limit_json(segments.path(), &root, &[], &[]);
    assert_eq!(json[0]["inputs"]["cgroup_limit_origin"], "MemTotal");
    assert_eq!(json[0]["inputs"]["cgroup_limit_bytes"], 16u64 << 30);
    let reserve = (16u64 << 30) / 100 * 10;
    assert_eq!(json[0]["limit_bytes"], (16u64 << 30) - reserve);
}

/// Runs `accounting hold 1 MiB x 8` under the guard with a derived limit (`OOM_GUARD_LIMIT=auto`),
/// its cgroup root at `root`; calls `inspect` while it holds.
fn while_holding_derived(segments: &Path, root: &Path, inspect: impl FnOnce(u32)) {
    let env = [
        ("OOM_GUARD_LIMIT", "auto"),
        ("OOM_GUARD_CGROUP_ROOT", root.to_str().unwrap()),
        ("OOM_GUARD_SHARED_MEMORY", "100Mi"),
    ];
    while_holding(segments, &env, inspect);
}

#[test]
fn a_guarded_process_records_the_same_derivation() {
    let fixture = tempfile::tempdir().unwrap();
    let root = cgroup_v2_fixture(fixture.path(), "512Mi", 50 * MIB, 10 * MIB);
    let segments = tempfile::tempdir().unwrap();
    let predicted = limit_json(
        segments.path(),
        &root,
        &[("OOM_GUARD_SHARED_MEMORY", "100Mi")],
        &[],
    );
    while_holding_derived(segments.path(), &root, |_pid| {
        // The CLI's own environment no longer matters: the segment has it all.
        let json = limit_json(segments.path(), Path::new("/nowhere"), &[], &[]);
        let report = &json[0];
        assert!(report["domain"]
            .as_str()
            .unwrap()
            .starts_with(segments.path().to_str().unwrap()));
        assert_eq!(report["limit_source"], "derived");
        assert_eq!(report["limit_bytes"], 348 * MIB);
        assert_eq!(report["derived_bytes"], 348 * MIB);
        assert_eq!(report["inputs"], predicted[0]["inputs"], "{json:#}");
        let drift = &report["drift"];
        assert_eq!(drift["kernel_anon_bytes"], 50 * MIB, "{json:#}");
        assert_eq!(drift["kernel_shmem_bytes"], 10 * MIB);
        assert_eq!(drift["shared_memory_bytes"], 100 * MIB);
        assert_eq!(drift["tight"], false);
        let total = drift["guard_total_bytes"].as_i64().unwrap();
        assert!(total >= 8 * MIB as i64, "{drift}");
        assert_eq!(
            drift["drift_bytes"].as_i64().unwrap(),
            60 * MIB as i64 - (total + 100 * MIB as i64)
        );
        assert_eq!(
            drift["headroom_bytes"].as_i64().unwrap(),
            (448 - 60) * MIB as i64
        );

        let text = limit(segments.path(), Path::new("/nowhere"), &[], &[]);
        has_line(
            &text,
            "limit          348.0 MiB derived (OOM_GUARD_LIMIT is unset or auto)",
        );
        has_line(&text, "= derived        348.0 MiB  in force");
        assert!(
            text.contains("drift          kernel anon 50.0 MiB + shmem 10.0 MiB vs guard total "),
            "{text}"
        );

        let (out, status, stderr) = run_output(
            oomguard_command()
                .arg("status")
                .arg("--dir")
                .arg(segments.path()),
        );
        assert!(out.status.success(), "{stderr}");
        let limit_line = status.lines().find(|l| l.starts_with("limit ")).unwrap();
        assert!(
            limit_line.starts_with(
                "limit    348.0 MiB = cgroup 512.0 MiB − shared memory 100.0 MiB \
                 (OOM_GUARD_SHARED_MEMORY) − reserve 64.0 MiB (default), "
            ),
            "{status}"
        );
        let kernel_line = status.lines().find(|l| l.starts_with("kernel ")).unwrap();
        assert!(
            kernel_line.starts_with(
                "kernel   anon 50.0 MiB + shmem 10.0 MiB, usage 64.0 MiB of cgroup limit 512.0 MiB; \
                 read "
            ),
            "{status}"
        );
        assert!(!kernel_line.contains("TIGHT"), "{kernel_line}");

        let (out, status, _) = run_output(
            oomguard_command()
                .args(["status", "--json", "--dir"])
                .arg(segments.path()),
        );
        assert!(out.status.success());
        let json: Value = serde_json::from_str(&status).unwrap();
        assert_eq!(json[0]["limit_inputs"]["reserve_bytes"], 64 * MIB);
        assert_eq!(json[0]["cgroup"]["tight"], false);
        assert_eq!(json[0]["cgroup"]["max_events"], 0);
        assert_eq!(json[0]["dynamic_shared_bytes"], 0);
        assert_eq!(json[0]["kernel_denials"], 0);

        let exporter = oomguard_cli::exporter::Exporter::new(segments.path());
        let body = exporter.scrape(false).body;
        let domain = Path::new(report["domain"].as_str().unwrap())
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        for (input, bytes) in [
            ("cgroup_limit", 512 * MIB),
            ("shared_memory", 100 * MIB),
            ("reserve", 64 * MIB),
        ] {
            has_line(
                &body,
                &format!(
                    "oomguard_limit_input_bytes{{domain=\"{domain}\",input=\"{input}\"}} {bytes}"
                ),
            );
        }
        has_line(
            &body,
            &format!("oomguard_kernel_tight{{domain=\"{domain}\"}} 0"),
        );
        has_line(
            &body,
            &format!("oomguard_cgroup_memory_max_events_total{{domain=\"{domain}\"}} 0"),
        );
        has_line(
            &body,
            &format!("oomguard_dynamic_shared_memory_bytes{{domain=\"{domain}\"}} 0"),
        );
    });
}

/// Environment, cgroup root, and what the error message must contain.
type BadCase<'a> = (&'a [(&'a str, &'a str)], &'a Path, &'a [&'a str]);

#[test]
fn bad_settings_fail_naming_the_variable() {
    let fixture = tempfile::tempdir().unwrap();
    let root = cgroup_v2_fixture(fixture.path(), "512Mi", 0, 0);
    let segments = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let nowhere = fixture.path().join("nowhere");
    let cases: [BadCase; 6] = [
        (
            &[("OOM_GUARD_RESERVE", "lots")],
            &root,
            &["OOM_GUARD_RESERVE=\"lots\"", "15%"],
        ),
        (
            &[("OOM_GUARD_RESERVE", "95%")],
            &root,
            &["OOM_GUARD_RESERVE=\"95%\"", "0% to 90%"],
        ),
        (
            &[("OOM_GUARD_SHARED_MEMORY", "a lot")],
            &root,
            &["OOM_GUARD_SHARED_MEMORY=\"a lot\"", "not a size"],
        ),
        (
            &[("OOM_GUARD_LIMIT", "-1")],
            &root,
            &["OOM_GUARD_LIMIT=\"-1\"", "auto"],
        ),
        (
            &[],
            &nowhere,
            &["OOM_GUARD_CGROUP_ROOT=", "is not a directory"],
        ),
        (
            &[],
            empty.path(),
            &["/proc/self/cgroup does not exist", "OOM_GUARD_CGROUP_ROOT"],
        ),
    ];
    for (env, root, expected) in cases {
        let (out, stdout, stderr) = run_output(
            oomguard_command()
                .arg("limit")
                .arg("--dir")
                .arg(segments.path())
                .env("OOM_GUARD_CGROUP_ROOT", root)
                .envs(env.iter().copied()),
        );
        assert_eq!(out.status.code(), Some(1), "{env:?}: {stdout}{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(stderr.starts_with("oomguard limit: "), "{stderr}");
        for text in expected {
            assert!(stderr.contains(text), "{env:?}: {text:?} not in {stderr}");
        }
    }
    // A cgroup file in the wrong format names the file.
    std::fs::write(root.join("sys/fs/cgroup/memory.max"), "lots\n").unwrap();
    let (out, _, stderr) = run_output(
        oomguard_command()
            .arg("limit")
            .arg("--dir")
            .arg(segments.path())
            .env("OOM_GUARD_CGROUP_ROOT", &root),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("memory.max of our cgroup is not in the kernel's format"),
        "{stderr}"
    );
    assert!(
        stderr.contains("cgroup-root/sys/fs/cgroup/memory.max]"),
        "{stderr}"
    );
    // A data directory that is none.
    std::fs::write(root.join("sys/fs/cgroup/memory.max"), "max\n").unwrap();
    let (out, _, stderr) = run_output(
        oomguard_command()
            .arg("limit")
            .arg("--dir")
            .arg(segments.path())
            .arg("--data-dir")
            .arg(empty.path())
            .env("OOM_GUARD_CGROUP_ROOT", fixture.path().join("cgroup-root")),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("is not a PostgreSQL data directory (no PG_VERSION"),
        "{stderr}"
    );
}

/// `SHOW shared_memory_size` (e.g. `143MB`) in bytes.
fn show_shared_memory_size(client: &mut postgres::Client) -> u64 {
    let row = client.query_one("SHOW shared_memory_size", &[]).unwrap();
    let text: String = row.get(0);
    let megabytes: u64 = text
        .strip_suffix("MB")
        .unwrap_or_else(|| panic!("{text:?}"))
        .parse()
        .unwrap();
    megabytes * MIB
}

#[test]
fn data_dir_asks_postgres_for_shared_memory() {
    let mut cluster = Cluster::create_temp(&ClusterOptions::default()).expect("a cluster");
    // The settings the cluster is started with, written to its configuration so that a stopped
    // `postgres -C` computes shared memory for the same settings.
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(cluster.data_dir().join("postgresql.conf"))
        .unwrap();
    for (name, value) in default_settings() {
        writeln!(conf, "{name} = '{}'", value.replace('\'', "''")).unwrap();
    }
    writeln!(conf, "work_mem = '64MB'").unwrap();
    drop(conf);

    let fixture = tempfile::tempdir().unwrap();
    let root = cgroup_v2_fixture(fixture.path(), "1Gi", 0, 0);
    let segments = tempfile::tempdir().unwrap();
    let data_dir = cluster.data_dir().to_str().unwrap().to_owned();
    let json = limit_json(segments.path(), &root, &[], &["--data-dir", &data_dir]);
    let inputs = &json[0]["inputs"];
    assert_eq!(
        inputs["shared_memory_source"],
        "postgres -C shared_memory_size"
    );
    assert_eq!(inputs["huge_pages"], false, "huge_pages = off");
    let predicted = inputs["shared_memory_bytes"].as_u64().unwrap();
    assert_eq!(
        json[0]["limit_bytes"].as_u64().unwrap(),
        (1u64 << 30) - predicted - (1u64 << 30) / 100 * 10,
        "{json:#}"
    );
    // 64 MiB for each of the 30 connections cannot fit the 880-odd MiB left.
    let warning = &json[0]["warnings"][0];
    assert_eq!(warning["kind"], "connections_do_not_fit", "{json:#}");
    assert_eq!(warning["work_mem_bytes"], 64 * MIB);
    assert_eq!(warning["max_connections"], 30);
    assert_eq!(warning["idle_bytes"], serde_json::Value::Null);
    assert_eq!(warning["needed_bytes"], 30 * 64 * MIB);
    let text = limit(segments.path(), &root, &[], &["--data-dir", &data_dir]);
    assert!(
        text.contains("from postgres -C shared_memory_size")
            && text.contains("WARNING        the limit")
            && text.contains("before what the server itself holds"),
        "{text}"
    );

    cluster.start(&[], &[]).expect("start");
    let mut client = cluster.connect().unwrap();
    assert_eq!(predicted, show_shared_memory_size(&mut client));
    // A running cluster cannot be asked with -C: a clear error.
    let (out, _, stderr) = run_output(
        oomguard_command()
            .arg("limit")
            .arg("--dir")
            .arg(segments.path())
            .args(["--data-dir", &data_dir])
            .env("OOM_GUARD_CGROUP_ROOT", &root),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("works only on a stopped cluster")
            && stderr.contains("SHOW shared_memory_size"),
        "{stderr}"
    );
    drop(client);
    cluster.stop().unwrap();
}
