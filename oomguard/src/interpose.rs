//! The exported allocator functions: glibc's semantics, plus accounting and refusal.
//!
//! Each allocation asks the thread's credit whether it covers the request (one compare), calls
//! glibc, and charges the block's real size. Each free credits the block's size back. Only when
//! the credit runs out or piles up does `guard` touch shared memory. Nothing here allocates,
//! locks, or makes a system call on the fast path, and no successful call changes `errno` (the
//! slow paths save and restore it around their system calls).
//!
//! Growth is reserved *before* glibc is called (a block glibc has moved cannot be un-moved), and
//! charged after with the size glibc actually gave, so a failed call needs no undo.

use core::ffi::{c_int, c_void};
use core::ptr::null_mut;

use crate::guard::{self, RELEASE_ABOVE};
use crate::tls::Local;
use crate::{errno, real, tls};

/// Whether `credit` covers `request` bytes. One signed compare: a request of 2^63 bytes or more
/// wraps negative and reads as covered, which is harmless because glibc refuses it anyway (and a
/// refused call charges nothing).
#[inline(always)]
fn covered(credit: i64, request: usize) -> bool {
    credit >= request as i64
}

/// Accounts one allocation of `request` bytes made by `allocate`.
///
/// The fast path reads no global state, only the thread's credit: a thread has credit only from
/// reservations made while the guard is active, or from frees, and moving the credit of a thread
/// that is not accounting (off mode, before start, after exit) touches nothing shared. The
/// state's offset (one load, see `tls::Local`) stays across the call into glibc in the
/// callee-saved register that `malloc` pushes anyway to align the stack for that call.
/// Everything else is in [`allocate_slowly`].
#[inline(always)]
fn allocate(
    request: usize,
    call: &'static str,
    allocate: impl FnOnce() -> *mut c_void,
) -> *mut c_void {
    if !Local::get().covers(request) {
        return allocate_slowly(request, call, allocate);
    }
    let block = allocate();
    if !block.is_null() {
        // SAFETY: a live block from glibc; the state is this thread's.
        unsafe { Local::get().charge(real::block_size(block)) };
    }
    block
}

/// An allocation the credit does not cover, or one made before the guard started or in off mode.
#[cold]
#[inline(never)]
fn allocate_slowly(
    request: usize,
    call: &'static str,
    allocate: impl FnOnce() -> *mut c_void,
) -> *mut c_void {
    if !guard::active_or_started() {
        return allocate();
    }
    let thread = tls::current();
    // SAFETY: `thread` is this thread's state and the guard is active; nested allocations from
    // the guard's own slow path only move the same `credit` (through `%fs` on x86_64), between
    // our reads of it, never during one.
    unsafe {
        if !covered((*thread).credit, request) && !guard::reserve(thread, request, call) {
            errno::set(libc::ENOMEM);
            return null_mut();
        }
        let block = allocate();
        if block.is_null() {
            not_served(thread, 0);
        } else {
            Local::get().charge(real::block_size(block));
            guard::record_peaks();
        }
        block
    }
}

/// After glibc returned NULL on a slow path: the credit takes back the `freed` bytes the failed
/// call released anyway, and what was reserved for the request goes back to the pool at once,
/// or a never-refused process asking for 2^45 bytes would hold them until its next free (and
/// every refusable process of the domain would be refused meanwhile).
///
/// # Safety
/// `thread` must be the calling thread's state.
unsafe fn not_served(thread: *mut tls::ThreadState, freed: usize) {
    // SAFETY: forwarded contract.
    unsafe {
        (*thread).credit += freed as i64;
        if (*thread).credit > RELEASE_ABOVE {
            guard::release_excess(thread);
        }
    }
}

/// Frees a block after its credit pushed the thread past [`RELEASE_ABOVE`]. Takes the block
/// alone, in the register `free` received it in, and looks the thread's state up again: passing
/// both made `free` shuffle its argument into another register and back on every call (two of
/// its instructions).
///
/// # Safety
/// `block` must be a live glibc block.
#[cold]
#[inline(never)]
unsafe fn free_and_release(block: *mut c_void) {
    // SAFETY: forwarded contract; `tls::current()` is the calling thread's state.
    unsafe {
        guard::release_excess(tls::current());
        real::free(block);
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
    // No check of the guard's state: crediting a thread that is not accounting is harmless
    // (`release_excess` resets it), and the check would cost every free two instructions.
    // SAFETY: the caller passes a live block, freed right after; the state is this thread's.
    unsafe {
        if Local::get().credit_past_release(real::block_size(ptr)) {
            return free_and_release(ptr);
        }
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
    // As in `allocate`: a shrink, or growth the thread's credit covers, reads no global state.
    // realloc(p, 0), which frees p in glibc, goes the slow way: here a NULL result then always
    // means that glibc failed and the block stays as it was, so `size` need not outlive the call.
    // The growth is not saturated: a shrink's reads as negative, which any credit not lower
    // still covers (the slow path works out the real need).
    // SAFETY: `ptr` is live until glibc's realloc frees or moves it.
    unsafe {
        let old = real::block_size(ptr);
        if size == 0 || !Local::get().covers(size.wrapping_sub(old)) {
            return realloc_slowly(ptr, size, old);
        }
        let block = real::realloc(ptr, size);
        if !block.is_null() {
            settle_resized(block, old);
        }
        block
    }
}

/// Moves the thread's credit by what a successful realloc of a block of `old` bytes changed:
/// the new block is charged as an allocation, the old one credited as a free.
///
/// # Safety
/// `block` must be glibc's non-null result of that realloc.
#[inline(always)]
unsafe fn settle_resized(block: *mut c_void, old: usize) {
    // `old` is what `realloc` keeps across glibc's call: the state's offset is loaded again.
    let local = Local::reload();
    // SAFETY: forwarded contract; the state is this thread's.
    unsafe {
        local.charge(real::block_size(block));
        if local.credit_past_release(old) {
            guard::release_excess(tls::current());
        }
    }
}

/// Growth the credit does not cover, a realloc to 0 bytes, or a realloc before the guard
/// started.
///
/// # Safety
/// As [`realloc`]; `old` is the block's size.
#[cold]
#[inline(never)]
unsafe fn realloc_slowly(ptr: *mut c_void, size: usize, old: usize) -> *mut c_void {
    if !guard::active_or_started() {
        // SAFETY: forwarded contract.
        return unsafe { real::realloc(ptr, size) };
    }
    let growth = size.saturating_sub(old);
    let thread = tls::current();
    // SAFETY: as in `allocate_slowly`.
    unsafe {
        // A realloc that does not grow reserves nothing, so it is never refused, even when the
        // thread owes the pool a few bytes: refusing realloc(p, 0) would return NULL without
        // freeing `p`, which its caller takes for freed. The debt is paid at the next growth.
        if growth > 0
            && !covered((*thread).credit, growth)
            && !guard::reserve(thread, growth, "realloc")
        {
            errno::set(libc::ENOMEM);
            return null_mut();
        }
        let block = real::realloc(ptr, size);
        if !block.is_null() {
            settle_resized(block, old);
            guard::record_peaks();
        } else {
            // glibc's realloc(p, 0) frees p and returns NULL; any other NULL leaves p as it was.
            not_served(thread, if size == 0 { old } else { 0 });
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
