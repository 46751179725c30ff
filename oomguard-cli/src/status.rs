//! `oomguard status`: the guard's domains, limit, totals, denials and per-process table, for
//! people (a table) and machines (`--json`). Dead processes' slots are reaped first and reported.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::segment::{self, Segment, SegmentError, Snapshot};

/// One domain's report: what was reaped and the numbers afterwards.
#[derive(Debug, Serialize)]
pub struct DomainStatus {
    /// Slots of dead processes freed by this call (`None`: the segment is read-only to us).
    pub reaped_now: Option<u32>,
    /// The numbers.
    #[serde(flatten)]
    pub snapshot: Snapshot,
}

/// Reads every segment in `dir`, reaping dead slots where we may write.
pub fn collect(dir: &Path) -> Result<Vec<DomainStatus>, SegmentError> {
    segment::find(dir)?
        .iter()
        .map(|path| {
            let segment = Segment::open(path)?;
            let reaped_now = segment.reap_dead()?;
            Ok(DomainStatus {
                reaped_now,
                snapshot: segment.snapshot()?,
            })
        })
        .collect()
}

/// Bytes as operators read them: `256.0 MiB`.
pub fn human_bytes(bytes: i64) -> String {
    let sign = if bytes < 0 { "-" } else { "" };
    let value = bytes.unsigned_abs() as f64;
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if value >= size as f64 {
            return format!("{sign}{:.1} {unit}", value / size as f64);
        }
    }
    format!("{sign}{value} B")
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The human-readable report of one domain.
pub fn render(status: &DomainStatus) -> String {
    let s = &status.snapshot;
    let mut out = String::new();
    let limit = match s.limit_bytes {
        Some(limit) => format!(
            "{} (from {}), {:.0}% used",
            human_bytes(limit as i64),
            s.limit_source,
            s.total_bytes.max(0) as f64 * 100.0 / limit as f64
        ),
        None => "none (accounting only: set OOM_GUARD_LIMIT)".to_owned(),
    };
    let _ = writeln!(out, "domain   {}", s.path);
    let _ = writeln!(out, "mode     {}", s.mode);
    let _ = writeln!(out, "limit    {limit}");
    let _ = writeln!(
        out,
        "total    {} (peak {})",
        human_bytes(s.total_bytes),
        human_bytes(s.peak_bytes)
    );
    let _ = writeln!(
        out,
        "refused  {} allocations, {} (report mode would-refuse: {})",
        s.denied_allocations,
        human_bytes(s.denied_bytes as i64),
        s.overlimit_reports
    );
    let reaped = match status.reaped_now {
        Some(n) => format!("{n} dead processes reaped now"),
        None => "segment is read-only to this user: dead processes not reaped".to_owned(),
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
    let _ = writeln!(
        out,
        "\n{:>8}  {:<18} {:>11} {:>11} {:>8}  COMMAND",
        "PID", "KIND", "CURRENT", "PEAK", "REFUSED"
    );
    for p in &s.processes {
        let _ = writeln!(
            out,
            "{:>8}  {:<18} {:>11} {:>11} {:>8}  {}",
            p.pid,
            p.kind,
            human_bytes(p.bytes),
            human_bytes(p.peak_bytes),
            p.denials,
            shorten(&p.title, 72)
        );
    }
    if s.processes.is_empty() {
        let _ = writeln!(out, "{:>8}  (no live guarded process)", "-");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
