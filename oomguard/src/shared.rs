//! PostgreSQL's shared memory, which never passes through malloc but is charged to the cgroup:
//!
//! - The main segment (`shared_buffers` and friends) is one large shared anonymous `mmap` by the
//!   postmaster: observed here and subtracted from a derived limit.
//! - Dynamic shared memory (parallel query) lives in `/dev/shm/PostgreSQL.*` files that a backend
//!   sizes with `ftruncate` and `posix_fallocate`: charged to the pool before the file grows, under
//!   the same refusal policy as malloc (refused with `ENOSPC`, which PostgreSQL reports as
//!   `ERROR: could not resize shared memory segment …: No space left on device`), and credited
//!   back by `shm_unlink`.
//!
//! Other files and mappings pass through untouched (one flag test for `mmap`; one `readlink` of
//! the descriptor for `ftruncate`/`posix_fallocate`, which are rare calls).

use core::ffi::{c_char, c_int, c_void, CStr};
use core::fmt::Write;
use core::sync::atomic::{AtomicPtr, Ordering::Relaxed};

use crate::report::Buffer;
use crate::{errno, guard};

/// Shared anonymous mappings smaller than this are not PostgreSQL's main segment.
const MAIN_SEGMENT_MIN: usize = 8 << 20;
/// Where POSIX shared memory objects live, and the prefix of PostgreSQL's.
const SHM_DIR: &[u8] = b"/dev/shm";
const DSM_PREFIX: &[u8] = b"/PostgreSQL.";

extern "C" {
    #[link_name = "ftruncate64"]
    fn real_ftruncate(fd: c_int, length: libc::off_t) -> c_int;
    #[link_name = "posix_fallocate64"]
    fn real_posix_fallocate(fd: c_int, offset: libc::off_t, len: libc::off_t) -> c_int;
}

/// # Safety
/// As C `mmap`.
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: libc::off_t,
) -> *mut c_void {
    // glibc's mmap is this system call (the kernel does the argument checks glibc would).
    // SAFETY: forwarded contract; `syscall` sets errno on failure as glibc's mmap does.
    let mapped = unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, offset) };
    let shared_anonymous = libc::MAP_SHARED | libc::MAP_ANONYMOUS;
    if mapped != -1 && flags & shared_anonymous == shared_anonymous && len >= MAIN_SEGMENT_MIN {
        guard::observe_shared_mapping(len as u64, flags & libc::MAP_HUGETLB != 0);
    }
    mapped as *mut c_void
}

/// # Safety
/// As C `mmap64` (the same function on 64-bit Linux).
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: libc::off_t,
) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { mmap(addr, len, prot, flags, fd, offset) }
}

/// The current size of `fd` if it is one of PostgreSQL's dynamic shared memory segments.
fn dsm_size(fd: c_int) -> Option<u64> {
    let mut link = [0u8; 48];
    let mut writer = Buffer::new(&mut link);
    write!(writer, "/proc/self/fd/{fd}\0").ok()?;
    let mut target = [0u8; 256];
    // SAFETY: both buffers are valid; readlink does not NUL-terminate, we use its length.
    let len = unsafe {
        libc::readlink(
            link.as_ptr().cast(),
            target.as_mut_ptr().cast(),
            target.len(),
        )
    };
    let target = target.get(..usize::try_from(len).ok()?)?;
    let name = target.strip_prefix(SHM_DIR)?;
    if !name.starts_with(DSM_PREFIX) {
        return None;
    }
    // SAFETY: an all-zero stat is a valid out-parameter.
    let mut stat: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: fd is the caller's, stat writable.
    (unsafe { libc::fstat(fd, &mut stat) } == 0).then_some(stat.st_size as u64)
}

/// Charges growth from `old` to `new` bytes; returns the growth charged (0 if none), or `None`
/// when refused.
fn charge_growth(old: u64, new: u64, call: &'static str) -> Option<u64> {
    let growth = new.saturating_sub(old);
    if growth == 0 || guard::reserve_shared(growth, call) {
        Some(growth)
    } else {
        None
    }
}

/// # Safety
/// As C `ftruncate`.
#[no_mangle]
pub unsafe extern "C" fn ftruncate(fd: c_int, length: libc::off_t) -> c_int {
    let saved = errno::get();
    let Some(old) = (length >= 0 && guard::active_or_started())
        .then(|| dsm_size(fd))
        .flatten()
    else {
        errno::set(saved);
        // SAFETY: forwarded contract.
        return unsafe { real_ftruncate(fd, length) };
    };
    errno::set(saved);
    let new = length as u64;
    let Some(charged) = charge_growth(old, new, "ftruncate") else {
        errno::set(libc::ENOSPC);
        return -1;
    };
    // SAFETY: forwarded contract.
    let result = unsafe { real_ftruncate(fd, length) };
    if result != 0 {
        guard::release_shared(charged);
    } else if new < old {
        guard::release_shared(old - new);
    }
    result
}

/// # Safety
/// As C `posix_fallocate`.
#[no_mangle]
pub unsafe extern "C" fn posix_fallocate(
    fd: c_int,
    offset: libc::off_t,
    len: libc::off_t,
) -> c_int {
    let saved = errno::get();
    let old = (offset >= 0 && len > 0 && guard::active_or_started())
        .then(|| dsm_size(fd))
        .flatten();
    errno::set(saved);
    let Some(old) = old else {
        // SAFETY: forwarded contract.
        return unsafe { real_posix_fallocate(fd, offset, len) };
    };
    let new = (offset as u64).saturating_add(len as u64);
    let Some(charged) = charge_growth(old, new, "posix_fallocate") else {
        return libc::ENOSPC; // posix_fallocate reports through its result, errno untouched
    };
    // SAFETY: forwarded contract.
    let result = unsafe { real_posix_fallocate(fd, offset, len) };
    if result != 0 {
        guard::release_shared(charged);
    }
    result
}

/// glibc's `shm_unlink`, found once with `dlsym(RTLD_NEXT)` (this is not a malloc path, so the
/// allocation dlsym may make is fine).
static REAL_SHM_UNLINK: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());

/// # Safety
/// As C `shm_unlink`.
#[no_mangle]
pub unsafe extern "C" fn shm_unlink(name: *const c_char) -> c_int {
    let mut real = REAL_SHM_UNLINK.load(Relaxed);
    if real.is_null() {
        // SAFETY: a NUL-terminated name; RTLD_NEXT finds the next definition after ours.
        real = unsafe { libc::dlsym(libc::RTLD_NEXT, c"shm_unlink".as_ptr()) };
        if real.is_null() {
            errno::set(libc::ENOSYS);
            return -1;
        }
        REAL_SHM_UNLINK.store(real, Relaxed);
    }
    // SAFETY: the symbol is glibc's `int shm_unlink(const char *)`.
    let real: unsafe extern "C" fn(*const c_char) -> c_int = unsafe { core::mem::transmute(real) };
    // SAFETY: the caller passes a NUL-terminated name (or null, which glibc rejects itself).
    let size = (!name.is_null() && guard::is_active())
        .then(|| dsm_file_size(unsafe { CStr::from_ptr(name) }))
        .flatten();
    // SAFETY: forwarded contract.
    let result = unsafe { real(name) };
    if let (0, Some(size)) = (result, size) {
        guard::release_shared(size);
    }
    result
}

/// The size of `/dev/shm/NAME` if NAME is one of PostgreSQL's dynamic shared memory segments.
fn dsm_file_size(name: &CStr) -> Option<u64> {
    let name = name.to_bytes();
    if !name.starts_with(DSM_PREFIX) {
        return None;
    }
    let mut path = [0u8; 256];
    let len = SHM_DIR.len() + name.len();
    if len >= path.len() {
        return None;
    }
    path[..SHM_DIR.len()].copy_from_slice(SHM_DIR);
    path[SHM_DIR.len()..len].copy_from_slice(name);
    let saved = errno::get();
    // SAFETY: an all-zero stat is a valid out-parameter; `path` is NUL-terminated.
    let mut stat: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    let found = unsafe { libc::stat(path.as_ptr().cast(), &mut stat) } == 0;
    errno::set(saved);
    found.then_some(stat.st_size as u64)
}
