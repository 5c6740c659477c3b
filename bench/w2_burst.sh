#!/usr/bin/env bash
# W2 live burst: the N-line log (200,000 by default; issue 23 asks N=2000000)
# squeezed into the 5 minutes before now,
# appended at once to a log the daemon follows (nftables backend, inside a
# network namespace made here); time until every due ban is in the kernel
# sets. Jail as in ../shared/bench/fail2ban_live_burst.sh: maxretry 3,
# findtime 10m, bantime 1h. Run as root. Prints one row.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
WORK=$(mktemp -d)
NS=swbench$$
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; ip netns del "$NS" 2>/dev/null || true; rm -rf "$WORK" || true; }
trap cleanup EXIT
# BIN=... measures another build (side by side: bench/side_by_side.sh).
[ -n "${BIN:-}" ] || cargo build --release -q
. bench/lib.sh
BIN=${BIN:-$PWD/target/release/sipwarden}
N=${N:-200000}
GEN_SPAN_S=300 GEN_END_NOW=1 python3 "$SHARED/bench/gen_freeswitch_log.py" "$N" "$WORK/burst.log" >/dev/null
# Due bans: sources with at least 3 failures (the built-in filter's lines),
# outside ignoreip (127.0.0.0/8 and ::1, as in fail2ban's script). An IPv6
# source is its /64 (the default `ipv6_prefix`): one ban, one set element.
DUE=$(python3 - "$WORK/burst.log" <<'PY'
import ipaddress, re, sys, collections
c = collections.Counter()
for l in open(sys.argv[1], errors="replace"):
    m = re.search(r"(?:SIP auth failure \(\w+\) .* from ip|Can't find user \[.*\] from) (\S+)$", l.rstrip())
    if not m: continue
    a = m.group(1)
    if a.startswith("127.") or a == "::1": continue
    if ":" in a: a = str(ipaddress.ip_network(a + "/64", strict=False))
    c[a] += 1
print(sum(1 for v in c.values() if v >= 3))
PY
)
sw_config 'maxretry = 3\nfindtime = "10m"\nbantime = "1h"'
ip netns add "$NS"
ip netns exec "$NS" "$BIN" run --config "$WORK/sw.toml" 2>"$WORK/daemon.log" &
PID=$!
for _ in $(seq 100); do grep -q "following" "$WORK/daemon.log" && break; sleep 0.1; done
count() { ip netns exec "$NS" nft -j list table inet sipwarden | python3 -c '
import json,sys
d=json.load(sys.stdin)
print(sum(len(o["set"].get("elem",[])) for o in d["nftables"] if "set" in o))'; }
T0=$(date +%s.%N)
cat "$WORK/burst.log" >> "$WORK/fs.log"
n=0
for _ in $(seq 600); do n=$(count); [ "$n" -ge "$DUE" ] && break; sleep 0.05; done
[ "$n" -ge "$DUE" ] || echo "W2: only $n of $DUE due bans in the kernel when the wait ended" >&2
T1=$(date +%s.%N)
RSS=$(ps -o rss= -p "$PID" | tr -d ' ')
# Of which anonymous (heap, stacks): the rest is the executable's pages,
# shared and clean, which grow with the binary, not with the burst.
ANON=$(awk '/^RssAnon:/ {print $2}' "/proc/$PID/status")
echo "W2 | lines | due bans | in kernel | seconds until all in kernel | daemon RSS KiB | anonymous KiB"
echo "W2 | $N | $DUE | $n | $(echo "$T1 - $T0" | bc -l | cut -c1-6) | $RSS | $ANON"
