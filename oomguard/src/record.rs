//! The refusal record of this process: at each refusal, gathers what the guard and PostgreSQL
//! know (the statement, its query id, database and role, the process's and the domain's bytes,
//! the largest processes) and writes it to the segment's ring (`oomguard_core::refusals`), where
//! `oomguard refusals`, the SQL view and the exporter read it.
//!
//! Runs on the refusal path, inside the refused `malloc`: nothing here allocates, locks or
//! unwinds, and what it reads from PostgreSQL is read as `policy::with_statement_identity`
//! explains.

use core::sync::atomic::Ordering::Relaxed;

use oomguard_core::budget::RefusalCause;
use oomguard_core::layout::{SegmentView, Slot};
use oomguard_core::refusals::{self, Call, LastRecord, Refusal};
use oomguard_core::ProcessKind;

/// The record this process wrote last (see [`LastRecord`]).
static LAST: LastRecord = LastRecord::new();

/// What the guard knows about a refusal it just made.
pub struct Facts<'a> {
    /// The refused process's slot.
    pub slot: &'a Slot,
    /// Its kind.
    pub kind: ProcessKind,
    /// Its own bytes.
    pub own_bytes: u64,
    /// Bytes asked for.
    pub request: u64,
    /// The refused function.
    pub call: &'a str,
    /// Why.
    pub cause: RefusalCause,
    /// The domain's limit.
    pub limit: u64,
}

/// Records one refusal in `view`'s ring.
pub fn refusal(view: &SegmentView<'_>, facts: Facts<'_>) {
    // SAFETY: getpid has no preconditions (the caller keeps errno).
    let pid = unsafe { libc::getpid() };
    let unix_ns = crate::guard::clock_ns(libc::CLOCK_REALTIME);
    crate::policy::with_statement_identity(|identity| {
        let refusal = Refusal {
            unix_ns,
            pid,
            kind: facts.kind,
            cause: facts.cause,
            call: Call::from_name(facts.call),
            database_oid: identity.database_oid,
            role_oid: identity.role_oid,
            query_id: identity.query_id,
            statement: identity.statement,
            request_bytes: facts.request,
            process_bytes: facts.own_bytes,
            budget_bytes: facts.slot.budget_bytes.load(Relaxed),
            total_bytes: view.header.total.load(Relaxed),
            limit_bytes: facts.limit,
        };
        refusals::record(view, &LAST, &refusal);
    });
}

/// In a forked child: the parent's last record is not the child's to count into.
pub fn forked() {
    LAST.forget();
}
