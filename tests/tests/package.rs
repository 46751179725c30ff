//! The Debian package, for real: built by cargo-deb from the release build, installed with
//! `dpkg -i`, its files checked where `dpkg -L` says they are, a PostgreSQL server guarded through
//! the installed library refusing a hog with `ERROR: out of memory`, then `dpkg -r` and `dpkg -P`
//! removing it (the conffile only at purge). A drop guard purges the package if the test fails
//! half-way.
//!
//! Needs root (dpkg) and cargo-deb (`tools/install-deps test` installs it). It refuses to run if
//! the package is already installed or `/etc/oomguard/oomguard.conf` exists: it would otherwise
//! purge an installation (or a configuration) it did not make. Remove it (`dpkg -P oomguard`) and
//! run again. Nothing else in the test suite uses the installed files: every test that runs
//! `oomguard run` or the demo names its library with `--library`, and the release binary finds
//! `target/release/liboomguard.so` next to itself before `/usr/lib/<multiarch>/oomguard/`; the
//! conffile as shipped sets nothing. This is the only test in this file, so nothing in this
//! test binary runs while the package is installed (cargo runs test binaries one at a time).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use oomguard_cli::demo::HOG_QUERY;
use oomguard_cluster::{pid_maps_library, Cluster, ClusterOptions};
use oomguard_tests::{is_root, mode, run_output, workspace_root};

const PACKAGE: &str = "oomguard";
const BINARY: &str = "/usr/bin/oomguard";
const LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/oomguard/liboomguard.so";
const CONFFILE: &str = "/etc/oomguard/oomguard.conf";
const README: &str = "/usr/share/doc/oomguard/README.md";
const RULES_DIR: &str = "/usr/share/oomguard/prometheus";
const GRAFANA_DIR: &str = "/usr/share/oomguard/grafana";
const PRELOAD_FILE: &str = "/etc/ld.so.preload";
const GUARD_KEYS: [&str; 10] = oomguard_core::config::SETTING_NAMES;

/// Runs a command that must succeed; returns its stdout.
fn ok(cmd: &mut Command) -> String {
    let (out, stdout, stderr) = run_output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// `dpkg-query`'s status of the package, or `None` if dpkg knows nothing of it.
fn package_status() -> Option<String> {
    let (out, stdout, _) =
        run_output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}", PACKAGE]));
    (out.status.success() && !stdout.trim().is_empty()).then(|| stdout.trim().to_owned())
}

/// Purges the package when dropped unless disarmed, so a failing test leaves nothing installed.
struct Purge {
    armed: bool,
}

impl Drop for Purge {
    fn drop(&mut self) {
        if self.armed {
            let (out, _, stderr) = run_output(Command::new("dpkg").args(["-P", PACKAGE]));
            if !out.status.success() {
                eprintln!("cleanup: dpkg -P {PACKAGE} failed: {stderr}");
            }
        }
    }
}

/// The repository's files matching `dir/*.ext`, by name.
fn repo_files(dir: &Path, ext: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(ext))
        .collect();
    names.sort();
    names
}

/// Builds the .deb from the release build (`cargo deb -p oomguard-cli --no-build`).
fn build_deb() -> PathBuf {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let (out, _, stderr) = run_output(Command::new(&cargo).args(["deb", "--version"]));
    assert!(
        out.status.success(),
        "cargo-deb is not installed (`cargo deb --version`: {stderr}); run `tools/install-deps \
         test` or `cargo install cargo-deb --locked`"
    );
    for built in ["target/release/oomguard", "target/release/liboomguard.so"] {
        assert!(
            root.join(built).is_file(),
            "{built} is missing: run `cargo build --release --workspace` first"
        );
    }
    let out_dir = root.join("target/package-test");
    fs::create_dir_all(&out_dir).unwrap();
    let deb = out_dir.join("oomguard.deb");
    let _ = fs::remove_file(&deb);
    ok(Command::new(&cargo)
        .current_dir(&root)
        .args([
            "deb",
            "-p",
            "oomguard-cli",
            "--no-build",
            "--strip",
            "--output",
        ])
        .arg(&deb));
    assert!(deb.is_file(), "cargo deb wrote no {}", deb.display());
    deb
}

#[test]
fn the_deb_installs_guards_postgres_and_purges_cleanly() {
    assert!(
        is_root(),
        "this test installs a Debian package with dpkg and needs root"
    );
    if let Some(status) = package_status() {
        assert!(
            !status.starts_with('i') && !status.starts_with("rc"),
            "the {PACKAGE} package is already on this machine (dpkg status {status:?}): this test \
             installs and purges it and will not remove an installation it did not make; remove \
             it with `dpkg -P {PACKAGE}` and run the test again"
        );
    }
    assert!(
        !Path::new(CONFFILE).exists(),
        "{CONFFILE} exists without the package: this test would take it over and purge it; move \
         it away and run the test again"
    );
    let preload_before = fs::read(PRELOAD_FILE).ok();

    let deb = build_deb();
    let fields = ok(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .args(["Package", "Description"]));
    assert!(fields.contains("Package: oomguard\n"), "{fields}");
    // Debian's policy: a synopsis under 80 characters, binaries without debug information.
    let synopsis = fields
        .lines()
        .find_map(|line| line.strip_prefix("Description: "))
        .unwrap_or_else(|| panic!("no Description field: {fields}"));
    assert!(
        synopsis.len() < 80,
        "synopsis of {} characters: {synopsis}",
        synopsis.len()
    );
    // Whole on its line: a longer one is wrapped into the extended description.
    assert!(
        fields.contains(&format!("Description: {synopsis}\n liboomguard.so, loaded")),
        "the synopsis runs on past its line: {fields}"
    );
    assert!(
        fields.contains(PRELOAD_FILE) && fields.contains(LIBRARY),
        "the description says how to enable the guard: {fields}"
    );

    let mut purge = Purge { armed: true };
    ok(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(
        package_status().is_some_and(|s| s.starts_with("ii")),
        "installed: {:?}",
        package_status()
    );

    // Every file where it belongs, as dpkg lists it.
    let listed = ok(Command::new("dpkg").args(["-L", PACKAGE]));
    let listed: Vec<&str> = listed.lines().collect();
    let root = workspace_root();
    let mut expected: Vec<String> = vec![
        BINARY.into(),
        LIBRARY.into(),
        CONFFILE.into(),
        README.into(),
    ];
    let rules = repo_files(&root.join("packaging/prometheus"), ".yaml");
    assert!(rules.len() >= 2, "alert rules and their tests: {rules:?}");
    expected.extend(rules.iter().map(|name| format!("{RULES_DIR}/{name}")));
    let grafana = root.join("packaging/grafana");
    if grafana.is_dir() {
        expected.extend(
            repo_files(&grafana, ".json")
                .iter()
                .map(|name| format!("{GRAFANA_DIR}/{name}")),
        );
    }
    for path in &expected {
        assert!(
            listed.contains(&path.as_str()),
            "dpkg -L lacks {path}: {listed:#?}"
        );
        assert!(Path::new(path).is_file(), "{path} is not installed");
    }
    assert_eq!(mode(BINARY), 0o755);
    for (path, at_most) in [(BINARY, 8u64 << 20), (LIBRARY, 2 << 20)] {
        let size = fs::metadata(path).unwrap().len();
        assert!(size <= at_most, "{path} is {size} bytes: not stripped?");
    }
    assert_eq!(mode(LIBRARY), 0o644);
    assert_eq!(mode(CONFFILE), 0o644);
    let conffiles = ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", PACKAGE]));
    assert!(conffiles.contains(CONFFILE), "conffiles: {conffiles}");
    // The example configuration names every key and sets none.
    let conf = fs::read_to_string(CONFFILE).unwrap();
    for key in GUARD_KEYS {
        assert!(conf.contains(&format!("#{key}=")), "{key} missing:\n{conf}");
    }
    let active: Vec<&str> = conf
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .collect();
    assert!(active.is_empty(), "settings not commented out: {active:?}");
    assert_eq!(
        fs::read(PRELOAD_FILE).ok(),
        preload_before,
        "installing must not touch {PRELOAD_FILE}"
    );

    // The installed CLI finds the installed library by itself.
    let segments = tempfile::tempdir().unwrap();
    let stdout = ok(Command::new(BINARY)
        .args(["run", "--", "sh", "-c"])
        .arg("echo \"$LD_PRELOAD\"; grep -c /oomguard/liboomguard.so /proc/self/maps")
        .env_remove("OOM_GUARD_LIBRARY")
        .env_remove("LD_PRELOAD")
        .env("OOM_GUARD_DIR", segments.path()));
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(LIBRARY), "{stdout}");
    let mapped: u32 = lines.next().unwrap_or("0").trim().parse().unwrap();
    assert!(mapped > 0, "the installed library is mapped: {stdout}");

    // A PostgreSQL server guarded through the installed library.
    let mut cluster = Cluster::create_temp(&ClusterOptions::default()).unwrap();
    let segment_dir = cluster.base_dir().join("guard");
    fs::create_dir_all(&segment_dir).unwrap();
    let user = cluster.server_user().clone();
    if user.switch {
        std::os::unix::fs::chown(&segment_dir, Some(user.uid), Some(user.gid)).unwrap();
    }
    let env = [
        ("LD_PRELOAD", LIBRARY),
        ("OOM_GUARD_DIR", segment_dir.to_str().unwrap()),
        ("OOM_GUARD_LIMIT", "256Mi"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    cluster.start(&env, &[]).unwrap();
    let postmaster = cluster.postmaster_pid().unwrap();
    assert!(
        pid_maps_library(postmaster, LIBRARY).unwrap(),
        "the postmaster (pid {postmaster}) maps {LIBRARY}"
    );
    let mut client = cluster.connect().unwrap();
    let err = client
        .simple_query(HOG_QUERY)
        .expect_err("the hog must be refused");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(db.code().code(), "53200", "{db}");
    assert_eq!(db.message(), "out of memory", "{db}");
    let rows = client.simple_query("SELECT 1").unwrap();
    assert!(!rows.is_empty(), "the session carries on");
    let status = ok(Command::new(BINARY)
        .args(["status", "--dir"])
        .arg(&segment_dir));
    assert!(
        status.contains(&postmaster.to_string()),
        "the installed CLI shows the postmaster:\n{status}"
    );
    drop(client);
    let stopped = cluster.stop().unwrap();
    assert!(
        stopped.clean,
        "the guarded server shuts down cleanly: {stopped:?}"
    );
    drop(cluster);

    // Remove: everything but the conffile goes.
    ok(Command::new("dpkg").args(["-r", PACKAGE]));
    for path in expected.iter().filter(|p| *p != CONFFILE) {
        assert!(!Path::new(path).exists(), "{path} left after dpkg -r");
    }
    assert!(Path::new(CONFFILE).is_file(), "dpkg -r keeps the conffile");
    assert!(
        package_status().is_some_and(|s| s.starts_with("rc")),
        "removed, config files left: {:?}",
        package_status()
    );
    // Purge: the conffile and its directory go too.
    ok(Command::new("dpkg").args(["-P", PACKAGE]));
    purge.armed = false;
    assert!(!Path::new(CONFFILE).exists(), "{CONFFILE} left after purge");
    assert!(
        !Path::new("/etc/oomguard").exists(),
        "/etc/oomguard left after purge"
    );
    assert!(
        !package_status().is_some_and(|s| s.starts_with('i') || s.starts_with("rc")),
        "purged: {:?}",
        package_status()
    );
    assert_eq!(
        fs::read(PRELOAD_FILE).ok(),
        preload_before,
        "removing must not touch {PRELOAD_FILE}"
    );
}
