# Multi-stage build of the EdgeMesh binaries; each service runs as a non-root user.
# Untested on the development machines (no Docker engine there).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --bins

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/edgemesh --create-home edgemesh
COPY --from=build /src/target/release/edgemesh-control-api /src/target/release/edgemesh-ext-authz \
     /src/target/release/edgemesh-agent /src/target/release/edgemesh-simulator /usr/local/bin/
COPY policies /usr/share/edgemesh/policies
ENV EDGEMESH_POLICY_DIR=/usr/share/edgemesh/policies
USER edgemesh
WORKDIR /var/lib/edgemesh

FROM runtime AS control-api
ENV EDGEMESH_STATE_DIR=/var/lib/edgemesh EDGEMESH_API_LISTEN=0.0.0.0:8444 EDGEMESH_DEVICE_LISTEN=0.0.0.0:8443
EXPOSE 8443 8444
ENTRYPOINT ["/usr/local/bin/edgemesh-control-api"]

FROM runtime AS ext-authz
ENV EDGEMESH_EXT_AUTHZ_LISTEN=0.0.0.0:9191 EDGEMESH_EXT_AUTHZ_METRICS_LISTEN=0.0.0.0:9192
EXPOSE 9191 9192
ENTRYPOINT ["/usr/local/bin/edgemesh-ext-authz", "serve"]
