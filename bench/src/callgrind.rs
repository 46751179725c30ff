//! Instruction counts with callgrind: Ir per operation of every allocation shape, for plain
//! glibc, the floor and the guard, and where the guard's instructions go, function by function.
//!
//! This module owns the callgrind part of the benchmark: which shapes are counted and with how
//! many operations ([`SHAPES`]), running `valgrind --tool=callgrind` on `alloc_loop`, reading
//! callgrind's output files ([`parse`]), and the stdout lines and Markdown sections that report
//! the counts ([`print()`], [`markdown`]).
//!
//! Counting. Each shape runs under callgrind with N and with 2N operations, and every count is
//! the difference divided by N, so process start-up, the guard's initialisation and exit cancel
//! out and what remains is the steady-state cost of one operation (loop bookkeeping included, the
//! same on every side). Instruction counts do not depend on the machine's load, unlike the
//! timings, which is why the per-function account is made from them.
//!
//! Time. One thing in the guard does depend on the clock: its reading of the memory cgroup's
//! files (`kernel::refresh`, at most once per 100 ms of wall time for the whole domain, about
//! 30,000 instructions each). Natively that is a few readings per million operations; under
//! callgrind, which runs the program tens of times slower, it is tens of times more per
//! operation, and it varies from run to run with the machine's load (it moved the `fork` count
//! by thousands of instructions between two runs). So the guard's callgrind runs get
//! `OOM_GUARD_CGROUP_ROOT` pointing at an empty directory: the guard finds no cgroup, says so on
//! stderr, and runs on `OOM_GUARD_LIMIT` as in the timed runs; every per-call path (reserve,
//! policy, budget, pool, release) is the same, and the counts depend on nothing but the code.
//! The timed runs keep the real cgroup.
//!
//! Forks. callgrind writes one file per process (`callgrind.out.%p`), and a forked child starts
//! with a copy of its parent's counters, so its file would repeat everything the parent did
//! before the fork (the whole start-up, for every child). For the `fork` shape callgrind
//! therefore dumps the parent's counters, which zeroes them, on entry to glibc's `_Fork` (the
//! function that makes the system call, glibc 2.34 and later): each child's file then holds the
//! child's own work, the parent's work is spread over its dump files, and all of them are
//! summed. [`profile`] checks that the dumps happened (2N + 1 files for N forks).
//!
//! Reading. The files are read here rather than through
//! `callgrind_annotate`, for one reason: the annotator keys costs by source file *and*
//! function, so a function into which other files' code was inlined (the guard's `malloc` is
//! split over `interpose.rs`, `tls.rs` and `real.rs`) appears as several lines, and with
//! `--inclusive=yes` each of those lines counts the function's calls again. Here costs are keyed
//! by object and function only. *Self* is what `callgrind_annotate` shows for the function,
//! summed over those lines; *inclusive* is self plus the inclusive cost of every call the
//! function makes (each call once; a direct call to itself is not added again), which is what
//! `callgrind_annotate --inclusive=yes` shows for a function that inlining did not split.
//! The parser checks its grand total against callgrind's own `summary:`/`totals:` line.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use crate::{command, describe_failure, ScratchDir, Side, ALLOC_LOOP, PASSTHROUGH_NAME};

/// One allocation shape of `alloc_loop` counted with callgrind.
pub struct Shape {
    /// Label, the same as the timed workload's (`--only` matches it).
    pub label: &'static str,
    /// `alloc_loop` arguments before the operation count.
    pub args: &'static [&'static str],
    /// What one operation is, for the report.
    pub unit: &'static str,
    /// N in full mode (the runs use N and 2N).
    pub ops: u64,
    /// N in `--quick` mode.
    pub quick_ops: u64,
    /// Each operation forks a child (see the module documentation).
    pub forks: bool,
}

/// Every allocation shape of `alloc_loop`. `small 2T` is left out: callgrind runs threads one at
/// a time, and each of its threads executes exactly the instructions of `small 1T`. N is chosen
/// so that one callgrind run takes seconds, and so that the shape is in its steady state long
/// before N (`pglike` fills its 200 live blocks in a few hundred operations).
pub const SHAPES: [Shape; 4] = [
    Shape {
        label: "small 1T",
        args: &["small", "1"],
        unit: "malloc+free pair",
        ops: 200_000,
        quick_ops: 50_000,
        forks: false,
    },
    Shape {
        label: "pglike",
        args: &["pglike"],
        unit: "malloc or realloc + the free it displaces",
        ops: 20_000,
        quick_ops: 5_000,
        forks: false,
    },
    Shape {
        label: "calloc",
        args: &["calloc"],
        unit: "calloc (half then realloc'd) + free",
        ops: 100_000,
        quick_ops: 20_000,
        forks: false,
    },
    Shape {
        label: "fork",
        args: &["fork"],
        unit: "fork + child (32 mallocs, 16 frees) + wait",
        ops: 100,
        quick_ops: 20,
        forks: true,
    },
];

/// Costs of one function, in instructions (or per operation, once differenced).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    /// Instructions executed in the function itself.
    pub self_ir: f64,
    /// `self_ir` plus everything its calls executed.
    pub inclusive: f64,
    /// Times it was called (by other functions).
    pub calls: f64,
}

/// A function: the basename of its object file and its (demangled) name.
pub type FnKey = (String, String);

/// One profile: one process, or several summed.
#[derive(Debug, Default)]
pub struct Profile {
    /// Instructions of the whole program.
    pub total: f64,
    /// Costs by function.
    pub functions: HashMap<FnKey, Cost>,
}

impl Profile {
    fn add(&mut self, other: Profile) {
        self.total += other.total;
        for (key, c) in other.functions {
            let e = self.functions.entry(key).or_default();
            e.self_ir += c.self_ir;
            e.inclusive += c.inclusive;
            e.calls += c.calls;
        }
    }

    /// `(longer - shorter) / ops`: the cost of one operation.
    fn per_op(longer: &Profile, shorter: &Profile, ops: u64) -> Profile {
        let n = ops as f64;
        let mut functions = HashMap::new();
        for key in longer.functions.keys().chain(shorter.functions.keys()) {
            if functions.contains_key(key) {
                continue;
            }
            let a = longer.functions.get(key).copied().unwrap_or_default();
            let b = shorter.functions.get(key).copied().unwrap_or_default();
            functions.insert(
                key.clone(),
                Cost {
                    self_ir: (a.self_ir - b.self_ir) / n,
                    inclusive: (a.inclusive - b.inclusive) / n,
                    calls: (a.calls - b.calls) / n,
                },
            );
        }
        Profile {
            total: (longer.total - shorter.total) / n,
            functions,
        }
    }

    /// Self instructions by object (basename), largest first.
    pub fn by_object(&self) -> Vec<(String, f64)> {
        let mut sums: HashMap<&str, f64> = HashMap::new();
        for ((object, _), c) in &self.functions {
            *sums.entry(object.as_str()).or_default() += c.self_ir;
        }
        let mut v: Vec<(String, f64)> = sums.into_iter().map(|(o, s)| (o.to_string(), s)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// The functions of `object` that execute instructions themselves, by self cost, largest
    /// first (a wrapper such as a thread's start routine, whose whole cost is its callees', is
    /// left out).
    pub fn functions_of(&self, object: &str) -> Vec<(&str, Cost)> {
        let mut v: Vec<(&str, Cost)> = self
            .functions
            .iter()
            .filter(|((o, _), c)| o == object && noticeable(c.self_ir))
            .map(|((_, name), c)| (name.as_str(), *c))
            .collect();
        v.sort_by(|a, b| {
            b.1.self_ir
                .total_cmp(&a.1.self_ir)
                .then_with(|| b.1.inclusive.total_cmp(&a.1.inclusive))
                .then_with(|| a.0.cmp(b.0))
        });
        v
    }

    /// Self instructions of `object`.
    pub fn object_self(&self, object: &str) -> f64 {
        self.functions
            .iter()
            .filter(|((o, _), _)| o == object)
            .map(|(_, c)| c.self_ir)
            .sum()
    }
}

/// A per-operation figure worth a line: differencing leaves start-up costs at ±0.0x.
fn noticeable(per_op: f64) -> bool {
    per_op.abs() >= 0.05
}

/// The counts of one shape.
pub struct ShapeCount {
    /// N (the runs used N and 2N).
    pub ops: u64,
    /// Per-operation profiles of plain glibc, the floor and the guard (in [`Side::ALL`] order).
    pub sides: [Profile; 3],
    /// Basename of the guard's object, as callgrind names it.
    pub guard_object: String,
}

impl ShapeCount {
    pub fn per_op(&self, side: Side) -> f64 {
        self.sides[side.index()].total
    }

    pub fn profile(&self, side: Side) -> &Profile {
        &self.sides[side.index()]
    }
}

/// Instruction counts of every shape counted, or why there are none.
pub enum Report {
    /// One entry per shape `--only` let through: its counts, or why that shape failed.
    Counted(Vec<(&'static Shape, Result<ShapeCount, String>)>),
    Skipped(String),
}

impl Report {
    /// The counts of the shape labelled `label`, if it was counted.
    pub fn shape(&self, label: &str) -> Option<&ShapeCount> {
        match self {
            Report::Counted(v) => v
                .iter()
                .find(|(s, _)| s.label == label)
                .and_then(|(_, r)| r.as_ref().ok()),
            Report::Skipped(_) => None,
        }
    }
}

/// Counts every shape whose label contains `only` (all without it).
pub fn count(library: &Path, quick: bool, only: Option<&str>) -> Report {
    match Command::new("valgrind").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => {
            return Report::Skipped(
                "not measured: valgrind is not installed (apt-get install valgrind)".into(),
            )
        }
    }
    let guard_object = basename(library);
    let mut counted = Vec::new();
    for shape in SHAPES
        .iter()
        .filter(|s| only.is_none_or(|o| s.label.contains(o)))
    {
        let ops = if quick { shape.quick_ops } else { shape.ops };
        let result = count_shape(shape, library, ops).map(|sides| ShapeCount {
            ops,
            sides,
            guard_object: guard_object.clone(),
        });
        counted.push((shape, result));
    }
    if counted.is_empty() {
        return Report::Skipped(format!(
            "not measured: no callgrind shape matches --only {}",
            only.unwrap_or_default()
        ));
    }
    Report::Counted(counted)
}

fn count_shape(shape: &Shape, library: &Path, ops: u64) -> Result<[Profile; 3], String> {
    let mut sides: [Profile; 3] = Default::default();
    for side in Side::ALL {
        let shorter = profile(shape, side, library, ops)?;
        let longer = profile(shape, side, library, 2 * ops)?;
        sides[side.index()] = Profile::per_op(&longer, &shorter, ops);
    }
    Ok(sides)
}

/// Runs one shape with `ops` operations under callgrind and returns the summed profile of every
/// process it created.
fn profile(shape: &Shape, side: Side, library: &Path, ops: u64) -> Result<Profile, String> {
    let dir = ScratchDir::new()?;
    let profiles = dir.0.join("profiles");
    let segment = dir.0.join("segment");
    for d in [&profiles, &segment] {
        fs::create_dir(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let mut args = vec![
        "--tool=callgrind".to_string(),
        // %p: a forked child writes its own file instead of overwriting the parent's.
        format!(
            "--callgrind-out-file={}",
            profiles.join("callgrind.out.%p").display()
        ),
    ];
    if shape.forks {
        // Zero the parent's counters just before each fork, so children do not inherit them.
        args.push(format!("--dump-before={FORK_SYSCALL}"));
    }
    args.push(ALLOC_LOOP.to_string());
    args.extend(shape.args.iter().map(|a| a.to_string()));
    args.push(ops.to_string());
    let what = format!(
        "valgrind --tool=callgrind alloc_loop {} {ops} ({})",
        shape.args.join(" "),
        side.name()
    );
    let mut cmd = command("valgrind", &args, side, library, &segment);
    if side == Side::Guard {
        // No cgroup to read: see "Time" in the module documentation.
        let no_cgroup = dir.0.join("no-cgroup");
        fs::create_dir(&no_cgroup)
            .map_err(|e| format!("cannot create {}: {e}", no_cgroup.display()))?;
        cmd.env("OOM_GUARD_CGROUP_ROOT", &no_cgroup);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run valgrind: {e}"))?;
    if !out.status.success() {
        return Err(describe_failure(&what, &out));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let malloc_from = stdout
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("malloc_from="))
        .unwrap_or("unknown");
    if !side.resolved_as_expected(malloc_from, library) {
        return Err(format!(
            "{what}: malloc resolves into {malloc_from}, expected {}",
            side.expected_origin(library)
        ));
    }

    let mut total = Profile::default();
    let entries =
        fs::read_dir(&profiles).map_err(|e| format!("cannot list {}: {e}", profiles.display()))?;
    let mut files = 0;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot list {}: {e}", profiles.display()))?
            .path();
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        total.add(parse(&text).map_err(|e| format!("{what}: {}: {e}", path.display()))?);
        files += 1;
    }
    if files == 0 {
        return Err(format!("{what}: callgrind wrote no profile"));
    }
    // The parent's N dumps and its final file, and one file per child.
    let expected = 2 * ops + 1;
    if shape.forks && files != expected {
        return Err(format!(
            "{what}: callgrind wrote {files} profiles, expected {expected}: without a dump on \
             entry to `{FORK_SYSCALL}` (glibc 2.34 or later) every child would repeat its \
             parent's counts"
        ));
    }
    Ok(total)
}

/// glibc's function that makes the `fork` system call, on whose entry the parent dumps.
const FORK_SYSCALL: &str = "_Fork";

/// Basename of a path as a string (callgrind names objects by their full path; the report by
/// their file name).
fn basename(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Reads one callgrind output file (format version 1, as callgrind 3.x writes it).
///
/// What matters of the format: `ob=`/`cob=` name the current and the called object, `fn=`/`cfn=`
/// the current and the called function, each either `(id) name` (defining a compressed name),
/// `(id)` (using one) or a plain name; `calls=COUNT POS` says the next cost line is the
/// inclusive cost of COUNT calls to `cob`/`cfn`; every other cost line (positions, then one
/// number per event, missing numbers being 0) is the current function's own cost.
pub fn parse(text: &str) -> Result<Profile, String> {
    let mut objects: HashMap<String, String> = HashMap::new();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut positions = 1usize;
    let mut ir_column: Option<usize> = None;
    let mut summaries: Vec<u64> = Vec::new();
    let mut object = String::from("???");
    let mut current: FnKey = (object.clone(), String::from("???"));
    let mut called_object: Option<String> = None;
    let mut called_fn = String::from("???");
    let mut pending_call: Option<(FnKey, u64)> = None;
    let mut profile = Profile::default();
    let mut total: u64 = 0;

    for (number, line) in text.lines().enumerate() {
        let bad = |what: &str| format!("line {}: {what}: {line}", number + 1);
        let first = line.as_bytes().first().copied();
        if matches!(first, Some(b'0'..=b'9' | b'+' | b'-' | b'*')) {
            let column = ir_column.ok_or_else(|| bad("cost line before `events:`"))?;
            let ir = match line.split_whitespace().nth(positions + column) {
                Some(v) => v.parse::<u64>().map_err(|_| bad("bad cost"))?,
                None => 0,
            };
            if let Some((callee, count)) = pending_call.take() {
                // A call's inclusive cost; a direct self-call is already in the caller's costs.
                if callee != current {
                    profile
                        .functions
                        .entry(current.clone())
                        .or_default()
                        .inclusive += ir as f64;
                    profile.functions.entry(callee).or_default().calls += count as f64;
                }
            } else {
                let c = profile.functions.entry(current.clone()).or_default();
                c.self_ir += ir as f64;
                c.inclusive += ir as f64;
                total += ir;
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("positions:") {
            positions = rest.split_whitespace().count();
        } else if let Some(rest) = line.strip_prefix("events:") {
            ir_column = Some(
                rest.split_whitespace()
                    .position(|e| e == "Ir")
                    .ok_or_else(|| bad("no Ir event"))?,
            );
        } else if let Some(rest) = line
            .strip_prefix("summary:")
            .or_else(|| line.strip_prefix("totals:"))
        {
            let column = ir_column.ok_or_else(|| bad("summary before `events:`"))?;
            let value = rest.split_whitespace().nth(column).unwrap_or("0");
            summaries.push(value.parse().map_err(|_| bad("bad summary"))?);
        } else if let Some(rest) = line.strip_prefix("ob=") {
            object = basename(Path::new(&resolve(&mut objects, rest)));
        } else if let Some(rest) = line.strip_prefix("fn=") {
            current = (object.clone(), resolve(&mut names, rest));
            called_object = None;
        } else if let Some(rest) = line.strip_prefix("cob=") {
            called_object = Some(basename(Path::new(&resolve(&mut objects, rest))));
        } else if let Some(rest) = line.strip_prefix("cfn=") {
            called_fn = resolve(&mut names, rest);
        } else if let Some(rest) = line.strip_prefix("calls=") {
            let count = rest
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| bad("bad call count"))?;
            // `cob=` holds for this call only; without it the callee is in the caller's object.
            let callee_object = called_object.take().unwrap_or_else(|| object.clone());
            pending_call = Some(((callee_object, called_fn.clone()), count));
        }
        // Anything else (file names, header lines, jumps) carries no cost we report.
    }
    for expected in summaries {
        if expected != total {
            return Err(format!(
                "the functions' costs add up to {total} Ir, callgrind's summary says {expected}"
            ));
        }
    }
    profile.total = total as f64;
    Ok(profile)
}

/// The name in `(id) name`, `(id)` or `name`, recording a definition in `table`.
fn resolve(table: &mut HashMap<String, String>, spec: &str) -> String {
    let spec = spec.trim();
    let Some(rest) = spec.strip_prefix('(') else {
        return spec.to_string();
    };
    let Some((id, name)) = rest.split_once(')') else {
        return spec.to_string();
    };
    let name = name.trim();
    if name.is_empty() {
        table
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("(unknown {id})"))
    } else {
        table.insert(id.to_string(), name.to_string());
        name.to_string()
    }
}

/// Prints the counts: one line per shape, the guard's busiest functions, and the budgeted
/// line of instructions per malloc+free pair (which `tests/tests/bench_quick.rs` looks for).
pub fn print(report: &Report) {
    let counted = match report {
        Report::Skipped(why) => {
            println!("  instructions per malloc+free pair: {why}");
            return;
        }
        Report::Counted(v) => v,
    };
    println!("instructions per operation (callgrind, Ir of 2N ops minus Ir of N ops, over N):");
    for (shape, result) in counted {
        match result {
            Err(e) => println!("  {:<10} not measured: {e}", shape.label),
            Ok(c) => {
                let (plain, floor, guard) = (
                    c.per_op(Side::Plain),
                    c.per_op(Side::Floor),
                    c.per_op(Side::Guard),
                );
                println!(
                    "  {:<10} glibc {plain:.1}  floor {floor:.1} ({:+.1})  guard {guard:.1} \
                     ({:+.1}; {:+.1} over the floor)  Ir per {}, N={}",
                    shape.label,
                    floor - plain,
                    guard - plain,
                    guard - floor,
                    shape.unit,
                    c.ops
                );
                let top: Vec<String> = c
                    .profile(Side::Guard)
                    .functions_of(&c.guard_object)
                    .iter()
                    .take(5)
                    .map(|(name, cost)| {
                        format!("{name} {:.1} ({:.1} incl.)", cost.self_ir, cost.inclusive)
                    })
                    .collect();
                println!("             guard's own, self Ir/op: {}", top.join(", "));
            }
        }
    }
}

/// Writes the instruction counts table (into the allocation section) and the per-function
/// account of the guard over the floor (its own section).
pub fn markdown(md: &mut String, report: &Report) {
    let counted = match report {
        Report::Skipped(why) => {
            let _ = writeln!(md, "Instructions per operation: {why}.");
            return;
        }
        Report::Counted(v) => v,
    };
    let _ = writeln!(
        md,
        "Instructions per operation (callgrind; Ir of a run with 2N operations minus Ir of a run \
         with N, divided by N, so start-up and exit cancel; every process counted, `fork`'s \
         children included; the loop's own PRNG and bookkeeping are in every column; the guard \
         reads no cgroup in these runs, see the next section):\n"
    );
    let _ = writeln!(
        md,
        "| shape | one operation | N | glibc Ir/op | floor Ir/op | guard Ir/op | floor − glibc \
         | guard − glibc | guard − floor |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (shape, result) in counted {
        match result {
            Ok(c) => {
                let (plain, floor, guard) = (
                    c.per_op(Side::Plain),
                    c.per_op(Side::Floor),
                    c.per_op(Side::Guard),
                );
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {plain:.1} | {floor:.1} | {guard:.1} | {:+.1} | {:+.1} \
                     | **{:+.1}** |",
                    shape.label,
                    shape.unit,
                    c.ops,
                    floor - plain,
                    guard - plain,
                    guard - floor
                );
            }
            Err(e) => {
                let _ = writeln!(
                    md,
                    "| {} | {} | – | not measured: {} | | | | | |",
                    shape.label,
                    shape.unit,
                    e.lines().next().unwrap_or_default().replace('|', "\\|")
                );
            }
        }
    }
    let _ = writeln!(md);
}

/// The per-function account: for every shape, where the instructions land by object on each
/// side, and which of the guard's functions execute them.
pub fn account_markdown(md: &mut String, report: &Report) {
    let Report::Counted(counted) = report else {
        return;
    };
    let _ = writeln!(md, "\n## Where the guard's instructions go (callgrind)\n");
    let _ = writeln!(
        md,
        "Per shape, from the same callgrind runs as the table above (per operation: 2N run minus \
         N run, over N). First the instructions each object executes itself, on each side: the \
         guard's excess over the floor is the `{PASSTHROUGH_NAME}` row traded for the guard's \
         row, plus any change in glibc's or the program's own work. Then the guard's functions: \
         *self* is what `callgrind_annotate` shows for the function (summed over the source \
         files that inlining spreads it across), *inclusive* adds everything its calls \
         execute (glibc's allocator included), *calls/op* is how often it is called per \
         operation. Functions below 0.05 Ir/op are left out.\n\n\
         The guard runs here with `OOM_GUARD_CGROUP_ROOT` set to an empty directory, so it \
         reads no cgroup: that reading (`oomguard::kernel::refresh`) happens at most once per \
         100 ms of wall time, and under callgrind, which runs the program tens of times slower, \
         it would add a load-dependent count that is far larger per operation than natively. \
         Every per-call path is the same; the timed runs above keep the real cgroup. glibc's \
         own counts can still move when the guard's start-up allocations shift the heap (in \
         `pglike`, glibc's `realloc` moves, and copies, a few more blocks).\n"
    );
    for (shape, result) in counted {
        let Ok(c) = result else { continue };
        let [plain, floor, guard] = &c.sides;
        let _ = writeln!(
            md,
            "### {}: guard − floor {:+.1} Ir per {}\n",
            shape.label,
            guard.total - floor.total,
            shape.unit
        );
        let _ = writeln!(
            md,
            "| object (self Ir/op) | glibc | floor | guard | guard − floor |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        let mut objects: Vec<String> = Vec::new();
        for p in [guard, floor, plain] {
            for (o, v) in p.by_object() {
                if noticeable(v) && !objects.contains(&o) {
                    objects.push(o);
                }
            }
        }
        for o in &objects {
            let cell = |p: &Profile| {
                let v = p.object_self(o);
                if noticeable(v) {
                    format!("{v:.1}")
                } else {
                    "–".to_string()
                }
            };
            let _ = writeln!(
                md,
                "| `{o}` | {} | {} | {} | {:+.1} |",
                cell(plain),
                cell(floor),
                cell(guard),
                guard.object_self(o) - floor.object_self(o)
            );
        }
        let _ = writeln!(
            md,
            "| total | {:.1} | {:.1} | {:.1} | {:+.1} |\n",
            plain.total,
            floor.total,
            guard.total,
            guard.total - floor.total
        );

        let floor_fns: Vec<String> = floor
            .functions_of(PASSTHROUGH_NAME)
            .iter()
            .map(|(name, cost)| format!("`{name}` {:.1}", cost.self_ir))
            .collect();
        let _ = writeln!(
            md,
            "The floor's own functions, self Ir/op: {}.\n",
            if floor_fns.is_empty() {
                "none".to_string()
            } else {
                floor_fns.join(", ")
            }
        );
        let _ = writeln!(
            md,
            "| `{}` function | self Ir/op | inclusive Ir/op | calls/op |",
            c.guard_object
        );
        let _ = writeln!(md, "|---|---:|---:|---:|");
        let fns = guard.functions_of(&c.guard_object);
        const ROWS: usize = 12;
        for (name, cost) in fns.iter().take(ROWS) {
            let _ = writeln!(
                md,
                "| `{name}` | {:.1} | {:.1} | {:.2} |",
                cost.self_ir, cost.inclusive, cost.calls
            );
        }
        if fns.len() > ROWS {
            let rest: f64 = fns[ROWS..].iter().map(|(_, c)| c.self_ir).sum();
            let more = fns.len() - ROWS;
            let noun = if more == 1 { "function" } else { "functions" };
            let _ = writeln!(md, "| {more} more {noun} | {rest:.1} | | |");
        }
        let _ = writeln!(md);

        // The guard also changes how much other objects execute: glibc work it calls itself,
        // or allocator work that accounting changes. Name the functions behind that.
        let elsewhere = changed_elsewhere(guard, floor, &[&c.guard_object, PASSTHROUGH_NAME]);
        if !elsewhere.is_empty() {
            let _ = writeln!(
                md,
                "Functions of other objects whose own Ir/op differ between the guard's run and \
                 the floor's (largest changes):\n"
            );
            let _ = writeln!(md, "| object | function | floor | guard | guard − floor |");
            let _ = writeln!(md, "|---|---|---:|---:|---:|");
            for (object, name, f, g) in elsewhere.iter().take(ROWS / 2) {
                let _ = writeln!(
                    md,
                    "| `{object}` | `{name}` | {f:.1} | {g:.1} | {:+.1} |",
                    g - f
                );
            }
            let _ = writeln!(md);
        }
    }
}

/// Functions outside the `skip` objects whose self Ir/op differ noticeably between `guard` and
/// `floor`, as (object, function, floor, guard), largest difference first.
fn changed_elsewhere(
    guard: &Profile,
    floor: &Profile,
    skip: &[&str],
) -> Vec<(String, String, f64, f64)> {
    let mut keys: Vec<&FnKey> = guard.functions.keys().collect();
    keys.extend(
        floor
            .functions
            .keys()
            .filter(|k| !guard.functions.contains_key(*k)),
    );
    let self_of = |p: &Profile, k: &FnKey| p.functions.get(k).map_or(0.0, |c| c.self_ir);
    let mut v: Vec<(String, String, f64, f64)> = keys
        .into_iter()
        .filter(|(object, _)| !skip.contains(&object.as_str()))
        .map(|k| {
            (
                k.0.clone(),
                k.1.clone(),
                self_of(floor, k),
                self_of(guard, k),
            )
        })
        .filter(|(_, _, f, g)| noticeable(g - f))
        .collect();
    v.sort_by(|a, b| {
        (b.3 - b.2)
            .abs()
            .total_cmp(&(a.3 - a.2).abs())
            .then_with(|| a.1.cmp(&b.1))
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-written profile in callgrind's format: `main` in the program calls the
    /// interposer's `malloc` twice, which calls glibc's `malloc`; names are compressed.
    const SAMPLE: &str = "\
# callgrind format
version: 1
positions: line
events: Ir
summary: 140

ob=(1) /usr/bin/prog
fl=(1) prog.c
fn=(1) main
10 20
cob=(2) /opt/liboomguard.so
cfi=(2) interpose.rs
cfn=(2) malloc
calls=2 5
11 100
+1 5

ob=(2)
fl=(2)
fn=(2)
5 6
fi=(3) tls.rs
+1 4
cob=(3) /lib/libc.so.6
cfn=(2)
calls=2 7
* 90

ob=(3)
fn=(2)
7 90
fn=(3) helper
1
totals: 125
";

    #[test]
    fn parses_self_inclusive_and_calls() {
        // The sample's totals line (125) is what the costs add up to; the summary (140) is not.
        let err = parse(SAMPLE).unwrap_err();
        assert!(err.contains("125") && err.contains("140"), "{err}");

        let p = parse(&SAMPLE.replace("summary: 140", "summary: 125")).unwrap();
        assert_eq!(p.total, 125.0);
        let get = |o: &str, f: &str| p.functions[&(o.to_string(), f.to_string())];
        let main = get("prog", "main");
        assert_eq!(
            (main.self_ir, main.inclusive, main.calls),
            (25.0, 125.0, 0.0)
        );
        let guard = get("liboomguard.so", "malloc");
        assert_eq!(
            (guard.self_ir, guard.inclusive, guard.calls),
            (10.0, 100.0, 2.0)
        );
        let glibc = get("libc.so.6", "malloc");
        assert_eq!(
            (glibc.self_ir, glibc.inclusive, glibc.calls),
            (90.0, 90.0, 2.0)
        );
        // A cost line without the event's number costs 0.
        assert_eq!(get("libc.so.6", "helper").self_ir, 0.0);
        assert_eq!(p.object_self("liboomguard.so"), 10.0);
        assert_eq!(p.by_object()[0], ("libc.so.6".to_string(), 90.0));
    }

    #[test]
    fn differences_per_operation() {
        let p = parse(&SAMPLE.replace("summary: 140", "summary: 125")).unwrap();
        let mut twice = Profile::default();
        twice.add(parse(&SAMPLE.replace("summary: 140", "summary: 125")).unwrap());
        twice.add(p);
        let once = parse(&SAMPLE.replace("summary: 140", "summary: 125")).unwrap();
        let d = Profile::per_op(&twice, &once, 2);
        assert_eq!(d.total, 62.5);
        let guard = d.functions[&("liboomguard.so".to_string(), "malloc".to_string())];
        assert_eq!(
            (guard.self_ir, guard.inclusive, guard.calls),
            (5.0, 50.0, 1.0)
        );
        assert_eq!(d.functions_of("liboomguard.so").len(), 1);
    }

    #[test]
    fn rejects_garbage_costs() {
        assert!(parse("events: Ir\nfn=f\n1 x\n").is_err());
        assert!(parse("fn=f\n1 2\n").is_err());
    }

    #[test]
    fn compressed_names() {
        let mut t = HashMap::new();
        assert_eq!(resolve(&mut t, "(4) malloc"), "malloc");
        assert_eq!(resolve(&mut t, "(4)"), "malloc");
        assert_eq!(resolve(&mut t, "plain"), "plain");
        assert_eq!(resolve(&mut t, "(9)"), "(unknown 9)");
    }
}
