#!/bin/sh
# Entrypoint of deploy/postgres.Dockerfile: the official postgres image's contract, in a few lines.
#   first start (empty PGDATA): initdb with POSTGRES_USER / POSTGRES_PASSWORD, connections from other
#   containers with a password (scram-sha-256; POSTGRES_HOST_AUTH_METHOD overrides), POSTGRES_DB created,
#   /docker-entrypoint-initdb.d/*.sql and *.sh run; then `postgres` runs as the postgres user.
set -eu

PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export PGDATA
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
AUTH="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"

log() { echo "postgres-entrypoint: $*" >&2; }

# As root: own the data folder (a fresh volume or a bind mount), then come back as postgres.
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$0" "$@"
fi

quote_ident() { printf '"%s"' "$(printf '%s' "$1" | sed 's/"/""/g')"; }

initialize() {
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$AUTH" != trust ]; then
    log "the database is not initialized and POSTGRES_PASSWORD is empty: set it (or POSTGRES_HOST_AUTH_METHOD=trust, never in production)"
    exit 1
  fi
  log "initializing $PGDATA"
  pwfile="$(mktemp)"
  printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
  # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of options, as in the official image
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host="$AUTH" ${POSTGRES_INITDB_ARGS:-} >/dev/null
  rm -f "$pwfile"
  printf '\n%s\n' "host all all all $AUTH" >>"$PGDATA/pg_hba.conf"
  printf '\n%s\n' "listen_addresses = '*'" "jit = off" >>"$PGDATA/postgresql.conf"

  # A server on a private socket only, for the setup steps.
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -k /var/run/postgresql" -w -t 60 start >/dev/null
  if [ "$POSTGRES_DB" != postgres ]; then
    psql -v ON_ERROR_STOP=1 -h /var/run/postgresql -U "$POSTGRES_USER" -d postgres -q \
      -c "CREATE DATABASE $(quote_ident "$POSTGRES_DB")"
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sql) log "running $f"; psql -v ON_ERROR_STOP=1 -h /var/run/postgresql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -q -f "$f" ;;
      *.sh) log "running $f"; . "$f" ;;
      *) if [ -e "$f" ]; then log "ignoring $f"; fi ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  log "initialized: user $POSTGRES_USER, database $POSTGRES_DB"
}

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  initialize
fi
exec "$@"
