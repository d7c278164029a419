#!/usr/bin/env python3
"""Small fake servers for portwarden's check tests, run inside a network namespace the
test creates. Each argument is KIND@ADDR:PORT; prints "ready" once every socket is bound
and serves until killed (by the test, by PID).

KINDs: mysql-ssl, mysql-plain (greeting with/without CLIENT_SSL), pg-n, pg-s (SSLRequest
answered N/S), banner (sends "login: "), http, silent, hold (keeps connections open for
30 s), udp (a bound UDP socket), udpecho (answers every datagram). ADDR may be IPv6 in
brackets: hold@[fd99::1]:873.
"""
import asyncio
import socket
import struct
import sys

CLIENT_SSL = 0x0800


def mysql_greeting(ssl):
    caps = (0xF7FF & ~CLIENT_SSL) | (CLIENT_SSL if ssl else 0)
    p = b"\x0a" + b"8.0.36\x00" + struct.pack("<I", 7) + b"12345678" + b"\x00"
    p += struct.pack("<H", caps) + b"\x21\x02\x00\xff\xc1\x15" + b"\x00" * 10
    p += b"abcdefghijkl\x00mysql_native_password\x00"
    return struct.pack("<I", len(p))[:3] + b"\x00" + p


async def handle(kind, reader, writer):
    try:
        if kind.startswith("mysql"):
            writer.write(mysql_greeting(kind == "mysql-ssl"))
        elif kind.startswith("pg"):
            req = await asyncio.wait_for(reader.readexactly(8), 2)
            if req == b"\x00\x00\x00\x08\x04\xd2\x16\x2f":
                writer.write(b"S" if kind == "pg-s" else b"N")
        elif kind == "banner":
            writer.write(b"login: ")
        elif kind == "http":
            await asyncio.wait_for(reader.read(512), 2)
            writer.write(b"HTTP/1.0 200 OK\r\nServer: fake\r\n\r\n")
        await writer.drain()
        await asyncio.sleep({"silent": 3, "hold": 30}.get(kind, 1))
    except Exception:
        pass
    finally:
        writer.close()


async def main(specs):
    keep = []
    for spec in specs:
        kind, addr = spec.split("@")
        host, port = addr.rsplit(":", 1)
        host = host.strip("[]")
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        if kind in ("udp", "udpecho"):
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.bind((host, int(port)))
            keep.append(s)
            if kind == "udpecho":
                loop = asyncio.get_running_loop()
                loop.add_reader(s.fileno(), lambda s=s: s.sendto(b"pong", s.recvfrom(512)[1]))
            continue
        srv = await asyncio.start_server(lambda r, w, k=kind: handle(k, r, w), host, int(port))
        keep.append(srv)
    print("ready", flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
