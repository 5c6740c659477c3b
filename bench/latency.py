#!/usr/bin/env python3
"""W3 ban latency and W0 (paced attack) against a live daemon, observed in
the kernel.

Run inside a network namespace made for it (bench/w3_latency.sh and
bench/w0_paced.sh do that). The kernel side is watched directly: a netlink
socket joined to the nftables multicast group timestamps every
NEWSETELEM message, so "banned" means "the element is in a kernel set",
whoever put it there (sipwarden's netlink batches or fail2ban's `nft`).

  latency.py w3 BIN WORK TRIALS          sipwarden: log line and ESL event
  latency.py w0 BIN WORK MAXRETRY        sipwarden: ESL and log, paced 12 ms
  latency.py w0-fail2ban - WORK MAXRETRY fail2ban 1.0.2 + nftables, paced 12 ms

Prints result rows on stdout; exits non-zero when a ban never shows.
"""
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7
NFT_MSG_NEWSETELEM = (10 << 8) | 12
PACE_S = 0.012  # FreeSWITCH's pace under svcrack: about one failure per 12 ms


class SetWatch:
    """Timestamps set elements as the kernel reports them added. Read in the
    caller's thread: a watcher thread would add the interpreter's thread
    switch interval (5 ms) to every figure."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((0, 0))  # membership needs a bound port
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        self.adds = []  # (perf_counter, message bytes)

    def _read(self, timeout):
        self.sock.settimeout(max(timeout, 0.0001))
        try:
            data = self.sock.recv(1 << 20)
        except (socket.timeout, BlockingIOError):
            return
        t = time.perf_counter()
        off = 0
        while off + 16 <= len(data):
            length, typ = struct.unpack_from("=IH", data, off)
            if length < 16:
                break
            if typ == NFT_MSG_NEWSETELEM:
                self.adds.append((t, data[off:off + length]))
            off += (length + 3) & ~3

    def wait(self, addr, since, timeout):
        """When `addr` (dotted quad) was added at or after `since`, or None."""
        packed = socket.inet_aton(addr)
        deadline = time.perf_counter() + timeout
        seen = 0
        while True:
            for t, msg in self.adds[seen:]:
                if t >= since and packed in msg:
                    return t
            seen = len(self.adds)
            left = deadline - time.perf_counter()
            if left <= 0:
                return None
            self._read(left)


class EslServer:
    """A FreeSWITCH Event Socket: answers every command +OK, then carries
    the frames the bench sends."""

    def __init__(self):
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(1)
        self.port = self.srv.getsockname()[1]
        self.conn = None
        self.subscribed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        c, _ = self.srv.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = c
        c.sendall(b"Content-Type: auth/request\n\n")
        buf = b""
        while True:
            data = c.recv(4096)
            if not data:
                return
            buf += data
            while b"\n\n" in buf:
                cmd, buf = buf.split(b"\n\n", 1)
                c.sendall(b"Content-Type: command/reply\nReply-Text: +OK\n\n")
                if cmd.startswith(b"event "):
                    self.subscribed.set()

    def failure(self, addr, user="1009"):
        body = ("Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister_failure\n"
                "Event-Date-Timestamp: {}\nprofile-name: internal\nto-user: {}\n"
                "to-host: 10.77.0.1\nnetwork-ip: {}\nnetwork-port: 5060\n"
                "user-agent: friendly-scanner\nregistration-type: REGISTER\n\n"
                ).format(int(time.time() * 1e6), user, addr)
        frame = "Content-Length: {}\nContent-Type: text/event-plain\n\n{}".format(len(body), body)
        self.conn.sendall(frame.encode())


def log_line(addr, user="1009"):
    ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime()) + ".%06d" % (time.time() % 1 * 1e6)
    return ("%s [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile "
            "'internal' for [%s@10.77.0.1] from ip %s\n" % (ts, user, addr)).encode()


def addr_of(i):
    """A distinct address per i (no .0 hosts)."""
    return "10.%d.%d.%d" % (100 + i // 62500, (i // 250) % 250, 1 + i % 250)


def start_sipwarden(bin_, work, maxretry, esl_port):
    with open(os.path.join(work, "sw.toml"), "w") as f:
        f.write(f"""[daemon]
state_dir = "{work}/state"
socket = "{work}/sw.sock"
[defaults]
maxretry = {maxretry}
findtime = "10m"
bantime = "1h"
ignoreself = false
[firewall]
backend = "nftables"
[jail.log]
filter = "freeswitch"
logtimezone = "UTC"
logpath = "{work}/fs.log"
[jail.esl]
esl = {{ host = "127.0.0.1", port = {esl_port}, password = "ClueCon" }}
""")
    open(os.path.join(work, "fs.log"), "w").close()
    err = open(os.path.join(work, "daemon.log"), "w")
    p = subprocess.Popen([bin_, "run", "--config", os.path.join(work, "sw.toml")],
                         stderr=err, stdout=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="warn"))
    return p


def wait_for(cond, secs):
    end = time.monotonic() + secs
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def w3(bin_, work, trials):
    watch, esl = SetWatch(), EslServer()
    maxretry = 3
    daemon = start_sipwarden(bin_, work, maxretry, esl.port)
    try:
        if not esl.subscribed.wait(20):
            sys.exit("the daemon never subscribed to the ESL simulator")
        time.sleep(0.5)  # the log follower starts beside the ESL source
        logf = open(os.path.join(work, "fs.log"), "ab", buffering=0)
        res = {"log": [], "esl": []}
        missing = 0
        for i in range(trials):
            for way in ("log", "esl"):
                addr = addr_of(2 * i + (way == "esl") + 1)
                for _ in range(maxretry - 1):
                    logf.write(log_line(addr)) if way == "log" else esl.failure(addr)
                time.sleep(0.002)  # earlier failures counted, as in a real attack
                t0 = time.perf_counter()
                logf.write(log_line(addr)) if way == "log" else esl.failure(addr)
                t = watch.wait(addr, t0, 3.0)
                if t is None:
                    missing += 1
                else:
                    res[way].append((t - t0) * 1000)
        print("W3 | source | trials | banned | p50 ms | p99 ms | max ms")
        for way, v in res.items():
            if not v:
                continue
            print("W3 | %s | %d | %d | %.3f | %.3f | %.3f" % (way, trials, len(v), pct(v, 50), pct(v, 99), max(v)))
        if missing:
            sys.exit("%d trial(s) never reached the kernel" % missing)
    finally:
        daemon.terminate()
        daemon.wait(10)


def paced(send, watch, addr, limit=300):
    """Sends failures from `addr` every 12 ms until its ban shows; returns
    how many were sent before that (the ones the server processed)."""
    t0 = time.perf_counter()
    for n in range(1, limit + 1):
        send(addr)
        if watch.wait(addr, t0, PACE_S) is not None:
            return n
    return None


def w0(bin_, work, maxretry):
    watch, esl = SetWatch(), EslServer()
    daemon = start_sipwarden(bin_, work, maxretry, esl.port)
    try:
        if not esl.subscribed.wait(20):
            sys.exit("the daemon never subscribed to the ESL simulator")
        time.sleep(0.5)
        logf = open(os.path.join(work, "fs.log"), "ab", buffering=0)
        n_esl = paced(esl.failure, watch, "10.99.0.1")
        n_log = paced(lambda a: logf.write(log_line(a)), watch, "10.99.0.2")
        print("W0 | side | maxretry | failures processed before the ban")
        print("W0 | sipwarden ESL (12 ms pace) | %d | %s" % (maxretry, n_esl))
        print("W0 | sipwarden log (12 ms pace) | %d | %s" % (maxretry, n_log))
        if n_esl is None or n_log is None:
            sys.exit("no ban within 300 failures")
    finally:
        daemon.terminate()
        daemon.wait(10)


def w0_fail2ban(work, maxretry):
    """fail2ban-server (Debian 1.0.2) with its freeswitch filter and the
    nftables action, following a FreeSWITCH log written at the same pace."""
    d = os.path.join(work, "f2b")
    os.makedirs(d)
    for n in ("fail2ban.conf", "filter.d", "action.d", "paths-common.conf", "paths-debian.conf"):
        src = os.path.join("/etc/fail2ban", n)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(d, n))
    conf = open(os.path.join(d, "fail2ban.conf")).read()
    for key, val in (("dbfile", d + "/f2b.sqlite3"), ("logtarget", d + "/fail2ban.log"),
                     ("socket", d + "/f2b.sock"), ("pidfile", d + "/f2b.pid")):
        conf = "\n".join((key + " = " + val) if l.startswith(key + " =") else l for l in conf.split("\n"))
    open(os.path.join(d, "fail2ban.conf"), "w").write(conf)
    log = os.path.join(d, "freeswitch.log")
    open(os.path.join(d, "jail.conf"), "w").write(f"""[DEFAULT]
ignoreself = false
bantime = 1h
findtime = 10m
maxretry = {maxretry}
backend = auto
logencoding = utf-8
[freeswitch]
enabled = true
filter = freeswitch
logpath = {log}
action = nftables[name=freeswitch-udp, port="5060,5061", protocol=udp]
""")
    open(log, "w").write(time.strftime("%Y-%m-%d %H:%M:%S") + ".000000 [INFO] switch_core.c:2500 seed\n")
    client = ["fail2ban-client", "-c", d, "-s", d + "/f2b.sock", "-p", d + "/f2b.pid"]
    subprocess.run(client + ["start"], check=True, stdout=subprocess.DEVNULL)
    try:
        if not wait_for(lambda: subprocess.run(client + ["status", "freeswitch"], capture_output=True).returncode == 0, 30):
            sys.exit("fail2ban's jail never started")
        time.sleep(2)
        watch = SetWatch()
        logf = open(log, "ab", buffering=0)
        n = paced(lambda a: logf.write(log_line(a)), watch, "10.99.0.3")
        print("W0 | fail2ban 1.0.2 + nftables, log (12 ms pace) | %d | %s" % (maxretry, n))
        if n is None:
            sys.exit("fail2ban: no ban within 300 failures")
    finally:
        subprocess.run(client + ["stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    mode, bin_, work, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    {"w3": lambda: w3(bin_, work, n), "w0": lambda: w0(bin_, work, n),
     "w0-fail2ban": lambda: w0_fail2ban(work, n)}[mode]()
