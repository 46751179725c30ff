//! glibc-observable semantics under the guard: `probes/semantics.c` must print exactly the same
//! lines plainly and under `LD_PRELOAD` of `liboomguard.so` (enforce mode, 1 GiB limit, every
//! process refusable), and every function the built library exports must be one this file
//! names and must really resolve into the guard.

use std::process::Command;

use oomguard_tests::{guarded, library_path, plain, probe, stdout_of};

/// The functions the guard interposes: glibc's malloc family (the replacement list of glibc's
/// manual), PostgreSQL's shared memory calls (the main segment is observed, dynamic segments
/// charged), `dlopen` (nothing is refused while a library loads) and `pthread_create` (every
/// thread returns its credit when it exits). The built library must export exactly these.
const INTERPOSED: [&str; 17] = [
    "malloc",
    "free",
    "calloc",
    "realloc",
    "reallocarray",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "pvalloc",
    "mmap",
    "mmap64",
    "ftruncate",
    "posix_fallocate",
    "shm_unlink",
    "dlopen",
    "pthread_create",
];

/// The functions the built library defines and exports (`nm -D --defined-only`, type `T`).
fn exported_functions() -> Vec<String> {
    let library = library_path();
    let output = Command::new("nm")
        .args(["-D", "--defined-only", "--format=posix"])
        .arg(&library)
        .output()
        .unwrap_or_else(|e| panic!("run nm (binutils, which gcc brings) on the library: {e}"));
    assert!(output.status.success(), "nm {}", library.display());
    let mut names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (name, kind) = (fields.next()?, fields.next()?);
            (kind == "T").then(|| name.to_owned())
        })
        .collect();
    names.sort();
    names
}

/// The probe's `--which` lines for `names`.
fn which_of(command: &mut Command, names: &[&str]) -> Vec<(String, String)> {
    which(&stdout_of(command.arg("--which").args(names)))
}

fn which(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(f, w)| (f.to_string(), w.to_string()))
        .collect()
}

/// Panics with a line diff (- plain, + guarded) unless both outputs are identical.
fn assert_same_lines(expected: &str, actual: &str, what: &str) {
    if expected == actual {
        return;
    }
    let mut diff = String::new();
    for (e, a) in expected.lines().zip(actual.lines()) {
        if e != a {
            diff.push_str(&format!("- {e}\n+ {a}\n"));
        }
    }
    let (ne, na) = (expected.lines().count(), actual.lines().count());
    if ne != na {
        diff.push_str(&format!("({ne} lines plain, {na} lines guarded)\n"));
    }
    panic!("probe output differs under the guard in {what} (- plain, + guarded):\n{diff}");
}

#[test]
fn probe_itself_is_sane_without_the_guard() {
    let out = stdout_of(plain(&mut Command::new(probe("semantics"))));
    assert!(out.ends_with("done\n"), "probe did not finish:\n{out}");
    // Facts the guard must reproduce; checked here so a broken probe cannot pass vacuously.
    for line in [
        "malloc(0): non-NULL=yes aligned16=yes errno=sentinel",
        "free(NULL): errno=1234",
        "calloc(SIZE_MAX/2, 4) overflow: NULL=yes errno=ENOMEM",
        "realloc(p, 0): NULL=yes errno=sentinel",
        "reallocarray(NULL, SIZE_MAX/2, 4) overflow: NULL=yes errno=ENOMEM",
        "posix_memalign(64, 100): rc=0 aligned=yes usable>=100=yes errno=sentinel",
        "posix_memalign(3, 100): rc=EINVAL memptr unchanged=yes errno=sentinel",
        "posix_memalign(12, 100): rc=EINVAL memptr unchanged=yes errno=sentinel",
        "malloc(SIZE_MAX): NULL=yes errno=ENOMEM",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "expected line {line:?} in plain probe output:\n{out}"
        );
    }
    let resolved = which_of(plain(&mut Command::new(probe("semantics"))), &INTERPOSED);
    assert_eq!(resolved.len(), INTERPOSED.len());
    for (func, place) in resolved {
        assert_ne!(
            place, "liboomguard",
            "{func} resolves into the guard without LD_PRELOAD"
        );
    }
}

#[test]
fn the_library_exports_exactly_the_interposed_functions() {
    let mut expected: Vec<String> = INTERPOSED.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(
        exported_functions(),
        expected,
        "the library's exported functions changed: name each in INTERPOSED and check it here"
    );
}

#[test]
fn guard_is_loaded_and_interposes_every_function() {
    let dir = tempfile::tempdir().expect("temp dir");
    let exported = exported_functions();
    let names: Vec<&str> = exported.iter().map(String::as_str).collect();
    let mut command = Command::new(probe("semantics"));
    let resolved = which_of(guarded(&mut command, dir.path(), &[]), &names);
    let reported: Vec<&str> = resolved.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(reported, names, "unexpected --which output: {resolved:?}");
    let missing: Vec<&str> = resolved
        .iter()
        .filter(|(_, place)| place != "liboomguard")
        .map(|(f, _)| f.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "not interposed by liboomguard (was the preload loaded?): {missing:?}\n{resolved:?}"
    );
}

#[test]
fn semantics_identical_under_the_guard() {
    let expected = stdout_of(plain(&mut Command::new(probe("semantics"))));
    let dir = tempfile::tempdir().expect("temp dir");
    let actual = stdout_of(guarded(
        &mut Command::new(probe("semantics")),
        dir.path(),
        &[],
    ));
    assert_same_lines(&expected, &actual, "enforce mode");
}

#[test]
fn semantics_identical_in_report_mode() {
    let expected = stdout_of(plain(&mut Command::new(probe("semantics"))));
    let dir = tempfile::tempdir().expect("temp dir");
    let actual = stdout_of(guarded(
        &mut Command::new(probe("semantics")),
        dir.path(),
        &[("OOM_GUARD_MODE", "report")],
    ));
    assert_same_lines(&expected, &actual, "report mode");
}
