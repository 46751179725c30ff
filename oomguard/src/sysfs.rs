//! The core's [`FileSystem`] over raw `open`/`read`/`close`, for reading `/proc` and the cgroup
//! files from inside malloc: paths are built on the stack, nothing is allocated, and every file
//! is closed when its handle drops.

use core::cell::UnsafeCell;
use core::ffi::CStr;
use core::sync::atomic::{AtomicUsize, Ordering::Acquire, Ordering::Release};

use oomguard_core::fs::{FileSystem, ReadError, ReadFile};

/// Longest `OOM_GUARD_CGROUP_ROOT` kept (a longer one is reported and ignored).
pub const ROOT_CAPACITY: usize = 256;
const PATH_CAPACITY: usize = ROOT_CAPACITY + oomguard_core::cgroup::PATH_CAPACITY + 1;

/// A copy of the root directory, taken at start-up: PostgreSQL overwrites the environment's
/// memory with process titles later, so the environment's own string cannot be kept.
pub struct Root {
    bytes: UnsafeCell<[u8; ROOT_CAPACITY]>,
    len: AtomicUsize,
}

// SAFETY: written once by the thread that starts the guard, before any reader can see the guard
// active (the `len` store is the publication); read-only afterwards.
unsafe impl Sync for Root {}

impl Root {
    /// An empty root (the real `/`).
    pub const fn new() -> Root {
        Root {
            bytes: UnsafeCell::new([0; ROOT_CAPACITY]),
            len: AtomicUsize::new(0),
        }
    }

    /// Keeps `root` (without a trailing `/`). Returns false if it is too long.
    ///
    /// # Safety
    /// Only while the guard starts, before other threads read it.
    pub unsafe fn set(&self, root: &CStr) -> bool {
        let mut root = root.to_bytes();
        while let [rest @ .., b'/'] = root {
            root = rest;
        }
        if root.len() > ROOT_CAPACITY {
            return false;
        }
        // SAFETY: the caller guarantees nobody reads concurrently.
        unsafe { (&mut *self.bytes.get())[..root.len()].copy_from_slice(root) };
        self.len.store(root.len(), Release);
        true
    }

    fn as_bytes(&self) -> &[u8] {
        let len = self.len.load(Acquire);
        // SAFETY: the first `len` bytes were written before `len` was published and never change.
        unsafe { &(&*self.bytes.get())[..len] }
    }
}

/// The real `/` (an empty root).
pub static REAL_ROOT: Root = Root::new();

/// Files below a [`Root`].
pub struct SysFs<'a> {
    root: &'a Root,
}

impl<'a> SysFs<'a> {
    /// Files below `root`.
    pub fn new(root: &'a Root) -> SysFs<'a> {
        SysFs { root }
    }
}

/// An open file descriptor, closed on drop.
pub struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

impl ReadFile for Fd {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        loop {
            // SAFETY: `buf` is valid for `buf.len()` bytes.
            let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let errno = crate::errno::get();
            if errno != libc::EINTR {
                return Err(ReadError::Unreadable { errno });
            }
        }
    }
}

impl FileSystem for SysFs<'_> {
    type File = Fd;

    fn open(&self, path: &[u8]) -> Result<Fd, ReadError> {
        let root = self.root.as_bytes();
        let mut full = [0u8; PATH_CAPACITY];
        let len = root.len() + path.len();
        if len >= full.len() || path.contains(&0) {
            return Err(ReadError::Unreadable {
                errno: libc::ENAMETOOLONG,
            });
        }
        full[..root.len()].copy_from_slice(root);
        full[root.len()..len].copy_from_slice(path);
        // SAFETY: `full` is NUL-terminated (zeroed past `len`).
        let fd = unsafe { libc::open(full.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd >= 0 {
            return Ok(Fd(fd));
        }
        match crate::errno::get() {
            libc::ENOENT | libc::ENOTDIR => Err(ReadError::Missing),
            errno => Err(ReadError::Unreadable { errno }),
        }
    }
}
