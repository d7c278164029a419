#!/usr/bin/env python3
"""Policy validation time: `portwarden policy check` on generated policies.

Each policy has one pool and N services: fixed ports (TCP and UDP alternating, each
port once) for the first 60,000, pool placements for the rest, so every cross-field
rule (unique names, fixed-port overlaps, pools, balancer listeners, compliance) has
work to do and the file is valid. Each size runs REPEAT times; the median wall time of
the whole process (start, read, parse, validate) is reported. Release build.

    cargo build --release && python3 bench/policy.py [--services 10000,100000] [--repeat 5]
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


def policy(n):
    out = [
        "version = 1",
        "[[pool]]",
        'name = "dyn"',
        'range = "40000-65000"',
        "[[balance]]",
        'name = "front"',
        'listen = "127.0.0.1:35000"',
        'backends = ["127.0.0.1:35001"]',
    ]
    for i in range(n):
        out.append("[[service]]")
        out.append(f'name = "svc-{i}"')
        if i < 60000:
            out.append(f"port = {1 + i // 2}")
            out.append(f'protocol = "{"tcp" if i % 2 == 0 else "udp"}"')
        else:
            out.append('pool = "dyn"')
        out.append('zone = "localhost"')
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", default="10000,100000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--bin", default=BIN, help="the portwarden binary to time")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="pw-bench-policy-")
    try:
        print(f"{'services':>9} {'file size':>10} {'median':>10}  runs")
        for n in (int(x) for x in a.services.split(",")):
            path = os.path.join(d, f"p{n}.toml")
            with open(path, "w") as f:
                f.write(policy(n))
            times = []
            for _ in range(a.repeat):
                t = time.perf_counter()
                r = subprocess.run([a.bin, "policy", "check", path], capture_output=True)
                times.append(time.perf_counter() - t)
                if r.returncode != 0:
                    raise SystemExit(f"policy check failed:\n{r.stderr.decode()[:2000]}")
            size = os.path.getsize(path) / (1 << 20)
            runs = " ".join(f"{x:.3f}" for x in times)
            print(f"{n:>9} {size:>8.1f} MiB {statistics.median(times):>8.3f} s  {runs}")
    finally:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
