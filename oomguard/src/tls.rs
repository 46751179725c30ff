//! Per-thread state of the hot path: the thread's unused reservation ("credit") and its counters.
//!
//! Stable Rust compiles `thread_local!` in a shared library to the general-dynamic TLS model, a
//! `__tls_get_addr` call on every access (measured 1.77x plain glibc where initial-exec TLS costs
//! 1.24x). A library loaded by `LD_PRELOAD` is in the static TLS block, so on x86_64 the state is
//! declared in assembly and reached with the initial-exec sequence: two instructions, no call.
//! Other targets use `thread_local!`.
//!
//! The hot path goes one step further with [`Local`]: on x86_64 it keeps only the state's offset
//! from the thread pointer (one load from the GOT) and addresses the fields through `%fs`, so an
//! access needs no separate address computation, and the offset, the same in every thread, is
//! loaded again after a call into glibc rather than kept in a register that must be saved.

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
const _: () = assert!(core::mem::offset_of!(ThreadState, credit) == 0);

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

/// The calling thread's state as the allocation fast path moves it: the credit and the count of
/// allocations, nothing else. Each method is the one or two instructions it names; every other
/// use of the state goes through [`current`].
#[derive(Clone, Copy)]
pub struct Local {
    /// x86_64: the state's offset from the thread pointer.
    #[cfg(target_arch = "x86_64")]
    offset: usize,
    #[cfg(not(target_arch = "x86_64"))]
    state: *mut ThreadState,
}

/// Byte offset of [`ThreadState::pending_allocations`], for the assembly below.
#[cfg(target_arch = "x86_64")]
const PENDING_ALLOCATIONS: usize = core::mem::offset_of!(ThreadState, pending_allocations);

#[cfg(target_arch = "x86_64")]
impl Local {
    /// The calling thread's state: one load of its thread-pointer offset from the GOT.
    #[inline(always)]
    pub fn get() -> Local {
        let offset: usize;
        // SAFETY: reads the GOT entry the dynamic linker filled with the offset of our static,
        // initial-exec TLS block from the thread pointer; writes only the output register. The
        // entry never changes once relocated (it is in RELRO), hence `nomem`: the compiler may
        // keep the offset across a call rather than load it again.
        unsafe {
            core::arch::asm!(
                "mov {0}, qword ptr [rip + oomguard_thread_state@GOTTPOFF]",
                out(reg) offset,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        Local { offset }
    }

    /// The same as [`Local::get`], but never merged with an earlier `get`: for a caller that
    /// already keeps another value across its call into glibc, where loading the offset again
    /// after the call costs one instruction and keeping it would cost a register's save and
    /// restore.
    #[inline(always)]
    pub fn reload() -> Local {
        let offset: usize;
        // SAFETY: as in `get`; declared as reading memory only so that it is not merged.
        unsafe {
            core::arch::asm!(
                "mov {0}, qword ptr [rip + oomguard_thread_state@GOTTPOFF]",
                out(reg) offset,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        Local { offset }
    }

    /// Whether the credit covers `request` bytes: one signed compare with the credit in place.
    /// A request of 2^63 bytes or more reads as negative, so as covered (see
    /// `interpose::covered` for why that is harmless).
    #[inline(always)]
    pub fn covers(self, request: usize) -> bool {
        // SAFETY: `%fs:offset` is this thread's state (see `get`), whose first field is the
        // credit; the asm only reads it and sets the flags.
        unsafe {
            core::arch::asm!(
                "cmp qword ptr fs:[{offset}], {request}",
                "jl {short}",
                offset = in(reg) self.offset,
                request = in(reg) request,
                short = label { return false; },
                options(readonly, nostack),
            );
        }
        true
    }

    /// Charges an allocation of `bytes`: the credit goes down by them, the count up by one.
    ///
    /// # Safety
    /// `self` must come from [`Local::get`] on the calling thread.
    #[inline(always)]
    pub unsafe fn charge(self, bytes: usize) {
        // SAFETY: the caller's contract: `%fs:offset` is this thread's state, credit at 0 and
        // the count at `PENDING_ALLOCATIONS`; only those two words and the flags are written.
        unsafe {
            core::arch::asm!(
                "sub qword ptr fs:[{offset}], {bytes}",
                "inc qword ptr fs:[{offset} + {pending}]",
                offset = in(reg) self.offset,
                bytes = in(reg) bytes,
                pending = const PENDING_ALLOCATIONS,
                options(nostack),
            );
        }
    }

    /// Credits `bytes` given back; returns whether the credit is now above `RELEASE_ABOVE`.
    ///
    /// # Safety
    /// `self` must come from [`Local::get`] on the calling thread.
    #[inline(always)]
    pub unsafe fn credit_past_release(self, bytes: usize) -> bool {
        // SAFETY: as in `charge`; only the credit and the flags are written.
        unsafe {
            core::arch::asm!(
                "add qword ptr fs:[{offset}], {bytes}",
                "cmp qword ptr fs:[{offset}], {above}",
                "jg {past}",
                offset = in(reg) self.offset,
                bytes = in(reg) bytes,
                above = const crate::guard::RELEASE_ABOVE,
                past = label { return true; },
                options(nostack),
            );
        }
        false
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Local {
    /// The calling thread's state.
    #[inline(always)]
    pub fn get() -> Local {
        Local { state: current() }
    }

    /// The calling thread's state (see the x86_64 version).
    #[inline(always)]
    pub fn reload() -> Local {
        Local { state: current() }
    }

    /// Whether the credit covers `request` bytes (see `interpose::covered`).
    #[inline(always)]
    pub fn covers(self, request: usize) -> bool {
        // SAFETY: this thread's state.
        unsafe { (*self.state).credit >= request as i64 }
    }

    /// Charges an allocation of `bytes`: the credit goes down by them, the count up by one.
    ///
    /// # Safety
    /// `self` must come from [`Local::get`] on the calling thread.
    #[inline(always)]
    pub unsafe fn charge(self, bytes: usize) {
        // SAFETY: the caller's contract.
        unsafe {
            (*self.state).credit -= bytes as i64;
            (*self.state).pending_allocations += 1;
        }
    }

    /// Credits `bytes` given back; returns whether the credit is now above `RELEASE_ABOVE`.
    ///
    /// # Safety
    /// `self` must come from [`Local::get`] on the calling thread.
    #[inline(always)]
    pub unsafe fn credit_past_release(self, bytes: usize) -> bool {
        // SAFETY: the caller's contract.
        unsafe {
            (*self.state).credit += bytes as i64;
            (*self.state).credit > crate::guard::RELEASE_ABOVE
        }
    }
}
