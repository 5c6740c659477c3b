#!/usr/bin/env bash
# The fleet benchmark: N nodes (default 10), each a sipwarden daemon
# (nftables backend) in a network namespace of its own, joined through one
# real redis-server in a hub namespace (a veth from each node to a bridge
# there; no traffic leaves the namespaces made here). bench/fleet.py does
# the measuring:
#   * K bans (default 200), each asked of one node in turn: the time until
#     every other node's kernel set holds it, timed by nftables netlink
#     notifications (no polling); p50/p99 to the last node, split at the
#     origin's XADD as Redis's MONITOR shows it;
#   * BANS bans (default 100,000) decided across the fleet, redis-server
#     killed and started again empty: the time until the fleet has
#     re-converged (defined in fleet.py and printed).
# Run as root.
#   bash bench/fleet.sh [BIN]            # default: target/release/sipwarden
#   bash bench/fleet.sh OLD NEW          # both, alternating, ROUNDS times (default 1)
# N, K, BANS, ROUNDS, TRIAL_TIMEOUT from the environment. Bounded: every
# wait in fleet.py has a deadline; on exit every process in the namespaces
# made here is stopped (TERM, then KILL after 5 s) and the namespaces deleted.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10}
ROUNDS=${ROUNDS:-1}
if [ $# -eq 0 ]; then
  cargo build --release -q
  set -- "$PWD/target/release/sipwarden"
fi
for b in "$@"; do [ -x "$b" ] || { echo "fleet.sh: $b is not an executable" >&2; exit 2; }; done
command -v redis-server >/dev/null || { echo "fleet.sh: redis-server missing (apt-get install redis-server)" >&2; exit 2; }
command -v nft >/dev/null || { echo "fleet.sh: nft missing (apt-get install nftables)" >&2; exit 2; }
WORK=$(mktemp -d)
TAG=swf$$
HUB=${TAG}h
NSS=()

teardown() {
  local ns pids
  for ns in "${NSS[@]}" "$HUB"; do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -n "$pids" ] && kill $pids 2>/dev/null || true
  done
  for _ in $(seq 50); do
    pids=$(for ns in "${NSS[@]}" "$HUB"; do ip netns pids "$ns" 2>/dev/null || true; done)
    [ -z "$pids" ] && break
    sleep 0.1
  done
  [ -n "${pids:-}" ] && kill -9 $pids 2>/dev/null || true
  for ns in "${NSS[@]}" "$HUB"; do ip netns del "$ns" 2>/dev/null || true; done
  NSS=()
}
# KEEP=1 keeps the daemons' logs and configurations (the path is printed).
trap 'teardown; if [ "${KEEP:-0}" = 1 ]; then echo "fleet.sh: kept $WORK" >&2; else rm -rf "$WORK"; fi' EXIT
trap 'exit 130' INT TERM

setup() {
  ip netns add "$HUB"
  ip -n "$HUB" link set lo up
  ip -n "$HUB" link add br0 type bridge
  ip -n "$HUB" addr add 10.250.0.1/24 dev br0
  ip -n "$HUB" link set br0 up
  local i ns
  for i in $(seq 0 $((N - 1))); do
    ns=${TAG}n$i
    ip netns add "$ns"
    NSS+=("$ns")
    ip -n "$ns" link set lo up
    ip -n "$ns" link add eth0 type veth peer name v$i netns "$HUB"
    ip -n "$ns" addr add 10.250.0.$((10 + i))/24 dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$HUB" link set v$i master br0
    ip -n "$HUB" link set v$i up
  done
}

run_one() { # label, binary
  setup
  local w=$WORK/$1
  mkdir -p "$w"
  local rc=0
  timeout -k 10 900 python3 -u bench/fleet.py "$2" "$w" "$HUB" "${NSS[@]}" 2>&1 | sed "s/^/$1 /" || rc=$?
  teardown
  return $rc
}

rc=0
for r in $(seq "$ROUNDS"); do
  if [ $# -eq 1 ]; then
    run_one "#$r" "$1" || rc=$?
  else
    run_one "old#$r" "$1" || rc=$?
    run_one "new#$r" "$2" || rc=$?
  fi
done
exit $rc
