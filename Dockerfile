# Multi-stage build of the EdgeMesh binaries; every service image runs as the non-root user `edgemesh`
# (uid 10001). Targets: control-api, ext-authz, simulator (also the demo upstream). Built by
# docker-compose.yml; checked here only as text (no Docker engine on the development machines).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --bins \
    && mkdir /out \
    && cp target/release/edgemesh-control-api target/release/edgemesh-ext-authz \
          target/release/edgemesh-agent target/release/edgemesh-simulator target/release/edgemeshctl /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/edgemesh --create-home edgemesh
COPY --from=build /out/ /usr/local/bin/
COPY policies /usr/share/edgemesh/policies
COPY envoy/envoy.yaml.in /usr/share/edgemesh/envoy.yaml.in
ENV EDGEMESH_POLICY_DIR=/usr/share/edgemesh/policies
USER 10001:10001
WORKDIR /var/lib/edgemesh

FROM runtime AS control-api
ENV EDGEMESH_STATE_DIR=/var/lib/edgemesh \
    EDGEMESH_API_LISTEN=0.0.0.0:8444 \
    EDGEMESH_DEVICE_LISTEN=0.0.0.0:8443 \
    EDGEMESH_CONTROL_API_METRICS_LISTEN=0.0.0.0:9190
EXPOSE 8443 8444 9190
HEALTHCHECK --interval=5s --timeout=3s --retries=20 \
    CMD curl -sf --cacert /var/lib/edgemesh/ca.pem https://localhost:8444/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/edgemesh-control-api"]

FROM runtime AS ext-authz
ENV EDGEMESH_EXT_AUTHZ_LISTEN=0.0.0.0:9191 \
    EDGEMESH_EXT_AUTHZ_METRICS_LISTEN=0.0.0.0:9192 \
    EDGEMESH_AUDIT_SPOOL_DIR=/var/lib/edgemesh/audit-spool
EXPOSE 9191 9192
HEALTHCHECK --interval=5s --timeout=3s --retries=20 \
    CMD curl -sf http://localhost:9192/metrics >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/edgemesh-ext-authz", "serve"]

FROM runtime AS simulator
ENTRYPOINT ["/usr/local/bin/edgemesh-simulator"]
