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
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicU8};

use oomguard_core::budget::{BudgetSource, RefusalCause};
use oomguard_core::decide;
use oomguard_core::layout::{LimitSource, ModeReason, SegmentView, Slot};
use oomguard_core::pool::Pool;
use oomguard_core::{Mode, ProcessKind, RefuseScope};

use crate::once::WriteOnce;
use crate::report::Line;
use crate::settings::Settings;
use crate::tls::ThreadState;
use crate::{budget, errno, kernel, policy, segment};
use oomguard_core::units::Bytes;

/// Bytes a thread reserves beyond what a request needs, so the next allocations are local.
pub const BATCH: i64 = 128 << 10;
/// Credit above this goes back to the pool (down to [`BATCH`]).
pub const RELEASE_ABOVE: i64 = 2 * BATCH;
/// Extra bytes a just-refused process may still get, so handling the error can allocate.
const OVERDRAFT: u64 = 64 << 10;
/// [`OVERDRAFT_LEFT`] when no refusal happened since the last normal reservation: the next
/// refusal arms the overdraft.
const OVERDRAFT_IDLE: u64 = u64::MAX;
/// Minimum time between two scans for dead processes by one process.
const REAP_INTERVAL_NS: u64 = 50_000_000;
/// Minimum time between two refusal lines on stderr from one process.
const REPORT_INTERVAL_NS: u64 = 1_000_000_000;

const UNINITIALISED: u8 = 0;
const INITIALISING: u8 = 1;
const ACTIVE: u8 = 2;
const PASS_THROUGH: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNINITIALISED);
/// The attached segment and this process's PID namespace: written by `initialise` before the
/// state becomes ACTIVE, read only after an Acquire load that saw ACTIVE (including by
/// `process_exiting` and by reservations still under way once the state has left ACTIVE: it is
/// never written again).
static ATTACHED: WriteOnce<Attached> = WriteOnce::new();
/// This process's slot.
static SLOT: AtomicPtr<Slot> = AtomicPtr::new(core::ptr::null_mut());
/// This process's [`RefuseScope`], as its index in [`SCOPES`].
static SCOPE: AtomicU8 = AtomicU8::new(0);
const SCOPES: [RefuseScope; 3] = [RefuseScope::Jobs, RefuseScope::Backends, RefuseScope::All];
/// Overdraft bytes left to this process after a refusal, or [`OVERDRAFT_IDLE`]. Armed once per
/// episode: a process over the limit gets at most 64 KiB more until a normal reservation succeeds.
static OVERDRAFT_LEFT: AtomicU64 = AtomicU64::new(OVERDRAFT_IDLE);
static LAST_REAP_NS: AtomicU64 = AtomicU64::new(0);
static LAST_REPORT_NS: AtomicU64 = AtomicU64::new(0);
static UNREPORTED_REFUSALS: AtomicU64 = AtomicU64::new(0);
static THREAD_EXIT_KEY: AtomicU64 = AtomicU64::new(u64::MAX);
/// Bytes of memory this process inherited at fork that it may still free: such frees release
/// nothing (the parent still holds that memory, and the free even copies the page). Set at fork
/// to the parent's reserved bytes plus what the parent itself still had inherited, an upper
/// bound of the memory live in the parent; used up by this process's returns to the pool.
static INHERITED: AtomicU64 = AtomicU64::new(0);
/// Bytes this process holds in the shared overflow slot (when it found every slot taken), so
/// that it can return exactly its own share when it exits.
static OVERFLOW_HELD: AtomicU64 = AtomicU64::new(0);
/// This process's [`Mode`] (enforce or report).
static MODE: AtomicU32 = AtomicU32::new(Mode::Report as u32);

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
    // Off mode and every thread after the start: no locked instruction on this path.
    if STATE.load(Relaxed) != UNINITIALISED {
        return is_active();
    }
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
    let Some(view) = segment::attach(settings.dir, settings.domain, settings.refusal_records)
    else {
        let mut line = Line::new();
        let _ = write!(line, "no memory for an accounting segment; guard off");
        line.emit();
        return false;
    };
    let header = view.header;
    // SAFETY: the only write, before the state becomes ACTIVE (its Release store publishes it);
    // this thread's own `claim_slot` below is the first reader.
    unsafe {
        ATTACHED.write(Attached {
            view,
            pid_namespace: segment::pid_namespace(),
        })
    };
    // The domain's limit: a valid OOM_GUARD_LIMIT is the latest word on it; without one, the
    // derived limit, unless the domain already runs on a given one. A process whose settings
    // are malformed changes nothing shared.
    if !settings.malformed {
        if let Some(limit) = settings.limit {
            header.limit_bytes.store(limit, Relaxed);
            header
                .limit_source
                .store(LimitSource::Environment as u32, Relaxed);
        } else if LimitSource::from_raw(header.limit_source.load(Relaxed))
            != LimitSource::Environment
        {
            header
                .limit_source
                .store(LimitSource::Derived as u32, Relaxed);
            oomguard_core::limit::apply_derived(header);
        }
    }
    kernel::discover(header, &settings);
    budget::set_default(settings.backend_limit);
    if let Some((one_in, seed)) = settings.inject {
        crate::inject::configure(one_in, seed);
    }
    // This process's mode decides its own refusals: `OOM_GUARD_MODE=report psql` must not
    // switch off enforcement for the backends. Without one: enforce when a limit is known.
    let own_mode = mode.unwrap_or(if header.limit_bytes.load(Relaxed) != 0 {
        Mode::Enforce
    } else {
        Mode::Report
    });
    MODE.store(own_mode as u32, Relaxed);
    // The domain's mode, as `oomguard status` shows it: the first process's, with why.
    let reason = if settings.malformed {
        settings.fallback_reason
    } else if mode.is_none() && own_mode == Mode::Report {
        ModeReason::NoLimit
    } else {
        ModeReason::Chosen
    };
    if header
        .mode
        .compare_exchange(0, own_mode as u32, Relaxed, Relaxed)
        .is_ok()
    {
        header.mode_reason.store(reason as u32, Relaxed);
    }
    let scope = SCOPES.iter().position(|&scope| scope == settings.scope);
    SCOPE.store(scope.unwrap_or(0) as u8, Relaxed);
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

/// The segment a process attached, kept where the slow paths find it.
#[derive(Clone, Copy)]
struct Attached {
    view: SegmentView<'static>,
    pid_namespace: u64,
}

/// The attached segment. Only once the state was seen ACTIVE (or in `initialise`, after it
/// attached).
fn attached() -> &'static Attached {
    // SAFETY: written by `initialise` before the state became ACTIVE, never again; the callers
    // saw ACTIVE with an Acquire load, or are `initialise` itself after the write.
    unsafe { ATTACHED.get() }
}

/// The attached segment's view, its refusal records included (the refusal path's).
fn view() -> SegmentView<'static> {
    attached().view
}

/// The pool over the attached segment.
fn pool() -> Pool<'static> {
    let attached = attached();
    Pool::new(attached.view).in_pid_namespace(attached.pid_namespace)
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
/// Keeps errno: it makes system calls (getpid, and reaping's), and a forked child claims its
/// slot from inside whichever call first needs it, `free` included.
fn claim_slot(replaces_image: bool) {
    let saved = errno::get();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let pool = pool();
    let claimed_at = clock_ns(libc::CLOCK_BOOTTIME);
    let mut slot = pool.claim(pid, claimed_at, replaces_image);
    if core::ptr::eq(slot, &pool.header().overflow) && reap(&pool) > 0 {
        // Every slot was taken, some by processes that died without cleaning up (_exit, SIGKILL).
        slot = pool.claim(pid, claimed_at, false);
    }
    SLOT.store(slot as *const Slot as *mut Slot, Relaxed);
    errno::set(saved);
}

/// Frees the slots of dead processes of our PID namespace (the domain name includes the PID
/// namespace, but `OOM_GUARD_DOMAIN` can join any segment: other namespaces' slots are theirs
/// to judge).
fn reap(pool: &Pool<'_>) -> u32 {
    pool.reap_dead(is_alive)
}

/// Whether process `pid` is still the one that claimed its slot at `claimed_at_ns`.
fn is_alive(pid: i32, claimed_at_ns: u64) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(pid, 0) } == 0 || errno::get() == libc::EPERM;
    if !exists {
        return false;
    }
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let fs = crate::sysfs::SysFs::new(&crate::sysfs::REAL_ROOT);
    oomguard_core::procstat::owner_alive(&fs, pid, claimed_at_ns, ticks_per_second)
}

/// A clock read through the vDSO (no system call), in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
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
            note_overflow(bytes as i64);
        }
        errno::set(saved);
        (*thread).busy = false;
        granted.is_some()
    }
}

/// Raises the domain's and this process's peaks after an allocation that needed a reservation
/// succeeded (see [`Pool::record_peaks`]).
pub fn record_peaks() {
    if is_active() {
        pool().record_peaks(my_slot());
    }
}

/// Reserves `need` bytes (plus a batch when it fits) or refuses, as `decide::decide` says.
/// Returns the bytes reserved.
fn grant(need: u64, request: usize, call: &'static str) -> Option<u64> {
    let pool = pool();
    let slot = my_slot();
    kernel::refresh(pool.header(), now_ns);
    let decision = classify(call);
    // Every process shows its kind in `oomguard status` and the refusal records' top consumers,
    // refused or not: a store only when it changed (a forked child becomes what it runs).
    if slot.kind.load(Relaxed) != decision.kind as u32 {
        slot.kind.store(decision.kind as u32, Relaxed);
    }
    let injected = crate::inject::fires();
    let facts = decide::Request {
        need,
        batch: BATCH as u64,
        own: own_bytes(&pool, slot),
        budget: budget::evaluate(&pool, slot, &decision),
        tight: pool.header().cgroup.tight.load(Relaxed) != 0,
        enforce: MODE.load(Relaxed) == Mode::Enforce as u32,
        refusable: decision.refusable,
        injected,
    };
    let mut world = Effects {
        pool: &pool,
        slot,
        kind: decision.kind,
        shared: false,
    };
    match decide::decide(&facts, &mut world) {
        decide::Outcome::Reserved(bytes) => {
            // The refusal episode ends with a reservation that could have been refused and was
            // not. One made where no refusal is allowed (error handling in `ErrorContext`) says
            // nothing about the next: the overdraft stays for what `AbortTransaction` allocates
            // after a refusal on the budget.
            if decision.refusable && OVERDRAFT_LEFT.load(Relaxed) != OVERDRAFT_IDLE {
                OVERDRAFT_LEFT.store(OVERDRAFT_IDLE, Relaxed);
            }
            Some(bytes)
        }
        decide::Outcome::Retried(bytes) => Some(bytes),
        decide::Outcome::Regardless(bytes) => {
            pool.reserve_regardless(slot, bytes);
            Some(bytes)
        }
        decide::Outcome::Refuse(cause) => {
            overdraft_or_refuse(&pool, slot, decision.kind, need, request, call, cause)
        }
    }
}

/// What `decide` asks of the world, done on the shared pool for this process's slot.
struct Effects<'a> {
    pool: &'a Pool<'a>,
    slot: &'a Slot,
    kind: ProcessKind,
    /// Dynamic shared memory (charged to the total, to no slot) rather than malloc.
    shared: bool,
}

impl decide::World for Effects<'_> {
    fn would_fit(&mut self, bytes: u64) -> bool {
        self.pool.would_fit(bytes)
    }

    fn try_reserve(&mut self, bytes: u64) -> bool {
        if self.shared {
            self.pool.reserve_shared(bytes, false)
        } else {
            self.pool.try_reserve(self.slot, bytes)
        }
    }

    fn reap_and_retry(&mut self, bytes: u64) -> bool {
        due(&LAST_REAP_NS, REAP_INTERVAL_NS) && reap(self.pool) > 0 && self.try_reserve(bytes)
    }

    fn fragile_stack(&mut self) -> bool {
        crate::fragile::on_stack()
    }

    fn considering_refusal(&mut self) {
        self.slot.kind.store(self.kind as u32, Relaxed);
    }

    fn would_refuse(&mut self) {
        self.pool.record_overlimit_report(self.slot);
    }
}

/// This process's bytes: its slot's, or its own share of the shared overflow slot.
fn own_bytes(pool: &Pool<'_>, slot: &Slot) -> u64 {
    if core::ptr::eq(slot, &pool.header().overflow) {
        OVERFLOW_HELD.load(Relaxed)
    } else {
        slot.bytes.load(Relaxed).max(0) as u64
    }
}

/// A request about to be refused: served from the overdraft if this refusal episode has some
/// left, else refused (counted and reported). Returns the bytes reserved.
fn overdraft_or_refuse(
    pool: &Pool<'_>,
    slot: &Slot,
    kind: ProcessKind,
    need: u64,
    request: usize,
    call: &'static str,
    cause: RefusalCause,
) -> Option<u64> {
    let overdraft = OVERDRAFT_LEFT.load(Relaxed);
    if overdraft != OVERDRAFT_IDLE
        && need <= overdraft
        && OVERDRAFT_LEFT
            .compare_exchange(overdraft, overdraft - need, Relaxed, Relaxed)
            .is_ok()
    {
        pool.reserve_regardless(slot, need);
        return Some(need);
    }
    // Refused. What handling the error allocates next gets the overdraft, once per episode.
    let _ = OVERDRAFT_LEFT.compare_exchange(OVERDRAFT_IDLE, OVERDRAFT, Relaxed, Relaxed);
    refuse(pool, slot, kind, request as u64, call, cause);
    None
}

/// Counts a refusal and says so on stderr.
fn refuse(
    pool: &Pool<'_>,
    slot: &Slot,
    kind: ProcessKind,
    bytes: u64,
    call: &str,
    cause: RefusalCause,
) {
    pool.record_denial(slot, bytes, cause);
    crate::record::refusal(
        &view(),
        crate::record::Facts {
            slot,
            kind,
            own_bytes: own_bytes(pool, slot),
            request: bytes,
            call,
            cause,
            limit: pool.limit(),
        },
    );
    report_refusal(pool, slot, kind, bytes as usize, call, cause);
}

/// What this process is and whether it may be refused right now.
fn classify(call: &str) -> policy::Decision {
    let scope = SCOPES[usize::from(SCOPE.load(Relaxed)).min(SCOPES.len() - 1)];
    // SAFETY: the calling thread's own state.
    let in_loader = unsafe { (*crate::tls::current()).in_loader };
    policy::classify(scope, in_loader, call)
}

/// Charges `bytes` of PostgreSQL dynamic shared memory (a tmpfs file grown by `call`) to the
/// pool, under the same policy as malloc. Returns false when refused (the caller fails with
/// ENOSPC). Keeps errno, and lets the allocations it causes (dlsym's) pass like `reserve` does.
pub fn reserve_shared(bytes: u64, call: &'static str) -> bool {
    if !active_or_started() {
        return true;
    }
    let thread = crate::tls::current();
    // SAFETY: the calling thread's own state.
    unsafe {
        if (*thread).busy {
            return true;
        }
        (*thread).busy = true;
    }
    let saved = errno::get();
    let pool = pool();
    kernel::refresh(pool.header(), now_ns);
    let tight = pool.header().cgroup.tight.load(Relaxed) != 0;
    let granted = (!tight && pool.reserve_shared(bytes, false)) || {
        let slot = my_slot();
        let decision = classify(call);
        let facts = decide::Request {
            need: bytes,
            batch: 0,
            own: 0,
            budget: None,
            tight,
            enforce: MODE.load(Relaxed) == Mode::Enforce as u32,
            refusable: decision.refusable,
            injected: false,
        };
        let mut world = Effects {
            pool: &pool,
            slot,
            kind: decision.kind,
            shared: true,
        };
        match decide::over_limit(&facts, &mut world) {
            decide::Outcome::Regardless(bytes) => pool.reserve_shared(bytes, true),
            decide::Outcome::Refuse(cause) => {
                pool.header()
                    .stats
                    .dynamic_shared_denials
                    .fetch_add(1, Relaxed);
                refuse(&pool, slot, decision.kind, bytes, call, cause);
                false
            }
            decide::Outcome::Reserved(_) | decide::Outcome::Retried(_) => true,
        }
    };
    errno::set(saved);
    // SAFETY: as above.
    unsafe { (*thread).busy = false };
    granted
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
fn report_refusal(
    pool: &Pool<'_>,
    slot: &Slot,
    kind: ProcessKind,
    request: usize,
    call: &str,
    cause: RefusalCause,
) {
    if !due(&LAST_REPORT_NS, REPORT_INTERVAL_NS) {
        UNREPORTED_REFUSALS.fetch_add(1, Relaxed);
        return;
    }
    let header = pool.header();
    let mut line = Line::new();
    let _ = write!(
        line,
        "refused {call}({request} bytes) in {}: ",
        policy::Described(kind)
    );
    let _ = match cause {
        RefusalCause::KernelTight => write!(
            line,
            "the kernel counts {} anon + {} shmem in the cgroup, within the reserve {} of its \
             limit {}",
            Bytes(header.cgroup.anon_bytes.load(Relaxed) as i64),
            Bytes(header.cgroup.shmem_bytes.load(Relaxed) as i64),
            Bytes(header.limit_inputs.reserve_bytes.load(Relaxed) as i64),
            Bytes(header.limit_inputs.cgroup_limit_bytes.load(Relaxed) as i64),
        ),
        RefusalCause::BackendBudget => write!(
            line,
            "its own {} + request would pass its budget {} ({}; the guarded total {} is within \
             the limit {})",
            Bytes(own_bytes(pool, slot) as i64),
            Bytes(slot.budget_bytes.load(Relaxed) as i64),
            BudgetSource::from_raw(slot.budget_source.load(Relaxed)).name(),
            Bytes(header.total.load(Relaxed)),
            Bytes(pool.limit() as i64),
        ),
        RefusalCause::DomainLimit | RefusalCause::None => write!(
            line,
            "guarded total {} + request would pass the limit {}",
            Bytes(header.total.load(Relaxed)),
            Bytes(pool.limit() as i64),
        ),
    };
    let _ = write!(line, " [cause {}] (OOM_GUARD_MODE=enforce)", cause.name());
    if crate::inject::active() {
        let _ = write!(
            line,
            " (OOM_GUARD_TEST_INJECT is on: refusals are also made at random)"
        );
    }
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
        // A thread that only frees (a consumer) holds credit too: return it when it exits.
        arm_thread_exit_hook(thread);
        let excess = (*thread).credit - BATCH;
        if excess > 0 {
            (*thread).credit = BATCH;
            give_back(excess as u64);
        }
    }
}

/// Returns `bytes` of a thread's credit to the pool, less what frees of inherited memory put
/// into it (see [`INHERITED`]): in a forked child, returns are counted against its inheritance
/// first. So a child that allocates and then frees what it inherited keeps its own count
/// (it never under-counts by its frees of inherited blocks as long as they are returned here),
/// and over-counts by at most what it inherited until it has freed that much.
fn give_back(bytes: u64) {
    let mut inherited = INHERITED.load(Relaxed);
    let absorbed = loop {
        let absorbed = bytes.min(inherited);
        if absorbed == 0 {
            break 0;
        }
        match INHERITED.compare_exchange_weak(inherited, inherited - absorbed, Relaxed, Relaxed) {
            Ok(_) => break absorbed,
            Err(seen) => inherited = seen,
        }
    };
    if bytes > absorbed {
        pool().release(my_slot(), bytes - absorbed);
        note_overflow(-((bytes - absorbed) as i64));
    }
}

/// Keeps [`OVERFLOW_HELD`] when this process is accounted in the shared overflow slot.
fn note_overflow(delta: i64) {
    let slot = SLOT.load(Relaxed);
    if core::ptr::eq(slot, &pool().header().overflow) {
        let _ = OVERFLOW_HELD.fetch_update(Relaxed, Relaxed, |held| {
            Some(held.saturating_add_signed(delta))
        });
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

/// Arms the calling thread's exit hook, if the guard accounts (see `threads`).
pub fn arm_exit_hook_of_this_thread() {
    if is_active() {
        // SAFETY: the calling thread's own state.
        unsafe { arm_thread_exit_hook(crate::tls::current()) };
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
    unsafe {
        settle(thread);
        // Other keys' destructors may still allocate and free after ours: setting the key again
        // makes glibc run another round of destructors (it runs up to four), which settles
        // what they left.
        if (*thread).exit_rounds < 3 {
            (*thread).exit_rounds += 1;
            let key = THREAD_EXIT_KEY.load(Relaxed);
            libc::pthread_setspecific(key as libc::pthread_key_t, core::ptr::dangling());
        }
    }
}

/// Returns a thread's whole credit (or covers its small debt) and flushes its counters.
unsafe fn settle(thread: *mut ThreadState) {
    // SAFETY: forwarded contract.
    unsafe {
        let credit = core::mem::take(&mut (*thread).credit);
        if credit > 0 {
            give_back(credit as u64);
        } else if credit < 0 {
            pool().reserve_regardless(my_slot(), credit.unsigned_abs());
            note_overflow(credit.unsigned_abs() as i64);
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
    // What the parent held (its slot, if it had claimed one yet) is what this child may free
    // without releasing anything, on top of what the parent had inherited itself.
    let parent_slot = SLOT.load(Relaxed);
    let parent_bytes = if parent_slot.is_null() {
        0
    } else {
        // SAFETY: the parent's slot, in the segment this child inherited mapped.
        own_bytes(&pool(), unsafe { &*parent_slot })
    };
    INHERITED.fetch_add(parent_bytes, Relaxed);
    OVERFLOW_HELD.store(0, Relaxed);
    OVERDRAFT_LEFT.store(OVERDRAFT_IDLE, Relaxed);
    LAST_REAP_NS.store(0, Relaxed);
    LAST_REPORT_NS.store(0, Relaxed);
    UNREPORTED_REFUSALS.store(0, Relaxed);
    SLOT.store(core::ptr::null_mut(), Relaxed);
    if let Some((work_mem_kb, max_connections)) = policy::postmaster_settings() {
        pool()
            .header()
            .server_settings
            .record(work_mem_kb, max_connections);
    }
    crate::inject::reseed();
    crate::record::forked();
    policy::forked();
}

/// At a clean exit: give the slot back, so only killed processes need reaping. Frees that run
/// after this (other libraries' destructors) pass through. Run by `init`'s destructor.
pub fn process_exiting() {
    if STATE
        .compare_exchange(ACTIVE, PASS_THROUGH, Acquire, Relaxed)
        .is_err()
    {
        return;
    }
    let slot = SLOT.load(Relaxed);
    if slot.is_null() {
        return;
    }
    let pool = pool();
    // SAFETY: `slot` points into the never-unmapped segment.
    let slot = unsafe { &*slot };
    if core::ptr::eq(slot, &pool.header().overflow) {
        // A shared slot: give back this process's own share only.
        pool.release(slot, OVERFLOW_HELD.swap(0, Relaxed));
    } else {
        // SAFETY: getpid has no preconditions.
        pool.vacate(slot, unsafe { libc::getpid() });
    }
}
