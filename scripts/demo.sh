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

# identity_problem DIR DEVICE: why the identity stored in DIR cannot be used (nothing if it can): missing,
# not issued by this CA or expired (a new CA after `rm -rf .edgemesh`), unknown to the control API (a new
# database), the device or the certificate revoked.
read -r -d '' CHECK_DEVICE <<'PY' || true
import json, sys
serial, answer = sys.argv[1].lower().lstrip("0"), json.loads(sys.argv[2])
if "error" in answer:
    print("the control API does not know the device")
elif answer["status"] != "active":
    print("the device is " + answer["status"])
else:
    certs = [c for c in answer["certificates"] if c["serial"].lower().lstrip("0") == serial]
    if not certs:
        print("the control API does not know its certificate")
    elif certs[0]["revoked_at"] is not None:
        print("its certificate was revoked or replaced (" + (certs[0]["revocation_reason"] or "no reason") + ")")
PY
identity_problem() {
  local dir=$1 device=$2
  if [ ! -f "$dir/cert.pem" ]; then echo "no identity is stored"; return; fi
  if ! openssl verify -CAfile "$STATE/ca.pem" "$dir/cert.pem" >/dev/null 2>&1; then
    echo "its certificate is expired or not issued by this CA"; return
  fi
  local serial; serial=$(openssl x509 -in "$dir/cert.pem" -noout -serial | cut -d= -f2)
  python3 -c "$CHECK_DEVICE" "$serial" "$(admin GET "/devices/$device")"
}

# ensure_identity DIR DEVICE OWNER: a usable identity for DEVICE in DIR, enrolling a fresh one with the
# real agent (its key generated locally) if the stored one cannot be used.
ensure_identity() {
  local dir=$1 device=$2 owner=$3 problem created
  problem=$(identity_problem "$dir" "$device")
  if [ -z "$problem" ]; then
    echo "$device: the identity stored in $dir is still good (issued by this CA, valid, not revoked)"
    return
  fi
  echo "$device: $problem; enrolling a fresh identity"
  rm -rf "$dir"
  # An active device keeps its id until it is revoked: its stored identity is gone, so revoke it.
  if admin GET "/devices/$device" | grep -q '"status":"active"'; then
    admin POST "/devices/$device/revoke" '{"reason":"demo: its stored identity was unusable"}' >/dev/null
    echo "$device: revoked the device's unusable identity first"
  fi
  created=$(admin POST /tokens "{\"owner\":\"$owner\",\"ttl_seconds\":900,\"max_uses\":1}")
  EDGEMESH_ENROLLMENT_TOKEN=$(json_field token <<<"$created") "$BIN/edgemesh-agent" --state-dir "$dir" enroll \
    --server "$API" --ca-fingerprint "$(json_field ca_fingerprint <<<"$created")" --device-id "$device"
}

through_envoy() { # PATH: prints the answer, derived from its status
  local out code
  out=$(curl -sS "${DEVICE_TLS[@]}" -w '\n%{http_code}' "https://localhost:10000$1")
  code=${out##*$'\n'}
  case $code in
    200) printf '  GET %-14s → allowed (HTTP 200): %s\n' "$1" "${out%$'\n'*}" ;;
    403) printf '  GET %-14s → denied (HTTP 403): %s\n' "$1" "${out%$'\n'*}" ;;
    *) printf '  GET %-14s → HTTP %s: %s\n' "$1" "$code" "${out%$'\n'*}" ;;
  esac
}
report_health() { # ANTIVIRUS(true|false): prints the verdict the control API gave
  local now answer
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  answer=$(curl -sS "${DEVICE_TLS[@]}" -H 'Content-Type: application/json' \
    -d "{\"sequence\":$(date +%s%6N),\"collected_at\":\"$now\",\"agent_version\":\"demo\",\"cpu_usage\":12.5,\"memory_usage\":40,\"disk_usage\":50,\"os\":\"debian\",\"os_version\":\"12\",\"kernel\":null,\"uptime_seconds\":null,\"disk_encrypted\":true,\"os_patches_current\":true,\"antivirus_enabled\":$1,\"firewall_enabled\":null}" \
    https://127.0.0.1:8443/api/v1/health)
  printf '  health report (antivirus %s) → %s\n' "$([ "$1" = true ] && echo on || echo off)" "$answer"
}

echo
echo "== the demo device 'demo-pi' of demo-owner (an admin), with edgemesh-agent"
admin POST /users '{"id":"demo-owner","email":"demo-owner@example.com","role":"admin"}' >/dev/null || true
DEVICE_DIR=$STATE/demo-device
ensure_identity "$DEVICE_DIR" demo-pi demo-owner
"$BIN/edgemesh-agent" --state-dir "$DEVICE_DIR" status

DEVICE_TLS=(--cacert "$DEVICE_DIR/ca.pem" --cert "$DEVICE_DIR/cert.pem" --key "$DEVICE_DIR/key.pem")
echo
echo "== requests through Envoy (mTLS with demo-pi's certificate), decided by ext-authz"
echo "   (the policy lets admins use every service at any hour, when their device is healthy)"
report_health false
through_envoy /api/orders
report_health true
through_envoy /api/orders
through_envoy /database/q

echo
echo "== an analyst's device 'demo-analyst-pi' (the policy never lets analysts use the database)"
admin POST /users '{"id":"demo-analyst","email":"demo-analyst@example.com","role":"analyst"}' >/dev/null || true
ANALYST_DIR=$STATE/demo-analyst-device
ensure_identity "$ANALYST_DIR" demo-analyst-pi demo-analyst
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
  # the same with edgemeshctl, the admin CLI (it reads .edgemesh/ca.pem and .edgemesh/admin-token here;
  # --output json prints the API's JSON); the API's document: $API/api/v1/docs
  $BIN/edgemeshctl devices list --limit 5
  $BIN/edgemeshctl devices show demo-pi
  $BIN/edgemeshctl status

  # through Envoy with demo-pi's certificate (an admin's): allowed, and the upstream echoes the identity
  # EdgeMesh vouched for; once its last health report is older than 5 minutes, a 403 "stale" (run
  # \`make demo\` again, or report with the agent, below)
  curl --cacert $DEVICE_DIR/ca.pem --cert $DEVICE_DIR/cert.pem --key $DEVICE_DIR/key.pem https://localhost:10000/api/orders
  # with demo-analyst-pi's certificate: denied, a 403 with {decision_id, reasons}
  curl --cacert $ANALYST_DIR/ca.pem --cert $ANALYST_DIR/cert.pem --key $ANALYST_DIR/key.pem https://localhost:10000/database/x

  # the audit trail of both, newest first
  curl --cacert .edgemesh/ca.pem -H @.edgemesh/admin-header '$API/api/v1/admin/audit?device=demo-analyst-pi&limit=5'
  $BIN/edgemeshctl audit query --device demo-analyst-pi --limit 5
  $BIN/edgemeshctl audit query --follow        # new records as they are written (Ctrl-C stops)

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
  $BIN/edgemeshctl health history demo-pi --limit 5

  # renew demo-pi's certificate over mTLS (a new key; the old certificate is retired 60 s later)
  $BIN/edgemesh-agent --state-dir $DEVICE_DIR renew

  # revoke it; its next request through Envoy is a 403, its next renewal is refused (the next
  # \`make demo\` sees that and enrols a fresh identity)
  curl --cacert .edgemesh/ca.pem -H @.edgemesh/admin-header -X POST $API/api/v1/admin/devices/demo-pi/revoke
  $BIN/edgemeshctl devices revoke demo-pi --reason lost     # the same

  make down   # stop everything
TXT
