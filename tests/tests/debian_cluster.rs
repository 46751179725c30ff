//! The Debian route, for real: a cluster made by `pg_createcluster` and started by
//! `pg_ctlcluster`, which replaces the server's environment with the cluster's
//! `/etc/postgresql/<version>/<cluster>/environment` file. A systemd `Environment=` or the
//! caller's environment never reaches the server there: that file is where `LD_PRELOAD` and the
//! guard's settings go. The server must map the guard, and a hog must end in `ERROR: out of
//! memory` while the session lives.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use oomguard_cluster::{pid_maps_library, stage_library, PgBinaries};
use oomguard_tests::sessions::expect_out_of_memory;
use oomguard_tests::{is_root, library_path, plain, run_output};

/// Drops the cluster (stopping it) when the test ends, also when it fails.
struct DebianCluster {
    version: String,
    name: String,
}

impl Drop for DebianCluster {
    fn drop(&mut self) {
        let _ = Command::new("pg_dropcluster")
            .args([&self.version, &self.name, "--stop"])
            .status();
    }
}

fn run(command: &mut Command) -> String {
    let (out, stdout, stderr) = run_output(command);
    assert!(
        out.status.success(),
        "{command:?} failed: {stdout}\n{stderr}"
    );
    stdout
}

#[test]
fn a_cluster_started_by_pg_ctlcluster_is_guarded_through_its_environment_file() {
    assert!(
        is_root(),
        "pg_createcluster and pg_ctlcluster need root: run this test as root"
    );
    assert!(
        Path::new("/usr/bin/pg_createcluster").is_file(),
        "pg_createcluster not found: install postgresql-common (tools/install-deps test does)"
    );
    let binaries = PgBinaries::discover().expect("PostgreSQL server binaries");
    let version = binaries
        .bindir
        .parent()
        .and_then(Path::file_name)
        .and_then(|name| name.to_str())
        .expect("binaries under /usr/lib/postgresql/<version>/bin")
        .to_owned();
    let stage = tempfile::Builder::new()
        .prefix("oomguard-debian-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(
        stage.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let library = stage_library(&library_path(), &stage.path().join("lib")).unwrap();
    let segments = stage.path().join("guard");
    std::fs::create_dir(&segments).unwrap();
    run(Command::new("chown")
        .arg("postgres:postgres")
        .arg(&segments));

    let name = format!("oomguard{}", std::process::id());
    let port = oomguard_tests::free_loopback_port();
    let cluster = DebianCluster {
        version: version.clone(),
        name: name.clone(),
    };
    run(plain(&mut Command::new("pg_createcluster")).args([
        &version,
        &name,
        "--port",
        &port.to_string(),
        "--",
        "--auth-local=trust",
    ]));
    let environment = PathBuf::from(format!("/etc/postgresql/{version}/{name}/environment"));
    assert!(
        environment.is_file(),
        "pg_createcluster made no {}",
        environment.display()
    );
    std::fs::write(
        &environment,
        format!(
            "LD_PRELOAD='{}'\nOOM_GUARD_LIMIT='256Mi'\nOOM_GUARD_DIR='{}'\n",
            library.display(),
            segments.display()
        ),
    )
    .unwrap();
    // The caller's environment says otherwise: pg_ctlcluster must not pass it on.
    run(plain(&mut Command::new("pg_ctlcluster"))
        .env("OOM_GUARD_LIMIT", "64Gi")
        .args([&version, &name, "start"]));

    let data = PathBuf::from(format!("/var/lib/postgresql/{version}/{name}"));
    let pid_file = std::fs::read_to_string(data.join("postmaster.pid")).unwrap();
    let postmaster: u32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    assert!(
        pid_maps_library(postmaster, "liboomguard.so").unwrap(),
        "the postmaster started by pg_ctlcluster does not map the guard"
    );
    let mut config = postgres::Config::new();
    config
        .host_path("/var/run/postgresql")
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = loop {
        match config.connect(postgres::NoTls) {
            Ok(client) => break client,
            Err(error) if Instant::now() > deadline => panic!("cannot connect: {error}"),
            Err(_) => {}
        }
    };
    // A 400 MB array under a 256 MiB limit.
    expect_out_of_memory(
        &mut client,
        &["SELECT cardinality(array_fill(1, ARRAY[100000000]))"],
    );
    let one: i32 = client.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1, "the session lives on");
    // The limit is the environment file's, not the caller's.
    let status = run(oomguard_tests::oomguard_command()
        .args(["status", "--json", "--dir"])
        .arg(&segments));
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(json[0]["limit_bytes"], 256u64 << 20, "{status}");
    drop(client);
    drop(cluster);
}
