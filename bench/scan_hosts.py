#!/usr/bin/env python3
"""Many-host scan benchmark beside nmap, in a namespace pair.

A /24 (10.79.1.0/24) seen from a client namespace: three addresses alive in a server
namespace, each with listeners on 22, 80 and 443; the other 251 addresses answer nothing
(no neighbour). Alternating, REPEAT times each, from the client:

    portwarden scan 10.79.1.0/24 --top 100 --json       (SYN scan with host discovery)
    nmap -T4 --top-ports 100 -n 10.79.1.0/24            (as root: ARP discovery, SYN scan)

Medians of wall time; each tool's hosts up and open ports (both must find 3 hosts and
9 open ports).

    cargo build --release && python3 bench/scan_hosts.py [--repeat 5]

Needs root, iproute2 and nmap. Creates and removes its own namespaces.
"""
import argparse
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netns import listen, pair  # noqa: E402
from netns import teardown as netns_teardown  # noqa: E402
from netns import alternate  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "..", "target", "release", "portwarden")
SRV, CLI = "pwbh-s", "pwbh-c"
ALIVE = ["10.79.1.1", "10.79.1.2", "10.79.1.3"]
PORTS = [22, 80, 443]


def teardown():
    netns_teardown(SRV, CLI)


def setup():
    pair(SRV, CLI, "pwbhs", "pwbhc", [f"{a}/24" for a in ALIVE], "10.79.1.254/24")
    return listen(SRV, ALIVE, PORTS)


def ours(out):
    d = json.loads(out)
    opened = {(p["addr"], p["port"]) for p in d["ports"] if p["state"] == "open"}
    return set(d["hosts"]), opened


def nmaps(out):
    up, opened = set(), set()
    for block in out.split("<host ")[1:]:
        m = re.search(r'<address addr="([0-9.]+)" addrtype="ipv4"', block)
        if not m or '<status state="up"' not in block:
            continue
        up.add(m.group(1))
        for port in re.findall(r'portid="(\d+)"><state state="open"', block):
            opened.add((m.group(1), int(port)))
    return up, opened


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--bin", default=BIN)
    a = ap.parse_args()
    srv = setup()
    tools = {
        "portwarden": ([a.bin, "scan", "10.79.1.0/24", "--top", "100", "--json", "-q"], ours),
        "nmap -T4": (["nmap", "-T4", "--top-ports", "100", "-n", "-oX", "-", "10.79.1.0/24"],
                     nmaps),
    }
    want_open = {(h, p) for h in ALIVE for p in PORTS}
    walls = {k: [] for k in tools}
    res = {k: [] for k in tools}
    try:
        runs = alternate(CLI, {k: cmd for k, (cmd, _) in tools.items()}, a.repeat)
        for name, (_, parse) in tools.items():
            for w, out in runs[name]:
                up, opened = parse(out)
                walls[name].append(w)
                # The scanning host's own address is up for both tools.
                up.discard("10.79.1.254")
                res[name].append((len(up & set(ALIVE)), len(up - set(ALIVE)),
                                  len(opened & want_open), len(opened - want_open)))
    finally:
        srv.kill()
        srv.wait()
        teardown()
    print(f"/24 with 3 live hosts (9 open ports), top 100 ports; {a.repeat} runs, medians")
    base = statistics.median(walls["nmap -T4"])
    for name in tools:
        m = statistics.median(walls[name])
        worst = min(res[name], key=lambda r: (r[0], r[2]))
        extra = max(r[1] + r[3] for r in res[name])
        print(f"  {name:11} {m:7.2f} s  ({m / base:5.2f}x nmap)  hosts up {worst[0]}/3, "
              f"open {worst[2]}/9 (worst run), false {extra}  "
              f"runs: {' '.join(f'{w:.2f}' for w in walls[name])}")


if __name__ == "__main__":
    main()
