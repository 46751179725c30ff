//! `oomguard-bench --pgbench`: PostgreSQL throughput with and without the guard.
//!
//! Two throwaway clusters run side by side from the same binaries and settings: one started
//! plainly, one started under `liboomguard.so` (enforce mode, [`GUARD_LIMIT`], the default refusal
//! scope of client backends) by [`GuardedCluster`]. Each gets `pgbench -i -s 10` and a warm-up
//! run; then for R rounds every mode runs T seconds on each cluster, alternating which side goes
//! first, and the per-round ratio guarded/plain of TPS is the unit of comparison.
//!
//! Pinning: with `taskset` and at least two CPUs, the server processes (postmaster and its
//! children; later backends inherit the postmaster's mask) run on the upper half of the CPUs and
//! pgbench on the lower half. The server is then the bottleneck, so the TPS ratio reflects the
//! server's CPU cost per transaction, which is where the guard's cost lands.
//!
//! pgbench runs as the invoking user and connects over the cluster's unix socket as the
//! `postgres` superuser (trust authentication), with no preload and no `OOM_GUARD_*` variable.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use oomguard_cluster::{self as pgcluster, Cluster, ClusterOptions, GuardedCluster, SUPERUSER};

use crate::median;

/// `OOM_GUARD_LIMIT` of the guarded server: far above what scale 10 needs.
pub const GUARD_LIMIT: &str = "8Gi";
/// `pgbench -i -s`.
pub const SCALE: u32 = 10;
/// `pgbench -c` and `-j`.
pub const CLIENTS: u32 = 2;

/// Server settings of both clusters, on top of `pgcluster::default_settings()` (which already
/// has `fsync=off`, `full_page_writes=off`, `jit=off`, no TCP). `shared_buffers` holds all of
/// scale 10 (~160 MB), so select-only runs do not read through the page cache.
/// `max_connections` leaves room for exited `-C` backends the postmaster has not reaped yet
/// (with 30, a server pinned to one CPU refused `-C` connections with "too many clients").
pub const SETTINGS: [(&str, &str); 3] = [
    ("shared_buffers", "256MB"),
    ("synchronous_commit", "off"),
    ("max_connections", "200"),
];

/// One pgbench mode.
pub struct Mode {
    /// Row label in the report.
    pub label: &'static str,
    /// Arguments that select it (a built-in script); empty with a [`Mode::script`].
    pub args: &'static [&'static str],
    /// A script of our own, run with `-f`: a `\set` line, then one query using its variable.
    pub script: Option<Script>,
}

/// A custom pgbench script and what proves it runs as its mode says.
pub struct Script {
    /// SQL run once on each server before the proof (empty: none).
    pub setup: &'static str,
    /// Session settings of its connections (`PGOPTIONS`).
    pub options: &'static str,
    /// The `\set` line that draws the query's variable.
    pub set: &'static str,
    /// The query, with `:name` where the variable goes.
    pub query: &'static str,
    /// What `EXPLAIN (ANALYZE)` of the query must print, on both servers, before the mode is
    /// timed (a server without LLVM runs no JIT, one without free worker slots no workers: the
    /// mode would then measure something else).
    pub proof: &'static str,
}

impl Mode {
    /// Its pgbench arguments as the report's Markdown shows them.
    pub fn describe(&self) -> String {
        match (&self.script, self.args) {
            (Some(script), _) => format!(
                "`-f` script `{}` `{};`, `-s {SCALE}`, with `PGOPTIONS='{}'`{}",
                script.set,
                script.query,
                script.options,
                if script.setup.is_empty() {
                    String::new()
                } else {
                    format!(", after `{}`", script.setup)
                }
            ),
            (None, []) => "(default script)".to_owned(),
            (None, args) => format!("`{}`", args.join(" ")),
        }
    }
}

impl Script {
    /// The name its `\set` line gives the variable.
    fn variable(&self) -> &str {
        self.set.split_whitespace().nth(1).unwrap_or_default()
    }

    /// The script file's text.
    fn text(&self) -> String {
        format!("{}\n{};\n", self.set, self.query)
    }
}

/// The modes the overhead budget names: select-only with the extended protocol and prepared
/// statements, select-only with the simple protocol, TPC-B-like read-write
/// (`synchronous_commit=off`), and a new connection per (select-only) transaction, the worst case
/// for an interposer: every transaction forks a backend that attaches the guard. Then two modes
/// whose memory comes from elsewhere than the executor's own contexts: a parallel query (each
/// query forks two workers that attach the guard, and sizes dynamic shared memory, which the
/// guard charges), and a JIT-compiled query (LLVM allocates through `malloc` while it compiles
/// every query; a tiny table keeps the compilation the main cost).
pub const MODES: [Mode; 6] = [
    Mode {
        label: "pgbench -S -M prepared",
        args: &["-S", "-M", "prepared"],
        script: None,
    },
    Mode {
        label: "pgbench -S",
        args: &["-S"],
        script: None,
    },
    Mode {
        label: "pgbench TPC-B, synchronous_commit=off",
        args: &[],
        script: None,
    },
    Mode {
        label: "pgbench -S -C (connection per transaction)",
        args: &["-S", "-C"],
        script: None,
    },
    Mode {
        label: "parallel query, 2 workers per query",
        args: &[],
        script: Some(Script {
            // A tiny table told to take two workers: their start-up (a fork each, the guard's
            // attach) and the query's dynamic shared memory are the cost, not the scan.
            setup: "ALTER TABLE pgbench_branches SET (parallel_workers = 2)",
            options: "-c max_parallel_workers_per_gather=2 -c parallel_setup_cost=0 \
                      -c parallel_tuple_cost=0 -c min_parallel_table_scan_size=0",
            set: "\\set bid random(1, :scale)",
            query: "SELECT count(*), sum(bbalance) FROM pgbench_branches WHERE bid <> :bid",
            proof: "Workers Launched: 2",
        }),
    },
    Mode {
        label: "JIT-compiled query",
        args: &[],
        script: Some(Script {
            setup: "",
            options: "-c jit=on -c jit_above_cost=0 -c jit_inline_above_cost=0 \
                      -c jit_optimize_above_cost=0",
            set: "\\set tid random(1, 10 * :scale)",
            query:
                "SELECT sum(tbalance * 2 + tid), max(bid) FROM pgbench_tellers WHERE tid <> :tid",
            proof: "JIT:",
        }),
    },
];

/// How to run the pgbench comparison.
pub struct Options {
    /// Seconds per pgbench run (`-T`).
    pub seconds: u32,
    /// A/B rounds per mode.
    pub rounds: usize,
    /// Pin server and client to disjoint CPUs with `taskset` when possible.
    pub pin: bool,
    /// The guard library (absolute path).
    pub library: PathBuf,
}

/// Aggregated result of one mode.
pub struct ModeResult {
    pub label: &'static str,
    pub args: String,
    pub plain_tps: f64,
    pub guarded_tps: f64,
    pub ratio_median: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
    pub rounds: usize,
}

/// Everything the report needs about the pgbench comparison.
pub struct Report {
    pub modes: Vec<ModeResult>,
    /// `postgres --version`.
    pub server: String,
    /// How processes were pinned (or why not).
    pub pinning: String,
    /// How the clusters were warmed up before the timed runs.
    pub warmup: String,
    /// The guarded server's own numbers after the runs (refusals must be 0).
    pub guard_check: String,
    /// The exact pgbench command line of a run, with `MODE` for the mode's arguments.
    pub command: String,
    pub seconds: u32,
    pub rounds: usize,
    pub elapsed: f64,
}

/// CPU sets for the server and for pgbench.
struct Pinning {
    server: String,
    client: String,
}

const SIDE_NAMES: [&str; 2] = ["plain", "guarded"];

/// Runs the whole comparison, printing progress.
pub fn run(opts: &Options) -> Result<Report, String> {
    let started = Instant::now();
    let binaries = pgcluster::PgBinaries::discover().map_err(err)?;
    let pgbench = find_pgbench(&binaries.bindir)?;
    let server = binaries
        .version()
        .unwrap_or_else(|_| "PostgreSQL (version unknown)".into());
    let pinning = if opts.pin {
        plan_pinning()
    } else {
        Err("off (--no-pin)".into())
    };
    let pinning_text = match &pinning {
        Ok(p) => format!(
            "server (postmaster and children) on CPU {}, pgbench on CPU {} (`taskset`)",
            p.server, p.client
        ),
        Err(why) => format!("none: {why}"),
    };
    println!(
        "pgbench: {server}; {} s per run, {} rounds, -c {CLIENTS} -j {CLIENTS}, scale {SCALE}; \
         pinning: {pinning_text}",
        opts.seconds, opts.rounds
    );

    let settings: Vec<(String, String)> = SETTINGS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut plain = Cluster::create_temp(&ClusterOptions::default()).map_err(err)?;
    plain.start(&[], &settings).map_err(err)?;
    let plain_pid = plain
        .postmaster_pid()
        .ok_or("plain cluster: no postmaster pid")?;
    if pgcluster::pid_maps_library(plain_pid, "liboomguard.so").unwrap_or(false) {
        return Err(format!(
            "the plain server (pid {plain_pid}) has liboomguard.so mapped: unset LD_PRELOAD \
             before running the benchmark"
        ));
    }
    let guarded = GuardedCluster::start(
        &opts.library,
        &[
            ("OOM_GUARD_MODE", "enforce"),
            ("OOM_GUARD_LIMIT", GUARD_LIMIT),
        ],
        &SETTINGS,
    )
    .map_err(err)?;
    let clusters: [&Cluster; 2] = [&plain, &guarded.cluster];

    if let Ok(p) = &pinning {
        for (name, cluster) in SIDE_NAMES.iter().zip(clusters) {
            let pid = cluster.postmaster_pid().unwrap_or(0);
            pin_process_tree(pid, &p.server)
                .map_err(|e| format!("could not pin the {name} server: {e}"))?;
        }
    }
    let client_cpus = pinning.as_ref().ok().map(|p| p.client.as_str());

    for (name, cluster) in SIDE_NAMES.iter().zip(clusters) {
        let t = Instant::now();
        pgbench_run(
            &pgbench,
            cluster,
            client_cpus,
            &["-i", "-s", &SCALE.to_string(), "-q"],
        )
        .map_err(|e| format!("{name} cluster: {e}"))?;
        println!(
            "  {name} cluster: pgbench -i -s {SCALE} in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    // Warm-up: loads the tables into shared_buffers (pg_prewarm, from PostgreSQL's contrib;
    // without it select-only runs start cold and warm up at different rates on the two sides),
    // then a short select-only run warms the catalogue caches and the server's allocator.
    let warmup = opts.seconds.clamp(2, 5).to_string();
    let mut prewarmed = true;
    for (name, cluster) in SIDE_NAMES.iter().zip(clusters) {
        if let Err(e) = prewarm(cluster) {
            println!(
                "  {name} cluster: pg_prewarm unavailable ({e}); warming up with pgbench only"
            );
            prewarmed = false;
        }
        run_mode(&pgbench, cluster, client_cpus, &MODES[1], None, &warmup)
            .map_err(|e| format!("{name} warm-up: {e}"))?;
    }
    // The custom scripts, written beside the plain cluster's data (removed with it), each
    // proven on both servers to run as its mode says.
    let scripts_dir = plain
        .data_dir()
        .parent()
        .unwrap_or(plain.data_dir())
        .to_owned();
    let mut script_files: Vec<Option<PathBuf>> = Vec::new();
    for (m, mode) in MODES.iter().enumerate() {
        let Some(script) = &mode.script else {
            script_files.push(None);
            continue;
        };
        let file = scripts_dir.join(format!("mode-{m}.sql"));
        fs::write(&file, script.text())
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        for (name, cluster) in SIDE_NAMES.iter().zip(clusters) {
            prove(cluster, script).map_err(|e| format!("{name} {}: {e}", mode.label))?;
        }
        script_files.push(Some(file));
    }

    let seconds = opts.seconds.to_string();
    let mut tps: Vec<[Vec<f64>; 2]> = MODES.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    for round in 0..opts.rounds {
        for (m, mode) in MODES.iter().enumerate() {
            // Alternate which side goes first, per round and per mode.
            let order = if (round + m) % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let file = script_files[m].as_deref();
                let value = run_mode(&pgbench, clusters[i], client_cpus, mode, file, &seconds)
                    .map_err(|e| format!("{} {}: {e}", SIDE_NAMES[i], mode.label))?;
                tps[m][i].push(value);
            }
            let (a, b) = (tps[m][0][round], tps[m][1][round]);
            println!(
                "  round {}/{} {:<44} plain {:>9.1} tps  guarded {:>9.1} tps  ratio {:.3}",
                round + 1,
                opts.rounds,
                mode.label,
                a,
                b,
                b / a
            );
        }
    }

    let guard_check = check_guard(&guarded)?;
    drop(plain);
    drop(guarded); // both stop their servers and remove their directories

    let modes = MODES
        .iter()
        .zip(&tps)
        .map(|(mode, [plain, guarded])| {
            let ratios: Vec<f64> = plain.iter().zip(guarded).map(|(a, b)| b / a).collect();
            ModeResult {
                label: mode.label,
                args: mode.describe(),
                plain_tps: median(&mut plain.clone()),
                guarded_tps: median(&mut guarded.clone()),
                ratio_median: median(&mut ratios.clone()),
                ratio_min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratio_max: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                rounds: ratios.len(),
            }
        })
        .collect();
    let command = format!(
        "{}{} -h SOCKET_DIR -p PORT -U {SUPERUSER} -c {CLIENTS} -j {CLIENTS} -T {} MODE postgres",
        client_cpus
            .map(|c| format!("taskset -c {c} "))
            .unwrap_or_default(),
        pgbench.display(),
        opts.seconds
    );
    Ok(Report {
        modes,
        server,
        warmup: if prewarmed {
            format!("pg_prewarm of the pgbench tables and indexes, then `pgbench -S -T {warmup}`")
        } else {
            format!("`pgbench -S -T {warmup}` (pg_prewarm unavailable)")
        },
        pinning: pinning_text,
        guard_check,
        command,
        seconds: opts.seconds,
        rounds: opts.rounds,
        elapsed: started.elapsed().as_secs_f64(),
    })
}

/// An error (with its causes, for `anyhow` errors) as text.
fn err(e: impl std::fmt::Display) -> String {
    format!("{e:#}")
}

/// pgbench from the server's bin directory, else from `PATH`.
fn find_pgbench(bindir: &Path) -> Result<PathBuf, String> {
    let candidate = bindir.join("pgbench");
    if candidate.is_file() {
        return Ok(candidate);
    }
    env::var_os("PATH")
        .iter()
        .flat_map(env::split_paths)
        .map(|dir| dir.join("pgbench"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "pgbench not found in {} or on PATH (Debian: apt-get install \
                 postgresql-contrib or postgresql-client)",
                bindir.display()
            )
        })
}

/// Server on the upper half of the CPUs we may use, pgbench on the lower half.
fn plan_pinning() -> Result<Pinning, String> {
    let probe = Command::new("taskset")
        .args(["-p", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(probe, Ok(s) if s.success()) {
        return Err("taskset is not available".into());
    }
    let cpus = allowed_cpus().ok_or("could not read Cpus_allowed_list")?;
    if cpus.len() < 2 {
        return Err(format!("only {} CPU available", cpus.len()));
    }
    let half = cpus.len() / 2;
    let list = |c: &[u32]| c.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    Ok(Pinning {
        client: list(&cpus[..half]),
        server: list(&cpus[half..]),
    })
}

/// The CPUs this process may run on (`Cpus_allowed_list` of /proc/self/status).
fn allowed_cpus() -> Option<Vec<u32>> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<u32>().ok()?..=b.parse::<u32>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// Sets the CPU affinity of `root` and of all its descendants (every thread of each).
fn pin_process_tree(root: u32, cpus: &str) -> Result<(), String> {
    let mut pids = vec![root];
    let mut i = 0;
    while i < pids.len() {
        pids.extend(children_of(pids[i]));
        i += 1;
    }
    for pid in pids {
        let out = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .output()
            .map_err(|e| format!("cannot run taskset: {e}"))?;
        // A child that exited meanwhile is not an error.
        if !out.status.success() && Path::new(&format!("/proc/{pid}")).exists() {
            return Err(format!(
                "taskset -a -p -c {cpus} {pid}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// Pids whose parent is `parent`, from /proc/*/stat.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ppid …: comm may hold spaces and parentheses, so split after the last ')'.
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == parent).then_some(pid)
    })
    .collect()
}

/// Runs pgbench against `cluster` with `args`, returning its stdout.
fn pgbench_run(
    pgbench: &Path,
    cluster: &Cluster,
    client_cpus: Option<&str>,
    args: &[&str],
) -> Result<String, String> {
    pgbench_run_with(pgbench, cluster, client_cpus, args, None)
}

/// As [`pgbench_run`], with `options` (`PGOPTIONS`: session settings) for its connections.
fn pgbench_run_with(
    pgbench: &Path,
    cluster: &Cluster,
    client_cpus: Option<&str>,
    args: &[&str],
    options: Option<&str>,
) -> Result<String, String> {
    let mut cmd = match client_cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(pgbench);
            c
        }
        None => Command::new(pgbench),
    };
    cmd.arg("-h")
        .arg(cluster.socket_dir())
        .arg("-p")
        .arg(cluster.port().to_string())
        .args(["-U", SUPERUSER])
        .args(args)
        .arg("postgres")
        .stdin(Stdio::null())
        .env_remove("LD_PRELOAD")
        .env_remove("PGOPTIONS")
        .env("LC_ALL", "C");
    if let Some(options) = options {
        cmd.env("PGOPTIONS", options);
    }
    for (key, _) in env::vars_os() {
        if key.to_string_lossy().starts_with("OOM_GUARD_") {
            cmd.env_remove(&key);
        }
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", pgbench.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "pgbench {} failed ({})\nstdout: {}\nstderr: {}\nserver log:\n{}",
            args.join(" "),
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim(),
            cluster.log_tail(20)
        ));
    }
    Ok(stdout)
}

/// Loads the pgbench tables and indexes into shared_buffers.
fn prewarm(cluster: &Cluster) -> Result<(), String> {
    let mut client = cluster.connect().map_err(err)?;
    client
        .batch_execute(
            "CREATE EXTENSION IF NOT EXISTS pg_prewarm; \
             SELECT pg_prewarm(c.oid) FROM pg_class c \
             WHERE c.relname LIKE 'pgbench\\_%' AND c.relkind IN ('r', 'i')",
        )
        .map_err(err)
}

/// One timed run of `mode` for `seconds` (its script from `script_file`); returns the TPS
/// pgbench reports.
fn run_mode(
    pgbench: &Path,
    cluster: &Cluster,
    client_cpus: Option<&str>,
    mode: &Mode,
    script_file: Option<&Path>,
    seconds: &str,
) -> Result<f64, String> {
    let clients = CLIENTS.to_string();
    let mut args = vec!["-c", &clients, "-j", &clients, "-T", seconds];
    args.extend_from_slice(mode.args);
    let file = script_file.map(|file| file.display().to_string());
    // pgbench sets `:scale` from the tables for its own scripts only.
    let scale = SCALE.to_string();
    if let Some(file) = &file {
        args.extend(["-f", file, "-s", &scale]);
    }
    let options = mode.script.as_ref().map(|script| script.options);
    let stdout = pgbench_run_with(pgbench, cluster, client_cpus, &args, options)?;
    parse_tps(&stdout).ok_or_else(|| format!("no `tps = ` line in pgbench output:\n{stdout}"))
}

/// Checks that `script`'s query runs on `cluster` as its mode says: `EXPLAIN (ANALYZE)` of it,
/// with the script's settings and its variable at 1, prints [`Script::proof`].
fn prove(cluster: &Cluster, script: &Script) -> Result<(), String> {
    let mut client = cluster.connect().map_err(err)?;
    if !script.setup.is_empty() {
        client.batch_execute(script.setup).map_err(err)?;
    }
    // `-c name=value` as pgbench's connections get them through PGOPTIONS.
    for setting in script
        .options
        .split_whitespace()
        .filter(|word| *word != "-c")
    {
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("not `-c name=value`: {setting}"))?;
        client
            .batch_execute(&format!("SET {name} = '{value}'"))
            .map_err(err)?;
    }
    let query = script
        .query
        .replace(&format!(":{}", script.variable()), "1");
    let plan: Vec<String> = client
        .query(&format!("EXPLAIN (ANALYZE) {query}"), &[])
        .map_err(err)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if plan.iter().any(|line| line.contains(script.proof)) {
        return Ok(());
    }
    Err(format!(
        "EXPLAIN (ANALYZE) does not show `{}` (settings `{}`): the mode would measure something \
         else (no LLVM JIT in this server's build, no free parallel worker slots?)\n{}",
        script.proof,
        script.options,
        plan.join("\n")
    ))
}

/// The TPS figure of pgbench's summary: `tps = 1234.567890 (without initial connection time)`
/// (or `(including reconnection times)` with `-C`).
fn parse_tps(stdout: &str) -> Option<f64> {
    stdout.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("tps = ")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The guarded server's segment after the runs: the guard was attached, and refused nothing.
fn check_guard(guarded: &GuardedCluster) -> Result<String, String> {
    let snapshot = guarded.snapshot().map_err(|e| {
        format!(
            "cannot read the guard's segment in {}: {e:#}",
            guarded.segment_dir.display()
        )
    })?;
    if snapshot.denied_allocations > 0 {
        return Err(format!(
            "the guard refused {} allocations during the benchmark (limit {GUARD_LIMIT}): the \
             guarded runs are not comparable",
            snapshot.denied_allocations
        ));
    }
    Ok(format!(
        "Guard attached to the guarded server, 0 refusals, peak {:.1} MiB accounted",
        snapshot.peak_bytes as f64 / (1 << 20) as f64
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tps_lines() {
        let out = "number of transactions actually processed: 100\n\
                   latency average = 0.1 ms\n\
                   initial connection time = 2.0 ms\n\
                   tps = 19650.123456 (without initial connection time)\n";
        assert_eq!(parse_tps(out), Some(19650.123456));
        assert_eq!(
            parse_tps("tps = 812.5 (including reconnection times)\n"),
            Some(812.5)
        );
        assert_eq!(parse_tps("nothing here"), None);
    }
}
