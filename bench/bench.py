#!/usr/bin/env python3
"""`portwarden bench` beside iperf3 3.12 (Debian) and `bench storm --churn` beside the C
closed-loop client of bench/balance/, in the same run, on loopback. Each figure is a
median over REPEAT runs, the tools alternating (their order rotates every round) so that
they share the machine's noise.

  throughput  `iperf3 -c -t SECONDS -P N -J` against `iperf3 -s`, and `portwarden bench
              client -t SECONDS -P N --json` against `portwarden bench server`, for N = 1,
              2, 4: the receiver's Gbit/s, and CPU-seconds per Gbit moved (utime + stime of
              client and server: the client's from wait4, the server's from /proc before
              and after).
  churn       64 connections in flight, each: connect (from the next of 127.0.0.10-17),
              write 32 bytes, read their echo, close, for SECONDS, against the C echo
              server of bench/balance/: the C client (one epoll loop) and `portwarden
              bench storm --churn -c 64` with one event loop and with two: connections/s,
              p50 and p99 latency.

    cargo build --release && python3 bench/bench.py [--only throughput,churn]
        [--repeat 5] [--seconds 5] [--json FILE]

The portwarden binary is $PORTWARDEN_BIN (default target/release/portwarden). Ports
27620-27630 on 127.0.0.1. Needs gcc and iperf3. Every process started here is stopped by
its PID.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import balance as B  # noqa: E402

IPERF_PORT, PW_PORT, ECHO_PORT = 27620, 27621, 27630
SRCS = [f"127.0.0.{i}" for i in range(10, 18)]


def timed(cmd, timeout):
    """Runs cmd: (stdout, CPU-seconds it used, wall seconds)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise RuntimeError(f"{cmd[0]} ran past {timeout} s")
    # communicate() reaped it: its rusage is in the children's total.
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {err[-400:]}")
    return out, time.monotonic() - t0


def children_cpu():
    r = os.times()
    return r.children_user + r.children_system


def throughput(a):
    iperf = B.start("iperf3-s", ["iperf3", "-s", "-B", B.LO, "-p", str(IPERF_PORT)])
    pw = B.start("pw-server", [B.BIN, "-q", "bench", "server", "--bind", B.LO,
                               "-p", str(PW_PORT)])
    B.wait_listen(iperf, IPERF_PORT)
    B.wait_listen(pw, PW_PORT)
    tools = {
        "iperf3": (iperf, lambda n: ["iperf3", "-c", B.LO, "-p", str(IPERF_PORT), "-t",
                                     str(a.seconds), "-P", str(n), "-J"]),
        "portwarden": (pw, lambda n: [B.BIN, "-q", "bench", "client", B.LO, "-p",
                                      str(PW_PORT), "-t", str(a.seconds), "-P", str(n),
                                      "--json"]),
    }
    res = {}
    for n in (1, 2, 4):
        res[n] = {k: [] for k in tools}
        for r in range(a.repeat):
            for name in B.rotate(list(tools), r):
                server, cmd = tools[name]
                s0, c0 = B.cpu([server.pid]), children_cpu()
                out, _ = timed(cmd(n), a.seconds + 30)
                cpu_s = children_cpu() - c0 + B.cpu([server.pid]) - s0
                bps = json.loads(out)["end"]["sum_received"]["bits_per_second"]
                gbit_moved = bps * a.seconds / 1e9
                res[n][name].append({"gbps": bps / 1e9, "cpu_per_gbit": cpu_s / gbit_moved})
                print(f"  -P {n} {name:10} {bps / 1e9:6.2f} Gbit/s  "
                      f"{cpu_s / gbit_moved:.4f} CPU-s/Gbit", flush=True)
                time.sleep(0.5)
    B.stop(iperf)
    B.stop(pw)
    return res


def churn(a):
    e = B.echo(ECHO_PORT)
    srcs = ",".join(SRCS)
    tools = ["C client", "portwarden 1 loop", "portwarden 2 loops"]
    res = {k: [] for k in tools}
    for r in range(a.repeat):
        for name in B.rotate(tools, r):
            if name == "C client":
                d = B.churn(B.LO, ECHO_PORT, 64, a.seconds, srcs)
                fig = {"conn_s": d["ok"] / d["seconds"], "p50_us": d["p50_us"],
                       "p99_us": d["p99_us"], "failed": d["failed"]}
            else:
                threads = "1" if "1 loop" in name else "2"
                out, _ = timed([B.BIN, "-q", "bench", "storm", f"{B.LO}:{ECHO_PORT}",
                                "--churn", "-c", "64", "-t", f"{a.seconds}s", "--send",
                                "x" * 32, "--echo", "--sources", f"{SRCS[0]}-{SRCS[-1]}",
                                "--threads", threads, "--timeout", "2s", "--json"],
                               a.seconds + 30)
                d = json.loads(out)
                c = d["churn"]
                fig = {"conn_s": c["conn_per_second"], "p50_us": c["latency_us"]["p50"],
                       "p99_us": c["latency_us"]["p99"], "failed": d["errors"]["total"]}
            res[name].append(fig)
            print(f"  {name:20} {fig['conn_s']:8.0f} conn/s  p50 {fig['p50_us']} us  "
                  f"p99 {fig['p99_us']} us  failed {fig['failed']}", flush=True)
            # Let the TIME_WAIT ports of one run not crowd the next.
            time.sleep(1)
    B.stop(e)
    return res


def med(runs, key):
    return statistics.median(r[key] for r in runs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="throughput,churn")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args()
    B.TMP = tempfile.mkdtemp(prefix="pw-bench-bench-")
    B.C.update(B.compile_helpers())
    ver = subprocess.run(["iperf3", "--version"], capture_output=True,
                         text=True).stdout.splitlines()[0]
    print(f"{ver}; {os.cpu_count()} CPUs; {a.repeat} runs each; logs in {B.TMP}")
    only, raw, t0 = a.only.split(","), {}, time.monotonic()
    try:
        if "throughput" in only:
            print(f"-- throughput, {a.seconds} s")
            raw["throughput"] = throughput(a)
            print("\nstreams | iperf3 Gbit/s | portwarden Gbit/s | ratio | iperf3 CPU-s/Gbit "
                  "| portwarden CPU-s/Gbit | ratio")
            for n, r in raw["throughput"].items():
                i, p = med(r["iperf3"], "gbps"), med(r["portwarden"], "gbps")
                ic, pc = med(r["iperf3"], "cpu_per_gbit"), med(r["portwarden"], "cpu_per_gbit")
                print(f"{n} | {i:.2f} | {p:.2f} | {p / i:.2f}x | {ic:.4f} | {pc:.4f} | "
                      f"{pc / ic:.2f}x")
        if "churn" in only:
            print(f"-- churn, 64 in flight, {a.seconds} s")
            raw["churn"] = churn(a)
            base = med(raw["churn"]["C client"], "conn_s")
            print("\nclient | conn/s | ratio | p50 us | p99 us | failed")
            for name, runs in raw["churn"].items():
                c = med(runs, "conn_s")
                print(f"{name} | {c:.0f} | {c / base:.2f}x | {med(runs, 'p50_us'):.0f} | "
                      f"{med(runs, 'p99_us'):.0f} | {sum(r['failed'] for r in runs)}")
    finally:
        B.stop_all()
    print(f"\ntotal {time.monotonic() - t0:.0f} s; load {B.loadavg()}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()
