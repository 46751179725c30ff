//! End-to-end checks of the throwaway-cluster helper against the real PostgreSQL binaries (no
//! preload). These fail, rather than skip, when PostgreSQL is not installed: the error says how
//! to install it.

use std::fs;

use oomguard_cluster::{
    backend_pids_by_type, pid_maps_library, stage_library, Cluster, ClusterOptions, PgBinaries,
};

fn options() -> ClusterOptions {
    let binaries = PgBinaries::discover().unwrap_or_else(|e| panic!("{e}"));
    ClusterOptions {
        binaries: Some(binaries),
        ..Default::default()
    }
}

/// The `Uid:` line of /proc/PID/status: real, effective, saved, fs.
fn uids_of(pid: u32) -> Vec<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect()
}

#[test]
fn initdb_start_query_stop() {
    let mut cluster = Cluster::create_temp(&options()).unwrap_or_else(|e| panic!("{e:#}"));
    let marker = ("OOMGUARD_TEST_MARKER".to_string(), "present-42".to_string());
    cluster
        .start(
            std::slice::from_ref(&marker),
            &[("work_mem".to_string(), "8MB".to_string())],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    let pid = cluster.postmaster_pid().expect("running");
    assert!(cluster.is_running());

    let mut client = cluster.connect().unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
    let jit: String = client.query_one("SHOW jit", &[]).unwrap().get(0);
    assert_eq!(jit, "off");
    let work_mem: String = client.query_one("SHOW work_mem", &[]).unwrap().get(0);
    assert_eq!(work_mem, "8MB");
    let listen: String = client
        .query_one("SHOW listen_addresses", &[])
        .unwrap()
        .get(0);
    assert_eq!(listen, "");

    // The extra environment reached the postmaster.
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(environ
        .split(|&b| b == 0)
        .any(|kv| kv == b"OOMGUARD_TEST_MARKER=present-42"));

    // Runs as the expected user (never root).
    let uids = uids_of(pid);
    assert!(
        uids.iter().all(|&u| u == cluster.server_user().uid),
        "{uids:?}"
    );
    assert_ne!(uids[1], 0, "postgres must not run as root");

    let processes = backend_pids_by_type(&mut client).unwrap();
    let checkpointer = processes
        .iter()
        .find(|(_, kind)| kind == "checkpointer")
        .map(|(pid, _)| *pid)
        .unwrap_or_else(|| panic!("no checkpointer in {processes:?}"));
    assert!(processes.iter().any(|(_, kind)| kind == "client backend"));

    // /proc/PID/maps works on server processes too (as root or as the same user).
    assert!(pid_maps_library(checkpointer, "libc.so.6").unwrap());
    assert!(!pid_maps_library(checkpointer, "liboomguard.so").unwrap());
    drop(client);

    let outcome = cluster.stop().unwrap();
    assert!(outcome.clean, "{outcome:?}\n{}", cluster.log_tail(30));
    assert!(!outcome.forced);
    assert_eq!(cluster.postmaster_pid(), None);
    let log = cluster.log_text().unwrap();
    assert!(
        log.contains("database system is ready to accept connections"),
        "{log}"
    );
    assert!(log.contains("database system is shut down"), "{log}");

    // Stopping twice is harmless.
    assert!(!cluster.stop().unwrap().was_started);
}

#[test]
fn failed_start_reports_the_log() {
    let mut cluster = Cluster::create_temp(&options()).unwrap_or_else(|e| panic!("{e:#}"));
    let err = cluster
        .start(&[], &[("shared_buffers".to_string(), "banana".to_string())])
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("exited during startup"), "{text}");
    assert!(text.contains("shared_buffers"), "{text}");
    assert!(!cluster.is_running());
}

#[test]
fn staged_library_is_readable_by_the_server_user() {
    let cluster = Cluster::create_temp(&options()).unwrap_or_else(|e| panic!("{e:#}"));
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("liboomguard.so");
    fs::write(&src, b"\x7fELF").unwrap();
    let staged = stage_library(&src, &cluster.base_dir().join("lib")).unwrap();
    assert!(staged.starts_with(cluster.base_dir()));
    // The server user reads it: run `cat` as that user.
    let user = cluster.server_user();
    let mut cmd = std::process::Command::new("cat");
    cmd.arg(&staged);
    if user.switch {
        use std::os::unix::process::CommandExt;
        cmd.uid(user.uid).gid(user.gid);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"\x7fELF");
}
