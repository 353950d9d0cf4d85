#!/usr/bin/env python3
"""Tiny TCP-banner / UDP-echo server for the namespace sandbox (``dockerguard.sandbox``).

Launched by ``dockerguard.sandbox.Topology`` with ``ip netns exec NS python3 .../_probe_server.py ...``.
Stand-alone on purpose (stdlib only, Python >= 3.9, imports nothing from dockerguard): it
runs in a separate process inside a network namespace, started by path.

* TCP: on accept, send one line ``DG name=<name> proto=tcp port=<port> peer=<addr>\\n``
  and close. The peer address lets tests check whether a connection was SNATed.
* UDP: reply with the received datagram followed by ``|DG name=... proto=udp ...\\n``,
  so the reply starts with the exact bytes that were sent (an echo).
* Prints ``READY`` on stdout once every socket is listening.
* Exits when stdin reaches EOF: the parent keeps the pipe open, so the server
  cannot outlive a test run that died without tearing down.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import sys


def _ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def _peer(addr: str) -> str:
    # Dual-stack sockets report IPv4 peers as v4-mapped IPv6 addresses.
    return addr[7:] if addr.startswith("::ffff:") else addr


def _open(proto: str, bind: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        # "::" serves IPv4 too; a specific v6 address is v6-only anyway.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if bind == "::" else 1)
    sock.bind((bind, port))
    if proto == "tcp":
        sock.listen(128)
    sock.setblocking(False)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="server")
    parser.add_argument("--bind", action="append", default=[], help="address to bind (repeatable)")
    parser.add_argument("--tcp", type=_ports, default=[], help="comma-separated TCP ports")
    parser.add_argument("--udp", type=_ports, default=[], help="comma-separated UDP ports")
    args = parser.parse_args(argv)
    binds: list[str] = args.bind or ["::"]

    sel = selectors.DefaultSelector()
    for bind in binds:
        for proto, ports in (("tcp", args.tcp), ("udp", args.udp)):
            for port in ports:
                sel.register(_open(proto, bind, port), selectors.EVENT_READ, (proto, port))
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, ("stdin", 0))
    print("READY", flush=True)

    while True:
        for key, _ in sel.select():
            proto, port = key.data
            if proto == "stdin":
                if not os.read(key.fd, 4096):
                    return 0  # parent went away
                continue
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if proto == "tcp":
                    conn, peer = sock.accept()
                    with conn:
                        # A fresh socket's send buffer is empty: this short write never blocks.
                        conn.setblocking(True)
                        line = f"DG name={args.name} proto=tcp port={port} peer={_peer(peer[0])}\n"
                        conn.sendall(line.encode())
                else:
                    data, peer = sock.recvfrom(65535)
                    line = f"|DG name={args.name} proto=udp port={port} peer={_peer(peer[0])}\n"
                    sock.sendto(data + line.encode(), peer)
            except OSError:
                continue  # client vanished (reset, unreachable); keep serving others


if __name__ == "__main__":
    sys.exit(main())
