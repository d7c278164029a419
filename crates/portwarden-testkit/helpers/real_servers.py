#!/usr/bin/env python3
"""Starts Debian's real servers on random ports of one address, for the -sV tests.

    real_servers.py DIR ADDR

Run inside the test's own network namespace. Each server gets a fresh directory under
DIR, binds ADDR only, and keeps nothing outside DIR. Prints one JSON line, the name of
every server that started mapped to its port (a server whose package is missing is left
out, and its name listed under "missing"), then waits until stdin closes or SIGTERM, and
stops every server it started (by PID) before it exits. Nothing here is reached from
outside the namespace.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

DIR, ADDR = sys.argv[1], sys.argv[2]
procs = []


def free_port():
    with socket.socket() as s:
        s.bind((ADDR, 0))
        return s.getsockname()[1]


def wait_listening(port, proc, secs=30):
    end = time.monotonic() + secs
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection((ADDR, port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def start(name, argv, port, log, **kw):
    with open(os.path.join(DIR, f"{name}.log"), "ab") as out:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, **kw)
    procs.append(p)
    if not wait_listening(port, p):
        raise RuntimeError(f"{name} did not start; see {log}")
    return port


def sub(name):
    d = os.path.join(DIR, name)
    os.makedirs(d, exist_ok=True)
    return d


def cert(d, owner=None):
    crt, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=mirror.test", "-keyout", key, "-out", crt],
        check=True, capture_output=True)
    os.chmod(key, 0o600)
    if owner:
        for f in (crt, key):
            shutil.chown(f, owner, owner)
    return crt, key


def sshd(name):
    d = sub(name)
    key = os.path.join(d, "hostkey")
    if not os.path.exists(key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    os.makedirs("/run/sshd", exist_ok=True)
    port = 5432 if name == "ssh_on_5432" else free_port()
    return start(name, ["/usr/sbin/sshd", "-D", "-e", "-f", "/dev/null", "-h", key,
                        "-o", f"ListenAddress={ADDR}:{port}", "-o", "PidFile=none"],
                 port, d)


def nginx():
    d = sub("nginx")
    crt, key = cert(d)
    https, http = free_port(), free_port()
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off; master_process off; worker_processes 1;
pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{ listen {ADDR}:{https} ssl; ssl_certificate {crt}; ssl_certificate_key {key};
           location / {{ return 200 "ok"; }} }}
  server {{ listen {ADDR}:{http}; location / {{ return 200 "ok"; }} }}
}}
""")
    start("nginx", ["nginx", "-e", f"{d}/error.log", "-p", d, "-c", conf], https, d)
    wait_listening(http, procs[-1])
    return {"nginx_https": https, "nginx_http": http}


def redis(name, protected):
    d = sub(name)
    port = free_port()
    return start(name, ["redis-server", "--port", str(port), "--bind", ADDR, "--save", "",
                        "--appendonly", "no", "--dir", d, "--daemonize", "no",
                        "--protected-mode", "yes" if protected else "no"], port, d)


def mariadb():
    d = sub("mariadb")
    data = os.path.join(d, "data")
    subprocess.run(["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={data}",
                    "--auth-root-authentication-method=normal", "--skip-test-db"],
                   check=True, capture_output=True)
    port = free_port()
    return start("mariadb", ["mariadbd", "--no-defaults", "--user=root", f"--datadir={data}",
                             f"--bind-address={ADDR}", f"--port={port}",
                             f"--socket={d}/sock", f"--pid-file={d}/pid", "--skip-log-bin",
                             "--skip-name-resolve", "--skip-grant-tables"], port, d)


def postgres():
    bins = sorted(os.listdir("/usr/lib/postgresql"))
    bin_dir = f"/usr/lib/postgresql/{bins[-1]}/bin"
    d = sub("postgres")
    os.chmod(DIR, 0o755)
    shutil.chown(d, "postgres", "postgres")
    data = os.path.join(d, "data")
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run(as_pg + [f"{bin_dir}/initdb", "-A", "trust", "-U", "postgres", "-D", data],
                   check=True, capture_output=True)
    crt, key = cert(d, owner="postgres")
    port = free_port()
    return start("postgres", as_pg + [f"{bin_dir}/postgres", "-D", data, "-p", str(port),
                                      "-c", f"listen_addresses={ADDR}",
                                      "-c", f"unix_socket_directories={d}",
                                      "-c", "ssl=on", "-c", f"ssl_cert_file={crt}",
                                      "-c", f"ssl_key_file={key}"], port, d)


def rsync():
    d = sub("rsync")
    conf = os.path.join(d, "rsyncd.conf")
    with open(conf, "w") as f:
        f.write(f"use chroot = no\n[mirror]\npath = {d}\nread only = yes\n")
    port = free_port()
    return start("rsync", ["rsync", "--daemon", "--no-detach", f"--address={ADDR}",
                           f"--port={port}", f"--config={conf}"], port, d)


def vsftpd():
    d = sub("vsftpd")
    empty = os.path.join(d, "empty")
    os.makedirs(empty, exist_ok=True)
    crt, key = cert(d)
    port = free_port()
    conf = os.path.join(d, "vsftpd.conf")
    with open(conf, "w") as f:
        f.write(f"""listen=YES
listen_address={ADDR}
listen_port={port}
background=NO
anonymous_enable=NO
local_enable=YES
secure_chroot_dir={empty}
seccomp_sandbox=NO
ssl_enable=YES
rsa_cert_file={crt}
rsa_private_key_file={key}
""")
    return start("vsftpd", ["vsftpd", conf], port, d)


def stop(*_):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
ports, missing = {}, []
servers = [
    ("ssh", "/usr/sbin/sshd", lambda: sshd("ssh")),
    ("ssh_on_5432", "/usr/sbin/sshd", lambda: sshd("ssh_on_5432")),
    ("nginx", "nginx", nginx),
    ("redis", "redis-server", lambda: redis("redis", False)),
    # No password, reached from another host: `-DENIED`, protected mode.
    ("redis_protected", "redis-server", lambda: redis("redis_protected", True)),
    ("mariadb", "mariadbd", mariadb),
    ("postgres", "/usr/lib/postgresql", postgres),
    ("rsync", "rsync", rsync),
    ("vsftpd", "vsftpd", vsftpd),
]
try:
    for name, need, fn in servers:
        if not (shutil.which(need) or os.path.exists(need)):
            missing.append(name)
            continue
        got = fn()
        if isinstance(got, dict):
            ports.update(got)
        else:
            ports[name] = got
except Exception as e:  # a server that fails to start fails the test, with its log
    print(json.dumps({"error": str(e)}), flush=True)
    stop()
print(json.dumps({"ports": ports, "missing": missing}), flush=True)
sys.stdin.read()
stop()
