//! The `oomguard` binary as a user runs it: `status` against segments written by real guarded
//! processes (live and stale domains, a bad file beside a good one), `clean` removing only stale
//! segments while a live domain carries on, `run` putting the guard in front of a real program,
//! `demo` end to end (both sides in real memory cgroups as root, the guarded side alone
//! elsewhere), and clear errors with non-zero exits for bad input.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use oomguard_tests::cgroup::{opted_out, SKIP_ENV};
use oomguard_tests::{
    guarded, is_root, library_path, oomguard_binary, oomguard_command, plain, probe, run_output,
    stale_and_live_domains, while_holding, Probe,
};

#[test]
fn status_shows_a_live_guarded_process() {
    let dir = tempfile::tempdir().unwrap();
    while_holding(dir.path(), &[("OOM_GUARD_LIMIT", "512Mi")], |pid| {
        let (out, stdout, stderr) = run_output(
            oomguard_command()
                .arg("status")
                .arg("--dir")
                .arg(dir.path()),
        );
        assert!(out.status.success(), "{stderr}");
        assert!(stdout.contains("mode     enforce"), "{stdout}");
        assert!(
            stdout.contains("limit    512.0 MiB (from OOM_GUARD_LIMIT)"),
            "{stdout}"
        );
        let row = stdout
            .lines()
            .find(|line| line.trim_start().starts_with(&pid.to_string()))
            .unwrap_or_else(|| panic!("no row for pid {pid}:\n{stdout}"));
        assert!(
            row.contains(" 8.") && row.contains(" MiB"),
            "8 MiB and change: {row}"
        );

        let (out, stdout, _) = run_output(
            oomguard_command()
                .args(["status", "--json"])
                .env("OOM_GUARD_DIR", dir.path()),
        );
        assert!(out.status.success());
        let json: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
        let domain = &json[0];
        assert_eq!(domain["limit_bytes"], 512 << 20);
        let process = domain["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .expect("the probe in the JSON");
        assert!(process["bytes"].as_i64().unwrap() >= 8 << 20, "{process}");
        let title = process["title"].as_str().unwrap();
        assert!(title.ends_with("accounting hold 1048576 8"), "{title}");
    });
}

#[test]
fn status_reaps_and_reports_a_killed_process() {
    let dir = tempfile::tempdir().unwrap();
    // A live process keeps the domain live: a killed one's slot is then reaped by `status`
    // (were it the last, the domain would be stale, and stale domains are never reaped).
    let mut survivor = Probe::start("accounting", dir.path(), &["hold", "1048576", "1"], &[]);
    survivor.expect("held");
    let mut command = Command::new(probe("accounting"));
    guarded(&mut command, dir.path(), &[])
        .args(["hold", "1048576", "8"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let (out, stdout, stderr) = output_of_status(dir.path());
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("1 dead processes reaped now"), "{stdout}");
    assert!(!stdout.contains("state "), "live: {stdout}");
    assert!(row_of(&stdout, survivor.pid() as u32).is_some(), "{stdout}");
    assert!(
        !stdout.contains(&format!("{:>8}  ", child.id())),
        "the killed process is gone from the table: {stdout}"
    );
    survivor.proceed();
    survivor.expect("freed");
    survivor.proceed();
    survivor.finish();
}

/// The table row of `pid` in `status` output.
fn row_of(stdout: &str, pid: u32) -> Option<&str> {
    stdout
        .lines()
        .find(|line| line.trim_start().starts_with(&format!("{pid} ")))
}

/// `oomguard status --json --dir DIR`, which must succeed.
fn status_json(dir: &Path) -> serde_json::Value {
    let (out, stdout, stderr) = run_output(
        oomguard_command()
            .args(["status", "--json", "--dir"])
            .arg(dir),
    );
    assert!(out.status.success(), "{stderr}");
    serde_json::from_str(&stdout).expect("valid JSON")
}

/// The domain of `status --json` whose segment is `name`.
fn domain_named<'a>(json: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    json.as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"].as_str().unwrap().ends_with(&format!("/{name}")))
        .unwrap_or_else(|| panic!("no domain {name} in {json:#}"))
}

#[test]
fn a_domain_whose_processes_exited_is_stale_and_clean_removes_only_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut live = stale_and_live_domains(dir.path());
    let live_pid = live.pid() as u32;

    let (out, stdout, stderr) = output_of_status(dir.path());
    assert!(out.status.success(), "{stderr}");
    let live_at = stdout.find("oomguard-live\n").expect(&stdout);
    let old_at = stdout.find("oomguard-old\n").expect(&stdout);
    assert!(live_at < old_at, "live domains first:\n{stdout}");
    let (live_text, old_text) = stdout.split_at(old_at);
    assert!(!live_text.contains("state "), "{live_text}");
    assert!(row_of(live_text, live_pid).is_some(), "{live_text}");
    assert!(
        old_text.contains(
            "state    stale: no guarded process has it mapped (left by an earlier run); \
             `oomguard clean` removes it"
        ),
        "{old_text}"
    );
    assert!(
        old_text.contains("dead processes not reaped: the domain is stale"),
        "{old_text}"
    );
    assert!(old_text.contains("(no live guarded process"), "{old_text}");
    let json = status_json(dir.path());
    assert_eq!(domain_named(&json, "oomguard-old")["stale"], true);
    assert_eq!(domain_named(&json, "oomguard-live")["stale"], false);
    assert!(
        domain_named(&json, "oomguard-old")["peak_bytes"]
            .as_i64()
            .unwrap()
            >= 8 << 20,
        "a stale domain shows its last numbers: {json:#}"
    );

    let old = dir.path().join("oomguard-old");
    let live_segment = dir.path().join("oomguard-live");
    let (out, stdout, stderr) = run_output(
        oomguard_command()
            .args(["clean", "--dry-run", "--dir"])
            .arg(dir.path()),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("would remove {}: stale", old.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("kept         {}: live", live_segment.display())),
        "{stdout}"
    );
    assert!(old.exists(), "a dry run removes nothing");

    let (out, stdout, stderr) = run_output(
        oomguard_command()
            .arg("clean")
            .env("OOM_GUARD_DIR", dir.path()),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(
        stdout.contains(&format!("removed      {}: stale", old.display())),
        "{stdout}"
    );
    assert!(!old.exists(), "the stale segment is gone");
    assert!(live_segment.exists(), "the live one stays");

    // The live process carries on in its segment: its free is accounted, and a newcomer of its
    // domain joins it.
    live.proceed();
    live.expect("freed");
    let json = status_json(dir.path());
    assert_eq!(json.as_array().unwrap().len(), 1, "{json:#}");
    let process = |json: &serde_json::Value, pid: u32| -> i64 {
        domain_named(json, "oomguard-live")["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .unwrap_or_else(|| panic!("no process {pid} in {json:#}"))["bytes"]
            .as_i64()
            .unwrap()
    };
    assert!(
        process(&json, live_pid) < 8 << 20,
        "the free was counted: {json:#}"
    );
    while_holding(
        dir.path(),
        &[("OOM_GUARD_DOMAIN", "oomguard-live")],
        |newcomer| {
            let json = status_json(dir.path());
            assert!(process(&json, newcomer) >= 8 << 20, "{json:#}");
            assert!(process(&json, live_pid) >= 0, "{json:#}");
        },
    );
    live.proceed();
    live.finish();
}

#[test]
fn a_killed_last_process_leaves_a_stale_domain_which_a_new_start_resets() {
    let dir = tempfile::tempdir().unwrap();
    let domain = [("OOM_GUARD_DOMAIN", "oomguard-killed")];
    let mut probe = Probe::start("accounting", dir.path(), &["hold", "1048576", "8"], &domain);
    probe.expect("held");
    let json = status_json(dir.path());
    assert_eq!(json[0]["stale"], false, "{json:#}");
    probe.child.kill().unwrap();
    probe.child.wait().unwrap();

    let json = status_json(dir.path());
    assert_eq!(
        json[0]["stale"], true,
        "SIGKILL drops the lock too: {json:#}"
    );
    assert_eq!(json[0]["reaped_now"], serde_json::Value::Null, "{json:#}");
    assert_eq!(json[0]["stale_slots"], 1, "{json:#}");
    assert!(
        json[0]["total_bytes"].as_i64().unwrap() >= 8 << 20,
        "{json:#}"
    );
    let (_, stdout, _) = output_of_status(dir.path());
    assert!(stdout.contains("state    stale"), "{stdout}");

    // The domain's next process finds the stale segment and starts it afresh, in place.
    let mut fresh = Probe::start("accounting", dir.path(), &["hold", "1048576", "1"], &domain);
    fresh.expect("held");
    let json = status_json(dir.path());
    assert_eq!(json.as_array().unwrap().len(), 1, "{json:#}");
    assert_eq!(json[0]["stale"], false, "{json:#}");
    assert!(
        json[0]["peak_bytes"].as_i64().unwrap() < 8 << 20,
        "the dead run's peak is gone: {json:#}"
    );
    assert_eq!(json[0]["reaped_slots"], 0, "{json:#}");
    let pids: Vec<i64> = json[0]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(pids, [i64::from(fresh.pid())], "{json:#}");
    fresh.proceed();
    fresh.expect("freed");
    fresh.proceed();
    fresh.finish();
}

#[test]
fn one_bad_file_does_not_hide_the_good_domains() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("oomguard-0-feed");
    std::fs::write(&junk, b"not a segment at all").unwrap();
    while_holding(dir.path(), &[("OOM_GUARD_LIMIT", "512Mi")], |pid| {
        for args in [&["status"][..], &["status", "--json"], &["limit"]] {
            let (out, stdout, stderr) =
                run_output(oomguard_command().args(args).arg("--dir").arg(dir.path()));
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            let lines: Vec<&str> = stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
            assert!(
                lines[0].starts_with(&format!("oomguard {}: {}", args[0], junk.display()))
                    && lines[0].contains("truncated"),
                "{args:?}: {stderr}"
            );
            let limit = if args.contains(&"--json") {
                (512u64 << 20).to_string()
            } else {
                "512.0 MiB".to_owned()
            };
            assert!(
                stdout.contains(&limit),
                "{args:?}: the good domain:\n{stdout}"
            );
            if args == ["status"] {
                assert!(row_of(&stdout, pid).is_some(), "{stdout}");
            }
        }
    });
    // clean keeps it: it may be another version's live segment.
    let (out, stdout, stderr) =
        run_output(oomguard_command().args(["clean", "--dir"]).arg(dir.path()));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("kept         {}: not a segment", junk.display())),
        "{stdout}"
    );
    assert!(junk.exists());
}

#[test]
fn status_without_a_segment_or_with_a_foreign_one_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _, stderr) = output_of_status(dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("no oomguard segment"), "{stderr}");
    assert!(stderr.contains("OOM_GUARD_DIR"), "{stderr}");

    std::fs::write(dir.path().join("oomguard-0-feed"), b"not a segment at all").unwrap();
    let (out, _, stderr) = output_of_status(dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("oomguard-0-feed"), "{stderr}");
    assert!(stderr.contains("truncated"), "{stderr}");

    let (out, _, stderr) =
        run_output(oomguard_command().args(["status", "--dir", "/nonexistent/dir"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("/nonexistent/dir"), "{stderr}");
}

#[test]
fn run_preloads_the_guard_and_keeps_an_existing_preload() {
    let dir = tempfile::tempdir().unwrap();
    let library = library_path();
    let (out, stdout, stderr) = run_output(
        oomguard_command()
            .args(["run", "--library"])
            .arg(&library)
            .arg("--")
            .arg("sh")
            .arg("-c")
            .arg("echo \"$LD_PRELOAD\"; cat /proc/self/maps | grep -c liboomguard")
            .env("LD_PRELOAD", "/lib/x86_64-linux-gnu/libm.so.6")
            .env("OOM_GUARD_DIR", dir.path()),
    );
    assert!(out.status.success(), "{stderr}");
    let mut lines = stdout.lines();
    let preload = lines.next().unwrap();
    assert!(preload.contains("libm.so.6"), "kept: {preload}");
    assert!(
        preload.contains(library.to_str().unwrap()),
        "added: {preload}"
    );
    let mapped: u32 = lines.next().unwrap().trim().parse().unwrap();
    assert!(mapped > 0, "the guard is mapped in the command");
}

#[test]
fn run_rejects_bad_settings_before_starting_anything() {
    for (name, value, mentions) in [
        ("OOM_GUARD_LIMIT", "12GB", "ambiguous"),
        ("OOM_GUARD_MODE", "strict", "enforce, report or off"),
        ("OOM_GUARD_REFUSE", "everyone", "backends"),
        ("OOM_GUARD_DOMAIN", "../x", "'/'"),
        ("OOM_GUARD_DOMAIN", "..", "not a file"),
    ] {
        let (out, stdout, stderr) = run_output(
            oomguard_command()
                .args(["run", "--library"])
                .arg(library_path())
                .args(["--", "echo", "started"])
                .env(name, value),
        );
        assert_eq!(out.status.code(), Some(126), "{name}={value}: {stderr}");
        assert!(stdout.is_empty(), "nothing ran: {stdout}");
        assert!(
            stderr.contains(name) && stderr.contains(mentions),
            "{stderr}"
        );
    }
    let (out, _, stderr) = run_output(oomguard_command().args([
        "run",
        "--library",
        "/nonexistent/liboomguard.so",
        "--",
        "true",
    ]));
    assert_eq!(out.status.code(), Some(126));
    assert!(stderr.contains("/nonexistent/liboomguard.so"), "{stderr}");
}

#[test]
fn bad_flags_are_usage_errors() {
    let (out, _, stderr) = run_output(oomguard_command().args(["status", "--frobnicate"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("--frobnicate"), "{stderr}");
    let (out, _, stderr) = run_output(oomguard_command().args(["demo", "--limit", "lots"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("OOM_GUARD_LIMIT") && stderr.contains("lots"),
        "{stderr}"
    );
    let (out, _, stderr) =
        run_output(oomguard_command().args(["demo", "--cgroup-memory", "100Mi"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("--cgroup-memory") && stderr.contains("512.0 MiB"),
        "{stderr}"
    );
}

/// The guarded side as the demo shows it with `OOM_GUARD_LIMIT` (no cgroup): the array hog
/// refused once, both sessions and the server carry on.
fn assert_guarded_side_only(stdout: &str) {
    assert!(stdout.contains("OOM_GUARD_LIMIT=256Mi"), "{stdout}");
    assert!(
        stdout.contains("ERROR:  out of memory (SQLSTATE 53200)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Session B is still connected: SELECT 1 -> 1"),
        "{stdout}"
    );
    assert!(stdout.contains("Session A never noticed"), "{stdout}");
    assert!(stdout.contains("refused  1 allocations"), "{stdout}");
    assert!(
        stdout.contains("Without the guard the kernel's OOM killer would have SIGKILLed"),
        "{stdout}"
    );
    assert!(stdout.contains("clean shutdown"), "{stdout}");
    assert!(!stdout.contains("Part 1 of 2"), "{stdout}");
}

/// The `Created the memory cgroup PATH: …` lines of the demo's output.
fn demo_cgroups(stdout: &str) -> Vec<PathBuf> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("Created the memory cgroup "))
        .filter_map(|rest| rest.split_once(": limit"))
        .map(|(path, _)| PathBuf::from(path))
        .collect()
}

/// As root (here) the demo shows both sides in real memory cgroups: without the guard the
/// kernel kills the hog's backend and the server drops session A; with it the hog gets
/// `ERROR: out of memory` and nothing else happens.
#[test]
fn the_demo_runs_end_to_end() {
    if opted_out("the_demo_runs_end_to_end (both sides; the guarded side alone still runs)") {
        let (out, stdout, stderr) = run_output(
            oomguard_command()
                .args(["demo", "--guarded-only", "--library"])
                .arg(library_path()),
        );
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert_guarded_side_only(&stdout);
        return;
    }
    let started = Instant::now();
    let (out, stdout, stderr) = run_output(
        oomguard_command()
            .arg("demo")
            .arg("--library")
            .arg(library_path()),
    );
    let seconds = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains("Cannot show the kernel's OOM kill here"),
        "this test needs a memory cgroup (as root; {SKIP_ENV}=1 opts out):\n{stdout}"
    );
    let (unguarded, guarded) = stdout
        .split_once("== Part 2 of 2: with the guard ==")
        .unwrap_or_else(|| panic!("two parts:\n{stdout}"));
    assert!(
        unguarded.contains("Both sides in a real memory cgroup of 768.0 MiB"),
        "{stdout}"
    );

    // Part 1: the kernel kills, the server resets, A is dropped.
    assert!(unguarded.contains("guard mapped: no"), "{unguarded}");
    assert!(
        unguarded.contains("session B's connection was closed"),
        "{unguarded}"
    );
    assert!(
        unguarded.contains("The kernel's OOM killer struck: the cgroup's oom_kill 0 -> 1."),
        "{unguarded}"
    );
    assert!(
        unguarded.contains("was terminated by signal 9: Killed"),
        "{unguarded}"
    );
    assert!(
        unguarded.contains("terminating any other active server processes"),
        "{unguarded}"
    );
    assert!(
        unguarded.contains("which was idle, was dropped too: SELECT 1 -> "),
        "{unguarded}"
    );

    // Part 2: the guard's derived limit, the ERROR, everyone survives, no kill.
    assert!(guarded.contains("guard mapped: yes"), "{guarded}");
    assert!(
        guarded.contains(" = cgroup 768.0 MiB − shared memory ")
            && guarded.contains("(observed) − reserve 76.8 MiB (default)"),
        "the limit is derived from the cgroup: {guarded}"
    );
    assert!(
        guarded.contains("-> ERROR:  out of memory (SQLSTATE 53200)"),
        "{guarded}"
    );
    assert!(
        guarded.contains("Session B is still connected: SELECT 1 -> 1"),
        "{guarded}"
    );
    assert!(
        guarded.contains("Session A never noticed: SELECT count(*) FROM pg_class -> "),
        "{guarded}"
    );
    assert!(
        guarded.contains("The kernel's OOM killer did nothing: the cgroup's oom_kill 0 -> 0."),
        "{guarded}"
    );
    assert!(
        guarded.contains("The server log has no crash or restart lines"),
        "{guarded}"
    );
    assert!(guarded.contains("clean shutdown"), "{guarded}");

    let cgroups = demo_cgroups(&stdout);
    assert_eq!(cgroups.len(), 2, "{stdout}");
    for cgroup in cgroups {
        assert!(!cgroup.exists(), "{} left behind", cgroup.display());
        assert!(
            stdout.contains(&format!("the cgroup {}", cgroup.display())),
            "the demo says it removed {}:\n{stdout}",
            cgroup.display()
        );
    }
    eprintln!("the two-sided demo took {seconds:.1} s");
}

/// Where no memory cgroup can be created (here: run as `nobody`), the demo says why in one line
/// and shows the guarded side alone; `--guarded-only` does the same on request.
#[test]
fn the_demo_without_a_cgroup_shows_the_guarded_side_and_says_why() {
    // nobody must be able to run the binary and read the library wherever the workspace is.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.path().join("oomguard");
    let library = dir.path().join("liboomguard.so");
    std::fs::copy(oomguard_binary(), &binary).unwrap();
    std::fs::copy(library_path(), &library).unwrap();
    let mut command = if is_root() {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(&binary);
        command
    } else {
        Command::new(&binary)
    };
    plain(&mut command)
        .arg("demo")
        .arg("--library")
        .arg(&library);
    let (out, stdout, stderr) = run_output(&mut command);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(
            "Cannot show the kernel's OOM kill here: no memory cgroup could be created ("
        ) && first.contains("Permission denied")
            && first.ends_with("showing the guarded side only."),
        "one line says why:\n{stdout}"
    );
    assert_guarded_side_only(&stdout);

    let (out, stdout, stderr) = run_output(
        oomguard_command()
            .args(["demo", "--guarded-only", "--library"])
            .arg(library_path()),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("--guarded-only: showing the guarded side only"),
        "{stdout}"
    );
    assert_guarded_side_only(&stdout);
}

/// Ctrl-C at the first pause stops the server and removes the cluster and (both sides, as root
/// here) the cgroup the server ran in.
#[test]
fn ctrl_c_during_the_demo_stops_the_server_and_removes_the_cluster() {
    let guarded_only = opted_out("ctrl_c_during_the_demo… (the cgroup part; the rest still runs)");
    let mut command = oomguard_command();
    command.arg("demo").arg("--step");
    if guarded_only {
        command.arg("--guarded-only");
    }
    let mut child = command
        .arg("--library")
        .arg(library_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (mut directory, mut postmaster) = (None, None);
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the demo ended early:\n{seen}"
        );
        seen.push_str(&line);
        if let Some(rest) = line.split(" in /tmp/").nth(1) {
            let dir = rest.split(',').next().unwrap();
            directory = Some(PathBuf::from(format!("/tmp/{dir}")));
            let pid = line.split("postmaster pid ").nth(1).unwrap();
            postmaster = Some(
                pid.split(',')
                    .next()
                    .unwrap()
                    .trim()
                    .parse::<i32>()
                    .unwrap(),
            );
        }
        if line.starts_with("[press Enter") {
            break;
        }
    }
    let (directory, postmaster) = (directory.unwrap(), postmaster.unwrap());
    assert!(directory.is_dir());
    let cgroups = demo_cgroups(&seen);
    if guarded_only {
        assert!(cgroups.is_empty(), "{seen}");
    } else {
        assert_eq!(cgroups.len(), 1, "the server runs in a cgroup:\n{seen}");
        let procs = std::fs::read_to_string(cgroups[0].join("cgroup.procs")).unwrap();
        assert!(
            procs
                .lines()
                .any(|pid| pid.trim() == postmaster.to_string()),
            "postmaster {postmaster} in {}: {procs}",
            cgroups[0].display()
        );
    }
    // SAFETY: sending SIGINT to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!directory.exists(), "{} left behind", directory.display());
    // SAFETY: signal 0 only asks whether the process exists.
    let alive = unsafe { libc::kill(postmaster, 0) } == 0;
    assert!(!alive, "postmaster {postmaster} left running");
    for cgroup in cgroups {
        assert!(!cgroup.exists(), "cgroup {} left behind", cgroup.display());
    }
}

#[test]
fn status_from_another_pid_namespace_never_reaps_live_processes() {
    let dir = tempfile::tempdir().unwrap();
    while_holding(dir.path(), &[("OOM_GUARD_LIMIT", "512Mi")], |pid| {
        // A sidecar container sees other pids: there, the probe's pid is nobody's.
        let output = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(oomguard_binary())
            .arg("status")
            .arg("--dir")
            .arg(dir.path())
            .output()
            .expect("unshare (util-linux) must be installed");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "unshare --pid needs root (or user namespaces): {stderr}"
        );
        assert!(
            stdout.contains("not reaped: the guarded processes are in another PID namespace"),
            "{stdout}"
        );
        let (_, here, _) = output_of_status(dir.path());
        assert!(
            here.lines()
                .any(|line| line.trim_start().starts_with(&pid.to_string())),
            "the live probe kept its slot:\n{here}"
        );
    });
}

fn output_of_status(dir: &Path) -> (Output, String, String) {
    run_output(oomguard_command().arg("status").arg("--dir").arg(dir))
}

#[test]
fn a_reader_that_goes_away_ends_status_and_limit_quietly() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let dir = tempfile::tempdir().unwrap();
    while_holding(dir.path(), &[], |_| {
        for args in [&["status"][..], &["status", "--json"], &["limit"]] {
            let mut fds = [0; 2];
            // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            // SAFETY: both descriptors were just created and are owned here alone.
            let (read_end, write_end) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            drop(read_end); // like `| head -1` after its line: nobody reads any more
            let (out, _, stderr) = run_output(
                oomguard_command()
                    .args(args)
                    .arg("--dir")
                    .arg(dir.path())
                    .stdout(Stdio::from(write_end)),
            );
            assert!(
                out.status.success() && stderr.is_empty(),
                "oomguard {args:?} into a closed pipe: {} {stderr}",
                out.status
            );
        }
    });
}

/// The process `pid` of the only domain of `status --json`.
fn process_in<'a>(json: &'a serde_json::Value, domain: &str, pid: i32) -> &'a serde_json::Value {
    domain_named(json, domain)["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("no process {pid} in {json:#}"))
}

#[test]
fn status_shows_each_processs_budget_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let domain = [("OOM_GUARD_DOMAIN", "oomguard-budgets")];
    // Beside the budgeted probe, one whose default budget is switched off.
    let mut unbudgeted = Probe::start(
        "accounting",
        dir.path(),
        &["hold", "1048576", "2"],
        &[domain[0], ("OOM_GUARD_BACKEND_LIMIT", "off")],
    );
    unbudgeted.expect("held");
    let budgeted_env = [domain[0], ("OOM_GUARD_BACKEND_LIMIT", "64Mi")];
    while_holding(dir.path(), &budgeted_env, |pid| {
        let json = status_json(dir.path());
        let budgeted = process_in(&json, "oomguard-budgets", pid as i32);
        assert_eq!(budgeted["budget_bytes"], 64 << 20, "{budgeted:#}");
        assert_eq!(budgeted["budget_source"], "OOM_GUARD_BACKEND_LIMIT");
        assert_eq!(budgeted["last_refusal_cause"], "none");
        let off = process_in(&json, "oomguard-budgets", unbudgeted.pid());
        assert!(off["budget_bytes"].is_null(), "{off:#}");
        assert_eq!(off["budget_source"], "OOM_GUARD_BACKEND_LIMIT");
        assert_eq!(domain_named(&json, "oomguard-budgets")["budget_denials"], 0);

        let (out, stdout, stderr) = output_of_status(dir.path());
        assert!(out.status.success(), "{stderr}");
        let row = row_of(&stdout, pid).unwrap_or_else(|| panic!("no row:\n{stdout}"));
        assert!(row.contains("64.0 MiB (default)"), "{row}");
        let row = row_of(&stdout, unbudgeted.pid() as u32).unwrap();
        assert!(row.contains("off (default)"), "{row}");
        assert!(
            stdout.contains("\nbudget   default = OOM_GUARD_BACKEND_LIMIT\n"),
            "the short source is explained:\n{stdout}"
        );

        let (out, csv, stderr) = run_output(
            oomguard_command()
                .args(["status", "--csv", "--dir"])
                .arg(dir.path()),
        );
        assert!(out.status.success(), "{stderr}");
        let row = csv
            .lines()
            .find(|line| line.split(',').nth(1) == Some(&pid.to_string()))
            .unwrap_or_else(|| panic!("no CSV row for {pid}:\n{csv}"));
        assert!(
            row.ends_with(",67108864,OOM_GUARD_BACKEND_LIMIT,none"),
            "{row}"
        );
    });
    unbudgeted.proceed();
    unbudgeted.expect("freed");
    unbudgeted.proceed();
    unbudgeted.finish();
}

#[test]
fn status_names_the_cause_of_each_refusal_per_process_and_per_domain() {
    let dir = tempfile::tempdir().unwrap();
    // One domain refused past its own budget, one past its limit.
    let (budget, full) = oomguard_tests::budget_and_full_domains(dir.path());
    let json = status_json(dir.path());
    let budget_domain = domain_named(&json, "oomguard-budget");
    assert!(
        budget_domain["budget_denials"].as_u64().unwrap() >= 1,
        "{budget_domain:#}"
    );
    assert_eq!(
        budget_domain["domain_limit_denials"], 0,
        "{budget_domain:#}"
    );
    assert_eq!(budget_domain["kernel_denials"], 0, "{budget_domain:#}");
    assert_eq!(
        budget_domain["budget_denials"], budget_domain["denied_allocations"],
        "{budget_domain:#}"
    );
    let refused = process_in(&json, "oomguard-budget", budget.pid());
    assert_eq!(
        refused["last_refusal_cause"], "backend_budget",
        "{refused:#}"
    );
    assert_eq!(refused["budget_bytes"], 16 << 20, "{refused:#}");
    assert!(refused["denials"].as_u64().unwrap() >= 1, "{refused:#}");

    let full_domain = domain_named(&json, "oomguard-full");
    assert!(
        full_domain["domain_limit_denials"].as_u64().unwrap() >= 1,
        "{full_domain:#}"
    );
    assert_eq!(full_domain["budget_denials"], 0, "{full_domain:#}");
    let refused = process_in(&json, "oomguard-full", full.pid());
    assert_eq!(refused["last_refusal_cause"], "domain_limit", "{refused:#}");
    assert!(refused["budget_bytes"].is_null(), "{refused:#}");
    assert_eq!(refused["budget_source"], "none", "{refused:#}");

    let (out, stdout, stderr) = output_of_status(dir.path());
    assert!(out.status.success(), "{stderr}");
    let (budget_text, full_text) = stdout.split_at(stdout.find("oomguard-full\n").unwrap());
    let budget_text = &budget_text[budget_text.find("oomguard-budget\n").unwrap()..];
    let refused_line = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("refused  "))
            .unwrap_or_else(|| panic!("no refused line:\n{text}"))
            .to_owned()
    };
    let line = refused_line(budget_text);
    assert!(
        line.contains("over backend budgets") && !line.contains("over the domain limit"),
        "{line}"
    );
    let line = refused_line(full_text);
    assert!(
        line.contains("over the domain limit") && !line.contains("over backend budgets"),
        "{line}"
    );
    let row = row_of(budget_text, budget.pid() as u32).unwrap();
    assert!(row.contains("backend_budget"), "{row}");
    let row = row_of(full_text, full.pid() as u32).unwrap();
    assert!(row.contains("domain_limit"), "{row}");

    for (mut probe, cause) in [(budget, "backend_budget"), (full, "domain_limit")] {
        probe.proceed();
        let stderr = probe.finish();
        assert!(
            stderr.contains(&format!("[cause {cause}]")),
            "the guard's line names the cause: {stderr}"
        );
    }
}

#[test]
fn run_rejects_a_bad_default_budget_naming_the_accepted_forms() {
    // PostgreSQL's unit, which oomguard.backend_memory_limit takes but the variable does not.
    for (value, why) in [("512MB", "ambiguous"), ("150%", "at most 100%")] {
        let (out, stdout, stderr) = run_output(
            oomguard_command()
                .args(["run", "--library"])
                .arg(library_path())
                .args(["--", "echo", "started"])
                .env("OOM_GUARD_BACKEND_LIMIT", value),
        );
        assert_eq!(out.status.code(), Some(126), "{value:?}: {stderr}");
        assert!(stdout.is_empty(), "nothing ran: {stdout}");
        assert!(
            stderr.contains(&format!("OOM_GUARD_BACKEND_LIMIT={value:?} is not valid"))
                && stderr.contains(why)
                && stderr.contains(oomguard_core::budget::DEFAULT_FORMS),
            "{stderr}"
        );
    }
    // The accepted forms start the command (under the guard, in a directory of its own).
    let dir = tempfile::tempdir().unwrap();
    // An empty value is "not set", as for OOM_GUARD_LIMIT.
    for value in ["512Mi", "25%", "off", ""] {
        let (out, stdout, stderr) = run_output(
            oomguard_command()
                .args(["run", "--library"])
                .arg(library_path())
                .args(["--", "echo", "started"])
                .env("OOM_GUARD_BACKEND_LIMIT", value)
                .env("OOM_GUARD_DIR", dir.path()),
        );
        assert!(out.status.success(), "{value}: {stderr}");
        assert_eq!(stdout, "started\n", "{value}");
    }
}

/// The configuration file is where `OOM_GUARD_DIR` lives when the environment never reaches
/// the server (Spilo, `/etc/ld.so.preload`): `status` looks there too, and ignores a file the
/// guard would ignore, saying why.
#[test]
fn status_reads_the_segment_directory_from_the_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("oomguard.conf");
    std::fs::write(
        &config,
        format!(
            "# as in a deployment\nOOM_GUARD_DIR=\"{}\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    while_holding(dir.path(), &[], |pid| {
        let (out, stdout, stderr) = run_output(
            oomguard_command()
                .env("OOM_GUARD_CONFIG", &config)
                .args(["status", "--csv"]),
        );
        assert!(out.status.success(), "{stderr}");
        assert!(
            stdout
                .lines()
                .any(|line| line.contains(&format!(",{pid},"))),
            "the directory of the configuration file was read: {stdout}"
        );
        // Writable by others: the guard ignores such a file, and so does the CLI.
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (_, stdout, stderr) = run_output(
            oomguard_command()
                .env("OOM_GUARD_CONFIG", &config)
                .env("OOM_GUARD_DIR", dir.path())
                .args(["status", "--csv"]),
        );
        assert!(
            stderr.contains(&config.display().to_string())
                && stderr.contains("writable only by its owner")
                && stderr.contains("ignored"),
            "{stderr}"
        );
        assert!(stdout.contains(&format!(",{pid},")), "{stdout}");
    });
}

/// Another user's segment in the directory (the official image's entrypoint runs its root phase
/// under `/etc/ld.so.preload`, then the server runs as `postgres`) is skipped with a warning:
/// `status --csv` still prints this user's domain and exits 0, so the SQL view over `file_fdw`
/// keeps working.
#[test]
fn another_users_segment_is_skipped_with_a_warning_and_status_succeeds() {
    assert!(
        is_root(),
        "this test runs processes as another user: run it as root"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    // The binary and the library where `nobody` can reach them, whatever the workspace's
    // permissions.
    let library_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(library_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = library_dir.path().join("cli");
    std::fs::copy(oomguard_binary(), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let library = library_dir.path().join("liboomguard.so");
    std::fs::copy(library_path(), &library).unwrap();
    std::fs::set_permissions(&library, std::fs::Permissions::from_mode(0o644)).unwrap();
    let library = library.display().to_string();

    // setpriv runs under the guard as root (a root-owned 0600 segment), then execs the probe
    // as nobody, whose domain is its own.
    let mut probe = Probe::start_wrapped(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        "accounting",
        dir.path(),
        &["hold", "1048576", "8"],
        &[("LD_PRELOAD", &library)],
    );
    probe.expect("held");
    let root_segments = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("oomguard-0-")
        })
        .count();
    assert_eq!(root_segments, 1, "setpriv left root's segment");

    let mut command = Command::new(&binary);
    plain(&mut command)
        .env("OOM_GUARD_DIR", dir.path())
        .args(["status", "--csv"]);
    std::os::unix::process::CommandExt::uid(&mut command, 65534);
    std::os::unix::process::CommandExt::gid(&mut command, 65534);
    let (out, stdout, stderr) = run_output(&mut command);
    assert!(out.status.success(), "exit {}: {stderr}", out.status);
    assert!(
        stdout
            .lines()
            .any(|line| line.contains(&format!(",{},", probe.pid()))),
        "nobody's domain is listed: {stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("warning: skipped another user's segment")
            && stderr.contains("oomguard-0-"),
        "{stderr}"
    );
    probe.proceed();
    probe.expect("freed");
    probe.proceed();
    probe.finish();
}
