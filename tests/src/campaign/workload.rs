//! The campaign's workload: statements of our own, aimed at the code paths whose allocation
//! failures PostgreSQL's developers found fragile (relation, catalog and type caches; partition
//! constraints; the local lock table; snapshots; statistics entries) and at plain executor
//! memory. Every session reconnects each round, so caches are built from scratch again.

use anyhow::Result;

const PARTITIONS: usize = 24;
const TABLES: usize = 40;

/// Creates the shared objects (before any refusal is made).
pub fn setup(client: &mut postgres::Client) -> Result<()> {
    let mut statements = vec![
        "CREATE TYPE inj_pair AS (a int, b text)".to_string(),
        "CREATE DOMAIN inj_positive AS int CHECK (VALUE > 0)".to_string(),
        "CREATE TYPE inj_mood AS ENUM ('sad', 'ok', 'happy')".to_string(),
        "CREATE TABLE inj_parts (k int, v text, p inj_pair) PARTITION BY RANGE (k)".to_string(),
        "CREATE FUNCTION inj_sum(n int) RETURNS bigint LANGUAGE plpgsql AS $$ \
         DECLARE s bigint := 0; BEGIN FOR i IN 1..n LOOP s := s + i; END LOOP; RETURN s; END $$"
            .to_string(),
    ];
    for part in 0..PARTITIONS {
        statements.push(format!(
            "CREATE TABLE inj_parts_{part} PARTITION OF inj_parts FOR VALUES FROM ({}) TO ({})",
            part * 1000,
            (part + 1) * 1000
        ));
    }
    for table in 0..TABLES {
        statements.push(format!(
            "CREATE TABLE inj_t{table} AS SELECT g AS id, md5(g::text) AS payload \
             FROM generate_series(1, 200) g"
        ));
    }
    statements.push(format!(
        "INSERT INTO inj_parts SELECT g, md5(g::text), ROW(g, 'x')::inj_pair \
         FROM generate_series(0, {}) g",
        PARTITIONS * 1000 - 1
    ));
    statements.push("ANALYZE".to_string());
    for statement in statements {
        client.batch_execute(&statement)?;
    }
    Ok(())
}

/// One round of one session.
pub fn statements(session: usize, round: usize) -> Vec<String> {
    let me = format!("s{session}_{round}");
    let mut list = vec![
        // Catalog caches: wide joins over the system catalogs.
        "SELECT count(*) FROM pg_type t JOIN pg_proc p ON p.prorettype = t.oid \
         JOIN pg_namespace n ON n.oid = p.pronamespace WHERE t.typtype IN ('b', 'c', 'd')"
            .to_string(),
        "SELECT count(*) FROM pg_operator o JOIN pg_type l ON l.oid = o.oprleft \
         JOIN pg_type r ON r.oid = o.oprright WHERE o.oprcode::oid <> 0"
            .to_string(),
        "SELECT c.relname, count(a.*) FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid \
         GROUP BY 1 ORDER BY 2 DESC LIMIT 5"
            .to_string(),
        // The type cache: composite, domain, enum, range and array types.
        "SELECT (ROW(1, 'a')::inj_pair).b, 5::inj_positive, 'ok'::inj_mood < 'happy'::inj_mood, \
         int4range(1, 10) && int4range(5, 15), ARRAY[ROW(1, 'x')::inj_pair] = ARRAY[ROW(1, 'x')::inj_pair]"
            .to_string(),
        "SELECT p, count(*) FROM inj_parts GROUP BY p ORDER BY p LIMIT 3".to_string(),
        // Partitions: pruning and constraints of a partitioned table.
        "SELECT count(*) FROM inj_parts WHERE k BETWEEN 1500 AND 17500".to_string(),
        format!(
            "INSERT INTO inj_parts SELECT g, '{me}', NULL FROM generate_series(0, {}, 997) g",
            PARTITIONS * 1000 - 1
        ),
        format!("DELETE FROM inj_parts WHERE v = '{me}'"),
        // The local lock table: many locks in one transaction.
        format!(
            "BEGIN; LOCK TABLE inj_parts IN ACCESS SHARE MODE; {} COMMIT",
            (0..TABLES)
                .map(|t| format!("LOCK TABLE inj_t{t} IN ACCESS SHARE MODE;"))
                .collect::<String>()
        ),
        // Snapshots and statistics entries of many tables.
        format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; {} COMMIT",
            (0..TABLES)
                .map(|t| format!("SELECT count(*) FROM inj_t{t};"))
                .collect::<String>()
        ),
        // Relation cache: temporary relations created and dropped.
        format!(
            "CREATE TEMP TABLE inj_tmp_{me} AS SELECT g, g::text AS t FROM generate_series(1, 5000) g; \
             CREATE INDEX ON inj_tmp_{me} (t); DROP TABLE inj_tmp_{me}"
        ),
        // PL/pgSQL and executor memory.
        "SELECT inj_sum(20000)".to_string(),
        "SELECT count(*) FROM (SELECT g % 5000 AS k, count(*) FROM generate_series(1, 200000) g GROUP BY 1) s"
            .to_string(),
        "SELECT count(*) FROM (SELECT md5(g::text) AS h FROM generate_series(1, 100000) g ORDER BY 1) s"
            .to_string(),
        "SELECT length(string_agg(payload, ',')) FROM inj_t1".to_string(),
        "SELECT jsonb_agg(jsonb_build_object('k', g, 'v', md5(g::text)))::text IS NOT NULL \
         FROM generate_series(1, 20000) g"
            .to_string(),
        "SELECT count(*) FROM inj_parts a JOIN inj_parts b USING (k) WHERE a.k % 7 = 0".to_string(),
    ];
    // A different order per session, so sessions overlap in different code.
    let len = list.len();
    list.rotate_left((session * 3 + round) % len);
    list
}
