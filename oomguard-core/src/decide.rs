//! The slow path's decision: what a request that a thread's credit cannot cover ends in —
//! reserved within the limit, reserved regardless of it, or refused with a cause.
//!
//! This module owns the order of the checks and nothing else: the preload library reads its
//! atomics into a [`Request`], hands the effects to a [`World`] (reserving from the pool, reaping
//! dead processes' slots, looking at the stack, counting would-be refusals), and applies the
//! [`Outcome`] (the overdraft and the refusal's counters and report stay with it). The order:
//!
//! 1. A test injection that fires refuses where a refusal is allowed.
//! 2. A request that would pass the process's own budget is refused where a refusal is allowed:
//!    for its budget when the container could cover it, for the container's shortage when it
//!    could not (in report mode that case is counted once, at step 4, not here).
//! 3. Unless the kernel's numbers are tight: the request plus a batch, then the request alone,
//!    each only if it stays within the budget (a request already over its budget and served
//!    anyway takes no notice of it), reserved within the limit.
//! 4. Over the limit (or tight): reserved regardless where no refusal is allowed, with a batch
//!    so that such a process does not come back on every allocation; else reaping dead slots
//!    (when not tight) may make room for a retry; else refused for the shortage.
//!
//! "A refusal is allowed" means: the process is in enforce mode (in report mode the would-be
//! refusal is counted instead), the policy lets this process be refused now, and — looked at
//! last, since it costs a stack scan — no fragile function is on the stack.

use crate::budget::RefusalCause;

/// What the guard knows about a request its thread's credit cannot cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Bytes to reserve so the credit covers the request.
    pub need: u64,
    /// Bytes reserved on top when they fit (0 for dynamic shared memory).
    pub batch: u64,
    /// The process's own bytes now.
    pub own: u64,
    /// The process's budget in bytes (`None`: none applies).
    pub budget: Option<u64>,
    /// The kernel's numbers are within the reserve of the cgroup's limit.
    pub tight: bool,
    /// The process refuses over its limits (enforce mode) rather than only reporting.
    pub enforce: bool,
    /// The refusal policy allows refusing this process now (its kind and state).
    pub refusable: bool,
    /// A test injection fired for this request.
    pub injected: bool,
}

/// The effects the decision needs, provided by the caller.
pub trait World {
    /// Whether `bytes` would stay within the domain's limit now (nothing reserved).
    fn would_fit(&mut self, bytes: u64) -> bool;
    /// Reserves `bytes` if the domain's total stays within its limit; whether it did.
    fn try_reserve(&mut self, bytes: u64) -> bool;
    /// Reaps dead processes' slots if that is due, and when it freed any, retries `bytes`;
    /// whether the retry reserved it.
    fn reap_and_retry(&mut self, bytes: u64) -> bool;
    /// Whether a function that leaves broken state behind a failed allocation is on the stack.
    fn fragile_stack(&mut self) -> bool;
    /// A refusal was considered in enforce mode: the process's kind is worth recording.
    fn considering_refusal(&mut self);
    /// A request would have been refused but the process only reports: count it.
    fn would_refuse(&mut self);
}

/// How a request ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// These bytes were reserved within the limit and the budget (step 3): a reservation that
    /// could have been refused and was not, which ends a refusal episode.
    Reserved(u64),
    /// Reaping made room and the retry reserved these bytes (step 4).
    Retried(u64),
    /// Reserve these bytes regardless of the limit: no refusal is allowed (step 4).
    Regardless(u64),
    /// Refuse the request, for this cause.
    Refuse(RefusalCause),
}

/// Why a request the container cannot cover is refused: the kernel's numbers when they are
/// tight, else the domain's limit.
pub fn shortage_cause(tight: bool) -> RefusalCause {
    if tight {
        RefusalCause::KernelTight
    } else {
        RefusalCause::DomainLimit
    }
}

/// Whether a refusal is allowed now (see the module documentation), with its effects.
fn refusal_allowed(request: &Request, world: &mut impl World) -> bool {
    if !request.enforce {
        world.would_refuse();
        return false;
    }
    world.considering_refusal();
    request.refusable && !world.fragile_stack()
}

/// Decides a request the thread's credit cannot cover (steps 1 to 4). Inlined into the caller's
/// reservation path: it runs once per batch of allocation growth, and a call would cost it a
/// frame of saved registers as large as its own work.
#[inline(always)]
pub fn decide(request: &Request, world: &mut impl World) -> Outcome {
    let cause = shortage_cause(request.tight);
    if request.injected && refusal_allowed(request, world) {
        return Outcome::Refuse(cause);
    }
    let within_budget = |bytes: u64| {
        request
            .budget
            .is_none_or(|budget| request.own.saturating_add(bytes) <= budget)
    };
    let over_budget = !within_budget(request.need);
    if over_budget {
        let domain_short = request.tight || !world.would_fit(request.need);
        let counted_at_the_limit = domain_short && !request.enforce;
        if !counted_at_the_limit && refusal_allowed(request, world) {
            return Outcome::Refuse(if domain_short {
                cause
            } else {
                RefusalCause::BackendBudget
            });
        }
    }
    if !request.tight {
        let batch = request.need.saturating_add(request.batch);
        for bytes in [batch, request.need] {
            if (over_budget || within_budget(bytes)) && world.try_reserve(bytes) {
                return Outcome::Reserved(bytes);
            }
        }
    }
    over_limit(request, world)
}

/// Decides a request the pool could not cover (step 4), for malloc and dynamic shared memory
/// alike.
pub fn over_limit(request: &Request, world: &mut impl World) -> Outcome {
    if !refusal_allowed(request, world) {
        return Outcome::Regardless(request.need.saturating_add(request.batch));
    }
    // Tight is the kernel's verdict: reaping the guard's own slots cannot change it.
    if !request.tight && world.reap_and_retry(request.need) {
        return Outcome::Retried(request.need);
    }
    Outcome::Refuse(shortage_cause(request.tight))
}
