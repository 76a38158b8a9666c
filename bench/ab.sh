#!/usr/bin/env bash
# A/B of two builds of ferryd + ferry on loopback: RUNS uploads of SIZE_MIB each, A and B
# interleaved (A B A B …), each run one bench/one-gib.sh line (throughput, CPU, peak RSS,
# sha256 check), then the median throughput of each side. With DROP_CACHES=1 (root) the page
# cache is dropped before every run.
# Usage: bench/ab.sh DIR_A DIR_B [SIZE_MIB] [RUNS]
# e.g. git worktree add /tmp/base <commit> && (cd /tmp/base && CARGO_TARGET_DIR=/tmp/tb cargo
# build --release --bins) && cargo build --release --bins && bench/ab.sh /tmp/tb/release target/release 1024 5
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
a=$1 b=$2 mib=${3:-1024} runs=${4:-5}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for i in $(seq "$runs"); do
  for side in A B; do
    dir=$a; [ "$side" = B ] && dir=$b
    sync
    if [ "${DROP_CACHES:-}" = 1 ]; then echo 3 > /proc/sys/vm/drop_caches; fi
    line=$(BIN=$dir "$here/one-gib.sh" "$mib")
    echo "$side $line" | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import re, statistics, sys
rates = {"A": [], "B": []}
for line in open(sys.argv[1]):
    m = re.search(r"\| (\d+) MiB/s \|", line)
    if m:
        rates[line[0]].append(int(m.group(1)))
for side, r in rates.items():
    print(f"{side}: median {statistics.median(r)} MiB/s over {len(r)} runs {sorted(r)}")
PY
