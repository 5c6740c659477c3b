#!/usr/bin/env bash
# W0 with simulators, side by side: one attacker's failures arrive every
# 12 ms (FreeSWITCH's pace under svcrack) until its ban is in the kernel set;
# the row is how many the server processed before that. sipwarden through
# ESL and through its log jail; fail2ban 1.0.2 (its freeswitch filter,
# nftables action, backend auto) through the log, when it is installed.
# maxretry 5; each side in its own network namespace. Run as root.
# (The svcrack-against-Kamailio form of W0 is tests/it/kamailio.rs.)
set -euo pipefail
cd "$(dirname "$0")/.."
MAXRETRY=${MAXRETRY:-5}
WORK=$(mktemp -d)
NS=swpace$$
trap 'ip netns del "$NS" 2>/dev/null || true; ip netns del "${NS}f" 2>/dev/null || true; rm -rf "$WORK" || true' EXIT
# BIN=... measures another build (bench/run-all.sh passes it).
[ -n "${BIN:-}" ] || cargo build --release -q
BIN=${BIN:-$PWD/target/release/sipwarden}
ip netns add "$NS"
ip -n "$NS" link set lo up
ip netns exec "$NS" python3 bench/latency.py w0 "$BIN" "$WORK" "$MAXRETRY"
if command -v fail2ban-server >/dev/null; then
  ip netns add "${NS}f"
  ip -n "${NS}f" link set lo up
  ip netns exec "${NS}f" python3 bench/latency.py w0-fail2ban - "$WORK" "$MAXRETRY"
fi
