#!/usr/bin/env bash
# Soak: MINUTES (default 30) of RATE (default 10,000) sofia::register_failure
# events per second over the Event Socket, from ADDRS (default 500,000)
# rotating source addresses, into a daemon with the nftables backend in a
# network namespace made here (maxretry 5, findtime 10m, bantime 2m: failure
# state, bans and expiries all churn). Prints one row a minute: RSS, CPU,
# events counted, bans. A flat RSS curve once the working set is reached is
# the pass mark. Run as root, by hand; record the result in bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-30}
RATE=${RATE:-10000}
ADDRS=${ADDRS:-500000}
WORK=$(mktemp -d)
NS=swsoak$$
trap 'kill ${PID:-} ${SIM:-} 2>/dev/null || true; ip netns del "$NS" 2>/dev/null || true; rm -rf "$WORK" || true' EXIT
cargo build --release -q
BIN=$PWD/target/release/sipwarden
ip netns add "$NS"
ip -n "$NS" link set lo up
cat > "$WORK/sim.py" <<'PY'
import socket, sys, time
rate, addrs, secs, portfile = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
tpl = ("Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister_failure\nEvent-Date-Timestamp: {ts}\n"
       "profile-name: internal\nto-user: 1009\nto-host: 10.77.0.1\nnetwork-ip: {ip}\nnetwork-port: 5060\n"
       "user-agent: Yealink\nregistration-type: REGISTER\n\n")
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(1)
open(portfile, "w").write(str(srv.getsockname()[1]))
c, _ = srv.accept()
c.sendall(b"Content-Type: auth/request\n\n"); c.recv(4096)
c.sendall(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n"); c.recv(4096)
c.sendall(b"Content-Type: command/reply\nReply-Text: +OK event listener enabled plain\n\n")
i, tick, per_tick = 0, 0.01, max(1, rate // 100)
t0 = time.monotonic()
n = 0
while time.monotonic() - t0 < secs:
    ts = int(time.time() * 1e6)
    out = []
    for _ in range(per_tick):
        a = 0x0a000000 + 1 + (i % addrs)
        b = tpl.format(ts=ts, ip="%d.%d.%d.%d" % (a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255))
        out.append("Content-Length: %d\nContent-Type: text/event-plain\n\n%s" % (len(b), b))
        i += 1
    c.sendall("".join(out).encode())
    n += per_tick
    # Pace by the wall clock, not by sleeps that drift.
    ahead = t0 + n / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
PY
ip netns exec "$NS" python3 "$WORK/sim.py" "$RATE" "$ADDRS" "$((MINUTES * 60 + 5))" "$WORK/port" & SIM=$!
for _ in $(seq 100); do [ -s "$WORK/port" ] && break; sleep 0.1; done
cat > "$WORK/sw.toml" <<TOML
[daemon]
state_dir = "$WORK/state"
socket = "$WORK/sw.sock"
[defaults]
maxretry = 5
findtime = "10m"
bantime = "2m"
ignoreself = false
[firewall]
backend = "nftables"
[jail.esl]
esl = { host = "127.0.0.1", port = $(cat "$WORK/port"), password = "ClueCon" }
TOML
# Both inside the namespace: the simulator on its loopback, the daemon's
# table in its kernel (`ip netns exec` keeps the PID, so ps sees the daemon).
RUST_LOG=error ip netns exec "$NS" "$BIN" run --config "$WORK/sw.toml" 2>"$WORK/daemon.log" & PID=$!
echo "SOAK | minute | RSS KiB | CPU s (total) | events counted | bans (total) | banned now"
q() { "$BIN" status --json --socket "$WORK/sw.sock" 2>/dev/null | python3 -c '
import json,sys
j=json.load(sys.stdin)["result"]["jails"][0]
print(j["total_failed"], j["total_banned"], j["currently_banned"])' 2>/dev/null || echo "? ? ?"; }
for m in $(seq "$MINUTES"); do
  sleep 60
  read -r failed banned now <<<"$(q)"
  cpu=$(ps -o times= -p "$PID" | tr -d ' ')
  rss=$(ps -o rss= -p "$PID" | tr -d ' ')
  echo "SOAK | $m | $rss | $cpu | $failed | $banned | $now"
done
