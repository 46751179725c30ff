//! The refusal record on a real guarded server with `pg_stat_statements`: refusals of several
//! roles, databases and statements — client backends over the domain's limit and over a role's
//! budget, parallel workers, a background-worker job — read back through `oomguard refusals`
//! (JSON, and `--since`), the SQL view `oomguard_refusals` (`packaging/sql/oomguard_refusals.sql`
//! as written, its `program` pointed at the release-built binary; it resolves the OIDs and joins
//! `pg_stat_statements` on the query id) and the exporter's
//! `oomguard_last_refusal_timestamp_seconds`. A storm of thousands of refusals of one statement
//! in one process is one record with its count, and leaves the earlier records in a ring of 16.
//!
//! The background-worker job is pg_cron's where pg_cron is installed (15, 17, 18 here), else a
//! job of our own built against the server's headers (`tests/extension`, for PyPI's 16).

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use oomguard_cluster::{GuardedCluster, PgBinaries};
use oomguard_tests::extension::build_test_job;
use oomguard_tests::sessions::{
    connect_as, expect_out_of_memory, run_pg_cron_job_once, start_guarded,
};
use oomguard_tests::Exporter;
use oomguard_tests::{
    http_get, oomguard_command, run_output, stage_oomguard_binary, workspace_root,
};
use postgres::Client;
use serde_json::Value;

/// A hash aggregate over distinct 32 kB keys, far more than the 512 MiB limit (`keys` of them;
/// a few fit). Its constants make `pg_stat_statements` keep its normalized text from the first
/// parse, refused or not.
fn hash_hog(keys: u32) -> String {
    format!(
        "SELECT count(*) FROM (SELECT repeat(md5(g::text), 1000) AS k \
         FROM generate_series(1, {keys}) g GROUP BY 1) s"
    )
}

/// One 100 MB array: over a 32 MB budget at once, within the domain's limit.
const ARRAY_HOG: &str = "SELECT cardinality(array_fill(1, ARRAY[25000000]))";

/// One 800 MB string: over the 512 MiB limit at once.
const JOB_HOG: &str = "SELECT length(repeat('x', 800000000))";

/// Runs [`JOB_HOG`] as a background-worker job of the superuser in database `postgres`: with
/// pg_cron (`use_pg_cron`) as a scheduled job, else with the test job. Returns the worker's pid
/// when it is known (the test job's).
fn refused_background_job(
    guarded: &GuardedCluster,
    admin: &mut Client,
    use_pg_cron: bool,
) -> Option<i32> {
    if !use_pg_cron {
        let library = build_test_job(&guarded.cluster);
        admin
            .batch_execute(&format!(
                "CREATE FUNCTION oomguard_test_job(text, text) RETURNS int \
                 AS '{library}', 'oomguard_test_job' LANGUAGE C STRICT"
            ))
            .unwrap();
        let pid = admin
            .query_one("SELECT oomguard_test_job($1, $2)", &[&JOB_HOG, &library])
            .unwrap()
            .get(0);
        return Some(pid);
    }
    admin.batch_execute("CREATE EXTENSION pg_cron").unwrap();
    // The superuser's job, scheduled from a second session of the superuser.
    let mut scheduler = guarded.cluster.connect().unwrap();
    let (status, message) = run_pg_cron_job_once(&mut scheduler, admin, "refused-job", JOB_HOG);
    assert_eq!(status, "failed", "the job ended with {message:?}");
    assert!(message.contains("out of memory"), "{message}");
    None
}

/// The same array refused `n` times in a row by one statement, each refusal caught.
fn storm(n: u32) -> String {
    format!(
        "DO $$ DECLARE refused int := 0; BEGIN \
           FOR i IN 1..{n} LOOP \
             BEGIN PERFORM cardinality(array_fill(1, ARRAY[25000000])); \
             EXCEPTION WHEN out_of_memory THEN refused := refused + 1; END; \
           END LOOP; \
           IF refused <> {n} THEN RAISE EXCEPTION 'refused % of {n}', refused; END IF; \
         END $$"
    )
}

fn oid_of(client: &mut Client, query: &str, name: &str) -> u32 {
    client.query_one(query, &[&name]).unwrap().get(0)
}

/// `oomguard refusals --json` of the server's segment directory, with `extra` arguments.
fn refusals_json(guarded: &GuardedCluster, extra: &[&str]) -> Vec<Value> {
    let (out, stdout, stderr) = run_output(
        oomguard_command()
            .args(["refusals", "--json", "--dir"])
            .arg(&guarded.segment_dir)
            .args(extra),
    );
    assert!(out.status.success(), "oomguard refusals failed: {stderr}");
    serde_json::from_str::<Value>(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
        .as_array()
        .expect("an array of records")
        .clone()
}

fn field<'a>(record: &'a Value, name: &str) -> &'a Value {
    &record[name]
}

#[test]
fn refusals_are_recorded_and_read_back_through_the_cli_the_sql_view_and_the_exporter() {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let use_pg_cron = !oomguard_tests::pg_cron_opted_out(
        "the pg_cron job of the refusal record test (a job of our own runs instead)",
    );
    if use_pg_cron {
        oomguard_tests::require_pg_cron(&PgBinaries::discover().unwrap());
    }
    let mut settings = vec![
        ("compute_query_id", "on"),
        ("max_worker_processes", "16"),
        ("max_parallel_workers", "8"),
    ];
    if use_pg_cron {
        settings.extend([
            ("shared_preload_libraries", "pg_stat_statements,pg_cron"),
            ("cron.database_name", "postgres"),
            ("cron.use_background_workers", "on"),
        ]);
    } else {
        settings.push(("shared_preload_libraries", "pg_stat_statements"));
    }
    let guarded = start_guarded(
        &[
            ("OOM_GUARD_LIMIT", "512Mi"),
            ("OOM_GUARD_MODE", "enforce"),
            ("OOM_GUARD_REFUSAL_RECORDS", "16"),
        ],
        &settings,
    );
    let cluster = &guarded.cluster;
    let mut admin = cluster.connect().unwrap();
    // One statement each: CREATE DATABASE refuses to run in a multi-statement batch.
    for statement in [
        "CREATE EXTENSION pg_stat_statements",
        "CREATE ROLE alice LOGIN",
        "CREATE ROLE bob LOGIN",
        "ALTER ROLE bob SET oomguard.backend_memory_limit = '32MB'",
        "CREATE DATABASE db_a OWNER alice",
        "CREATE DATABASE db_b OWNER bob",
    ] {
        admin
            .batch_execute(statement)
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let database = |admin: &mut Client, name| {
        oid_of(
            admin,
            "SELECT oid FROM pg_database WHERE datname = $1",
            name,
        )
    };
    let role = |admin: &mut Client, name| {
        oid_of(admin, "SELECT oid FROM pg_roles WHERE rolname = $1", name)
    };
    let (db_a, db_b, postgres_db) = (
        database(&mut admin, "db_a"),
        database(&mut admin, "db_b"),
        database(&mut admin, "postgres"),
    );
    let (alice, bob, superuser) = (
        role(&mut admin, "alice"),
        role(&mut admin, "bob"),
        role(&mut admin, "postgres"),
    );

    // alice in db_a: the hog runs small, then is refused over the domain's limit.
    let mut alice_a = connect_as(cluster, "alice", "db_a", "");
    alice_a.batch_execute(&hash_hog(10)).unwrap();
    expect_out_of_memory(
        &mut alice_a,
        &[
            "SET work_mem = '2GB'",
            "SET enable_sort = off",
            &hash_hog(40_000),
        ],
    );
    // PostgreSQL sends the ERROR before it aborts the transaction, which frees the hash table:
    // the next statement's answer says the memory is back.
    alice_a.batch_execute("SELECT 1").unwrap();
    // bob in db_b: refused over his role's budget.
    let mut bob_b = connect_as(cluster, "bob", "db_b", "");
    expect_out_of_memory(&mut bob_b, &[ARRAY_HOG]);
    // alice's parallel query: the hash tables, and the refusals, are in the workers.
    let parallel = "SELECT count(*) FROM \
                    (SELECT repeat(md5(g::text), 1000) AS k FROM wide_keys GROUP BY 1) s";
    alice_a
        .batch_execute(
            "CREATE TABLE wide_keys AS SELECT g FROM generate_series(1, 40000) g;
             ALTER TABLE wide_keys ALTER COLUMN g SET (n_distinct = 10);
             ANALYZE wide_keys;
             SET max_parallel_workers_per_gather = 2;
             SET parallel_setup_cost = 0;
             SET parallel_tuple_cost = 0;
             SET min_parallel_table_scan_size = 0;
             SET parallel_leader_participation = off;",
        )
        .unwrap();
    let plan: Vec<String> = alice_a
        .query(&format!("EXPLAIN (COSTS OFF) {parallel}"), &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        plan.iter().any(|l| l.contains("Partial HashAggregate")),
        "the hash tables are built in parallel workers: {plan:#?}"
    );
    expect_out_of_memory(&mut alice_a, &[parallel]);
    // A background-worker job of the superuser in postgres, refused over the domain's limit.
    let job_pid = refused_background_job(&guarded, &mut admin, use_pg_cron);
    // Then the storm: 3000 refusals of one statement in bob's session.
    let storm_statement = storm(3000);
    bob_b.batch_execute(&storm_statement).unwrap();
    let bob_pid: i32 = bob_b
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);

    // The CLI.
    let records = refusals_json(&guarded, &[]);
    let summary: Vec<String> = records
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {}",
                r["pid"], r["process"], r["cause"], r["count"]
            )
        })
        .collect();
    let find = |what: &str, test: &dyn Fn(&Value) -> bool| -> Value {
        records
            .iter()
            .find(|r| test(r))
            .unwrap_or_else(|| panic!("no record of {what} among {summary:#?}"))
            .clone()
    };
    let alice_hog = find("alice's hash aggregate", &|r| {
        r["process"] == "client backend" && r["role_oid"] == alice && r["cause"] == "domain_limit"
    });
    assert_eq!(field(&alice_hog, "database_oid"), db_a);
    assert!(
        alice_hog["statement"]
            .as_str()
            .unwrap()
            .contains("generate_series(1, 40000)"),
        "{alice_hog}"
    );
    assert!(
        alice_hog["query_id"].as_i64().is_some_and(|id| id != 0),
        "{alice_hog}"
    );
    let largest = alice_hog["largest"].as_array().unwrap();
    assert!(!largest.is_empty(), "the largest processes: {alice_hog}");
    assert!(
        largest
            .windows(2)
            .all(|w| w[0]["bytes"].as_i64() >= w[1]["bytes"].as_i64()),
        "largest first: {alice_hog}"
    );
    let bob_budget = find("bob's budget refusal", &|r| {
        r["role_oid"] == bob && r["cause"] == "backend_budget" && r["count"] == 1
    });
    assert_eq!(field(&bob_budget, "database_oid"), db_b);
    assert_eq!(field(&bob_budget, "budget_bytes"), 32 << 20);
    assert_eq!(field(&bob_budget, "statement"), ARRAY_HOG);
    let worker = find("a parallel worker's refusal", &|r| {
        r["process"] == "parallel worker"
    });
    assert_eq!(
        field(&worker, "role_oid"),
        alice,
        "the leader's session user"
    );
    assert_eq!(field(&worker, "database_oid"), db_a);
    assert!(
        worker["statement"]
            .as_str()
            .unwrap()
            .contains("FROM wide_keys"),
        "the leader's statement: {worker}"
    );
    let job = find("the background worker job", &|r| {
        r["process"] == "background worker"
            && job_pid.is_none_or(|pid| r["pid"] == pid)
            && r["cause"] == "domain_limit"
    });
    if use_pg_cron {
        // pg_cron points debug_query_string at the job's command.
        assert_eq!(field(&job, "statement"), JOB_HOG);
    }
    assert_eq!(field(&job, "database_oid"), postgres_db);
    assert_eq!(field(&job, "role_oid"), superuser);
    let storm_record = find("the storm", &|r| {
        r["pid"] == bob_pid && r["count"].as_u64() > Some(1)
    });
    assert!(
        storm_record["count"].as_u64() >= Some(3000),
        "every refusal of the storm counted in one record: {storm_record}"
    );
    assert!(storm_record["statement"]
        .as_str()
        .unwrap()
        .starts_with("DO $$"));
    let storm_records = records
        .iter()
        .filter(|r| r["pid"] == bob_pid && r["statement"] == storm_record["statement"])
        .count();
    assert_eq!(storm_records, 1, "one record for the storm: {summary:#?}");
    // `--since`: everything is newer than the test's start, nothing newer than the future.
    assert_eq!(
        refusals_json(&guarded, &["--since", &format!("{}s", 3600)]).len(),
        records.len()
    );
    assert!(refusals_json(&guarded, &["--since", "2099-01-01T00:00:00Z"]).is_empty());

    // The SQL view, as packaged.
    let binary = stage_oomguard_binary(&cluster.base_dir().join("bin"));
    let packaged =
        std::fs::read_to_string(workspace_root().join("packaging/sql/oomguard_refusals.sql"))
            .unwrap();
    let program = "program '/usr/bin/oomguard refusals --csv'";
    assert_eq!(packaged.matches(program).count(), 1, "{program}");
    let sql = packaged.replace(
        program,
        &format!(
            "program '{} refusals --csv --dir {}'",
            binary.display(),
            guarded.segment_dir.display()
        ),
    );
    admin
        .batch_execute(&sql)
        .unwrap_or_else(|e| panic!("the packaged SQL failed: {e}"));
    admin
        .batch_execute(&sql)
        .unwrap_or_else(|e| panic!("the packaged SQL failed the second time: {e}"));
    let rows = admin
        .query(
            "SELECT role, database, process, cause, refusals, normalized_query, statement_calls \
               FROM oomguard_refusals ORDER BY number",
            &[],
        )
        .expect("query the view");
    assert_eq!(rows.len(), records.len(), "the view shows every record");
    let seen: BTreeSet<(Option<String>, Option<String>, String, String)> = rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect();
    for wanted in [
        ("alice", "db_a", "client backend", "domain_limit"),
        ("bob", "db_b", "client backend", "backend_budget"),
        ("alice", "db_a", "parallel worker", "domain_limit"),
        ("postgres", "postgres", "background worker", "domain_limit"),
    ] {
        let wanted = (
            Some(wanted.0.to_owned()),
            Some(wanted.1.to_owned()),
            wanted.2.to_owned(),
            wanted.3.to_owned(),
        );
        assert!(seen.contains(&wanted), "{wanted:?} not in {seen:#?}");
    }
    // alice's hog joined to pg_stat_statements: normalized, and run once before it was refused.
    let joined = rows
        .iter()
        .find(|row| {
            row.get::<_, Option<String>>(0).as_deref() == Some("alice")
                && row.get::<_, String>(2) == "client backend"
        })
        .unwrap();
    let normalized: Option<String> = joined.get(5);
    let calls: Option<i64> = joined.get(6);
    let normalized = normalized.expect("joined to pg_stat_statements on the query id");
    assert!(
        normalized.contains("generate_series($"),
        "the normalized statement: {normalized}"
    );
    assert!(
        calls.is_some_and(|calls| calls >= 1),
        "the small run counted: {calls:?}"
    );

    // Every guarded process is named: the postmaster alone as such, none unclassified (the
    // checkpointer and its kin reserve once, right after the fork, and are named by their title).
    let (out, stdout, stderr) = run_output(
        oomguard_command()
            .args(["status", "--json", "--dir"])
            .arg(&guarded.segment_dir),
    );
    assert!(out.status.success(), "oomguard status failed: {stderr}");
    let status: Value = serde_json::from_str(&stdout).unwrap();
    let postmaster = cluster.postmaster_pid().expect("the server runs");
    for process in status[0]["processes"].as_array().unwrap() {
        let (pid, kind) = (&process["pid"], process["kind"].as_str().unwrap());
        assert_ne!(kind, "unclassified", "{process}");
        assert_eq!(kind == "postmaster", *pid == postmaster, "{process}");
    }

    // The exporter.
    let exporter = Exporter::start(&guarded.segment_dir);
    let body = http_get(&exporter.addr, "/metrics", None).body;
    let last = body
        .lines()
        .find(|line| line.starts_with("oomguard_last_refusal_timestamp_seconds{"))
        .unwrap_or_else(|| panic!("no oomguard_last_refusal_timestamp_seconds:\n{body}"));
    let seconds: u64 = last.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(seconds >= started, "{last} (the test started at {started})");
    assert_eq!(exporter.terminate().code(), Some(0));
}
