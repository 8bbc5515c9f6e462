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
want = {"db-secrets", "postgres", "db-roles", "db-migrate", "control-api", "ext-authz", "upstream",
        "envoy-init", "envoy", "prometheus", "grafana"}
one_shots = {"db-secrets", "db-roles", "db-migrate", "envoy-init"}
assert set(services) == want, f"compose services {sorted(services)} != {sorted(want)}"
for name, s in services.items():
    assert name in one_shots or "healthcheck" in s, f"{name} has no health check"
    for p in s.get("ports", []):
        ip = p.get("host_ip") if isinstance(p, dict) else str(p).split(":")[0]
        assert ip == "127.0.0.1", f"{name} publishes {p} beyond the loopback"
# Who can reach whom: each internal network is shared only by a service and its legitimate clients.
nets = {n: {name for name, s in services.items() if n in (s.get("networks") or {})}
        for n in ("db", "authz", "upstream", "metrics")}
want_nets = {
    "db": {"postgres", "control-api", "ext-authz", "db-roles", "db-migrate"},
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
# PostgreSQL requires passwords; the services log in as their own least-privilege roles, each reading
# only its own password file.
pg = services["postgres"]["environment"]
assert "POSTGRES_HOST_AUTH_METHOD" in pg and pg["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256", pg
assert pg.get("POSTGRES_PASSWORD_FILE"), "postgres has no password file"
assert "POSTGRES_PASSWORD" not in pg, "the superuser password is in the compose file"
for name, role in (("control-api", "edgemesh_control_api"), ("ext-authz", "edgemesh_ext_authz")):
    env = services[name]["environment"]
    url = env["EDGEMESH_DATABASE_URL"]
    user = url.split("@")[0]
    assert user == f"postgres://{role}", f"{name} connects as {user}"
    assert env.get("PGPASSFILE"), f"{name} has no password file"
assert str(services["control-api"]["environment"].get("EDGEMESH_MIGRATE")) == "false"
readers = {
    "db-secret-postgres": {"db-secrets", "postgres", "db-roles", "db-migrate"},
    "db-secret-control-api": {"db-secrets", "db-roles", "control-api"},
    "db-secret-ext-authz": {"db-secrets", "db-roles", "ext-authz"},
}
for volume, allowed in readers.items():
    source = lambda v: v.get("source") if isinstance(v, dict) else str(v).split(":")[0]
    mounted = {name for name, s in services.items()
               if any(source(v) == volume for v in s.get("volumes", []))}
    assert mounted == allowed, f"{volume} is mounted by {sorted(mounted)}, not {sorted(allowed)}"
print("check-deploy: compose services, health checks, loopback-only ports, networks and database roles OK")
'
else
  missing docker-compose "apt-get install docker-compose"
fi

# compose's database secrets step, outside Docker: one password per role, files private, and a second run
# keeps them (a restart must not lock the services out).
tmp_secrets=$(mktemp -d)
DB_INIT_SECRETS="$tmp_secrets" sh deploy/db-init.sh secrets >/dev/null
first=$(cat "$tmp_secrets"/*/pgpass)
DB_INIT_SECRETS="$tmp_secrets" sh deploy/db-init.sh secrets >/dev/null
[ "$first" = "$(cat "$tmp_secrets"/*/pgpass)" ] || { echo "check-deploy: db-init secrets changed the passwords on a re-run" >&2; exit 1; }
python3 - "$tmp_secrets" <<'PY'
import os, stat, sys
root = sys.argv[1]
seen = set()
for name, role in (("postgres", "postgres"), ("control-api", "edgemesh_control_api"), ("ext-authz", "edgemesh_ext_authz")):
    path = os.path.join(root, name, "pgpass")
    host, port, db, user, password = open(path).read().rstrip("\n").split(":", 4)
    assert (host, port, db, user) == ("*", "*", "*", role), path
    assert len(password) == 32 and password.isalnum(), f"{path}: a weak password"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, f"{path} is not 0600"
    seen.add(password)
raw = os.path.join(root, "postgres", "password")
assert stat.S_IMODE(os.stat(raw).st_mode) == 0o400, f"{raw} is not 0400"
assert open(raw).read().strip() in seen
assert len(seen) == 3, "two roles share a password"
PY
rm -rf "$tmp_secrets"
echo "check-deploy: compose's database secrets are generated once, private, one per role"

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

# The Kubernetes manifests: the base and the example overlay render (kubectl kustomize), every
# resource is valid and has no unknown field (kubernetes-validate --strict), the Envoy configuration
# in the ConfigMap is envoy/envoy.yaml.in as render-envoy.sh makes it and one Envoy accepts, and the
# properties the README promises hold.
kvalidate=$ROOT/.venv/bin/kubernetes-validate
if command -v kubectl >/dev/null && [ -x "$kvalidate" ]; then
  ktmp=$(mktemp -d)
  kubectl kustomize deploy/kubernetes/base >"$ktmp/base.yaml"
  kubectl kustomize deploy/kubernetes/overlays/example >"$ktmp/example.yaml"
  "$kvalidate" --strict --quiet "$ktmp/base.yaml" "$ktmp/example.yaml"
  deploy/kubernetes/render-envoy.sh "$ktmp/envoy.yaml"
  cmp -s "$ktmp/envoy.yaml" deploy/kubernetes/base/envoy.yaml || {
    echo "check-deploy: deploy/kubernetes/base/envoy.yaml is not what render-envoy.sh makes of envoy/envoy.yaml.in; run deploy/kubernetes/render-envoy.sh" >&2
    exit 1
  }
  python3 - "$ktmp" <<'PY'
import sys, yaml
tmp = sys.argv[1]
docs = [d for d in yaml.safe_load_all(open(f"{tmp}/example.yaml")) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
deploy = lambda n: by[("Deployment", n)]
assert deploy("ext-authz")["spec"]["replicas"] == 3 and deploy("control-api")["spec"]["replicas"] == 2
svc = by[("Service", "ext-authz")]["spec"]
assert svc.get("clusterIP") == "None", "ext-authz's Service is not headless: Envoy would see one address"
envoy = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap"
                            and d["metadata"]["name"].startswith("envoy-config"))["data"]["envoy.yaml"])
cluster = next(c for c in envoy["static_resources"]["clusters"] if c["name"] == "ext_authz")
assert cluster["type"] == "STRICT_DNS", cluster["type"]
addr = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
assert addr["address"] == "ext-authz", addr
assert cluster["health_checks"][0]["grpc_health_check"], "ext-authz is not health-checked over gRPC"
assert envoy["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
for kind, name in by:
    if kind not in ("Deployment", "Job"):
        continue
    pod = (by[(kind, name)]["spec"]["template"]["spec"])
    assert pod["securityContext"].get("runAsNonRoot") is True, f"{name} may run as root"
    assert pod.get("automountServiceAccountToken") is False, f"{name} mounts an API token"
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        assert sc.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']} writes its root filesystem"
        assert sc.get("allowPrivilegeEscalation") is False and sc.get("capabilities", {}).get("drop") == ["ALL"]
        r = c.get("resources", {})
        assert r.get("requests") and r.get("limits"), f"{name}/{c['name']} has no requests and limits"
        if kind == "Deployment":
            assert "readinessProbe" in c, f"{name}/{c['name']} has no readiness probe"
assert deploy("ext-authz")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] == 9191
for name in ("ext-authz", "control-api", "envoy"):
    assert ("PodDisruptionBudget", name) in by, f"no PodDisruptionBudget for {name}"
hpa = by[("HorizontalPodAutoscaler", "ext-authz")]["spec"]["scaleTargetRef"]
assert hpa["kind"] == "Deployment" and hpa["name"] == "ext-authz"
# Only Envoy reaches ext-authz's Check; nothing else is admitted (default deny).
assert by[("NetworkPolicy", "default-deny")]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
rules = by[("NetworkPolicy", "ext-authz")]["spec"]["ingress"]
check = [r for r in rules if any(p["port"] == 9191 for p in r["ports"])]
assert check == [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "envoy"}}}],
                  "ports": [{"protocol": "TCP", "port": 9191}]}], check
# Only the services and the migrations reach PostgreSQL.
clients = {name for (kind, name), d in by.items() if kind in ("Deployment", "Job")
           and d["spec"]["template"]["metadata"]["labels"].get("edgemesh.io/database-client") == "true"}
assert clients == {"control-api", "ext-authz", "edgemesh-migrate"}, clients
db_egress = [(n, p) for (k, n), d in by.items() if k == "NetworkPolicy"
             for e in d["spec"].get("egress", []) for p in e.get("ports", []) if p.get("port") == 5432]
assert [n for n, _ in db_egress] == ["database-clients"], db_egress
with open(f"{tmp}/configmap-envoy.yaml", "w") as f:
    yaml.safe_dump(envoy, f)
PY
  if [ -x "$envoy" ] && [ -x target/debug/edgemesh-control-api ]; then
    # Envoy loads the certificates it names even to validate: test ones at the mounted paths.
    mkdir "$ktmp/state"
    EDGEMESH_STATE_DIR="$ktmp/state" EDGEMESH_LOG=warn target/debug/edgemesh-control-api issue-server-cert \
      --names localhost --cert-out "$ktmp/tls.crt" --key-out "$ktmp/tls.key" >/dev/null
    sed -e "s|/etc/envoy/tls/|$ktmp/|g; s|/etc/envoy/ca/ca.pem|$ktmp/state/ca.pem|" \
      "$ktmp/configmap-envoy.yaml" >"$ktmp/validate.yaml"
    "$envoy" --mode validate -c "$ktmp/validate.yaml" --log-level error >/dev/null
  else
    missing "envoy or the built binaries" "make test builds and installs them first"
  fi
  rm -rf "$ktmp"
  echo "check-deploy: the Kubernetes manifests render, validate strictly, and their Envoy configuration validates"
else
  missing "kubectl or kubernetes-validate" "kubectl from the machine, kubernetes-validate: scripts/stack.sh test-tools-install"
fi
