//! The guard's process-wide state and its slow paths: start-up, reserving and releasing batches
//! of bytes against the shared pool, the refusal decision, fork, thread exit and process exit.
//!
//! The hot path (see `interpose`) only moves a thread's local credit; it calls in here when the
//! credit cannot cover a request or has grown past [`RELEASE_ABOVE`]. So the shared total is
//! touched once per [`BATCH`] bytes of allocation churn, not once per call.
//!
//! Accounting error bound: a thread holds between 0 and `RELEASE_ABOVE` (2 x `BATCH` = 256 KiB)
//! of reserved but unallocated credit (plus a few bytes of glibc rounding), so the shared total
//! over-counts the real allocations by at most 256 KiB per live thread of every guarded process,
//! and never under-counts them. A single-threaded PostgreSQL backend contributes at most 256 KiB.

use core::fmt::Write;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8};

use oomguard_core::layout::{Header, LimitSource, SegmentView, Slot};
use oomguard_core::pool::Pool;
use oomguard_core::{Mode, ProcessKind, RefuseScope};

use crate::report::{Bytes, Line};
use crate::settings::Settings;
use crate::tls::ThreadState;
use crate::{errno, kernel, policy, segment};

/// Bytes a thread reserves beyond what a request needs, so the next allocations are local.
pub const BATCH: i64 = 128 << 10;
/// Credit above this goes back to the pool (down to [`BATCH`]).
pub const RELEASE_ABOVE: i64 = 2 * BATCH;
/// Extra bytes a just-refused process may still get, so reporting the error can allocate.
const OVERDRAFT: u64 = 64 << 10;
/// Minimum time between two scans for dead processes by one process.
const REAP_INTERVAL_NS: u64 = 50_000_000;
/// Minimum time between two refusal lines on stderr from one process.
const REPORT_INTERVAL_NS: u64 = 1_000_000_000;

const UNINITIALISED: u8 = 0;
const INITIALISING: u8 = 1;
const ACTIVE: u8 = 2;
const PASS_THROUGH: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNINITIALISED);
static HEADER: AtomicPtr<Header> = AtomicPtr::new(core::ptr::null_mut());
static SLOTS: AtomicPtr<Slot> = AtomicPtr::new(core::ptr::null_mut());
static SLOT_COUNT: AtomicU64 = AtomicU64::new(0);
/// This process's slot.
static SLOT: AtomicPtr<Slot> = AtomicPtr::new(core::ptr::null_mut());
static SCOPE_ALL: AtomicU8 = AtomicU8::new(0);
static OVERDRAFT_LEFT: AtomicU64 = AtomicU64::new(OVERDRAFT);
static LAST_REAP_NS: AtomicU64 = AtomicU64::new(0);
static LAST_REPORT_NS: AtomicU64 = AtomicU64::new(0);
static UNREPORTED_REFUSALS: AtomicU64 = AtomicU64::new(0);
static THREAD_EXIT_KEY: AtomicU64 = AtomicU64::new(u64::MAX);

/// Whether allocations are being accounted. Read by the slow paths only: the hot path reads no
/// global state (see `interpose::allocate`).
#[inline(always)]
pub fn is_active() -> bool {
    STATE.load(Acquire) == ACTIVE
}

/// Whether the guard accounts in this process, starting it if nothing did yet (for the shared
/// memory calls, which may come before any allocation).
pub fn active_or_started() -> bool {
    is_active() || start()
}

/// Starts the guard on the first allocation of a process image. Returns whether it is active.
/// Allocations made by other threads while one thread starts it pass through unaccounted (their
/// later frees make the count a few bytes lower, never higher).
#[cold]
#[inline(never)]
pub fn start() -> bool {
    if STATE
        .compare_exchange(UNINITIALISED, INITIALISING, Acquire, Relaxed)
        .is_err()
    {
        return is_active();
    }
    let saved = errno::get();
    let thread = crate::tls::current();
    // SAFETY: our own thread's state; `busy` lets allocations made while starting through.
    unsafe { (*thread).busy = true };
    let state = if initialise() { ACTIVE } else { PASS_THROUGH };
    // SAFETY: as above. Frees before the start credited the thread without a reservation.
    unsafe {
        (*thread).busy = false;
        (*thread).credit = 0;
    }
    STATE.store(state, Release);
    errno::set(saved);
    state == ACTIVE
}

fn initialise() -> bool {
    let settings = Settings::from_env();
    let mode = settings.effective_mode();
    if mode == Some(Mode::Off) {
        return false;
    }
    let Some(mapped) = segment::attach(settings.dir, settings.domain) else {
        let mut line = Line::new();
        let _ = write!(line, "no memory for an accounting segment; guard off");
        line.emit();
        return false;
    };
    let view = mapped.view;
    let header = view.header;
    if let Some(limit) = settings.limit.filter(|_| !settings.malformed) {
        header.limit_bytes.store(limit, Relaxed);
        header
            .limit_source
            .store(LimitSource::Environment as u32, Relaxed);
    } else if !settings.malformed {
        header
            .limit_source
            .store(LimitSource::Derived as u32, Relaxed);
        oomguard_core::limit::apply_derived(header);
    }
    kernel::discover(header, &settings);
    match mode {
        Some(mode) => header.mode.store(mode as u32, Relaxed),
        // A limit is known (given or derived): enforce it, as documented.
        None if header.limit_bytes.load(Relaxed) != 0 => {
            header.mode.store(Mode::Enforce as u32, Relaxed)
        }
        None => {
            // Keep what the domain already runs in; a new segment without a limit only reports.
            let _ = header
                .mode
                .compare_exchange(0, Mode::Report as u32, Relaxed, Relaxed);
        }
    }
    SCOPE_ALL.store(u8::from(settings.scope == RefuseScope::All), Relaxed);
    HEADER.store(header as *const Header as *mut Header, Relaxed);
    SLOTS.store(view.slots.as_ptr() as *mut Slot, Relaxed);
    SLOT_COUNT.store(view.slots.len() as u64, Relaxed);
    claim_slot(true);

    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is writable; the destructor is an `extern "C"` function of this library.
    if unsafe { libc::pthread_key_create(&mut key, Some(thread_exited)) } == 0 {
        THREAD_EXIT_KEY.store(u64::from(key), Relaxed);
    }
    // SAFETY: registering a child handler has no preconditions.
    unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
    true
}

/// The pool over the attached segment.
fn pool() -> Pool<'static> {
    let header = HEADER.load(Relaxed);
    let slots = SLOTS.load(Relaxed);
    let count = SLOT_COUNT.load(Relaxed) as usize;
    // SAFETY: set once by `initialise` from a validated, never-unmapped segment before the state
    // became ACTIVE; only called while active.
    let view = unsafe {
        SegmentView {
            header: &*header,
            slots: core::slice::from_raw_parts(slots, count),
        }
    };
    Pool::new(view)
}

/// This process's slot, claimed on first use in a forked child (a child that execs or exits
/// at once never touches the segment).
fn my_slot() -> &'static Slot {
    let mut slot = SLOT.load(Relaxed);
    if slot.is_null() {
        claim_slot(false);
        slot = SLOT.load(Relaxed);
    }
    // SAFETY: `claim_slot` always stores a pointer into the never-unmapped segment.
    unsafe { &*slot }
}

/// Takes this process's slot; `replaces_image` when it is a new image rather than a forked child.
fn claim_slot(replaces_image: bool) {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let pool = pool();
    let claimed_at = clock_ns(libc::CLOCK_BOOTTIME);
    let mut slot = pool.claim(pid, claimed_at, replaces_image);
    if core::ptr::eq(slot, &pool.header().overflow) && pool.reap_dead(is_alive) > 0 {
        // Every slot was taken, some by processes that died without cleaning up (_exit, SIGKILL).
        slot = pool.claim(pid, claimed_at, false);
    }
    SLOT.store(slot as *const Slot as *mut Slot, Relaxed);
}

/// Whether process `pid` is still the one that claimed its slot at `claimed_at_ns`.
fn is_alive(pid: i32, claimed_at_ns: u64) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(pid, 0) } == 0 || errno::get() == libc::EPERM;
    if !exists {
        return false;
    }
    let mut path = [0u8; 32];
    let mut writer = crate::report::Buffer::new(&mut path);
    let _ = write!(writer, "/proc/{pid}/stat\0");
    let Ok(path) = core::ffi::CStr::from_bytes_until_nul(&path) else {
        return true;
    };
    let mut stat = [0u8; 1024];
    let Some(len) = segment::read_file(path, &mut stat) else {
        return true;
    };
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    !oomguard_core::procstat::owner_gone(&stat[..len], ticks_per_second, claimed_at_ns)
}

/// A clock read through the vDSO (no system call), in nanoseconds.
fn clock_ns(clock: libc::clockid_t) -> u64 {
    // SAFETY: an all-zero timespec is valid.
    let mut now: libc::timespec = unsafe { core::mem::zeroed() };
    // SAFETY: `now` is writable.
    unsafe { libc::clock_gettime(clock, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// Whether at least `interval` passed since `last`, claiming the slot if so.
fn due(last: &AtomicU64, interval: u64) -> bool {
    let now = now_ns();
    let previous = last.load(Relaxed);
    now.saturating_sub(previous) >= interval
        && last
            .compare_exchange(previous, now, Relaxed, Relaxed)
            .is_ok()
}

/// Makes the thread's credit cover `request` bytes, reserving from the pool. Returns false when
/// the request is refused (the caller returns NULL with ENOMEM). `call` names the function for
/// the refusal line.
///
/// # Safety
/// `thread` must be the calling thread's state and the guard active.
#[cold]
#[inline(never)]
pub unsafe fn reserve(thread: *mut ThreadState, request: usize, call: &'static str) -> bool {
    // SAFETY: the caller passes the calling thread's state.
    unsafe {
        if (*thread).busy {
            return true; // an allocation made by the guard itself
        }
        (*thread).busy = true;
        let saved = errno::get();
        arm_thread_exit_hook(thread);
        flush_allocations(thread);
        let credit = (*thread).credit;
        let need = (request as u64).saturating_add(credit.min(0).unsigned_abs())
            - (credit.max(0) as u64).min(request as u64);
        let granted = grant(need, request, call);
        if let Some(bytes) = granted {
            (*thread).credit = (*thread).credit.saturating_add(bytes as i64);
        }
        errno::set(saved);
        (*thread).busy = false;
        granted.is_some()
    }
}

/// Reserves `need` bytes (plus a batch when it fits) or decides to refuse. Returns the bytes
/// reserved.
fn grant(need: u64, request: usize, call: &'static str) -> Option<u64> {
    let pool = pool();
    let slot = my_slot();
    kernel::refresh(pool.header(), now_ns());
    let tight = pool.header().cgroup.tight.load(Relaxed) != 0;
    let batch = need.saturating_add(BATCH as u64);
    if !tight {
        for bytes in [batch, need] {
            if pool.try_reserve(slot, bytes) {
                if OVERDRAFT_LEFT.load(Relaxed) != OVERDRAFT {
                    OVERDRAFT_LEFT.store(OVERDRAFT, Relaxed);
                }
                return Some(bytes);
            }
        }
    }
    // Over the limit, or the kernel sees no headroom.
    if pool.header().mode.load(Relaxed) != Mode::Enforce as u32 {
        pool.record_overlimit_report(slot);
        pool.reserve_regardless(slot, need);
        return Some(need);
    }
    let (kind, refusable) = classify();
    slot.kind.store(kind as u32, Relaxed);
    if !refusable {
        pool.reserve_regardless(slot, need);
        return Some(need);
    }
    if !tight
        && due(&LAST_REAP_NS, REAP_INTERVAL_NS)
        && pool.reap_dead(is_alive) > 0
        && pool.try_reserve(slot, need)
    {
        return Some(need);
    }
    let overdraft = OVERDRAFT_LEFT.load(Relaxed);
    if need <= overdraft
        && OVERDRAFT_LEFT
            .compare_exchange(overdraft, overdraft - need, Relaxed, Relaxed)
            .is_ok()
    {
        pool.reserve_regardless(slot, need);
        return Some(need);
    }
    OVERDRAFT_LEFT.store(0, Relaxed);
    pool.record_denial(slot, request as u64);
    if tight {
        pool.header().stats.kernel_denials.fetch_add(1, Relaxed);
    }
    report_refusal(&pool, kind, request, call, tight);
    None
}

/// What this process is and whether it may be refused right now.
fn classify() -> (ProcessKind, bool) {
    let scope = if SCOPE_ALL.load(Relaxed) != 0 {
        RefuseScope::All
    } else {
        RefuseScope::Backends
    };
    policy::classify(scope)
}

/// Charges `bytes` of PostgreSQL dynamic shared memory (a tmpfs file grown by `call`) to the
/// pool, under the same policy as malloc. Returns false when refused (the caller fails with
/// ENOSPC).
pub fn reserve_shared(bytes: u64, call: &'static str) -> bool {
    if !active_or_started() {
        return true;
    }
    let pool = pool();
    kernel::refresh(pool.header(), now_ns());
    let tight = pool.header().cgroup.tight.load(Relaxed) != 0;
    if !tight && pool.reserve_shared(bytes, false) {
        return true;
    }
    let slot = my_slot();
    if pool.header().mode.load(Relaxed) != Mode::Enforce as u32 {
        pool.record_overlimit_report(slot);
        return pool.reserve_shared(bytes, true);
    }
    let (kind, refusable) = classify();
    slot.kind.store(kind as u32, Relaxed);
    if !refusable {
        return pool.reserve_shared(bytes, true);
    }
    if !tight
        && due(&LAST_REAP_NS, REAP_INTERVAL_NS)
        && pool.reap_dead(is_alive) > 0
        && pool.reserve_shared(bytes, false)
    {
        return true;
    }
    pool.record_denial(slot, bytes);
    let stats = &pool.header().stats;
    stats.dynamic_shared_denials.fetch_add(1, Relaxed);
    if tight {
        stats.kernel_denials.fetch_add(1, Relaxed);
    }
    report_refusal(&pool, kind, bytes as usize, call, tight);
    false
}

/// Returns `bytes` of dynamic shared memory to the pool.
pub fn release_shared(bytes: u64) {
    if is_active() {
        pool().release_shared(bytes);
    }
}

/// Notes a shared anonymous mapping (PostgreSQL's main shared memory) for the derived limit.
pub fn observe_shared_mapping(bytes: u64, huge_pages: bool) {
    if active_or_started() {
        oomguard_core::limit::observe_shared_memory(pool().header(), bytes, huge_pages);
    }
}

/// Writes the refusal line (at most one per [`REPORT_INTERVAL_NS`]; the others are counted and
/// mentioned in the next line).
fn report_refusal(pool: &Pool<'_>, kind: ProcessKind, request: usize, call: &str, tight: bool) {
    if !due(&LAST_REPORT_NS, REPORT_INTERVAL_NS) {
        UNREPORTED_REFUSALS.fetch_add(1, Relaxed);
        return;
    }
    let header = pool.header();
    let mut line = Line::new();
    let _ = write!(
        line,
        "refused {call}({request} bytes) in a process of kind '{}': ",
        kind.name()
    );
    let _ = if tight {
        write!(
            line,
            "the kernel counts {} anon + {} shmem in the cgroup, within the reserve {} of its \
             limit {}",
            Bytes(header.cgroup.anon_bytes.load(Relaxed) as i64),
            Bytes(header.cgroup.shmem_bytes.load(Relaxed) as i64),
            Bytes(header.limit_inputs.reserve_bytes.load(Relaxed) as i64),
            Bytes(header.limit_inputs.cgroup_limit_bytes.load(Relaxed) as i64),
        )
    } else {
        write!(
            line,
            "guarded total {} + request would pass the limit {}",
            Bytes(header.total.load(Relaxed)),
            Bytes(pool.limit() as i64),
        )
    };
    let _ = write!(line, " (OOM_GUARD_MODE=enforce)");
    let unreported = UNREPORTED_REFUSALS.swap(0, Relaxed);
    if unreported > 0 {
        let _ = write!(line, "; {unreported} more refusals since the last line");
    }
    line.emit();
}

/// Returns the credit above [`BATCH`] to the pool.
///
/// # Safety
/// `thread` must be the calling thread's state.
#[cold]
#[inline(never)]
pub unsafe fn release_excess(thread: *mut ThreadState) {
    // SAFETY: the caller passes the calling thread's state.
    unsafe {
        if !is_active() {
            // Frees credit every thread, accounted or not: keep the unused credit at zero.
            (*thread).credit = 0;
            return;
        }
        if (*thread).busy {
            return;
        }
        let excess = (*thread).credit - BATCH;
        if excess > 0 {
            (*thread).credit = BATCH;
            pool().release(my_slot(), excess as u64);
        }
    }
}

/// Adds the thread's counted allocations to the process slot (at reservations and thread exit,
/// so the slot's count lags by at most one batch of allocations per thread).
unsafe fn flush_allocations(thread: *mut ThreadState) {
    // SAFETY: forwarded contract.
    unsafe {
        let pending = core::mem::take(&mut (*thread).pending_allocations);
        if pending > 0 {
            my_slot().allocations.fetch_add(pending, Relaxed);
        }
    }
}

/// Arms the destructor that returns a thread's credit when it exits (once per thread).
unsafe fn arm_thread_exit_hook(thread: *mut ThreadState) {
    // SAFETY: forwarded contract.
    unsafe {
        let key = THREAD_EXIT_KEY.load(Relaxed);
        if (*thread).exit_hook_armed || key == u64::MAX {
            return;
        }
        (*thread).exit_hook_armed = true;
        // Any non-null value makes glibc call the destructor at thread exit.
        libc::pthread_setspecific(
            key as libc::pthread_key_t,
            core::ptr::dangling::<libc::c_void>(),
        );
    }
}

/// Settles the exiting thread's credit with the pool.
extern "C" fn thread_exited(_: *mut libc::c_void) {
    if !is_active() {
        return;
    }
    let thread = crate::tls::current();
    // SAFETY: glibc runs key destructors on the exiting thread, whose TLS is still in place.
    unsafe { settle(thread) };
}

/// Returns a thread's whole credit (or covers its small debt) and flushes its counters.
unsafe fn settle(thread: *mut ThreadState) {
    // SAFETY: forwarded contract.
    unsafe {
        let credit = core::mem::take(&mut (*thread).credit);
        if credit > 0 {
            pool().release(my_slot(), credit as u64);
        } else if credit < 0 {
            pool().reserve_regardless(my_slot(), credit.unsigned_abs());
        }
        flush_allocations(thread);
    }
}

/// In a forked child: its own slot from zero, claimed when first needed. The credit the forking
/// thread held belongs to the parent, which still holds it.
extern "C" fn forked_child() {
    if !is_active() {
        return;
    }
    let thread = crate::tls::current();
    // SAFETY: the only thread of the new child; no other thread can touch its state.
    unsafe {
        (*thread).credit = 0;
        (*thread).pending_allocations = 0;
    }
    OVERDRAFT_LEFT.store(OVERDRAFT, Relaxed);
    LAST_REAP_NS.store(0, Relaxed);
    LAST_REPORT_NS.store(0, Relaxed);
    UNREPORTED_REFUSALS.store(0, Relaxed);
    SLOT.store(core::ptr::null_mut(), Relaxed);
}

/// At a clean exit: give the slot back, so only killed processes need reaping. Frees that run
/// after this (other libraries' destructors) pass through.
extern "C" fn process_exiting() {
    if STATE
        .compare_exchange(ACTIVE, PASS_THROUGH, Acquire, Relaxed)
        .is_err()
    {
        return;
    }
    let slot = SLOT.load(Relaxed);
    if !slot.is_null() {
        // SAFETY: getpid has no preconditions; `slot` points into the segment.
        let pid = unsafe { libc::getpid() };
        pool().vacate(unsafe { &*slot }, pid);
    }
}

#[used]
#[link_section = ".fini_array"]
static PROCESS_EXIT_HOOK: extern "C" fn() = process_exiting;
