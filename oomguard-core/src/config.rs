//! Parsers for the guard's `OOM_GUARD_*` values, shared by the preload library (which reports a bad
//! value once on stderr and falls back to report mode) and the CLI (which refuses to start).
//!
//! Sizes follow Kubernetes, because that is where a container's limit is written: binary suffixes
//! `Ki Mi Gi Ti` (also spelled `KiB MiB GiB TiB`) and decimal ones `k K M G T` (`1G` = 10^9 bytes,
//! exactly as in a pod's `limits.memory`). PostgreSQL-style `GB`/`MB` are rejected because
//! PostgreSQL reads them as binary and Kubernetes as decimal: the user must pick one.

use core::fmt;

/// The accepted size forms, quoted by every size error.
pub const SIZE_FORMS: &str = "a whole number of bytes (1073741824), a binary size (512Mi, 512MiB, \
1Gi, 1GiB) or a decimal Kubernetes quantity (500M, 1G = 10^9 bytes)";

/// Why a size could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeError {
    /// Nothing (or only blanks) was given.
    Empty,
    /// The number part is missing or is not a whole number.
    NotANumber,
    /// The suffix is not one of the accepted ones.
    UnknownSuffix,
    /// `GB`/`MB`/…: binary in PostgreSQL, decimal in Kubernetes.
    AmbiguousSuffix,
    /// The value does not fit in 64 bits.
    TooLarge,
    /// Zero bytes is not a limit.
    Zero,
}

impl SizeError {
    /// Why the value was rejected, without the list of accepted forms.
    pub fn reason(&self) -> &'static str {
        match self {
            SizeError::Empty => "it is empty",
            SizeError::NotANumber => "it does not start with a whole number",
            SizeError::UnknownSuffix => "its unit is unknown",
            SizeError::AmbiguousSuffix => {
                "its unit is ambiguous (GB is 2^30 in PostgreSQL but 10^9 in Kubernetes): write Gi or G"
            }
            SizeError::TooLarge => "it is larger than 2^64 bytes",
            SizeError::Zero => "it is zero",
        }
    }
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; accepted forms are {SIZE_FORMS}", self.reason())
    }
}

/// Whether an `OOM_GUARD_LIMIT` value asks for the derived limit (`auto`, or empty).
pub fn limit_is_auto(text: &str) -> bool {
    let text = text.trim();
    text.is_empty() || text.eq_ignore_ascii_case("auto")
}

/// Parses a size such as `1073741824`, `512MiB`, `1Gi` or `1G` into bytes. Surrounding blanks are
/// ignored; zero is rejected because a zero limit is never what the user meant.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SizeError::Empty);
    }
    let digits_end = text
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::NotANumber);
    }
    let mut number: u64 = 0;
    for b in digits.bytes() {
        number = number
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(SizeError::TooLarge)?;
    }
    let multiplier: u64 = match suffix {
        "" => 1,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "kB" | "KB" | "MB" | "GB" | "TB" => return Err(SizeError::AmbiguousSuffix),
        s if s.starts_with('.') => return Err(SizeError::NotANumber),
        _ => return Err(SizeError::UnknownSuffix),
    };
    let bytes = number.checked_mul(multiplier).ok_or(SizeError::TooLarge)?;
    if bytes == 0 {
        return Err(SizeError::Zero);
    }
    Ok(bytes)
}

/// What the guard does when the container-wide total would pass the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Mode {
    /// Account, and refuse over the limit where the refusal policy allows it.
    Enforce = 1,
    /// Account and count would-be refusals, never refuse.
    Report = 2,
    /// Pure pass-through: no accounting at all in this process.
    Off = 3,
}

/// The accepted mode values, quoted by the mode error.
pub const MODE_FORMS: &str = "enforce, report or off";

impl Mode {
    /// Parses `enforce`, `report` or `off` (case-insensitive, blanks ignored).
    pub fn parse(text: &str) -> Option<Mode> {
        let text = text.trim();
        [
            ("enforce", Mode::Enforce),
            ("report", Mode::Report),
            ("off", Mode::Off),
        ]
        .into_iter()
        .find(|(name, _)| text.eq_ignore_ascii_case(name))
        .map(|(_, mode)| mode)
    }

    /// The value as stored in the segment header (0 means not set).
    pub fn from_raw(raw: u32) -> Option<Mode> {
        match raw {
            1 => Some(Mode::Enforce),
            2 => Some(Mode::Report),
            3 => Some(Mode::Off),
            _ => None,
        }
    }

    /// The lower-case name used in messages, the CLI and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Report => "report",
            Mode::Off => "off",
        }
    }
}

/// Which guarded processes may be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseScope {
    /// Every PostgreSQL process that runs a query or a job and turns an ERROR into a failed
    /// query or job (client backends, parallel workers, extensions' background workers,
    /// autovacuum workers, logical replication workers), in a state where an ERROR is safe. The
    /// default.
    Jobs,
    /// Only PostgreSQL client backends in a state where an ERROR is safe.
    Backends,
    /// Every guarded process: for non-PostgreSQL programs and for tests with plain C programs.
    All,
}

/// The accepted refusal scopes, quoted by the scope error.
pub const REFUSE_FORMS: &str = "jobs (client backends and every worker that runs a query or a \
     job), backends (PostgreSQL client backends only) or all";

impl RefuseScope {
    /// Parses `jobs`, `backends` or `all` (case-insensitive, blanks ignored).
    pub fn parse(text: &str) -> Option<RefuseScope> {
        let text = text.trim();
        [
            ("jobs", RefuseScope::Jobs),
            ("backends", RefuseScope::Backends),
            ("all", RefuseScope::All),
        ]
        .into_iter()
        .find(|(name, _)| text.eq_ignore_ascii_case(name))
        .map(|(_, scope)| scope)
    }

    /// Whether a PostgreSQL process of `kind` may be refused under this scope (in a safe state).
    pub fn covers(self, kind: crate::ProcessKind) -> bool {
        use crate::ProcessKind as Kind;
        match self {
            RefuseScope::All => true,
            RefuseScope::Backends => kind == Kind::ClientBackend,
            RefuseScope::Jobs => matches!(
                kind,
                Kind::ClientBackend
                    | Kind::ParallelWorker
                    | Kind::BackgroundWorker
                    | Kind::AutovacuumWorker
                    | Kind::LogicalReplicationWorker
            ),
        }
    }
}

/// Every setting the guard reads, from the environment or the configuration file.
pub const SETTING_NAMES: [&str; 10] = [
    "OOM_GUARD_LIMIT",
    "OOM_GUARD_BACKEND_LIMIT",
    "OOM_GUARD_MODE",
    "OOM_GUARD_RESERVE",
    "OOM_GUARD_SHARED_MEMORY",
    "OOM_GUARD_REFUSE",
    "OOM_GUARD_DIR",
    "OOM_GUARD_DOMAIN",
    "OOM_GUARD_CGROUP_ROOT",
    "OOM_GUARD_REFUSAL_RECORDS",
];

/// What `OOM_GUARD_REFUSAL_RECORDS` accepts, quoted by its error.
pub const REFUSAL_RECORDS_FORMS: &str =
    "a whole number of records from 0 (no record) to 4096; the default is 256";

/// Parses `OOM_GUARD_REFUSAL_RECORDS`: how many refusal records a new segment holds (decimal,
/// blanks ignored, at most [`crate::layout::MAX_REFUSAL_RECORDS`]).
pub fn parse_refusal_records(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() || text.len() > 4 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let records: u32 = text.parse().ok()?;
    (records <= crate::layout::MAX_REFUSAL_RECORDS).then_some(records)
}

/// What `OOM_GUARD_DOMAIN` accepts, quoted by its error.
pub const DOMAIN_FORMS: &str = "a plain file name of 1 to 200 bytes, without '/', not '.' or \
     '..' (start it with oomguard- so that oomguard status, limit, clean and the exporter find it)";

/// Checks an `OOM_GUARD_DOMAIN` value: the segment's file name inside `OOM_GUARD_DIR`, so a
/// path (`../x`, `a/b`) would put the segment somewhere else.
pub fn domain_is_valid(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_records_are_whole_numbers_up_to_the_maximum() {
        assert_eq!(parse_refusal_records("256"), Some(256));
        assert_eq!(parse_refusal_records(" 0 "), Some(0));
        assert_eq!(parse_refusal_records("4096"), Some(4096));
        for bad in ["4097", "", "-1", "+5", "1e3", "12k", "99999", "0x10", "٣"] {
            assert_eq!(parse_refusal_records(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sizes_in_every_accepted_form() {
        assert_eq!(parse_size("1073741824"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("512Mi"), Ok(512 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        assert_eq!(parse_size("2Ti"), Ok(2 << 40));
        assert_eq!(parse_size("64Ki"), Ok(64 << 10));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert_eq!(parse_size("500M"), Ok(500_000_000));
        assert_eq!(parse_size("128k"), Ok(128_000));
        assert_eq!(parse_size(" 256Mi\n"), Ok(256 << 20));
    }

    #[test]
    fn bad_sizes_say_why() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("   "), Err(SizeError::Empty));
        assert_eq!(parse_size("Gi"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("-1"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("1.5Gi"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("12 parsecs"), Err(SizeError::UnknownSuffix));
        assert_eq!(parse_size("1gi"), Err(SizeError::UnknownSuffix));
        assert_eq!(parse_size("1GB"), Err(SizeError::AmbiguousSuffix));
        assert_eq!(parse_size("0"), Err(SizeError::Zero));
        assert_eq!(parse_size("0Gi"), Err(SizeError::Zero));
        assert_eq!(parse_size("99999999999999999999"), Err(SizeError::TooLarge));
        assert_eq!(parse_size("17179869184Gi"), Err(SizeError::TooLarge));
        let message = format!("{}", SizeError::UnknownSuffix);
        assert!(message.contains("512Mi"), "{message}");
    }

    #[test]
    fn modes_and_scopes() {
        assert_eq!(Mode::parse("enforce"), Some(Mode::Enforce));
        assert_eq!(Mode::parse(" Report "), Some(Mode::Report));
        assert_eq!(Mode::parse("OFF"), Some(Mode::Off));
        assert_eq!(Mode::parse("on"), None);
        assert_eq!(Mode::from_raw(Mode::Report as u32), Some(Mode::Report));
        assert_eq!(Mode::from_raw(0), None);
        assert_eq!(RefuseScope::parse("all"), Some(RefuseScope::All));
        assert_eq!(RefuseScope::parse("backends"), Some(RefuseScope::Backends));
        assert_eq!(RefuseScope::parse(" Jobs "), Some(RefuseScope::Jobs));
        for bad in [&b""[..], b".", b"..", b"../x", b"a/b", &[b'x'; 201]] {
            assert!(!domain_is_valid(bad), "{bad:?}");
        }
        assert!(domain_is_valid(b"oomguard-pg-main"));
        assert_eq!(RefuseScope::parse("everyone"), None);
    }
}
