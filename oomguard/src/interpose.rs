//! The exported allocator functions: glibc's semantics, plus accounting and refusal.
//!
//! Each allocation asks the thread's credit whether it covers the request (one compare), calls
//! glibc, and charges the block's real size. Each free credits the block's size back. Only when
//! the credit runs out or piles up does `guard` touch shared memory. Nothing here allocates,
//! locks, makes a system call on the fast path, or changes `errno` on success.
//!
//! Growth is reserved *before* glibc is called (a block glibc has moved cannot be un-moved), and
//! charged after with the size glibc actually gave, so a failed call needs no undo.

use core::ffi::{c_int, c_void};
use core::ptr::null_mut;

use crate::guard::{self, RELEASE_ABOVE};
use crate::{errno, real, tls};

/// Whether `credit` covers `request` bytes.
#[inline(always)]
fn covered(credit: i64, request: usize) -> bool {
    credit >= 0 && request as u64 <= credit as u64
}

/// Whether the guard is accounting in this process, starting it on first use.
#[inline(always)]
fn accounting() -> bool {
    guard::is_active() || guard::start()
}

/// Accounts one allocation of `request` bytes made by `allocate`.
#[inline(always)]
fn allocate(
    request: usize,
    call: &'static str,
    allocate: impl FnOnce() -> *mut c_void,
) -> *mut c_void {
    if !accounting() {
        return allocate();
    }
    let thread = tls::current();
    // SAFETY: `thread` is this thread's state and the guard is active; nested allocations from
    // the guard's own slow path only move `credit` through the same pointer.
    unsafe {
        if !covered((*thread).credit, request) && !guard::reserve(thread, request, call) {
            errno::set(libc::ENOMEM);
            return null_mut();
        }
        let block = allocate();
        if !block.is_null() {
            (*thread).credit -= real::block_size(block) as i64;
            (*thread).pending_allocations += 1;
        }
        block
    }
}

/// Credits a block that is about to be freed.
///
/// # Safety
/// `block` must be a live glibc block.
#[inline(always)]
unsafe fn credit_freed(block: *mut c_void) {
    if !guard::is_active() {
        return;
    }
    let thread = tls::current();
    // SAFETY: as in `allocate`; the block is live until the caller frees it.
    unsafe {
        (*thread).credit += real::block_size(block) as i64;
        if (*thread).credit > RELEASE_ABOVE {
            guard::release_excess(thread);
        }
    }
}

/// # Safety
/// As C `malloc`.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    // SAFETY: glibc's malloc has no preconditions.
    allocate(size, "malloc", || unsafe { real::malloc(size) })
}

/// # Safety
/// As C `free`: `ptr` is null or a live block from this allocator.
#[no_mangle]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: the caller passes a live block, freed right after.
    unsafe {
        credit_freed(ptr);
        real::free(ptr);
    }
}

/// # Safety
/// As C `calloc`.
#[no_mangle]
pub unsafe extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    let Some(bytes) = count.checked_mul(size) else {
        errno::set(libc::ENOMEM);
        return null_mut();
    };
    // SAFETY: glibc's calloc has no preconditions.
    allocate(bytes, "calloc", || unsafe { real::calloc(count, size) })
}

/// # Safety
/// As C `realloc`: `ptr` is null or a live block from this allocator.
#[no_mangle]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    if ptr.is_null() {
        // SAFETY: realloc(NULL, n) is malloc(n).
        return unsafe { malloc(size) };
    }
    if !accounting() {
        // SAFETY: forwarded contract.
        return unsafe { real::realloc(ptr, size) };
    }
    let thread = tls::current();
    // SAFETY: as in `allocate`; `ptr` is live until glibc's realloc frees or moves it.
    unsafe {
        let old = real::block_size(ptr);
        let growth = size.saturating_sub(old);
        if growth > 0
            && !covered((*thread).credit, growth)
            && !guard::reserve(thread, growth, "realloc")
        {
            errno::set(libc::ENOMEM);
            return null_mut();
        }
        let block = real::realloc(ptr, size);
        if !block.is_null() {
            (*thread).credit += old as i64 - real::block_size(block) as i64;
            (*thread).pending_allocations += 1;
        } else if size == 0 {
            // glibc's realloc(p, 0) frees p and returns NULL.
            (*thread).credit += old as i64;
        }
        if (*thread).credit > RELEASE_ABOVE {
            guard::release_excess(thread);
        }
        block
    }
}

/// # Safety
/// As C `reallocarray`.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(ptr: *mut c_void, count: usize, size: usize) -> *mut c_void {
    let Some(bytes) = count.checked_mul(size) else {
        errno::set(libc::ENOMEM);
        return null_mut();
    };
    // SAFETY: forwarded contract.
    unsafe { realloc(ptr, bytes) }
}

/// # Safety
/// As C `posix_memalign`: `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(
    out: *mut *mut c_void,
    alignment: usize,
    size: usize,
) -> c_int {
    if !alignment.is_power_of_two()
        || !alignment.is_multiple_of(core::mem::size_of::<*mut c_void>())
    {
        return libc::EINVAL;
    }
    // SAFETY: glibc's memalign has no preconditions for a valid alignment.
    let block = allocate(size, "posix_memalign", || unsafe {
        real::memalign(alignment, size)
    });
    if block.is_null() {
        // The result is the return value; errno is ENOMEM too, exactly as glibc leaves it.
        return libc::ENOMEM;
    }
    // SAFETY: the caller passes a writable pointer.
    unsafe { *out = block };
    0
}

/// # Safety
/// As C `aligned_alloc`.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(alignment: usize, size: usize) -> *mut c_void {
    // glibc before 2.38 implements aligned_alloc as memalign; so do we.
    // SAFETY: glibc's memalign has no preconditions.
    allocate(size, "aligned_alloc", || unsafe {
        real::memalign(alignment, size)
    })
}

/// # Safety
/// As C `memalign`.
#[no_mangle]
pub unsafe extern "C" fn memalign(alignment: usize, size: usize) -> *mut c_void {
    // SAFETY: glibc's memalign has no preconditions.
    allocate(size, "memalign", || unsafe {
        real::memalign(alignment, size)
    })
}

/// # Safety
/// As C `valloc`.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    // SAFETY: glibc's valloc has no preconditions.
    allocate(size, "valloc", || unsafe { real::valloc(size) })
}

/// # Safety
/// As C `pvalloc`.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    // SAFETY: glibc's pvalloc has no preconditions.
    allocate(size, "pvalloc", || unsafe { real::pvalloc(size) })
}
