#!/usr/bin/env bash
# A throwaway PostgreSQL for the store tests: its own cluster in a private directory, listening
# only on 127.0.0.1:55432, with a role and database `unlockd_test` (CREATEDB, so each test run
# makes and drops its own database). Installs Debian's `postgresql` when initdb is missing.
# Safe to run again: an existing cluster is reused, a stopped one started.
#
#   source .ci/pg.sh          # exports UNLOCKD_TEST_PG_URL
#   bash .ci/pg.sh            # prints the URL on stdout (progress goes to stderr)
#   bash .ci/pg.sh stop       # stops the cluster (the directory stays for the next start)
#
# Test-only settings: fsync and synchronous_commit are off (a crash loses nothing we keep).
# Env: UNLOCKD_PG_PORT (55432), UNLOCKD_PG_DIR (/var/tmp/unlockd-pg-$PORT).

__unlockd_pg() (
  set -euo pipefail
  local port="${UNLOCKD_PG_PORT:-55432}"
  local base="${UNLOCKD_PG_DIR:-/var/tmp/unlockd-pg-${port}}"
  local data="$base/data" run="$base/run" log="$base/postgres.log" pwfile="$base/password"
  local say='echo [pg.sh]'

  local pgbin
  pgbin="$(printf '%s\n' /usr/lib/postgresql/*/bin | grep -v '[*]' | sort -V | tail -n 1 || true)"
  if [[ -z "$pgbin" || ! -x "$pgbin/initdb" ]]; then
    if [[ "$(id -u)" != 0 ]]; then
      $say "PostgreSQL is not installed and this is not root: apt-get install postgresql" >&2
      exit 1
    fi
    $say "installing postgresql (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends postgresql postgresql-client >&2 \
      || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends postgresql postgresql-client >&2; }
    pgbin="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  fi

  # initdb and postgres refuse to run as root: as root the cluster belongs to `postgres`.
  local owner as=()
  if [[ "$(id -u)" == 0 ]]; then
    owner=postgres
    as=(runuser -u postgres --)
  else
    owner="$(id -un)"
  fi

  if [[ "${1:-}" == stop ]]; then
    if [[ -f "$data/postmaster.pid" ]]; then "${as[@]}" "$pgbin/pg_ctl" -D "$data" -m fast -w stop >&2 || true; fi
    exit 0
  fi

  mkdir -p "$base"
  chmod 0700 "$base"
  chown "$owner" "$base"
  if [[ ! -s "$pwfile" ]]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$pwfile")
  fi
  local password
  password="$(cat "$pwfile")"

  if [[ ! -f "$data/PG_VERSION" ]]; then
    $say "creating cluster in $data" >&2
    rm -rf "$data"
    "${as[@]}" mkdir -p "$data" "$run"
    "${as[@]}" "$pgbin/initdb" -D "$data" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256 >"$base/initdb.log" 2>&1 \
      || { cat "$base/initdb.log" >&2; exit 1; }
    # The socket lives in a 0700 directory, so local `trust` reaches only the cluster's owner.
    "${as[@]}" tee -a "$data/postgresql.conf" >/dev/null <<EOF
# unlockd test cluster (.ci/pg.sh)
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$run'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  fi
  "${as[@]}" mkdir -p "$run"
  chmod 0700 "$run"

  if ! "$pgbin/pg_isready" -q -h "$run" -p "$port"; then
    $say "starting PostgreSQL on 127.0.0.1:$port" >&2
    "${as[@]}" "$pgbin/pg_ctl" -D "$data" -l "$log" -w -t 60 start >&2 \
      || { tail -n 30 "$log" >&2 || true; exit 1; }
  fi

  # Role and database: create when missing, and (re)set the password from $pwfile.
  "${as[@]}" "$pgbin/psql" -X -q -h "$run" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -v pw="$password" >&2 <<'EOF'
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'unlockd_test') AS need_role \gset
\if :need_role
  CREATE ROLE unlockd_test LOGIN CREATEDB;
\endif
ALTER ROLE unlockd_test WITH LOGIN CREATEDB PASSWORD :'pw';
SELECT NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'unlockd_test') AS need_db \gset
\if :need_db
  CREATE DATABASE unlockd_test OWNER unlockd_test;
\endif
EOF
  echo "postgres://unlockd_test:${password}@127.0.0.1:${port}/unlockd_test"
)

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  # Sourced: export the URL into the caller's shell (without changing its shell options).
  if UNLOCKD_TEST_PG_URL="$(__unlockd_pg)"; then
    export UNLOCKD_TEST_PG_URL
    echo "[pg.sh] UNLOCKD_TEST_PG_URL=${UNLOCKD_TEST_PG_URL%%:*}://unlockd_test:***@127.0.0.1:${UNLOCKD_PG_PORT:-55432}/unlockd_test" >&2
  else
    echo "[pg.sh] failed to start the test PostgreSQL" >&2
    unset -f __unlockd_pg
    return 1
  fi
  unset -f __unlockd_pg
else
  __unlockd_pg "$@"
fi
