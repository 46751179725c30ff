//! Whether PostgreSQL's configuration fits the container, said before a refusal (or the kernel)
//! says it: the warnings `oomguard status` and `oomguard limit` print.
//!
//! Two misfits are checked, each with its numbers and the setting to change:
//!
//! - **No room left**: shared memory (mostly `shared_buffers`) plus the reserve take the whole
//!   cgroup limit. A derived limit is then nothing and the guard refuses nothing; with
//!   `OOM_GUARD_LIMIT` the kernel's numbers show no headroom as soon as shared memory is in use,
//!   and queries are refused for that.
//! - **Connections do not fit**: the limit is below what the server holds now plus one
//!   `work_mem` per connection (`max_connections`). PostgreSQL lets every sort and hash of every
//!   connection use `work_mem` (a hash `hash_mem_multiplier` times it), so this is the least a
//!   busy server can ask for; below it, ordinary queries of a full server are refused. What the
//!   server holds is the guard's total at the moment of the check: on an idle server, what idle
//!   sessions and the postmaster hold.
//!
//! The settings come from the segment (the guarded postmaster records `work_mem` and
//! `max_connections` at each fork), or from `postgres -C` for `oomguard limit --data-dir`.

use serde::Serialize;

use crate::segment::{LimitInputsSnapshot, ServerSettingsSnapshot};
use crate::status::human_bytes;

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
    },
    /// The limit is below what the server holds plus `work_mem` × `max_connections`.
    ConnectionsDoNotFit {
        /// The limit in force.
        limit_bytes: u64,
        /// What the guarded processes hold now (`None`: no server is running).
        held_bytes: Option<u64>,
        /// `work_mem`.
        work_mem_bytes: u64,
        /// `max_connections`.
        max_connections: u32,
        /// `held + work_mem × max_connections`.
        needed_bytes: u64,
        /// The limit comes from `OOM_GUARD_LIMIT` rather than the derivation.
        limit_from_environment: bool,
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
    /// What the guarded processes hold now (`None`: no server is running).
    pub held_bytes: Option<u64>,
    /// PostgreSQL's `work_mem` and `max_connections`, if known.
    pub server: Option<ServerSettingsSnapshot>,
}

/// Every misfit of `config`, most basic first.
pub fn check(config: &Configuration<'_>) -> Vec<Misfit> {
    let from_environment = config.limit_source == crate::run::LIMIT_ENV;
    let mut misfits = Vec::new();
    let inputs = config.inputs;
    if let (Some(cgroup), Some(reserve)) = (inputs.cgroup_limit_bytes, inputs.reserve_bytes) {
        let shared = inputs.shared_memory_subtracted();
        if shared.saturating_add(reserve) >= cgroup {
            misfits.push(Misfit::NoRoomLeft {
                cgroup_limit_bytes: cgroup,
                shared_memory_bytes: shared,
                reserve_bytes: reserve,
                limit_from_environment: from_environment,
            });
        }
    }
    if let (Some(limit), Some(server)) = (config.limit_bytes, config.server) {
        let connections = server
            .work_mem_bytes
            .saturating_mul(u64::from(server.max_connections));
        let needed = connections.saturating_add(config.held_bytes.unwrap_or(0));
        if limit < needed {
            misfits.push(Misfit::ConnectionsDoNotFit {
                limit_bytes: limit,
                held_bytes: config.held_bytes,
                work_mem_bytes: server.work_mem_bytes,
                max_connections: server.max_connections,
                needed_bytes: needed,
                limit_from_environment: from_environment,
            });
        }
    }
    misfits
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
            } => {
                let consequence = if limit_from_environment {
                    "the kernel's numbers leave no headroom once shared memory is in use, and \
                     the guard refuses queries' growth for that (kernel_tight)"
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
                held_bytes,
                work_mem_bytes,
                max_connections,
                needed_bytes,
                limit_from_environment,
            } => {
                let held = held_bytes.unwrap_or(0);
                let what = match held_bytes {
                    Some(held) => format!(
                        "what the server holds now ({}) plus one work_mem ({}) for each of \
                         max_connections ({max_connections}) = {}",
                        bytes(held),
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
                let room = limit_bytes.saturating_sub(held);
                let largest_work_mem_kb = room / u64::from(max_connections.max(1)) / 1024;
                let lower = if largest_work_mem_kb == 0 {
                    "the server already holds the whole limit before any query runs: close \
                     idle connections (each holds memory) and lower max_connections"
                        .to_owned()
                } else {
                    format!(
                        "lower work_mem to {largest_work_mem_kb}kB or less, or max_connections \
                         to {} or less",
                        room / work_mem_bytes.max(1)
                    )
                };
                let raise = if limit_from_environment {
                    "raise OOM_GUARD_LIMIT if the container has the memory"
                } else {
                    "raise the container's memory limit"
                };
                format!(
                    "the limit {} is below {what}: when every connection sorts or hashes at \
                     once, queries get ERROR: out of memory. Fix: {lower}; or {raise}",
                    bytes(limit_bytes)
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

    #[test]
    fn a_configuration_that_fits_gets_no_warning() {
        let inputs = inputs(768 * MIB, 140 * MIB, 77 * MIB);
        let config = Configuration {
            limit_bytes: Some(551 * MIB),
            limit_source: "derived",
            inputs: &inputs,
            held_bytes: Some(20 * MIB),
            server: server(4 * MIB, 100),
        };
        assert_eq!(check(&config), []);
    }

    #[test]
    fn connections_that_do_not_fit_are_named_with_the_numbers_and_the_fix() {
        let inputs = inputs(768 * MIB, 140 * MIB, 77 * MIB);
        let config = Configuration {
            limit_bytes: Some(551 * MIB),
            limit_source: "derived",
            inputs: &inputs,
            held_bytes: Some(31 * MIB),
            server: server(64 * MIB, 100),
        };
        let misfits = check(&config);
        assert_eq!(
            misfits,
            [Misfit::ConnectionsDoNotFit {
                limit_bytes: 551 * MIB,
                held_bytes: Some(31 * MIB),
                work_mem_bytes: 64 * MIB,
                max_connections: 100,
                needed_bytes: 6431 * MIB,
                limit_from_environment: false,
            }]
        );
        let message = misfits[0].message();
        // 520 MiB left for 100 connections: 5324 kB each, or 8 connections of 64 MiB.
        for expected in [
            "551.0 MiB",
            "31.0 MiB",
            "64.0 MiB",
            "max_connections (100)",
            "work_mem to 5324kB",
            "max_connections to 8 ",
            "raise the container's memory limit",
        ] {
            assert!(message.contains(expected), "{expected:?} in {message}");
        }
        // Just fitting is not a misfit.
        let fits = Configuration {
            limit_bytes: Some(31 * MIB + 6400 * MIB),
            ..config
        };
        assert_eq!(check(&fits), []);
    }

    #[test]
    fn a_limit_the_server_already_fills_says_so() {
        let inputs = inputs(768 * MIB, 140 * MIB, 77 * MIB);
        let config = Configuration {
            limit_bytes: Some(100 * MIB),
            limit_source: crate::run::LIMIT_ENV,
            inputs: &inputs,
            held_bytes: Some(120 * MIB),
            server: server(4 * MIB, 10),
        };
        let message = check(&config)[0].message();
        assert!(
            message.contains("already holds the whole limit"),
            "{message}"
        );
        assert!(message.contains("raise OOM_GUARD_LIMIT"), "{message}");
    }

    #[test]
    fn without_a_server_work_mem_times_connections_is_checked_alone() {
        let inputs = inputs(768 * MIB, 140 * MIB, 77 * MIB);
        let config = Configuration {
            limit_bytes: Some(551 * MIB),
            limit_source: "derived",
            inputs: &inputs,
            held_bytes: None,
            server: server(16 * MIB, 100),
        };
        let message = check(&config)[0].message();
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
            limit_source: "derived",
            inputs: &inputs,
            held_bytes: Some(10 * MIB),
            server: server(4 * MIB, 100),
        };
        let misfits = check(&config);
        assert_eq!(
            misfits,
            [Misfit::NoRoomLeft {
                cgroup_limit_bytes: 512 * MIB,
                shared_memory_bytes: 460 * MIB,
                reserve_bytes: 64 * MIB,
                limit_from_environment: false,
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
            held_bytes: None,
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
