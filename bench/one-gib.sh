#!/usr/bin/env bash
# One upload of SIZE bytes (default 1 GiB) on loopback with the release binaries, ferryd and
# ferry as separate processes, each under /usr/bin/time -v. Prints throughput, CPU and peak RSS
# of both sides, and checks the published file's SHA-256.
# With COLD=1 (root) the page cache is dropped after the source is written, so the client reads
# it from disk, as bench/run.py's DROP_CACHES=1 runs do.
# Before the source is written, twice SIZE of page cache is written and deleted (WARM=0 skips):
# this VM hands memory it got back (free page reporting) to the host, and the first touch of
# such a page costs ~10 µs in whichever process writes it next; without the warm-up that cost
# landed on the server's page-cache writes and doubled its CPU time at random
# (docs/benchmarks.md, "Performance III").
# Usage: [CONGESTION=cubic|bbr|newreno] [BIN=DIR] [COLD=1] [WARM=0] bench/one-gib.sh [SIZE_MIB]
# BIN names a folder holding other ferryd/ferry builds (no build then): bench/ab.sh uses it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mib=${1:-1024}
if [ -z "${BIN:-}" ]; then
  cargo build --release --bins --manifest-path "$root/Cargo.toml" >/dev/null 2>&1
fi
bin=${BIN:-$root/target/release}
work=$(mktemp -d /var/tmp/ferry-bench.XXXXXX)
trap 'kill "$server_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
if [ "${WARM:-1}" = 1 ]; then
  dd if=/dev/zero of="$work/warm" bs=1M count=$((2 * mib)) status=none
  rm "$work/warm"
fi
head -c $((mib * 1024 * 1024)) /dev/urandom > "$work/src.bin"
if [ "${COLD:-}" = 1 ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi
# --init since the data-directory guard (issue 10); older builds (bench/ab.sh) do without.
token=$("$bin/ferryd" token add bench --init --data "$work/data" 2>/dev/null \
  || "$bin/ferryd" token add bench --data "$work/data")
/usr/bin/time -v -o "$work/server.time" "$bin/ferryd" serve --listen 127.0.0.1:0 --data "$work/data" 2> "$work/server.log" &
time_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/server.log" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^ferryd: listening on \([^ ]*\) .*/\1/p' "$work/server.log")
server_pid=$(pgrep -P "$time_pid" ferryd)
fp=$("$bin/ferryd" fingerprint --data "$work/data")
/usr/bin/time -v -o "$work/client.time" "$bin/ferry" --server "$addr" --token "$token" --fingerprint "$fp" \
  --state-dir "$work/state" --congestion "${CONGESTION:-bbr}" upload --json "$work/src.bin" > "$work/report.json"
kill -TERM "$server_pid"
wait "$time_pid" || true
want=$(sha256sum < "$work/src.bin" | cut -d' ' -f1)
got=$(sha256sum < "$work/data/files/bench/src.bin" | cut -d' ' -f1)
[ "$want" = "$got" ] || { echo "MISMATCH: published file differs from the source"; exit 1; }
python3 - "$work" "$mib" <<'PY'
import json, os, re, sys
work, mib = sys.argv[1], int(sys.argv[2])
r = json.load(open(f"{work}/report.json"))
def t(side):
    text = open(f"{work}/{side}.time").read()
    get = lambda k: float(re.search(re.escape(k) + r": ([\d.]+)", text).group(1))
    return get("User time (seconds)") + get("System time (seconds)"), get("Maximum resident set size (kbytes)") / 1024
(scpu, srss), (ccpu, crss) = t("server"), t("client")
secs = r["elapsed_ms"] / 1000
print(f"| {mib} MiB | {os.environ.get('CONGESTION', 'bbr')} | {mib / secs:.0f} MiB/s | {secs:.2f} s | server {scpu:.2f} s CPU, {srss:.0f} MiB peak RSS | client {ccpu:.2f} s CPU, {crss:.0f} MiB peak RSS | sha256 ok |")
PY
