//! The overhead budget, checked line by line. A benchmark reports a miss; it does not fail.
//!
//! - small-object malloc/free loop ≤ 1.25× glibc, at 1 and at 2 threads;
//! - PostgreSQL-like block pattern ≤ 1.02×;
//! - pgbench, every mode, ≥ 0.97× the unguarded median TPS;
//! - ≤ 30 extra instructions per malloc+free pair.
//!
//! Ratios are checked by their median over the rounds (guard over plain glibc, B/A).

/// A bound on a measured value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// guarded/plain time ratio at most this.
    RatioAtMost(f64),
    /// guarded/plain throughput ratio at least this.
    RatioAtLeast(f64),
    /// Extra instructions per malloc+free pair at most this.
    ExtraInstructionsAtMost(f64),
}

impl Budget {
    /// Whether `value` is within the budget.
    pub fn met(self, value: f64) -> bool {
        match self {
            Budget::RatioAtMost(b) | Budget::ExtraInstructionsAtMost(b) => value <= b,
            Budget::RatioAtLeast(b) => value >= b,
        }
    }

    /// The budget as written in reports, e.g. `≤ 1.25×`.
    pub fn describe(self) -> String {
        match self {
            Budget::RatioAtMost(b) => format!("≤ {b:.2}×"),
            Budget::RatioAtLeast(b) => format!("≥ {b:.2}×"),
            Budget::ExtraInstructionsAtMost(b) => format!("≤ +{b:.0}"),
        }
    }

    /// `pass` or `miss` for `value`.
    pub fn verdict(self, value: f64) -> &'static str {
        if self.met(value) {
            "pass"
        } else {
            "miss"
        }
    }
}

/// The budget of an allocation workload (by its label), if it has one. The calloc/realloc and
/// fork workloads are measured but have no budget.
pub fn for_workload(label: &str) -> Option<Budget> {
    match label {
        "small 1T" | "small 2T" => Some(Budget::RatioAtMost(1.25)),
        "pglike" => Some(Budget::RatioAtMost(1.02)),
        _ => None,
    }
}

/// Every pgbench mode.
pub const PGBENCH: Budget = Budget::RatioAtLeast(0.97);

/// Instructions per malloc+free pair.
pub const EXTRA_INSTRUCTIONS: Budget = Budget::ExtraInstructionsAtMost(30.0);

/// One checked line for the summary.
pub struct Line {
    pub what: String,
    pub budget: Budget,
    pub measured: f64,
}

impl Line {
    pub fn met(&self) -> bool {
        self.budget.met(self.measured)
    }

    /// e.g. `small 1T: 1.31 (budget ≤ 1.25×) miss`.
    pub fn describe(&self) -> String {
        let measured = match self.budget {
            Budget::ExtraInstructionsAtMost(_) => format!("{:+.1}", self.measured),
            _ => format!("{:.3}", self.measured),
        };
        format!(
            "{}: {measured} (budget {}) {}",
            self.what,
            self.budget.describe(),
            self.budget.verdict(self.measured)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_inclusive() {
        assert!(Budget::RatioAtMost(1.25).met(1.25));
        assert!(!Budget::RatioAtMost(1.25).met(1.2501));
        assert!(PGBENCH.met(0.97));
        assert!(!PGBENCH.met(0.9699));
        assert!(EXTRA_INSTRUCTIONS.met(30.0));
        assert_eq!(EXTRA_INSTRUCTIONS.verdict(30.1), "miss");
    }

    #[test]
    fn workloads_with_a_budget() {
        assert_eq!(for_workload("small 1T"), Some(Budget::RatioAtMost(1.25)));
        assert_eq!(for_workload("small 2T"), Some(Budget::RatioAtMost(1.25)));
        assert_eq!(for_workload("pglike"), Some(Budget::RatioAtMost(1.02)));
        assert_eq!(for_workload("fork"), None);
        assert_eq!(for_workload("calloc"), None);
    }
}
