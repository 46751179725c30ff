//! End to end against a real PostgreSQL with only `LD_PRELOAD` (and a cgroup root pointing at a
//! fixture tree, since this machine's cgroup has no limit): the guard derives its limit from the
//! cgroup and the postmaster's shared memory, tightens when the kernel's numbers leave no room,
//! and a parallel query whose dynamic shared memory is refused fails with an ERROR, not a crash.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use oomguard_cluster::GuardedCluster;
use oomguard_core::layout::{LimitSource, SharedMemorySource};
use oomguard_tests::sessions::{assert_out_of_memory, expect_out_of_memory, start_guarded};
use oomguard_tests::{cgroup_v2_fixture, set_cgroup_usage};
use postgres::error::SqlState;
use postgres::Client;

const MIB: u64 = 1 << 20;

/// A cgroup v2 fixture tree (see `cgroup_v2_fixture`) in a directory the unprivileged server
/// user can read, with `memory.max` = `max_bytes` and the kernel counting `anon_bytes`.
struct CgroupFixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl CgroupFixture {
    fn new(max_bytes: u64, anon_bytes: u64) -> CgroupFixture {
        let dir = tempfile::Builder::new()
            .prefix("oomguard-cgroup-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = cgroup_v2_fixture(dir.path(), &max_bytes.to_string(), anon_bytes, SHMEM);
        CgroupFixture { _dir: dir, root }
    }

    fn set_anon(&self, anon_bytes: u64) {
        set_cgroup_usage(&self.root, anon_bytes, SHMEM);
    }
}

/// What the fixture's kernel counts as shared memory.
const SHMEM: u64 = 4 * MIB;

fn start(
    fixture: &CgroupFixture,
    guard_env: &[(&str, &str)],
    settings: &[(&str, &str)],
) -> GuardedCluster {
    let root = fixture.root.to_str().unwrap().to_owned();
    let mut env = vec![("OOM_GUARD_CGROUP_ROOT", root.as_str())];
    env.extend_from_slice(guard_env);
    start_guarded(&env, settings)
}

fn sql_error(client: &mut Client, statement: &str) -> (SqlState, String) {
    let error = client
        .batch_execute(statement)
        .expect_err(&format!("{statement} should fail"));
    let db = error
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {error}"));
    (db.code().clone(), db.message().to_owned())
}

fn checkpointer(client: &mut Client) -> u32 {
    oomguard_cluster::checkpointer_pid(client).unwrap()
}

#[test]
fn the_limit_derives_from_the_cgroup_and_the_postmasters_shared_memory() {
    let fixture = CgroupFixture::new(512 * MIB, 16 * MIB);
    let guarded = start(&fixture, &[], &[("shared_buffers", "64MB")]);
    let mut client = guarded.cluster.connect().unwrap();
    let shown: String = client
        .query_one("SHOW shared_memory_size", &[])
        .unwrap()
        .get(0);
    let shown_mib: u64 = shown.trim_end_matches("MB").parse().unwrap();

    let segment = guarded.segment().unwrap();
    let header = segment.view().unwrap().header;
    let inputs = &header.limit_inputs;
    assert_eq!(
        LimitSource::from_raw(header.limit_source.load(Relaxed)),
        LimitSource::Derived
    );
    assert_eq!(inputs.cgroup_limit_bytes.load(Relaxed), 512 * MIB);
    assert_eq!(
        SharedMemorySource::from_raw(inputs.shared_memory_source.load(Relaxed)),
        SharedMemorySource::Observed,
        "the postmaster's mapping was seen"
    );
    let shared = inputs.shared_memory_bytes.load(Relaxed);
    assert!(
        shared > (shown_mib - 1) * MIB && shared <= shown_mib * MIB,
        "observed {shared} bytes, PostgreSQL says {shown}"
    );
    assert_eq!(
        inputs.reserve_bytes.load(Relaxed),
        64 * MIB,
        "the default reserve"
    );
    let limit = header.limit_bytes.load(Relaxed);
    assert_eq!(limit, 512 * MIB - shared - 64 * MIB);
    assert_eq!(
        header.mode.load(Relaxed),
        oomguard_core::Mode::Enforce as u32
    );

    expect_out_of_memory(
        &mut client,
        &["SELECT cardinality(array_fill(1, ARRAY[100000000]))"],
    );
    let one: i32 = client.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);

    let cgroup = &header.cgroup;
    assert!(
        cgroup.read_at_unix_seconds.load(Relaxed) > 0,
        "the kernel's numbers were read"
    );
    assert_eq!(cgroup.anon_bytes.load(Relaxed), 16 * MIB);
    assert_eq!(
        cgroup.usage_bytes.load(Relaxed),
        16 * MIB + SHMEM + 4 * MIB,
        "memory.current of the fixture: anon + file (shmem + 4 MiB of page cache)"
    );
    assert_eq!(cgroup.tight.load(Relaxed), 0);
    assert!(guarded.crash_lines().unwrap().is_empty());
}

#[test]
fn the_guard_tightens_while_the_kernel_sees_no_headroom() {
    let fixture = CgroupFixture::new(512 * MIB, 16 * MIB);
    let guarded = start(&fixture, &[], &[]);
    let mut hog = guarded.cluster.connect().unwrap();
    let mut bystander = guarded.cluster.connect().unwrap();
    let checkpointer_before = checkpointer(&mut bystander);
    let small = "SELECT cardinality(array_fill(1, ARRAY[2000000]))"; // 8 MB, far below the limit
    hog.batch_execute(small).expect("room to spare");

    // The kernel now counts 500 MiB of anonymous memory in the 512 MiB cgroup: within the
    // 64 MiB reserve of its limit, although the guard's own total is a few MiB. Once the guard
    // has read that (within its 100 ms interval), the same query is refused.
    fixture.set_anon(500 * MIB);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Err(error) = hog.batch_execute(small) {
            assert_out_of_memory(small, &error);
            break;
        }
        assert!(Instant::now() < deadline, "the guard never tightened");
    }
    let header_numbers = || {
        let segment = guarded.segment().unwrap();
        let header = segment.view().unwrap().header;
        (
            header.cgroup.tight.load(Relaxed),
            header.stats.kernel_denials.load(Relaxed),
            header.total.load(Relaxed),
            header.limit_bytes.load(Relaxed),
        )
    };
    let (tight, kernel_denials, total, limit) = header_numbers();
    assert_eq!(tight, 1);
    assert!(kernel_denials >= 1);
    assert!(
        (total as u64) < limit / 4,
        "the guard's own count was fine: {total} of {limit}"
    );
    let log = guarded.cluster.log_text().unwrap();
    assert!(
        log.contains("within the reserve"),
        "the refusal says why:\n{log}"
    );

    // The kernel frees memory: once the guard has read that, the same query runs again.
    fixture.set_anon(16 * MIB);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match hog.batch_execute(small) {
            Ok(()) => break,
            Err(error) => {
                assert_out_of_memory(small, &error);
                assert!(
                    Instant::now() < deadline,
                    "the guard never loosened: {:?}",
                    header_numbers()
                );
            }
        }
    }
    assert_eq!(header_numbers().0, 0, "no longer tight");
    let one: i32 = bystander.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
    assert_eq!(
        checkpointer(&mut bystander),
        checkpointer_before,
        "no restart"
    );
    assert!(guarded.crash_lines().unwrap().is_empty());
}

#[test]
fn a_parallel_query_whose_dynamic_shared_memory_is_refused_fails_with_an_error() {
    let fixture = CgroupFixture::new(512 * MIB, 16 * MIB);
    let guarded = start(
        &fixture,
        &[("OOM_GUARD_LIMIT", "256Mi")],
        &[
            ("max_worker_processes", "10"),
            ("max_parallel_workers", "8"),
            ("autovacuum", "off"),
        ],
    );
    let mut client = guarded.cluster.connect().unwrap();
    client
        .batch_execute(
            "CREATE TABLE numbers AS SELECT g AS n FROM generate_series(1, 200000) g;
             SET max_parallel_workers_per_gather = 6;
             SET parallel_setup_cost = 0;
             SET parallel_tuple_cost = 0;
             SET min_parallel_table_scan_size = 0;
             SET parallel_leader_participation = off;",
        )
        .unwrap();
    let query = "SELECT count(*) FROM numbers";
    let plan: Vec<String> = client
        .query(
            "EXPLAIN (ANALYZE, COSTS OFF) SELECT count(*) FROM numbers",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        plan.iter().any(|line| line.contains("Workers Launched: 6")),
        "the query runs in parallel: {plan:#?}"
    );
    let count: i64 = client.query_one(query, &[]).unwrap().get(0);
    assert_eq!(count, 200000);

    // Leave less room than the parallel query's dynamic shared memory (6 workers: ~500 KB of
    // tuple and error queues) but enough for the backend's own small allocations.
    let segment = guarded.segment().unwrap();
    let header = segment.view().unwrap().header;
    let room = 160 << 10;
    header
        .limit_bytes
        .store(header.total.load(Relaxed) as u64 + room, Relaxed);
    let (code, message) = sql_error(&mut client, query);
    assert!(
        message.contains("could not resize shared memory segment")
            && message.contains("No space left on device"),
        "{code:?}: {message}"
    );
    assert_eq!(code, SqlState::DISK_FULL, "{message}");
    assert!(header.stats.dynamic_shared_denials.load(Relaxed) >= 1);

    header.limit_bytes.store(256 * MIB, Relaxed);
    let dynamic_before = header.stats.dynamic_shared_bytes.load(Relaxed);
    for _ in 0..5 {
        let count: i64 = client.query_one(query, &[]).unwrap().get(0);
        assert_eq!(count, 200000, "the same session runs it once there is room");
    }
    assert_eq!(
        header.stats.dynamic_shared_bytes.load(Relaxed),
        dynamic_before,
        "each query's segments are credited back when PostgreSQL unlinks them"
    );
    assert!(guarded.crash_lines().unwrap().is_empty());
}
