//! Each refusable process's budget: `oomguard.backend_memory_limit` as PostgreSQL has it set for
//! the process right now (role, database, session, transaction, `PGOPTIONS`, or a parallel
//! worker's copy of its leader's), else `OOM_GUARD_BACKEND_LIMIT`.
//!
//! Evaluated at each reservation (the slow path, once per batch of allocation churn), never on
//! the malloc fast path: a `SET` takes effect within one batch (128 KiB) of allocation. The
//! result is recorded in the process's slot for `oomguard status`.

use core::fmt::Write;
use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::Relaxed;

use oomguard_core::budget::{Budget, BudgetSource, SETTING_FORMS};
use oomguard_core::layout::Slot;
use oomguard_core::pool::Pool;

use crate::policy::{self, Decision, BUDGET_SETTING};
use crate::report::Line;

/// `OOM_GUARD_BACKEND_LIMIT`, encoded: [`NO_DEFAULT`], [`UNLIMITED`], or a kind tag in the top
/// byte ([`BYTES`], [`PERCENT`]) above the value (bytes up to 2^56, hundredths of a percent).
static DEFAULT: AtomicU64 = AtomicU64::new(NO_DEFAULT);
const NO_DEFAULT: u64 = 0;
const UNLIMITED: u64 = 1 << 56;
const BYTES: u64 = 2 << 56;
const PERCENT: u64 = 3 << 56;
const VALUE_MASK: u64 = (1 << 56) - 1;

/// FNV-1a hash of the malformed setting value this process last complained about, so a value
/// read at every reservation is reported once (and again if it changes).
static LAST_COMPLAINT: AtomicU64 = AtomicU64::new(0);

/// Records `OOM_GUARD_BACKEND_LIMIT` (at start-up).
pub fn set_default(budget: Option<Budget>) {
    let encoded = match budget {
        None => NO_DEFAULT,
        Some(Budget::Unlimited) => UNLIMITED,
        Some(Budget::Bytes(bytes)) => BYTES | bytes.min(VALUE_MASK),
        Some(Budget::PercentOfLimit(hundredths)) => PERCENT | u64::from(hundredths),
    };
    DEFAULT.store(encoded, Relaxed);
}

fn default() -> Option<Budget> {
    let encoded = DEFAULT.load(Relaxed);
    match encoded & !VALUE_MASK {
        UNLIMITED => Some(Budget::Unlimited),
        BYTES => Some(Budget::Bytes(encoded & VALUE_MASK)),
        PERCENT => Some(Budget::PercentOfLimit((encoded & VALUE_MASK) as u32)),
        _ => None,
    }
}

/// This process's budget in bytes now (`None`: no budget), recorded in `slot`. Only processes
/// that `OOM_GUARD_REFUSE` covers have one, and it is read only when the request could be
/// refused: a budget changes nothing where no refusal is allowed, and PostgreSQL is then in a
/// state (a critical section, error recovery, exit, a signal handler reporting) where the guard
/// has no business calling into it. The slot keeps the last value read.
pub fn evaluate(pool: &Pool<'_>, slot: &Slot, decision: &Decision) -> Option<u64> {
    if !decision.refusable {
        return None;
    }
    let (budget, source) = current();
    let bytes = budget.and_then(|budget| budget.bytes(pool.limit()));
    slot.budget_bytes.store(bytes.unwrap_or(0), Relaxed);
    slot.budget_source.store(source as u32, Relaxed);
    bytes
}

/// The budget that applies and where it came from.
fn current() -> (Option<Budget>, BudgetSource) {
    // Without a default, a malformed setting still shows as such in the slot.
    let fallback = |source| match default() {
        None if source != BudgetSource::MalformedSetting => (None, BudgetSource::None),
        budget => (budget, source),
    };
    let Some(value) = policy::budget_setting() else {
        return fallback(BudgetSource::Default);
    };
    let text = value.to_str().unwrap_or("\u{fffd}");
    match Budget::parse_setting(text) {
        Ok(Some(budget)) => (Some(budget), BudgetSource::Setting),
        Ok(None) => fallback(BudgetSource::Default),
        Err(error) => {
            complain_once(value.to_bytes(), text, error);
            fallback(BudgetSource::MalformedSetting)
        }
    }
}

/// One stderr line per malformed value (not per reservation).
fn complain_once(bytes: &[u8], text: &str, error: oomguard_core::budget::BudgetError) {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    if LAST_COMPLAINT.swap(hash, Relaxed) == hash {
        return;
    }
    let mut line = Line::new();
    let shown = text.get(..text.len().min(64)).unwrap_or("?");
    let _ = write!(
        line,
        "{}={shown:?} is not valid: {error}; ignored, {}; accepted forms are {SETTING_FORMS}",
        BUDGET_SETTING.to_str().unwrap_or("?"),
        match default() {
            Some(_) => "OOM_GUARD_BACKEND_LIMIT applies",
            None => "no budget",
        },
    );
    line.emit();
}
