#!/usr/bin/env bash
# After `make up`: enroll a demo device with the real agent, enroll 20 more with the simulator, and
# print commands to try by hand.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STATE=.edgemesh
BIN=target/debug
API=https://127.0.0.1:8444
TOKEN_FILE=$STATE/admin-token

admin() { # METHOD PATH [JSON]
  curl -sS --cacert "$STATE/ca.pem" -X "$1" -H "Authorization: Bearer $(cat "$TOKEN_FILE")" \
    -H 'Content-Type: application/json' ${3:+-d "$3"} "$API/api/v1/admin$2"
}
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

echo
echo "== enrolling the demo device 'demo-pi' with edgemesh-agent (its key is generated locally)"
admin POST /users '{"id":"demo-owner","email":"demo-owner@example.com","role":"developer"}' >/dev/null || true
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

echo
echo "== enrolling 20 simulated devices through the same CSR flow"
"$BIN/edgemesh-simulator" bench-enroll --devices 20 --concurrency 4

cat <<TXT

== try it yourself (from $ROOT)
  # the CA bundle, and the devices the control API knows
  curl --cacert .edgemesh/ca.pem $API/api/v1/ca.pem
  curl --cacert .edgemesh/ca.pem -H "Authorization: Bearer \$(cat .edgemesh/admin-token)" '$API/api/v1/admin/devices?limit=5'
  curl --cacert .edgemesh/ca.pem -H "Authorization: Bearer \$(cat .edgemesh/admin-token)" $API/api/v1/admin/devices/demo-pi

  # renew demo-pi's certificate over mTLS, with the agent or with curl and the device's own certificate
  $BIN/edgemesh-agent --state-dir $DEVICE_DIR renew
  openssl req -new -key $DEVICE_DIR/key.pem -subj /CN=demo-pi -out /tmp/demo-pi.csr
  curl --cacert .edgemesh/ca.pem --cert $DEVICE_DIR/cert.pem --key $DEVICE_DIR/key.pem \\
       -H 'Content-Type: application/json' \\
       -d "{\"csr_pem\": \$(python3 -c 'import json; print(json.dumps(open("/tmp/demo-pi.csr").read()))')}" \\
       https://127.0.0.1:8443/api/v1/renew

  # revoke it; its next renewal is refused (403 certificate_revoked)
  curl --cacert .edgemesh/ca.pem -H "Authorization: Bearer \$(cat .edgemesh/admin-token)" -X POST $API/api/v1/admin/devices/demo-pi/revoke

  make down   # stop everything
TXT
