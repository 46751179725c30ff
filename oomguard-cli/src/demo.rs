//! `oomguard demo` and the guarded cluster it (and the end-to-end tests) run: a throwaway
//! PostgreSQL cluster started under `liboomguard.so` with a small limit, a hog query that fails
//! with `ERROR: out of memory` while a second session keeps working, the guard's status before
//! and after, and a clean teardown (also on Ctrl-C).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

use crate::pgcluster::{self, Cluster, ClusterOptions};
use crate::segment::{self, Segment, Snapshot};
use crate::status;

/// The demo's hog: a 400 MB array built in one backend.
pub const HOG_QUERY: &str = "SELECT cardinality(array_fill(1, ARRAY[100000000]))";

/// Log lines the postmaster writes when a backend dies and it restarts everything.
pub const CRASH_LOG_LINES: [&str; 4] = [
    "was terminated by signal",
    "terminating any other active server processes",
    "all server processes terminated; reinitializing",
    "database system was interrupted",
];

/// A throwaway cluster whose server processes run under the guard.
pub struct GuardedCluster {
    /// The cluster (dropping it stops the server and removes its directory).
    pub cluster: Cluster,
    /// Where the guard's segment lives (`OOM_GUARD_DIR` of the server).
    pub segment_dir: PathBuf,
    /// The preload library as the server loads it (a readable copy in the cluster directory).
    pub library: PathBuf,
}

impl GuardedCluster {
    /// Creates a cluster and starts it with `library` preloaded and `guard_env` (`OOM_GUARD_*`)
    /// in its environment; `settings` override the cluster's defaults.
    pub fn start(
        library: &Path,
        guard_env: &[(&str, &str)],
        settings: &[(&str, &str)],
    ) -> Result<GuardedCluster> {
        let mut cluster = Cluster::create_temp(&ClusterOptions::default())?;
        let base = cluster.base_dir().to_owned();
        let staged = pgcluster::stage_library(library, &base.join("lib"))
            .with_context(|| format!("could not stage {}", library.display()))?;
        let segment_dir = base.join("guard");
        std::fs::create_dir_all(&segment_dir)?;
        let user = cluster.server_user().clone();
        if user.switch {
            std::os::unix::fs::chown(&segment_dir, Some(user.uid), Some(user.gid)).with_context(
                || format!("could not give {} to {}", segment_dir.display(), user.name),
            )?;
        }
        let mut env = vec![
            ("LD_PRELOAD".to_owned(), staged.display().to_string()),
            (
                "OOM_GUARD_DIR".to_owned(),
                segment_dir.display().to_string(),
            ),
        ];
        env.extend(
            guard_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let settings: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cluster.start(&env, &settings)?;
        let postmaster = cluster.postmaster_pid().context("no postmaster pid")?;
        if !pgcluster::pid_maps_library(postmaster, "liboomguard.so")? {
            bail!(
                "the postmaster (pid {postmaster}) does not have {} mapped: the dynamic loader \
                 ignored LD_PRELOAD (see {})",
                staged.display(),
                cluster.log_path().display()
            );
        }
        Ok(GuardedCluster {
            cluster,
            segment_dir,
            library: staged,
        })
    }

    /// The guard's segment of this cluster.
    pub fn segment(&self) -> Result<Segment> {
        let paths = segment::find(&self.segment_dir)?;
        let [path] = paths.as_slice() else {
            bail!(
                "expected one segment in {}, found {paths:?}",
                self.segment_dir.display()
            );
        };
        Ok(Segment::open(path)?)
    }

    /// The guard's numbers now.
    pub fn snapshot(&self) -> Result<Snapshot> {
        Ok(self.segment()?.snapshot()?)
    }

    /// Crash lines found in the server log, if any.
    pub fn crash_lines(&self) -> Result<Vec<String>> {
        let log = self.cluster.log_text()?;
        Ok(log
            .lines()
            .filter(|line| CRASH_LOG_LINES.iter().any(|crash| line.contains(crash)))
            .map(str::to_owned)
            .collect())
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: stopping the demo cluster and removing it");
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
        println!("[press Enter to go on, Ctrl-C to stop]");
        let mut line = String::new();
        let read = std::io::stdin().read_line(&mut line);
        check_interrupt()?;
        if let Ok(0) | Err(_) = read {
            bail!("standard input closed: stopping the demo cluster and removing it");
        }
    }
    Ok(())
}

/// Runs the demo, printing as it goes. `limit` is an `OOM_GUARD_LIMIT` value; `step` waits for
/// Enter between the steps.
pub fn run(library: &Path, limit: &str, step: bool) -> Result<()> {
    catch_interrupts();
    println!(
        "Starting a throwaway PostgreSQL cluster under {}",
        library.display()
    );
    println!("  OOM_GUARD_LIMIT={limit} OOM_GUARD_MODE=enforce (client backends may be refused)");
    let guarded = GuardedCluster::start(
        library,
        &[("OOM_GUARD_LIMIT", limit), ("OOM_GUARD_MODE", "enforce")],
        &[],
    )?;
    let cluster = &guarded.cluster;
    let postmaster = cluster.postmaster_pid().unwrap_or(0);
    println!(
        "  {} in {}, running as `{}`, postmaster pid {postmaster}, guard mapped: yes\n",
        cluster
            .binaries()
            .version()
            .unwrap_or_else(|_| "PostgreSQL".into()),
        cluster.base_dir().display(),
        cluster.server_user().name,
    );
    pause(step)?;

    let mut bystander = cluster.connect()?;
    let mut hog = cluster.connect()?;
    let bystander_pid: i32 = bystander.query_one("SELECT pg_backend_pid()", &[])?.get(0);
    println!("Session A (pid {bystander_pid}) is connected and idle. The guard before the hog:\n");
    print_status(&guarded)?;
    pause(step)?;

    let hog_pid: i32 = hog.query_one("SELECT pg_backend_pid()", &[])?.get(0);
    println!("Session B (pid {hog_pid}) runs a hog that wants ~400 MB:\n  {HOG_QUERY}");
    match hog.query_one(HOG_QUERY, &[]) {
        Ok(row) => {
            let n: i32 = row.get(0);
            bail!("the hog succeeded ({n} elements): the limit {limit} is too large for a demo");
        }
        Err(error) => match error.as_db_error() {
            Some(db) => println!(
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
    println!("  Session B is still connected: SELECT 1 -> {one}");
    let count: i64 = bystander
        .query_one("SELECT count(*) FROM pg_class", &[])?
        .get(0);
    println!("  Session A never noticed: SELECT count(*) FROM pg_class -> {count}");
    let crashes = guarded.crash_lines()?;
    if crashes.is_empty() {
        println!(
            "  The server log has no crash or restart lines; postmaster {postmaster} is still up.\n"
        );
    } else {
        bail!("the server log shows a crash:\n{}", crashes.join("\n"));
    }
    println!("The guard after the hog:\n");
    print_status(&guarded)?;
    println!(
        "Without the guard the kernel's OOM killer would have SIGKILLed session B's backend, and \
         the postmaster would have dropped every connection (A included) to run crash recovery."
    );
    drop(hog);
    drop(bystander);
    let mut guarded = guarded;
    let outcome = guarded.cluster.stop()?;
    println!(
        "\nStopped the cluster ({}) and removed it.",
        if outcome.clean {
            "clean shutdown"
        } else {
            "forced shutdown"
        }
    );
    Ok(())
}

fn print_status(guarded: &GuardedCluster) -> Result<()> {
    let segment = guarded.segment()?;
    let report = status::domain_status(&segment)?;
    for line in status::render(&report).lines() {
        println!("  {line}");
    }
    println!();
    Ok(())
}
