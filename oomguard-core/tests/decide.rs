//! Properties of the slow path's decision (`oomguard_core::decide`), against a model of the
//! shared pool: a total and a limit, a number of bytes reaping would free, a stack that may be
//! fragile. Every combination of mode, policy, budget, kernel tightness and injection is
//! generated; the properties are the rules the README states for refusals.

use oomguard_core::budget::RefusalCause;
use oomguard_core::decide::{decide, over_limit, Outcome, Request, World};
use proptest::prelude::*;

/// The pool as `decide` sees it, recording what was asked of it.
#[derive(Debug, Clone, Default)]
struct Model {
    total: u64,
    limit: u64,
    /// Bytes that reaping dead slots would free (once).
    reapable: u64,
    fragile: bool,
    reserved: Vec<u64>,
    would_refuse: u32,
    considered: u32,
    stack_scans: u32,
}

impl Model {
    fn fits(&self, bytes: u64) -> bool {
        self.total.saturating_add(bytes) <= self.limit
    }
}

impl World for Model {
    fn would_fit(&mut self, bytes: u64) -> bool {
        self.fits(bytes)
    }

    fn try_reserve(&mut self, bytes: u64) -> bool {
        let fits = self.fits(bytes);
        if fits {
            self.total += bytes;
            self.reserved.push(bytes);
        }
        fits
    }

    fn reap_and_retry(&mut self, bytes: u64) -> bool {
        if self.reapable == 0 {
            return false;
        }
        self.total = self
            .total
            .saturating_sub(std::mem::take(&mut self.reapable));
        self.try_reserve(bytes)
    }

    fn fragile_stack(&mut self) -> bool {
        self.stack_scans += 1;
        self.fragile
    }

    fn considering_refusal(&mut self) {
        self.considered += 1;
    }

    fn would_refuse(&mut self) {
        self.would_refuse += 1;
    }
}

const MIB: u64 = 1 << 20;

fn requests() -> impl Strategy<Value = Request> {
    (
        (1u64..64 * MIB, prop_oneof![Just(0u64), Just(128 << 10)]),
        (0u64..512 * MIB, proptest::option::of(0u64..512 * MIB)),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |((need, batch), (own, budget), (tight, enforce, refusable, injected))| Request {
                need,
                batch,
                own,
                budget,
                tight,
                enforce,
                refusable,
                injected,
            },
        )
}

fn models() -> impl Strategy<Value = Model> {
    (
        0u64..1024 * MIB,
        0u64..1024 * MIB,
        0u64..64 * MIB,
        any::<bool>(),
    )
        .prop_map(|(total, limit, reapable, fragile)| Model {
            total: total.min(limit),
            limit,
            reapable,
            fragile,
            ..Model::default()
        })
}

fn within_budget(request: &Request, bytes: u64) -> bool {
    request
        .budget
        .is_none_or(|budget| request.own.saturating_add(bytes) <= budget)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Only a process in enforce mode, that the policy allows to be refused now, with no
    /// fragile function on its stack, is ever refused.
    #[test]
    fn refusals_only_where_allowed(request in requests(), model in models()) {
        let mut world = model.clone();
        let outcome = decide(&request, &mut world);
        if let Outcome::Refuse(_) = outcome {
            prop_assert!(request.enforce && request.refusable && !model.fragile);
        }
        if !request.enforce {
            prop_assert!(!matches!(outcome, Outcome::Refuse(_)));
            prop_assert_eq!(world.considered, 0);
        }
    }

    /// The cause says why: the budget only when the container could have covered the request,
    /// the kernel only when it is tight, the domain's limit otherwise.
    #[test]
    fn the_cause_is_the_reason(request in requests(), model in models()) {
        let mut world = model.clone();
        match decide(&request, &mut world) {
            Outcome::Refuse(RefusalCause::BackendBudget) => {
                prop_assert!(!within_budget(&request, request.need));
                prop_assert!(!request.tight && model.fits(request.need));
            }
            Outcome::Refuse(RefusalCause::KernelTight) => prop_assert!(request.tight),
            Outcome::Refuse(RefusalCause::DomainLimit) => {
                prop_assert!(!request.tight);
                prop_assert!(request.injected || !model.fits(request.need)
                    || !within_budget(&request, request.need));
            }
            Outcome::Refuse(RefusalCause::None) => prop_assert!(false, "a refusal without a cause"),
            _ => {}
        }
    }

    /// What is reserved within the limit covers the request, is the request or the request and
    /// a batch, stays within the budget unless the request was already over it, and is never
    /// taken while the kernel is tight; reserved regardless means no refusal was allowed.
    #[test]
    fn reservations_cover_the_request(request in requests(), model in models()) {
        let mut world = model.clone();
        let outcome = decide(&request, &mut world);
        let with_batch = request.need + request.batch;
        match outcome {
            Outcome::Reserved(bytes) => {
                prop_assert!(!request.tight);
                prop_assert!(bytes == request.need || bytes == with_batch);
                prop_assert!(within_budget(&request, bytes)
                    || !within_budget(&request, request.need));
                prop_assert_eq!(world.reserved, vec![bytes]);
            }
            Outcome::Retried(bytes) => {
                prop_assert_eq!(bytes, request.need);
                prop_assert!(!request.tight && model.reapable > 0);
            }
            Outcome::Regardless(bytes) => {
                prop_assert_eq!(bytes, with_batch);
                prop_assert!(!request.enforce || !request.refusable || model.fragile);
            }
            Outcome::Refuse(_) => prop_assert!(world.reserved.is_empty()),
        }
    }

    /// With room in the domain and the budget, nothing tight and nothing injected, the request
    /// and its batch are reserved, and the stack is never scanned.
    #[test]
    fn room_means_a_batch(mut request in requests(), mut model in models()) {
        request.tight = false;
        request.injected = false;
        request.budget = None;
        model.limit = model.total + request.need + request.batch;
        let mut world = model.clone();
        prop_assert_eq!(
            decide(&request, &mut world),
            Outcome::Reserved(request.need + request.batch)
        );
        prop_assert_eq!(world.stack_scans, 0);
        prop_assert_eq!(world.would_refuse, 0);
    }

    /// In report mode a request over the limit is counted as a would-be refusal, once.
    #[test]
    fn report_mode_counts_once(mut request in requests(), mut model in models()) {
        request.enforce = false;
        request.injected = false;
        model.limit = model.total; // nothing fits
        model.reapable = 0;
        let mut world = model.clone();
        prop_assert_eq!(
            decide(&request, &mut world),
            Outcome::Regardless(request.need + request.batch)
        );
        prop_assert_eq!(world.would_refuse, 1);
    }

    /// Over the limit, dynamic shared memory (no batch, no budget) is refused exactly where
    /// malloc would be, and otherwise reserved regardless or after reaping.
    #[test]
    fn shared_memory_over_the_limit(mut request in requests(), mut model in models()) {
        request.batch = 0;
        request.budget = None;
        request.injected = false;
        model.limit = model.total;
        let mut world = model.clone();
        let outcome = over_limit(&request, &mut world);
        let allowed = request.enforce && request.refusable && !model.fragile;
        match outcome {
            Outcome::Refuse(cause) => {
                prop_assert!(allowed);
                let after_reaping = model.total.saturating_sub(model.reapable);
                prop_assert!(request.tight || model.reapable == 0
                    || after_reaping.saturating_add(request.need) > model.limit);
                prop_assert_eq!(cause, if request.tight {
                    RefusalCause::KernelTight
                } else {
                    RefusalCause::DomainLimit
                });
            }
            Outcome::Retried(_) => prop_assert!(allowed && !request.tight),
            Outcome::Regardless(bytes) => {
                prop_assert!(!allowed);
                prop_assert_eq!(bytes, request.need);
            }
            Outcome::Reserved(_) => prop_assert!(false, "over_limit never reserves within"),
        }
    }
}

#[test]
fn an_injected_refusal_needs_the_same_permission() {
    let request = Request {
        need: 4096,
        batch: 128 << 10,
        own: 0,
        budget: None,
        tight: false,
        enforce: true,
        refusable: true,
        injected: true,
    };
    let roomy = Model {
        limit: u64::MAX,
        ..Model::default()
    };
    let mut world = roomy.clone();
    assert_eq!(
        decide(&request, &mut world),
        Outcome::Refuse(RefusalCause::DomainLimit)
    );
    let mut fragile = Model {
        fragile: true,
        ..roomy.clone()
    };
    assert_eq!(
        decide(&request, &mut fragile),
        Outcome::Reserved(4096 + (128 << 10))
    );
    let not_refusable = Request {
        refusable: false,
        ..request
    };
    let mut world = roomy;
    assert_eq!(
        decide(&not_refusable, &mut world),
        Outcome::Reserved(4096 + (128 << 10))
    );
}
