//! Each refusable process's budget: `oomguard.backend_memory_limit` as PostgreSQL has it set for
//! the process right now (role, database, session, transaction, `PGOPTIONS`, or a parallel
//! worker's copy of its leader's), else `OOM_GUARD_BACKEND_LIMIT`.
//!
//! Evaluated at each reservation where a refusal is allowed (the slow path, once per batch of
//! allocation growth; on PostgreSQL's own thread), never on the malloc fast path: a `SET` takes
//! effect within one batch (128 KiB) of allocation. The result is recorded in the process's
//! slot for `oomguard status`.

use core::fmt::Write;
use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::Relaxed;

use oomguard_core::budget::{Budget, BudgetError, BudgetSource, BudgetWord, SETTING_FORMS};
use oomguard_core::layout::Slot;
use oomguard_core::pool::Pool;
use oomguard_core::ProcessKind;

use crate::policy::{self, Decision, BUDGET_SETTING};
use crate::report::Line;

/// `OOM_GUARD_BACKEND_LIMIT`, packed into one word ([`BudgetWord`]).
static DEFAULT: AtomicU64 = AtomicU64::new(BudgetWord::NONE);

/// FNV-1a hash of the malformed setting value this process last complained about, so a value
/// read at every reservation is reported once (and again if it changes).
static LAST_COMPLAINT: AtomicU64 = AtomicU64::new(0);

/// Records `OOM_GUARD_BACKEND_LIMIT` (at start-up).
pub fn set_default(budget: Option<Budget>) {
    DEFAULT.store(BudgetWord::encode(budget), Relaxed);
}

fn default() -> Option<Budget> {
    BudgetWord::decode(DEFAULT.load(Relaxed))
}

/// This process's budget in bytes now (`None`: no budget), recorded in `slot`. Only processes
/// that `OOM_GUARD_REFUSE` covers have one, and it is read only when the request could be
/// refused: a budget changes nothing where no refusal is allowed, and PostgreSQL is then in a
/// state (a critical section, error recovery, exit, a signal handler reporting) where the guard
/// has no business calling into it. The slot keeps the last value read.
#[inline(always)]
pub fn evaluate(pool: &Pool<'_>, slot: &Slot, decision: &Decision) -> Option<u64> {
    if !decision.refusable {
        return None;
    }
    // Neither source can give a budget: not PostgreSQL, so no setting to read, and no default.
    // Two loads, where the evaluation's calls cost a reservation some fifty instructions.
    if !policy::is_postgres() && DEFAULT.load(Relaxed) == BudgetWord::NONE {
        show_in_slot(slot, None, BudgetSource::None);
        return None;
    }
    evaluate_refusable(pool, slot, decision.kind)
}

#[inline(never)]
fn evaluate_refusable(pool: &Pool<'_>, slot: &Slot, kind: ProcessKind) -> Option<u64> {
    let (budget, source) = current(default_applies_to(kind));
    let bytes = budget.and_then(|budget| budget.bytes(pool.limit()));
    show_in_slot(slot, bytes, source);
    bytes
}

/// Shows `bytes` (0: none) and its `source` in the slot, writing only what changed: the slot's
/// cache line is shared with `oomguard status` and the exporter.
#[inline(always)]
fn show_in_slot(slot: &Slot, bytes: Option<u64>, source: BudgetSource) {
    let bytes = bytes.unwrap_or(0);
    if slot.budget_bytes.load(Relaxed) != bytes {
        slot.budget_bytes.store(bytes, Relaxed);
    }
    if slot.budget_source.load(Relaxed) != source as u32 {
        slot.budget_source.store(source as u32, Relaxed);
    }
}

/// Whether `OOM_GUARD_BACKEND_LIMIT` applies to processes of `kind`. Not to autovacuum and
/// logical replication workers: their work comes back (vacuum allocates its whole dead-tuple
/// array from `maintenance_work_mem` at once and would fail the same table every cycle, towards
/// wraparound; an apply worker retries the same transaction, or disables its subscription).
/// Over the container-wide limit a refusal passes; over a budget it does not. They still honour
/// an explicit `oomguard.backend_memory_limit` (their database's, or their role's).
fn default_applies_to(kind: ProcessKind) -> bool {
    !matches!(
        kind,
        ProcessKind::AutovacuumWorker | ProcessKind::LogicalReplicationWorker
    )
}

/// The budget that applies and where it came from; `with_default`: whether
/// `OOM_GUARD_BACKEND_LIMIT` applies where the setting does not.
fn current(with_default: bool) -> (Option<Budget>, BudgetSource) {
    let default = || default().filter(|_| with_default);
    // Without a default, a malformed setting still shows as such in the slot.
    let fallback = |source| match default() {
        None if source != BudgetSource::MalformedSetting => (None, BudgetSource::None),
        budget => (budget, source),
    };
    // A value longer than any size is malformed: never read whole at each reservation,
    // whatever a database owner put there.
    let Some(value) = policy::budget_setting(MAX_SETTING_LEN) else {
        return fallback(BudgetSource::Default);
    };
    let parsed = match core::str::from_utf8(value) {
        Ok(text) if text.len() <= MAX_SETTING_LEN => Budget::parse_setting(text),
        _ => Err(BudgetError::BadPostgresSize),
    };
    match parsed {
        Ok(Some(budget)) => (Some(budget), BudgetSource::Setting),
        Ok(None) => fallback(BudgetSource::Default),
        Err(error) => {
            complain_once(value, error, default().is_some());
            fallback(BudgetSource::MalformedSetting)
        }
    }
}

/// Longest setting value read as a size (`18446744073709551615B` is 21 bytes).
const MAX_SETTING_LEN: usize = 64;

/// One stderr line per malformed value (not per reservation); `bytes`: its first
/// [`MAX_SETTING_LEN`] + 1 bytes at most. Out of line: its line buffer would otherwise make
/// every evaluation set up a kilobyte of stack.
#[cold]
#[inline(never)]
fn complain_once(bytes: &[u8], error: BudgetError, default_applies: bool) {
    let shown = &bytes[..bytes.len().min(MAX_SETTING_LEN)];
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    if LAST_COMPLAINT.swap(hash, Relaxed) == hash {
        return;
    }
    let mut line = Line::new();
    let shown = core::str::from_utf8(shown).unwrap_or("(not UTF-8)");
    let cut = if bytes.len() > MAX_SETTING_LEN {
        "…"
    } else {
        ""
    };
    let _ = write!(
        line,
        "{}={shown:?}{cut} is not valid: {error}; ignored, {}; accepted forms are {SETTING_FORMS}",
        BUDGET_SETTING.to_str().unwrap_or("?"),
        if default_applies {
            "OOM_GUARD_BACKEND_LIMIT applies"
        } else {
            "no budget"
        },
    );
    line.emit();
}
