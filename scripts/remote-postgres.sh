#!/usr/bin/env bash
# PostgreSQL on "another host": a throwaway PostgreSQL 15 cluster in a network namespace of its own,
# joined to this one by a veth pair, behind a TCP relay (scripts/relay.py) that adds a round-trip delay
# (these kernels have no netem qdisc). ext-authz and the control API reach it over TCP across the veth,
# as they would reach a database on another machine. The end-to-end tests and `make bench` use it.
#
#   scripts/remote-postgres.sh start DIR RTT_MS   prints the database URL (database edgemesh, user postgres)
#   scripts/remote-postgres.sh stop DIR           stops the server and the relay, removes the namespace
#
# DIR (new or empty) holds the cluster, its log, the relay's pid and the namespace's name. Needs root
# (ip netns); the server runs as the postgres user. The cluster trusts its connections: it is reachable
# only from this machine, through the veth, and lives as long as a test or a bench.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=${EDGEMESH_PG_BIN:-/usr/lib/postgresql/15/bin}
PYTHON=${EDGEMESH_PYTHON:-python3}

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

start() {
  local dir=$1 rtt=$2
  [ "$(id -u)" -eq 0 ] || die "network namespaces need root"
  command -v ip >/dev/null || die "ip (iproute2) not found"
  [ -x "$PG_BIN/postgres" ] || die "PostgreSQL 15 binaries not found in $PG_BIN (set EDGEMESH_PG_BIN)"
  mkdir -p "$dir"
  dir=$(readlink -f "$dir")
  [ -z "$(ls -A "$dir")" ] || die "$dir is not empty"
  # A /30 of the benchmarking range 198.18.0.0/15 (RFC 2544) that no interface here has, chosen under
  # a lock so that parallel tests take different ones; the namespace is named after it.
  local n ns host peer
  exec 9>/tmp/edgemesh-remote-postgres.lock
  flock 9
  for _ in $(seq 1 1000); do
    n=$((RANDOM % 32768))
    ns=emdb$n
    ip netns list | grep -qw "$ns" && continue
    break
  done
  local base=$((n * 4))
  host="198.$((18 + base / 65536)).$(((base / 256) % 256)).$((base % 256 + 1))"
  peer="198.$((18 + base / 65536)).$(((base / 256) % 256)).$((base % 256 + 2))"
  ip netns add "$ns"
  printf '%s\n' "$ns" >"$dir/netns"
  ip link add "emh$n" type veth peer name "emp$n"
  ip link set "emp$n" netns "$ns"
  ip addr add "$host/30" dev "emh$n"
  ip link set "emh$n" up
  ip -n "$ns" addr add "$peer/30" dev "emp$n"
  ip -n "$ns" link set "emp$n" up
  ip -n "$ns" link set lo up
  flock -u 9

  chown postgres: "$dir"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  # The server listens on the namespace's loopback only: everything from outside comes through the relay.
  ip netns exec "$ns" runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-p 5432 -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" start >/dev/null \
    || { tail -20 "$dir/postgres.log" >&2; die "PostgreSQL did not start"; }
  ip netns exec "$ns" runuser -u postgres -- "$PG_BIN/createdb" -h "$dir" -p 5432 -U postgres edgemesh
  ip netns exec "$ns" "$PYTHON" "$ROOT/scripts/relay.py" --rtt-ms "$rtt" "$peer:5432" 127.0.0.1:5432 \
    >"$dir/relay.out" 2>"$dir/relay.log" &
  printf '%s\n' $! >"$dir/relay.pid"
  for _ in $(seq 1 100); do
    grep -q ready "$dir/relay.out" 2>/dev/null && break
    sleep 0.1
  done
  grep -q ready "$dir/relay.out" || { cat "$dir/relay.log" >&2; die "the relay did not start"; }
  printf 'postgres://postgres@%s:5432/edgemesh\n' "$peer"
}

stop() {
  local dir=$1
  [ -d "$dir" ] || return 0
  if [ -f "$dir/relay.pid" ]; then kill "$(cat "$dir/relay.pid")" 2>/dev/null || true; fi
  if [ -f "$dir/data/postmaster.pid" ]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  # Deleting the namespace deletes the veth pair with it.
  if [ -f "$dir/netns" ]; then ip netns del "$(cat "$dir/netns")" 2>/dev/null || true; fi
}

case "${1:-}" in
  start) [ $# -eq 3 ] || die "usage: $0 start DIR RTT_MS"; start "$2" "$3" ;;
  stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
  *) die "usage: $0 start DIR RTT_MS | stop DIR" ;;
esac
