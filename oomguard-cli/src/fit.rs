//! Whether PostgreSQL's configuration fits the container, said before a refusal (or the kernel)
//! says it: the warnings `oomguard status` and `oomguard limit` print, and the exporter's
//! `oomguard_configuration_misfit`.
//!
//! Two misfits are checked, each with its numbers and the setting to change:
//!
//! - **No room left**: shared memory (mostly `shared_buffers`) plus the reserve take the whole
//!   cgroup limit. A derived limit is then nothing and the guard refuses nothing; with
//!   `OOM_GUARD_LIMIT` the kernel's numbers show no headroom as soon as shared memory is in use,
//!   and queries are refused for that.
//! - **Connections do not fit**: the limit is below what the server holds idle plus one
//!   `work_mem` per connection (`max_connections`). PostgreSQL lets every sort and hash of every
//!   connection use `work_mem` (a hash `hash_mem_multiplier` times it, autovacuum workers
//!   `maintenance_work_mem` besides), so this is the least a busy server can ask for; below it,
//!   ordinary queries of a full server are refused. The limit compared is the smaller of the
//!   limit in force and what the container leaves (cgroup limit − shared memory − reserve: past
//!   it the kernel's numbers tighten the guard, or its OOM killer acts).
//!
//! "What the server holds idle" does not depend on the load of the moment ([`idle_bytes`]): the
//! processes that run no query (the postmaster, its helpers, replication connections) as they
//! are, and every session at the size of the smallest one, which is as good as idle. So a
//! server that is busy right now gets the same answer as when it is quiet.
//!
//! The settings come from the segment (the guarded postmaster records `work_mem` and
//! `max_connections` at each fork), or from `postgres -C` for `oomguard limit --data-dir`, where
//! no server runs and what it holds idle is left out.

use oomguard_core::ProcessKind;
use serde::Serialize;

use crate::segment::{LimitInputsSnapshot, ProcessSnapshot, ServerSettingsSnapshot};
use crate::status::human_bytes;

/// PostgreSQL's smallest `work_mem`, in kB.
const MIN_WORK_MEM_KB: u64 = 64;
/// The smallest `max_connections` worth suggesting: PostgreSQL does not start unless it exceeds
/// `superuser_reserved_connections` (3 by default) plus `reserved_connections` (0, 16+).
const MIN_MAX_CONNECTIONS: u64 = 4;

/// A configuration that cannot fit, with the numbers that show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Misfit {
    /// Shared memory and the reserve take the whole cgroup limit.
    NoRoomLeft {
        /// The cgroup limit.
        cgroup_limit_bytes: u64,
        /// Shared memory as subtracted from it.
        shared_memory_bytes: u64,
        /// The reserve.
        reserve_bytes: u64,
        /// The limit comes from `OOM_GUARD_LIMIT` rather than the derivation.
        limit_from_environment: bool,
        /// The domain refuses (enforce mode) rather than only reporting.
        enforcing: bool,
    },
    /// The limit is below what the server holds idle plus `work_mem` × `max_connections`.
    ConnectionsDoNotFit {
        /// The limit compared: the smaller of the one in force and what the container leaves.
        limit_bytes: u64,
        /// `limit_bytes` is what the container leaves, below `OOM_GUARD_LIMIT`.
        limited_by_container: bool,
        /// What the server holds idle (`None`: no server is running).
        idle_bytes: Option<u64>,
        /// `work_mem`.
        work_mem_bytes: u64,
        /// `max_connections`.
        max_connections: u32,
        /// `idle + work_mem × max_connections`.
        needed_bytes: u64,
        /// The limit in force comes from `OOM_GUARD_LIMIT` rather than the derivation.
        limit_from_environment: bool,
        /// The domain refuses (enforce mode) rather than only reporting.
        enforcing: bool,
    },
}

/// What the checks look at.
pub struct Configuration<'a> {
    /// The limit in force, if any.
    pub limit_bytes: Option<u64>,
    /// `OOM_GUARD_LIMIT`, `derived` or `none`.
    pub limit_source: &'a str,
    /// The derivation's inputs.
    pub inputs: &'a LimitInputsSnapshot,
    /// What the server holds idle ([`idle_bytes`]; `None`: no server is running).
    pub idle_bytes: Option<u64>,
    /// The domain refuses (enforce mode) rather than only reporting.
    pub enforcing: bool,
    /// PostgreSQL's `work_mem` and `max_connections`, if known.
    pub server: Option<ServerSettingsSnapshot>,
}

/// What the live `processes` of a domain hold with the server idle: every process that runs no
/// query as it is, every session (`client backend`) at the smallest session's size, and the
/// processes that run one query or job and go (parallel workers, autovacuum workers,
/// background-worker jobs) not at all.
pub fn idle_bytes(processes: &[ProcessSnapshot]) -> u64 {
    let size = |p: &ProcessSnapshot| p.bytes.max(0) as u64;
    let is_session = |p: &&ProcessSnapshot| p.kind == ProcessKind::ClientBackend.name();
    let runs_and_goes = |p: &ProcessSnapshot| {
        [
            ProcessKind::ParallelWorker,
            ProcessKind::AutovacuumWorker,
            ProcessKind::BackgroundWorker,
        ]
        .iter()
        .any(|kind| p.kind == kind.name())
    };
    let sessions: Vec<u64> = processes.iter().filter(is_session).map(size).collect();
    let smallest_session = sessions.iter().copied().min().unwrap_or(0);
    let others: u64 = processes
        .iter()
        .filter(|p| !is_session(p) && !runs_and_goes(p))
        .map(size)
        .sum();
    others.saturating_add(smallest_session.saturating_mul(sessions.len() as u64))
}

/// Every misfit of `config`, most basic first.
pub fn check(config: &Configuration<'_>) -> Vec<Misfit> {
    judge(config).into_iter().flatten().flatten().collect()
}

/// Every kind ([`Misfit::KINDS`]) whose inputs `config` knows, with whether it misfits: what
/// the exporter serves, so that a kind not judged yet is absent rather than read as "fits".
pub fn verdicts(config: &Configuration<'_>) -> Vec<(&'static str, bool)> {
    Misfit::KINDS
        .into_iter()
        .zip(judge(config))
        .filter_map(|(kind, verdict)| verdict.map(|misfit| (kind, misfit.is_some())))
        .collect()
}

/// Each kind's verdict, in [`Misfit::KINDS`] order: `None` while its inputs are not known,
/// `Some(None)` when it fits.
fn judge(config: &Configuration<'_>) -> [Option<Option<Misfit>>; 2] {
    [no_room_left(config), connections_do_not_fit(config)]
}

fn no_room_left(config: &Configuration<'_>) -> Option<Option<Misfit>> {
    let inputs = config.inputs;
    let (cgroup, reserve) = (inputs.cgroup_limit_bytes?, inputs.reserve_bytes?);
    let shared = inputs.shared_memory_subtracted();
    Some(
        (shared.saturating_add(reserve) >= cgroup).then(|| Misfit::NoRoomLeft {
            cgroup_limit_bytes: cgroup,
            shared_memory_bytes: shared,
            reserve_bytes: reserve,
            limit_from_environment: config.limit_source == crate::run::LIMIT_ENV,
            enforcing: config.enforcing,
        }),
    )
}

fn connections_do_not_fit(config: &Configuration<'_>) -> Option<Option<Misfit>> {
    let (limit, server) = (config.limit_bytes?, config.server?);
    // Past what the container leaves, the kernel decides whatever OOM_GUARD_LIMIT says.
    let (limit, limited_by_container) = match config.inputs.derived_bytes() {
        Some(room) if room < limit => (room, true),
        _ => (limit, false),
    };
    let connections = server
        .work_mem_bytes
        .saturating_mul(u64::from(server.max_connections));
    let needed = connections.saturating_add(config.idle_bytes.unwrap_or(0));
    Some((limit < needed).then(|| Misfit::ConnectionsDoNotFit {
        limit_bytes: limit,
        limited_by_container,
        idle_bytes: config.idle_bytes,
        work_mem_bytes: server.work_mem_bytes,
        max_connections: server.max_connections,
        needed_bytes: needed,
        limit_from_environment: config.limit_source == crate::run::LIMIT_ENV,
        enforcing: config.enforcing,
    }))
}

fn bytes(value: u64) -> String {
    human_bytes(i64::try_from(value).unwrap_or(i64::MAX))
}

impl Misfit {
    /// Every kind's name, as `--json` (`kind`) and the exporter (`kind` label) give it.
    pub const KINDS: [&'static str; 2] = ["no_room_left", "connections_do_not_fit"];

    /// This misfit's name in [`Misfit::KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            Misfit::NoRoomLeft { .. } => Misfit::KINDS[0],
            Misfit::ConnectionsDoNotFit { .. } => Misfit::KINDS[1],
        }
    }

    /// What is wrong, with the numbers, and what to change.
    pub fn message(&self) -> String {
        match *self {
            Misfit::NoRoomLeft {
                cgroup_limit_bytes,
                shared_memory_bytes,
                reserve_bytes,
                limit_from_environment,
                enforcing,
            } => {
                let consequence = if limit_from_environment && enforcing {
                    "the kernel's numbers leave no headroom once shared memory is in use, and \
                     the guard refuses queries' growth for that (kernel_tight)"
                } else if limit_from_environment {
                    "the kernel's numbers leave no headroom once shared memory is in use, and \
                     the guard only reports (report mode): the kernel's OOM killer decides"
                } else {
                    "the derived limit is nothing, so the guard refuses nothing and the kernel's \
                     OOM killer decides"
                };
                format!(
                    "shared memory {} + reserve {} ≥ cgroup limit {}: {consequence}. Lower \
                     shared_buffers (most of PostgreSQL's shared memory) or OOM_GUARD_RESERVE, or \
                     raise the container's memory limit",
                    bytes(shared_memory_bytes),
                    bytes(reserve_bytes),
                    bytes(cgroup_limit_bytes),
                )
            }
            Misfit::ConnectionsDoNotFit {
                limit_bytes,
                limited_by_container,
                idle_bytes,
                work_mem_bytes,
                max_connections,
                needed_bytes,
                limit_from_environment,
                enforcing,
            } => {
                let what = match idle_bytes {
                    Some(idle) => format!(
                        "what the server holds idle ({}) plus one work_mem ({}) for each of \
                         max_connections ({max_connections}) = {}",
                        bytes(idle),
                        bytes(work_mem_bytes),
                        bytes(needed_bytes)
                    ),
                    None => format!(
                        "one work_mem ({}) for each of max_connections ({max_connections}) = {}, \
                         before what the server itself holds",
                        bytes(work_mem_bytes),
                        bytes(needed_bytes)
                    ),
                };
                let limit = if limited_by_container {
                    format!(
                        "what the container leaves, {} (cgroup limit − shared memory − reserve, \
                         below OOM_GUARD_LIMIT),",
                        bytes(limit_bytes)
                    )
                } else {
                    format!("the limit {}", bytes(limit_bytes))
                };
                let consequence = if enforcing && !limited_by_container {
                    "queries get ERROR: out of memory"
                } else if enforcing {
                    "the kernel's numbers tighten the guard and queries get ERROR: out of memory, \
                     or the kernel's OOM killer acts first"
                } else {
                    "the guard only reports (report mode) and the kernel's OOM killer decides"
                };
                let room = limit_bytes.saturating_sub(idle_bytes.unwrap_or(0));
                let largest_work_mem_kb = room / u64::from(max_connections.max(1)) / 1024;
                let most_connections = room / work_mem_bytes.max(1);
                let lower = match (
                    largest_work_mem_kb >= MIN_WORK_MEM_KB,
                    most_connections >= MIN_MAX_CONNECTIONS,
                ) {
                    (true, true) => format!(
                        "lower work_mem to {largest_work_mem_kb}kB or less, or max_connections \
                         to {most_connections} or less"
                    ),
                    (true, false) => format!("lower work_mem to {largest_work_mem_kb}kB or less"),
                    (false, _) => "what the server holds idle leaves no room for work_mem: close \
                                   idle connections (each holds memory) and lower max_connections"
                        .to_owned(),
                };
                let raise = if limit_from_environment && !limited_by_container {
                    "raise OOM_GUARD_LIMIT if the container has the memory"
                } else {
                    "raise the container's memory limit"
                };
                format!(
                    "{limit} is below {what}: when every connection sorts or hashes at once, \
                     {consequence}. Fix: {lower}; or {raise}"
                )
            }
        }
    }
}

/// A misfit as `--json` shows it: its numbers and its message.
#[derive(Debug, Clone, Serialize)]
pub struct Warning {
    /// The numbers.
    #[serde(flatten)]
    pub misfit: Misfit,
    /// [`Misfit::message`].
    pub message: String,
}

/// The warnings of `config`.
pub fn warnings(config: &Configuration<'_>) -> Vec<Warning> {
    check(config)
        .into_iter()
        .map(|misfit| Warning {
            message: misfit.message(),
            misfit,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn inputs(cgroup: u64, shared: u64, reserve: u64) -> LimitInputsSnapshot {
        LimitInputsSnapshot {
            cgroup_state: "v2",
            cgroup_dir: Some("/test".to_owned()),
            cgroup_limit_bytes: Some(cgroup),
            cgroup_limit_origin: Some(crate::segment::ORIGIN_CGROUP),
            cgroup_levels_up: Some(0),
            mem_total_bytes: Some(64 << 30),
            shared_memory_bytes: Some(shared),
            shared_memory_source: "observed mapping",
            huge_pages: false,
            reserve_bytes: Some(reserve),
            reserve_percent: None,
            reserve_source: Some(crate::segment::RESERVE_DEFAULT),
        }
    }

    fn server(work_mem: u64, max_connections: u32) -> Option<ServerSettingsSnapshot> {
        Some(ServerSettingsSnapshot {
            work_mem_bytes: work_mem,
            max_connections,
        })
    }

    /// A 768 MiB container: 551 MiB derived.
    fn container() -> LimitInputsSnapshot {
        inputs(768 * MIB, 140 * MIB, 77 * MIB)
    }

    /// The first warning's message for a configuration of `inputs` (see [`config`]).
    fn first_warning(
        inputs: &LimitInputsSnapshot,
        limit: u64,
        idle: Option<u64>,
        server: Option<ServerSettingsSnapshot>,
    ) -> String {
        check(&config(inputs, limit, idle, server))[0].message()
    }

    fn config<'a>(
        inputs: &'a LimitInputsSnapshot,
        limit: u64,
        idle: Option<u64>,
        server: Option<ServerSettingsSnapshot>,
    ) -> Configuration<'a> {
        Configuration {
            limit_bytes: Some(limit),
            limit_source: "derived",
            inputs,
            idle_bytes: idle,
            enforcing: true,
            server,
        }
    }

    fn process(kind: &'static str, bytes: i64) -> ProcessSnapshot {
        ProcessSnapshot {
            pid: 1,
            kind,
            title: String::new(),
            bytes,
            peak_bytes: bytes,
            allocations: 0,
            denials: 0,
            denied_bytes: 0,
            last_denied_size: 0,
            overlimit_reports: 0,
            budget_bytes: None,
            budget_source: oomguard_core::budget::BudgetSource::None,
            last_refusal_cause: oomguard_core::budget::RefusalCause::None,
        }
    }

    #[test]
    fn the_idle_server_is_its_helpers_and_every_session_at_the_smallest_ones_size() {
        let processes = [
            process("postmaster", 3 * MIB as i64),
            process("checkpointer", MIB as i64),
            process("client backend", 200 * MIB as i64), // busy sorting
            process("client backend", 2 * MIB as i64),
            process("client backend", 5 * MIB as i64),
            process("parallel worker", 90 * MIB as i64),
            process("autovacuum worker", 60 * MIB as i64),
            process("walsender", 4 * MIB as i64),
        ];
        assert_eq!(idle_bytes(&processes), (3 + 1 + 3 * 2 + 4) * MIB);
        assert_eq!(idle_bytes(&[]), 0);
    }

    #[test]
    fn a_configuration_that_fits_gets_no_warning() {
        let inputs = container();
        let fits = config(&inputs, 551 * MIB, Some(20 * MIB), server(4 * MIB, 100));
        assert_eq!(check(&fits), []);
        assert_eq!(
            check(&Configuration {
                server: None,
                ..fits
            }),
            [],
            "unknown settings are no misfit"
        );
    }

    #[test]
    fn connections_that_do_not_fit_are_named_with_the_numbers_and_the_fix() {
        let small = container();
        let busy = config(&small, 551 * MIB, Some(31 * MIB), server(64 * MIB, 100));
        let misfits = check(&busy);
        assert_eq!(
            misfits,
            [Misfit::ConnectionsDoNotFit {
                limit_bytes: 551 * MIB,
                limited_by_container: false,
                idle_bytes: Some(31 * MIB),
                work_mem_bytes: 64 * MIB,
                max_connections: 100,
                needed_bytes: 6431 * MIB,
                limit_from_environment: false,
                enforcing: true,
            }]
        );
        let message = misfits[0].message();
        // 520 MiB left for 100 connections: 5324 kB each, or 8 connections of 64 MiB.
        for expected in [
            "the limit 551.0 MiB is below what the server holds idle (31.0 MiB)",
            "64.0 MiB",
            "max_connections (100)",
            "queries get ERROR: out of memory",
            "work_mem to 5324kB",
            "max_connections to 8 ",
            "raise the container's memory limit",
        ] {
            assert!(message.contains(expected), "{expected:?} in {message}");
        }
        // Just fitting is not a misfit (in a container that leaves that much).
        let large = inputs(16 << 30, 140 * MIB, 77 * MIB);
        let fits = Configuration {
            limit_bytes: Some(31 * MIB + 6400 * MIB),
            inputs: &large,
            ..busy
        };
        assert_eq!(check(&fits), []);
    }

    #[test]
    fn the_advice_never_names_a_value_postgresql_rejects() {
        let inputs = container();
        // 551 − 531 = 20 MiB for 100 connections: 204 kB each, but not 0 connections of 64 MiB.
        let message = first_warning(&inputs, 551 * MIB, Some(531 * MIB), server(64 * MIB, 100));
        assert!(message.contains("work_mem to 204kB or less;"), "{message}");
        assert!(!message.contains("max_connections to"), "{message}");
        // 551 − 550 = 1 MiB for 100 connections: 10 kB, below PostgreSQL's 64 kB.
        let message = first_warning(&inputs, 551 * MIB, Some(550 * MIB), server(4 * MIB, 100));
        assert!(message.contains("leaves no room for work_mem"), "{message}");
        assert!(!message.contains("kB or less"), "{message}");
        let message = first_warning(&inputs, 551 * MIB, Some(600 * MIB), server(4 * MIB, 10));
        assert!(message.contains("leaves no room for work_mem"), "{message}");
    }

    #[test]
    fn an_environment_limit_above_what_the_container_leaves_is_compared_as_the_container() {
        let inputs = container();
        let config = Configuration {
            limit_source: crate::run::LIMIT_ENV,
            ..config(&inputs, 8 << 30, Some(20 * MIB), server(16 * MIB, 100))
        };
        let misfits = check(&config);
        let Misfit::ConnectionsDoNotFit {
            limit_bytes,
            limited_by_container,
            ..
        } = misfits[0]
        else {
            panic!("{misfits:?}");
        };
        assert_eq!((limit_bytes, limited_by_container), (551 * MIB, true));
        let message = misfits[0].message();
        assert!(
            message.contains("what the container leaves, 551.0 MiB")
                && message.contains("raise the container's memory limit"),
            "{message}"
        );
        // An environment limit below it is compared as it is.
        let small = Configuration {
            limit_bytes: Some(256 * MIB),
            ..config
        };
        let message = check(&small)[0].message();
        assert!(
            message.starts_with("the limit 256.0 MiB") && message.contains("raise OOM_GUARD_LIMIT"),
            "{message}"
        );
    }

    #[test]
    fn in_report_mode_the_consequence_is_the_kernels() {
        let inputs = container();
        let report = Configuration {
            enforcing: false,
            ..config(&inputs, 551 * MIB, Some(20 * MIB), server(64 * MIB, 100))
        };
        let message = check(&report)[0].message();
        assert!(
            message.contains("only reports (report mode)") && !message.contains("ERROR"),
            "{message}"
        );
    }

    #[test]
    fn without_a_server_work_mem_times_connections_is_checked_alone() {
        let inputs = container();
        let message = first_warning(&inputs, 551 * MIB, None, server(16 * MIB, 100));
        assert!(
            message.contains("= 1.6 GiB, before what the server itself holds"),
            "{message}"
        );
    }

    #[test]
    fn shared_memory_and_reserve_that_take_the_cgroup_limit_are_named() {
        let inputs = inputs(512 * MIB, 460 * MIB, 64 * MIB);
        let config = Configuration {
            limit_bytes: None,
            ..config(&inputs, 0, Some(10 * MIB), server(4 * MIB, 100))
        };
        let misfits = check(&config);
        assert_eq!(
            misfits,
            [Misfit::NoRoomLeft {
                cgroup_limit_bytes: 512 * MIB,
                shared_memory_bytes: 460 * MIB,
                reserve_bytes: 64 * MIB,
                limit_from_environment: false,
                enforcing: true,
            }],
            "no limit: nothing to compare the connections with"
        );
        let message = misfits[0].message();
        for expected in [
            "460.0 MiB",
            "64.0 MiB",
            "512.0 MiB",
            "shared_buffers",
            "refuses nothing",
        ] {
            assert!(message.contains(expected), "{expected:?} in {message}");
        }
        // Huge pages are not subtracted: the same numbers fit.
        let huge = LimitInputsSnapshot {
            huge_pages: true,
            ..inputs.clone()
        };
        assert_eq!(
            check(&Configuration {
                inputs: &huge,
                ..config
            }),
            []
        );
    }

    #[test]
    fn the_json_form_carries_the_numbers_and_the_message() {
        let inputs = inputs(512 * MIB, 460 * MIB, 64 * MIB);
        let warnings = warnings(&Configuration {
            limit_bytes: Some(300 * MIB),
            limit_source: crate::run::LIMIT_ENV,
            inputs: &inputs,
            idle_bytes: None,
            enforcing: true,
            server: None,
        });
        let json = serde_json::to_value(&warnings).unwrap();
        assert_eq!(json[0]["kind"], "no_room_left");
        assert_eq!(
            json[0]["kind"],
            warnings[0].misfit.kind(),
            "one name for both"
        );
        assert_eq!(json[0]["reserve_bytes"], 64 * MIB);
        assert_eq!(json[0]["limit_from_environment"], true);
        assert!(json[0]["message"]
            .as_str()
            .unwrap()
            .contains("kernel_tight"));
    }
}
