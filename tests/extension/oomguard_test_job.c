/*
 * A minimal PostgreSQL background-worker job for the tests, for servers with no pg_cron package
 * (PyPI's PostgreSQL 16): `SELECT oomguard_test_job('<statement>', '<path of this library>')`
 * starts a dynamic background
 * worker of type "oomguard test job" that connects to the caller's database as the caller's role,
 * runs the statement in one transaction through SPI and exits, like a pg_cron job run in a
 * background worker. The function waits for the worker to exit and returns its pid; whether the
 * statement failed is in the server log (an ERROR ends the worker with exit code 1, a normal
 * worker exit).
 *
 * tests/tests/background_worker.rs compiles it against the server's own headers
 * (`<bindir>/../include/server`) and loads it by absolute path.
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(oomguard_test_job);

PGDLLEXPORT void oomguard_test_job_main(Datum main_arg);

/* bgw_extra holds the database and role oids, then the statement (NUL-terminated). */
#define STATEMENT_OFFSET (2 * sizeof(Oid))
#define STATEMENT_MAX (BGW_EXTRALEN - STATEMENT_OFFSET)

Datum
oomguard_test_job(PG_FUNCTION_ARGS)
{
	char	   *statement = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *library = text_to_cstring(PG_GETARG_TEXT_PP(1));
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	pid_t		pid;
	Oid			database = MyDatabaseId;
	Oid			role = GetUserId();

	if (strlen(statement) >= STATEMENT_MAX)
		ereport(ERROR,
				(errmsg("statement too long for a test job: %zu bytes, at most %zu",
						strlen(statement), STATEMENT_MAX - 1)));

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	if (strlen(library) >= sizeof(worker.bgw_library_name))
		ereport(ERROR, (errmsg("library path too long: %s", library)));
	strlcpy(worker.bgw_library_name, library, sizeof(worker.bgw_library_name));
	snprintf(worker.bgw_function_name, sizeof(worker.bgw_function_name),
			 "oomguard_test_job_main");
	snprintf(worker.bgw_name, sizeof(worker.bgw_name), "oomguard test job");
	snprintf(worker.bgw_type, sizeof(worker.bgw_type), "oomguard test job");
	memcpy(worker.bgw_extra, &database, sizeof(Oid));
	memcpy(worker.bgw_extra + sizeof(Oid), &role, sizeof(Oid));
	strlcpy(worker.bgw_extra + STATEMENT_OFFSET, statement, STATEMENT_MAX);
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
		ereport(ERROR, (errmsg("could not register the test job's background worker")));
	if (WaitForBackgroundWorkerStartup(handle, &pid) != BGWH_STARTED)
		ereport(ERROR, (errmsg("the test job's background worker did not start")));
	if (WaitForBackgroundWorkerShutdown(handle) != BGWH_STOPPED)
		ereport(ERROR, (errmsg("the postmaster died while the test job ran")));
	PG_RETURN_INT32(pid);
}

void
oomguard_test_job_main(Datum main_arg)
{
	Oid			database;
	Oid			role;
	const char *statement = MyBgworkerEntry->bgw_extra + STATEMENT_OFFSET;

	memcpy(&database, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	memcpy(&role, MyBgworkerEntry->bgw_extra + sizeof(Oid), sizeof(Oid));

	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(database, role, 0);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, statement);
	SPI_execute(statement, false, 0);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	proc_exit(0);
}
