#!/usr/bin/env bash
# W1 against the Rust peer: `fail2ban-rs dry-run` with its own `freeswitch`
# template (from `fail2ban-rs gen-config freeswitch`) against
# `sipwarden test-filter LOG freeswitch` on the same 200,000-line log, whole
# commands, interleaved, median of RUNS runs each. fail2ban-rs is not
# installed by anything here: build it yourself
# (`cargo install fail2ban-rs --no-default-features --root DIR`) and pass
# F2BRS=DIR/bin/fail2ban-rs. Prints one row.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-7}
SHARED=${SHARED:-../shared}
WORK=${WORK:-$(mktemp -d)}
F2BRS=${F2BRS:?set F2BRS to a fail2ban-rs binary}
LOG=$WORK/freeswitch-200k.log
[ -f "$LOG" ] || python3 "$SHARED/bench/gen_freeswitch_log.py" 200000 "$LOG" >/dev/null
[ -n "${BIN:-}" ] || cargo build --release -q
BIN=${BIN:-$PWD/target/release/sipwarden}
# Its config needs a [global] table and the jail's log_path; the filter is
# its own template, untouched.
{ printf '[global]\nstate_file = "%s/f2brs.state"\n\n' "$WORK"
  "$F2BRS" gen-config freeswitch | sed "s#^log_path = .*#log_path = \"$LOG\"#"; } >"$WORK/f2brs.toml"
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Output to a file, as in w1_filter.sh (never /dev/null, which some tools
# detect and shortcut).
wall() { local t0 t1; t0=${EPOCHREALTIME/,/.}; "$@" >"$WORK/out" 2>&1; t1=${EPOCHREALTIME/,/.}; echo "$t1 - $t0" | bc -l; }
: >"$WORK/peer.t"; : >"$WORK/sw.t"; : >"$WORK/swf.t"
F2B_FILTER=${F2B_FILTER:-/etc/fail2ban/filter.d/freeswitch.conf}
for _ in $(seq "$RUNS"); do
  wall "$F2BRS" -c "$WORK/f2brs.toml" dry-run "$LOG" >>"$WORK/peer.t"
  wall "$BIN" test-filter "$LOG" freeswitch >>"$WORK/sw.t"
  if [ -f "$F2B_FILTER" ]; then wall "$BIN" test-filter "$LOG" "$F2B_FILTER" >>"$WORK/swf.t"; fi
done
peer=$(median <"$WORK/peer.t"); sw=$(median <"$WORK/sw.t"); swf=$(median <"$WORK/swf.t")
m_peer=$("$F2BRS" -c "$WORK/f2brs.toml" dry-run "$LOG" 2>/dev/null | awk '/Matches:/ && !m {m=$2} END {print m}')
m_sw=$("$BIN" test-filter "$LOG" freeswitch --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["matched"])')
# The template also counts "SIP auth challenge" lines (every first REGISTER
# of an honest phone); sipwarden's built-in filter does not, so the same
# count is also measured with fail2ban's filter file (which counts them).
echo "W1PEER | lines | $("$F2BRS" --version) s (matched) | sipwarden built-in s (matched) | ratio | sipwarden + fail2ban filter file s | ratio"
printf 'W1PEER | 200000 | %s (%s) | %s (%s) | %.1fx | %s | %s\n' "$peer" "$m_peer" "$sw" "$m_sw" "$(echo "$peer / $sw" | bc -l)" \
  "${swf:-n/a}" "$([ -n "$swf" ] && printf '%.1fx' "$(echo "$peer / $swf" | bc -l)" || echo n/a)"
