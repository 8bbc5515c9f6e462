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
# Who can reach whom: each internal network is shared only by a service and its legitimate clients.
nets = {n: {name for name, s in services.items() if n in (s.get("networks") or {})}
        for n in ("db", "authz", "upstream", "metrics")}
want_nets = {
    "db": {"postgres", "control-api", "ext-authz"},
    "authz": {"ext-authz", "envoy"},
    "upstream": {"upstream", "envoy"},
}
for n, members in want_nets.items():
    assert nets[n] == members, f"network {n} joins {sorted(nets[n])}, not {sorted(members)}"
cfg = yaml.safe_load(open("docker-compose.yml"))["networks"]
for n in ("db", "authz", "upstream", "metrics"):
    assert (cfg.get(n) or {}).get("internal") is True, f"network {n} is not internal"
for name in ("postgres", "upstream", "ext-authz"):
    assert not services[name].get("ports"), f"{name} publishes a port"
ext_volumes = " ".join(str(v) for v in services["ext-authz"].get("volumes", []))
assert "edgemesh-state" not in ext_volumes, "ext-authz mounts the state volume (the CA key)"
print("check-deploy: compose services, health checks, loopback-only ports and networks OK")
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
  # Its admin interface (with /quitquitquit) is on the container's loopback only.
  python3 - "$tmp/out/envoy.yaml" <<'PY'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
admin = config["admin"]["address"]["socket_address"]["address"]
assert admin == "127.0.0.1", f"compose's Envoy admin listens on {admin}"
PY
  echo "check-deploy: compose's Envoy configuration validates; its admin is on loopback"
else
  missing "envoy or the built binaries" "make test builds and installs them first"
fi
