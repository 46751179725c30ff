//! Throwaway PostgreSQL clusters and real memory cgroups: the harness `oomguard demo`, the
//! benchmarks and the end-to-end tests share.
//!
//! It owns everything between "there are PostgreSQL binaries somewhere" and "here is a connected
//! client to a server that runs with our environment", optionally under the guard and inside a
//! memory cgroup of its own. Nothing here decides anything about the guard: it reaches the server
//! only through the environment given to [`Cluster::start`] (which [`GuardedCluster`] fills in),
//! and its segment is read with `oomguard-segment`. The crate does not depend on the CLI, so
//! whoever needs a cluster gets none of the CLI's dependencies.
//!
//! - [`binaries`]: finding `initdb`, `postgres` and `pg_ctl` ([`PgBinaries`]) and running them.
//! - [`root`]: running them inside another Debian release's root ([`PgRoot`],
//!   `OOM_GUARD_PG_ROOT`).
//! - [`user`]: the OS user the server runs as ([`ServerUser`]; never root).
//! - [`settings`]: the server settings every cluster starts with ([`default_settings`]).
//! - [`cluster`]: a cluster's directory and `initdb` ([`Cluster`]), and starting and stopping
//!   its postmaster (`cluster/server.rs`).
//! - [`session`]: connecting to the server, and asking a session about the server's processes.
//! - [`library`]: staging the preload library for the server user, and checking that a process
//!   maps it.
//! - [`guarded`]: a cluster under the guard ([`GuardedCluster`]), and the log lines of a crash.
//! - [`memcg`]: real child memory cgroups ([`MemoryCgroup`]) where the kernel's OOM killer
//!   strikes.
//!
//! The items callers use are re-exported here.

pub mod binaries;
pub mod cluster;
pub mod guarded;
pub mod library;
pub mod memcg;
pub mod root;
pub mod session;
pub mod settings;
pub mod user;

pub use binaries::{BinSource, DiscoverError, DiscoveryInputs, PgBinaries};
pub use binaries::{BINDIR_ENV, ROOT_ENV, VERSIONED_ROOT};
pub use cluster::{describe_status, Cluster, ClusterOptions, StopOutcome, SUPERUSER};
pub use cluster::{DEFAULT_START_TIMEOUT, DEFAULT_STOP_TIMEOUT};
pub use guarded::{GuardedCluster, CRASH_LOG_LINES};
pub use library::{pid_maps_library, stage_library};
pub use memcg::MemoryCgroup;
pub use root::PgRoot;
pub use session::{backend_pid, backend_pids_by_type, checkpointer_pid};
pub use settings::{default_settings, JIT_ENV};
pub use user::{ServerUser, DEFAULT_UNPRIVILEGED_USER, USER_ENV};
