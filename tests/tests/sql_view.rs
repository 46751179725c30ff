//! The SQL view for DBAs (`packaging/sql/oomguard_processes.sql`): `oomguard status --csv`
//! read by PostgreSQL's `file_fdw` through its `program` option, joined with
//! `pg_stat_activity`, on a real guarded server.
//!
//! The documented file is executed as written, with only its `program` string replaced by the
//! release-built binary (staged into the cluster's directory, which the server's unprivileged
//! user can reach) and `--dir` of the cluster's segment directory. The program runs as the
//! server's user, who owns the segment. The CSV itself is checked directly too: its header is
//! [`CSV_COLUMNS`] and a guarded probe's row carries plain integers.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use oomguard_cli::demo::GuardedCluster;
use oomguard_cli::status::CSV_COLUMNS;
use oomguard_tests::{library_path, oomguard_binary, run_output, while_holding, workspace_root};

/// The `program` option as the packaged file writes it.
const PACKAGED_PROGRAM: &str = "program '/usr/bin/oomguard status --csv'";

fn packaged_sql() -> String {
    let path = workspace_root().join("packaging/sql/oomguard_processes.sql");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A copy of the `oomguard` binary in `dir`, mode 0755, that the server's user can execute.
fn stage_binary(dir: &std::path::Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let staged = dir.join("oomguard");
    std::fs::copy(oomguard_binary(), &staged).expect("copy the oomguard binary");
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    staged
}

#[test]
fn the_foreign_table_joins_pg_stat_activity_and_shows_who_holds_the_memory() {
    let guarded = GuardedCluster::start(&library_path(), &[("OOM_GUARD_LIMIT", "1GiB")], &[])
        .expect("start a guarded cluster");
    let binary = stage_binary(&guarded.cluster.base_dir().join("bin"));

    let sql = packaged_sql();
    assert_eq!(
        sql.matches(PACKAGED_PROGRAM).count(),
        1,
        "the packaged file names its program once: {PACKAGED_PROGRAM}"
    );
    let program = format!(
        "program '{} status --csv --dir {}'",
        binary.display(),
        guarded.segment_dir.display()
    );
    let sql = sql.replace(PACKAGED_PROGRAM, &program);

    // The superuser: `program` needs it (or pg_execute_server_program).
    let mut client = guarded.cluster.connect().expect("connect");
    client
        .batch_execute(&sql)
        .unwrap_or_else(|e| panic!("the packaged SQL failed: {e}\n{sql}"));
    // Running it twice changes nothing (IF NOT EXISTS throughout).
    client
        .batch_execute(&sql)
        .unwrap_or_else(|e| panic!("the packaged SQL failed the second time: {e}"));

    let own = client
        .query(
            "SELECT p.pid, p.bytes, p.peak_bytes, p.denials, a.backend_type \
               FROM oomguard_processes p JOIN pg_stat_activity a USING (pid) \
              WHERE pid = pg_backend_pid()",
            &[],
        )
        .expect("query the foreign table");
    assert_eq!(own.len(), 1, "exactly this session's row");
    let row = &own[0];
    let bytes: i64 = row.get("bytes");
    let peak: i64 = row.get("peak_bytes");
    let denials: i64 = row.get("denials");
    let backend_type: String = row.get("backend_type");
    assert!(bytes > 0, "this backend holds memory: {bytes}");
    assert!(peak >= bytes, "peak {peak} >= bytes {bytes}");
    assert_eq!(denials, 0);
    assert_eq!(backend_type, "client backend");

    // The whole server is there: the auxiliary processes PostgreSQL lists join too.
    let types: Vec<String> = client
        .query(
            "SELECT DISTINCT a.backend_type FROM oomguard_processes p \
               JOIN pg_stat_activity a USING (pid) ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        types.iter().any(|t| t == "checkpointer"),
        "the checkpointer is guarded and listed: {types:?}"
    );
    let domains: i64 = client
        .query_one("SELECT count(DISTINCT domain) FROM oomguard_processes", &[])
        .unwrap()
        .get(0);
    assert_eq!(domains, 1, "one domain in the cluster's segment directory");
}

#[test]
fn status_csv_has_a_header_and_one_integer_row_per_process() {
    let dir = tempfile::tempdir().unwrap();
    // The probe holds 8 x 1 MiB while the closure runs.
    while_holding(dir.path(), &[], |pid| {
        csv_of_a_holding_probe(dir.path(), pid)
    });
}

fn csv_of_a_holding_probe(dir: &std::path::Path, pid: u32) {
    let pid = pid.to_string();
    let (out, stdout, stderr) = run_output(
        oomguard_tests::oomguard_command()
            .args(["status", "--csv", "--dir"])
            .arg(dir),
    );
    assert!(out.status.success(), "{stderr}");
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(CSV_COLUMNS.join(",").as_str()));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.splitn(11, ',').collect()).collect();
    let row = rows
        .iter()
        .find(|r| r[1] == pid)
        .unwrap_or_else(|| panic!("no row for the probe {pid}:\n{stdout}"));
    assert_eq!(row.len(), CSV_COLUMNS.len(), "{row:?}");
    assert!(
        row[0].starts_with("oomguard-"),
        "domain is the file name: {row:?}"
    );
    for (i, column) in CSV_COLUMNS.iter().enumerate().skip(3).take(7) {
        assert!(
            row[i].parse::<u64>().is_ok(),
            "{column} is a plain integer: {:?}",
            row[i]
        );
    }
    let bytes: u64 = row[3].parse().unwrap();
    assert!(bytes >= 4 << 20, "the probe holds 4 MiB: {bytes}");

    let (out, _, stderr) = run_output(
        oomguard_tests::oomguard_command()
            .args(["status", "--csv", "--json", "--dir"])
            .arg(dir),
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "--csv and --json conflict: {stderr}"
    );
}
