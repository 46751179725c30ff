//! Readers of the cgroup v2 memory interface files, one per file, each taking the cgroup
//! directory as a [`Level`] so that errors name the file and the level.

use super::parse::{
    fields, parse_u64, read_key_numbers, read_keyed, read_number, read_single_line,
};
use super::{CgroupError, Level, MemoryStat, Pressure};
use crate::fs::FileSystem;

/// `cgroup.controllers`: whether it lists `memory`, i.e. whether the `memory.*` files exist.
pub fn read_controllers_has_memory<F: FileSystem>(
    fs: &F,
    at: Level<'_>,
) -> Result<bool, CgroupError> {
    let (path, file) = at.file("cgroup.controllers")?;
    let mut has_memory = false;
    // An empty file is valid here: no controller enabled.
    match read_single_line(fs, path.as_bytes(), file, |_, line| {
        has_memory = fields(line).any(|c| c == b"memory");
    }) {
        Ok(()) | Err(CgroupError::Garbage { line: 1, .. }) => Ok(has_memory),
        Err(error) => Err(error),
    }
}

/// `memory.max`: the hard limit in bytes, `None` for `max` (no limit at this level).
pub fn read_max<F: FileSystem>(fs: &F, at: Level<'_>) -> Result<Option<u64>, CgroupError> {
    let (path, file) = at.file("memory.max")?;
    let mut value = None;
    read_single_line(fs, path.as_bytes(), file, |_, line| {
        value = match line.trim_ascii() {
            b"max" => Some(None),
            number => parse_u64(number).map(Some),
        };
    })?;
    value.ok_or(CgroupError::Garbage { file, line: 1 })
}

/// `memory.current`: bytes charged to the cgroup and its descendants.
pub fn read_current<F: FileSystem>(fs: &F, at: Level<'_>) -> Result<u64, CgroupError> {
    let (path, file) = at.file("memory.current")?;
    read_number(fs, path.as_bytes(), file)
}

/// The entries of `memory.stat` that oomguard uses, in bytes (events in counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Anonymous memory, shared memory excluded.
    pub anon: u64,
    /// Page cache, shared memory included.
    pub file: u64,
    /// Shared memory (tmpfs, System V and POSIX shared memory).
    pub shmem: u64,
    /// Page tables (`None` before Linux 5.19): a cost per backend that grows with shared memory.
    pub pagetables: Option<u64>,
    /// All kernel memory (`None` before Linux 5.18).
    pub kernel: Option<u64>,
    /// Socket buffers.
    pub sock: Option<u64>,
    /// Mapped page cache.
    pub file_mapped: Option<u64>,
    /// Dirty page cache.
    pub file_dirty: Option<u64>,
    /// Major page faults (a count).
    pub pgmajfault: Option<u64>,
}

impl Stat {
    /// The version-independent part.
    pub fn summary(&self) -> MemoryStat {
        MemoryStat {
            anon: self.anon,
            file: self.file,
            shmem: Some(self.shmem),
        }
    }
}

/// `memory.stat`; `anon`, `file` and `shmem` are required, the others optional.
pub fn read_stat<F: FileSystem>(fs: &F, at: Level<'_>) -> Result<Stat, CgroupError> {
    let (path, file) = at.file("memory.stat")?;
    let (mut anon, mut file_bytes, mut shmem) = (None, None, None);
    let mut stat = Stat {
        anon: 0,
        file: 0,
        shmem: 0,
        pagetables: None,
        kernel: None,
        sock: None,
        file_mapped: None,
        file_dirty: None,
        pgmajfault: None,
    };
    read_key_numbers(fs, path.as_bytes(), file, |key, value| {
        let slot = match key {
            b"anon" => &mut anon,
            b"file" => &mut file_bytes,
            b"shmem" => &mut shmem,
            b"pagetables" => &mut stat.pagetables,
            b"kernel" => &mut stat.kernel,
            b"sock" => &mut stat.sock,
            b"file_mapped" => &mut stat.file_mapped,
            b"file_dirty" => &mut stat.file_dirty,
            b"pgmajfault" => &mut stat.pgmajfault,
            _ => return,
        };
        *slot = Some(value);
    })?;
    let missing = |key| CgroupError::Incomplete { file, key };
    stat.anon = anon.ok_or(missing("anon"))?;
    stat.file = file_bytes.ok_or(missing("file"))?;
    stat.shmem = shmem.ok_or(missing("shmem"))?;
    Ok(stat)
}

/// `memory.events`: counts of events in the cgroup and its descendants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Events {
    /// Reclaim under `memory.low` protection.
    pub low: u64,
    /// Throttling over `memory.high`.
    pub high: u64,
    /// Usage reached `memory.max`.
    pub max: u64,
    /// The OOM killer was invoked.
    pub oom: u64,
    /// Processes killed by the OOM killer.
    pub oom_kill: u64,
    /// Whole-cgroup kills under `memory.oom.group` (`None` before Linux 5.17).
    pub oom_group_kill: Option<u64>,
}

/// `memory.events`; all but `oom_group_kill` are required.
pub fn read_events<F: FileSystem>(fs: &F, at: Level<'_>) -> Result<Events, CgroupError> {
    let (path, file) = at.file("memory.events")?;
    const KEYS: [&str; 6] = ["low", "high", "max", "oom", "oom_kill", "oom_group_kill"];
    let values = read_keyed(fs, path.as_bytes(), file, &KEYS)?;
    let required = |i| values.required(i);
    Ok(Events {
        low: required(0)?,
        high: required(1)?,
        max: required(2)?,
        oom: required(3)?,
        oom_kill: required(4)?,
        oom_group_kill: values.get(5),
    })
}

/// `memory.pressure`: the `total=` microseconds of its `some` and `full` lines.
pub fn read_pressure<F: FileSystem>(fs: &F, at: Level<'_>) -> Result<Pressure, CgroupError> {
    let (path, file) = at.file("memory.pressure")?;
    let (mut some, mut full) = (None, None);
    let mut bad_line = 0;
    let mut buf = [0u8; super::parse::VALUE_BUF];
    super::parse::for_each_line(fs, path.as_bytes(), file, &mut buf, |number, line| {
        let mut parts = fields(line);
        let slot = match parts.next() {
            Some(b"some") => &mut some,
            Some(b"full") => &mut full,
            None => return core::ops::ControlFlow::Continue(()),
            Some(_) => {
                bad_line = number;
                return core::ops::ControlFlow::Break(());
            }
        };
        // `avg10=… avg60=… avg300=… total=…`: only the cumulative total is exact.
        let total = parts
            .find_map(|field| field.strip_prefix(b"total="))
            .and_then(parse_u64);
        match total {
            Some(total) => {
                *slot = Some(total);
                core::ops::ControlFlow::Continue(())
            }
            None => {
                bad_line = number;
                core::ops::ControlFlow::Break(())
            }
        }
    })?;
    if bad_line != 0 {
        return Err(CgroupError::Garbage {
            file,
            line: bad_line,
        });
    }
    Ok(Pressure {
        some_us: some.ok_or(CgroupError::Incomplete { file, key: "some" })?,
        full_us: full,
    })
}
