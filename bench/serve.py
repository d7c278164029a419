#!/usr/bin/env python3
"""The daemon: /metrics scrape time beside `ss -tanp` / `ss -tan`, and GET /api/v1/sockets
latency under 50 concurrent keep-alive clients, on a host holding HOLDERS x CONNS
established loopback connection pairs (each holder process: one listener, CONNS clients
from its own 127.0.0.x, their accepted ends; 2 x CONNS + 1 descriptors, under the
20,000 limit). Everything started here is stopped by its PID; holders exit by
themselves after 15 minutes.

    cargo build --release && python3 bench/serve.py [--holders 4] [--conns 5000] \
        [--scrapes 50] [--clients 50] [--requests 10]
"""
import argparse
import http.client
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("PORTWARDEN_BIN", os.path.join(HERE, "..", "target", "release", "portwarden"))
HOLD = r"""
import socket, sys, time
idx, n = int(sys.argv[1]), int(sys.argv[2])
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0)); ls.listen(1024); port = ls.getsockname()[1]
held = []
for _ in range(n):
    c = socket.socket(); c.bind((f"127.0.0.{2 + idx}", 0)); c.connect(("127.0.0.1", port))
    held += [c, ls.accept()[0]]
print("ready", flush=True)
time.sleep(900)
"""


def pct(xs, q):
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(q * len(s) + 0.999999) - 1))]


def show(name, xs):
    ms = [x * 1000 for x in xs]
    print(f"  {name:26s} n={len(ms):4d} min={min(ms):8.2f} median={statistics.median(ms):8.2f} "
          f"p90={pct(ms, .9):8.2f} p99={pct(ms, .99):8.2f} max={max(ms):8.2f} ms")
    return statistics.median(ms)


def timed(cmd, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True, timeout=60)
        out.append(time.perf_counter() - t)
    return out


def scrapes(port, n):
    total, gauge = [], []
    for _ in range(n):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        t = time.perf_counter()
        c.request("GET", "/metrics")
        body = c.getresponse().read().decode()
        total.append(time.perf_counter() - t)
        c.close()
        gauge.append(float(re.search(r"^portwarden_scrape_duration_seconds (\S+)", body, re.M).group(1)))
    return total, gauge


def load(port, token, clients, per, path="/api/v1/sockets"):
    lat, codes, errors, lock = [], {}, [], threading.Lock()
    start, deadline = threading.Barrier(clients), time.monotonic() + 300

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        start.wait()
        for _ in range(per):
            if time.monotonic() > deadline:
                break
            t = time.perf_counter()
            try:
                conn.request("GET", path, headers={"Authorization": "Bearer " + token})
                r = conn.getresponse()
                r.read()
                with lock:
                    lat.append(time.perf_counter() - t)
                    codes[r.status] = codes.get(r.status, 0) + 1
            except Exception as e:  # counted, the run goes on
                with lock:
                    errors.append(repr(e))
                conn.close()
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    print(f"  {path}: {len(lat)} answers in {wall:.1f} s ({len(lat) / wall:.1f}/s), status {codes}, {len(errors)} errors")
    show("latency", lat)


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(l.split()[1] for l in f if l.startswith("VmRSS")) + " kB"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--holders", type=int, default=4)
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--scrapes", type=int, default=50)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=10)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="pw-bench-serve-")
    state = os.path.join(tmp, "state")
    token = subprocess.run([BIN, "--state-dir", state, "token", "create", "bench", "--role", "read"],
                           capture_output=True, text=True, check=True).stdout.strip()
    api, metrics = 19317, 19318
    daemon = subprocess.Popen([BIN, "--state-dir", state, "serve", "--listen", f"127.0.0.1:{api}",
                               "--metrics-listen", f"127.0.0.1:{metrics}", "--log-format", "json"],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "serve.log"), "w"))
    holders = []
    try:
        for _ in range(100):
            try:
                scrapes(metrics, 1)
                break
            except OSError:
                time.sleep(0.1)
        for phase in ("baseline", f"{a.holders} x {a.conns} pairs held"):
            if holders:
                print(f"-- {phase}: {subprocess.run(['ss', '-s'], capture_output=True, text=True).stdout.splitlines()[1]}")
            else:
                print(f"-- {phase}")
            total, gauge = scrapes(metrics, a.scrapes)
            m = show("scrape (HTTP)", total)
            show("scrape (its own gauge)", gauge)
            tanp = show("ss -tanp", timed(["ss", "-tanp"], a.scrapes))
            tan = show("ss -tan", timed(["ss", "-tan"], a.scrapes))
            print(f"  scrape / ss -tanp = {m / tanp:.2f}, scrape / ss -tan = {m / tan:.2f}")
            load(api, token, a.clients, a.requests)
            print(f"  daemon VmRSS {rss(daemon.pid)}")
            if not holders:
                for i in range(a.holders):
                    p = subprocess.Popen([sys.executable, "-c", HOLD, str(i), str(a.conns)],
                                         stdout=subprocess.PIPE, text=True)
                    holders.append(p)
                for p in holders:
                    assert p.stdout.readline().strip() == "ready"
    finally:
        for p in holders:
            p.send_signal(signal.SIGKILL)
            p.wait()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)


if __name__ == "__main__":
    main()
