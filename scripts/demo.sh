#!/usr/bin/env bash
# After `make up`: enroll a demo device with the real agent, send requests through Envoy before and after
# it reports its health, run the simulator (20 devices, steady traffic through Envoy), and print commands
# to try by hand.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STATE=.edgemesh
BIN=target/debug
API=https://127.0.0.1:8444

admin() { # METHOD PATH [JSON]
  curl -sS --cacert "$STATE/ca.pem" -X "$1" -H @"$STATE/admin-header" \
    -H 'Content-Type: application/json' ${3:+-d "$3"} "$API/api/v1/admin$2"
}
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

echo
echo "== enrolling the demo device 'demo-pi' with edgemesh-agent (its key is generated locally)"
admin POST /users '{"id":"demo-owner","email":"demo-owner@example.com","role":"admin"}' >/dev/null || true
created=$(admin POST /tokens '{"owner":"demo-owner","ttl_seconds":900,"max_uses":1}')
token=$(json_field token <<<"$created")
fingerprint=$(json_field ca_fingerprint <<<"$created")
DEVICE_DIR=$STATE/demo-device
if [ -f "$DEVICE_DIR/cert.pem" ]; then
  echo "demo-pi is already enrolled in $DEVICE_DIR"
else
  EDGEMESH_ENROLLMENT_TOKEN=$token "$BIN/edgemesh-agent" --state-dir "$DEVICE_DIR" enroll \
    --server "$API" --ca-fingerprint "$fingerprint" --device-id demo-pi
fi
"$BIN/edgemesh-agent" --state-dir "$DEVICE_DIR" status

DEVICE_TLS=(--cacert "$DEVICE_DIR/ca.pem" --cert "$DEVICE_DIR/cert.pem" --key "$DEVICE_DIR/key.pem")
through_envoy() { # PATH
  printf '  GET %-14s → ' "$1"
  curl -sS "${DEVICE_TLS[@]}" -w ' (HTTP %{http_code})\n' "https://localhost:10000$1"
}
report_health() { # ANTIVIRUS(true|false)
  local now; now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  curl -sS "${DEVICE_TLS[@]}" -H 'Content-Type: application/json' -w '\n' \
    -d "{\"collected_at\":\"$now\",\"agent_version\":\"demo\",\"cpu_usage\":12.5,\"memory_usage\":40,\"disk_usage\":50,\"os\":\"debian\",\"os_version\":\"12\",\"kernel\":null,\"uptime_seconds\":null,\"disk_encrypted\":true,\"os_patches_current\":true,\"antivirus_enabled\":$1,\"firewall_enabled\":null}" \
    https://127.0.0.1:8443/api/v1/health
}

echo
echo "== requests through Envoy (mTLS with demo-pi's certificate), decided by ext-authz"
echo "-- a health report with antivirus off:"
report_health false
through_envoy /api/orders
echo "-- a healthy report:"
report_health true
through_envoy /api/orders
through_envoy /database/q
echo "-- (demo-owner is an admin: every service, at any hour; developers and analysts are bound by role and business hours)"

echo
echo "== an analyst's device 'demo-analyst-pi': analysts may not use the database, whatever the hour"
admin POST /users '{"id":"demo-analyst","email":"demo-analyst@example.com","role":"analyst"}' >/dev/null || true
ANALYST_DIR=$STATE/demo-analyst-device
if [ ! -f "$ANALYST_DIR/cert.pem" ]; then
  created=$(admin POST /tokens '{"owner":"demo-analyst","ttl_seconds":900,"max_uses":1}')
  EDGEMESH_ENROLLMENT_TOKEN=$(json_field token <<<"$created") "$BIN/edgemesh-agent" --state-dir "$ANALYST_DIR" \
    enroll --server "$API" --ca-fingerprint "$(json_field ca_fingerprint <<<"$created")" --device-id demo-analyst-pi
fi
DEVICE_TLS=(--cacert "$ANALYST_DIR/ca.pem" --cert "$ANALYST_DIR/cert.pem" --key "$ANALYST_DIR/key.pem")
report_health true
through_envoy /database/q

echo
echo "== the simulator: 20 devices of admins, developers and analysts enroll (each its own key and CSR),"
echo "   report health (85% patched, 90% antivirus, 95% encrypted) and send requests through Envoy for 15 s"
"$BIN/edgemesh-simulator" --devices 20 --duration 15s --rate 40 --seed "${EDGEMESH_DEMO_SEED:-1}"

cat <<TXT

== try it yourself (from $ROOT)
  # the CA bundle, and the devices the control API knows
  curl --cacert .edgemesh/ca.pem $API/api/v1/ca.pem
  curl --cacert .edgemesh/ca.pem -H @.edgemesh/admin-header '$API/api/v1/admin/devices?limit=5'
  curl --cacert .edgemesh/ca.pem -H @.edgemesh/admin-header $API/api/v1/admin/devices/demo-pi

  # through Envoy with demo-pi's certificate (an admin's): allowed, and the upstream echoes the identity
  # EdgeMesh vouched for
  curl --cacert $DEVICE_DIR/ca.pem --cert $DEVICE_DIR/cert.pem --key $DEVICE_DIR/key.pem https://localhost:10000/api/orders
  # with demo-analyst-pi's certificate: denied, a 403 with {decision_id, reasons}
  curl --cacert $ANALYST_DIR/ca.pem --cert $ANALYST_DIR/cert.pem --key $ANALYST_DIR/key.pem https://localhost:10000/database/x

  # the audit trail of both, newest first
  curl --cacert .edgemesh/ca.pem -H @.edgemesh/admin-header '$API/api/v1/admin/audit?device=demo-analyst-pi&limit=5'

  # the simulator's other scenarios (see edgemesh-simulator --help)
  $BIN/edgemesh-simulator --devices 60 --duration 30s --scenario revocation --revocations 10
  $BIN/edgemesh-simulator --devices 20 --duration 20s --scenario flapping
  $BIN/edgemesh-simulator --devices 20 --duration 10s --scenario attack
  # without a client certificate Envoy refuses the TLS session (curl exit 56)
  curl --cacert .edgemesh/ca.pem https://localhost:10000/api/orders

  # report this machine's real health with the agent (once, or as the daemon every 30 s); a machine
  # without disk encryption or an antivirus daemon is unhealthy, and Envoy then answers 403 with why
  $BIN/edgemesh-agent --state-dir $DEVICE_DIR report --once
  $BIN/edgemesh-agent --state-dir $DEVICE_DIR run

  # its health history, as the control API stored it
  curl --cacert .edgemesh/ca.pem -H @.edgemesh/admin-header '$API/api/v1/admin/devices/demo-pi/health?limit=5'

  # renew demo-pi's certificate over mTLS, with the agent or with curl and the device's own certificate
  $BIN/edgemesh-agent --state-dir $DEVICE_DIR renew
  openssl req -new -key $DEVICE_DIR/key.pem -subj /CN=demo-pi -out /tmp/demo-pi.csr
  curl --cacert .edgemesh/ca.pem --cert $DEVICE_DIR/cert.pem --key $DEVICE_DIR/key.pem \\
       -H 'Content-Type: application/json' \\
       -d "{\"csr_pem\": \$(python3 -c 'import json; print(json.dumps(open("/tmp/demo-pi.csr").read()))')}" \\
       https://127.0.0.1:8443/api/v1/renew

  # revoke it; its next request through Envoy is a 403, its next renewal is refused
  curl --cacert .edgemesh/ca.pem -H @.edgemesh/admin-header -X POST $API/api/v1/admin/devices/demo-pi/revoke

  make down   # stop everything
TXT
