//! Library side of the `oomguard` command, so integration tests (and the other crates' tests)
//! can reuse its pieces.
//!
//! - [`run`]: `oomguard run -- COMMAND…`: locate `liboomguard.so`, validate `OOM_GUARD_*`, set
//!   `LD_PRELOAD`, exec.
//! - [`demo`]: `oomguard demo` and the guarded cluster it and the end-to-end tests run.
//! - [`status`]: `oomguard status`: reading, reaping and rendering domains, live and stale.
//! - [`clean`]: `oomguard clean`: removing stale segments and leftover temporary files.
//! - [`exporter`]: `oomguard exporter`: the guard's numbers as Prometheus metrics over HTTP.
//! - [`limit`]: `oomguard limit`: the limit's derivation, input by input, recorded or predicted.
//! - [`segment`]: finding, validating and reading the guard's shared segments, and telling live
//!   ones from stale ones.
//! - [`install`]: `oomguard install --to DIR`: copying the binary and the library into a
//!   directory (an init container's shared volume), atomically.
//! - [`pgcluster`]: throwaway PostgreSQL clusters for `oomguard demo` and end-to-end tests.
//! - [`memcg`]: real child memory cgroups, where the demo and the end-to-end tests meet the
//!   kernel's OOM killer.

pub mod clean;
pub mod demo;
pub mod exporter;
pub mod install;
pub mod limit;
pub mod memcg;
pub mod pgcluster;
pub mod run;
pub mod segment;
pub mod settings;
pub mod status;
