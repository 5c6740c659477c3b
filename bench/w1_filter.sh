#!/usr/bin/env bash
# W1 filter throughput, side by side: fail2ban-regex (Debian's fail2ban and
# its filter.d/freeswitch.conf) against `sipwarden test-filter` with the
# built-in `freeswitch` filter and with the same fail2ban filter file, on the
# 200,000-line log from ../shared/bench/gen_freeswitch_log.py.
# Wall-clock time of each whole command, median of RUNS runs; prints one row.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
SHARED=${SHARED:-../shared}
WORK=${WORK:-$(mktemp -d)}
LOG=$WORK/freeswitch-200k.log
[ -f "$LOG" ] || python3 "$SHARED/bench/gen_freeswitch_log.py" 200000 "$LOG" >/dev/null
# BIN=... measures another build (side by side: bench/side_by_side.sh).
[ -n "${BIN:-}" ] || cargo build --release -q
BIN=${BIN:-$PWD/target/release/sipwarden}
F2B_FILTER=${F2B_FILTER:-/etc/fail2ban/filter.d/freeswitch.conf}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Output goes to a file, not /dev/null: GNU grep (since 2.26) stops at its
# first match when its output is /dev/null ("can be much faster now when
# standard output is /dev/null"; 8 reads of the 30 MB instead of 313), which
# made the `grep -c` row of earlier runs about ten times too fast. The
# clock is bash's own ($EPOCHREALTIME): a `date` process on each side added
# about 2 ms to every run, a tenth of sipwarden's. (Its decimal point
# follows the locale: a comma becomes a point for bc.)
wall() { # seconds of one run of "$@"
  local t0 t1; t0=${EPOCHREALTIME/,/.}; "$@" >"$WORK/out" 2>&1; t1=${EPOCHREALTIME/,/.}; echo "$t1 - $t0" | bc -l; }

builtin=$(for _ in $(seq "$RUNS"); do wall "$BIN" test-filter "$LOG" freeswitch; done | median)
matched_builtin=$("$BIN" test-filter "$LOG" freeswitch --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["matched"])')
f2bfile="n/a"; matched_f2bfile="n/a"; f2b="n/a"; matched_f2b="n/a"
if [ -f "$F2B_FILTER" ]; then
  f2bfile=$(for _ in $(seq "$RUNS"); do wall "$BIN" test-filter "$LOG" "$F2B_FILTER"; done | median)
  matched_f2bfile=$("$BIN" test-filter "$LOG" "$F2B_FILTER" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["matched"])')
fi
if command -v fail2ban-regex >/dev/null && [ -f "$F2B_FILTER" ]; then
  f2b=$(for _ in $(seq "$RUNS"); do wall fail2ban-regex "$LOG" "$F2B_FILTER"; done | median)
  matched_f2b=$(fail2ban-regex "$LOG" "$F2B_FILTER" 2>/dev/null | awk '/^Lines:/{print $6}')
fi
grepc=$(for _ in $(seq "$RUNS"); do wall env LC_ALL=C grep -c -F -e "SIP auth failure" -e "Can't find user" "$LOG"; done | median)
rate() { [ "$1" = n/a ] && echo n/a || echo "200000 / $1" | bc; }
ratio() { [ "$1" = n/a ] || [ "$2" = n/a ] && echo n/a || printf '%.0fx' "$(echo "$1 / $2" | bc -l)"; }
echo "W1 | lines | fail2ban-regex s (matched) | sipwarden built-in s (matched) | sipwarden + fail2ban filter s (matched) | grep -c s | built-in vs fail2ban | f2b-file vs fail2ban"
echo "W1 | 200000 | $f2b ($matched_f2b, $(rate "$f2b") lines/s) | $builtin ($matched_builtin, $(rate "$builtin") lines/s) | $f2bfile ($matched_f2bfile, $(rate "$f2bfile") lines/s) | $grepc | $(ratio "$f2b" "$builtin") | $(ratio "$f2b" "$f2bfile")"
