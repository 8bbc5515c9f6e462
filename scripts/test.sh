#!/usr/bin/env bash
# Runs every test. Starts the throwaway PostgreSQL cluster if it is not running (and stops it again
# afterwards); each database test creates its own database in it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PG_PORT=${EDGEMESH_PG_PORT:-54329}

started_db=no
if ! scripts/stack.sh status 2>/dev/null | grep -q '^postgres running'; then
  scripts/stack.sh db-up
  started_db=yes
fi
cleanup() { if [ "$started_db" = yes ]; then scripts/stack.sh db-down; fi; }
trap cleanup EXIT

scripts/stack.sh test-tools-install
export EDGEMESH_ENVOY_BIN=${EDGEMESH_ENVOY_BIN:-$ROOT/.venv/bin/envoy}
export EDGEMESH_PYTHON=${EDGEMESH_PYTHON:-$ROOT/.venv/bin/python3}
# The cluster requires passwords: the superuser's is in its pgpass file, which sqlx and psql read.
export PGPASSFILE=${PGPASSFILE:-$ROOT/.edgemesh/pg/pgpass}
export DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres
# One build for the binaries the end-to-end tests run and for the tests themselves: building all targets
# unifies the dev-dependencies' features, so the test run below reuses every artifact (and so does
# `make up`, which builds the same way). It is the build that checks every query against the
# migrations, and fails when the offline query data in .sqlx/ is out of date.
scripts/query-data.sh check
# The second agent build the self-update tests take: the same code with a higher version. Only the agent
# is compiled again (its version is the one thing the variable changes), then once more as it was.
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
next_version="${version%.*}.$(( ${version##*.} + 1 ))"
EDGEMESH_AGENT_VERSION=$next_version cargo build --workspace --all-targets
mkdir -p target/agent-next
cp target/debug/edgemesh-agent target/agent-next/edgemesh-agent
cargo build --workspace --all-targets
# The aarch64 agent (scripts/aarch64.sh), which the e2e tests run under qemu: without root to install
# what it needs, it is skipped (not with EDGEMESH_REQUIRE_TOOLS=1, as in CI).
if scripts/aarch64.sh prepare; then
  scripts/aarch64.sh build
elif [ "${EDGEMESH_REQUIRE_TOOLS:-0}" = 1 ]; then
  exit 1
else
  echo "warning: the aarch64 agent is not built; its test is skipped" >&2
fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
# The dependency tree: licences, banned crates (rustls-pemfile, a second TLS stack), sources
# (deny.toml). cargo-deny is built once (about 5 minutes on two cores) into ~/.cargo/bin.
command -v cargo-deny >/dev/null || cargo install --locked cargo-deny --version 0.20.2
cargo deny --log-level error check bans licenses sources
# Every single change of an operator or a constant in the policies must fail a Rego test.
python3 scripts/mutate-policies.py
# Prometheus rules and configuration, compose file, Dockerfile, compose's Envoy configuration.
scripts/check-deploy.sh
