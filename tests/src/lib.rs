//! Shared helpers of the oomguard integration tests.
//!
//! This crate owns the plumbing every test file needs to run a C probe (compiled by `build.rs`
//! from `probes/*.c`) plainly or under `LD_PRELOAD` of the guard: where the workspace, the
//! release-built `liboomguard.so` and the probes are, and the guard's environment. It contains
//! no tests itself; they live in `tests/*.rs`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Overrides [`library_path`] when set (absolute path of a `liboomguard.so`).
pub const LIBRARY_ENV: &str = "OOMGUARD_LIBRARY";

/// The workspace root (the parent of this package's directory), as an absolute path.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().unwrap_or(manifest);
    root.canonicalize().unwrap_or_else(|_| root.to_path_buf())
}

/// Absolute path of the guard library: `$OOMGUARD_LIBRARY` if set, else
/// `<workspace>/target/release/liboomguard.so`.
///
/// # Panics
/// When the file does not exist, with a message saying how to build it.
pub fn library_path() -> PathBuf {
    let path = match env::var_os(LIBRARY_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/release/liboomguard.so"),
    };
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --release` first (or `cargo build --release -p oomguard`; \
         or point {LIBRARY_ENV} at a liboomguard.so)",
        path.display()
    );
    path.canonicalize().unwrap_or(path)
}

/// Path of the probe executable built from `probes/<name>.c`.
///
/// # Panics
/// When no such probe was built.
pub fn probe(name: &str) -> PathBuf {
    let path = Path::new(env!("PROBE_DIR")).join(name);
    assert!(
        path.is_file(),
        "probe {name} not found at {} (is there a tests/probes/{name}.c?)",
        path.display()
    );
    path
}

/// Removes any inherited `LD_PRELOAD` and `OOM_GUARD_*` variables, so that `cmd` runs against
/// plain glibc whatever the environment of the test runner is.
pub fn plain(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("LD_PRELOAD");
    for (key, _) in env::vars_os() {
        if key.to_string_lossy().starts_with("OOM_GUARD_") {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Configures `cmd` to run under the guard: `LD_PRELOAD` of [`library_path`],
/// `OOM_GUARD_MODE=enforce`, `OOM_GUARD_LIMIT=1GiB`, `OOM_GUARD_REFUSE=all` and
/// `OOM_GUARD_DIR=dir` (use a fresh directory per test so runs do not share accounting).
/// `extra_env` is applied last and may override any of these.
///
/// # Panics
/// When the library has not been built (see [`library_path`]).
pub fn guarded<'a>(
    cmd: &'a mut Command,
    dir: &Path,
    extra_env: &[(&str, &str)],
) -> &'a mut Command {
    plain(cmd)
        .env("LD_PRELOAD", library_path())
        .env("OOM_GUARD_MODE", "enforce")
        .env("OOM_GUARD_LIMIT", "1GiB")
        .env("OOM_GUARD_REFUSE", "all")
        .env("OOM_GUARD_DIR", dir);
    for (key, value) in extra_env {
        cmd.env(key, value);
    }
    cmd
}

/// Runs `cmd` to completion and returns its stdout.
///
/// # Panics
/// When it cannot be started or exits unsuccessfully; the message includes stdout and stderr.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
