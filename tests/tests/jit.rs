//! PostgreSQL's LLVM JIT under the guard: a refusal while LLVM compiles would become
//! `FATAL: out of memory` / `DETAIL: while in LLVM` (PostgreSQL's fatal-on-OOM bracket), losing
//! the session. The guard serves allocations while a C++ new handler is installed, which
//! PostgreSQL does only inside that bracket, on every major (since 16 `llvmjit.so` exports no
//! symbol that would say so). Five sessions force every expression through JIT compilation, each
//! under a per-backend budget a little above what it holds when idle (128 to 640 KiB more: LLVM
//! alone needs more than that, so each runs out at another point of the compilation): each
//! query ends in `ERROR: out of memory` or succeeds, and every session answers afterwards.

use oomguard_cluster::{backend_pid, pid_maps_library, Cluster, GuardedCluster};
use oomguard_tests::library_path;
use postgres::error::SqlState;

const SESSIONS: usize = 5;
const JIT_QUERY: &str = "SELECT sum(g) FROM generate_series(1, 100000) g";

/// Fails with the fix when the server has no JIT provider next to it.
fn require_llvmjit(cluster: &Cluster) {
    let provider = cluster.binaries().bindir.join("../lib/llvmjit.so");
    assert!(
        provider.is_file(),
        "{} not found: this test needs a PostgreSQL built with LLVM JIT (Debian's packages: \
         postgresql-15 and -17 include it, for 18 install postgresql-18-jit)",
        provider.display()
    );
}

#[test]
fn refusals_while_llvm_compiles_are_errors_and_every_session_lives() {
    let guarded = GuardedCluster::start(
        &library_path(),
        &[("OOM_GUARD_LIMIT", "1Gi"), ("OOM_GUARD_MODE", "enforce")],
        &[
            ("jit", "on"),
            ("jit_above_cost", "0"),
            ("jit_inline_above_cost", "0"),
            ("jit_optimize_above_cost", "0"),
            ("max_parallel_workers_per_gather", "0"),
        ],
    )
    .expect("start a guarded PostgreSQL with JIT on");
    let cluster = &guarded.cluster;
    require_llvmjit(cluster);

    let mut sessions: Vec<postgres::Client> =
        (0..SESSIONS).map(|_| cluster.connect().unwrap()).collect();
    let pids: Vec<i32> = sessions
        .iter_mut()
        .map(|client| backend_pid(client).unwrap())
        .collect();
    let idle = guarded.snapshot().unwrap();
    for (step, (client, pid)) in (1..).zip(sessions.iter_mut().zip(&pids)) {
        let own = idle.process(*pid).expect("every session has a slot").bytes;
        let budget_kib = (own >> 10) + 128 * step;
        client
            .batch_execute(&format!(
                "SET oomguard.backend_memory_limit = '{budget_kib}kB'"
            ))
            .unwrap();
    }

    // All five compile at once, so that together they pass the limit inside LLVM.
    let outcomes: Vec<Result<i64, postgres::Error>> = std::thread::scope(|scope| {
        let running: Vec<_> = sessions
            .iter_mut()
            .map(|client| {
                scope.spawn(move || {
                    client
                        .query_one(JIT_QUERY, &[])
                        .map(|row| row.get::<_, i64>(0))
                })
            })
            .collect();
        running.into_iter().map(|t| t.join().unwrap()).collect()
    });

    let log = cluster.log_text().unwrap();
    let mut refused = 0;
    for (outcome, pid) in outcomes.iter().zip(&pids) {
        match outcome {
            Ok(sum) => assert_eq!(*sum, 5_000_050_000, "session {pid} got a wrong sum"),
            Err(error) => {
                let code = error.as_db_error().map(|db| db.code());
                assert_eq!(
                    code,
                    Some(&SqlState::OUT_OF_MEMORY),
                    "session {pid}: {error:#} — the server log:\n{log}"
                );
                refused += 1;
            }
        }
    }
    for (client, pid) in sessions.iter_mut().zip(&pids) {
        let one: i32 = client
            .query_one("SELECT 1", &[])
            .unwrap_or_else(|e| panic!("session {pid} is lost: {e:#}\nserver log:\n{log}"))
            .get(0);
        assert_eq!(one, 1);
        assert_eq!(backend_pid(client).unwrap(), *pid, "same backend");
    }
    let compiled = pids
        .iter()
        .filter(|&&pid| pid_maps_library(pid as u32, "llvmjit.so").unwrap_or(false))
        .count();
    eprintln!("{refused} of {SESSIONS} queries refused, {compiled} backends loaded llvmjit.so");
    assert!(
        refused > 0,
        "nothing was refused: the test proves nothing\n{log}"
    );
    assert!(
        compiled > 0,
        "no backend loaded the JIT provider: JIT did not run\n{log}"
    );
    for line in log.lines() {
        assert!(
            !line.contains("FATAL:  out of memory") && !line.contains("while in LLVM"),
            "a refusal inside LLVM's bracket became FATAL: {line}\n{log}"
        );
    }
    let crashes = guarded.crash_lines().unwrap();
    assert!(crashes.is_empty(), "the server crashed:\n{crashes:#?}");
}
