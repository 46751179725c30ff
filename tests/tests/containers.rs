//! The guard in real containers: podman + runc, a container memory cgroup of 768 MiB without
//! swap, images built from `packaging/docker/` on a stand-in for the official postgres image
//! (Debian's PostgreSQL 15 and 17, an entrypoint that initialises as root and steps down; see
//! `tests/containers/`), PostgreSQL started the way that image starts it.
//!
//! - [`without_the_guard_the_hog_is_oom_killed`]: the hash-aggregate hog gets a server process
//!   SIGKILLed by the kernel (the container cgroup's `oom_kill` moves, the server resets, an idle
//!   session is lost): the hog bites in this container.
//! - [`the_preload_file_image_refuses_the_hog`]: `postgres.Dockerfile`'s image, which puts the
//!   guard into `/etc/ld.so.preload`, first start through the root phase of the entrypoint: the
//!   hog ends in `ERROR: out of memory`, `oom_kill` does not move, the idle session answers, the
//!   log has no crash line; `oomguard status --csv` as postgres exits 0 beside the segment the
//!   root phase left, and the SQL view (`packaging/sql/`) lists the server's processes.
//! - [`ld_preload_from_a_mounted_directory_refuses_the_hog`]: the plain image with the guard
//!   mounted read-only and `LD_PRELOAD` naming it (the Kubernetes init-container route).
//! - [`an_arbitrary_uid_is_guarded_through_the_preload_file`]: `--user` with a uid missing from
//!   `/etc/passwd`: the entrypoint runs initdb through nss_wrapper (replacing `LD_PRELOAD`); the
//!   preload file still loads the guard into the server.
//!
//! Each runs on PostgreSQL 15 (Debian 12) and 17 (Debian 13) and proves the guard is mapped in the
//! postmaster (or, for the baseline, that it is not).

use oomguard_cli::demo::HASH_AGGREGATE_HOG;
use oomguard_cluster::CRASH_LOG_LINES;
use oomguard_tests::containers::{images, Container, RunOptions, MAJORS};
use postgres::error::SqlState;

/// What the hog did to one container.
struct Outcome {
    /// The hog's error, as the client saw it.
    error: postgres::Error,
    oom_kills_before: u64,
    oom_kills_after: u64,
    /// Whether the hog's own session answers after its error.
    hog_session_answers: bool,
    /// Whether a session opened before the hog still answers after it.
    idle_session_answers: bool,
    /// The container log's crash lines.
    crash_lines: Vec<String>,
}

/// The postmaster's line when it has killed every session to reset after a crash.
const RESET_LINE: &str = "all server processes terminated; reinitializing";

/// Opens an idle session, runs the hog in another, then asks both. With `expect_reset` it first
/// waits until the postmaster logs its reset (the sessions are then certainly gone): a session
/// asked right after the kill could still answer before the postmaster acts.
fn run_hog(container: &Container, expect_reset: bool) -> Outcome {
    let mut idle = container.connect();
    idle.simple_query("SELECT 1").unwrap();
    let oom_kills_before = container.oom_kills();
    let mut hog = container.connect();
    hog.batch_execute(HASH_AGGREGATE_HOG[0]).unwrap();
    let error = hog
        .batch_execute(HASH_AGGREGATE_HOG[1])
        .expect_err("the hog cannot finish in 768 MiB");
    if expect_reset {
        container.wait_for_log(RESET_LINE);
    }
    let hog_session_answers = hog.simple_query("SELECT 1").is_ok();
    let idle_session_answers = idle.simple_query("SELECT 1").is_ok();
    // After a reset the server is back before the test goes on.
    container.wait_ready();
    let oom_kills_after = container.oom_kills();
    let logs = container.logs();
    let crash_lines = logs
        .lines()
        .filter(|line| CRASH_LOG_LINES.iter().any(|crash| line.contains(crash)))
        .map(str::to_owned)
        .collect();
    Outcome {
        error,
        oom_kills_before,
        oom_kills_after,
        hog_session_answers,
        idle_session_answers,
        crash_lines,
    }
}

/// The hog was refused with an ERROR and nothing else happened.
fn assert_refused(what: &str, container: &Container, outcome: &Outcome) {
    let code = outcome.error.code();
    assert_eq!(
        code,
        Some(&SqlState::OUT_OF_MEMORY),
        "{what}: the hog ended with {} (oom_kill {} -> {}); log:\n{}",
        outcome.error,
        outcome.oom_kills_before,
        outcome.oom_kills_after,
        container.logs()
    );
    assert_eq!(
        outcome.oom_kills_before, outcome.oom_kills_after,
        "{what}: the kernel killed a process although the guard refused"
    );
    // Both sessions answer: no process was killed, so no reset can follow.
    assert!(
        outcome.hog_session_answers,
        "{what}: the hog's session was lost"
    );
    assert!(
        outcome.idle_session_answers,
        "{what}: the idle session was lost"
    );
    assert!(
        outcome.crash_lines.is_empty(),
        "{what}: crash lines in the log: {:?}",
        outcome.crash_lines
    );
    eprintln!(
        "{what}: ERROR {}; oom_kill {} -> {}; both sessions answer",
        outcome.error.as_db_error().map_or("", |e| e.message()),
        outcome.oom_kills_before,
        outcome.oom_kills_after
    );
}

/// The postmaster (the container's first process once the entrypoint exec'd) maps the guard.
fn assert_guard_in_postmaster(what: &str, container: &Container) {
    assert!(
        Container::maps_guard(container.pid()),
        "{what}: the postmaster does not map liboomguard.so; log:\n{}",
        container.logs()
    );
}

#[test]
fn without_the_guard_the_hog_is_oom_killed() {
    for major in MAJORS {
        let what = format!("PostgreSQL {major}, no guard");
        let image = images(major).official;
        let container =
            Container::start(&format!("unguarded-{major}"), &image, RunOptions::default());
        assert!(!Container::maps_guard(container.pid()), "{what}");
        let outcome = run_hog(&container, true);
        assert!(
            outcome.oom_kills_after > outcome.oom_kills_before,
            "{what}: the kernel killed nothing (hog ended with {}): the hog does not bite here",
            outcome.error
        );
        assert!(
            !outcome.idle_session_answers,
            "{what}: no server reset; log:\n{}",
            container.logs()
        );
        assert!(!outcome.crash_lines.is_empty(), "{what}: no crash line");
        eprintln!(
            "{what}: {}; oom_kill {} -> {}; idle session lost",
            outcome.error, outcome.oom_kills_before, outcome.oom_kills_after
        );
    }
}

#[test]
fn the_preload_file_image_refuses_the_hog() {
    for major in MAJORS {
        let what = format!("PostgreSQL {major}, /etc/ld.so.preload");
        let image = images(major).guarded;
        let container = Container::start(
            &format!("preload-file-{major}"),
            &image,
            RunOptions::default(),
        );
        assert_guard_in_postmaster(&what, &container);
        let outcome = run_hog(&container, false);
        assert_refused(&what, &container, &outcome);

        // The root phase ran programs as root under the preload file: their segment is not
        // postgres's to read, and status says so without failing.
        let status = container.exec("postgres", &["oomguard", "status", "--csv"]);
        let stdout = String::from_utf8_lossy(&status.stdout);
        let stderr = String::from_utf8_lossy(&status.stderr);
        assert!(
            status.status.success(),
            "{what}: oomguard status --csv as postgres: {}\n{stdout}{stderr}",
            status.status
        );
        let listing = container.exec("root", &["ls", "-ln", "/dev/shm"]);
        let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
        assert!(
            listing.contains(" oomguard-0-"),
            "{what}: no root segment: {listing}"
        );
        assert!(
            stderr.contains("skipped another user's segment"),
            "{what}: {listing}\n{stderr}"
        );
        // The SQL view over the same command lists the server's processes.
        let mut client = container.connect();
        let view = std::fs::read_to_string(
            oomguard_tests::workspace_root().join("packaging/sql/oomguard_processes.sql"),
        )
        .unwrap();
        client.batch_execute(&view).unwrap();
        let processes: i64 = client
            .query_one("SELECT count(*) FROM oomguard_processes", &[])
            .unwrap()
            .get(0);
        assert!(processes >= 5, "{what}: {processes} processes in the view");
        eprintln!("{what}: the SQL view lists {processes} processes");
    }
}

#[test]
fn ld_preload_from_a_mounted_directory_refuses_the_hog() {
    let files = oomguard_tests::containers::guard_directory();
    for major in MAJORS {
        let what = format!("PostgreSQL {major}, LD_PRELOAD");
        let image = images(major).official;
        let container = Container::start(
            &format!("ld-preload-{major}"),
            &image,
            RunOptions {
                env: vec![("LD_PRELOAD", "/opt/oomguard/liboomguard.so".to_owned())],
                volumes: vec![format!("{}:/opt/oomguard:ro", files.display())],
                ..RunOptions::default()
            },
        );
        assert_guard_in_postmaster(&what, &container);
        let outcome = run_hog(&container, false);
        assert_refused(&what, &container, &outcome);
    }
}

#[test]
fn an_arbitrary_uid_is_guarded_through_the_preload_file() {
    for major in MAJORS {
        let what = format!("PostgreSQL {major}, /etc/ld.so.preload, --user 4321");
        let image = images(major).guarded;
        let container = Container::start(
            &format!("arbitrary-uid-{major}"),
            &image,
            RunOptions {
                user: Some("4321:4321"),
                // A uid the image does not know owns nothing in it: its own data directory.
                env: vec![("PGDATA", "/var/lib/postgresql/data/pgdata".to_owned())],
                ..RunOptions::default()
            },
        );
        let owner = container.exec(
            "root",
            &["stat", "-c", "%u", "/var/lib/postgresql/data/pgdata"],
        );
        assert_eq!(
            String::from_utf8_lossy(&owner.stdout).trim(),
            "4321",
            "{what}"
        );
        assert_guard_in_postmaster(&what, &container);
        let outcome = run_hog(&container, false);
        assert_refused(&what, &container, &outcome);
    }
}
