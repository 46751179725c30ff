//! Per-thread state of the hot path: the thread's unused reservation ("credit") and its counters.
//!
//! Stable Rust compiles `thread_local!` in a shared library to the general-dynamic TLS model, a
//! `__tls_get_addr` call on every access (measured 1.77x plain glibc where initial-exec TLS costs
//! 1.24x). A library loaded by `LD_PRELOAD` is in the static TLS block, so on x86_64 the state is
//! declared in assembly and reached with the initial-exec sequence: two instructions, no call.
//! Other targets use `thread_local!`.

/// One thread's view of the accounting. Zero-initialised for every new thread.
#[repr(C)]
pub struct ThreadState {
    /// Bytes this thread may still allocate without touching shared memory. Goes slightly below
    /// zero when glibc's block is larger than the request; the next slow path covers that.
    pub credit: i64,
    /// Set while the guard's own slow path runs, so allocations it causes pass through.
    pub busy: bool,
    /// Set once the thread-exit destructor that returns the credit is armed.
    pub exit_hook_armed: bool,
    /// Rounds of thread-exit destructors that settled this thread's credit.
    pub exit_rounds: u8,
    /// Set while this thread is inside `dlopen`: the loader and library constructors cannot
    /// turn a NULL into an ERROR, so nothing they ask for is refused (see `loader`).
    pub in_loader: bool,
    /// Successful allocations not yet added to the process slot. Not next to `credit` on
    /// purpose: adjacent, the compiler merges the two updates into five vector instructions
    /// where apart they are two.
    pub pending_allocations: u64,
}

#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".pushsection .tbss,\"awT\",@nobits",
    ".p2align 6",
    ".globl oomguard_thread_state",
    ".hidden oomguard_thread_state",
    ".type oomguard_thread_state, @object",
    ".size oomguard_thread_state, 64",
    "oomguard_thread_state:",
    ".zero 64",
    ".popsection",
);

const _: () = assert!(core::mem::size_of::<ThreadState>() <= 64);

/// The calling thread's state.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn current() -> *mut ThreadState {
    let state: *mut ThreadState;
    // SAFETY: `%fs:0` holds the thread pointer and the GOT entry the thread-pointer offset of our
    // (static, initial-exec) TLS block; the sum is this thread's 64 zero-initialised bytes. The
    // asm reads no Rust memory and touches only the output register and the flags.
    unsafe {
        core::arch::asm!(
            "mov {0}, qword ptr fs:[0]",
            "add {0}, qword ptr [rip + oomguard_thread_state@GOTTPOFF]",
            out(reg) state,
            options(pure, readonly, nostack),
        );
    }
    state
}

/// The calling thread's state.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub fn current() -> *mut ThreadState {
    use core::cell::UnsafeCell;
    thread_local! {
        static STATE: UnsafeCell<ThreadState> = const {
            UnsafeCell::new(ThreadState {
                credit: 0,
                busy: false,
                exit_hook_armed: false,
                exit_rounds: 0,
                in_loader: false,
                pending_allocations: 0,
            })
        };
    }
    STATE.with(|state| state.get())
}
