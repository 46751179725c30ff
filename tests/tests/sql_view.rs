//! The SQL view for DBAs (`packaging/sql/oomguard_processes.sql`): `oomguard status --csv`
//! read by PostgreSQL's `file_fdw` through its `program` option, joined with
//! `pg_stat_activity`, on a real guarded server.
//!
//! The documented file is executed as written, with only its `program` string replaced by the
//! release-built binary (staged into the cluster's directory, which the server's unprivileged
//! user can reach) and `--dir` of the cluster's segment directory. The program runs as the
//! server's user, who owns the segment. A session's `oomguard.backend_memory_limit` and its
//! refusal on it show in its row. The CSV itself is checked directly too: its header is
//! [`CSV_COLUMNS`] and a guarded probe's row carries plain integers and its budget.

use oomguard_cli::status::CSV_COLUMNS;
use oomguard_tests::sessions::{expect_out_of_memory, start_guarded};
use oomguard_tests::{run_output, stage_oomguard_binary, while_holding, workspace_root};

/// The `program` option as the packaged file writes it.
const PACKAGED_PROGRAM: &str = "program '/usr/bin/oomguard status --csv'";

fn packaged_sql() -> String {
    let path = workspace_root().join("packaging/sql/oomguard_processes.sql");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn the_foreign_table_joins_pg_stat_activity_and_shows_who_holds_the_memory() {
    let guarded = start_guarded(&[("OOM_GUARD_LIMIT", "1GiB")], &[]);
    let binary = stage_oomguard_binary(&guarded.cluster.base_dir().join("bin"));

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

    budgets_and_refusal_causes_show_in_the_table(&mut client);

    // A table created by an older file (without the columns added at the end since) fails its
    // scans, as the file's header says: it has to be dropped and created again.
    let old_columns = sql
        .split("CREATE FOREIGN TABLE IF NOT EXISTS oomguard_processes (")
        .nth(1)
        .and_then(|rest| rest.split("    budget_bytes").next())
        .expect("the column list, budget_bytes after command");
    let old_table = format!(
        "CREATE FOREIGN TABLE oomguard_processes_old ({}) SERVER oomguard \
         OPTIONS ({program}, format 'csv', header 'true')",
        old_columns.replace("command text,", "command text")
    );
    client
        .batch_execute(&old_table)
        .unwrap_or_else(|e| panic!("{e}\n{old_table}"));
    let error = client
        .query("SELECT count(*) FROM oomguard_processes_old", &[])
        .expect_err("an old table cannot read the new columns");
    assert!(
        error
            .to_string()
            .contains("extra data after last expected column")
            || format!("{error:?}").contains("extra data after last expected column"),
        "{error:?}"
    );
}

/// This session's budget as the guard records it from `oomguard.backend_memory_limit`, and its
/// refusal on that budget, read through the foreign table.
fn budgets_and_refusal_causes_show_in_the_table(client: &mut postgres::Client) {
    let own_row = |client: &mut postgres::Client| {
        let row = client
            .query_one(
                "SELECT budget_bytes, budget_source, last_refusal_cause, denials \
                   FROM oomguard_processes WHERE pid = pg_backend_pid()",
                &[],
            )
            .expect("this session's row");
        let budget: Option<i64> = row.get(0);
        let source: String = row.get(1);
        let cause: String = row.get(2);
        let denials: i64 = row.get(3);
        (budget, source, cause, denials)
    };
    let (budget, source, cause, _) = own_row(client);
    assert_eq!(
        (budget, source.as_str(), cause.as_str()),
        (None, "none", "none"),
        "no budget set (OOM_GUARD_BACKEND_LIMIT unset) and nothing refused"
    );
    // The guard evaluates the budget at its next reservation: 4 MB is many batches.
    client
        .batch_execute(
            "SET oomguard.backend_memory_limit = '48MB'; SELECT length(repeat('x', 4000000))",
        )
        .unwrap();
    let (budget, source, cause, _) = own_row(client);
    assert_eq!(budget, Some(48 << 20));
    assert_eq!(source, "oomguard.backend_memory_limit");
    assert_eq!(cause, "none");

    // 64 MB is past a 16 MB budget.
    expect_out_of_memory(
        client,
        &[
            "SET oomguard.backend_memory_limit = '16MB'",
            "SELECT length(repeat('x', 64000000))",
        ],
    );
    let (budget, source, cause, denials) = own_row(client);
    assert_eq!(budget, Some(16 << 20));
    assert_eq!(source, "oomguard.backend_memory_limit");
    assert_eq!(cause, "backend_budget");
    assert!(denials >= 1, "{denials}");
    client
        .batch_execute("RESET oomguard.backend_memory_limit")
        .unwrap();
}

#[test]
fn status_csv_has_a_header_and_one_integer_row_per_process() {
    let dir = tempfile::tempdir().unwrap();
    // The probe holds 8 x 1 MiB while the closure runs, with a default budget of 64 MiB.
    while_holding(dir.path(), &[("OOM_GUARD_BACKEND_LIMIT", "64Mi")], |pid| {
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
    // No field of the probe's row holds a comma (its command line has none).
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
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
    assert_eq!(
        &row[11..],
        ["67108864", "OOM_GUARD_BACKEND_LIMIT", "none"],
        "budget_bytes, budget_source, last_refusal_cause: {row:?}"
    );

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
