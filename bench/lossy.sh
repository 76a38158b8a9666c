#!/usr/bin/env bash
# One upload across an emulated long, lossy link: ../shared/tools/netem_tun joins two
# network namespaces (wan-a: client, wan-b: server) with DELAY_MS each way, LOSS per
# direction, RATE_MBIT and a tail-drop queue of one bandwidth-delay product. Prints MB/s
# (10^6 bytes/s, as the tool's README), the client's report, and the emulator's counters.
# Root only; the emulator stays outside the project and is built from ../shared/tools.
# SYSTEM=ferry (default), ceiling (bench's quic-ceiling pair: bare quinn with Ferry's
# transport settings, 8 streams, no hashing, no sync) or tus (@tus/server + tus-js-client over
# TCP with TCP=bbr|cubic in both namespaces; node and npm needed) or browser (the upload page in
# headless Chromium through chromedriver, bench/browser.py page; chromium and chromium-driver).
# Usage: [SYSTEM=ferry] [DELAY_MS=100] [LOSS=0.05] [RATE_MBIT=1000] [SEED=3]
#        [FERRY_ARGS="--parallel 16"] [CONGESTION=delay] [TCP=bbr] [BIN=DIR] [WARM_MIB=N] bench/lossy.sh [SIZE_MIB]
# WARM_MIB=N first uploads N MiB over the same path with the same state folder, so the measured
# upload starts from what that connection learned (client/src/path.rs); with FORGET=1 that is
# deleted after the warm-up (the same run without the path memory).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mib=${1:-128}
tool="$root/../shared/tools/netem_tun"
[ -d "$tool" ] || { echo "lossy.sh: $tool not found; this benchmark needs the shared emulator" >&2; exit 2; }
cargo build -q --release --manifest-path "$tool/Cargo.toml" --target-dir /tmp/netem_tun-target
netem=/tmp/netem_tun-target/release/netem_tun
if [ -z "${BIN:-}" ]; then
  cargo build -q --release --bins --manifest-path "$root/Cargo.toml"
fi
bin=${BIN:-$root/target/release}
work=$(mktemp -d /var/tmp/ferry-lossy.XXXXXX)
netem_pid= server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  [ -n "$netem_pid" ] && kill -TERM "$netem_pid" 2>/dev/null && wait "$netem_pid" 2>/dev/null || true
  "$netem" down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
head -c $((mib * 1024 * 1024)) /dev/urandom > "$work/src.bin"
"$netem" up --delay-ms "${DELAY_MS:-100}" --loss "${LOSS:-0.05}" --rate-mbit "${RATE_MBIT:-1000}" \
  --seed "${SEED:-3}" --max-seconds 900 > "$work/netem.log" 2>&1 &
netem_pid=$!
for _ in $(seq 100); do grep -q ready "$work/netem.log" && break; sleep 0.1; done
mbs() { python3 -c "import sys; print(f'{sys.argv[1]} MiB in {float(sys.argv[2]):.1f} s = {int(sys.argv[1]) * 1048576 / float(sys.argv[2]) / 1e6:.1f} MB/s')" "$@"; }
case "${SYSTEM:-ferry}" in
ceiling)
  ip netns exec wan-b "$bin/quic-ceiling" recv --listen 10.99.0.2:4433 --out "$work/out.bin" \
    --size $((mib * 1024 * 1024)) --congestion "${CONGESTION:-bbr}" > "$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$work/server.log" && break; sleep 0.1; done
  t0=$(date +%s.%N)
  ip netns exec wan-a "$bin/quic-ceiling" send --server 10.99.0.2:4433 --file "$work/src.bin" \
    --congestion "${CONGESTION:-bbr}" > /dev/null
  wait "$server_pid" || true; server_pid=
  mbs "$mib" "$(python3 -c "import time,sys; print(time.time() - float(sys.argv[1]))" "$t0")"
  cmp -s "$work/src.bin" "$work/out.bin" || { echo "lossy.sh: received file differs" >&2; exit 1; }
  kill -TERM "$netem_pid"; wait "$netem_pid" 2>/dev/null || true; netem_pid=
  grep -E "final" "$work/netem.log" | head -1 || true
  exit 0 ;;
tus)
  for ns in wan-a wan-b; do ip netns exec "$ns" sysctl -q -w net.ipv4.tcp_congestion_control="${TCP:-bbr}"; done
  mkdir "$work/tus" "$work/store"
  cp "$root"/bench/tus/{server.mjs,client.mjs,package.json} "$work/tus/"
  (cd "$work/tus" && npm install --no-audit --no-fund --silent)
  ip netns exec wan-b node "$work/tus/server.mjs" "$work/store" 10.99.0.2 > "$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$work/server.log" && break; sleep 0.1; done
  addr=$(sed -n 's/^listening on //p' "$work/server.log")
  t0=$(date +%s.%N)
  ip netns exec wan-a node "$work/tus/client.mjs" "$work/src.bin" "http://$addr/files/" > "$work/url.txt"
  mbs "$mib" "$(python3 -c "import time,sys; print(time.time() - float(sys.argv[1]))" "$t0")"
  out="$work/store/$(sed 's|.*/||' "$work/url.txt")"
  cmp -s "$work/src.bin" "$out" || { echo "lossy.sh: received file differs" >&2; exit 1; }
  kill -TERM "$netem_pid"; wait "$netem_pid" 2>/dev/null || true; netem_pid=
  grep -E "final" "$work/netem.log" | head -1 || true
  exit 0 ;;
browser)
  # The upload page in headless Chromium (bench/browser.py page) in wan-a, ferryd with its web
  # listener in wan-b: the page, its certificate hashes and the upload all cross the link.
  "$bin/ferryd" token add bench --init --data "$work/data" > /dev/null 2>&1
  ip netns exec wan-b "$bin/ferryd" serve --listen 10.99.0.2:4433 --web-listen 10.99.0.2:8443 \
    --data "$work/data" 2> "$work/server.log" &
  server_pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$work/server.log" && break; sleep 0.1; done
  link=$("$bin/ferryd" link bench --data "$work/data" --web-url https://10.99.0.2:8443 2>/dev/null)
  read -r secs status cpu < <(ip netns exec wan-a python3 "$root/bench/browser.py" page "$link" "$work/src.bin")
  [ "$status" = complete ] || { echo "lossy.sh: the page said $status" >&2; exit 1; }
  mbs "$mib" "$secs"
  echo "Chromium ${cpu} CPU-s"
  cmp -s "$work/src.bin" "$work/data/files/bench/src.bin" || { echo "lossy.sh: received file differs" >&2; exit 1; }
  kill -TERM "$netem_pid"; wait "$netem_pid" 2>/dev/null || true; netem_pid=
  grep -E "final" "$work/netem.log" | head -1 || true
  exit 0 ;;
esac
token=$("$bin/ferryd" token add bench --init --data "$work/data" 2>/dev/null)
ip netns exec wan-b "$bin/ferryd" serve --listen 10.99.0.2:4433 --data "$work/data" 2> "$work/server.log" &
server_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/server.log" && break; sleep 0.1; done
fp=$("$bin/ferryd" fingerprint --data "$work/data")
if [ -n "${WARM_MIB:-}" ]; then
  # An earlier upload over the same path, with the same state folder: the measured one starts
  # from what it learned (STATE/paths.json), as a user's second file does.
  head -c $((WARM_MIB * 1024 * 1024)) /dev/urandom > "$work/warm.bin"
  ip netns exec wan-a "$bin/ferry" --server 10.99.0.2:4433 --token "$token" --fingerprint "$fp" \
    --state-dir "$work/state" --congestion "${CONGESTION:-delay}" upload --json "$work/warm.bin" > /dev/null 2>&1
  # FORGET=1: the same warm-up, then what it learned is deleted (the A/B of the path memory).
  [ -n "${FORGET:-}" ] && rm -f "$work/state/paths.json"
fi
# shellcheck disable=SC2086
ip netns exec wan-a /usr/bin/time -v -o "$work/client.time" "$bin/ferry" --server 10.99.0.2:4433 \
  --token "$token" --fingerprint "$fp" --state-dir "$work/state" --congestion "${CONGESTION:-delay}" \
  upload --json ${FERRY_ARGS:-} "$work/src.bin" > "$work/report.json" 2> "${CLIENT_ERR:-/dev/null}"
# UDP receive-buffer drops on each side (the emulator does not see those).
for ns in wan-a wan-b; do
  ip netns exec "$ns" awk -v ns="$ns" '/^Udp:/ { if (h) { print ns ": UDP RcvbufErrors " $6 ", InErrors " $4 } else h = 1 }' /proc/net/snmp
done
kill -TERM "$netem_pid"; wait "$netem_pid" 2>/dev/null || true; netem_pid=
python3 - "$work" "$mib" <<'PY'
import json, re, sys
work, mib = sys.argv[1], int(sys.argv[2])
r = json.loads(open(f"{work}/report.json").read().splitlines()[0])
t = open(f"{work}/client.time").read()
cpu = sum(float(re.search(p, t).group(1)) for p in [r"User time \(seconds\): ([\d.]+)", r"System time \(seconds\): ([\d.]+)"])
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024
secs = r["elapsed_ms"] / 1000
print(f"{mib} MiB in {secs:.1f} s = {mib * 1048576 / secs / 1e6:.1f} MB/s; sent {r['bytes_sent'] / 1048576:.0f} MiB; "
      f"client {cpu:.1f} CPU-s, {rss:.0f} MiB peak RSS")
PY
grep -E "forwarded|dropped" "$work/netem.log" | tail -4 || true
