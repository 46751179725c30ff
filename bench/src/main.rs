//! `oomguard-bench`: whole-process benchmark of `liboomguard.so` against plain glibc and against
//! the floor, a pure pass-through interposer.
//!
//! This module owns the benchmark driver: argument parsing, the round schedule, the environment
//! of each side's runs, statistics and the Markdown report. The workloads themselves live in
//! `workloads/alloc_loop.c` (compiled by `build.rs`), which times only its own workload with
//! `CLOCK_MONOTONIC` and prints one `key=value` line. The floor is `workloads/passthrough.c`
//! (`libpassthrough.so`, also compiled by `build.rs`): every allocation function forwards to
//! glibc's `__libc_*` entry point and does nothing else, so it costs what any `LD_PRELOAD`
//! interposer costs, and guard minus floor is what the guard itself costs.
//!
//! For every workload, R rounds each run three sides back to back: A (plain glibc), F (the
//! floor) and B (`LD_PRELOAD` of the guard in enforce mode, generous limit,
//! `OOM_GUARD_REFUSE=all`, a fresh `OOM_GUARD_DIR`), in an order that changes from round to
//! round ([`round_order`]). The per-round ratios F/A, B/A and B/F of ns/op are the unit of
//! comparison; the report gives their median and min/max, and the median ns/op of each side.
//! [`callgrind`] counts instructions per operation of the same workloads on the three sides.
//!
//! `--pgbench` compares PostgreSQL throughput with and without the guard ([`pgbench`]); `--all`
//! runs the allocation workloads, the instruction count and pgbench in one go. Every result with
//! the overhead budget is checked against it ([`budget`]) and reported as pass or miss; a miss
//! does not change the exit status.

mod budget;
mod callgrind;
mod pgbench;

use std::collections::BTreeMap;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Instant, UNIX_EPOCH};

/// Path of the compiled workload program (set by `build.rs`).
const ALLOC_LOOP: &str = env!("OOMGUARD_ALLOC_LOOP");

/// Path of the floor, the pass-through interposer (set by `build.rs`).
const PASSTHROUGH: &str = env!("OOMGUARD_PASSTHROUGH");

/// File name of the floor: `alloc_loop` reports it as `malloc_from`, callgrind as its object.
const PASSTHROUGH_NAME: &str = "libpassthrough.so";

/// Limit handed to the guard in B runs: far above anything the workloads allocate.
const GUARD_LIMIT: &str = "64GiB";

const USAGE: &str = "\
usage: oomguard-bench [--all | --pgbench] [--quick] [--rounds N] [--library PATH]
                      [--markdown FILE] [--only NAME] [--valgrind | --no-valgrind]
                      [--pg-seconds T] [--pg-rounds R] [--no-pin]

  (default)        allocation workloads (+ instruction count unless --quick)
  --all            allocation workloads, instruction count and pgbench: the whole suite
  --pgbench        pgbench only: plain vs guarded PostgreSQL throughput
  --quick          a few seconds per part (CI keep-alive); valgrind off unless --valgrind
  --rounds N       rounds (plain, floor, guard) per allocation workload (default 11, quick 5)
  --library PATH   guard to preload (default <workspace>/target/release/liboomguard.so)
  --markdown FILE  also write the results as a Markdown report to FILE
  --only NAME      run only allocation workloads (and callgrind shapes) whose label contains
                   NAME (e.g. small, fork)
  --valgrind       count instructions per operation of every shape with callgrind, for glibc,
                   the floor and the guard (default: full mode)
  --no-valgrind    skip the instruction count
  --pg-seconds T   seconds per pgbench run (default 20, quick 2)
  --pg-rounds R    A/B rounds per pgbench mode (default 5, quick 3)
  --no-pin         do not pin the server and pgbench to disjoint CPUs with taskset
";

/// Parsed command line.
struct Config {
    quick: bool,
    rounds: usize,
    library: PathBuf,
    markdown: Option<PathBuf>,
    only: Option<String>,
    valgrind: Option<bool>,
    /// Run the allocation workloads (and the instruction count).
    alloc: bool,
    /// Run the pgbench comparison.
    pgbench: bool,
    pg_seconds: u32,
    pg_rounds: usize,
    pin: bool,
}

/// One workload invocation of `alloc_loop`.
struct Workload {
    label: String,
    args: Vec<String>,
}

impl Workload {
    fn new(args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let label = match args[0].as_str() {
            "small" => format!("small {}T", args[1]),
            other => other.to_string(),
        };
        Workload { label, args }
    }
}

/// What a run preloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// A: plain glibc, no preload.
    Plain,
    /// F: the floor, `libpassthrough.so`, which forwards every allocation call to glibc.
    Floor,
    /// B: the guard, `liboomguard.so`, in enforce mode.
    Guard,
}

impl Side {
    /// Every side, in the order of [`Side::index`].
    const ALL: [Side; 3] = [Side::Plain, Side::Floor, Side::Guard];

    /// Position in [`Side::ALL`], for per-side arrays.
    fn index(self) -> usize {
        match self {
            Side::Plain => 0,
            Side::Floor => 1,
            Side::Guard => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Side::Plain => "plain",
            Side::Floor => "floor",
            Side::Guard => "guarded",
        }
    }

    /// The object `malloc` must resolve into on this side (`alloc_loop`'s `malloc_from`).
    fn expected_origin(self, library: &Path) -> String {
        match self {
            Side::Plain => "glibc".to_string(),
            Side::Floor => PASSTHROUGH_NAME.to_string(),
            Side::Guard => library_name(library),
        }
    }

    /// Whether `malloc_from` is this side's allocator, i.e. the preload (or its absence) took
    /// effect as intended.
    fn resolved_as_expected(self, malloc_from: &str, library: &Path) -> bool {
        let guard = library_name(library);
        match self {
            Side::Plain => malloc_from != PASSTHROUGH_NAME && malloc_from != guard,
            Side::Floor => malloc_from == PASSTHROUGH_NAME,
            Side::Guard => malloc_from == guard,
        }
    }
}

/// File name of a library, as `alloc_loop` (via `dladdr`) and callgrind report it.
fn library_name(library: &Path) -> String {
    library
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The order of the sides in round `round`. Consecutive rounds reverse each other and every
/// second round rotates by one, so that over six rounds each side runs twice in each position
/// and as often before as after each other side: slow drift of the machine favours no side.
fn round_order(round: usize) -> [Side; 3] {
    let mut order = Side::ALL;
    order.rotate_left((round / 2) % 3);
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// Median and range of per-round values.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        Spread {
            median: median(&mut values.to_vec()),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// Aggregated result of one workload.
struct WorkloadResult {
    label: String,
    args: String,
    rounds: usize,
    /// Median ns/op of each side, in [`Side::ALL`] order.
    ns: [f64; 3],
    /// Per-round F/A: what any interposer costs.
    floor_ratio: Spread,
    /// Per-round B/A: what the guard costs, the ratio the budget is checked against.
    guard_ratio: Spread,
    /// Per-round B/F: the guard's excess over the floor.
    over_floor: Spread,
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oomguard-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut cfg = Config {
        quick: false,
        rounds: 0,
        library: workspace_root().join("target/release/liboomguard.so"),
        markdown: None,
        only: None,
        valgrind: None,
        alloc: true,
        pgbench: false,
        pg_seconds: 0,
        pg_rounds: 0,
        pin: true,
    };
    let (mut all, mut pgbench_only) = (false, false);
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        match arg.as_str() {
            "--quick" => cfg.quick = true,
            "--rounds" => {
                let v = value("--rounds")?;
                cfg.rounds = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--rounds: not a positive integer: {v}"))?;
            }
            "--library" => cfg.library = PathBuf::from(value("--library")?),
            "--markdown" => cfg.markdown = Some(PathBuf::from(value("--markdown")?)),
            "--only" => cfg.only = Some(value("--only")?),
            "--valgrind" => cfg.valgrind = Some(true),
            "--no-valgrind" => cfg.valgrind = Some(false),
            "--all" => all = true,
            "--pgbench" => pgbench_only = true,
            "--no-pin" => cfg.pin = false,
            "--pg-seconds" => {
                let v = value("--pg-seconds")?;
                cfg.pg_seconds = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--pg-seconds: not a positive integer: {v}"))?;
            }
            "--pg-rounds" => {
                let v = value("--pg-rounds")?;
                cfg.pg_rounds = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--pg-rounds: not a positive integer: {v}"))?;
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument: {other}\n\n{USAGE}")),
        }
    }
    if all && pgbench_only {
        return Err(format!("--all and --pgbench exclude each other\n\n{USAGE}"));
    }
    cfg.alloc = !pgbench_only;
    cfg.pgbench = all || pgbench_only;
    if cfg.rounds == 0 {
        cfg.rounds = if cfg.quick { 5 } else { 11 };
    }
    if cfg.pg_seconds == 0 {
        cfg.pg_seconds = if cfg.quick { 2 } else { 20 };
    }
    if cfg.pg_rounds == 0 {
        cfg.pg_rounds = if cfg.quick { 3 } else { 5 };
    }
    Ok(cfg)
}

fn workloads(quick: bool) -> Vec<Workload> {
    if quick {
        vec![
            Workload::new(&["small", "1", "2000000"]),
            Workload::new(&["small", "2", "2000000"]),
            Workload::new(&["pglike", "20000"]),
            Workload::new(&["calloc", "200000"]),
            Workload::new(&["fork", "100"]),
        ]
    } else {
        vec![
            Workload::new(&["small", "1", "20000000"]),
            Workload::new(&["small", "2", "10000000"]),
            Workload::new(&["pglike", "200000"]),
            Workload::new(&["calloc", "2000000"]),
            Workload::new(&["fork", "1000"]),
        ]
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let cfg = parse_args(args)?;
    let library = check_library(&cfg.library)?;
    if cfg.alloc {
        for built in [ALLOC_LOOP, PASSTHROUGH] {
            if !Path::new(built).is_file() {
                return Err(format!(
                    "{built} (built by bench/build.rs) is missing; rebuild oomguard-bench"
                ));
            }
        }
    }

    let started = Instant::now();
    let mode = if cfg.quick { "quick" } else { "full" };
    println!("oomguard-bench ({mode}): guard {}", library.display());

    let mut report = Report::default();
    if cfg.alloc {
        run_alloc(&cfg, &library, &mut report)?;
    }
    // A pgbench failure (no PostgreSQL, a server that does not start) is reported in the
    // Markdown file too, then makes the exit status non-zero.
    let mut pg_error = None;
    if cfg.pgbench {
        let opts = pgbench::Options {
            seconds: cfg.pg_seconds,
            rounds: cfg.pg_rounds,
            pin: cfg.pin,
            library: library.clone(),
        };
        match pgbench::run(&opts) {
            Ok(r) => {
                for m in &r.modes {
                    println!(
                        "  {:<44} plain {:>9.1} tps  guarded {:>9.1} tps  guarded/plain median \
                         {:.3} [min {:.3}, max {:.3}]  budget {} {}",
                        m.label,
                        m.plain_tps,
                        m.guarded_tps,
                        m.ratio_median,
                        m.ratio_min,
                        m.ratio_max,
                        budget::PGBENCH.describe(),
                        budget::PGBENCH.verdict(m.ratio_median)
                    );
                    report.checks.push(budget::Line {
                        what: m.label.to_string(),
                        budget: budget::PGBENCH,
                        measured: m.ratio_median,
                    });
                }
                println!("  {}", r.guard_check);
                report.pgbench = Some(Ok(r));
            }
            Err(e) => {
                eprintln!("oomguard-bench: pgbench: {e}");
                report.pgbench = Some(Err(e.clone()));
                pg_error = Some(e);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    let missed: Vec<&budget::Line> = report.checks.iter().filter(|c| !c.met()).collect();
    println!(
        "  budget: {} of {} checked lines pass{}",
        report.checks.len() - missed.len(),
        report.checks.len(),
        if missed.is_empty() { "" } else { "; missed:" }
    );
    for line in &missed {
        println!("    {}", line.describe());
    }
    println!("  total {elapsed:.1} s");

    if let Some(path) = &cfg.markdown {
        let md = markdown(&cfg, &library, &report, elapsed);
        fs::write(path, md).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("  wrote {}", path.display());
    }
    match pg_error {
        Some(e) => Err(format!("pgbench comparison failed: {e}")),
        None => Ok(()),
    }
}

/// What the run measured, for the Markdown report.
#[derive(Default)]
struct Report {
    /// Allocation workloads (empty with `--pgbench`).
    results: Vec<WorkloadResult>,
    /// Instruction counts (None with `--pgbench`).
    instr: Option<callgrind::Report>,
    /// pgbench comparison, or why it failed (None unless `--pgbench`/`--all`).
    pgbench: Option<Result<pgbench::Report, String>>,
    /// Every result with a budget.
    checks: Vec<budget::Line>,
}

/// The allocation workloads and the instruction count.
fn run_alloc(cfg: &Config, library: &Path, report: &mut Report) -> Result<(), String> {
    println!(
        "allocation workloads: {} rounds per workload; A = plain glibc, F = floor (pass-through \
         interposer), B = guard",
        cfg.rounds
    );
    for w in workloads(cfg.quick) {
        if let Some(only) = &cfg.only {
            if !w.label.contains(only.as_str()) {
                continue;
            }
        }
        let r = bench_workload(&w, library, cfg.rounds, !cfg.quick)?;
        let verdict = match budget::for_workload(&r.label) {
            Some(b) => {
                report.checks.push(budget::Line {
                    what: r.label.clone(),
                    budget: b,
                    measured: r.guard_ratio.median,
                });
                format!(
                    "budget {} {}",
                    b.describe(),
                    b.verdict(r.guard_ratio.median)
                )
            }
            None => "no budget".to_string(),
        };
        // `tests/tests/bench_quick.rs` reads the numbers after "A ", "B " and "B/A median ".
        let spread = |s: Spread| format!("{:.3} [min {:.3}, max {:.3}]", s.median, s.min, s.max);
        println!(
            "  {:<10} A {:>9} ns/op  F {:>9} ns/op  B {:>9} ns/op  F/A median {}  \
             B/A median {}  B/F median {}  {verdict}",
            r.label,
            fmt_ns(r.ns[Side::Plain.index()]),
            fmt_ns(r.ns[Side::Floor.index()]),
            fmt_ns(r.ns[Side::Guard.index()]),
            spread(r.floor_ratio),
            spread(r.guard_ratio),
            spread(r.over_floor),
        );
        report.results.push(r);
    }
    if report.results.is_empty() {
        return Err("--only matched no workload".to_string());
    }

    let want_valgrind = cfg.valgrind.unwrap_or(!cfg.quick);
    let instr = if want_valgrind {
        callgrind::count(library, cfg.quick, cfg.only.as_deref())
    } else if cfg.quick {
        callgrind::Report::Skipped("skipped in --quick mode (pass --valgrind to enable)".into())
    } else {
        callgrind::Report::Skipped("skipped (--no-valgrind)".into())
    };
    callgrind::print(&instr);
    // The budget covers the guard's whole cost over glibc per malloc+free pair.
    if let Some(small) = instr.shape("small 1T") {
        let (plain, guard) = (small.per_op(Side::Plain), small.per_op(Side::Guard));
        let extra = guard - plain;
        println!(
            "  instructions per malloc+free pair (small 1T, callgrind, {} vs {} ops): \
             glibc {plain:.1}, floor {:.1}, guard {guard:.1}, extra {extra:+.1}  budget {} {}",
            2 * small.ops,
            small.ops,
            small.per_op(Side::Floor),
            budget::EXTRA_INSTRUCTIONS.describe(),
            budget::EXTRA_INSTRUCTIONS.verdict(extra)
        );
        report.checks.push(budget::Line {
            what: "extra instructions per malloc+free pair".to_string(),
            budget: budget::EXTRA_INSTRUCTIONS,
            measured: extra,
        });
    }
    report.instr = Some(instr);
    Ok(())
}

/// Resolves the guard library to an absolute path (LD_PRELOAD needs one) or explains how to
/// build it.
fn check_library(path: &Path) -> Result<PathBuf, String> {
    if !path.is_file() {
        return Err(format!(
            "guard library {} not found: run `cargo build --release` first \
             (or `cargo build --release -p oomguard`, or pass --library PATH)",
            path.display()
        ));
    }
    fs::canonicalize(path).map_err(|e| format!("cannot resolve {}: {e}", path.display()))
}

/// A fresh, empty directory for one guarded run's accounting segment; removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Result<Self, String> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = env::temp_dir().join(format!("oomguard-bench-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(ScratchDir(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Builds the command for one run: every run starts from no preload and no guard setting; floor
/// runs then preload the floor, guarded runs the guard in enforce mode with a generous limit.
fn command(program: &str, args: &[String], side: Side, library: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd.env_remove("LD_PRELOAD");
    for (key, _) in env::vars_os() {
        if key.to_string_lossy().starts_with("OOM_GUARD_") {
            cmd.env_remove(&key);
        }
    }
    match side {
        Side::Plain => {}
        Side::Floor => {
            cmd.env("LD_PRELOAD", PASSTHROUGH);
        }
        Side::Guard => {
            cmd.env("LD_PRELOAD", library)
                .env("OOM_GUARD_MODE", "enforce")
                .env("OOM_GUARD_LIMIT", GUARD_LIMIT)
                .env("OOM_GUARD_REFUSE", "all")
                .env("OOM_GUARD_DIR", dir);
        }
    }
    cmd
}

fn describe_failure(what: &str, out: &Output) -> String {
    format!(
        "{what} failed ({})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// Runs the workload once and returns its ns/op, after checking where `malloc` resolved.
fn run_once(w: &Workload, side: Side, library: &Path) -> Result<f64, String> {
    let dir = ScratchDir::new()?;
    let what = format!("`alloc_loop {}` ({})", w.args.join(" "), side.name());
    let out = command(ALLOC_LOOP, &w.args, side, library, &dir.0)
        .output()
        .map_err(|e| format!("cannot run {ALLOC_LOOP}: {e}"))?;
    if !out.status.success() {
        return Err(describe_failure(&what, &out));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fields: BTreeMap<&str, &str> = stdout
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let ns_per_op = fields
        .get("ns_per_op")
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| describe_failure(&format!("{what}: no ns_per_op in output;"), &out))?;
    let malloc_from = fields.get("malloc_from").copied().unwrap_or("unknown");
    if !side.resolved_as_expected(malloc_from, library) {
        return Err(format!(
            "{what}: malloc resolves into {malloc_from}, expected {}; the preload did not \
             take effect as intended\nstderr: {}",
            side.expected_origin(library),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(ns_per_op)
}

fn bench_workload(
    w: &Workload,
    library: &Path,
    rounds: usize,
    warmup: bool,
) -> Result<WorkloadResult, String> {
    if warmup {
        for side in Side::ALL {
            run_once(w, side, library)?;
        }
    }
    let mut ns: [Vec<f64>; 3] = Default::default();
    let (mut floor_ratios, mut guard_ratios, mut over_floor) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut this_round = [0.0f64; 3];
        for side in round_order(round) {
            this_round[side.index()] = run_once(w, side, library)?;
        }
        let [a, f, b] = this_round;
        floor_ratios.push(f / a);
        guard_ratios.push(b / a);
        over_floor.push(b / f);
        for (all, one) in ns.iter_mut().zip(this_round) {
            all.push(one);
        }
    }
    Ok(WorkloadResult {
        label: w.label.clone(),
        args: w.args.join(" "),
        rounds,
        ns: ns.map(|mut v| median(&mut v)),
        floor_ratio: Spread::of(&floor_ratios),
        guard_ratio: Spread::of(&guard_ratios),
        over_floor: Spread::of(&over_floor),
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1000.0 {
        format!("{ns:.0}")
    } else {
        format!("{ns:.2}")
    }
}

fn first_line_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn library_state(library: &Path) -> String {
    let meta = fs::metadata(library).ok();
    let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs().to_string())
        .unwrap_or_else(|| "?".into());
    let root = workspace_root();
    let root = root.to_string_lossy();
    let commit = first_line_of("git", &["-C", &root, "rev-parse", "--short", "HEAD"])
        .filter(|s| s.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| "no commit".into());
    let dirty = Command::new("git")
        .args(["-C", &root, "status", "--porcelain"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    format!(
        "{size} bytes, mtime {mtime} (unix), workspace {commit}{}",
        if dirty { " + uncommitted changes" } else { "" }
    )
}

fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if safe {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

fn os_name() -> String {
    fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown OS".into())
}

fn mem_total() -> String {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let kib: f64 = s
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some(format!("{:.1} GiB RAM", kib / (1024.0 * 1024.0)))
        })
        .unwrap_or_else(|| "RAM unknown".into())
}

fn markdown(cfg: &Config, library: &Path, report: &Report, elapsed: f64) -> String {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let glibc = first_line_of("ldd", &["--version"]).unwrap_or_else(|| "unknown".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let command: Vec<String> = env::args().map(|a| shell_quote(&a)).collect();
    let parts = match (cfg.alloc, cfg.pgbench) {
        (true, true) => "allocation workloads, instruction count, pgbench",
        (true, false) => "allocation workloads, instruction count",
        _ => "pgbench",
    };

    let mut md = String::new();
    let _ = writeln!(md, "# oomguard-bench results\n");
    let _ = writeln!(md, "- command: `{}`", command.join(" "));
    let _ = writeln!(
        md,
        "- mode: {} ({parts}), {elapsed:.0} s total",
        if cfg.quick { "quick" } else { "full" },
    );
    let _ = writeln!(
        md,
        "- machine: {nproc} CPUs ({}), {}; {}, kernel {kernel}",
        cpu_model(),
        mem_total(),
        os_name()
    );
    let _ = writeln!(md, "- glibc: {glibc}");
    let _ = writeln!(
        md,
        "- guard: `{}` ({})",
        library.display(),
        library_state(library)
    );
    if cfg.alloc {
        let _ = writeln!(
            md,
            "- floor: `{PASSTHROUGH}` (from `bench/workloads/passthrough.c`)"
        );
    }

    if cfg.alloc {
        alloc_markdown(&mut md, cfg, report);
    }
    match &report.pgbench {
        Some(Ok(r)) => pgbench_markdown(&mut md, r),
        Some(Err(e)) => {
            let _ = writeln!(
                md,
                "\n## pgbench\n\nNot measured: the comparison failed:\n\n```\n{}\n```",
                e.trim()
            );
        }
        None => {}
    }

    let missed: Vec<&budget::Line> = report.checks.iter().filter(|c| !c.met()).collect();
    let _ = writeln!(md, "\n## Budget\n");
    let _ = writeln!(
        md,
        "{} of {} checked lines pass{}",
        report.checks.len() - missed.len(),
        report.checks.len(),
        if missed.is_empty() {
            "."
        } else {
            "; missed:\n"
        }
    );
    for line in missed {
        let _ = writeln!(md, "- {}", line.describe());
    }
    md
}

fn alloc_markdown(md: &mut String, cfg: &Config, report: &Report) {
    let _ = writeln!(md, "\n## Allocation workloads\n");
    let _ = writeln!(
        md,
        "Each workload (`bench/workloads/alloc_loop.c`) runs as a whole process on three sides: \
         A = plain glibc; F = the floor, `LD_PRELOAD` of `{PASSTHROUGH_NAME}` \
         (`bench/workloads/passthrough.c`: every allocation function forwards to glibc's \
         `__libc_*` and does nothing else, so F/A is what any interposer costs); B = \
         `LD_PRELOAD` of the guard with `OOM_GUARD_MODE=enforce`, \
         `OOM_GUARD_LIMIT={GUARD_LIMIT}`, `OOM_GUARD_REFUSE=all` and a fresh `OOM_GUARD_DIR`. \
         {} rounds per workload, each running the three sides back to back in an order that \
         changes every round (every side in every position equally often over six rounds). \
         ns/op: wall time of the workload (CLOCK_MONOTONIC inside the process, start-up \
         excluded) divided by ops per thread; each ratio is computed within a round, then the \
         median is taken. B/F is the guard's excess over the floor; the budget applies to B/A.\n",
        cfg.rounds
    );
    let _ = writeln!(
        md,
        "| workload | alloc_loop args | A glibc ns/op | F floor ns/op | B guard ns/op \
         | F/A median | F/A min–max | B/A median | B/A min–max | B/F median | B/F min–max \
         | rounds | budget | |"
    );
    let _ = writeln!(
        md,
        "|---|---|---:|---:|---:|---:|---|---:|---|---:|---|---:|---|---|"
    );
    for r in &report.results {
        let (b, verdict) = match budget::for_workload(&r.label) {
            Some(b) => (b.describe(), verdict_md(b.met(r.guard_ratio.median))),
            None => ("–".to_string(), ""),
        };
        let spread = |s: Spread| format!("{:.3} | {:.3}–{:.3}", s.median, s.min, s.max);
        let _ = writeln!(
            md,
            "| {} | `{}` | {} | {} | {} | {} | {} | {} | {} | {b} | {verdict} |",
            r.label,
            r.args,
            fmt_ns(r.ns[Side::Plain.index()]),
            fmt_ns(r.ns[Side::Floor.index()]),
            fmt_ns(r.ns[Side::Guard.index()]),
            spread(r.floor_ratio),
            spread(r.guard_ratio),
            spread(r.over_floor),
            r.rounds
        );
    }
    let _ = writeln!(md);
    let Some(instr) = &report.instr else {
        return;
    };
    callgrind::markdown(md, instr);
    if let Some(small) = instr.shape("small 1T") {
        let (plain, guard) = (small.per_op(Side::Plain), small.per_op(Side::Guard));
        let extra = guard - plain;
        let _ = writeln!(
            md,
            "The budget on instructions per malloc+free pair (`small 1T`, the guard over \
             glibc):\n"
        );
        let _ = writeln!(md, "| glibc | floor | guard | extra | budget | |");
        let _ = writeln!(md, "|---:|---:|---:|---:|---|---|");
        let _ = writeln!(
            md,
            "| {plain:.1} | {:.1} | {guard:.1} | {extra:+.1} | {} | {} |",
            small.per_op(Side::Floor),
            budget::EXTRA_INSTRUCTIONS.describe(),
            verdict_md(budget::EXTRA_INSTRUCTIONS.met(extra))
        );
    }
    callgrind::account_markdown(md, instr);
}

fn pgbench_markdown(md: &mut String, r: &pgbench::Report) {
    let settings: Vec<String> = pgbench::SETTINGS
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(md, "\n## pgbench\n");
    let _ = writeln!(
        md,
        "Two throwaway clusters side by side ({}), scale {}, settings `{}` on top of the \
         harness defaults (`fsync=off`, `full_page_writes=off`, `jit=off`, unix socket only); \
         the guarded one under `LD_PRELOAD` with `OOM_GUARD_MODE=enforce`, \
         `OOM_GUARD_LIMIT={}` (client backends refusable). `-c {c} -j {c}`, {} s per run, {} \
         rounds per mode, alternating which side goes first; the ratio guarded/plain of TPS is \
         computed per round, then the median is taken. Warm-up: {}. Pinning: {}. {}; {:.0} s.\n",
        r.server,
        pgbench::SCALE,
        settings.join(" "),
        pgbench::GUARD_LIMIT,
        r.seconds,
        r.rounds,
        r.warmup,
        r.pinning,
        r.guard_check,
        r.elapsed,
        c = pgbench::CLIENTS,
    );
    let _ = writeln!(md, "Each run: `{}`\n", r.command);
    let _ = writeln!(
        md,
        "| mode | pgbench args | plain TPS (median) | guarded TPS (median) | guarded/plain \
         median | min–max | rounds | budget | |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---|---:|---|---|");
    for m in &r.modes {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.3} | {:.3}–{:.3} | {} | {} | {} |",
            m.label,
            m.args,
            m.plain_tps,
            m.guarded_tps,
            m.ratio_median,
            m.ratio_min,
            m.ratio_max,
            m.rounds,
            budget::PGBENCH.describe(),
            verdict_md(budget::PGBENCH.met(m.ratio_median))
        );
    }
}

fn verdict_md(met: bool) -> &'static str {
    if met {
        "pass"
    } else {
        "**miss**"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn round_orders_balance_positions_and_precedence() {
        let orders: Vec<[Side; 3]> = (0..6).map(round_order).collect();
        assert_eq!(orders[0], Side::ALL);
        for side in Side::ALL {
            for position in 0..3 {
                let n = orders.iter().filter(|o| o[position] == side).count();
                assert_eq!(n, 2, "{side:?} in position {position}");
            }
            for other in Side::ALL.into_iter().filter(|&o| o != side) {
                let before = orders
                    .iter()
                    .filter(|o| {
                        let at = |s: Side| o.iter().position(|&x| x == s);
                        at(side) < at(other)
                    })
                    .count();
                assert_eq!(before, 3, "{side:?} before {other:?}");
            }
        }
        assert_eq!(round_order(6), round_order(0));
    }

    #[test]
    fn spreads() {
        let s = Spread::of(&[1.2, 0.9, 1.0]);
        assert_eq!((s.median, s.min, s.max), (1.0, 0.9, 1.2));
    }

    #[test]
    fn sides_check_where_malloc_resolved() {
        let guard = Path::new("/x/target/release/liboomguard.so");
        assert!(Side::Plain.resolved_as_expected("libc.so.6", guard));
        assert!(!Side::Plain.resolved_as_expected(PASSTHROUGH_NAME, guard));
        assert!(!Side::Plain.resolved_as_expected("liboomguard.so", guard));
        assert!(Side::Floor.resolved_as_expected(PASSTHROUGH_NAME, guard));
        assert!(!Side::Floor.resolved_as_expected("libc.so.6", guard));
        assert!(Side::Guard.resolved_as_expected("liboomguard.so", guard));
        assert!(!Side::Guard.resolved_as_expected(PASSTHROUGH_NAME, guard));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("--quick"), "--quick");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn args() {
        let a: Vec<String> = ["x", "--quick", "--rounds", "5"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let cfg = parse_args(&a).unwrap();
        assert!(cfg.quick);
        assert_eq!(cfg.rounds, 5);
        assert!(cfg.alloc && !cfg.pgbench);
        assert_eq!((cfg.pg_seconds, cfg.pg_rounds), (2, 3));
        assert!(parse_args(&["x".to_string(), "--bogus".to_string()]).is_err());
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let all = parse_args(&strings(&["x", "--all"])).unwrap();
        assert!(all.alloc && all.pgbench);
        assert_eq!((all.pg_seconds, all.pg_rounds), (20, 5));
        let pg = parse_args(&strings(&["x", "--pgbench", "--pg-seconds", "7"])).unwrap();
        assert!(!pg.alloc && pg.pgbench);
        assert_eq!(pg.pg_seconds, 7);
        assert!(parse_args(&strings(&["x", "--all", "--pgbench"])).is_err());
    }
}
