//! Reading a process's start time from the text of `/proc/PID/stat`, shared by the preload
//! library (reaping before a refusal) and the CLI (reaping in `status`). With the pid it tells a
//! live process from a dead one whose pid was reused.

/// Field 22 (`starttime`, clock ticks since boot) of a `/proc/PID/stat` line.
///
/// The command name (field 2) may contain spaces and parentheses, so fields are counted from the
/// last `)`.
pub fn start_time(stat: &[u8]) -> Option<u64> {
    let after_name = stat.iter().rposition(|&b| b == b')')? + 1;
    let field = stat[after_name..]
        .split(|&b| b == b' ')
        .filter(|field| !field.is_empty())
        .nth(19)?;
    core::str::from_utf8(field).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_field_22_even_with_odd_command_names() {
        let line = b"4242 (postgres: a) b) S 1 4242 4242 0 -1 4194560 2466 0 0 0 1 2 0 0 20 0 1 0 987654 176128000 6000 18446744073709551615";
        assert_eq!(start_time(line), Some(987654));
        assert_eq!(start_time(b"4242 (x) S 1"), None);
        assert_eq!(start_time(b"garbage"), None);
    }
}
