//! `dlopen`: what a library load means for refusals.
//!
//! - While a library loads, the dynamic loader and the library's own constructors (C++ static
//!   initialisers among them) allocate, and none of them turns a NULL into an ERROR: ld.so aborts
//!   when it cannot allocate thread-local storage, a C++ constructor calls `std::terminate`. So
//!   allocations made inside `dlopen` are never refused (a flag in the thread's state, read only
//!   on the slow path).
//! - While a C++ new handler is installed, nothing is refused. PostgreSQL installs one only inside
//!   its JIT's fatal-on-OOM bracket (`llvm_enter_fatal_on_oom()` calls `std::set_new_handler`,
//!   `llvm_reset_after_error()`/`llvm_leave_fatal_on_oom()` put the old one back): there a NULL
//!   becomes `FATAL: out of memory` / `DETAIL: while in LLVM` (the session is lost, measured 5 of
//!   5) instead of an ERROR. Any other C++ code that installs a handler expects its handler, not
//!   an ERROR, to deal with a NULL. PostgreSQL's own `llvm_in_fatal_on_oom()` would say the same,
//!   but since PostgreSQL 16 every module is built with `-fvisibility=hidden` and `llvmjit.so`
//!   exports only `Pg_magic_func` and `_PG_jit_provider_init`; `std::get_new_handler()` is
//!   libstdc++'s public API, a single load of the handler (checked in the libstdc++ of GCC 12 and
//!   14). It is looked up when a loaded library brings libstdc++ into the process (PostgreSQL's
//!   `llvmjit.so` does), here, after the real `dlopen` returned, never inside an allocation.

use core::ffi::{c_char, c_int, c_void, CStr};
use core::sync::atomic::{AtomicPtr, Ordering::Relaxed};

use crate::errno;

type DlopenFn = unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void;
type GetNewHandlerFn = unsafe extern "C" fn() -> *mut c_void;

/// The C library's `dlopen` (see [`next_definition`]).
static REAL_DLOPEN: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
/// libstdc++'s `std::get_new_handler()`, null until a library that brings libstdc++ is loaded.
static GET_NEW_HANDLER: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
/// `std::get_new_handler()`'s mangled name (exported by libstdc++ since GCC 4.9, GLIBCXX_3.4.20).
const GET_NEW_HANDLER_NAME: &CStr = c"_ZSt15get_new_handlerv";

/// Finds the real `dlopen`, and `std::get_new_handler` if libstdc++ is already in the process
/// (linked into the program or preloaded). Runs from the library's constructor, outside any
/// allocation.
pub fn resolve() {
    next_definition(&REAL_DLOPEN, c"dlopen");
    find_get_new_handler(libc::RTLD_DEFAULT);
}

/// Looks up `std::get_new_handler` in `handle` and what it depends on, once found never again.
/// Leaves `errno` and the caller's pending `dlerror()` message as they were.
fn find_get_new_handler(handle: *mut c_void) {
    if !GET_NEW_HANDLER.load(Relaxed).is_null() {
        return;
    }
    let saved = errno::get();
    // SAFETY: a valid handle (or RTLD_DEFAULT) and a NUL-terminated name.
    let function = unsafe { libc::dlsym(handle, GET_NEW_HANDLER_NAME.as_ptr()) };
    if function.is_null() {
        // SAFETY: dlerror has no preconditions; it clears the message dlsym left behind, so the
        // program's next dlerror() sees its own.
        unsafe { libc::dlerror() };
    } else {
        GET_NEW_HANDLER.store(function, Relaxed);
    }
    errno::set(saved);
}

/// The next definition of `name` after this library (the C library's, for a function we
/// interpose), kept in `cache`: looked up once, from the constructor or, if another library's
/// constructor calls the function before ours ran, at that first call (never inside malloc).
pub fn next_definition(cache: &AtomicPtr<c_void>, name: &CStr) -> *mut c_void {
    let mut found = cache.load(Relaxed);
    if found.is_null() {
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name has no other requirement.
        found = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
        cache.store(found, Relaxed);
    }
    found
}

/// Whether a C++ new handler is installed right now: in PostgreSQL, whether its JIT is inside
/// the fatal-on-OOM bracket (false while no libstdc++ is loaded).
pub fn cxx_new_handler_installed() -> bool {
    let function = GET_NEW_HANDLER.load(Relaxed);
    if function.is_null() {
        return false;
    }
    // SAFETY: the address is libstdc++'s `std::new_handler std::get_new_handler() noexcept`,
    // found by its mangled name in a loaded library (PostgreSQL never unloads one); it loads one
    // pointer, allocates nothing and cannot throw.
    unsafe { !core::mem::transmute::<*mut c_void, GetNewHandlerFn>(function)().is_null() }
}

/// # Safety
/// As C `dlopen`.
#[no_mangle]
pub unsafe extern "C" fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void {
    let real = next_definition(&REAL_DLOPEN, c"dlopen");
    if real.is_null() {
        errno::set(libc::ENOSYS);
        return core::ptr::null_mut();
    }
    // SAFETY: `real` is the C library's dlopen, found by name.
    let real = unsafe { core::mem::transmute::<*mut c_void, DlopenFn>(real) };
    let thread = crate::tls::current();
    // SAFETY: the calling thread's own state; a nested load (a constructor calling dlopen) keeps
    // the outer load's flag.
    let outer = unsafe { core::mem::replace(&mut (*thread).in_loader, true) };
    // SAFETY: forwarded contract.
    let handle = unsafe { real(filename, flags) };
    if !handle.is_null() {
        find_get_new_handler(handle);
    }
    // SAFETY: as above.
    unsafe { (*thread).in_loader = outer };
    handle
}
