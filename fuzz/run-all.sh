#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (SECONDS_EACH, default 120).
# No nightly toolchain is needed: RUSTC_BOOTSTRAP=1 lets cargo-fuzz use the
# installed stable compiler. Findings land in fuzz/artifacts/<target>/ and are
# replayed by `cargo test` once committed.
set -euo pipefail
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for t in esl_frames ami_frames filters config ini control wire feeds hep; do
  echo "== $t"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" -- -max_total_time="${SECONDS_EACH:-120}" -rss_limit_mb=2048 2>&1 | tail -3
done
