//! Library side of the `oomguard` command, so integration tests (and the other crates' tests)
//! can reuse its pieces.
//!
//! - [`run`]: `oomguard run -- COMMAND…`: locate `liboomguard.so`, validate `OOM_GUARD_*`, set
//!   `LD_PRELOAD`, exec.
//! - [`demo`]: `oomguard demo`: both sides, without and with the guard, in throwaway clusters
//!   and memory cgroups of `oomguard-cluster`.
//! - [`status`]: `oomguard status`: reading, reaping and rendering domains, live and stale.
//! - [`clean`]: `oomguard clean`: removing stale segments and leftover temporary files.
//! - [`exporter`]: `oomguard exporter`: the guard's numbers as Prometheus metrics over HTTP.
//! - [`limit`]: `oomguard limit`: the limit's derivation, input by input, recorded or predicted.
//! - [`fit`]: whether PostgreSQL's configuration fits the limit: the warnings of `status` and
//!   `limit`.
//! - [`refusals`]: `oomguard refusals`: the refusal records (which statement, whose, why, who
//!   held the memory) as a table, JSON or CSV.
//! - [`install`]: `oomguard install --to DIR`: copying the binary and the library into a
//!   directory (an init container's shared volume), atomically.
//! - [`settings`]: where the guard's settings come from (the environment, else its configuration
//!   file), so the CLI looks where the guard writes.
//! - [`segment`]: the crate `oomguard-segment` (finding, validating and reading the guard's
//!   shared segments, and telling live ones from stale ones), under the name the commands use.
//!
//! The throwaway PostgreSQL clusters and memory cgroups of the demo, the benchmarks and the
//! end-to-end tests are the crate `oomguard-cluster`.

pub mod clean;
pub mod demo;
pub mod exporter;
pub mod fit;
pub mod install;
pub mod limit;
pub mod refusals;
pub mod run;
pub mod settings;
pub mod status;

pub use oomguard_segment as segment;
