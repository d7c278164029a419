#!/usr/bin/env python3
"""Service and version detection beside nmap -sV, on Debian's real servers.

A server namespace runs the servers of the -sV test (crates/portwarden-testkit/
helpers/real_servers.py: OpenSSH twice, one on 5432; nginx over TLS and plain; Redis twice, one in
protected mode; MariaDB; PostgreSQL with TLS; rsync; vsftpd with TLS), each on a random
port of 10.79.2.1. Alternating, REPEAT times each, from a client namespace:

    portwarden scan 10.79.2.1 -p PORTS -sV -oX -      (nmap's probe database loaded)
    nmap -sV -Pn -p PORTS -oX - 10.79.2.1

Medians of wall time, and per port what each tool called the service (the nmap-XML
service name, product and version).

    cargo build --release && python3 bench/scan_services.py [--repeat 5]

Needs root, iproute2, nmap and the servers' packages (.ci/run installs them).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netns import alternate, pair, teardown  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "..", "target", "release", "portwarden")
HELPER = os.path.join(HERE, "..", "crates", "portwarden-testkit", "helpers",
                      "real_servers.py")
SRV, CLI = "pwbv-s", "pwbv-c"
ADDR = "10.79.2.1"


def services(xml):
    out = {}
    for m in re.finditer(r'<port protocol="tcp" portid="(\d+)">(.*?)</port>', xml, re.S):
        s = re.search(r'<service ([^>]*?)/?>', m.group(2))
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', s.group(1))) if s else {}
        name = ("ssl/" if attrs.get("tunnel") == "ssl" else "") + attrs.get("name", "-")
        ver = " ".join(attrs[k] for k in ("product", "version") if k in attrs)
        out[int(m.group(1))] = f"{name} {ver}".strip()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--bin", default=BIN)
    a = ap.parse_args()
    pair(SRV, CLI, "pwbvs", "pwbvc", [f"{ADDR}/24"], "10.79.2.2/24")
    work = tempfile.mkdtemp(prefix="pw-bench-sv-")
    srv = subprocess.Popen(["ip", "netns", "exec", SRV, "python3", HELPER, work, ADDR],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        got = json.loads(srv.stdout.readline())
        if "error" in got:
            sys.exit(f"a server did not start: {got['error']}")
        names = {p: n for n, p in got["ports"].items()}
        ports = ",".join(str(p) for p in sorted(names))
        tools = {
            "portwarden": [a.bin, "scan", ADDR, "-p", ports, "-sV", "-q", "-oX", "-"],
            "nmap -sV": ["nmap", "-sV", "-Pn", "-p", ports, "-oX", "-", ADDR],
        }
        runs = alternate(CLI, tools, a.repeat)
        walls = {k: [w for w, _ in runs[k]] for k in tools}
        seen = {k: services(runs[k][-1][1]) for k in tools}
    finally:
        srv.stdin.close()
        srv.wait()
        teardown(SRV, CLI)
    print(f"-sV on {len(names)} real servers; {a.repeat} runs, medians")
    base = statistics.median(walls["nmap -sV"])
    for name in tools:
        m = statistics.median(walls[name])
        print(f"  {name:11} {m:7.2f} s  ({m / base:5.2f}x nmap)  "
              f"runs: {' '.join(f'{w:.2f}' for w in walls[name])}")
    print(f"  {'server':16} {'portwarden':44} nmap -sV")
    for p in sorted(names):
        print(f"  {names[p]:16} {seen['portwarden'].get(p, '-'):44} {seen['nmap -sV'].get(p, '-')}")


if __name__ == "__main__":
    main()
