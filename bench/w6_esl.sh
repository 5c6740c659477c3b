#!/usr/bin/env bash
# W6 ESL intake, end to end: a simulator (python, loopback) answers the Event
# Socket handshake, then sends N sofia::register_failure frames (the corpus
# frame, with 10,000 source addresses) as fast as the daemon reads them; the
# clock runs from the first event byte until `sipwarden status` has counted
# all N. maxretry is high so every event is counted and none bans.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-500000}
WORK=$(mktemp -d)
trap 'kill ${PID:-} ${SIM:-} 2>/dev/null || true; rm -rf "$WORK" || true' EXIT
# BIN=... measures another build (side by side: bench/side_by_side.sh).
[ -n "${BIN:-}" ] || cargo build --release -q
BIN=${BIN:-$PWD/target/release/sipwarden}
. bench/lib.sh
cat > "$WORK/sim.py" <<'PY'
import socket, sys, time
n, portfile, startfile = int(sys.argv[1]), sys.argv[2], sys.argv[3]
body_tpl = ("Event-Subclass: sofia%3A%3Aregister_failure\nEvent-Name: CUSTOM\nCore-UUID: 418244e5-62e0-4fcb-b610-3d7599f3bf29\n"
            "FreeSWITCH-Hostname: vm\nEvent-Date-Timestamp: {ts}\nEvent-Calling-File: sofia_reg.c\n"
            "profile-name: internal\nto-user: 1009\nto-host: 10.77.0.1\nnetwork-ip: {ip}\nuser-agent: Yealink\n"
            "profile-name: internal\nnetwork-port: 5060\nregistration-type: REGISTER\n\n")
ts = int(time.time() * 1e6)
frames = []
for i in range(10000):
    b = body_tpl.format(ts=ts, ip="10.%d.%d.%d" % (100 + i // 65536, (i // 256) % 256, i % 256))
    frames.append("Content-Length: %d\nContent-Type: text/event-plain\n\n%s" % (len(b), b))
chunk = "".join(frames).encode()
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(1)
open(portfile, "w").write(str(srv.getsockname()[1]))
c, _ = srv.accept()
c.sendall(b"Content-Type: auth/request\n\n"); c.recv(4096)
c.sendall(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n"); c.recv(4096)
c.sendall(b"Content-Type: command/reply\nReply-Text: +OK event listener enabled plain\n\n")
time.sleep(0.2)
open(startfile, "w").write("%.6f" % time.time())
for _ in range(n // 10000):
    c.sendall(chunk)
time.sleep(600)
PY
python3 "$WORK/sim.py" "$N" "$WORK/port" "$WORK/start" & SIM=$!
for _ in $(seq 100); do [ -s "$WORK/port" ] && break; sleep 0.1; done
cat > "$WORK/sw.toml" <<TOML
[daemon]
state_dir = "$WORK/state"
socket = "$WORK/sw.sock"
[defaults]
maxretry = 1000000
ignoreself = false
[firewall]
backend = "none"
[jail.esl]
esl = { host = "127.0.0.1", port = $(cat "$WORK/port"), password = "ClueCon" }
$(sw_no_burst)
TOML
RUST_LOG=warn "$BIN" run --config "$WORK/sw.toml" 2>/dev/null & PID=$!
for _ in $(seq 200); do [ -s "$WORK/start" ] && break; sleep 0.05; done
counted() { "$BIN" status --json --socket "$WORK/sw.sock" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["jails"][0]["total_failed"])' 2>/dev/null || echo 0; }
for _ in $(seq 1200); do [ "$(counted)" -ge "$N" ] && break; sleep 0.05; done
T1=$(date +%s.%N)
T0=$(cat "$WORK/start")
S=$(echo "$T1 - $T0" | bc -l)
echo "W6 | events | seconds | events/s | daemon CPU s"
echo "W6 | $(counted) | $(echo "$S" | cut -c1-6) | $(echo "$N / $S" | bc) | $(ps -o times= -p "$PID" | tr -d ' ')"
