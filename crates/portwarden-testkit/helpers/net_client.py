#!/usr/bin/env python3
"""Client side of portwarden's firewall tests, run inside the client network namespace.

  connect SRC DST PORT          exit 0 if a TCP connection from SRC succeeds within 1 s
  udp SRC DST PORT              exit 0 if a UDP datagram from SRC gets an answer within 1 s
  hold SRC DST PORT N           open N connections from SRC one by one; print how many
                                succeeded; exit when stdin closes
"""
import socket
import sys


def sock(kind, src, dst):
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, kind)
    s.bind((src, 0))
    s.settimeout(1.0)
    return s


def main():
    cmd, src, dst, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if cmd == "connect":
        s = sock(socket.SOCK_STREAM, src, dst)
        try:
            s.connect((dst, port))
            return 0
        except OSError:
            return 1
    if cmd == "udp":
        s = sock(socket.SOCK_DGRAM, src, dst)
        try:
            s.sendto(b"ping", (dst, port))
            s.recvfrom(512)
            return 0
        except OSError:
            return 1
    if cmd == "hold":
        held = []
        for _ in range(int(sys.argv[5])):
            s = sock(socket.SOCK_STREAM, src, dst)
            try:
                s.connect((dst, port))
                # A reset arrives right after the handshake when the limit rejects it.
                s.settimeout(0.3)
                try:
                    if s.recv(1, socket.MSG_PEEK) == b"":
                        continue
                except socket.timeout:
                    pass
                held.append(s)
            except OSError:
                pass
        print(len(held), flush=True)
        sys.stdin.read()
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
