#!/usr/bin/env bash
# Make sure PostgreSQL answers on 127.0.0.1:5432 with a database `test` (trust auth), as the
# machine normally provides before a session. Idempotent; prints what it did.
#
#   already answering          -> exit 0, nothing touched
#   server not installed       -> apt-get install postgresql, then configure and start
#   installed but not running  -> pg_ctlcluster ... start
# Waits at most PG_WAIT seconds (default 30) for the server to answer after starting it.
set -euo pipefail

HOST=127.0.0.1
PORT=5432
DB=test
WAIT=${PG_WAIT:-30}

say() { echo "ensure_postgres: $*"; }

answers() { pg_isready -q -h "$HOST" -p "$PORT" >/dev/null 2>&1; }

if command -v pg_isready >/dev/null && answers; then
    say "already answering on $HOST:$PORT"
    exit 0
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { say "need root or sudo to install or start PostgreSQL" >&2; exit 1; }
    sudo=(sudo)
fi
as_root() { "${sudo[@]+"${sudo[@]}"}" "$@"; }

fresh_install=0
if ! command -v pg_ctlcluster >/dev/null || [[ -z "$(ls /etc/postgresql 2>/dev/null)" ]]; then
    say "PostgreSQL server not installed; installing with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # Another apt run may hold the lock; wait rather than fail.
    as_root apt-get -o DPkg::Lock::Timeout=300 -y -q update
    as_root apt-get -o DPkg::Lock::Timeout=300 -y -q install --no-install-recommends postgresql
    fresh_install=1
fi

# One version directory per installed major release; Debian creates cluster "main" in it.
version=$(ls /etc/postgresql | sort -V | tail -n1)
[[ -n "$version" ]] || { say "no cluster under /etc/postgresql after install" >&2; exit 1; }
conf=/etc/postgresql/$version/main

if [[ $fresh_install == 1 ]]; then
    # Match the machines' PostgreSQL: trust for local and loopback, listening on 127.0.0.1.
    say "configuring trust auth for local and 127.0.0.1 in $conf/pg_hba.conf"
    as_root cp "$conf/pg_hba.conf" "$conf/pg_hba.conf.orig"
    printf '%s\n' \
        'local   all   all                 trust' \
        'host    all   all   127.0.0.1/32  trust' \
        'host    all   all   ::1/128       trust' | as_root tee "$conf/pg_hba.conf" >/dev/null
    printf "listen_addresses = '%s'\nport = %s\n" "$HOST" "$PORT" \
        | as_root tee "$conf/conf.d/cortex.conf" >/dev/null
fi

say "starting cluster $version/main"
# Already running but not answering (e.g. still recovering) makes start exit 2; keep waiting.
as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || \
    say "pg_ctlcluster start exited $? (may already be running); waiting for it to answer"

for ((i = 0; i < WAIT; i++)); do
    answers && break
    sleep 1
done
if ! answers; then
    say "PostgreSQL did not answer on $HOST:$PORT within ${WAIT}s" >&2
    tail -n 20 "/var/log/postgresql/postgresql-$version-main.log" >&2 2>/dev/null || true
    exit 1
fi
say "answering on $HOST:$PORT after ${i}s"

if ! psql -h "$HOST" -p "$PORT" -U postgres -d "$DB" -Atqc 'select 1' >/dev/null 2>&1; then
    say "creating database $DB"
    as_root su postgres -c "createdb -h $HOST -p $PORT $DB" || \
        psql -h "$HOST" -p "$PORT" -U postgres -d postgres -qc "create database $DB"
fi
