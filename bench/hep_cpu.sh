#!/usr/bin/env bash
# HEP intake CPU, side by side with bench/wire_cpu.sh on the same traffic:
# RATE SIP messages per second (REGISTER with credentials and its 401,
# alternating, from 5,000 clients), each wrapped in HEPv3 with an auth key
# as Kamailio's siptrace sends it, for SECS seconds to the daemon's HEP
# listener on a namespace's loopback (dry run, nothing enforced: maxretry
# is out of reach). Prints the daemon's CPU time per 1,000 messages/s.
# Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-10000}
SECS=${SECS:-20}
WORK=$(mktemp -d)
NS=swhep$$
trap 'kill ${PID:-} 2>/dev/null || true; ip netns del "$NS" 2>/dev/null || true; rm -rf "$WORK" || true' EXIT
# BIN=... measures another build (bench/run-all.sh passes it).
[ -n "${BIN:-}" ] || cargo build --release -q
BIN=${BIN:-$PWD/target/release/sipwarden}
ip netns add "$NS"
ip -n "$NS" link set lo up
cat > "$WORK/sw.toml" <<TOML
[daemon]
state_dir = "$WORK/state"
socket = "$WORK/sw.sock"
[defaults]
maxretry = 1000000
ignoreself = false
[jail.hep]
hep = { listen = "127.0.0.1:9060", password = "bench-key" }
burst = false
TOML
RUST_LOG=warn ip netns exec "$NS" "$BIN" run --dry-run --config "$WORK/sw.toml" 2>"$WORK/d.log" & PID=$!
sleep 2
cpu() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
c0=$(cpu)
ip netns exec "$NS" python3 - "$RATE" "$SECS" <<'PY'
import socket, struct, sys, time
rate, secs = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
reg = ("REGISTER sip:10.9.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK{c}\r\n"
       "From: <sip:1009@10.9.0.1>;tag={c}\r\nTo: <sip:1009@10.9.0.1>\r\nCall-ID: {c}@x\r\nCSeq: 2 REGISTER\r\n"
       "Authorization: Digest username=\"1009\", realm=\"x\", nonce=\"n\", uri=\"sip:10.9.0.1\", response=\"r\"\r\n"
       "User-Agent: Yealink\r\nContent-Length: 0\r\n\r\n")
ans = ("SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK{c}\r\n"
       "From: <sip:1009@10.9.0.1>;tag={c}\r\nTo: <sip:1009@10.9.0.1>;tag=s\r\nCall-ID: {c}@x\r\nCSeq: 2 REGISTER\r\n"
       "WWW-Authenticate: Digest realm=\"x\", nonce=\"m\"\r\nContent-Length: 0\r\n\r\n")
def chunk(t, d): return struct.pack(">HHH", 0, t, 6 + len(d)) + d
def hep(src, sp, dst, dp, payload):
    b = b"".join([chunk(1, b"\x02"), chunk(2, b"\x11"), chunk(3, socket.inet_aton(src)),
                  chunk(4, socket.inet_aton(dst)), chunk(7, struct.pack(">H", sp)), chunk(8, struct.pack(">H", dp)),
                  chunk(9, struct.pack(">I", int(time.time()))), chunk(10, struct.pack(">I", 0)),
                  chunk(11, b"\x01"), chunk(12, struct.pack(">I", 2001)), chunk(14, b"bench-key"),
                  chunk(15, payload)])
    return b"HEP3" + struct.pack(">H", 6 + len(b)) + b
t0 = time.monotonic(); n = 0
while time.monotonic() - t0 < secs:
    for _ in range(rate // 200):
        c = n // 2
        client = "10.9.%d.%d" % (c // 250 % 20, 1 + c % 250)
        s.sendto(hep(client, 5062, "10.9.0.1", 5060, reg.format(c=c).encode()), ("127.0.0.1", 9060))
        s.sendto(hep("10.9.0.1", 5060, client, 5062, ans.format(c=c).encode()), ("127.0.0.1", 9060))
        n += 2
    ahead = t0 + n / rate - time.monotonic()
    if ahead > 0: time.sleep(ahead)
print("sent", n, "messages", file=sys.stderr)
PY
c1=$(cpu)
HZ=$(getconf CLK_TCK)
secs_cpu=$(echo "($c1 - $c0) / $HZ" | bc -l)
per_k=$(echo "$secs_cpu / $SECS / ($RATE / 1000) * 100" | bc -l)
msgs=$("$BIN" status --json --socket "$WORK/sw.sock" | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["jails"][0]["sources"][0]["lines"])')
echo "HEP | messages/s | seconds | SIP messages read | daemon CPU s | % of a core per 1,000 messages/s"
echo "HEP | $RATE | $SECS | $msgs | $(printf %.2f "$secs_cpu") | $(printf %.3f "$per_k")"
