#!/usr/bin/env bash
# The sqlx query macros' offline data in .sqlx/: what each query was checked against, so that a build
# needs no database (SQLX_OFFLINE=true in .cargo/config.toml).
#
#   scripts/query-data.sh prepare   writes .sqlx/ anew (after changing a query or a migration)
#   scripts/query-data.sh check     fails when .sqlx/ is not what the queries and migrations make
#
# Both apply the migrations with psql to a scratch database in the throwaway cluster (which must be
# running: scripts/stack.sh db-up), then build the workspace with the macros online against it: every
# query is checked against the real schema, and each macro writes its data to a directory of our own.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PG_BIN=${EDGEMESH_PG_BIN:-/usr/lib/postgresql/15/bin}
PG_PORT=${EDGEMESH_PG_PORT:-54329}
export PGPASSFILE=${PGPASSFILE:-$ROOT/.edgemesh/pg/pgpass}
DB=edgemesh_query_data

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
case ${1:-} in prepare|check) ;; *) die "usage: $0 prepare|check" ;; esac
sql() { "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }

sql -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" \
  || die "PostgreSQL does not answer on port $PG_PORT (scripts/stack.sh db-up)"
for migration in migrations/*.sql; do
  sql -d "$DB" -1 -f "$migration" >/dev/null
done

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# A macro writes its data when it expands: the files that hold macros are compiled again.
git ls-files -z --cached --others --exclude-standard '*.rs' | xargs -0 grep -lZE 'sqlx::query(_as|_scalar)?!' | xargs -0 touch
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$out" \
  DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/$DB" \
  cargo build --workspace --all-targets

case $1 in
  prepare)
    rm -rf .sqlx
    mkdir .sqlx
    cp "$out"/query-*.json .sqlx/
    printf 'wrote %s queries to .sqlx/\n' "$(ls .sqlx | wc -l)"
    ;;
  check)
    if ! diff -r .sqlx "$out" >/dev/null 2>&1; then
      diff -ru .sqlx "$out" | head -40 >&2 || true
      die ".sqlx/ is out of date with the queries or the migrations: run scripts/query-data.sh prepare and commit .sqlx/"
    fi
    printf '.sqlx/ is up to date (%s queries)\n' "$(ls .sqlx | wc -l)"
    ;;
esac
