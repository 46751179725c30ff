//! Sessions against a real PostgreSQL server under the guard.
//!
//! This module owns what the server tests (`postgres.rs`, `backend_budget.rs`, `real_cgroup.rs`,
//! …) share about a guarded server and its sessions:
//!
//! - starting a throwaway guarded server with the release-built library ([`start_guarded`]; the
//!   cluster itself is `oomguard_cluster::GuardedCluster`, which the demo uses too);
//! - the check that a statement was refused the way the guard promises, with PostgreSQL's own
//!   `ERROR: out of memory` (SQLSTATE 53200, [`SqlState::OUT_OF_MEMORY`]) and not with a lost
//!   connection, another error or success: [`expect_out_of_memory`] runs the statements itself,
//!   [`assert_out_of_memory`] judges an error already in hand (from a session on another thread,
//!   or from a retry loop);
//! - [`describe`], the one-line text of a server error that those checks return and that failure
//!   messages quote.
//!
//! Checks of other outcomes (a reset, another SQLSTATE, any ERROR) stay in their test files.

use std::time::{Duration, Instant};

use oomguard_cluster::{Cluster, GuardedCluster};
use postgres::error::{DbError, SqlState};
use postgres::{Client, NoTls};

use crate::library_path;

/// Starts a throwaway PostgreSQL server with the release-built guard ([`library_path`])
/// preloaded, `guard_env` (`OOM_GUARD_*`) in its environment and `settings` over the cluster's
/// defaults ([`GuardedCluster::start`]). Dropping it stops the server and removes its directory.
///
/// # Panics
/// When the server cannot be created or started, or does not map the guard (with the whole
/// error chain).
pub fn start_guarded(guard_env: &[(&str, &str)], settings: &[(&str, &str)]) -> GuardedCluster {
    GuardedCluster::start(&library_path(), guard_env, settings).expect("start a guarded PostgreSQL")
}

/// A session as `user` to `database` of `cluster`, with `options` (what `PGOPTIONS` carries;
/// empty for none).
///
/// # Panics
/// When the connection fails, naming the user and database.
pub fn connect_as(cluster: &Cluster, user: &str, database: &str, options: &str) -> Client {
    let mut config = cluster.connection_config(Duration::from_secs(10));
    config.user(user).dbname(database);
    if !options.is_empty() {
        config.options(options);
    }
    config
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect as {user} to {database}: {e}"))
}

/// Schedules `command` as pg_cron job `name` through `scheduler` (the job runs as that
/// session's role, in `cron.database_name`), waits through `watcher` (a superuser's session) for
/// its first run to end, unschedules it, and returns that run's status and message. Every second
/// where pg_cron supports it (1.5 and later), else at the next full minute (Debian 12 ships
/// 1.4).
///
/// # Panics
/// When scheduling fails, or no run ends within 150 s.
pub fn run_pg_cron_job_once(
    scheduler: &mut Client,
    watcher: &mut Client,
    name: &str,
    command: &str,
) -> (String, String) {
    let schedule = |schedule: &str, client: &mut Client| {
        client
            .query_one(
                "SELECT cron.schedule($1, $2, $3)",
                &[&name, &schedule, &command],
            )
            .map(|row| row.get::<_, i64>(0))
    };
    let job = schedule("1 seconds", scheduler)
        .or_else(|_| schedule("* * * * *", scheduler))
        .unwrap_or_else(|e| panic!("cron.schedule {name}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(150);
    let ended = loop {
        let row = watcher
            .query_opt(
                "SELECT status, coalesce(return_message, '') FROM cron.job_run_details \
                 WHERE jobid = $1 AND status IN ('failed', 'succeeded') ORDER BY runid LIMIT 1",
                &[&job],
            )
            .unwrap();
        if let Some(row) = row {
            break (row.get::<_, String>(0), row.get::<_, String>(1));
        }
        assert!(
            Instant::now() < deadline,
            "no run of the pg_cron job {name} ended within 150 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    watcher
        .query_one("SELECT cron.unschedule($1::bigint)", &[&job])
        .unwrap();
    ended
}

/// Runs `statements` on `client`, each with `batch_execute`: every one but the last must
/// succeed (setup such as `SET work_mem = '2GB'`), and the last must fail with `ERROR: out of
/// memory` (SQLSTATE 53200). Returns that error as [`describe`] writes it (message, then any
/// DETAIL and CONTEXT: a refusal in a parallel worker says so in its CONTEXT).
///
/// # Panics
/// - when a setup statement fails;
/// - when the last statement succeeds;
/// - when it fails without a server error (the connection was lost: the panic says whether the
///   client sees its connection closed, as after a backend crash or a server reset);
/// - when the server error has another SQLSTATE.
///
/// Each message names the statement.
pub fn expect_out_of_memory(client: &mut Client, statements: &[&str]) -> String {
    let (last, setup) = statements
        .split_last()
        .expect("at least the statement that must be refused");
    for statement in setup {
        if let Err(error) = client.batch_execute(statement) {
            panic!("setup statement {statement} failed: {error:#}");
        }
    }
    let error = match client.batch_execute(last) {
        Ok(()) => panic!("{last} should have failed with ERROR: out of memory, but it succeeded"),
        Err(error) => error,
    };
    if error.as_db_error().is_none() {
        let connection = if client.is_closed() {
            "the connection is closed: did the backend crash or the server reset?"
        } else {
            "the connection is still open"
        };
        panic!("{last}: not a server error but {error:#}; {connection}");
    }
    assert_out_of_memory(last, &error)
}

/// Requires `error` to be `ERROR: out of memory` (SQLSTATE 53200) from the server. `what` names
/// what ended with it (the statement, or the session that ran it) in the panic messages.
/// Returns the error as [`describe`] writes it.
///
/// # Panics
/// When `error` is not a server error (did the server crash?), or has another SQLSTATE.
pub fn assert_out_of_memory(what: &str, error: &postgres::Error) -> String {
    let db = error
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: not a server error (did the server crash?): {error:#}"));
    assert_eq!(
        db.code(),
        &SqlState::OUT_OF_MEMORY,
        "{what}: {} ({db:?})",
        describe(db)
    );
    describe(db)
}

/// A server error in one line: its message, then ` / DETAIL: …` and ` / CONTEXT: …` when the
/// server sent them.
pub fn describe(db: &DbError) -> String {
    let mut text = db.message().to_owned();
    if let Some(detail) = db.detail() {
        text.push_str(" / DETAIL: ");
        text.push_str(detail);
    }
    if let Some(context) = db.where_() {
        text.push_str(" / CONTEXT: ");
        text.push_str(context);
    }
    text
}
