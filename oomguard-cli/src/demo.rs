//! `oomguard demo`, on the throwaway clusters and memory cgroups of `oomguard-cluster`.
//!
//! Where this process can create a memory cgroup (root, or a delegated cgroup), the demo shows
//! both sides in a real one (768 MiB by default): a throwaway PostgreSQL cluster without the guard
//! meets the kernel's OOM killer (the hog's backend is SIGKILLed, the cgroup's `oom_kill` counter
//! moves, the postmaster resets and drops every session), then a fresh one guarded by `LD_PRELOAD`
//! alone (its limit derived from the cgroup) answers the same hog with `ERROR: out of memory`
//! while the server and the other sessions carry on. Elsewhere it says in one line why it cannot
//! show the kill and shows the guarded side only, with an explicit small `OOM_GUARD_LIMIT`.
//! Clusters and cgroups are torn down on every exit path, Ctrl-C included.

/// `println!` that never panics: a reader that went away (`oomguard demo | head`) must not abort
/// the demo before it has stopped its servers and removed its clusters and cgroups.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use oomguard_cluster::memcg::{MemoryCgroup, Version};
use oomguard_cluster::{
    pid_maps_library, Cluster, ClusterOptions, GuardedCluster, CRASH_LOG_LINES,
};
use postgres::error::SqlState;

use crate::status::{self, human_bytes};

/// The demo's hog without a cgroup: a 400 MB array built in one backend.
pub const HOG_QUERY: &str = "SELECT cardinality(array_fill(1, ARRAY[100000000]))";

/// The demo's hog in a memory cgroup: a hash aggregate of 20 million groups, well over 768 MiB,
/// and growing in small steps, so that without the guard nothing fails before the kernel's
/// OOM killer strikes.
pub const HASH_AGGREGATE_HOG: [&str; 2] = [
    "SET work_mem = '2GB'",
    "SELECT count(*) FROM (SELECT g, count(*) FROM generate_series(1, 20000000) g GROUP BY g) s",
];

/// The server settings of the demo's clusters in a cgroup: shared memory the guard must subtract.
pub const CGROUP_SETTINGS: [(&str, &str); 1] = [("shared_buffers", "128MB")];

/// The smallest `--cgroup-memory`: 128 MB of shared buffers, the default reserve (64 MiB or 10%)
/// and the server's own processes must leave the guard room for queries.
pub const MIN_CGROUP_MEMORY: u64 = 512 << 20;

/// How the demo runs (the flags of `oomguard demo`).
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// `OOM_GUARD_LIMIT` of the guarded-side-only demo (no cgroup). In a cgroup the guard derives
    /// its limit from the cgroup instead.
    pub limit: String,
    /// The memory limit of the demo's cgroups, a size such as `768Mi`.
    pub cgroup_memory: String,
    /// Show the guarded side only, even where a cgroup could be created.
    pub guarded_only: bool,
    /// Wait for Enter between the steps.
    pub step: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: stopping the demo's servers and removing its clusters and cgroups");
    }
    Ok(())
}

/// Installs the Ctrl-C / SIGTERM handler, without `SA_RESTART` so that a step's wait for Enter
/// returns at once.
fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: an all-zero sigaction is valid (no flags, empty mask); the handler only stores
        // to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_interrupt as *const () as libc::sighandler_t;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// With `step`, waits for Enter before going on (for presenting the demo); stops at Ctrl-C.
fn pause(step: bool) -> Result<()> {
    check_interrupt()?;
    if step {
        say!("[press Enter to go on, Ctrl-C to stop]");
        let mut line = String::new();
        let read = std::io::stdin().read_line(&mut line);
        check_interrupt()?;
        if let Ok(0) | Err(_) = read {
            bail!("standard input closed: stopping the demo cluster and removing it");
        }
    }
    Ok(())
}

/// Runs the demo, printing as it goes: both sides in a memory cgroup where one can be created
/// (unless `guarded_only`), else the guarded side only, after one line that says why.
pub fn run(library: &Path, options: &DemoOptions) -> Result<()> {
    catch_interrupts();
    let cgroup_bytes = oomguard_core::config::parse_size(&options.cgroup_memory)
        .ok()
        .filter(|bytes| *bytes >= MIN_CGROUP_MEMORY)
        .with_context(|| {
            format!(
                "--cgroup-memory {:?}: expected a size of at least {} such as 768Mi",
                options.cgroup_memory,
                human_bytes(MIN_CGROUP_MEMORY as i64)
            )
        })?;
    if options.guarded_only {
        say!("--guarded-only: showing the guarded side only, without the kernel's OOM kill.\n");
        return guarded_side_only(library, &options.limit, options.step);
    }
    match MemoryCgroup::create("demo-unguarded", cgroup_bytes) {
        Ok(cgroup) => both_sides(library, cgroup, options.step),
        Err(reason) => {
            say!(
                "Cannot show the kernel's OOM kill here: no memory cgroup could be created \
                 ({reason:#}); showing the guarded side only.\n"
            );
            guarded_side_only(library, &options.limit, options.step)
        }
    }
}

/// The guarded side alone, with an explicit `OOM_GUARD_LIMIT` (no cgroup needed).
fn guarded_side_only(library: &Path, limit: &str, step: bool) -> Result<()> {
    say!(
        "Starting a throwaway PostgreSQL cluster under {}",
        library.display()
    );
    say!("  OOM_GUARD_LIMIT={limit} OOM_GUARD_MODE=enforce (client backends may be refused)");
    let guarded = GuardedCluster::start(
        library,
        &[("OOM_GUARD_LIMIT", limit), ("OOM_GUARD_MODE", "enforce")],
        &[],
    )?;
    print_cluster_line(&guarded.cluster, true);
    pause(step)?;
    let hog = Hog {
        statements: &[HOG_QUERY],
        wants: "~400 MB",
        too_large: format!("the limit {limit} is too large for a demo"),
    };
    guarded_steps(guarded, &hog, None, step)?;
    say!(
        "Without the guard the kernel's OOM killer would have SIGKILLed session B's backend, and \
         the postmaster would have dropped every connection (A included) to run crash recovery."
    );
    Ok(())
}

/// Part 1 without the guard in `unguarded`, then part 2 with it in a fresh cgroup of the same
/// size.
fn both_sides(library: &Path, unguarded: MemoryCgroup, step: bool) -> Result<()> {
    let cgroup_bytes = unguarded.limit_bytes()?;
    let version = match unguarded.version() {
        Version::V1 => "v1",
        Version::V2 => "v2",
    };
    say!(
        "Both sides in a real memory cgroup of {} (cgroup {version}, no swap): the same hog \
         without the guard, then with it. The guard derives its limit from the cgroup there \
         (--limit applies only where no cgroup can be created).\n",
        human_bytes(cgroup_bytes as i64)
    );
    say!("== Part 1 of 2: without the guard ==\n");
    without_the_guard(unguarded, step)?;
    pause(step)?;

    say!("== Part 2 of 2: with the guard ==\n");
    let cgroup = MemoryCgroup::create("demo-guarded", cgroup_bytes)
        .context("could not create the second memory cgroup")?;
    print_cgroup_line(&cgroup)?;
    say!(
        "Starting a throwaway PostgreSQL cluster in it under {} by LD_PRELOAD alone (no \
         OOM_GUARD_LIMIT), shared_buffers=128MB",
        library.display()
    );
    let guarded = GuardedCluster::start_with(&in_cgroup(&cgroup), library, &[], &CGROUP_SETTINGS)?;
    print_cluster_line(&guarded.cluster, true);
    pause(step)?;
    let hog = Hog {
        statements: &HASH_AGGREGATE_HOG,
        wants: "more than the whole cgroup",
        too_large: "the cgroup is too large for a demo (--cgroup-memory)".to_owned(),
    };
    guarded_steps(guarded, &hog, Some(&cgroup), step)?;
    let path = cgroup.path().to_owned();
    drop(cgroup);
    say!("Removed the cgroup {}.", path.display());
    Ok(())
}

/// Part 1: a cluster in `cgroup` without the guard, the hog, the kernel's kill and the reset.
fn without_the_guard(cgroup: MemoryCgroup, step: bool) -> Result<()> {
    print_cgroup_line(&cgroup)?;
    say!("Starting a throwaway PostgreSQL cluster in it without the guard, shared_buffers=128MB");
    let settings: Vec<(String, String)> = CGROUP_SETTINGS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Declared after the cgroup: dropped first on every path, so the server is stopped before
    // the cgroup kills what is left and goes.
    let mut cluster = Cluster::create_temp(&in_cgroup(&cgroup))?;
    cluster.start(&[], &settings)?;
    let postmaster = cluster.postmaster_pid().context("no postmaster pid")?;
    if pid_maps_library(postmaster, "liboomguard.so")? {
        bail!(
            "the unguarded postmaster (pid {postmaster}) has liboomguard.so mapped: unset \
             LD_PRELOAD before running the demo"
        );
    }
    print_cluster_line(&cluster, false);
    pause(step)?;

    let mut bystander = cluster.connect()?;
    let mut hog = cluster.connect()?;
    let bystander_pid: i32 = bystander.query_one("SELECT pg_backend_pid()", &[])?.get(0);
    let oom_before = cgroup.oom_kills()?;
    say!(
        "Session A (pid {bystander_pid}) is connected and idle. The cgroup charges {} of {}; \
         oom_kill {oom_before}.\n",
        human_bytes(cgroup.usage_bytes()? as i64),
        human_bytes(cgroup.limit_bytes()? as i64)
    );
    pause(step)?;

    let hog_pid: i32 = hog.query_one("SELECT pg_backend_pid()", &[])?.get(0);
    say!(
        "Session B (pid {hog_pid}) runs a hog that wants more than the whole cgroup:\n  {}",
        HASH_AGGREGATE_HOG.join("; ")
    );
    let log_offset = cluster.log_text()?.len();
    let [setup, query] = HASH_AGGREGATE_HOG;
    hog.batch_execute(setup)?;
    match hog.batch_execute(query) {
        Ok(()) => bail!("the hog finished: the cgroup is too large for a demo (--cgroup-memory)"),
        Err(error) if error.code() == Some(&SqlState::OUT_OF_MEMORY) => {
            bail!("without the guard the hog failed with out of memory, not by the kernel: {error}")
        }
        Err(error) => say!("  -> session B's connection was closed: {error}"),
    }
    // The postmaster logs the kill, then resets once every other server process has exited.
    let reset = wait_for_log(
        &cluster,
        log_offset,
        "all server processes terminated; reinitializing",
        Duration::from_secs(30),
    )?;
    let oom_after = cgroup.oom_kills()?;
    if oom_after == oom_before {
        bail!("the cgroup's oom_kill did not move ({oom_before}): it was not the OOM killer");
    }
    say!("  The kernel's OOM killer struck: the cgroup's oom_kill {oom_before} -> {oom_after}.");
    say!("  The server log:");
    for line in reset
        .lines()
        .filter(|line| CRASH_LOG_LINES.iter().any(|crash| line.contains(crash)))
    {
        say!("    {line}");
    }
    match bystander.simple_query("SELECT 1") {
        Ok(_) => bail!("session A survived the reset"),
        Err(error) => say!(
            "  Session A (pid {bystander_pid}), which was idle, was dropped too: SELECT 1 -> {error}"
        ),
    }
    drop(hog);
    drop(bystander);
    cluster.stop()?;
    drop(cluster);
    let path = cgroup.path().to_owned();
    drop(cgroup);
    say!(
        "\nStopped that cluster, removed it and the cgroup {}.\n",
        path.display()
    );
    Ok(())
}

/// A hog as [`guarded_steps`] runs it.
struct Hog<'a> {
    /// The statements; the last is the one that must fail.
    statements: &'a [&'a str],
    /// How much it wants, for the narration.
    wants: &'a str,
    /// Why it is an error if the hog succeeds.
    too_large: String,
}

/// The guarded steps: status, the hog refused with `ERROR: out of memory`, both sessions and the
/// server still there (and, in a cgroup, its `oom_kill` unchanged), status, teardown.
fn guarded_steps(
    guarded: GuardedCluster,
    hog_query: &Hog,
    cgroup: Option<&MemoryCgroup>,
    step: bool,
) -> Result<()> {
    let cluster = &guarded.cluster;
    let postmaster = cluster.postmaster_pid().unwrap_or(0);
    let mut bystander = cluster.connect()?;
    let mut hog = cluster.connect()?;
    let bystander_pid: i32 = bystander.query_one("SELECT pg_backend_pid()", &[])?.get(0);
    let oom_before = cgroup.map(MemoryCgroup::oom_kills).transpose()?;
    match (cgroup, oom_before) {
        (Some(cgroup), Some(oom)) => say!(
            "Session A (pid {bystander_pid}) is connected and idle. The cgroup charges {} of {}; \
             oom_kill {oom}. The guard before the hog (its limit derived from the cgroup):\n",
            human_bytes(cgroup.usage_bytes()? as i64),
            human_bytes(cgroup.limit_bytes()? as i64)
        ),
        _ => say!(
            "Session A (pid {bystander_pid}) is connected and idle. The guard before the hog:\n"
        ),
    }
    print_status(&guarded)?;
    pause(step)?;

    let hog_pid: i32 = hog.query_one("SELECT pg_backend_pid()", &[])?.get(0);
    say!(
        "Session B (pid {hog_pid}) runs a hog that wants {}:\n  {}",
        hog_query.wants,
        hog_query.statements.join("; ")
    );
    let (query, setup) = hog_query
        .statements
        .split_last()
        .context("a hog without statements")?;
    for statement in setup {
        hog.batch_execute(statement)?;
    }
    match hog.batch_execute(query) {
        Ok(()) => bail!("the hog succeeded: {}", hog_query.too_large),
        Err(error) => match error.as_db_error() {
            Some(db) => say!(
                "  -> ERROR:  {} (SQLSTATE {})\n     DETAIL: {}",
                db.message(),
                db.code().code(),
                db.detail().unwrap_or("-")
            ),
            None => bail!("the hog failed without a server error: {error}"),
        },
    }
    pause(step)?;

    let one: i32 = hog.query_one("SELECT 1", &[])?.get(0);
    say!("  Session B is still connected: SELECT 1 -> {one}");
    let count: i64 = bystander
        .query_one("SELECT count(*) FROM pg_class", &[])?
        .get(0);
    say!("  Session A never noticed: SELECT count(*) FROM pg_class -> {count}");
    if let (Some(cgroup), Some(before)) = (cgroup, oom_before) {
        let after = cgroup.oom_kills()?;
        if after != before {
            bail!("the kernel's OOM killer struck all the same: oom_kill {before} -> {after}");
        }
        say!("  The kernel's OOM killer did nothing: the cgroup's oom_kill {before} -> {after}.");
    }
    let crashes = guarded.crash_lines()?;
    if crashes.is_empty() {
        say!(
            "  The server log has no crash or restart lines; postmaster {postmaster} is still up.\n"
        );
    } else {
        bail!("the server log shows a crash:\n{}", crashes.join("\n"));
    }
    say!("The guard after the hog:\n");
    print_status(&guarded)?;
    drop(hog);
    drop(bystander);
    let mut guarded = guarded;
    let outcome = guarded.cluster.stop()?;
    say!(
        "Stopped the cluster ({}) and removed it.",
        if outcome.clean {
            "clean shutdown"
        } else {
            "forced shutdown"
        }
    );
    Ok(())
}

/// Cluster options that start the postmaster in `cgroup`.
fn in_cgroup(cgroup: &MemoryCgroup) -> ClusterOptions {
    ClusterOptions {
        cgroup: Some(cgroup.path().to_owned()),
        ..ClusterOptions::default()
    }
}

fn print_cgroup_line(cgroup: &MemoryCgroup) -> Result<()> {
    say!(
        "Created the memory cgroup {}: limit {}, no swap.",
        cgroup.path().display(),
        human_bytes(cgroup.limit_bytes()? as i64)
    );
    Ok(())
}

/// `  PostgreSQL … in DIR, running as `USER`, postmaster pid N, guard mapped: yes|no` (the
/// Ctrl-C test reads the directory and the pid from it).
fn print_cluster_line(cluster: &Cluster, guarded: bool) {
    say!(
        "  {} in {}, running as `{}`, postmaster pid {}, guard mapped: {}\n",
        cluster
            .binaries()
            .version()
            .unwrap_or_else(|_| "PostgreSQL".into()),
        cluster.base_dir().display(),
        cluster.server_user().name,
        cluster.postmaster_pid().unwrap_or(0),
        if guarded { "yes" } else { "no" },
    );
}

/// The server log after `offset` once it contains `wanted` (polled until `timeout`).
fn wait_for_log(
    cluster: &Cluster,
    offset: usize,
    wanted: &str,
    timeout: Duration,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = cluster.log_text()?;
        let since = log.get(offset..).unwrap_or("").to_owned();
        if since.contains(wanted) {
            return Ok(since);
        }
        check_interrupt()?;
        if Instant::now() >= deadline {
            bail!(
                "no {wanted:?} in the server log within {timeout:?}:\n{}",
                cluster.log_tail(20)
            );
        }
        // Polling: the log is a plain file; nothing to wait on.
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn print_status(guarded: &GuardedCluster) -> Result<()> {
    let segment = guarded.segment()?;
    let report = status::domain_status(&segment)?;
    for line in status::render(&report).lines() {
        say!("  {line}");
    }
    say!();
    Ok(())
}
