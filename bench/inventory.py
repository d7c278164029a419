#!/usr/bin/env python3
"""Socket-inventory benchmark: portwarden ls beside ss, on a host holding ~20,000
established loopback TCP connections.

Two helper processes hold the connections (the per-process descriptor limit here is
20,000): one accepts and holds the server ends, the other holds the client ends. Each
command then runs REPEAT times, alternating with its ss peer, output to /dev/null, and
the medians are reported with their ratio.

    cargo build --release && python3 bench/inventory.py [--conns 19900] [--repeat 21]
"""
import argparse
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "..", "target", "release", "portwarden")


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(port_w, n):
    """Holder A: listen, accept n connections, hold them until killed."""
    raise_nofile()
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4096)
    os.write(port_w, str(ls.getsockname()[1]).encode() + b"\n")
    held = []
    deadline = time.time() + 120
    while len(held) < n and time.time() < deadline:
        c, _ = ls.accept()
        held.append(c)
    signal.pause()


def connect(port, n, ready_w):
    """Holder B: open n connections to holder A, hold them until killed."""
    raise_nofile()
    held = []
    for _ in range(n):
        s = socket.socket()
        s.connect(("127.0.0.1", port))
        held.append(s)
    os.write(ready_w, b"ready\n")
    signal.pause()


def spawn(fn, *args):
    pid = os.fork()
    if pid == 0:
        try:
            fn(*args)
        finally:
            os._exit(0)
    return pid


def timed(cmd, repeat):
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        out.append(time.perf_counter() - t)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=19900)
    ap.add_argument("--repeat", type=int, default=21)
    a = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")

    r, w = os.pipe()
    a_pid = spawn(serve, w, a.conns)
    port = int(os.read(r, 64).split()[0])
    r2, w2 = os.pipe()
    b_pid = spawn(connect, port, a.conns, w2)
    try:
        os.read(r2, 64)
        time.sleep(0.5)
        estab = subprocess.run(["ss", "-Htan", "state", "established"], capture_output=True, text=True).stdout.count("\n")
        print(f"established TCP sockets on the host: {estab} ({a.conns} connections)")
        pairs = [
            ([BIN, "ls"], ["ss", "-tan"]),
            ([BIN, "ls", "-p"], ["ss", "-tanp"]),
            ([BIN, "ls", "--listen", "-p"], ["ss", "-tlnp"]),
        ]
        print(f"{'portwarden':<28} {'median':>9}   {'peer':<14} {'median':>9}   ratio")
        for ours, peer in pairs:
            mine, theirs = [], []
            for _ in range(a.repeat):
                mine += timed(ours, 1)
                theirs += timed(peer, 1)
            m, t = statistics.median(mine), statistics.median(theirs)
            name = "portwarden " + " ".join(ours[1:])
            print(f"{name:<28} {m*1000:8.1f}ms   {' '.join(peer):<14} {t*1000:8.1f}ms   {m/t:.2f}x")
    finally:
        for pid in (b_pid, a_pid):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
