//! The guard's accounting and refusals, proven with real processes under `LD_PRELOAD`: the
//! `accounting` probe allocates in known patterns and pauses at each step, and the test reads the
//! shared segment (as `oomguard status` does) while the probe waits.

use std::path::Path;

use oomguard_core::budget::RefusalCause;
use oomguard_segment::{self as segment, Segment, Snapshot};
use oomguard_tests::{cgroup_v2_fixture, library_path, set_cgroup_max, Probe};

const MIB: i64 = 1 << 20;
/// Documented bound: a thread holds at most 2 x 128 KiB of unused reservation.
const PER_THREAD_SLACK: i64 = 256 << 10;
/// Allocations of the probe's own runtime (stdio buffers, the block table, glibc rounding).
const RUNTIME_SLACK: i64 = 64 << 10;

/// The `accounting` probe under the guard.
fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Probe {
    Probe::start("accounting", dir, args, env)
}

/// The one segment in `dir`.
fn segment_in(dir: &Path) -> Segment {
    let paths = segment::find(dir).expect("a segment");
    assert_eq!(paths.len(), 1, "one domain per test directory: {paths:?}");
    Segment::open(&paths[0]).expect("a valid segment")
}

fn snapshot(dir: &Path) -> Snapshot {
    segment_in(dir).snapshot().unwrap()
}

fn bytes_of(snapshot: &Snapshot, pid: i32) -> i64 {
    snapshot
        .process(pid)
        .unwrap_or_else(|| panic!("no slot for pid {pid}: {snapshot:#?}"))
        .bytes
}

fn assert_between(what: &str, value: i64, low: i64, high: i64) {
    assert!(
        (low..=high).contains(&value),
        "{what} = {value}, expected {low}..={high}"
    );
}

fn maps_contain_guard(pid: i32) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    maps.contains("liboomguard")
}

#[test]
fn held_blocks_are_accounted_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let mut probe = start(dir.path(), &["hold", "1048576", "32"], &[]);
    probe.expect("held");
    assert!(
        maps_contain_guard(probe.pid()),
        "liboomguard.so ({}) is not mapped in the probe",
        library_path().display()
    );
    let held = snapshot(dir.path());
    let expected = 32 * MIB;
    assert_between(
        "bytes while holding 32 MiB",
        bytes_of(&held, probe.pid()),
        expected,
        expected + 32 * 4096 + PER_THREAD_SLACK + RUNTIME_SLACK,
    );
    assert_eq!(held.total_bytes, bytes_of(&held, probe.pid()));
    assert!(held.peak_bytes >= expected);
    assert_eq!(held.mode, "enforce");
    assert_eq!(held.limit_bytes, Some(1 << 30));
    assert_eq!(held.limit_source, "OOM_GUARD_LIMIT");
    let allocations = held.process(probe.pid()).unwrap().allocations;
    assert!(allocations >= 32, "allocations counted: {allocations}");

    probe.proceed();
    probe.expect("freed");
    let freed = snapshot(dir.path());
    assert_between(
        "bytes after freeing",
        bytes_of(&freed, probe.pid()),
        0,
        PER_THREAD_SLACK + RUNTIME_SLACK,
    );
    probe.proceed();
    probe.finish();
    let after = snapshot(dir.path());
    assert!(after.processes.is_empty(), "{after:#?}");
    assert_eq!(after.total_bytes, 0, "a clean exit returns every byte");
}

#[test]
fn allocations_fail_at_the_limit_and_succeed_again_after_free() {
    let dir = tempfile::tempdir().unwrap();
    let mut probe = start(
        dir.path(),
        &["until-null", "1048576"],
        &[("OOM_GUARD_LIMIT", "64Mi")],
    );
    let refused = probe.expect("refused after");
    let count: i64 = refused.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!((60..64).contains(&count), "{refused}");
    assert!(refused.ends_with("errno=12"), "ENOMEM expected: {refused}");
    probe.expect("freed");
    assert_eq!(probe.expect("again"), format!("again {count}"));
    let during = snapshot(dir.path());
    assert!(during.total_bytes <= 64 * MIB, "{during:#?}");
    assert_eq!(during.denied_allocations, 1);
    assert_eq!(during.denied_bytes, 1 << 20);
    let me = during.process(probe.pid()).unwrap();
    assert_eq!((me.denials, me.last_denied_size), (1, 1 << 20));
    probe.proceed();
    let stderr = probe.finish();
    assert_eq!(
        stderr.matches("refused malloc(1048576 bytes)").count(),
        1,
        "one refusal line: {stderr}"
    );
    assert!(stderr.contains("limit 64.0 MiB"), "{stderr}");
}

#[test]
fn injection_refuses_far_below_the_limit_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut probe = start(
        dir.path(),
        &["until-null", "1048576"],
        &[
            ("OOM_GUARD_LIMIT", "64Gi"),
            ("OOM_GUARD_TEST_INJECT", "1:7"),
        ],
    );
    let refused = probe.expect("refused after");
    assert!(refused.ends_with("errno=12"), "ENOMEM expected: {refused}");
    let during = snapshot(dir.path());
    assert!(during.total_bytes < 64 * MIB, "{during:#?}");
    assert!(during.denied_allocations >= 1, "{during:#?}");
    probe.proceed();
    let stderr = probe.finish();
    assert!(
        stderr.contains("OOM_GUARD_TEST_INJECT is on"),
        "an injected refusal says so: {stderr}"
    );
}

#[test]
fn every_allocating_function_is_refused_over_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut probe = start(
        dir.path(),
        &["refused-calls", "33554432"],
        &[("OOM_GUARD_LIMIT", "16Mi")],
    );
    let calls = [
        "malloc",
        "calloc",
        "realloc",
        "reallocarray",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "pvalloc",
    ];
    let output: Vec<String> = calls.iter().map(|call| probe.expect(call)).collect();
    probe.finish();
    for line in &output {
        if line.starts_with("posix_memalign") {
            assert_eq!(line, "posix_memalign rc=12 errno=12", "as glibc: both");
        } else if line.starts_with("realloc ") {
            assert_eq!(line, "realloc NULL errno=12 original-kept=1");
        } else {
            assert!(line.ends_with("NULL errno=12"), "{line}");
        }
    }
    assert_eq!(snapshot(dir.path()).denied_allocations, 9);
}

#[test]
fn threads_stay_within_the_error_bound_and_return_to_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let threads = 4;
    let mut probe = start(dir.path(), &["threads", "4", "200000", "1048576"], &[]);
    probe.expect("holding");
    let holding = snapshot(dir.path());
    let held = threads * MIB;
    assert_between(
        "bytes while 4 threads hold 1 MiB each",
        bytes_of(&holding, probe.pid()),
        held,
        held + (threads + 1) * (PER_THREAD_SLACK + 4096) + RUNTIME_SLACK,
    );
    probe.proceed();
    probe.expect("done");
    let done = snapshot(dir.path());
    assert_between(
        "bytes after the threads freed everything and exited",
        bytes_of(&done, probe.pid()),
        0,
        PER_THREAD_SLACK + RUNTIME_SLACK,
    );
    probe.proceed();
    probe.finish();
    assert_eq!(snapshot(dir.path()).total_bytes, 0);
}

fn fork_case(how: &str) -> (tempfile::TempDir, Probe, i32) {
    fork_case_in_order(how, "early")
}

/// `fork_case` with the child's frees of inherited memory `"early"` (before it allocates) or
/// `"late"` (after): either way they must not cancel what the child allocated itself.
fn fork_case_in_order(how: &str, order: &str) -> (tempfile::TempDir, Probe, i32) {
    let dir = tempfile::tempdir().unwrap();
    let mut probe = start(dir.path(), &["fork", "16777216", how, order], &[]);
    let line = probe.expect("child ");
    let child: i32 = line["child ".len()..].parse().unwrap();
    let both = snapshot(dir.path());
    assert_between(
        "parent bytes (8 MiB held)",
        bytes_of(&both, probe.pid()),
        8 * MIB,
        8 * MIB + 8 * 4096 + PER_THREAD_SLACK + RUNTIME_SLACK,
    );
    // The child starts from zero and holds 16 MiB of its own; freeing 4 MiB it inherited
    // releases nothing (the parent still holds that memory).
    assert_between(
        "child bytes (16 MiB held, 4 MiB inherited freed)",
        bytes_of(&both, child),
        16 * MIB,
        16 * MIB + 4096 + PER_THREAD_SLACK + RUNTIME_SLACK,
    );
    assert_eq!(
        both.total_bytes,
        bytes_of(&both, probe.pid()) + bytes_of(&both, child)
    );
    probe.proceed();
    probe.expect("child gone");
    (dir, probe, child)
}

#[test]
fn a_forked_child_gets_its_own_slot_and_a_clean_exit_returns_it() {
    let (dir, mut probe, child) = fork_case("exit");
    let after = snapshot(dir.path());
    assert!(after.process(child).is_none(), "{after:#?}");
    assert_eq!(after.total_bytes, bytes_of(&after, probe.pid()));
    probe.proceed();
    probe.finish();
}

#[test]
fn a_child_gone_without_cleanup_is_reaped() {
    let (dir, mut probe, child) = fork_case("_exit");
    let segment = segment_in(dir.path());
    let before = segment.snapshot().unwrap();
    assert!(before.process(child).is_some(), "_exit skips the clean-up");
    assert_eq!(segment.reap_dead().unwrap(), Some(1));
    let after = segment.snapshot().unwrap();
    assert!(after.process(child).is_none());
    assert_eq!(after.total_bytes, bytes_of(&after, probe.pid()));
    assert!(after.reclaimed_orphan_bytes >= (16 * MIB) as u64);
    assert_eq!(after.reaped_slots, 1);
    probe.proceed();
    probe.finish();
}

/// A guarded process that holds 1 MiB until dropped, so the domain stays live (a domain with no
/// live process is stale, and the next process to start resets it).
fn keeper(dir: &Path, env: &[(&str, &str)]) -> Probe {
    let mut keeper = start(dir, &["hold", "1048576", "1"], env);
    keeper.expect("held");
    keeper
}

#[test]
fn a_child_freeing_inherited_memory_after_allocating_keeps_its_own_count() {
    let (_dir, mut probe, _child) = fork_case_in_order("exit", "late");
    probe.proceed();
    probe.finish();
}

#[test]
fn memory_of_a_killed_process_is_reclaimed_before_anyone_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("OOM_GUARD_LIMIT", "100Mi")];
    let _keeper = keeper(dir.path(), &env);
    let mut holder = start(dir.path(), &["hold", "1048576", "80"], &env);
    holder.expect("held");
    holder.child.kill().unwrap(); // SIGKILL: no clean-up runs
    holder.child.wait().unwrap();
    let orphaned = snapshot(dir.path());
    assert!(orphaned.total_bytes >= 80 * MIB, "{orphaned:#?}");

    let mut hungry = start(dir.path(), &["until-null", "1048576"], &env);
    let refused = hungry.expect("refused after");
    let count: i64 = refused.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(
        count >= 95,
        "the killed holder's 80 MiB must be reclaimed before refusing: {refused}"
    );
    hungry.expect("freed");
    hungry.expect("again");
    let after = snapshot(dir.path());
    assert!(after.reclaimed_orphan_bytes >= 80 << 20, "{after:#?}");
    assert_eq!(after.reaped_slots, 1);
    hungry.proceed();
    hungry.finish();
}

#[test]
fn exec_replaces_the_slot_of_the_old_image() {
    let dir = tempfile::tempdir().unwrap();
    let _keeper = keeper(dir.path(), &[]);
    let mut probe = start(dir.path(), &["exec", "33554432"], &[]);
    probe.expect("held"); // said by the new image: hold 1 MiB x 4
    let after = snapshot(dir.path());
    assert_eq!(
        after
            .processes
            .iter()
            .filter(|p| p.pid == probe.pid())
            .count(),
        1
    );
    assert_between(
        "bytes of the new image",
        bytes_of(&after, probe.pid()),
        4 * MIB,
        4 * MIB + 4 * 4096 + PER_THREAD_SLACK + RUNTIME_SLACK,
    );
    assert!(after.reclaimed_orphan_bytes >= 32 << 20, "{after:#?}");
    probe.proceed();
    probe.expect("freed");
    probe.proceed();
    probe.finish();
}

#[test]
fn report_mode_counts_but_never_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let mut probe = start(
        dir.path(),
        &["hold", "1048576", "64"],
        &[("OOM_GUARD_LIMIT", "16Mi"), ("OOM_GUARD_MODE", "report")],
    );
    probe.expect("held");
    let held = snapshot(dir.path());
    assert_eq!(held.mode, "report");
    assert!(held.total_bytes >= 64 * MIB);
    assert_eq!(held.denied_allocations, 0);
    assert!(held.overlimit_reports > 0, "{held:#?}");
    probe.proceed();
    probe.expect("freed");
    probe.proceed();
    probe.finish();
}

#[test]
fn off_mode_is_a_pure_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let mut probe = start(
        dir.path(),
        &["hold", "1048576", "64"],
        &[("OOM_GUARD_LIMIT", "16Mi"), ("OOM_GUARD_MODE", "off")],
    );
    probe.expect("held");
    assert!(maps_contain_guard(probe.pid()));
    assert!(
        segment::find(dir.path()).is_err(),
        "off mode must not even create a segment"
    );
    probe.proceed();
    probe.expect("freed");
    probe.proceed();
    assert_eq!(probe.finish(), "");
}

#[test]
fn non_postgres_processes_are_never_refused_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut probe = start(
        dir.path(),
        &["hold", "1048576", "64"],
        &[
            ("OOM_GUARD_LIMIT", "16Mi"),
            ("OOM_GUARD_REFUSE", "backends"),
        ],
    );
    probe.expect("held");
    let held = snapshot(dir.path());
    assert_eq!(held.denied_allocations, 0);
    assert!(held.total_bytes >= 64 * MIB, "accounted all the same");
    assert_eq!(held.process(probe.pid()).unwrap().kind, "other");
    probe.proceed();
    probe.expect("freed");
    probe.proceed();
    probe.finish();
}

#[test]
fn malformed_values_are_reported_once_and_fall_back_to_report_mode() {
    for (name, value, mentions) in [
        ("OOM_GUARD_LIMIT", "12GB", "write Gi or G"),
        (
            "OOM_GUARD_LIMIT",
            "lots",
            "does not start with a whole number",
        ),
        ("OOM_GUARD_MODE", "strict", "enforce, report or off"),
        ("OOM_GUARD_REFUSE", "everyone", "backends"),
        ("OOM_GUARD_TEST_INJECT", "0", "N or N:SEED"),
        ("OOM_GUARD_TEST_INJECT", "10:x", "N or N:SEED"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut env = vec![(name, value)];
        if name != "OOM_GUARD_LIMIT" {
            env.push(("OOM_GUARD_LIMIT", "16Mi"));
        }
        let mut probe = start(dir.path(), &["hold", "1048576", "32"], &env);
        probe.expect("held");
        let held = snapshot(dir.path());
        assert_eq!(held.mode, "report", "{name}={value}");
        assert_eq!(held.denied_allocations, 0);
        probe.proceed();
        probe.expect("freed");
        probe.proceed();
        let stderr = probe.finish();
        assert_eq!(
            stderr.matches(name).count(),
            1,
            "{name}={value} reported once: {stderr}"
        );
        assert!(stderr.contains(mentions), "{stderr}");
        assert!(stderr.contains("running in report mode"), "{stderr}");
    }
}

#[test]
fn a_foreign_segment_file_is_reported_and_never_crashes_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oomguard-custom");
    // Ours, private and of the right size (see hardening.rs for files that are not), but not a
    // segment.
    let foreign =
        vec![0x5a; oomguard_core::layout::segment_size(oomguard_core::layout::SLOT_COUNT)];
    std::fs::write(&path, &foreign).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut probe = start(
        dir.path(),
        &["until-null", "1048576"],
        &[
            ("OOM_GUARD_LIMIT", "16Mi"),
            ("OOM_GUARD_DOMAIN", "oomguard-custom"),
        ],
    );
    // The limit still holds, through the private fallback segment.
    let refused = probe.expect("refused after");
    assert!(refused.contains("errno=12"), "{refused}");
    probe.expect("freed");
    probe.expect("again");
    probe.proceed();
    let stderr = probe.finish();
    assert!(stderr.contains("bad magic"), "{stderr}");
    assert!(stderr.contains("privately"), "{stderr}");
    assert!(std::fs::read(&path).unwrap() == foreign, "left alone");
    let error = Segment::open(&path).err().expect("the CLI rejects it too");
    assert!(error.to_string().contains("bad magic"), "{error}");
}

/// A realloc that does not grow needs nothing from the pool, so nothing can refuse it: not even
/// in a thread that owes the pool a few bytes and has no overdraft left to pay them. Refusing a
/// realloc to 0 bytes would return NULL without freeing, and the caller takes the block for gone.
#[test]
fn a_realloc_that_does_not_grow_is_never_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut probe = start(
        dir.path(),
        &["nothing-to-reserve", "1000"],
        &[("OOM_GUARD_TEST_INJECT", "1")],
    );
    assert_eq!(
        probe.expect("nothing-to-reserve "),
        "nothing-to-reserve owing shrink=block errno=0 zero=NULL errno=0"
    );
    probe.proceed();
    probe.finish();
}

#[test]
fn a_refused_process_gets_a_64_kib_overdraft_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut probe = start(
        dir.path(),
        &["overdraft", "4096"],
        &[("OOM_GUARD_LIMIT", "16Mi")],
    );
    let rounds: Vec<i64> = (1..=3)
        .map(|round| {
            let line = probe.expect(&format!("round {round} "));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    let segment = segment_in(dir.path());
    let total = segment.snapshot().unwrap().total_bytes;
    // 4 KiB requests are 4112-byte blocks: the overdraft covers 15 or 16 of them.
    assert!(rounds[0] > 3000, "the limit itself: {rounds:?}");
    assert!(
        (14..=16).contains(&rounds[1]),
        "the overdraft after a refusal: {rounds:?}"
    );
    assert_eq!(rounds[2], 0, "armed once per episode: {rounds:?}");
    assert!(
        total <= 16 * MIB + (64 << 10),
        "beyond the limit only by the overdraft: {total}"
    );
    probe.proceed();
    probe.finish();
}

#[test]
fn a_thread_that_only_frees_returns_its_credit_when_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut probe = start(dir.path(), &["consumer", "16", "1048576"], &[]);
    probe.expect("consumed");
    let after = snapshot(dir.path());
    // What is left is the main thread's batch and its stdio, not the consumer's credit.
    assert_between(
        "bytes after another thread freed everything and exited",
        bytes_of(&after, probe.pid()),
        0,
        (128 << 10) + 4096 + RUNTIME_SLACK,
    );
    probe.proceed();
    probe.finish();
}

#[test]
fn threads_that_free_a_little_and_exit_leave_no_credit_behind() {
    let dir = tempfile::tempdir().unwrap();
    // 40 short-lived threads each free 10 x 10 KB that the main thread allocated: never enough
    // to reach a batch boundary, so only the thread-exit hook returns their credit.
    let mut probe = start(dir.path(), &["consumer", "10", "10000", "40"], &[]);
    probe.expect("consumed");
    let after = snapshot(dir.path());
    assert_between(
        "bytes after 40 threads freed 100 KB each and exited",
        bytes_of(&after, probe.pid()),
        0,
        (128 << 10) + 4096 + RUNTIME_SLACK,
    );
    probe.proceed();
    probe.finish();
}

#[test]
fn a_derived_limit_follows_an_in_place_resize_of_the_cgroup() {
    let dir = tempfile::tempdir().unwrap();
    let root = cgroup_v2_fixture(dir.path(), "512Mi", 16 * MIB as u64, 4 * MIB as u64);
    let root_text = root.to_str().unwrap();
    let env = [
        ("OOM_GUARD_LIMIT", "auto"),
        ("OOM_GUARD_CGROUP_ROOT", root_text),
    ];
    let mut holder = start(dir.path(), &["hold", "1048576", "1"], &env);
    holder.expect("held");
    let limit = || segment_in(dir.path()).snapshot().unwrap().limit_bytes;
    assert_eq!(
        limit(),
        Some((512 - 64) << 20),
        "512 MiB less the default 64 MiB reserve"
    );

    set_cgroup_max(&root, "1Gi");
    // The guard reads the cgroup at most every 100 ms, when a process reserves: start short-lived
    // guarded processes until one has read the new limit.
    let resized = (1u64 << 30) - (1u64 << 30) / 100 * 10; // default reserve: 10% above 640 MiB
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while limit() != Some(resized) {
        assert!(std::time::Instant::now() < deadline, "still {:?}", limit());
        let mut probe = start(dir.path(), &["hold", "1048576", "1"], &env);
        probe.expect("held");
        probe.proceed();
        probe.expect("freed");
        probe.proceed();
        probe.finish();
    }
    holder.proceed();
    holder.expect("freed");
    holder.proceed();
    holder.finish();
}

/// The `until-null` probe's count of 1 MiB blocks before its first refusal, and its snapshot
/// then (taken while it waits after freeing).
fn refused_after(dir: &Path, block: &str, env: &[(&str, &str)]) -> (i64, Snapshot, Probe) {
    let (refused, probe) = oomguard_tests::refused_probe_with(dir, block, env);
    let count: i64 = refused.split_whitespace().nth(2).unwrap().parse().unwrap();
    (count, snapshot(dir), probe)
}

#[test]
fn a_budget_refuses_one_process_far_below_the_domain_limit() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OOM_GUARD_LIMIT", "1Gi"),
        ("OOM_GUARD_BACKEND_LIMIT", "16Mi"),
    ];
    let (count, during, mut probe) = refused_after(dir.path(), "1048576", &env);
    assert!((12..16).contains(&count), "refused after {count} MiB");
    let me = during.process(probe.pid()).unwrap();
    assert_eq!(me.budget_bytes, Some(16 * MIB as u64), "{me:#?}");
    assert_eq!(me.last_refusal_cause, RefusalCause::BackendBudget);
    assert_eq!((during.budget_denials, during.domain_limit_denials), (1, 0));
    probe.proceed();
    let stderr = probe.finish();
    assert!(
        stderr.contains("would pass its budget 16.0 MiB (OOM_GUARD_BACKEND_LIMIT")
            && stderr.contains("[cause backend_budget]"),
        "{stderr}"
    );
}

/// A request that passes both the budget and the domain's limit is the container's shortage:
/// the cause its alerts watch. Failed before the fix (counted as a budget refusal).
#[test]
fn a_request_past_both_limits_is_counted_against_the_domain() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OOM_GUARD_LIMIT", "32Mi"),
        ("OOM_GUARD_BACKEND_LIMIT", "16Mi"),
    ];
    let (count, during, mut probe) = refused_after(dir.path(), "67108864", &env);
    assert_eq!(count, 0, "a 64 MiB block passes both");
    let me = during.process(probe.pid()).unwrap();
    assert_eq!(me.last_refusal_cause, RefusalCause::DomainLimit, "{me:#?}");
    assert_eq!((during.budget_denials, during.domain_limit_denials), (0, 1));
    probe.proceed();
    let stderr = probe.finish();
    assert!(stderr.contains("[cause domain_limit]"), "{stderr}");
}

/// In report mode a budget only counts what it would have refused, once per call even past
/// both the budget and the domain's limit (counted twice before the fix).
#[test]
fn a_budget_in_report_mode_refuses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OOM_GUARD_MODE", "report"),
        ("OOM_GUARD_LIMIT", "16Mi"),
        ("OOM_GUARD_BACKEND_LIMIT", "8Mi"),
    ];
    let mut probe = start(dir.path(), &["hold", "1048576", "32"], &env);
    probe.expect("held");
    let held = snapshot(dir.path());
    let me = held.process(probe.pid()).unwrap();
    assert!(me.bytes >= 32 * MIB, "{me:#?}");
    // About 25 of the 32 blocks pass the budget, about 17 of them the limit too.
    assert!(
        (20..=32).contains(&me.overlimit_reports),
        "one would-be refusal per call: {me:#?}"
    );
    assert_eq!((held.denied_allocations, me.denials), (0, 0));
    probe.proceed();
    probe.expect("freed");
    probe.proceed();
    probe.finish();
}
