#!/usr/bin/env bash
# W4 memory: 1,000,000 distinct addresses with one failure each (below
# maxretry), then 100,000 of them banned; RSS of the daemon (dry run, no
# firewall needed). Prints one row.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
trap 'kill ${PID:-} 2>/dev/null || true; rm -rf "$WORK" || true' EXIT
# BIN=... measures another build (side by side: bench/side_by_side.sh).
[ -n "${BIN:-}" ] || cargo build --release -q
. bench/lib.sh
BIN=${BIN:-$PWD/target/release/sipwarden}
python3 - "$WORK" <<'PY'
import sys, time
w = sys.argv[1]
now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
with open(f"{w}/flood.log", "w") as f:
    for i in range(1_000_000):
        a = 0x0B000000 + i
        f.write(f"{now}.000000 [WARNING] sofia_reg.c:2531 Can't find user [x@h] from {a>>24}.{(a>>16)&255}.{(a>>8)&255}.{a&255}\n")
with open(f"{w}/bans.log", "w") as f:
    for i in range(100_000):
        a = 0x0B000000 + i
        ip = f"{a>>24}.{(a>>16)&255}.{(a>>8)&255}.{a&255}"
        f.write(f"{now}.000000 [WARNING] sofia_reg.c:2531 Can't find user [x@h] from {ip}\n" * 2)
PY
sw_config 'maxretry = 3' '[firewall]\nbackend = "none"'
RUST_LOG=warn ${MALLOC_ENV:-} "$BIN" run --config "$WORK/sw.toml" 2>/dev/null &
PID=$!
for _ in $(seq 100); do [ -S "$WORK/sw.sock" ] && break; sleep 0.1; done
# The socket file is made first thing; its first answer comes once the
# follower has opened fs.log at its end. Lines appended before that are
# history, not read (a loaded machine once skipped 7 % of the flood so).
for _ in $(seq 100); do "$BIN" status --socket "$WORK/sw.sock" >/dev/null 2>&1 && break; sleep 0.1; done
rss() { awk '/VmRSS/{print $2}' "/proc/$PID/status"; }
failed() { "$BIN" status --json --socket "$WORK/sw.sock" | python3 -c 'import json,sys; r=json.load(sys.stdin)["result"]["jails"][0]; print(r["total_failed"], r["currently_failing"], r["currently_banned"])'; }
BASE=$(rss)
cat "$WORK/flood.log" >> "$WORK/fs.log"
for _ in $(seq 600); do set -- $(failed); [ "$1" -ge 1000000 ] && break; sleep 0.2; done; echo "after flood: $*" >&2
TRACKED=$2; RSS1=$(rss)
cat "$WORK/bans.log" >> "$WORK/fs.log"
for _ in $(seq 600); do set -- $(failed); [ "$3" -ge 100000 ] && break; sleep 0.2; done; echo "after bans: $*" >&2
BANNED=$3; RSS2=$(rss); PEAK=$(awk '/VmHWM/{print $2}' "/proc/$PID/status")
echo "W4 | tracked | RSS KiB at start | RSS KiB with 1M tracked | bytes per tracked address | banned | RSS KiB with bans | peak KiB"
echo "W4 | $TRACKED | $BASE | $RSS1 | $(( (RSS1 - BASE) * 1024 / TRACKED )) | $BANNED | $RSS2 | $PEAK"
