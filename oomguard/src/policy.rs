//! Which processes may be refused (DESIGN.md §3).
//!
//! Refusing in the wrong place is worse than no guard: an ERROR inside a critical section becomes
//! a PANIC, and the postmaster or startup process exiting takes the whole server down. So a
//! request is refused only in a PostgreSQL client backend that can turn the NULL into
//! `ERROR: out of memory`: outside critical sections, with an error handler set, not exiting, and
//! not allocating for error reporting itself. Everything else is accounted and always served.
//!
//! PostgreSQL exports the globals that tell; they are looked up with `dlsym` the first time a
//! process passes the limit (never on the hot path) and read at each decision after that.

use core::ffi::{c_char, c_int, c_void, CStr};
use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering::Relaxed};

use oomguard_core::{ProcessKind, RefuseScope};

/// Addresses of PostgreSQL's globals in this process image.
struct Symbols {
    my_backend_type: *const c_int,
    get_backend_type_desc: unsafe extern "C" fn(c_int) -> *const c_char,
    is_under_postmaster: *const bool,
    crit_section_count: *const u32,
    exception_stack: *const *const c_void,
    exit_in_progress: *const bool,
    current_context: *const *const c_void,
    error_context: *const *const c_void,
}

const LOOKUP_NOT_DONE: u8 = 0;
const LOOKUP_POSTGRES: u8 = 1;
const LOOKUP_NOT_POSTGRES: u8 = 2;
/// A lookup is running (on this or another thread): an allocation that dlsym makes and that
/// needs a decision meanwhile is treated as not PostgreSQL's (never refused), which ends the
/// recursion.
const LOOKUP_RUNNING: u8 = 3;

static LOOKUP: AtomicU8 = AtomicU8::new(LOOKUP_NOT_DONE);
static ADDRESSES: [AtomicPtr<c_void>; 8] = [const { AtomicPtr::new(core::ptr::null_mut()) }; 8];
const NAMES: [&CStr; 8] = [
    c"MyBackendType",
    c"GetBackendTypeDesc",
    c"IsUnderPostmaster",
    c"CritSectionCount",
    c"PG_exception_stack",
    c"proc_exit_inprogress",
    c"CurrentMemoryContext",
    c"ErrorContext",
];

fn symbols() -> Option<Symbols> {
    if LOOKUP
        .compare_exchange(LOOKUP_NOT_DONE, LOOKUP_RUNNING, Relaxed, Relaxed)
        .is_ok()
    {
        let mut all_found = true;
        for (name, slot) in NAMES.iter().zip(&ADDRESSES) {
            // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no other requirement.
            // It may allocate; the caller's busy flag lets that through unguarded.
            let address = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            all_found &= !address.is_null();
            slot.store(address, Relaxed);
        }
        let result = if all_found {
            LOOKUP_POSTGRES
        } else {
            LOOKUP_NOT_POSTGRES
        };
        LOOKUP.store(result, Relaxed);
    }
    if LOOKUP.load(Relaxed) != LOOKUP_POSTGRES {
        return None;
    }
    let address = |index: usize| ADDRESSES[index].load(Relaxed);
    Some(Symbols {
        my_backend_type: address(0).cast(),
        // SAFETY: the symbol GetBackendTypeDesc is PostgreSQL's
        // `const char *GetBackendTypeDesc(BackendType)`.
        get_backend_type_desc: unsafe {
            core::mem::transmute::<*mut c_void, unsafe extern "C" fn(c_int) -> *const c_char>(
                address(1),
            )
        },
        is_under_postmaster: address(2).cast(),
        crit_section_count: address(3).cast(),
        exception_stack: address(4).cast(),
        exit_in_progress: address(5).cast(),
        current_context: address(6).cast(),
        error_context: address(7).cast(),
    })
}

/// What the process is and whether the request it is making may be refused right now.
pub fn classify(scope: RefuseScope) -> (ProcessKind, bool) {
    let Some(symbols) = symbols() else {
        return (ProcessKind::Other, scope == RefuseScope::All);
    };
    // SAFETY: every pointer is the address of the PostgreSQL global of that name and type, in
    // this process image; they are plain loads of the process's own memory.
    unsafe {
        if !*symbols.is_under_postmaster {
            return (ProcessKind::Postmaster, scope == RefuseScope::All);
        }
        let description = (symbols.get_backend_type_desc)(*symbols.my_backend_type);
        let is_client_backend =
            !description.is_null() && CStr::from_ptr(description) == c"client backend";
        if !is_client_backend {
            return (ProcessKind::PostgresAuxiliary, scope == RefuseScope::All);
        }
        let safe_to_fail = core::ptr::read_volatile(symbols.crit_section_count) == 0
            && !(*symbols.exception_stack).is_null()
            && !*symbols.exit_in_progress
            && *symbols.current_context != *symbols.error_context;
        (ProcessKind::ClientBackend, safe_to_fail)
    }
}
