//! The memory cgroup of the calling process, for cgroup v1 and v2: where it is ([`own_cgroup`]),
//! the limit that really applies to it ([`Cgroup::effective_limit`]) and the kernel's own view of
//! its memory ([`Cgroup::snapshot`]).
//!
//! Everything here is `no_std` and allocation-free: the preload library calls it inside malloc,
//! the CLI through `fs::RootedFs`. All file access goes through a
//! [`FileSystem`], so the same code reads the machine's `/` or a fixture tree. Failures are
//! [`CgroupError`]s naming the file; nothing is ever read as a silent zero.
//!
//! - [`paths`]: `/proc/self/cgroup` + `/proc/self/mountinfo` → our cgroup's directory.
//! - [`v2`] and [`v1`]: one typed reader per interface file.
//! - `parse`: line scanning and number formats shared by all readers.

mod parse;
pub mod paths;
pub mod v1;
pub mod v2;

use crate::fs::{under, FileSystem, FixedPath};
use core::fmt;

pub use paths::own_cgroup;

/// The capacity of the cgroup paths built here. A Kubernetes container scope below
/// `/sys/fs/cgroup` is about 220 bytes; anything longer than this is reported, not cut.
pub const PATH_CAPACITY: usize = 1024;

/// A path within the file system's root, e.g. a cgroup directory.
pub type CgroupPath = FixedPath<PATH_CAPACITY>;

/// Which cgroup interface manages our memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The legacy per-controller hierarchy (`memory.limit_in_bytes`).
    V1,
    /// The unified hierarchy (`memory.max`).
    V2,
}

impl Version {
    /// `"v1"` or `"v2"`.
    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// A file that a reader needed, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileId {
    /// `/proc/self/cgroup`.
    ProcSelfCgroup,
    /// `/proc/self/mountinfo`.
    ProcSelfMountinfo,
    /// `/proc/meminfo`.
    ProcMeminfo,
    /// The interface file `name` in our cgroup (`up == 0`) or in the cgroup `up` levels above
    /// it; [`Cgroup::file_path`] gives its full path.
    Cgroup {
        /// The interface file, e.g. `memory.max`.
        name: &'static str,
        /// How many levels above our own cgroup.
        up: u16,
    },
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileId::ProcSelfCgroup => f.write_str("/proc/self/cgroup"),
            FileId::ProcSelfMountinfo => f.write_str("/proc/self/mountinfo"),
            FileId::ProcMeminfo => f.write_str("/proc/meminfo"),
            FileId::Cgroup { name, up: 0 } => write!(f, "{name} of our cgroup"),
            FileId::Cgroup { name, up: 1 } => write!(f, "{name} of our parent cgroup"),
            FileId::Cgroup { name, up } => write!(f, "{name} of the cgroup {up} levels above ours"),
        }
    }
}

/// Why the cgroup could not be found or read. Every variant that concerns a file names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupError {
    /// The file does not exist.
    Missing(FileId),
    /// The file exists but could not be read.
    Unreadable {
        /// The file.
        file: FileId,
        /// The OS error number (0 if unknown).
        errno: i32,
    },
    /// The file's line `line` (1-based) is not in the format the kernel writes.
    Garbage {
        /// The file.
        file: FileId,
        /// The offending line.
        line: u32,
    },
    /// The file lacks an entry the kernel always writes.
    Incomplete {
        /// The file.
        file: FileId,
        /// The missing entry.
        key: &'static str,
    },
    /// `/proc/self/cgroup` names neither a v1 memory hierarchy nor the v2 one.
    NoMemoryCgroup,
    /// `/proc/self/mountinfo` has no mount of the hierarchy our memory cgroup is in.
    NotMounted(Version),
    /// The hierarchy is mounted, but only below our cgroup: our directory is not visible.
    NotVisible(Version),
    /// A path does not fit [`PATH_CAPACITY`].
    PathTooLong,
}

impl fmt::Display for CgroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CgroupError::Missing(file) => write!(f, "{file} does not exist"),
            CgroupError::Unreadable { file, errno } => {
                write!(f, "{file} cannot be read (errno {errno})")
            }
            CgroupError::Garbage { file, line } => {
                write!(f, "{file} is not in the kernel's format (line {line})")
            }
            CgroupError::Incomplete { file, key } => write!(f, "{file} has no {key} entry"),
            CgroupError::NoMemoryCgroup => f.write_str(
                "/proc/self/cgroup names neither a cgroup v1 memory hierarchy nor cgroup v2",
            ),
            CgroupError::NotMounted(version) => write!(
                f,
                "/proc/self/mountinfo has no cgroup {} mount holding the memory controller",
                version.name()
            ),
            CgroupError::NotVisible(version) => write!(
                f,
                "our cgroup is outside every cgroup {} mount in /proc/self/mountinfo",
                version.name()
            ),
            CgroupError::PathTooLong => {
                write!(f, "a cgroup path is longer than {PATH_CAPACITY} bytes")
            }
        }
    }
}

/// One cgroup directory of the visible tree, as readers take it.
#[derive(Debug, Clone, Copy)]
pub struct Level<'a> {
    /// The directory, within the file system's root.
    pub dir: &'a [u8],
    /// How many levels above our own cgroup it is (for error messages).
    pub up: u16,
}

impl Level<'_> {
    /// The path of the interface file `name` here, and its id for errors.
    fn file(&self, name: &'static str) -> Result<(CgroupPath, FileId), CgroupError> {
        let path = CgroupPath::new(self.dir)
            .ok()
            .and_then(|dir| dir.join(name.as_bytes()))
            .ok_or(CgroupError::PathTooLong)?;
        Ok((path, FileId::Cgroup { name, up: self.up }))
    }
}

/// Our memory cgroup: its directory and the mount it is visible through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    version: Version,
    dir: CgroupPath,
    mount_len: usize,
    memory_controller: bool,
}

impl Cgroup {
    /// The cgroup in directory `mount_point/below_mount` of a `version` hierarchy mounted at
    /// `mount_point` (both within `fs`'s root), checked to exist. For v2, whether the memory
    /// controller is enabled there is read from its `cgroup.controllers`.
    pub fn at<F: FileSystem>(
        fs: &F,
        version: Version,
        mount_point: &[u8],
        below_mount: &[u8],
    ) -> Result<Cgroup, CgroupError> {
        let mount = CgroupPath::new(mount_point).map_err(|_| CgroupError::PathTooLong)?;
        let dir = mount.join(below_mount).ok_or(CgroupError::PathTooLong)?;
        let mut cgroup = Cgroup {
            version,
            mount_len: mount.as_bytes().len(),
            dir,
            memory_controller: true,
        };
        cgroup.memory_controller = match version {
            // Every v2 cgroup has cgroup.controllers: its absence means a wrong directory.
            // The memory.* files exist only where it lists `memory`.
            Version::V2 => v2::read_controllers_has_memory(fs, cgroup.level_zero())?,
            // Every v1 memory cgroup (the root too) has memory.limit_in_bytes.
            Version::V1 => {
                v1::read_limit_in_bytes(fs, cgroup.level_zero())?;
                true
            }
        };
        Ok(cgroup)
    }

    fn level_zero(&self) -> Level<'_> {
        Level {
            dir: self.dir.as_bytes(),
            up: 0,
        }
    }

    /// The cgroup interface in use.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Our cgroup's directory, within the file system's root.
    pub fn dir(&self) -> &CgroupPath {
        &self.dir
    }

    /// Where the hierarchy is mounted: the top of the tree we can see.
    pub fn mount_point(&self) -> &[u8] {
        self.dir.as_bytes().get(..self.mount_len).unwrap_or(b"/")
    }

    /// Whether the memory controller's files exist in our cgroup (always for v1; for v2 only
    /// when the parent enables `memory` in its `cgroup.subtree_control`).
    pub fn memory_controller(&self) -> bool {
        self.memory_controller
    }

    /// How many cgroups above ours are visible (0 when our cgroup is the mount's root).
    pub fn depth(&self) -> u16 {
        match under(self.dir.as_bytes(), self.mount_point()) {
            Some(rest) if !rest.is_empty() => {
                let slashes = rest.iter().filter(|&&b| b == b'/').count();
                u16::try_from(slashes.saturating_add(1)).unwrap_or(u16::MAX)
            }
            _ => 0,
        }
    }

    /// The directory of the cgroup `up` levels above ours, if visible.
    pub fn ancestor(&self, up: u16) -> Option<CgroupPath> {
        if up > self.depth() {
            return None;
        }
        let mut dir = self.dir.clone();
        for _ in 0..up {
            dir.pop();
        }
        Some(dir)
    }

    /// The full path (within the root) of a file named by an error, for messages that show it.
    pub fn file_path(&self, file: FileId) -> Option<CgroupPath> {
        match file {
            FileId::ProcSelfCgroup => CgroupPath::new(b"/proc/self/cgroup").ok(),
            FileId::ProcSelfMountinfo => CgroupPath::new(b"/proc/self/mountinfo").ok(),
            FileId::ProcMeminfo => CgroupPath::new(b"/proc/meminfo").ok(),
            FileId::Cgroup { name, up } => self.ancestor(up)?.join(name.as_bytes()),
        }
    }

    /// The smallest memory limit from our cgroup up to the top of the visible tree, capped by
    /// `MemTotal`, and where it came from.
    ///
    /// A limit set on an ancestor applies to us too (its usage includes ours), hence the
    /// minimum. v1 also offers `hierarchical_memory_limit`, the kernel's own minimum over the
    /// whole tree, including ancestors that a container cannot see. Missing v2 `memory.max`
    /// files mean "no limit here" (the root cgroup, or a level without the memory controller);
    /// in v1 every memory cgroup has `memory.limit_in_bytes`, so a missing one is an error.
    pub fn effective_limit<F: FileSystem>(&self, fs: &F) -> Result<EffectiveLimit, CgroupError> {
        let mut smallest: Option<(u64, LimitSource)> = None;
        let mut consider = |limit: Option<u64>, source: LimitSource| {
            if let Some(bytes) = limit {
                if smallest.is_none_or(|(best, _)| bytes < best) {
                    smallest = Some((bytes, source));
                }
            }
        };
        for up in 0..=self.depth() {
            let dir = self.ancestor(up).ok_or(CgroupError::PathTooLong)?;
            let level = Level {
                dir: dir.as_bytes(),
                up,
            };
            let limit = match self.version {
                Version::V2 => match v2::read_max(fs, level) {
                    Err(CgroupError::Missing(_)) => None,
                    other => other?,
                },
                Version::V1 => v1::read_limit_in_bytes(fs, level)?,
            };
            consider(limit, LimitSource::Cgroup { up });
        }
        if self.version == Version::V1 {
            let stat = v1::read_stat(fs, self.level_zero())?;
            consider(stat.hierarchical_memory_limit, LimitSource::Hierarchical);
        }
        let mem_total = parse::read_mem_total(fs)?;
        let cgroup_limit = smallest.map(|(bytes, _)| bytes);
        let (bytes, source) = match smallest {
            Some((bytes, source)) if bytes <= mem_total => (bytes, source),
            _ => (mem_total, LimitSource::MemTotal),
        };
        Ok(EffectiveLimit {
            bytes,
            source,
            cgroup_limit,
            mem_total,
        })
    }

    /// Bytes charged to our cgroup (v2 `memory.current`, v1 `memory.usage_in_bytes`), our
    /// descendants included. This is the number the OOM killer compares with the limit.
    pub fn usage<F: FileSystem>(&self, fs: &F) -> Result<u64, CgroupError> {
        match self.version {
            Version::V2 => v2::read_current(fs, self.level_zero()),
            Version::V1 => v1::read_usage_in_bytes(fs, self.level_zero()),
        }
    }

    /// Anonymous, file and shared memory charged to our cgroup and its descendants.
    pub fn stat<F: FileSystem>(&self, fs: &F) -> Result<MemoryStat, CgroupError> {
        match self.version {
            Version::V2 => v2::read_stat(fs, self.level_zero()).map(|s| s.summary()),
            Version::V1 => v1::read_stat(fs, self.level_zero()).map(|s| s.summary()),
        }
    }

    /// Limit, usage, breakdown, events and pressure in one call (for `oomguard status` and the
    /// exporter; the guard's periodic check needs only [`Cgroup::usage`] and [`Cgroup::stat`]).
    pub fn snapshot<F: FileSystem>(&self, fs: &F) -> Result<CgroupMemory, CgroupError> {
        let level = self.level_zero();
        let (events, pressure) = match self.version {
            Version::V2 => {
                let events = v2::read_events(fs, level)?;
                let pressure = match v2::read_pressure(fs, level) {
                    Ok(pressure) => Some(pressure),
                    // PSI is off (`psi=0`, or `cgroup.pressure` set to 0): not an error.
                    Err(CgroupError::Missing(_)) => None,
                    Err(CgroupError::Unreadable { errno, .. }) if errno == EOPNOTSUPP => None,
                    Err(error) => return Err(error),
                };
                let events = MemoryEvents {
                    max: events.max,
                    oom: Some(events.oom),
                    oom_kill: Some(events.oom_kill),
                    under_oom: None,
                };
                (events, pressure)
            }
            Version::V1 => {
                let oom = v1::read_oom_control(fs, level)?;
                let events = MemoryEvents {
                    max: v1::read_failcnt(fs, level)?,
                    oom: None,
                    oom_kill: oom.oom_kill,
                    under_oom: Some(oom.under_oom),
                };
                (events, None)
            }
        };
        Ok(CgroupMemory {
            version: self.version,
            limit: self.effective_limit(fs)?,
            usage: self.usage(fs)?,
            stat: self.stat(fs)?,
            events,
            pressure,
        })
    }
}

/// `EOPNOTSUPP` on Linux: what reading a `*.pressure` file gives when PSI is disabled for it.
const EOPNOTSUPP: i32 = 95;

/// Which limit won in [`Cgroup::effective_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// `memory.max` (v2) or `memory.limit_in_bytes` (v1) of the cgroup `up` levels above ours
    /// (0: our own); [`Cgroup::ancestor`] gives its directory.
    Cgroup {
        /// How many levels above our own cgroup.
        up: u16,
    },
    /// v1 `hierarchical_memory_limit` in our `memory.stat`: an ancestor we cannot see.
    Hierarchical,
    /// No cgroup limit at or below the machine's memory: `MemTotal` of `/proc/meminfo`.
    MemTotal,
}

/// The limit that applies to our cgroup, with the inputs that explain it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveLimit {
    /// The limit in bytes: the smaller of `cgroup_limit` and `mem_total`.
    pub bytes: u64,
    /// Where `bytes` came from.
    pub source: LimitSource,
    /// The smallest cgroup limit found, `None` if every level is unlimited.
    pub cgroup_limit: Option<u64>,
    /// `MemTotal` in bytes.
    pub mem_total: u64,
}

/// The kernel's breakdown of the memory charged to a cgroup, in bytes, with the same meaning in
/// v1 and v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStat {
    /// Anonymous memory (heap, stacks), shared memory excluded (v2 `anon`, v1 `total_rss`).
    pub anon: u64,
    /// Page cache, shared memory included (v2 `file`, v1 `total_cache`).
    pub file: u64,
    /// Shared memory: tmpfs, `/dev/shm`, PostgreSQL's shared buffers (v2 `shmem`, v1
    /// `total_shmem`; `None` on old v1 kernels that do not report it).
    pub shmem: Option<u64>,
}

/// Counters of the cgroup hitting its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEvents {
    /// Times usage hit the limit (v2 `max` of `memory.events`, v1 `memory.failcnt`).
    pub max: u64,
    /// Times the OOM killer was invoked for the cgroup (v2 only).
    pub oom: Option<u64>,
    /// Processes the OOM killer killed (v2; v1 kernels ≥ 4.13).
    pub oom_kill: Option<u64>,
    /// v1 only: whether the cgroup is under OOM right now.
    pub under_oom: Option<bool>,
}

/// Time spent waiting for memory (pressure stall information), in microseconds since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    /// Some task of the cgroup was stalled on memory.
    pub some_us: u64,
    /// All non-idle tasks were stalled at once (`None` if the kernel does not report it).
    pub full_us: Option<u64>,
}

/// Everything the kernel says about our cgroup's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupMemory {
    /// The hierarchy the numbers come from.
    pub version: Version,
    /// The effective limit and its explanation.
    pub limit: EffectiveLimit,
    /// Bytes charged ([`Cgroup::usage`]).
    pub usage: u64,
    /// Their breakdown.
    pub stat: MemoryStat,
    /// Limit and OOM counters.
    pub events: MemoryEvents,
    /// Memory pressure (v2 with PSI only).
    pub pressure: Option<Pressure>,
}

#[cfg(test)]
mod tests;
