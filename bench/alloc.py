#!/usr/bin/env python3
"""Allocation throughput of the embedded SQLite store.

One process allocating N leases (`alloc --count N`, one transaction each), and 8
processes allocating N/8 each at once against the same store. Each configuration runs
REPEAT times on a fresh store; medians are reported. Durability: WAL with
synchronous=NORMAL (a commit survives a process crash; the last commits may be lost on
power failure).

    cargo build --release && python3 bench/alloc.py [--leases 16000] [--repeat 5]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "..", "target", "release", "portwarden")
POLICY = """version = 1
[[pool]]
name = "bulk"
range = "1100-19999"
lease_ttl = "1h"
[[service]]
name = "bulk"
pool = "bulk"
zone = "localhost"
"""


def run(procs, per, probe):
    d = tempfile.mkdtemp(prefix="pw-bench-")
    try:
        pol = os.path.join(d, "p.toml")
        with open(pol, "w") as f:
            f.write(POLICY)
        base = [BIN, "--policy", pol, "--state-dir", os.path.join(d, "s"), "alloc", "bulk"]
        # create the store outside the timed part
        subprocess.run(base + ["--count", "1", "--no-probe"], check=True, stdout=subprocess.DEVNULL)
        extra = [] if probe else ["--no-probe"]
        t = time.perf_counter()
        ps = [subprocess.Popen(base + ["--count", str(per)] + extra, stdout=subprocess.DEVNULL) for _ in range(procs)]
        for p in ps:
            if p.wait() != 0:
                raise SystemExit("alloc failed")
        return procs * per / (time.perf_counter() - t)
    finally:
        shutil.rmtree(d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--leases", type=int, default=16000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    print(f"{'configuration':<44} {'median allocations/s':>22}")
    for procs in (1, 8):
        for probe in (False, True):
            rates = [run(procs, a.leases // procs, probe) for _ in range(a.repeat)]
            name = f"{procs} process{'es' if procs > 1 else ''} x {a.leases // procs}" + (", bind probe" if probe else ", --no-probe")
            print(f"{name:<44} {statistics.median(rates):>22.0f}")


if __name__ == "__main__":
    main()
