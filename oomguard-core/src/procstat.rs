//! Telling a slot's owner from a later process that reuses its pid, from the text of
//! `/proc/PID/stat`; shared by the preload library (reaping before a refusal) and the CLI.

/// Field 22 (`starttime`, clock ticks since boot) of a `/proc/PID/stat` line.
///
/// The command name (field 2) may contain spaces and parentheses, so fields are counted from the
/// last `)`.
pub fn start_ticks(stat: &[u8]) -> Option<u64> {
    let after_name = stat.iter().rposition(|&b| b == b')')? + 1;
    let field = stat[after_name..]
        .split(|&b| b == b' ')
        .filter(|field| !field.is_empty())
        .nth(19)?;
    core::str::from_utf8(field).ok()?.trim().parse().ok()
}

/// Whether the process described by `stat` started after `claimed_at_ns` (`CLOCK_BOOTTIME`),
/// i.e. is not the process that claimed the slot but a later one with the same pid. One tick of
/// slack absorbs the rounding of `starttime`; an unreadable line answers `false` (keep the slot:
/// a wrong reap would under-count a live process, a kept one only wastes a slot).
pub fn started_after(stat: &[u8], ticks_per_second: u64, claimed_at_ns: u64) -> bool {
    let Some(ticks) = start_ticks(stat) else {
        return false;
    };
    let tick_ns = 1_000_000_000 / ticks_per_second.max(1);
    ticks.saturating_mul(tick_ns) > claimed_at_ns.saturating_add(tick_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &[u8] = b"4242 (postgres: a) b) S 1 4242 4242 0 -1 4194560 2466 0 0 0 1 2 0 0 20 0 1 0 987654 176128000 6000 18446744073709551615";

    #[test]
    fn reads_field_22_even_with_odd_command_names() {
        assert_eq!(start_ticks(LINE), Some(987654));
        assert_eq!(start_ticks(b"4242 (x) S 1"), None);
        assert_eq!(start_ticks(b"garbage"), None);
    }

    #[test]
    fn a_process_started_after_the_claim_is_another_one() {
        let started_ns = 987654 * 10_000_000;
        assert!(!started_after(LINE, 100, started_ns), "the owner itself");
        assert!(!started_after(LINE, 100, started_ns + 5_000_000));
        assert!(
            started_after(LINE, 100, started_ns - 20_000_001),
            "a reused pid"
        );
        assert!(!started_after(b"garbage", 100, 0));
    }
}
