//! `oomguard status` and `oomguard limit` warn, before any refusal, when a real guarded server's
//! configuration cannot fit: the limit below what the server holds plus one `work_mem` per
//! connection (`work_mem` and `max_connections` as the postmaster has them, followed through a
//! reload), and shared memory plus the reserve taking the whole cgroup limit (the postmaster's
//! observed shared memory, a cgroup v2 fixture tree for the limit: this machine's own cgroup
//! has none). The exporter serves the same over a real scrape.

use std::time::{Duration, Instant};

use oomguard_cluster::GuardedCluster;
use oomguard_tests::sessions::start_guarded;
use oomguard_tests::{cgroup_v2_fixture, http_get, oomguard_command, run_output, Exporter};
use postgres::Client;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// `oomguard SUBCOMMAND --json --dir DIR` of `guarded`'s segment directory, parsed, and the same
/// without `--json`.
fn json_and_text(guarded: &GuardedCluster, subcommand: &str) -> (Value, String) {
    let run = |json: bool| {
        let mut command = oomguard_command();
        command
            .arg(subcommand)
            .arg("--dir")
            .arg(&guarded.segment_dir);
        if json {
            command.arg("--json");
        }
        let (out, stdout, stderr) = run_output(&mut command);
        assert!(
            out.status.success(),
            "oomguard {subcommand} failed: {stderr}"
        );
        stdout
    };
    let json = serde_json::from_str(&run(true)).unwrap();
    (json, run(false))
}

fn warnings(domain: &Value) -> &Vec<Value> {
    domain["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("no warnings array: {domain:#}"))
}

/// Sets `work_mem` server-wide (`ALTER SYSTEM`, reload) and waits until the guard has recorded
/// `bytes` for it: each new session is a fork of the postmaster, which records what it has, so
/// sessions are opened until one was forked after the postmaster reloaded.
fn set_work_mem(guarded: &GuardedCluster, client: &mut Client, value: &str, bytes: u64) {
    client
        .batch_execute(&format!("ALTER SYSTEM SET work_mem = '{value}'"))
        .unwrap();
    client.batch_execute("SELECT pg_reload_conf()").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        drop(guarded.cluster.connect().unwrap());
        let (status, _) = json_and_text(guarded, "status");
        let recorded = &status[0]["server_settings"]["work_mem_bytes"];
        if *recorded == bytes {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the guard still records work_mem {recorded}, not {bytes}, 30 s after the reload"
        );
    }
}

#[test]
fn connections_that_cannot_fit_the_limit_are_warned_about_and_a_reload_is_followed() {
    let guarded = start_guarded(
        &[("OOM_GUARD_LIMIT", "256Mi")],
        &[("max_connections", "20")],
    );
    let mut client: Client = guarded.cluster.connect().unwrap();

    // PostgreSQL's default work_mem: 20 × 4 MiB fit easily.
    let (status, text) = json_and_text(&guarded, "status");
    let domain = &status[0];
    assert_eq!(
        domain["server_settings"]["work_mem_bytes"],
        4 * MIB,
        "{domain:#}"
    );
    assert_eq!(domain["server_settings"]["max_connections"], 20);
    assert_eq!(warnings(domain).len(), 0, "{text}");
    assert!(!text.contains("WARNING"), "{text}");

    set_work_mem(&guarded, &mut client, "64MB", 64 * MIB);
    let (status, text) = json_and_text(&guarded, "status");
    let domain = &status[0];
    assert_eq!(domain["server_settings"]["work_mem_bytes"], 64 * MIB);
    let found = warnings(domain);
    assert_eq!(found.len(), 1, "{found:#?}");
    let warning = &found[0];
    assert_eq!(warning["kind"], "connections_do_not_fit");
    assert_eq!(warning["limit_bytes"], 256 * MIB);
    assert_eq!(warning["limit_from_environment"], true);
    let idle = warning["idle_bytes"].as_u64().unwrap();
    let total = domain["total_bytes"].as_u64().unwrap();
    assert!(
        idle > 0 && idle <= total,
        "the postmaster, its helpers and this session hold something, at most the total: \
         {idle} of {total}"
    );
    assert_eq!(warning["needed_bytes"], idle + 20 * 64 * MIB);
    assert!(
        text.contains("WARNING  the limit 256.0 MiB is below what the server holds idle")
            && text.contains("max_connections (20)")
            && text.contains("raise OOM_GUARD_LIMIT"),
        "{text}"
    );
    let (limit, text) = json_and_text(&guarded, "limit");
    assert_eq!(warnings(&limit[0])[0]["kind"], "connections_do_not_fit");
    assert!(
        text.contains("WARNING        the limit 256.0 MiB"),
        "{text}"
    );
    // And to Prometheus, over a real scrape.
    let exporter = Exporter::start(&guarded.segment_dir);
    let metrics = http_get(&exporter.addr, "/metrics", None).body;
    let segment = guarded.segment().unwrap();
    let domain = segment.path().file_name().unwrap().to_string_lossy();
    for line in [
        format!(
            "oomguard_postgres_work_mem_bytes{{domain=\"{domain}\"}} {}",
            64 * MIB
        ),
        format!("oomguard_postgres_max_connections{{domain=\"{domain}\"}} 20"),
        format!(
            "oomguard_configuration_misfit{{domain=\"{domain}\",kind=\"connections_do_not_fit\"}} 1"
        ),
        format!("oomguard_configuration_misfit{{domain=\"{domain}\",kind=\"no_room_left\"}} 0"),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing in\n{metrics}"
        );
    }
    drop(exporter);

    // The operator follows the advice.
    set_work_mem(&guarded, &mut client, "1MB", MIB);
    let (status, text) = json_and_text(&guarded, "status");
    assert_eq!(status[0]["server_settings"]["work_mem_bytes"], MIB);
    assert_eq!(warnings(&status[0]).len(), 0, "{text}");
    assert!(!text.contains("WARNING"), "{text}");
}

#[test]
fn shared_memory_and_reserve_that_take_the_cgroup_limit_are_warned_about() {
    let dir = tempfile::Builder::new()
        .prefix("oomguard-cgroup-")
        .tempdir_in("/tmp")
        .unwrap();
    let root = cgroup_v2_fixture(dir.path(), &(256 * MIB).to_string(), 16 * MIB, 4 * MIB);
    let guarded = start_guarded(
        &[("OOM_GUARD_CGROUP_ROOT", root.to_str().unwrap())],
        &[("shared_buffers", "200MB")],
    );
    let _client = guarded.cluster.connect().unwrap();

    let (status, text) = json_and_text(&guarded, "status");
    let domain = &status[0];
    let shared = domain["limit_inputs"]["shared_memory_bytes"]
        .as_u64()
        .unwrap();
    assert!(shared > 200 * MIB, "{domain:#}");
    assert_eq!(domain["limit_bytes"], Value::Null, "nothing is left");
    let found = warnings(domain);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0]["kind"], "no_room_left");
    assert_eq!(found[0]["cgroup_limit_bytes"], 256 * MIB);
    assert_eq!(found[0]["shared_memory_bytes"], shared);
    assert_eq!(found[0]["reserve_bytes"], 64 * MIB, "the default reserve");
    assert!(
        text.contains("≥ cgroup limit 256.0 MiB")
            && text.contains("refuses nothing")
            && text.contains("Lower shared_buffers"),
        "{text}"
    );
    let (limit, _) = json_and_text(&guarded, "limit");
    assert_eq!(warnings(&limit[0])[0]["kind"], "no_room_left");
}
