//! The server settings every cluster starts with ([`default_settings`]: no TCP, no fsync, small
//! shared buffers, JIT off unless `OOM_GUARD_PG_JIT=on`), and how a start's own settings override
//! them by name.

/// Environment variable that turns PostgreSQL's JIT on (`on`) in every cluster that does not
/// set `jit` itself: the server tests then run their queries as a JIT-enabled server would.
pub const JIT_ENV: &str = "OOM_GUARD_PG_JIT";

/// Settings every cluster starts with; the `settings` of [`Cluster::start`](crate::Cluster::start)
/// override them by name. JIT is off (deterministic plans and timings) unless
/// `OOM_GUARD_PG_JIT=on`.
pub fn default_settings() -> Vec<(String, String)> {
    let jit = if std::env::var(JIT_ENV).is_ok_and(|value| value == "on") {
        "on"
    } else {
        "off"
    };
    [
        ("listen_addresses", ""),
        ("jit", jit),
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("full_page_writes", "off"),
        ("shared_buffers", "32MB"),
        ("max_connections", "30"),
        ("huge_pages", "off"),
        ("logging_collector", "off"),
        ("log_line_prefix", "%m [%p] %b "),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `defaults` with `overrides` applied by name (case-insensitive, like GUC names); new names are
/// appended in order.
pub(crate) fn merge_settings(
    defaults: &[(String, String)],
    overrides: &[(String, String)],
) -> Vec<(String, String)> {
    let mut merged: Vec<(String, String)> = defaults.to_vec();
    for (name, value) in overrides {
        match merged
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(slot) => slot.1 = value.clone(),
            None => merged.push((name.clone(), value.clone())),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_override_by_name() {
        let merged = merge_settings(
            &default_settings(),
            &[
                ("Shared_Buffers".into(), "64MB".into()),
                ("work_mem".into(), "1GB".into()),
            ],
        );
        let get = |n: &str| {
            merged
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("shared_buffers"), ["64MB"]);
        assert_eq!(get("work_mem"), ["1GB"]);
        assert_eq!(get("jit"), ["off"]);
        assert_eq!(get("listen_addresses"), [""]);
    }
}
