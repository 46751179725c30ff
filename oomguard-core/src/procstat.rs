//! Telling a slot's live owner from a zombie or from a later process that reuses its pid, from
//! the text of `/proc/PID/stat`; shared by the preload library (reaping before a refusal) and the
//! CLI.

use crate::fs::FileSystem;

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

/// Whether process `pid`, known to exist, is still the owner that claimed its slot at
/// `claimed_at_ns`, judged from its `/proc/PID/stat` read through `fs`. An unreadable entry
/// counts as the owner (see [`owner_gone`]).
pub fn owner_alive<F: FileSystem>(
    fs: &F,
    pid: i32,
    claimed_at_ns: u64,
    ticks_per_second: u64,
) -> bool {
    let mut path = [0u8; 32];
    let Some(len) = stat_path(pid, &mut path) else {
        return true;
    };
    let mut stat = [0u8; 1024];
    match fs.read(&path[..len], &mut stat) {
        Ok(read) => !owner_gone(&stat[..read], ticks_per_second, claimed_at_ns),
        Err(_) => true,
    }
}

/// Writes `/proc/PID/stat` into `buffer`, returning its length.
fn stat_path(pid: i32, buffer: &mut [u8; 32]) -> Option<usize> {
    let pid = u32::try_from(pid).ok()?;
    let mut digits = [0u8; 10];
    let mut count = 0;
    let mut rest = pid;
    loop {
        digits[count] = b'0' + (rest % 10) as u8;
        count += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut len = 0;
    let mut push = |byte: u8| {
        buffer[len] = byte;
        len += 1;
    };
    b"/proc/".iter().for_each(|&b| push(b));
    digits[..count].iter().rev().for_each(|&b| push(b));
    b"/stat".iter().for_each(|&b| push(b));
    Some(len)
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

    #[test]
    fn the_stat_path_of_a_pid() {
        let mut buffer = [0u8; 32];
        let len = stat_path(4242, &mut buffer).unwrap();
        assert_eq!(&buffer[..len], b"/proc/4242/stat");
        let len = stat_path(0, &mut buffer).unwrap();
        assert_eq!(&buffer[..len], b"/proc/0/stat");
        assert_eq!(stat_path(-1, &mut buffer), None);
        let len = stat_path(i32::MAX, &mut buffer).unwrap();
        assert_eq!(&buffer[..len], b"/proc/2147483647/stat");
    }

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
