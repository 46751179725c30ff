//! The `oomguard` command line: argument parsing and dispatch only; the work lives in the
//! library modules ([`oomguard_cli::run`], [`oomguard_cli::status`], [`oomguard_cli::limit`],
//! [`oomguard_cli::clean`], [`oomguard_cli::exporter`], [`oomguard_cli::demo`],
//! [`oomguard_cli::install`]).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use oomguard_cli::settings::GuardSettings;

#[derive(Debug, Parser)]
#[command(
    name = "oomguard",
    version,
    about = "Make PostgreSQL's malloc fail before the cgroup OOM killer strikes"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run COMMAND with liboomguard.so preloaded (after validating OOM_GUARD_* settings).
    Run {
        /// The preload library [default: $OOM_GUARD_LIBRARY, next to this executable, its
        /// ../lib/oomguard/, /usr/lib/<multiarch>/oomguard/, /usr/lib/oomguard/].
        #[arg(long, value_name = "PATH")]
        library: Option<PathBuf>,
        /// The command and its arguments.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<OsString>,
    },
    /// Show each guard domain: mode, limit, total, peak, refusals by cause, and its processes by
    /// usage with their budgets.
    /// Slots of processes that died without cleaning up are reaped first. Stale domains (no
    /// guarded process left) come last, marked as such. A file that cannot be read is named on
    /// stderr and the command exits 1, after showing the domains it could read; another user's
    /// segment this user may not open is skipped with a warning.
    Status {
        /// Directory holding the guard's segments [default: OOM_GUARD_DIR of the guard's
        /// configuration file, else /dev/shm].
        #[arg(long, env = "OOM_GUARD_DIR")]
        dir: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Print CSV instead of a table: a header row, then one row per live guarded process
        /// (domain, pid, kind, bytes, peak_bytes, allocations, denials, denied_bytes,
        /// last_denied_size, overlimit_reports, command, budget_bytes, budget_source,
        /// last_refusal_cause), for PostgreSQL's file_fdw.
        #[arg(long)]
        csv: bool,
    },
    /// Show the refusal records of every guard domain: when each refused statement was refused
    /// (and how often in a row), its process, database and role OIDs, query id, cause, the
    /// request, the process's and the domain's bytes, the three largest processes at that
    /// moment, and the statement's first bytes. Records outlive the sessions and a restart of
    /// the server; the SQL view `oomguard_refusals` resolves the OIDs and joins
    /// pg_stat_statements. A file that cannot be read is named on stderr and the command exits 1.
    Refusals {
        /// Directory holding the guard's segments [default: OOM_GUARD_DIR of the guard's
        /// configuration file, else /dev/shm].
        #[arg(long, env = "OOM_GUARD_DIR")]
        dir: Option<PathBuf>,
        /// Only records refused last at or after this: a duration back from now (90s, 15m, 2h,
        /// 1day) or a UTC time (2026-12-07T21:00:00Z).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Print CSV instead of a table: a header row, then one row per record (the columns of
        /// the SQL view's foreign table), for PostgreSQL's file_fdw.
        #[arg(long)]
        csv: bool,
    },
    /// Remove stale segments (no guarded process has them mapped: left by earlier runs) and
    /// the guard's leftover temporary files (`oomguard-*.tmp` older than a minute whose creator
    /// is gone). Never removes a live segment, follows a symbolic link, or removes another
    /// user's file unless run as root; prints one line per file.
    Clean {
        /// Directory holding the guard's segments [default: OOM_GUARD_DIR of the guard's
        /// configuration file, else /dev/shm].
        #[arg(long, env = "OOM_GUARD_DIR")]
        dir: Option<PathBuf>,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Explain each guard domain's limit input by input: the cgroup limit and where it came
    /// from, PostgreSQL shared memory, the reserve, the result, and the guard's total against
    /// the kernel's usage. Without a domain yet (or with --data-dir): what the guard would derive
    /// in this environment (OOM_GUARD_CGROUP_ROOT, OOM_GUARD_LIMIT, OOM_GUARD_RESERVE,
    /// OOM_GUARD_SHARED_MEMORY).
    Limit {
        /// Directory holding the guard's segments [default: OOM_GUARD_DIR of the guard's
        /// configuration file, else /dev/shm].
        #[arg(long, env = "OOM_GUARD_DIR")]
        dir: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Data directory of a stopped PostgreSQL 15+ cluster: take shared memory from `postgres
        /// -D DIR -C shared_memory_size` (unless OOM_GUARD_SHARED_MEMORY is set) and show what
        /// the guard would derive, even if domains exist; warn if work_mem × max_connections
        /// (also from `postgres -C`) cannot fit that limit.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Serve every guard domain's metrics for Prometheus on http://ADDR/metrics, read afresh on
    /// each scrape (dead processes' slots are reaped first). Stops on SIGTERM or SIGINT.
    Exporter {
        /// Address to listen on, IP:PORT (0.0.0.0:PORT for all interfaces).
        #[arg(long, env = oomguard_cli::exporter::LISTEN_ENV, value_name = "ADDR",
              default_value = oomguard_cli::exporter::DEFAULT_LISTEN)]
        listen: String,
        /// Directory holding the guard's segments [default: OOM_GUARD_DIR of the guard's
        /// configuration file, else /dev/shm].
        #[arg(long, env = "OOM_GUARD_DIR")]
        dir: Option<PathBuf>,
    },
    /// Copy this binary and the preload library (found as `run` finds it) into DIR, each
    /// atomically (DIR/oomguard 0755, DIR/liboomguard.so 0644), and print the LD_PRELOAD line that
    /// loads the copy. For an init container filling a volume shared with PostgreSQL.
    Install {
        /// Destination directory (created if missing).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// The preload library [default: as for `run`].
        #[arg(long, value_name = "PATH")]
        library: Option<PathBuf>,
    },
    /// Demonstrate the guard on throwaway PostgreSQL clusters. Where a memory cgroup can be
    /// created (root, or a delegated cgroup), both sides in a real one: without the guard a hog
    /// query gets its backend SIGKILLed by the kernel's OOM killer and the server drops every
    /// session; with the guard (by LD_PRELOAD alone, its limit derived from the cgroup) the same
    /// hog fails with `ERROR: out of memory` while the server and other sessions carry on.
    /// Elsewhere it says why and shows the guarded side only, under --limit.
    Demo {
        /// The guard's limit (an OOM_GUARD_LIMIT value) when only the guarded side is shown;
        /// in a cgroup the guard derives its limit from the cgroup instead.
        #[arg(long, default_value = "256Mi")]
        limit: String,
        /// The memory limit of the demo's cgroups (at least 512Mi).
        #[arg(long, value_name = "SIZE", default_value = "768Mi")]
        cgroup_memory: String,
        /// Show the guarded side only (under --limit), without a cgroup and the kernel's kill.
        #[arg(long)]
        guarded_only: bool,
        /// The preload library [default: as for `run`].
        #[arg(long, value_name = "PATH")]
        library: Option<PathBuf>,
        /// Wait for Enter between the steps (for presenting it).
        #[arg(long)]
        step: bool,
    },
}

/// Prints one stderr line per file that could not be read. Returns whether there was any: the
/// command then exits 1 after showing every domain it could read (README: Reading `oomguard
/// status`).
fn report_bad<T>(found: &oomguard_cli::segment::Found<T>, command: &str) -> bool {
    for error in &found.skipped {
        eprintln!("oomguard {command}: warning: skipped another user's segment: {error}");
    }
    for error in &found.bad {
        eprintln!("oomguard {command}: {error}");
    }
    !found.bad.is_empty()
}

/// The exit status of a command that printed what it could (`printed`) and reported bad files
/// (`any_bad`).
fn exit_code(printed: ExitCode, any_bad: bool) -> ExitCode {
    if any_bad {
        ExitCode::FAILURE
    } else {
        printed
    }
}

/// The output forms of `oomguard status` and `oomguard refusals`.
#[derive(Debug, Clone, Copy)]
enum StatusFormat {
    Table,
    Json,
    Csv,
}

fn status(dir: &std::path::Path, format: StatusFormat) -> ExitCode {
    // A full directory first: it explains a guard this command cannot see.
    let full = oomguard_cli::segment::directory_room(dir)
        .ok()
        .and_then(|room| room.warning(dir));
    let found = match oomguard_cli::status::collect(dir) {
        Ok(found) => found,
        Err(error) => {
            if let Some(warning) = &full {
                eprintln!("oomguard status: warning: {warning}");
            }
            eprintln!("oomguard status: {error}");
            return ExitCode::FAILURE;
        }
    };
    match (&full, format) {
        (Some(warning), StatusFormat::Table) => println!("WARNING  {warning}"),
        (Some(warning), _) => eprintln!("oomguard status: warning: {warning}"),
        (None, _) => {}
    }
    let any_bad = report_bad(&found, "status");
    // Nothing readable: the errors say it all (no empty table, no `[]` to mistake for "no
    // domain").
    if found.domains.is_empty() {
        return ExitCode::FAILURE;
    }
    let printed = match format {
        StatusFormat::Json => match serde_json::to_string_pretty(&found.domains) {
            Ok(text) => print_out(&format!("{text}\n"), "status"),
            Err(error) => {
                eprintln!("oomguard status: {error}");
                ExitCode::FAILURE
            }
        },
        StatusFormat::Csv => print_out(&oomguard_cli::status::csv(&found.domains), "status"),
        StatusFormat::Table => {
            let reports: Vec<String> = found
                .domains
                .iter()
                .map(oomguard_cli::status::render)
                .collect();
            print_out(&format!("{}\n", reports.join("\n")), "status")
        }
    };
    exit_code(printed, any_bad)
}

fn limit(
    dir: &std::path::Path,
    json: bool,
    data_dir: Option<&std::path::Path>,
    settings: &GuardSettings,
) -> ExitCode {
    let found = match oomguard_cli::limit::collect(dir, data_dir, settings) {
        Ok(found) => found,
        Err(error) => {
            eprintln!("oomguard limit: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let any_bad = report_bad(&found, "limit");
    if found.domains.is_empty() {
        return ExitCode::FAILURE;
    }
    let reports = found.domains;
    let printed = if json {
        match serde_json::to_string_pretty(&reports) {
            Ok(text) => print_out(&format!("{text}\n"), "limit"),
            Err(error) => {
                eprintln!("oomguard limit: {error}");
                ExitCode::FAILURE
            }
        }
    } else {
        let texts: Vec<String> = reports
            .iter()
            .map(|report| oomguard_cli::limit::render(report, dir))
            .collect();
        print_out(&texts.join("\n"), "limit")
    };
    exit_code(printed, any_bad)
}

fn refusals(dir: &std::path::Path, since: Option<&str>, format: StatusFormat) -> ExitCode {
    let since = match since
        .map(|text| oomguard_cli::refusals::parse_since(text, std::time::SystemTime::now()))
    {
        Some(Err(error)) => {
            eprintln!("oomguard refusals: {error}");
            return ExitCode::from(2);
        }
        Some(Ok(time)) => Some(time),
        None => None,
    };
    let found = match oomguard_cli::refusals::collect(dir, since) {
        Ok(found) => found,
        Err(error) => {
            eprintln!("oomguard refusals: {error}");
            return ExitCode::FAILURE;
        }
    };
    let any_bad = report_bad(&found, "refusals");
    let rows = &found.domains;
    let printed = match format {
        StatusFormat::Json => match serde_json::to_string_pretty(rows) {
            Ok(text) => print_out(&format!("{text}\n"), "refusals"),
            Err(error) => {
                eprintln!("oomguard refusals: {error}");
                ExitCode::FAILURE
            }
        },
        StatusFormat::Csv => print_out(&oomguard_cli::refusals::csv(rows), "refusals"),
        StatusFormat::Table => print_out(&oomguard_cli::refusals::render(rows), "refusals"),
    };
    exit_code(printed, any_bad)
}

fn clean(dir: &std::path::Path, dry_run: bool) -> ExitCode {
    let outcomes = match oomguard_cli::clean::clean(dir, dry_run) {
        Ok(outcomes) => outcomes,
        Err(error) => {
            eprintln!("oomguard clean: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut text = String::new();
    for outcome in &outcomes {
        text.push_str(&outcome.to_string());
        text.push('\n');
    }
    if outcomes.is_empty() {
        text = format!(
            "nothing to clean: no oomguard-* file in {}\n",
            dir.display()
        );
    }
    let failed = outcomes
        .iter()
        .any(|outcome| outcome.action == oomguard_cli::clean::Action::Failed);
    exit_code(print_out(&text, "clean"), failed)
}

/// Writes a command's report to stdout. A reader that went away (`oomguard status | head -1`)
/// ends the command quietly and successfully, as it does other Unix tools; any other write
/// error is reported.
fn print_out(text: &str, command: &str) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("oomguard {command}: cannot write to stdout: {error}");
            ExitCode::FAILURE
        }
    }
}

fn exporter(listen: &str, dir: &std::path::Path) -> ExitCode {
    let listen = match oomguard_cli::exporter::parse_listen(listen) {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("oomguard exporter: {error}");
            return ExitCode::from(2);
        }
    };
    match oomguard_cli::exporter::serve(listen, dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("oomguard exporter: {error}");
            ExitCode::FAILURE
        }
    }
}

fn demo(options: &oomguard_cli::demo::DemoOptions, library: Option<&std::path::Path>) -> ExitCode {
    let outcome = oomguard_cli::run::validate_guard_env(|name| {
        (name == oomguard_cli::run::LIMIT_ENV).then(|| options.limit.as_str().into())
    })
    .map_err(anyhow::Error::from)
    .and_then(|()| {
        let library = oomguard_cli::run::locate_library(
            library,
            std::env::var_os(oomguard_cli::run::LIBRARY_ENV).as_deref(),
            &oomguard_cli::run::default_search_paths(),
        )?;
        oomguard_cli::demo::run(&library, options)
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("oomguard demo: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn install(to: &std::path::Path, library: Option<&std::path::Path>) -> ExitCode {
    let argv0 = std::env::args_os().next();
    let outcome = oomguard_cli::install::own_executable(argv0.as_deref()).and_then(|exe| {
        oomguard_cli::install::install(
            to,
            library,
            &exe,
            std::env::var_os(oomguard_cli::run::LIBRARY_ENV).as_deref(),
        )
    });
    match outcome {
        Ok(installed) => print_out(
            &format!(
                "installed {} (from {})\ninstalled {} (from {})\n{}\n",
                installed.library.display(),
                installed.library_source.display(),
                installed.binary.display(),
                installed.binary_source.display(),
                installed.preload_line()
            ),
            "install",
        ),
        Err(error) => {
            eprintln!("oomguard install: {error}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Read only by the commands that look at the guard's segments or settings.
    let settings = GuardSettings::load;
    match cli.command {
        Cmd::Run { library, command } => {
            let err = oomguard_cli::run::run(library.as_deref(), &command);
            eprintln!("oomguard run: {err}");
            // Like env(1) and nohup(1): 127 if the command was not found, 126 otherwise.
            match err {
                oomguard_cli::run::RunError::Exec { ref source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    ExitCode::from(127)
                }
                _ => ExitCode::from(126),
            }
        }
        Cmd::Status { dir, json, csv } => {
            let format = match (json, csv) {
                (true, _) => StatusFormat::Json,
                (false, true) => StatusFormat::Csv,
                (false, false) => StatusFormat::Table,
            };
            status(&settings().segment_dir(dir), format)
        }
        Cmd::Refusals {
            dir,
            since,
            json,
            csv,
        } => {
            let format = match (json, csv) {
                (true, _) => StatusFormat::Json,
                (false, true) => StatusFormat::Csv,
                (false, false) => StatusFormat::Table,
            };
            refusals(&settings().segment_dir(dir), since.as_deref(), format)
        }
        Cmd::Limit {
            dir,
            json,
            data_dir,
        } => {
            let settings = settings();
            limit(
                &settings.segment_dir(dir),
                json,
                data_dir.as_deref(),
                &settings,
            )
        }
        Cmd::Exporter { listen, dir } => exporter(&listen, &settings().segment_dir(dir)),
        Cmd::Clean { dir, dry_run } => clean(&settings().segment_dir(dir), dry_run),
        Cmd::Install { to, library } => install(&to, library.as_deref()),
        Cmd::Demo {
            limit,
            cgroup_memory,
            guarded_only,
            library,
            step,
        } => demo(
            &oomguard_cli::demo::DemoOptions {
                limit,
                cgroup_memory,
                guarded_only,
                step,
            },
            library.as_deref(),
        ),
    }
}
