//! Which processes may be refused, and when (ARCHITECTURE.md, "Which processes are refused";
//! the README's table by backend type).
//!
//! Refusing in the wrong place is worse than no guard: an ERROR inside a critical section becomes
//! a PANIC, and the postmaster or startup process exiting takes the whole server down. So a
//! request is refused only in a PostgreSQL process whose ERROR fails one query or one job and
//! nothing else — client backends, parallel workers, background workers that run extensions'
//! jobs, autovacuum workers, logical replication workers (narrowed by `OOM_GUARD_REFUSE`) — and
//! only in a state where the ERROR is safe:
//!
//! - not in a critical section (`CritSectionCount == 0`: an ERROR there is promoted to PANIC);
//! - an error handler is set (`PG_exception_stack != NULL`: without one, ERROR becomes FATAL);
//! - not exiting (`proc_exit_inprogress`), not told to turn every ERROR into FATAL
//!   (`ExitOnAnyError`), and not allocating in `ErrorContext` (reporting an error);
//! - not inside `dlopen` and not while LLVM compiles inside PostgreSQL's fatal-on-OOM bracket
//!   (see `loader`): their NULLs become aborts or FATAL, not ERRORs;
//! - not a `calloc` (PostgreSQL calls it only where a NULL becomes FATAL, or at start-up);
//! - not inside one of PostgreSQL's functions that crash on a later call after a failed
//!   allocation (see `fragile`; checked only when a request is about to be refused).
//!
//! Everything else is accounted and always served.
//!
//! Considered and left out: `InterruptHoldoffCount > 0`. Error recovery runs with interrupts held,
//! but so does all code that holds an LWLock or a buffer content lock, where an ERROR is routine
//! (`AbortTransaction` releases every LWLock): ANALYZE copies its sample rows under a buffer lock,
//! and an autovacuum worker's auto-analyze of a wide table was OOM-killed with that rule.
//! Error recovery allocates from contexts PostgreSQL reserves for it (`ErrorContext`,
//! `TransactionAbortContext`), and what it mallocs right after a refusal gets the guard's
//! overdraft.
//!
//! PostgreSQL exports the globals that tell. They are looked up once per process image by the
//! library's constructor ([`look_up_symbols`], before `main`, never inside an allocation: `dlsym`
//! takes the loader's lock and clears a pending `dlerror()`), and read at each decision.

use core::ffi::{c_char, c_int, c_void, CStr};
use core::fmt;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64};

use oomguard_core::{ProcessKind, RefuseScope};

use crate::once::WriteOnce;

/// `BGW_MAXLEN` of PostgreSQL 11 to 18: `BackgroundWorker` starts with `char bgw_name[96]` and
/// `char bgw_type[96]`; the guard reads only those two.
const BGW_MAXLEN: usize = 96;

#[repr(C)]
struct BackgroundWorkerPrefix {
    bgw_name: [c_char; BGW_MAXLEN],
    bgw_type: [c_char; BGW_MAXLEN],
}

/// PostgreSQL's globals the policy reads, in the order [`Symbols::from_addresses`] takes them.
const NAMES: [&CStr; 10] = [
    c"MyBackendType",
    c"GetBackendTypeDesc",
    c"IsUnderPostmaster",
    c"CritSectionCount",
    c"PG_exception_stack",
    c"proc_exit_inprogress",
    c"CurrentMemoryContext",
    c"ErrorContext",
    c"MyBgworkerEntry",
    c"ExitOnAnyError",
];

/// The addresses of [`NAMES`], written by [`look_up_symbols`] before [`IS_POSTGRES`] publishes
/// them.
static SYMBOLS: WriteOnce<Symbols> = WriteOnce::new();
/// Every name in [`NAMES`] was found: this process image is a PostgreSQL server.
static IS_POSTGRES: AtomicBool = AtomicBool::new(false);
/// PostgreSQL's `const char *GetConfigOption(const char *name, bool missing_ok, bool
/// restrict_privileged)` (the same since 9.2), for `oomguard.backend_memory_limit`.
static GET_CONFIG_OPTION: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());

/// PostgreSQL's symbols read only for the refusal record (see [`with_statement_identity`]);
/// each may be missing (null) without changing anything else.
static MY_DATABASE_ID: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static DEBUG_QUERY_STRING: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static GET_MY_QUERY_ID: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static GET_SESSION_USER_ID: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());

/// PostgreSQL's `int work_mem` and `int MaxConnections` (globals.c), read only in a child the
/// postmaster just forked (see [`postmaster_settings`]); each may be missing (null).
static WORK_MEM: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static MAX_CONNECTIONS: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());

/// `pthread_self()` of the thread that runs PostgreSQL (the one that loaded the library, or
/// that forked this process): only it may call into PostgreSQL's settings.
static MAIN_THREAD: AtomicU64 = AtomicU64::new(0);

/// Whether the calling thread is PostgreSQL's own (see [`MAIN_THREAD`]). `pthread_self` reads
/// the thread pointer: no system call.
pub fn on_main_thread() -> bool {
    // SAFETY: pthread_self has no preconditions.
    let this_thread = unsafe { libc::pthread_self() } as u64;
    this_thread == MAIN_THREAD.load(Relaxed)
}

/// This process image is a forked child of a guarded process (not the image that exec
/// started): a PostgreSQL child is not the postmaster even before it sets `IsUnderPostmaster`.
static FORKED: AtomicBool = AtomicBool::new(false);

/// In a forked child: the forking thread is the child's only one.
pub fn forked() {
    FORKED.store(true, Relaxed);
    note_main_thread();
}

/// Records the calling thread as PostgreSQL's own (see [`MAIN_THREAD`]).
fn note_main_thread() {
    // SAFETY: pthread_self has no preconditions (no system call).
    MAIN_THREAD.store(unsafe { libc::pthread_self() } as u64, Relaxed);
}

/// Looks PostgreSQL's globals up in this process image. Runs from the library's constructor.
pub fn look_up_symbols() {
    note_main_thread();
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no other requirement.
    let addresses = NAMES.map(|name| unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) });
    let all_found = addresses.iter().all(|address| !address.is_null());
    if all_found {
        // SAFETY: every name was found, in `NAMES`' order; the only write, from the library's
        // constructor, before `IS_POSTGRES` publishes it (below).
        unsafe { SYMBOLS.write(Symbols::from_addresses(addresses)) };
        // SAFETY: as above.
        let address = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"GetConfigOption".as_ptr()) };
        GET_CONFIG_OPTION.store(address, Relaxed);
        for (name, slot) in [
            (c"MyDatabaseId", &MY_DATABASE_ID),
            (c"debug_query_string", &DEBUG_QUERY_STRING),
            (c"pgstat_get_my_query_id", &GET_MY_QUERY_ID),
            (c"GetSessionUserId", &GET_SESSION_USER_ID),
            (c"work_mem", &WORK_MEM),
            (c"MaxConnections", &MAX_CONNECTIONS),
        ] {
            // SAFETY: as above.
            slot.store(
                unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) },
                Relaxed,
            );
        }
        crate::fragile::look_up();
    }
    // Not PostgreSQL (or no GetConfigOption): leave no "undefined symbol" message for the
    // program's own dlerror().
    // SAFETY: dlerror has no preconditions.
    unsafe { libc::dlerror() };
    IS_POSTGRES.store(all_found, Release);
}

/// The name of the PostgreSQL setting that holds a process's budget.
pub const BUDGET_SETTING: &CStr = c"oomguard.backend_memory_limit";

/// The current value of `oomguard.backend_memory_limit` in this PostgreSQL process, at most
/// `longest` + 1 of its bytes (a longer value is malformed: never read whole), `None` when it is
/// not set (or this is not a process under the postmaster).
///
/// Why calling into PostgreSQL here is safe, from inside any `malloc` (PostgreSQL 15.18
/// `src/backend/utils/misc/guc.c`; 16–18 keep the same shape over a hash table):
/// - `GetConfigOption(name, missing_ok = true, restrict_privileged = false)` calls
///   `find_option(name, create_placeholders = false, skip_errors = true, ERROR)`: a `bsearch`
///   over `guc_variables` with `guc_name_compare` (16+: `hash_search(HASH_FIND)`), then a loop
///   over the static `map_old_guc_names`. With `create_placeholders` false nothing is added and
///   nothing allocated; with `skip_errors` true an unknown name returns NULL without `ereport`.
///   `restrict_privileged = false` skips the privilege check (the only catalog access).
/// - The value of a placeholder (a custom setting no library defines, which this is) is a
///   `PGC_STRING`: `GetConfigOption` returns `*variable`, the string itself, no copy. It is NULL
///   until a value is set.
/// - Re-entrancy: the allocations `guc.c` makes while changing the table (`guc_malloc`,
///   `guc_realloc` of `guc_variables`; its `qsort` is PostgreSQL's `pg_qsort`, which allocates
///   nothing) happen before the table is switched over: a lookup from inside one sees the old,
///   valid table. A string value is replaced by storing the new pointer before freeing the old
///   one (`set_string_field`); `RestoreGUCState` (parallel workers) frees first and resets the
///   value after, but allocates nothing in between (a placeholder's boot value is NULL).
/// - Only under the postmaster (`IsUnderPostmaster`): every such process inherits the tables the
///   postmaster built at start (16+ has no table before `InitializeGUCOptions`).
/// - Only on PostgreSQL's own thread: another thread (an extension's) could read the table
///   while the main thread reallocates it. Other threads are never refused anyway.
/// - Only where the request could be refused (see `budget::evaluate`): not in a critical
///   section, not in error recovery or exit, so not in `quickdie`'s report either (it allocates
///   in `ErrorContext`), the one signal handler of PostgreSQL's that allocates.
pub fn budget_setting(longest: usize) -> Option<&'static [u8]> {
    let symbols = symbols()?;
    let get_config_option = GET_CONFIG_OPTION.load(Relaxed);
    // SAFETY: as in `kind_of`.
    if get_config_option.is_null() || !on_main_thread() || !unsafe { *symbols.is_under_postmaster }
    {
        return None;
    }
    // SAFETY: the symbol GetConfigOption is PostgreSQL's function of that signature.
    let get_config_option = unsafe {
        core::mem::transmute::<
            *mut c_void,
            unsafe extern "C" fn(*const c_char, bool, bool) -> *const c_char,
        >(get_config_option)
    };
    // SAFETY: a NUL-terminated name; see above for why the call is safe here.
    let value = unsafe { get_config_option(BUDGET_SETTING.as_ptr(), true, false) };
    if value.is_null() {
        return None;
    }
    // SAFETY: a non-null result is the setting's NUL-terminated string, alive until the setting
    // changes, i.e. beyond this allocation; `strnlen` reads no further than `longest` + 1 bytes.
    unsafe {
        let len = libc::strnlen(value, longest + 1);
        Some(core::slice::from_raw_parts(value.cast::<u8>(), len))
    }
}

/// The postmaster's `work_mem` (kB) and `max_connections`, when called in a child the postmaster
/// has just forked (from the fork handler, before [`forked`]); `None` anywhere else.
///
/// The child is a copy of the postmaster: its globals hold the server-wide values, which the
/// postmaster keeps in step with `postgresql.conf` (and `ALTER SYSTEM`) at every reload, before
/// the child applies its own options. Both are plain exported `int`s on PostgreSQL 15 to 18;
/// reading them is two loads of the process's own memory. The postmaster is the image that exec
/// started (not [`FORKED`]) and has `IsUnderPostmaster` false; a standalone backend (`postgres
/// --single`) looks the same and its values are as good.
pub fn postmaster_settings() -> Option<(i32, i32)> {
    let symbols = symbols()?;
    let work_mem = WORK_MEM.load(Relaxed) as *const c_int;
    let max_connections = MAX_CONNECTIONS.load(Relaxed) as *const c_int;
    // SAFETY: as in `kind_of`.
    let under_postmaster = unsafe { *symbols.is_under_postmaster };
    if FORKED.load(Relaxed) || under_postmaster || work_mem.is_null() || max_connections.is_null() {
        return None;
    }
    // SAFETY: the addresses of PostgreSQL's `int work_mem` and `int MaxConnections`.
    Some(unsafe { (*work_mem, *max_connections) })
}

/// What PostgreSQL says about the statement a refused request belongs to (zero and empty where
/// it says nothing).
pub struct Identity<'a> {
    /// `MyDatabaseId`.
    pub database_oid: u32,
    /// `GetSessionUserId()`: the role the session logged in as (`pg_stat_activity.usesysid`).
    pub role_oid: u32,
    /// `pgstat_get_my_query_id()`: `pg_stat_statements.queryid` (0 with `compute_query_id`
    /// off, or before the statement was analysed).
    pub query_id: u64,
    /// `debug_query_string`'s first `STATEMENT_BYTES` bytes, plus one byte when it is longer.
    pub statement: &'a [u8],
}

/// Hands `use_it` the statement of the request being refused, read from PostgreSQL. The text is
/// PostgreSQL's, valid only until it moves on: copy it, do not keep it.
///
/// Only asked at a refusal, so only where `classify` allowed one: on PostgreSQL's own thread,
/// under the postmaster, not in a critical section, with an error handler set, not exiting and
/// not reporting an error. Why each read is safe there, on PostgreSQL 15 to 18:
/// - `MyDatabaseId` (`Oid`, globals.c) and `debug_query_string` (`const char *`, postgres.c) are
///   plain exported globals; the guard loads them.
/// - `debug_query_string`, when not NULL, is the text of the statement being executed, which
///   PostgreSQL's own error reporting reads for the `STATEMENT:` line of every ERROR (elog.c);
///   it lives in memory that outlives the statement's execution. At most
///   `STATEMENT_BYTES` + 1 bytes are read (`strnlen`), never past its NUL.
/// - `pgstat_get_my_query_id()` (backend_status.c, since 14) returns `MyBEEntry->st_query_id`,
///   or 0 without a `MyBEEntry`: two loads, no allocation, no error path.
/// - `GetSessionUserId()` (miscinit.c) returns a static and only asserts (in assertion-enabled
///   builds) that it is set; `InitPostgres` sets it before `MyDatabaseId`, so it is called only
///   once `MyDatabaseId` is set.
pub fn with_statement_identity<R>(use_it: impl FnOnce(&Identity<'_>) -> R) -> R {
    let nothing = Identity {
        database_oid: 0,
        role_oid: 0,
        query_id: 0,
        statement: &[],
    };
    let Some(symbols) = symbols() else {
        return use_it(&nothing);
    };
    // SAFETY: as in `kind_of`.
    if !on_main_thread() || !unsafe { *symbols.is_under_postmaster } {
        return use_it(&nothing);
    }
    let database = MY_DATABASE_ID.load(Relaxed) as *const u32;
    let database_oid = if database.is_null() {
        0
    } else {
        // SAFETY: the address of PostgreSQL's `Oid MyDatabaseId`.
        unsafe { *database }
    };
    let role_oid = match GET_SESSION_USER_ID.load(Relaxed) {
        function if !function.is_null() && database_oid != 0 => {
            // SAFETY: PostgreSQL's `Oid GetSessionUserId(void)`, set once a database is.
            unsafe {
                core::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> u32>(function)()
            }
        }
        _ => 0,
    };
    let query_id = match GET_MY_QUERY_ID.load(Relaxed) {
        function if !function.is_null() => {
            // SAFETY: PostgreSQL's `uint64 pgstat_get_my_query_id(void)`.
            unsafe {
                core::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> u64>(function)()
            }
        }
        _ => 0,
    };
    let text = DEBUG_QUERY_STRING.load(Relaxed) as *const *const c_char;
    let text = if text.is_null() {
        core::ptr::null()
    } else {
        // SAFETY: the address of PostgreSQL's `const char *debug_query_string`.
        unsafe { *text }
    };
    let statement = if text.is_null() {
        &[][..]
    } else {
        let longest = oomguard_core::layout::STATEMENT_BYTES + 1;
        // SAFETY: a NUL-terminated string (see above); `strnlen` reads at most `longest` bytes.
        unsafe {
            let len = libc::strnlen(text, longest);
            core::slice::from_raw_parts(text.cast::<u8>(), len)
        }
    };
    use_it(&Identity {
        database_oid,
        role_oid,
        query_id,
        statement,
    })
}

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
    my_bgworker_entry: *const *const BackgroundWorkerPrefix,
    exit_on_any_error: *const bool,
}

// SAFETY: the addresses of PostgreSQL's globals and functions in this process image, valid for
// its whole life; every read through them is its user's own `unsafe`, on PostgreSQL's thread.
unsafe impl Send for Symbols {}
// SAFETY: as above; the struct itself is never written after it is published.
unsafe impl Sync for Symbols {}

impl Symbols {
    /// The symbols from their addresses.
    ///
    /// # Safety
    /// `address` holds what `dlsym` found for [`NAMES`], in that order, none of them null.
    unsafe fn from_addresses(address: [*mut c_void; 10]) -> Symbols {
        Symbols {
            my_backend_type: address[0].cast(),
            // SAFETY: the caller's contract: the non-null address of PostgreSQL's
            // `const char *GetBackendTypeDesc(BackendType)`.
            get_backend_type_desc: unsafe {
                core::mem::transmute::<*mut c_void, unsafe extern "C" fn(c_int) -> *const c_char>(
                    address[1],
                )
            },
            is_under_postmaster: address[2].cast(),
            crit_section_count: address[3].cast(),
            exception_stack: address[4].cast(),
            exit_in_progress: address[5].cast(),
            current_context: address[6].cast(),
            error_context: address[7].cast(),
            my_bgworker_entry: address[8].cast(),
            exit_on_any_error: address[9].cast(),
        }
    }
}

/// Whether this process image is a PostgreSQL server (its symbols were all found).
pub fn is_postgres() -> bool {
    IS_POSTGRES.load(Acquire)
}

fn symbols() -> Option<&'static Symbols> {
    if !is_postgres() {
        return None;
    }
    // SAFETY: written before `IS_POSTGRES` was set (Release), which this thread saw (Acquire).
    Some(unsafe { SYMBOLS.get() })
}

/// What the process is and whether the request it is making may be refused right now.
pub struct Decision {
    /// The kind recorded in the process's slot.
    pub kind: ProcessKind,
    /// Whether refusing is allowed now.
    pub refusable: bool,
}

/// Classifies the calling process and decides. `in_loader`: the calling thread is inside
/// `dlopen`; `call`: the allocating function (`malloc`, `calloc`, …).
///
/// Inlined into each reservation for the common answer outside PostgreSQL; a PostgreSQL process
/// is looked at out of line.
#[inline(always)]
pub fn classify(scope: RefuseScope, in_loader: bool, call: &str) -> Decision {
    if !is_postgres() {
        return not_postgres(scope, in_loader);
    }
    classify_postgres(scope, in_loader, call)
}

/// The decision for a process that is not a PostgreSQL server.
#[inline(always)]
fn not_postgres(scope: RefuseScope, in_loader: bool) -> Decision {
    Decision {
        kind: ProcessKind::Other,
        refusable: scope == RefuseScope::All && !in_loader,
    }
}

#[inline(never)]
fn classify_postgres(scope: RefuseScope, in_loader: bool, call: &str) -> Decision {
    let Some(symbols) = symbols() else {
        return not_postgres(scope, in_loader);
    };
    let kind = kind_of(symbols);
    // A thread an extension started (a JVM's, an embedded engine's) is not inside PostgreSQL's
    // error handling: the globals below describe the main thread, and a NULL there is that
    // library's to handle — often an abort, which takes the server through crash recovery.
    let refusable = scope.covers(kind)
        && on_main_thread()
        && !in_loader
        // PostgreSQL's own code calls calloc only where a NULL becomes FATAL (`InitLocalBuffers`:
        // a session's first temporary table) or while a process starts; palloc never does.
        && call != "calloc"
        && !crate::loader::cxx_new_handler_installed()
        && safe_to_fail(symbols);
    Decision { kind, refusable }
}

/// The last `MyBackendType` [`kind_of`] described and its kind, packed as [`KindCache`] says,
/// so each reservation of a process costs two loads and a compare rather than a call into
/// PostgreSQL and a string compare. Keyed on the value itself, a forked child that changes its
/// backend type misses the cache by construction.
static KIND_CACHE: AtomicU64 = AtomicU64::new(KindCache::EMPTY);

/// The packing of [`KIND_CACHE`]: bit 63 set when valid, the kind's raw value in bits 32–39,
/// `MyBackendType` in bits 0–31. Only processes under the postmaster that are not background
/// workers are cached: their kind is a function of `MyBackendType` alone.
struct KindCache;

impl KindCache {
    const EMPTY: u64 = 0;
    const VALID: u64 = 1 << 63;

    fn key(backend_type: c_int) -> u64 {
        Self::VALID | u64::from(backend_type as u32)
    }

    fn lookup(backend_type: c_int) -> Option<ProcessKind> {
        let cached = KIND_CACHE.load(Relaxed);
        if cached & (Self::VALID | 0xffff_ffff) != Self::key(backend_type) {
            return None;
        }
        Some(ProcessKind::from_raw(((cached >> 32) & 0xff) as u32))
    }

    fn store(backend_type: c_int, kind: ProcessKind) {
        KIND_CACHE.store(Self::key(backend_type) | (kind as u64) << 32, Relaxed);
    }
}

fn kind_of(symbols: &Symbols) -> ProcessKind {
    // SAFETY: every pointer is the address of the PostgreSQL global of that name and type, in
    // this process image; they are plain loads of the process's own memory.
    let (under_postmaster, backend_type, worker) = unsafe {
        (
            *symbols.is_under_postmaster,
            *symbols.my_backend_type,
            !(*symbols.my_bgworker_entry).is_null(),
        )
    };
    if !under_postmaster {
        // A child the postmaster just forked has not set `IsUnderPostmaster` yet: it is not
        // the postmaster, and what it becomes is known at its next reservation.
        return if FORKED.load(Relaxed) {
            ProcessKind::Unclassified
        } else {
            ProcessKind::Postmaster
        };
    }
    if worker {
        return describe_kind(symbols, backend_type);
    }
    if let Some(kind) = KindCache::lookup(backend_type) {
        return kind;
    }
    let kind = describe_kind(symbols, backend_type);
    KindCache::store(backend_type, kind);
    kind
}

/// The kind of a process under the postmaster whose `MyBackendType` is `backend_type`.
fn describe_kind(symbols: &Symbols, backend_type: c_int) -> ProcessKind {
    // SAFETY: as in `kind_of`; GetBackendTypeDesc returns a static string for any value.
    unsafe {
        let description = (symbols.get_backend_type_desc)(backend_type);
        if description.is_null() {
            return ProcessKind::PostgresAuxiliary;
        }
        match CStr::from_ptr(description).to_bytes() {
            b"client backend" => ProcessKind::ClientBackend,
            b"autovacuum worker" => ProcessKind::AutovacuumWorker,
            b"walsender" => ProcessKind::WalSender,
            b"background worker" => ProcessKind::of_background_worker(bgw_type(symbols)),
            _ => ProcessKind::PostgresAuxiliary,
        }
    }
}

/// The `bgw_type` of this background worker (what `pg_stat_activity.backend_type` shows), if
/// any.
fn bgw_type(symbols: &Symbols) -> Option<&'static [u8]> {
    // SAFETY: `MyBgworkerEntry` is PostgreSQL's `BackgroundWorker *`, null outside background
    // workers; it points into the process's own memory for the process's lifetime.
    let entry = unsafe { *symbols.my_bgworker_entry };
    if entry.is_null() {
        return None;
    }
    // SAFETY: a BackgroundWorker starts with the two fixed-size name arrays.
    let field = unsafe { &(*entry).bgw_type };
    // SAFETY: c_char and u8 have the same layout.
    let bytes: &[u8; BGW_MAXLEN] = unsafe { &*(field as *const [c_char; BGW_MAXLEN]).cast() };
    let len = bytes
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(BGW_MAXLEN);
    Some(&bytes[..len])
}

/// Whether an ERROR raised now fails the current query or job cleanly.
fn safe_to_fail(symbols: &Symbols) -> bool {
    // SAFETY: as in `kind_of`.
    unsafe {
        core::ptr::read_volatile(symbols.crit_section_count) == 0
            && !(*symbols.exception_stack).is_null()
            && !*symbols.exit_in_progress
            && !*symbols.exit_on_any_error
            && *symbols.current_context != *symbols.error_context
    }
}

/// The process as `pg_stat_activity.backend_type` names it, for the refusal line: `client
/// backend`, `parallel worker`, `background worker "pg_cron"`, …
pub struct Described(pub ProcessKind);

impl fmt::Display for Described {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let worker_type = match self.0 {
            ProcessKind::BackgroundWorker | ProcessKind::LogicalReplicationWorker => {
                symbols().and_then(bgw_type)
            }
            _ => None,
        };
        match worker_type {
            Some(name) if self.0 == ProcessKind::BackgroundWorker => {
                let name = core::str::from_utf8(name).unwrap_or("?");
                write!(f, "background worker \"{name}\"")
            }
            Some(name) => f.write_str(core::str::from_utf8(name).unwrap_or("?")),
            None => f.write_str(self.0.name()),
        }
    }
}
