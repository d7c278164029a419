#!/usr/bin/env python3
"""Scanner benchmark on a firewalled host, beside nmap, in a namespace pair.

A server namespace (10.79.0.1) whose nft table drops every packet but those to two open
ports (held by listeners) and a client namespace (10.79.0.2) joined by a veth pair. From
the client, alternating, REPEAT times each:

    portwarden scan 10.79.0.1 -p RANGE --json -sT      (and -sS)
    nmap -sT -T4 -n -Pn -p RANGE 10.79.0.1
    nmap -sS -T4 -n -Pn -p RANGE 10.79.0.1          (--syn)

Medians of wall time, and each tool's accuracy: open ports found, ports reported open
that are not, ports reported as anything but filtered (the rest must be filtered).

    cargo build --release && python3 bench/scan_filtered.py [--ports 1000-1999] [--repeat 5]
    python3 bench/scan_filtered.py --ports 1-65535 --repeat 3 --syn

Needs root, iproute2, nftables and nmap. Creates and removes its own namespaces.
"""
import argparse
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netns import listen, pair, sh  # noqa: E402
from netns import teardown as netns_teardown  # noqa: E402
from netns import alternate  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "..", "target", "release", "portwarden")
SRV, CLI = "pwbf-s", "pwbf-c"
SADDR, CADDR = "10.79.0.1", "10.79.0.2"


def setup(open_ports):
    pair(SRV, CLI, "pwbfs", "pwbfc", [f"{SADDR}/24"], f"{CADDR}/24")
    ports = ", ".join(str(p) for p in open_ports)
    rules = f"""
table inet pwbf {{
  chain input {{
    type filter hook input priority filter; policy drop;
    iif lo accept
    ct state established,related accept
    tcp dport {{ {ports} }} accept
  }}
}}
"""
    sh("ip", "netns", "exec", SRV, "nft", "-f", "-", input=rules.encode())
    return listen(SRV, ["0.0.0.0"], open_ports)


def teardown():
    netns_teardown(SRV, CLI)


def ours(out):
    """(open, not-filtered-but-listed) from `scan --json`."""
    doc = json.loads(out)
    opened, other = set(), set()
    for p in doc["ports"]:
        if p["state"] == "open":
            opened.add(p["port"])
        elif p["state"] != "filtered":
            other.add(p["port"])
    if doc.get("closed"):
        other.add(-1)
    return opened, other


def nmaps(out):
    opened = {int(m) for m in re.findall(r'portid="(\d+)"><state state="open"', out)}
    other = {int(p) for p, s in re.findall(r'portid="(\d+)"><state state="([a-z|]+)"', out)
             if s not in ("open", "filtered")}
    # Ports nmap folds into <extraports state="closed"> count as not filtered too.
    closed = sum(int(n) for n in re.findall(r'<extraports state="closed" count="(\d+)"', out))
    return opened, other | ({-1} if closed else set())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ports", default="1000-1999")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--syn", action="store_true", help="also nmap -sS -T4")
    ap.add_argument("--bin", default=BIN)
    ap.add_argument("--extra", default="", help="extra portwarden scan arguments")
    a = ap.parse_args()
    lo, hi = (int(x) for x in a.ports.split("-"))
    span = hi - lo + 1
    open_ports = [lo + span // 3, lo + (2 * span) // 3]
    srv = setup(open_ports)
    tools = {
        "portwarden -sT": ([a.bin, "scan", SADDR, "-p", a.ports, "--json", "-q", "-sT", "-Pn"]
                           + a.extra.split(), ours),
        "portwarden -sS": ([a.bin, "scan", SADDR, "-p", a.ports, "--json", "-q", "-sS", "-Pn"]
                           + a.extra.split(), ours),
        "nmap -sT -T4": (["nmap", "-sT", "-T4", "-n", "-Pn", "-p", a.ports, "-oX", "-", SADDR],
                         nmaps),
    }
    if a.syn:
        tools["nmap -sS -T4"] = (["nmap", "-sS", "-T4", "-n", "-Pn", "-p", a.ports, "-oX", "-",
                                  SADDR], nmaps)
    walls = {k: [] for k in tools}
    acc = {k: [] for k in tools}
    try:
        runs = alternate(CLI, {k: cmd for k, (cmd, _) in tools.items()}, a.repeat)
        for name, (_, parse) in tools.items():
            for w, out in runs[name]:
                opened, other = parse(out)
                walls[name].append(w)
                acc[name].append((len(opened & set(open_ports)), len(opened - set(open_ports)),
                                  len(other)))
    finally:
        srv.kill()
        srv.wait()
        teardown()
    print(f"{span} ports of a DROP-firewalled host, 2 open; {a.repeat} runs each, medians")
    base = statistics.median(walls["nmap -sT -T4"])
    for name in tools:
        m = statistics.median(walls[name])
        found = min(x[0] for x in acc[name])
        false_open = max(x[1] for x in acc[name])
        not_filtered = max(x[2] for x in acc[name])
        print(f"  {name:15} {m:8.2f} s  ({m / base:5.2f}x nmap -sT)  open found {found}/2 "
              f"(worst run), false open {false_open}, other states {not_filtered}  "
              f"runs: {' '.join(f'{w:.2f}' for w in walls[name])}")


if __name__ == "__main__":
    main()
