//! Property tests of every input the core reads from outside the program: the `OOM_GUARD_*`
//! values (`config`, `limit::Reserve`), byte counts as printed (`units`), `/proc/PID/stat`
//! (`procstat`), a background worker's `bgw_type`, the budget's packed word, the cgroup v1/v2
//! interface files, `/proc/self/cgroup`, `/proc/self/mountinfo`
//! and `/proc/meminfo` (`cgroup`, read through an in-memory [`FileSystem`] defined here), and
//! shared segment files (`layout::SegmentView`).
//!
//! Each property states, for arbitrary or mutated input, that the code never panics, that what it
//! accepts is exactly what is valid (with the value the input spells), and that what it rejects is
//! rejected by a non-empty error that names the accepted forms or the file at fault. Well-formed
//! inputs are generated from the numbers they must parse to. Case counts are kept modest so the
//! whole file runs in a few seconds.

use std::collections::BTreeMap;
use std::mem::offset_of;

use oomguard_core::budget::{Budget, BudgetError, BudgetWord};
use oomguard_core::cgroup::paths::{find_mount, read_membership, Membership};
use oomguard_core::cgroup::{
    own_cgroup, v1, v2, Cgroup, CgroupError, CgroupPath, FileId, Level, LimitSource, Version,
};
use oomguard_core::config::{
    limit_is_auto, parse_size, SizeError, MODE_FORMS, REFUSE_FORMS, SIZE_FORMS,
};
use oomguard_core::fs::{FileSystem, ReadError, ReadFile};
use oomguard_core::layout::{
    initialise, segment_size, Header, LayoutError, Line, SegmentView, Slot, LAYOUT_VERSION, MAGIC,
    MAX_REFUSAL_RECORDS,
};
use oomguard_core::limit::{Reserve, ReserveError, MAX_RESERVE_PERCENT, RESERVE_FORMS};
use oomguard_core::procstat::{owner_alive, owner_gone, start_ticks};
use oomguard_core::units::Bytes;
use oomguard_core::ProcessKind;
use oomguard_core::{Mode, RefuseScope};
use proptest::prelude::*;

/// `cases` cases, no regression files written into the source tree (a failing case is kept as
/// a plain regression test instead).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// OOM_GUARD_LIMIT and OOM_GUARD_SHARED_MEMORY: sizes
// ---------------------------------------------------------------------------------------------

/// The accepted size suffixes and their multipliers (the README's "Configuration").
const SUFFIXES: [(&str, u64); 17] = [
    ("", 1),
    ("Ki", 1 << 10),
    ("KiB", 1 << 10),
    ("Mi", 1 << 20),
    ("MiB", 1 << 20),
    ("Gi", 1 << 30),
    ("GiB", 1 << 30),
    ("Ti", 1 << 40),
    ("TiB", 1 << 40),
    ("k", 1_000),
    ("K", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    // Repeated on purpose so that plain numbers and `Gi` are drawn more often.
    ("", 1),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
];

/// Suffixes rejected as ambiguous (binary in PostgreSQL, decimal in Kubernetes).
const AMBIGUOUS: [&str; 5] = ["kB", "KB", "MB", "GB", "TB"];

fn multiplier(suffix: &str) -> Option<u64> {
    SUFFIXES
        .iter()
        .find(|(name, _)| *name == suffix)
        .map(|&(_, m)| m)
}

/// The value of a run of ASCII digits, `None` beyond 128 bits or for anything but digits.
fn digits_value(digits: &str) -> Option<u128> {
    digits.bytes().try_fold(0u128, |n, b| {
        let digit = b.is_ascii_digit().then(|| u128::from(b - b'0'))?;
        n.checked_mul(10)?.checked_add(digit)
    })
}

/// Size-like text: blanks, digits (sometimes too many) and a suffix that may or may not be valid.
fn size_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ \t\n]{0,2}[0-9]{0,24}(|Ki|KiB|Mi|MiB|Gi|GiB|Ti|TiB|k|K|M|G|T|kB|KB|MB|GB|TB|gi|Gb|B|b|\
         \\.5|\\.5Gi|%|e3| Gi|Gi |Pi|Ei|-)[ \t\r\n]{0,2}",
        "[-+ ]?[0-9]{1,3}[^0-9]{0,3}",
        (any::<u64>(), 0..SUFFIXES.len()).prop_map(|(n, i)| format!("{n}{}", SUFFIXES[i].0)),
    ]
}

/// Whether a rejection reason is justified by the text, and an acceptance by its value.
fn check_size(text: &str, parsed: Result<u64, SizeError>) -> Result<(), TestCaseError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(split);
    let number = digits_value(digits.trim_start_matches('0'));
    match parsed {
        Ok(bytes) => {
            let m = multiplier(suffix);
            prop_assert!(
                !digits.is_empty() && m.is_some(),
                "{text:?} accepted as {bytes} but is not digits + a known suffix"
            );
            let expected = number.and_then(|n| n.checked_mul(u128::from(m.unwrap())));
            prop_assert_eq!(Some(u128::from(bytes)), expected, "{:?}", text);
            prop_assert!(bytes > 0);
        }
        Err(error) => {
            let justified = match error {
                SizeError::Empty => trimmed.is_empty(),
                SizeError::NotANumber => digits.is_empty() || suffix.starts_with('.'),
                SizeError::AmbiguousSuffix => !digits.is_empty() && AMBIGUOUS.contains(&suffix),
                SizeError::UnknownSuffix => {
                    !digits.is_empty()
                        && multiplier(suffix).is_none()
                        && !AMBIGUOUS.contains(&suffix)
                        && !suffix.starts_with('.')
                }
                SizeError::TooLarge => match (number, multiplier(suffix)) {
                    (None, _) => true,
                    (Some(n), m) => {
                        n > u128::from(u64::MAX)
                            || n * u128::from(m.unwrap_or(1)) > u128::from(u64::MAX)
                    }
                },
                SizeError::Zero => {
                    !digits.is_empty() && number == Some(0) && multiplier(suffix).is_some()
                }
            };
            prop_assert!(justified, "{text:?} rejected as {error:?}");
            let message = error.to_string();
            prop_assert!(!error.reason().is_empty());
            prop_assert!(message.starts_with(error.reason()), "{message}");
            prop_assert!(message.contains(SIZE_FORMS), "{message}");
            prop_assert!(!message.contains('\n'), "{message}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(1024))]

    /// Any text: a value that the text spells, or a reason that the text justifies, whose message
    /// lists the accepted forms.
    #[test]
    fn sizes_accept_exactly_the_valid_forms(text in size_like()) {
        check_size(&text, parse_size(&text))?;
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// `N`, `NKi` … `NTiB`, `Nk` … `NT`, with blanks around: N × the unit, or too large.
    #[test]
    fn valid_sizes_round_trip(
        n in prop_oneof![1u64..=4096, 1u64..=u64::MAX / (1 << 40), any::<u64>()],
        suffix in 0..SUFFIXES.len(),
        before in "[ \t]{0,2}",
        after in "[ \t\r\n]{0,2}",
    ) {
        let (name, m) = SUFFIXES[suffix];
        let text = format!("{before}{n}{name}{after}");
        match n.checked_mul(m) {
            Some(bytes) => prop_assert_eq!(parse_size(&text), Ok(bytes), "{:?}", text),
            None => prop_assert_eq!(parse_size(&text), Err(SizeError::TooLarge), "{:?}", text),
        }
        // Leading zeros change nothing.
        prop_assert_eq!(parse_size(&format!("00{n}{name}")), parse_size(&text));
    }

    /// `GB` and friends are refused as ambiguous, whatever the number, with advice.
    #[test]
    fn ambiguous_suffixes_are_refused(n in 1u64..1 << 20, suffix in 0..AMBIGUOUS.len()) {
        let text = format!("{n}{}", AMBIGUOUS[suffix]);
        let error = parse_size(&text).unwrap_err();
        prop_assert_eq!(error, SizeError::AmbiguousSuffix);
        prop_assert!(error.to_string().contains("write Gi or G"), "{}", error);
    }

    /// `auto`, `AUTO`, blanks or nothing ask for the derived limit; nothing else does.
    #[test]
    fn auto_is_auto_in_any_case(text in prop_oneof![any::<String>(), "[ \t]{0,2}[aAuUtToO]{0,5}[ \t]{0,2}"]) {
        let t = text.trim();
        prop_assert_eq!(limit_is_auto(&text), t.is_empty() || t.eq_ignore_ascii_case("auto"));
        if limit_is_auto(&text) {
            prop_assert!(parse_size(&text).is_err(), "auto must not also be a size");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// OOM_GUARD_MODE, OOM_GUARD_REFUSE, OOM_GUARD_RESERVE
// ---------------------------------------------------------------------------------------------

/// A word in random letter case with blanks around it.
fn spelled(words: &'static [&'static str]) -> impl Strategy<Value = String> {
    (0..words.len(), any::<u64>(), "[ \t\n]{0,2}", "[ \t\n]{0,2}").prop_map(
        move |(i, case_bits, before, after)| {
            let word: String = words[i]
                .chars()
                .enumerate()
                .map(|(k, c)| {
                    if case_bits >> (k % 64) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            format!("{before}{word}{after}")
        },
    )
}

const WORDS: &[&str] = &[
    "enforce", "report", "off", "backends", "all", "on", "none", "enforced", "backend", "",
];

proptest! {
    #![proptest_config(config(512))]

    /// A mode is `enforce`, `report` or `off` in any case with blanks around, and nothing else.
    #[test]
    fn modes_are_exactly_the_three_names(text in prop_oneof![any::<String>(), spelled(WORDS)]) {
        let expected = match text.trim().to_ascii_lowercase().as_str() {
            "enforce" => Some(Mode::Enforce),
            "report" => Some(Mode::Report),
            "off" => Some(Mode::Off),
            _ => None,
        };
        prop_assert_eq!(Mode::parse(&text), expected, "{:?}", text);
        if let Some(mode) = expected {
            prop_assert_eq!(Mode::parse(mode.name()), Some(mode));
            prop_assert_eq!(Mode::from_raw(mode as u32), Some(mode));
        }
    }

    /// A refusal scope is `backends` or `all`, and nothing else.
    #[test]
    fn refusal_scopes_are_exactly_the_two_names(text in prop_oneof![any::<String>(), spelled(WORDS)]) {
        let expected = match text.trim().to_ascii_lowercase().as_str() {
            "backends" => Some(RefuseScope::Backends),
            "all" => Some(RefuseScope::All),
            _ => None,
        };
        prop_assert_eq!(RefuseScope::parse(&text), expected, "{:?}", text);
    }

    /// Any raw header value decodes to a mode only for the three stored values.
    #[test]
    fn raw_modes(raw in any::<u32>()) {
        let mode = Mode::from_raw(raw);
        prop_assert_eq!(mode.is_some(), (1..=3).contains(&raw));
        if let Some(mode) = mode {
            prop_assert_eq!(mode as u32, raw);
            prop_assert!(MODE_FORMS.contains(mode.name()));
        }
    }

    /// A reserve is `P%` with P a whole number from 0 to 90, or a size exactly as `parse_size`
    /// reads it; a rejection names the accepted forms.
    #[test]
    fn reserves_accept_exactly_the_valid_forms(
        text in prop_oneof![
            size_like(),
            "[ \t]{0,2}[-+]?[0-9]{0,4}(\\.5)?[ \t]{0,1}%[ \t]{0,2}",
            (0u32..200).prop_map(|p| format!("{p}%")),
        ]
    ) {
        let parsed = Reserve::parse(&text);
        let trimmed = text.trim();
        if let Some(number) = trimmed.strip_suffix('%') {
            let number = number.trim();
            let valid = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
            let value = digits_value(number.trim_start_matches('0'));
            match parsed {
                Ok(Reserve::Percent(p)) => {
                    prop_assert!(valid, "{text:?} accepted as {p}%");
                    prop_assert_eq!(Some(u128::from(p)), value);
                    prop_assert!(p <= MAX_RESERVE_PERCENT);
                }
                Ok(other) => prop_assert!(false, "{text:?} read as {other:?}"),
                Err(error) => {
                    prop_assert_eq!(error, ReserveError::Percent);
                    prop_assert!(!valid || value.is_none_or(|v| v > u128::from(MAX_RESERVE_PERCENT)), "{:?}", text);
                }
            }
        } else {
            prop_assert_eq!(
                parsed,
                parse_size(&text).map(Reserve::Bytes).map_err(ReserveError::Size)
            );
        }
        if let Err(error) = parsed {
            let message = error.to_string();
            prop_assert!(message.starts_with(error.reason()) && !error.reason().is_empty());
            prop_assert!(message.contains(RESERVE_FORMS), "{message}");
            prop_assert!(message.contains("0% to 90%"), "{message}");
        }
    }
}

/// Found by `reserves_accept_exactly_the_valid_forms`: `u32::from_str` takes a leading `+`, so
/// `+15%` was read as 15% while `+1Gi` is not a size.
#[test]
fn a_signed_percentage_is_not_a_reserve() {
    assert_eq!(Reserve::parse("+15%"), Err(ReserveError::Percent));
    assert_eq!(Reserve::parse("-0%"), Err(ReserveError::Percent));
    assert_eq!(Reserve::parse(" 15 % "), Ok(Reserve::Percent(15)));
}

#[test]
fn the_forms_quoted_by_errors_name_every_accepted_value() {
    for name in ["enforce", "report", "off"] {
        assert!(MODE_FORMS.contains(name), "{MODE_FORMS}");
    }
    for name in ["backends", "all"] {
        assert!(REFUSE_FORMS.contains(name), "{REFUSE_FORMS}");
    }
    for example in ["1073741824", "512Mi", "512MiB", "1Gi", "1G"] {
        assert!(SIZE_FORMS.contains(example), "{SIZE_FORMS}");
        assert!(parse_size(example).is_ok(), "{example}");
    }
}

// ---------------------------------------------------------------------------------------------
// Byte counts as printed
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    /// Any byte count prints as `[-]N B` or `[-]N.D KiB|MiB|GiB`, in the largest unit it reaches,
    /// rounded to the nearest tenth.
    #[test]
    fn byte_counts_print_in_the_largest_unit(value in prop_oneof![any::<i64>(), -5000i64..5000, Just(i64::MIN)]) {
        let text = Bytes(value).to_string();
        let (number, unit) = text.split_once(' ').unwrap();
        let negative = number.starts_with('-');
        prop_assert_eq!(negative, value < 0, "{}", text);
        let number = number.trim_start_matches('-');
        let magnitude = u128::from(value.unsigned_abs());
        let size: u128 = match unit {
            "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => return Err(TestCaseError::fail(format!("unit {other:?} in {text:?}"))),
        };
        let lower = if size == 1 { 0 } else { size };
        let upper = if size == 1 << 30 { u128::MAX } else { size.max(1 << 10) << if size == 1 { 0 } else { 10 } };
        prop_assert!(lower <= magnitude && magnitude < upper, "{}", text);
        if size == 1 {
            prop_assert_eq!(number.parse::<u128>().ok(), Some(magnitude), "{}", text);
        } else {
            let (whole, tenth) = number.split_once('.').unwrap();
            prop_assert_eq!(tenth.len(), 1, "{}", text);
            let tenths = whole.parse::<u128>().unwrap() * 10 + tenth.parse::<u128>().unwrap();
            // |tenths × size − 10 × magnitude| ≤ size / 2: rounded, not cut.
            let diff = (tenths * size).abs_diff(10 * magnitude);
            prop_assert!(2 * diff <= size, "{} for {}", text, value);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// An in-memory file system
// ---------------------------------------------------------------------------------------------

/// What a path holds in [`MemFs`].
#[derive(Debug, Clone)]
enum Entry {
    /// A readable file.
    Text(Vec<u8>),
    /// A file that cannot be opened (`EACCES`, `EOPNOTSUPP`, …).
    Unreadable(i32),
    /// A file whose read fails with `EIO` after this many bytes.
    FailsAfter(Vec<u8>, usize),
}

/// Files by absolute path; missing paths are [`ReadError::Missing`]. Reads hand out at most
/// `chunk` bytes at a time, as a kernel `seq_file` may.
#[derive(Debug, Clone)]
struct MemFs {
    files: BTreeMap<Vec<u8>, Entry>,
    chunk: usize,
}

struct MemFile {
    text: Vec<u8>,
    at: usize,
    fail_at: Option<usize>,
    chunk: usize,
}

impl ReadFile for MemFile {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let end = self.fail_at.unwrap_or(usize::MAX).min(self.text.len());
        if self.at >= end && self.fail_at.is_some_and(|f| f <= self.text.len()) {
            return Err(ReadError::Unreadable { errno: 5 });
        }
        let n = buf.len().min(self.chunk.max(1)).min(end - self.at);
        buf[..n].copy_from_slice(&self.text[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl FileSystem for MemFs {
    type File = MemFile;

    fn open(&self, path: &[u8]) -> Result<MemFile, ReadError> {
        let (text, fail_at) = match self.files.get(path) {
            None => return Err(ReadError::Missing),
            Some(Entry::Unreadable(errno)) => return Err(ReadError::Unreadable { errno: *errno }),
            Some(Entry::Text(text)) => (text.clone(), None),
            Some(Entry::FailsAfter(text, at)) => (text.clone(), Some(*at)),
        };
        Ok(MemFile {
            text,
            at: 0,
            fail_at,
            chunk: self.chunk,
        })
    }
}

impl MemFs {
    fn new(files: &[(&str, &[u8])]) -> MemFs {
        MemFs {
            files: files
                .iter()
                .map(|(p, t)| (p.as_bytes().to_vec(), Entry::Text(t.to_vec())))
                .collect(),
            chunk: usize::MAX,
        }
    }

    fn with(mut self, path: &str, text: impl Into<Vec<u8>>) -> MemFs {
        self.files
            .insert(path.as_bytes().to_vec(), Entry::Text(text.into()));
        self
    }
}

/// Arbitrary bytes, or lines of tokens that kernel files are made of (so that parsers get past
/// their first check), or one line longer than any scan buffer.
fn file_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(&b"max"[..]),
        Just(&b"anon"[..]),
        Just(&b"file"[..]),
        Just(&b"shmem"[..]),
        Just(&b"some"[..]),
        Just(&b"full"[..]),
        Just(&b"total="[..]),
        Just(&b"MemTotal:"[..]),
        Just(&b"kB"[..]),
        Just(&b"memory"[..]),
        Just(&b"cgroup2"[..]),
        Just(&b"cgroup"[..]),
        Just(&b"-"[..]),
        Just(&b"0::/"[..]),
        Just(&b":"[..]),
        Just(&b"/"[..]),
        Just(&b"\\040"[..]),
        Just(&b"\\"[..]),
        Just(&b"18446744073709551615"[..]),
        Just(&b"18446744073709551616"[..]),
        Just(&b"9223372036854771712"[..]),
        Just(&b"0"[..]),
        Just(&b"4096"[..]),
        Just(&b" "[..]),
        Just(&b"\t"[..]),
        Just(&b"\n"[..]),
        Just(&b"\xff"[..]),
        Just(&b"\0"[..]),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..700),
        proptest::collection::vec(token, 0..80).prop_map(|tokens| tokens.concat()),
        (1usize..9000, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
    ]
}

/// Every file name the readers open.
const CGROUP_FILES: [&str; 11] = [
    "cgroup.controllers",
    "memory.max",
    "memory.current",
    "memory.stat",
    "memory.events",
    "memory.pressure",
    "memory.limit_in_bytes",
    "memory.usage_in_bytes",
    "memory.failcnt",
    "memory.oom_control",
    "memory.stat",
];

/// The file an error names, if it names one: `/proc/…` paths as they are, cgroup files as their
/// path below `cgroup_dir` (our cgroup's directory) and the level the error gives.
fn named_file(error: &CgroupError, cgroup_dir: &str) -> Option<String> {
    let file = match error {
        CgroupError::Missing(file)
        | CgroupError::Unreadable { file, .. }
        | CgroupError::Garbage { file, .. }
        | CgroupError::Incomplete { file, .. } => *file,
        _ => return None,
    };
    Some(match file {
        FileId::ProcSelfCgroup => "/proc/self/cgroup".to_string(),
        FileId::ProcSelfMountinfo => "/proc/self/mountinfo".to_string(),
        FileId::ProcMeminfo => "/proc/meminfo".to_string(),
        FileId::Cgroup { name, up } => {
            let mut dir = CgroupPath::new(cgroup_dir.as_bytes()).unwrap();
            for _ in 0..up {
                dir.pop();
            }
            String::from_utf8(dir.join(name.as_bytes()).unwrap().as_bytes().to_vec()).unwrap()
        }
    })
}

/// Checks an error's message: one non-empty line that names its file (with the level for cgroup
/// files) and, for garbage, the line number.
fn check_message(error: &CgroupError) -> Result<(), TestCaseError> {
    let message = error.to_string();
    prop_assert!(!message.is_empty());
    prop_assert!(!message.contains('\n'), "{message}");
    let named = match error {
        CgroupError::Missing(file)
        | CgroupError::Unreadable { file, .. }
        | CgroupError::Garbage { file, .. }
        | CgroupError::Incomplete { file, .. } => file,
        _ => return Ok(()),
    };
    let (name, level) = match *named {
        FileId::Cgroup { name, up: 0 } => (name, "of our cgroup".to_string()),
        FileId::Cgroup { name, up: 1 } => (name, "of our parent cgroup".to_string()),
        FileId::Cgroup { name, up } => (name, format!("{up} levels above")),
        FileId::ProcSelfCgroup => ("/proc/self/cgroup", String::new()),
        FileId::ProcSelfMountinfo => ("/proc/self/mountinfo", String::new()),
        FileId::ProcMeminfo => ("/proc/meminfo", String::new()),
    };
    prop_assert!(message.contains(name), "{message} does not name {name}");
    prop_assert!(message.contains(&level), "{message} does not say {level:?}");
    if let CgroupError::Garbage { line, .. } = error {
        prop_assert!(message.contains(&format!("line {line}")), "{message}");
    }
    Ok(())
}

/// Checks an error from reading files: a clear message, and if it names a file, one whose name
/// (last component, or `/proc/…` path) is in `allowed`.
fn check_error(error: &CgroupError, allowed: &[&str]) -> Result<(), TestCaseError> {
    check_message(error)?;
    if let Some(path) = named_file(error, DIR) {
        let name = if path.starts_with("/proc/") {
            path.as_str()
        } else {
            path.rsplit('/').next().unwrap()
        };
        prop_assert!(
            allowed.contains(&name),
            "{error}: names {name}, not one of {allowed:?}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Single cgroup files: anything read gives a value or an error naming the file
// ---------------------------------------------------------------------------------------------

const DIR: &str = "/c";
const HERE: Level<'static> = Level { dir: b"/c", up: 0 };

/// A file system with every cgroup file, `/proc/self/cgroup`, `mountinfo` and `meminfo` holding
/// `text`.
fn uniform(text: &[u8], chunk: usize) -> MemFs {
    let mut fs = MemFs::new(&[]);
    fs.chunk = chunk;
    for name in CGROUP_FILES {
        fs = fs.with(&format!("{DIR}/{name}"), text);
    }
    for path in ["/proc/self/cgroup", "/proc/self/mountinfo", "/proc/meminfo"] {
        fs = fs.with(path, text);
    }
    fs
}

proptest! {
    #![proptest_config(config(512))]

    /// Every reader, on any bytes and any read chunking: a value or an error naming its file.
    #[test]
    fn every_reader_survives_any_bytes(text in file_bytes(), chunk in 1usize..600) {
        let fs = uniform(&text, chunk);
        let whole = uniform(&text, usize::MAX);
        macro_rules! each {
            ($name:literal, $read:expr) => {{
                let read = |fs: &MemFs| $read(fs);
                let result = read(&fs);
                if let Err(error) = &result {
                    check_error(error, &[$name])?;
                }
                // How the kernel hands out the text must not change what is read from it.
                prop_assert_eq!(&result, &read(&whole), "{} read in chunks of {}", $name, chunk);
            }};
        }
        each!("memory.max", |fs: &MemFs| v2::read_max(fs, HERE));
        each!("memory.current", |fs: &MemFs| v2::read_current(fs, HERE));
        each!("memory.stat", |fs: &MemFs| v2::read_stat(fs, HERE));
        each!("memory.events", |fs: &MemFs| v2::read_events(fs, HERE));
        each!("memory.pressure", |fs: &MemFs| v2::read_pressure(fs, HERE));
        each!("cgroup.controllers", |fs: &MemFs| v2::read_controllers_has_memory(fs, HERE));
        each!("memory.limit_in_bytes", |fs: &MemFs| v1::read_limit_in_bytes(fs, HERE));
        each!("memory.usage_in_bytes", |fs: &MemFs| v1::read_usage_in_bytes(fs, HERE));
        each!("memory.failcnt", |fs: &MemFs| v1::read_failcnt(fs, HERE));
        each!("memory.stat", |fs: &MemFs| v1::read_stat(fs, HERE));
        each!("memory.oom_control", |fs: &MemFs| v1::read_oom_control(fs, HERE));
        each!("/proc/self/cgroup", |fs: &MemFs| read_membership(fs));
        for version in [Version::V1, Version::V2] {
            let membership = Membership { version, path: CgroupPath::new(b"/a/b").unwrap() };
            each!("/proc/self/mountinfo", |fs: &MemFs| find_mount(fs, &membership));
            // Our cgroup at `/c` (its parent is `/`), and its effective limit.
            let at = |fs: &MemFs| Cgroup::at(fs, version, b"/", b"c")
                .and_then(|cgroup| cgroup.effective_limit(fs).map(|limit| (cgroup, limit)));
            let result = at(&fs);
            if let Err(error) = &result {
                check_error(error, &[
                    "cgroup.controllers", "memory.max", "memory.limit_in_bytes", "memory.stat",
                    "/proc/meminfo",
                ])?;
            }
            prop_assert_eq!(&result, &at(&whole));
        }
        // The whole discovery on a tree of garbage: errors, never a panic.
        if let Err(error) = own_cgroup(&fs).and_then(|cgroup| cgroup.snapshot(&fs)) {
            check_error(&error, &[
                "/proc/self/cgroup", "/proc/self/mountinfo", "/proc/meminfo",
                "cgroup.controllers", "memory.max", "memory.current", "memory.stat",
                "memory.events", "memory.pressure", "memory.limit_in_bytes",
                "memory.usage_in_bytes", "memory.failcnt", "memory.oom_control",
            ])?;
        }
    }

    /// One-number files (`memory.max`, `memory.current`, v1 limit/usage/failcnt): the number
    /// written, with the kernel's blanks; `max` and v1's huge values mean no limit.
    #[test]
    fn single_numbers_parse_to_the_number_written(
        n in prop_oneof![any::<u64>(), 0u64..1 << 40, Just(9_223_372_036_854_771_712u64)],
        before in "[ \t]{0,2}",
        after in "[ \t]{0,2}(\n|\n\n|)",
        chunk in 1usize..64,
    ) {
        let text = format!("{before}{n}{after}");
        let mut fs = uniform(text.as_bytes(), chunk);
        prop_assert_eq!(v2::read_max(&fs, HERE), Ok(Some(n)));
        prop_assert_eq!(v2::read_current(&fs, HERE), Ok(n));
        prop_assert_eq!(v1::read_usage_in_bytes(&fs, HERE), Ok(n));
        prop_assert_eq!(v1::read_failcnt(&fs, HERE), Ok(n));
        let unlimited = n >= v1::UNLIMITED_FROM;
        prop_assert_eq!(v1::read_limit_in_bytes(&fs, HERE), Ok((!unlimited).then_some(n)));
        fs = fs.with("/c/memory.max", format!("{before}max{after}"));
        prop_assert_eq!(v2::read_max(&fs, HERE), Ok(None));
        // A second value, a sign or a unit is garbage, not a number.
        for bad in [format!("{n}\n{n}\n"), format!("-{n}\n"), format!("{n}k\n"), format!("{n} {n}\n")] {
            let fs = uniform(bad.as_bytes(), chunk);
            prop_assert!(matches!(v2::read_current(&fs, HERE), Err(CgroupError::Garbage { .. })), "{:?}", bad);
        }
    }
}

/// A `key value` file's lines in the kernel's format, the `known` ones and unknown ones, in
/// shuffled order.
fn key_lines(
    known: Vec<(&'static str, u64)>,
    extra: Vec<(String, u64)>,
) -> impl Strategy<Value = String> {
    let mut lines: Vec<String> = known.iter().map(|(k, v)| format!("{k} {v}")).collect();
    lines.extend(extra.iter().map(|(k, v)| format!("{k} {v}")));
    Just(lines)
        .prop_shuffle()
        .prop_map(|lines| lines.iter().map(|l| format!("{l}\n")).collect())
}

fn unknown_keys() -> impl Strategy<Value = Vec<(String, u64)>> {
    proptest::collection::vec(("zz_[a-z_]{1,20}", any::<u64>()), 0..40)
}

proptest! {
    #![proptest_config(config(256))]

    /// v2 `memory.stat`: the generated numbers, whatever the order, chunking and unknown keys.
    #[test]
    fn v2_memory_stat_parses_to_the_generated_numbers(
        ((anon, file, shmem, pagetables), text) in (any::<(u64, u64, u64, u64)>(), unknown_keys())
            .prop_flat_map(|(n, extra)| {
                let known = vec![("anon", n.0), ("file", n.1), ("shmem", n.2), ("pagetables", n.3)];
                (Just(n), key_lines(known, extra))
            }),
        chunk in 1usize..700,
    ) {
        let mut fs = uniform(text.as_bytes(), chunk);
        let stat = v2::read_stat(&fs, HERE).unwrap();
        prop_assert_eq!((stat.anon, stat.file, stat.shmem, stat.pagetables), (anon, file, shmem, Some(pagetables)));
        prop_assert_eq!(stat.kernel, None);
        // Without a required key: an error naming the key.
        let without_shmem: String = text.lines().filter(|l| !l.starts_with("shmem ")).map(|l| format!("{l}\n")).collect();
        fs = fs.with("/c/memory.stat", without_shmem);
        let error = v2::read_stat(&fs, HERE).unwrap_err();
        prop_assert!(matches!(error, CgroupError::Incomplete { key: "shmem", .. }), "{:?}", error);
        prop_assert!(error.to_string().contains("memory.stat") && error.to_string().contains("shmem"));
    }

    /// v1 `memory.stat`: the generated numbers; a hierarchical limit ≥ 2^62 means none.
    #[test]
    fn v1_memory_stat_parses_to_the_generated_numbers(
        ((rss, cache, total_rss, total_cache, hierarchical), text) in (
            any::<(u64, u64, u64, u64)>(),
            prop_oneof![any::<u64>(), Just(9_223_372_036_854_771_712u64)],
            unknown_keys(),
        ).prop_flat_map(|(n, h, extra)| {
            let known = vec![
                ("rss", n.0), ("cache", n.1), ("total_rss", n.2),
                ("total_cache", n.3), ("hierarchical_memory_limit", h),
            ];
            (Just((n.0, n.1, n.2, n.3, h)), key_lines(known, extra))
        }),
        chunk in 1usize..700,
    ) {
        let fs = uniform(text.as_bytes(), chunk);
        let stat = v1::read_stat(&fs, HERE).unwrap();
        prop_assert_eq!((stat.rss, stat.cache, stat.total_rss, stat.total_cache), (rss, cache, total_rss, total_cache));
        prop_assert_eq!(stat.hierarchical_memory_limit, v1::limit_value(hierarchical));
        prop_assert_eq!(stat.total_shmem, None);
    }

    /// `memory.events` and v1 `memory.oom_control`: the generated counters.
    #[test]
    fn events_parse_to_the_generated_counters(
        ((low, high, max, oom, oom_kill, disable, under), text, control_text) in (
            any::<(u64, u64, u64, u64, u64)>(), 0u64..3, 0u64..3, unknown_keys(),
        ).prop_flat_map(|(n, disable, under, extra)| {
            let events = vec![("low", n.0), ("high", n.1), ("max", n.2), ("oom", n.3), ("oom_kill", n.4)];
            let control = vec![("oom_kill_disable", disable), ("under_oom", under), ("oom_kill", n.4)];
            (
                Just((n.0, n.1, n.2, n.3, n.4, disable, under)),
                key_lines(events, extra.clone()),
                key_lines(control, extra),
            )
        }),
    ) {
        let events = v2::read_events(&uniform(text.as_bytes(), 7), HERE).unwrap();
        prop_assert_eq!(
            (events.low, events.high, events.max, events.oom, events.oom_kill, events.oom_group_kill),
            (low, high, max, oom, oom_kill, None)
        );
        let control = v1::read_oom_control(&uniform(control_text.as_bytes(), 5), HERE).unwrap();
        prop_assert_eq!(
            (control.oom_kill_disable, control.under_oom, control.oom_kill),
            (disable != 0, under != 0, Some(oom_kill))
        );
    }

    /// `memory.pressure`: the `total=` of the `some` and `full` lines.
    #[test]
    fn pressure_parses_to_the_generated_totals(
        some in any::<u64>(),
        full in proptest::option::of(any::<u64>()),
        avg in "[0-9]{1,3}\\.[0-9]{2}",
        chunk in 1usize..100,
    ) {
        let mut text = format!("some avg10={avg} avg60=0.00 avg300=0.00 total={some}\n");
        if let Some(full) = full {
            text.push_str(&format!("full avg10=0.00 avg60={avg} avg300=0.00 total={full}\n"));
        }
        let pressure = v2::read_pressure(&uniform(text.as_bytes(), chunk), HERE).unwrap();
        prop_assert_eq!((pressure.some_us, pressure.full_us), (some, full));
    }

    /// `cgroup.controllers`: whether `memory` is one of the listed controllers.
    #[test]
    fn controllers_list_memory_or_not(
        names in proptest::collection::vec(prop_oneof![
            Just("cpu"), Just("io"), Just("memory"), Just("pids"), Just("memoryx"), Just("hugetlb")
        ], 0..6),
    ) {
        let text = format!("{}\n", names.join(" "));
        let has = v2::read_controllers_has_memory(&uniform(text.as_bytes(), 3), HERE).unwrap();
        prop_assert_eq!(has, names.contains(&"memory"));
    }
}

// ---------------------------------------------------------------------------------------------
// /proc/self/cgroup, /proc/self/mountinfo, /proc/meminfo
// ---------------------------------------------------------------------------------------------

/// A cgroup path of 0 to 5 components, as the kernel prints it (always absolute).
fn cgroup_path() -> impl Strategy<Value = String> {
    proptest::collection::vec("[a-zA-Z0-9_.@-]{1,16}", 0..5)
        .prop_map(|parts| format!("/{}", parts.join("/")))
}

/// A mount point whose components may hold blanks and backslashes, and its mountinfo escape.
fn mount_point() -> impl Strategy<Value = (String, String)> {
    proptest::collection::vec("[a-z0-9 \t\\\\]{1,10}", 1..4).prop_map(|parts| {
        let plain = format!("/{}", parts.join("/"));
        let escaped = plain
            .replace('\\', "\\134")
            .replace(' ', "\\040")
            .replace('\t', "\\011");
        (plain, escaped)
    })
}

proptest! {
    #![proptest_config(config(256))]

    /// `/proc/self/cgroup`: the memory controller's v1 line wins over the v2 line; the path is
    /// the one written.
    #[test]
    fn membership_is_the_memory_line(
        v2_path in proptest::option::of(cgroup_path()),
        v1_path in proptest::option::of(cgroup_path()),
        others in proptest::collection::vec((1u32..14, "(cpu|cpu,cpuacct|pids|blkio|name=systemd)", cgroup_path()), 0..6),
        controllers in "(memory|memory,hugetlb|cpuset,memory)",
        chunk in 1usize..64,
    ) {
        let mut lines: Vec<String> = others.iter().map(|(id, c, p)| format!("{id}:{c}:{p}")).collect();
        if let Some(path) = &v1_path {
            lines.insert(lines.len() / 2, format!("7:{controllers}:{path}"));
        }
        if let Some(path) = &v2_path {
            lines.push(format!("0::{path}"));
        }
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let mut fs = MemFs::new(&[]).with("/proc/self/cgroup", text);
        fs.chunk = chunk;
        let result = read_membership(&fs);
        match (&v1_path, &v2_path) {
            (Some(path), _) => prop_assert_eq!(result, Ok(Membership { version: Version::V1, path: CgroupPath::new(path.as_bytes()).unwrap() })),
            (None, Some(path)) => prop_assert_eq!(result, Ok(Membership { version: Version::V2, path: CgroupPath::new(path.as_bytes()).unwrap() })),
            (None, None) => prop_assert_eq!(result, Err(CgroupError::NoMemoryCgroup)),
        }
    }

    /// `/proc/self/mountinfo`: the cgroup mount that shows our cgroup, its escaped mount point
    /// decoded, among other mounts; the shortest root wins.
    #[test]
    fn the_cgroup_mount_is_found_and_decoded(
        (mount, escaped) in mount_point(),
        (other_mount, other_escaped) in mount_point(),
        own in cgroup_path(),
        v1 in any::<bool>(),
        noise in proptest::collection::vec("[a-z]{1,8}", 0..6),
        chunk in 1usize..200,
    ) {
        let (version, fs_type, options) = if v1 {
            (Version::V1, "cgroup", "rw,memory")
        } else {
            (Version::V2, "cgroup2", "rw,nsdelegate")
        };
        let mut text = String::new();
        for (i, word) in noise.iter().enumerate() {
            text.push_str(&format!("{} 1 0:{i} / /{word} rw,relatime shared:{i} - tmpfs {word} rw\n", 100 + i));
        }
        // A mount of the same hierarchy at our own cgroup (a longer root when own is not `/`)…
        text.push_str(&format!("30 1 0:30 {own} {other_escaped} rw - {fs_type} cgroup {options}\n"));
        // …and one of the whole tree, which must win.
        text.push_str(&format!("31 1 0:31 / {escaped} rw,nosuid master:1 - {fs_type} cgroup {options}\n"));
        let mut fs = MemFs::new(&[]).with("/proc/self/mountinfo", text);
        fs.chunk = chunk;
        let membership = Membership { version, path: CgroupPath::new(own.as_bytes()).unwrap() };
        let found = find_mount(&fs, &membership).unwrap();
        let expected = if own == "/" { &other_mount } else { &mount };
        prop_assert_eq!(found.mount_point, CgroupPath::new(expected.as_bytes()).unwrap());
        // The other hierarchy's discovery finds no mount.
        let other = Membership { version: if v1 { Version::V2 } else { Version::V1 }, path: membership.path.clone() };
        prop_assert_eq!(find_mount(&fs, &other), Err(CgroupError::NotMounted(other.version)));
    }
}

// ---------------------------------------------------------------------------------------------
// Whole trees: discovery, limit and snapshot
// ---------------------------------------------------------------------------------------------

/// The numbers a generated tree holds.
#[derive(Debug, Clone)]
struct TreeNumbers {
    /// Limits of our cgroup, its parent and grandparent (`None`: `max` / unlimited).
    limits: [Option<u64>; 3],
    mem_total_kib: u64,
    usage: u64,
    anon: u64,
    shmem: u64,
    file: u64,
    max_events: u64,
    oom_kills: u64,
}

fn tree_numbers() -> impl Strategy<Value = TreeNumbers> {
    let limit = proptest::option::of(prop_oneof![1u64..1 << 40, 1u64..v1::UNLIMITED_FROM]);
    (
        [limit.clone(), limit.clone(), limit],
        1u64..=u64::MAX / 1024,
        any::<(u64, u64, u64, u64, u64, u64)>(),
    )
        .prop_map(
            |(limits, mem_total_kib, (usage, anon, shmem, file, max_events, oom_kills))| {
                TreeNumbers {
                    limits,
                    mem_total_kib,
                    usage,
                    anon,
                    shmem,
                    file,
                    max_events,
                    oom_kills,
                }
            },
        )
}

const V2_DIR: &str = "/sys/fs/cgroup/kubepods.slice/pod 1.slice/ctr.scope";
const V1_DIR: &str = "/sys/fs/cgroup/memory/docker/ctr";

/// A v2 tree in the host namespace (our cgroup three levels below the mount), or a v1 tree with
/// the whole memory hierarchy mounted, holding `n`.
fn tree(n: &TreeNumbers, version: Version) -> MemFs {
    let meminfo = format!(
        "MemTotal:       {} kB\nMemFree:        1 kB\n",
        n.mem_total_kib
    );
    let mut fs = MemFs::new(&[]).with("/proc/meminfo", meminfo);
    match version {
        Version::V2 => {
            fs = fs
                .with(
                    "/proc/self/cgroup",
                    "0::/kubepods.slice/pod 1.slice/ctr.scope\n",
                )
                .with(
                    "/proc/self/mountinfo",
                    "22 1 0:20 / /proc rw - proc proc rw\n\
                     30 22 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
                );
            let dirs = [
                V2_DIR.to_string(),
                "/sys/fs/cgroup/kubepods.slice/pod 1.slice".to_string(),
                "/sys/fs/cgroup/kubepods.slice".to_string(),
            ];
            for (dir, limit) in dirs.iter().zip(n.limits) {
                let max = limit.map_or("max".to_string(), |l| l.to_string());
                fs = fs
                    .with(&format!("{dir}/cgroup.controllers"), "cpu io memory pids\n")
                    .with(&format!("{dir}/memory.max"), format!("{max}\n"));
            }
            fs = fs
                .with(
                    "/sys/fs/cgroup/cgroup.controllers",
                    "cpuset cpu io memory\n",
                )
                .with(
                    &format!("{V2_DIR}/memory.current"),
                    format!("{}\n", n.usage),
                )
                .with(
                    &format!("{V2_DIR}/memory.stat"),
                    format!(
                        "anon {}\nfile {}\nkernel 0\nshmem {}\npgfault 1\n",
                        n.anon, n.file, n.shmem
                    ),
                )
                .with(
                    &format!("{V2_DIR}/memory.events"),
                    format!(
                        "low 0\nhigh 0\nmax {}\noom 0\noom_kill {}\n",
                        n.max_events, n.oom_kills
                    ),
                )
                .with(
                    &format!("{V2_DIR}/memory.pressure"),
                    "some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n",
                );
        }
        Version::V1 => {
            fs = fs
                .with(
                    "/proc/self/cgroup",
                    "12:pids:/docker/ctr\n7:memory:/docker/ctr\n0::/\n",
                )
                .with(
                    "/proc/self/mountinfo",
                    "30 22 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                     31 22 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
                );
            let dirs = [
                V1_DIR,
                "/sys/fs/cgroup/memory/docker",
                "/sys/fs/cgroup/memory",
            ];
            for (dir, limit) in dirs.iter().zip(n.limits) {
                let value = limit.unwrap_or(9_223_372_036_854_771_712);
                fs = fs.with(
                    &format!("{dir}/memory.limit_in_bytes"),
                    format!("{value}\n"),
                );
            }
            fs = fs
                .with(
                    &format!("{V1_DIR}/memory.usage_in_bytes"),
                    format!("{}\n", n.usage),
                )
                .with(
                    &format!("{V1_DIR}/memory.stat"),
                    format!(
                        "cache {0}\nrss {1}\nshmem {2}\nmapped_file 0\n\
                         hierarchical_memory_limit 9223372036854771712\n\
                         total_cache {0}\ntotal_rss {1}\ntotal_shmem {2}\n",
                        n.file, n.anon, n.shmem
                    ),
                )
                .with(
                    &format!("{V1_DIR}/memory.failcnt"),
                    format!("{}\n", n.max_events),
                )
                .with(
                    &format!("{V1_DIR}/memory.oom_control"),
                    format!(
                        "oom_kill_disable 0\nunder_oom 0\noom_kill {}\n",
                        n.oom_kills
                    ),
                );
        }
    }
    fs
}

/// How a file of a valid tree is damaged.
#[derive(Debug, Clone)]
enum Damage {
    Bytes(Vec<u8>),
    Missing,
    Unreadable(i32),
    FailsAfter(usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => file_bytes().prop_map(Damage::Bytes),
        1 => Just(Damage::Missing),
        1 => prop_oneof![Just(13), Just(95), Just(21)].prop_map(Damage::Unreadable),
        1 => (0usize..40).prop_map(Damage::FailsAfter),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// A well-formed tree reads back as the generated numbers: the smallest limit up the tree
    /// capped by MemTotal, usage, stat and events; independent of read chunking.
    #[test]
    fn well_formed_trees_read_as_generated(n in tree_numbers(), v1 in any::<bool>(), chunk in 1usize..300) {
        let version = if v1 { Version::V1 } else { Version::V2 };
        let mut fs = tree(&n, version);
        fs.chunk = chunk;
        let cgroup = own_cgroup(&fs).unwrap();
        prop_assert_eq!(cgroup.version(), version);
        prop_assert_eq!(cgroup.dir().as_bytes(), if v1 { V1_DIR } else { V2_DIR }.as_bytes());
        let snapshot = cgroup.snapshot(&fs).unwrap();
        let mem_total = n.mem_total_kib * 1024;
        let smallest = n.limits.iter().enumerate().filter_map(|(up, l)| l.map(|l| (l, up))).min_by_key(|&(l, up)| (l, up));
        let (bytes, source) = match smallest {
            Some((limit, up)) if limit <= mem_total => (limit, LimitSource::Cgroup { up: up as u16 }),
            _ => (mem_total, LimitSource::MemTotal),
        };
        prop_assert_eq!(snapshot.limit.bytes, bytes);
        prop_assert_eq!(snapshot.limit.source, source);
        prop_assert_eq!(snapshot.limit.cgroup_limit, smallest.map(|(l, _)| l));
        prop_assert_eq!(snapshot.limit.mem_total, mem_total);
        prop_assert_eq!(snapshot.usage, n.usage);
        prop_assert_eq!((snapshot.stat.anon, snapshot.stat.file, snapshot.stat.shmem), (n.anon, n.file, Some(n.shmem)));
        prop_assert_eq!(snapshot.events.max, n.max_events);
        prop_assert_eq!(snapshot.events.oom_kill, Some(n.oom_kills));
    }

    /// A well-formed tree with one file damaged: discovery, limit and snapshot never panic, and
    /// an error names the damaged file (or says what about it is wrong).
    #[test]
    fn one_damaged_file_is_reported_by_name(
        n in tree_numbers(),
        v1 in any::<bool>(),
        victim in any::<prop::sample::Index>(),
        damage in damage(),
        chunk in 1usize..300,
    ) {
        let version = if v1 { Version::V1 } else { Version::V2 };
        let mut fs = tree(&n, version);
        fs.chunk = chunk;
        let paths: Vec<Vec<u8>> = fs.files.keys().cloned().collect();
        let path = victim.get(&paths).clone();
        let original = match fs.files.get(&path) {
            Some(Entry::Text(text)) => text.clone(),
            _ => unreachable!(),
        };
        match &damage {
            Damage::Bytes(bytes) => { fs.files.insert(path.clone(), Entry::Text(bytes.clone())); }
            Damage::Missing => { fs.files.remove(&path); }
            Damage::Unreadable(errno) => { fs.files.insert(path.clone(), Entry::Unreadable(*errno)); }
            Damage::FailsAfter(at) => { fs.files.insert(path.clone(), Entry::FailsAfter(original, *at)); }
        }
        let damaged = String::from_utf8(path).unwrap();
        let dir = if v1 { V1_DIR } else { V2_DIR };
        if let Err(error) = own_cgroup(&fs).and_then(|cgroup| cgroup.snapshot(&fs)) {
            check_message(&error)?;
            // A damaged membership or mount table may point at another (missing) cgroup: any
            // clear error will do. Any other damaged file must be the one the error names.
            if !damaged.starts_with("/proc/self/") {
                prop_assert_eq!(named_file(&error, dir), Some(damaged), "{}", error);
            }
        }
    }
}

#[test]
fn a_tree_without_meminfo_or_with_a_zero_memtotal_is_an_error() {
    let n = TreeNumbers {
        limits: [Some(1 << 30), None, None],
        mem_total_kib: 1,
        usage: 0,
        anon: 0,
        shmem: 0,
        file: 0,
        max_events: 0,
        oom_kills: 0,
    };
    let fs = tree(&n, Version::V2).with("/proc/meminfo", "MemTotal: 0 kB\n");
    let cgroup = own_cgroup(&fs).unwrap();
    assert_eq!(
        cgroup.effective_limit(&fs),
        Err(CgroupError::Garbage {
            file: FileId::ProcMeminfo,
            line: 1
        })
    );
    let fs = fs.with(
        "/proc/meminfo",
        format!("MemTotal: {} kB\n", u64::MAX / 1024 + 1),
    );
    assert!(cgroup.effective_limit(&fs).is_err(), "MemTotal overflows");
}

// ---------------------------------------------------------------------------------------------
// /proc/PID/stat
// ---------------------------------------------------------------------------------------------

/// A `/proc/PID/stat` line: pid, command name (anything but NUL, parentheses and blanks
/// included), state, 18 numbers, start time, and more numbers.
fn stat_line() -> impl Strategy<Value = (Vec<u8>, u8, u64)> {
    (
        any::<i32>(),
        proptest::collection::vec(1u8..=255, 0..16),
        prop_oneof![
            Just(b'R'),
            Just(b'S'),
            Just(b'D'),
            Just(b'Z'),
            Just(b'T'),
            Just(b'X'),
            Just(b'I')
        ],
        proptest::collection::vec(any::<i64>(), 18),
        any::<u64>(),
        proptest::collection::vec(any::<u64>(), 0..30),
    )
        .prop_map(|(pid, comm, state, before, start, after)| {
            let mut line = format!("{pid} (").into_bytes();
            line.extend_from_slice(&comm);
            line.extend_from_slice(format!(") {} ", state as char).as_bytes());
            let numbers: Vec<String> = before
                .iter()
                .map(|n| n.to_string())
                .chain(std::iter::once(start.to_string()))
                .chain(after.iter().map(|n| n.to_string()))
                .collect();
            line.extend_from_slice(numbers.join(" ").as_bytes());
            line.push(b'\n');
            (line, state, start)
        })
}

proptest! {
    #![proptest_config(config(512))]

    /// Any bytes: no panic, and an unreadable line keeps the slot (never judged gone unless it
    /// says zombie).
    #[test]
    fn stat_lines_of_any_bytes(stat in file_bytes(), ticks in any::<u64>(), claimed in any::<u64>()) {
        let _ = start_ticks(&stat);
        let gone = owner_gone(&stat, ticks, claimed);
        if start_ticks(&stat).is_none() && !stat.contains(&b')') {
            prop_assert!(!gone, "no command name, no state: keep the slot");
        }
    }

    /// A well-formed line gives its start time, whatever the command name holds; a zombie is
    /// gone, a process started after the claim is another one.
    #[test]
    fn stat_lines_give_field_22((line, state, start) in stat_line(), ticks in 1u64..10_000) {
        prop_assert_eq!(start_ticks(&line), Some(start));
        let tick_ns = 1_000_000_000 / ticks;
        let started_ns = start.saturating_mul(tick_ns);
        let zombie = matches!(state, b'Z' | b'X');
        prop_assert_eq!(owner_gone(&line, ticks, started_ns), zombie, "claimed when it started");
        if started_ns > 2 * tick_ns {
            prop_assert!(owner_gone(&line, ticks, started_ns - 2 * tick_ns), "started after the claim");
        }
    }

    /// `owner_alive` reads `/proc/PID/stat` for any pid through the file system and agrees with
    /// `owner_gone`; negative pids and unreadable or overlong files keep the slot.
    #[test]
    fn owner_alive_reads_the_right_file(
        pid in any::<i32>(),
        (line, _, start) in stat_line(),
        damage in damage(),
        ticks in 1u64..1000,
    ) {
        let claimed = start.saturating_mul(1_000_000_000 / ticks);
        let path = format!("/proc/{pid}/stat");
        let fs = MemFs::new(&[]).with(&path, line.clone());
        let expected = pid < 0 || line.len() >= 1024 || !owner_gone(&line, ticks, claimed);
        prop_assert_eq!(owner_alive(&fs, pid, claimed, ticks), expected);
        let mut damaged = fs.clone();
        match damage {
            Damage::Bytes(bytes) => {
                let expected = pid < 0 || bytes.len() >= 1024 || !owner_gone(&bytes, ticks, claimed);
                damaged.files.insert(path.into_bytes(), Entry::Text(bytes));
                prop_assert_eq!(owner_alive(&damaged, pid, claimed, ticks), expected);
            }
            Damage::Missing | Damage::Unreadable(_) | Damage::FailsAfter(_) => {
                let entry = match damage {
                    Damage::Unreadable(errno) => Some(Entry::Unreadable(errno)),
                    Damage::FailsAfter(at) if at < line.len() => Some(Entry::FailsAfter(line, at)),
                    Damage::FailsAfter(_) => return Ok(()),
                    _ => None,
                };
                match entry {
                    Some(entry) => { damaged.files.insert(path.into_bytes(), entry); }
                    None => { damaged.files.remove(path.as_bytes()); }
                }
                prop_assert!(owner_alive(&damaged, pid, claimed, ticks), "unreadable: keep the slot");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Segment files
// ---------------------------------------------------------------------------------------------

/// A 128-byte aligned buffer of `len` bytes (rounded up to whole lines), zeroed.
struct Aligned(Vec<Line<[u8; 128]>>);

impl Aligned {
    fn new(len: usize) -> Aligned {
        Aligned((0..len.div_ceil(128)).map(|_| Line([0u8; 128])).collect())
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `Line<[u8; 128]>` is 128 plain bytes, aligned to 128, with no padding; the
        // slice borrows the vector mutably for its lifetime.
        unsafe {
            std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), self.0.len() * 128)
        }
    }

    /// A valid segment of `slots` slots.
    fn segment(slots: u32) -> Aligned {
        let mut buffer = Aligned::new(segment_size(slots));
        let bytes = buffer.bytes();
        assert_eq!(bytes.len(), segment_size(slots));
        // SAFETY: the buffer is zeroed, 128-aligned, `segment_size(slots)` bytes long and ours.
        unsafe { initialise(bytes.as_mut_ptr(), slots, 0, 4242) };
        buffer
    }
}

/// What `SegmentView::new` must answer for `bytes` (128-aligned), from the header's fields.
fn expected_layout(bytes: &[u8]) -> Result<u32, LayoutError> {
    let header_size = size_of::<Header>();
    if bytes.len() < header_size {
        return Err(LayoutError::Truncated {
            found: bytes.len(),
            needed: header_size,
        });
    }
    let field = |offset: usize| u32::from_ne_bytes(bytes[offset..offset + 4].try_into().unwrap());
    if bytes[..8] != MAGIC {
        return Err(LayoutError::BadMagic);
    }
    let version = field(offset_of!(Header, layout_version));
    if version != LAYOUT_VERSION {
        return Err(LayoutError::Version { found: version });
    }
    let slots = field(offset_of!(Header, slot_count));
    let records = field(offset_of!(Header, refusal_capacity));
    if field(offset_of!(Header, header_size)) as usize != header_size
        || field(offset_of!(Header, slot_size)) as usize != size_of::<Slot>()
        || slots == 0
        || records > MAX_REFUSAL_RECORDS
    {
        return Err(LayoutError::Geometry);
    }
    let needed = header_size + slots as usize * size_of::<Slot>() + records as usize * 512;
    if bytes.len() < needed {
        return Err(LayoutError::Truncated {
            found: bytes.len(),
            needed,
        });
    }
    Ok(slots)
}

/// Validates `bytes` and checks the answer against [`expected_layout`]; an accepted segment's
/// every slot and header counter is read.
fn check_segment(bytes: &[u8]) -> Result<(), TestCaseError> {
    let expected = expected_layout(bytes);
    match SegmentView::new(bytes) {
        Ok(view) => {
            prop_assert_eq!(Ok(view.slots.len() as u32), expected);
            prop_assert!(size_of_val(view.slots) + size_of::<Header>() <= bytes.len());
            let live = view.live_slots().count();
            prop_assert!(live <= view.slots.len());
        }
        Err(error) => {
            prop_assert_eq!(Err(error), expected);
            let message = error.to_string();
            let names = match error {
                LayoutError::Truncated { found, needed } => {
                    message.contains(&found.to_string()) && message.contains(&needed.to_string())
                }
                LayoutError::Version { found } => {
                    message.contains(&found.to_string())
                        && message.contains(&LAYOUT_VERSION.to_string())
                }
                LayoutError::BadMagic => message.contains("magic"),
                LayoutError::Geometry => message.contains("size"),
                LayoutError::Misaligned => message.contains("aligned"),
            };
            prop_assert!(names && !message.contains('\n'), "{}", message);
        }
    }
    Ok(())
}

/// Byte offsets of the header fields a reader checks, and values to put there.
fn header_field() -> impl Strategy<Value = (usize, u32)> {
    let offset = prop_oneof![
        Just(offset_of!(Header, magic)),
        Just(offset_of!(Header, magic) + 4),
        Just(offset_of!(Header, layout_version)),
        Just(offset_of!(Header, header_size)),
        Just(offset_of!(Header, slot_size)),
        Just(offset_of!(Header, slot_count)),
        Just(offset_of!(Header, creator_pid)),
        Just(offset_of!(Header, refusal_capacity)),
    ];
    let value = prop_oneof![
        any::<u32>(),
        0u32..10,
        Just(LAYOUT_VERSION - 1),
        Just(LAYOUT_VERSION + 1),
        Just(u32::MAX),
        Just(size_of::<Header>() as u32),
        Just(size_of::<Slot>() as u32),
        Just(i32::MAX as u32 + 1),
        Just(MAX_REFUSAL_RECORDS),
        Just(MAX_REFUSAL_RECORDS + 1),
    ];
    (offset, value)
}

proptest! {
    #![proptest_config(config(256))]

    /// Random bytes, with or without the magic: rejected (the checks' order gives the error).
    #[test]
    fn random_bytes_are_not_a_segment(
        len in prop_oneof![0usize..64, 0usize..segment_size(4) + 300],
        seed in proptest::collection::vec(any::<u8>(), 1..64),
        magic in any::<bool>(),
    ) {
        let mut buffer = Aligned::new(len.max(1));
        let bytes = &mut buffer.bytes()[..len];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = seed[i % seed.len()].wrapping_add((i / seed.len()) as u8);
        }
        if magic && len >= 8 {
            bytes[..8].copy_from_slice(&MAGIC);
        }
        check_segment(bytes)?;
    }

    /// A valid segment cut anywhere short of its end is truncated, with both lengths in the error.
    #[test]
    fn truncated_segments_are_rejected(slots in 1u32..6, cut in any::<prop::sample::Index>()) {
        let mut buffer = Aligned::segment(slots);
        let bytes = buffer.bytes();
        let len = cut.index(bytes.len());
        let truncated = matches!(SegmentView::new(&bytes[..len]), Err(LayoutError::Truncated { .. }));
        prop_assert!(truncated, "{} of {} bytes", len, bytes.len());
        check_segment(&bytes[..len])?;
        check_segment(bytes)?;
        prop_assert!(SegmentView::new(bytes).is_ok());
    }

    /// A valid segment with one checked header field changed: accepted only if the change leaves
    /// it valid (another creator pid, fewer slots), else rejected for that field.
    #[test]
    fn one_mutated_header_field((offset, value) in header_field(), slots in 1u32..6, extra in 0usize..3) {
        let mut buffer = Aligned::new(segment_size(slots) + extra * 128);
        let bytes = buffer.bytes();
        // SAFETY: zeroed, aligned, at least `segment_size(slots)` bytes, ours alone.
        unsafe { initialise(bytes.as_mut_ptr(), slots, 0, 1) };
        bytes[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        check_segment(bytes)?;
    }

    /// A valid header followed by arbitrary slot contents and counters: accepted, and every slot
    /// can be read.
    #[test]
    fn valid_geometry_with_arbitrary_contents(slots in 1u32..5, noise in proptest::collection::vec(any::<u8>(), 1..256)) {
        let mut buffer = Aligned::segment(slots);
        let bytes = buffer.bytes();
        let checked = offset_of!(Header, creator_pid);
        let capacity = offset_of!(Header, refusal_capacity);
        for (i, b) in bytes.iter_mut().enumerate().skip(checked) {
            if !(capacity..capacity + 4).contains(&i) {
                *b = noise[i % noise.len()] ^ (i as u8);
            }
        }
        check_segment(bytes)?;
        prop_assert!(SegmentView::new(bytes).is_ok());
    }

    /// Not aligned for the header: rejected, whatever it holds.
    #[test]
    fn misaligned_segments_are_rejected(shift in 1usize..128, slots in 1u32..3) {
        let mut buffer = Aligned::new(segment_size(slots) + 128);
        let bytes = buffer.bytes();
        // SAFETY: zeroed, aligned, large enough, ours alone.
        unsafe { initialise(bytes.as_mut_ptr().add(128), slots, 0, 1) };
        let moved = &bytes[128 - shift..];
        prop_assert_eq!(SegmentView::new(moved).err(), Some(LayoutError::Misaligned));
        let moved = &bytes[shift..];
        prop_assert!(SegmentView::new(moved).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// oomguard.backend_memory_limit (any text a PostgreSQL role may SET) and OOM_GUARD_BACKEND_LIMIT
// ---------------------------------------------------------------------------------------------

/// PostgreSQL's memory units, binary, as PostgreSQL reads them.
const POSTGRES_UNITS: [(&str, u64); 5] = [
    ("B", 1),
    ("kB", 1 << 10),
    ("MB", 1 << 20),
    ("GB", 1 << 30),
    ("TB", 1 << 40),
];

fn budget_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        size_like(),
        "[ -]?[0-9]{0,6}(\\.[0-9]{0,3})?[ ]?(B|kB|MB|GB|TB|kb|mb|Gb|%|Mi|G)?[ ]?",
        spelled(&["0", "-1", "off", "none", "OFF", "unlimited", "", " "]),
    ]
}

proptest! {
    #![proptest_config(config(1024))]

    /// A whole or decimal number with a PostgreSQL unit is that number times the unit, rounded
    /// down to a byte, exactly (PostgreSQL's `1.5GB` is 1610612736 bytes).
    #[test]
    fn postgres_units_parse_to_their_value(
        whole in 0u64..5_000_000,
        fraction in proptest::option::of("[0-9]{1,4}"),
        unit in 0usize..POSTGRES_UNITS.len(),
        space in any::<bool>(),
    ) {
        let (name, multiplier) = POSTGRES_UNITS[unit];
        let number = match &fraction {
            Some(digits) => format!("{whole}.{digits}"),
            None => whole.to_string(),
        };
        let text = format!("{number}{}{name}", if space { " " } else { "" });
        let decimals = fraction.as_deref().unwrap_or("");
        let digits: u128 = format!("{whole}{decimals}").parse().unwrap();
        let expected = digits * u128::from(multiplier) / 10u128.pow(decimals.len() as u32);
        match Budget::parse_setting(&text) {
            Ok(Some(Budget::Bytes(bytes))) => prop_assert_eq!(u128::from(bytes), expected, "{}", text),
            Ok(other) => prop_assert!(false, "{text:?} read as {other:?}"),
            Err(error) => prop_assert!(
                expected == 0 && error == BudgetError::Size(SizeError::Zero),
                "{text:?} rejected: {error:?}"
            ),
        }
    }

    /// Any text a role may SET: never a panic; what is accepted is a positive size, a
    /// percentage within (0, 100], no budget, or not set — and a size in the guard's own form
    /// means what `OOM_GUARD_*` sizes mean.
    #[test]
    fn any_setting_is_read_or_rejected_with_a_reason(text in budget_like()) {
        match Budget::parse_setting(&text) {
            Ok(None) => prop_assert!(text.trim().is_empty(), "{:?}", text),
            Ok(Some(Budget::Bytes(bytes))) => {
                prop_assert!(bytes > 0 && bytes <= i64::MAX as u64, "{:?}", text);
                if let Ok(guard_bytes) = parse_size(&text) {
                    prop_assert_eq!(bytes, guard_bytes, "{:?}", text);
                }
            }
            Ok(Some(Budget::PercentOfLimit(hundredths))) => {
                prop_assert!((1..=10_000).contains(&hundredths), "{:?}", text);
                prop_assert!(text.trim().ends_with('%'));
            }
            Ok(Some(Budget::Unlimited)) => prop_assert!(
                ["0", "-1", "off", "none"].iter().any(|w| text.trim().eq_ignore_ascii_case(w)),
                "{:?}", text
            ),
            // Nothing the guard's parser reads is refused, except past the counters' range
            // and bare numbers (no unit).
            Err(_) => prop_assert!(
                parse_size(&text).map_or(true, |bytes| bytes > i64::MAX as u64
                    || text.trim().bytes().all(|b| b.is_ascii_digit())),
                "{:?}", text
            ),
        }
    }

    /// The environment's default takes the guard's sizes exactly as `parse_size` reads them,
    /// percentages and `off`; never PostgreSQL's ambiguous `GB`.
    #[test]
    fn the_default_is_a_guard_size_or_a_percentage(text in budget_like()) {
        match Budget::parse_default(&text) {
            Ok(None) => prop_assert!(text.trim().is_empty(), "{:?}", text),
            Ok(Some(Budget::Bytes(bytes))) => {
                prop_assert_eq!(Ok(bytes), parse_size(&text));
                prop_assert!(bytes <= i64::MAX as u64, "{:?}", text);
            }
            Ok(Some(Budget::PercentOfLimit(hundredths))) => {
                prop_assert!((1..=10_000).contains(&hundredths), "{:?}", text);
            }
            Ok(Some(Budget::Unlimited)) => prop_assert!(
                ["0", "-1", "off", "none"].iter().any(|w| text.trim().eq_ignore_ascii_case(w)),
                "{:?}", text
            ),
            // What the guard's sizes accept within the counters' range, the default accepts.
            Err(_) => prop_assert!(
                parse_size(&text).map_or(true, |bytes| bytes > i64::MAX as u64)
                    || text.trim().ends_with('%'),
                "{:?}", text
            ),
        }
        if let Ok(Some(budget)) = Budget::parse_default(&text) {
            // Bytes against any limit never overflow or panic.
            let _ = budget.bytes(u64::MAX);
            let _ = budget.bytes(0);
        }
    }
}

// ---- the budget's packed word and a background worker's kind -------------------------------

fn any_budget() -> impl Strategy<Value = Option<Budget>> {
    prop_oneof![
        Just(None),
        Just(Some(Budget::Unlimited)),
        any::<u64>().prop_map(|b| Some(Budget::Bytes(b))),
        any::<u32>().prop_map(|h| Some(Budget::PercentOfLimit(h))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn budget_words_round_trip(budget in any_budget()) {
        let expected = match budget {
            Some(Budget::Bytes(bytes)) => Some(Budget::Bytes(bytes.min(BudgetWord::VALUE_MASK))),
            other => other,
        };
        prop_assert_eq!(BudgetWord::decode(BudgetWord::encode(budget)), expected);
    }

    #[test]
    fn any_word_decodes_to_a_budget_that_encodes_back(word in any::<u64>()) {
        let budget = BudgetWord::decode(word);
        prop_assert_eq!(BudgetWord::decode(BudgetWord::encode(budget)), budget);
    }

    #[test]
    fn a_worker_named_launcher_or_scheduler_is_never_refused(
        before in "[ -~]{0,20}",
        word in prop_oneof![Just("launcher"), Just("scheduler")],
        upper in proptest::collection::vec(any::<bool>(), 9),
        after in "[ -~]{0,20}",
    ) {
        // Any ASCII case of the word (matched ASCII-insensitively, as PostgreSQL's names are).
        let word: String = word
            .chars()
            .zip(upper)
            .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
            .collect();
        let name = format!("{before}{word}{after}");
        prop_assert_eq!(
            ProcessKind::of_background_worker(Some(name.as_bytes())),
            ProcessKind::PostgresAuxiliary
        );
    }

    #[test]
    fn any_worker_type_has_a_kind(name in proptest::collection::vec(any::<u8>(), 0..120)) {
        let kind = ProcessKind::of_background_worker(Some(&name));
        prop_assert!(matches!(
            kind,
            ProcessKind::ParallelWorker
                | ProcessKind::PostgresAuxiliary
                | ProcessKind::LogicalReplicationWorker
                | ProcessKind::BackgroundWorker
        ));
    }
}

#[test]
fn background_workers_by_type() {
    for (name, kind) in [
        (Some(&b"parallel worker"[..]), ProcessKind::ParallelWorker),
        (Some(b"pg_cron"), ProcessKind::BackgroundWorker),
        (Some(b"pg_cron launcher"), ProcessKind::PostgresAuxiliary),
        (
            Some(b"TimescaleDB Background Worker Scheduler"),
            ProcessKind::PostgresAuxiliary,
        ),
        (
            Some(b"logical replication launcher"),
            ProcessKind::PostgresAuxiliary,
        ),
        (
            Some(b"logical replication worker"),
            ProcessKind::LogicalReplicationWorker,
        ),
        (
            Some(b"logical replication tablesync worker"),
            ProcessKind::LogicalReplicationWorker,
        ),
        (Some(b"Job Worker"), ProcessKind::BackgroundWorker),
        (Some(b""), ProcessKind::BackgroundWorker),
        (None, ProcessKind::PostgresAuxiliary),
    ] {
        assert_eq!(ProcessKind::of_background_worker(name), kind, "{name:?}");
    }
}
