#!/usr/bin/env bash
# W5 restart: 100,000 active bans restored into the kernel after a restart.
# Bans are made with a burst (maxretry 1) in a network namespace, the daemon
# is stopped, the kernel table deleted (so only the state store can bring the
# bans back), and the daemon started again. Prints the daemon's own restore
# time and the time until all elements are in the kernel. Run as root.
# Start time, both restarts with the 100,000 bans in the store: exec to
# "started" (the daemon's READY=1 on $NOTIFY_SOCKET, as systemd's Type=notify
# sees it; bench/ready.py listens), first with the kernel table deleted (the
# restore writes every element), then once more with the table kept (an
# ordinary restart: the daemon stops without removing it).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
WORK=$(mktemp -d)
NS=swrest$$
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; [ -n "${RDY:-}" ] && kill "$RDY" 2>/dev/null; ip netns del "$NS" 2>/dev/null || true; rm -rf "$WORK" || true; }
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
# Starts the daemon under a READY=1 listener; READY_S is the seconds from
# just before the exec (T_EXEC) to READY=1 ("n/a" if it never came: a build without it).
timed_start() {
  rm -f "$WORK/ready" "$WORK/notify"
  python3 bench/ready.py "$WORK/notify" "$WORK/ready" 60 >/dev/null 2>&1 & RDY=$!
  for _ in $(seq 100); do [ -S "$WORK/notify" ] && break; sleep 0.02; done
  T_EXEC=$EPOCHREALTIME
  NOTIFY_SOCKET=$WORK/notify RUST_LOG=info ip netns exec "$NS" "$BIN" run --config "$WORK/sw.toml" >/dev/null 2>>"$WORK/daemon.log" & PID=$!
  wait "$RDY" 2>/dev/null || true; RDY=
  READY_S=n/a
  if [ -s "$WORK/ready" ]; then READY_S=$(echo "$(cat "$WORK/ready") - $T_EXEC" | bc -l | cut -c1-6); fi
}
stop() { kill -TERM "$PID"; wait "$PID" || true; PID=; }
start
for _ in $(seq 100); do grep -q "following" "$WORK/daemon.log" && break; sleep 0.1; done
cat "$WORK/burst.log" >> "$WORK/fs.log"
for _ in $(seq 300); do [ "$(count)" -ge "$N" ] && break; sleep 0.5; done
sleep 1   # let the store commit
stop
ip netns exec "$NS" nft delete table inet sipwarden
: > "$WORK/daemon.log"
timed_start; READY_EMPTY=$READY_S; T0=$T_EXEC
for _ in $(seq 600); do [ "$(count)" -ge "$N" ] && break; sleep 0.05; done
T1=$(date +%s.%N)
LINE=$(grep -o "restored [0-9]* active ban(s) in [^ ]*" "$WORK/daemon.log" | head -1)
IN_KERNEL=$(count)
sleep 1
stop
timed_start; READY_KEPT=$READY_S
stop
echo "W5 | bans | daemon's restore (store read + netlink) | start to all in kernel (incl. process start, table layout, polling) | exec to READY=1, table deleted | exec to READY=1, table kept"
echo "W5 | $IN_KERNEL | $LINE | $(echo "$T1 - $T0" | bc -l | cut -c1-6) s | $READY_EMPTY s | $READY_KEPT s"
