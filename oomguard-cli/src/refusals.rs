//! `oomguard refusals`: the refusal records of every domain — which statement of which process
//! was refused, when, how often, for which database and role, why, and which processes held the
//! most memory at that moment — as a table, JSON, or CSV for PostgreSQL's `file_fdw` (the SQL
//! view `oomguard_refusals` joins it to `pg_stat_statements`, `pg_roles` and `pg_database`).
//!
//! The records live in the domain's segment (see `oomguard_core::refusals`) and outlive the
//! refused sessions and a restart of the server; the ring keeps the latest
//! `OOM_GUARD_REFUSAL_RECORDS` (256 by default) distinct statements per domain.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oomguard_core::refusals::{self, Consumer, RecordCopy};
use serde::Serialize;

use crate::segment::{self, Found, SegmentError};
use crate::status::human_bytes;

/// One record as the command shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RefusalRow {
    /// The segment's file name (the exporter's `domain` label).
    pub domain: String,
    /// The record's number in its domain (1 for the first).
    pub number: u64,
    /// The first refusal of the statement, RFC 3339 (UTC).
    pub first_refused_at: String,
    /// The latest refusal, RFC 3339 (UTC).
    pub last_refused_at: String,
    /// How many times it was refused in a row.
    pub count: u64,
    /// The refused process.
    pub pid: i32,
    /// What it is (`client backend`, `parallel worker`, …).
    pub process: &'static str,
    /// Which limit the refusal kept: `domain_limit`, `kernel_tight` or `backend_budget`.
    pub cause: &'static str,
    /// The refused C function.
    pub call: &'static str,
    /// `pg_database.oid` (none outside a database).
    pub database_oid: Option<u32>,
    /// `pg_roles.oid` of the session user (none outside a session).
    pub role_oid: Option<u32>,
    /// `pg_stat_statements.queryid` (a signed 64-bit number as PostgreSQL shows it; none with
    /// `compute_query_id` off).
    pub query_id: Option<i64>,
    /// The statement's first bytes (invalid UTF-8 replaced).
    pub statement: String,
    /// Whether the statement is longer than what was kept.
    pub statement_cut: bool,
    /// Bytes the latest refused call asked for.
    pub request_bytes: u64,
    /// The process's own bytes at the latest refusal.
    pub process_bytes: u64,
    /// Its budget then (none: no budget).
    pub budget_bytes: Option<u64>,
    /// The domain's total then.
    pub total_bytes: i64,
    /// The domain's limit then (0: none).
    pub limit_bytes: u64,
    /// The largest processes of the domain at the first refusal, largest first.
    pub largest: Vec<ConsumerRow>,
    #[serde(skip)]
    last_unix_ns: u64,
}

/// One of the largest processes at a refusal.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerRow {
    /// Its pid.
    pub pid: i32,
    /// What it is.
    pub process: &'static str,
    /// Its bytes.
    pub bytes: i64,
}

/// Reads every domain's records in `dir`, those refused last at or after `since` (all without),
/// oldest latest-refusal first.
pub fn collect(dir: &Path, since: Option<SystemTime>) -> Result<Found<RefusalRow>, SegmentError> {
    let opened = segment::open_each(dir)?;
    let since_ns = since.map_or(0, unix_ns);
    let mut bad = opened.bad;
    let mut rows = Vec::new();
    for segment in &opened.domains {
        let view = match segment.view() {
            Ok(view) => view,
            Err(error) => {
                bad.push(error);
                continue;
            }
        };
        let domain = segment
            .path()
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        rows.extend(
            refusals::read_all(&view)
                .filter(|record| record.last_unix_ns >= since_ns)
                .map(|record| row(&domain, &record)),
        );
    }
    rows.sort_by(|a, b| {
        (a.last_unix_ns, &a.domain, a.number).cmp(&(b.last_unix_ns, &b.domain, b.number))
    });
    Ok(Found {
        domains: rows,
        bad,
        skipped: opened.skipped,
    })
}

fn row(domain: &str, record: &RecordCopy) -> RefusalRow {
    let nonzero = |value: u32| (value != 0).then_some(value);
    RefusalRow {
        domain: domain.to_owned(),
        number: record.number,
        first_refused_at: rfc3339(record.first_unix_ns),
        last_refused_at: rfc3339(record.last_unix_ns),
        count: record.count,
        pid: record.pid,
        process: record.kind.name(),
        cause: record.cause.name(),
        call: record.call.name(),
        database_oid: nonzero(record.database_oid),
        role_oid: nonzero(record.role_oid),
        query_id: (record.query_id != 0).then_some(record.query_id as i64),
        statement: String::from_utf8_lossy(record.statement()).into_owned(),
        statement_cut: record.statement_cut,
        request_bytes: record.request_bytes,
        process_bytes: record.process_bytes,
        budget_bytes: (record.budget_bytes != 0).then_some(record.budget_bytes),
        total_bytes: record.total_bytes,
        limit_bytes: record.limit_bytes,
        largest: record
            .top
            .iter()
            .filter(|consumer| consumer.pid > 0)
            .map(consumer_row)
            .collect(),
        last_unix_ns: record.last_unix_ns,
    }
}

fn consumer_row(consumer: &Consumer) -> ConsumerRow {
    ConsumerRow {
        pid: consumer.pid,
        process: consumer.kind.name(),
        bytes: consumer.bytes,
    }
}

fn unix_ns(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos().min(u128::from(u64::MAX)) as u64)
}

fn rfc3339(unix_ns: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(unix_ns)).to_string()
}

/// Parses `--since`: a duration back from `now` (`90s`, `15m`, `2h`, `1day`) or a time
/// (`2026-12-07T21:00:00Z`, `2026-12-07 21:00:00`, taken as UTC).
pub fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let text = text.trim();
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(now.checked_sub(ago).unwrap_or(UNIX_EPOCH));
    }
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        format!(
            "--since {text:?} is neither a duration (90s, 15m, 2h, 1day) nor a UTC time \
             (2026-12-07T21:00:00Z or 2026-12-07 21:00:00)"
        )
    })
}

/// The records as a table: one line each, then the statement, then the largest processes.
pub fn render(rows: &[RefusalRow]) -> String {
    if rows.is_empty() {
        return "no refusals recorded\n".to_owned();
    }
    let mut out = String::new();
    for row in rows {
        let times = if row.count > 1 {
            format!(
                "{} .. {} ({} times)",
                row.first_refused_at, row.last_refused_at, row.count
            )
        } else {
            row.last_refused_at.clone()
        };
        let oid = |oid: Option<u32>| oid.map_or_else(|| "-".to_owned(), |oid| oid.to_string());
        out.push_str(&format!(
            "{times}  pid {} ({})  database {}  role {}  query_id {}  {} of {}: {}\n",
            row.pid,
            row.process,
            oid(row.database_oid),
            oid(row.role_oid),
            row.query_id
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
            row.call,
            human_bytes(row.request_bytes as i64),
            row.cause,
        ));
        let budget = row.budget_bytes.map_or_else(String::new, |budget| {
            format!(" (budget {})", human_bytes(budget as i64))
        });
        out.push_str(&format!(
            "    held {}{budget}; domain {} of limit {}  [{}, record {}]\n",
            human_bytes(row.process_bytes as i64),
            human_bytes(row.total_bytes),
            if row.limit_bytes == 0 {
                "none".to_owned()
            } else {
                human_bytes(row.limit_bytes as i64)
            },
            row.domain,
            row.number,
        ));
        if !row.statement.is_empty() {
            let cut = if row.statement_cut { "…" } else { "" };
            out.push_str(&format!(
                "    statement: {}{cut}\n",
                row.statement
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        if !row.largest.is_empty() {
            let largest: Vec<String> = row
                .largest
                .iter()
                .map(|c| format!("{} ({}) {}", c.pid, c.process, human_bytes(c.bytes)))
                .collect();
            out.push_str(&format!("    largest: {}\n", largest.join(", ")));
        }
    }
    out
}

/// The CSV columns, in order (the SQL view's foreign table declares the same).
pub const CSV_COLUMNS: [&str; 27] = [
    "domain",
    "number",
    "first_refused_at",
    "last_refused_at",
    "count",
    "pid",
    "process",
    "cause",
    "call",
    "database_oid",
    "role_oid",
    "query_id",
    "request_bytes",
    "process_bytes",
    "budget_bytes",
    "total_bytes",
    "limit_bytes",
    "largest_pid",
    "largest_process",
    "largest_bytes",
    "second_pid",
    "second_process",
    "second_bytes",
    "third_pid",
    "third_process",
    "third_bytes",
    "statement",
];

/// The records as CSV (a header row, then one row per record; empty fields are NULL to
/// `file_fdw`), for the SQL view.
pub fn csv(rows: &[RefusalRow]) -> String {
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut write = |fields: Vec<String>| {
        out.write_record(&fields)
            .expect("writing CSV to memory cannot fail");
    };
    write(CSV_COLUMNS.iter().map(|name| (*name).to_owned()).collect());
    let some = |value: Option<String>| value.unwrap_or_default();
    for row in rows {
        let mut fields = vec![
            row.domain.clone(),
            row.number.to_string(),
            row.first_refused_at.clone(),
            row.last_refused_at.clone(),
            row.count.to_string(),
            row.pid.to_string(),
            row.process.to_owned(),
            row.cause.to_owned(),
            row.call.to_owned(),
            some(row.database_oid.map(|oid| oid.to_string())),
            some(row.role_oid.map(|oid| oid.to_string())),
            some(row.query_id.map(|id| id.to_string())),
            row.request_bytes.to_string(),
            row.process_bytes.to_string(),
            some(row.budget_bytes.map(|bytes| bytes.to_string())),
            row.total_bytes.to_string(),
            row.limit_bytes.to_string(),
        ];
        for place in 0..3 {
            let consumer = row.largest.get(place);
            fields.push(some(consumer.map(|c| c.pid.to_string())));
            fields.push(some(consumer.map(|c| c.process.to_owned())));
            fields.push(some(consumer.map(|c| c.bytes.to_string())));
        }
        fields.push(row.statement.clone());
        write(fields);
    }
    let bytes = out
        .into_inner()
        .expect("flushing CSV to memory cannot fail");
    String::from_utf8(bytes).expect("CSV of UTF-8 fields is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(parse_since("15m", now), Ok(now - Duration::from_secs(900)));
        assert_eq!(parse_since("2027-01-15T08:00:00Z", now), Ok(now));
        assert_eq!(parse_since("2027-01-15 08:00:00", now), Ok(now));
        let error = parse_since("yesterday-ish", now).unwrap_err();
        assert!(error.contains("--since \"yesterday-ish\""), "{error}");
        assert!(
            error.contains("15m") && error.contains("2026-12-07T21:00:00Z"),
            "{error}"
        );
    }

    #[test]
    fn times_are_utc_rfc3339() {
        assert_eq!(rfc3339(1_800_000_000_999_999_999), "2027-01-15T08:00:00Z");
    }
}
