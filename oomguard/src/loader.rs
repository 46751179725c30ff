//! `dlopen`: what a library load means for refusals.
//!
//! - While a library loads, the dynamic loader and the library's own constructors (C++ static
//!   initialisers among them) allocate, and none of them turns a NULL into an ERROR: ld.so aborts
//!   when it cannot allocate thread-local storage, a C++ constructor calls `std::terminate`. So
//!   allocations made inside `dlopen` are never refused (a flag in the thread's state, read only
//!   on the slow path).
//! - When PostgreSQL loads its LLVM JIT provider (`llvmjit.so`), the guard looks up the
//!   provider's `llvm_in_fatal_on_oom()`: true exactly while LLVM works inside PostgreSQL's
//!   `llvm_enter_fatal_on_oom()` bracket, where a NULL becomes `FATAL: out of memory` (the session
//!   is lost, measured 5 of 5) instead of an ERROR. The lookup happens here, after the real
//!   `dlopen` returned, never inside an allocation.

use core::ffi::{c_char, c_int, c_void, CStr};
use core::sync::atomic::{AtomicPtr, Ordering::Relaxed};

use crate::errno;

type DlopenFn = unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void;
type InFatalOnOomFn = unsafe extern "C" fn() -> bool;

/// The C library's `dlopen` (see [`next_definition`]).
static REAL_DLOPEN: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
/// `llvm_in_fatal_on_oom` of the loaded `llvmjit.so`, null until PostgreSQL loads it.
static LLVM_IN_FATAL_ON_OOM: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());

/// Finds the real `dlopen`. Runs from the library's constructor, outside any allocation.
pub fn resolve() {
    next_definition(&REAL_DLOPEN, c"dlopen");
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

/// Whether PostgreSQL's JIT is inside its fatal-on-OOM bracket right now (false when no JIT
/// provider is loaded).
pub fn jit_fatal_on_oom() -> bool {
    let function = LLVM_IN_FATAL_ON_OOM.load(Relaxed);
    if function.is_null() {
        return false;
    }
    // SAFETY: the address is `bool llvm_in_fatal_on_oom(void)` of a loaded llvmjit.so (PostgreSQL
    // never unloads it); it reads one static counter.
    unsafe { core::mem::transmute::<*mut c_void, InFatalOnOomFn>(function)() }
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
    if !handle.is_null() && !filename.is_null() && is_llvm_jit_provider(filename) {
        let saved = errno::get();
        // SAFETY: a valid handle and a NUL-terminated name. A missing symbol (another JIT
        // provider, a PostgreSQL that hides it) leaves the pointer null; the error message
        // dlsym leaves behind is cleared so the caller's next dlerror() sees its own.
        let function = unsafe { libc::dlsym(handle, c"llvm_in_fatal_on_oom".as_ptr()) };
        if function.is_null() {
            // SAFETY: dlerror has no preconditions.
            unsafe { libc::dlerror() };
        } else {
            LLVM_IN_FATAL_ON_OOM.store(function, Relaxed);
        }
        errno::set(saved);
    }
    // SAFETY: as above.
    unsafe { (*thread).in_loader = outer };
    handle
}

/// Whether `filename` names PostgreSQL's LLVM JIT provider (`…/llvmjit.so`, or `llvmjit` as
/// `jit_provider` gives it).
fn is_llvm_jit_provider(filename: *const c_char) -> bool {
    // SAFETY: dlopen's argument is a NUL-terminated path.
    let path = unsafe { CStr::from_ptr(filename) }.to_bytes();
    let name = path.rsplit(|&byte| byte == b'/').next().unwrap_or(path);
    name.starts_with(b"llvmjit")
}
