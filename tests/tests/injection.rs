//! Refusals never crash the server or lose a session: an injection campaign
//! ([`oomguard_tests::campaign`]) refuses about one in ten of the reservations a full domain
//! could refuse, at random and in episodes like a real shortage, while four sessions run a
//! workload aimed at PostgreSQL's fragile allocation sites, under several seeds. Every refusal
//! must end as an ERROR: no backend killed by a signal, no crash recovery, no session lost.
//!
//! On PostgreSQL 18.6 three of six seeds crashed a backend in `lookup_type_cache` before the
//! guard stopped refusing inside it (see the guard's `fragile` module).

use oomguard_tests::campaign::{self, Pressure};
use oomguard_tests::library_path;

const SEEDS: [u64; 6] = [1, 2, 3, 4, 5, 6];

#[test]
fn refusals_at_random_never_crash_the_server_nor_lose_a_session() {
    let mut report = String::new();
    let mut failures = Vec::new();
    for seed in SEEDS {
        let pressure = Pressure::Inject { one_in: 10, seed };
        let (counts, log) = campaign::run(&library_path(), &pressure, 4, 20)
            .unwrap_or_else(|e| panic!("{}: {e:#}", pressure.describe()));
        report.push_str(&format!("{}: {counts:?}\n", pressure.describe()));
        assert!(
            counts.out_of_memory > 0 && counts.guard_refusals > 0,
            "{}: nothing was refused, the run proves nothing: {counts:?}",
            pressure.describe()
        );
        if counts.crash_lines > 0 || counts.lost_sessions > 0 || counts.log_fatal_out_of_memory > 0
        {
            let crash: Vec<&str> = log
                .lines()
                .filter(|line| line.contains("terminated by signal") || line.contains("FATAL"))
                .take(10)
                .collect();
            failures.push(format!(
                "{}: {counts:?}\n{}",
                pressure.describe(),
                crash.join("\n")
            ));
        }
    }
    eprintln!("{report}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
