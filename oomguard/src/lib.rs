//! liboomguard.so: loaded with `LD_PRELOAD` into PostgreSQL (or any program), it interposes the
//! malloc family, accounts every block against a limit shared by all guarded processes of the
//! container, and above it returns NULL with `ENOMEM` where the process can fail gracefully.
//!
//! - `init`: the constructor and destructor the dynamic loader runs.
//! - `interpose`: the malloc family's exported C functions (the hot path).
//! - `tls`: the per-thread credit the hot path moves.
//! - `guard`: start-up, batch reservation and release, refusal, fork/thread/process exit.
//! - `shared`: PostgreSQL's shared memory (`mmap`, `ftruncate`, `posix_fallocate`,
//!   `shm_unlink`): observed for the derived limit, dynamic segments charged to the pool.
//! - `kernel`: the domain's cgroup: the derived limit and the kernel's own usage numbers.
//! - `policy`: which PostgreSQL processes may be refused, and when.
//! - `budget`: each refusable process's own budget (`oomguard.backend_memory_limit`).
//! - `loader`: `dlopen`: nothing is refused while a library loads; finds LLVM's JIT state.
//! - `threads`: `pthread_create`: every thread returns its credit when it exits.
//! - `segment`: finding, creating and mapping the shared segment.
//! - `settings`: the `OOM_GUARD_*` settings, from the environment and `config_file`.
//! - `real`, `report`, `errno`, `sysfs`, `once`: glibc's allocator, stderr lines, errno, files,
//!   values set once at start-up.
//!
//! The library itself never allocates on these paths; its Rust heap (used by nothing on purpose)
//! goes straight to glibc so it could never recurse into the guard.

mod budget;
mod config_file;
mod errno;
mod fragile;
mod guard;
mod init;
mod inject;
mod interpose;
mod kernel;
mod loader;
mod once;
mod policy;
mod real;
mod record;
mod report;
mod segment;
mod settings;
mod shared;
mod sysfs;
mod threads;
mod tls;

// Every function the library exports, in one list: the C library's functions it stands in for.
// tests/tests/semantics.rs checks that the built library exports exactly these and that each
// resolves into it under LD_PRELOAD.
pub use interpose::{
    aligned_alloc, calloc, free, malloc, memalign, posix_memalign, pvalloc, realloc, reallocarray,
    valloc,
};
pub use loader::dlopen;
pub use shared::{ftruncate, mmap, mmap64, posix_fallocate, shm_unlink};
pub use threads::pthread_create;

use core::alloc::{GlobalAlloc, Layout};

/// The library's own heap: glibc directly. `std::alloc::System` would call `malloc`, i.e. us.
struct LibcHeap;

// SAFETY: memalign returns blocks of at least the requested size and alignment, or null.
unsafe impl GlobalAlloc for LibcHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded to glibc with a valid power-of-two alignment.
        unsafe { real::memalign(layout.align(), layout.size()).cast() }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _: Layout) {
        // SAFETY: `ptr` came from `alloc`.
        unsafe { real::free(ptr.cast()) }
    }
}

#[global_allocator]
static HEAP: LibcHeap = LibcHeap;
