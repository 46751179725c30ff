//! A background-worker job refused by the guard fails alone: the job's ERROR ends its worker with
//! exit code 1 (a normal worker exit), the server does not restart and the session that started
//! it carries on. pg_cron's jobs test this in `real_cgroup.rs` and `backend_budget.rs`; this test
//! does it with a job of our own (`tests/extension/oomguard_test_job.c`, compiled here against
//! the server's headers), on Debian's 15 and on PyPI's 16, which has no pg_cron package here
//! (`tools/test-versions` runs it there).

use std::path::Path;
use std::time::{Duration, Instant};

use oomguard_cluster::Cluster;
use oomguard_tests::extension::build_test_job;
use oomguard_tests::sessions::start_guarded;

/// A hog short enough for the job's 120 bytes: one 400 MB array.
const HOG: &str = "SELECT cardinality(array_fill(1, ARRAY[100000000]))";

/// The postmaster's line about the exit of worker `pid`, waited for: the postmaster wakes the
/// session waiting for the worker before it logs the exit, so the line can come a moment after
/// the job's function has returned.
fn worker_exit_line(cluster: &Cluster, pid: i32) -> String {
    let needle = format!("background worker \"oomguard test job\" (PID {pid}) exited");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = cluster.log_text().unwrap();
        if let Some(line) = log.lines().find(|line| line.contains(&needle)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no exit line of worker {pid} within 30 s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_refused_background_worker_job_fails_alone() {
    let guarded = start_guarded(
        &[("OOM_GUARD_LIMIT", "256Mi"), ("OOM_GUARD_MODE", "enforce")],
        &[],
    );
    let cluster = &guarded.cluster;
    let library = build_test_job(cluster);
    assert!(Path::new(&library).is_file());
    let mut session = cluster.connect().unwrap();
    session
        .batch_execute(&format!(
            "CREATE FUNCTION oomguard_test_job(text, text) RETURNS int \
             AS '{library}', 'oomguard_test_job' LANGUAGE C STRICT"
        ))
        .unwrap();
    let run = |session: &mut postgres::Client, statement: &str| -> i32 {
        session
            .query_one("SELECT oomguard_test_job($1, $2)", &[&statement, &library])
            .unwrap()
            .get(0)
    };

    // A job that fits runs and exits cleanly: the worker itself works.
    let fits = run(&mut session, "CREATE TABLE job_ran AS SELECT 1 AS n");
    let ran: i64 = session
        .query_one("SELECT count(*) FROM job_ran", &[])
        .unwrap()
        .get(0);
    assert_eq!(ran, 1, "the fitting job (worker {fits}) did not commit");

    let hog = run(&mut session, HOG);
    let log = cluster.log_text().unwrap();
    let refusal = format!("oomguard[{hog}]: refused");
    let refused = log
        .lines()
        .find(|line| line.starts_with(&refusal))
        .unwrap_or_else(|| panic!("the hog job (worker {hog}) was not refused:\n{log}"));
    assert!(
        refused.contains("in background worker \"oomguard test job\""),
        "{refused}"
    );
    assert!(
        log.lines().any(
            |line| line.contains(&format!("[{hog}]")) && line.contains("ERROR:  out of memory")
        ),
        "the job's refusal did not become an ERROR:\n{log}"
    );
    let exit = worker_exit_line(cluster, hog);
    assert!(exit.contains("exit code 1"), "{exit}");

    let one: i32 = session.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1, "the session that started the job carries on");
    let crashes = guarded.crash_lines().unwrap();
    assert!(crashes.is_empty(), "the server crashed:\n{crashes:#?}");
    let snapshot = guarded.snapshot().unwrap();
    assert!(snapshot.denied_allocations >= 1, "{snapshot:#?}");
}
