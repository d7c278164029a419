"""What the namespace benchmarks share: a server and a client namespace joined by a veth
pair, listeners held in the server, and timed commands run in the client."""
import subprocess
import sys
import time


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def teardown(*names):
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


def pair(srv, cli, srv_dev, cli_dev, srv_addrs, cli_addr):
    """(Re)creates the two namespaces, lo up in both, the veth pair with its addresses."""
    teardown(srv, cli)
    sh("ip", "netns", "add", srv)
    sh("ip", "netns", "add", cli)
    sh("ip", "link", "add", srv_dev, "netns", srv, "type", "veth", "peer", "name", cli_dev,
       "netns", cli)
    for ns, dev, addrs in [(srv, srv_dev, srv_addrs), (cli, cli_dev, [cli_addr])]:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        for a in addrs:
            sh("ip", "-n", ns, "addr", "add", a, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")


def listen(ns, addrs, ports):
    """A process in `ns` holding a listener on every address × port; stop it with kill()."""
    code = (
        "import socket,sys,time\n"
        "ls=[]\n"
        "for a in sys.argv[1].split(','):\n"
        "  for p in sys.argv[2].split(','):\n"
        "    s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        "    s.bind((a,int(p))); s.listen(4096); ls.append(s)\n"
        "print('ready',flush=True)\n"
        "time.sleep(3600)\n"
    )
    p = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", code, ",".join(addrs),
                          ",".join(map(str, ports))], stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"ready"
    return p


def timed(ns, cmd):
    """Runs cmd in ns: (wall seconds, stdout); exits on any status but 0 and 1."""
    t = time.perf_counter()
    r = subprocess.run(["ip", "netns", "exec", ns] + cmd, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    wall = time.perf_counter() - t
    if r.returncode not in (0, 1):
        sys.exit(f"{cmd[0]} failed ({r.returncode}): {r.stderr.decode()[-500:]}")
    return wall, r.stdout.decode(errors="replace")


def alternate(ns, tools, repeat):
    """Runs each of `tools` ({name: command}) in ns, one after another, `repeat` rounds,
    so the tools share the machine's noise: {name: [(wall seconds, stdout), ...]}."""
    runs = {name: [] for name in tools}
    for _ in range(repeat):
        for name, cmd in tools.items():
            runs[name].append(timed(ns, cmd))
    return runs
