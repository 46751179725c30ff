//! Telling a slot's live owner from a zombie or from a later process that reuses its pid, from
//! the text of `/proc/PID/stat`; shared by the preload library (reaping before a refusal) and the
//! CLI.

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

/// Whether the slot's owner is gone although a process with its pid exists: the process
/// described by `stat` is a zombie (dead, not yet waited for: its memory is already freed), or it
/// started after `claimed_at_ns` (`CLOCK_BOOTTIME`), i.e. is a later process that reuses the pid.
/// One tick of slack absorbs the rounding of `starttime`; an unreadable line answers `false`
/// (keep the slot: a wrong reap would under-count a live process, a kept one only wastes a slot).
pub fn owner_gone(stat: &[u8], ticks_per_second: u64, claimed_at_ns: u64) -> bool {
    if matches!(state(stat), Some(b'Z' | b'X' | b'x')) {
        return true;
    }
    let Some(ticks) = start_ticks(stat) else {
        return false;
    };
    let tick_ns = 1_000_000_000 / ticks_per_second.max(1);
    ticks.saturating_mul(tick_ns) > claimed_at_ns.saturating_add(tick_ns)
}

/// Field 3 (the state letter: R, S, D, Z, …).
fn state(stat: &[u8]) -> Option<u8> {
    let after_name = stat.iter().rposition(|&b| b == b')')? + 1;
    stat.get(after_name..)?
        .iter()
        .copied()
        .find(|b| !b.is_ascii_whitespace())
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
        assert!(!owner_gone(LINE, 100, started_ns), "the owner itself");
        assert!(!owner_gone(LINE, 100, started_ns + 5_000_000));
        assert!(
            owner_gone(LINE, 100, started_ns - 20_000_001),
            "a reused pid"
        );
        assert!(!owner_gone(b"garbage", 100, 0));
    }

    #[test]
    fn a_zombie_is_gone() {
        let zombie =
            b"4242 (postgres) Z 1 4242 4242 0 -1 4194560 2466 0 0 0 1 2 0 0 20 0 1 0 987654 0";
        assert!(owner_gone(zombie, 100, u64::MAX / 2));
    }
}
