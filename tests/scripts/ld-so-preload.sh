#!/usr/bin/env bash
# Activation through /etc/ld.so.preload and the configuration file, with no environment at all:
# run by tests/tests/preload_file.rs as `unshare --mount --propagation private env -i bash THIS
# WORK LIB PROBE BINDIR`, as root. Inside that private mount namespace, a copy of /etc with an
# ld.so.preload naming the guard and an /etc/oomguard/oomguard.conf is bind-mounted over /etc, so
# the machine's real /etc/ld.so.preload is never touched (the namespace ends with this script).
# Prints KEY value lines for the test to check; exits non-zero on a setup failure.
set -euo pipefail

work=$1 lib=$2 probe=$3 bindir=$4
port=54391
chmod 755 "$work"
install -d -m 755 "$work/lib" "$work/shm" "$work/sock" "$work/run"
chown nobody "$work/shm" "$work/sock" "$work/run"
install -m 644 "$lib" "$work/lib/liboomguard.so"
install -m 755 "$probe" "$work/lib/probe"

cp -a /etc "$work/etc"
echo "$work/lib/liboomguard.so" > "$work/etc/ld.so.preload"
install -d -m 755 "$work/etc/oomguard"
cat > "$work/etc/oomguard/oomguard.conf" <<CONF
# written by tests/scripts/ld-so-preload.sh
OOM_GUARD_LIMIT=256Mi
OOM_GUARD_DIR=$work/shm
CONF
chmod 644 "$work/etc/oomguard/oomguard.conf"
mount --bind "$work/etc" /etc

as_nobody() { runuser -u nobody -- "$@"; }
stop() { as_nobody "$bindir/pg_ctl" -D "$work/data" -m fast stop >/dev/null 2>&1 || true; }
trap stop EXIT

echo "ENV $(env | grep -c -E '^(LD_PRELOAD|OOM_GUARD_)' || true)"
# A program that is not PostgreSQL, 400 MiB held against a 256 MiB limit: never refused.
echo "PROBE $(printf 'go\ngo\n' | as_nobody "$work/lib/probe" hold 1048576 400 | sed -n 1p)"

install -d -o nobody -m 700 "$work/data"
as_nobody "$bindir/initdb" -D "$work/data" -U postgres --auth=trust >/dev/null
as_nobody "$bindir/pg_ctl" -D "$work/data" -l "$work/run/server.log" -w -o \
    "-c listen_addresses='' -c port=$port -k $work/sock -c jit=off -c shared_buffers=32MB" \
    start >/dev/null
postmaster=$(head -n 1 "$work/data/postmaster.pid")
echo "MAPPED $(grep -c liboomguard /proc/"$postmaster"/maps || true)"
echo "POSTMASTER_ENV $(tr '\0' '\n' < /proc/"$postmaster"/environ | grep -c -E '^(LD_PRELOAD|OOM_GUARD_)' || true)"
psql() { as_nobody "$bindir/psql" -h "$work/sock" -p "$port" -U postgres -X -q -t -A "$@"; }
hog="SET work_mem='2GB'; SELECT count(*) FROM (SELECT g, count(*) FROM generate_series(1, 20000000) g GROUP BY g) s;"
echo "HOG $( { psql -c "$hog" 2>&1 || true; } | grep -m 1 -o 'ERROR: *out of memory' || echo none)"
echo "AFTER $(psql -c 'SELECT 1')"
echo "LIMIT $(grep -o 'refused [a-z_]*([0-9]* bytes) in client backend' "$work/run/server.log" | head -n 1)"
