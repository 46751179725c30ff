//! End to end in a real memory cgroup: PostgreSQL meets the kernel's OOM killer.
//!
//! Each test creates a child memory cgroup of 768 MiB under this process's own
//! ([`MemoryCgroup`]; v1 `memory.limit_in_bytes` + `memory.memsw.limit_in_bytes`, or v2
//! `memory.max` + `memory.swap.max = 0`), starts a throwaway server inside it (the postmaster
//! joins the cgroup before it execs, so every server process is charged there), and removes the
//! cgroup afterwards, also when the test fails.
//!
//! - [`unguarded_baseline_is_oom_killed`]: without the guard one hash-aggregate hog gets a server
//!   process SIGKILLed by the kernel, the cgroup's `oom_kill` count moves and the postmaster resets
//!   every connection — proof that the memory hogs below bite.
//! - [`guarded_by_ld_preload_alone`]: with nothing but `LD_PRELOAD` (no `OOM_GUARD_LIMIT`: the
//!   guard derives its limit from the cgroup, the postmaster's shared memory and its reserve), one
//!   server runs these scenarios one after the other: client-backend hogs; concurrent sessions
//!   that each fit but together pass the limit; a parallel hash aggregate with the leader taking
//!   part; the same with all the memory in the parallel workers; a pg_cron job in a background
//!   worker; an autovacuum worker (auto-analyze of a wide table). Each must end in `ERROR: out of
//!   memory`, and around each the test checks that the cgroup's `oom_kill` count did not move, the
//!   log has no crash lines, the checkpointer is the same process, `pg_stat_database.xact_commit`
//!   was not reset, rows committed before are all there, and an idle second session still
//!   answers. Every scenario runs even if an earlier one failed (each checks only its own part
//!   of the log), and the test fails at the end listing every failed scenario. The last three
//!   need a guard that may refuse parallel workers, background workers and autovacuum workers;
//!   a guard that refuses only client backends lets the kernel kill them (and says so here).
//!
//! Where no memory cgroup can be created the tests fail and say so; `OOMGUARD_SKIP_REAL_CGROUP=1`
//! opts out explicitly (and loudly). pg_cron comes from Debian's `postgresql-NN-cron`, which
//! `tools/install-deps test` installs; `OOMGUARD_WITHOUT_PG_CRON=<why>` runs every scenario but
//! the pg_cron job, and says so (for a major without a pg_cron package).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oomguard_cli::demo::HASH_AGGREGATE_HOG;
use oomguard_cluster::{
    backend_pid, Cluster, ClusterOptions, GuardedCluster, PgBinaries, CRASH_LOG_LINES,
};
use oomguard_core::layout::{LimitSource, SharedMemorySource};
use oomguard_tests::cgroup::{self, opted_out, MemoryCgroup};
use oomguard_tests::library_path;
use oomguard_tests::sessions::{assert_out_of_memory, describe, expect_out_of_memory};
use postgres::error::SqlState;
use postgres::Client;

const MIB: u64 = 1 << 20;
/// The cgroup's memory limit: room for one server with 128 MB of shared buffers, not for a hog.
const CGROUP_LIMIT: u64 = 768 * MIB;

/// The two tests run one after the other: each server has the machine's two cores to itself.
static ONE_SERVER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The server settings of both tests.
fn settings() -> Vec<(&'static str, &'static str)> {
    let mut settings = vec![
        ("shared_buffers", "128MB"),
        ("max_connections", "30"),
        ("max_worker_processes", "20"),
        ("max_parallel_workers", "8"),
        ("shared_preload_libraries", "pg_cron"),
        ("cron.database_name", "postgres"),
        ("cron.use_background_workers", "on"),
        ("cron.max_running_jobs", "4"),
        ("autovacuum_naptime", "1"),
        ("log_autovacuum_min_duration", "0"),
    ];
    if without_pg_cron() {
        settings
            .retain(|(name, _)| *name != "shared_preload_libraries" && !name.starts_with("cron."));
    }
    settings
}

/// Whether this run opted out of the pg_cron scenario (and says so).
fn without_pg_cron() -> bool {
    oomguard_tests::pg_cron_opted_out("the pg_cron background-worker job scenario")
}

/// How both tests create their cluster: in `cgroup`, with the server binaries found as usual,
/// which must have pg_cron next to them (unless this run opted out; fails with the fix).
fn options(cgroup: &MemoryCgroup) -> ClusterOptions {
    let binaries =
        PgBinaries::discover().unwrap_or_else(|e| panic!("no PostgreSQL server binaries: {e}"));
    if !without_pg_cron() {
        oomguard_tests::require_pg_cron(&binaries);
    }
    ClusterOptions {
        binaries: Some(binaries),
        cgroup: Some(cgroup.path().to_owned()),
        ..Default::default()
    }
}

fn string_settings() -> Vec<(String, String)> {
    settings()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Starts a server in `cgroup` without the guard.
fn start_unguarded(cgroup: &MemoryCgroup) -> Cluster {
    let mut cluster = Cluster::create_temp(&options(cgroup)).expect("create a cluster");
    cluster
        .start(&[], &string_settings())
        .expect("start PostgreSQL in the cgroup");
    assert_in_cgroup(&cluster, cgroup);
    cluster
}

/// Starts a server in `cgroup` guarded by `LD_PRELOAD` alone (plus `OOM_GUARD_DIR`, which only
/// says where the segment lives, so the test can read it). [`GuardedCluster::start_with`] checks
/// that the postmaster maps the guard.
fn start_guarded(cgroup: &MemoryCgroup) -> GuardedCluster {
    let guarded = GuardedCluster::start_with(&options(cgroup), &library_path(), &[], &settings())
        .expect("start the guarded PostgreSQL in the cgroup");
    assert_in_cgroup(&guarded.cluster, cgroup);
    guarded
}

fn assert_in_cgroup(cluster: &Cluster, cgroup: &MemoryCgroup) {
    let postmaster = cluster.postmaster_pid().unwrap();
    let pids = cgroup.pids().unwrap();
    assert!(
        pids.contains(&postmaster),
        "the postmaster {postmaster} is not in {} (it holds {pids:?})",
        cgroup.path().display()
    );
    assert!(pids.len() > 1, "its children are there too: {pids:?}");
}

/// Connects, retrying while the server is (re)starting, e.g. after a crash in an earlier
/// scenario.
fn connect_within(cluster: &Cluster, timeout: Duration) -> Client {
    let deadline = Instant::now() + timeout;
    loop {
        match cluster.connect() {
            Ok(client) => return client,
            Err(e) if Instant::now() >= deadline => {
                panic!("could not connect within {timeout:?}: {e:#}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn pid_of(client: &mut Client) -> i32 {
    backend_pid(client).unwrap()
}

fn checkpointer_pid(client: &mut Client) -> u32 {
    oomguard_cluster::checkpointer_pid(client).unwrap()
}

/// `pg_stat_database.xact_commit` of this database, with this session's own counts flushed.
fn xact_commit(client: &mut Client) -> i64 {
    client
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .unwrap();
    client
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .unwrap()
        .get(0)
}

fn log_len(cluster: &Cluster) -> usize {
    cluster.log_text().unwrap().len()
}

fn log_since(cluster: &Cluster, offset: usize) -> String {
    let log = cluster.log_text().unwrap();
    log.get(offset..).unwrap_or("").to_owned()
}

fn crash_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| CRASH_LOG_LINES.iter().any(|crash| line.contains(crash)))
        .map(str::to_owned)
        .collect()
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(panic without a message)".to_owned())
}

// ---------------------------------------------------------------------------------------------
// The unguarded baseline
// ---------------------------------------------------------------------------------------------

#[test]
fn unguarded_baseline_is_oom_killed() {
    if opted_out("unguarded_baseline_is_oom_killed") {
        return;
    }
    let _serial = ONE_SERVER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let cgroup = cgroup::create("baseline", CGROUP_LIMIT);
    let cluster = start_unguarded(&cgroup);
    let oom_before = cgroup.oom_kills().unwrap();
    let mut bystander = cluster.connect().unwrap();
    let mut hog = cluster.connect().unwrap();
    hog.batch_execute(HASH_AGGREGATE_HOG[0]).unwrap();
    let result = hog.batch_execute(HASH_AGGREGATE_HOG[1]);
    let error = result.expect_err("the hog cannot finish in 768 MiB");
    assert!(
        error.as_db_error().is_none() || error.code() != Some(&SqlState::OUT_OF_MEMORY),
        "without the guard the hog is not refused but killed: {error}"
    );

    // The postmaster logs the kill and resets when it has reaped the killed backend.
    let deadline = Instant::now() + Duration::from_secs(30);
    let crashes = loop {
        let crashes = crash_lines(&cluster.log_text().unwrap());
        if crashes
            .iter()
            .any(|l| l.contains("terminating any other active"))
        {
            break crashes;
        }
        assert!(
            Instant::now() < deadline,
            "no crash in the log:\n{}",
            cluster.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        crashes
            .iter()
            .any(|l| l.contains("was terminated by signal 9: Killed")),
        "a server process was SIGKILLed: {crashes:#?}"
    );
    let oom_after = cgroup.oom_kills().unwrap();
    assert!(
        oom_after > oom_before,
        "the kernel's OOM killer did it: oom_kill {oom_before} -> {oom_after}"
    );
    assert!(
        bystander.simple_query("SELECT 1").is_err(),
        "the bystander's connection was reset too"
    );
    eprintln!(
        "baseline: hog ended with {error}; oom_kill {oom_before} -> {oom_after}; log:\n{}",
        crashes.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Guarded by LD_PRELOAD alone
// ---------------------------------------------------------------------------------------------

/// What the scenarios share: the server and its cgroup.
struct Ctx<'a> {
    server: &'a GuardedCluster,
    cgroup: &'a MemoryCgroup,
}

impl Ctx<'_> {
    fn connect(&self) -> Client {
        connect_within(&self.server.cluster, Duration::from_secs(60))
    }
}

/// A scenario's body: returns the ERROR texts it saw, panics when something else happened.
type Scenario = fn(&Ctx) -> Vec<String>;

/// What became of one scenario.
struct Outcome {
    name: &'static str,
    errors: Vec<String>,
    oom_kills: (u64, u64),
    failures: Vec<String>,
    seconds: f64,
}

/// Runs `body` (which returns the ERROR texts it saw) with the crash detectors around it.
fn run_scenario(ctx: &Ctx, name: &'static str, body: Scenario) -> Outcome {
    let started = Instant::now();
    let cluster = &ctx.server.cluster;
    let mut failures = Vec::new();
    let mut idle = ctx.connect();
    let offset = log_len(cluster);
    let oom_before = ctx.cgroup.oom_kills().unwrap();
    let checkpointer = checkpointer_pid(&mut idle);
    idle.batch_execute(&format!(
        "SET synchronous_commit = on;
         INSERT INTO witness SELECT '{name}', g FROM generate_series(1, 1000) g"
    ))
    .unwrap();
    let commits_before = xact_commit(&mut idle);
    if commits_before == 0 {
        failures.push("pg_stat_database.xact_commit does not count".to_owned());
    }

    let errors = match catch_unwind(AssertUnwindSafe(|| body(ctx))) {
        Ok(errors) => errors,
        Err(payload) => {
            failures.push(panic_text(&*payload));
            Vec::new()
        }
    };

    let oom_after = ctx.cgroup.oom_kills().unwrap();
    if oom_after != oom_before {
        failures.push(format!(
            "the kernel's OOM killer struck: oom_kill {oom_before} -> {oom_after}"
        ));
    }
    let crashes = crash_lines(&log_since(cluster, offset));
    if !crashes.is_empty() {
        failures.push(format!("crash lines in the server log: {crashes:#?}"));
    }
    match idle.simple_query("SELECT 1") {
        Ok(_) => {
            let witnessed: i64 = idle
                .query_one("SELECT count(*) FROM witness WHERE scenario = $1", &[&name])
                .unwrap()
                .get(0);
            if witnessed != 1000 {
                failures.push(format!(
                    "{witnessed} of the 1000 rows written before are there"
                ));
            }
            let now = checkpointer_pid(&mut idle);
            if now != checkpointer {
                failures.push(format!("the checkpointer changed: {checkpointer} -> {now}"));
            }
            let commits_after = xact_commit(&mut idle);
            if commits_after < commits_before {
                failures.push(format!(
                    "pg_stat_database.xact_commit was reset: {commits_before} -> {commits_after}"
                ));
            }
        }
        Err(e) => failures.push(format!("the idle second session is gone: {e}")),
    }
    Outcome {
        name,
        errors,
        oom_kills: (oom_before, oom_after),
        failures,
        seconds: started.elapsed().as_secs_f64(),
    }
}

#[test]
fn guarded_by_ld_preload_alone() {
    if opted_out("guarded_by_ld_preload_alone") {
        return;
    }
    let _serial = ONE_SERVER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let cgroup = cgroup::create("guarded", CGROUP_LIMIT);
    let server = start_guarded(&cgroup);
    let limit = check_derived_limit(&server);
    eprintln!("derived limit: {limit}");

    let mut setup = server.cluster.connect().unwrap();
    setup
        .batch_execute(
            "CREATE TABLE witness (scenario text, n int);
             CREATE TABLE wide_keys AS SELECT g FROM generate_series(1, 40000) g;
             ALTER TABLE wide_keys ALTER COLUMN g SET (n_distinct = 10);
             ANALYZE wide_keys;",
        )
        .unwrap();
    if !without_pg_cron() {
        setup.batch_execute("CREATE EXTENSION pg_cron").unwrap();
    }
    drop(setup);

    let ctx = Ctx {
        server: &server,
        cgroup: &cgroup,
    };
    let mut scenarios: Vec<(&'static str, Scenario)> = vec![
        ("client-backend hogs", client_backend_hogs),
        ("concurrent sessions", concurrent_sessions),
        ("parallel query, leader taking part", parallel_with_leader),
        ("parallel query, memory in the workers", parallel_in_workers),
        ("pg_cron background-worker job", pg_cron_job),
        ("autovacuum worker", autovacuum_worker),
    ];
    if without_pg_cron() {
        scenarios.retain(|(name, _)| !name.starts_with("pg_cron"));
    }
    let outcomes: Vec<Outcome> = scenarios
        .into_iter()
        .map(|(name, body)| run_scenario(&ctx, name, body))
        .collect();

    let mut report = format!("guarded by LD_PRELOAD alone, {limit}\n");
    for outcome in &outcomes {
        report.push_str(&format!(
            "- {}: {} in {:.1} s, oom_kill {} -> {}\n",
            outcome.name,
            if outcome.failures.is_empty() {
                "ok"
            } else {
                "FAILED"
            },
            outcome.seconds,
            outcome.oom_kills.0,
            outcome.oom_kills.1
        ));
        for error in &outcome.errors {
            report.push_str(&format!("    ERROR: {error}\n"));
        }
        for failure in &outcome.failures {
            report.push_str(&format!("    failure: {failure}\n"));
        }
    }
    eprintln!("{report}");
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.failures.is_empty())
        .map(|o| o.name)
        .collect();
    assert!(failed.is_empty(), "failed scenarios: {failed:?}\n{report}");
}

/// Checks that the guard derived its limit from this cgroup and returns it, explained.
fn check_derived_limit(server: &GuardedCluster) -> String {
    let segment = server.segment().unwrap();
    let header = segment.view().unwrap().header;
    let inputs = &header.limit_inputs;
    assert_eq!(
        LimitSource::from_raw(header.limit_source.load(Relaxed)),
        LimitSource::Derived,
        "no OOM_GUARD_LIMIT: the limit is derived"
    );
    assert_eq!(inputs.cgroup_limit_bytes.load(Relaxed), CGROUP_LIMIT);
    assert_eq!(
        SharedMemorySource::from_raw(inputs.shared_memory_source.load(Relaxed)),
        SharedMemorySource::Observed
    );
    let shared = inputs.shared_memory_bytes.load(Relaxed);
    let reserve = inputs.reserve_bytes.load(Relaxed);
    let limit = header.limit_bytes.load(Relaxed);
    assert!(
        shared > 128 * MIB,
        "shared_buffers alone is 128 MB: {shared}"
    );
    assert!(
        reserve.abs_diff(CGROUP_LIMIT / 10) < 4096,
        "the default reserve is 10% of the cgroup's limit: {reserve}"
    );
    assert_eq!(limit, CGROUP_LIMIT - shared - reserve);
    let mib = |b: u64| b as f64 / MIB as f64;
    format!(
        "limit {:.1} MiB = cgroup {:.1} − shared memory {:.1} − reserve {:.1}",
        mib(limit),
        mib(CGROUP_LIMIT),
        mib(shared),
        mib(reserve)
    )
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/// Three different hogs in one client backend; the session survives each.
fn client_backend_hogs(ctx: &Ctx) -> Vec<String> {
    let mut hog = ctx.connect();
    let pid = pid_of(&mut hog);
    let hogs: [&[&str]; 3] = [
        &HASH_AGGREGATE_HOG,
        // 800 MB in one allocation.
        &["SELECT cardinality(array_fill(1::bigint, ARRAY[100000000]))"],
        &[
            "SET work_mem = '2GB'",
            "SELECT count(*) FROM (SELECT g FROM generate_series(1, 30000000) g ORDER BY g DESC) s",
        ],
    ];
    let mut errors = Vec::new();
    for statements in hogs {
        errors.push(expect_out_of_memory(&mut hog, statements));
        hog.batch_execute("RESET ALL").unwrap();
        assert_eq!(pid_of(&mut hog), pid, "the hog's own session survives");
    }
    errors
}

/// Releases the gate's advisory lock. The unlock itself can be refused while the sessions hold
/// the domain at its limit (after one refusal the guard's overdraft lets the next try through),
/// so it is retried; a gate session that failed otherwise has ended, and its lock with it.
fn open_gate(gate: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match gate.batch_execute("SELECT pg_advisory_unlock(4242)") {
            Err(e) if e.code() == Some(&SqlState::OUT_OF_MEMORY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => return,
        }
    }
}

/// Waits (at most 120 s) until every session either holds its memory and waits at the gate or
/// has ended.
fn wait_until_all_hold_or_ended<T>(
    ctx: &Ctx,
    gate: &mut Client,
    handles: &[std::thread::ScopedJoinHandle<'_, T>],
    pids: &[i32],
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let finished = handles.iter().filter(|h| h.is_finished()).count();
        let counted = gate.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1) \
             AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
            &[&pids],
        );
        let waiting: i64 = match counted {
            Ok(row) => row.get(0),
            // The gate is a client backend too: while the sessions hold the domain at its
            // limit, its own query can be refused. That is the guard working; ask again.
            Err(e) if e.code() == Some(&SqlState::OUT_OF_MEMORY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => {
                let detail = e.as_db_error().map(describe).unwrap_or_default();
                return Err(format!("the gate session failed: {e} {detail}"));
            }
        };
        if finished + waiting as usize == handles.len() {
            let usage = ctx.cgroup.usage_bytes().map_err(|e| e.to_string())?;
            eprintln!(
                "concurrent sessions: {waiting} hold their memory and wait, {finished} ended; \
                 the cgroup charges {} MiB",
                usage / MIB
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "after 120 s only {finished} sessions ended and {waiting} wait"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Eight sessions each hold ~80 MB (160 MB for a moment while PL/pgSQL copies the array into
/// its variable) at the same time: one alone fits the limit easily, eight need ~640 MB, more
/// than the limit and than the cgroup's room. Each allocates, then waits for an advisory lock
/// the test holds until every session either waits or has failed.
fn concurrent_sessions(ctx: &Ctx) -> Vec<String> {
    const SESSIONS: usize = 8;
    const HOLD: &str = "DO $$DECLARE a int[]; BEGIN
        a := array_fill(1, ARRAY[20000000]);
        PERFORM pg_advisory_lock_shared(4242);
        PERFORM pg_advisory_unlock_shared(4242);
        RAISE NOTICE 'held % elements', cardinality(a);
    END$$";
    let mut gate = ctx.connect();
    gate.batch_execute("SELECT pg_advisory_lock(4242)").unwrap();
    let mut clients: Vec<Client> = (0..SESSIONS).map(|_| ctx.connect()).collect();
    let pids: Vec<i32> = clients.iter_mut().map(pid_of).collect();

    let results: Vec<Result<(), postgres::Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .into_iter()
            .map(|mut client| scope.spawn(move || client.batch_execute(HOLD)))
            .collect();
        // Whatever happens while waiting, the gate is opened before the scope joins the
        // sessions: a panic here with the gate shut would leave them (and the test) waiting.
        let waited = wait_until_all_hold_or_ended(ctx, &mut gate, &handles, &pids);
        open_gate(&mut gate);
        if let Err(failure) = waited {
            panic!("{failure}");
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut errors = Vec::new();
    let mut succeeded = 0;
    for result in results {
        match result {
            Ok(()) => succeeded += 1,
            Err(error) => errors.push(assert_out_of_memory("a session holding ~80 MB", &error)),
        }
    }
    assert!(
        !errors.is_empty(),
        "{SESSIONS} sessions of ~80 MB at once pass the limit: some must be refused"
    );
    assert!(
        succeeded >= 1,
        "each session alone fits, so the ones that got their memory finish: {errors:#?}"
    );
    let one: i32 = gate.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
    errors
}

/// A hash aggregate over distinct 32 kB keys (40000 of them: 1.3 GB), planned as a parallel
/// partial aggregate (the table claims 10 distinct values, so partial aggregation looks
/// worthwhile): each participant builds a hash table of its share of the rows.
fn parallel_hash_aggregate(ctx: &Ctx, leader_participation: bool) -> Vec<String> {
    let mut client = ctx.connect();
    let pid = pid_of(&mut client);
    client
        .batch_execute(&format!(
            "SET work_mem = '2GB';
             SET enable_sort = off;
             SET max_parallel_workers_per_gather = 2;
             SET parallel_setup_cost = 0;
             SET parallel_tuple_cost = 0;
             SET min_parallel_table_scan_size = 0;
             SET parallel_leader_participation = {leader_participation};"
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
    let error = expect_out_of_memory(&mut client, &[query]);
    client.batch_execute("RESET ALL").unwrap();
    assert_eq!(pid_of(&mut client), pid, "the leader's session survives");
    vec![error]
}

fn parallel_with_leader(ctx: &Ctx) -> Vec<String> {
    parallel_hash_aggregate(ctx, true)
}

fn parallel_in_workers(ctx: &Ctx) -> Vec<String> {
    let errors = parallel_hash_aggregate(ctx, false);
    assert_refusal_line_names(ctx, "in parallel worker:");
    errors
}

/// The guard's refusal line in the server log names the process as `pg_stat_activity` would.
fn assert_refusal_line_names(ctx: &Ctx, process: &str) {
    let log = ctx.server.cluster.log_text().unwrap();
    assert!(
        log.lines()
            .any(|line| line.contains("oomguard[") && line.contains(process)),
        "no refusal line naming {process:?} in the server log"
    );
}

/// A pg_cron job (in a background worker: `cron.use_background_workers = on`) running the
/// hash-aggregate hog must fail with `out of memory` in `cron.job_run_details`.
fn pg_cron_job(ctx: &Ctx) -> Vec<String> {
    let command = "DO $$BEGIN
        PERFORM set_config('work_mem', '2GB', true);
        PERFORM count(*) FROM (SELECT g, count(*) FROM generate_series(1, 20000000) g GROUP BY g) s;
    END$$";
    let mut client = ctx.connect();
    // Every second where pg_cron supports it (≥ 1.5), else at the next full minute (Debian 12
    // ships 1.4).
    let job: i64 = match client.query_one(
        "SELECT cron.schedule('oomguard-hog', '1 seconds', $1)",
        &[&command],
    ) {
        Ok(row) => row.get(0),
        Err(_) => client
            .query_one(
                "SELECT cron.schedule('oomguard-hog', '* * * * *', $1)",
                &[&command],
            )
            .unwrap()
            .get(0),
    };
    let _unschedule = Unschedule {
        cluster: &ctx.server.cluster,
        job,
    };
    let deadline = Instant::now() + Duration::from_secs(150);
    let finished = loop {
        let row = client
            .query_opt(
                "SELECT status, coalesce(return_message, '') FROM cron.job_run_details \
                 WHERE jobid = $1 AND status IN ('failed', 'succeeded') ORDER BY runid LIMIT 1",
                &[&job],
            )
            .map_err(|e| e.to_string());
        match row {
            Ok(Some(row)) => break Ok((row.get::<_, String>(0), row.get::<_, String>(1))),
            Ok(None) => {}
            Err(_) => client = ctx.connect(), // the server crashed and came back
        }
        if Instant::now() >= deadline {
            break Err("no run of the job ended within 150 s".to_owned());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (status, message) = finished.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status == "failed" && message.contains("out of memory"),
        "the job ended {status:?} with {message:?}, not with ERROR: out of memory"
    );
    assert_refusal_line_names(ctx, "in background worker \"pg_cron\":");
    vec![format!("{message} (cron.job_run_details, status {status})")]
}

/// Unschedules a pg_cron job when dropped, also while a failed scenario unwinds (so it does not
/// go on running in later scenarios); never panics.
struct Unschedule<'a> {
    cluster: &'a Cluster,
    job: i64,
}

impl Drop for Unschedule<'_> {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let done = self.cluster.connect().ok().is_some_and(|mut client| {
                client
                    .query_one("SELECT cron.unschedule($1::bigint)", &[&self.job])
                    .is_ok()
            });
            if done || Instant::now() >= deadline {
                if !done {
                    eprintln!("warning: could not unschedule pg_cron job {}", self.job);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Auto-analyze of a table of 100000 rows of 6.4 kB stored inline: ANALYZE samples every row
/// (statistics target 1000 = 300000 sample rows) and copies each into memory, ~800 MB in the
/// autovacuum worker. autovacuum catches the ERROR, logs it and goes on with other tables.
fn autovacuum_worker(ctx: &Ctx) -> Vec<String> {
    let cluster = &ctx.server.cluster;
    let mut client = ctx.connect();
    client
        .batch_execute(
            "CREATE UNLOGGED TABLE hungry (id int, pad text) WITH (autovacuum_enabled = off);
             ALTER TABLE hungry ALTER COLUMN pad SET STORAGE PLAIN;
             ALTER TABLE hungry ALTER COLUMN pad SET STATISTICS 1000;
             INSERT INTO hungry SELECT g, repeat(md5(g::text), 200) FROM generate_series(1, 100000) g;",
        )
        .unwrap();
    let offset = log_len(cluster);
    client
        .batch_execute("ALTER TABLE hungry SET (autovacuum_enabled = on)")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut workers: Vec<i32> = Vec::new();
    let outcome = loop {
        if let Ok(rows) = client.query(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'",
            &[],
        ) {
            workers.extend(rows.iter().map(|row| row.get::<_, i32>(0)));
            workers.sort_unstable();
            workers.dedup();
        }
        let log = log_since(cluster, offset);
        let lines: Vec<&str> = log.lines().collect();
        if let Some(at) = lines
            .iter()
            .position(|l| l.contains("autovacuum worker ERROR:") && l.contains("out of memory"))
        {
            let text: Vec<&str> = lines[at..(at + 3).min(lines.len())]
                .iter()
                .map(|l| l.split_once("autovacuum worker ").map_or(*l, |(_, m)| m))
                .collect();
            break Ok(text.join(" / "));
        }
        if let Some(line) = lines
            .iter()
            .find(|l| l.contains("LOG:  automatic analyze of table \"postgres.public.hungry\""))
        {
            break Err(format!(
                "auto-analyze succeeded, it was not hungry enough: {line}"
            ));
        }
        let crashes = crash_lines(&log);
        if !crashes.is_empty() {
            break Err(format!(
                "the server crashed during auto-analyze (autovacuum workers seen: pids \
                 {workers:?}): {crashes:#?}"
            ));
        }
        if Instant::now() >= deadline {
            break Err(format!(
                "no auto-analyze of hungry ended within 120 s; log since:\n{log}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Stop autovacuum from retrying, whatever happened.
    let mut client = ctx.connect();
    client.batch_execute("DROP TABLE hungry").unwrap();
    let outcome = outcome.unwrap_or_else(|e| panic!("{e}"));
    assert_refusal_line_names(ctx, "in autovacuum worker:");
    vec![outcome]
}
