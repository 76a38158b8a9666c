#!/usr/bin/env bash
# Where the CPU goes: one upload of SIZE_MIB (default 1024) on loopback with the release
# binaries, `perf record` on both sides, then the top symbols of each (self time, percent of
# that side's samples). Needs perf and root (or perf_event_paranoid <= 1).
# Usage: [BIN=DIR] [TOP=12] bench/profile.sh [SIZE_MIB]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mib=${1:-1024}
top=${TOP:-12}
if [ -z "${BIN:-}" ]; then
  cargo build --release --bins --manifest-path "$root/Cargo.toml" >/dev/null 2>&1
fi
bin=${BIN:-$root/target/release}
work=$(mktemp -d /var/tmp/ferry-profile.XXXXXX)
trap 'kill "$server_pid" "$perf_pid" 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
head -c $((mib * 1024 * 1024)) /dev/urandom > "$work/src.bin"
token=$("$bin/ferryd" token add bench --init --data "$work/data" 2>/dev/null)
"$bin/ferryd" serve --listen 127.0.0.1:0 --data "$work/data" 2> "$work/server.log" &
server_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/server.log" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^ferryd: listening on \([^ ]*\) .*/\1/p' "$work/server.log")
fp=$("$bin/ferryd" fingerprint --data "$work/data")
sync
perf record -q -F 499 -g -o "$work/server.perf" -p "$server_pid" 2>/dev/null &
perf_pid=$!
sleep 0.5
perf record -q -F 499 -g -o "$work/client.perf" -- "$bin/ferry" --server "$addr" --token "$token" \
  --fingerprint "$fp" --state-dir "$work/state" upload --json "$work/src.bin" > "$work/report.json" 2>/dev/null
kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
kill -TERM "$server_pid"; wait "$server_pid" 2>/dev/null || true
for side in server client; do
  echo "== $side (self time, top $top)"
  perf report -i "$work/$side.perf" --no-children -g none --sort symbol --stdio 2>/dev/null \
    | grep -E "^ +[0-9.]+%" | sed -E "s/ +- +- *$//; s/ +$//" | head -n "$top" || true
done
