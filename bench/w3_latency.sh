#!/usr/bin/env bash
# W3 ban latency: one attacker's maxretry-th failure (a log line appended, or
# an ESL event sent by a simulator) to its element being in the kernel set,
# watched through nftables' netlink multicast group. TRIALS attackers per
# source (default 1000), one at a time, daemon with the nftables backend in a
# network namespace made here. Run as root. Prints p50/p99 rows.
# BUSY=1 keeps both vCPUs busy with nice-19 spinners during the run: on an
# idle KVM guest every cross-thread wake-up waits for a halted vCPU, which
# this shows apart from the daemon's own work.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${TRIALS:-1000}
WORK=$(mktemp -d)
NS=swlat$$
SPIN=()
trap 'kill "${SPIN[@]}" 2>/dev/null || true; ip netns del "$NS" 2>/dev/null || true; rm -rf "$WORK" || true' EXIT
# BIN=... measures another build (side by side: bench/side_by_side.sh).
[ -n "${BIN:-}" ] || cargo build --release -q
BIN=${BIN:-$PWD/target/release/sipwarden}
ip netns add "$NS"
ip -n "$NS" link set lo up
if [ "${BUSY:-0}" = 1 ]; then
  for _ in $(seq "$(nproc)"); do nice -n 19 sh -c 'while :; do :; done' & SPIN+=($!); done
fi
ip netns exec "$NS" python3 bench/latency.py w3 "$BIN" "$WORK" "$TRIALS"
