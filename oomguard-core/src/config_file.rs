//! The configuration file's lines: `OOM_GUARD_LIMIT=3Gi`, with the settings' names, `#` comments,
//! blank lines, whitespace around names and values, and a value optionally quoted with `"` or
//! `'`. Parsed the same way by the preload library (inside the first `malloc`: nothing here
//! allocates) and by the CLI, so both read one file alike. Where the file is and whether it is
//! trusted is theirs to decide.

use core::ops::Range;

use crate::config::SETTING_NAMES;

/// Largest configuration file read: a configuration file is a dozen lines.
pub const CAPACITY: usize = 8192;

/// Why a file that [`is_trusted`] refuses is not used, as the guard and the CLI report it.
pub const UNTRUSTED: &str =
    "is not a regular file owned by root or by this user and writable only by its owner";

/// Whether a configuration file may be used: a regular file owned by root or by the reading
/// process's effective user (`euid`), writable by nobody else (`mode`: its permission bits).
/// Anyone else who could write it could switch the guard off or set its limit to one byte.
pub fn is_trusted(regular_file: bool, owner: u32, euid: u32, mode: u32) -> bool {
    regular_file && (owner == 0 || owner == euid) && mode & 0o022 == 0
}

/// What one line holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Blank, or a comment.
    Nothing,
    /// `KEY=VALUE`: the index of `KEY` in [`SETTING_NAMES`] and where the value is in the line
    /// (quotes and surrounding whitespace excluded).
    Setting { key: usize, value: Range<usize> },
    /// Anything else: no `=`, an unknown name, or a NUL byte in the value.
    Malformed,
}

/// Parses one line (without its newline).
pub fn parse_line(line: &[u8]) -> Line {
    let is_blank = |byte: &u8| byte.is_ascii_whitespace();
    let Some(first) = line.iter().position(|b| !is_blank(b)) else {
        return Line::Nothing;
    };
    if line[first] == b'#' {
        return Line::Nothing;
    }
    let Some(equals) = line[first..]
        .iter()
        .position(|&b| b == b'=')
        .map(|at| first + at)
    else {
        return Line::Malformed;
    };
    let name = line[first..equals].trim_ascii_end();
    let Some(key) = SETTING_NAMES
        .iter()
        .position(|known| known.as_bytes() == name)
    else {
        return Line::Malformed;
    };
    let mut start = equals + 1;
    let mut end = line.len();
    while start < end && is_blank(&line[start]) {
        start += 1;
    }
    while end > start && is_blank(&line[end - 1]) {
        end -= 1;
    }
    if end - start >= 2 {
        let (open, close) = (line[start], line[end - 1]);
        if open == close && (open == b'"' || open == b'\'') {
            start += 1;
            end -= 1;
        }
    }
    if line[start..end].contains(&0) {
        return Line::Malformed;
    }
    Line::Setting {
        key,
        value: start..end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn setting(line: &str) -> Option<(&'static str, String)> {
        match parse_line(line.as_bytes()) {
            Line::Setting { key, value } => Some((SETTING_NAMES[key], line[value].to_owned())),
            _ => None,
        }
    }

    #[test]
    fn only_files_written_by_root_or_the_reader_alone_are_trusted() {
        assert!(is_trusted(true, 0, 999, 0o644));
        assert!(is_trusted(true, 999, 999, 0o600));
        assert!(!is_trusted(true, 0, 999, 0o664));
        assert!(!is_trusted(true, 0, 999, 0o646));
        assert!(!is_trusted(true, 1000, 999, 0o644));
        assert!(!is_trusted(false, 0, 999, 0o644));
    }

    #[test]
    fn settings_comments_quotes_and_whitespace() {
        assert_eq!(
            setting("OOM_GUARD_LIMIT=3Gi"),
            Some(("OOM_GUARD_LIMIT", "3Gi".into()))
        );
        assert_eq!(
            setting("  OOM_GUARD_DIR = \"/run/oomguard\"  "),
            Some(("OOM_GUARD_DIR", "/run/oomguard".into()))
        );
        assert_eq!(
            setting("OOM_GUARD_MODE='report'"),
            Some(("OOM_GUARD_MODE", "report".into()))
        );
        assert_eq!(
            setting("OOM_GUARD_RESERVE="),
            Some(("OOM_GUARD_RESERVE", "".into()))
        );
        assert_eq!(parse_line(b"# OOM_GUARD_LIMIT=1"), Line::Nothing);
        assert_eq!(parse_line(b"   \t"), Line::Nothing);
        assert_eq!(parse_line(b"OOM_GUARD_LIMITS=1"), Line::Malformed);
        assert_eq!(parse_line(b"OOM_GUARD_TEST_INJECT=1"), Line::Malformed);
        assert_eq!(parse_line(b"just words"), Line::Malformed);
        assert_eq!(parse_line(b"OOM_GUARD_LIMIT=1\0G"), Line::Malformed);
    }

    proptest! {
        #[test]
        fn any_line_parses_without_panicking_and_values_lie_inside_it(line in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Line::Setting { key, value } = parse_line(&line) {
                prop_assert!(key < SETTING_NAMES.len());
                prop_assert!(value.start <= value.end && value.end <= line.len());
                prop_assert!(!line[value].contains(&0));
            }
        }

        #[test]
        fn a_written_setting_reads_back(key in 0..SETTING_NAMES.len(), value in "[A-Za-z0-9/._%-]{0,40}", pad in "[ \t]{0,3}") {
            let line = format!("{pad}{}{pad}={pad}{value}{pad}", SETTING_NAMES[key]);
            prop_assert_eq!(setting(&line), Some((SETTING_NAMES[key], value)));
        }
    }
}
