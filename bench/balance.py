#!/usr/bin/env python3
"""The L4 balancer: `portwarden balance` beside HAProxy 2.6 (`mode tcp`) and a direct
connection, in the same run, on loopback. Each figure is a median over REPEAT runs, the
targets alternating (their order rotates every round) so that they share the machine's
noise.

  throughput  one iperf3 stream (`iperf3 -c VIP -t SECONDS -J`) through HAProxy
              (`nbthread 2`, splice both ways), through portwarden (`--workers 1`) and
              straight to the iperf3 server: Gbit/s, and each proxy's CPU-seconds per GB
              forwarded (utime + stime of its processes from /proc, before and after).
  churn       a closed-loop C client (64 connections in flight, each: connect, write 32
              bytes, read their echo, close) against a C echo backend, for SECONDS:
              connections/s and per-connection latency (p50, p99).
  memory      10,000 idle proxied connections (two client processes of 5,000, each
              connection's 32 bytes echoed first): the RSS of portwarden `--workers 2`
              (the parent and its workers) beside two HAProxy processes (`nbthread 1`)
              sharing the port, idle and loaded.
  failover    two echo backends answering `PING\\r\\n` with `+PONG\\r\\n`, an L7 check every
              500 ms (fall 2, rise 2, 400 ms timeout), a closed-loop client running (512
              slots, 250 ms between a slot's connections, 500 ms timeout); one
              backend SIGKILLed (kill) or SIGSTOPped (hang): client connections that failed
              or stalled after the signal, the start of the last of them, and when the
              proxy said the backend was down: its warning on stderr (timed as it arrives)
              and its status (HAProxy's `show stat` on the stats socket, `portwarden
              balance status --json`; both polled every 20 ms), each from the signal.
  netns       (not in the default set) throughput again, the client in one network
              namespace, proxies and iperf3 server in another, a veth pair between.

    cargo build --release && python3 bench/balance.py [--only throughput,churn,memory,failover]
        [--repeat 5] [--seconds 5] [--json FILE] [--pw-workers 1] [--pw-copy]

The portwarden binary is $PORTWARDEN_BIN (default target/release/portwarden); `--no-pw`
runs HAProxy and direct only. Ports 27600-27610 on 127.0.0.1, client sources 127.0.0.2-23.
A default run takes about 5.5 minutes. Needs root only for `netns`; gcc, haproxy, iperf3 and
iproute2. The C helpers in bench/balance/ are compiled into a temp dir; every process
started here is stopped by its PID; the namespaces are removed at the end.
"""
import argparse
import json
import os
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.environ.get("PORTWARDEN_BIN", os.path.join(ROOT, "target", "release", "portwarden"))
ASSETS = os.path.join(HERE, "balance")
sys.path.insert(0, HERE)
from netns import pair  # noqa: E402
from netns import teardown as netns_teardown  # noqa: E402

LO = "127.0.0.1"
# Ports out of the way of the test suites' (18000, 19000-19004).
PW_PORT, HA_PORT, B1_PORT, B2_PORT, IPERF_PORT = 27600, 27610, 27601, 27602, 27605
CHURN_SRCS = ",".join(f"127.0.0.{i}" for i in range(10, 18))
FAIL_SRCS = ",".join(f"127.0.0.{i}" for i in range(20, 24))
HOLD_SRCS = ["127.0.0.2", "127.0.0.3"]
# A failover client's connection fails after this long: short, so that a slot stuck on a
# hung backend is soon free to show whether the proxy still sends there.
FAIL_TIMEOUT_MS = 500
# Many slots, each pausing between its connections (about 2,000 connections/s): the slots
# stuck on a hung backend leave the others running, so the start of the last stuck
# connection is when the proxy stopped sending there.
FAIL_CONC, FAIL_PAUSE_US = 512, 250000
NS_SRV, NS_CLI, NS_SADDR, NS_CADDR = "pwbb-s", "pwbb-c", "10.79.5.1", "10.79.5.2"
CLK = os.sysconf("SC_CLK_TCK")
TMP = None
STARTED = []  # every Popen started here, stopped in the end by its PID


# ---- processes -------------------------------------------------------------------------


def start(name, cmd, ns=None, stdout=subprocess.DEVNULL):
    """Starts cmd; its stderr goes to TMP/NAME.log, each line also kept in p.lines with
    the time.monotonic() it arrived (a proxy's "backend down" warning is timed so)."""
    if ns:
        cmd = ["ip", "netns", "exec", ns] + cmd  # ip execs the command: same PID
    log = open(os.path.join(TMP, f"{name}.log"), "a")
    p = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True)
    p.name, p.log, p.family, p.lines = name, log.name, [], []

    def read():
        for line in p.stderr:
            p.lines.append((time.monotonic(), line.rstrip("\n")))
            log.write(f"{time.monotonic():.3f} {line}")
            log.flush()
        log.close()

    p.reader = threading.Thread(target=read, daemon=True)
    p.reader.start()
    STARTED.append(p)
    return p


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children():
    """{ppid: [pid, ...]} over /proc."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid):
    """pid and its descendants."""
    kids, out, todo = children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def remember_family(p):
    """Records p's descendants (portwarden's workers) so that stop() can check them."""
    for q in tree(p.pid)[1:]:
        if q not in p.family:
            p.family.append(q)


def stop(p, sig=signal.SIGTERM, wait=10):
    """Stops p by its PID (SIGCONT first, in case it was stopped) and reaps it; any
    descendant recorded by remember_family that outlives it is reported and killed."""
    if p.poll() is None:
        remember_family(p)
        os.kill(p.pid, signal.SIGCONT)
        os.kill(p.pid, sig)
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            print(f"  !! {p.name} (pid {p.pid}) ignored {sig.name} for {wait} s: SIGKILL")
            p.kill()
            p.wait()
    left = [q for q in p.family if alive(q)]
    if left:
        time.sleep(1)
        left = [q for q in left if alive(q)]
    for q in left:
        print(f"  !! {p.name}: process {q} still alive 1 s after its parent exited: SIGKILL")
        os.kill(q, signal.SIGKILL)
    if p in STARTED:
        STARTED.remove(p)
    return p.returncode


def stop_all():
    for p in list(STARTED):
        try:
            stop(p, wait=5)
        except Exception as e:  # noqa: BLE001 (cleanup goes on)
            print(f"  !! stopping {p.name}: {e!r}")


def died(p):
    if p.poll() is None:
        return None
    p.reader.join(2)
    tail = "\n".join(l for _, l in p.lines)[-2000:]
    return f"{p.name} exited with {p.returncode}: {tail.strip()}"


def check_alive(*ps):
    for p in ps:
        msg = died(p)
        if msg:
            raise RuntimeError(msg)


def cpu(pids):
    """utime + stime seconds of pids (threads included; exited ones count 0)."""
    t = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            t += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return t / CLK


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += int(next(l.split()[1] for l in f if l.startswith("VmRSS")))
        except (OSError, StopIteration):
            pass
    return total


def listeners(port, ns=None):
    cmd = ["ss", "-Htln", f"sport = :{port}"]
    if ns:
        cmd = ["ip", "netns", "exec", ns] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    return len(out.splitlines())


def established(port, ns=None):
    cmd = ["ss", "-Htn", "state", "established", f"dport = :{port}"]
    if ns:
        cmd = ["ip", "netns", "exec", ns] + cmd
    return len(subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines())


def wait_listen(p, port, n=1, ns=None, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check_alive(p)
        if listeners(port, ns) >= n:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{p.name}: nothing listening on port {port} after {timeout} s")


# ---- helpers: C programs, backends, clients ---------------------------------------------


def compile_helpers():
    out = {}
    for name in ("echo", "client"):
        exe = os.path.join(TMP, name)
        subprocess.run(["gcc", "-O2", "-Wall", "-o", exe, os.path.join(ASSETS, f"{name}.c")],
                       check=True)
        out[name] = exe
    return out


def echo(port, addr=LO, ns=None, name=None):
    p = start(name or f"echo-{port}", [C["echo"], addr, str(port)], ns=ns, stdout=subprocess.PIPE)
    line = p.stdout.readline().strip()
    if line != "ready":
        raise RuntimeError(died(p) or f"echo on {port} said {line!r}")
    return p


def churn(host, port, conc, seconds, srcs, timeout_ms=2000, pause_us=0, slow_ms=200):
    r = subprocess.run([C["client"], "churn", host, str(port), str(conc), str(seconds), srcs,
                        str(timeout_ms), str(pause_us), str(slow_ms)],
                       capture_output=True, text=True, timeout=seconds + timeout_ms / 1000 + 30)
    if r.returncode:
        raise RuntimeError(f"client churn failed ({r.returncode}): {r.stderr[-500:]}")
    return json.loads(r.stdout)


# ---- the proxies ----------------------------------------------------------------------


class Haproxy:
    label = "HAProxy"

    def __init__(self, template, listen, ns=None, procs=1, **subst):
        with open(os.path.join(ASSETS, template)) as f:
            self.text = f.read()
        self.listen, self.ns, self.subst, self.procs = listen, ns, subst, []
        self.socks = []
        for i in range(procs):
            sock = os.path.join(TMP, f"haproxy-{len(STARTED)}-{i}.sock")
            cfg = os.path.join(TMP, f"haproxy-{len(STARTED)}-{i}.cfg")
            with open(cfg, "w") as f:
                f.write(string.Template(self.text).substitute(sock=sock, listen=listen, **subst))
            subprocess.run(["haproxy", "-c", "-q", "-f", cfg], check=True)
            self.procs.append(start(f"haproxy-{i}", ["haproxy", "-db", "-f", cfg], ns=ns))
            self.socks.append(sock)
        port = int(listen.rsplit(":", 1)[1])
        for p in self.procs:
            wait_listen(p, port, n=len(self.procs), ns=ns)
        for s in self.socks:
            self._wait_sock(s)

    def _wait_sock(self, sock):
        for _ in range(200):
            check_alive(*self.procs)
            try:
                self.cmd("show info", sock)
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"haproxy stats socket {sock} never answered")

    def cmd(self, line, sock=None):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(sock or self.socks[0])
        s.sendall(line.encode() + b"\n")
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
        s.close()
        return out.decode()

    def servers_of(self, sock):
        """{server name: (status, current sessions)} in backend `nodes` of one process."""
        res = {}
        lines = self.cmd("show stat", sock).splitlines()
        head = lines[0].lstrip("# ").split(",")
        for l in lines[1:]:
            row = dict(zip(head, l.split(",")))
            if row.get("pxname") == "nodes" and row.get("svname") not in ("BACKEND", None):
                res[row["svname"]] = (row["status"], int(row["scur"] or 0))
        return res

    def servers(self):
        """servers_of summed over every process (DOWN in any wins)."""
        res = {}
        for sock in self.socks:
            for name, (st, cur) in self.servers_of(sock).items():
                st0, cur0 = res.get(name, ("UP", 0))
                res[name] = (st if st.startswith("DOWN") else st0, cur0 + cur)
        return res

    def down(self, backend_index):
        return self.servers()[f"n{backend_index + 1}"][0].startswith("DOWN")

    def logged_down(self, backend_index, since):
        """When the first "Server nodes/nI is DOWN" warning since `since` arrived."""
        want = f"Server nodes/n{backend_index + 1} is DOWN"
        ts = [t for p in self.procs for t, l in p.lines if t >= since and want in l]
        return min(ts) if ts else None

    def pids(self):
        return [p.pid for p in self.procs]

    def stop(self):
        for p in self.procs:
            rc = stop(p)
            if rc not in (0, -15, 143):
                print(f"  !! {p.name} exited with {rc}")


class Portwarden:
    label = "portwarden"

    def __init__(self, listen, backends, health, workers=1, ns=None, extra="", copy=False):
        self.dir = tempfile.mkdtemp(prefix="pw-", dir=TMP)
        self.state = os.path.join(self.dir, "state")
        self.policy = os.path.join(self.dir, "policy.toml")
        self.backends = backends
        nodes = ", ".join(f'"{b}"' for b in backends)
        with open(self.policy, "w") as f:
            f.write(f'version = 1\n\n[[balance]]\nname = "bench"\nlisten = "{listen}"\n'
                    f'algorithm = "round-robin"\nbackends = [{nodes}]\nidle_timeout = "10m"\n'
                    f"health = {health}\n{extra}")
        self.proc = start("portwarden", [BIN, "--policy", self.policy, "--state-dir", self.state,
                                         "balance", "--workers", str(workers)]
                           + (["--copy"] if copy else []), ns=ns)
        port = int(listen.rsplit(":", 1)[1])
        wait_listen(self.proc, port, n=workers if workers > 1 else 1, ns=ns)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.status()
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                check_alive(self.proc)
                time.sleep(0.1)
        remember_family(self.proc)

    def status(self):
        r = subprocess.run([BIN, "--state-dir", self.state, "balance", "status", "--json"],
                           capture_output=True, text=True, timeout=10)
        try:  # exit 1 with a document: a group has no backend up
            doc = json.loads(r.stdout)
        except ValueError:
            doc = None
        if r.returncode not in (0, 1) or not isinstance(doc, dict):
            raise RuntimeError(f"balance status exited {r.returncode}: {r.stderr.strip()[-500:]}")
        self.doc = doc  # summed "groups", and each worker's under "workers"
        return doc["groups"]

    def backend_status(self):
        """{addr: backend status} of group `bench`."""
        for g in self.status():
            if g.get("name") == "bench":
                return {b["addr"]: b for b in g["backends"]}
        raise RuntimeError("balance status has no group `bench`")

    def down(self, backend_index):
        return not self.backend_status()[self.backends[backend_index]]["up"]

    def logged_down(self, backend_index, since):
        """When the first "backend ADDR is down" warning since `since` arrived."""
        want = f"backend {self.backends[backend_index]} is down"
        ts = [t for t, l in self.proc.lines if t >= since and want in l]
        return min(ts) if ts else None

    def pids(self):
        remember_family(self.proc)
        return [self.proc.pid] + [q for q in self.proc.family if alive(q)]

    def stop(self):
        rc = stop(self.proc)
        if rc not in (0, -15, 143):
            print(f"  !! portwarden exited with {rc}: {died(self.proc) or ''}")


def pw_health(interval, timeout, fall, rise, pong=False):
    h = f'interval = "{interval}", timeout = "{timeout}", fall = {fall}, rise = {rise}'
    if pong:
        h += r', send = "PING\r\n", expect = "+PONG"'
    return "{ " + h + " }"


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def rotate(xs, r):
    r %= len(xs)
    return xs[r:] + xs[:r]


def med(xs):
    return statistics.median(xs) if xs else float("nan")


# ---- the benchmarks ---------------------------------------------------------------------


def throughput(a, ns=None):
    """{target: [{gbps, bytes, cpu_s}]}"""
    cli_ns = NS_CLI if ns else None
    host = NS_SADDR if ns else LO
    srv = start("iperf3-server", ["iperf3", "-s", "-B", host, "-p", str(IPERF_PORT)], ns=ns)
    procs = []
    try:
        wait_listen(srv, IPERF_PORT, ns=ns)
        backend = f"{host}:{IPERF_PORT}"
        targets = {"direct": (None, IPERF_PORT),
                   "HAProxy": (Haproxy("haproxy-throughput.cfg", f"{host}:{HA_PORT}", ns=ns,
                                       nbthread=2, backend=backend), HA_PORT)}
        if not a.no_pw:
            # The check is connect-only and rare: a check connection is one iperf3 takes for
            # a control connection (and rejects); HAProxy checks nothing here.
            targets["portwarden"] = (Portwarden(f"{host}:{PW_PORT}", [backend],
                                                pw_health("30s", "1s", 2, 2), ns=ns,
                                                workers=a.pw_workers, copy=a.pw_copy), PW_PORT)
        procs = [p for p, _ in targets.values() if p]
        res = {k: [] for k in targets}
        for r in range(a.repeat):
            for name in rotate(list(targets), r):
                proxy, port = targets[name]
                pids = proxy.pids() if proxy else []
                c0 = cpu(pids)
                cmd = ["iperf3", "-c", host, "-p", str(port), "-t", str(a.seconds), "-J"]
                if cli_ns:
                    cmd = ["ip", "netns", "exec", cli_ns] + cmd
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.seconds + 60)
                c1 = cpu(pids)
                try:
                    doc = json.loads(out.stdout)
                except ValueError:
                    doc = {"error": f"no JSON (exit {out.returncode}): {out.stderr[-300:]}"}
                if doc.get("error"):
                    print(f"  !! iperf3 through {name}: {doc['error']}")
                    continue
                recv = doc["end"]["sum_received"]
                res[name].append({"gbps": recv["bits_per_second"] / 1e9, "bytes": recv["bytes"],
                                  "cpu_s": c1 - c0})
                if proxy:
                    check_alive(*(proxy.procs if isinstance(proxy, Haproxy) else [proxy.proc]))
            print(f"  round {r + 1}: " + ", ".join(
                f"{k} {res[k][-1]['gbps']:.2f}" for k in targets if res[k]) + " Gbit/s")
        if "portwarden" in targets:
            st = targets["portwarden"][0].backend_status()
            res["portwarden_status"] = st
        return res
    finally:
        for p in procs:
            p.stop()
        stop(srv)


def report_throughput(res, title):
    print(f"\n{title}")
    print(f"  {'target':12} {'Gbit/s':>8} {'CPU-s/GB':>9}  runs (Gbit/s)")
    g = {}
    for name in ("direct", "HAProxy", "portwarden"):
        runs = res.get(name)
        if not runs:
            continue
        g[name] = med([x["gbps"] for x in runs])
        cpg = med([x["cpu_s"] / (x["bytes"] / 1e9) for x in runs]) if name != "direct" else None
        print(f"  {name:12} {g[name]:8.2f} {cpg if cpg is not None else float('nan'):9.3f}  "
              + " ".join(f"{x['gbps']:.2f}" for x in runs))
    if "portwarden" in g:
        print(f"  portwarden / HAProxy = {g['portwarden'] / g['HAProxy']:.2f}x (target >= 1.15), "
              f"portwarden / direct = {g['portwarden'] / g['direct']:.2f}x (target >= 0.8)")
    if "HAProxy" in g:
        print(f"  HAProxy / direct = {g['HAProxy'] / g['direct']:.2f}x")
    return g


def churn_bench(a):
    b = echo(B1_PORT)
    procs = []
    try:
        backend = f"{LO}:{B1_PORT}"
        targets = {"direct": (None, B1_PORT),
                   "HAProxy": (Haproxy("haproxy-churn.cfg", f"{LO}:{HA_PORT}", nbthread=2,
                                       backend=backend), HA_PORT)}
        if not a.no_pw:
            targets["portwarden"] = (Portwarden(f"{LO}:{PW_PORT}", [backend],
                                                pw_health("30s", "1s", 2, 2),
                                                workers=a.pw_workers, copy=a.pw_copy), PW_PORT)
        procs = [p for p, _ in targets.values() if p]
        res = {k: [] for k in targets}
        for r in range(a.repeat):
            for name in rotate(list(targets), r):
                proxy, port = targets[name]
                pids = proxy.pids() if proxy else []
                c0 = cpu(pids)
                d = churn(LO, port, 64, a.seconds, CHURN_SRCS)
                d["cpu_s"] = cpu(pids) - c0
                d.pop("bad")
                d["rate"] = d["ok"] / (d["t1"] - d["t0"])
                res[name].append(d)
                check_alive(b)
            print(f"  round {r + 1}: " + ", ".join(
                f"{k} {res[k][-1]['rate']:.0f}/s ({res[k][-1]['failed']} failed)" for k in targets))
        if "portwarden" in targets:
            res["portwarden_status"] = targets["portwarden"][0].backend_status()
        return res
    finally:
        for p in procs:
            p.stop()
        stop(b)


def report_churn(res):
    print("\nConnection churn: 64 in flight, connect + 32 bytes echoed + close, "
          "medians of the runs")
    print(f"  {'target':12} {'conn/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'failed':>7}"
          f" {'CPU-s':>6}  runs (conn/s)")
    g = {}
    for name in ("direct", "HAProxy", "portwarden"):
        runs = res.get(name)
        if not runs:
            continue
        g[name] = {k: med([x[k] for x in runs]) for k in ("rate", "p50_us", "p99_us", "max_us",
                                                          "cpu_s")}
        fails = sum(x["failed"] for x in runs)
        print(f"  {name:12} {g[name]['rate']:8.0f} {g[name]['p50_us'] / 1e3:7.2f} "
              f"{g[name]['p99_us'] / 1e3:7.2f} {g[name]['max_us'] / 1e3:7.2f} {fails:7d} "
              f"{g[name]['cpu_s']:6.2f}  " + " ".join(f"{x['rate']:.0f}" for x in runs))
        kinds = {}
        for x in runs:
            for k, v in x["kinds"].items():
                if v:
                    kinds[k] = kinds.get(k, 0) + v
        if kinds:
            print(f"  {'':12} failed or slow (> 200 ms), all runs: {kinds}")
    if "portwarden" in g:
        print(f"  portwarden / HAProxy: conn/s {g['portwarden']['rate'] / g['HAProxy']['rate']:.2f}x "
              f"(target >= 1), p99 {g['portwarden']['p99_us'] / g['HAProxy']['p99_us']:.2f}x "
              f"(target <= 1)")
    return g


def memory(a):
    per = a.conns // 2
    res = {"HAProxy": [], "portwarden": []}
    names = ["HAProxy"] + ([] if a.no_pw else ["portwarden"])
    for r in range(a.repeat):
        for name in rotate(names, r):
            b = echo(B1_PORT)
            proxy, holders = None, []
            try:
                backend = f"{LO}:{B1_PORT}"
                if name == "HAProxy":
                    proxy, port = Haproxy("haproxy-memory.cfg", f"{LO}:{HA_PORT}", procs=2,
                                          backend=backend), HA_PORT
                else:
                    proxy, port = Portwarden(f"{LO}:{PW_PORT}", [backend],
                                             pw_health("30s", "1s", 2, 2), workers=2), PW_PORT
                time.sleep(1)
                pids = proxy.pids()
                idle = rss_kb(pids)
                t = time.monotonic()
                for i in range(2):
                    holders.append(start(f"hold-{i}", [C["client"], "hold", LO, str(port),
                                                       str(per), HOLD_SRCS[i], "300"],
                                         stdout=subprocess.PIPE))
                ready = [h.stdout.readline().strip() for h in holders]
                setup = time.monotonic() - t
                ok = sum(int(x.split("ok=")[1].split()[0]) for x in ready if "ok=" in x)
                time.sleep(1)
                pids = proxy.pids()
                loaded = rss_kb(pids)
                est = established(B1_PORT)
                row = {"idle_kb": idle, "loaded_kb": loaded, "held": ok, "backend_estab": est,
                       "setup_s": setup, "procs": len(pids), "ready": ready}
                if name == "portwarden":
                    st = proxy.backend_status()[backend]
                    row["status_active"] = st.get("active")
                    row["split"] = [w["groups"][0]["active"] for w in proxy.doc.get("workers", [])]
                else:
                    row["split"] = [proxy.servers_of(s)["n1"][1] for s in proxy.socks]
                    row["status_active"] = sum(row["split"])
                per_proc = [rss_kb([p]) for p in pids]
                row["per_proc_kb"] = per_proc
                res[name].append(row)
                print(f"  round {r + 1} {name}: {ok} held ({setup:.1f} s), backend sees {est}, "
                      f"status active {row['status_active']} ({'+'.join(map(str, row['split']))}), "
                      f"RSS idle {idle / 1024:.1f} MB, "
                      f"loaded {loaded / 1024:.1f} MB over {len(pids)} processes "
                      f"({', '.join(f'{k / 1024:.1f}' for k in per_proc)})")
            finally:
                for h in holders:
                    stop(h)
                if proxy:
                    proxy.stop()
                stop(b)
    return res


def report_memory(res, conns):
    print(f"\nMemory with {conns:,} idle proxied connections (RSS summed over the proxy's "
          "processes), medians")
    print(f"  {'proxy':34} {'idle MB':>8} {'loaded MB':>10} {'KB/conn':>8} {'held':>6}")
    g = {}
    for name, what in (("HAProxy", "HAProxy, 2 processes x nbthread 1"),
                       ("portwarden", "portwarden --workers 2")):
        runs = res.get(name)
        if not runs:
            continue
        idle = med([x["idle_kb"] for x in runs])
        loaded = med([x["loaded_kb"] for x in runs])
        per = med([(x["loaded_kb"] - x["idle_kb"]) / max(1, x["held"]) for x in runs])
        g[name] = {"idle_mb": idle / 1024, "loaded_mb": loaded / 1024, "kb_per_conn": per}
        print(f"  {what:34} {idle / 1024:8.1f} {loaded / 1024:10.1f} {per:8.2f} "
              f"{min(x['held'] for x in runs):6d}")
    if len(g) == 2:
        print(f"  portwarden / HAProxy loaded RSS = "
              f"{g['portwarden']['loaded_mb'] / g['HAProxy']['loaded_mb']:.2f}x")
    return g


def failover(a):
    res = {}
    names = ["HAProxy"] + ([] if a.no_pw else ["portwarden"])
    pre, post = 1.0, 4.0
    for mode, sig in (("kill", signal.SIGKILL), ("hang", signal.SIGSTOP)):
        for name in names:
            res[f"{name} {mode}"] = []
        for r in range(a.repeat):
            for name in rotate(names, r):
                b1, b2 = echo(B1_PORT), echo(B2_PORT)
                proxy, client = None, None
                try:
                    nodes = [f"{LO}:{B1_PORT}", f"{LO}:{B2_PORT}"]
                    if name == "HAProxy":
                        proxy, port = Haproxy("haproxy-failover.cfg", f"{LO}:{HA_PORT}",
                                              nbthread=2, backend1=nodes[0],
                                              backend2=nodes[1]), HA_PORT
                    else:
                        proxy, port = Portwarden(f"{LO}:{PW_PORT}", nodes,
                                                 pw_health("500ms", "400ms", 2, 2, pong=True),
                                                 workers=a.pw_workers), PW_PORT
                    time.sleep(1.2)  # a few checks passed
                    if proxy.down(0) or proxy.down(1):
                        raise RuntimeError(f"{name}: a backend is down before the signal")
                    client = start("churn-client", [C["client"], "churn", LO, str(port),
                                                    str(FAIL_CONC), str(pre + post), FAIL_SRCS,
                                                    str(FAIL_TIMEOUT_MS), str(FAIL_PAUSE_US),
                                                    "200"], stdout=subprocess.PIPE)
                    time.sleep(pre)
                    t_sig = time.monotonic()
                    os.kill(b2.pid, sig)
                    t_down, polls = None, 0
                    while time.monotonic() < t_sig + post - 0.5:
                        polls += 1
                        if proxy.down(1):
                            t_down = time.monotonic()
                            break
                        time.sleep(0.02)
                    out, _ = client.communicate(timeout=pre + post + 60)
                    STARTED.remove(client)
                    d = json.loads(out)
                    bad = d["bad"]
                    after = [x for x in bad if x[1] >= t_sig]  # ended after the signal
                    failed = [x for x in after if x[2] != "slow"]
                    row = {
                        "ok": d["ok"], "failed": len(failed),
                        "failed_new": len([x for x in failed if x[0] >= t_sig]),
                        "stalled": len(after) - len(failed),
                        "before": len([x for x in bad if x[1] < t_sig]),
                        "last_bad_ms": (max(x[0] for x in after) - t_sig) * 1e3 if after else None,
                        "detect_ms": (t_down - t_sig) * 1e3 if t_down else None,
                        "log_ms": None,
                        "polls": polls,
                        "kinds": {k: v for k, v in d["kinds"].items() if v},
                    }
                    t_log = proxy.logged_down(1, t_sig)
                    row["log_ms"] = (t_log - t_sig) * 1e3 if t_log else None
                    if name == "portwarden":
                        row["status"] = proxy.backend_status()
                    else:
                        row["status"] = proxy.servers()
                    res[f"{name} {mode}"].append(row)
                    det = f"{row['detect_ms']:.0f} ms" if t_down else "never"
                    det += f" (status), +{row['log_ms']:.0f} ms (log)" if t_log else " (status), never (log)"
                    if row["before"]:
                        print(f"  !! {row['before']} connections failed or stalled before the "
                              "signal")
                    print(f"  round {r + 1} {name} {mode}: {row['failed']} failed "
                          f"({row['failed_new']} started after the signal), "
                          f"{row['stalled']} stalled (> 200 ms), last started at "
                          f"{'-' if not after else format(round(row['last_bad_ms']), '+d') + ' ms'}, "
                          f"marked down at +{det}, {d['ok']} ok {row['kinds']}")
                finally:
                    if client and client in STARTED:
                        stop(client)
                    if b2.poll() is None:
                        # Continued first: a draining proxy waits for the connections it
                        # holds to the hung backend.
                        os.kill(b2.pid, signal.SIGCONT)
                    if proxy:
                        proxy.stop()
                    stop(b1)
                    stop(b2)
    return res


def report_failover(res):
    print("\nFailover: a backend of two SIGKILLed (kill) or SIGSTOPped (hang) under a closed-loop "
          f"client ({FAIL_CONC} slots, {FAIL_PAUSE_US // 1000} ms between a slot's connections, "
          f"{FAIL_TIMEOUT_MS} ms timeout, stalled: > 200 ms); failed counts "
          "the connections that ended in error after the signal (new: started after it); times "
          "from the signal; medians")
    print(f"  {'proxy, case':18} {'failed':>7} {'new':>5} {'stalled':>8} {'last bad':>9} "
          f"{'down: log':>10} {'status':>8}  runs (failed/new/stalled/last ms/log ms/status ms)")
    g = {}
    for key, runs in res.items():
        if not runs:
            continue
        det = [x["detect_ms"] for x in runs if x["detect_ms"] is not None]
        g[key] = {"failed": med([x["failed"] for x in runs]),
                  "failed_new": med([x["failed_new"] for x in runs]),
                  "stalled": med([x["stalled"] for x in runs]),
                  "last_bad_ms": med([x["last_bad_ms"] for x in runs
                                      if x["last_bad_ms"] is not None]),
                  "detect_ms": med(det) if det else None,
                  "log_ms": med([x["log_ms"] for x in runs if x["log_ms"] is not None]),
                  "never": len(runs) - len(det)}
        never = f" ({g[key]['never']} never)" if g[key]["never"] else ""
        dm = f"{g[key]['detect_ms']:.0f} ms" if det else "never"
        lm = f"{g[key]['log_ms']:.0f} ms"
        rnd = lambda v: "-" if v is None else round(v)  # noqa: E731
        last = "-" if g[key]["last_bad_ms"] != g[key]["last_bad_ms"] else \
            f"{round(g[key]['last_bad_ms'])} ms"
        print(f"  {key:18} {g[key]['failed']:7.0f} {g[key]['failed_new']:5.0f} "
              f"{g[key]['stalled']:8.0f} {last:>9} {lm:>10} {dm:>8}{never}  "
              + " ".join(
                  f"{x['failed']}/{x['failed_new']}/{x['stalled']}/{rnd(x['last_bad_ms'])}/"
                  f"{rnd(x['log_ms'])}/{rnd(x['detect_ms'])}" for x in runs))
    return g


def main():
    global TMP, C
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="throughput,churn,memory,failover",
                    help="comma-separated: throughput, churn, memory, failover, netns")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5, help="length of each iperf3 and churn run")
    ap.add_argument("--conns", type=int, default=10000, help="idle connections (memory)")
    ap.add_argument("--no-pw", action="store_true", help="HAProxy and direct only")
    ap.add_argument("--pw-workers", type=int, default=1,
                    help="portwarden's --workers in throughput, churn and failover (memory: 2)")
    ap.add_argument("--pw-copy", action="store_true",
                    help="portwarden --copy (a buffer, not splice) in throughput and churn")
    ap.add_argument("--json", help="write every run's figures to this file")
    a = ap.parse_args()
    only = [x.strip() for x in a.only.split(",") if x.strip()]
    if not a.no_pw and not os.access(BIN, os.X_OK):
        sys.exit(f"no portwarden binary at {BIN} (set PORTWARDEN_BIN, or --no-pw)")
    TMP = tempfile.mkdtemp(prefix="pw-bench-balance-")
    C = compile_helpers()
    ver = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"{ver}; {os.cpu_count()} CPUs; {a.repeat} runs each; logs in {TMP}; "
          f"load {loadavg()}")
    raw, summary, t0 = {}, {}, time.monotonic()
    try:
        if "throughput" in only:
            print(f"-- throughput: one iperf3 stream, {a.seconds} s")
            raw["throughput"] = throughput(a)
            summary["throughput"] = report_throughput(raw["throughput"], "Single-stream "
                                                      "throughput (loopback), medians")
        if "churn" in only:
            print(f"-- churn: {a.seconds} s runs")
            raw["churn"] = churn_bench(a)
            summary["churn"] = report_churn(raw["churn"])
        if "memory" in only:
            print(f"-- memory: {a.conns} idle connections")
            raw["memory"] = memory(a)
            summary["memory"] = report_memory(raw["memory"], a.conns)
        if "failover" in only:
            print("-- failover")
            raw["failover"] = failover(a)
            summary["failover"] = report_failover(raw["failover"])
        if "netns" in only:
            print(f"-- throughput across a veth pair, {a.seconds} s")
            pair(NS_SRV, NS_CLI, "pwbbs", "pwbbc", [f"{NS_SADDR}/24"], f"{NS_CADDR}/24")
            try:
                raw["netns"] = throughput(a, ns=NS_SRV)
            finally:
                stop_all()
                netns_teardown(NS_SRV, NS_CLI)
            summary["netns"] = report_throughput(raw["netns"], "Single-stream throughput, "
                                                 "client namespace -> veth -> proxy namespace, "
                                                 "medians")
    finally:
        stop_all()
    print(f"\ntotal {time.monotonic() - t0:.0f} s; load {loadavg()}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"summary": summary, "runs": raw}, f, indent=1, default=str)


C = {}

if __name__ == "__main__":
    main()
