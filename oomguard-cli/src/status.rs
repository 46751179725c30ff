//! `oomguard status`: the guard's domains, limit, totals, refusals (split by cause: the domain's
//! limit, the kernel's numbers, per-process budgets) and per-process table (with each process's
//! budget and its last refusal's cause), for people (a table) and machines (`--json`; `--csv`, one
//! row per live process, for PostgreSQL's `file_fdw`, see `packaging/sql/oomguard_processes.sql`).
//! Dead processes' slots of live domains are reaped first and reported.
//!
//! This module owns reading every domain of the directory for the report ([`collect`]: live
//! domains first, then stale ones, each bad file reported on its own) and rendering one domain
//! ([`render`]). A stale domain (no guarded process has its segment mapped) is shown with its last
//! numbers and a `state` line, and never reaped: its slots name processes that are gone, whose
//! pids may belong to anyone by now.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use oomguard_core::budget::{BudgetSource, RefusalCause};
use oomguard_core::layout::ModeReason;

use crate::fit;
use crate::segment::{
    self, Found, LimitInputsSnapshot, Liveness, ProcessSnapshot, Segment, SegmentError, Snapshot,
};

/// One domain's report: whether it is live, what was reaped and the numbers afterwards.
#[derive(Debug, Serialize)]
pub struct DomainStatus {
    /// No guarded process has the segment mapped: it was left by an earlier run (the next
    /// guarded process of the domain resets it; `oomguard clean` removes it).
    pub stale: bool,
    /// Why the lock test failed, when it did (the domain is then treated as live).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_unknown_because: Option<String>,
    /// Slots of dead processes freed by this call (`None`: see `not_reaped_because`).
    pub reaped_now: Option<u32>,
    /// Why this call could not reap (stale, read-only segment, another PID namespace).
    pub not_reaped_because: Option<&'static str>,
    /// The numbers. For a stale domain `processes` is empty: its slots name processes that are
    /// gone (see `stale_slots`).
    #[serde(flatten)]
    pub snapshot: Snapshot,
    /// Slots a stale domain's dead processes left behind (0 for a live domain).
    pub stale_slots: usize,
    /// Where PostgreSQL's configuration cannot fit (see [`crate::fit`]); none for a stale domain.
    pub warnings: Vec<fit::Warning>,
}

/// Reads every segment in `dir`, reaping dead slots of live domains where we may write. Live
/// domains come first, then stale ones (each group in file-name order); a file that cannot be
/// read is reported in [`Found::bad`] and the others are still read. Fails only when the
/// directory cannot be listed or holds no `oomguard-*` file.
pub fn collect(dir: &Path) -> Result<Found<DomainStatus>, SegmentError> {
    let opened = segment::open_each(dir)?;
    let mut found = Found {
        domains: Vec::new(),
        bad: opened.bad,
        skipped: opened.skipped,
    };
    for segment in &opened.domains {
        match domain_status(segment) {
            Ok(status) => found.domains.push(status),
            Err(error) => found.bad.push(error),
        }
    }
    // Stable: file-name order within each group.
    found.domains.sort_by_key(|status| status.stale);
    Ok(found)
}

/// One domain's report: reaped first when live; when stale, its last numbers without the dead
/// processes' slots.
pub fn domain_status(segment: &Segment) -> Result<DomainStatus, SegmentError> {
    let liveness = segment.liveness();
    if liveness.is_stale() {
        let mut snapshot = segment.snapshot()?;
        let stale_slots = snapshot.processes.len();
        snapshot.processes.clear();
        return Ok(DomainStatus {
            stale: true,
            liveness_unknown_because: None,
            reaped_now: None,
            not_reaped_because: Some("the domain is stale"),
            snapshot,
            stale_slots,
            warnings: Vec::new(),
        });
    }
    let reaped_now = segment.reap_dead()?;
    let snapshot = segment.snapshot()?;
    Ok(DomainStatus {
        warnings: fit::warnings(&configuration(&snapshot)),
        stale: false,
        liveness_unknown_because: match liveness {
            Liveness::Unknown(error) => Some(error.to_string()),
            Liveness::Live | Liveness::Stale => None,
        },
        reaped_now,
        not_reaped_because: segment.reap_blocker()?,
        snapshot,
        stale_slots: 0,
    })
}

/// What [`fit::check`] looks at in a live domain's snapshot.
pub fn configuration(s: &Snapshot) -> fit::Configuration<'_> {
    fit::Configuration {
        limit_bytes: s.limit_bytes,
        limit_source: s.limit_source,
        inputs: &s.limit_inputs,
        idle_bytes: Some(fit::idle_bytes(&s.processes)),
        enforcing: s.mode == "enforce",
        server: s.server_settings,
    }
}

/// Bytes as operators read them: `256.0 MiB`.
pub fn human_bytes(bytes: i64) -> String {
    oomguard_core::units::Bytes(bytes).to_string()
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The source of shared memory as the `limit` line names it.
pub fn shared_memory_source_short(inputs: &LimitInputsSnapshot) -> &'static str {
    match inputs.shared_memory_source {
        "observed mapping" => "observed",
        other => other,
    }
}

/// The reserve's source as the `limit` line names it: `default`, `OOM_GUARD_RESERVE` or
/// `OOM_GUARD_RESERVE 15%`.
pub fn reserve_source_short(inputs: &LimitInputsSnapshot) -> String {
    match (inputs.reserve_source, inputs.reserve_percent) {
        (Some(source), Some(percent)) => format!("{source} {percent}%"),
        (Some(source), None) => source.to_owned(),
        (None, _) => "unknown".to_owned(),
    }
}

/// `cgroup X − shared memory Y (source) − reserve Z (source)`, or `None` while the cgroup is not
/// known.
pub fn derivation_terms(inputs: &LimitInputsSnapshot) -> Option<String> {
    let cgroup = inputs.cgroup_limit_bytes?;
    let shared = if inputs.huge_pages {
        format!(
            "shared memory 0 B ({} in huge pages: not subtracted)",
            human_bytes(inputs.shared_memory_bytes.unwrap_or(0) as i64)
        )
    } else {
        format!(
            "shared memory {} ({})",
            human_bytes(inputs.shared_memory_subtracted() as i64),
            shared_memory_source_short(inputs)
        )
    };
    let origin = if inputs.cgroup_limit_origin == Some(segment::ORIGIN_MEM_TOTAL) {
        "MemTotal"
    } else {
        "cgroup"
    };
    Some(format!(
        "{origin} {} − {shared} − reserve {} ({})",
        human_bytes(cgroup as i64),
        human_bytes(inputs.reserve_bytes.unwrap_or(0) as i64),
        reserve_source_short(inputs)
    ))
}

/// The `limit` line's text (after `limit    `).
fn limit_text(s: &Snapshot) -> String {
    let used = |limit: u64| {
        format!(
            "{:.0}% used",
            s.total_bytes.max(0) as f64 * 100.0 / limit as f64
        )
    };
    let inputs = &s.limit_inputs;
    match (s.limit_bytes, s.limit_source) {
        (Some(limit), "derived") => match derivation_terms(inputs) {
            Some(terms) => format!("{} = {terms}, {}", human_bytes(limit as i64), used(limit)),
            None => format!("{} (derived), {}", human_bytes(limit as i64), used(limit)),
        },
        (Some(limit), source) => format!(
            "{} (from {source}), {}",
            human_bytes(limit as i64),
            used(limit)
        ),
        (None, "derived") => match (derivation_terms(inputs), inputs.cgroup_state) {
            (Some(terms), _) => format!(
                "none: {terms} leaves no room (accounting only: set OOM_GUARD_LIMIT or a smaller \
                 OOM_GUARD_RESERVE)"
            ),
            (None, "failed") => "none: the guard could not read its cgroup (see its stderr; \
                                 accounting only: set OOM_GUARD_LIMIT)"
                .to_owned(),
            (None, _) => "none yet: the guard is still finding its cgroup".to_owned(),
        },
        (None, _) => "none (accounting only: set OOM_GUARD_LIMIT)".to_owned(),
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `kernel` line's text (after `kernel   `), when the guard read its cgroup or tried to.
pub fn kernel_text(s: &Snapshot, now_unix_seconds: u64) -> Option<String> {
    let failures = match s.cgroup_read_errors {
        0 => String::new(),
        n => format!(", {n} failed readings"),
    };
    let Some(c) = &s.cgroup else {
        return (s.cgroup_read_errors > 0).then(|| format!("not read yet{failures}"));
    };
    let mut text = format!(
        "anon {} + shmem {}, usage {} of cgroup limit {}",
        human_bytes(c.anon_bytes as i64),
        human_bytes(c.shmem_bytes as i64),
        human_bytes(c.usage_bytes as i64),
        human_bytes(c.limit_bytes as i64),
    );
    if c.tight {
        text.push_str(", TIGHT (anon + shmem within the reserve of the limit: growth refused)");
    }
    if c.max_events > 0 {
        let _ = write!(text, ", limit hit {} times", c.max_events);
    }
    if c.oom_kill_events > 0 {
        let _ = write!(text, ", {} OOM kills", c.oom_kill_events);
    }
    let age = now_unix_seconds.saturating_sub(c.read_at_unix_seconds);
    let _ = write!(text, "; read {age} s ago{failures}");
    Some(text)
}

/// The `refused` line's breakdown, ` (1 over the domain limit, 4 over backend budgets)`, or
/// nothing when nothing was refused. Only the causes that occurred are named; budget refusals
/// are one session's limit at work, the others mean the container is short of memory, so the
/// two must not read as one number.
pub fn refusal_causes_text(s: &Snapshot) -> String {
    let mut why = Vec::new();
    for (count, what) in [
        (s.domain_limit_denials, "over the domain limit"),
        (s.kernel_denials, "on the kernel's numbers"),
        (s.budget_denials, "over backend budgets"),
    ] {
        if count > 0 {
            why.push(format!("{count} {what}"));
        }
    }
    let mut text = why.join(", ");
    if s.dynamic_shared_denials > 0 {
        // A subset of the causes above (dynamic shared memory has no budget), not a cause.
        let _ = write!(
            text,
            "; {} of them dynamic shared memory",
            s.dynamic_shared_denials
        );
    }
    if text.is_empty() {
        text
    } else {
        format!(" ({text})")
    }
}

/// Where a budget came from, as the table's `BUDGET` column names it (explained by
/// [`budget_legend`]); the full names would double the table's width.
fn budget_source_short(source: BudgetSource) -> &'static str {
    match source {
        BudgetSource::None => "none",
        BudgetSource::Default => "default",
        BudgetSource::Setting => "setting",
        BudgetSource::MalformedSetting => "default*",
    }
}

/// A process's budget as the table shows it: `48.0 MiB (setting)`, `off (setting)` for a budget
/// that is switched off there (or a percentage without a limit), `-` for none.
pub fn budget_text(p: &ProcessSnapshot) -> String {
    match (p.budget_bytes, p.budget_source) {
        (_, BudgetSource::None) => "-".to_owned(),
        (Some(bytes), source) => format!(
            "{} ({})",
            human_bytes(i64::try_from(bytes).unwrap_or(i64::MAX)),
            budget_source_short(source)
        ),
        (None, source) => format!("off ({})", budget_source_short(source)),
    }
}

/// What the short sources of the `BUDGET` column mean, for those that appear in `processes`;
/// `None` when no process has a budget source.
pub fn budget_legend(processes: &[ProcessSnapshot]) -> Option<String> {
    let explained = [
        (
            BudgetSource::Setting,
            "setting = oomguard.backend_memory_limit (role, database or session)",
        ),
        (BudgetSource::Default, "default = OOM_GUARD_BACKEND_LIMIT"),
        (
            BudgetSource::MalformedSetting,
            "default* = the process's oomguard.backend_memory_limit is malformed (its stderr \
             says why): OOM_GUARD_BACKEND_LIMIT applies, if set",
        ),
    ];
    let parts: Vec<&str> = explained
        .iter()
        .filter(|(source, _)| processes.iter().any(|p| p.budget_source == *source))
        .map(|(_, text)| *text)
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The line that says a domain refuses nothing for a reason nobody chose, with the fix.
pub fn not_enforcing_warning(s: &Snapshot) -> Option<String> {
    let reason = ModeReason::from_name(s.mode_reason)?;
    (s.mode == "report" && reason != ModeReason::Chosen).then(|| {
        format!(
            "WARNING  the guard refuses nothing: it fell back to report mode ({}). Fix: {}",
            reason.name(),
            reason.fix()
        )
    })
}

/// The human-readable report of one domain.
pub fn render(status: &DomainStatus) -> String {
    let s = &status.snapshot;
    let mut out = String::new();
    let limit = limit_text(s);
    let _ = writeln!(out, "domain   {}", s.path);
    if let Some(line) = not_enforcing_warning(s) {
        let _ = writeln!(out, "{line}");
    }
    for warning in &status.warnings {
        let _ = writeln!(out, "WARNING  {}", warning.message);
    }
    if status.stale {
        let _ = writeln!(out, "state    {}", segment::STALE_TEXT);
    } else if let Some(why) = &status.liveness_unknown_because {
        let _ = writeln!(
            out,
            "state    live? its lock cannot be tested ({why}); treated as live"
        );
    }
    let _ = writeln!(out, "mode     {}", s.mode);
    let _ = writeln!(out, "limit    {limit}");
    let _ = writeln!(
        out,
        "total    {} (peak {})",
        human_bytes(s.total_bytes),
        human_bytes(s.peak_bytes)
    );
    let why = refusal_causes_text(s);
    let _ = writeln!(
        out,
        "refused  {} allocations{why}, {} (report mode would-refuse: {})",
        s.denied_allocations,
        human_bytes(s.denied_bytes as i64),
        s.overlimit_reports
    );
    if s.dynamic_shared_bytes != 0 || s.dynamic_shared_denials > 0 {
        let _ = writeln!(
            out,
            "dsm      {} of dynamic shared memory in use (counted in the total)",
            human_bytes(s.dynamic_shared_bytes),
        );
    }
    if let Some(kernel) = kernel_text(s, unix_now()) {
        let _ = writeln!(out, "kernel   {kernel}");
    }
    let reaped = match status.reaped_now {
        Some(n) => format!("{n} dead processes reaped now"),
        None => format!(
            "dead processes not reaped: {}",
            status.not_reaped_because.unwrap_or("not permitted")
        ),
    };
    let _ = writeln!(
        out,
        "reaped   {reaped}; {} in all, {} reclaimed",
        s.reaped_slots,
        human_bytes(s.reclaimed_orphan_bytes as i64)
    );
    if s.slot_overflows > 0 {
        let _ = writeln!(
            out,
            "overflow {} processes found no free slot ({} accounted together)",
            s.slot_overflows,
            human_bytes(s.unslotted_bytes)
        );
    }
    // As wide as the longest kind shown ("logical replication launcher" is 28 characters).
    let kind_width = s
        .processes
        .iter()
        .map(|p| p.kind.chars().count())
        .max()
        .unwrap_or(0)
        .max(18);
    let _ = writeln!(
        out,
        "\n{:>8}  {:<kind_width$} {:>11} {:>11} {:>8}  {:<20} {:<14}  COMMAND",
        "PID", "KIND", "CURRENT", "PEAK", "REFUSED", "BUDGET", "LAST REFUSAL"
    );
    for p in &s.processes {
        let _ = writeln!(
            out,
            "{:>8}  {:<kind_width$} {:>11} {:>11} {:>8}  {:<20} {:<14}  {}",
            p.pid,
            p.kind,
            human_bytes(p.bytes),
            human_bytes(p.peak_bytes),
            p.denials,
            budget_text(p),
            match p.last_refusal_cause {
                RefusalCause::None => "-",
                cause => cause.name(),
            },
            shorten(&p.title, 72)
        );
    }
    if let Some(legend) = budget_legend(&s.processes) {
        let _ = writeln!(out, "\nbudget   {legend}");
    }
    if status.stale && status.stale_slots > 0 {
        let _ = writeln!(
            out,
            "{:>8}  (no live guarded process; {} slots left by processes that are gone)",
            "-", status.stale_slots
        );
    } else if s.processes.is_empty() {
        let _ = writeln!(out, "{:>8}  (no live guarded process)", "-");
    }
    out
}

/// The columns of [`csv()`], in order. New columns go at the end, so that queries naming the
/// earlier ones keep working (a `file_fdw` table must still be re-created to see them).
pub const CSV_COLUMNS: [&str; 14] = [
    "domain",
    "pid",
    "kind",
    "bytes",
    "peak_bytes",
    "allocations",
    "denials",
    "denied_bytes",
    "last_denied_size",
    "overlimit_reports",
    "command",
    "budget_bytes",
    "budget_source",
    "last_refusal_cause",
];

/// Every live process of `domains` as CSV: a header row ([`CSV_COLUMNS`]), then one row per
/// process (domains in the given order). `domain` is the segment's file name, as the exporter's
/// `domain` label; numbers are plain integers (bytes are bytes); `budget_bytes` is empty (NULL
/// to `file_fdw`) when the process has no budget, `budget_source` and `last_refusal_cause` are
/// the names `--json` uses. Stale domains have no live process, so no row.
///
/// Written by the `csv` crate with its defaults, which are RFC 4180 as `file_fdw` reads it: `,`
/// between fields, `\n` after each row, and a field quoted only when it holds a comma, a double
/// quote, CR or LF (quotes doubled), which in practice means only a command line.
pub fn csv(domains: &[DomainStatus]) -> String {
    // Writing to a Vec cannot fail, and every row has the header's 14 fields.
    const INFALLIBLE: &str = "CSV rows of a fixed width into memory";
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(CSV_COLUMNS).expect(INFALLIBLE);
    for status in domains {
        let s = &status.snapshot;
        let domain = Path::new(&s.path).file_name().map_or_else(
            || s.path.clone(),
            |name| name.to_string_lossy().into_owned(),
        );
        for p in &s.processes {
            let row: [String; CSV_COLUMNS.len()] = [
                domain.clone(),
                p.pid.to_string(),
                p.kind.to_owned(),
                p.bytes.to_string(),
                p.peak_bytes.to_string(),
                p.allocations.to_string(),
                p.denials.to_string(),
                p.denied_bytes.to_string(),
                p.last_denied_size.to_string(),
                p.overlimit_reports.to_string(),
                p.title.clone(),
                p.budget_bytes
                    .map_or_else(String::new, |bytes| bytes.to_string()),
                p.budget_source.name().to_owned(),
                p.last_refusal_cause.name().to_owned(),
            ];
            out.write_record(&row).expect(INFALLIBLE);
        }
    }
    let bytes = out.into_inner().expect(INFALLIBLE);
    String::from_utf8(bytes).expect("CSV of UTF-8 fields is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    use oomguard_core::layout::{initialise, segment_size, SegmentView};

    /// A process of the table with only what the budget columns read set.
    fn process(budget_bytes: Option<u64>, source: BudgetSource) -> ProcessSnapshot {
        ProcessSnapshot {
            pid: 42,
            kind: "client backend",
            title: "postgres: app app [local] SELECT".to_owned(),
            bytes: 3 << 20,
            peak_bytes: 5 << 20,
            allocations: 10,
            denials: 0,
            denied_bytes: 0,
            last_denied_size: 0,
            overlimit_reports: 0,
            budget_bytes,
            budget_source: source,
            last_refusal_cause: RefusalCause::None,
        }
    }

    #[test]
    fn budgets_read_with_their_source() {
        let shown = |bytes, source| budget_text(&process(bytes, source));
        assert_eq!(
            shown(Some(48 << 20), BudgetSource::Setting),
            "48.0 MiB (setting)"
        );
        assert_eq!(
            shown(Some(64 << 20), BudgetSource::Default),
            "64.0 MiB (default)"
        );
        assert_eq!(
            shown(Some(1 << 30), BudgetSource::MalformedSetting),
            "1.0 GiB (default*)"
        );
        assert_eq!(shown(None, BudgetSource::Setting), "off (setting)");
        assert_eq!(shown(None, BudgetSource::None), "-");

        assert_eq!(budget_legend(&[process(None, BudgetSource::None)]), None);
        let legend = budget_legend(&[
            process(Some(1), BudgetSource::Default),
            process(None, BudgetSource::Setting),
        ])
        .unwrap();
        assert_eq!(
            legend,
            "setting = oomguard.backend_memory_limit (role, database or session); \
             default = OOM_GUARD_BACKEND_LIMIT"
        );
    }

    /// A live domain in `dir` as the guard leaves it after refusals of every cause, read back
    /// through [`domain_status`]. The returned file holds the guard's lock (the domain is live).
    fn domain_after_refusals(dir: &Path) -> (DomainStatus, std::fs::File) {
        let path = dir.join("oomguard-test");
        let file = std::fs::File::create_new(&path).unwrap();
        file.set_len(segment_size(4) as u64).unwrap();
        // SAFETY: the file was just created in a private temporary directory; nothing else maps
        // or truncates it while this mapping lives.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
        // SAFETY: a fresh, zeroed, page-aligned mapping of segment_size(4) bytes that no one else
        // has mapped yet.
        unsafe { initialise(map.as_mut_ptr(), 4, 0, std::process::id()) };
        let view = SegmentView::new(&map).unwrap();
        let stats = &view.header.stats;
        stats.denied_allocations.store(7, Relaxed);
        stats.domain_limit_denials.store(1, Relaxed);
        stats.kernel_denials.store(2, Relaxed);
        stats.budget_denials.store(4, Relaxed);
        stats.dynamic_shared_denials.store(1, Relaxed);
        // This test process stands in for a budgeted backend that was refused last on its
        // budget (claimed now, so the reaping `domain_status` does keeps it).
        let slot = &view.slots[0];
        slot.claimed_at_ns.store(boot_time_ns(), Relaxed);
        slot.pid.store(std::process::id() as i32, Relaxed);
        slot.bytes.store(15 << 20, Relaxed);
        slot.denials.store(4, Relaxed);
        slot.budget_bytes.store(16 << 20, Relaxed);
        slot.budget_source
            .store(BudgetSource::Default as u32, Relaxed);
        slot.last_refusal_cause
            .store(RefusalCause::BackendBudget as u32, Relaxed);
        map.flush().unwrap();
        let lock = std::fs::File::open(&path).unwrap();
        assert!(segment::take_lock(&lock, libc::F_RDLCK).unwrap());
        let status = domain_status(&Segment::open(&path).unwrap()).unwrap();
        (status, lock)
    }

    fn boot_time_ns() -> u64 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec we pass and nothing else.
        let read = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
        assert_eq!(read, 0);
        now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
    }

    #[test]
    fn the_table_stays_aligned_with_the_longest_kind() {
        let dir = tempfile::tempdir().unwrap();
        let (mut status, _lock) = domain_after_refusals(dir.path());
        let mut launcher = process(None, BudgetSource::None);
        launcher.kind = "logical replication launcher";
        launcher.title = "postgres: logical replication launcher".to_owned();
        status.snapshot.processes = vec![process(None, BudgetSource::None), launcher];
        let text = render(&status);
        let column = |line: &str, text: &str| line.find(text).map(|at| line[..at].chars().count());
        let header = text.lines().find(|l| l.contains("COMMAND")).unwrap();
        let command = column(header, "COMMAND");
        for p in &status.snapshot.processes {
            let row = text
                .lines()
                .find(|line| line.ends_with(&p.title))
                .unwrap_or_else(|| panic!("no row for {}:\n{text}", p.title));
            assert_eq!(column(row, &p.title), command, "\n{text}");
        }
    }

    #[test]
    fn refusals_are_split_by_cause_and_each_process_shows_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (status, _lock) = domain_after_refusals(dir.path());
        let text = render(&status);
        assert!(
            text.contains(
                "refused  7 allocations (1 over the domain limit, 2 on the kernel's numbers, \
                 4 over backend budgets; 1 of them dynamic shared memory), "
            ),
            "{text}"
        );
        let header = text
            .lines()
            .find(|l| l.trim_start().starts_with("PID"))
            .unwrap();
        assert!(
            header.contains("BUDGET") && header.contains("LAST REFUSAL"),
            "{header}"
        );
        let row = text
            .lines()
            .find(|l| {
                l.trim_start()
                    .starts_with(&format!("{} ", std::process::id()))
            })
            .unwrap_or_else(|| panic!("no row for this process:\n{text}"));
        assert!(
            row.contains("16.0 MiB (default)") && row.contains("backend_budget"),
            "{row}"
        );
        assert!(
            text.contains("\nbudget   default = OOM_GUARD_BACKEND_LIMIT\n"),
            "{text}"
        );

        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["domain_limit_denials"], 1);
        assert_eq!(json["kernel_denials"], 2);
        assert_eq!(json["budget_denials"], 4);
        let process = &json["processes"][0];
        assert_eq!(process["budget_bytes"], 16 << 20);
        assert_eq!(process["budget_source"], "OOM_GUARD_BACKEND_LIMIT");
        assert_eq!(process["last_refusal_cause"], "backend_budget");

        let csv = csv(std::slice::from_ref(&status));
        let row = csv.lines().nth(1).unwrap();
        assert!(
            row.ends_with(&format!(
                ",{},OOM_GUARD_BACKEND_LIMIT,backend_budget",
                16 << 20
            )),
            "{csv}"
        );
    }

    #[test]
    fn nothing_refused_says_no_cause_and_no_budget_is_an_empty_csv_field() {
        let dir = tempfile::tempdir().unwrap();
        let (mut status, _lock) = domain_after_refusals(dir.path());
        for count in [
            &mut status.snapshot.denied_allocations,
            &mut status.snapshot.domain_limit_denials,
            &mut status.snapshot.kernel_denials,
            &mut status.snapshot.budget_denials,
            &mut status.snapshot.dynamic_shared_denials,
        ] {
            *count = 0;
        }
        status.snapshot.processes = vec![process(None, BudgetSource::None)];
        assert_eq!(refusal_causes_text(&status.snapshot), "");
        let text = render(&status);
        assert!(text.contains("refused  0 allocations, "), "{text}");
        assert!(
            !text.contains("\nbudget "),
            "no legend without budgets:\n{text}"
        );
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("42 "))
            .unwrap();
        assert!(row.contains(" -  ") && !row.contains("none"), "{row}");
        let csv = csv(std::slice::from_ref(&status));
        assert!(
            csv.lines().nth(1).unwrap().ends_with(",,none,none"),
            "{csv}"
        );
    }

    #[test]
    fn ordinary_values_are_written_unquoted_one_row_per_process() {
        let dir = tempfile::tempdir().unwrap();
        let (mut status, _lock) = domain_after_refusals(dir.path());
        let mut budgeted = process(Some(16 << 20), BudgetSource::Setting);
        budgeted.pid = 43;
        budgeted.last_refusal_cause = RefusalCause::BackendBudget;
        status.snapshot.processes = vec![process(None, BudgetSource::None), budgeted];
        assert_eq!(
            csv(std::slice::from_ref(&status)),
            "domain,pid,kind,bytes,peak_bytes,allocations,denials,denied_bytes,last_denied_size,\
             overlimit_reports,command,budget_bytes,budget_source,last_refusal_cause\n\
             oomguard-test,42,client backend,3145728,5242880,10,0,0,0,0,\
             postgres: app app [local] SELECT,,none,none\n\
             oomguard-test,43,client backend,3145728,5242880,10,0,0,0,0,\
             postgres: app app [local] SELECT,16777216,oomguard.backend_memory_limit,\
             backend_budget\n"
        );
        assert_eq!(csv(&[]), format!("{}\n", CSV_COLUMNS.join(",")));
    }

    #[test]
    fn a_command_line_with_a_comma_a_quote_and_a_newline_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let (mut status, _lock) = domain_after_refusals(dir.path());
        let title = "postgres: app app [local] SELECT 'a,b', \"x\"\nFROM t";
        let mut odd = process(None, BudgetSource::None);
        odd.title = title.to_owned();
        status.snapshot.processes = vec![odd, process(None, BudgetSource::None)];
        let text = csv(std::slice::from_ref(&status));
        assert!(
            text.contains(",\"postgres: app app [local] SELECT 'a,b', \"\"x\"\"\nFROM t\","),
            "quoted as RFC 4180 says, quotes doubled:\n{text}"
        );

        let mut reader = csv::Reader::from_reader(text.as_bytes());
        assert_eq!(reader.headers().unwrap(), CSV_COLUMNS.as_slice());
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 2, "{text}");
        let command = CSV_COLUMNS.iter().position(|c| *c == "command").unwrap();
        assert_eq!(&rows[0][command], title);
        assert_eq!(&rows[0][1], "42");
        assert_eq!(&rows[0][CSV_COLUMNS.len() - 1], "none");
        assert_eq!(&rows[1][command], "postgres: app app [local] SELECT");
    }

    #[test]
    fn bytes_read_like_ps() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(256 << 20), "256.0 MiB");
        assert_eq!(human_bytes(-(3 << 30)), "-3.0 GiB");
    }

    #[test]
    fn long_titles_are_cut() {
        assert_eq!(
            shorten("postgres: checkpointer", 72),
            "postgres: checkpointer"
        );
        assert_eq!(shorten("abcdef", 3), "abc…");
    }
}
