#!/usr/bin/env python3
"""Browser against `ferry` on loopback: one upload of SIZE MiB (default 1024) of the same file,
first with the release `ferry upload`, then through the upload page in Debian's Chromium
(headless, driven over chromedriver's WebDriver HTTP API), into one release `ferryd` with its web
listener. Prints one row each: throughput (from `ferry`'s start to its exit; from the click on
#upload to #status reading `complete`), CPU seconds of ferryd and of the client side (ferry, or
every Chromium process), and the peak RSS of the largest Chromium process (the renderer).
Both published files are checked against the source's SHA-256.

With PERF=1, `perf record` follows ferryd through each upload and the top symbols of each
(self time, TOP of them, default 12) are printed after the table, as bench/profile.sh does.

Usage: [PERF=1] [BIN=DIR] bench/browser.py [SIZE_MIB]   (needs chromium and chromium-driver installed)
       bench/browser.py page LINK FILE   (the page's upload alone; bench/lossy.sh SYSTEM=browser)
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import make_file, sha256  # noqa: E402  (bench/run.py: random file, its SHA-256)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BIN") or os.path.join(ROOT, "target", "release")
TICK = os.sysconf("SC_CLK_TCK")


def perf_start(pid, out):
    """`perf record` on `pid` into `out` when PERF=1, else None."""
    if not os.environ.get("PERF"):
        return None
    perf = subprocess.Popen(["perf", "record", "-q", "-F", "499", "-g", "-o", out, "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return perf


def perf_stop(perf, out):
    """Stops `perf record` and returns the top symbols of `out` (self time), one per line."""
    if perf is None:
        return ""
    perf.send_signal(2)
    perf.wait()
    report = subprocess.run(["perf", "report", "-i", out, "--no-children", "-g", "none", "--sort", "symbol",
                             "--stdio"], capture_output=True, text=True).stdout
    lines = [re.sub(r" +- +- *$", "", l).rstrip() for l in report.splitlines() if re.match(r"^ +[0-9.]+%", l)]
    return "\n".join(lines[:int(os.environ.get("TOP", "12"))])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return 0.0


def chromium_pids():
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            if b"/chromium" in cmd.split(b"\0")[0]:
                out.append(int(pid))
    return out


def hwm_kib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class WebDriver:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"
        self.session = None

    def call(self, method, path, body=None):
        url = self.base + (path if path == "/session" else f"/session/{self.session}{path}")
        data = json.dumps(body if body is not None else {}).encode() if method == "POST" else None
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read() or b"null").get("value")

    def element(self, css):
        found = self.call("POST", "/element", {"using": "css selector", "value": css})
        return found["element-6066-11e4-a52e-4f735466cecf"]

    def text(self, css):
        return self.call("GET", f"/element/{self.element(css)}/text")


def page_upload(link, path, work, procs):
    """Opens `link` in a headless Chromium over chromedriver, uploads `path` through the page;
    returns (seconds from the click to `complete`, the last status, CPU-s of every Chromium
    process over the upload, peak RSS in KiB of the largest one)."""
    driver_port = free_port()
    driver = subprocess.Popen(["chromedriver", f"--port={driver_port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(driver)
    wd = WebDriver(driver_port)
    for _ in range(150):
        try:
            if wd.call("GET", "/status")["ready"]:
                break
        except Exception:
            time.sleep(0.1)
    binary = "/usr/lib/chromium/chromium" if os.path.exists("/usr/lib/chromium/chromium") else "/usr/bin/chromium"
    profile = os.path.join(work, "profile")
    wd.session = wd.call("POST", "/session", {"capabilities": {"alwaysMatch": {"browserName": "chrome",
        "goog:chromeOptions": {"binary": binary, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                               "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                               "--ignore-certificate-errors"] + os.environ.get("CHROMIUM_ARGS", "").split()}}}})["sessionId"]
    wd.call("POST", "/url", {"url": link})
    for _ in range(600):
        if wd.text("#status") != "loading":
            break
        time.sleep(0.1)
    wd.call("POST", f"/element/{wd.element('#files')}/value", {"text": path})
    before = {pid: cpu_seconds(pid) for pid in chromium_pids()}
    start = time.time()
    wd.call("POST", f"/element/{wd.element('#upload')}/click")
    status = ""
    while time.time() - start < 1800:
        status = wd.text("#status")
        if status == "complete" or status.startswith("failed"):
            break
        time.sleep(0.05)
    took = time.time() - start
    pids = chromium_pids()
    browser_cpu = sum(cpu_seconds(p) - before.get(p, 0.0) for p in pids)
    rss = max((hwm_kib(p) for p in pids), default=0)
    try:
        wd.call("DELETE", "")
    except Exception:
        pass
    driver.kill()
    driver.wait()
    return took, status, browser_cpu, rss


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "page":
        # bench/browser.py page LINK FILE: only the page's upload (bench/lossy.sh runs it in a
        # network namespace); prints seconds, status, Chromium CPU-s.
        work = tempfile.mkdtemp(prefix="ferry-page.", dir="/var/tmp")
        procs = []
        try:
            took, status, cpu, _ = page_upload(sys.argv[2], sys.argv[3], work, procs)
            print(f"{took:.2f} {status.replace(' ', '_')} {cpu:.2f}")
        finally:
            for p in procs:
                p.kill()
            shutil.rmtree(work, ignore_errors=True)
        return

    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    subprocess.run(["cargo", "build", "--release", "--bins", "--manifest-path", os.path.join(ROOT, "Cargo.toml")],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tempfile.mkdtemp(prefix="ferry-bench.", dir="/var/tmp")
    procs = []
    try:
        src = os.path.join(work, "src.bin")
        want = make_file(src, mib)
        data = os.path.join(work, "data")
        token = subprocess.run([f"{BIN}/ferryd", "token", "add", "alice", "--init", "--data", data],
                               check=True, capture_output=True, text=True).stdout.strip()
        web_port = free_port()
        log = os.path.join(work, "server.log")
        server = subprocess.Popen([f"{BIN}/ferryd", "serve", "--data", data, "--listen", "127.0.0.1:0",
                                   "--web-listen", f"127.0.0.1:{web_port}"],
                                  stderr=open(log, "w"))
        procs.append(server)
        addr = fingerprint = None
        deadline = time.time() + 60
        while time.time() < deadline and addr is None:
            m = re.search(r"ferryd: listening on (\S+) \(certificate (\S+)\)", open(log).read())
            if m:
                addr, fingerprint = m.groups()
            else:
                time.sleep(0.1)
        link = subprocess.run([f"{BIN}/ferryd", "link", "alice", "--data", data,
                               "--web-url", f"https://127.0.0.1:{web_port}"],
                              check=True, capture_output=True, text=True).stdout.strip()
        subprocess.run(["sync"])
        subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], stderr=subprocess.DEVNULL)

        # 1. ferry upload.
        server_cpu = cpu_seconds(server.pid)
        perf = perf_start(server.pid, os.path.join(work, "ferry.perf"))
        start = time.time()
        ferry = subprocess.Popen([f"{BIN}/ferry", "--server", addr, "--token", token, "--fingerprint", fingerprint,
                                  "--state-dir", os.path.join(work, "state"), "upload", src],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(ferry.pid, 0)
        took = time.time() - start
        profiles = [("ferry", perf_stop(perf, os.path.join(work, "ferry.perf")))]
        rows = [("ferry", took, cpu_seconds(server.pid) - server_cpu, usage.ru_utime + usage.ru_stime,
                 usage.ru_maxrss, status == 0 and sha256(os.path.join(data, "files", "alice", "src.bin")) == want)]

        # 2. the page in Chromium.
        subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], stderr=subprocess.DEVNULL)
        page_src = os.path.join(work, "page.bin")
        os.link(src, page_src)
        server_cpu = cpu_seconds(server.pid)
        perf = perf_start(server.pid, os.path.join(work, "browser.perf"))
        took, status, browser_cpu, rss = page_upload(link, page_src, work, procs)
        profiles.append(("browser", perf_stop(perf, os.path.join(work, "browser.perf"))))
        ok = status == "complete" and sha256(os.path.join(data, "files", "alice", "page.bin")) == want
        rows.append(("browser", took, cpu_seconds(server.pid) - server_cpu, browser_cpu, rss, ok))

        print(f"{mib} MiB on loopback, one file")
        print(f"{'client':8} {'MiB/s':>8} {'s':>7} {'ferryd CPU-s':>13} {'client CPU-s':>13} {'client peak RSS':>16}  same bytes")
        for name, took, scpu, ccpu, rss, ok in rows:
            print(f"{name:8} {mib / took:8.1f} {took:7.2f} {scpu:13.2f} {ccpu:13.2f} {rss / 1024:12.0f} MiB  {ok}")
        for name, top in profiles:
            if top:
                print(f"== ferryd during the {name} upload (self time)\n{top}")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
