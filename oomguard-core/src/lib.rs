//! The part of oomguard that every other crate shares: the shared accounting segment's layout, the
//! container-wide reservation pool, and the parsers for the guard's configuration.
//!
//! This crate is `no_std` and allocation-free so that the preload library (which may not allocate
//! through itself) can use it, and it exports no C symbols so that the CLI and benchmarks can link
//! it without being interposed themselves.
//!
//! - [`layout`]: the versioned `repr(C)` segment (header + one slot per guarded process) and its
//!   validation.
//! - [`pool`]: reserving and releasing bytes against the limit, peaks, denial counters, slot
//!   claiming and reaping of dead processes.
//! - [`decide`]: the slow path's decision (reserve, reserve regardless, refuse with a cause) as a
//!   pure function of what the guard knows, its effects passed in.
//! - [`budget`]: per-process budgets (`oomguard.backend_memory_limit`, `OOM_GUARD_BACKEND_LIMIT`)
//!   and refusal causes.
//! - [`config`]: `OOM_GUARD_*` value parsing (sizes, modes, refusal scope) with errors that name
//!   the accepted forms.
//! - [`limit`]: the derived limit (cgroup limit − shared memory − reserve) and its inputs.
//! - [`units`]: byte counts as operators read them.
//! - [`refusals`]: the ring of refusal records (which statement, whose, why, who held the
//!   memory), written without allocating or locking and read back consistently.
//! - [`procstat`]: telling a slot's live owner from a zombie or a reused pid.
//! - [`cgroup`]: our memory cgroup (v1 or v2), its effective limit and the kernel's usage numbers.
//! - [`fs`]: the file access those readers go through, so they run on `/` or on fixture trees.
//!
//! Feature `std` (for the CLI) adds `fs::RootedFs`, file access with `std::fs`.
#![cfg_attr(not(any(test, feature = "std")), no_std)]

pub mod budget;
pub mod cgroup;
pub mod config;
pub mod config_file;
pub mod decide;
pub mod fs;
pub mod layout;
pub mod limit;
pub mod pool;
pub mod procstat;
pub mod refusals;
pub mod units;

pub use config::{Mode, RefuseScope};
pub use layout::{Header, ProcessKind, Slot};
