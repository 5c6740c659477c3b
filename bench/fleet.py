#!/usr/bin/env python3
"""The fleet benchmark: N sipwarden daemons, each in its own network
namespace, joined through one real redis-server in a hub namespace (a
bridge; bench/fleet.sh makes the namespaces and cleans them up).

  fleet.py BIN WORK HUB NS...

1. Propagation: K bans, each asked of one node (round robin) over its
   control socket; every node's kernel set is watched through the
   nftables netlink multicast group (one socket per namespace, one
   thread, a monotonic timestamp per message, no polling). Redis's
   MONITOR stream (microsecond timestamps) shows when the origin's XADD
   reached Redis, and when each reader asked again (XREAD) after it, which
   splits each figure into the origin's part (request to XADD), the
   reader's (XADD to its next XREAD) and the run loop's (to the kernel).
   Also printed: the daemons' CPU per ban (idle use subtracted).
2. Re-convergence: BANS bans decided across the fleet (BANS / N failures
   in each node's log, maxretry 1), then redis-server killed and started
   again empty. "Re-converged" is what the cluster code promises after
   that (src/cluster/writer.rs `reassert`, src/cluster/reader.rs
   `serve`): every node's writer has reconnected and written the keys of
   its own bans in force again, announcing on the stream each one that was
   missing; every node's reader has reconnected (in `status`: both tasks
   up, each with one restart more than before the kill, so an old session
   not yet noticed does not count); so Redis again holds a key for every
   ban in force in the fleet (all K + BANS of them). Re-converged is the
   later of "ban keys back" and "every node reconnected". Printed apart:
   the time until every node has also read the others' re-announcements
   (its `received` counter), where Redis spent its CPU (INFO
   commandstats), and a check that no kernel set lost a ban. The kernel
   sets are not touched by a Redis restart: nodes keep enforcing.

Environment: N is given by the namespaces; K (default 200) bans in step 1,
BANS (default 100000) in step 2 (0 skips it), TRIAL_TIMEOUT (3 s),
BANS_TIMEOUT (300 s for the fleet to hold all BANS), REDIS_IP (10.250.0.1).
Prints FLEET and FLEET-RESTART rows (stdout) and fleet: notes (stderr);
exits non-zero if a step did not finish in its bound.
"""
import ctypes
import errno
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time

CLONE_NEWNET = 0x40000000
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7
NFT_MSG_NEWSETELEM = (10 << 8) | 12
JAIL = "fleet"
LIBC = ctypes.CDLL(None, use_errno=True)


def in_netns(ns, make):
    """make() run with this thread in network namespace `ns`: a socket
    made there stays there after the thread returns."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if LIBC.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
        try:
            return make()
        finally:
            if LIBC.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)


def nl_socket():
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((0, 0))
    s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
    s.setblocking(False)
    return s


class Resp:
    """Just enough of the Redis protocol for the bench."""

    def __init__(self, ns, host, port=6379, timeout=2.0):
        self.s = in_netns(ns, lambda: socket.create_connection((host, port), timeout=timeout))
        self.f = self.s.makefile("rb")

    def send(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.s.sendall(b"".join(out))

    def reply(self):
        line = self.f.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")

    def cmd(self, *args):
        self.send(*args)
        return self.reply()

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def control(path, req, timeout=10.0):
    return answer(ask(path, req, timeout))


def ask(path, req, timeout=10.0):
    """Sends a control request; the answer is read later (`answer`), so the
    caller can watch the kernel meanwhile."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(json.dumps(req).encode() + b"\n")
    except OSError:
        s.close()
        raise
    return s


def answer(s):
    try:
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    return json.loads(buf)


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def ms(v):
    return "%.2f" % v


class Fleet:
    def __init__(self, bin_, work, hub, nss):
        self.bin, self.work, self.hub, self.nss = bin_, work, hub, nss
        self.n = len(nss)
        self.redis_ip = os.environ.get("REDIS_IP", "10.250.0.1")
        self.redis = None
        self.daemons = []

    def node_dir(self, i):
        return os.path.join(self.work, f"n{i}")

    def sock(self, i):
        return os.path.join(self.node_dir(i), "sw.sock")

    def start_redis(self):
        log = open(os.path.join(self.work, "redis.out"), "a")
        self.redis = subprocess.Popen(
            ["ip", "netns", "exec", self.hub, "redis-server", "--bind", self.redis_ip,
             "--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no",
             "--daemonize", "no", "--dir", self.work,
             "--logfile", os.path.join(self.work, "redis.log")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                r = Resp(self.hub, self.redis_ip, timeout=0.5)
                if r.cmd("PING") == "PONG":
                    r.s.settimeout(30)  # a Redis busy with the fleet's scans answers late
                    return r
            except (OSError, ConnectionError):
                pass
            time.sleep(0.002)
        sys.exit("redis-server never answered")

    def start_daemons(self):
        for i, ns in enumerate(self.nss):
            d = self.node_dir(i)
            os.makedirs(d, exist_ok=True)
            open(os.path.join(d, "fs.log"), "w").close()
            with open(os.path.join(d, "sw.toml"), "w") as f:
                f.write(f"""[daemon]
state_dir = "{d}/state"
socket = "{d}/sw.sock"
[defaults]
ignoreself = false
maxretry = 1
findtime = "10m"
bantime = "1h"
[firewall]
backend = "nftables"
[cluster]
redis = "redis://{self.redis_ip}:6379"
node = "n{i}"
[jail.{JAIL}]
filter = "freeswitch"
logtimezone = "UTC"
logpath = "{d}/fs.log"
""")
            err = open(os.path.join(d, "daemon.log"), "w")
            self.daemons.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, self.bin, "run", "--config", os.path.join(d, "sw.toml")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                env=dict(os.environ, RUST_LOG="warn,sipwarden::cluster=info")))

    def ip(self, i):
        return f"10.250.0.{10 + i}"

    def cpu(self):
        """CPU seconds so far of each daemon, then of redis-server."""
        hz = os.sysconf("SC_CLK_TCK")
        out = []
        for p in [d.pid for d in self.daemons] + [self.redis.pid]:
            try:
                f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
                out.append((int(f[11]) + int(f[12])) / hz)
            except (OSError, IndexError, ValueError):
                out.append(0.0)
        return out

    def status(self, i):
        r = control(self.sock(i), {"cmd": "status"})
        if not r.get("ok"):
            raise RuntimeError(f"node {i}: {r}")
        return r["result"]

    def statuses(self):
        out = []
        for i in range(self.n):
            try:
                out.append(self.status(i))
            except (OSError, ValueError, RuntimeError):
                out.append(None)
        return out

    def wait_joined(self, secs=60):
        """Every node connected and seeing every other node's heartbeat."""
        end = time.monotonic() + secs
        while time.monotonic() < end:
            sts = self.statuses()
            if all(s and s.get("cluster") and s["cluster"]["connected"]
                   and len(s["cluster"]["peers"]) >= self.n - 1 for s in sts):
                return
            for i, d in enumerate(self.daemons):
                if d.poll() is not None:
                    sys.exit(f"node {i} exited ({d.returncode}); see {self.node_dir(i)}/daemon.log")
            time.sleep(0.2)
        sys.exit("the fleet never joined (every node connected, every peer seen)")

    def stop(self):
        for d in self.daemons:
            if d.poll() is None:
                d.terminate()
        for d in self.daemons:
            try:
                d.wait(10)
            except subprocess.TimeoutExpired:
                d.kill()
        if self.redis and self.redis.poll() is None:
            self.redis.kill()
            self.redis.wait(5)


class KernelWatch:
    """NEWSETELEM messages of every node's namespace, timestamped as read."""

    def __init__(self, nss):
        self.socks = [in_netns(ns, nl_socket) for ns in nss]
        self.ep = select.epoll()
        self.node_of = {}
        for i, s in enumerate(self.socks):
            self.ep.register(s.fileno(), select.EPOLLIN)
            self.node_of[s.fileno()] = i
        self.adds = []  # (node, perf_counter, message)
        self.overruns = 0
        self.extra = {}  # fileno -> callback(t) for other sockets (MONITOR)

    def add_reader(self, sock, callback):
        self.ep.register(sock.fileno(), select.EPOLLIN)
        self.extra[sock.fileno()] = callback

    def poll(self, timeout):
        for fd, _ in self.ep.poll(max(timeout, 0)):
            if fd in self.extra:
                self.extra[fd](time.perf_counter())
                continue
            s = self.socks[self.node_of[fd]]
            while True:
                try:
                    data = s.recv(1 << 20)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno == errno.ENOBUFS:
                        self.overruns += 1
                        continue
                    raise
                t = time.perf_counter()
                off = 0
                while off + 16 <= len(data):
                    length, typ = struct.unpack_from("=IH", data, off)
                    if length < 16:
                        break
                    if typ == NFT_MSG_NEWSETELEM:
                        self.adds.append((self.node_of[fd], t, data[off:off + length]))
                    off += (length + 3) & ~3

    def wait_all(self, addr, since, timeout):
        """When `addr` showed in each node's set (None where it did not)."""
        packed = socket.inet_aton(addr)
        got = [None] * len(self.socks)
        deadline = time.perf_counter() + timeout
        seen = 0
        while True:
            for node, t, msg in self.adds[seen:]:
                if got[node] is None and t >= since and packed in msg:
                    got[node] = t
            seen = len(self.adds)
            left = deadline - time.perf_counter()
            if all(g is not None for g in got) or left <= 0:
                self.adds.clear()
                return got
            self.poll(left)

    def close(self):
        self.ep.close()
        for s in self.socks:
            s.close()


class Monitor:
    """Redis MONITOR: when each XADD of a ban reached Redis (its clock, us),
    mapped onto perf_counter."""

    XADD = re.compile(rb'^\+(\d+\.\d+) \[\d+ ([0-9.]+):\d+\] "XADD" .*?addr\\":\\"([0-9a-f.:/]+)\\"')
    XREAD = re.compile(rb'^\+(\d+\.\d+) \[\d+ ([0-9.]+):\d+\] "XREAD"')

    def __init__(self, ns, host):
        self.r = Resp(ns, host)
        self.r.cmd("MONITOR")
        self.r.s.setblocking(False)
        self.buf = b""
        self.xadd = {}  # addr -> (perf_counter, client ip)
        self.xreads = []  # (perf_counter, client ip): a reader asking again
        # Redis's timestamps are wall clock: their offset from perf_counter.
        self.offset = time.time() - time.perf_counter()

    def read(self, _t):
        while True:
            try:
                chunk = self.r.s.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.buf += chunk
        *lines, self.buf = self.buf.split(b"\r\n")
        for line in lines:
            m = self.XADD.match(line)
            if m:
                self.xadd[m.group(3).decode()] = (float(m.group(1)) - self.offset, m.group(2).decode())
                continue
            m = self.XREAD.match(line)
            if m:
                self.xreads.append((float(m.group(1)) - self.offset, m.group(2).decode()))

    def reread(self, since, ip):
        """When the reader at `ip` asked again after `since` (it has handed
        the entries of its last answer to the daemon by then), or None."""
        return next((t for t, who in self.xreads if t > since and who == ip), None)


def propagation(fleet, k, timeout):
    watch = KernelWatch(fleet.nss)
    mon = Monitor(fleet.hub, fleet.redis_ip)
    watch.add_reader(mon.r.s, mon.read)
    rows = []  # (origin's set, last node's set, XADD at redis) from the request, ms
    split_reader, split_loop = [], []
    # The daemons' CPU while idle (heartbeats, drift checks), to subtract.
    idle0 = fleet.cpu()
    time.sleep(2)
    idle = [b - a for a, b in zip(idle0, fleet.cpu())]
    cpu0 = fleet.cpu()
    t_start = time.monotonic()
    missing = 0
    deadline = time.monotonic() + max(60, k * (timeout + 0.2))
    for t in range(k):
        if time.monotonic() > deadline:
            break
        origin = t % fleet.n
        addr = "12.%d.%d.%d" % ((t + 1) >> 16 & 255, (t + 1) >> 8 & 255, (t + 1) & 255)
        watch.poll(0)
        t0 = time.perf_counter()
        req = ask(fleet.sock(origin), {"cmd": "ban", "jail": JAIL, "addr": addr})
        got = watch.wait_all(addr, t0, timeout)
        r = answer(req)
        if not r.get("ok"):
            sys.exit(f"ban on node {origin} refused: {r}")
        watch.poll(0.005)  # the MONITOR line may come after the last kernel message
        if any(g is None for g in got):
            missing += 1
            continue
        others = [g for i, g in enumerate(got) if i != origin]
        x = mon.xadd.pop(addr, (None, None))[0]
        if x is not None:
            # Per other node: XADD to its reader asking again (the reader's
            # part), and from then to its kernel set (the run loop's part).
            last = max((i for i in range(fleet.n) if i != origin), key=lambda i: got[i])
            rr = mon.reread(x, fleet.ip(last))
            if rr is not None:
                split_reader.append((rr - x) * 1000)
                split_loop.append((got[last] - rr) * 1000)
        mon.xreads.clear()
        rows.append(((got[origin] - t0) * 1000, (max(others) - t0) * 1000,
                     None if x is None else (x - t0) * 1000,
                     (max(others) - got[origin]) * 1000,
                     sorted((g - t0) * 1000 for g in others)))
        time.sleep(0.03 + (t % 7) * 0.003)  # not in step with anything periodic
    overruns = watch.overruns
    cpu1 = fleet.cpu()
    secs = time.monotonic() - t_start
    watch.close()
    mon.r.close()
    print("FLEET | nodes | bans | in every set | origin's set p50 ms | last node's set p50 / p99 / max ms (from the request) "
          "| last node after the origin's set p50 / p99 ms | XADD at redis p50 ms | redis to last node's set p50 / p99 ms")
    if not rows:
        sys.exit("no ban reached every node")
    origin = [r[0] for r in rows]
    last = [r[1] for r in rows]
    after = [r[3] for r in rows]
    xs = [r[2] for r in rows if r[2] is not None]
    rl = [r[1] - r[2] for r in rows if r[2] is not None]
    print("FLEET | %d | %d | %d | %s | %s / %s / %s | %s / %s | %s | %s / %s" % (
        fleet.n, len(rows) + missing, len(rows), ms(pct(origin, 50)),
        ms(pct(last, 50)), ms(pct(last, 99)), ms(max(last)),
        ms(pct(after, 50)), ms(pct(after, 99)),
        ms(pct(xs, 50)) if xs else "n/a",
        ms(pct(rl, 50)) if rl else "n/a", ms(pct(rl, 99)) if rl else "n/a"))
    # Each node's rank: the first other node, the median one, the last.
    print("fleet: per ban, the other nodes' sets in order: first / median / last, p50 ms | %s / %s / %s | netlink overruns %d" % (
        ms(pct([r[4][0] for r in rows], 50)), ms(pct([r[4][len(r[4]) // 2] for r in rows], 50)),
        ms(pct([r[4][-1] for r in rows], 50)), overruns), file=sys.stderr)
    if split_reader:
        print("fleet: the last node: XADD to its reader asking again p50 / p99 ms | %s / %s | then to its kernel set p50 / p99 ms | %s / %s" % (
            ms(pct(split_reader, 50)), ms(pct(split_reader, 99)), ms(pct(split_loop, 50)), ms(pct(split_loop, 99))), file=sys.stderr)
    n = len(rows) + missing
    if n:
        d = [max(0.0, b - a - i * secs / 2) for a, b, i in zip(cpu0, cpu1, idle)]
        print("fleet: CPU per ban asked, idle use subtracted (all daemons / redis-server) ms | %s / %s | daemons idle: %.1f %% of a core together" % (
            ms(sum(d[:-1]) * 1000 / n), ms(d[-1] * 1000 / n), sum(idle[:-1]) / 2 * 100), file=sys.stderr)
    if missing:
        sys.exit(f"{missing} ban(s) never reached every node within {timeout} s")
    return len(rows)


def banned(st):
    return sum(j["currently_banned"] for j in st["jails"]) if st else -1


def make_bans(fleet, total):
    """total / N failures in each node's log (maxretry 1), at once; waits
    until every node holds every ban."""
    per = total // fleet.n
    now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    for i in range(fleet.n):
        with open(os.path.join(fleet.node_dir(i), "burst.log"), "w") as f:
            for j in range(per):
                a = 0x0B000000 + i * per + j
                f.write(f"{now}.000000 [WARNING] sofia_reg.c:2531 Can't find user [x@h] from "
                        f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}\n")
    base = [banned(s) for s in fleet.statuses()]
    t0 = time.perf_counter()
    for i in range(fleet.n):
        with open(os.path.join(fleet.node_dir(i), "burst.log"), "rb") as src, \
                open(os.path.join(fleet.node_dir(i), "fs.log"), "ab") as dst:
            dst.write(src.read())
    want = base[0] + per * fleet.n
    end = time.monotonic() + float(os.environ.get("BANS_TIMEOUT", "300"))
    while time.monotonic() < end:
        got = [banned(s) for s in fleet.statuses()]
        if all(g >= want for g in got):
            return per * fleet.n, time.perf_counter() - t0, want
        time.sleep(0.25)
    for i, st in enumerate(fleet.statuses()):
        if st:
            c = dict(st["cluster"])
            c.pop("peers", None)
            print(f"fleet: node {i} holds {banned(st)}; cluster {json.dumps(c)}", file=sys.stderr)
    sys.exit(f"the fleet never held all bans: {got} of {want}")


BAN_KEYS = ("local n = redis.call('DBSIZE') "
            "return n - redis.call('EXISTS', unpack(KEYS))")


def restart(fleet, want):
    """redis-server killed and started again empty; times re-convergence."""
    nodes = [f"sipwarden:node:n{i}" for i in range(fleet.n)]
    before = fleet.statuses()
    recv0 = [s["cluster"]["received"] for s in before]
    # A task that noticed the restart counts one more restart; "connected"
    # alone could still be the old session's, not yet noticed.
    restarts0 = [{t["name"]: t["restarts"] for t in s["cluster"]["tasks"]} for s in before]
    # What each node must read again: the others' bans (each node
    # re-announces all of its own, since none of their keys survived).
    own = [s["cluster"]["published"] for s in before]
    total_own = sum(own)
    # PERF_RESTART=FILE records the whole machine (perf record -a) from the
    # kill until re-converged (or the wait's end), for a profile of that window.
    perf = None
    if os.environ.get("PERF_RESTART"):
        perf = subprocess.Popen(["perf", "record", "-a", "-F", "1000", "-o", os.environ["PERF_RESTART"]],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    try:
        return restart_timed(fleet, want, nodes, recv0, restarts0, own, total_own, perf)
    finally:
        if perf is not None and perf.poll() is None:
            perf.send_signal(signal.SIGINT)
            try:
                perf.wait(30)
            except subprocess.TimeoutExpired:
                perf.kill()


def restart_timed(fleet, want, nodes, recv0, restarts0, own, total_own, perf):
    """The timed part of `restart`: the kill, the wait, the report."""
    # CPU of the daemons until re-converged (Redis's own: commandstats
    # below and its process), for the floor: the work cannot end sooner
    # than all of it spread over the machine's CPUs.
    cpu0 = sum(fleet.cpu()[:-1])
    cpu_conv = None
    fleet.redis.kill()
    fleet.redis.wait(5)
    t0 = time.perf_counter()
    r = fleet.start_redis()
    t_up = time.perf_counter() - t0
    t_keys = t_conn = t_read = None
    end = time.monotonic() + 120
    last_status = 0.0
    keys = 0
    while time.monotonic() < end and (t_keys is None or t_conn is None or t_read is None):
        if t_keys is None:
            keys = r.cmd("EVAL", BAN_KEYS, len(nodes) + 1, "sipwarden:events", *nodes)
            if keys >= want:
                t_keys = time.perf_counter() - t0
        if time.monotonic() - last_status >= 0.05:
            last_status = time.monotonic()
            sts = fleet.statuses()
            if t_conn is None and all(
                    s and s["cluster"]["connected"]
                    and all(t["up"] and t["restarts"] > restarts0[i].get(t["name"], 0) for t in s["cluster"]["tasks"])
                    for i, s in enumerate(sts)):
                t_conn = time.perf_counter() - t0
            if t_read is None and all(
                    s and s["cluster"]["received"] - recv0[i] >= total_own - own[i]
                    for i, s in enumerate(sts)):
                t_read = time.perf_counter() - t0
        if cpu_conv is None and t_keys is not None and t_conn is not None:
            c = fleet.cpu()
            cpu_conv = (sum(c[:-1]) - cpu0, c[-1])
            if perf is not None:
                perf.send_signal(signal.SIGINT)
                perf.wait(30)
        time.sleep(0.01)
    # Where Redis spent its time since it started again (re-convergence
    # and what followed until here).
    stats = r.cmd("INFO", "commandstats")
    stats = stats.decode() if isinstance(stats, bytes) else str(stats)
    cmds = []
    for line in stats.splitlines():
        m = re.match(r"cmdstat_(\w+):calls=(\d+),usec=(\d+)", line)
        if m:
            cmds.append((int(m.group(3)), m.group(1), int(m.group(2))))
    cmds.sort(reverse=True)
    print("fleet: redis-server since the restart, by CPU: " + ", ".join(
        "%s %d calls %.0f ms" % (name, calls, usec / 1000) for usec, name, calls in cmds[:6]), file=sys.stderr)
    if cpu_conv is not None:
        ncpu = os.cpu_count() or 1
        print("fleet: CPU from the kill until re-converged: daemons %.2f s, redis-server %.2f s; "
              "spread over %d CPUs at least %.2f s of wall time" % (
                  cpu_conv[0], cpu_conv[1], ncpu, (cpu_conv[0] + cpu_conv[1]) / ncpu), file=sys.stderr)
    exact = sum(1 for _ in scan(r, "sipwarden:ban:*"))
    xlen = r.cmd("XLEN", "sipwarden:events")
    r.close()
    after = [banned(s) for s in fleet.statuses()]
    conv = None if t_keys is None or t_conn is None else max(t_keys, t_conn)
    f = lambda v: "%.3f" % v if v is not None else "not within 120 s"
    print("FLEET-RESTART | bans in force | redis answering s | ban keys back s | every node reconnected s | "
          "re-converged s (both) | every node read the re-announcements s | ban keys at the end | stream entries | each node's bans at the end")
    print("FLEET-RESTART | %d | %.3f | %s | %s | %s | %s | %d | %s | %s" % (
        want, t_up, f(t_keys), f(t_conn), f(conv), f(t_read), exact, xlen,
        "all %d" % want if all(a == want for a in after) else ",".join(map(str, after))))
    return conv is not None


def scan(r, pattern):
    cur = b"0"
    while True:
        cur, keys = r.cmd("SCAN", cur, "MATCH", pattern, "COUNT", 10000)
        yield from keys
        if cur in (b"0", "0"):
            return


def main():
    # TERM (timeout, fleet.sh's trap) stops the daemons and Redis in order.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("fleet.py: terminated"))
    bin_, work, hub, nss = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    k = int(os.environ.get("K", "200"))
    bans = int(os.environ.get("BANS", "100000"))
    timeout = float(os.environ.get("TRIAL_TIMEOUT", "3"))
    fleet = Fleet(bin_, work, hub, nss)
    ok = True
    try:
        fleet.start_redis().close()
        fleet.start_daemons()
        fleet.wait_joined()
        done = propagation(fleet, k, timeout) if k > 0 else 0
        if bans > 0:
            n, secs, want = make_bans(fleet, bans)
            print(f"fleet: {n} bans decided across {fleet.n} nodes ({n // fleet.n} each, one log append) "
                  f"held by every node after {secs:.2f} s", file=sys.stderr)
            ok = restart(fleet, want)
        del done
    finally:
        fleet.stop()
    if not ok:
        sys.exit("the fleet did not re-converge within 120 s")


if __name__ == "__main__":
    main()
