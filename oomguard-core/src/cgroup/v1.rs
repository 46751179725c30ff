//! Readers of the cgroup v1 memory controller's files, one per file, each taking the cgroup
//! directory as a [`Level`] so that errors name the file and the level.

use super::parse::{read_key_numbers, read_keyed, read_number};
use super::{CgroupError, Level, MemoryStat};
use crate::fs::FileSystem;

/// v1 has no "max" keyword: an unlimited cgroup shows `PAGE_COUNTER_MAX` pages in bytes
/// (9223372036854771712 with 4 KiB pages, other values with other page sizes and on old
/// kernels). Nothing at or above 2^62 bytes is a real limit.
pub const UNLIMITED_FROM: u64 = 1 << 62;

/// A v1 limit value: `None` when it means unlimited.
pub fn limit_value(bytes: u64) -> Option<u64> {
    (bytes < UNLIMITED_FROM).then_some(bytes)
}

/// `memory.limit_in_bytes`: the limit of this cgroup alone, `None` if unlimited.
pub fn read_limit_in_bytes<F: FileSystem>(
    fs: &F,
    at: Level<'_>,
) -> Result<Option<u64>, CgroupError> {
    let (path, file) = at.file("memory.limit_in_bytes")?;
    read_number(fs, path.as_bytes(), file).map(limit_value)
}

/// `memory.usage_in_bytes`: bytes charged to the cgroup and its descendants.
pub fn read_usage_in_bytes<F: FileSystem>(fs: &F, at: Level<'_>) -> Result<u64, CgroupError> {
    let (path, file) = at.file("memory.usage_in_bytes")?;
    read_number(fs, path.as_bytes(), file)
}

/// `memory.failcnt`: how many times usage hit the limit.
pub fn read_failcnt<F: FileSystem>(fs: &F, at: Level<'_>) -> Result<u64, CgroupError> {
    let (path, file) = at.file("memory.failcnt")?;
    read_number(fs, path.as_bytes(), file)
}

/// The entries of v1 `memory.stat` that oomguard uses, in bytes. Plain entries count this
/// cgroup alone, `total_*` ones include its descendants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Anonymous memory of this cgroup (shared memory is in `cache`, not here).
    pub rss: u64,
    /// Page cache of this cgroup, shared memory included.
    pub cache: u64,
    /// Shared memory of this cgroup (`None` on old kernels).
    pub shmem: Option<u64>,
    /// `rss` with descendants.
    pub total_rss: u64,
    /// `cache` with descendants.
    pub total_cache: u64,
    /// `shmem` with descendants (`None` on old kernels).
    pub total_shmem: Option<u64>,
    /// Mapped page cache of this cgroup.
    pub mapped_file: Option<u64>,
    /// The kernel's minimum of the limits of this cgroup and all its ancestors, visible or
    /// not; `None` if unlimited.
    pub hierarchical_memory_limit: Option<u64>,
}

impl Stat {
    /// The version-independent part, descendants included as in v2.
    pub fn summary(&self) -> MemoryStat {
        MemoryStat {
            anon: self.total_rss,
            file: self.total_cache,
            shmem: self.total_shmem,
        }
    }
}

/// `memory.stat`; `rss`, `cache`, `total_rss`, `total_cache` and `hierarchical_memory_limit`
/// are required (every kernel with cgroup v1 writes them), the others optional.
pub fn read_stat<F: FileSystem>(fs: &F, at: Level<'_>) -> Result<Stat, CgroupError> {
    let (path, file) = at.file("memory.stat")?;
    const KEYS: [&str; 8] = [
        "rss",
        "cache",
        "shmem",
        "total_rss",
        "total_cache",
        "total_shmem",
        "mapped_file",
        "hierarchical_memory_limit",
    ];
    let values = read_keyed(fs, path.as_bytes(), file, &KEYS)?;
    let get = |i| values.get(i);
    let required = |i| values.required(i);
    Ok(Stat {
        rss: required(0)?,
        cache: required(1)?,
        shmem: get(2),
        total_rss: required(3)?,
        total_cache: required(4)?,
        total_shmem: get(5),
        mapped_file: get(6),
        hierarchical_memory_limit: limit_value(required(7)?),
    })
}

/// `memory.oom_control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OomControl {
    /// The OOM killer is disabled for the cgroup (tasks hang instead of being killed).
    pub oom_kill_disable: bool,
    /// The cgroup is out of memory right now.
    pub under_oom: bool,
    /// Processes killed by the OOM killer (`None` before Linux 4.13).
    pub oom_kill: Option<u64>,
}

/// `memory.oom_control`; `oom_kill_disable` and `under_oom` are required.
pub fn read_oom_control<F: FileSystem>(fs: &F, at: Level<'_>) -> Result<OomControl, CgroupError> {
    let (path, file) = at.file("memory.oom_control")?;
    let (mut disable, mut under, mut kill) = (None, None, None);
    read_key_numbers(fs, path.as_bytes(), file, |key, value| match key {
        b"oom_kill_disable" => disable = Some(value != 0),
        b"under_oom" => under = Some(value != 0),
        b"oom_kill" => kill = Some(value),
        _ => {}
    })?;
    Ok(OomControl {
        oom_kill_disable: disable.ok_or(CgroupError::Incomplete {
            file,
            key: "oom_kill_disable",
        })?,
        under_oom: under.ok_or(CgroupError::Incomplete {
            file,
            key: "under_oom",
        })?,
        oom_kill: kill,
    })
}
