//! `oomguard-inject`: runs injection campaigns ([`oomguard_tests::campaign`]) and prints what the
//! refusals turned into as a Markdown table, one row per run. A measuring tool, run by hand (its
//! figures are in the README); `tests/tests/injection.rs` is the test.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use oomguard_tests::campaign::{self, Pressure};

#[derive(Parser)]
#[command(about = "Counts what the guard's refusals turn into in a real PostgreSQL server")]
struct Args {
    /// Refuse about one in N refusable reservations at random (OOM_GUARD_TEST_INJECT).
    #[arg(long, conflicts_with = "limit")]
    one_in: Option<u64>,
    /// Seeds, one server run each (with --one-in).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    seeds: Vec<u64>,
    /// Instead of injecting: one run under each of these OOM_GUARD_LIMITs (e.g. 6Mi,20Mi,48Mi).
    #[arg(long, value_delimiter = ',')]
    limit: Vec<String>,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 4)]
    sessions: usize,
    /// Times each session runs the workload, reconnecting before each.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// The guard library (default: the release build of this workspace).
    #[arg(long)]
    library: Option<PathBuf>,
    /// Where to keep the server log of a run that crashed, lost a session, logged a FATAL or
    /// got an error other than out of memory
    /// (default: not kept).
    #[arg(long)]
    keep_logs: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let library = args
        .library
        .clone()
        .unwrap_or_else(oomguard_tests::library_path);
    let pressures: Vec<Pressure> = match (args.one_in, args.limit.is_empty()) {
        (Some(one_in), true) => args
            .seeds
            .iter()
            .map(|&seed| Pressure::Inject { one_in, seed })
            .collect(),
        (None, false) => args.limit.iter().cloned().map(Pressure::Limit).collect(),
        _ => bail!("give --one-in N (with --seeds) or --limit SIZE[,SIZE…]"),
    };
    println!(
        "| run | server | statements | ERROR out of memory | other errors | connections refused at start | sessions lost | FATAL out of memory | FATAL lines | crash lines | guard refusals | s |"
    );
    println!("|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for pressure in pressures {
        let (counts, log) = campaign::run(&library, &pressure, args.sessions, args.rounds)?;
        let mut others = counts.other_errors.clone();
        others.sort();
        others.dedup();
        println!(
            "| {} | {} | {} | {} | {} {} | {} | {} | {} | {} | {}{} | {} | {:.0} |",
            pressure.describe(),
            counts.server,
            counts.statements,
            counts.out_of_memory,
            counts.other_errors.len(),
            if others.is_empty() {
                String::new()
            } else {
                format!("({})", others.join(", "))
            },
            counts.refused_connections,
            counts.lost_sessions,
            counts.log_fatal_out_of_memory,
            counts.log_fatal,
            counts.crash_lines,
            if counts.signals.is_empty() {
                String::new()
            } else {
                format!(" ({})", counts.signals.join("; "))
            },
            counts.guard_refusals,
            counts.seconds
        );
        let eventful = !counts.signals.is_empty()
            || counts.lost_sessions > 0
            || counts.log_fatal > 0
            || !counts.other_errors.is_empty();
        if let (Some(dir), true) = (&args.keep_logs, eventful) {
            let path = dir.join(format!(
                "{}.log",
                pressure.describe().replace([' ', ','], "-")
            ));
            std::fs::write(&path, log)?;
            eprintln!("server log of that run: {}", path.display());
        }
    }
    Ok(())
}
