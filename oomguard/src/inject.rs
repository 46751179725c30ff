//! Fault injection, for tests only: `OOM_GUARD_TEST_INJECT=N[:SEED]` (read from the environment
//! alone, never from the configuration file; off unless set) makes a process refuse, at random,
//! about one in N of the reservations it could be refused, whatever the limit — the same
//! requests, in the same states, that a full domain would refuse. It is how the tests find
//! places where PostgreSQL does not survive a NULL that the guard may legitimately return
//! (`oomguard-bench injection`).
//!
//! Costs nothing on the fast path: it is asked only on the reservation slow path, and off it is
//! one relaxed load.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// N (0: off).
static ONE_IN: AtomicU64 = AtomicU64::new(0);
/// The seed as given, mixed with the pid into [`STATE`] in each process.
static SEED: AtomicU64 = AtomicU64::new(0);
/// This process's xorshift64* state (never 0 while on).
static STATE: AtomicU64 = AtomicU64::new(0);
/// Requests of the current episode still to take the refusal path.
static EPISODE_LEFT: AtomicU64 = AtomicU64::new(0);
/// Longest episode after the first refusal.
const EPISODE_MAX: u64 = 31;

/// Parses `N` or `N:SEED` (N ≥ 1, decimal). `None` when malformed.
pub fn parse(text: &str) -> Option<(u64, u64)> {
    let (one_in, seed) = match text.split_once(':') {
        Some((one_in, seed)) => (one_in, seed.parse().ok()?),
        None => (text, 0),
    };
    let one_in: u64 = one_in.parse().ok()?;
    (one_in >= 1).then_some((one_in, seed))
}

/// Turns injection on for this process image (and its forked children).
pub fn configure(one_in: u64, seed: u64) {
    SEED.store(seed, Relaxed);
    ONE_IN.store(one_in, Relaxed);
    reseed();
}

/// Whether injection is on.
pub fn active() -> bool {
    ONE_IN.load(Relaxed) != 0
}

/// A new sequence for this process (after fork: each backend draws its own). Nothing when
/// injection is off: every fork would otherwise pay a `getpid` system call for it.
pub fn reseed() {
    if !active() {
        return;
    }
    // SAFETY: getpid has no preconditions and cannot fail.
    let pid = unsafe { libc::getpid() } as u64;
    let mixed = (SEED.load(Relaxed) ^ pid.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
    STATE.store(mixed, Relaxed);
    EPISODE_LEFT.store(0, Relaxed);
}

/// Whether this reservation takes the refusal path, as if the domain were full.
pub fn fires() -> bool {
    let one_in = ONE_IN.load(Relaxed);
    if one_in == 0 {
        return false;
    }
    let left = EPISODE_LEFT.load(Relaxed);
    if left > 0 {
        EPISODE_LEFT.store(left - 1, Relaxed);
        return true;
    }
    // xorshift64*: good enough to scatter refusals; PostgreSQL's main thread is the only one
    // that can be refused, so the load and store race with nobody that matters.
    let mut x = STATE.load(Relaxed);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    STATE.store(x, Relaxed);
    let draw = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
    if !draw.is_multiple_of(one_in) {
        return false;
    }
    EPISODE_LEFT.store((draw >> 32) % (EPISODE_MAX + 1), Relaxed);
    true
}
