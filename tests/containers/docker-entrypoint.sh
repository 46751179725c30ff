#!/bin/bash
# A stand-in for the official postgres image's entrypoint, for the container tests
# (tests/tests/containers.rs): no image registry is reachable where they run, so the base image is
# a Debian root with Debian's PostgreSQL, and this script reproduces what the official entrypoint
# does that matters to the guard:
#   - started as root it prepares PGDATA and the socket directory, then steps down to `postgres`
#     with gosu: the root phase runs programs as root under /etc/ld.so.preload;
#   - on the first start it runs initdb, then a temporary server for the init scripts, stops it and
#     execs the real server;
#   - for a uid missing from /etc/passwd (docker run --user) it makes initdb work through
#     nss_wrapper, which it loads by *replacing* LD_PRELOAD, and unsets LD_PRELOAD afterwards.
set -Eeuo pipefail

if [ "${1:-}" != postgres ]; then
    exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 0700 "$PGDATA"
    chmod 3777 /var/run/postgresql
    exec gosu postgres "${BASH_SOURCE[0]}" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA"
    nss_wrapped=
    if ! getent passwd "$(id -u)" >/dev/null; then
        NSS_WRAPPER_PASSWD=$(mktemp)
        NSS_WRAPPER_GROUP=$(mktemp)
        printf 'postgres:x:%s:%s:PostgreSQL:%s:/bin/false\n' "$(id -u)" "$(id -g)" "$PGDATA" \
            >"$NSS_WRAPPER_PASSWD"
        printf 'postgres:x:%s:\n' "$(id -g)" >"$NSS_WRAPPER_GROUP"
        export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libnss_wrapper.so
        export NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
        nss_wrapped=yes
    fi
    initdb --username=postgres --auth="${POSTGRES_HOST_AUTH_METHOD:-trust}" -D "$PGDATA"
    if [ -n "$nss_wrapped" ]; then
        rm -f "$NSS_WRAPPER_PASSWD" "$NSS_WRAPPER_GROUP"
        unset LD_PRELOAD NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
    fi
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
    psql -v ON_ERROR_STOP=1 -X -U postgres -d postgres -c 'SELECT 1' >/dev/null
    pg_ctl -D "$PGDATA" -m fast -w stop
fi

exec "$@"
