//! Finding, creating and mapping the shared accounting segment, with system calls only (no
//! allocation: this runs inside the first `malloc` of every guarded process).
//!
//! The segment is `DIR/NAME` with `DIR` = `OOM_GUARD_DIR` (default `/dev/shm`) and `NAME` =
//! `OOM_GUARD_DOMAIN` or `oomguard-<euid>-<hash of /proc/self/cgroup>`: the processes of one
//! container share one cgroup and so one segment, while two instances in different cgroups (or
//! run by different users, who could not open each other's 0600 file) never share by accident.
//!
//! The first process creates the file under a temporary name, sizes and initialises it, and
//! publishes it with `link(2)`, which fails if another process won the race: an attacher never
//! sees a half-written header. Before it creates one, it removes the segments of this user that
//! no live process holds ([`sweep_stale`]): each container restart starts a new PID namespace and
//! so a new domain, and without the sweep the old segments would fill a small segment directory
//! (a 16 MiB emptyDir holds about 31) until the guard had to account privately. A file that
//! exists but does not validate is reported and left alone; the process tree then accounts in a
//! private anonymous shared mapping instead.

use core::ffi::{c_char, CStr};
use core::fmt::{self, Write};

use oomguard_core::fs::FileSystem;
use oomguard_core::layout::{
    initialise, refusal_records_of_len, segment_len, LayoutError, SegmentView, MAX_REFUSAL_RECORDS,
    SLOT_COUNT,
};

use crate::report::Line;

/// A NUL-terminated path built on the stack.
struct PathBuffer {
    bytes: [u8; 512],
    len: usize,
}

impl PathBuffer {
    fn new() -> PathBuffer {
        PathBuffer {
            bytes: [0; 512],
            len: 0,
        }
    }

    fn push(&mut self, part: &[u8]) -> bool {
        if self.len + part.len() >= self.bytes.len() {
            return false;
        }
        self.bytes[self.len..self.len + part.len()].copy_from_slice(part);
        self.len += part.len();
        self.bytes[self.len] = 0;
        true
    }

    fn as_ptr(&self) -> *const c_char {
        self.bytes.as_ptr().cast()
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("<non-UTF-8 path>")
    }
}

impl Write for PathBuffer {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if self.push(text.as_bytes()) {
            Ok(())
        } else {
            Err(fmt::Error)
        }
    }
}

/// Why the shared segment could not be used.
enum AttachError {
    System(&'static str, i32),
    Layout(LayoutError),
    PathTooLong,
    /// The file is not one this process could have created: someone else may control it.
    Untrusted(Untrusted),
    /// The file was removed or replaced between our open and our lock: open it again.
    Unlinked,
}

/// What makes an existing segment file untrustworthy. Another user who can plant the file could
/// set the limit to one byte (every backend refused) or truncate it (SIGBUS in every process).
enum Untrusted {
    NotRegular,
    Owner { uid: u32, euid: u32 },
    Mode(u32),
    Size { found: i64 },
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Untrusted::NotRegular => write!(f, "not a regular file"),
            Untrusted::Owner { uid, euid } => {
                write!(f, "owned by uid {uid}, not by this process's uid {euid}")
            }
            Untrusted::Mode(mode) => write!(
                f,
                "mode {mode:04o} gives other users access (the guard creates it 0600)"
            ),
            Untrusted::Size { found } => write!(
                f,
                "{found} bytes, a segment of this build has {} plus {} per refusal record (at \
                 most {MAX_REFUSAL_RECORDS})",
                segment_len(SLOT_COUNT, 0),
                segment_len(SLOT_COUNT, 1) - segment_len(SLOT_COUNT, 0),
            ),
        }
    }
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachError::System(call, errno) => {
                // SAFETY: strerror returns a static or thread-local NUL-terminated string.
                let text = unsafe { CStr::from_ptr(libc::strerror(*errno)) };
                write!(f, "{call}: {}", text.to_str().unwrap_or("error"))
            }
            AttachError::Layout(error) => write!(f, "{error}"),
            AttachError::PathTooLong => write!(f, "the path is too long"),
            AttachError::Untrusted(why) => write!(f, "untrusted file: {why}; not attached"),
            AttachError::Unlinked => write!(f, "the file was replaced while attaching"),
        }
    }
}

fn last_error(call: &'static str) -> AttachError {
    AttachError::System(call, crate::errno::get())
}

/// Maps the domain's segment, creating it if needed with room for `refusal_records` records (a
/// segment that exists keeps its own number); falls back to a private segment (and says so on
/// stderr) when the shared one cannot be used. The mapping is never unmapped, so the view lives
/// as long as the process. `None` only when not even a private segment (about 641 KiB with 256
/// refusal records) can be mapped.
pub fn attach(
    dir: &CStr,
    domain: Option<&CStr>,
    refusal_records: u32,
) -> Option<SegmentView<'static>> {
    let mut path = PathBuffer::new();
    let built = path.push(dir.to_bytes())
        && path.push(b"/")
        && match domain {
            Some(name) => path.push(name.to_bytes()),
            None => write!(path, "oomguard-{}-{:016x}", euid(), domain_hash()).is_ok(),
        };
    let result = if built {
        open_or_create(&path, refusal_records)
    } else {
        Err(AttachError::PathTooLong)
    };
    match result {
        Ok(view) => Some(view),
        Err(error) => {
            let mut line = Line::new();
            let _ = write!(
                line,
                "cannot use the shared segment {} ({error}); accounting this process and its \
                 children privately. Set OOM_GUARD_DIR to a writable directory to share",
                path.as_str()
            );
            line.emit();
            private_segment(refusal_records)
        }
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// FNV-1a of `/proc/self/cgroup` and of the PID namespace: the same for every process of one
/// container. The namespace matters because containers of one pod share `/dev/shm` and, with a
/// private cgroup namespace, all read `0::/`; their pids (which reaping relies on) would clash.
fn domain_hash() -> u64 {
    let mut buffer = [0u8; 2048];
    let len = crate::sysfs::SysFs::new(&crate::sysfs::REAL_ROOT)
        .read(b"/proc/self/cgroup", &mut buffer)
        .unwrap_or(0);
    buffer[..len]
        .iter()
        .chain(&pid_namespace().to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Inode of this process's PID namespace (`/proc/self/ns/pid`), 0 if unknown.
pub fn pid_namespace() -> u64 {
    // SAFETY: an all-zero stat is a valid out-parameter.
    let mut stat: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a writable stat.
    if unsafe { libc::stat(c"/proc/self/ns/pid".as_ptr(), &mut stat) } == 0 {
        stat.st_ino
    } else {
        0
    }
}

fn open_or_create(
    path: &PathBuffer,
    refusal_records: u32,
) -> Result<SegmentView<'static>, AttachError> {
    // A retry when the segment was created by someone else meanwhile, or removed (`oomguard
    // clean`) between our open and our lock.
    for _ in 0..4 {
        // SAFETY: the path is NUL-terminated.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        if fd >= 0 {
            let result = map_existing(fd, path);
            // SAFETY: fd is ours; the mapping (and with it the lock) survives its closing.
            unsafe { libc::close(fd) };
            match result {
                Err(AttachError::Unlinked) => continue,
                result => return result,
            }
        }
        if crate::errno::get() != libc::ENOENT {
            return Err(last_error("open"));
        }
        match create(path, refusal_records) {
            Ok(view) => return Ok(view),
            // Another process published the segment first: open theirs.
            Err(AttachError::System(_, libc::EEXIST)) => continue,
            Err(error) => return Err(error),
        }
    }
    Err(AttachError::System("open", libc::ENOENT))
}

/// Takes (or converts to) an open-file-description lock of `kind` on the whole file, without
/// waiting. Returns false when another holder's lock conflicts (or on error).
///
/// Every guarded process holds a read lock on its segment for as long as it maps it: the lock
/// belongs to the open file description, which the mapping keeps alive after the descriptor is
/// closed and which forked children share, and the kernel drops it when the last process
/// holding the mapping exits or execs, however it ends. So a segment nobody holds a read lock on
/// has no live process: it is stale. `oomguard status` tests that with `F_OFD_GETLK`, `oomguard
/// clean` removes such files under a write lock, and a guarded process that finds one resets it.
fn lock(fd: i32, kind: i32) -> bool {
    // SAFETY: an all-zero flock is a valid argument (whole file from offset 0); l_pid must be
    // 0 for OFD locks.
    let mut request: libc::flock = unsafe { core::mem::zeroed() };
    request.l_type = kind as i16;
    request.l_whence = libc::SEEK_SET as i16;
    // SAFETY: fd is open, request is a valid flock.
    unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &mut request) == 0 }
}

/// Takes the read lock every attached process holds, waiting out a process that resets a stale
/// segment under the write lock (microseconds; given up after about a second).
fn share_lock(fd: i32) -> Result<(), AttachError> {
    for _ in 0..1000 {
        if lock(fd, libc::F_RDLCK) {
            return Ok(());
        }
        let error = crate::errno::get();
        if error != libc::EAGAIN && error != libc::EACCES {
            return Err(AttachError::System("fcntl(F_OFD_SETLK)", error));
        }
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        // SAFETY: a valid timespec; an interrupted sleep just retries sooner.
        unsafe { libc::nanosleep(&pause, core::ptr::null_mut()) };
    }
    Err(AttachError::System("fcntl(F_OFD_SETLK)", libc::EAGAIN))
}

/// Whether `fd` is still the file `path` names (not unlinked or replaced since we opened it).
fn still_named(fd: i32, path: &PathBuffer) -> bool {
    // SAFETY: all-zero stats are valid out-parameters; fd is open, path NUL-terminated.
    unsafe {
        let mut opened: libc::stat = core::mem::zeroed();
        let mut named: libc::stat = core::mem::zeroed();
        libc::fstat(fd, &mut opened) == 0
            && libc::lstat(path.as_ptr(), &mut named) == 0
            && opened.st_dev == named.st_dev
            && opened.st_ino == named.st_ino
    }
}

fn map_existing(fd: i32, path: &PathBuffer) -> Result<SegmentView<'static>, AttachError> {
    let len = check_trusted(fd)?;
    // Alone on it (nobody holds a read lock): a stale segment, left by processes that are all
    // gone (a stopped server, a restarted container). It is reset below, under this lock.
    let stale = lock(fd, libc::F_WRLCK);
    if !stale {
        share_lock(fd)?;
    }
    if !still_named(fd, path) {
        return Err(AttachError::Unlinked);
    }
    allocate_pages(fd, len)?;
    let view = map(fd, len)?;
    if stale {
        reset(view);
        // Converting the write lock to a read lock is atomic: nobody can slip in between.
        if !lock(fd, libc::F_RDLCK) {
            return Err(last_error("fcntl(F_OFD_SETLK)"));
        }
    }
    Ok(view)
}

/// Starts a stale segment afresh, as if just created: its slots name dead processes (perhaps
/// of another PID namespace, whose pids nobody here could judge), its peak and counters belong
/// to a finished run. Only a segment of this layout is reset; anything else was refused by
/// [`map`] already. The refusal records are kept, with the count and time they are numbered
/// from: what was refused before a restart is what an operator asks about after it.
fn reset(view: SegmentView<'static>) {
    use core::sync::atomic::Ordering::Relaxed;
    let base = view.header as *const oomguard_core::Header as *mut u8;
    let stats = &view.header.stats;
    let records = view.records.len() as u32;
    let (numbered, last_refusal) = (
        stats.refusal_records.load(Relaxed),
        stats.last_refusal_unix_ns.load(Relaxed),
    );
    let len = segment_len(view.header.slot_count, 0);
    // SAFETY: we hold the only lock on the file, so no guarded process uses the mapping; its
    // header and slots (`len` bytes) are writable. Readers (the CLI) only read, and see a fresh
    // segment.
    unsafe {
        core::ptr::write_bytes(base, 0, len);
        initialise(base, SLOT_COUNT, records, libc::getpid() as u32);
    }
    stats.refusal_records.store(numbered, Relaxed);
    stats.last_refusal_unix_ns.store(last_refusal, Relaxed);
    record_pid_namespace(base.cast());
}

/// Checks, before anything is mapped, that an existing segment file is one this process could
/// have created itself: a regular file of our effective uid, with no group or other permission,
/// of a size this build gives segments (slots and a whole number of refusal records). Returns
/// its size.
fn check_trusted(fd: i32) -> Result<usize, AttachError> {
    // SAFETY: an all-zero stat is a valid out-parameter.
    let mut stat: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: fd is open and stat is writable.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return Err(last_error("fstat"));
    }
    let untrusted = if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
        Untrusted::NotRegular
    } else if stat.st_uid != euid() {
        Untrusted::Owner {
            uid: stat.st_uid,
            euid: euid(),
        }
    } else if stat.st_mode & 0o077 != 0 {
        Untrusted::Mode(stat.st_mode & 0o7777)
    } else if let Some(records) = refusal_records_of_len(SLOT_COUNT, stat.st_size as u64) {
        return Ok(segment_len(SLOT_COUNT, records));
    } else {
        Untrusted::Size {
            found: stat.st_size,
        }
    };
    Err(AttachError::Untrusted(untrusted))
}

/// Gives the first `len` bytes of `fd` real pages now. A tmpfs file sized with `ftruncate`
/// alone gets its pages on first touch, and a touch that finds the file system full is a
/// SIGBUS: in the postmaster that stops the server. (`/dev/shm` is 64 MiB in Docker and
/// Kubernetes, shared with PostgreSQL's parallel-query segments; PostgreSQL allocates those up
/// front for the same reason.)
fn allocate_pages(fd: i32, len: usize) -> Result<(), AttachError> {
    // fallocate(2) directly: our own `posix_fallocate` export is PostgreSQL's DSM hook.
    // SAFETY: fd is open for writing; mode 0 only allocates, it never changes the contents.
    if unsafe { libc::fallocate(fd, 0, 0, len as libc::off_t) } == 0 {
        return Ok(());
    }
    if crate::errno::get() != libc::EOPNOTSUPP {
        return Err(last_error("fallocate"));
    }
    // A file system without fallocate: write the pages instead (zeros over a zero-filled new
    // file, or over holes of an existing one; only bytes that read as zero are rewritten).
    let zeros = [0u8; 4096];
    let mut page = [0u8; 4096];
    let mut offset = 0;
    while offset < len {
        let chunk = zeros.len().min(len - offset);
        // SAFETY: `page` is writable for `chunk` bytes.
        let read = unsafe { libc::pread(fd, page.as_mut_ptr().cast(), chunk, offset as i64) };
        if read != chunk as isize {
            return Err(last_error("pread"));
        }
        if page[..chunk] == zeros[..chunk] {
            // SAFETY: `zeros` is readable for `chunk` bytes.
            let written = unsafe { libc::pwrite(fd, zeros.as_ptr().cast(), chunk, offset as i64) };
            if written != chunk as isize {
                return Err(last_error("pwrite"));
            }
        }
        offset += chunk;
    }
    Ok(())
}

/// A read-write shared mapping of the first `len` bytes of `fd`.
fn map_shared(fd: i32, len: usize) -> Result<*mut libc::c_void, AttachError> {
    // SAFETY: a fresh shared mapping of an open file; failure is checked.
    let base = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(last_error("mmap"));
    }
    Ok(base)
}

/// Maps `len` bytes of `fd` and validates them.
fn map(fd: i32, len: usize) -> Result<SegmentView<'static>, AttachError> {
    let needed = core::mem::size_of::<oomguard_core::Header>();
    if len < needed {
        return Err(AttachError::Layout(LayoutError::Truncated {
            found: len,
            needed,
        }));
    }
    let base = map_shared(fd, len)?;
    // SAFETY: the mapping is `len` bytes, page-aligned, and is never unmapped.
    let bytes: &'static [u8] = unsafe { core::slice::from_raw_parts(base as *const u8, len) };
    SegmentView::new(bytes).map_err(|error| {
        // SAFETY: nothing refers to the rejected mapping.
        unsafe { libc::munmap(base, len) };
        AttachError::Layout(error)
    })
}

fn create(path: &PathBuffer, refusal_records: u32) -> Result<SegmentView<'static>, AttachError> {
    sweep_stale(path);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut temporary = PathBuffer::new();
    if !temporary.push(&path.bytes[..path.len]) || write!(temporary, ".{pid}.tmp").is_err() {
        return Err(AttachError::PathTooLong);
    }
    let open_new = || {
        // SAFETY: the path is NUL-terminated.
        unsafe {
            libc::open(
                temporary.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0o600,
            )
        }
    };
    let mut fd = open_new();
    if fd < 0 && crate::errno::get() == libc::EEXIST {
        // Left by a process with our pid that died while creating (pids repeat after a
        // container restart): the name has our pid, so nobody else can be using it.
        // SAFETY: the path is NUL-terminated.
        unsafe { libc::unlink(temporary.as_ptr()) };
        fd = open_new();
    }
    if fd < 0 {
        return Err(last_error("create"));
    }
    let len = segment_len(SLOT_COUNT, refusal_records);
    let result = (|| {
        // SAFETY: fd is open for writing.
        if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
            return Err(last_error("ftruncate"));
        }
        // Before the file is published: a full file system leaves no half-usable segment.
        allocate_pages(fd, len)?;
        let base = map_shared(fd, len)?;
        // SAFETY: the file is new, zero-filled by ftruncate, sized and not yet published.
        unsafe { initialise(base as *mut u8, SLOT_COUNT, refusal_records, pid as u32) };
        record_pid_namespace(base);
        // Live from the moment it is published (see `lock`).
        if !lock(fd, libc::F_RDLCK) {
            let error = last_error("fcntl(F_OFD_SETLK)");
            // SAFETY: the mapping is ours and unpublished.
            unsafe { libc::munmap(base, len) };
            return Err(error);
        }
        // SAFETY: both paths are NUL-terminated.
        if unsafe { libc::link(temporary.as_ptr(), path.as_ptr()) } != 0 {
            let error = last_error("link");
            // SAFETY: the mapping is ours and unpublished.
            unsafe { libc::munmap(base, len) };
            return Err(error);
        }
        // SAFETY: the mapping is `len` bytes and never unmapped.
        let bytes: &'static [u8] = unsafe { core::slice::from_raw_parts(base as *const u8, len) };
        SegmentView::new(bytes).map_err(AttachError::Layout)
    })();
    // SAFETY: the temporary name and fd are ours.
    unsafe {
        libc::unlink(temporary.as_ptr());
        libc::close(fd);
    }
    result
}

/// Most directory entries looked at, and most stale segments removed, by one sweep.
const SWEEP_ENTRIES: usize = 4096;
const SWEEP_REMOVALS: usize = 64;

/// Removes, from the directory of `path`, the segments of this user's other domains that no live
/// process holds: files named `oomguard-<euid>-…` (not temporary ones), of this build's size and
/// mode, on which a write lock can be taken (every guarded process holds a read lock on its
/// segment until it exits, however it ends; see [`lock`]). The file is unlinked under that lock,
/// as `oomguard clean` does: a process opening it meanwhile waits for the lock, then finds the
/// name gone and starts over. Anything else is left alone. System calls only, nothing
/// allocated; a failure just ends the sweep.
fn sweep_stale(path: &PathBuffer) {
    let Some(slash) = path.bytes[..path.len].iter().rposition(|&b| b == b'/') else {
        return;
    };
    let mut dir = PathBuffer::new();
    let own_name = &path.bytes[slash + 1..path.len];
    let mut prefix = PathBuffer::new();
    if !dir.push(&path.bytes[..slash.max(1)]) || write!(prefix, "oomguard-{}-", euid()).is_err() {
        return;
    }
    // SAFETY: a NUL-terminated path.
    let dir_fd = unsafe {
        libc::open(
            dir.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir_fd < 0 {
        return;
    }
    let mut buffer = [0u8; 4096];
    let (mut seen, mut removed) = (0, 0);
    'read: loop {
        // SAFETY: a directory fd and a writable buffer of that length.
        let got = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir_fd,
                buffer.as_mut_ptr(),
                buffer.len(),
            )
        };
        if got <= 0 {
            break;
        }
        let mut at = 0;
        while at + 19 < got as usize {
            // linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name[].
            let record_len = usize::from(u16::from_ne_bytes([buffer[at + 16], buffer[at + 17]]));
            if record_len == 0 || at + record_len > got as usize {
                break 'read;
            }
            let name_bytes = &buffer[at + 19..at + record_len];
            let name = &name_bytes[..name_bytes.iter().position(|&b| b == 0).unwrap_or(0)];
            at += record_len;
            seen += 1;
            if seen > SWEEP_ENTRIES || removed >= SWEEP_REMOVALS {
                break 'read;
            }
            if !name.starts_with(&prefix.bytes[..prefix.len])
                || name.ends_with(b".tmp")
                || name == own_name
            {
                continue;
            }
            let mut candidate = PathBuffer::new();
            if candidate.push(&dir.bytes[..dir.len]) && candidate.push(b"/") && candidate.push(name)
            {
                removed += usize::from(remove_if_stale(&candidate));
            }
        }
    }
    // SAFETY: our fd.
    unsafe { libc::close(dir_fd) };
}

/// Unlinks the segment at `path` if it is one of ours that no live process holds.
fn remove_if_stale(path: &PathBuffer) -> bool {
    // SAFETY: a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return false;
    }
    let stale = check_trusted(fd).is_ok() && lock(fd, libc::F_WRLCK) && still_named(fd, path);
    // SAFETY: a NUL-terminated path; we hold the write lock, so no live process uses the file.
    let removed = stale && unsafe { libc::unlink(path.as_ptr()) } == 0;
    // SAFETY: our fd; closing it drops the lock.
    unsafe { libc::close(fd) };
    removed
}

/// Records the creator's PID namespace in a freshly initialised, unpublished segment.
fn record_pid_namespace(base: *mut libc::c_void) {
    // SAFETY: `base` is an initialised segment of at least a header's size, mapped writable.
    let header = unsafe { &*(base as *const oomguard_core::Header) };
    header
        .pid_namespace
        .store(pid_namespace(), core::sync::atomic::Ordering::Relaxed);
}

/// An anonymous shared mapping: shared with forked children, invisible to the CLI.
fn private_segment(refusal_records: u32) -> Option<SegmentView<'static>> {
    let len = segment_len(SLOT_COUNT, refusal_records);
    // SAFETY: a fresh anonymous mapping; failure is checked.
    let base = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: zeroed, page-aligned, sized, private to us; getpid has no preconditions.
    unsafe {
        initialise(
            base as *mut u8,
            SLOT_COUNT,
            refusal_records,
            libc::getpid() as u32,
        )
    };
    record_pid_namespace(base);
    // SAFETY: the mapping is `len` bytes and never unmapped.
    let bytes: &'static [u8] = unsafe { core::slice::from_raw_parts(base as *const u8, len) };
    SegmentView::new(bytes).ok()
}
