#!/usr/bin/env bash
# W5 restart: 100,000 active bans restored into the kernel after a restart.
# Bans are made with a burst (maxretry 1) in a network namespace, the daemon
# is stopped, the kernel table deleted (so only the state store can bring the
# bans back), and the daemon started again. Prints the daemon's own restore
# time and the time until all elements are in the kernel. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
WORK=$(mktemp -d)
NS=swrest$$
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; ip netns del "$NS" 2>/dev/null || true; rm -rf "$WORK" || true; }
trap cleanup EXIT
# BIN=... measures another build (side by side: bench/side_by_side.sh).
[ -n "${BIN:-}" ] || cargo build --release -q
. bench/lib.sh
BIN=${BIN:-$PWD/target/release/sipwarden}
sw_config 'maxretry = 1\nbantime = "1h"'
python3 - "$WORK/burst.log" "$N" <<'PY'
import sys, time
now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        a = 0x0C000000 + i
        f.write(f"{now}.000000 [WARNING] sofia_reg.c:2531 Can't find user [x@h] from {a>>24}.{(a>>16)&255}.{(a>>8)&255}.{a&255}\n")
PY
ip netns add "$NS"
count() { ip netns exec "$NS" nft -j list set inet sipwarden banned_v4 2>/dev/null | python3 -c '
import json,sys
d=json.load(sys.stdin); print(sum(len(o["set"].get("elem",[])) for o in d["nftables"] if "set" in o))' 2>/dev/null || echo 0; }
start() { RUST_LOG=info ip netns exec "$NS" "$BIN" run --config "$WORK/sw.toml" 2>>"$WORK/daemon.log" & PID=$!; }
start
for _ in $(seq 100); do grep -q "following" "$WORK/daemon.log" && break; sleep 0.1; done
cat "$WORK/burst.log" >> "$WORK/fs.log"
for _ in $(seq 300); do [ "$(count)" -ge "$N" ] && break; sleep 0.5; done
sleep 1   # let the store commit
kill -TERM "$PID"; wait "$PID" || true; PID=
ip netns exec "$NS" nft delete table inet sipwarden
: > "$WORK/daemon.log"
T0=$(date +%s.%N)
start
for _ in $(seq 600); do [ "$(count)" -ge "$N" ] && break; sleep 0.05; done
T1=$(date +%s.%N)
LINE=$(grep -o "restored [0-9]* active ban(s) in [^ ]*" "$WORK/daemon.log" | head -1)
echo "W5 | bans | daemon's restore (store read + netlink) | start to all in kernel (incl. process start, table layout, polling)"
echo "W5 | $(count) | $LINE | $(echo "$T1 - $T0" | bc -l | cut -c1-6) s"
