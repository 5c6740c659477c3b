#!/usr/bin/env bash
# Two builds of sipwarden side by side, in one run: W1 (filter throughput),
# W2 (live burst), W3 (ban latency), W4 (memory), W5 (restore) and W6 (Event
# Socket intake), each measured for OLD then NEW, ROUNDS times, alternating,
# so both see the same machine. Run as root (W2, W3, W5 use namespaces).
#   bash bench/side_by_side.sh /path/to/old/sipwarden /path/to/new/sipwarden
# ONLY="1 3" limits the workloads; ROUNDS (default 2) repeats each pair.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: side_by_side.sh OLD_BINARY NEW_BINARY}
NEW=${2:?usage: side_by_side.sh OLD_BINARY NEW_BINARY}
ROUNDS=${ROUNDS:-2}
ONLY=${ONLY:-"1 2 3 4 5 6"}
SHARED=${SHARED:-../shared}
export SHARED
# W1 reads fail2ban's own filter file from the corpus, so no fail2ban install
# is needed to compare the two builds on it.
export F2B_FILTER=${F2B_FILTER:-$SHARED/corpus/fail2ban-1.1.2.dev1/config/filter.d/freeswitch.conf}
W1_WORK=$(mktemp -d)
trap 'rm -rf "$W1_WORK"' EXIT

run() { # workload, label, binary
  local w=$1 label=$2 bin=$3
  case $w in
    1) WORK=$W1_WORK BIN=$bin RUNS=${RUNS:-5} bash bench/w1_filter.sh | tail -1 ;;
    2) BIN=$bin bash bench/w2_burst.sh | tail -1 ;;
    3) BIN=$bin TRIALS=${TRIALS:-400} bash bench/w3_latency.sh | tail -2 ;;
    4) BIN=$bin bash bench/w4_memory.sh | tail -2 ;;
    5) BIN=$bin bash bench/w5_restore.sh | tail -1 ;;
    6) BIN=$bin bash bench/w6_esl.sh | tail -1 ;;
  esac | sed "s/^/$label /"
}

for w in $ONLY; do
  for r in $(seq "$ROUNDS"); do
    run "$w" "old#$r" "$OLD"
    run "$w" "new#$r" "$NEW"
  done
done
