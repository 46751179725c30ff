//! Per-thread state of the hot path: the thread's unused reservation ("credit") and its counters.
//!
//! Stable Rust compiles `thread_local!` in a shared library to the general-dynamic TLS model, a
//! `__tls_get_addr` call on every access (measured 1.77x plain glibc where initial-exec TLS costs
//! 1.24x). A library loaded by `LD_PRELOAD` is in the static TLS block, so on x86_64 the state is
//! declared in assembly and reached with the initial-exec sequence: two instructions, no call.
//! Other targets use `thread_local!`.
//!
//! The hot path goes one step further with [`Local`]: on x86_64 it keeps only the state's offset
//! from the thread pointer (one load from the GOT, the same value in every thread) and moves the
//! fields through `%fs`, each operation one instruction on the field in place, with no address to
//! compute first.

use core::marker::PhantomData;

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
    /// purpose: on targets where the fast path is compiled Rust (not x86_64's assembly), the
    /// compiler merges two adjacent updates into five vector instructions where apart they are
    /// two.
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
/// allocations, nothing else; every other use of the state goes through [`current`]. Not `Send`:
/// a `Local` is made by [`Local::get`] or [`Local::reload`] on the thread whose state it moves.
#[derive(Clone, Copy)]
pub struct Local {
    /// x86_64: the state's offset from the thread pointer.
    #[cfg(target_arch = "x86_64")]
    offset: usize,
    #[cfg(not(target_arch = "x86_64"))]
    state: *mut ThreadState,
    not_send: PhantomData<*mut ThreadState>,
}

/// Byte offset of [`ThreadState::pending_allocations`], for the assembly below.
#[cfg(target_arch = "x86_64")]
const PENDING_ALLOCATIONS: usize = core::mem::offset_of!(ThreadState, pending_allocations);

// `credit_past_release` compares with an immediate operand, which x86_64 sign-extends from 32 bits.
#[cfg(target_arch = "x86_64")]
const _: () = assert!(crate::guard::RELEASE_ABOVE <= i32::MAX as i64);

#[cfg(target_arch = "x86_64")]
impl Local {
    /// The calling thread's state: one load of its thread-pointer offset from the GOT.
    #[inline(always)]
    pub fn get() -> Local {
        let offset: usize;
        // SAFETY: reads the GOT entry the dynamic linker filled, before any code of this library
        // ran, with the offset of our static, initial-exec TLS block from the thread pointer;
        // writes only the output register. No Rust code can reach or change that entry, hence
        // `nomem`: the compiler may keep the offset across a call rather than load it again.
        unsafe {
            core::arch::asm!(
                "mov {0}, qword ptr [rip + oomguard_thread_state@GOTTPOFF]",
                out(reg) offset,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        Local {
            offset,
            not_send: PhantomData,
        }
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
        Local {
            offset,
            not_send: PhantomData,
        }
    }

    /// Whether the credit covers `request` bytes: a compare with the credit in place and a
    /// branch. A request of 2^63 bytes or more reads as negative, so as covered (see
    /// `interpose::covered` for why that is harmless).
    #[inline(always)]
    pub fn covers(self, request: usize) -> bool {
        // SAFETY: `%fs:offset` is this thread's state (see `get`; `Local` is not `Send`), whose
        // first field is the credit; the asm only reads it and sets the flags.
        unsafe {
            core::arch::asm!(
                "cmp qword ptr fs:[{offset}], {request}",
                "jl {not_covered}",
                offset = in(reg) self.offset,
                request = in(reg) request,
                not_covered = label { return false; },
                options(readonly, nostack),
            );
        }
        true
    }

    /// Charges an allocation of `bytes`: the credit goes down by them, the count up by one (two
    /// instructions).
    #[inline(always)]
    pub fn charge(self, bytes: usize) {
        // SAFETY: as in `covers`: the credit at offset 0, the count at `PENDING_ALLOCATIONS`;
        // only those two words of this thread's state and the flags are written.
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

    /// Credits `bytes` given back; returns whether the credit is now above `RELEASE_ABOVE` (an
    /// add, a compare and a branch).
    #[inline(always)]
    pub fn credit_past_release(self, bytes: usize) -> bool {
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
        Local {
            state: current(),
            not_send: PhantomData,
        }
    }

    /// The calling thread's state (see the x86_64 version).
    #[inline(always)]
    pub fn reload() -> Local {
        Local::get()
    }

    /// Whether the credit covers `request` bytes (see `interpose::covered`).
    #[inline(always)]
    pub fn covers(self, request: usize) -> bool {
        // SAFETY: this thread's state (`Local` is not `Send`).
        unsafe { (*self.state).credit >= request as i64 }
    }

    /// Charges an allocation of `bytes`: the credit goes down by them, the count up by one.
    #[inline(always)]
    pub fn charge(self, bytes: usize) {
        // SAFETY: this thread's state (`Local` is not `Send`).
        unsafe {
            (*self.state).credit -= bytes as i64;
            (*self.state).pending_allocations += 1;
        }
    }

    /// Credits `bytes` given back; returns whether the credit is now above `RELEASE_ABOVE`.
    #[inline(always)]
    pub fn credit_past_release(self, bytes: usize) -> bool {
        // SAFETY: this thread's state (`Local` is not `Send`).
        unsafe {
            (*self.state).credit += bytes as i64;
            (*self.state).credit > crate::guard::RELEASE_ABOVE
        }
    }
}
