//! `oomguard-bench`: whole-process A/B benchmark of `liboomguard.so` against plain glibc.
//!
//! This module owns the benchmark driver: argument parsing, the A/B schedule, the environment of
//! guarded runs, statistics, the optional valgrind instruction count and the Markdown report.
//! The workloads themselves live in `workloads/alloc_loop.c` (compiled by `build.rs`), which
//! times only its own workload with `CLOCK_MONOTONIC` and prints one `key=value` line.
//!
//! For every workload, R rounds each run A (plain glibc) and B (`LD_PRELOAD` of the guard in
//! enforce mode, generous limit, `OOM_GUARD_REFUSE=all`, a fresh `OOM_GUARD_DIR`) back to back,
//! alternating which side goes first. The per-round ratio B/A of ns/op is the unit of
//! comparison; the report gives its median and min/max, and the median ns/op of each side.

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

/// Limit handed to the guard in B runs: far above anything the workloads allocate.
const GUARD_LIMIT: &str = "64GiB";

const USAGE: &str = "\
usage: oomguard-bench [--quick] [--rounds N] [--library PATH] [--markdown FILE]
                      [--only NAME] [--valgrind | --no-valgrind]

  --quick          a few seconds in total (CI keep-alive); valgrind off unless --valgrind
  --rounds N       A/B pairs per workload (default 11, quick 5)
  --library PATH   guard to preload (default <workspace>/target/release/liboomguard.so)
  --markdown FILE  also write the results as a Markdown report to FILE
  --only NAME      run only workloads whose label contains NAME (e.g. small, fork)
  --valgrind       count instructions per malloc+free pair with callgrind (default: full mode)
  --no-valgrind    skip the instruction count
";

/// Parsed command line.
struct Config {
    quick: bool,
    rounds: usize,
    library: PathBuf,
    markdown: Option<PathBuf>,
    only: Option<String>,
    valgrind: Option<bool>,
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

/// Which side of a pair a run belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Plain,
    Guarded,
}

/// Aggregated result of one workload.
struct WorkloadResult {
    label: String,
    args: String,
    rounds: usize,
    plain_ns: f64,
    guarded_ns: f64,
    ratio_median: f64,
    ratio_min: f64,
    ratio_max: f64,
}

/// Instruction counts per malloc+free pair from callgrind, or why there are none.
enum InstrReport {
    Counted { plain: f64, guarded: f64, ops: u64 },
    Skipped(String),
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
    };
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
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument: {other}\n\n{USAGE}")),
        }
    }
    if cfg.rounds == 0 {
        cfg.rounds = if cfg.quick { 5 } else { 11 };
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
    if !Path::new(ALLOC_LOOP).is_file() {
        return Err(format!(
            "workload program {ALLOC_LOOP} is missing; rebuild oomguard-bench"
        ));
    }

    let started = Instant::now();
    let mode = if cfg.quick { "quick" } else { "full" };
    println!(
        "oomguard-bench ({mode}): {} rounds per workload, guard {}",
        cfg.rounds,
        library.display()
    );

    let mut results = Vec::new();
    for w in workloads(cfg.quick) {
        if let Some(only) = &cfg.only {
            if !w.label.contains(only.as_str()) {
                continue;
            }
        }
        let r = bench_workload(&w, &library, cfg.rounds, !cfg.quick)?;
        println!(
            "  {:<10} A {:>12} ns/op  B {:>12} ns/op  B/A median {:.3} [min {:.3}, max {:.3}]",
            r.label,
            fmt_ns(r.plain_ns),
            fmt_ns(r.guarded_ns),
            r.ratio_median,
            r.ratio_min,
            r.ratio_max
        );
        results.push(r);
    }
    if results.is_empty() {
        return Err("--only matched no workload".to_string());
    }

    let want_valgrind = cfg.valgrind.unwrap_or(!cfg.quick);
    let instr = if want_valgrind {
        count_instructions(&library, if cfg.quick { 50_000 } else { 200_000 })
    } else if cfg.quick {
        InstrReport::Skipped("skipped in --quick mode (pass --valgrind to enable)".into())
    } else {
        InstrReport::Skipped("skipped (--no-valgrind)".into())
    };
    match &instr {
        InstrReport::Counted {
            plain,
            guarded,
            ops,
        } => println!(
            "  instructions per malloc+free pair (small 1T, callgrind, {ops} vs {} ops): \
             glibc {plain:.1}, guard {guarded:.1}, extra {:+.1}",
            2 * ops,
            guarded - plain
        ),
        InstrReport::Skipped(why) => println!("  instructions per malloc+free pair: {why}"),
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("  total {elapsed:.1} s");

    if let Some(path) = &cfg.markdown {
        let md = markdown(&cfg, &library, &results, &instr, elapsed);
        fs::write(path, md).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("  wrote {}", path.display());
    }
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

/// Builds the command for one run: plain runs scrub any inherited preload or guard setting,
/// guarded runs get the guard in enforce mode with a generous limit.
fn command(program: &str, args: &[String], side: Side, library: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd.env_remove("LD_PRELOAD");
    for (key, _) in env::vars_os() {
        if key.to_string_lossy().starts_with("OOM_GUARD_") {
            cmd.env_remove(&key);
        }
    }
    if side == Side::Guarded {
        cmd.env("LD_PRELOAD", library)
            .env("OOM_GUARD_MODE", "enforce")
            .env("OOM_GUARD_LIMIT", GUARD_LIMIT)
            .env("OOM_GUARD_REFUSE", "all")
            .env("OOM_GUARD_DIR", dir);
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
    let what = format!(
        "`alloc_loop {}` ({})",
        w.args.join(" "),
        if side == Side::Guarded {
            "guarded"
        } else {
            "plain"
        }
    );
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
    let guarded = malloc_from.contains("liboomguard");
    if guarded != (side == Side::Guarded) {
        return Err(format!(
            "{what}: malloc resolves into {malloc_from}, expected {}; the preload did not \
             take effect as intended\nstderr: {}",
            if side == Side::Guarded {
                "liboomguard"
            } else {
                "glibc"
            },
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
        run_once(w, Side::Plain, library)?;
        run_once(w, Side::Guarded, library)?;
    }
    let mut plain = Vec::with_capacity(rounds);
    let mut guarded = Vec::with_capacity(rounds);
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        // Alternate which side goes first so that slow drift does not favour either.
        let (a, b) = if round % 2 == 0 {
            let a = run_once(w, Side::Plain, library)?;
            (a, run_once(w, Side::Guarded, library)?)
        } else {
            let b = run_once(w, Side::Guarded, library)?;
            (run_once(w, Side::Plain, library)?, b)
        };
        ratios.push(b / a);
        plain.push(a);
        guarded.push(b);
    }
    Ok(WorkloadResult {
        label: w.label.clone(),
        args: w.args.join(" "),
        rounds,
        plain_ns: median(&mut plain),
        guarded_ns: median(&mut guarded),
        ratio_median: median(&mut ratios.clone()),
        ratio_min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratio_max: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
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

/// Instructions per malloc+free pair of `small 1`, plain and guarded. Runs callgrind with OPS=N
/// and OPS=2N and divides the difference by N, so start-up and exit cancel out.
fn count_instructions(library: &Path, ops: u64) -> InstrReport {
    let version = Command::new("valgrind").arg("--version").output();
    match version {
        Ok(out) if out.status.success() => {}
        _ => {
            return InstrReport::Skipped(
                "not measured: valgrind is not installed (apt-get install valgrind)".into(),
            )
        }
    }
    let mut per_pair = [0.0f64; 2];
    for (slot, side) in [Side::Plain, Side::Guarded].into_iter().enumerate() {
        let mut counts = [0u64; 2];
        for (i, n) in [ops, 2 * ops].into_iter().enumerate() {
            match callgrind_total(library, side, n) {
                Ok(c) => counts[i] = c,
                Err(e) => return InstrReport::Skipped(format!("not measured: {e}")),
            }
        }
        per_pair[slot] = counts[1].saturating_sub(counts[0]) as f64 / ops as f64;
    }
    InstrReport::Counted {
        plain: per_pair[0],
        guarded: per_pair[1],
        ops,
    }
}

fn callgrind_total(library: &Path, side: Side, ops: u64) -> Result<u64, String> {
    let dir = ScratchDir::new()?;
    let out_file = dir.0.join("callgrind.out");
    let mut args = vec![
        "--tool=callgrind".to_string(),
        format!("--callgrind-out-file={}", out_file.display()),
        ALLOC_LOOP.to_string(),
    ];
    args.extend(["small".to_string(), "1".to_string(), ops.to_string()]);
    let seg_dir = dir.0.join("segment");
    fs::create_dir(&seg_dir).map_err(|e| format!("cannot create {}: {e}", seg_dir.display()))?;
    let out = command("valgrind", &args, side, library, &seg_dir)
        .output()
        .map_err(|e| format!("cannot run valgrind: {e}"))?;
    if !out.status.success() {
        return Err(describe_failure("valgrind --tool=callgrind", &out));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let from_guard = stdout.contains("malloc_from=liboomguard");
    if from_guard != (side == Side::Guarded) {
        return Err(format!(
            "under valgrind malloc did not resolve as expected: {}",
            stdout.trim()
        ));
    }
    // callgrind prints "==PID== Collected : N" on stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .find_map(|l| {
            let rest = l.split_once("Collected :")?.1;
            rest.trim().replace(',', "").parse::<u64>().ok()
        })
        .ok_or_else(|| {
            format!(
                "no `Collected :` line in callgrind output: {}",
                stderr.trim()
            )
        })
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

fn markdown(
    cfg: &Config,
    library: &Path,
    results: &[WorkloadResult],
    instr: &InstrReport,
    elapsed: f64,
) -> String {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let glibc = first_line_of("ldd", &["--version"]).unwrap_or_else(|| "unknown".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let command: Vec<String> = env::args().map(|a| shell_quote(&a)).collect();

    let mut md = String::new();
    let _ = writeln!(md, "# oomguard-bench results\n");
    let _ = writeln!(md, "- command: `{}`", command.join(" "));
    let _ = writeln!(
        md,
        "- mode: {}, {} A/B rounds per workload, {elapsed:.1} s total",
        if cfg.quick { "quick" } else { "full" },
        cfg.rounds
    );
    let _ = writeln!(md, "- machine: {nproc} CPUs, {}", cpu_model());
    let _ = writeln!(md, "- glibc: {glibc}; kernel {kernel}");
    let _ = writeln!(
        md,
        "- guard: `{}` ({})",
        library.display(),
        library_state(library)
    );
    let _ = writeln!(
        md,
        "- B runs: `LD_PRELOAD` of the guard, `OOM_GUARD_MODE=enforce`, \
         `OOM_GUARD_LIMIT={GUARD_LIMIT}`, `OOM_GUARD_REFUSE=all`, fresh `OOM_GUARD_DIR` per run\n"
    );
    let _ = writeln!(
        md,
        "| workload | alloc_loop args | A glibc ns/op (median) | B guard ns/op (median) \
         | B/A median | B/A min | B/A max | rounds |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let _ = writeln!(
            md,
            "| {} | `{}` | {} | {} | {:.3} | {:.3} | {:.3} | {} |",
            r.label,
            r.args,
            fmt_ns(r.plain_ns),
            fmt_ns(r.guarded_ns),
            r.ratio_median,
            r.ratio_min,
            r.ratio_max,
            r.rounds
        );
    }
    let _ = writeln!(md);
    match instr {
        InstrReport::Counted {
            plain,
            guarded,
            ops,
        } => {
            let _ = writeln!(
                md,
                "Instructions per malloc+free pair (`small 1`, callgrind, difference of {} and \
                 {ops} ops; includes the loop's PRNG and ring bookkeeping on both sides):\n",
                2 * ops
            );
            let _ = writeln!(md, "| glibc | guard | extra |");
            let _ = writeln!(md, "|---:|---:|---:|");
            let _ = writeln!(
                md,
                "| {plain:.1} | {guarded:.1} | {:+.1} |",
                guarded - plain
            );
        }
        InstrReport::Skipped(why) => {
            let _ = writeln!(md, "Instructions per malloc+free pair: {why}.");
        }
    }
    let _ = writeln!(
        md,
        "\nns/op: wall time of the workload (CLOCK_MONOTONIC inside the process, start-up \
         excluded) divided by ops per thread. The ratio is computed per A/B pair, then the \
         median is taken."
    );
    md
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
        assert!(parse_args(&["x".to_string(), "--bogus".to_string()]).is_err());
    }
}
