#!/usr/bin/env python3
"""Ferry's benchmark: Ferry against the QUIC ceiling and tus on loopback, printed as markdown.

One command: `python3 bench/run.py` (see docs/benchmarks.md). It builds the release binaries,
installs tus (@tus/server, @tus/file-store, tus-js-client) from npm into a temporary folder,
and runs, with systems interleaved run by run (A B C A B C ...):

  1. clean loopback, SIZE_MIB (1024) x RUNS (5): ceiling, ferry, tus
  2. through ferry-relay, 25 ms each way, 0 / 0.1 / 1 % loss, RELAY_MIB (256) x RELAY_RUNS (3):
     ceiling (bbr), ferry cubic, ferry bbr   (tus speaks TCP and cannot cross the UDP relay)
  3. 20 concurrent uploads of 50 MiB: ferry, tus
  4. one BIG_MIB (10240) upload with ferry: peak RSS of both sides, time from the client's
     finish request to the server's reply
  5. kill -9 of the ferry client at 50 %, then the same command again: bytes re-sent

Every received file is checked against the source's SHA-256. Traffic stays on 127.0.0.1.
With DROP_CACHES=1 (root), the page cache is dropped before every run; then every run
writes and deletes twice its size of page cache first (see `warm`). CEILING_BIN names another
quic-ceiling binary.
Every process is started here and stopped by PID; every wait has a timeout.
"""

import hashlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"
# The ceiling binary; e.g. one built against crates.io's quinn (10 GSO segments), the "default
# quinn pair", rather than Ferry's vendored one (vendor/quinn/FERRY.md).
CEILING = Path(os.environ.get("CEILING_BIN", BIN / "quic-ceiling"))
RUNS = int(os.environ.get("RUNS", 5))
SIZE_MIB = int(os.environ.get("SIZE_MIB", 1024))
RELAY_MIB = int(os.environ.get("RELAY_MIB", 256))
RELAY_RUNS = int(os.environ.get("RELAY_RUNS", 3))
RELAY_TIMEOUT = int(os.environ.get("RELAY_TIMEOUT", 120))
BIG_MIB = int(os.environ.get("BIG_MIB", 10240))
SKIP = set(filter(None, os.environ.get("SKIP", "").split(",")))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def make_file(path, mib):
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    subprocess.run(["sync"], check=True)
    return sha256(path)


def warm(folder, mib):
    """Writes and deletes `mib` MiB of page cache. This VM gives memory it frees back to the host
    (free page reporting), and the first touch of such a page afterwards costs ~10 µs in whichever
    process writes it: without this, that cost fell on a run's page-cache writes at random (up to
    twice the server's CPU time; docs/benchmarks.md, "Performance III"). Every system gets it."""
    path = Path(folder) / "warm.bin"
    block = bytes(1 << 20)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)
    path.unlink()


def parse_time(path):
    """user+sys seconds and peak RSS (MiB) from /usr/bin/time -v output."""
    text = Path(path).read_text()
    get = lambda key: float(re.search(re.escape(key) + r": ([\d.]+)", text).group(1))
    return get("User time (seconds)") + get("System time (seconds)"), get("Maximum resident set size (kbytes)") / 1024


class Proc:
    """A process under /usr/bin/time -v, stopped by PID."""

    def __init__(self, args, time_file, stdout_file=None):
        self.time_file = time_file
        self.out = open(stdout_file, "w") if stdout_file else subprocess.DEVNULL
        self.p = subprocess.Popen(["/usr/bin/time", "-v", "-o", str(time_file)] + [str(a) for a in args],
                                  stdout=subprocess.PIPE, stderr=self.out, text=True)

    def line(self, prefix, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if line.startswith(prefix):
                return line[len(prefix):].strip()
            if not line and self.p.poll() is not None:
                break
        raise RuntimeError(f"no line starting {prefix!r}")

    def child_pid(self):
        out = subprocess.run(["pgrep", "-P", str(self.p.pid)], capture_output=True, text=True).stdout.split()
        return int(out[0]) if out else None

    def stop(self, sig=signal.SIGTERM, timeout=30):
        pid = self.child_pid()
        if pid:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            if pid:
                os.kill(pid, signal.SIGKILL)
            self.p.wait(10)


def run_client(args, time_file, timeout):
    start = time.monotonic()
    try:
        p = subprocess.run(["/usr/bin/time", "-v", "-o", str(time_file)] + [str(a) for a in args],
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - start, ""
    if p.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {p.stderr[-500:]}")
    return p, time.monotonic() - start, p.stdout


class Bench:
    def __init__(self, work):
        self.work = Path(work)
        self.rows = []
        self.n = 0

    def fresh(self, name, mib):
        # Start every run with no dirty pages from the run before: tus and the ceiling do not
        # sync what they write, and the kernel's writeback would otherwise land on whoever
        # runs next. (Ferry syncs its data, and that cost is inside its own time.)
        subprocess.run(["sync"], check=True)
        if os.environ.get("DROP_CACHES") == "1":
            # Root only: every run then starts from the same cold page cache (the source file
            # is read from disk by every system alike).
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        warm(self.work, min(2 * mib, 4096))
        self.n += 1
        d = self.work / f"{name}-{self.n}"
        d.mkdir()
        return d

    def relay(self, target, delay_ms, loss, d):
        if delay_ms is None:
            return None, target
        r = Proc([BIN / "ferry-relay", "--to", target, "--delay-ms", delay_ms, "--loss", loss, "--seed", self.n],
                 d / "relay.time", d / "relay.err")
        return r, r.line("relay on ")

    def ceiling(self, src, mib, congestion="bbr", delay_ms=None, loss=0.0, timeout=600):
        d = self.fresh("ceiling", mib)
        out = d / "out.bin"
        srv = Proc([CEILING, "recv", "--out", out, "--size", mib << 20, "--congestion", congestion],
                   d / "server.time", d / "server.err")
        addr = srv.line("listening on ")
        relay, target = self.relay(addr, delay_ms, loss, d)
        try:
            p, secs, _ = run_client([CEILING, "send", "--server", target, "--file", src,
                                     "--congestion", congestion], d / "client.time", timeout)
        finally:
            if relay:
                relay.stop(signal.SIGINT)
        if p is None:
            srv.stop(signal.SIGKILL)
            return dict(secs=None)
        srv.p.wait(60)
        return self.measured(d, secs, out, mib)

    def ferry_server(self, d, congestion, extra=()):
        token = subprocess.run([BIN / "ferryd", "token", "add", "bench", "--init", "--data", d / "data"],
                               capture_output=True, text=True, check=True).stdout.strip()
        srv = Proc([BIN / "ferryd", "serve", "--listen", "127.0.0.1:0", "--data", d / "data",
                    "--congestion", congestion, *extra], d / "server.time", d / "server.log")
        # ferryd prints its address on stderr; wait for the log line.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = re.search(r"listening on (\S+) \(certificate (\S+)\)", (d / "server.log").read_text())
            if m:
                return srv, token, m.group(1), m.group(2)
            time.sleep(0.05)
        raise RuntimeError("ferryd did not start")

    def ferry_cmd(self, target, token, fp, state, congestion, src, extra=()):
        return [BIN / "ferry", "--server", target, "--token", token, "--fingerprint", fp, "--state-dir", state,
                "--congestion", congestion, "upload", "--json", *extra, src]

    def ferry(self, src, mib, congestion="bbr", delay_ms=None, loss=0.0, timeout=600):
        d = self.fresh("ferry", mib)
        srv, token, addr, fp = self.ferry_server(d, congestion)
        relay, target = self.relay(addr, delay_ms, loss, d)
        try:
            p, secs, out = run_client(self.ferry_cmd(target, token, fp, d / "state", congestion, src),
                                      d / "client.time", timeout)
        finally:
            if relay:
                relay.stop(signal.SIGINT)
        srv.stop()
        if p is None:
            return dict(secs=None)
        m = re.search(r"published.*publish_ms\S*=(\d+)", re.sub(r"\x1b\[[0-9;]*m", "", (d / "server.log").read_text()))
        row = self.measured(d, secs, d / "data" / "files" / "bench" / Path(src).name, mib)
        row["finish_ms"] = int(m.group(1)) if m else None
        return row

    def tus_server(self, d):
        store = d / "store"
        store.mkdir()
        srv = Proc(["node", self.tus_dir / "server.mjs", store], d / "server.time", d / "server.err")
        return srv, srv.line("listening on "), store

    def tus(self, src, mib, timeout=600):
        d = self.fresh("tus", mib)
        srv, addr, store = self.tus_server(d)
        p, secs, out = run_client(["node", self.tus_dir / "client.mjs", src, f"http://{addr}/files/"],
                                  d / "client.time", timeout)
        srv.stop()
        if p is None:
            return dict(secs=None)
        return self.measured(d, secs, store / out.strip().rsplit("/", 1)[-1], mib)

    def measured(self, d, secs, received, mib):
        scpu, srss = parse_time(d / "server.time")
        ccpu, crss = parse_time(d / "client.time")
        ok = sha256(received) == self.digests[mib]
        if not ok:
            raise RuntimeError(f"{received} differs from the source")
        gib = mib / 1024
        return dict(secs=secs, mibs=mib / secs, cpu=scpu + ccpu, srss=srss, crss=crss,
                    scpu_gib=scpu / gib, ccpu_gib=ccpu / gib)


def table(title, results, mib):
    print(f"\n### {title}\n")
    print("| system | median MiB/s | min–max MiB/s | runs | CPU s (both sides, median) | CPU-s/GiB server | CPU-s/GiB client | server peak RSS | client peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, rows in results.items():
        done = [r for r in rows if r.get("secs")]
        if not done:
            print(f"| {name} | did not finish in the time limit | | {len(rows)} | | | | | |")
            continue
        rates = [r["mibs"] for r in done]
        note = "" if len(done) == len(rows) else f" ({len(rows) - len(done)} timed out)"
        print(f"| {name} | {statistics.median(rates):.0f} | {min(rates):.0f}–{max(rates):.0f} | {len(done)}{note} | "
              f"{statistics.median(r['cpu'] for r in done):.2f} | "
              f"{statistics.median(r['scpu_gib'] for r in done):.2f} | {statistics.median(r['ccpu_gib'] for r in done):.2f} | "
              f"{max(r['srss'] for r in done):.0f} MiB | "
              f"{max(r['crss'] for r in done):.0f} MiB |")
    sys.stdout.flush()


def main():
    subprocess.run(["cargo", "build", "--release", "--bins", "--manifest-path", ROOT / "Cargo.toml"], check=True)
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="ferry-bench.") as work:
        b = Bench(work)
        b.tus_dir = Path(work) / "tus"
        b.tus_dir.mkdir()
        for f in ["server.mjs", "client.mjs", "package.json"]:
            (b.tus_dir / f).write_text((ROOT / "bench" / "tus" / f).read_text())
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=b.tus_dir, check=True)
        b.digests = {}
        files = {}
        for mib in {SIZE_MIB, RELAY_MIB, 50}:
            files[mib] = Path(work) / f"src-{mib}.bin"
            b.digests[mib] = make_file(files[mib], mib)
        print(f"machine: {os.cpu_count()} cores, {os.uname().release}; {time.strftime('%Y-%m-%d %H:%M')}")

        if "clean" not in SKIP:
            res = {"ceiling (quinn, bbr)": [], "ferry (bbr)": [], "tus (@tus/server + tus-js-client)": []}
            for run in range(RUNS):
                log(f"clean run {run + 1}/{RUNS}")
                res["ceiling (quinn, bbr)"].append(b.ceiling(files[SIZE_MIB], SIZE_MIB))
                res["ferry (bbr)"].append(b.ferry(files[SIZE_MIB], SIZE_MIB))
                res["tus (@tus/server + tus-js-client)"].append(b.tus(files[SIZE_MIB], SIZE_MIB))
            table(f"{SIZE_MIB} MiB, clean loopback", res, SIZE_MIB)
            finish = [r["finish_ms"] for r in res["ferry (bbr)"] if r.get("finish_ms") is not None]
            if finish:
                print(f"\nferry finish (finish request to reply, server log): median {statistics.median(finish)} ms")

        if "relay" not in SKIP:
            for loss in [0.0, 0.001, 0.01]:
                res = {"ceiling (quinn, bbr) = what the relay passes": [], "ferry (cubic)": [], "ferry (bbr)": []}
                for run in range(RELAY_RUNS):
                    log(f"relay loss {loss} run {run + 1}/{RELAY_RUNS}")
                    kw = dict(delay_ms=25, loss=loss, timeout=RELAY_TIMEOUT)
                    res["ceiling (quinn, bbr) = what the relay passes"].append(b.ceiling(files[RELAY_MIB], RELAY_MIB, **kw))
                    res["ferry (cubic)"].append(b.ferry(files[RELAY_MIB], RELAY_MIB, congestion="cubic", **kw))
                    res["ferry (bbr)"].append(b.ferry(files[RELAY_MIB], RELAY_MIB, **kw))
                table(f"{RELAY_MIB} MiB through ferry-relay, 25 ms each way, {loss * 100:g} % loss "
                      f"(time limit {RELAY_TIMEOUT} s)", res, RELAY_MIB)

        if "many" not in SKIP:
            print("\n### 20 concurrent uploads of 50 MiB (one server)\n")
            print("| system | wall time | aggregate MiB/s | server peak RSS | all 20 verified |")
            print("| --- | --- | --- | --- | --- |")
            d = b.fresh("many-ferry", 20 * 50)
            srv, token, addr, fp = b.ferry_server(d, "bbr", ["--max-connections-per-ip", "64", "--max-uploads", "64"])
            copies = []
            for i in range(20):
                c = d / f"clip{i:02}.bin"
                os.link(files[50], c)
                copies.append(c)
            start = time.monotonic()
            procs = [subprocess.Popen([str(a) for a in b.ferry_cmd(addr, token, fp, d / f"state{i}", "bbr", c)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i, c in enumerate(copies)]
            codes = [p.wait(600) for p in procs]
            secs = time.monotonic() - start
            srv.stop()
            ok = all(c == 0 for c in codes) and all(
                sha256(d / "data" / "files" / "bench" / c.name) == b.digests[50] for c in copies)
            print(f"| ferry (bbr) | {secs:.2f} s | {1000 / secs:.0f} | {parse_time(d / 'server.time')[1]:.0f} MiB | {ok} |")
            d = b.fresh("many-tus", 20 * 50)
            srv, addr, store = b.tus_server(d)
            start = time.monotonic()
            procs = [subprocess.Popen(["node", str(b.tus_dir / "client.mjs"), str(files[50]), f"http://{addr}/files/"],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(20)]
            outs = [p.communicate(timeout=600)[0] for p in procs]
            secs = time.monotonic() - start
            srv.stop()
            ok = all(p.returncode == 0 for p in procs) and all(
                sha256(store / o.strip().rsplit("/", 1)[-1]) == b.digests[50] for o in outs)
            print(f"| tus | {secs:.2f} s | {1000 / secs:.0f} | {parse_time(d / 'server.time')[1]:.0f} MiB | {ok} |")
            sys.stdout.flush()

        if "kill" not in SKIP:
            d = b.fresh("kill", SIZE_MIB)
            srv, token, addr, fp = b.ferry_server(d, "bbr")
            src = files[SIZE_MIB]
            cmd = [str(a) for a in b.ferry_cmd(addr, token, fp, d / "state", "bbr", src, ["--limit-rate", "100M"])]
            first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            listing = [str(a) for a in [BIN / "ferry", "--server", addr, "--token", token, "--fingerprint", fp,
                                         "--state-dir", d / "probe", "list", "--json"]]
            held = 0
            deadline = time.monotonic() + 120
            while held < (SIZE_MIB << 20) // 2 and time.monotonic() < deadline:
                time.sleep(0.1)
                out = subprocess.run(listing, capture_output=True, text=True).stdout.strip()
                held = json.loads(out.splitlines()[0])["durable_bytes"] if out else 0
            first.kill()
            first.wait()
            out = subprocess.run(listing, capture_output=True, text=True).stdout.strip()
            held = json.loads(out.splitlines()[0])["durable_bytes"]
            rerun = subprocess.run(cmd[:-3] + [str(src)], capture_output=True, text=True, timeout=600)
            r = json.loads(rerun.stdout.strip().splitlines()[-1])
            srv.stop()
            print(f"\n### kill -9 of the client at 50 % of {SIZE_MIB} MiB, then the same command\n")
            print(f"durable when killed: {held} bytes; the re-run skipped {r['bytes_skipped']} and sent "
                  f"{r['bytes_sent']} (= {SIZE_MIB << 20} − skipped: {r['bytes_sent'] == (SIZE_MIB << 20) - r['bytes_skipped']}); "
                  f"chunks the killed run had in flight beyond what was durable: at most 8 × 4 MiB by design")

        if "big" not in SKIP:
            big = Path(work) / "big.bin"
            b.digests[BIG_MIB] = make_file(big, BIG_MIB)
            row = b.ferry(big, BIG_MIB, timeout=1800)
            print(f"\n### one {BIG_MIB} MiB upload\n")
            print(f"{row['mibs']:.0f} MiB/s over {row['secs']:.1f} s; server peak RSS {row['srss']:.0f} MiB, client peak RSS "
                  f"{row['crss']:.0f} MiB; finish request to reply {row['finish_ms']} ms; sha256 verified")


if __name__ == "__main__":
    main()
