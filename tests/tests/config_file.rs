//! The configuration file (`OOM_GUARD_CONFIG`, default `/etc/oomguard/oomguard.conf`) read by
//! the guard in real processes under `LD_PRELOAD`: its settings apply, the environment overrides
//! them, and a malformed or untrustworthy file is reported on one line and leaves the process in
//! report mode, never crashing it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oomguard_segment::{self as segment, Segment};
use oomguard_tests::{http_get, oomguard_command, stdout_of, Exporter, Probe};

/// What [`Probe::start`] sets in every probe's environment.
const GUARDED_SETTINGS: [&str; 3] = ["OOM_GUARD_LIMIT", "OOM_GUARD_MODE", "OOM_GUARD_REFUSE"];

/// Writes `text` to `dir/oomguard.conf` with `mode` and returns its path.
fn config(dir: &Path, text: &str, mode: u32) -> PathBuf {
    let path = dir.join("oomguard.conf");
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// The number of 1 MiB blocks the `until-null` probe got before its first refusal, run with
/// the guard's settings coming from `config` (and `env`, applied after the file is named).
fn blocks_before_refusal(dir: &Path, config: &Path, env: &[(&str, &str)]) -> i64 {
    let mut settings = vec![("OOM_GUARD_CONFIG", config.to_str().unwrap())];
    settings.extend_from_slice(env);
    // Probe::start sets the limit, mode and scope for every probe: unset those the test does
    // not give, so that the file's values are what the guard sees.
    let unset: Vec<&str> = GUARDED_SETTINGS
        .into_iter()
        .filter(|name| !env.iter().any(|(key, _)| key == name))
        .collect();
    let mut probe = Probe::start_without(
        "accounting",
        dir,
        &["until-null", "1048576"],
        &settings,
        &unset,
    );
    let line = probe.expect("refused after");
    probe.expect("freed");
    probe.expect("again");
    probe.proceed();
    probe.finish();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn settings_come_from_the_file_and_the_environment_overrides_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        "# written by a test\n\
         \n\
         OOM_GUARD_LIMIT = \"16Mi\"\n\
         OOM_GUARD_MODE=enforce   \n\
         OOM_GUARD_REFUSE='all'\n",
        0o644,
    );
    let from_file = blocks_before_refusal(dir.path(), &path, &[]);
    assert!(
        (13..=16).contains(&from_file),
        "16 MiB from the file: {from_file} blocks of 1 MiB"
    );
    let overridden = blocks_before_refusal(dir.path(), &path, &[("OOM_GUARD_LIMIT", "32Mi")]);
    assert!(
        (29..=32).contains(&overridden),
        "32 MiB from the environment: {overridden} blocks"
    );
}

/// Runs the `hold` probe with `OOM_GUARD_CONFIG=config`, returns its stderr and the domain's
/// mode.
/// Holds 4 MiB under the guard configured by `config`; returns the probe's stderr, the domain's
/// mode and why, `oomguard status`'s report and the exporter's `oomguard_enforcing` sample, all
/// taken while it held.
fn hold_with(dir: &Path, config: &Path) -> (String, String, String, String, String) {
    let mut probe = Probe::start_without(
        "accounting",
        dir,
        &["hold", "1048576", "4"],
        &[("OOM_GUARD_CONFIG", config.to_str().unwrap())],
        &GUARDED_SETTINGS,
    );
    probe.expect("held");
    let paths = segment::find(dir).unwrap();
    let snapshot = Segment::open(&paths[0]).unwrap().snapshot().unwrap();
    let status = stdout_of(oomguard_command().arg("status").arg("--dir").arg(dir));
    let exporter = Exporter::start(dir);
    let metrics = http_get(&exporter.addr, "/metrics", None).body;
    let enforcing = metrics
        .lines()
        .find(|line| line.starts_with("oomguard_enforcing{"))
        .unwrap_or_else(|| panic!("no oomguard_enforcing sample:\n{metrics}"))
        .to_owned();
    exporter.terminate();
    probe.proceed();
    probe.expect("freed");
    probe.proceed();
    (
        probe.finish(),
        snapshot.mode.to_owned(),
        snapshot.mode_reason.to_owned(),
        status,
        enforcing,
    )
}

#[test]
fn a_bad_or_untrusted_file_is_reported_and_means_report_mode() {
    let cases: [(&str, u32, &str, &str); 4] = [
        (
            "OOM_GUARD_LIMIT=16Mi\nthis is not a setting\n",
            0o644,
            "line 2 is not KEY=VALUE",
            "config_file_rejected",
        ),
        (
            "OOM_GUARD_LIMITS=16Mi\n",
            0o644,
            "line 1 is not KEY=VALUE",
            "config_file_rejected",
        ),
        (
            "OOM_GUARD_LIMIT=16Mi\n",
            0o666,
            "writable only by its owner",
            "config_file_rejected",
        ),
        (
            "OOM_GUARD_LIMIT=16 parsecs\n",
            0o644,
            "OOM_GUARD_LIMIT=\"16 parsecs\"",
            "malformed_setting",
        ),
    ];
    for (text, mode, says, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = config(dir.path(), text, mode);
        let (stderr, domain_mode, why, status, enforcing) = hold_with(dir.path(), &path);
        assert!(
            stderr.contains(says) && stderr.contains("report mode"),
            "{text:?} (mode {mode:o}): no line saying {says:?}: {stderr}"
        );
        assert_eq!(domain_mode, "report", "{text:?}: {stderr}");
        // Never silently off: status says so in its first lines, the exporter in a gauge.
        assert_eq!(why, reason, "{text:?}");
        let warning = status.lines().nth(1).unwrap_or("");
        assert!(
            warning.starts_with("WARNING  the guard refuses nothing")
                && warning.contains(reason)
                && warning.contains("Fix:"),
            "{text:?}: {status}"
        );
        assert!(
            enforcing.contains(&format!("reason=\"{reason}\"")) && enforcing.ends_with(" 0"),
            "{text:?}: {enforcing}"
        );
        assert!(
            !stderr.contains("this is not a setting"),
            "a line of the file was echoed: {stderr}"
        );
    }
}

#[test]
fn a_named_file_that_does_not_exist_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.conf");
    let (stderr, mode, why, _, _) = hold_with(dir.path(), &missing);
    assert!(
        stderr.contains("nowhere.conf does not exist"),
        "no line about the missing file: {stderr}"
    );
    assert_eq!(
        (mode.as_str(), why.as_str()),
        ("report", "config_file_rejected")
    );
}
