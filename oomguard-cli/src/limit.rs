//! `oomguard limit`: how the guard's limit comes about, input by input (ARCHITECTURE.md, "The limit").
//!
//! For each domain (segment) it shows what the guard recorded: the cgroup limit and where it came
//! from (our own cgroup, an ancestor, v1 `hierarchical_memory_limit` or `MemTotal`), PostgreSQL
//! shared memory and its source, the reserve, the result and whether `OOM_GUARD_LIMIT` or the
//! derivation is in force; and the drift between the guard's own total and the kernel's anon +
//! shmem when the guard has read its cgroup.
//!
//! When no guarded process has run yet (no segment), or when `--data-dir` is given, it computes
//! what the guard *would* derive in this environment, with the guard's own readers and parsers:
//! the cgroup of this process (`OOM_GUARD_CGROUP_ROOT`, default `/`), `OOM_GUARD_LIMIT`,
//! `OOM_GUARD_RESERVE`, `OOM_GUARD_SHARED_MEMORY`, and for shared memory, when the variable is
//! unset, `postgres -D DATA -C shared_memory_size` of a stopped cluster (PostgreSQL 15 or later).
//! Unlike the guard, which falls back to report mode on a bad value, this fails with a message
//! naming the variable and the fix.
//!
//! Both end with the warnings of [`crate::fit`] where the configuration cannot fit: for a live
//! domain with the postmaster's `work_mem` and `max_connections` and what the server holds, for
//! `--data-dir` with what `postgres -C` says of them.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use oomguard_cluster::PgBinaries;
use oomguard_core::cgroup::{own_cgroup, CgroupError, LimitSource};
use oomguard_core::config::{limit_is_auto, parse_size, SIZE_FORMS};
use oomguard_core::fs::RootedFs;
use oomguard_core::layout::SharedMemorySource;
use oomguard_core::limit::{default_reserve, derive, Reserve, RESERVE_FORMS};
use serde::Serialize;

use crate::fit;
use crate::segment::{
    self, Found, LimitInputsSnapshot, SegmentError, ServerSettingsSnapshot, Snapshot,
    ORIGIN_CGROUP, ORIGIN_HIERARCHICAL, ORIGIN_MEM_TOTAL, RESERVE_DEFAULT, RESERVE_FROM_ENV,
};
use crate::status::human_bytes;

/// `OOM_GUARD_RESERVE`.
pub const RESERVE_ENV: &str = "OOM_GUARD_RESERVE";
/// `OOM_GUARD_SHARED_MEMORY`.
pub const SHARED_MEMORY_ENV: &str = "OOM_GUARD_SHARED_MEMORY";
/// `OOM_GUARD_CGROUP_ROOT`.
pub const CGROUP_ROOT_ENV: &str = "OOM_GUARD_CGROUP_ROOT";
/// The shared memory source of a value that `postgres -C shared_memory_size` gave.
pub const SOURCE_POSTGRES: &str = "postgres -C shared_memory_size";

/// One domain's limit, explained.
#[derive(Debug, Clone, Serialize)]
pub struct LimitReport {
    /// The segment file, or `None` for what the guard would derive in this environment.
    pub domain: Option<String>,
    /// No guarded process has the segment mapped: these are an earlier run's numbers.
    pub stale: bool,
    /// The limit in force (`None`: the guard only accounts).
    pub limit_bytes: Option<u64>,
    /// `OOM_GUARD_LIMIT`, `derived` or `none`.
    pub limit_source: &'static str,
    /// The inputs, with their sources.
    pub inputs: LimitInputsSnapshot,
    /// `cgroup limit − shared memory − reserve`, `None` if unknown or nothing is left.
    pub derived_bytes: Option<u64>,
    /// The guard's total against the kernel's numbers, once the guard has read them.
    pub drift: Option<Drift>,
    /// Anything else worth knowing, one sentence each.
    pub notes: Vec<String>,
    /// Where PostgreSQL's configuration cannot fit (see [`crate::fit`]).
    pub warnings: Vec<fit::Warning>,
}

/// The guard's own count against the kernel's (the kernel is the truth: the README's "The limit").
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    /// Unix time of the kernel reading.
    pub read_at_unix_seconds: u64,
    /// The kernel's `anon`.
    pub kernel_anon_bytes: u64,
    /// The kernel's `shmem`.
    pub kernel_shmem_bytes: u64,
    /// The guard's total (allocations plus dynamic shared memory).
    pub guard_total_bytes: i64,
    /// Shared memory outside the guard's total that the kernel counts as shmem (0 with huge
    /// pages).
    pub shared_memory_bytes: u64,
    /// `kernel anon + shmem − (guard total + shared memory)`: positive when the kernel sees more
    /// than the guard accounts for (stacks, page tables are not in anon; other processes, tmpfs
    /// files are), negative when the guard reserved more than was touched.
    pub drift_bytes: i64,
    /// `cgroup limit − reserve − kernel anon + shmem`: how far the kernel's numbers are from
    /// making the guard tighten (negative: tight).
    pub headroom_bytes: i64,
    /// The guard is refusing growth on the kernel's numbers.
    pub tight: bool,
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl LimitReport {
    /// The report of a domain from its snapshot; `stale`: no guarded process has it mapped.
    pub fn from_snapshot(snapshot: &Snapshot, stale: bool) -> LimitReport {
        let inputs = snapshot.limit_inputs.clone();
        let drift = snapshot.cgroup.as_ref().map(|c| {
            let kernel = c.anon_bytes.saturating_add(c.shmem_bytes);
            let shared = inputs.shared_memory_subtracted();
            let headroom = inputs
                .cgroup_limit_bytes
                .unwrap_or(c.limit_bytes)
                .saturating_sub(inputs.reserve_bytes.unwrap_or(0));
            Drift {
                read_at_unix_seconds: c.read_at_unix_seconds,
                kernel_anon_bytes: c.anon_bytes,
                kernel_shmem_bytes: c.shmem_bytes,
                guard_total_bytes: snapshot.total_bytes,
                shared_memory_bytes: shared,
                drift_bytes: signed(kernel)
                    .saturating_sub(snapshot.total_bytes.saturating_add(signed(shared))),
                headroom_bytes: signed(headroom).saturating_sub(signed(kernel)),
                tight: c.tight,
            }
        });
        let mut notes = Vec::new();
        match inputs.cgroup_state {
            "failed" => notes.push(
                "the guard could not read its memory cgroup (it said why on its stderr): no \
                 derived limit and no kernel readings; set OOM_GUARD_LIMIT"
                    .to_owned(),
            ),
            "unknown" | "discovering" => {
                notes.push("the guard has not found its cgroup yet".to_owned())
            }
            _ => {}
        }
        if snapshot.cgroup_read_errors > 0 {
            notes.push(format!(
                "{} readings of the cgroup's files failed",
                snapshot.cgroup_read_errors
            ));
        }
        // A stale domain's numbers are an earlier run's: nothing to warn about now.
        let warnings = if stale {
            Vec::new()
        } else {
            fit::warnings(&crate::status::configuration(snapshot))
        };
        LimitReport {
            domain: Some(snapshot.path.clone()),
            stale,
            limit_bytes: snapshot.limit_bytes,
            limit_source: snapshot.limit_source,
            derived_bytes: inputs.derived_bytes(),
            inputs,
            drift,
            notes,
            warnings,
        }
    }
}

/// The reports of every domain in `dir` (live ones first, then stale ones), with one error per
/// file that could not be read; `Ok(None)` when there is none yet (no segment, or no such
/// directory).
pub fn from_segments(dir: &Path) -> Result<Option<Found<LimitReport>>, SegmentError> {
    let opened = match segment::open_each(dir) {
        Ok(opened) => opened,
        Err(SegmentError::NoneFound { .. }) => return Ok(None),
        Err(SegmentError::Directory { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(None)
        }
        Err(error) => return Err(error),
    };
    let mut found = Found {
        domains: Vec::new(),
        bad: opened.bad,
        skipped: opened.skipped,
    };
    for segment in &opened.domains {
        match segment.snapshot() {
            Ok(snapshot) => {
                found
                    .domains
                    .push(LimitReport::from_snapshot(&snapshot, segment.is_stale()));
            }
            Err(error) => found.bad.push(error),
        }
    }
    found.domains.sort_by_key(|report| report.stale);
    Ok(Some(found))
}

/// A variable's value as text, or an error naming it when it is not UTF-8.
fn text_var(get: &dyn Fn(&str) -> Option<OsString>, name: &str) -> Result<Option<String>> {
    match get(name) {
        None => Ok(None),
        Some(value) => match value.into_string() {
            Ok(text) => Ok(Some(text)),
            Err(value) => bail!("{name}={value:?} is not valid UTF-8; fix it or unset it"),
        },
    }
}

/// What `postgres -C` says about a stopped cluster's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresMemory {
    /// `shared_memory_size` in bytes.
    pub bytes: u64,
    /// The `huge_pages` setting: `on`, `off` or `try`.
    pub huge_pages: String,
    /// `work_mem` and `max_connections`.
    pub server: ServerSettingsSnapshot,
}

/// Runs `postgres -D data_dir -C parameter` and returns its output line. As root, runs it as the
/// data directory's owner (PostgreSQL refuses to run as root).
fn postgres_setting(postgres: &Path, data_dir: &Path, parameter: &str) -> Result<String> {
    let mut command = Command::new(postgres);
    command
        .arg("-D")
        .arg(data_dir)
        .arg("-C")
        .arg(parameter)
        .current_dir(data_dir)
        .env("LC_ALL", "C")
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::null());
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let meta = std::fs::metadata(data_dir)
            .with_context(|| format!("cannot stat --data-dir {}", data_dir.display()))?;
        if meta.uid() == 0 {
            bail!(
                "--data-dir {} is owned by root, and PostgreSQL does not run as root: give the \
                 data directory to the server's user (chown -R postgres {0}) or set \
                 {SHARED_MEMORY_ENV}",
                data_dir.display()
            );
        }
        // std drops the supplementary groups (setgroups(0)) when root sets a uid.
        command.uid(meta.uid()).gid(meta.gid());
    }
    let output = command
        .output()
        .with_context(|| format!("cannot run {}", postgres.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if !output.status.success() {
        if stderr.contains("postmaster.pid") {
            bail!(
                "`postgres -C {parameter}` works only on a stopped cluster, and the one in {} is \
                 running: run `SHOW shared_memory_size` in it and set {SHARED_MEMORY_ENV} to the \
                 result, or let the guard observe the postmaster's shared memory\n{stderr}",
                data_dir.display()
            );
        }
        if stderr.contains("unrecognized configuration parameter") {
            bail!(
                "`postgres -C {parameter}` needs PostgreSQL 15 or later ({} is older): set \
                 {SHARED_MEMORY_ENV} instead\n{stderr}",
                postgres.display()
            );
        }
        bail!(
            "`{} -D {} -C {parameter}` failed ({}):\n{stderr}",
            postgres.display(),
            data_dir.display(),
            output.status
        );
    }
    Ok(stdout)
}

/// A number `postgres -C` printed for `parameter`, with PostgreSQL's unit suffix if it has one
/// (`-C` prints the number in the setting's own unit, `unit_bytes`; a suffix is accepted too).
fn postgres_number(parameter: &str, text: &str, unit_bytes: u64) -> Result<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let multiplier = match suffix.trim() {
        "" => unit_bytes,
        "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => 0,
    };
    match digits.parse::<u64>() {
        Ok(number) if multiplier != 0 => Ok(number.saturating_mul(multiplier)),
        _ => bail!("`postgres -C {parameter}` printed {text:?}, not a number PostgreSQL writes"),
    }
}

/// Asks PostgreSQL for a stopped cluster's memory: `postgres -D DATA -C shared_memory_size`
/// (megabytes; PostgreSQL 15 or later), its `huge_pages` setting, `work_mem` and
/// `max_connections`.
pub fn postgres_memory(data_dir: &Path) -> Result<PostgresMemory> {
    if !data_dir.join("PG_VERSION").is_file() {
        bail!(
            "--data-dir {} is not a PostgreSQL data directory (no PG_VERSION file in it)",
            data_dir.display()
        );
    }
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve --data-dir {}", data_dir.display()))?;
    let binaries = PgBinaries::discover().context(
        "--data-dir needs PostgreSQL's `postgres` to ask for shared_memory_size; or set \
         OOM_GUARD_SHARED_MEMORY instead",
    )?;
    let ask = |parameter| postgres_setting(&binaries.postgres, &data_dir, parameter);
    let number = |parameter, unit_bytes| postgres_number(parameter, &ask(parameter)?, unit_bytes);
    let max_connections = number("max_connections", 1)?;
    Ok(PostgresMemory {
        bytes: number("shared_memory_size", 1 << 20)?,
        huge_pages: ask("huge_pages")?,
        server: ServerSettingsSnapshot {
            work_mem_bytes: number("work_mem", 1 << 10)?,
            max_connections: u32::try_from(max_connections).with_context(|| {
                format!("`postgres -C max_connections` printed {max_connections}, too large")
            })?,
        },
    })
}

/// A cgroup error as `oomguard limit` reports it: the error, the file's real path when known,
/// and the fix.
fn describe_cgroup_error(error: &CgroupError, file: Option<PathBuf>, root: &Path) -> String {
    let within = if root == Path::new("/") {
        String::new()
    } else {
        format!(" (under {CGROUP_ROOT_ENV}={})", root.display())
    };
    let file = file
        .map(|path| format!(" [{}]", path.display()))
        .unwrap_or_default();
    format!(
        "cannot read this process's memory cgroup: {error}{file}{within}. Point \
         {CGROUP_ROOT_ENV} at a directory holding proc/self/cgroup, proc/self/mountinfo, \
         proc/meminfo and the cgroup mount (or unset it to read this machine's), or set \
         OOM_GUARD_LIMIT"
    )
}

/// What the guard would derive in this environment (see the module documentation). `get` reads
/// an environment variable.
pub fn predict(
    get: &dyn Fn(&str) -> Option<OsString>,
    data_dir: Option<&Path>,
) -> Result<LimitReport> {
    let limit_env = text_var(get, crate::run::LIMIT_ENV)?;
    let fixed_limit = match limit_env.as_deref() {
        Some(value) if !limit_is_auto(value) => Some(parse_size(value).map_err(|error| {
            anyhow::anyhow!(
                "{}={value:?} is not a size: {}; accepted forms are {SIZE_FORMS}, or `auto` \
                 (or unset) to derive it",
                crate::run::LIMIT_ENV,
                error.reason()
            )
        })?),
        _ => None,
    };
    let reserve = match text_var(get, RESERVE_ENV)? {
        Some(value) => Some(Reserve::parse(&value).map_err(|error| {
            anyhow::anyhow!(
                "{RESERVE_ENV}={value:?} is not valid: {}; accepted forms are {RESERVE_FORMS}; \
                 unset it for the default (10% of the cgroup limit, at least 64 MiB)",
                error.reason()
            )
        })?),
        None => None,
    };
    let shared_env = match text_var(get, SHARED_MEMORY_ENV)? {
        Some(value) => Some(parse_size(&value).map_err(|error| {
            anyhow::anyhow!(
                "{SHARED_MEMORY_ENV}={value:?} is not a size: {}; accepted forms are \
                 {SIZE_FORMS}; unset it to let the guard observe the postmaster's shared memory",
                error.reason()
            )
        })?),
        None => None,
    };
    let root = match get(CGROUP_ROOT_ENV).filter(|root| !root.is_empty()) {
        Some(root) => PathBuf::from(root),
        None => PathBuf::from("/"),
    };
    if !root.is_dir() {
        bail!(
            "{CGROUP_ROOT_ENV}={} is not a directory: point it at a tree holding proc/ and \
             sys/fs/cgroup, or unset it to read this machine's",
            root.display()
        );
    }
    let fs = RootedFs::new(&root);
    let found = own_cgroup(&fs);
    let cgroup =
        found.map_err(|error| anyhow::anyhow!(describe_cgroup_error(&error, None, &root)))?;
    let effective = cgroup.effective_limit(&fs).map_err(|error| {
        let file = match error {
            CgroupError::Missing(file)
            | CgroupError::Unreadable { file, .. }
            | CgroupError::Garbage { file, .. }
            | CgroupError::Incomplete { file, .. } => cgroup
                .file_path(file)
                .map(|path| fs.real_path(path.as_bytes())),
            _ => None,
        };
        anyhow::anyhow!(describe_cgroup_error(&error, file, &root))
    })?;
    let (origin, levels_up) = match effective.source {
        LimitSource::Cgroup { up } => (ORIGIN_CGROUP, Some(u32::from(up))),
        LimitSource::Hierarchical => (ORIGIN_HIERARCHICAL, None),
        LimitSource::MemTotal => (ORIGIN_MEM_TOTAL, None),
    };
    let (reserve_bytes, reserve_percent, reserve_source) = match reserve {
        Some(reserve @ Reserve::Percent(percent)) => (
            reserve.bytes(effective.bytes),
            Some(percent),
            RESERVE_FROM_ENV,
        ),
        Some(reserve) => (reserve.bytes(effective.bytes), None, RESERVE_FROM_ENV),
        None => (default_reserve(effective.bytes), None, RESERVE_DEFAULT),
    };
    let mut notes = Vec::new();
    let postgres = match data_dir {
        Some(dir) => Some(postgres_memory(dir)?),
        None => None,
    };
    let (shared_memory_bytes, shared_memory_source, huge_pages) = match (shared_env, &postgres) {
        (Some(bytes), postgres) => {
            if let Some(pg) = postgres {
                notes.push(format!(
                    "{SOURCE_POSTGRES} says {}, but {SHARED_MEMORY_ENV} wins",
                    human_bytes(signed(pg.bytes))
                ));
            }
            (Some(bytes), SHARED_MEMORY_ENV, false)
        }
        (None, Some(pg)) => {
            match pg.huge_pages.as_str() {
                "try" => notes.push(
                    "huge_pages=try: if the server gets huge pages, its shared memory is charged \
                     to hugetlb and not subtracted (the guard sees which at run time)"
                        .to_owned(),
                ),
                "on" => notes.push(
                    "huge_pages=on: shared memory is charged to hugetlb, not to memory".to_owned(),
                ),
                _ => {}
            }
            (Some(pg.bytes), SOURCE_POSTGRES, pg.huge_pages == "on")
        }
        (None, None) => {
            notes.push(format!(
                "shared memory is not known yet: the guard subtracts the postmaster's shared \
                 memory once it maps it (give --data-dir of a stopped cluster, or \
                 {SHARED_MEMORY_ENV}, to see it now)"
            ));
            (None, SharedMemorySource::None.name(), false)
        }
    };
    notes.push(format!(
        "computed for the cgroup of this oomguard process{}: run it where PostgreSQL runs",
        if root == Path::new("/") {
            String::new()
        } else {
            format!(" under {CGROUP_ROOT_ENV}={}", root.display())
        }
    ));
    let inputs = LimitInputsSnapshot {
        cgroup_state: cgroup.version().name(),
        cgroup_dir: Some(cgroup.dir().to_string()),
        cgroup_limit_bytes: Some(effective.bytes),
        cgroup_limit_origin: Some(origin),
        cgroup_levels_up: levels_up,
        mem_total_bytes: Some(effective.mem_total),
        shared_memory_bytes,
        shared_memory_source,
        huge_pages,
        reserve_bytes: Some(reserve_bytes),
        reserve_percent,
        reserve_source: Some(reserve_source),
    };
    let derived = derive(
        effective.bytes,
        shared_memory_bytes.unwrap_or(0),
        huge_pages,
        reserve_bytes,
    );
    let (limit_bytes, limit_source) = match fixed_limit {
        Some(bytes) => (Some(bytes), crate::run::LIMIT_ENV),
        None => (derived, "derived"),
    };
    // The guard enforces unless told to report (or to stay off); a bad value is `run`'s to
    // name, and the guard would fall back to reporting.
    let enforcing = match text_var(get, "OOM_GUARD_MODE")? {
        Some(mode) => mode.trim().eq_ignore_ascii_case("enforce"),
        None => true,
    };
    let warnings = fit::warnings(&fit::Configuration {
        limit_bytes,
        limit_source,
        inputs: &inputs,
        idle_bytes: None,
        enforcing,
        server: postgres.as_ref().map(|pg| pg.server),
    });
    Ok(LimitReport {
        domain: None,
        stale: false,
        limit_bytes,
        limit_source,
        inputs,
        derived_bytes: derived,
        drift: None,
        notes,
        warnings,
    })
}

/// Where the cgroup limit came from, in words.
fn origin_text(inputs: &LimitInputsSnapshot, version: &str) -> String {
    let limit_file = if version == "v1" {
        "memory.limit_in_bytes"
    } else {
        "memory.max"
    };
    let dir = inputs.cgroup_dir.as_deref().unwrap_or("?");
    match (inputs.cgroup_limit_origin, inputs.cgroup_levels_up) {
        (Some(ORIGIN_CGROUP), Some(0) | None) => {
            format!("{limit_file} of our own cgroup ({version} {dir})")
        }
        (Some(ORIGIN_CGROUP), Some(up)) => {
            let mut ancestor = PathBuf::from(dir);
            for _ in 0..up {
                ancestor.pop();
            }
            let levels = if up == 1 {
                "our parent cgroup".to_owned()
            } else {
                format!("the cgroup {up} levels up")
            };
            format!(
                "{limit_file} of {levels} ({version} {}; ours is {dir})",
                ancestor.display()
            )
        }
        (Some(ORIGIN_HIERARCHICAL), _) => format!(
            "v1 hierarchical_memory_limit: an ancestor this container cannot see (ours is {dir})"
        ),
        (Some(ORIGIN_MEM_TOTAL), _) => {
            format!("MemTotal: no cgroup limit below the machine's memory ({version} {dir})")
        }
        _ => "unknown".to_owned(),
    }
}

/// The human-readable explanation of one domain's limit.
pub fn render(report: &LimitReport, segment_dir: &Path) -> String {
    let mut out = String::new();
    let inputs = &report.inputs;
    let bytes = |value: u64| human_bytes(signed(value));
    match &report.domain {
        Some(path) => {
            let _ = writeln!(out, "domain         {path}");
            if report.stale {
                let _ = writeln!(out, "state          {}", segment::STALE_TEXT);
            }
        }
        None => {
            let _ = writeln!(
                out,
                "domain         none in {} yet: what the guard would derive in this environment",
                segment_dir.display()
            );
        }
    }
    let limit = match (report.limit_bytes, report.limit_source) {
        (Some(limit), "derived") => {
            format!(
                "{} derived (OOM_GUARD_LIMIT is unset or auto)",
                bytes(limit)
            )
        }
        (Some(limit), source) => format!(
            "{} from {source} (not derived; the reserve below still decides when the guard \
             tightens)",
            bytes(limit)
        ),
        (None, "derived") if inputs.cgroup_limit_bytes.is_some() => {
            "none: the inputs below leave no room, the guard only accounts (set \
             OOM_GUARD_LIMIT or a smaller OOM_GUARD_RESERVE)"
                .to_owned()
        }
        (None, "derived") => "none: no derivation yet, the guard only accounts".to_owned(),
        (None, _) => "none: the guard only accounts (set OOM_GUARD_LIMIT)".to_owned(),
    };
    let _ = writeln!(out, "limit          {limit}");
    if let Some(cgroup) = inputs.cgroup_limit_bytes {
        let version = inputs.cgroup_state;
        let _ = writeln!(
            out,
            "{:<15}{:>11}  {}; MemTotal {}",
            "cgroup limit",
            bytes(cgroup),
            origin_text(inputs, version),
            bytes(inputs.mem_total_bytes.unwrap_or(0))
        );
        let shared = match (inputs.shared_memory_bytes, inputs.huge_pages) {
            (Some(shared), true) => format!(
                "{:>11}  {} from {}; huge pages: not subtracted (charged to hugetlb)",
                bytes(0),
                bytes(shared),
                inputs.shared_memory_source
            ),
            (Some(shared), false) => format!(
                "{:>11}  from {}; not in huge pages, so subtracted (huge pages are not)",
                bytes(shared),
                inputs.shared_memory_source
            ),
            (None, _) => format!("{:>11}  {}", bytes(0), inputs.shared_memory_source),
        };
        let _ = writeln!(out, "{:<15}{shared}", "− shared memory");
        let reserve_source = match (inputs.reserve_source, inputs.reserve_percent) {
            (Some(RESERVE_DEFAULT), _) => {
                "default: 10% of the cgroup limit, at least 64 MiB".to_owned()
            }
            (Some(source), Some(percent)) => format!("{source}={percent}% of the cgroup limit"),
            (Some(source), None) => source.to_owned(),
            (None, _) => "unknown".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<15}{:>11}  {reserve_source}",
            "− reserve",
            bytes(inputs.reserve_bytes.unwrap_or(0))
        );
        let result = match report.derived_bytes {
            Some(derived) => bytes(derived),
            None => "nothing".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<15}{result:>11}{}",
            "= derived",
            if report.limit_source == "derived" {
                "  in force"
            } else {
                "  not in force"
            }
        );
    }
    if let Some(drift) = &report.drift {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "drift          kernel anon {} + shmem {} vs guard total {} + shared memory {}: \
             kernel {}{} (read {} s ago)",
            bytes(drift.kernel_anon_bytes),
            bytes(drift.kernel_shmem_bytes),
            human_bytes(drift.guard_total_bytes),
            bytes(drift.shared_memory_bytes),
            if drift.drift_bytes >= 0 { "+" } else { "" },
            human_bytes(drift.drift_bytes),
            now.saturating_sub(drift.read_at_unix_seconds)
        );
        let _ = writeln!(
            out,
            "headroom       {} before the kernel's anon + shmem reaches cgroup limit − reserve{}",
            human_bytes(drift.headroom_bytes),
            if drift.tight {
                ": TIGHT, growth is refused"
            } else {
                ""
            }
        );
    }
    for warning in &report.warnings {
        let _ = writeln!(out, "WARNING        {}", warning.message);
    }
    for note in &report.notes {
        let _ = writeln!(out, "note           {note}");
    }
    out
}

/// `oomguard limit`: the reports of the domains in `segment_dir` with the files that could not be
/// read, or (none there, or a `data_dir` given) what the guard would derive here from its
/// settings (`settings`: the environment, then the configuration file).
pub fn collect(
    segment_dir: &Path,
    data_dir: Option<&Path>,
    settings: &crate::settings::GuardSettings,
) -> Result<Found<LimitReport>> {
    if data_dir.is_none() {
        if let Some(found) = from_segments(segment_dir)? {
            return Ok(found);
        }
    }
    Ok(Found {
        domains: vec![predict(&|name| settings.get(name), data_dir)?],
        bad: Vec::new(),
        skipped: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_numbers_are_read_in_their_unit_or_with_a_suffix() {
        assert_eq!(postgres_number("work_mem", "4096", 1024).unwrap(), 4 << 20);
        assert_eq!(postgres_number("work_mem", "64MB", 1024).unwrap(), 64 << 20);
        assert_eq!(
            postgres_number("shared_memory_size", "143", 1 << 20).unwrap(),
            143 << 20
        );
        assert_eq!(postgres_number("max_connections", "100", 1).unwrap(), 100);
        for bad in ["", "lots", "-1", "4 MiB", "1.5GB"] {
            let error = postgres_number("work_mem", bad, 1024).unwrap_err();
            assert!(
                error.to_string().contains("`postgres -C work_mem` printed"),
                "{bad:?}: {error}"
            );
        }
    }
}
