#!/usr/bin/env bash
# Benchmarks against the running local stack (`make bench` starts it). The whole transcript (machine,
# each command, its numbers) goes to .edgemesh/bench/transcript-<time>.txt (and transcript.txt, the
# latest); BENCHMARKS.md reports the figures, written up by hand with the command that produced them.
# The audit, memory and through-Envoy benches start their own helpers (a control API and an ext-authz
# on the bench database edgemesh_bench, Envoy with three listeners from envoy/bench.yaml.in, the
# do-nothing authorizer) and stop them afterwards.
set -euo pipefail
if [ -z "${EDGEMESH_BENCH_TRANSCRIPT:-}" ]; then
  ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  transcript="$ROOT/.edgemesh/bench/transcript-$(date -u +%Y%m%dT%H%MZ).txt"
  mkdir -p "$(dirname "$transcript")"
  if ! EDGEMESH_BENCH_TRANSCRIPT=$transcript "$0" "$@" 2>&1 | tee "$transcript"; then
    echo "bench failed; the transcript so far is in $transcript" >&2
    exit 1
  fi
  cp "$transcript" "$ROOT/.edgemesh/bench/transcript.txt"
  echo "the transcript is in $transcript (and .edgemesh/bench/transcript.txt)"
  exit 0
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# The stack's own way to start and stop a service, render Envoy's configuration and reach PostgreSQL.
source "$ROOT/scripts/stack.sh"
BIN=$PROFILE_DIR
# The transcript holds the numbers, not the services' logs.
export EDGEMESH_LOG=${EDGEMESH_LOG:-error}
mkdir -p "$STATE/bench"

run() { echo "\$ $*"; "$@"; echo; }

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -srm), $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "== enrollments/s through the HTTPS API with the agent's CSR flow"
run "$BIN/edgemesh-simulator" bench-enroll --devices 1000 --concurrency 16

echo "== health reports/s through the mTLS device API"
run "$BIN/edgemesh-simulator" bench-health --devices 200 --reports 10

echo "== the Check handler over gRPC (the stack's ext-authz, warm cache)"
run "$BIN/edgemesh-simulator" bench-check --devices 100 --rate 1000 --duration-secs 10 --concurrency 16

echo "== the audit trail, in a bench database (edgemesh_bench; the stack's own database is left alone)"
# Over the cluster's Unix socket, as the stack's services.
export EDGEMESH_BENCH_DATABASE_URL=$(db_url postgres edgemesh_bench)
pg_sql -d postgres -c "CREATE DATABASE edgemesh_bench" 2>/dev/null || true
EDGEMESH_DATABASE_URL=$EDGEMESH_BENCH_DATABASE_URL "$BIN/edgemesh-control-api" migrate
run "$BIN/edgemesh-simulator" bench-audit-writer --records 200000 --steady-secs 10

# The bench's own services, started like the stack's (pids and logs in .edgemesh/) and stopped at the end.
HELPERS="bench-envoy bench-upstream bench-noop-authz bench-ext-authz bench-shadow-ext-authz bench-control-api bench-chain-control-api"
cleanup() { for name in $HELPERS; do stop "$name"; done; }
trap cleanup EXIT
cleanup
# A second control API, serving the bench database, answers the audit queries.
start bench-control-api \
  "curl -sf --cacert '$STATE/bench/control-api/ca.pem' https://127.0.0.1:18444/healthz" \
  env EDGEMESH_DATABASE_URL="$EDGEMESH_BENCH_DATABASE_URL" EDGEMESH_STATE_DIR="$STATE/bench/control-api" \
    EDGEMESH_API_LISTEN=127.0.0.1:18444 EDGEMESH_DEVICE_LISTEN=127.0.0.1:18443 \
    EDGEMESH_CONTROL_API_METRICS_LISTEN=127.0.0.1:19190 EDGEMESH_LOG=warn \
    EDGEMESH_ADMIN_BURST=100000 EDGEMESH_ADMIN_RATE=10000 \
    "$BIN/edgemesh-control-api"
run "$BIN/edgemesh-simulator" --control-api https://127.0.0.1:18444 \
  --admin-token-file "$STATE/bench/control-api/admin-token" bench-audit-query --rows 10000000 --queries 500

echo "== the tamper-evident audit and decision replay, in a bench database of their own (edgemesh_chain_bench, made afresh)"
# 10 million decisions stored in bulk, chained by the sequencer (the control API's code) with a checkpoint
# signed every second, verified as `audit verify` does; then the newest million replayed through a
# control API on that database with `edgemeshctl policy replay` (against the tightened candidate of the
# e2e tests: storage for admins only).
pg_sql -d postgres -c "DROP DATABASE IF EXISTS edgemesh_chain_bench WITH (FORCE)" -c "CREATE DATABASE edgemesh_chain_bench"
export EDGEMESH_CHAIN_BENCH_DATABASE_URL=$(db_url postgres edgemesh_chain_bench)
EDGEMESH_DATABASE_URL=$EDGEMESH_CHAIN_BENCH_DATABASE_URL "$BIN/edgemesh-control-api" migrate
run "$BIN/edgemesh-simulator" bench-chain --rows 10000000 --window-file "$STATE/bench/replay-window"
rm -rf "$STATE/bench/candidate" && mkdir -p "$STATE/bench/candidate"
cp policies/authz.rego policies/compliance.rego "$STATE/bench/candidate/"
sed -i 's/"storage": {"admin", "developer", "analyst"},/"storage": {"admin"},/' "$STATE/bench/candidate/authz.rego"
start bench-chain-control-api \
  "curl -sf --cacert '$STATE/bench/chain-control-api/ca.pem' https://127.0.0.1:18544/healthz" \
  env EDGEMESH_DATABASE_URL="$EDGEMESH_CHAIN_BENCH_DATABASE_URL" EDGEMESH_STATE_DIR="$STATE/bench/chain-control-api" \
    EDGEMESH_API_LISTEN=127.0.0.1:18544 EDGEMESH_DEVICE_LISTEN=127.0.0.1:18543 \
    EDGEMESH_CONTROL_API_METRICS_LISTEN=127.0.0.1:19590 EDGEMESH_LOG=warn \
    "$BIN/edgemesh-control-api"
read -r since until < "$STATE/bench/replay-window"
echo "\$ edgemeshctl policy replay --candidate $STATE/bench/candidate --since $since --until $until"
/usr/bin/env time -f "edgemeshctl: %e s wall, %U s user, %S s system, %M KiB peak RSS" \
  env EDGEMESH_SERVER=https://127.0.0.1:18544 EDGEMESH_CA_FILE="$STATE/bench/chain-control-api/ca.pem" \
  EDGEMESH_ADMIN_TOKEN_FILE="$STATE/bench/chain-control-api/admin-token" \
  "$BIN/edgemeshctl" policy replay --candidate "$STATE/bench/candidate" --since "$since" --until "$until" \
  --report "$STATE/bench/replay-report.json"
echo
stop bench-chain-control-api
echo "storage (audit_log, audit_chain, decision_contexts; 10M decisions):"
pg_sql -d edgemesh_chain_bench -c "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c
  JOIN pg_inherits i ON i.inhrelid = c.oid WHERE i.inhparent = 'audit_log'::regclass" \
  -c "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c
  JOIN pg_inherits i ON i.inhrelid = c.oid WHERE i.inhparent = 'audit_chain'::regclass" \
  -c "SELECT pg_size_pretty(pg_total_relation_size('decision_contexts'))"
pg_sql -d postgres -c "DROP DATABASE IF EXISTS edgemesh_chain_bench WITH (FORCE)"

echo "== the cost of a shadow decision: the same Checks, without and with shadow: \"true\" on their route"
# A second ext-authz on the stack's database with shadow policies: a copy of the enforced ones, so that
# both evaluations do the same work and the difference is the shadow's whole cost.
rm -rf "$STATE/bench/shadow-policies" && mkdir -p "$STATE/bench/shadow-policies"
cp policies/authz.rego policies/compliance.rego "$STATE/bench/shadow-policies/"
start bench-shadow-ext-authz "curl -sf http://127.0.0.1:19292/metrics" \
  env EDGEMESH_EXT_AUTHZ_LISTEN=127.0.0.1:19291 EDGEMESH_EXT_AUTHZ_METRICS_LISTEN=127.0.0.1:19292 \
    EDGEMESH_EXT_AUTHZ_WORKERS=1 EDGEMESH_AUDIT_SPOOL_DIR="$STATE/bench/shadow-audit-spool" \
    EDGEMESH_CA_CERT="$STATE/ca.pem" EDGEMESH_SHADOW_POLICY_DIR="$STATE/bench/shadow-policies" \
    EDGEMESH_DATABASE_URL="$(db_url edgemesh_ext_authz)" PGPASSFILE="$(pgpass ext-authz)" \
    "$BIN/edgemesh-ext-authz" serve
for shadow in "" --shadow ""  --shadow; do
  run "$BIN/edgemesh-simulator" bench-check --ext-authz http://127.0.0.1:19291 \
    --metrics http://127.0.0.1:19292/metrics --devices 100 --rate 1000 --duration-secs 10 --concurrency 16 $shadow
done
stop bench-shadow-ext-authz

echo "== ext-authz resident memory with 10,000 and 100,000 devices cached (an ext-authz on the bench database)"
# The cache's TTL (a safety net, 600 s by default) at its maximum, so that what is measured at the end is
# every device checked, not the last minute's.
start bench-ext-authz "curl -sf http://127.0.0.1:19192/metrics" \
  env EDGEMESH_DATABASE_URL="$EDGEMESH_BENCH_DATABASE_URL" EDGEMESH_EXT_AUTHZ_LISTEN=127.0.0.1:19191 \
    EDGEMESH_CACHE_TTL_SECS=3600 EDGEMESH_EXT_AUTHZ_METRICS_LISTEN=127.0.0.1:19192 \
    EDGEMESH_AUDIT_SPOOL_DIR="$STATE/bench/audit-spool" EDGEMESH_CA_CERT="$STATE/bench/control-api/ca.pem" \
    EDGEMESH_LOG=warn "$BIN/edgemesh-ext-authz" serve
run "$BIN/edgemesh-simulator" bench-memory --milestones 10000,100000 \
  --ca-cert "$STATE/bench/control-api/ca.pem" --ca-key "$STATE/bench/control-api/ca-key.pem"

echo "== the console's pages with the bench database's devices (the bench control API, after bench-memory)"
run "$BIN/edgemesh-simulator" --control-api https://127.0.0.1:18444 \
  --admin-token-file "$STATE/bench/control-api/admin-token" bench-console --requests 100

# start_bench_services NAME URL: a bench control API (state in .edgemesh/bench/NAME-control-api, a
# connection per device, no rate limits on enrolment or admin calls) and an ext-authz with its default
# cache settings, both on the database at URL.
start_bench_services() {
  start bench-control-api \
    "curl -sf --cacert '$STATE/bench/$1-control-api/ca.pem' https://127.0.0.1:18444/healthz" \
    env EDGEMESH_DATABASE_URL="$2" EDGEMESH_STATE_DIR="$STATE/bench/$1-control-api" \
      EDGEMESH_API_LISTEN=127.0.0.1:18444 EDGEMESH_DEVICE_LISTEN=127.0.0.1:18443 \
      EDGEMESH_CONTROL_API_METRICS_LISTEN=127.0.0.1:19190 EDGEMESH_LOG=warn \
      EDGEMESH_ADMIN_BURST=100000 EDGEMESH_ADMIN_RATE=10000 EDGEMESH_MAX_CONNECTIONS=16000 \
      EDGEMESH_ENROLL_BURST=100000 EDGEMESH_ENROLL_RATE=100000 \
      "$BIN/edgemesh-control-api"
  start bench-ext-authz "curl -sf http://127.0.0.1:19192/metrics" \
    env EDGEMESH_DATABASE_URL="$2" EDGEMESH_EXT_AUTHZ_LISTEN=127.0.0.1:19191 \
      EDGEMESH_EXT_AUTHZ_METRICS_LISTEN=127.0.0.1:19192 \
      EDGEMESH_AUDIT_SPOOL_DIR="$STATE/bench/$1-audit-spool" EDGEMESH_CA_CERT="$STATE/bench/$1-control-api/ca.pem" \
      EDGEMESH_LOG=warn "$BIN/edgemesh-ext-authz" serve
}

echo "== health at fleet rate: 10,000 devices enrolled, 3,500 reports/s for 60 s on their own connections, Checks meanwhile"
# A database of its own, fresh each time (the audit and memory benches' rows are not in its way), a
# control API on it holding a connection per device (its default is 4,096 per listener) and enrolling
# without a rate limit, and an ext-authz with its default cache settings.
export EDGEMESH_FLEET_BENCH_DATABASE_URL=$(db_url postgres edgemesh_fleet)
pg_sql -d postgres -c "DROP DATABASE IF EXISTS edgemesh_fleet WITH (FORCE)" -c "CREATE DATABASE edgemesh_fleet"
EDGEMESH_DATABASE_URL=$EDGEMESH_FLEET_BENCH_DATABASE_URL "$BIN/edgemesh-control-api" migrate
rm -rf "$STATE/bench/fleet-control-api" "$STATE/bench/fleet-audit-spool"
stop bench-control-api
stop bench-ext-authz
start_bench_services fleet "$EDGEMESH_FLEET_BENCH_DATABASE_URL"
# It fails when a report fails; the benches after it run all the same.
for rate in 3500 2000; do
  run "$BIN/edgemesh-simulator" --control-api https://127.0.0.1:18444 --device-api https://127.0.0.1:18443 \
    --admin-token-file "$STATE/bench/fleet-control-api/admin-token" bench-fleet-health --devices 10000 \
    --rate "$rate" --duration-secs 60 --check-rate 1000 \
    --database-url "$EDGEMESH_FLEET_BENCH_DATABASE_URL" \
    --watch "control-api=$(cat "$PIDS/bench-control-api.pid")" \
    --watch "ext-authz=$(cat "$PIDS/bench-ext-authz.pid")" \
    --watch "postgres=$(head -1 "$STATE/pg/data/postmaster.pid")" \
    || echo "(bench-fleet-health at $rate reports/s: not every report was accepted)"
done
stop bench-ext-authz
stop bench-control-api

echo "== the directory at 1,000,000 devices: Checks with a Zipf popularity, an ext-authz with its default cache, restarted"
export EDGEMESH_DIRECTORY_BENCH_DATABASE_URL=$(db_url postgres edgemesh_directory)
pg_sql -d postgres -c "DROP DATABASE IF EXISTS edgemesh_directory WITH (FORCE)" -c "CREATE DATABASE edgemesh_directory"
EDGEMESH_DATABASE_URL=$EDGEMESH_DIRECTORY_BENCH_DATABASE_URL "$BIN/edgemesh-control-api" migrate
rm -rf "$STATE/bench/directory-audit-spool"
run "$BIN/edgemesh-simulator" bench-directory --devices 1000000 --rate 2000 --duration-secs 60 \
  --restart-secs 30 --ext-authz-bin "$BIN/edgemesh-ext-authz" \
  --ca-cert "$STATE/bench/control-api/ca.pem" --ca-key "$STATE/bench/control-api/ca-key.pem" \
  --spool-dir "$STATE/bench/directory-audit-spool"
pg_sql -d postgres -c "DROP DATABASE edgemesh_directory WITH (FORCE)"

echo "== PostgreSQL on another host: in a network namespace, 4 ms of round trip away (scripts/remote-postgres.sh)"
# A cluster of its own in a namespace, reached over TCP across a veth pair and a delaying relay. A
# control API and an ext-authz on it, as in a deployment with a database on another machine: the audit
# writer's rate, Checks with a warm cache (their audit records cross the network), then cache misses.
# Revocation propagation in this layout is the e2e test remote::revocations_reach_every_replica_….
REMOTE_PG="$STATE/bench/remote-postgres"
remote_cleanup() { stop bench-ext-authz; stop bench-control-api; scripts/remote-postgres.sh stop "$REMOTE_PG"; }
trap 'remote_cleanup; cleanup' EXIT
scripts/remote-postgres.sh stop "$REMOTE_PG"; rm -rf "$REMOTE_PG"
REMOTE_URL=$(scripts/remote-postgres.sh start "$REMOTE_PG" 4)
echo "\$ psql $REMOTE_URL -c 'SELECT 1' (10 times)"
/usr/bin/env time -f "10 connections and queries: %e s" \
  bash -c "for i in \$(seq 10); do '$PG_BIN/psql' '$REMOTE_URL' -qtAc 'SELECT 1' >/dev/null; done"
EDGEMESH_DATABASE_URL=$REMOTE_URL "$BIN/edgemesh-control-api" migrate
run "$BIN/edgemesh-simulator" bench-audit-writer --database-url "$REMOTE_URL" --records 200000 --steady-secs 10
rm -rf "$STATE/bench/remote-control-api" "$STATE/bench/remote-audit-spool"
start_bench_services remote "$REMOTE_URL"
run "$BIN/edgemesh-simulator" --control-api https://127.0.0.1:18444 --device-api https://127.0.0.1:18443 \
  --admin-token-file "$STATE/bench/remote-control-api/admin-token" bench-check --ext-authz http://127.0.0.1:19191 \
  --metrics http://127.0.0.1:19192/metrics --devices 100 --rate 1000 --duration-secs 10 --concurrency 16
stop bench-ext-authz
stop bench-control-api
rm -rf "$STATE/bench/remote-directory-audit-spool"
run "$BIN/edgemesh-simulator" bench-directory --database-url "$REMOTE_URL" --devices 100000 --rate 1000 \
  --duration-secs 30 --restart-secs 15 --ext-authz-bin "$BIN/edgemesh-ext-authz" \
  --ca-cert "$STATE/bench/control-api/ca.pem" --ca-key "$STATE/bench/control-api/ca-key.pem" \
  --spool-dir "$STATE/bench/remote-directory-audit-spool"
remote_cleanup
trap cleanup EXIT

echo "== revocation propagation: 50 revocations during traffic through Envoy (the simulator's scenario)"
run "$BIN/edgemesh-simulator" --devices 400 --duration 60s --rate 50 --scenario revocation --revocations 50

echo "== through Envoy: no authorizer, the do-nothing authorizer, EdgeMesh's (same route, one run)"
start bench-noop-authz "bash -c '</dev/tcp/127.0.0.1/9193'" \
  "$BIN/edgemesh-simulator" noop-authz --listen 127.0.0.1:9193
# The route's upstream answers every request alike: the demo upstream's echo of the identity headers
# would give EdgeMesh's requests (and only them) bigger responses.
start bench-upstream "curl -sf http://127.0.0.1:8091/" \
  "$BIN/edgemesh-simulator" upstream --plain --listen 127.0.0.1:8091
render_envoy envoy/bench.yaml.in "$STATE/bench/envoy.yaml" ADMIN_PORT=9902 NONE_PORT=10001 \
  NOOP_PORT=10002 EDGEMESH_PORT=10003 EXT_AUTHZ_PORT=9191 NOOP_AUTHZ_PORT=9193 UPSTREAM_PORT=8091
start bench-envoy "curl -sf http://127.0.0.1:9902/ready" \
  "$ENVOY_BIN" -c "$STATE/bench/envoy.yaml" --disable-hot-restart --concurrency 1 --log-level warn
# Each process's CPU per request, by authorizer (PostgreSQL: the postmaster and its backends).
run "$BIN/edgemesh-simulator" bench-proxy --connections 16 --rounds 4 --phase-secs 5 \
  --watch "envoy=$(cat "$PIDS/bench-envoy.pid")" --watch "ext-authz=$(cat "$PIDS/ext-authz.pid")" \
  --watch "control-api (the audit sequencer)=$(cat "$PIDS/control-api.pid")" \
  --watch "do-nothing authz=$(cat "$PIDS/bench-noop-authz.pid")" \
  --watch "upstream=$(cat "$PIDS/bench-upstream.pid")" \
  --watch "postgres=$(head -1 "$STATE/pg/data/postmaster.pid")" --audit-rows 10000000
