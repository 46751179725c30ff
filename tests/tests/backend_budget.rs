//! Per-backend budgets against a real PostgreSQL server: `oomguard.backend_memory_limit`
//! set the PostgreSQL way — `ALTER ROLE`, `ALTER DATABASE`, `SET`, `SET LOCAL`, `RESET`,
//! `PGOPTIONS` — and `OOM_GUARD_BACKEND_LIMIT` as the default. Every server here runs with a
//! container-wide limit of 4 GiB, far above what any hog takes: each refusal seen is the
//! budget's (the slot's cause says so, and the domain-limit counter stays at zero).
//!
//! What a budget means for the other processes that run queries:
//! - a parallel worker has its own budget, the leader's setting: PostgreSQL copies the leader's
//!   settings into each worker (`SerializeGUCState`), so a parallel query can take up to
//!   (1 + workers) × the budget, as it can take that many times `work_mem`;
//! - a background worker that connects to a database as a role (pg_cron's jobs) gets that
//!   role's and database's settings at connection start, as a session does.

use std::time::{Duration, Instant};

use oomguard_cluster::{backend_pid, pid_maps_library, GuardedCluster, PgBinaries};
use oomguard_core::budget::{BudgetSource, RefusalCause};
use oomguard_tests::sessions::{
    connect_as, expect_out_of_memory, run_pg_cron_job_once, start_guarded,
};
use postgres::Client;

const MIB: u64 = 1 << 20;
/// The container-wide limit: far above every hog below.
const DOMAIN_LIMIT: &str = "4Gi";
/// About 200 MB in one allocation (50 million int4).
const ARRAY_HOG: &str = "SELECT cardinality(array_fill(1, ARRAY[50000000]))";
/// About 300 MB of sort memory, grown chunk by chunk.
const SORT_HOG: &str = "SELECT count(*) FROM \
     (SELECT g FROM generate_series(1, 3000000) g ORDER BY g DESC) s";

fn start(guard_env: &[(&str, &str)], settings: &[(&str, &str)]) -> GuardedCluster {
    let mut env = vec![
        ("OOM_GUARD_LIMIT", DOMAIN_LIMIT),
        ("OOM_GUARD_MODE", "enforce"),
    ];
    env.extend_from_slice(guard_env);
    start_guarded(&env, settings)
}

/// What the guard recorded for `pid`: its budget in bytes (0: none), the budget's source, and
/// the cause of its latest refusal.
fn slot_of(server: &GuardedCluster, pid: i32) -> (u64, BudgetSource, RefusalCause) {
    let snapshot = server.snapshot().unwrap();
    let process = snapshot
        .process(pid)
        .unwrap_or_else(|| panic!("no slot for pid {pid}"));
    (
        process.budget_bytes.unwrap_or(0),
        process.budget_source,
        process.last_refusal_cause,
    )
}

/// Refusals made over the domain's limit and over budgets, domain-wide.
fn denials_by_cause(server: &GuardedCluster) -> (u64, u64) {
    let snapshot = server.snapshot().unwrap();
    (snapshot.domain_limit_denials, snapshot.budget_denials)
}

/// `query` must fail with `ERROR: out of memory` (SQLSTATE 53200) and the session must answer
/// the next query from the same backend. Returns the error as `sessions::describe` writes it
/// (message, DETAIL and CONTEXT).
fn assert_refused(client: &mut Client, query: &str) -> String {
    let pid = backend_pid(client).unwrap();
    let refusal = expect_out_of_memory(client, &[query]);
    assert_eq!(backend_pid(client).unwrap(), pid, "the session answers");
    refusal
}

/// `query` must succeed.
fn assert_runs(client: &mut Client, query: &str, what: &str) {
    if let Err(error) = client.batch_execute(query) {
        panic!("{what}: {query} failed: {error}");
    }
}

fn show_budget(client: &mut Client) -> String {
    client
        .query_one(
            "SELECT current_setting('oomguard.backend_memory_limit', true)",
            &[],
        )
        .unwrap()
        .get::<_, Option<String>>(0)
        .unwrap_or_default()
}

fn assert_no_crash(server: &GuardedCluster) {
    let crashes = server.crash_lines().unwrap();
    assert!(crashes.is_empty(), "the server crashed:\n{crashes:#?}");
}

/// The server log has a refusal line for `process` (as the line names it) with cause
/// `backend_budget`.
fn assert_budget_refusal_logged(server: &GuardedCluster, process: &str) {
    let log = server.cluster.log_text().unwrap();
    assert!(
        log.lines().any(|line| line.contains("oomguard[")
            && line.contains(process)
            && line.contains("would pass its budget")
            && line.contains("[cause backend_budget]")),
        "no budget refusal line for {process:?} in the server log:\n{}",
        server.cluster.log_tail(30)
    );
}

#[test]
fn budgets_by_role_database_and_session() {
    let server = start(&[], &[]);
    let cluster = &server.cluster;
    let mut admin = cluster.connect().unwrap();
    // One statement at a time: CREATE DATABASE refuses to run in a multi-statement batch.
    for statement in [
        "CREATE ROLE reporting LOGIN",
        "CREATE ROLE etl LOGIN",
        "ALTER ROLE reporting SET oomguard.backend_memory_limit = '64MB'",
        "CREATE DATABASE budgeted",
        "ALTER DATABASE budgeted SET oomguard.backend_memory_limit = '48MB'",
    ] {
        admin.batch_execute(statement).unwrap();
    }

    // ALTER ROLE: reporting's hogs fail, its session answers; etl runs the same hogs.
    let mut reporting = connect_as(cluster, "reporting", "postgres", "");
    let reporting_pid = backend_pid(&mut reporting).unwrap();
    assert!(
        pid_maps_library(reporting_pid as u32, "liboomguard.so").unwrap(),
        "liboomguard.so is not mapped in the backend"
    );
    assert_eq!(show_budget(&mut reporting), "64MB");
    assert_refused(&mut reporting, ARRAY_HOG);
    assert_refused(&mut reporting, &format!("SET work_mem = '1GB'; {SORT_HOG}"));
    let (budget, source, cause) = slot_of(&server, reporting_pid);
    assert_eq!(
        (budget, source, cause),
        (64 * MIB, BudgetSource::Setting, RefusalCause::BackendBudget)
    );
    let mut etl = connect_as(cluster, "etl", "postgres", "");
    let etl_pid = backend_pid(&mut etl).unwrap();
    assert_runs(&mut etl, ARRAY_HOG, "a role without a budget");
    assert_runs(
        &mut etl,
        &format!("SET work_mem = '1GB'; {SORT_HOG}"),
        "etl",
    );
    assert_eq!(slot_of(&server, etl_pid).2, RefusalCause::None);

    // SET and RESET in one session, SET LOCAL in one transaction.
    assert_runs(
        &mut reporting,
        "SET oomguard.backend_memory_limit = '1GB'",
        "SET",
    );
    assert_runs(&mut reporting, ARRAY_HOG, "after SET to 1GB");
    assert_eq!(slot_of(&server, reporting_pid).0, 1 << 30);
    assert_runs(
        &mut reporting,
        "RESET oomguard.backend_memory_limit",
        "RESET",
    );
    assert_eq!(
        show_budget(&mut reporting),
        "64MB",
        "RESET goes back to the role's"
    );
    assert_refused(&mut reporting, ARRAY_HOG);
    assert_runs(
        &mut reporting,
        &format!("BEGIN; SET LOCAL oomguard.backend_memory_limit = 'off'; {ARRAY_HOG}; COMMIT"),
        "SET LOCAL off",
    );
    assert_refused(&mut reporting, ARRAY_HOG);
    assert_runs(
        &mut reporting,
        "SET oomguard.backend_memory_limit = '2Gi'",
        "guard form",
    );
    assert_runs(&mut reporting, ARRAY_HOG, "after SET to 2Gi");
    assert_eq!(slot_of(&server, reporting_pid).0, 2 << 30);

    // PGOPTIONS (the startup packet's options) beats the role's setting.
    let mut with_options = connect_as(
        cluster,
        "reporting",
        "postgres",
        "-c oomguard.backend_memory_limit=512MB",
    );
    assert_eq!(show_budget(&mut with_options), "512MB");
    assert_runs(&mut with_options, ARRAY_HOG, "PGOPTIONS raised the budget");

    // ALTER DATABASE: every role connecting to `budgeted` has 48 MB, etl included.
    let mut in_budgeted = connect_as(cluster, "etl", "budgeted", "");
    let in_budgeted_pid = backend_pid(&mut in_budgeted).unwrap();
    assert_refused(&mut in_budgeted, ARRAY_HOG);
    assert_eq!(
        slot_of(&server, in_budgeted_pid),
        (48 * MIB, BudgetSource::Setting, RefusalCause::BackendBudget)
    );

    // A malformed value is one line in the log and no budget; the session goes on.
    assert_runs(
        &mut etl,
        "SET oomguard.backend_memory_limit = '64 parsecs'",
        "PostgreSQL takes any text for a placeholder",
    );
    assert_runs(&mut etl, ARRAY_HOG, "a malformed budget is no budget");
    assert_eq!(slot_of(&server, etl_pid).1, BudgetSource::MalformedSetting);
    assert_runs(&mut etl, ARRAY_HOG, "and it stays none");
    let log = cluster.log_text().unwrap();
    let complaints = log
        .lines()
        .filter(|line| line.contains("oomguard.backend_memory_limit=\"64 parsecs\" is not valid"))
        .count();
    assert_eq!(
        complaints,
        1,
        "one line per malformed value:\n{}",
        cluster.log_tail(20)
    );

    let (domain_limit, budget) = denials_by_cause(&server);
    assert_eq!(domain_limit, 0, "the domain's limit refused nothing");
    assert!(budget >= 5, "budget refusals counted: {budget}");
    assert_budget_refusal_logged(&server, "in client backend:");
    assert_no_crash(&server);
}

/// A hash aggregate over distinct 32 kB keys (`keys` of them), planned as a parallel partial
/// aggregate with two workers and without the leader: the hash tables are in the workers.
fn parallel_hog(client: &mut Client, keys: u32) -> String {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS wide_keys;
             CREATE TABLE wide_keys AS SELECT g FROM generate_series(1, {keys}) g;
             ALTER TABLE wide_keys ALTER COLUMN g SET (n_distinct = 10);
             ANALYZE wide_keys;
             SET work_mem = '2GB';
             SET enable_sort = off;
             SET max_parallel_workers_per_gather = 2;
             SET parallel_setup_cost = 0;
             SET parallel_tuple_cost = 0;
             SET min_parallel_table_scan_size = 0;
             SET parallel_leader_participation = off;"
        ))
        .unwrap();
    let query = "SELECT count(*) FROM \
                 (SELECT repeat(md5(g::text), 1000) AS k FROM wide_keys GROUP BY 1) s";
    let plan: Vec<String> = client
        .query(&format!("EXPLAIN (COSTS OFF) {query}"), &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        plan.iter().any(|l| l.contains("Partial HashAggregate"))
            && plan.iter().any(|l| l.contains("Workers Planned: 2")),
        "the hash tables are built in parallel workers: {plan:#?}"
    );
    query.to_owned()
}

#[test]
fn the_default_budget_and_parallel_workers() {
    let server = start(&[("OOM_GUARD_BACKEND_LIMIT", "64Mi")], &[]);
    let cluster = &server.cluster;

    // The environment's default applies to every session without the setting.
    let mut session = cluster.connect().unwrap();
    let pid = backend_pid(&mut session).unwrap();
    assert_refused(&mut session, ARRAY_HOG);
    assert_eq!(
        slot_of(&server, pid),
        (64 * MIB, BudgetSource::Default, RefusalCause::BackendBudget)
    );
    // The setting overrides it, both ways.
    assert_runs(
        &mut session,
        "SET oomguard.backend_memory_limit = 'off'",
        "SET off",
    );
    assert_runs(&mut session, ARRAY_HOG, "no budget once set off");
    assert_eq!(slot_of(&server, pid).0, 0);
    assert_runs(
        &mut session,
        "SET oomguard.backend_memory_limit = '32MB'",
        "SET",
    );
    assert_refused(&mut session, ARRAY_HOG);
    assert_eq!(slot_of(&server, pid).0, 32 * MIB);
    assert_runs(&mut session, "RESET oomguard.backend_memory_limit", "RESET");

    // Parallel workers: 6000 keys of 32 kB, about 100 MB of hash table in each worker.
    let query = parallel_hog(&mut session, 6000);
    // Under the default (64 MiB each), a worker is refused: the leader's query gets the ERROR.
    let message = assert_refused(&mut session, &query);
    assert!(message.contains("parallel worker"), "{message}");
    assert_budget_refusal_logged(&server, "in parallel worker:");
    // With the leader's setting at 1GB, the workers inherit it and the same query completes.
    assert_runs(
        &mut session,
        "SET oomguard.backend_memory_limit = '1GB'",
        "SET",
    );
    assert_runs(
        &mut session,
        &query,
        "workers with the leader's budget of 1GB",
    );
    assert_runs(&mut session, "RESET oomguard.backend_memory_limit", "RESET");

    let (domain_limit, budget) = denials_by_cause(&server);
    assert_eq!(domain_limit, 0, "the domain's limit refused nothing");
    assert!(budget >= 3, "budget refusals counted: {budget}");
    assert_no_crash(&server);
}

#[test]
fn a_pg_cron_job_runs_under_its_roles_budget() {
    if oomguard_tests::pg_cron_opted_out("a_pg_cron_job_runs_under_its_roles_budget") {
        return;
    }
    // Before the server starts: it preloads pg_cron.
    oomguard_tests::require_pg_cron(&PgBinaries::discover().unwrap());
    let server = start(
        &[],
        &[
            ("shared_preload_libraries", "pg_cron"),
            ("cron.database_name", "postgres"),
            ("cron.use_background_workers", "on"),
        ],
    );
    let cluster = &server.cluster;
    let mut admin = cluster.connect().unwrap();
    admin
        .batch_execute(
            "CREATE EXTENSION pg_cron;
             CREATE ROLE nightly LOGIN;
             GRANT USAGE ON SCHEMA cron TO nightly;
             ALTER ROLE nightly SET oomguard.backend_memory_limit = '64MB';",
        )
        .unwrap();
    // The job is nightly's: pg_cron runs it in a background worker connected as nightly.
    let mut nightly = connect_as(cluster, "nightly", "postgres", "");
    let (status, message) = run_pg_cron_job_once(&mut nightly, &mut admin, "budget-hog", ARRAY_HOG);
    assert_eq!(status, "failed", "the job ended with {message:?}");
    assert!(message.contains("out of memory"), "{message}");
    assert_budget_refusal_logged(&server, "in background worker \"pg_cron\":");
    let (domain_limit, budget) = denials_by_cause(&server);
    assert_eq!(domain_limit, 0, "the domain's limit refused nothing");
    assert!(budget >= 1);
    assert_no_crash(&server);
}

/// `OOM_GUARD_BACKEND_LIMIT` is not for autovacuum: vacuum and analyze would fail the same table
/// at every cycle. An auto-analyze that needs ~130 MB completes under an 8 MiB default that
/// refuses the same ANALYZE in a session. Failed before the fix (the worker was refused).
#[test]
fn autovacuum_workers_are_not_held_to_the_default_budget() {
    let server = start(
        &[("OOM_GUARD_BACKEND_LIMIT", "8Mi")],
        &[
            ("autovacuum_naptime", "1"),
            ("log_autovacuum_min_duration", "0"),
        ],
    );
    let cluster = &server.cluster;
    // This session has no budget: it builds the table.
    let mut owner = connect_as(
        cluster,
        "postgres",
        "postgres",
        "-c oomguard.backend_memory_limit=off",
    );
    owner
        .batch_execute(
            "CREATE TABLE hungry (id int, pad text) WITH (autovacuum_enabled = off);
             ALTER TABLE hungry ALTER COLUMN pad SET STORAGE PLAIN;
             ALTER TABLE hungry ALTER COLUMN pad SET STATISTICS 1000;
             INSERT INTO hungry SELECT g, repeat(md5(g::text), 200) FROM generate_series(1, 20000) g;",
        )
        .unwrap();
    // A session under the default: the same ANALYZE needs more than 8 MiB.
    let mut session = cluster.connect().unwrap();
    assert_refused(&mut session, "ANALYZE hungry");
    owner
        .batch_execute("ALTER TABLE hungry SET (autovacuum_enabled = on)")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let analyzed: i64 = owner
            .query_one(
                "SELECT autoanalyze_count FROM pg_stat_user_tables WHERE relname = 'hungry'",
                &[],
            )
            .unwrap()
            .get(0);
        if analyzed > 0 {
            break;
        }
        let log = cluster.log_text().unwrap();
        assert!(
            !log.lines()
                .any(|l| l.contains("oomguard[") && l.contains("in autovacuum worker:")),
            "an autovacuum worker was refused:\n{}",
            cluster.log_tail(20)
        );
        assert!(
            Instant::now() < deadline,
            "no auto-analyze of hungry within 120 s:\n{}",
            cluster.log_tail(20)
        );
        // pg_stat_user_tables is a snapshot per transaction: poll again after a pause.
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_no_crash(&server);
}
