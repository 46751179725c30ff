//! `oomguard clean`: removing what earlier runs left in the segment directory.
//!
//! This module owns deciding, file by file, whether an `oomguard-*` file may go, and removing it
//! safely. Two kinds go:
//!
//! - **stale segments**: no guarded process has them mapped ([`crate::segment::lock_state`]).
//!   Removal follows the guard's lifecycle protocol: open the file (`O_NOFOLLOW`), take the
//!   open-file-description *write* lock without waiting (it fails while any guarded process
//!   holds its read lock), check that the name still leads to the file we locked, and unlink it
//!   while holding the lock. A guarded process that opened the file meanwhile waits for our lock,
//!   then sees that the name now leads elsewhere and opens (or creates) the segment afresh.
//! - **leftover temporary files** (`NAME.PID.tmp`, which a guard creating a segment publishes
//!   with `link(2)` and then unlinks): older than a minute, their creator pid gone, and no lock
//!   on them (the creator locks the file just before publishing it); removed under the same
//!   write lock.
//!
//! Everything else is kept, with the reason: live segments, files this build cannot read as a
//! segment (a guard of another version may still use them, and its processes did not take
//! locks), symbolic links (never followed), anything not a regular file, and other users' files
//! unless we are root. `--dry-run` only tests the locks (`F_OFD_GETLK`), taking none.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use oomguard_core::layout::SegmentView;

use crate::segment::{lock_state, take_lock, Liveness, SegmentError};

/// How old a temporary file must be before it is taken for a leftover: creating a segment takes
/// microseconds, so a minute leaves a wide margin for a slow or stopped creator.
pub const TEMPORARY_MIN_AGE: Duration = Duration::from_secs(60);

/// What was done with one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Removed.
    Removed,
    /// Would be removed (`--dry-run`).
    WouldRemove,
    /// Left alone, on purpose.
    Kept,
    /// Should have been removed, but removing it failed.
    Failed,
}

/// One file and what became of it, with why.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The file.
    pub path: PathBuf,
    /// What was done.
    pub action: Action,
    /// Why, in a few words.
    pub reason: String,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Removed => "removed",
            Action::WouldRemove => "would remove",
            Action::Kept => "kept",
            Action::Failed => "FAILED to remove",
        };
        write!(f, "{action:<12} {}: {}", self.path.display(), self.reason)
    }
}

/// Looks at every `oomguard-*` file of `dir` (in name order) and removes the stale segments and
/// leftover temporary files, or with `dry_run` only says which it would remove. Fails only when
/// the directory cannot be listed.
pub fn clean(dir: &Path, dry_run: bool) -> Result<Vec<Outcome>, SegmentError> {
    let entries = std::fs::read_dir(dir).map_err(|source| SegmentError::Directory {
        dir: dir.to_owned(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .as_encoded_bytes()
                .starts_with(b"oomguard-")
        })
        .map(|entry| entry.path())
        .collect();
    paths.sort();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    Ok(paths
        .into_iter()
        .map(|path| {
            let (action, reason) = consider(&path, euid, dry_run);
            Outcome {
                path,
                action,
                reason,
            }
        })
        .collect())
}

/// `NAME.PID.tmp`: the pid of a guard's temporary file, `None` for any other name.
pub fn temporary_pid(file_name: &str) -> Option<i32> {
    let stem = file_name.strip_suffix(".tmp")?;
    let (_, pid) = stem.rsplit_once('.')?;
    pid.parse().ok().filter(|pid| *pid > 0)
}

fn kept(reason: impl Into<String>) -> (Action, String) {
    (Action::Kept, reason.into())
}

fn consider(path: &Path, euid: u32, dry_run: bool) -> (Action, String) {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = name.ends_with(".tmp");
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) => return kept(format!("cannot look at it: {error}")),
    };
    if meta.file_type().is_symlink() {
        return kept("a symbolic link: never followed, never removed");
    }
    if !meta.file_type().is_file() {
        return kept("not a regular file");
    }
    let as_root = if meta.uid() == euid {
        ""
    } else if euid == 0 {
        // Said in the reason of whatever is done: root removes other users' stale files too.
        "; owned by another user, removed as root"
    } else {
        return kept(format!(
            "owned by uid {}, not by you (uid {euid}): only its owner or root may remove it",
            meta.uid()
        ));
    };
    let (gone, how_old) = if temporary {
        let Some(pid) = temporary_pid(&name) else {
            return kept("not a temporary file of the guard (no NAME.PID.tmp)");
        };
        let age = meta
            .modified()
            .ok()
            .and_then(|modified| SystemTime::now().duration_since(modified).ok())
            .unwrap_or_default();
        if age < TEMPORARY_MIN_AGE {
            return kept(format!(
                "a temporary file {} s old: its creator may still be writing it",
                age.as_secs()
            ));
        }
        if pid_exists(pid) {
            return kept(format!(
                "a temporary file whose creator, pid {pid}, is alive (or its pid was reused)"
            ));
        }
        (
            format!("a temporary file left by pid {pid}, which is gone"),
            format!(", {} s old", age.as_secs()),
        )
    } else {
        (
            "stale: no guarded process has it mapped".to_owned(),
            String::new(),
        )
    };
    // O_NONBLOCK: a FIFO swapped in after the check above must not hang the open.
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(error) => return kept(format!("cannot open it: {error}")),
    };
    if !still_named(&file, path) {
        return kept("replaced while being looked at; run clean again");
    }
    if !temporary {
        if let Err(why) = readable_segment(&file) {
            return kept(format!(
                "not a segment this build can read ({why}): an oomguard of another version may \
                 still use it; remove it by hand once no such process runs"
            ));
        }
    }
    if dry_run {
        return match lock_state(&file) {
            Liveness::Stale => (Action::WouldRemove, format!("{gone}{how_old}{as_root}")),
            Liveness::Live => kept(live_reason(temporary)),
            Liveness::Unknown(error) => kept(format!(
                "its lock cannot be tested ({error}): treated as live"
            )),
        };
    }
    match take_lock(&file, libc::F_WRLCK) {
        Ok(true) => {}
        Ok(false) => return kept(live_reason(temporary)),
        Err(error) => {
            return kept(format!(
                "its lock cannot be taken ({error}): treated as live"
            ))
        }
    }
    // A cleaner racing us may have removed the file and a guard created a new one under the
    // name since we opened it: only the file we hold locked may go.
    if !still_named(&file, path) {
        return kept("replaced while being looked at; run clean again");
    }
    let result = std::fs::remove_file(path);
    // Closing drops the write lock only now, after the unlink: a guard waiting on it then finds
    // the name gone and starts a fresh segment.
    drop(file);
    match result {
        Ok(()) => (Action::Removed, format!("{gone}{how_old}{as_root}")),
        Err(error) => (
            Action::Failed,
            format!("{gone}, but unlink failed: {error}"),
        ),
    }
}

fn live_reason(temporary: bool) -> &'static str {
    if temporary {
        "a temporary file still locked by its creator"
    } else {
        "live: a guarded process has it mapped"
    }
}

/// Whether `path` still names the file `file` is open on (same device and inode, not a link).
fn still_named(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(opened), Ok(named)) => {
            opened.file_type().is_file()
                && opened.dev() == named.dev()
                && opened.ino() == named.ino()
        }
        _ => false,
    }
}

/// Whether `file` holds a segment of this build's layout, read through a private read-only
/// mapping.
fn readable_segment(file: &File) -> Result<(), String> {
    // SAFETY: a private read-only mapping; nothing is handed out beyond this function, and the
    // view reads the shared fields through atomics.
    let map = unsafe { memmap2::MmapOptions::new().map(file) }.map_err(|e| e.to_string())?;
    SegmentView::new(&map).map(drop).map_err(|e| e.to_string())
}

/// Whether a process with `pid` exists in our PID namespace (a process we may not signal exists
/// too).
fn pid_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence and permission.
    let delivered = unsafe { libc::kill(pid, 0) } == 0;
    delivered || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_carry_the_creators_pid() {
        assert_eq!(temporary_pid("oomguard-1000-00ff.4242.tmp"), Some(4242));
        assert_eq!(temporary_pid("oomguard-my.domain.17.tmp"), Some(17));
        assert_eq!(temporary_pid("oomguard-1000-00ff.tmp"), None);
        assert_eq!(temporary_pid("oomguard-x.-3.tmp"), None);
        assert_eq!(temporary_pid("oomguard-x.0.tmp"), None);
        assert_eq!(temporary_pid("oomguard-x.12"), None);
    }

    #[test]
    fn only_stale_readable_segments_and_old_orphaned_temporaries_go() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Not a segment: kept, whatever its lock.
        std::fs::write(d.join("oomguard-junk"), b"junk").unwrap();
        // A fresh temporary file: kept.
        std::fs::write(d.join("oomguard-x.1.tmp"), b"").unwrap();
        // A symbolic link to a file it must not touch.
        std::fs::write(d.join("target"), b"keep me").unwrap();
        std::os::unix::fs::symlink(d.join("target"), d.join("oomguard-link")).unwrap();
        // Not ours: untouched.
        std::fs::write(d.join("other"), b"").unwrap();
        let outcomes = clean(d, false).unwrap();
        let names: Vec<String> = outcomes
            .iter()
            .map(|o| o.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["oomguard-junk", "oomguard-link", "oomguard-x.1.tmp"]
        );
        assert!(
            outcomes.iter().all(|o| o.action == Action::Kept),
            "{outcomes:?}"
        );
        assert!(outcomes[0].reason.contains("not a segment"), "{outcomes:?}");
        assert!(outcomes[1].reason.contains("symbolic link"), "{outcomes:?}");
        assert!(outcomes[2].reason.contains("s old"), "{outcomes:?}");
        for name in [
            "oomguard-junk",
            "oomguard-link",
            "oomguard-x.1.tmp",
            "target",
        ] {
            assert!(d.join(name).symlink_metadata().is_ok(), "{name} removed");
        }
        // An old temporary file of a pid that cannot exist (above pid_max) goes, unless locked.
        let old = d.join("oomguard-x.2147483647.tmp");
        let file = File::create(&old).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        let locked = OpenOptions::new().read(true).open(&old).unwrap();
        assert!(take_lock(&locked, libc::F_RDLCK).unwrap());
        let outcome = &clean(d, false).unwrap()[3];
        assert_eq!(outcome.action, Action::Kept, "{outcome}");
        assert!(outcome.reason.contains("still locked"), "{outcome}");
        drop(locked);
        let outcome = &clean(d, true).unwrap()[3];
        assert_eq!(outcome.action, Action::WouldRemove, "{outcome}");
        assert!(old.exists(), "a dry run removes nothing");
        let outcome = &clean(d, false).unwrap()[3];
        assert_eq!(outcome.action, Action::Removed, "{outcome}");
        assert!(
            outcome.reason.contains("pid 2147483647, which is gone"),
            "{outcome}"
        );
        assert!(!old.exists());
        drop(file);
    }
}
