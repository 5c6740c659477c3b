#!/usr/bin/env bash
# Wire sensor CPU: RATE SIP packets per second (REGISTER with credentials and
# a 401 answer, alternating, from 5,000 clients) for SECS seconds over the
# loopback of a namespace made here, with the daemon's wire source on that
# loopback (dry run, nothing enforced: maxretry is out of reach and the burst rule off). Prints the
# daemon's CPU time per 1,000 packets/s. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-10000}
SECS=${SECS:-20}
WORK=$(mktemp -d)
NS=swwire$$
trap 'kill ${PID:-} 2>/dev/null || true; ip netns del "$NS" 2>/dev/null || true; rm -rf "$WORK" || true' EXIT
# BIN=... measures another build (bench/run-all.sh passes it).
[ -n "${BIN:-}" ] || cargo build --release -q
BIN=${BIN:-$PWD/target/release/sipwarden}
. bench/lib.sh
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" addr add 10.9.0.1/32 dev lo
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
cpu() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
c0=$(cpu)
ip netns exec "$NS" python3 - "$RATE" "$SECS" <<'PY'
import socket, sys, time
rate, secs = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
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
        s.sendto(reg.format(c=c).encode(), ("10.9.0.1", 5060))
        srv.sendto(ans.format(c=c).encode(), s.getsockname())
        n += 2
    ahead = t0 + n / rate - time.monotonic()
    if ahead > 0: time.sleep(ahead)
print("sent", n, "packets", file=sys.stderr)
PY
c1=$(cpu)
HZ=$(getconf CLK_TCK)
secs_cpu=$(echo "($c1 - $c0) / $HZ" | bc -l)
per_k=$(echo "$secs_cpu / $SECS / ($RATE / 1000) * 100" | bc -l)
msgs=$("$BIN" status --json --socket "$WORK/sw.sock" | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["jails"][0]["sources"][0]["lines"])')
echo "WIRE | packets/s | seconds | SIP messages read | daemon CPU s | % of a core per 1,000 packets/s"
echo "WIRE | $RATE | $SECS | $msgs | $(printf %.2f "$secs_cpu") | $(printf %.3f "$per_k")"
