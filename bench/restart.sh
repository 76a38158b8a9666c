#!/usr/bin/env bash
# Restart time after a crash with SIZES GiB staged (issue 14): stages that much (ferry-stage),
# drops the page cache (root), starts ferryd and times it to its "listening" line, then waits
# for the background re-verification to finish (unpaced, --verify-rate 0) and times that too.
# Usage: [CHUNK_KIB=8192] bench/restart.sh [GIB ...]   (default: 1 10 20; needs GIB of free
# disk in /var/tmp). A small CHUNK_KIB makes many chunk records: the start path's real cost.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --bins --manifest-path "$root/Cargo.toml" >/dev/null 2>&1
bin=$root/target/release
for gib in "${@:-1 10 20}"; do
  for g in $gib; do
    work=$(mktemp -d /var/tmp/ferry-restart.XXXXXX)
    "$bin/ferry-stage" "$work/data" "$g" "${CHUNK_KIB:-8192}" >/dev/null
    "$bin/ferryd" token add bench --init --data "$work/data" >/dev/null
    sync
    [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches
    start=$(date +%s.%N)
    "$bin/ferryd" serve --listen 127.0.0.1:0 --data "$work/data" --verify-rate 0 2> "$work/log" &
    pid=$!
    for _ in $(seq 6000); do grep -q "listening on" "$work/log" && break; sleep 0.01; done
    listening=$(date +%s.%N)
    for _ in $(seq 6000); do grep -q "re-verified durable chunks" "$work/log" && break; sleep 0.05; done
    verified=$(date +%s.%N)
    kill -TERM "$pid"; wait "$pid" || true
    python3 -c "import sys; s,l,v=map(float,sys.argv[1:4]); print(f'| {int(sys.argv[4])} GiB staged, {sys.argv[5]} KiB chunks | listening after {l-s:.2f} s | re-verified after {v-s:.1f} s ({int(sys.argv[4])*1024/(v-s):.0f} MiB/s) |')" "$start" "$listening" "$verified" "$g" "${CHUNK_KIB:-8192}"
    rm -rf "$work"
  done
done
