#!/usr/bin/env python3
"""Scanner benchmark beside nmap, on loopback only.

1. Full 1-65535 TCP connect scan of 127.0.0.1 with 200 random listeners held by a helper
   process: `portwarden scan 127.0.0.1 -p- --json` vs `nmap -sT -T5 -n -Pn -p- 127.0.0.1`,
   alternating, REPEAT times each; medians of wall time and peak RSS, and each tool's
   accuracy (listeners missed, ports reported open that nothing listens on).
2. Service detection of 4 ports (SSH banner, HTTP, Redis-like, silent):
   `portwarden scan -s` vs `nmap -sV` (once each; nmap waits out the silent port).

    cargo build --release && python3 bench/scan.py [--repeat 11] [--skip-sv]
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "..", "target", "release", "portwarden")


def run_measured(cmd):
    """Runs cmd; returns (wall seconds, peak RSS KiB, stdout).

    The peak is the child's VmHWM from /proc, polled until it exits: wait4's ru_maxrss
    would report this Python process's size, which the kernel folds into the child's
    maximum when the forked copy execs."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    t = time.perf_counter()
    chunks = []
    hwm = 0

    def reader():
        chunks.append(p.stdout.read())

    th = threading.Thread(target=reader)
    th.start()
    status = f"/proc/{p.pid}/status"
    while p.poll() is None:
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.002)
    wall = time.perf_counter() - t
    th.join()
    return wall, hwm, b"".join(chunks).decode(errors="replace")


def wildcard_listeners():
    out = subprocess.run(["ss", "-tlnH"], capture_output=True, text=True).stdout
    ports = set()
    for line in out.splitlines():
        local = line.split()[3]
        if local.startswith(("0.0.0.0:", "*:", "[::]:", "127.0.0.1:")):
            ports.add(int(local.rsplit(":", 1)[1]))
    return ports


def hold_listeners(n, w):
    """Child: n listeners on random 127.0.0.1 ports; prints them, holds them."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        socks.append(s)
    os.write(w, (",".join(str(s.getsockname()[1]) for s in socks) + "\n").encode())
    signal.pause()


def nmap_open(text):
    return {int(m) for m in re.findall(r"(\d+)/open/tcp", text)}


def pw_open(text):
    import json
    return {p["port"] for p in json.loads(text)["ports"] if p["state"] == "open"}


def full_scan(repeat):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            hold_listeners(200, w)
        finally:
            os._exit(0)
    mine = {int(x) for x in os.read(r, 65536).decode().strip().split(",")}
    try:
        time.sleep(0.2)
        rows = {"portwarden": [], "nmap": []}
        acc = {"portwarden": [], "nmap": []}
        for _ in range(repeat):
            others = wildcard_listeners()
            for name, cmd, parse in (
                ("portwarden", [BIN, "scan", "127.0.0.1", "-p-", "--json", "-q"], pw_open),
                ("nmap", ["nmap", "-sT", "-T5", "-n", "-Pn", "-p-", "127.0.0.1", "-oG", "-"], nmap_open),
            ):
                wall, rss, out = run_measured(cmd)
                found = parse(out)
                missed = len(mine - found)
                false_open = len(found - mine - others)
                rows[name].append((wall, rss))
                acc[name].append((missed, false_open))
        print("full TCP scan of 127.0.0.1 (65535 ports, 200 listeners), %d runs each" % repeat)
        med = {}
        for name in rows:
            w = statistics.median(x[0] for x in rows[name])
            m = statistics.median(x[1] for x in rows[name])
            missed = max(a[0] for a in acc[name])
            false_open = max(a[1] for a in acc[name])
            med[name] = w
            print(f"  {name:<11} median {w*1000:7.1f} ms   peak RSS {m/1024:5.1f} MiB   worst run: {missed} missed, {false_open} false open")
        print(f"  ratio portwarden/nmap: {med['portwarden']/med['nmap']:.2f}x")
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def fake(kind):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)

    def serve():
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            def handle(c=c):
                try:
                    c.settimeout(30)
                    if kind == "ssh":
                        c.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
                        c.recv(1024)
                    elif kind == "http":
                        if c.recv(1024):
                            c.sendall(b"HTTP/1.0 200 OK\r\nServer: fake\r\nContent-Length: 0\r\n\r\n")
                    elif kind == "redis":
                        data = c.recv(1024)
                        if data.upper().startswith(b"PING") or b"PING" in data.upper():
                            c.sendall(b"+PONG\r\n")
                        elif data:
                            c.sendall(b"-ERR unknown command\r\n")
                    else:
                        c.recv(1024)
                except OSError:
                    pass
                finally:
                    c.close()
            threading.Thread(target=handle, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return s.getsockname()[1]


def service_detection():
    ports = {k: fake(k) for k in ("ssh", "http", "redis", "silent")}
    plist = ",".join(str(p) for p in ports.values())
    print("service detection of 4 ports:", ", ".join(f"{k}={v}" for k, v in ports.items()))
    wall, _, out = run_measured([BIN, "scan", "127.0.0.1", "-s", "-p", plist, "--json", "-q"])
    import json
    doc = json.loads(out)
    got = {p["port"]: p.get("service") if p.get("method") == "probed" else None for p in doc["ports"]}
    print(f"  portwarden -s  {wall:6.2f} s  " + ", ".join(f"{k}:{got.get(v)}" for k, v in ports.items()))
    wall, _, out = run_measured(["nmap", "-sV", "-n", "-Pn", "-p", plist, "127.0.0.1", "-oG", "-"])
    ids = {int(p): name for p, name in re.findall(r"(\d+)/open/tcp//([^/]*)/", out)}
    print(f"  nmap -sV       {wall:6.2f} s  " + ", ".join(f"{k}:{ids.get(v) or None}" for k, v in ports.items()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--skip-sv", action="store_true")
    a = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    full_scan(a.repeat)
    if not a.skip_sv:
        service_detection()


if __name__ == "__main__":
    main()
