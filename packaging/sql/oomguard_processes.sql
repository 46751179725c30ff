-- oomguard_processes: the guard's per-process numbers as a table, without an extension.
--
-- file_fdw (in postgresql-contrib) runs `oomguard status --csv` on each scan, as the server's
-- operating-system user and with the server's environment (so OOM_GUARD_DIR, where the guard
-- keeps its segment, is the server's own; add --dir DIR after --csv to name it explicitly).
-- One row per live guarded process of every domain in that directory; bytes are bytes.
-- Creating it needs a superuser (or a member of pg_execute_server_program); grant SELECT on the
-- table to whoever should read it. A directory holding a file the guard cannot read makes the
-- command exit 1 and the query fail (`program "..." failed`); `oomguard status` names the file.
--
-- Who holds the memory:
--   SELECT p.pid, a.backend_type, a.usename, a.state, pg_size_pretty(p.bytes) AS holds,
--          pg_size_pretty(p.peak_bytes) AS peak, p.denials, left(a.query, 60) AS query
--     FROM oomguard_processes p JOIN pg_stat_activity a USING (pid)
--    ORDER BY p.bytes DESC;
--
-- Which roles' sessions run into their own budget:
--   SELECT a.usename, p.pid, pg_size_pretty(p.budget_bytes) AS budget, p.budget_source, p.denials
--     FROM oomguard_processes p JOIN pg_stat_activity a USING (pid)
--    WHERE p.last_refusal_cause = 'backend_budget';
--
-- Columns are only ever added at the end. CREATE ... IF NOT EXISTS leaves an existing table as
-- it is, and file_fdw fails a scan on columns the table does not declare ("extra data after
-- last expected column"): after an upgrade that adds columns, DROP FOREIGN TABLE
-- oomguard_processes and run this file again.

CREATE EXTENSION IF NOT EXISTS file_fdw;

CREATE SERVER IF NOT EXISTS oomguard FOREIGN DATA WRAPPER file_fdw;

CREATE FOREIGN TABLE IF NOT EXISTS oomguard_processes (
    domain text,              -- the guard's segment (the exporter's `domain` label)
    pid integer,              -- joins pg_stat_activity.pid
    kind text,                -- what the guard classified it as (`unclassified` until it passes the limit)
    bytes bigint,             -- what it holds now (malloc'd, as the guard counts it)
    peak_bytes bigint,        -- its peak
    allocations bigint,       -- allocation calls counted
    denials bigint,           -- refused calls (each an ERROR: out of memory)
    denied_bytes bigint,      -- bytes those calls asked for
    last_denied_size bigint,  -- size of the last refused call
    overlimit_reports bigint, -- would-be refusals in report mode
    command text,             -- its command line (PostgreSQL's process title)
    budget_bytes bigint,      -- its own budget (oomguard.backend_memory_limit, else OOM_GUARD_BACKEND_LIMIT); NULL: none
    budget_source text,       -- where the budget came from: oomguard.backend_memory_limit, OOM_GUARD_BACKEND_LIMIT, malformed_setting or none
    last_refusal_cause text   -- its last refusal's cause: domain_limit, kernel_tight, backend_budget, or none
) SERVER oomguard
  OPTIONS (program '/usr/bin/oomguard status --csv', format 'csv', header 'true');
