#!/usr/bin/env python3
"""Listens as systemd's $NOTIFY_SOCKET would: binds a datagram socket at
SOCKET and, at the first datagram holding READY=1, writes the wall-clock
time it arrived (seconds, microseconds) to OUT and exits. Gives up after
TIMEOUT seconds (default 60), writing nothing.

  ready.py SOCKET OUT [TIMEOUT]

The bench takes $EPOCHREALTIME just before it starts the daemon with
NOTIFY_SOCKET=SOCKET; OUT minus that is exec to "started" (src/systemd.rs
sends READY=1 right after the "started" log line, once the restore and
the sources are set up)."""
import os
import socket
import sys
import time

path, out = sys.argv[1], sys.argv[2]
timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
deadline = time.monotonic() + timeout
try:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            sys.exit("ready.py: no READY=1 within %.0f s" % timeout)
        s.settimeout(left)
        try:
            data = s.recv(4096)
        except socket.timeout:
            continue
        t = time.time()
        if b"READY=1" in data.split(b"\n"):
            with open(out + ".tmp", "w") as f:
                f.write("%.6f\n" % t)
            os.rename(out + ".tmp", out)
            break
finally:
    s.close()
    os.unlink(path)
