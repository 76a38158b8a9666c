#!/usr/bin/env bash
# Fairness: a Ferry upload sharing an emulated link with a TCP flow. ../shared/tools/netem_tun
# joins two namespaces (DELAY_MS each way, LOSS, RATE_MBIT, a one-BDP tail-drop queue); an
# iperf3 TCP flow (TCP=cubic|bbr) runs from wan-a to wan-b for SECS seconds; after 5 s a Ferry
# upload of SIZE_MIB starts beside it. Prints the TCP flow's rate before, during and after the
# upload (iperf3's 1 s intervals, averaged) and Ferry's own rate. Root and iperf3 needed.
# Usage: [DELAY_MS=25] [LOSS=0] [RATE_MBIT=200] [TCP=cubic] [CONGESTION=delay] [SECS=30]
#        [WARM_MIB=N] bench/share.sh [SIZE_MIB]
# WARM_MIB=N: an N MiB upload over the link alone first, so the measured one starts from the
# path it learned (client/src/path.rs).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mib=${1:-128}
secs=${SECS:-30}
tool="$root/../shared/tools/netem_tun"
[ -d "$tool" ] || { echo "share.sh: $tool not found" >&2; exit 2; }
command -v iperf3 >/dev/null || { echo "share.sh: needs iperf3 (apt-get install iperf3)" >&2; exit 2; }
cargo build -q --release --manifest-path "$tool/Cargo.toml" --target-dir /tmp/netem_tun-target
netem=/tmp/netem_tun-target/release/netem_tun
cargo build -q --release --bins --manifest-path "$root/Cargo.toml"
bin=$root/target/release
work=$(mktemp -d /var/tmp/ferry-share.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$netem" down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
head -c $((mib * 1024 * 1024)) /dev/urandom > "$work/src.bin"
"$netem" up --delay-ms "${DELAY_MS:-25}" --loss "${LOSS:-0}" --rate-mbit "${RATE_MBIT:-200}" \
  --seed 5 --max-seconds 600 > "$work/netem.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q ready "$work/netem.log" && break; sleep 0.1; done
token=$("$bin/ferryd" token add bench --init --data "$work/data" 2>/dev/null)
ip netns exec wan-b "$bin/ferryd" serve --listen 10.99.0.2:4433 --data "$work/data" 2> "$work/server.log" &
pids+=($!)
if [ -n "${WARM_MIB:-}" ]; then
  # An earlier upload over the link alone, with the same state folder: the measured upload
  # starts from what it learned (client/src/path.rs), beside the TCP flow.
  for _ in $(seq 100); do grep -q "listening on" "$work/server.log" && break; sleep 0.1; done
  fp=$("$bin/ferryd" fingerprint --data "$work/data")
  head -c $((WARM_MIB * 1024 * 1024)) /dev/urandom > "$work/warm.bin"
  ip netns exec wan-a "$bin/ferry" --server 10.99.0.2:4433 --token "$token" --fingerprint "$fp" \
    --state-dir "$work/state" --congestion "${CONGESTION:-delay}" upload --json "$work/warm.bin" > /dev/null 2>&1
fi
ip netns exec wan-b iperf3 -s -1 -p 5201 > /dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$work/server.log" && break; sleep 0.1; done
sleep 0.5
fp=$("$bin/ferryd" fingerprint --data "$work/data")
ip netns exec wan-a iperf3 -c 10.99.0.2 -p 5201 -t "$secs" -i 1 -C "${TCP:-cubic}" -J > "$work/tcp.json" &
tcp=$!
pids+=($tcp)
sleep 5
start=$(date +%s.%N)
ip netns exec wan-a "$bin/ferry" --server 10.99.0.2:4433 --token "$token" --fingerprint "$fp" \
  --state-dir "$work/state" --congestion "${CONGESTION:-delay}" upload --json "$work/src.bin" > "$work/report.json"
end=$(date +%s.%N)
wait "$tcp" || true
python3 - "$work" "$mib" "$start" "$end" <<'PY'
import json, sys
work, mib, start, end = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
tcp = json.load(open(f"{work}/tcp.json"))
t0 = tcp["start"]["timestamp"]["timesecs"]
spans = {"before": [], "during": [], "after": []}
for i in tcp["intervals"]:
    s = i["sum"]
    mid = t0 + (s["start"] + s["end"]) / 2
    key = "before" if mid < start else "during" if mid < end else "after"
    spans[key].append(s["bits_per_second"] / 8e6)
avg = lambda v: f"{sum(v) / len(v):.1f} MB/s ({len(v)} s)" if v else "-"
r = json.loads(open(f"{work}/report.json").read().splitlines()[0])
print(f"TCP alone before: {avg(spans['before'])}; beside Ferry: {avg(spans['during'])}; after: {avg(spans['after'])}")
print(f"Ferry: {mib} MiB in {r['elapsed_ms'] / 1000:.1f} s = {mib * 1048576 / (r['elapsed_ms'] / 1000) / 1e6:.1f} MB/s")
PY
