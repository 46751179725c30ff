//! PostgreSQL functions that do not survive a NULL from `malloc`: while one of them is on the
//! call stack, nothing is refused.
//!
//! PostgreSQL turns a NULL into `ERROR: out of memory`, but a few functions leave half-built state
//! behind when that ERROR leaves them, and crash on a later call in the same backend: a segfault,
//! and crash recovery for the whole server. Found by injecting refusals
//! (`OOM_GUARD_TEST_INJECT`, `oomguard-inject`) and by PostgreSQL's developers doing the same:
//!
//! - `lookup_type_cache`: its first call in a backend creates the type cache's hash tables, then
//!   allocates `in_progress_list`; if that allocation fails, the next call finds the tables,
//!   skips the set-up and `repalloc`s a NULL list (18.6: segfault in `repalloc` from
//!   `lookup_type_cache`, 3 of 6 injection runs).
//! - `GetSnapshotData`: `malloc`s `xip`, then `subxip`; when the second fails, the next call
//!   sees `xip` and uses the NULL `subxip` (fixed in 19, commit 29fb598, not back-patched).
//!
//! Which functions: their names in [`FRAGILE`], looked up by name with their size from the
//! symbol table (`dladdr1`) once per process image by the library's constructor. Whether one is
//! running: a return address inside one of them in the [`SCAN_BYTES`] of stack above the current
//! frame. The scan runs only on the refusal path (a request about to be refused, on PostgreSQL's
//! main thread) and only reads the main thread's own stack below its top (`__libc_stack_end`). A
//! stale word that happens to look like such an address can only make the guard serve a request
//! it could have refused, never the other way round.

use core::ffi::{c_void, CStr};
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The functions, by their exported names (present in 15 to 18).
const FRAGILE: [&CStr; 2] = [c"lookup_type_cache", c"GetSnapshotData"];

/// How far up the stack a caller is looked for: the guard's own frames and the allocator's
/// (`palloc` → `AllocSetAlloc` → `malloc`) take about 1 KiB; a fragile function calls few
/// levels of PostgreSQL before it allocates.
const SCAN_BYTES: usize = 16 << 10;

/// `[start, end)` of each function's code (0, 0: not found).
static RANGES: [[AtomicUsize; 2]; FRAGILE.len()] =
    [const { [AtomicUsize::new(0), AtomicUsize::new(0)] }; FRAGILE.len()];

/// `RTLD_DL_SYMENT` of `<dlfcn.h>`: `dladdr1` returns the matching symbol table entry.
const RTLD_DL_SYMENT: i32 = 1;

/// `Elf64_Sym`.
#[repr(C)]
struct Elf64Sym {
    st_name: u32,
    st_info: u8,
    st_other: u8,
    st_shndx: u16,
    st_value: u64,
    st_size: u64,
}

extern "C" {
    /// The top of the main thread's stack (the dynamic loader's, GLIBC_2.1).
    static __libc_stack_end: *const c_void;
}

/// Looks the functions up in this process image (the PostgreSQL server). Runs from the
/// library's constructor.
pub fn look_up() {
    for (name, range) in FRAGILE.iter().zip(&RANGES) {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no other requirement.
        let start = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        if start.is_null() {
            continue;
        }
        // SAFETY: all-zero is a valid Dl_info out-parameter.
        let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
        let mut symbol: *mut c_void = core::ptr::null_mut();
        // SAFETY: valid out-parameters; with RTLD_DL_SYMENT, `symbol` receives a pointer to the
        // symbol table entry, which lives as long as the object (the executable).
        let found = unsafe { libc::dladdr1(start, &mut info, &mut symbol, RTLD_DL_SYMENT) };
        if found == 0 || symbol.is_null() {
            continue;
        }
        // SAFETY: see above.
        let size = unsafe { (*symbol.cast::<Elf64Sym>()).st_size } as usize;
        if size == 0 {
            continue;
        }
        range[0].store(start as usize, Relaxed);
        range[1].store(start as usize + size, Relaxed);
    }
    // SAFETY: dlerror has no preconditions; a name not found leaves no message behind.
    unsafe { libc::dlerror() };
}

/// Whether a fragile function is on the calling thread's stack. Only for PostgreSQL's main
/// thread (the one thread a refusal is ever made on).
#[inline(never)]
pub fn on_stack() -> bool {
    let ranges = RANGES
        .each_ref()
        .map(|range| (range[0].load(Relaxed), range[1].load(Relaxed)));
    if ranges.iter().all(|&(start, _)| start == 0) {
        return false;
    }
    let here = 0usize;
    let bottom = core::ptr::addr_of!(here) as usize;
    // SAFETY: a plain read of the loader's variable, set before any code of ours ran.
    let top = unsafe { __libc_stack_end } as usize;
    // Not on the main thread's stack (or an implausible distance): nothing is read.
    if top <= bottom || top - bottom > (1 << 30) {
        return false;
    }
    let end = top.min(bottom + SCAN_BYTES);
    let mut word_at = (bottom + 7) & !7;
    while word_at + 8 <= end {
        // SAFETY: between the current frame and the top of the same thread's stack: mapped and
        // readable; a volatile read because the words are other frames' memory.
        let word = unsafe { core::ptr::read_volatile(word_at as *const usize) };
        // A return address points after a call instruction: inside (start, end].
        if ranges
            .iter()
            .any(|&(start, end)| start != 0 && word > start && word <= end)
        {
            return true;
        }
        word_at += 8;
    }
    false
}
