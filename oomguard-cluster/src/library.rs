//! The preload library as a cluster's server sees it: [`stage_library`] puts a copy where the
//! unprivileged server user can read it, and [`pid_maps_library`] tells from `/proc/PID/maps`
//! whether a process really has it mapped (the dynamic loader silently ignores a preload it
//! cannot load).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Whether process `pid` has a file mapped whose path is `name` or whose file name is `name`
/// (e.g. `"liboomguard.so"`), according to `/proc/PID/maps`.
pub fn pid_maps_library(pid: u32, name: &str) -> io::Result<bool> {
    let maps = fs::read(format!("/proc/{pid}/maps"))?;
    Ok(maps_mention_library(&maps, name.as_bytes()))
}

fn maps_mention_library(maps: &[u8], name: &[u8]) -> bool {
    maps.split(|&b| b == b'\n').any(|line| {
        // address perms offset dev inode pathname: the pathname starts at the first '/'.
        let Some(start) = line.iter().position(|&b| b == b'/') else {
            return false;
        };
        let mut path = &line[start..];
        if let Some(stripped) = path.strip_suffix(b" (deleted)") {
            path = stripped;
        }
        let file_name = Path::new(OsStr::from_bytes(path))
            .file_name()
            .map(OsStr::as_bytes);
        path == name || file_name == Some(name)
    })
}

/// Copies the preload library `src` into `dir` (created if needed) with mode 0644, so a server
/// running as an unprivileged user can load it even when `src` lives somewhere only root can
/// read (e.g. under `/root`). Returns the staged path. The copy is written under a temporary
/// name and renamed, so a running server never maps a half-written file.
pub fn stage_library(src: &Path, dir: &Path) -> io::Result<PathBuf> {
    let file_name = src.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", src.display()),
        )
    })?;
    fs::create_dir_all(dir)?;
    let dest = dir.join(file_name);
    let mut tmp_name = OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    fs::copy(src, &tmp).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("could not copy {} to {}: {e}", src.display(), tmp.display()),
        )
    })?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
    fs::rename(&tmp, &dest)?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn maps_parsing() {
        let maps = b"55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 123 /usr/lib/postgresql/15/bin/postgres\n\
7f0000000000-7f0000001000 r-xp 00000000 08:01 456 /tmp/oomguard-pg-x/liboomguard.so\n\
7f0000002000-7f0000003000 rw-p 00000000 00:00 0 \n\
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n\
7f0000004000-7f0000005000 r-xp 00000000 08:01 789 /old/libold.so (deleted)\n";
        assert!(maps_mention_library(maps, b"liboomguard.so"));
        assert!(maps_mention_library(
            maps,
            b"/tmp/oomguard-pg-x/liboomguard.so"
        ));
        assert!(maps_mention_library(maps, b"libold.so"));
        assert!(!maps_mention_library(maps, b"oomguard.so"));
        assert!(!maps_mention_library(maps, b"[stack]"));
        assert!(!maps_mention_library(maps, b"libc.so.6"));
    }

    #[test]
    fn own_process_maps_libc() {
        let pid = std::process::id();
        // Rust binaries on glibc link libc.so.6 dynamically.
        assert!(pid_maps_library(pid, "libc.so.6").unwrap());
        assert!(!pid_maps_library(pid, "liboomguard-nonexistent.so").unwrap());
    }

    #[test]
    fn stage_library_copies_with_mode_0644() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("liboomguard.so");
        fs::write(&src, b"\x7fELF fake").unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o600)).unwrap();
        let staged = stage_library(&src, &root.path().join("stage/lib")).unwrap();
        assert_eq!(staged, root.path().join("stage/lib/liboomguard.so"));
        assert_eq!(fs::read(&staged).unwrap(), b"\x7fELF fake");
        assert_eq!(fs::metadata(&staged).unwrap().mode() & 0o777, 0o644);
        // Staging again replaces the file.
        fs::write(&src, b"\x7fELF new").unwrap();
        stage_library(&src, &root.path().join("stage/lib")).unwrap();
        assert_eq!(fs::read(&staged).unwrap(), b"\x7fELF new");
    }
}
