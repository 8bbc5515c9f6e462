#!/bin/sh
# Renders envoy/envoy.yaml.in into base/envoy.yaml, the configuration the Kubernetes base puts in
# Envoy's ConfigMap: the front door on 0.0.0.0:10000, the stats-only listener on 0.0.0.0:9902, the
# admin interface on the pod's loopback; ext-authz through its headless Service (STRICT_DNS: every
# pod's address, not one connection to a ClusterIP); certificates from the mounted Secrets.
# `make test` fails when base/envoy.yaml is not what this script renders (scripts/check-deploy.sh).
#
#   deploy/kubernetes/render-envoy.sh [OUT]    (default: deploy/kubernetes/base/envoy.yaml)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/base/envoy.yaml}
sed -e "s|@ADMIN_PORT@|9901|g" \
    -e "s|address: 127.0.0.1, port_value: @STATS_PORT@|address: 0.0.0.0, port_value: 9902|" \
    -e "s|address: 127.0.0.1, port_value: @LISTEN_PORT@|address: 0.0.0.0, port_value: 10000|" \
    -e "s|address: 127.0.0.1, port_value: @EXT_AUTHZ_PORT@|address: ext-authz, port_value: 9191|" \
    -e "s|address: 127.0.0.1, port_value: @UPSTREAM_PORT@|address: upstream, port_value: 8081|" \
    -e "s|type: STATIC|type: STRICT_DNS|" \
    -e "s|@TRUST_DOMAIN@|edgemesh.local|" \
    -e "s|@SERVER_CERT@|/etc/envoy/tls/tls.crt|; s|@SERVER_KEY@|/etc/envoy/tls/tls.key|" \
    -e "s|@CA_CERT@|/etc/envoy/ca/ca.pem|" \
    "$here/../../envoy/envoy.yaml.in" >"$out"
if grep -v '^ *#' "$out" | grep -q '@[A-Z_]*@'; then
  echo "render-envoy: unfilled placeholders in $out" >&2
  exit 1
fi
