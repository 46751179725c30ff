//! `oomguard exporter`: the guard's numbers as Prometheus metrics over HTTP.
//!
//! This module owns the exporter end to end: the metric set (names, types, units and help texts;
//! Prometheus conventions: base units, `_total` counters, no pid labels), reading every segment
//! of the directory on each scrape, encoding, the HTTP server (`/metrics`, a small index page at
//! `/`, 404 elsewhere) and shutdown on SIGTERM/SIGINT.
//!
//! Nothing is cached between scrapes: each one lists the directory, maps every segment afresh,
//! reaps dead processes' slots as `oomguard status` does, and encodes what it read through a
//! `prometheus-client` [`Collector`] of constant gauges and counters. A missing or unreadable
//! directory or segment is counted in `oomguard_exporter_read_errors_total`, logged to stderr and
//! shown as `oomguard_up 0`; it never stops the exporter. Stale segments (no guarded process has
//! them mapped: an earlier run's) are not errors and not exported, whose limit and peak would
//! pass for current ones; they are only counted, in `oomguard_stale_domains`. With no live
//! segment at all the scrape is `oomguard_up 0`, as with none. Domain series carry `domain`
//! (the segment's file name), and only `oomguard_limit_input_bytes` (`input`),
//! `oomguard_configuration_misfit` (`kind`) and `oomguard_refusals_total` (`cause`) one more
//! label; there are no per-process series (so no
//! per-process budgets either: `oomguard status` shows those).
//!
//! Formats: clients that accept `application/openmetrics-text` (Prometheus does) get the
//! encoder's OpenMetrics text with its Content-Type; any other client (curl, `promtool check
//! metrics`, older scrapers) gets the same families in the classic text format 0.0.4, as the Go
//! client's `promhttp` does. `promtool check metrics` only parses the classic format.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use oomguard_core::budget::RefusalCause;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::segment::{self, Liveness, SegmentError, Snapshot};

/// Where the exporter listens unless `--listen` or [`LISTEN_ENV`] says otherwise. Port 10187:
/// Prometheus' exporter port range 9100–9999 is fully allocated, and 9187 is postgres_exporter's,
/// which usually runs in the same pod (same network namespace) as this exporter.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:10187";
/// Environment variable for `--listen`.
pub const LISTEN_ENV: &str = "OOM_GUARD_EXPORTER_LISTEN";
/// Content-Type of the OpenMetrics text that `prometheus-client` encodes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content-Type of the classic Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every sample name the exporter can expose, in the order it encodes them: the classic text
/// format's names, which are also the OpenMetrics sample names (`_bytes`, `_total` and `_info`
/// included). Alert rules and dashboards may use these and nothing else
/// (`packaging/prometheus/oomguard-alerts.yaml` is checked against this list). The test
/// `metric_names_are_exactly_what_is_encoded` encodes a segment with every optional part present
/// in both formats and fails if the two differ in either direction.
pub const METRIC_NAMES: &[&str] = &[
    "oomguard_up",
    "oomguard_build_info",
    "oomguard_exporter_read_errors_total",
    "oomguard_stale_domains",
    "oomguard_segment_directory_free_bytes",
    "oomguard_segment_directory_full",
    "oomguard_enforcing",
    "oomguard_limit_bytes",
    "oomguard_limit_input_bytes",
    "oomguard_postgres_work_mem_bytes",
    "oomguard_postgres_max_connections",
    "oomguard_configuration_misfit",
    "oomguard_allocated_bytes",
    "oomguard_allocated_peak_bytes",
    "oomguard_process_allocated_max_bytes",
    "oomguard_tracked_processes",
    "oomguard_denied_allocations_total",
    "oomguard_refusals_total",
    "oomguard_last_refusal_timestamp_seconds",
    "oomguard_denied_bytes_total",
    "oomguard_reclaimed_orphan_bytes_total",
    "oomguard_dynamic_shared_memory_bytes",
    "oomguard_kernel_tight",
    "oomguard_cgroup_memory_usage_bytes",
    "oomguard_cgroup_memory_limit_bytes",
    "oomguard_cgroup_memory_anon_bytes",
    "oomguard_cgroup_memory_file_bytes",
    "oomguard_cgroup_memory_shmem_bytes",
    "oomguard_cgroup_memory_max_events_total",
    "oomguard_cgroup_memory_oom_kill_events_total",
];

/// How often the server loop looks at the shutdown flag while idle.
const POLL: Duration = Duration::from_millis(200);

/// Why the exporter could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    /// `--listen` is not an address.
    #[error(
        "invalid --listen / {LISTEN_ENV} value {value:?}: expected IP:PORT, e.g. {DEFAULT_LISTEN} \
         (this host only) or 0.0.0.0:10187 (all interfaces)"
    )]
    BadListen {
        /// The value given.
        value: String,
    },
    /// The address cannot be bound.
    #[error("cannot listen on {addr} (--listen / {LISTEN_ENV}): {message}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
    /// The server failed while waiting for requests.
    #[error("the HTTP server failed: {0}")]
    Server(#[from] std::io::Error),
}

/// Parses a `--listen` value: `IP:PORT` or `[IPv6]:PORT` (port 0 picks a free port).
pub fn parse_listen(value: &str) -> Result<SocketAddr, ExporterError> {
    value.trim().parse().map_err(|_| ExporterError::BadListen {
        value: value.to_owned(),
    })
}

/// What one scrape read: every live domain that could be read, how many were stale, and what
/// could not be read.
#[derive(Debug, Default)]
pub struct Reading {
    /// Domain name (the segment's file name) and its numbers, for live domains only: a stale
    /// domain's numbers are an earlier run's, and exporting them would show a dead server's
    /// limit and peak as current.
    pub domains: Vec<(String, Snapshot)>,
    /// Stale segments in the directory (`None` when it could not be listed).
    pub stale: Option<u64>,
    /// One message per directory or segment that could not be read (and "no live segment").
    pub errors: Vec<String>,
    /// Things worth saying that are not errors (a lock that could not be tested).
    pub notes: Vec<String>,
    /// The directory's room for one more segment (`None`: statvfs failed, said in `errors`).
    pub room: Option<segment::DirectoryRoom>,
}

impl Reading {
    /// Reads every segment in `dir`, reaping dead processes' slots of live domains where we may
    /// write, and counting stale ones.
    pub fn take(dir: &Path) -> Reading {
        let mut reading = Reading::default();
        match segment::directory_room(dir) {
            Ok(room) => {
                reading.room = Some(room);
                if let Some(warning) = room.warning(dir) {
                    reading.notes.push(warning);
                }
            }
            Err(error) => reading.errors.push(format!(
                "cannot read the free space of {}: {error}",
                dir.display()
            )),
        }
        let opened = match segment::open_each(dir) {
            Ok(opened) => opened,
            Err(error) => {
                if matches!(error, SegmentError::NoneFound { .. }) {
                    reading.stale = Some(0);
                }
                reading.errors.push(error.to_string());
                return reading;
            }
        };
        let mut stale = 0;
        reading.errors = opened.bad.iter().map(ToString::to_string).collect();
        reading.notes = opened
            .skipped
            .iter()
            .map(|error| format!("skipped another user's segment: {error}"))
            .collect();
        for segment in &opened.domains {
            let path = segment.path();
            match segment.liveness() {
                Liveness::Stale => {
                    stale += 1;
                    continue;
                }
                Liveness::Unknown(error) => reading.notes.push(format!(
                    "cannot test the lock of {} ({error}): exported as live",
                    path.display()
                )),
                Liveness::Live => {}
            }
            let snapshot = segment.reap_dead().and_then(|_| segment.snapshot());
            match snapshot {
                Ok(snapshot) => {
                    let name = path
                        .file_name()
                        .map(|name| name.to_string_lossy().into_owned())
                        .unwrap_or_else(|| path.display().to_string());
                    reading.domains.push((name, snapshot));
                }
                Err(error) => reading.errors.push(error.to_string()),
            }
        }
        reading.stale = Some(stale);
        if reading.domains.is_empty() && reading.errors.is_empty() {
            // Like an empty directory: nothing the guard runs now is visible here.
            reading.errors.push(format!(
                "no live oomguard segment in {}: {stale} stale ones left by earlier runs \
                 (`oomguard clean` removes them); no guarded process runs, or the guard uses \
                 another directory (OOM_GUARD_DIR)",
                dir.display()
            ));
        }
        reading
    }
}

/// Samples of one family.
#[derive(Debug)]
enum Samples {
    Gauge(Vec<(Labels, i64)>),
    Counter(Vec<(Labels, u64)>),
    Info(Labels),
}

type Labels = Vec<(&'static str, String)>;

/// One metric family. `name` is the OpenMetrics family name without the unit suffix; counters
/// get `_total` and info metrics `_info` on their samples.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    bytes: bool,
    samples: Samples,
}

impl Family {
    /// The name its samples carry: the family name, then `_bytes` for byte families, then
    /// `_total` for counters or `_info` for info metrics (as `prometheus-client` writes them).
    fn sample_name(&self) -> String {
        let unit = if self.bytes { "_bytes" } else { "" };
        let suffix = match self.samples {
            Samples::Gauge(_) => "",
            Samples::Counter(_) => "_total",
            Samples::Info(_) => "_info",
        };
        format!("{}{unit}{suffix}", self.name)
    }

    fn is_empty(&self) -> bool {
        match &self.samples {
            Samples::Gauge(samples) => samples.is_empty(),
            Samples::Counter(samples) => samples.is_empty(),
            Samples::Info(_) => false,
        }
    }
}

/// The families of one scrape, ready to encode: the `prometheus-client` collector.
#[derive(Debug)]
struct Families(Vec<Family>);

fn gauge(
    name: &'static str,
    help: &'static str,
    bytes: bool,
    samples: Vec<(Labels, i64)>,
) -> Family {
    Family {
        name,
        help,
        bytes,
        samples: Samples::Gauge(samples),
    }
}

fn counter(
    name: &'static str,
    help: &'static str,
    bytes: bool,
    samples: Vec<(Labels, u64)>,
) -> Family {
    Family {
        name,
        help,
        bytes,
        samples: Samples::Counter(samples),
    }
}

fn domain_label(domain: &str) -> Labels {
    vec![("domain", domain.to_owned())]
}

impl Families {
    /// The metric set for `reading`; `read_errors` is the exporter's running error count
    /// (including this reading's errors).
    fn new(reading: &Reading, read_errors: u64) -> Families {
        let up = i64::from(reading.errors.is_empty() && !reading.domains.is_empty());
        let domains = &reading.domains;
        let per_domain_i64 = |value: &dyn Fn(&Snapshot) -> Option<i64>| -> Vec<(Labels, i64)> {
            domains
                .iter()
                .filter_map(|(name, s)| value(s).map(|v| (domain_label(name), v)))
                .collect()
        };
        let per_domain_u64 = |value: &dyn Fn(&Snapshot) -> u64| -> Vec<(Labels, u64)> {
            domains
                .iter()
                .map(|(name, s)| (domain_label(name), value(s)))
                .collect()
        };
        let cgroup = |value: &dyn Fn(&segment::CgroupReading) -> u64| {
            per_domain_i64(&|s| s.cgroup.as_ref().map(|c| saturating_i64(value(c))))
        };
        let cgroup_counter = |value: &dyn Fn(&segment::CgroupReading) -> u64| {
            domains
                .iter()
                .filter_map(|(name, s)| s.cgroup.as_ref().map(|c| (domain_label(name), value(c))))
                .collect::<Vec<_>>()
        };
        let limit_inputs: Vec<(Labels, i64)> = domains
            .iter()
            .flat_map(|(name, s)| {
                let inputs = &s.limit_inputs;
                [
                    ("cgroup_limit", inputs.cgroup_limit_bytes),
                    (
                        "shared_memory",
                        inputs
                            .cgroup_limit_bytes
                            .map(|_| inputs.shared_memory_subtracted()),
                    ),
                    ("reserve", inputs.reserve_bytes),
                ]
                .into_iter()
                .filter_map(move |(input, value)| {
                    let mut labels = domain_label(name);
                    labels.push(("input", input.to_owned()));
                    value.map(|v| (labels, saturating_i64(v)))
                })
            })
            .collect();
        // Every kind the domain can be judged on, zeros included, as for the causes below; a
        // kind whose inputs are not known yet (no cgroup found, no postmaster's settings, no
        // limit) has no series rather than a 0 that would read as "fits".
        let misfits: Vec<(Labels, i64)> = domains
            .iter()
            .flat_map(|(name, s)| {
                crate::fit::verdicts(&crate::status::configuration(s))
                    .into_iter()
                    .map(move |(kind, misfit)| {
                        let mut labels = domain_label(name);
                        labels.push(("kind", kind.to_owned()));
                        (labels, i64::from(misfit))
                    })
            })
            .collect();
        // Every cause for every domain, zeros included: an alert on one cause must see the
        // series exist (and `increase` needs a sample before the first refusal).
        let refusals_by_cause: Vec<(Labels, u64)> = domains
            .iter()
            .flat_map(|(name, s)| {
                RefusalCause::ALL.into_iter().map(move |cause| {
                    let count = match cause {
                        RefusalCause::DomainLimit => s.domain_limit_denials,
                        RefusalCause::KernelTight => s.kernel_denials,
                        RefusalCause::BackendBudget => s.budget_denials,
                        RefusalCause::None => 0,
                    };
                    let mut labels = domain_label(name);
                    labels.push(("cause", cause.name().to_owned()));
                    (labels, count)
                })
            })
            .collect();
        Families(vec![
            gauge(
                "oomguard_up",
                "1 if the segment directory was listed, every segment in it was read on this \
                 scrape and at least one is live, 0 if not (see \
                 oomguard_exporter_read_errors_total and the exporter's stderr).",
                false,
                vec![(Vec::new(), up)],
            ),
            Family {
                name: "oomguard_build",
                help: "The oomguard exporter's version.",
                bytes: false,
                samples: Samples::Info(vec![("version", env!("CARGO_PKG_VERSION").to_owned())]),
            },
            counter(
                "oomguard_exporter_read_errors",
                "Scrapes' failures to list the segment directory (or to find a segment in it) \
                 and to read a segment file.",
                false,
                vec![(Vec::new(), read_errors)],
            ),
            gauge(
                "oomguard_stale_domains",
                "Segments in the directory that no guarded process has mapped: left by earlier \
                 runs (a stopped server, a restarted container), not exported, each holding \
                 tmpfs memory until `oomguard clean` removes it or the domain's next process \
                 reuses it.",
                false,
                reading
                    .stale
                    .map(|stale| vec![(Vec::new(), saturating_i64(stale))])
                    .unwrap_or_default(),
            ),
            gauge(
                "oomguard_segment_directory_free",
                "Free space in the segment directory's filesystem (statvfs, as an unprivileged \
                 process may use it).",
                true,
                reading
                    .room
                    .map(|room| vec![(Vec::new(), saturating_i64(room.free_bytes))])
                    .unwrap_or_default(),
            ),
            gauge(
                "oomguard_segment_directory_full",
                "1 if the segment directory has less room than one segment: a guarded process \
                 that starts now cannot create its domain's segment and accounts privately, \
                 unseen by this exporter. 0 if a segment fits.",
                false,
                reading
                    .room
                    .map(|room| vec![(Vec::new(), i64::from(room.is_full()))])
                    .unwrap_or_default(),
            ),
            gauge(
                "oomguard_enforcing",
                "1 if the domain refuses over its limit (enforce mode), 0 if it only reports. \
                 reason: chosen (as configured), or why it fell back to report mode: no_limit \
                 (none given, none derivable), malformed_setting, config_file_rejected.",
                false,
                reading
                    .domains
                    .iter()
                    .map(|(name, s)| {
                        let mut labels = domain_label(name);
                        labels.push(("reason", s.mode_reason.to_owned()));
                        (labels, i64::from(s.mode == "enforce"))
                    })
                    .collect(),
            ),
            gauge(
                "oomguard_limit",
                "The guard's limit: allocations past it are refused (enforce mode) or reported. \
                 Absent when the guard only accounts.",
                true,
                per_domain_i64(&|s| s.limit_bytes.map(saturating_i64)),
            ),
            gauge(
                "oomguard_limit_input",
                "What a derived limit is computed from, as the guard recorded it once its cgroup \
                 was found: limit = cgroup_limit - shared_memory - reserve when the limit is \
                 derived (OOM_GUARD_LIMIT unset or auto). cgroup_limit is the effective cgroup \
                 limit (capped by MemTotal), shared_memory the PostgreSQL shared memory \
                 subtracted (0 until seen, and with huge pages), reserve the headroom kept for \
                 what the guard cannot see; the guard also tightens when the kernel's anon + \
                 shmem comes within the reserve of cgroup_limit.",
                true,
                limit_inputs,
            ),
            gauge(
                "oomguard_postgres_work_mem",
                "work_mem of the guarded PostgreSQL postmaster (postgresql.conf, ALTER SYSTEM, \
                 after reloads), recorded by each child it forks. Absent until one has forked.",
                true,
                per_domain_i64(&|s| {
                    s.server_settings
                        .map(|server| saturating_i64(server.work_mem_bytes))
                }),
            ),
            gauge(
                "oomguard_postgres_max_connections",
                "max_connections of the guarded PostgreSQL postmaster, recorded with \
                 oomguard_postgres_work_mem_bytes.",
                false,
                per_domain_i64(&|s| {
                    s.server_settings
                        .map(|server| i64::from(server.max_connections))
                }),
            ),
            gauge(
                "oomguard_configuration_misfit",
                "1 if the configuration cannot fit, as `oomguard status` warns, else 0; one \
                 series per kind, once its inputs are known: no_room_left (shared memory + \
                 reserve >= the cgroup limit: nothing left for queries), connections_do_not_fit \
                 (the limit, or what the container leaves if smaller, < what the server holds \
                 idle + work_mem * max_connections: a full server's sorts and hashes do not \
                 fit).",
                false,
                misfits,
            ),
            gauge(
                "oomguard_allocated",
                "Bytes reserved by all guarded processes of the domain: the number compared with \
                 the limit.",
                true,
                per_domain_i64(&|s| Some(s.total_bytes)),
            ),
            gauge(
                "oomguard_allocated_peak",
                "Highest oomguard_allocated_bytes since the domain's segment was created.",
                true,
                per_domain_i64(&|s| Some(s.peak_bytes)),
            ),
            gauge(
                "oomguard_process_allocated_max",
                "Bytes reserved by the largest live guarded process of the domain.",
                true,
                per_domain_i64(&|s| Some(s.processes.iter().map(|p| p.bytes).max().unwrap_or(0))),
            ),
            gauge(
                "oomguard_tracked_processes",
                "Live guarded processes with a slot in the domain's segment (after reaping dead \
                 ones).",
                false,
                per_domain_i64(&|s| Some(s.processes.len() as i64)),
            ),
            counter(
                "oomguard_denied_allocations",
                "Allocation calls the guard refused (malloc returned NULL; PostgreSQL reports \
                 ERROR: out of memory).",
                false,
                per_domain_u64(&|s| s.denied_allocations),
            ),
            counter(
                "oomguard_refusals",
                "Allocation calls the guard refused, by cause (the three partition \
                 oomguard_denied_allocations_total): domain_limit, the domain's total would pass \
                 the guard's limit; kernel_tight, the kernel's anon + shmem of the cgroup was \
                 within the reserve of its limit (both: the container is short of memory); \
                 backend_budget, the process's own bytes would pass its budget \
                 (oomguard.backend_memory_limit, default OOM_GUARD_BACKEND_LIMIT): one \
                 session's limit at work.",
                false,
                refusals_by_cause,
            ),
            gauge(
                "oomguard_last_refusal_timestamp_seconds",
                "Unix time of the domain's latest refusal (absent before any; kept across a \
                 restart of the server). Which statement, whose, and why: oomguard refusals, or \
                 the SQL view oomguard_refusals.",
                false,
                per_domain_i64(&|s| s.last_refusal_unix_seconds.map(saturating_i64)),
            ),
            counter(
                "oomguard_denied",
                "Bytes requested by the refused allocation calls.",
                true,
                per_domain_u64(&|s| s.denied_bytes),
            ),
            counter(
                "oomguard_reclaimed_orphan",
                "Bytes returned to the pool from processes that died without releasing them.",
                true,
                per_domain_u64(&|s| s.reclaimed_orphan_bytes),
            ),
            gauge(
                "oomguard_dynamic_shared_memory",
                "PostgreSQL dynamic shared memory (parallel query segments in /dev/shm) charged \
                 to oomguard_allocated_bytes and not yet released.",
                true,
                per_domain_i64(&|s| Some(s.dynamic_shared_bytes)),
            ),
            gauge(
                "oomguard_kernel_tight",
                "1 while the guard refuses growth because the kernel's anon + shmem of its cgroup \
                 is within the reserve of the cgroup limit (even below the guard's own limit), \
                 else 0 (also before the guard has read its cgroup).",
                false,
                per_domain_i64(&|s| Some(i64::from(s.cgroup.as_ref().is_some_and(|c| c.tight)))),
            ),
            gauge(
                "oomguard_cgroup_memory_usage",
                "The guarded processes' cgroup memory usage (memory.current / \
                 memory.usage_in_bytes) as last read by the guard.",
                true,
                cgroup(&|c| c.usage_bytes),
            ),
            gauge(
                "oomguard_cgroup_memory_limit",
                "The guarded processes' effective cgroup memory limit as last read by the guard.",
                true,
                cgroup(&|c| c.limit_bytes),
            ),
            gauge(
                "oomguard_cgroup_memory_anon",
                "anon of the guarded processes' cgroup memory.stat as last read by the guard.",
                true,
                cgroup(&|c| c.anon_bytes),
            ),
            gauge(
                "oomguard_cgroup_memory_file",
                "file of the guarded processes' cgroup memory.stat as last read by the guard.",
                true,
                cgroup(&|c| c.file_bytes),
            ),
            gauge(
                "oomguard_cgroup_memory_shmem",
                "shmem of the guarded processes' cgroup memory.stat as last read by the guard.",
                true,
                cgroup(&|c| c.shmem_bytes),
            ),
            counter(
                "oomguard_cgroup_memory_max_events",
                "Times the guarded processes' cgroup hit its memory limit (memory.events max / \
                 memory.failcnt) as last read by the guard.",
                false,
                cgroup_counter(&|c| c.max_events),
            ),
            counter(
                "oomguard_cgroup_memory_oom_kill_events",
                "Processes of the guarded processes' cgroup killed by the OOM killer \
                 (memory.events oom_kill / memory.oom_control oom_kill; 0 where the kernel does \
                 not report it) as last read by the guard.",
                false,
                cgroup_counter(&|c| c.oom_kill_events),
            ),
        ])
    }

    /// OpenMetrics text, through `prometheus-client`.
    fn openmetrics(self) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }

    /// The classic Prometheus text format (0.0.4): the same families, with the suffixes in the
    /// HELP and TYPE names and info metrics as gauges of value 1.
    fn classic(&self) -> String {
        let mut out = String::new();
        for family in self.0.iter().filter(|f| !f.is_empty()) {
            let kind = match family.samples {
                Samples::Gauge(_) | Samples::Info(_) => "gauge",
                Samples::Counter(_) => "counter",
            };
            let name = family.sample_name();
            let _ = writeln!(out, "# HELP {name} {}", escape_help(family.help));
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let mut sample = |labels: &Labels, value: &dyn std::fmt::Display| {
                let _ = write!(out, "{name}");
                if !labels.is_empty() {
                    let pairs: Vec<String> = labels
                        .iter()
                        .map(|(key, value)| format!("{key}=\"{}\"", escape_label(value)))
                        .collect();
                    let _ = write!(out, "{{{}}}", pairs.join(","));
                }
                let _ = writeln!(out, " {value}");
            };
            match &family.samples {
                Samples::Gauge(samples) => samples.iter().for_each(|(l, v)| sample(l, v)),
                Samples::Counter(samples) => samples.iter().for_each(|(l, v)| sample(l, v)),
                Samples::Info(labels) => sample(labels, &1),
            }
        }
        out
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in self.0.iter().filter(|f| !f.is_empty()) {
            let unit = family.bytes.then_some(Unit::Bytes);
            match &family.samples {
                Samples::Gauge(samples) => {
                    let samples = samples.iter().map(|(l, v)| (l, ConstGauge::new(*v)));
                    encode_samples(&mut encoder, family, unit.as_ref(), samples)?;
                }
                Samples::Counter(samples) => {
                    let samples = samples.iter().map(|(l, v)| (l, ConstCounter::new(*v)));
                    encode_samples(&mut encoder, family, unit.as_ref(), samples)?;
                }
                Samples::Info(labels) => {
                    let info = Info::new(labels.clone());
                    let metric = encoder.encode_descriptor(
                        family.name,
                        family.help,
                        unit.as_ref(),
                        info.metric_type(),
                    )?;
                    info.encode(metric)?;
                }
            }
        }
        Ok(())
    }
}

/// Encodes one family of constant metrics: a lone unlabelled sample as is (`name value`), any
/// other sample under its label set.
fn encode_samples<'l, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    family: &Family,
    unit: Option<&Unit>,
    samples: impl Iterator<Item = (&'l Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.peekable();
    let Some((_, first)) = samples.peek() else {
        return Ok(());
    };
    let mut metric =
        encoder.encode_descriptor(family.name, family.help, unit, first.metric_type())?;
    for (labels, value) in samples {
        if labels.is_empty() {
            return value.encode(metric);
        }
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Whether an `Accept` header asks for OpenMetrics (a media range
/// `application/openmetrics-text` without `q=0`).
pub fn accepts_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        media.eq_ignore_ascii_case("application/openmetrics-text")
            && !parts.any(|param| {
                param
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            })
    })
}

/// The exporter: a segment directory, the running count of read errors, and the errors of the
/// last scrape (logged again only when they change, so a sidecar waiting for PostgreSQL does not
/// repeat itself every scrape).
#[derive(Debug)]
pub struct Exporter {
    dir: PathBuf,
    read_errors: AtomicU64,
    last_errors: Mutex<Vec<String>>,
}

/// A rendered scrape: body and Content-Type.
#[derive(Debug)]
pub struct Exposition {
    /// The metrics text.
    pub body: String,
    /// Its Content-Type.
    pub content_type: &'static str,
}

impl Exporter {
    /// An exporter of the segments in `dir`.
    pub fn new(dir: &Path) -> Exporter {
        Exporter {
            dir: dir.to_owned(),
            read_errors: AtomicU64::new(0),
            last_errors: Mutex::new(Vec::new()),
        }
    }

    /// Reads the segments now and renders them, as OpenMetrics when `openmetrics`, else in the
    /// classic text format. Read errors are counted, and logged to stderr when they differ from
    /// the previous scrape's.
    pub fn scrape(&self, openmetrics: bool) -> Exposition {
        let reading = Reading::take(&self.dir);
        let mut last_errors = self.last_errors.lock().unwrap_or_else(|e| e.into_inner());
        let said: Vec<String> = reading
            .errors
            .iter()
            .chain(&reading.notes)
            .cloned()
            .collect();
        if *last_errors != said {
            for line in &said {
                eprintln!("oomguard exporter: {line}");
            }
            if said.is_empty() {
                eprintln!("oomguard exporter: every segment read again");
            }
            *last_errors = said;
        }
        drop(last_errors);
        let errors = self
            .read_errors
            .fetch_add(reading.errors.len() as u64, Ordering::Relaxed)
            + reading.errors.len() as u64;
        let families = Families::new(&reading, errors);
        if openmetrics {
            // Writing to a String cannot fail, and the collector itself never returns an error.
            let body = families.openmetrics().unwrap_or_default();
            Exposition {
                body,
                content_type: OPENMETRICS_CONTENT_TYPE,
            }
        } else {
            Exposition {
                body: families.classic(),
                content_type: TEXT_CONTENT_TYPE,
            }
        }
    }

    fn handle(&self, request: tiny_http::Request) {
        let path = request.url().split('?').next().unwrap_or("").to_owned();
        let method_ok = matches!(
            request.method(),
            tiny_http::Method::Get | tiny_http::Method::Head
        );
        let (status, body, content_type) = match path.as_str() {
            "/metrics" | "/" if !method_ok => (
                405,
                "only GET and HEAD are served\n".to_owned(),
                "text/plain; charset=utf-8",
            ),
            "/metrics" => {
                let openmetrics = request
                    .headers()
                    .iter()
                    .filter(|h| h.field.equiv("Accept"))
                    .any(|h| accepts_openmetrics(h.value.as_str()));
                let exposition = self.scrape(openmetrics);
                (200, exposition.body, exposition.content_type)
            }
            "/" => (200, INDEX_HTML.to_owned(), "text/html; charset=utf-8"),
            _ => (
                404,
                "not found: metrics are at /metrics\n".to_owned(),
                "text/plain; charset=utf-8",
            ),
        };
        let header = tiny_http::Header::from_bytes("Content-Type", content_type)
            .expect("a static, valid header");
        let response = tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(header);
        if let Err(error) = request.respond(response) {
            eprintln!("oomguard exporter: could not send a response: {error}");
        }
    }
}

const INDEX_HTML: &str = "<!DOCTYPE html>
<html><head><title>oomguard exporter</title></head>
<body><h1>oomguard exporter</h1>
<p>The guard's accounting, limits and refusals as Prometheus metrics: <a href=\"/metrics\">/metrics</a></p>
</body></html>
";

static SHUTDOWN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_shutdown_signal(_: libc::c_int) {
    SHUTDOWN.store(true, Ordering::SeqCst);
}

/// Serves `dir`'s metrics on `listen` until SIGTERM or SIGINT. Prints
/// `listening on http://ADDR/metrics` (the bound address, also when port 0 was asked for) to
/// stderr once ready.
pub fn serve(listen: SocketAddr, dir: &Path) -> Result<(), ExporterError> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe, and the
        // function pointer has the signature signal(2) expects.
        unsafe {
            libc::signal(
                signal,
                on_shutdown_signal as *const () as libc::sighandler_t,
            );
        }
    }
    let server = tiny_http::Server::http(listen).map_err(|error| ExporterError::Bind {
        addr: listen,
        message: error.to_string(),
    })?;
    let bound = server
        .server_addr()
        .to_ip()
        .map(|addr| addr.to_string())
        .unwrap_or_else(|| listen.to_string());
    eprintln!(
        "oomguard exporter: listening on http://{bound}/metrics (segments in {})",
        dir.display()
    );
    let exporter = Exporter::new(dir);
    while !SHUTDOWN.load(Ordering::SeqCst) {
        match server.recv_timeout(POLL) {
            Ok(Some(request)) => exporter.handle(request),
            Ok(None) => {}
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error.into()),
        }
    }
    eprintln!("oomguard exporter: shutting down on signal");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    use oomguard_core::layout::{
        initialise, segment_size, CgroupState, SegmentView, SharedMemorySource,
    };

    /// Holds the read lock every guarded process holds on its segment (see `segment`): the
    /// segment is live while the returned file is open.
    fn hold(path: &Path) -> std::fs::File {
        let file = std::fs::File::open(path).unwrap();
        assert!(crate::segment::take_lock(&file, libc::F_RDLCK).unwrap());
        file
    }

    /// A real segment file in `dir` with a few numbers set, as the guard would leave it, and live:
    /// the lock is held until the returned file is dropped.
    fn write_segment(dir: &Path, name: &str, cgroup_read: bool) -> std::fs::File {
        write_stale_segment(dir, name, cgroup_read);
        hold(&dir.join(name))
    }

    /// As [`write_segment`], but with nobody holding it: as an earlier run leaves it.
    fn write_stale_segment(dir: &Path, name: &str, cgroup_read: bool) {
        let path = dir.join(name);
        let file = std::fs::File::create_new(&path).unwrap();
        file.set_len(segment_size(4) as u64).unwrap();
        // SAFETY: the file was just created in a private temporary directory; nothing else maps
        // or truncates it while this mapping lives.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
        // SAFETY: a fresh, zeroed, page-aligned mapping of segment_size(4) bytes that no one else
        // has mapped yet.
        unsafe { initialise(map.as_mut_ptr(), 4, 0, std::process::id()) };
        let view = SegmentView::new(&map).unwrap();
        let header = view.header;
        header.limit_bytes.store(256 << 20, Relaxed);
        header.total.store(5 << 20, Relaxed);
        header.stats.peak.store(7 << 20, Relaxed);
        header.stats.denied_allocations.store(3, Relaxed);
        // By cause: one over the domain's limit, two over a process's budget.
        header.stats.domain_limit_denials.store(1, Relaxed);
        header.stats.budget_denials.store(2, Relaxed);
        header.stats.denied_bytes.store(1200, Relaxed);
        header
            .stats
            .last_refusal_unix_ns
            .store(1_700_000_123_456_789_000, Relaxed);
        // Owned by this test process, claimed now: the reaping at each scrape keeps it.
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec we pass and nothing else.
        let read = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
        assert_eq!(read, 0);
        let now_ns = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
        view.slots[0].claimed_at_ns.store(now_ns, Relaxed);
        view.slots[0].pid.store(std::process::id() as i32, Relaxed);
        view.slots[0].bytes.store(4 << 20, Relaxed);
        if cgroup_read {
            header
                .cgroup
                .read_at_unix_seconds
                .store(1_700_000_000, Relaxed);
            header.cgroup.usage_bytes.store(100 << 20, Relaxed);
            header.cgroup.limit_bytes.store(512 << 20, Relaxed);
            header.cgroup.anon_bytes.store(60 << 20, Relaxed);
            header.cgroup.file_bytes.store(30 << 20, Relaxed);
            header.cgroup.shmem_bytes.store(10 << 20, Relaxed);
            header.cgroup.tight.store(1, Relaxed);
            header.cgroup.max_events.store(17, Relaxed);
            header.cgroup.oom_kill_events.store(1, Relaxed);
            let inputs = &header.limit_inputs;
            inputs.cgroup_limit_bytes.store(512 << 20, Relaxed);
            inputs.reserve_bytes.store(64 << 20, Relaxed);
            inputs.shared_memory_bytes.store(100 << 20, Relaxed);
            inputs
                .shared_memory_source
                .store(SharedMemorySource::Environment as u32, Relaxed);
            assert!(inputs.set_cgroup_dir(b"/sys/fs/cgroup"));
            inputs.cgroup_state.store(CgroupState::V2 as u32, Relaxed);
            header.stats.dynamic_shared_bytes.store(2 << 20, Relaxed);
            // 100 connections of 4 MiB do not fit 256 MiB.
            header.server_settings.record(4096, 100);
        }
        map.flush().unwrap();
    }

    #[test]
    fn listen_values_are_addresses_and_errors_name_the_flag() {
        assert_eq!(
            parse_listen(DEFAULT_LISTEN).unwrap().to_string(),
            DEFAULT_LISTEN
        );
        assert!(parse_listen("[::1]:0").is_ok());
        for bad in [
            "",
            "localhost",
            "9187",
            "127.0.0.1",
            "1.2.3.4:99999",
            ":9187",
        ] {
            let message = parse_listen(bad).unwrap_err().to_string();
            assert!(
                message.contains("--listen") && message.contains(LISTEN_ENV),
                "{message}"
            );
        }
    }

    #[test]
    fn openmetrics_is_negotiated_like_promhttp() {
        assert!(accepts_openmetrics(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
             version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!accepts_openmetrics("*/*"));
        assert!(!accepts_openmetrics("text/plain"));
        assert!(!accepts_openmetrics("application/openmetrics-text; q=0"));
    }

    #[test]
    fn an_empty_directory_is_up_0_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let exporter = Exporter::new(dir.path());
        let first = exporter.scrape(true);
        assert_eq!(first.content_type, OPENMETRICS_CONTENT_TYPE);
        assert!(first.body.contains("\noomguard_up 0\n"), "{}", first.body);
        assert!(first
            .body
            .contains("oomguard_exporter_read_errors_total 1\n"));
        assert!(!first.body.contains("domain="), "{}", first.body);
        assert!(first.body.ends_with("# EOF\n"));
        let second = exporter.scrape(false);
        assert_eq!(second.content_type, TEXT_CONTENT_TYPE);
        assert!(second
            .body
            .contains("oomguard_exporter_read_errors_total 2\n"));
        assert!(second.body.contains("\noomguard_up 0\n"));
    }

    #[test]
    fn domains_are_labelled_and_cgroup_gauges_appear_once_read() {
        let dir = tempfile::tempdir().unwrap();
        let _a = write_segment(dir.path(), "oomguard-0-a", false);
        let _b = write_segment(dir.path(), "oomguard-0-b", true);
        let exporter = Exporter::new(dir.path());
        let om = exporter.scrape(true).body;
        for line in [
            "oomguard_up 1",
            "oomguard_build_info{version=\"0.1.0\"} 1",
            "# TYPE oomguard_limit_bytes gauge",
            "# UNIT oomguard_limit_bytes bytes",
            "oomguard_limit_bytes{domain=\"oomguard-0-a\"} 268435456",
            "oomguard_allocated_bytes{domain=\"oomguard-0-b\"} 5242880",
            "oomguard_allocated_peak_bytes{domain=\"oomguard-0-a\"} 7340032",
            "oomguard_process_allocated_max_bytes{domain=\"oomguard-0-a\"} 4194304",
            "oomguard_tracked_processes{domain=\"oomguard-0-a\"} 1",
            "# TYPE oomguard_denied_allocations counter",
            "oomguard_denied_allocations_total{domain=\"oomguard-0-a\"} 3",
            "# TYPE oomguard_refusals counter",
            "oomguard_refusals_total{domain=\"oomguard-0-a\",cause=\"domain_limit\"} 1",
            "oomguard_refusals_total{domain=\"oomguard-0-a\",cause=\"kernel_tight\"} 0",
            "oomguard_refusals_total{domain=\"oomguard-0-a\",cause=\"backend_budget\"} 2",
            "oomguard_refusals_total{domain=\"oomguard-0-b\",cause=\"kernel_tight\"} 0",
            "oomguard_denied_bytes_total{domain=\"oomguard-0-b\"} 1200",
            "oomguard_last_refusal_timestamp_seconds{domain=\"oomguard-0-a\"} 1700000123",
            "oomguard_reclaimed_orphan_bytes_total{domain=\"oomguard-0-a\"} 0",
            "oomguard_exporter_read_errors_total 0",
            "oomguard_stale_domains 0",
            "oomguard_cgroup_memory_usage_bytes{domain=\"oomguard-0-b\"} 104857600",
            "oomguard_cgroup_memory_limit_bytes{domain=\"oomguard-0-b\"} 536870912",
            "oomguard_cgroup_memory_anon_bytes{domain=\"oomguard-0-b\"} 62914560",
            "oomguard_cgroup_memory_file_bytes{domain=\"oomguard-0-b\"} 31457280",
            "oomguard_cgroup_memory_shmem_bytes{domain=\"oomguard-0-b\"} 10485760",
            "oomguard_limit_input_bytes{domain=\"oomguard-0-b\",input=\"cgroup_limit\"} 536870912",
            "oomguard_limit_input_bytes{domain=\"oomguard-0-b\",input=\"shared_memory\"} 104857600",
            "oomguard_limit_input_bytes{domain=\"oomguard-0-b\",input=\"reserve\"} 67108864",
            "oomguard_dynamic_shared_memory_bytes{domain=\"oomguard-0-b\"} 2097152",
            "oomguard_dynamic_shared_memory_bytes{domain=\"oomguard-0-a\"} 0",
            "oomguard_kernel_tight{domain=\"oomguard-0-b\"} 1",
            "oomguard_kernel_tight{domain=\"oomguard-0-a\"} 0",
            "# TYPE oomguard_cgroup_memory_max_events counter",
            "oomguard_cgroup_memory_max_events_total{domain=\"oomguard-0-b\"} 17",
            "oomguard_cgroup_memory_oom_kill_events_total{domain=\"oomguard-0-b\"} 1",
            "oomguard_postgres_work_mem_bytes{domain=\"oomguard-0-b\"} 4194304",
            "oomguard_postgres_max_connections{domain=\"oomguard-0-b\"} 100",
            // 5 MiB held + 100 × 4 MiB > 256 MiB; 100 MiB + 64 MiB < 512 MiB.
            "oomguard_configuration_misfit{domain=\"oomguard-0-b\",kind=\"connections_do_not_fit\"} 1",
            "oomguard_configuration_misfit{domain=\"oomguard-0-b\",kind=\"no_room_left\"} 0",
        ] {
            assert!(om.lines().any(|l| l == line), "{line} missing in\n{om}");
        }
        for absent in [
            // No postmaster's settings, no cgroup: not judged, rather than judged to fit.
            "oomguard_configuration_misfit{domain=\"oomguard-0-a\"",
            "oomguard_postgres_work_mem_bytes{domain=\"oomguard-0-a\"",
            "oomguard_limit_input_bytes{domain=\"oomguard-0-a\"",
            "oomguard_cgroup_memory_max_events_total{domain=\"oomguard-0-a\"",
        ] {
            assert!(!om.contains(absent), "{absent} in\n{om}");
        }
        assert!(
            !om.contains("oomguard_cgroup_memory_usage_bytes{domain=\"oomguard-0-a\"}"),
            "a domain whose cgroup was never read has no cgroup series:\n{om}"
        );
        let classic = exporter.scrape(false).body;
        for line in [
            "# TYPE oomguard_denied_allocations_total counter",
            "# TYPE oomguard_refusals_total counter",
            "oomguard_refusals_total{domain=\"oomguard-0-b\",cause=\"backend_budget\"} 2",
            "# HELP oomguard_denied_bytes_total Bytes requested by the refused allocation calls.",
            "# TYPE oomguard_build_info gauge",
            "oomguard_denied_bytes_total{domain=\"oomguard-0-b\"} 1200",
            "oomguard_last_refusal_timestamp_seconds{domain=\"oomguard-0-a\"} 1700000123",
        ] {
            assert!(
                classic.lines().any(|l| l == line),
                "{line} missing in\n{classic}"
            );
        }
        assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"));
    }

    #[test]
    fn refusals_by_cause_are_three_series_per_domain_that_add_up_and_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let _held = write_segment(dir.path(), "oomguard-0-c", false);
        let classic = Exporter::new(dir.path()).scrape(false).body;
        let by_cause: Vec<(&str, u64)> = classic
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("oomguard_refusals_total{domain=\"oomguard-0-c\",")?;
                let (labels, value) = rest.split_once("} ")?;
                Some((labels, value.parse().unwrap()))
            })
            .collect();
        assert_eq!(
            by_cause,
            [
                ("cause=\"domain_limit\"", 1),
                ("cause=\"kernel_tight\"", 0),
                ("cause=\"backend_budget\"", 2),
            ],
            "{classic}"
        );
        let total: u64 = by_cause.iter().map(|(_, value)| value).sum();
        assert!(
            classic.lines().any(|l| l
                == format!("oomguard_denied_allocations_total{{domain=\"oomguard-0-c\"}} {total}")),
            "the causes partition the refusals:\n{classic}"
        );
        let help = classic
            .lines()
            .find(|l| l.starts_with("# HELP oomguard_refusals_total "))
            .expect("a HELP line");
        for cause in RefusalCause::ALL {
            assert!(help.contains(cause.name()), "{help}");
        }
        assert!(help.contains("oomguard.backend_memory_limit"), "{help}");
    }

    /// Sample names in `body`, in order of first appearance.
    fn sample_names(body: &str) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or("").to_owned();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    #[test]
    fn metric_names_are_exactly_what_is_encoded() {
        let dir = tempfile::tempdir().unwrap();
        let _held = write_segment(dir.path(), "oomguard-0-all", true);
        let exporter = Exporter::new(dir.path());
        for openmetrics in [true, false] {
            let body = exporter.scrape(openmetrics).body;
            assert_eq!(
                sample_names(&body),
                METRIC_NAMES,
                "openmetrics={openmetrics}\n{body}"
            );
        }
    }

    #[test]
    fn a_bad_segment_is_counted_and_the_good_ones_still_served() {
        let dir = tempfile::tempdir().unwrap();
        let _held = write_segment(dir.path(), "oomguard-0-good", false);
        std::fs::write(dir.path().join("oomguard-0-junk"), b"not a segment").unwrap();
        let body = Exporter::new(dir.path()).scrape(true).body;
        assert!(body.contains("\noomguard_up 0\n"), "{body}");
        assert!(body.contains("oomguard_exporter_read_errors_total 1\n"));
        assert!(body.contains("oomguard_allocated_bytes{domain=\"oomguard-0-good\"} 5242880"));
        assert!(!body.contains("oomguard-0-junk"));
    }

    #[test]
    fn stale_domains_are_counted_not_exported() {
        let dir = tempfile::tempdir().unwrap();
        write_stale_segment(dir.path(), "oomguard-0-old", true);
        let exporter = Exporter::new(dir.path());
        let only_stale = exporter.scrape(true).body;
        assert!(only_stale.contains("\noomguard_up 0\n"), "{only_stale}");
        assert!(
            only_stale.contains("\noomguard_stale_domains 1\n"),
            "{only_stale}"
        );
        assert!(!only_stale.contains("domain="), "{only_stale}");
        let held = write_segment(dir.path(), "oomguard-0-live", false);
        let body = exporter.scrape(false).body;
        for line in [
            "oomguard_up 1",
            "oomguard_stale_domains 1",
            "oomguard_allocated_bytes{domain=\"oomguard-0-live\"} 5242880",
        ] {
            assert!(body.lines().any(|l| l == line), "{line} missing in\n{body}");
        }
        assert!(!body.contains("oomguard-0-old"), "{body}");
        // The live one's last process is gone: both stale now. A child another test thread is
        // starting holds a copy of the descriptor (and the lock) until it execs: allow it a
        // moment.
        drop(held);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let body = loop {
            let body = exporter.scrape(true).body;
            if body.contains("\noomguard_stale_domains 2\n") || std::time::Instant::now() > deadline
            {
                break body;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert!(body.contains("\noomguard_stale_domains 2\n"), "{body}");
        assert!(body.contains("\noomguard_up 0\n"), "{body}");
    }
}
