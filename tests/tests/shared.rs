//! PostgreSQL's shared memory as the guard sees it, with real processes under `LD_PRELOAD`: the
//! `dsm` probe sizes POSIX shared memory objects the way PostgreSQL's dynamic shared memory does
//! (`shm_open`, `ftruncate`, `posix_fallocate`, `shm_unlink`) and makes a shared anonymous mapping
//! the way the postmaster does.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use oomguard_core::layout::SharedMemorySource;
use oomguard_segment::{self as segment, Segment};
use oomguard_tests::Probe;

const MIB: u64 = 1 << 20;

/// The `dsm` probe under the guard.
fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Probe {
    Probe::start("dsm", dir, args, env)
}

fn segment_in(dir: &Path) -> Segment {
    let paths = segment::find(dir).expect("a segment");
    Segment::open(&paths[0]).expect("a valid segment")
}

#[test]
fn dynamic_shared_memory_is_charged_refused_with_enospc_and_credited_back() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("/PostgreSQL.oomguard-test-{}", std::process::id());
    let mut probe = start(
        dir.path(),
        &[
            "dsm",
            &name,
            "t:8388608",
            "f:8388608",
            "w",
            "t:134217728",
            "f:134217728",
            "u",
            "w",
        ],
        &[("OOM_GUARD_LIMIT", "64Mi")],
    );
    assert_eq!(probe.line(), "ftruncate 8388608 rc=0 errno=0");
    assert_eq!(probe.line(), "fallocate 8388608 rc=0 errno=0");
    assert_eq!(probe.line(), "waiting");
    let segment = segment_in(dir.path());
    let stats = &segment.view().unwrap().header.stats;
    assert_eq!(
        stats.dynamic_shared_bytes.load(Relaxed),
        8 * MIB as i64,
        "charged once, by ftruncate (posix_fallocate of the same size adds nothing)"
    );
    let total = segment.view().unwrap().header.total.load(Relaxed);
    assert!(total >= 8 * MIB as i64, "part of the total: {total}");

    probe.proceed();
    assert_eq!(
        probe.line(),
        "ftruncate 134217728 rc=-1 errno=28",
        "ENOSPC past the limit"
    );
    assert_eq!(
        probe.line(),
        "fallocate 134217728 rc=28 errno=0",
        "posix_fallocate returns ENOSPC and leaves errno alone"
    );
    assert_eq!(probe.line(), "unlink rc=0");
    assert_eq!(probe.line(), "waiting");
    assert_eq!(
        stats.dynamic_shared_bytes.load(Relaxed),
        0,
        "shm_unlink credits back"
    );
    assert_eq!(stats.dynamic_shared_denials.load(Relaxed), 2);
    assert_eq!(stats.denied_allocations.load(Relaxed), 2);
    probe.proceed();
    let stderr = probe.finish();
    assert!(stderr.contains("refused ftruncate("), "{stderr}");
}

#[test]
fn other_shared_memory_objects_are_not_charged() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("/not-postgres-{}", std::process::id());
    let mut probe = start(
        dir.path(),
        &["dsm", &name, "t:134217728", "w", "u"],
        &[("OOM_GUARD_LIMIT", "64Mi")],
    );
    assert_eq!(probe.line(), "ftruncate 134217728 rc=0 errno=0");
    assert_eq!(probe.line(), "waiting");
    let segment = segment_in(dir.path());
    let stats = &segment.view().unwrap().header.stats;
    assert_eq!(stats.dynamic_shared_bytes.load(Relaxed), 0);
    assert_eq!(stats.denied_allocations.load(Relaxed), 0);
    probe.proceed();
    assert_eq!(probe.line(), "unlink rc=0");
    probe.finish();
}

#[test]
fn a_large_shared_anonymous_mapping_is_taken_as_postgres_shared_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut probe = start(dir.path(), &["map", "67108864"], &[]);
    assert_eq!(probe.line(), "mapped");
    let segment = segment_in(dir.path());
    let inputs = &segment.view().unwrap().header.limit_inputs;
    assert_eq!(inputs.shared_memory_bytes.load(Relaxed), 64 * MIB);
    assert_eq!(
        SharedMemorySource::from_raw(inputs.shared_memory_source.load(Relaxed)),
        SharedMemorySource::Observed
    );
    probe.proceed();
    probe.finish();

    let dir = tempfile::tempdir().unwrap();
    let mut probe = start(
        dir.path(),
        &["map", "67108864"],
        &[("OOM_GUARD_SHARED_MEMORY", "10Mi")],
    );
    assert_eq!(probe.line(), "mapped");
    let segment = segment_in(dir.path());
    let inputs = &segment.view().unwrap().header.limit_inputs;
    assert_eq!(
        inputs.shared_memory_bytes.load(Relaxed),
        10 * MIB,
        "OOM_GUARD_SHARED_MEMORY wins over what is observed"
    );
    assert_eq!(
        SharedMemorySource::from_raw(inputs.shared_memory_source.load(Relaxed)),
        SharedMemorySource::Environment
    );
    probe.proceed();
    probe.finish();
}
