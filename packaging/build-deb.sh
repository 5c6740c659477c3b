#!/usr/bin/env bash
# Builds target/debian/sipwarden_<version>_<arch>.deb: one release build, the
# man page and shell completions from the binary itself, then
# `cargo deb --no-build` (cargo-deb is installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
cargo build --release --locked
mkdir -p target/packaging
bin=target/release/sipwarden
"$bin" man > target/packaging/sipwarden.1
"$bin" completions bash > target/packaging/sipwarden.bash
"$bin" completions zsh > target/packaging/_sipwarden
"$bin" completions fish > target/packaging/sipwarden.fish
cargo deb --no-build --strip   # line tables stay in target/ for profiling
ls target/debian/*.deb
