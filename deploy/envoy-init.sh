#!/bin/sh
# docker-compose's envoy-init: issues Envoy's server certificate from the EdgeMesh CA (in the
# control-api's state volume) and renders envoy/envoy.yaml.in for the compose network, into the volume
# Envoy reads. Envoy runs as the same uid (10001), so its key stays mode 0600.
# `make test` runs it outside Docker (other paths) and validates the result with Envoy itself.
set -eu
out=${ENVOY_INIT_OUT:-/etc/envoy-edgemesh}
template=${ENVOY_INIT_TEMPLATE:-/usr/share/edgemesh/envoy.yaml.in}
state=${EDGEMESH_STATE_DIR:-/var/lib/edgemesh}
edgemesh-control-api issue-server-cert --names "localhost,127.0.0.1,envoy" \
  --cert-out "$out/server.pem" --key-out "$out/server-key.pem"
cp "$state/ca.pem" "$out/ca.pem"
# Same template as `make up`; in compose, Envoy's front door and its stats-only listener (for Prometheus)
# listen on all interfaces of its container, the admin interface on the container's loopback only, and
# Envoy reaches ext-authz and the demo upstream by service name (so the clusters resolve DNS).
sed -e "s|@ADMIN_PORT@|9901|g" \
    -e "s|address: 127.0.0.1, port_value: @STATS_PORT@|address: 0.0.0.0, port_value: 9902|" \
    -e "s|address: 127.0.0.1, port_value: @LISTEN_PORT@|address: 0.0.0.0, port_value: 10000|" \
    -e "s|address: 127.0.0.1, port_value: @EXT_AUTHZ_PORT@|address: ext-authz, port_value: 9191|" \
    -e "s|address: 127.0.0.1, port_value: @UPSTREAM_PORT@|address: upstream, port_value: 8081|" \
    -e "s|type: STATIC|type: STRICT_DNS|" \
    -e "s|@TRUST_DOMAIN@|${EDGEMESH_TRUST_DOMAIN:-edgemesh.local}|" \
    -e "s|@SERVER_CERT@|$out/server.pem|; s|@SERVER_KEY@|$out/server-key.pem|; s|@CA_CERT@|$out/ca.pem|" \
    "$template" >"$out/envoy.yaml"
if grep -v '^ *#' "$out/envoy.yaml" | grep -q '@[A-Z_]*@'; then
  echo "envoy-init: unfilled placeholders in envoy.yaml" >&2
  exit 1
fi
echo "envoy-init: certificate and configuration written to $out"
