//! Finding and reading the guard's shared segments from outside the guarded processes: what
//! `oomguard status`, `limit`, `clean` and the exporter (the `oomguard-cli` crate), the guarded
//! clusters of the demo and the tests (`oomguard-cluster`) and the tests themselves look at. It is
//! a crate of its own so that those clusters can read a segment without the CLI's dependencies;
//! it reads the layout with `oomguard-core`'s types, so it and the guard agree on it.
//!
//! A segment is mapped read-write when the file allows it, so dead processes' slots can be reaped
//! (the same compare-and-swap protocol the guard uses), and read-only otherwise. Every file is
//! validated before a field is trusted: a foreign, truncated or other-version file is an error
//! naming the file, never a crash, and [`open_each`] reports it on its own so that one bad file
//! never hides the good ones.
//!
//! This crate also owns the test of a domain's lifecycle ([`Segment::liveness`],
//! [`lock_state`]): every guarded process holds an open-file-description read lock on its
//! segment for as long as it maps it (the kernel drops it when the last such process exits or
//! execs, SIGKILL included), so a segment nobody holds a lock on is *stale*, left by an earlier
//! run. The test takes no lock itself (`F_OFD_GETLK`), so it never disturbs a starting guard.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

use memmap2::{Mmap, MmapOptions, MmapRaw};
use oomguard_core::budget::{BudgetSource, RefusalCause};
use oomguard_core::layout::{segment_len, DEFAULT_REFUSAL_RECORDS, SLOT_COUNT};
use oomguard_core::layout::{
    CgroupState, LayoutError, LimitInputs, LimitSource, ModeReason, SegmentView,
    SharedMemorySource, CGROUP_DIR_CAPACITY,
};
use oomguard_core::pool::Pool;
use oomguard_core::{Mode, ProcessKind};
use serde::Serialize;

/// Where segments live unless `OOM_GUARD_DIR` says otherwise.
pub const DEFAULT_DIR: &str = "/dev/shm";

/// How much room the segment directory has for the segment of a guarded process that starts
/// now: when a new segment does not fit, that process accounts privately (its own anonymous
/// mapping), which neither `oomguard status` nor the exporter can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryRoom {
    /// Bytes an unprivileged process may still allocate in the directory's filesystem.
    pub free_bytes: u64,
    /// Bytes one segment takes (this build's layout).
    pub segment_bytes: u64,
}

impl DirectoryRoom {
    /// Whether a new segment would not fit.
    pub fn is_full(&self) -> bool {
        self.free_bytes < self.segment_bytes
    }

    /// The warning to show when the directory is full, naming `dir`, the numbers and the fix.
    pub fn warning(&self, dir: &Path) -> Option<String> {
        self.is_full().then(|| {
            format!(
                "the segment directory {} has {} KiB free, less than one segment ({} KiB): a \
                 guarded process that starts now accounts privately, unseen here and by the \
                 exporter. Fix: `oomguard clean` removes stale segments; otherwise give the \
                 directory more room (the recipes' segment emptyDir: sizeLimit)",
                dir.display(),
                self.free_bytes / 1024,
                self.segment_bytes / 1024
            )
        })
    }
}

/// The room in `dir` for one more segment (`statvfs`: blocks available to unprivileged users).
pub fn directory_room(dir: &Path) -> std::io::Result<DirectoryRoom> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stat` is writable memory of the type
    // statvfs fills; it is read only after statvfs succeeded.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stat.assume_init()
    };
    // A new segment with the default number of refusal records.
    let segment_bytes = segment_len(SLOT_COUNT, DEFAULT_REFUSAL_RECORDS) as u64;
    Ok(DirectoryRoom {
        free_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
        segment_bytes,
    })
}

impl SegmentError {
    /// Whether opening the file was refused for lack of permission (another user's segment).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, SegmentError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied)
    }
}

/// Errors reading segments.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The directory cannot be listed.
    #[error(
        "cannot list {dir}: {source} (set OOM_GUARD_DIR or --dir to the guard's segment directory)"
    )]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No segment was found.
    #[error("no oomguard segment in {dir}: no guarded process has allocated yet, or the guard uses another directory (OOM_GUARD_DIR) or is not loaded (check LD_PRELOAD)")]
    NoneFound {
        /// The directory searched.
        dir: PathBuf,
    },
    /// A file cannot be opened or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not a valid segment.
    #[error("{path} is not a usable oomguard segment: {error}")]
    Layout {
        /// The file.
        path: PathBuf,
        /// Why.
        error: LayoutError,
    },
}

/// The segment files in `dir` (named `oomguard-*`, without the creators' temporary files),
/// sorted by name.
pub fn find(dir: &Path) -> Result<Vec<PathBuf>, SegmentError> {
    let entries = std::fs::read_dir(dir).map_err(|source| SegmentError::Directory {
        dir: dir.to_owned(),
        source,
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("oomguard-") && !name.ends_with(".tmp") && path.is_file()
        })
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(SegmentError::NoneFound {
            dir: dir.to_owned(),
        });
    }
    Ok(found)
}

/// What reading every segment of a directory gave: the domains that could be read, and one
/// error (naming the file) per file that could not. A foreign, truncated or other-version file
/// next to the guard's own must not hide them.
#[derive(Debug)]
pub struct Found<T> {
    /// The readable domains, in the order the caller chose.
    pub domains: Vec<T>,
    /// The files that could not be read, each with why.
    pub bad: Vec<SegmentError>,
    /// Other users' segments this user may not open (permission denied): not an error. The
    /// official image's entrypoint, say, runs its root phase under the guard and leaves a
    /// root-owned segment beside the server's; `postgres` reading the SQL view cannot open it,
    /// and must still get the server's domain and a successful exit.
    pub skipped: Vec<SegmentError>,
}

/// Opens and validates every segment of `dir` ([`find`]), each on its own. Fails only when the
/// directory cannot be listed or holds no `oomguard-*` file at all.
pub fn open_each(dir: &Path) -> Result<Found<Segment>, SegmentError> {
    let mut found = Found {
        domains: Vec::new(),
        bad: Vec::new(),
        skipped: Vec::new(),
    };
    for path in find(dir)? {
        match Segment::open(&path) {
            Ok(segment) => found.domains.push(segment),
            Err(error @ SegmentError::Io { .. }) if error.is_permission_denied() => {
                found.skipped.push(error)
            }
            Err(error) => found.bad.push(error),
        }
    }
    Ok(found)
}

/// Whether a segment has a live guarded process, as its lock says.
#[derive(Debug)]
pub enum Liveness {
    /// Some process holds a lock on it: a guarded process has it mapped (or one is resetting a
    /// stale segment, or `oomguard clean` is looking at it).
    Live,
    /// Nobody holds a lock: every process that mapped it is gone.
    Stale,
    /// The lock could not be tested (a file system without OFD locks, say). Callers treat the
    /// segment as live: calling a live domain stale would hide it or remove it.
    Unknown(std::io::Error),
}

impl Liveness {
    /// Only a segment whose lock test said so is stale; an untestable one counts as live.
    pub fn is_stale(&self) -> bool {
        matches!(self, Liveness::Stale)
    }
}

/// Takes an open-file-description lock of `kind` (`F_RDLCK`: the lock every guarded process
/// holds on its segment; `F_WRLCK`: nobody else holds one) on the whole of `file`, without
/// waiting: `Ok(false)` when someone's lock conflicts. The lock lasts as long as the open file
/// description (`file` and any copy of its descriptor).
pub fn take_lock(file: &File, kind: libc::c_int) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero flock is a valid argument: the whole file; l_pid must be 0 for OFD
    // locks.
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = kind as libc::c_short;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: the descriptor is open while `file` lives; `request` is a valid flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &request) } == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(error),
    }
}

/// Tests, without taking it, whether a write lock on the whole of `file` would conflict with a
/// lock someone holds (`F_OFD_GETLK`; works on a read-only descriptor). Locks held through
/// another open file description of this very process count too, as they should: such a process
/// is a live guarded one.
pub fn lock_state(file: &File) -> Liveness {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero flock is a valid argument: l_start 0 and l_len 0 are the whole file,
    // l_pid must be 0 for OFD requests.
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = libc::F_WRLCK as libc::c_short;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: the descriptor is open for as long as `file` lives, and `request` is a valid,
    // writable flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut request) } != 0 {
        return Liveness::Unknown(std::io::Error::last_os_error());
    }
    if request.l_type == libc::F_UNLCK as libc::c_short {
        Liveness::Stale
    } else {
        Liveness::Live
    }
}

/// What `oomguard status` says of a stale domain.
pub const STALE_TEXT: &str = "stale: no guarded process has it mapped (left by an earlier run); \
                              `oomguard clean` removes it";

enum Mapping {
    Writable(MmapRaw),
    ReadOnly(Mmap),
}

/// A mapped, validated segment file.
pub struct Segment {
    path: PathBuf,
    /// Kept open for the lock test ([`Segment::liveness`]); it never takes a lock.
    file: File,
    mapping: Mapping,
}

impl Segment {
    /// Maps `path` (read-write if permitted, else read-only) and validates it.
    pub fn open(path: &Path) -> Result<Segment, SegmentError> {
        let io = |source| SegmentError::Io {
            path: path.to_owned(),
            source,
        };
        let (file, mapping) = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => {
                let mapping = Mapping::Writable(MmapRaw::map_raw(&file).map_err(io)?);
                (file, mapping)
            }
            Err(_) => {
                let file = File::open(path).map_err(io)?;
                // SAFETY: the file is shared with live processes that change it only through
                // atomics; we read it through atomics too and never hand out plain references
                // to changing data.
                let mapping =
                    Mapping::ReadOnly(unsafe { MmapOptions::new().map(&file) }.map_err(io)?);
                (file, mapping)
            }
        };
        let segment = Segment {
            path: path.to_owned(),
            file,
            mapping,
        };
        segment.view()?;
        Ok(segment)
    }

    /// Whether a guarded process has this segment mapped now ([`lock_state`]).
    pub fn liveness(&self) -> Liveness {
        lock_state(&self.file)
    }

    /// Whether no guarded process has this segment mapped (an untestable lock counts as live).
    pub fn is_stale(&self) -> bool {
        self.liveness().is_stale()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn bytes(&self) -> &[u8] {
        match &self.mapping {
            // SAFETY: the raw mapping is valid for its length while `self` lives; the guard
            // changes it only through atomics, which the view reads atomically.
            Mapping::Writable(raw) => unsafe {
                std::slice::from_raw_parts(raw.as_ptr(), raw.len())
            },
            Mapping::ReadOnly(map) => map,
        }
    }

    /// The validated view.
    pub fn view(&self) -> Result<SegmentView<'_>, SegmentError> {
        SegmentView::new(self.bytes()).map_err(|error| SegmentError::Layout {
            path: self.path.clone(),
            error,
        })
    }

    /// Why this process may not reap the segment's dead slots, if it may not: the file is
    /// read-only to us, or the guarded processes live in another PID namespace (a sidecar
    /// container, the host), where their pids mean other processes or none.
    pub fn reap_blocker(&self) -> Result<Option<&'static str>, SegmentError> {
        if matches!(self.mapping, Mapping::ReadOnly(_)) {
            return Ok(Some("the segment is read-only to this user"));
        }
        let theirs = self.view()?.header.pid_namespace.load(Relaxed);
        if theirs != 0 && Some(theirs) != own_pid_namespace() {
            return Ok(Some("the guarded processes are in another PID namespace"));
        }
        Ok(None)
    }

    /// Frees the slots of processes that are gone. Returns how many, or `None` when
    /// [`Segment::reap_blocker`] says this process may not.
    pub fn reap_dead(&self) -> Result<Option<u32>, SegmentError> {
        if self.reap_blocker()?.is_some() {
            return Ok(None);
        }
        let pool = Pool::new(self.view()?).in_pid_namespace(own_pid_namespace().unwrap_or(0));
        Ok(Some(pool.reap_dead(process_is_alive)))
    }

    /// The numbers, copied out.
    pub fn snapshot(&self) -> Result<Snapshot, SegmentError> {
        let view = self.view()?;
        let header = view.header;
        let stats = &header.stats;
        let mut processes: Vec<ProcessSnapshot> = view
            .live_slots()
            .map(|slot| {
                let title = process_title(slot.pid.load(Relaxed));
                let kind = ProcessKind::from_raw(slot.kind.load(Relaxed));
                (slot, kind.described_by_title(&title), title)
            })
            .map(|(slot, kind, title)| ProcessSnapshot {
                pid: slot.pid.load(Relaxed),
                kind,
                title,
                bytes: slot.bytes.load(Relaxed),
                peak_bytes: slot.peak.load(Relaxed),
                allocations: slot.allocations.load(Relaxed),
                denials: slot.denials.load(Relaxed),
                denied_bytes: slot.denied_bytes.load(Relaxed),
                last_denied_size: slot.last_denied_size.load(Relaxed),
                overlimit_reports: slot.overlimit_reports.load(Relaxed),
                budget_bytes: Some(slot.budget_bytes.load(Relaxed)).filter(|&bytes| bytes != 0),
                budget_source: BudgetSource::from_raw(slot.budget_source.load(Relaxed)),
                last_refusal_cause: RefusalCause::from_raw(slot.last_refusal_cause.load(Relaxed)),
            })
            .collect();
        processes.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.pid.cmp(&b.pid)));
        let limit = header.limit_bytes.load(Relaxed);
        let cgroup = &header.cgroup;
        let cgroup_read_at = cgroup.read_at_unix_seconds.load(Relaxed);
        Ok(Snapshot {
            path: self.path.display().to_string(),
            limit_inputs: LimitInputsSnapshot::read(&header.limit_inputs),
            creator_pid: header.creator_pid,
            mode: Mode::from_raw(header.mode.load(Relaxed))
                .map(Mode::name)
                .unwrap_or("unset"),
            mode_reason: ModeReason::from_raw(header.mode_reason.load(Relaxed)).name(),
            limit_bytes: (limit != 0).then_some(limit),
            limit_source: LimitSource::from_raw(header.limit_source.load(Relaxed)).name(),
            total_bytes: header.total.load(Relaxed),
            peak_bytes: stats.peak.load(Relaxed),
            denied_allocations: stats.denied_allocations.load(Relaxed),
            denied_bytes: stats.denied_bytes.load(Relaxed),
            overlimit_reports: stats.overlimit_reports.load(Relaxed),
            reclaimed_orphan_bytes: stats.reclaimed_orphan_bytes.load(Relaxed),
            reaped_slots: stats.reaped_slots.load(Relaxed),
            slot_overflows: stats.slot_overflows.load(Relaxed),
            unslotted_bytes: header.overflow.bytes.load(Relaxed),
            slot_count: header.slot_count,
            dynamic_shared_bytes: stats.dynamic_shared_bytes.load(Relaxed),
            domain_limit_denials: stats.domain_limit_denials.load(Relaxed),
            kernel_denials: stats.kernel_denials.load(Relaxed),
            budget_denials: stats.budget_denials.load(Relaxed),
            dynamic_shared_denials: stats.dynamic_shared_denials.load(Relaxed),
            last_refusal_unix_seconds: match stats.last_refusal_unix_ns.load(Relaxed) {
                0 => None,
                ns => Some(ns / 1_000_000_000),
            },
            refusal_record_capacity: header.refusal_capacity,
            cgroup_read_errors: cgroup.read_errors.load(Relaxed),
            cgroup: (cgroup_read_at != 0).then(|| CgroupReading {
                read_at_unix_seconds: cgroup_read_at,
                usage_bytes: cgroup.usage_bytes.load(Relaxed),
                limit_bytes: cgroup.limit_bytes.load(Relaxed),
                anon_bytes: cgroup.anon_bytes.load(Relaxed),
                file_bytes: cgroup.file_bytes.load(Relaxed),
                shmem_bytes: cgroup.shmem_bytes.load(Relaxed),
                tight: cgroup.tight.load(Relaxed) != 0,
                max_events: cgroup.max_events.load(Relaxed),
                oom_kill_events: cgroup.oom_kill_events.load(Relaxed),
            }),
            server_settings: header.server_settings.read().map(
                |(work_mem_bytes, max_connections)| ServerSettingsSnapshot {
                    work_mem_bytes,
                    max_connections,
                },
            ),
            processes,
        })
    }
}

/// One segment's numbers at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The segment file.
    pub path: String,
    /// Pid of the process that created it.
    pub creator_pid: u32,
    /// `enforce`, `report` or `unset`.
    pub mode: &'static str,
    /// Why: `chosen` (as configured), or why the guard fell back to report mode: `no_limit`,
    /// `malformed_setting`, `config_file_rejected`.
    pub mode_reason: &'static str,
    /// The limit, if any.
    pub limit_bytes: Option<u64>,
    /// Where the limit came from: `OOM_GUARD_LIMIT`, `derived` or `none`.
    pub limit_source: &'static str,
    /// What a derived limit is computed from (recorded by the domain's first process also when
    /// `OOM_GUARD_LIMIT` gives the limit: the reserve decides when the guard tightens).
    pub limit_inputs: LimitInputsSnapshot,
    /// Bytes reserved by all guarded processes.
    pub total_bytes: i64,
    /// Highest total seen.
    pub peak_bytes: i64,
    /// Refused calls.
    pub denied_allocations: u64,
    /// Bytes of refused calls.
    pub denied_bytes: u64,
    /// Calls that would have been refused in report mode.
    pub overlimit_reports: u64,
    /// Bytes returned from dead processes' slots.
    pub reclaimed_orphan_bytes: u64,
    /// Dead processes' slots freed.
    pub reaped_slots: u64,
    /// Processes that found no free slot.
    pub slot_overflows: u64,
    /// Bytes of those processes.
    pub unslotted_bytes: i64,
    /// Slots in the segment.
    pub slot_count: u32,
    /// PostgreSQL dynamic shared memory (tmpfs files) charged to the total and not yet released.
    pub dynamic_shared_bytes: i64,
    /// Refusals because the domain's total would pass its limit (cause `domain_limit`). With
    /// `kernel_denials` and `budget_denials` it partitions `denied_allocations`.
    pub domain_limit_denials: u64,
    /// Refusals because the kernel's numbers showed no headroom (cause `kernel_tight`; included
    /// in `denied_allocations`).
    pub kernel_denials: u64,
    /// Refusals because a process's own bytes would pass its budget (cause `backend_budget`;
    /// included in `denied_allocations`): one session's limit at work, not the container short
    /// of memory.
    pub budget_denials: u64,
    /// Refused dynamic shared memory requests (ENOSPC; included in `denied_allocations`).
    pub dynamic_shared_denials: u64,
    /// Unix time in seconds of the latest refusal; `None` before any. Kept across a restart of
    /// the server, like the refusal records.
    pub last_refusal_unix_seconds: Option<u64>,
    /// Refusal records the segment holds (`OOM_GUARD_REFUSAL_RECORDS` of its creator); read them
    /// with `oomguard refusals`.
    pub refusal_record_capacity: u32,
    /// Readings of the cgroup's files that failed.
    pub cgroup_read_errors: u32,
    /// The cgroup's own numbers as a guarded process last read them; `None` until one has.
    pub cgroup: Option<CgroupReading>,
    /// The guarded postmaster's `work_mem` and `max_connections`; `None` until it has forked a
    /// child under the guard.
    pub server_settings: Option<ServerSettingsSnapshot>,
    /// Live processes, largest first.
    pub processes: Vec<ProcessSnapshot>,
}

/// PostgreSQL's server-wide settings as the guarded postmaster last had them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ServerSettingsSnapshot {
    /// `work_mem` in bytes.
    pub work_mem_bytes: u64,
    /// `max_connections`.
    pub max_connections: u32,
}

/// The kernel's view of the guarded processes' cgroup, as published in the segment header by the
/// guard (a sidecar cannot read the PostgreSQL container's cgroup itself).
#[derive(Debug, Clone, Serialize)]
pub struct CgroupReading {
    /// Unix time of the reading, in seconds.
    pub read_at_unix_seconds: u64,
    /// `memory.current` (v2) / `memory.usage_in_bytes` (v1).
    pub usage_bytes: u64,
    /// The effective memory limit.
    pub limit_bytes: u64,
    /// `anon` from memory.stat.
    pub anon_bytes: u64,
    /// `file` from memory.stat.
    pub file_bytes: u64,
    /// `shmem` from memory.stat.
    pub shmem_bytes: u64,
    /// The kernel's anon + shmem was within the reserve of the cgroup limit at this reading: the
    /// guard refuses growth of refusable processes even below its own limit.
    pub tight: bool,
    /// Times the cgroup hit its limit (`memory.events` max / v1 `memory.failcnt`).
    pub max_events: u64,
    /// OOM kills in the cgroup (`memory.events` oom_kill / v1 `oom_control`; 0 if not reported).
    pub oom_kill_events: u64,
}

/// The inputs of a derived limit as the guard recorded them (ARCHITECTURE.md, "The limit"), with their sources by
/// name. Every `Option` is `None` while unknown.
#[derive(Debug, Clone, Serialize)]
pub struct LimitInputsSnapshot {
    /// How far cgroup discovery got: `unknown`, `discovering`, `v1`, `v2` or `failed`.
    pub cgroup_state: &'static str,
    /// Our cgroup's directory (within `OOM_GUARD_CGROUP_ROOT`).
    pub cgroup_dir: Option<String>,
    /// The effective cgroup memory limit (minimum up the tree, capped by MemTotal).
    pub cgroup_limit_bytes: Option<u64>,
    /// Where it came from: `cgroup` (see `cgroup_levels_up`), `hierarchical_memory_limit` (v1,
    /// an ancestor we cannot see) or `MemTotal` (no cgroup limit below the machine's memory).
    pub cgroup_limit_origin: Option<&'static str>,
    /// For origin `cgroup`: how many levels above our cgroup the limiting one is (0: our own).
    pub cgroup_levels_up: Option<u32>,
    /// `MemTotal` of the machine.
    pub mem_total_bytes: Option<u64>,
    /// PostgreSQL shared memory (`None` until known).
    pub shared_memory_bytes: Option<u64>,
    /// Where it came from: `OOM_GUARD_SHARED_MEMORY`, `observed mapping` or `not seen yet` (or,
    /// for `oomguard limit --data-dir`, `postgres -C shared_memory_size`).
    pub shared_memory_source: &'static str,
    /// Shared memory is in huge pages: charged to hugetlb, so not subtracted.
    pub huge_pages: bool,
    /// The reserve in bytes.
    pub reserve_bytes: Option<u64>,
    /// The reserve as a percentage of the cgroup limit, when `OOM_GUARD_RESERVE` gave one.
    pub reserve_percent: Option<u32>,
    /// `default` or `OOM_GUARD_RESERVE`.
    pub reserve_source: Option<&'static str>,
}

impl LimitInputsSnapshot {
    /// Copies the header's inputs out.
    pub fn read(inputs: &LimitInputs) -> LimitInputsSnapshot {
        let state = CgroupState::from_raw(inputs.cgroup_state.load(Relaxed));
        let known = matches!(state, CgroupState::V1 | CgroupState::V2);
        let cgroup_dir = known.then(|| {
            let mut buffer = [0u8; CGROUP_DIR_CAPACITY];
            let len = inputs.cgroup_dir(&mut buffer);
            String::from_utf8_lossy(&buffer[..len]).into_owned()
        });
        let origin = inputs.cgroup_limit_origin.load(Relaxed);
        let shared_source = SharedMemorySource::from_raw(inputs.shared_memory_source.load(Relaxed));
        let percent = inputs.reserve_percent.load(Relaxed);
        let from_env = inputs.reserve_from_env.load(Relaxed) != 0;
        LimitInputsSnapshot {
            cgroup_state: match state {
                CgroupState::Unknown => "unknown",
                CgroupState::Discovering => "discovering",
                CgroupState::V1 => "v1",
                CgroupState::V2 => "v2",
                CgroupState::Failed => "failed",
            },
            cgroup_dir,
            cgroup_limit_bytes: known.then(|| inputs.cgroup_limit_bytes.load(Relaxed)),
            cgroup_limit_origin: known.then_some(match origin {
                1 => ORIGIN_HIERARCHICAL,
                2 => ORIGIN_MEM_TOTAL,
                _ => ORIGIN_CGROUP,
            }),
            cgroup_levels_up: (known && origin == 0).then(|| inputs.cgroup_levels_up.load(Relaxed)),
            mem_total_bytes: known.then(|| inputs.mem_total_bytes.load(Relaxed)),
            shared_memory_bytes: (shared_source != SharedMemorySource::None)
                .then(|| inputs.shared_memory_bytes.load(Relaxed)),
            shared_memory_source: shared_source.name(),
            huge_pages: inputs.huge_pages.load(Relaxed) != 0,
            reserve_bytes: known.then(|| inputs.reserve_bytes.load(Relaxed)),
            // A percentage of 0 is recorded as 0, like a size; sizes are never 0.
            reserve_percent: (known
                && from_env
                && (percent != 0 || inputs.reserve_bytes.load(Relaxed) == 0))
                .then_some(percent),
            reserve_source: known.then_some(if from_env {
                RESERVE_FROM_ENV
            } else {
                RESERVE_DEFAULT
            }),
        }
    }

    /// Shared memory as subtracted from the cgroup limit: 0 with huge pages or when unknown.
    pub fn shared_memory_subtracted(&self) -> u64 {
        if self.huge_pages {
            0
        } else {
            self.shared_memory_bytes.unwrap_or(0)
        }
    }

    /// What the inputs give (`cgroup limit − shared memory − reserve`), `None` when the cgroup
    /// is unknown or nothing is left.
    pub fn derived_bytes(&self) -> Option<u64> {
        oomguard_core::limit::derive(
            self.cgroup_limit_bytes?,
            self.shared_memory_bytes.unwrap_or(0),
            self.huge_pages,
            self.reserve_bytes?,
        )
    }
}

/// [`LimitInputsSnapshot::cgroup_limit_origin`]: a cgroup's `memory.max` / `memory.limit_in_bytes`.
pub const ORIGIN_CGROUP: &str = "cgroup";
/// [`LimitInputsSnapshot::cgroup_limit_origin`]: v1 `hierarchical_memory_limit`.
pub const ORIGIN_HIERARCHICAL: &str = "hierarchical_memory_limit";
/// [`LimitInputsSnapshot::cgroup_limit_origin`]: no cgroup limit, `MemTotal`.
pub const ORIGIN_MEM_TOTAL: &str = "MemTotal";
/// [`LimitInputsSnapshot::reserve_source`]: the default reserve.
pub const RESERVE_DEFAULT: &str = "default";
/// [`LimitInputsSnapshot::reserve_source`]: `OOM_GUARD_RESERVE`.
pub const RESERVE_FROM_ENV: &str = "OOM_GUARD_RESERVE";

/// One guarded process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessSnapshot {
    /// Its pid.
    pub pid: i32,
    /// What it is: what the guard classified it as, or the PostgreSQL process type its title
    /// names where the guard had no reason to classify it (see
    /// `ProcessKind::described_by_title`).
    pub kind: &'static str,
    /// Its command line as `ps` shows it (PostgreSQL sets titles like `postgres: checkpointer`).
    pub title: String,
    /// Bytes it has reserved.
    pub bytes: i64,
    /// Its peak.
    pub peak_bytes: i64,
    /// Allocation calls counted so far.
    pub allocations: u64,
    /// Refused calls.
    pub denials: u64,
    /// Bytes of refused calls.
    pub denied_bytes: u64,
    /// Size of the last refused call.
    pub last_denied_size: u64,
    /// Would-be refusals in report mode.
    pub overlimit_reports: u64,
    /// Its budget in bytes as the guard last evaluated it (at its latest reservation); `None`
    /// when it has none: not refusable, no budget configured, or one that is off.
    pub budget_bytes: Option<u64>,
    /// Where the budget came from; serialized by name: `OOM_GUARD_BACKEND_LIMIT`,
    /// `oomguard.backend_memory_limit`, `malformed_setting` (the default applies, if any), or
    /// `none`. A source with no `budget_bytes` is a budget that is off (`0`/`off`, or a
    /// percentage without a limit to take it of).
    #[serde(serialize_with = "serialize_budget_source")]
    pub budget_source: BudgetSource,
    /// Which limit its most recent refusal kept; serialized by name: `domain_limit`,
    /// `kernel_tight`, `backend_budget`, or `none` when it was never refused.
    #[serde(serialize_with = "serialize_refusal_cause")]
    pub last_refusal_cause: RefusalCause,
}

// The core crate stays free of serde: its enums are written by the names the guard's own
// stderr lines and the exporter's `cause` label use.
fn serialize_budget_source<S: serde::Serializer>(
    source: &BudgetSource,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(source.name())
}

fn serialize_refusal_cause<S: serde::Serializer>(
    cause: &RefusalCause,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(cause.name())
}

impl Snapshot {
    /// The live process with `pid`, if it has a slot.
    pub fn process(&self, pid: i32) -> Option<&ProcessSnapshot> {
        self.processes.iter().find(|p| p.pid == pid)
    }
}

/// Inode of this process's PID namespace.
fn own_pid_namespace() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid")
        .ok()
        .map(|meta| meta.ino())
}

/// Whether `pid` exists and is still the process that claimed its slot at `claimed_at_ns`.
pub fn process_is_alive(pid: i32, claimed_at_ns: u64) -> bool {
    // SAFETY: signal 0 only checks existence and permission.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let fs = oomguard_core::fs::RootedFs::new("/");
    oomguard_core::procstat::owner_alive(&fs, pid, claimed_at_ns, ticks_per_second)
}

/// `/proc/PID/cmdline` with NULs as spaces, or empty when unreadable.
fn process_title(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            String::from_utf8_lossy(&raw)
                .trim_end_matches('\0')
                .replace('\0', " ")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}
