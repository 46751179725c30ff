//! The configuration file: the `OOM_GUARD_*` settings for deployments whose environment never
//! reaches PostgreSQL (Spilo clears it before Patroni starts, Crunchy PGO sets its own
//! `LD_PRELOAD`; with `/etc/ld.so.preload` the guard needs no environment at all).
//!
//! `/etc/oomguard/oomguard.conf` (or `OOM_GUARD_CONFIG`) holds lines `OOM_GUARD_LIMIT=3Gi` with
//! the variables' names and value forms, `#` comments and blank lines; a value may be quoted
//! with `"` or `'`. A variable in the environment overrides the file. It is read once per process
//! image at start-up, into a static buffer (nothing is allocated: this runs inside the first
//! `malloc`).
//!
//! The file is trusted only if it is a regular file owned by root or by the process's user and
//! writable by nobody else; otherwise (like an unreadable or malformed file) it is reported on
//! stderr and the process runs in report mode. A line that is not a setting is reported by its
//! number, never echoed; in a setuid program (where `OOM_GUARD_CONFIG` is ignored with the rest
//! of the environment) only the default file is read, so no user can make the guard print a file
//! they could not read.

use core::cell::UnsafeCell;
use core::ffi::CStr;
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering::Acquire, Ordering::Release};

// The keys a file may set: every `OOM_GUARD_*` setting.
use oomguard_core::config::SETTING_NAMES as KEYS;
use oomguard_core::config_file::{is_trusted, parse_line, Line, CAPACITY, UNTRUSTED};

/// Where the file is read from unless `OOM_GUARD_CONFIG` says otherwise.
pub const DEFAULT_PATH: &CStr = c"/etc/oomguard/oomguard.conf";

/// The file's bytes, rewritten in place so every value is NUL-terminated, and where each key's
/// value starts (0: not set; values never start at offset 0).
struct Store {
    bytes: UnsafeCell<[u8; CAPACITY + 1]>,
    values: [AtomicUsize; KEYS.len()],
}

// SAFETY: written once by the thread that starts the guard, before anything reads it (the
// `values` stores publish it); read-only afterwards.
unsafe impl Sync for Store {}

static STORE: Store = Store {
    bytes: UnsafeCell::new([0; CAPACITY + 1]),
    values: [const { AtomicUsize::new(0) }; KEYS.len()],
};

/// Why the file is not used.
pub enum Problem {
    /// `OOM_GUARD_CONFIG` names a file that does not exist.
    Missing,
    /// open/read/fstat failed with this errno.
    Unreadable(i32),
    /// Larger than [`CAPACITY`].
    TooLarge,
    /// Not a regular file, or owned by someone else, or writable by others.
    Untrusted,
    /// This line is not `KEY=VALUE` with a known key.
    BadLine(usize),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => write!(f, "does not exist"),
            Problem::Unreadable(errno) => {
                // SAFETY: strerror returns a static or thread-local NUL-terminated string.
                let text = unsafe { CStr::from_ptr(libc::strerror(*errno)) };
                write!(f, "cannot be read: {}", text.to_str().unwrap_or("error"))
            }
            Problem::TooLarge => write!(f, "is larger than {CAPACITY} bytes"),
            Problem::Untrusted => f.write_str(UNTRUSTED),
            Problem::BadLine(line) => {
                write!(f, "line {line} is not KEY=VALUE with KEY one of ")?;
                // The setting names, the first in full and the others by their suffix.
                for (index, key) in KEYS.iter().enumerate() {
                    let shown = if index == 0 {
                        key
                    } else {
                        key.strip_prefix("OOM_GUARD").unwrap_or(key)
                    };
                    let separator = if index == 0 { "" } else { ", " };
                    write!(f, "{separator}{shown}")?;
                }
                Ok(())
            }
        }
    }
}

/// Reads and parses the file at `path`. A missing file is no problem unless it was asked for
/// (`explicit`).
///
/// # Safety
/// Only while the guard starts, before anything calls [`value`].
pub unsafe fn load(path: &CStr, explicit: bool) -> Result<(), Problem> {
    // SAFETY: the caller guarantees nobody reads the store concurrently.
    let bytes = unsafe { &mut *STORE.bytes.get() };
    let Some(len) = read(path, bytes, explicit)? else {
        return Ok(());
    };
    let mut found = [0usize; KEYS.len()];
    let mut start = 0;
    let mut line_number = 0;
    while start < len {
        line_number += 1;
        let end = bytes[start..len]
            .iter()
            .position(|&byte| byte == b'\n')
            .map_or(len, |at| start + at);
        match parse_line(&bytes[start..end]) {
            Line::Nothing => {}
            Line::Malformed => return Err(Problem::BadLine(line_number)),
            Line::Setting { key, value } => {
                // Terminated in place: the byte after the value is its closing quote, trailing
                // whitespace, the newline or the NUL after the file. A value never starts at
                // offset 0 (its name comes first), so 0 can stand for "not set".
                bytes[start + value.end] = 0;
                found[key] = start + value.start;
            }
        }
        start = end + 1;
    }
    for (slot, value) in STORE.values.iter().zip(found) {
        slot.store(value, Release);
    }
    Ok(())
}

/// Reads the file into `bytes` (NUL after the end). `None`: no file, and none was asked for.
fn read(
    path: &CStr,
    bytes: &mut [u8; CAPACITY + 1],
    explicit: bool,
) -> Result<Option<usize>, Problem> {
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        let errno = crate::errno::get();
        return match errno {
            libc::ENOENT if explicit => Err(Problem::Missing),
            libc::ENOENT => Ok(None),
            _ => Err(Problem::Unreadable(errno)),
        };
    }
    let result = (|| {
        // SAFETY: an all-zero stat is a valid out-parameter; fd is open.
        let mut stat: libc::stat = unsafe { core::mem::zeroed() };
        // SAFETY: fd is open; `stat` is a valid out-parameter.
        if unsafe { libc::fstat(fd, &mut stat) } != 0 {
            return Err(Problem::Unreadable(crate::errno::get()));
        }
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let regular_file = stat.st_mode & libc::S_IFMT == libc::S_IFREG;
        if !is_trusted(regular_file, stat.st_uid, euid, stat.st_mode) {
            return Err(Problem::Untrusted);
        }
        let mut len = 0;
        loop {
            if len > CAPACITY {
                return Err(Problem::TooLarge);
            }
            // SAFETY: the buffer has room for `CAPACITY + 1 - len` bytes from `len` on.
            let got =
                unsafe { libc::read(fd, bytes[len..].as_mut_ptr().cast(), CAPACITY + 1 - len) };
            match got {
                0 => break,
                n if n > 0 => len += n as usize,
                _ if crate::errno::get() == libc::EINTR => {}
                _ => return Err(Problem::Unreadable(crate::errno::get())),
            }
        }
        if len > CAPACITY {
            return Err(Problem::TooLarge);
        }
        bytes[len] = 0;
        Ok(Some(len))
    })();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    result
}

/// The file's value of `key` (one of [`KEYS`]), if it set one.
pub fn value(key: &str) -> Option<&'static CStr> {
    let index = KEYS.iter().position(|known| *known == key)?;
    let start = STORE.values[index].load(Acquire);
    if start == 0 {
        return None;
    }
    // SAFETY: published by `load` with a NUL at the value's end; never written again.
    let bytes: &'static [u8; CAPACITY + 1] = unsafe { &*STORE.bytes.get() };
    CStr::from_bytes_until_nul(&bytes[start..]).ok()
}
