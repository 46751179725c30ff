-- oomguard_refusals: the guard's refusal records as a view, without an extension: which
-- statements were refused, when and how often, for which role and database, why, and which
-- processes held the memory at that moment. Records outlive the refused sessions and a restart
-- of the server; the guard keeps the latest OOM_GUARD_REFUSAL_RECORDS (256) per domain.
--
-- file_fdw (in postgresql-contrib) runs `oomguard refusals --csv` on each scan, as the server's
-- operating-system user and with the server's environment (so OOM_GUARD_DIR is the server's own;
-- add --dir DIR after --csv to name it explicitly). Creating it needs a superuser (or a member
-- of pg_execute_server_program); grant SELECT on the view to whoever should read it. A
-- directory holding a file the guard cannot read makes the command exit 1 and the query fail
-- (`program "..." failed`); `oomguard refusals` names the file.
--
-- With pg_stat_statements installed in this database when this file runs, the view also shows
-- the statement as pg_stat_statements normalised it, and its calls and mean time, joined on the
-- query id (compute_query_id = auto, the default, computes it once pg_stat_statements is
-- loaded). Without it those columns are NULL; run this file again after CREATE EXTENSION
-- pg_stat_statements.
--
-- The latest refusals, with who and what:
--   SELECT last_refused_at, refusals, role, database, process, cause,
--          pg_size_pretty(request_bytes) AS request, left(coalesce(normalized_query, statement), 60)
--     FROM oomguard_refusals ORDER BY last_refused_at DESC LIMIT 20;
--
-- Which statements fail most (over the records kept):
--   SELECT query_id, sum(refusals), min(first_refused_at), max(last_refused_at),
--          left(max(normalized_query), 60)
--     FROM oomguard_refusals GROUP BY query_id ORDER BY 2 DESC;
--
-- Columns are only ever added at the end. CREATE ... IF NOT EXISTS leaves an existing foreign
-- table as it is, and file_fdw fails a scan on columns the table does not declare ("extra data
-- after last expected column"): after an upgrade that adds columns, DROP VIEW oomguard_refusals,
-- DROP FOREIGN TABLE oomguard_refusal_records and run this file again.

CREATE EXTENSION IF NOT EXISTS file_fdw;

CREATE SERVER IF NOT EXISTS oomguard FOREIGN DATA WRAPPER file_fdw;

CREATE FOREIGN TABLE IF NOT EXISTS oomguard_refusal_records (
    domain text,                  -- the guard's segment (the exporter's `domain` label)
    number bigint,                -- the record's number in its domain (1 for the first)
    first_refused_at timestamptz, -- the statement's first refusal
    last_refused_at timestamptz,  -- its latest refusal
    count bigint,                 -- refusals of it in a row, in that process
    pid integer,                  -- the refused process
    process text,                 -- client backend, parallel worker, background worker, autovacuum worker, ...
    cause text,                   -- domain_limit, kernel_tight or backend_budget
    call text,                    -- the refused C function (malloc, realloc, ftruncate, ...)
    database_oid oid,             -- pg_database.oid; NULL outside a database
    role_oid oid,                 -- pg_roles.oid of the session user; NULL outside a session
    query_id bigint,              -- pg_stat_statements.queryid; NULL when not computed
    request_bytes bigint,         -- bytes the latest refused call asked for
    process_bytes bigint,         -- what the process held then
    budget_bytes bigint,          -- its budget then; NULL: none
    total_bytes bigint,           -- what the domain held then
    limit_bytes bigint,           -- the domain's limit then (0: none)
    largest_pid integer,          -- the largest process of the domain at the first refusal
    largest_process text,
    largest_bytes bigint,
    second_pid integer,           -- the second largest
    second_process text,
    second_bytes bigint,
    third_pid integer,            -- the third largest
    third_process text,
    third_bytes bigint,
    statement text                -- the statement's first bytes (debug_query_string)
) SERVER oomguard
  OPTIONS (program '/usr/bin/oomguard refusals --csv', format 'csv', header 'true');

DO $$
DECLARE
    -- pg_stat_statements' view, schema-qualified, when it is installed here.
    statements text := (
        SELECT format('%I.pg_stat_statements', n.nspname)
          FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
         WHERE e.extname = 'pg_stat_statements');
BEGIN
    EXECUTE format($view$
        CREATE OR REPLACE VIEW oomguard_refusals AS
        SELECT r.last_refused_at,
               r.first_refused_at,
               r.count AS refusals,
               r.pid,
               r.process,
               d.datname AS database,
               u.rolname AS role,
               r.cause,
               r.call,
               r.query_id,
               r.statement,
               s.query AS normalized_query,
               s.calls AS statement_calls,
               s.mean_exec_time AS statement_mean_exec_time_ms,
               r.request_bytes,
               r.process_bytes,
               r.budget_bytes,
               r.total_bytes,
               r.limit_bytes,
               r.largest_pid, r.largest_process, r.largest_bytes,
               r.second_pid, r.second_process, r.second_bytes,
               r.third_pid, r.third_process, r.third_bytes,
               r.database_oid,
               r.role_oid,
               r.domain,
               r.number
          FROM oomguard_refusal_records r
          LEFT JOIN pg_database d ON d.oid = r.database_oid
          LEFT JOIN pg_roles u ON u.oid = r.role_oid
          LEFT JOIN LATERAL (%s) s ON true
    $view$,
    CASE WHEN statements IS NULL THEN
        'SELECT NULL::text AS query, NULL::bigint AS calls, NULL::double precision AS mean_exec_time'
    ELSE
        -- One row per query id and database: the statement as most often executed (a query id
        -- can appear once per user and per top-level/nested execution).
        format('SELECT p.query, p.calls, p.mean_exec_time FROM %s p
                 WHERE p.queryid = r.query_id AND p.dbid = r.database_oid
                 ORDER BY p.calls DESC LIMIT 1', statements)
    END);
END
$$;
