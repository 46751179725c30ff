#!/usr/bin/env bash
# jit-regress.sh: run PostgreSQL's regression suite with every query JIT-compiled, under the guard
# at a few tight limits, and count what the server log shows (ERROR/FATAL out of memory, LLVM
# FATALs, crashes) and how many tests failed. A manual bench tool (see bench/JIT.md), not a test.
#
# Usage: bench/jit-regress.sh [options] LIB LIMIT...
#   LIB     path of liboomguard.so, or `none` for a baseline run without the guard
#   LIMIT   OOM_GUARD_LIMIT of one run (48MiB, 20MiB, 6MiB, ...); `-` = guard loaded, no limit given
#           (only meaningful with LIB; with LIB=none every LIMIT just names a baseline run)
# Options (or the environment variable in brackets):
#   --regress-dir DIR  [PG_REGRESS_DIR]  PostgreSQL's src/test/regress of the server's version
#                      (sql/, expected/, data/, parallel_schedule, ...); required
#   --dlpath DIR       [PG_REGRESS_DLPATH] directory holding regress.so built for this server;
#                      required (test_setup loads it; without it most tests fail)
#   --schedule FILE    [SCHEDULE] schedule file name in the regress dir or a path
#                      (default parallel_schedule)
#   --lines "1 3-8 11" [LINES] keep only these `test:` lines of the schedule (1-based; the full
#                      parallel schedule takes ~30 min per run on 2 cores with every query JIT-compiled)
#   --tests "A B ..."  [TESTS] run these tests (in this order) instead of a schedule
#   --bindir DIR       [PG_BINDIR] default /usr/lib/postgresql/15/bin
#   --pg-regress PATH  [PG_REGRESS] default $PGXS/src/test/regress/pg_regress of pg_config
#   --user NAME        [RUN_USER] unprivileged user that runs the server (default oomtest;
#                      created with useradd when missing and we are root)
#   --port N           [PORT] default 54329
#   --keep DIR         [KEEP_DIR] copy each run's server log and regression.diffs/out there
#   --extra-conf STR   [EXTRA_CONF] more postgresql.conf lines (separate with ';')
#   --cli PATH         [OOMGUARD_CLI] the oomguard CLI: its `status` (refusal count, peak) is taken
#                      before the server stops and the refusal count goes into the table
# Output: one table row per run on stdout (Markdown), progress on stderr.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2; }

REGRESS_DIR=${PG_REGRESS_DIR:-}
DLPATH=${PG_REGRESS_DLPATH:-}
SCHEDULE=${SCHEDULE:-parallel_schedule}
TESTS=${TESTS:-}
LINES=${LINES:-}
OOMGUARD_CLI=${OOMGUARD_CLI:-}
BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PG_REGRESS=${PG_REGRESS:-}
RUN_USER=${RUN_USER:-oomtest}
PORT=${PORT:-54329}
KEEP_DIR=${KEEP_DIR:-}
EXTRA_CONF=${EXTRA_CONF:-}

while [ $# -gt 0 ]; do
    case $1 in
        --regress-dir) REGRESS_DIR=$2; shift 2 ;;
        --dlpath) DLPATH=$2; shift 2 ;;
        --schedule) SCHEDULE=$2; shift 2 ;;
        --tests) TESTS=$2; shift 2 ;;
        --lines) LINES=$2; shift 2 ;;
        --cli) OOMGUARD_CLI=$2; shift 2 ;;
        --bindir) BINDIR=$2; shift 2 ;;
        --pg-regress) PG_REGRESS=$2; shift 2 ;;
        --user) RUN_USER=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --keep) KEEP_DIR=$2; shift 2 ;;
        --extra-conf) EXTRA_CONF=$2; shift 2 ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
[ $# -ge 2 ] || usage
LIB=$1; shift
LIMITS=("$@")

die() { echo "jit-regress: $*" >&2; exit 2; }
say() { echo "jit-regress: $*" >&2; }

[ -n "$REGRESS_DIR" ] || die "--regress-dir (PG_REGRESS_DIR) is required: PostgreSQL's src/test/regress"
[ -d "$REGRESS_DIR/sql" ] && [ -d "$REGRESS_DIR/expected" ] \
    || die "$REGRESS_DIR has no sql/ and expected/: not a src/test/regress directory"
[ -n "$DLPATH" ] && [ -f "$DLPATH/regress.so" ] \
    || die "--dlpath (PG_REGRESS_DLPATH) must name a directory holding regress.so for this server"
[ -x "$BINDIR/postgres" ] || die "no postgres in $BINDIR"
if [ -z "$PG_REGRESS" ]; then
    pgxs=$("$BINDIR/pg_config" --pgxs 2>/dev/null || true)
    PG_REGRESS=${pgxs:+$(dirname "$pgxs")/../test/regress/pg_regress}
    [ -x "$PG_REGRESS" ] || PG_REGRESS=/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress
fi
[ -x "$PG_REGRESS" ] || die "no pg_regress (install postgresql-server-dev-15 or pass --pg-regress)"
if [ "$LIB" != none ]; then
    [ -f "$LIB" ] || die "no library at $LIB"
    LIB=$(readlink -f "$LIB")
fi
[ "$(id -u)" = 0 ] || die "run as root (the server runs as --user $RUN_USER through runuser)"
if ! id "$RUN_USER" >/dev/null 2>&1; then
    useradd -M -s /usr/sbin/nologin "$RUN_USER" || die "cannot create user $RUN_USER"
fi
if [ -n "$TESTS" ]; then
    schedule_desc="tests: $TESTS"
else
    case $SCHEDULE in /*) ;; *) SCHEDULE=$REGRESS_DIR/$SCHEDULE ;; esac
    [ -f "$SCHEDULE" ] || die "no schedule $SCHEDULE"
    schedule_desc="schedule: $(basename "$SCHEDULE")"
    if [ -n "$LINES" ]; then
        subset=$(mktemp /tmp/jit-regress-schedule.XXXXXX)
        # shellcheck disable=SC2086 # LINES is a blank-separated list of numbers and ranges
        awk -v want="$LINES" '
            BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) {
                if (split(w[i], r, "-") == 2) { for (j = r[1]; j <= r[2]; j++) keep[j] = 1 }
                else keep[w[i]] = 1 } }
            /^test:/ { line++; if (line in keep) print }' "$SCHEDULE" >"$subset"
        chmod 644 "$subset"
        SCHEDULE=$subset
        schedule_desc="$schedule_desc, test lines $LINES ($(wc -l <"$subset") groups, $(sed 's/^test://' "$subset" | wc -w) tests)"
    fi
fi

as_user() { runuser -u "$RUN_USER" -- "$@"; }

WORK=""
REGRESS_PID=""
cleanup_run() {
    if [ -n "$REGRESS_PID" ]; then kill "$REGRESS_PID" 2>/dev/null || true; wait "$REGRESS_PID" 2>/dev/null || true; fi
    REGRESS_PID=""
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ -f "$WORK/data/postmaster.pid" ]; then
            as_user "$BINDIR/pg_ctl" -D "$WORK/data" -m immediate -w -t 60 stop >/dev/null 2>&1 || true
            # A postmaster that did not stop: end it (and only it) by the pid it recorded.
            pid=$(head -1 "$WORK/data/postmaster.pid" 2>/dev/null || true)
            if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -QUIT "$pid" 2>/dev/null || true; fi
        fi
        rm -rf "$WORK"
    fi
    WORK=""
}
trap 'cleanup_run; [ -z "${subset:-}" ] || rm -f "$subset"' EXIT
trap 'exit 130' INT TERM

count() { # pattern file -> number of matching lines
    local n
    n=$(grep -cE -- "$1" "$2" 2>/dev/null) || true
    echo "${n:-0}"
}

say "pg_regress: $PG_REGRESS; regress dir: $REGRESS_DIR; $schedule_desc"
say "server: $("$BINDIR/postgres" --version); library: $LIB"
echo "| run | limit | ERROR out of memory | FATAL (all) | FATAL out of memory | while in LLVM | C++/LLVM abort | crash lines | guard refusals (log lines: ≤ 1/s/process) | guard peak | failed tests | server up after | wall s |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|"

for limit in "${LIMITS[@]}"; do
    WORK=$(mktemp -d /tmp/jit-regress.XXXXXX)
    chmod 755 "$WORK"
    mkdir -p "$WORK/guard" "$WORK/out" "$WORK/sock"
    # The server reads the regress data files (COPY FROM) and writes into the output dir (COPY TO).
    cp -r "$REGRESS_DIR" "$WORK/regress"
    mkdir -p "$WORK/lib"
    cp "$DLPATH/regress.so" "$WORK/lib/"
    if [ "$LIB" != none ]; then cp "$LIB" "$WORK/liboomguard.so"; fi
    chown -R "$RUN_USER:" "$WORK"

    as_user "$BINDIR/initdb" -D "$WORK/data" -U postgres --no-locale -E UTF8 -A trust >"$WORK/initdb.log" 2>&1 \
        || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
    {
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$WORK/sock'"
        echo "port = $PORT"
        echo "max_connections = 40"
        echo "max_prepared_transactions = 2"
        echo "fsync = off"
        echo "full_page_writes = off"
        echo "jit = on"
        echo "jit_above_cost = 0"
        echo "jit_inline_above_cost = 0"
        echo "jit_optimize_above_cost = 0"
        echo "log_line_prefix = '%m [%p] %b '"
        echo "log_min_messages = warning"
        echo "log_min_error_statement = panic"
        echo "$EXTRA_CONF" | tr ';' '\n'
    } >>"$WORK/data/postgresql.conf"

    env_args=()
    if [ "$LIB" != none ] && [ "$limit" != - ]; then env_args+=("OOM_GUARD_LIMIT=$limit"); fi
    if [ "$LIB" != none ]; then
        env_args+=("LD_PRELOAD=$WORK/liboomguard.so" "OOM_GUARD_DIR=$WORK/guard"
            "OOM_GUARD_DOMAIN=oomguard-jitregress-$$")
    fi
    run_name=$([ "$LIB" = none ] && echo "no guard" || echo "guard")
    log=$WORK/server.log
    start=$(date +%s)
    say "[$run_name $limit] starting server in $WORK"
    if ! as_user env "${env_args[@]}" "$BINDIR/pg_ctl" -D "$WORK/data" -l "$log" -w -t 120 start >"$WORK/pg_ctl.log" 2>&1; then
        cat "$WORK/pg_ctl.log" "$log" >&2 || true
        echo "| $run_name | $limit | – | – | – | – | – | – | – | – | server did not start | no | – |"
        cleanup_run
        continue
    fi
    jit_ok=$(as_user "$BINDIR/psql" -h "$WORK/sock" -p "$PORT" -U postgres -d postgres -XAtc \
        "select pg_jit_available()" 2>&1 || true)
    say "[$run_name $limit] pg_jit_available: $jit_ok"

    regress_args=(--bindir="$BINDIR" --inputdir="$WORK/regress" --outputdir="$WORK/out"
        --dlpath="$WORK/lib" --host="$WORK/sock" --port="$PORT" --user=postgres
        --max-concurrent-tests=20)
    if [ -n "$TESTS" ]; then
        # shellcheck disable=SC2086 # TESTS is a blank-separated list
        set -- $TESTS
    else
        set --
        regress_args+=(--schedule="$SCHEDULE")
    fi
    rc=0
    # In the background and waited for, so that a signal to this script is handled at once.
    as_user env PGTZ=PST8PDT PGDATESTYLE="Postgres, MDY" "$PG_REGRESS" "${regress_args[@]}" "$@" \
        >"$WORK/out/pg_regress.out" 2>&1 &
    REGRESS_PID=$!
    wait "$REGRESS_PID" || rc=$?
    REGRESS_PID=""
    wall=$(( $(date +%s) - start ))

    up=no
    if as_user "$BINDIR/pg_ctl" -D "$WORK/data" status >/dev/null 2>&1; then up=yes; fi
    status_refused=""
    peak="–"
    if [ -n "$OOMGUARD_CLI" ] && [ "$LIB" != none ]; then
        OOM_GUARD_DIR=$WORK/guard "$OOMGUARD_CLI" status >"$WORK/guard-status.txt" 2>&1 || true
        status_refused=$(grep -oE '^refused +[0-9]+ allocations' "$WORK/guard-status.txt" | grep -oE '[0-9]+' | head -1 || true)
        peak=$(grep -oE '^total .*\(peak [^)]*\)' "$WORK/guard-status.txt" | sed -E 's/.*peak ([^)]*)\)/\1/' || true)
        peak=${peak:-–}
    fi
    as_user "$BINDIR/pg_ctl" -D "$WORK/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true

    out=$WORK/out/pg_regress.out
    errors=$(count 'ERROR:  out of memory' "$log")
    fatals=$(count 'FATAL:  ' "$log")
    fatal_oom=$(count 'FATAL:  out of memory' "$log")
    llvm=$(count '[Ww]hile in LLVM|fatal llvm error' "$log")
    aborts=$(count 'terminate called|LLVM ERROR' "$log")
    crashes=$(count 'terminated by signal|server process .* was terminated|terminating any other active server processes|PANIC:  |all server processes terminated; reinitializing|exited with exit code [^1]' "$log")
    refusals=$(count 'oomguard\[[0-9]+\]: refused' "$log")
    [ -z "$status_refused" ] || refusals="$status_refused ($refusals logged)"
    summary=$(grep -oE '[0-9]+ of [0-9]+ tests failed|All [0-9]+ tests passed|[0-9]+ of [0-9]+ tests passed, [0-9]+ failed test\(s\) ignored' "$out" | tail -1 || true)
    [ -n "$summary" ] || summary="pg_regress exit $rc (no summary)"
    echo "| $run_name | $limit | $errors | $fatals | $fatal_oom | $llvm | $aborts | $crashes | $refusals | $peak | $summary | $up | $wall |"

    if [ -n "$KEEP_DIR" ]; then
        dest=$KEEP_DIR/$(echo "$run_name-$limit" | tr ' /' '__')
        mkdir -p "$dest"
        cp "$log" "$dest/server.log"
        cp "$out" "$dest/pg_regress.out"
        if [ -f "$WORK/out/regression.diffs" ]; then cp "$WORK/out/regression.diffs" "$dest/"; fi
        if [ -f "$WORK/guard-status.txt" ]; then cp "$WORK/guard-status.txt" "$dest/"; fi
    fi
    cleanup_run
done
