#!/bin/sh
# The berth-postgres image's entrypoint: on the first start, initdb the data directory
# and make the role and database that POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB
# name; then run the server in the foreground as the postgres user.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=berth}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
export PGDATA

if [ "$(id -u)" = 0 ]; then
  # A bind-mounted or fresh directory may belong to root.
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 0700 "$PGDATA"
  exec runuser -u postgres -- "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "postgres-entrypoint: set POSTGRES_PASSWORD for the role $POSTGRES_USER" >&2
    exit 1
  fi
  initdb -D "$PGDATA" -U postgres -E UTF8 --no-locale \
    --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  literal() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/''/g")"; }
  ident() { printf '"%s"' "$(printf '%s' "$1" | sed 's/"/""/g')"; }
  # Single-user mode: no server listens while the role has no password yet. One
  # statement a line.
  postgres --single -D "$PGDATA" postgres >/dev/null <<EOF
CREATE ROLE $(ident "$POSTGRES_USER") LOGIN PASSWORD $(literal "$POSTGRES_PASSWORD");
CREATE DATABASE $(ident "$POSTGRES_DB") OWNER $(ident "$POSTGRES_USER");
EOF
  echo "postgres-entrypoint: made the role $POSTGRES_USER and the database $POSTGRES_DB"
fi

# jit=off: the image leaves LLVM out (Containerfile.postgres).
exec postgres -D "$PGDATA" -c listen_addresses='*' -c jit=off "$@"
