#!/usr/bin/env bash
# Wire sensor CPU: RATE SIP packets per second (REGISTER with credentials and
# a 401 answer, alternating, from CLIENTS addresses, default 1,000, each with
# Call-IDs of its own) for SECS seconds over the
# loopback of a namespace made here, with the daemon's wire source on that
# loopback (dry run, nothing enforced: maxretry is out of reach and the burst rule off). Prints the
# daemon's CPU time per 1,000 packets/s, the wire thread's share of one core,
# and the packets the kernel dropped before the sensor read them (builds
# from issue 23 on; "-" before). Run as root.
#   SENDER=c      send with bench/wire_send.c (sendmmsg, built here with cc)
#                 instead of Python, which tops out near 30,000 packets/s;
#   SENDERS=N     that many sender processes sharing RATE (SENDER=c);
#   MAXRATE=1     raise the rate (RATES=, default 10k to 640k, doubling) in
#                 one daemon, SECS each, until the kernel drops packets or
#                 the senders fall short of the rate; prints each step.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-10000}
SECS=${SECS:-20}
SENDER=${SENDER:-python}
SENDERS=${SENDERS:-1}
# Before issue 23 every request came from one address (10.9.0.1), whose
# failure list, with maxretry out of reach, grew all run long: the jail's
# work per failure grew with it and was most of the daemon's CPU.
CLIENTS=${CLIENTS:-1000}
ulimit -n $((CLIENTS + 1024))
WORK=$(mktemp -d)
NS=swwire$$
trap 'kill ${PID:-} 2>/dev/null || true; ip netns del "$NS" 2>/dev/null || true; rm -rf "$WORK" || true' EXIT
# BIN=... measures another build (bench/run-all.sh passes it).
[ -n "${BIN:-}" ] || cargo build --release -q
BIN=${BIN:-$PWD/target/release/sipwarden}
. bench/lib.sh
ip netns add "$NS"
ip -n "$NS" link set lo up
# A /16 on the loopback: every 10.9.x.y is local, the clients' addresses too.
ip -n "$NS" addr add 10.9.0.1/16 dev lo
cat > "$WORK/sw.toml" <<TOML
[daemon]
state_dir = "$WORK/state"
socket = "$WORK/sw.sock"
[defaults]
maxretry = 1000000
ignoreself = false
[jail.wire]
wire = { interface = "lo", ports = [5060] }
$(sw_no_burst)
TOML
RUST_LOG=warn ip netns exec "$NS" "$BIN" run --dry-run --config "$WORK/sw.toml" 2>"$WORK/d.log" & PID=$!
sleep 2
[ "$SENDER" = c ] && cc -O2 -o "$WORK/wire_send" bench/wire_send.c
cpu() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
# The wire sensor's own thread (named "wire").
WTID=$(grep -lx wire /proc/$PID/task/*/comm | head -1 | cut -d/ -f5)
wcpu() { awk '{print $14 + $15}' "/proc/$PID/task/$WTID/stat"; }
# Status of the wire source: SIP messages read, packets taken, dropped by the kernel.
wstat() {
  "$BIN" status --json --socket "$WORK/sw.sock" | python3 -c '
import json,sys
s = json.load(sys.stdin)["result"]["jails"][0]["sources"][0]
print(s["lines"], s.get("packets", "-"), s.get("dropped_kernel", "-"))'
}
send_py() {
ip netns exec "$NS" python3 - "$1" "$SECS" "$CLIENTS" <<'PY'
import socket, sys, time
rate, secs, clients = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
pool = []
for i in range(clients):
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.bind(("10.9.%d.%d" % (1 + i // 250, 1 + i % 250), 0))
    pool.append((c, c.getsockname()))
reg = ("REGISTER sip:10.9.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK{c}\r\n"
       "From: <sip:1009@10.9.0.1>;tag={c}\r\nTo: <sip:1009@10.9.0.1>\r\nCall-ID: {c}@x\r\nCSeq: 2 REGISTER\r\n"
       "Authorization: Digest username=\"1009\", realm=\"x\", nonce=\"n\", uri=\"sip:10.9.0.1\", response=\"r\"\r\n"
       "User-Agent: Yealink\r\nContent-Length: 0\r\n\r\n")
ans = ("SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK{c}\r\n"
       "From: <sip:1009@10.9.0.1>;tag={c}\r\nTo: <sip:1009@10.9.0.1>;tag=s\r\nCall-ID: {c}@x\r\nCSeq: 2 REGISTER\r\n"
       "WWW-Authenticate: Digest realm=\"x\", nonce=\"m\"\r\nContent-Length: 0\r\n\r\n")
srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); srv.bind(("10.9.0.1", 5060))
t0 = time.monotonic(); n = 0
while time.monotonic() - t0 < secs:
    for _ in range(rate // 200):
        c = n // 2
        s, addr = pool[c % clients]
        s.sendto(reg.format(c=c).encode(), ("10.9.0.1", 5060))
        srv.sendto(ans.format(c=c).encode(), addr)
        n += 2
    ahead = t0 + n / rate - time.monotonic()
    if ahead > 0: time.sleep(ahead)
print("sent", n, "packets", file=sys.stderr)
PY
}
send_c() {
  local i
  for i in $(seq 1 "$SENDERS"); do
    ip netns exec "$NS" "$WORK/wire_send" $(( $1 / SENDERS )) "$SECS" "$i" "$CLIENTS" &
  done
  wait $(jobs -p | grep -vx "$PID") 2>/dev/null || true
}
# One step at RATE $1: sends, waits for the sensor to hand in its counters,
# prints a row; sets DROPS and SENT for the caller.
HZ=$(getconf CLK_TCK)
step() {
  local rate=$1 c0 c1 w0 w1 s0 s1
  read -r m0 p0 d0 < <(wstat)
  c0=$(cpu); w0=$(wcpu)
  if [ "$SENDER" = c ]; then send_c "$rate" 2>"$WORK/sent"; else send_py "$rate" 2>"$WORK/sent"; fi
  c1=$(cpu); w1=$(wcpu)
  sleep 1.5 # the sensor reads the kernel's drop counter every second
  read -r m1 p1 d1 < <(wstat)
  SENT=$(awk '/^sent/ {n += $2} END {print n + 0}' "$WORK/sent")
  LOST=$((SENT - (m1 - m0)))
  secs_cpu=$(echo "($c1 - $c0) / $HZ" | bc -l)
  per_k=$(echo "$secs_cpu / $SECS / ($rate / 1000) * 100" | bc -l)
  wire_pct=$(echo "($w1 - $w0) / $HZ / $SECS * 100" | bc -l)
  if [ "$d1" = - ]; then DROPS=-; pk=-; else DROPS=$((d1 - d0)); pk=$((p1 - p0)); fi
  echo "WIRE | $rate | $SECS | $((m1 - m0)) | $(printf %.2f "$secs_cpu") | $(printf %.3f "$per_k") | $SENT | $pk | $DROPS | $(printf %.1f "$wire_pct")"
}
echo "WIRE | packets/s | seconds | SIP messages read | daemon CPU s | % of a core per 1,000 packets/s | packets sent | packets taken | dropped by the kernel | wire thread % of a core"
if [ -z "${MAXRATE:-}" ]; then
  step "$RATE"
  exit 0
fi
best=-
for r in ${RATES:-10000 20000 40000 80000 160000 320000 640000}; do
  step "$r"
  if [ "$DROPS" != - ] && [ "$DROPS" -gt 0 ]; then echo "MAXRATE | drops at $r packets/s"; break; fi
  # Builds without the drop count: messages not read stand for drops.
  if [ "$DROPS" = - ] && [ "$LOST" -gt 0 ]; then echo "MAXRATE | $LOST messages not read at $r packets/s"; break; fi
  if [ "$SENT" -lt $(( r * SECS * 97 / 100 )) ]; then echo "MAXRATE | the sender fell short at $r packets/s ($SENT sent)"; break; fi
  best=$r
done
echo "MAXRATE | highest rate without drops: $best packets/s"
