//! Faults around the guard that must neither crash the guarded process nor skew the numbers: a
//! request glibc cannot serve, a segment directory on a full tmpfs, a segment file
//! planted by someone else. Real processes under `LD_PRELOAD`, a real tmpfs mount.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use oomguard_segment::{self as segment, Segment};
use oomguard_tests::Probe;

const MIB: i64 = 1 << 20;

#[test]
fn a_request_glibc_cannot_serve_leaves_nothing_reserved() {
    let dir = tempfile::tempdir().unwrap();
    // A process that is never refused (not PostgreSQL): the guard reserves the request and
    // then glibc says no. 2^45 bytes is more than this machine can map.
    let mut probe = Probe::start(
        "accounting",
        dir.path(),
        &["impossible", &(1u64 << 45).to_string()],
        &[("OOM_GUARD_REFUSE", "backends")],
    );
    assert_eq!(probe.expect("impossible"), "impossible 5 null");
    let paths = segment::find(dir.path()).unwrap();
    let snapshot = Segment::open(&paths[0]).unwrap().snapshot().unwrap();
    assert!(
        snapshot.total_bytes < MIB,
        "the failed calls left {} bytes reserved: {snapshot:#?}",
        snapshot.total_bytes
    );
    assert!(
        snapshot.peak_bytes < MIB,
        "the failed calls left a peak of {} bytes",
        snapshot.peak_bytes
    );
    probe.proceed();
    probe.finish();
}

/// A tmpfs mounted at `dir` with `size`, unmounted on drop.
struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(dir: &'a Path, size: &str) -> Tmpfs<'a> {
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("run mount(8)");
        assert!(
            status.success(),
            "cannot mount a tmpfs at {} (this test needs root: run the tests as root, as \
             .ci/run does)",
            dir.display()
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn a_full_segment_directory_means_private_accounting_not_sigbus() {
    let dir = tempfile::tempdir().unwrap();
    let shm = dir.path().join("shm");
    fs::create_dir(&shm).unwrap();
    let _tmpfs = Tmpfs::mount(&shm, "1m");
    // Leave a few pages: the segment (more than 512 KiB) no longer fits.
    fs::write(shm.join("filler"), vec![1u8; 1000 * 1024]).unwrap();
    let mut probe = Probe::start("accounting", &shm, &["hold", "1048576", "4"], &[]);
    probe.expect("held");
    probe.proceed();
    probe.expect("freed");
    probe.proceed();
    let stderr = probe.finish();
    assert!(
        stderr.contains("cannot use the shared segment") && stderr.contains("No space left"),
        "no clear line about the full directory: {stderr}"
    );
    let leftovers: Vec<_> = fs::read_dir(&shm)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "filler")
        .collect();
    assert!(
        leftovers.is_empty(),
        "a failed creation left {leftovers:?} behind"
    );
}

/// Creates a valid segment named `name` in `dir` with a short guarded run, and returns its bytes.
fn make_segment(dir: &Path, name: &str) -> Vec<u8> {
    oomguard_tests::while_holding(dir, &[("OOM_GUARD_DOMAIN", name)], |_| {});
    fs::read(dir.join(name)).expect("the run created its segment")
}

/// Runs the `hold` probe with `OOM_GUARD_DOMAIN=name` and returns its stderr.
fn attach_to(dir: &Path, name: &str) -> String {
    let mut probe = Probe::start(
        "accounting",
        dir,
        &["hold", "1048576", "4"],
        &[("OOM_GUARD_DOMAIN", name)],
    );
    probe.expect("held");
    probe.proceed();
    probe.expect("freed");
    probe.proceed();
    probe.finish()
}

#[test]
fn a_segment_planted_by_another_user_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let valid = make_segment(dir.path(), "model");
    let cases: [(&str, Option<u32>, u32, usize, &str); 3] = [
        // name, owner (None: ours), mode, length, what the line must say
        (
            "foreign",
            Some(65534),
            0o666,
            valid.len(),
            "owned by uid 65534",
        ),
        ("world-writable", None, 0o666, valid.len(), "mode 0666"),
        ("short", None, 0o600, 4096, "4096 bytes"),
    ];
    for (name, owner, mode, len, expected) in cases {
        let path = dir.path().join(name);
        fs::write(&path, &valid[..len]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&path, Some(uid), None).expect("chown (needs root)");
        }
        let before = fs::read(&path).unwrap();
        let stderr = attach_to(dir.path(), name);
        assert!(
            stderr.contains("untrusted file") && stderr.contains(expected),
            "{name}: no clear line saying {expected:?}: {stderr}"
        );
        assert_eq!(
            fs::read(&path).unwrap(),
            before,
            "{name}: the guard wrote into a file it must not trust"
        );
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, mode, "{name}: mode changed");
    }
}

#[test]
fn a_process_without_a_slot_returns_its_share_of_the_overflow_when_it_exits() {
    use oomguard_core::layout::SegmentView;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering::Relaxed;

    let dir = tempfile::tempdir().unwrap();
    let len = make_segment(dir.path(), "full").len();
    // Keep the domain live (an OFD read lock, as every guarded process holds) and take every
    // slot for this test process, which is alive: the probe finds none free.
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.path().join("full"))
        .unwrap();
    assert!(oomguard_segment::take_lock(&file, libc::F_RDLCK).unwrap());
    // SAFETY: a shared mapping of the whole (fixed-size) file, unmapped below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    // SAFETY: `len` mapped bytes, alive until the munmap at the end.
    let view = SegmentView::new(unsafe { std::slice::from_raw_parts(base as *const u8, len) })
        .expect("a valid segment");
    let namespace = fs::metadata("/proc/self/ns/pid").unwrap().ino();
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    for slot in view.slots {
        slot.claimed_at_ns.store(
            now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64,
            Relaxed,
        );
        slot.pid_namespace.store(namespace, Relaxed);
        slot.pid.store(std::process::id() as i32, Relaxed);
    }

    let mut probe = Probe::start(
        "accounting",
        dir.path(),
        &["hold", "1048576", "8"],
        &[("OOM_GUARD_DOMAIN", "full")],
    );
    probe.expect("held");
    let held = Segment::open(&dir.path().join("full"))
        .unwrap()
        .snapshot()
        .unwrap();
    assert!(held.slot_overflows >= 1, "{}", held.slot_overflows);
    assert!(held.unslotted_bytes >= 8 * MIB, "{}", held.unslotted_bytes);
    probe.proceed();
    probe.expect("freed");
    probe.proceed();
    probe.finish();
    let after = view.header.total.load(Relaxed);
    // SAFETY: nothing refers to the mapping any more.
    unsafe { libc::munmap(base, len) };
    assert_eq!(
        after, 0,
        "the exited process's overflow bytes stayed counted"
    );
}

#[test]
fn two_pid_namespaces_sharing_a_domain_keep_their_own_slots() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("OOM_GUARD_DOMAIN", "oomguard-shared")];
    // Both probes are pid 1 of a PID namespace of their own (as two containers sharing a
    // domain through OOM_GUARD_DOMAIN would be): neither may take the other's slot by pid.
    let wrapper = ["unshare", "--pid", "--fork"];
    let mut first = Probe::start_wrapped(
        &wrapper,
        "accounting",
        dir.path(),
        &["hold", "1048576", "8"],
        &env,
    );
    first.expect("held");
    let mut second = Probe::start_wrapped(
        &wrapper,
        "accounting",
        dir.path(),
        &["hold", "1048576", "8"],
        &env,
    );
    second.expect("held");
    let snapshot = Segment::open(&dir.path().join("oomguard-shared"))
        .unwrap()
        .snapshot()
        .unwrap();
    let pid_ones: Vec<i64> = snapshot
        .processes
        .iter()
        .filter(|process| process.pid == 1)
        .map(|process| process.bytes)
        .collect();
    assert_eq!(
        pid_ones.len(),
        2,
        "two slots of pid 1, one per namespace: {snapshot:#?}"
    );
    assert!(
        pid_ones.iter().all(|&bytes| bytes >= 8 * MIB),
        "each holds its 8 MiB: {pid_ones:?}"
    );
    assert_eq!(
        snapshot.reclaimed_orphan_bytes, 0,
        "nothing was taken from a live slot"
    );
    for mut probe in [first, second] {
        probe.proceed();
        probe.expect("freed");
        probe.proceed();
        probe.finish();
    }
}

#[test]
fn a_refusal_leaves_the_programs_pending_dlerror_alone() {
    let dir = tempfile::tempdir().unwrap();
    // The refusal decision needs PostgreSQL's symbols; looking them up inside malloc (dlsym of
    // names a plain program lacks) would replace the message the program's own failed dlopen
    // left for its next dlerror().
    let mut probe = Probe::start(
        "accounting",
        dir.path(),
        &["dlerror-kept", "1048576"],
        &[("OOM_GUARD_LIMIT", "16Mi")],
    );
    let line = probe.expect("dlerror ");
    assert!(
        line.contains("liboomguard-probe-missing.so"),
        "the program's own dlerror() message was lost: {line}"
    );
    probe.proceed();
    probe.finish();
}

/// Runs the `fake_backend` probe (a program the guard takes for a PostgreSQL client backend)
/// with `args` under the guard in the policy PostgreSQL gets (`OOM_GUARD_REFUSE=jobs`), and
/// returns its stdout and stderr.
fn fake_backend(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(oomguard_tests::probe("fake_backend"));
    oomguard_tests::guarded(&mut command, dir.path(), &[("OOM_GUARD_REFUSE", "jobs")]);
    command.args(args).envs(env.iter().copied());
    let (out, stdout, stderr) = oomguard_tests::run_output(&mut command);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    (stdout, stderr)
}

/// A thread an extension starts inside a backend is outside PostgreSQL's error handling: it is
/// never refused, neither over a budget nor over the container-wide limit, while the backend's
/// own thread is. Failed before the fix (the thread got NULL over both).
#[test]
fn threads_postgresql_did_not_start_are_never_refused() {
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[("OOM_GUARD_BACKEND_LIMIT", "16Mi")],
            "[cause backend_budget]",
        ),
        (
            &[
                ("OOM_GUARD_BACKEND_LIMIT", "64Mi"),
                ("FAKE_BUDGET_SETTING", "4MB"),
            ],
            "would pass its budget 4.0 MiB (oomguard.backend_memory_limit",
        ),
        (&[("OOM_GUARD_LIMIT", "32Mi")], "[cause domain_limit]"),
    ];
    for (env, refusal) in cases {
        let (stdout, stderr) = fake_backend(&["1048576", "64"], env);
        let refused_after: u32 = stdout
            .lines()
            .find_map(|line| line.strip_prefix("main refused after "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{env:?}: {stdout}"));
        assert!(
            refused_after < 32,
            "{env:?}: the main thread is refused: {stdout}"
        );
        assert!(
            stderr.contains("in client backend:") && stderr.contains(refusal),
            "{env:?}: {stderr}"
        );
        assert!(
            stdout.contains("thread got 64 errno=0"),
            "{env:?}: the other thread is served: {stdout}\n{stderr}"
        );
    }
}

/// After a refusal on the budget, what error handling allocates where no refusal is allowed
/// (`ErrorContext`) must not use up the refusal episode: what `AbortTransaction` allocates next,
/// where refusals are allowed, still gets the overdraft. Failed before the fix (the reservation
/// in `ErrorContext` ended the episode and the next request was refused without an overdraft).
#[test]
fn error_handling_after_a_budget_refusal_keeps_its_overdraft() {
    let (stdout, stderr) = fake_backend(&["error-path"], &[("OOM_GUARD_BACKEND_LIMIT", "16Mi")]);
    assert!(
        stdout.contains("main refused after 1") && stderr.contains("[cause backend_budget]"),
        "refused on the budget after 10 to 19 MiB: {stdout}\n{stderr}"
    );
    assert!(stdout.contains("error context: ok"), "{stdout}");
    assert!(stdout.contains("after: ok"), "{stdout}\n{stderr}");
}
