//! Injection campaigns: what the guard's refusals turn into in a real PostgreSQL server.
//!
//! A run starts a throwaway server under the guard, makes the workload's objects, restarts it
//! with `OOM_GUARD_TEST_INJECT=N:SEED` (about one in N of the reservations a full domain could
//! refuse is refused at random, in episodes like a real shortage) or a tight `OOM_GUARD_LIMIT`,
//! runs [`workload`] in several sessions at once (each reconnecting every round), and counts:
//! `ERROR: out of memory` (what the guard promises), other errors, connections refused while
//! they start, sessions lost mid-way, `FATAL` lines, and server crashes (a backend killed by a
//! signal, crash recovery).
//!
//! `tests/tests/injection.rs` asserts that no run loses a session or crashes the server;
//! `oomguard-inject` (`src/bin/`) prints the counts as a Markdown table for the README. The
//! server is whichever `OOM_GUARD_PG_ROOT` / `OOM_GUARD_PG_BINDIR` / the usual discovery names.

pub mod workload;

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use oomguard_cluster::{Cluster, GuardedCluster, CRASH_LOG_LINES};

/// What refuses: random injection or a tight limit.
#[derive(Debug, Clone)]
pub enum Pressure {
    /// `OOM_GUARD_TEST_INJECT=one_in:seed` under a limit nothing reaches.
    Inject { one_in: u64, seed: u64 },
    /// `OOM_GUARD_LIMIT=…`.
    Limit(String),
}

impl Pressure {
    fn env(&self) -> Vec<(String, String)> {
        match self {
            Pressure::Inject { one_in, seed } => vec![
                ("OOM_GUARD_LIMIT".into(), "64Gi".into()),
                ("OOM_GUARD_TEST_INJECT".into(), format!("{one_in}:{seed}")),
            ],
            Pressure::Limit(limit) => vec![("OOM_GUARD_LIMIT".into(), limit.clone())],
        }
    }

    /// How a report names it.
    pub fn describe(&self) -> String {
        match self {
            Pressure::Inject { one_in, seed } => format!("1 in {one_in}, seed {seed}"),
            Pressure::Limit(limit) => format!("limit {limit}"),
        }
    }
}

/// What one run counted.
#[derive(Default, Debug, Clone)]
pub struct Counts {
    /// The server's version (`SHOW server_version`).
    pub server: String,
    pub statements: u64,
    pub out_of_memory: u64,
    /// Other errors, by SQLSTATE (e.g. 53100 for dynamic shared memory refused).
    pub other_errors: Vec<String>,
    pub refused_connections: u64,
    pub lost_sessions: u64,
    pub log_fatal_out_of_memory: u64,
    pub log_fatal: u64,
    pub crash_lines: u64,
    /// The postmaster's `… was terminated by signal N` lines.
    pub signals: Vec<String>,
    pub guard_refusals: u64,
    pub seconds: f64,
}

/// One run; returns its counts and the server log of the run under pressure.
pub fn run(
    library: &Path,
    pressure: &Pressure,
    sessions: usize,
    rounds: usize,
) -> Result<(Counts, String)> {
    let settings = [
        ("max_connections", "40"),
        ("shared_buffers", "64MB"),
        ("max_parallel_workers_per_gather", "2"),
    ];
    // The workload's objects are made before anything is refused, then the server restarts
    // with the pressure on.
    let mut guarded = GuardedCluster::start(library, &[("OOM_GUARD_MODE", "report")], &settings)?;
    let server = {
        let mut client = guarded.cluster.connect()?;
        let version: String = client.query_one("SHOW server_version", &[])?.get(0);
        workload::setup(&mut client)?;
        version.split_whitespace().next().unwrap_or("?").to_string()
    };
    guarded.cluster.stop()?;
    let mut env = vec![
        (
            "LD_PRELOAD".to_string(),
            guarded.library.display().to_string(),
        ),
        (
            "OOM_GUARD_DIR".to_string(),
            guarded.segment_dir.display().to_string(),
        ),
        ("OOM_GUARD_MODE".to_string(), "enforce".to_string()),
    ];
    env.extend(pressure.env());
    let settings: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Only what the log says from here on counts (the set-up's shutdown logs a FATAL line for
    // its own connection).
    let log_start = guarded.cluster.log_text()?.len();
    guarded.cluster.start(&env, &settings)?;
    let cluster = &guarded.cluster;

    let started = Instant::now();
    let per_session: Vec<Counts> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..sessions)
            .map(|index| scope.spawn(move || session(cluster, index, rounds)))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut counts = Counts {
        server,
        seconds: started.elapsed().as_secs_f64(),
        ..Counts::default()
    };
    for session in per_session {
        counts.statements += session.statements;
        counts.out_of_memory += session.out_of_memory;
        counts.other_errors.extend(session.other_errors);
        counts.refused_connections += session.refused_connections;
        counts.lost_sessions += session.lost_sessions;
    }
    let log = cluster.log_text()?.split_off(log_start);
    for line in log.lines() {
        counts.log_fatal_out_of_memory += u64::from(line.contains("FATAL:  out of memory"));
        counts.log_fatal += u64::from(line.contains("FATAL:"));
        counts.crash_lines += u64::from(CRASH_LOG_LINES.iter().any(|crash| line.contains(crash)));
        if let Some(at) = line.find("was terminated by signal") {
            counts.signals.push(line[at..].to_string());
        }
    }
    counts.guard_refusals = guarded.snapshot()?.denied_allocations;
    Ok((counts, log))
}

/// One session's rounds: connect, run every workload statement, and count what happened.
fn session(cluster: &Cluster, index: usize, rounds: usize) -> Counts {
    let mut counts = Counts::default();
    for round in 0..rounds {
        let Ok(mut client) = cluster.connect() else {
            counts.refused_connections += 1;
            continue;
        };
        for statement in workload::statements(index, round) {
            counts.statements += 1;
            let Err(error) = client.batch_execute(&statement) else {
                continue;
            };
            let db = error.as_db_error();
            if client.is_closed() || db.is_some_and(|db| db.severity() == "FATAL") {
                counts.lost_sessions += 1;
                break;
            }
            match db.map(|db| db.code().code()) {
                Some("53200") => counts.out_of_memory += 1,
                code => counts.other_errors.push(code.unwrap_or("?").to_string()),
            }
            // A statement that failed inside a transaction block leaves it aborted.
            let _ = client.batch_execute("ROLLBACK");
        }
    }
    counts
}
