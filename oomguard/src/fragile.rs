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
//! running: a return address inside one of them among the [`FRAMES`] innermost frames of the
//! live call chain, as glibc's `backtrace` unwinds it (libgcc's DWARF unwinder; PostgreSQL is
//! built without frame pointers). Only on the refusal path (a request about to be refused, on
//! PostgreSQL's main thread).
//!
//! The chain must be the live one. An earlier version scanned 16 KiB of stack above the current
//! frame for any word that looked like such a return address, and stale words left in callers'
//! frames by earlier calls matched: inside a PL/pgSQL loop on 16 to 18 (every statement takes a
//! snapshot) it served every request it should have refused, over budget and over the limit.
//!
//! `backtrace` loads libgcc's unwinder on its first call (`dlopen`, which allocates and takes
//! the loader's lock): the constructor makes that first call, so that the refusal path never
//! does. Unwinding then allocates nothing; with glibc 2.35 or later, libgcc finds each frame's
//! unwind table without a lock (`_dl_find_object`). Where the unwinder cannot be loaded (no
//! `libgcc_s`), `backtrace` returns no frame and the guard falls back to scanning the stack as
//! before, which errs towards serving.

use core::ffi::{c_void, CStr};
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The functions, by their exported names (present in 15 to 18).
const FRAGILE: [&CStr; 2] = [c"lookup_type_cache", c"GetSnapshotData"];

/// How many of the innermost frames are looked at: the guard's own (about eight) and the
/// allocator's (`palloc` → `AllocSetAlloc` → `malloc`); a fragile function calls few levels of
/// PostgreSQL before it allocates.
const FRAMES: usize = 32;

/// How far up the stack the fallback scan looks (no unwinder): the guard's and the allocator's
/// frames take about 1 KiB.
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
    // Loads the unwinder now, outside any allocation (see the module documentation).
    let mut frames = [core::ptr::null_mut::<c_void>(); 2];
    // SAFETY: a writable buffer of that many pointers.
    unsafe { libc::backtrace(frames.as_mut_ptr(), frames.len() as i32) };
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
    // A return address points after a call instruction: inside (start, end].
    let inside = |address: usize| {
        ranges
            .iter()
            .any(|&(start, end)| start != 0 && address > start && address <= end)
    };
    let mut frames = [core::ptr::null_mut::<c_void>(); FRAMES];
    // SAFETY: a writable buffer of FRAMES pointers; the unwinder was loaded by `look_up`.
    let found = unsafe { libc::backtrace(frames.as_mut_ptr(), FRAMES as i32) };
    if found > 0 {
        return frames[..found as usize]
            .iter()
            .any(|&frame| inside(frame as usize));
    }
    scan_stack(inside)
}

/// The fallback without an unwinder: any word in the [`SCAN_BYTES`] of the main thread's stack
/// above the current frame that `inside` takes for a return address. Reads only that stack,
/// below its top (`__libc_stack_end`); a stale word can only make the guard serve a request it
/// could have refused, never the other way round.
#[inline(never)]
fn scan_stack(inside: impl Fn(usize) -> bool) -> bool {
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
        if inside(word) {
            return true;
        }
        word_at += 8;
    }
    false
}
