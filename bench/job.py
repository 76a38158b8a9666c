#!/usr/bin/env python3
"""A job of one huge file followed by small ones, on loopback: how long the small files wait,
and the job's throughput, with one file in flight (--files 1: one after another, as before
issue 9) and with several (--files 4, the default).

Usage: [DROP_CACHES=1] python3 bench/job.py [BIN_DIR] [HUGE_MIB] [SMALL_COUNT] [SMALL_MIB] [RUNS]
  BIN_DIR defaults to target/release (cargo build --release --bins first).
Prints one line per run and setting: total seconds, MiB/s over the job, and the second at
which the last small file was reported uploaded (from the client's per-file lines on stderr,
timestamped as they arrive).
"""
import os
import re
import subprocess
import sys
import tempfile
import time

here = os.path.dirname(os.path.abspath(__file__))
bins = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "target", "release")
huge_mib = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
small_count = int(sys.argv[3]) if len(sys.argv) > 3 else 20
small_mib = int(sys.argv[4]) if len(sys.argv) > 4 else 2
runs = int(sys.argv[5]) if len(sys.argv) > 5 else 3
ferryd, ferry = os.path.join(bins, "ferryd"), os.path.join(bins, "ferry")


def make(path, mib, seed):
    with open(path, "wb") as f:
        block = (seed.to_bytes(8, "little") * (1 << 17))  # 1 MiB, distinct per file
        for i in range(mib):
            f.write(block[:-8] + i.to_bytes(8, "little"))


def run(work, files, setting, n):
    data = os.path.join(work, f"data-{setting}-{n}")
    token = subprocess.run([ferryd, "token", "add", "bench", "--init", "--data", data],
                           check=True, capture_output=True, text=True).stdout.strip()
    server = subprocess.Popen([ferryd, "serve", "--data", data, "--listen", "127.0.0.1:0"],
                              stderr=subprocess.PIPE, text=True)
    try:
        # Bounded: the server prints its address within its first lines.
        addr = fp = None
        for _ in range(50):
            line = server.stderr.readline()
            m = re.search(r"listening on (\S+) \(certificate (sha256:\w+)\)", line)
            if m:
                addr, fp = m.group(1), m.group(2)
                break
        assert addr, "ferryd did not start"
        args = [ferry, "--server", addr, "--token", token, "--fingerprint", fp,
                "--state-dir", os.path.join(work, f"state-{setting}-{n}"),
                "upload", "--files", str(setting), *files]
        started = time.monotonic()
        client = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        small_done = 0.0
        for line in client.stderr:
            if re.search(r"small-\d+\.bin: .* in ", line):
                small_done = time.monotonic() - started
        client.wait(timeout=600)
        total = time.monotonic() - started
        assert client.returncode == 0, f"ferry exited {client.returncode}"
        return total, small_done
    finally:
        server.terminate()
        server.wait(timeout=30)
        # Each run starts alike: the last run's published gigabyte gone and written back.
        subprocess.run(["rm", "-rf", data], check=False)
        subprocess.run(["sync"], check=False)
        if os.environ.get("DROP_CACHES") == "1":
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")


def main():
    with tempfile.TemporaryDirectory() as work:
        huge = os.path.join(work, "huge.bin")
        make(huge, huge_mib, 1)
        smalls = []
        for i in range(small_count):
            p = os.path.join(work, f"small-{i:02}.bin")
            make(p, small_mib, 100 + i)
            smalls.append(p)
        mib = huge_mib + small_count * small_mib
        print(f"job: 1 x {huge_mib} MiB then {small_count} x {small_mib} MiB ({mib} MiB), loopback")
        for n in range(runs):
            for setting in (1, 4):
                total, small = run(work, [huge, *smalls], setting, n)
                print(f"--files {setting}: {total:6.2f} s  {mib / total:6.1f} MiB/s  "
                      f"last small file done at {small:6.2f} s")


main()
