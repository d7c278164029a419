#!/usr/bin/env python3
"""Firewall benchmarks, inside a network namespace this script creates and deletes:

1. `portwarden fw apply --confirm-within 0` of a policy whose service admits 10,000
   sources (render, `nft -c`, snapshot, one atomic `nft -f`, listing, ledger), median of
   REPEAT runs;
2. `portwarden grant --file` of N grants (one nft transaction, one ledger transaction),
   grants per second, median of REPEAT runs.

    cargo build --release && python3 bench/fw.py [--sources 10000] [--grants 5000] [--repeat 5]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sources", type=int, default=10000)
    ap.add_argument("--grants", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    ns = f"pw-bench-{os.getpid()}"
    d = tempfile.mkdtemp(prefix="pw-fw-bench-")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        srcs = [f"10.{(i >> 8) & 255}.{i & 255}.0/24" for i in range(a.sources)]
        pol = os.path.join(d, "p.toml")
        with open(pol, "w") as f:
            f.write('version = 1\n[host]\nmanagement = { ports = ["22/tcp"], from = ["10.0.0.0/8"] }\n')
            f.write('[[service]]\nname = "mirror"\ncatalog = "rsync"\nzone = "external"\n')
            f.write("allow_from = [" + ", ".join(f'"{s}"' for s in srcs) + "]\n")
        base = ["ip", "netns", "exec", ns, BIN, "--policy", pol, "--state-dir", os.path.join(d, "s"), "-q"]
        times = []
        for _ in range(a.repeat):
            t = time.perf_counter()
            subprocess.run(base + ["fw", "apply", "--confirm-within", "0"], check=True)
            times.append(time.perf_counter() - t)
        print(f"fw apply with {a.sources} allowed sources: median {statistics.median(times)*1000:.0f} ms over {a.repeat} runs")
        rates = []
        for r in range(a.repeat):
            gf = os.path.join(d, f"grants{r}.txt")
            with open(gf, "w") as f:
                for i in range(a.grants):
                    f.write(f"{20000 + (i % 1000)}/tcp 172.16.{(i // 1000) + r * 8}.{i % 250 + 1} 1h\n")
            t = time.perf_counter()
            subprocess.run(base + ["grant", "--file", gf], check=True)
            rates.append(a.grants / (time.perf_counter() - t))
        print(f"grant --file with {a.grants} grants: median {statistics.median(rates):.0f} grants/s over {a.repeat} runs")
    finally:
        subprocess.run(["ip", "netns", "del", ns])
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
