#!/bin/bash
# The `postgres` service of docker-compose.yml: Debian's PostgreSQL 15 server in the foreground,
# run as the `postgres` user. On an empty data volume it first creates the cluster (superuser
# `hermes`, password POSTGRES_PASSWORD, password auth from the compose network) and runs
# postgres-init.sql over the local socket only, so no client sees a half-initialized server.
set -euo pipefail
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD (docker-compose.yml reads it from .env)}"
bin=/usr/lib/postgresql/15/bin
data=/var/lib/postgresql/data
here=$(dirname "$0")

if [ ! -s "$data/PG_VERSION" ]; then
  password_file=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" >"$password_file"
  "$bin/initdb" -D "$data" -U hermes -A scram-sha-256 --pwfile="$password_file" \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$password_file"
  echo "host all all all scram-sha-256" >>"$data/pg_hba.conf"
  "$bin/pg_ctl" -D "$data" -o "-c listen_addresses='' -k /tmp" -w start >/dev/null
  PGPASSWORD=$POSTGRES_PASSWORD "$bin/psql" -h /tmp -U hermes -d postgres -q \
    -v ON_ERROR_STOP=1 -f "$here/postgres-init.sql"
  "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
  echo "postgres: cluster created, $(basename "$here")/postgres-init.sql applied"
fi
exec "$bin/postgres" -D "$data" -c listen_addresses='*' -k /tmp
