#!/usr/bin/env bash
# Benchmarks against the running local stack (`make bench` starts it). Copy the output, with the
# machine and the command, into BENCHMARKS.md.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -srm)"
echo "== enrollments/s through the HTTPS API with the agent's CSR flow"
echo "\$ target/debug/edgemesh-simulator bench-enroll --devices 1000 --concurrency 16"
target/debug/edgemesh-simulator bench-enroll --devices 1000 --concurrency 16
