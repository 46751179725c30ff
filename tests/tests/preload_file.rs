//! Activation without environment: the guard named in `/etc/ld.so.preload` and
//! configured by `/etc/oomguard/oomguard.conf` guards a real PostgreSQL server started with an
//! empty environment, and a program that is not PostgreSQL is never refused by default. The
//! script runs in a private mount namespace where a copy of /etc is bind-mounted over /etc, so
//! the machine's real `/etc/ld.so.preload` is never changed.

use std::collections::HashMap;
use std::process::Command;

use oomguard_cluster::PgBinaries;
use oomguard_tests::{library_path, probe, workspace_root};

#[test]
fn ld_so_preload_and_the_configuration_file_guard_a_server_without_environment() {
    let work = tempfile::tempdir().unwrap();
    let bindir = PgBinaries::discover()
        .expect("PostgreSQL server binaries (apt-get install postgresql)")
        .bindir;
    let script = workspace_root().join("tests/scripts/ld-so-preload.sh");
    let output = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "bash",
        ])
        .arg(&script)
        .arg(work.path())
        .arg(library_path())
        .arg(probe("accounting"))
        .arg(&bindir)
        .output()
        .expect("run unshare(1) (util-linux)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the script failed ({}; it needs root for unshare --mount):\n{stdout}\n{stderr}",
        output.status
    );
    let lines: HashMap<&str, &str> = stdout
        .lines()
        .filter_map(|line| line.split_once(' '))
        .collect();
    let field = |key: &str| {
        *lines
            .get(key)
            .unwrap_or_else(|| panic!("no {key} line:\n{stdout}\n{stderr}"))
    };
    assert_eq!(field("ENV"), "0", "the script ran with an environment");
    assert_eq!(
        field("POSTMASTER_ENV"),
        "0",
        "the postmaster got OOM_GUARD_*/LD_PRELOAD"
    );
    assert_ne!(
        field("MAPPED"),
        "0",
        "the guard is not mapped in the postmaster"
    );
    assert_eq!(
        field("PROBE"),
        "held",
        "a non-PostgreSQL program was refused (400 MiB against 256 MiB)"
    );
    assert!(
        field("HOG").contains("out of memory"),
        "the hog was not refused: {stdout}"
    );
    assert_eq!(
        field("AFTER"),
        "1",
        "the server did not answer after the hog"
    );
    assert!(
        field("LIMIT").contains("in client backend"),
        "no refusal line in the server log: {stdout}"
    );
    assert!(
        !std::fs::read_to_string("/etc/ld.so.preload")
            .unwrap_or_default()
            .contains("liboomguard"),
        "the machine's real /etc/ld.so.preload was changed"
    );
}
