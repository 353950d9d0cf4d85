"""Connection probes: many TCP connects / UDP echoes at once, from sockets made inside the source namespaces,
each classified as open, refused (RST or port-unreachable: REJECT or nothing listening), unreachable (other
ICMP errors) or timeout (no answer: DROP).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import secrets
import selectors
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .netns import in_netns

Outcome = Literal["open", "refused", "unreachable", "timeout"]


@dataclass(frozen=True)
class Probe:
    """One connection attempt from ``src_ns`` (a role name) to ``dst:port``."""

    src_ns: str
    dst: str
    port: int
    proto: str = "tcp"
    src: str | None = None
    timeout: float = 1.0


@dataclass(frozen=True)
class ProbeReport:
    """What came of one ``Probe``: its outcome, how long it took, and the server's banner."""

    probe: Probe
    outcome: Outcome
    elapsed: float
    banner: str = ""  # server's "DG name=... peer=..." line, if it answered
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "open"

    @property
    def info(self) -> dict[str, str]:
        """The banner's key=value pairs, e.g. ``{"name": "ctr", "port": "80", "peer": "..."}``."""
        return dict(kv.split("=", 1) for kv in self.banner.split() if "=" in kv)

    @property
    def peer(self) -> str | None:
        """Source address the server saw (shows SNAT/MASQUERADE)."""
        return self.info.get("peer")


@dataclass(eq=False)
class _Pending:
    index: int
    probe: Probe
    sock: socket.socket
    start: float
    deadline: float
    token: bytes = b""
    connected: bool = False
    buf: bytes = b""
    done: bool = False


_REFUSED = {errno.ECONNREFUSED, errno.ECONNRESET}


def _classify(err: int) -> Outcome:
    return "refused" if err in _REFUSED else "unreachable"


class _ProbeRun:
    """Drives many non-blocking sockets from one selector loop in the calling thread."""

    def __init__(self, probes: Sequence[Probe]) -> None:
        self.probes = probes
        self.results: list[ProbeReport | None] = [None] * len(probes)
        self.pending: list[_Pending] = []
        self.sel = selectors.DefaultSelector()

    def finish(self, p: _Pending, outcome: Outcome, error: str = "") -> None:
        if p.done:
            return
        p.done = True
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(p.sock)
        p.sock.close()
        banner = p.buf.decode(errors="replace")
        if p.probe.proto == "udp":
            banner = banner[len(p.token) :].lstrip("|")  # strip our echoed token
        self.results[p.index] = ProbeReport(
            p.probe, outcome, time.monotonic() - p.start, banner.strip(), error
        )

    def start(self, i: int) -> None:
        pr = self.probes[i]
        fam = socket.AF_INET if ipaddress.ip_address(pr.dst).version == 4 else socket.AF_INET6
        kind = socket.SOCK_STREAM if pr.proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(fam, kind)
        sock.setblocking(False)
        now = time.monotonic()
        p = _Pending(i, pr, sock, now, now + pr.timeout)
        self.pending.append(p)
        try:
            if pr.src:
                sock.bind((pr.src, 0))
            if pr.proto == "tcp":
                err = sock.connect_ex((pr.dst, pr.port))
                if err not in (0, errno.EINPROGRESS):
                    self.finish(p, _classify(err), os.strerror(err))
                    return
                self.sel.register(sock, selectors.EVENT_WRITE, p)
            else:
                sock.connect((pr.dst, pr.port))  # connected UDP socket: ICMP errors get reported
                p.token = f"dgprobe-{secrets.token_hex(8)}".encode()
                sock.send(p.token)
                self.sel.register(sock, selectors.EVENT_READ, p)
        except OSError as exc:
            self.finish(p, _classify(exc.errno or 0), str(exc))

    def step(self, p: _Pending) -> None:
        if p.done:
            return
        if p.probe.proto == "tcp" and not p.connected:
            err = p.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.finish(p, _classify(err), os.strerror(err))
                return
            p.connected = True
            # The banner gets its own timeout so a late connect is still read.
            p.deadline = time.monotonic() + p.probe.timeout
            self.sel.modify(p.sock, selectors.EVENT_READ, p)
            return
        try:
            chunk = p.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError as exc:
            # A reset after the handshake still means something listened.
            self.finish(p, "open" if p.connected else _classify(exc.errno or 0), str(exc))
            return
        if p.probe.proto == "udp":
            if chunk.startswith(p.token):
                p.buf = chunk
                self.finish(p, "open")
            return  # not our echo: keep waiting
        p.buf += chunk
        if not chunk or b"\n" in p.buf or len(p.buf) > 4096:
            self.finish(p, "open")

    def run(self, netns_of: dict[str, str]) -> list[ProbeReport]:
        try:
            by_ns: dict[str, list[int]] = {}
            for i, pr in enumerate(self.probes):
                if pr.proto not in ("tcp", "udp"):
                    raise ValueError(f"unsupported proto {pr.proto!r}")
                ipaddress.ip_address(pr.dst)  # fail early on names: we never resolve
                by_ns.setdefault(netns_of[pr.src_ns], []).append(i)
            for ns, indices in by_ns.items():
                with in_netns(ns):  # sockets stay in the namespace they were created in
                    for i in indices:
                        self.start(i)
            while True:
                now = time.monotonic()
                for p in self.pending:
                    if not p.done and now >= p.deadline:
                        # Connected but no banner yet is still "open".
                        self.finish(p, "open" if p.connected else "timeout")
                live = [p.deadline for p in self.pending if not p.done]
                if not live:
                    break
                for key, _ in self.sel.select(timeout=max(0.0, min(live) - now)):
                    self.step(key.data)
        finally:
            for p in self.pending:
                self.finish(p, "timeout", "aborted")  # no-op for finished probes
            self.sel.close()
        return [r for r in self.results if r is not None]


def run_probes(probes: Sequence[Probe], netns_of: dict[str, str]) -> list[ProbeReport]:
    """Run all probes concurrently; wall time ~ the largest single timeout.

    ``netns_of`` maps each probe's ``src_ns`` to a namespace name. Sockets are created
    inside their source namespace (``in_netns``) and then driven from one selector
    loop in the calling thread: no subprocess, no threads.
    """
    return _ProbeRun(list(probes)).run(netns_of)
