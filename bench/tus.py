#!/usr/bin/env python3
"""tus-js-client against ferryd's tus endpoint and against the reference server, @tus/server,
on loopback, interleaved run by run (A B C A B C ...), printed as markdown.

One command: `python3 bench/tus.py` (see docs/benchmarks.md, "tus"). It builds the release
binaries, installs @tus/server 2.4.5 + @tus/file-store 2.1.1 and tus-js-client 4.3.1 from npm
into a temporary folder (bench/tus/), makes one SIZE_MIB (1024) file, and runs RUNS (5) times:

  - ferryd, tus over HTTPS (its web listener, `--web-listen`): every chunk SHA-256-hashed and
    fsynced before the PATCH is answered;
  - @tus/server over HTTPS (Node's https with the same certificate): no hashing, no fsync;
  - @tus/server over plain HTTP (its usual deployment behind a TLS-terminating proxy).

The client is the same in all three: tus-js-client with 8 MiB PATCHes. Each side runs under
/usr/bin/time -v (CPU seconds user+sys, peak RSS); every received file is checked against the
source's SHA-256. Traffic stays on 127.0.0.1 and ::1 (`localhost`). Every process is started
here and stopped by PID; every wait has a timeout. Needs node >= 20.19 (@tus/server 2).
"""

import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BIN, ROOT, Proc, log, make_file, parse_time, run_client, sha256, table  # noqa: E402

RUNS = int(os.environ.get("RUNS", 5))
SIZE_MIB = int(os.environ.get("SIZE_MIB", 1024))


class TusBench:
    def __init__(self, work, digest):
        self.work = Path(work)
        self.digest = digest
        self.n = 0

    def fresh(self, name):
        # No dirty pages from the run before land on the next one (@tus/server does not sync).
        subprocess.run(["sync"], check=True)
        self.n += 1
        d = self.work / f"{name}-{self.n}"
        d.mkdir()
        return d

    def measured(self, d, secs, received):
        if sha256(received) != self.digest:
            raise RuntimeError(f"{received} differs from the source")
        scpu, srss = parse_time(d / "server.time")
        ccpu, crss = parse_time(d / "client.time")
        gib = SIZE_MIB / 1024
        return dict(secs=secs, mibs=SIZE_MIB / secs, cpu=scpu + ccpu, srss=srss, crss=crss,
                    scpu_gib=scpu / gib, ccpu_gib=ccpu / gib)

    def ferryd(self, src):
        d = self.fresh("ferryd")
        data = d / "data"
        token = subprocess.run([BIN / "ferryd", "token", "add", "bench", "--init", "--data", data],
                               capture_output=True, text=True, check=True).stdout.strip()
        srv = Proc([BIN / "ferryd", "serve", "--listen", "127.0.0.1:0", "--web-listen", "127.0.0.1:0",
                    "--data", data], d / "server.time", d / "server.log")
        deadline = time.monotonic() + 60
        port = None
        while time.monotonic() < deadline and port is None:
            m = re.search(r"upload page on https://[^:]+:(\d+)", (d / "server.log").read_text())
            port = m.group(1) if m else None
            time.sleep(0.05)
        if port is None:
            raise RuntimeError("ferryd did not start")
        env = dict(os.environ, NODE_EXTRA_CA_CERTS=str(data / "tls" / "cert.pem"))
        p, secs, _ = run_client(["env", f"NODE_EXTRA_CA_CERTS={env['NODE_EXTRA_CA_CERTS']}", "node",
                                 self.tus_dir / "client.mjs", src, f"https://localhost:{port}/files/", token],
                                d / "client.time", 600)
        srv.stop()
        if p is None:
            return dict(secs=None)
        return self.measured(d, secs, data / "files" / "bench" / Path(src).name)

    def reference(self, src, tls):
        d = self.fresh("tus-tls" if tls else "tus")
        store = d / "store"
        store.mkdir()
        args = ["node", self.tus_dir / "server.mjs", store, "127.0.0.1"]
        if tls:
            args += [self.cert, self.key]
        srv = Proc(args, d / "server.time", d / "server.err")
        addr = srv.line("listening on ")
        port = addr.rsplit(":", 1)[1]
        url = f"https://localhost:{port}/files/" if tls else f"http://{addr}/files/"
        cmd = ["node", self.tus_dir / "client.mjs", src, url]
        if tls:
            cmd = ["env", f"NODE_EXTRA_CA_CERTS={self.cert}"] + cmd
        p, secs, out = run_client(cmd, d / "client.time", 600)
        srv.stop()
        if p is None:
            return dict(secs=None)
        return self.measured(d, secs, store / out.strip().rsplit("/", 1)[-1])


def main():
    subprocess.run(["cargo", "build", "--release", "--bins", "--manifest-path", ROOT / "Cargo.toml"], check=True)
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="ferry-tus-bench.") as work:
        tus_dir = Path(work) / "tus"
        tus_dir.mkdir()
        for f in ["server.mjs", "client.mjs", "package.json"]:
            (tus_dir / f).write_text((ROOT / "bench" / "tus" / f).read_text())
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=tus_dir, check=True)
        src = Path(work) / "src.bin"
        b = TusBench(work, make_file(src, SIZE_MIB))
        b.tus_dir = tus_dir
        # The reference server's certificate: one made by ferryd (localhost in its names).
        certs = Path(work) / "certs"
        subprocess.run([BIN / "ferryd", "token", "add", "x", "--init", "--data", certs],
                       capture_output=True, check=True)
        srv = Proc([BIN / "ferryd", "serve", "--listen", "127.0.0.1:0", "--data", certs],
                   Path(work) / "certs.time", Path(work) / "certs.log")
        deadline = time.monotonic() + 60
        while not (certs / "tls" / "key.pem").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        srv.stop()
        b.cert, b.key = certs / "tls" / "cert.pem", certs / "tls" / "key.pem"
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
        print(f"machine: {os.cpu_count()} cores, {os.uname().release}, node {node}; {time.strftime('%Y-%m-%d %H:%M')}")
        res = {"ferryd tus (HTTPS; SHA-256 + fsync before each answer)": [],
               "@tus/server (HTTPS, same certificate)": [],
               "@tus/server (plain HTTP)": []}
        for run in range(RUNS):
            log(f"run {run + 1}/{RUNS}")
            res["ferryd tus (HTTPS; SHA-256 + fsync before each answer)"].append(b.ferryd(src))
            res["@tus/server (HTTPS, same certificate)"].append(b.reference(src, True))
            res["@tus/server (plain HTTP)"].append(b.reference(src, False))
        table(f"tus-js-client, {SIZE_MIB} MiB, loopback, {RUNS} runs interleaved", res, SIZE_MIB)


if __name__ == "__main__":
    main()
