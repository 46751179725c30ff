//! `oomguard install --to DIR`: copy the guard (this `oomguard` binary and the `liboomguard.so`
//! that `oomguard run` would use) into a directory, typically a volume shared with the PostgreSQL
//! container, which an init container fills from the artifact image (`packaging/docker/`).
//!
//! This module owns: finding the two files (the running executable; the library by `run`'s
//! search, [`crate::run::locate_library`]), copying each atomically (a temporary file in DIR,
//! written, synced, given its mode, then renamed over the destination, so a process that maps or
//! executes the destination never sees half a file, and a running `DIR/oomguard` can be replaced),
//! and saying which `LD_PRELOAD=` line loads the copy. It refuses a DIR that `LD_PRELOAD` cannot
//! name (a space or colon in the path) before copying anything.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::run::{self, RunError, LIBRARY_FILE};

/// File name of the CLI in DIR.
pub const BINARY_FILE: &str = "oomguard";

/// Why `oomguard install` failed; every variant names the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The library could not be found (or the named one is unusable).
    #[error("{0}")]
    Library(#[from] RunError),
    /// The running executable could not be determined.
    #[error(
        "could not find this program's own file (/proc/self/exe: {source}; argv[0] is not a \
         path); run it by its path, e.g. /oomguard install --to DIR"
    )]
    OwnExecutable { source: io::Error },
    /// DIR exists but is not a directory, or could not be created.
    #[error("{}: {reason}", path.display())]
    Directory { path: PathBuf, reason: String },
    /// LD_PRELOAD splits at spaces and colons.
    #[error(
        "{} contains a space or colon, which LD_PRELOAD cannot express; choose another directory",
        path.display()
    )]
    Unpreloadable { path: PathBuf },
    /// A copy step failed.
    #[error("could not {step} {}: {source}", path.display())]
    Copy {
        step: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// What was installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// `DIR/oomguard` (mode 0755).
    pub binary: PathBuf,
    /// `DIR/liboomguard.so` (mode 0644).
    pub library: PathBuf,
    /// Where the library was copied from.
    pub library_source: PathBuf,
    /// Where the binary was copied from.
    pub binary_source: PathBuf,
}

impl Installed {
    /// The `LD_PRELOAD=…` line that loads the installed library (for a process that sees DIR at
    /// the same path).
    pub fn preload_line(&self) -> String {
        format!("LD_PRELOAD={}", self.library.display())
    }
}

/// The running executable: `/proc/self/exe`, else `argv0` when it is a path (a chroot or a
/// sandbox without /proc).
pub fn own_executable(argv0: Option<&OsStr>) -> Result<PathBuf, InstallError> {
    match std::env::current_exe() {
        Ok(path) => Ok(path),
        Err(source) => argv0
            .filter(|arg| arg.as_bytes().contains(&b'/'))
            .and_then(|arg| fs::canonicalize(arg).ok())
            .ok_or(InstallError::OwnExecutable { source }),
    }
}

/// Copies `exe` and the library (`library` flag, else `$OOM_GUARD_LIBRARY`, else `run`'s search
/// starting next to `exe`) into `to` (created if missing) as `oomguard` and `liboomguard.so`.
pub fn install(
    to: &Path,
    library: Option<&Path>,
    exe: &Path,
    library_env: Option<&OsStr>,
) -> Result<Installed, InstallError> {
    let search = run::search_paths(exe.parent(), run::multiarch_tuple());
    let library_source = run::locate_library(library, library_env, &search)?;
    fs::create_dir_all(to).map_err(|e| InstallError::Directory {
        path: to.to_owned(),
        reason: match e.kind() {
            io::ErrorKind::AlreadyExists => "exists and is not a directory".to_owned(),
            _ => format!("could not be created ({e})"),
        },
    })?;
    let dir = fs::canonicalize(to).map_err(|e| InstallError::Directory {
        path: to.to_owned(),
        reason: format!("could not be resolved ({e})"),
    })?;
    if !dir.is_dir() {
        return Err(InstallError::Directory {
            path: dir,
            reason: "is not a directory".to_owned(),
        });
    }
    let library_dest = dir.join(LIBRARY_FILE);
    if run::preload_value(None, &library_dest).is_err() {
        return Err(InstallError::Unpreloadable { path: dir });
    }
    let binary_dest = dir.join(BINARY_FILE);
    copy_atomically(&library_source, &library_dest, 0o644)?;
    copy_atomically(exe, &binary_dest, 0o755)?;
    Ok(Installed {
        binary: binary_dest,
        library: library_dest,
        library_source,
        binary_source: exe.to_owned(),
    })
}

/// Copies `src` to `dest` through `DEST_DIR/.NAME.PID.tmp` (written, synced, chmod'ed, renamed;
/// the directory synced after). The temporary file is removed if any step fails.
pub fn copy_atomically(src: &Path, dest: &Path, mode: u32) -> Result<(), InstallError> {
    let dir = dest.parent().unwrap_or(Path::new("/"));
    let mut tmp_name = OsString::from(".");
    tmp_name.push(dest.file_name().unwrap_or(OsStr::new("file")));
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let fail = |step: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| InstallError::Copy { step, path, source }
    };
    let result = (|| {
        let mut input = File::open(src).map_err(fail("read", src))?;
        let mut output = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail("create", &tmp))?;
        io::copy(&mut input, &mut output).map_err(fail("write", &tmp))?;
        output
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(fail("set the mode of", &tmp))?;
        output.sync_all().map_err(fail("sync", &tmp))?;
        drop(output);
        fs::rename(&tmp, dest).map_err(fail("rename a temporary file onto", dest))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(fail("sync", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_lib(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"\x7fELF\x02\x01\x01 library").unwrap();
    }

    #[test]
    fn copies_both_files_with_their_modes() {
        let root = tempfile::tempdir().unwrap();
        let exe = root.path().join("bin/oomguard");
        fake_lib(&root.path().join("bin/liboomguard.so"));
        fs::write(&exe, b"program").unwrap();
        let to = root.path().join("shared/guard");
        let installed = install(&to, None, &exe, None).unwrap();
        let to = fs::canonicalize(&to).unwrap();
        assert_eq!(installed.library, to.join("liboomguard.so"));
        assert_eq!(installed.binary, to.join("oomguard"));
        assert_eq!(fs::read(&installed.binary).unwrap(), b"program");
        assert_eq!(
            fs::read(&installed.library).unwrap(),
            b"\x7fELF\x02\x01\x01 library"
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&installed.binary), 0o755);
        assert_eq!(mode(&installed.library), 0o644);
        assert_eq!(
            installed.preload_line(),
            format!("LD_PRELOAD={}", to.join("liboomguard.so").display())
        );
        // No temporary file is left behind, and a second run replaces the files in place.
        install(&to, None, &exe, None).unwrap();
        let mut names: Vec<_> = fs::read_dir(&to)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["liboomguard.so", "oomguard"]);
    }

    #[test]
    fn errors_name_the_path() {
        let root = tempfile::tempdir().unwrap();
        let exe = root.path().join("oomguard");
        fs::write(&exe, b"program").unwrap();
        // No library anywhere near: run's not-found error, listing the places.
        let err = install(&root.path().join("to"), None, &exe, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&root.path().join("liboomguard.so").display().to_string()),
            "{err}"
        );

        fake_lib(&root.path().join("liboomguard.so"));
        let file = root.path().join("a-file");
        fs::write(&file, b"").unwrap();
        let err = install(&file, None, &exe, None).unwrap_err().to_string();
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(err.contains("not a directory"), "{err}");

        let spaced = root.path().join("with space");
        let err = install(&spaced, None, &exe, None).unwrap_err().to_string();
        assert!(
            err.contains("with space") && err.contains("LD_PRELOAD"),
            "{err}"
        );
        assert!(!spaced.join("liboomguard.so").exists(), "nothing copied");

        let missing = root.path().join("missing.so");
        let err = install(&root.path().join("to"), Some(&missing), &exe, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing.so") && err.contains("--library"),
            "{err}"
        );
    }

    #[test]
    fn a_failed_copy_leaves_no_temporary_file() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("liboomguard.so");
        let err = copy_atomically(&root.path().join("absent"), &dest, 0o644)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("could not read ") && err.contains("absent"),
            "{err}"
        );
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
    }
}
