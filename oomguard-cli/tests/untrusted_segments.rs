//! Property tests of what the `oomguard` command reads from outside: segment files in the segment
//! directory (random bytes, truncated, one header field changed, valid geometry with arbitrary
//! counters) as `segment::Segment`, `status`, `limit` and the exporter's scrape read them, the
//! real binary's `oomguard status` / `status --json` / `limit` on such files, and the
//! `OOM_GUARD_*` values `oomguard run` validates.
//!
//! The properties: never a panic; a file that core's layout validation rejects is an error (a
//! non-zero exit, `oomguard_up 0`) naming the file on one line; a file it accepts is reported in
//! full, whatever its counters hold. Tests that spawn the binary use 32 cases, the others 128-256.

use std::ffi::OsString;
use std::mem::offset_of;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use oomguard_cli::exporter::Exporter;
use oomguard_cli::run::{
    validate_guard_env, BACKEND_LIMIT_ENV, DOMAIN_ENV, DOMAIN_FORMS, LIMIT_ENV, MODE_ENV,
    REFUSE_ENV, RESERVE_ENV, SHARED_MEMORY_ENV,
};
use oomguard_cli::segment::{Segment, SegmentError};
use oomguard_cli::{limit, status};
use oomguard_core::budget::{Budget, DEFAULT_FORMS as BACKEND_LIMIT_FORMS};
use oomguard_core::config::{limit_is_auto, parse_size, MODE_FORMS, REFUSE_FORMS, SIZE_FORMS};
use oomguard_core::layout::{
    initialise, segment_size, Header, LayoutError, Line, SegmentView, LAYOUT_VERSION,
};
use oomguard_core::limit::{Reserve, RESERVE_FORMS};
use oomguard_core::{Mode, RefuseScope};
use proptest::prelude::*;

/// `cases` cases, no regression files written into the source tree.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The name segment files are found by (`oomguard-*`).
const FILE_NAME: &str = "oomguard-untrusted";

// ---------------------------------------------------------------------------------------------
// Segment files
// ---------------------------------------------------------------------------------------------

/// How a segment file is made.
#[derive(Debug, Clone)]
enum Make {
    /// Arbitrary bytes (the magic put first when `magic`).
    Random { bytes: Vec<u8>, magic: bool },
    /// A valid segment of `slots` slots cut to `len` bytes.
    Truncated { slots: u32, len: usize },
    /// A valid segment with the 4 bytes at `offset` (a checked header field) set to `value`.
    Mutated {
        slots: u32,
        offset: usize,
        value: u32,
    },
    /// A valid segment whose every byte after the checked fields is `noise` (slots, pids, limits,
    /// counters), with the PID namespace cleared when `our_namespace` so that reaping runs.
    Contents {
        slots: u32,
        noise: Vec<u8>,
        our_namespace: bool,
    },
}

/// A valid segment of `slots` slots, in a 128-aligned buffer.
fn valid_segment(slots: u32) -> Vec<u8> {
    let mut lines: Vec<Line<[u8; 128]>> = (0..segment_size(slots) / 128)
        .map(|_| Line([0u8; 128]))
        .collect();
    // SAFETY: `Line<[u8; 128]>` is 128 plain bytes aligned to 128; the buffer is zeroed,
    // `segment_size(slots)` bytes long, and ours alone.
    unsafe { initialise(lines.as_mut_ptr().cast::<u8>(), slots, 0, 4242) };
    // SAFETY: as above: the lines are plain bytes, read as one slice while `lines` lives.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<u8>(), lines.len() * 128) }.to_vec()
}

impl Make {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Make::Random { bytes, magic } => {
                let mut bytes = bytes.clone();
                if *magic && bytes.len() >= 8 {
                    bytes[..8].copy_from_slice(b"OOMGUARD");
                }
                bytes
            }
            Make::Truncated { slots, len } => {
                let bytes = valid_segment(*slots);
                bytes[..(*len).min(bytes.len())].to_vec()
            }
            Make::Mutated {
                slots,
                offset,
                value,
            } => {
                let mut bytes = valid_segment(*slots);
                bytes[*offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
                bytes
            }
            Make::Contents {
                slots,
                noise,
                our_namespace,
            } => {
                let mut bytes = valid_segment(*slots);
                let start = offset_of!(Header, creator_pid);
                for (i, b) in bytes.iter_mut().enumerate().skip(start) {
                    *b = noise[i % noise.len()] ^ (i as u8);
                }
                if *our_namespace {
                    let at = offset_of!(Header, pid_namespace);
                    bytes[at..at + 8].copy_from_slice(&[0; 8]);
                }
                bytes
            }
        }
    }
}

fn make() -> impl Strategy<Value = Make> {
    let checked = prop_oneof![
        Just(offset_of!(Header, magic)),
        Just(offset_of!(Header, layout_version)),
        Just(offset_of!(Header, header_size)),
        Just(offset_of!(Header, slot_size)),
        Just(offset_of!(Header, slot_count)),
    ];
    let value = prop_oneof![
        any::<u32>(),
        0u32..4,
        Just(LAYOUT_VERSION + 1),
        Just(u32::MAX),
        Just(128u32)
    ];
    prop_oneof![
        (
            proptest::collection::vec(any::<u8>(), 0..3000),
            any::<bool>()
        )
            .prop_map(|(bytes, magic)| Make::Random { bytes, magic }),
        (1u32..4, any::<prop::sample::Index>()).prop_map(|(slots, cut)| Make::Truncated {
            slots,
            len: cut.index(segment_size(slots)),
        }),
        (1u32..4, checked, value).prop_map(|(slots, offset, value)| Make::Mutated {
            slots,
            offset,
            value
        }),
        (
            1u32..4,
            proptest::collection::vec(any::<u8>(), 1..200),
            any::<bool>()
        )
            .prop_map(|(slots, noise, our_namespace)| Make::Contents {
                slots,
                noise,
                our_namespace
            }),
    ]
}

/// What core's validation says of `bytes` (copied to an aligned buffer, as a mapping is).
fn layout_of(bytes: &[u8]) -> Result<u32, LayoutError> {
    let mut lines: Vec<Line<[u8; 128]>> = (0..bytes.len().div_ceil(128).max(1))
        .map(|_| Line([0u8; 128]))
        .collect();
    // SAFETY: the lines are plain bytes, aligned to 128, at least `bytes.len()` long, borrowed
    // mutably only here.
    let aligned =
        unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), bytes.len()) };
    aligned.copy_from_slice(bytes);
    SegmentView::new(aligned).map(|view| view.slots.len() as u32)
}

/// A fresh segment directory holding `bytes` as the one segment file, live: the returned file
/// holds the open-file-description read lock every guarded process holds on its segment until
/// it is dropped.
fn segment_dir(bytes: &[u8]) -> (tempfile::TempDir, PathBuf, std::fs::File) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    std::fs::write(&path, bytes).unwrap();
    let held = std::fs::File::open(&path).unwrap();
    assert!(oomguard_cli::segment::take_lock(&held, libc::F_RDLCK).unwrap());
    (dir, path, held)
}

/// An error about a bad segment: one line naming the file.
fn check_names_file(message: &str, path: &Path) -> Result<(), TestCaseError> {
    prop_assert!(
        message.contains(&path.display().to_string()),
        "{message:?} does not name {}",
        path.display()
    );
    prop_assert!(!message.contains('\n'), "{message:?}");
    Ok(())
}

proptest! {
    #![proptest_config(config(128))]

    /// `Segment::open`, `status::collect`, `limit::from_segments` and the exporter's scrape on a
    /// file, live or stale: an error naming the file exactly when core rejects it, a full report
    /// otherwise, marked stale exactly when nobody holds its lock; exported only when live.
    #[test]
    fn the_cli_reads_only_valid_segments(make in make(), live in any::<bool>()) {
        let bytes = make.bytes();
        let expected = layout_of(&bytes);
        let (dir, path, held) = segment_dir(&bytes);
        if !live {
            drop(held);
        }

        match (Segment::open(&path), expected) {
            (Ok(segment), Ok(slots)) => {
                // A child that another test thread is starting right now holds a copy of every
                // descriptor (the dropped one too, and with it the lock) until it execs: give
                // such a copy a moment to go before calling the segment live.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                while segment.is_stale() == live && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                prop_assert_eq!(segment.is_stale(), !live);
                let snapshot = segment.snapshot().unwrap();
                prop_assert_eq!(snapshot.slot_count, slots);
                prop_assert!(snapshot.processes.len() <= slots as usize);
            }
            (Err(error), Err(layout)) => {
                let matches = matches!(&error, SegmentError::Layout { error, path: p } if *error == layout && p == &path);
                prop_assert!(matches, "{:?} for {:?}", error, layout);
                check_names_file(&error.to_string(), &path)?;
            }
            (Ok(_), Err(layout)) => prop_assert!(false, "accepted although {layout}"),
            (Err(error), Ok(_)) => prop_assert!(false, "rejected a valid segment: {error}"),
        }

        // A file is there: the directory as a whole never fails, the file is good or bad.
        let found = status::collect(dir.path()).unwrap();
        match expected {
            Ok(slots) => {
                prop_assert!(found.bad.is_empty(), "{:?}", found.bad);
                prop_assert_eq!(found.domains.len(), 1);
                let text = status::render(&found.domains[0]);
                prop_assert!(text.contains(&path.display().to_string()), "{}", text);
                prop_assert_eq!(text.contains("state    stale"), !live, "{}", text);
                let json = serde_json::to_string(&found.domains).unwrap();
                let value: serde_json::Value = serde_json::from_str(&json).unwrap();
                prop_assert_eq!(value[0]["slot_count"].as_u64(), Some(u64::from(slots)));
                prop_assert_eq!(value[0]["stale"].as_bool(), Some(!live));
            }
            Err(_) => {
                prop_assert!(found.domains.is_empty());
                prop_assert_eq!(found.bad.len(), 1);
                check_names_file(&found.bad[0].to_string(), &path)?;
            }
        }

        match limit::from_segments(dir.path()) {
            Ok(Some(found)) => match expected {
                Ok(_) => {
                    prop_assert!(found.bad.is_empty(), "{:?}", found.bad);
                    prop_assert_eq!(found.domains.len(), 1);
                    prop_assert_eq!(found.domains[0].stale, !live);
                    let text = limit::render(&found.domains[0], dir.path());
                    prop_assert!(!text.is_empty());
                    serde_json::to_string(&found.domains).unwrap();
                }
                Err(_) => {
                    prop_assert!(found.domains.is_empty());
                    prop_assert_eq!(found.bad.len(), 1);
                    check_names_file(&found.bad[0].to_string(), &path)?;
                }
            },
            Ok(None) => prop_assert!(false, "the segment was not found"),
            Err(error) => prop_assert!(false, "the directory failed: {}", error),
        }

        let exporter = Exporter::new(dir.path());
        for openmetrics in [false, true] {
            let body = exporter.scrape(openmetrics).body;
            let up = if expected.is_ok() && live { "\noomguard_up 1\n" } else { "\noomguard_up 0\n" };
            prop_assert!(body.contains(up), "{}", body);
            let stale = u8::from(expected.is_ok() && !live);
            prop_assert!(body.contains(&format!("\noomguard_stale_domains {stale}\n")), "{}", body);
            prop_assert_eq!(body.contains(FILE_NAME), expected.is_ok() && live, "{}", body);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------------------------

/// `oomguard ARGS` (the binary built with these tests) without any inherited guard settings.
fn oomguard(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_oomguard"));
    command.args(args).env_remove("LD_PRELOAD");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OOM_GUARD_") {
            command.env_remove(&key);
        }
    }
    let output = command.output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

proptest! {
    #![proptest_config(config(32))]

    /// `oomguard status`, `status --json` and `limit` on one file: a bad one exits 1 with one
    /// stderr line that names it; a good one exits 0 and reports it. Never a panic.
    #[test]
    fn the_binary_reports_bad_segments_on_one_line(make in make()) {
        let bytes = make.bytes();
        let expected = layout_of(&bytes);
        let (dir, path, _live) = segment_dir(&bytes);
        let dir_arg = dir.path().as_os_str();
        for (args, prefix) in [
            (vec!["status".as_ref(), "--dir".as_ref(), dir_arg], "oomguard status: "),
            (vec!["status".as_ref(), "--json".as_ref(), "--dir".as_ref(), dir_arg], "oomguard status: "),
            (vec!["limit".as_ref(), "--dir".as_ref(), dir_arg], "oomguard limit: "),
        ] {
            let (code, stdout, stderr) = oomguard(&args);
            prop_assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{}", stderr);
            match expected {
                Ok(slots) => {
                    prop_assert_eq!(code, Some(0), "{:?}: {}", args, stderr);
                    prop_assert_eq!(&stderr, "");
                    prop_assert!(stdout.contains(&path.display().to_string()), "{}", stdout);
                    if args.contains(&"--json".as_ref()) {
                        let value: serde_json::Value = serde_json::from_str(&stdout).unwrap();
                        prop_assert_eq!(value[0]["slot_count"].as_u64(), Some(u64::from(slots)));
                    }
                }
                Err(layout) => {
                    prop_assert_eq!(code, Some(1), "{:?}: {}", args, stderr);
                    prop_assert_eq!(&stdout, "");
                    let line = stderr.strip_suffix('\n').unwrap_or(&stderr);
                    prop_assert!(line.starts_with(prefix), "{:?}", stderr);
                    check_names_file(line, &path)?;
                    prop_assert!(line.ends_with(&layout.to_string()), "{:?} for {:?}", line, layout);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// OOM_GUARD_* values as `oomguard run` checks them
// ---------------------------------------------------------------------------------------------

/// Values of any kind: arbitrary text, near misses, valid ones, and bytes that are not UTF-8.
fn value() -> impl Strategy<Value = OsString> {
    prop_oneof![
        any::<String>().prop_map(OsString::from),
        "[ ]{0,1}(auto|AUTO|enforce|Report|OFF|all|backends|on|1Gi|1GB|512MiB|0|15%|91%|100%|0\\.5%|\\+5%|-1|none|1\\.5Gi|\\.|\\.\\.|\\.\\./x|oomguard-pg|a/b|)[ \n]{0,1}"
            .prop_map(OsString::from),
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(OsString::from_vec),
        // Around OOM_GUARD_DOMAIN's 200-byte limit.
        "oomguard-[a-z]{185,195}".prop_map(OsString::from),
    ]
}

const VARIABLES: [&str; 7] = [
    LIMIT_ENV,
    BACKEND_LIMIT_ENV,
    MODE_ENV,
    REFUSE_ENV,
    RESERVE_ENV,
    SHARED_MEMORY_ENV,
    DOMAIN_ENV,
];

proptest! {
    #![proptest_config(config(256))]

    /// One variable set to anything: accepted exactly when the guard's own parser accepts it;
    /// otherwise one line naming the variable, the value and the accepted forms.
    #[test]
    fn run_checks_every_setting_as_the_guard_parses_it(which in 0..VARIABLES.len(), raw in value()) {
        let var = VARIABLES[which];
        let result = validate_guard_env(|name| (name == var).then(|| raw.clone()));
        let forms = match var {
            LIMIT_ENV | SHARED_MEMORY_ENV => SIZE_FORMS,
            BACKEND_LIMIT_ENV => BACKEND_LIMIT_FORMS,
            MODE_ENV => MODE_FORMS,
            REFUSE_ENV => REFUSE_FORMS,
            DOMAIN_ENV => DOMAIN_FORMS,
            _ => RESERVE_FORMS,
        };
        // A domain is a file name: any bytes but '/' and NUL, not empty, '.' or '..', at most
        // 200.
        let bytes = raw.as_encoded_bytes();
        let valid = if var == DOMAIN_ENV {
            !bytes.is_empty()
                && bytes != b"."
                && bytes != b".."
                && !bytes.contains(&b'/')
                && !bytes.contains(&0)
                && bytes.len() <= 200
        } else {
            raw.to_str().is_some_and(|text| match var {
            LIMIT_ENV => limit_is_auto(text) || parse_size(text).is_ok(),
            BACKEND_LIMIT_ENV => Budget::parse_default(text).is_ok(),
            MODE_ENV => Mode::parse(text).is_some(),
            REFUSE_ENV => RefuseScope::parse(text).is_some(),
            RESERVE_ENV => Reserve::parse(text).is_ok(),
            _ => parse_size(text).is_ok(),
            })
        };
        match result {
            Ok(()) => prop_assert!(valid, "{var}={raw:?} accepted"),
            Err(error) => {
                prop_assert!(!valid, "{var}={raw:?} refused: {error}");
                let message = error.to_string();
                prop_assert!(message.starts_with(&format!("{var}=")), "{}", message);
                prop_assert!(message.contains(forms), "{}", message);
                prop_assert!(!message.contains('\n'), "{:?}", message);
                if raw.to_str().is_none() && var != DOMAIN_ENV {
                    prop_assert!(message.contains("not valid UTF-8"), "{}", message);
                }
            }
        }
    }
}
