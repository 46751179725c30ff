//! Test policy for real memory cgroups; the cgroups themselves are the harness's
//! ([`oomguard_cluster::MemoryCgroup`], re-exported here).
//!
//! Where no memory cgroup can be created (not root, no delegation, no memory controller) the
//! tests must not skip silently: [`create`] panics with a message that says why and names
//! [`SKIP_ENV`]. Only with `OOMGUARD_SKIP_REAL_CGROUP=1` does [`opted_out`] tell a test to pass
//! without running, and it says so loudly on the (uncaptured) stderr.

use std::io::{self, Write};

pub use oomguard_cluster::MemoryCgroup;

/// Set to `1` to opt out of the tests that need a real memory cgroup.
pub const SKIP_ENV: &str = "OOMGUARD_SKIP_REAL_CGROUP";

/// Whether the real-cgroup tests were explicitly opted out of (`OOMGUARD_SKIP_REAL_CGROUP=1`).
/// When they were, says so on stderr, bypassing the test harness's output capture, so the opt-out
/// is visible in every run.
pub fn opted_out(test: &str) -> bool {
    if std::env::var(SKIP_ENV).as_deref() != Ok("1") {
        return false;
    }
    let line = "!".repeat(78);
    let _ = writeln!(
        io::stderr(),
        "{line}\n!! {test}: NOT RUN — opted out of the real memory cgroup tests with {SKIP_ENV}=1.\n\
         !! Nothing was checked against the kernel's OOM killer.\n{line}"
    );
    true
}

/// A child memory cgroup `oomguard-<pid>-<n>-test-<name>` of this process's own with a memory
/// limit of `limit_bytes` and no swap ([`MemoryCgroup::create`]).
///
/// # Panics
/// When it cannot be created, with the reason and the opt-out variable [`SKIP_ENV`].
pub fn create(name: &str, limit_bytes: u64) -> MemoryCgroup {
    MemoryCgroup::create(&format!("test-{name}"), limit_bytes).unwrap_or_else(|reason| {
        panic!(
            "cannot create a real memory cgroup for this test: {reason:#}.\n\
             These tests need to create a child memory cgroup under their own (as root, or \
             with a delegated cgroup), so that PostgreSQL meets the kernel's OOM killer. \
             To opt out explicitly, set {SKIP_ENV}=1."
        )
    })
}
