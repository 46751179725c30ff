//! `pthread_create`: every new thread arms, before it runs its start routine, the destructor
//! that returns its credit to the pool when it exits.
//!
//! Otherwise the hook is armed at a thread's first batch reservation or release, and a thread
//! that only frees a little (a consumer freeing what another thread allocated, less than the
//! 256 KiB release point) would exit with its credit still counted: measured 4 MiB of phantom
//! bytes after 40 such threads. The thread's start routine and argument travel in a small block
//! from glibc's allocator directly (never accounted, freed by the new thread).

use core::ffi::{c_int, c_void};
use core::sync::atomic::AtomicPtr;

use crate::loader::next_definition;
use crate::{errno, guard, real};

type StartRoutine = extern "C" fn(*mut c_void) -> *mut c_void;
type PthreadCreateFn = unsafe extern "C" fn(
    *mut libc::pthread_t,
    *const libc::pthread_attr_t,
    StartRoutine,
    *mut c_void,
) -> c_int;

/// The C library's `pthread_create` (see `loader::next_definition`).
static REAL_PTHREAD_CREATE: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());

/// What the new thread runs after arming its hook.
struct Start {
    routine: StartRoutine,
    argument: *mut c_void,
}

/// Finds the real `pthread_create`. Runs from the library's constructor.
pub fn resolve() {
    next_definition(&REAL_PTHREAD_CREATE, c"pthread_create");
}

extern "C" fn start_thread(block: *mut c_void) -> *mut c_void {
    // SAFETY: `block` is the `Start` that `pthread_create` wrote for this thread alone.
    let start = unsafe { core::ptr::read(block.cast::<Start>()) };
    // SAFETY: the block came from glibc's allocator directly and is not used after this.
    unsafe { real::free(block) };
    guard::arm_exit_hook_of_this_thread();
    (start.routine)(start.argument)
}

/// # Safety
/// As C `pthread_create`.
#[no_mangle]
pub unsafe extern "C" fn pthread_create(
    thread: *mut libc::pthread_t,
    attributes: *const libc::pthread_attr_t,
    routine: StartRoutine,
    argument: *mut c_void,
) -> c_int {
    let real = next_definition(&REAL_PTHREAD_CREATE, c"pthread_create");
    if real.is_null() {
        return libc::ENOSYS;
    }
    // SAFETY: `real` is the C library's pthread_create, found by name.
    let real = unsafe { core::mem::transmute::<*mut c_void, PthreadCreateFn>(real) };
    let saved = errno::get();
    // SAFETY: glibc's malloc has no preconditions.
    let block = unsafe { real::malloc(core::mem::size_of::<Start>()) };
    if block.is_null() {
        errno::set(saved);
        // No room for the hook's block: start the thread as asked, without it.
        // SAFETY: forwarded contract.
        return unsafe { real(thread, attributes, routine, argument) };
    }
    // SAFETY: a fresh block of the right size, aligned by malloc for any type.
    unsafe { block.cast::<Start>().write(Start { routine, argument }) };
    // SAFETY: forwarded contract; `start_thread` takes ownership of `block`.
    let result = unsafe { real(thread, attributes, start_thread, block) };
    if result != 0 {
        // SAFETY: the thread was not created: the block is still ours.
        unsafe { real::free(block) };
    }
    errno::set(saved);
    result
}
