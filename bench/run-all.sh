#!/usr/bin/env bash
# Every workload, one table: runs the bench scripts one after the other
# (each bounded by `timeout`), keeps their raw rows, and prints one table
# with fail2ban's side where it has one. Run as root (namespaces, nftables).
#   sudo bash bench/run-all.sh [BIN]        # default: cargo build --release
# ONLY="w0 w1 w2 w2m f2b-w2 w3 w4 w5 w6 wire fleet" limits the rows; the
# svcrack-against-Kamailio form of W0 and the criterion benches compile test
# or bench binaries, so they run only when asked: KAMAILIO=1, CRITERION=1.
# RESULTS (default a new temporary directory) keeps each script's output;
# FORMAT_ONLY=1 RESULTS=DIR prints the table of that run again.
# About 15 minutes on the 2-vCPU machine while others compiled, 7 of them
# fail2ban's W2 (which follows its log until the bans stop changing).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
export SHARED
if [ $# -ge 1 ]; then BIN=$(realpath "$1"); else cargo build --release -q; BIN=$PWD/target/release/sipwarden; fi
export BIN
ONLY=${ONLY:-"w0 w1 w2 w2m f2b-w2 w3 w4 w5 w6 wire fleet"}
RESULTS=${RESULTS:-$(mktemp -d)}
mkdir -p "$RESULTS"
# fail2ban's filter file for W1: the installed one, else the corpus's copy.
[ -f /etc/fail2ban/filter.d/freeswitch.conf ] ||
  export F2B_FILTER=${F2B_FILTER:-$SHARED/corpus/fail2ban-1.1.2.dev1/config/filter.d/freeswitch.conf}

want() { [[ " $ONLY " == *" $1 "* ]]; }
# step NAME SECONDS COMMAND...: output to $RESULTS/NAME.out; a failure or a
# timeout is written there too and the run goes on.
step() {
  local name=$1 secs=$2; shift 2
  echo "run-all: $name ($(date -u +%H:%M:%S), at most ${secs} s)" >&2
  local rc=0
  timeout -k 10 "$secs" "$@" > "$RESULTS/$name.out" 2> "$RESULTS/$name.err" || rc=$?
  [ $rc -eq 0 ] || echo "FAILED | $name | exit $rc$([ $rc -eq 124 ] && echo ' (timeout)') | $RESULTS/$name.err" >> "$RESULTS/$name.out"
}
skip() { echo "SKIPPED | $1 | $2" > "$RESULTS/$1.out"; }

# FORMAT_ONLY=1 prints the table of an earlier run's $RESULTS again.
[ "${FORMAT_ONLY:-0}" = 1 ] && ONLY=none
[ "${FORMAT_ONLY:-0}" = 1 ] || {
  echo "machine: $(nproc) CPU, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
  echo "start: $(date -u '+%Y-%m-%d %H:%M UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "binary: $BIN ($("$BIN" --version 2>/dev/null || echo '?'))"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (modified)')"
} > "$RESULTS/machine.txt"

if want w0; then
  step w0 300 bash bench/w0_paced.sh
  if [ "${KAMAILIO:-0}" = 1 ]; then
    step w0-kamailio 900 cargo test --release --test it kamailio -- --nocapture
  else
    missing=$(for c in kamailio svcrack; do command -v $c >/dev/null || printf '%s ' $c; done)
    skip w0-kamailio "svcrack against a real Kamailio is an integration test (cargo test --test it kamailio -- --nocapture) that compiles the test binary: KAMAILIO=1 runs it${missing:+; missing here: $missing}"
  fi
fi
want w1 && step w1 600 env RUNS="${RUNS:-5}" bash bench/w1_filter.sh
want w2 && step w2 300 bash bench/w2_burst.sh
want w2m && step w2m 600 env N=2000000 bash bench/w2_burst.sh
if want f2b-w2; then
  if command -v fail2ban-server >/dev/null; then
    LOG=$(mktemp)
    GEN_SPAN_S=300 GEN_END_NOW=1 python3 "$SHARED/bench/gen_freeswitch_log.py" 200000 "$LOG" >/dev/null
    step f2b-w2 600 unshare -n env ACTION=nftables bash "$SHARED/bench/fail2ban_live_burst.sh" "$LOG"
    rm -f "$LOG" "$LOG.expected.json"
  else
    skip f2b-w2 "fail2ban-server not installed (apt-get install fail2ban)"
  fi
fi
want w3 && step w3 600 env TRIALS="${TRIALS:-1000}" bash bench/w3_latency.sh
want w4 && step w4 600 bash bench/w4_memory.sh
want w5 && step w5 600 bash bench/w5_restore.sh
want w6 && step w6 300 env N="${W6_N:-2000000}" bash bench/w6_esl.sh
want wire && step wire 300 bash bench/wire_cpu.sh
want fleet && step fleet 900 bash bench/fleet.sh "$BIN"
if [ "${FORMAT_ONLY:-0}" = 1 ]; then :
elif [ "${CRITERION:-0}" = 1 ]; then
  step criterion 1800 cargo bench --bench hot_paths -- 'esl/|filter/'
else
  skip criterion "criterion (W6 in process, the filter per line) compiles the bench binary: CRITERION=1 runs cargo bench --bench hot_paths"
fi
[ "${FORMAT_ONLY:-0}" = 1 ] || echo "end: $(date -u '+%Y-%m-%d %H:%M UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RESULTS/machine.txt"

python3 - "$RESULTS" <<'PY'
import glob, os, re, sys
res = sys.argv[1]
def rows(name, tag):
    p = os.path.join(res, name + ".out")
    if not os.path.exists(p):
        return None
    lines = open(p, errors="replace").read().splitlines()
    for l in lines:
        if l.startswith(("FAILED |", "SKIPPED |")):
            return l
    return [[c.strip() for c in l.split("|")] for l in lines if l.startswith(tag + " |") or re.match(r"^\S+ %s \|" % tag, l)]
def cell(r):
    """A failed or skipped step, as a table cell."""
    k, name, why = r.split(" | ", 2)
    return ("skipped: " if k == "SKIPPED" else "failed: ") + why.replace(" | ", ", ")
def sec(v):
    """A time in seconds as the scripts print it (.0345, 15.486555390), to 3 places."""
    m = re.match(r"^\s*([0-9]*\.?[0-9]+)(.*)$", v)
    return "%.3f s%s" % (float(m.group(1)), re.sub(r"^\s*s\b", "", m.group(2))) if m else v
out = []
def row(work, f2b, sw, target, script):
    out.append("| %s | %s | %s | %s | `%s` |" % (work, f2b, sw, target, script))
def data(r):
    """Result rows (not the header) of a step, or a failure/skip string."""
    if isinstance(r, str) or r is None:
        return r
    return [x for x in r if len(x) > 1 and x[1] not in HEADERS] or None
HEADERS = {"side", "lines", "due bans", "source", "tracked", "bans", "events", "packets/s"}

r = rows("w0", "W0")
if r is not None:
    if isinstance(r, str):
        row("W0 paced simulators, failures processed before the ban (maxretry 5, one per 12 ms)", "", cell(r), "<= 6", "bench/w0_paced.sh")
    else:
        d = {x[1]: x[3] for x in r if len(x) >= 4 and x[3].replace("None", "").strip() and x[1] != "side"}
        f2b = next((v for k, v in d.items() if k.startswith("fail2ban")), "not run")
        sw = ", ".join("%s %s" % (k.split("(")[0].replace("sipwarden ", "").strip(), v) for k, v in d.items() if k.startswith("sipwarden"))
        row("W0 paced simulators, failures processed before the ban (maxretry 5, one per 12 ms)", f2b, sw, "<= 6", "bench/w0_paced.sh")
r = rows("w0-kamailio", "W0")
if r is not None:
    txt = cell(r) if isinstance(r, str) else "see %s/w0-kamailio.out" % res
    row("W0 svcrack against Kamailio", "", txt, "<= 6", "cargo test --test it kamailio -- --nocapture")
r = data(rows("w1", "W1"))
if r is not None:
    if isinstance(r, str):
        row("W1 filter, 200,000 lines", "", cell(r), "", "bench/w1_filter.sh")
    else:
        x = r[-1]
        row("W1 built-in `freeswitch` filter, whole command", sec(x[2]), "%s (%s vs fail2ban; `grep -c` %s)" % (sec(x[3]), x[6], sec(x[5])), "within 5x of grep", "bench/w1_filter.sh")
        row("W1 fail2ban's own filter file in both", sec(x[2]), "%s (%s)" % (sec(x[4]), x[7]), ">= 250x", "bench/w1_filter.sh")
f = rows("f2b-w2", "DONE:")
f2b_w2 = "not run"
if isinstance(f, str):
    f2b_w2 = cell(f)
else:
    p = os.path.join(res, "f2b-w2.out")
    if os.path.exists(p):
        m = re.search(r"DONE: last change at ([0-9.]+)s after append; failed=(\d+) banned=(\d+)", open(p).read())
        f2b_w2 = "last ban %s s after the append (%s bans, mode extra)" % m.groups()[::2] if m else "no DONE line"
for key, what, target in (("w2", "W2 live burst, 200,000 lines in 5 min appended at once", "< 2 s"),
                          ("w2m", "W2 live burst, 2,000,000 lines in 5 min appended at once", "< 2 s")):
    r = data(rows(key, "W2"))
    if r is None:
        continue
    if isinstance(r, str):
        row(what, f2b_w2 if key == "w2" else "", cell(r), target, "bench/w2_burst.sh")
    else:
        x = r[-1]
        row(what, f2b_w2 if key == "w2" else "", "%s of %s due bans in the kernel after %s; RSS %s KiB (%s anonymous)" % (x[3], x[2], sec(x[4]), x[5], x[6]), target, "N=%s bash bench/w2_burst.sh" % x[1])
r = data(rows("w3", "W3"))
if r is not None:
    if isinstance(r, str):
        row("W3 ban latency", "", cell(r), "p99 < 5 ms", "bench/w3_latency.sh")
    else:
        row("W3 ban latency, maxretry-th failure to the kernel set, p50 / p99 ms", "", "; ".join("%s %s / %s (%s of %s)" % (x[1], x[4], x[5], x[3], x[2]) for x in r), "p99 < 5 ms", "bench/w3_latency.sh")
r = data(rows("w4", "W4"))
if r is not None:
    if isinstance(r, str):
        row("W4 memory", "", cell(r), "<= 100 B per address", "bench/w4_memory.sh")
    else:
        x = r[-1]
        row("W4 memory, 1,000,000 tracked then 100,000 banned", "", "%s B per tracked address; RSS %s KiB with 1M tracked, %s KiB with bans, peak %s KiB" % (x[4], x[3], x[6], x[7]), "<= 100 B per address", "bench/w4_memory.sh")
r = data(rows("w5", "W5"))
if r is not None:
    if isinstance(r, str):
        row("W5 restore / start", "", cell(r), "", "bench/w5_restore.sh")
    else:
        x = r[-1]
        row("W5 restart, 100,000 bans restored into the kernel", "", "%s; start to all in the kernel %s" % (x[2], sec(x[3])), "", "bench/w5_restore.sh")
        if len(x) > 5:
            row("start with 100,000 bans in the store, exec to READY=1", "", "%s (kernel table deleted), %s (table kept)" % (sec(x[4]), sec(x[5])), "< 0.5 s", "bench/w5_restore.sh")
r = data(rows("w6", "W6"))
if r is not None:
    if isinstance(r, str):
        row("W6 Event Socket intake", "n/a", cell(r), "", "bench/w6_esl.sh")
    else:
        x = r[-1]
        row("W6 Event Socket intake over a socket, end to end", "n/a", "%s events/s (%s events in %s, daemon CPU %s)" % (x[3], x[1], sec(x[2]), x[4]), "", "bench/w6_esl.sh")
r = rows("criterion", "esl")
if r is not None:
    row("W6 in process, per event (criterion)", "n/a", cell(r) if isinstance(r, str) else "see %s/criterion.out" % res, "<= 150 ns", "cargo bench --bench hot_paths")
r = data(rows("wire", "WIRE"))
if r is not None:
    if isinstance(r, str):
        row("wire sensor CPU", "n/a", cell(r), "<= 0.3 %", "bench/wire_cpu.sh")
    else:
        x = r[-1]
        row("wire sensor CPU per 1,000 SIP packets/s", "n/a", "%s %% of a core (%s packets/s for %s s, %s read)" % (x[5], x[1], x[2], x[3]), "<= 0.3 %", "bench/wire_cpu.sh")
p = os.path.join(res, "fleet.out")
if os.path.exists(p):
    t = open(p, errors="replace").read().splitlines()
    cells = lambda l: [c.strip() for c in l.split("|")]
    prop = [cells(l) for l in t if re.match(r"^\S+ FLEET \| \d", l)]
    conv = [cells(l) for l in t if re.match(r"^\S+ FLEET-RESTART \| \d", l)]
    bad = [l for l in t if l.startswith("FAILED |")]
    for x in prop:
        row("fleet: a ban asked of one node, until the last of the other %d nodes' kernel sets (netlink)" % (int(x[1]) - 1), "n/a",
            "p50 / p99 / max %s ms (%s of %s bans; origin's set p50 %s ms, origin's XADD at Redis p50 %s ms)" % (x[5], x[3], x[2], x[4], x[7]), "p99 < 20 ms", "bench/fleet.sh")
    for x in conv:
        row("fleet: %s bans, redis-server restarted empty, until re-converged" % x[1], "n/a",
            "%s s (ban keys back %s s, every node reconnected %s s; every node read the re-announcements %s s; kernel sets: %s)" % (x[5], x[3], x[4], x[6], x[9]), "< 5 s", "bench/fleet.sh")
    if bad:
        row("fleet", "n/a", cell(bad[0]), "", "bench/fleet.sh")
print(open(os.path.join(res, "machine.txt")).read().rstrip())
print()
print("| workload | fail2ban (same run) | sipwarden | target | script |")
print("|---|---|---|---|---|")
print("\n".join(out))
print()
print("raw rows: %s/*.out" % res)
PY
