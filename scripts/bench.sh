#!/usr/bin/env bash
# Benchmarks against the running local stack (`make bench` starts it). Copy the output, with the
# machine and the command, into BENCHMARKS.md. The through-Envoy bench starts its own Envoy (three
# listeners, envoy/bench.yaml.in) and the do-nothing authorizer, and stops them afterwards.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STATE="$ROOT/.edgemesh"
BIN="$ROOT/target/debug"
ENVOY_BIN=${EDGEMESH_ENVOY_BIN:-$ROOT/.venv/bin/envoy}
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
PG_PORT=${EDGEMESH_PG_PORT:-54329}
PG_BIN=${EDGEMESH_PG_BIN:-/usr/lib/postgresql/15/bin}
export EDGEMESH_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/edgemesh_bench
"$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres edgemesh_bench 2>/dev/null || true
EDGEMESH_DATABASE_URL=$EDGEMESH_BENCH_DATABASE_URL "$BIN/edgemesh-control-api" migrate
run "$BIN/edgemesh-simulator" bench-audit-writer --records 200000 --steady-secs 10
# A second control API, serving the bench database, answers the audit queries.
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
EDGEMESH_DATABASE_URL=$EDGEMESH_BENCH_DATABASE_URL EDGEMESH_STATE_DIR="$STATE/bench/control-api" \
  EDGEMESH_API_LISTEN=127.0.0.1:18444 EDGEMESH_DEVICE_LISTEN=127.0.0.1:18443 \
  EDGEMESH_CONTROL_API_METRICS_LISTEN=127.0.0.1:19190 EDGEMESH_LOG=warn \
  "$BIN/edgemesh-control-api" >"$STATE/bench/control-api.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -sf --cacert "$STATE/bench/control-api/ca.pem" https://127.0.0.1:18444/healthz >/dev/null 2>&1 && break
  sleep 0.2
done
run "$BIN/edgemesh-simulator" --control-api https://127.0.0.1:18444 \
  --admin-token-file "$STATE/bench/control-api/admin-token" bench-audit-query --rows 10000000 --queries 500

echo "== through Envoy: no authorizer, the do-nothing authorizer, EdgeMesh's (same route, one run)"
"$BIN/edgemesh-simulator" noop-authz --listen 127.0.0.1:9193 >"$STATE/bench/noop-authz.log" 2>&1 &
pids+=($!)
sed -e "s|@ADMIN_PORT@|9902|; s|@NONE_PORT@|10001|g; s|@NOOP_PORT@|10002|g; s|@EDGEMESH_PORT@|10003|g" \
    -e "s|@EXT_AUTHZ_PORT@|9191|; s|@NOOP_AUTHZ_PORT@|9193|; s|@UPSTREAM_PORT@|8081|" \
    -e "s|@TRUST_DOMAIN@|${EDGEMESH_TRUST_DOMAIN:-edgemesh.local}|" \
    -e "s|@SERVER_CERT@|$STATE/envoy/server.pem|; s|@SERVER_KEY@|$STATE/envoy/server-key.pem|" \
    -e "s|@CA_CERT@|$STATE/ca.pem|" \
    envoy/bench.yaml.in >"$STATE/bench/envoy.yaml"
"$ENVOY_BIN" -c "$STATE/bench/envoy.yaml" --disable-hot-restart --concurrency 1 --log-level warn \
    >"$STATE/bench/envoy.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:9902/ready >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf http://127.0.0.1:9902/ready >/dev/null || { tail "$STATE/bench/envoy.log"; exit 1; }
run "$BIN/edgemesh-simulator" bench-proxy --connections 16 --rounds 3 --phase-secs 5
