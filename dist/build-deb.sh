#!/usr/bin/env bash
# Builds the Debian package (target/debian/ferry_*.deb): both binaries, the systemd unit, the
# sysctl file, the example config, shell completions and manual pages. Needs cargo-deb
# (installed here if missing) and dpkg-deb.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
out=target/dist
rm -rf "$out"
mkdir -p "$out/completions" "$out/man"
target/release/ferry completions bash > "$out/completions/ferry.bash"
target/release/ferry completions zsh > "$out/completions/_ferry"
target/release/ferry completions fish > "$out/completions/ferry.fish"
target/release/ferry man "$out/man"
target/release/ferryd man "$out/man"
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
cargo deb -p ferry-server --no-build --strip "$@"
