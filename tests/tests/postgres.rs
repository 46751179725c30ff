//! End to end against a real PostgreSQL server (started as an unprivileged user) with the guard
//! preloaded in enforce mode: hog queries fail with SQLSTATE 53200 while the server, the hog's
//! own session and a bystander session all survive; and with a limit that is always exceeded the
//! server still starts, accepts connections, checkpoints and shuts down cleanly.

use oomguard_cluster::{backend_pid, pid_maps_library, GuardedCluster};
use oomguard_tests::library_path;
use oomguard_tests::sessions::{expect_out_of_memory, start_guarded};
use postgres::Client;

const MIB: i64 = 1 << 20;

fn pid_of(client: &mut Client) -> i32 {
    backend_pid(client).unwrap()
}

fn checkpointer_pid(client: &mut Client) -> u32 {
    oomguard_cluster::checkpointer_pid(client).unwrap()
}

fn one(client: &mut Client) -> i32 {
    client.query_one("SELECT 1", &[]).unwrap().get(0)
}

#[test]
fn hog_queries_fail_with_out_of_memory_and_the_server_survives() {
    let guarded = start_guarded(
        &[("OOM_GUARD_LIMIT", "256Mi"), ("OOM_GUARD_MODE", "enforce")],
        &[],
    );
    let cluster = &guarded.cluster;
    let postmaster = cluster.postmaster_pid().unwrap();

    let mut bystander = cluster.connect().unwrap();
    let mut hog = cluster.connect().unwrap();
    let hog_pid = pid_of(&mut hog);
    let checkpointer = checkpointer_pid(&mut bystander);
    for pid in [postmaster, hog_pid as u32, checkpointer] {
        assert!(
            pid_maps_library(pid, "liboomguard.so").unwrap(),
            "liboomguard.so is not mapped in server process {pid}"
        );
    }
    let baseline = guarded.snapshot().unwrap();
    assert_eq!(baseline.mode, "enforce");
    assert_eq!(baseline.limit_bytes, Some(256 << 20));
    assert!(
        baseline.process(hog_pid).is_some() && baseline.process(postmaster as i32).is_some(),
        "every server process has a slot: {baseline:#?}"
    );
    assert!(baseline.total_bytes < 64 * MIB, "{baseline:#?}");

    let hogs: [&[&str]; 3] = [
        &["SELECT cardinality(array_fill(1, ARRAY[100000000]))"],
        &[
            "SET work_mem = '2GB'",
            "SELECT count(*) FROM (SELECT g FROM generate_series(1, 30000000) g ORDER BY g DESC) s",
        ],
        &[
            "SET work_mem = '2GB'",
            "SET hash_mem_multiplier = 1",
            "SET enable_sort = off",
            "SELECT count(*) FROM (SELECT g % 20000000 AS k, count(*) FROM generate_series(1, 20000000) g GROUP BY 1) s",
        ],
    ];
    for statements in hogs {
        let message = expect_out_of_memory(&mut hog, statements);
        assert!(message.contains("out of memory"), "{message}");
        hog.batch_execute("RESET ALL").unwrap();
        assert_eq!(one(&mut hog), 1, "the hog's own session survives");
        assert_eq!(one(&mut bystander), 1, "the bystander survives");
        assert_eq!(pid_of(&mut hog), hog_pid, "same backend, not a reconnect");
    }

    let after = guarded.snapshot().unwrap();
    assert!(after.denied_allocations >= 3, "{after:#?}");
    let hog_slot = after.process(hog_pid).unwrap();
    assert_eq!(hog_slot.kind, "client backend");
    assert!(hog_slot.denials >= 3, "{hog_slot:#?}");
    for process in &after.processes {
        if process.pid != hog_pid {
            assert_eq!(process.denials, 0, "only the hog is refused: {process:#?}");
        }
    }
    assert!(
        after.total_bytes <= baseline.total_bytes + 32 * MIB,
        "the total returns near its baseline ({} before, {} after)",
        baseline.total_bytes,
        after.total_bytes
    );
    assert!(after.peak_bytes <= 256 * MIB + MIB, "{after:#?}");

    assert_eq!(checkpointer_pid(&mut bystander), checkpointer, "no restart");
    assert_eq!(cluster.postmaster_pid(), Some(postmaster));
    let crashes = guarded.crash_lines().unwrap();
    assert!(crashes.is_empty(), "the server crashed:\n{crashes:#?}");
    let log = cluster.log_text().unwrap();
    assert!(
        log.contains("out of memory"),
        "PostgreSQL logged the errors"
    );
    assert!(
        log.contains("refused malloc"),
        "the guard logged its refusals"
    );

    drop(hog);
    drop(bystander);
    let mut guarded = guarded;
    let outcome = guarded.cluster.stop().unwrap();
    assert!(
        outcome.clean,
        "{outcome:?}\n{}",
        guarded.cluster.log_tail(30)
    );
}

#[test]
fn a_server_over_its_limit_from_the_start_still_runs_checkpoints_and_stops_cleanly() {
    let guarded = GuardedCluster::start(
        &library_path(),
        &[("OOM_GUARD_LIMIT", "1"), ("OOM_GUARD_MODE", "enforce")],
        &[("log_checkpoints", "on")],
    )
    .expect("a guarded server starts even when every allocation is over the limit");
    let cluster = &guarded.cluster;
    let postmaster = cluster.postmaster_pid().unwrap();
    // A connection is accepted and authenticated (backend start-up is never refused).
    let client = cluster.connect().expect("connections are accepted");
    drop(client);
    let again = cluster.connect().expect("and accepted again");
    drop(again);

    let snapshot = guarded.snapshot().unwrap();
    let kinds: Vec<&str> = snapshot.processes.iter().map(|p| p.kind).collect();
    assert!(kinds.contains(&"postmaster"), "{kinds:?}");
    // The auxiliary processes, named by the type in their title where the guard did not need
    // to classify them.
    assert!(kinds.contains(&"checkpointer"), "{kinds:?}");
    assert!(!kinds.contains(&"unclassified"), "{kinds:?}");
    for process in &snapshot.processes {
        if process.kind != "client backend" {
            assert_eq!(process.denials, 0, "never refused: {process:#?}");
        }
    }
    assert_eq!(cluster.postmaster_pid(), Some(postmaster));

    let mut guarded = guarded;
    let outcome = guarded.cluster.stop().unwrap();
    let log = guarded.cluster.log_text().unwrap();
    assert!(outcome.clean, "{outcome:?}\n{log}");
    assert!(
        log.contains("checkpoint complete"),
        "the shutdown checkpoint ran:\n{log}"
    );
    assert!(log.contains("database system is shut down"), "{log}");
    let crashes: Vec<&str> = log
        .lines()
        .filter(|line| {
            oomguard_cluster::CRASH_LOG_LINES
                .iter()
                .any(|c| line.contains(c))
        })
        .collect();
    assert!(crashes.is_empty(), "{crashes:#?}");
}

/// PostgreSQL sets a session's local buffers up with `calloc` on its first use of a temporary
/// table (`InitLocalBuffers`) and turns a NULL there into `FATAL: out of memory`: the session
/// would be lost. The guard never refuses `calloc` in a PostgreSQL process (every call of it in
/// PostgreSQL's own code is such a site, or runs at start-up); what the statement allocates next
/// may still be refused, as an ERROR, and the session goes on.
#[test]
fn a_session_refused_at_its_first_temporary_table_keeps_its_session() {
    let guarded = start_guarded(
        &[("OOM_GUARD_LIMIT", "1Gi"), ("OOM_GUARD_MODE", "enforce")],
        &[],
    );
    let mut session = guarded.cluster.connect().unwrap();
    let pid = pid_of(&mut session);
    // 131072 local buffers: descriptor arrays of 8 MiB, far more than a thread's reservation
    // covers, so their calloc reaches the guard's decision.
    session
        .batch_execute("SET temp_buffers = '1GB'; CREATE TEMP TABLE first_use (x int)")
        .unwrap();
    let own = guarded.snapshot().unwrap().process(pid).unwrap().bytes;
    // Room for a few small blocks, not for the local buffers' descriptor arrays.
    session
        .batch_execute(&format!(
            "SET oomguard.backend_memory_limit = '{}kB'",
            (own >> 10) + 16
        ))
        .unwrap();
    let outcome =
        session.batch_execute("INSERT INTO first_use SELECT g FROM generate_series(1, 10) g");
    if let Err(error) = &outcome {
        let db = error
            .as_db_error()
            .unwrap_or_else(|| panic!("not a server error (the session is lost?): {error}"));
        // An ERROR, whatever its code: after the served calloc the next refusal may come from
        // the local buffers' hash table (`failed to initialize hash table`, 16), which
        // PostgreSQL sets up again on the next use.
        assert_eq!(db.severity(), "ERROR", "{db:?}");
    }
    session
        .batch_execute("RESET oomguard.backend_memory_limit")
        .expect("the session lives on");
    assert_eq!(one(&mut session), 1);
    assert_eq!(pid_of(&mut session), pid, "same backend");
    session
        .batch_execute("INSERT INTO first_use VALUES (42)")
        .unwrap();
    let log = guarded.cluster.log_text().unwrap();
    assert!(!log.contains("FATAL:  out of memory"), "{log}");
    assert!(
        log.contains(&format!("oomguard[{pid}]: refused")) || outcome.is_ok(),
        "neither refused nor run: {log}"
    );
}
