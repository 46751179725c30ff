//! The shared accounting segment: a header, one slot per live guarded process, then the ring of
//! refusal records (see [`crate::refusals`]).
//!
//! The segment is a file (in `/dev/shm` by default) mapped `MAP_SHARED` by every guarded process of
//! a domain and read by the CLI. Its layout is `repr(C)` and versioned: a reader checks
//! [`MAGIC`], [`LAYOUT_VERSION`] and the geometry before it trusts anything, so a foreign or
//! truncated file is an error, never a crash. Every field that changes after creation is an atomic;
//! fields written together by one process sit on their own 128-byte line so that processes do not
//! bounce each other's cache lines (packed per-process counters were measured 26x slower).

use core::fmt;
use core::mem::{align_of, size_of};
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// First bytes of every segment.
pub const MAGIC: [u8; 8] = *b"OOMGUARD";
/// Bumped whenever a field moves or changes meaning.
pub const LAYOUT_VERSION: u32 = 6;
/// Number of process slots; a process that finds none free is accounted in [`Header::overflow`].
pub const SLOT_COUNT: u32 = 4096;

/// Slot `pid` value of a free slot.
pub const PID_FREE: i32 = 0;
/// Slot `pid` value while a slot is being claimed or reaped.
pub const PID_BUSY: i32 = -1;

/// A 128-byte cache-line pair of its own (adjacent-line prefetch makes 64 too little).
#[repr(C, align(128))]
#[derive(Default)]
pub struct Line<T>(pub T);

impl<T> core::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Where the limit in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum LimitSource {
    /// No limit is known: the guard only accounts.
    None = 0,
    /// `OOM_GUARD_LIMIT` gave it.
    Environment = 1,
    /// Derived from the cgroup limit, shared memory and reserve (see [`LimitInputs`]).
    Derived = 2,
}

impl LimitSource {
    /// Decodes the header value; unknown values read as `None`.
    pub fn from_raw(raw: u32) -> LimitSource {
        match raw {
            1 => LimitSource::Environment,
            2 => LimitSource::Derived,
            _ => LimitSource::None,
        }
    }

    /// The name used by the CLI and metrics.
    pub fn name(self) -> &'static str {
        match self {
            LimitSource::None => "none",
            LimitSource::Environment => "OOM_GUARD_LIMIT",
            LimitSource::Derived => "derived",
        }
    }
}

/// Why the domain runs in its mode (recorded with [`Header::mode`] by the domain's first
/// process). A guard that refuses nothing for a reason the user did not choose must say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ModeReason {
    /// As configured: `OOM_GUARD_MODE`, or enforce because a limit is known. (Also what a
    /// segment written by a guard that recorded no reason holds.)
    Chosen = 0,
    /// Report mode because no limit is known: no `OOM_GUARD_LIMIT` and none could be derived
    /// (no cgroup memory limit).
    NoLimit = 1,
    /// Report mode because a setting's value could not be read.
    MalformedSetting = 2,
    /// Report mode because the configuration file was rejected (unreadable, untrusted,
    /// malformed).
    ConfigFileRejected = 3,
}

impl ModeReason {
    /// Decodes the header value; unknown values read as `Chosen`.
    pub fn from_raw(raw: u32) -> ModeReason {
        match raw {
            1 => ModeReason::NoLimit,
            2 => ModeReason::MalformedSetting,
            3 => ModeReason::ConfigFileRejected,
            _ => ModeReason::Chosen,
        }
    }

    /// The reason a [`ModeReason::name`] names.
    pub fn from_name(name: &str) -> Option<ModeReason> {
        [
            ModeReason::Chosen,
            ModeReason::NoLimit,
            ModeReason::MalformedSetting,
            ModeReason::ConfigFileRejected,
        ]
        .into_iter()
        .find(|reason| reason.name() == name)
    }

    /// The name used by the CLI and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ModeReason::Chosen => "chosen",
            ModeReason::NoLimit => "no_limit",
            ModeReason::MalformedSetting => "malformed_setting",
            ModeReason::ConfigFileRejected => "config_file_rejected",
        }
    }

    /// What to do about it.
    pub fn fix(self) -> &'static str {
        match self {
            ModeReason::Chosen => "",
            ModeReason::NoLimit => {
                "set OOM_GUARD_LIMIT, or run the server in a container with a memory limit"
            }
            ModeReason::MalformedSetting => {
                "the guarded processes' stderr (the server log) names the setting and its accepted forms"
            }
            ModeReason::ConfigFileRejected => {
                "the server log says why; the file must be a regular file owned by root (or the \
                 server's user), writable only by its owner, with KEY=VALUE lines"
            }
        }
    }
}

/// The inputs a derived limit was computed from, recorded so `oomguard limit` can explain it, and
/// where the guarded processes find their cgroup's files. Zero means "not known".
#[repr(C)]
pub struct LimitInputs {
    /// The cgroup memory limit in effect (minimum up the tree, capped by MemTotal).
    pub cgroup_limit_bytes: AtomicU64,
    /// PostgreSQL shared memory subtracted from it.
    pub shared_memory_bytes: AtomicU64,
    /// Reserve for page tables, idle backends and other processes.
    pub reserve_bytes: AtomicU64,
    /// `MemTotal` of the machine, the cap of `cgroup_limit_bytes`.
    pub mem_total_bytes: AtomicU64,
    /// A [`CgroupState`].
    pub cgroup_state: AtomicU32,
    /// Where `cgroup_limit_bytes` came from: 0 our cgroup's or an ancestor's limit (see
    /// `cgroup_levels_up`), 1 v1 `hierarchical_memory_limit`, 2 `MemTotal` (no cgroup limit).
    pub cgroup_limit_origin: AtomicU32,
    /// How many levels above ours the cgroup whose limit applies is.
    pub cgroup_levels_up: AtomicU32,
    /// A [`SharedMemorySource`].
    pub shared_memory_source: AtomicU32,
    /// Non-zero when shared memory sits in huge pages (charged to hugetlb, not subtracted).
    pub huge_pages: AtomicU32,
    /// The reserve as a percentage of the cgroup limit, 0 when given in bytes.
    pub reserve_percent: AtomicU32,
    /// 0: the default reserve; 1: `OOM_GUARD_RESERVE`.
    pub reserve_from_env: AtomicU32,
    /// Length of `cgroup_dir` (valid once `cgroup_state` is v1 or v2).
    pub cgroup_dir_len: AtomicU32,
    /// Our cgroup's directory (within `OOM_GUARD_CGROUP_ROOT`), so every guarded process can
    /// read the kernel's numbers without discovering it again.
    pub cgroup_dir: [AtomicU8; CGROUP_DIR_CAPACITY],
}

/// The postmaster's `work_mem` and `max_connections`, recorded by each child it forks (a child
/// starts with the postmaster's values, which follow `postgresql.conf` and reloads), so that the
/// CLI can tell whether the configuration fits the limit. Zero means "not known" (no PostgreSQL
/// postmaster is guarded, or it has not forked yet).
#[repr(C)]
#[derive(Default)]
pub struct ServerSettings {
    /// `work_mem` in kB, as PostgreSQL keeps it.
    pub work_mem_kb: AtomicU32,
    /// `max_connections`.
    pub max_connections: AtomicU32,
}

impl ServerSettings {
    /// Records the values, storing only what changed: every fork of the postmaster calls this,
    /// and an unchanged value must not make the header's line bounce between processes.
    /// Non-positive values (not a setting PostgreSQL accepts) are not recorded.
    pub fn record(&self, work_mem_kb: i32, max_connections: i32) {
        for (cell, value) in [
            (&self.work_mem_kb, work_mem_kb),
            (&self.max_connections, max_connections),
        ] {
            if let Ok(value @ 1..) = u32::try_from(value) {
                if cell.load(Relaxed) != value {
                    cell.store(value, Relaxed);
                }
            }
        }
    }

    /// `(work_mem in bytes, max_connections)`, when both are known.
    pub fn read(&self) -> Option<(u64, u32)> {
        let work_mem_kb = self.work_mem_kb.load(Relaxed);
        let max_connections = self.max_connections.load(Relaxed);
        (work_mem_kb != 0 && max_connections != 0)
            .then(|| (u64::from(work_mem_kb) * 1024, max_connections))
    }
}

/// Capacity of [`LimitInputs::cgroup_dir`]: a Kubernetes container scope is about 220 bytes.
pub const CGROUP_DIR_CAPACITY: usize = 320;

impl LimitInputs {
    /// Records our cgroup's directory. Fails (leaving nothing recorded) if it does not fit.
    pub fn set_cgroup_dir(&self, dir: &[u8]) -> bool {
        if dir.len() > CGROUP_DIR_CAPACITY {
            return false;
        }
        for (cell, &byte) in self.cgroup_dir.iter().zip(dir) {
            cell.store(byte, Relaxed);
        }
        self.cgroup_dir_len.store(dir.len() as u32, Release);
        true
    }

    /// Copies the recorded cgroup directory into `buffer`, returning its length.
    pub fn cgroup_dir(&self, buffer: &mut [u8; CGROUP_DIR_CAPACITY]) -> usize {
        let len = (self.cgroup_dir_len.load(Acquire) as usize).min(CGROUP_DIR_CAPACITY);
        for (byte, cell) in buffer.iter_mut().zip(&self.cgroup_dir).take(len) {
            *byte = cell.load(Relaxed);
        }
        len
    }
}

/// How far the guard got in finding the domain's cgroup (`LimitInputs::cgroup_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CgroupState {
    /// Nobody looked yet.
    Unknown = 0,
    /// A process is looking now.
    Discovering = 1,
    /// Found, cgroup v1.
    V1 = 2,
    /// Found, cgroup v2.
    V2 = 3,
    /// Discovery failed (the guard said why on stderr); no derived limit, no kernel readings.
    Failed = 4,
}

impl CgroupState {
    /// Decodes the header value.
    pub fn from_raw(raw: u32) -> CgroupState {
        match raw {
            1 => CgroupState::Discovering,
            2 => CgroupState::V1,
            3 => CgroupState::V2,
            4 => CgroupState::Failed,
            _ => CgroupState::Unknown,
        }
    }
}

/// Where the shared memory subtracted from a derived limit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SharedMemorySource {
    /// Not known yet (no PostgreSQL postmaster has mapped it).
    None = 0,
    /// `OOM_GUARD_SHARED_MEMORY`.
    Environment = 1,
    /// The largest shared anonymous mapping a guarded process made (the postmaster's main
    /// shared memory segment).
    Observed = 2,
}

impl SharedMemorySource {
    /// Decodes the header value.
    pub fn from_raw(raw: u32) -> SharedMemorySource {
        match raw {
            1 => SharedMemorySource::Environment,
            2 => SharedMemorySource::Observed,
            _ => SharedMemorySource::None,
        }
    }

    /// The name used by the CLI.
    pub fn name(self) -> &'static str {
        match self {
            SharedMemorySource::None => "not seen yet",
            SharedMemorySource::Environment => "OOM_GUARD_SHARED_MEMORY",
            SharedMemorySource::Observed => "observed mapping",
        }
    }
}

/// What kind of process a slot belongs to, as far as the guard has classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ProcessKind {
    /// Not classified yet: classification happens the first time the process passes the limit.
    Unclassified = 0,
    /// Not a PostgreSQL server process.
    Other = 1,
    /// The postmaster (or a standalone backend): never refused.
    Postmaster = 2,
    /// A PostgreSQL client backend (a session).
    ClientBackend = 3,
    /// A PostgreSQL process that is never refused: startup, checkpointer, background writer,
    /// walwriter, archiver, logger, WAL receiver, the autovacuum and logical replication
    /// launchers, extensions' launchers and schedulers.
    PostgresAuxiliary = 4,
    /// A parallel query worker: its ERROR is relayed to the leader's query.
    ParallelWorker = 5,
    /// A background worker started by an extension to run a job (pg_cron, TimescaleDB).
    BackgroundWorker = 6,
    /// An autovacuum worker.
    AutovacuumWorker = 7,
    /// A WAL sender (physical or logical replication connection): never refused. Its ERROR
    /// breaks the replication stream: with synchronous replication every commit waits, and
    /// logical decoding starts over from the slot's restart point, into the same memory.
    WalSender = 8,
    /// A logical replication apply or table synchronisation worker.
    LogicalReplicationWorker = 9,
}

impl ProcessKind {
    /// A PostgreSQL background worker's kind from its `bgw_type` (`None`: no type could be
    /// read). Launchers and schedulers (PostgreSQL's logical replication launcher, pg_cron's
    /// launcher, TimescaleDB's scheduler) are never refused: the jobs they start are, and a
    /// refused launcher would stop every job until it is restarted. `bgw_type` is whatever an
    /// extension wrote: any bytes are read without panicking.
    pub fn of_background_worker(bgw_type: Option<&[u8]>) -> ProcessKind {
        let Some(name) = bgw_type else {
            return ProcessKind::PostgresAuxiliary;
        };
        let contains = |word: &[u8]| {
            name.windows(word.len())
                .any(|window| window.eq_ignore_ascii_case(word))
        };
        if name == b"parallel worker" {
            ProcessKind::ParallelWorker
        } else if contains(b"launcher") || contains(b"scheduler") {
            ProcessKind::PostgresAuxiliary
        } else if name.starts_with(b"logical replication") {
            ProcessKind::LogicalReplicationWorker
        } else {
            ProcessKind::BackgroundWorker
        }
    }

    /// What to call a process whose slot says `self` and whose command line (`ps`'s title) is
    /// `title`: the slot's kind when the guard classified the process as one it may refuse (or
    /// as the postmaster, or not PostgreSQL), else the PostgreSQL process type its title
    /// names (`postgres: checkpointer`, `postgres: main: walwriter` with a `cluster_name`), so
    /// that processes the guard never had to classify (they never reserved again after they
    /// were forked) are named too. Falls back to the slot's kind.
    pub fn described_by_title(self, title: &str) -> &'static str {
        /// The types PostgreSQL 15 to 18 put in its titles (`GetBackendTypeDesc`, and the
        /// background workers of its own).
        const TITLE_TYPES: [&str; 16] = [
            "autovacuum launcher",
            "autovacuum worker",
            "logical replication launcher",
            "archiver",
            "background writer",
            "checkpointer",
            "logger",
            "startup",
            "walreceiver",
            "walsender",
            "walwriter",
            "walsummarizer",
            "slotsync worker",
            "io worker",
            "stats collector",
            "parallel worker",
        ];
        if !matches!(
            self,
            ProcessKind::Unclassified | ProcessKind::PostgresAuxiliary
        ) {
            return self.name();
        }
        let Some(rest) = title.strip_prefix("postgres: ") else {
            return self.name();
        };
        TITLE_TYPES
            .into_iter()
            .find(|name| {
                rest.starts_with(name)
                    || rest
                        .split_once(": ")
                        .is_some_and(|(_, after_cluster_name)| after_cluster_name.starts_with(name))
            })
            .unwrap_or(self.name())
    }

    /// Decodes the slot value; unknown values read as `Unclassified`.
    pub fn from_raw(raw: u32) -> ProcessKind {
        match raw {
            1 => ProcessKind::Other,
            2 => ProcessKind::Postmaster,
            3 => ProcessKind::ClientBackend,
            4 => ProcessKind::PostgresAuxiliary,
            5 => ProcessKind::ParallelWorker,
            6 => ProcessKind::BackgroundWorker,
            7 => ProcessKind::AutovacuumWorker,
            8 => ProcessKind::WalSender,
            9 => ProcessKind::LogicalReplicationWorker,
            _ => ProcessKind::Unclassified,
        }
    }

    /// The name used by the CLI and in refusal lines: `pg_stat_activity.backend_type`'s where
    /// there is one.
    pub fn name(self) -> &'static str {
        match self {
            ProcessKind::Unclassified => "unclassified",
            ProcessKind::Other => "other",
            ProcessKind::Postmaster => "postmaster",
            ProcessKind::ClientBackend => "client backend",
            ProcessKind::PostgresAuxiliary => "postgres auxiliary",
            ProcessKind::ParallelWorker => "parallel worker",
            ProcessKind::BackgroundWorker => "background worker",
            ProcessKind::AutovacuumWorker => "autovacuum worker",
            ProcessKind::WalSender => "walsender",
            ProcessKind::LogicalReplicationWorker => "logical replication worker",
        }
    }
}

/// One guarded process. Only its owner writes `bytes`, `peak` and the counters; reapers write a
/// slot only after taking it over with a compare-and-swap on `pid`.
#[repr(C, align(128))]
#[derive(Default)]
pub struct Slot {
    /// [`PID_FREE`], [`PID_BUSY`], or the owner's pid.
    pub pid: AtomicI32,
    /// A [`ProcessKind`].
    pub kind: AtomicU32,
    /// `CLOCK_BOOTTIME` in nanoseconds when the owner claimed the slot: a process that holds
    /// this pid but started later is not the owner (the pid was reused). Taken from the vDSO, so
    /// claiming a slot costs a forked child no system call.
    pub claimed_at_ns: AtomicU64,
    /// Inode of the owner's PID namespace (`/proc/self/ns/pid`), 0 if unknown. Its pid means
    /// something only there: a process of another namespace that shares the domain (an explicit
    /// `OOM_GUARD_DOMAIN`) neither claims this slot by pid nor judges its owner dead.
    pub pid_namespace: AtomicU64,
    /// Bytes this process has reserved from the pool (its allocations plus its threads' unused
    /// reservations). Never below zero: a forked child that frees memory it inherited from its
    /// parent releases nothing (the parent still holds it, and freeing copies the page).
    pub bytes: AtomicI64,
    /// Highest `bytes` seen.
    pub peak: AtomicI64,
    /// Successful allocation calls, flushed from threads at reservation boundaries.
    pub allocations: AtomicU64,
    /// Refused allocation calls.
    pub denials: AtomicU64,
    /// Bytes of the refused calls.
    pub denied_bytes: AtomicU64,
    /// Size of the most recently refused call.
    pub last_denied_size: AtomicU64,
    /// Calls that would have been refused in report mode.
    pub overlimit_reports: AtomicU64,
    /// This process's budget in bytes as last evaluated (at its latest reservation), 0 for none
    /// (see [`crate::budget`]).
    pub budget_bytes: AtomicU64,
    /// A [`crate::budget::BudgetSource`]: where `budget_bytes` came from.
    pub budget_source: AtomicU32,
    /// A [`crate::budget::RefusalCause`]: which limit the most recent refusal kept.
    pub last_refusal_cause: AtomicU32,
}

/// Container-wide counters and configuration. Lives at offset 0 of the segment.
#[repr(C, align(128))]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`LAYOUT_VERSION`].
    pub layout_version: u32,
    /// `size_of::<Header>()` of the writer.
    pub header_size: u32,
    /// `size_of::<Slot>()` of the writer.
    pub slot_size: u32,
    /// Number of slots after the header.
    pub slot_count: u32,
    /// Pid of the process that created the segment.
    pub creator_pid: u32,
    /// A [`ModeReason`] (was padding, always zero, in the first releases of this layout).
    pub mode_reason: AtomicU32,
    /// Inode of the creator's PID namespace (`/proc/self/ns/pid`), 0 if unknown. Pids in the
    /// slots mean something only inside it: a reader elsewhere (a sidecar container, the host)
    /// must not judge them dead.
    pub pid_namespace: AtomicU64,
    /// Number of refusal records after the slots (`OOM_GUARD_REFUSAL_RECORDS` of the process
    /// that created the segment), at most [`MAX_REFUSAL_RECORDS`].
    pub refusal_capacity: u32,
    /// Zero.
    pub reserved: u32,

    /// The limit in bytes; 0 = none (account only).
    pub limit_bytes: AtomicU64,
    /// A [`LimitSource`].
    pub limit_source: AtomicU32,
    /// The [`crate::Mode`] of the domain's first process (enforce or report; processes in off
    /// mode never attach). Each process refuses by its own mode: `OOM_GUARD_MODE=report psql`
    /// does not switch enforcement off for the others.
    pub mode: AtomicU32,
    /// What a derived limit was computed from.
    pub limit_inputs: LimitInputs,
    /// PostgreSQL's server-wide settings that say how much memory its queries may want (in what
    /// was padding up to `total` in the first releases of this layout: zero, "not known").
    pub server_settings: ServerSettings,

    /// Bytes reserved by all slots together (the number compared with the limit).
    pub total: Line<AtomicI64>,
    /// Counters touched only on reservation boundaries and refusals.
    pub stats: Line<HeaderStats>,
    /// Kernel view of the cgroup, written by guarded processes for readers that cannot see it.
    pub cgroup: Line<CgroupSnapshot>,
    /// Accounts processes that found no free slot.
    pub overflow: Slot,
}

/// Container-wide peaks and counters.
#[repr(C)]
#[derive(Default)]
pub struct HeaderStats {
    /// Highest `total` seen.
    pub peak: AtomicI64,
    /// Refused allocation calls.
    pub denied_allocations: AtomicU64,
    /// Bytes of the refused calls.
    pub denied_bytes: AtomicU64,
    /// Calls that would have been refused in report mode.
    pub overlimit_reports: AtomicU64,
    /// Bytes returned to the pool from slots of processes that died without cleaning up.
    pub reclaimed_orphan_bytes: AtomicU64,
    /// Slots reaped because their process was gone.
    pub reaped_slots: AtomicU64,
    /// Processes that found every slot taken.
    pub slot_overflows: AtomicU64,
    /// Where the search for a free slot starts: keeps a forked child from touching (and
    /// page-faulting on) every slot before the free ones.
    pub free_slot_hint: AtomicU64,
    /// Bytes of PostgreSQL dynamic shared memory (files in tmpfs sized with `ftruncate` /
    /// `posix_fallocate`) charged to the total and not yet released by `shm_unlink`.
    pub dynamic_shared_bytes: AtomicI64,
    /// Refusals made because the kernel's numbers showed no headroom (see
    /// [`CgroupSnapshot::tight`]), included in `denied_allocations`.
    pub kernel_denials: AtomicU64,
    /// Refused dynamic shared memory requests (ENOSPC), included in `denied_allocations`.
    pub dynamic_shared_denials: AtomicU64,
    /// Refusals made because the total would pass the domain's limit, included in
    /// `denied_allocations` (with `kernel_denials` and `budget_denials`, every refusal).
    pub domain_limit_denials: AtomicU64,
    /// Refusals made because a process's own bytes would pass its budget, included in
    /// `denied_allocations`.
    pub budget_denials: AtomicU64,
    /// Refusal records started so far: the last record's number (see [`crate::refusals`]).
    pub refusal_records: AtomicU64,
    /// Unix time in nanoseconds of the latest refusal (0: none yet), recorded even without a
    /// ring.
    pub last_refusal_unix_ns: AtomicU64,
    /// One past the highest slot index ever claimed: the slots a scan over live processes
    /// needs to look at.
    pub slot_high_water: AtomicU64,
}

/// The cgroup's own numbers as last read by a guarded process (0 = not read yet).
#[repr(C)]
#[derive(Default)]
pub struct CgroupSnapshot {
    /// Unix time of the reading, in seconds.
    pub read_at_unix_seconds: AtomicU64,
    /// `memory.current` / `memory.usage_in_bytes`.
    pub usage_bytes: AtomicU64,
    /// The effective limit.
    pub limit_bytes: AtomicU64,
    /// `anon` from memory.stat.
    pub anon_bytes: AtomicU64,
    /// `file` from memory.stat.
    pub file_bytes: AtomicU64,
    /// `shmem` from memory.stat.
    pub shmem_bytes: AtomicU64,
    /// `CLOCK_MONOTONIC` (ns, coarse) before which no process reads again: one reader per interval for the
    /// whole domain, chosen by compare-and-swap.
    pub next_read_ns: AtomicU64,
    /// Non-zero while the kernel's unreclaimable memory (anon + shmem) is within the reserve of
    /// the cgroup limit: growth of refusable processes is refused even below the guard's limit.
    pub tight: AtomicU32,
    /// Readings that failed (the cgroup's files vanished or changed format).
    pub read_errors: AtomicU32,
    /// Times the cgroup hit its limit (`memory.events` max / v1 `failcnt`).
    pub max_events: AtomicU64,
    /// OOM kills in the cgroup (`memory.events` oom_kill / v1 `oom_control`), if reported.
    pub oom_kill_events: AtomicU64,
}

/// Size in bytes of the header and `slot_count` slots: where the refusal records start.
pub const fn segment_size(slot_count: u32) -> usize {
    size_of::<Header>() + slot_count as usize * size_of::<Slot>()
}

/// Most refusal records a segment may hold.
pub const MAX_REFUSAL_RECORDS: u32 = 4096;
/// Refusal records of a segment when `OOM_GUARD_REFUSAL_RECORDS` does not say.
pub const DEFAULT_REFUSAL_RECORDS: u32 = 256;

/// Size in bytes of a whole segment: header, `slot_count` slots and `refusal_records` records.
pub const fn segment_len(slot_count: u32, refusal_records: u32) -> usize {
    segment_size(slot_count) + refusal_records as usize * size_of::<RefusalRecord>()
}

/// The refusal records a segment file of `len` bytes with `slot_count` slots would hold, if
/// `len` is the size of such a segment (checked before a file is mapped: no other size is
/// trusted).
pub const fn refusal_records_of_len(slot_count: u32, len: u64) -> Option<u32> {
    let base = segment_size(slot_count) as u64;
    let record = size_of::<RefusalRecord>() as u64;
    if len < base
        || !(len - base).is_multiple_of(record)
        || (len - base) / record > MAX_REFUSAL_RECORDS as u64
    {
        return None;
    }
    Some(((len - base) / record) as u32)
}

/// Bytes of a statement's text a refusal record keeps.
pub const STATEMENT_BYTES: usize = 344;

/// One of the largest processes of the domain when a refusal was recorded.
#[repr(C)]
#[derive(Default)]
pub struct TopConsumer {
    /// Its pid (0: no entry).
    pub pid: AtomicI32,
    /// Its [`ProcessKind`].
    pub kind: AtomicU32,
    /// Its bytes.
    pub bytes: AtomicI64,
}

/// One refused statement of one process (see [`crate::refusals`] for how records are written
/// and read). Every field is an atomic: writers and readers in other processes share it.
#[repr(C, align(128))]
pub struct RefusalRecord {
    /// 0 while never written; odd while a process writes it; even once written. A reader keeps
    /// what it read only if this was even and unchanged before and after.
    pub seq: AtomicU64,
    /// The record's number in the domain: 1 for the first record, counting up.
    pub number: AtomicU64,
    /// Unix time in nanoseconds of the first refusal.
    pub first_unix_ns: AtomicU64,
    /// Unix time in nanoseconds of the latest refusal.
    pub last_unix_ns: AtomicU64,
    /// Refusals counted in this record (of one statement in one process, in a row).
    pub count: AtomicU64,
    /// PostgreSQL's query id of the statement (`pg_stat_statements.queryid`); 0 if unknown.
    pub query_id: AtomicU64,
    /// Bytes asked for by the latest refused call.
    pub request_bytes: AtomicU64,
    /// The process's own bytes at the latest refusal.
    pub process_bytes: AtomicU64,
    /// The process's budget at the latest refusal (0: none).
    pub budget_bytes: AtomicU64,
    /// The domain's total at the latest refusal.
    pub total_bytes: AtomicI64,
    /// The domain's limit at the latest refusal.
    pub limit_bytes: AtomicU64,
    /// The refused process.
    pub pid: AtomicI32,
    /// Its [`ProcessKind`].
    pub kind: AtomicU32,
    /// A [`crate::budget::RefusalCause`].
    pub cause: AtomicU32,
    /// A [`crate::refusals::Call`]: the refused function.
    pub call: AtomicU32,
    /// PostgreSQL's `MyDatabaseId` (0: none).
    pub database_oid: AtomicU32,
    /// The session user's OID (0: none).
    pub role_oid: AtomicU32,
    /// Bytes of `statement` in use.
    pub statement_len: AtomicU32,
    /// Bit 0: the statement was longer than [`STATEMENT_BYTES`].
    pub flags: AtomicU32,
    /// The three largest processes of the domain at the first refusal, largest first.
    pub top: [TopConsumer; 3],
    /// The statement's first bytes (`debug_query_string`), not NUL-terminated.
    pub statement: [AtomicU8; STATEMENT_BYTES],
}

const _: () = assert!(size_of::<RefusalRecord>() == 512);

/// Why a mapped file is not a usable segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// Shorter than its header or than its slots claim.
    Truncated {
        /// Bytes present.
        found: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// Not aligned for the header (only possible for a non-mmap buffer).
    Misaligned,
    /// Does not start with [`MAGIC`]: not an oomguard segment.
    BadMagic,
    /// Written by a build with another layout.
    Version {
        /// The version in the file.
        found: u32,
    },
    /// Header or slot size disagree with this build.
    Geometry,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::Truncated { found, needed } => write!(
                f,
                "the segment is truncated ({found} bytes, at least {needed} needed)"
            ),
            LayoutError::Misaligned => write!(f, "the segment is not aligned"),
            LayoutError::BadMagic => write!(f, "not an oomguard segment (bad magic)"),
            LayoutError::Version { found } => write!(
                f,
                "segment layout version {found}, this build reads version {LAYOUT_VERSION}: \
                 use the oomguard build that matches the running guard"
            ),
            LayoutError::Geometry => write!(
                f,
                "segment header or slot size differs from this build's (corrupt or foreign)"
            ),
        }
    }
}

/// A validated segment: the header and its slots.
#[derive(Clone, Copy)]
pub struct SegmentView<'a> {
    /// The header.
    pub header: &'a Header,
    /// The process slots.
    pub slots: &'a [Slot],
    /// The refusal records (none when the segment holds no ring).
    pub records: &'a [RefusalRecord],
}

impl<'a> SegmentView<'a> {
    /// Validates `bytes` (a mapping of a segment file) and views it. Never trusts a field before
    /// the magic, version and sizes have been checked against the length.
    pub fn new(bytes: &'a [u8]) -> Result<SegmentView<'a>, LayoutError> {
        let header_size = size_of::<Header>();
        if bytes.len() < header_size {
            return Err(LayoutError::Truncated {
                found: bytes.len(),
                needed: header_size,
            });
        }
        if !(bytes.as_ptr() as usize).is_multiple_of(align_of::<Header>()) {
            return Err(LayoutError::Misaligned);
        }
        // SAFETY: the buffer is long enough and aligned for a Header, every bit pattern is a valid
        // Header (integers, atomics and byte arrays only), and the borrow of `bytes` bounds it.
        let header = unsafe { &*(bytes.as_ptr() as *const Header) };
        if header.magic != MAGIC {
            return Err(LayoutError::BadMagic);
        }
        if header.layout_version != LAYOUT_VERSION {
            return Err(LayoutError::Version {
                found: header.layout_version,
            });
        }
        if header.header_size as usize != header_size
            || header.slot_size as usize != size_of::<Slot>()
            || header.slot_count == 0
            || header.refusal_capacity > MAX_REFUSAL_RECORDS
        {
            return Err(LayoutError::Geometry);
        }
        let needed = segment_len(header.slot_count, header.refusal_capacity);
        if bytes.len() < needed {
            return Err(LayoutError::Truncated {
                found: bytes.len(),
                needed,
            });
        }
        // SAFETY: `needed` bytes are present, slots start right after the header at a multiple of
        // 128 (Header's size is a multiple of its 128-byte alignment), and any bit pattern is a
        // valid Slot.
        let slots = unsafe {
            core::slice::from_raw_parts(
                bytes.as_ptr().add(header_size) as *const Slot,
                header.slot_count as usize,
            )
        };
        // SAFETY: the records follow the slots within the `needed` bytes present, at a multiple
        // of 128 (slots are 128 bytes each), and any bit pattern is a valid RefusalRecord.
        let records = unsafe {
            core::slice::from_raw_parts(
                bytes.as_ptr().add(segment_size(header.slot_count)) as *const RefusalRecord,
                header.refusal_capacity as usize,
            )
        };
        Ok(SegmentView {
            header,
            slots,
            records,
        })
    }

    /// Slots currently owned by a process (pid > 0).
    pub fn live_slots(&self) -> impl Iterator<Item = &'a Slot> + 'a {
        self.slots
            .iter()
            .filter(|slot| slot.pid.load(Ordering::Acquire) > 0)
    }
}

/// Initialises a freshly zeroed segment buffer of [`segment_len`]`(slot_count, refusal_records)`
/// bytes.
///
/// # Safety
/// `base` must point to at least `segment_len(slot_count, refusal_records)` writable, zeroed
/// bytes aligned to 128, not yet visible to any other process.
pub unsafe fn initialise(base: *mut u8, slot_count: u32, refusal_records: u32, creator_pid: u32) {
    let header = base as *mut Header;
    // SAFETY: the caller guarantees the buffer is ours alone, large and aligned enough; the other
    // fields are valid as zero.
    unsafe {
        (*header).magic = MAGIC;
        (*header).layout_version = LAYOUT_VERSION;
        (*header).header_size = size_of::<Header>() as u32;
        (*header).slot_size = size_of::<Slot>() as u32;
        (*header).slot_count = slot_count;
        (*header).refusal_capacity = refusal_records.min(MAX_REFUSAL_RECORDS);
        (*header).creator_pid = creator_pid;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A zeroed, 128-aligned buffer large enough for a small segment with two refusal records.
    pub(crate) fn segment_buffer(slot_count: u32) -> Vec<Line<[u8; 128]>> {
        segment_buffer_with(slot_count, 2)
    }

    /// A zeroed, 128-aligned buffer for a segment of `slot_count` slots and `records` records.
    pub(crate) fn segment_buffer_with(slot_count: u32, records: u32) -> Vec<Line<[u8; 128]>> {
        let lines = segment_len(slot_count, records) / 128;
        (0..lines).map(|_| Line([0u8; 128])).collect()
    }

    pub(crate) fn as_bytes(buffer: &mut [Line<[u8; 128]>]) -> &mut [u8] {
        // SAFETY: Line<[u8;128]> is 128 plain bytes with no padding.
        unsafe {
            core::slice::from_raw_parts_mut(buffer.as_mut_ptr() as *mut u8, buffer.len() * 128)
        }
    }

    #[test]
    fn processes_the_guard_never_classified_are_named_by_their_title() {
        let unclassified = ProcessKind::Unclassified;
        assert_eq!(
            unclassified.described_by_title("postgres: checkpointer "),
            "checkpointer"
        );
        assert_eq!(
            unclassified.described_by_title("postgres: main: background writer "),
            "background writer"
        );
        assert_eq!(
            ProcessKind::PostgresAuxiliary.described_by_title("postgres: autovacuum launcher"),
            "autovacuum launcher"
        );
        // What the guard knows wins; a title that names nothing known changes nothing.
        assert_eq!(
            ProcessKind::ClientBackend.described_by_title("postgres: checkpointer"),
            "client backend"
        );
        assert_eq!(
            ProcessKind::PostgresAuxiliary.described_by_title("postgres: pg_cron launcher"),
            "postgres auxiliary"
        );
        assert_eq!(
            unclassified.described_by_title("/usr/bin/psql"),
            "unclassified"
        );
        assert_eq!(unclassified.described_by_title(""), "unclassified");
    }

    #[test]
    fn geometry_is_what_readers_expect() {
        assert_eq!(size_of::<Slot>(), 128);
        assert_eq!(size_of::<Header>() % 128, 0);
        assert!(size_of::<Header>() <= 2048, "{}", size_of::<Header>());
        // The server settings live in what was padding: readers and writers of this layout
        // version that predate them still agree on every other offset.
        assert_eq!(core::mem::offset_of!(Header, total), 512);
        assert!(
            core::mem::offset_of!(Header, server_settings) + size_of::<ServerSettings>() <= 512
        );
    }

    #[test]
    fn server_settings_are_known_only_when_both_are_positive() {
        let settings = ServerSettings::default();
        assert_eq!(settings.read(), None);
        settings.record(4096, 0);
        assert_eq!(settings.read(), None, "max_connections not known yet");
        settings.record(4096, 100);
        assert_eq!(settings.read(), Some((4 << 20, 100)));
        settings.record(-1, 250);
        assert_eq!(
            settings.read(),
            Some((4 << 20, 250)),
            "a negative work_mem is not PostgreSQL's: the last good value stays"
        );
        settings.record(i32::MAX, 1);
        assert_eq!(
            settings.read(),
            Some((u64::from(i32::MAX as u32) * 1024, 1))
        );
    }

    #[test]
    fn initialised_segment_validates() {
        let mut buffer = segment_buffer(8);
        let bytes = as_bytes(&mut buffer);
        // SAFETY: the buffer is zeroed, aligned and large enough.
        unsafe { initialise(bytes.as_mut_ptr(), 8, 2, 42) };
        let view = SegmentView::new(bytes).expect("valid");
        assert_eq!(view.slots.len(), 8);
        assert_eq!(view.records.len(), 2);
        assert_eq!(view.header.creator_pid, 42);
        assert_eq!(view.live_slots().count(), 0);
    }

    #[test]
    fn foreign_or_damaged_segments_are_rejected() {
        let mut buffer = segment_buffer(8);
        let bytes = as_bytes(&mut buffer);
        assert_eq!(
            SegmentView::new(&bytes[..100]).err(),
            Some(LayoutError::Truncated {
                found: 100,
                needed: size_of::<Header>()
            })
        );
        assert_eq!(SegmentView::new(bytes).err(), Some(LayoutError::BadMagic));
        // SAFETY: as above.
        unsafe { initialise(bytes.as_mut_ptr(), 8, 2, 1) };
        bytes[8] = 99; // layout_version
        assert_eq!(
            SegmentView::new(bytes).err(),
            Some(LayoutError::Version { found: 99 })
        );
        bytes[8] = LAYOUT_VERSION as u8;
        bytes[20] = 200; // slot_count 200 > what the buffer holds
        assert!(matches!(
            SegmentView::new(bytes).err(),
            Some(LayoutError::Truncated { .. })
        ));
        bytes[20] = 8;
        bytes[16] = 64; // slot_size
        assert_eq!(SegmentView::new(bytes).err(), Some(LayoutError::Geometry));
        bytes[16] = 128;
        assert!(SegmentView::new(&bytes[1..]).is_err());
        let capacity = core::mem::offset_of!(Header, refusal_capacity);
        bytes[capacity] = 3; // three records, two present
        assert!(matches!(
            SegmentView::new(bytes).err(),
            Some(LayoutError::Truncated { .. })
        ));
        bytes[capacity..capacity + 4].copy_from_slice(&(MAX_REFUSAL_RECORDS + 1).to_le_bytes());
        assert_eq!(SegmentView::new(bytes).err(), Some(LayoutError::Geometry));
    }

    #[test]
    fn only_sizes_of_whole_rings_are_segment_sizes() {
        let base = segment_size(SLOT_COUNT) as u64;
        assert_eq!(refusal_records_of_len(SLOT_COUNT, base), Some(0));
        assert_eq!(
            refusal_records_of_len(SLOT_COUNT, base + 512 * 256),
            Some(256)
        );
        assert_eq!(refusal_records_of_len(SLOT_COUNT, base + 100), None);
        assert_eq!(refusal_records_of_len(SLOT_COUNT, base - 128), None);
        let largest = base + 512 * u64::from(MAX_REFUSAL_RECORDS);
        assert_eq!(
            refusal_records_of_len(SLOT_COUNT, largest),
            Some(MAX_REFUSAL_RECORDS)
        );
        assert_eq!(refusal_records_of_len(SLOT_COUNT, largest + 512), None);
    }
}
