#!/usr/bin/env bash
# Checks the deployment and observability files with the real tools: Prometheus's configuration and
# the alert rules' unit tests (promtool), the compose file (docker-compose config) and its services,
# the Dockerfile's users, and the Envoy configuration compose renders (envoy --mode validate).
# A missing tool is a warning, or a failure with EDGEMESH_REQUIRE_TOOLS=1 (CI installs them).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

missing() {
  if [ "${EDGEMESH_REQUIRE_TOOLS:-0}" = 1 ]; then
    echo "check-deploy: $1 is required ($2)" >&2; exit 1
  fi
  echo "check-deploy: SKIPPED $1 checks: not installed ($2)" >&2
}

if command -v promtool >/dev/null; then
  promtool check config deploy/prometheus/prometheus.yml
  promtool test rules deploy/prometheus/alerts_test.yml
else
  missing promtool "apt-get install --no-install-recommends prometheus"
fi

if command -v docker-compose >/dev/null; then
  docker-compose -f docker-compose.yml config -q
  docker-compose -f docker-compose.yml config | python3 -c '
import sys, yaml
services = yaml.safe_load(sys.stdin)["services"]
want = {"postgres", "control-api", "ext-authz", "upstream", "envoy-init", "envoy", "prometheus", "grafana"}
assert set(services) == want, f"compose services {sorted(services)} != {sorted(want)}"
for name, s in services.items():
    assert name == "envoy-init" or "healthcheck" in s, f"{name} has no health check"
    for p in s.get("ports", []):
        ip = p.get("host_ip") if isinstance(p, dict) else str(p).split(":")[0]
        assert ip == "127.0.0.1", f"{name} publishes {p} beyond the loopback"
print("check-deploy: compose services, health checks and loopback-only ports OK")
'
else
  missing docker-compose "apt-get install docker-compose"
fi

# Every image built from the Dockerfile runs as uid 10001: the runtime stage sets it, the service
# stages build on it, and nothing switches back.
grep -q '^USER 10001:10001$' Dockerfile || { echo "check-deploy: the runtime stage is not non-root" >&2; exit 1; }
if grep -E '^USER ' Dockerfile | grep -vq '^USER 10001:10001$'; then
  echo "check-deploy: a stage runs as another user" >&2; exit 1
fi
for stage in control-api ext-authz simulator; do
  grep -q "^FROM runtime AS $stage\$" Dockerfile || { echo "check-deploy: stage $stage does not build on runtime" >&2; exit 1; }
done

# The Envoy configuration compose renders is one Envoy accepts.
envoy=${EDGEMESH_ENVOY_BIN:-$ROOT/.venv/bin/envoy}
if [ -x "$envoy" ] && [ -x target/debug/edgemesh-control-api ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  mkdir "$tmp/out" "$tmp/state"
  PATH="$ROOT/target/debug:$PATH" ENVOY_INIT_OUT="$tmp/out" ENVOY_INIT_TEMPLATE=envoy/envoy.yaml.in \
    EDGEMESH_STATE_DIR="$tmp/state" EDGEMESH_LOG=warn sh deploy/envoy-init.sh >/dev/null
  "$envoy" --mode validate -c "$tmp/out/envoy.yaml" --log-level error >/dev/null
  echo "check-deploy: compose's Envoy configuration validates"
else
  missing "envoy or the built binaries" "make test builds and installs them first"
fi
