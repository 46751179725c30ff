//! `oomguard run -- COMMAND [ARGS…]`: start a program with the guard preloaded.
//!
//! This module owns: finding `liboomguard.so` ([`locate_library`]), checking that it can be
//! loaded, composing `LD_PRELOAD` without losing what was already there ([`preload_value`]),
//! rejecting bad `OOM_GUARD_*` values before anything starts ([`validate_guard_env`]), and
//! replacing this process with the command ([`exec_command`]). The guard itself reads its
//! configuration from the environment the command inherits; `run` never changes those values.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable naming the preload library (same meaning as `--library`).
pub const LIBRARY_ENV: &str = "OOM_GUARD_LIBRARY";
/// File name of the preload library.
pub const LIBRARY_FILE: &str = "liboomguard.so";
/// The guard's size limit.
pub const LIMIT_ENV: &str = "OOM_GUARD_LIMIT";
/// The default budget of each refusable process (its own bytes).
pub const BACKEND_LIMIT_ENV: &str = "OOM_GUARD_BACKEND_LIMIT";
/// The guard's mode.
pub const MODE_ENV: &str = "OOM_GUARD_MODE";
/// Which processes the guard may refuse.
pub const REFUSE_ENV: &str = "OOM_GUARD_REFUSE";
/// The guard's reserve variable.
pub const RESERVE_ENV: &str = "OOM_GUARD_RESERVE";
/// The guard's shared memory override.
pub const SHARED_MEMORY_ENV: &str = "OOM_GUARD_SHARED_MEMORY";
/// The segment's file name, when the default (per user, cgroup and PID namespace) won't do.
pub const DOMAIN_ENV: &str = "OOM_GUARD_DOMAIN";
/// The longest [`DOMAIN_ENV`] accepted, in bytes: with the directory and the guard's
/// `.PID.tmp` suffix it stays well inside the guard's 512-byte path buffer and NAME_MAX (255).
pub const DOMAIN_MAX_BYTES: usize = 200;
/// What [`DOMAIN_ENV`] accepts.
pub use oomguard_core::config::DOMAIN_FORMS;

const BUILD_HINT: &str =
    "build it with `cargo build --release -p oomguard` (it lands in target/release/) or install \
     the oomguard package";

/// Why `oomguard run` could not start the command.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An explicitly named library (flag or env) is unusable: never fall back from it.
    #[error("{origin} names {}, which {reason}; fix the path, or {BUILD_HINT}", path.display())]
    LibraryUnusable {
        origin: String,
        path: PathBuf,
        reason: String,
    },
    /// No candidate location holds a usable library.
    #[error(
        "could not find {LIBRARY_FILE}; looked in: {}. Pass --library PATH or set \
         {LIBRARY_ENV}=PATH, or {BUILD_HINT}",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    LibraryNotFound { tried: Vec<PathBuf> },
    /// ld.so splits LD_PRELOAD at spaces and colons, so such a path cannot be preloaded.
    #[error(
        "the library path {} contains a space or colon, which LD_PRELOAD cannot express; move \
         the library to a path without them",
        path.display()
    )]
    UnpreloadablePath { path: PathBuf },
    /// A guard setting in the environment is invalid.
    #[error("{var}={value:?} is not valid: {reason}; set {var} to {accepted}, or unset it")]
    InvalidSetting {
        var: &'static str,
        value: String,
        reason: String,
        accepted: &'static str,
    },
    /// Nothing to run.
    #[error("no command given; usage: oomguard run [--library PATH] -- COMMAND [ARGS...]")]
    NoCommand,
    /// `execvp` failed.
    #[error("could not execute {program:?}: {source}{hint}")]
    Exec {
        program: OsString,
        source: io::Error,
        hint: &'static str,
    },
}

// ---------------------------------------------------------------------------------------------
// Finding the library
// ---------------------------------------------------------------------------------------------

/// The Debian multiarch tuple of the target this binary was built for (`x86_64-linux-gnu`), used
/// for `/usr/lib/<tuple>/oomguard/`.
pub fn multiarch_tuple() -> Option<&'static str> {
    if cfg!(not(all(target_os = "linux", target_env = "gnu"))) {
        return None;
    }
    if cfg!(target_arch = "x86_64") {
        Some("x86_64-linux-gnu")
    } else if cfg!(target_arch = "aarch64") {
        Some("aarch64-linux-gnu")
    } else if cfg!(target_arch = "x86") {
        Some("i386-linux-gnu")
    } else if cfg!(all(target_arch = "arm", target_abi = "eabihf")) {
        Some("arm-linux-gnueabihf")
    } else if cfg!(all(target_arch = "powerpc64", target_endian = "little")) {
        Some("powerpc64le-linux-gnu")
    } else if cfg!(target_arch = "s390x") {
        Some("s390x-linux-gnu")
    } else if cfg!(target_arch = "riscv64") {
        Some("riscv64-linux-gnu")
    } else {
        None
    }
}

/// The places searched when no library was named, in order: next to the executable, in
/// `EXE_DIR/../lib/oomguard/`, in `/usr/lib/<multiarch>/oomguard/`, in `/usr/lib/oomguard/`.
pub fn search_paths(exe_dir: Option<&Path>, multiarch: Option<&str>) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(dir) = exe_dir {
        paths.push(dir.join(LIBRARY_FILE));
        paths.push(dir.join("../lib/oomguard").join(LIBRARY_FILE));
    }
    if let Some(tuple) = multiarch {
        paths.push(
            Path::new("/usr/lib")
                .join(tuple)
                .join("oomguard")
                .join(LIBRARY_FILE),
        );
    }
    paths.push(Path::new("/usr/lib/oomguard").join(LIBRARY_FILE));
    paths
}

/// [`search_paths`] for the running executable and build target.
pub fn default_search_paths() -> Vec<PathBuf> {
    let exe = std::env::current_exe().ok();
    search_paths(exe.as_deref().and_then(Path::parent), multiarch_tuple())
}

/// Checks that `path` is a readable ELF file and returns its absolute, symlink-free path
/// (relative paths in LD_PRELOAD would break as soon as a process changes directory). The error
/// is the reason it cannot be used.
pub fn check_library(path: &Path) -> Result<PathBuf, String> {
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => "does not exist".to_string(),
        _ => format!("cannot be inspected ({e})"),
    })?;
    if !meta.is_file() {
        return Err("is not a regular file".to_string());
    }
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => "is not readable by this user".to_string(),
            io::ErrorKind::UnexpectedEof => "is not a shared library (too short)".to_string(),
            _ => format!("cannot be read ({e})"),
        })?;
    if &magic != b"\x7fELF" {
        return Err("is not a shared library (no ELF header)".to_string());
    }
    fs::canonicalize(path).map_err(|e| format!("cannot be resolved ({e})"))
}

/// Finds the library: `flag` (`--library`), else `env_value` (`OOM_GUARD_LIBRARY`), else the
/// first usable entry of `search`. A named library that is unusable is an error, not a reason
/// to search. Returns the canonical path.
pub fn locate_library(
    flag: Option<&Path>,
    env_value: Option<&OsStr>,
    search: &[PathBuf],
) -> Result<PathBuf, RunError> {
    let named = match (flag, env_value.filter(|v| !v.is_empty())) {
        (Some(path), _) => Some(("--library".to_string(), path.to_path_buf())),
        (None, Some(value)) => Some((LIBRARY_ENV.to_string(), PathBuf::from(value))),
        (None, None) => None,
    };
    if let Some((origin, path)) = named {
        return check_library(&path).map_err(|reason| RunError::LibraryUnusable {
            origin,
            path,
            reason,
        });
    }
    search
        .iter()
        .find_map(|candidate| check_library(candidate).ok())
        .ok_or_else(|| RunError::LibraryNotFound {
            tried: search.to_vec(),
        })
}

// ---------------------------------------------------------------------------------------------
// LD_PRELOAD
// ---------------------------------------------------------------------------------------------

/// The new `LD_PRELOAD` value and what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preload {
    pub value: OsString,
    /// A different `liboomguard.so` that was already listed and has been replaced by ours (two
    /// copies of the guard in one process would both count, and only one would interpose).
    pub replaced: Option<PathBuf>,
    /// The library was already listed; the value is unchanged.
    pub already_present: bool,
}

/// Appends `lib` to an existing `LD_PRELOAD` (space-separated, as ld.so also accepts; existing
/// colons are kept), unless it is already listed. An entry with the same file name but another
/// path is replaced in place.
pub fn preload_value(existing: Option<&OsStr>, lib: &Path) -> Result<Preload, RunError> {
    let lib_bytes = lib.as_os_str().as_bytes();
    if lib_bytes.iter().any(|&b| b == b' ' || b == b':') {
        return Err(RunError::UnpreloadablePath {
            path: lib.to_path_buf(),
        });
    }
    let existing = existing.map(OsStr::as_bytes).unwrap_or_default();
    let is_sep = |b: &u8| *b == b' ' || *b == b':' || *b == b'\t' || *b == b'\n';
    let entries: Vec<&[u8]> = existing.split(is_sep).filter(|e| !e.is_empty()).collect();
    if entries.contains(&lib_bytes) {
        return Ok(Preload {
            value: OsStr::from_bytes(existing).to_owned(),
            replaced: None,
            already_present: true,
        });
    }
    let our_name = lib.file_name().map(OsStr::as_bytes);
    let same_name = |entry: &[u8]| {
        Path::new(OsStr::from_bytes(entry))
            .file_name()
            .map(OsStr::as_bytes)
            == our_name
    };
    if let Some(old) = entries.iter().find(|e| same_name(e)) {
        // Rebuild with our path in place of the old one (separators normalised to spaces).
        let rebuilt: Vec<&[u8]> = entries
            .iter()
            .map(|e| if same_name(e) { lib_bytes } else { *e })
            .collect();
        return Ok(Preload {
            value: OsStr::from_bytes(&rebuilt.join(&b' ')).to_owned(),
            replaced: Some(PathBuf::from(OsStr::from_bytes(old))),
            already_present: false,
        });
    }
    let trimmed = existing
        .iter()
        .rposition(|b| !is_sep(b))
        .map_or(&existing[..0], |last| &existing[..=last]);
    let mut value = trimmed.to_vec();
    if !value.is_empty() {
        value.push(b' ');
    }
    value.extend_from_slice(lib_bytes);
    Ok(Preload {
        value: OsStr::from_bytes(&value).to_owned(),
        replaced: None,
        already_present: false,
    })
}

// ---------------------------------------------------------------------------------------------
// Guard settings
// ---------------------------------------------------------------------------------------------

use oomguard_core::budget::{Budget, DEFAULT_FORMS as BACKEND_LIMIT_FORMS};
use oomguard_core::config::{limit_is_auto, parse_size, MODE_FORMS, REFUSE_FORMS, SIZE_FORMS};
use oomguard_core::limit::{Reserve, RESERVE_FORMS};
use oomguard_core::{Mode, RefuseScope};

/// Checks `OOM_GUARD_LIMIT`, `OOM_GUARD_BACKEND_LIMIT`, `OOM_GUARD_MODE`, `OOM_GUARD_REFUSE`,
/// `OOM_GUARD_RESERVE`, `OOM_GUARD_SHARED_MEMORY` and `OOM_GUARD_DOMAIN` as read by `get` (unset
/// is fine: the guard has defaults). A set but invalid value is an error naming the variable and
/// the accepted forms.
pub fn validate_guard_env(get: impl Fn(&str) -> Option<OsString>) -> Result<(), RunError> {
    type Check = fn(&str) -> Result<(), String>;
    let checks: [(&'static str, &'static str, Check); 6] = [
        (LIMIT_ENV, SIZE_FORMS, |v| {
            if limit_is_auto(v) {
                return Ok(());
            }
            parse_size(v).map(drop).map_err(|e| e.reason().to_string())
        }),
        // The guard's own parser decides: the guard falls back to report mode on what it
        // rejects, so `run` rejects exactly that (an empty value is "not set" for both).
        (BACKEND_LIMIT_ENV, BACKEND_LIMIT_FORMS, |v| {
            Budget::parse_default(v)
                .map(drop)
                .map_err(|e| e.reason().to_string())
        }),
        (MODE_ENV, MODE_FORMS, |v| {
            Mode::parse(v)
                .map(drop)
                .ok_or_else(|| "it is not a known mode".to_string())
        }),
        (REFUSE_ENV, REFUSE_FORMS, |v| {
            RefuseScope::parse(v)
                .map(drop)
                .ok_or_else(|| "it is not a known refusal scope".to_string())
        }),
        (RESERVE_ENV, RESERVE_FORMS, |v| {
            Reserve::parse(v)
                .map(drop)
                .map_err(|e| e.reason().to_string())
        }),
        (SHARED_MEMORY_ENV, SIZE_FORMS, |v| {
            parse_size(v).map(drop).map_err(|e| e.reason().to_string())
        }),
    ];
    if let Some(raw) = get(DOMAIN_ENV) {
        // A file name is bytes: no UTF-8 requirement, unlike the other settings.
        check_domain_name(raw.as_bytes()).map_err(|reason| RunError::InvalidSetting {
            var: DOMAIN_ENV,
            value: raw.to_string_lossy().into_owned(),
            reason,
            accepted: DOMAIN_FORMS,
        })?;
    }
    for (var, accepted, check) in checks {
        let Some(raw) = get(var) else { continue };
        let invalid = |value: String, reason: String| RunError::InvalidSetting {
            var,
            value,
            reason,
            accepted,
        };
        let Some(text) = raw.to_str() else {
            return Err(invalid(
                raw.to_string_lossy().into_owned(),
                "it is not valid UTF-8".to_string(),
            ));
        };
        check(text).map_err(|reason| invalid(text.to_string(), reason))?;
    }
    Ok(())
}

/// Checks an `OOM_GUARD_DOMAIN` value: the segment's file name, joined to `OOM_GUARD_DIR` by the
/// guard, so it must name a file *in* that directory. Empty is refused too: `VAR=$UNSET` is a
/// mistake more often than a wish for the default, which leaving the variable unset gives.
pub fn check_domain_name(name: &[u8]) -> Result<(), String> {
    // The guard's own rule decides; what follows only says why.
    if oomguard_core::config::domain_is_valid(name) {
        return Ok(());
    }
    if name.is_empty() {
        return Err("it is empty (unset it for the default domain)".to_owned());
    }
    if name == b"." || name == b".." {
        return Err("it names a directory, not a file".to_owned());
    }
    if name.contains(&b'/') {
        return Err("it contains '/': the segment must be a file in OOM_GUARD_DIR".to_owned());
    }
    if name.len() > DOMAIN_MAX_BYTES {
        return Err(format!(
            "it is {} bytes long, more than {DOMAIN_MAX_BYTES}",
            name.len()
        ));
    }
    Err("it contains a NUL byte".to_owned())
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

/// Everything decided before the exec, so it can be inspected (and tested) without replacing the
/// process.
#[derive(Debug)]
pub struct Prepared {
    pub library: PathBuf,
    pub preload: Preload,
    pub command: Command,
}

/// Validates the settings, locates the library and builds the command with `LD_PRELOAD` set.
/// Reads the process environment for `OOM_GUARD_*` and `LD_PRELOAD`.
pub fn prepare(library: Option<&Path>, command: &[OsString]) -> Result<Prepared, RunError> {
    let (program, args) = command.split_first().ok_or(RunError::NoCommand)?;
    validate_guard_env(|name| std::env::var_os(name))?;
    let library = locate_library(
        library,
        std::env::var_os(LIBRARY_ENV).as_deref(),
        &default_search_paths(),
    )?;
    let preload = preload_value(std::env::var_os("LD_PRELOAD").as_deref(), &library)?;
    let mut cmd = Command::new(program);
    cmd.args(args).env("LD_PRELOAD", &preload.value);
    Ok(Prepared {
        library,
        preload,
        command: cmd,
    })
}

/// Replaces this process with `cmd`; returns only if that failed.
pub fn exec_command(mut cmd: Command) -> RunError {
    let program = cmd.get_program().to_owned();
    let source = cmd.exec();
    let hint = match source.kind() {
        io::ErrorKind::NotFound if !program.as_bytes().contains(&b'/') => {
            " (is it installed and on PATH?)"
        }
        io::ErrorKind::NotFound => " (check the path)",
        io::ErrorKind::PermissionDenied if !program.as_bytes().contains(&b'/') => {
            " (it is not executable, or a directory on PATH is not searchable by this user)"
        }
        io::ErrorKind::PermissionDenied => " (is it an executable file you may run?)",
        _ => "",
    };
    RunError::Exec {
        program,
        source,
        hint,
    }
}

/// `oomguard run`: prepare, warn about anything surprising on stderr, and exec. Returns only on
/// failure.
pub fn run(library: Option<&Path>, command: &[OsString]) -> RunError {
    let prepared = match prepare(library, command) {
        Ok(p) => p,
        Err(e) => return e,
    };
    if let Some(old) = &prepared.preload.replaced {
        eprintln!(
            "oomguard: LD_PRELOAD already listed {}; using {} instead",
            old.display(),
            prepared.library.display()
        );
    }
    if let Ok(meta) = fs::metadata(&prepared.library) {
        if meta.permissions().mode() & 0o004 == 0 {
            eprintln!(
                "oomguard: warning: {} is not world-readable; processes that switch to another \
                 user will not be able to load it (chmod 0644 it)",
                prepared.library.display()
            );
        }
    }
    exec_command(prepared.command)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn fake_lib(dir: &Path, rel: &str) -> PathBuf {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"\x7fELF\x02\x01\x01").unwrap();
        fs::canonicalize(path).unwrap()
    }

    #[test]
    fn search_order() {
        let paths = search_paths(Some(Path::new("/opt/og/bin")), Some("x86_64-linux-gnu"));
        let want: Vec<PathBuf> = [
            "/opt/og/bin/liboomguard.so",
            "/opt/og/bin/../lib/oomguard/liboomguard.so",
            "/usr/lib/x86_64-linux-gnu/oomguard/liboomguard.so",
            "/usr/lib/oomguard/liboomguard.so",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(paths, want);
        assert_eq!(
            search_paths(None, None),
            [PathBuf::from("/usr/lib/oomguard/liboomguard.so")]
        );
        #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
        assert_eq!(multiarch_tuple(), Some("x86_64-linux-gnu"));
    }

    #[test]
    fn locate_prefers_flag_then_env_then_search() {
        let root = tempfile::tempdir().unwrap();
        let a = fake_lib(root.path(), "a/liboomguard.so");
        let b = fake_lib(root.path(), "b/liboomguard.so");
        let c = fake_lib(root.path(), "c/liboomguard.so");
        let search = vec![root.path().join("missing/liboomguard.so"), c.clone()];
        assert_eq!(
            locate_library(Some(&a), Some(b.as_os_str()), &search).unwrap(),
            a
        );
        assert_eq!(
            locate_library(None, Some(b.as_os_str()), &search).unwrap(),
            b
        );
        assert_eq!(
            locate_library(None, Some(OsStr::new("")), &search).unwrap(),
            c
        );
        assert_eq!(locate_library(None, None, &search).unwrap(), c);
    }

    #[test]
    fn named_library_errors_do_not_fall_back() {
        let root = tempfile::tempdir().unwrap();
        let good = fake_lib(root.path(), "good/liboomguard.so");
        let missing = root.path().join("missing.so");
        let err = locate_library(None, Some(missing.as_os_str()), std::slice::from_ref(&good))
            .unwrap_err()
            .to_string();
        assert!(err.contains(LIBRARY_ENV), "{err}");
        assert!(err.contains("does not exist"), "{err}");
        assert!(err.contains("cargo build --release -p oomguard"), "{err}");

        let not_elf = root.path().join("text.so");
        fs::write(&not_elf, "hello").unwrap();
        let err = locate_library(Some(&not_elf), None, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--library"), "{err}");
        assert!(err.contains("ELF"), "{err}");

        let err = locate_library(Some(root.path()), None, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn not_found_lists_places() {
        let err = locate_library(None, None, &[PathBuf::from("/nope/liboomguard.so")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nope/liboomguard.so"), "{err}");
        assert!(err.contains("--library"), "{err}");
        assert!(err.contains(LIBRARY_ENV), "{err}");
    }

    #[test]
    fn unreadable_library_is_reported() {
        // Root can read anything, so only meaningful for ordinary users.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let lib = fake_lib(root.path(), "liboomguard.so");
        fs::set_permissions(&lib, fs::Permissions::from_mode(0o000)).unwrap();
        assert_eq!(
            check_library(&lib).unwrap_err(),
            "is not readable by this user"
        );
    }

    #[test]
    fn preload_appends_without_duplicates() {
        let lib = Path::new("/usr/lib/oomguard/liboomguard.so");
        let p = preload_value(None, lib).unwrap();
        assert_eq!(p.value, OsStr::new("/usr/lib/oomguard/liboomguard.so"));
        let p = preload_value(Some(OsStr::new("")), lib).unwrap();
        assert_eq!(p.value, OsStr::new("/usr/lib/oomguard/liboomguard.so"));

        let p = preload_value(Some(OsStr::new("/lib/libnss_wrapper.so ")), lib).unwrap();
        assert_eq!(
            p.value,
            OsStr::new("/lib/libnss_wrapper.so /usr/lib/oomguard/liboomguard.so")
        );
        assert!(!p.already_present);

        let existing = OsStr::new("/a.so:/usr/lib/oomguard/liboomguard.so /b.so");
        let p = preload_value(Some(existing), lib).unwrap();
        assert!(p.already_present);
        assert_eq!(p.value, existing);
    }

    #[test]
    fn preload_replaces_another_copy_of_the_guard() {
        let lib = Path::new("/usr/lib/oomguard/liboomguard.so");
        let p = preload_value(Some(OsStr::new("/a.so:/old/liboomguard.so /b.so")), lib).unwrap();
        assert_eq!(
            p.value,
            OsStr::new("/a.so /usr/lib/oomguard/liboomguard.so /b.so")
        );
        assert_eq!(p.replaced, Some(PathBuf::from("/old/liboomguard.so")));
    }

    #[test]
    fn preload_rejects_spaces_and_colons() {
        for bad in ["/my libs/liboomguard.so", "/a:b/liboomguard.so"] {
            let err = preload_value(None, Path::new(bad)).unwrap_err();
            assert!(matches!(err, RunError::UnpreloadablePath { .. }), "{err:?}");
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn guard_env_validation() {
        assert!(validate_guard_env(env_of(&[])).is_ok());
        assert!(validate_guard_env(env_of(&[
            ("OOM_GUARD_LIMIT", "1Gi"),
            ("OOM_GUARD_MODE", "Enforce"),
            ("OOM_GUARD_REFUSE", "all"),
        ]))
        .is_ok());

        let err = validate_guard_env(env_of(&[("OOM_GUARD_LIMIT", "1GB")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("OOM_GUARD_LIMIT=\"1GB\" is not valid"),
            "{err}"
        );
        assert!(err.contains("ambiguous"), "{err}");
        assert!(err.contains("512Mi"), "{err}");

        let err = validate_guard_env(env_of(&[("OOM_GUARD_MODE", "strict")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("OOM_GUARD_MODE"), "{err}");
        assert!(err.contains("enforce, report or off"), "{err}");

        let err = validate_guard_env(env_of(&[("OOM_GUARD_REFUSE", "everything")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("OOM_GUARD_REFUSE"), "{err}");
        assert!(err.contains("backends"), "{err}");

        // Empty and `auto` ask for the derived limit, as in the guard itself.
        assert!(validate_guard_env(env_of(&[("OOM_GUARD_LIMIT", "")])).is_ok());
        assert!(validate_guard_env(env_of(&[("OOM_GUARD_LIMIT", "auto")])).is_ok());
        assert!(validate_guard_env(env_of(&[
            ("OOM_GUARD_RESERVE", "15%"),
            ("OOM_GUARD_SHARED_MEMORY", "1Gi"),
        ]))
        .is_ok());
        let err = validate_guard_env(env_of(&[("OOM_GUARD_RESERVE", "95%")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("OOM_GUARD_RESERVE") && err.contains("0% to 90%"),
            "{err}"
        );
        let err = validate_guard_env(env_of(&[("OOM_GUARD_SHARED_MEMORY", "64MB")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("OOM_GUARD_SHARED_MEMORY") && err.contains("ambiguous"),
            "{err}"
        );
        let err = validate_guard_env(env_of(&[("OOM_GUARD_LIMIT", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("whole number"), "{err}");
    }

    #[test]
    fn the_default_budget_is_checked_with_the_guards_grammar() {
        for good in [
            "512Mi",
            "2G",
            "1073741824",
            "25%",
            "0.5%",
            "off",
            "OFF",
            "0",
            "",
        ] {
            assert!(
                validate_guard_env(env_of(&[("OOM_GUARD_BACKEND_LIMIT", good)])).is_ok(),
                "{good}"
            );
        }
        for (bad, why) in [
            // PostgreSQL's unit, which the setting takes but the variable does not.
            ("512MB", "ambiguous"),
            ("150%", "at most 100%"),
            ("lots", "whole number"),
        ] {
            let err = validate_guard_env(env_of(&[("OOM_GUARD_BACKEND_LIMIT", bad)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("OOM_GUARD_BACKEND_LIMIT={bad:?} is not valid")),
                "{err}"
            );
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains(BACKEND_LIMIT_FORMS), "{err}");
        }
    }

    #[test]
    fn domain_names_are_plain_file_names() {
        for good in [
            "oomguard-pg",
            "x",
            "..x",
            "a.b",
            "é",
            "d".repeat(200).as_str(),
        ] {
            assert!(check_domain_name(good.as_bytes()).is_ok(), "{good}");
        }
        assert!(
            check_domain_name(b"oomguard-\xff").is_ok(),
            "bytes, not UTF-8"
        );
        for (bad, says) in [
            ("", "empty"),
            (".", "directory"),
            ("..", "directory"),
            ("../x", "'/'"),
            ("a/b", "'/'"),
            ("/dev/shm/x", "'/'"),
            ("d".repeat(201).as_str(), "201 bytes"),
        ] {
            let err = validate_guard_env(env_of(&[(DOMAIN_ENV, bad)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("{DOMAIN_ENV}={bad:?} is not valid: ")),
                "{err}"
            );
            assert!(err.contains(says) && err.contains(DOMAIN_FORMS), "{err}");
        }
    }

    #[test]
    fn exec_failure_is_explained() {
        // A PATH we control: an unsearchable PATH entry would turn ENOENT into EACCES.
        let mut cmd = Command::new("oomguard-no-such-program-xyz");
        cmd.env("PATH", "/nonexistent-oomguard-dir");
        let err = exec_command(cmd).to_string();
        assert!(err.contains("oomguard-no-such-program-xyz"), "{err}");
        assert!(err.contains("PATH"), "{err}");
    }

    #[test]
    fn no_command_is_an_error() {
        assert!(matches!(prepare(None, &[]), Err(RunError::NoCommand)));
    }
}
