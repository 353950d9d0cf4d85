"""A throw-away sandbox of network namespaces that simulates a Docker host.

Product code: ``dockerguard demo`` runs in it, and so do the integration tests (through
``tests/integration/topology.py``), benchmarks or a REPL (as root). Stdlib only, no pytest::

    with Topology(flavour="iptables-nft") as topo:
        [report] = topo.probe_results([Probe("ext", HOST_EXT_V4, 8080)])
        assert report.ok

Layout (documentation addresses only; the root namespace is never touched: even the
veth pairs are created directly inside the namespaces)::

    ext   eth0 198.51.100.10-12/24, 2001:db8:100::10-12/64   external clients; TCP server
       |                                                      on :7000 (every address)
    host  eth0 198.51.100.1/24,  2001:db8:100::1/64           the "Docker host": forwarding on,
          br0  192.0.2.1/24,     2001:db8:2::1/64             Docker-like firewall rules,
          eth1 203.0.113.1/24,   2001:db8:3::1/64             TCP server on :22 (its own service)
       |                  |
    int   eth0 203.0.113.10/24, 2001:db8:3::10/64             internal network (untouched)
    ctr   eth0 192.0.2.2/24, 2001:db8:2::2/64 (veth in br0)   container: TCP 80, 443, 25, 8443,
                                                              9000, 9001; UDP 53 (echo)

Published (DNAT ``! -i br0``): tcp 8080->80, 443, 25, 8443, 9000, 9001; udp 5353->53.
Port 8081 is deliberately NOT published (negative control).

Flavours (how the simulated dockerd programs the host's firewall):

* ``"iptables-legacy"`` / ``"iptables-nft"``: Docker 20-27 style filter/nat rules with a
  DOCKER-USER chain, loaded with that flavour's ``*-restore`` (``docker_ruleset``);
* ``"docker-nftables"``: Docker 29+ with ``"firewall-backend": "nftables"``: tables
  ``ip docker-bridges`` and ``ip6 docker-bridges``, no DOCKER-USER (``docker_nft_ruleset``);
* ``None``: no Docker rules at all (plain routing).

Servers answer TCP with one line ``DG name=<role> proto=tcp port=<port> peer=<client>``;
``ProbeReport.peer`` exposes the client address they saw (to check SNAT/MASQUERADE).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import ipaddress
import json
import os
import re
import secrets
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from .backends.common import iptables_binary
from .model import Family

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

ROLES: tuple[str, ...] = ("ext", "host", "ctr", "int")
# FLAVOURS keeps its meaning "flavours of iptables" (iptables_command() and the tests' fixtures use it).
FLAVOURS: tuple[str, ...] = ("iptables-legacy", "iptables-nft")
IPTABLES_FLAVOURS = FLAVOURS
DOCKER_NFTABLES = "docker-nftables"  # Docker 29+ "firewall-backend": "nftables"
ALL_FLAVOURS: tuple[str, ...] = (*FLAVOURS, DOCKER_NFTABLES)
DOCKER_NFT_TABLE = "docker-bridges"  # in families ip and ip6

Outcome = Literal["open", "refused", "unreachable", "timeout"]

# ext: external clients
EXT_V4 = "198.51.100.10"
EXT_V6 = "2001:db8:100::10"
EXT_SOURCES_V4: tuple[str, ...] = ("198.51.100.10", "198.51.100.11", "198.51.100.12")
EXT_SOURCES_V6: tuple[str, ...] = ("2001:db8:100::10", "2001:db8:100::11", "2001:db8:100::12")
# host: the "docker host"
HOST_EXT_IF = "eth0"
HOST_INT_IF = "eth1"
BRIDGE_IF = "br0"
HOST_EXT_V4 = "198.51.100.1"
HOST_EXT_V6 = "2001:db8:100::1"
HOST_INT_V4 = "203.0.113.1"
HOST_INT_V6 = "2001:db8:3::1"
BRIDGE_V4 = "192.0.2.1"
BRIDGE_V6 = "2001:db8:2::1"
BRIDGE_NET_V4 = "192.0.2.0/24"
BRIDGE_NET_V6 = "2001:db8:2::/64"
# ctr: the container
CTR_V4 = "192.0.2.2"
CTR_V6 = "2001:db8:2::2"
# int: the internal network behind eth1
INT_V4 = "203.0.113.10"
INT_V6 = "2001:db8:3::10"

EGRESS_PORT = 7000  # TCP server on every ext address, target of container egress tests
UNPUBLISHED_PORT = 8081  # nothing listens / no DNAT: negative control
HOST_SERVICE_PORT = 22  # TCP server in the host ns itself (INPUT path)


@dataclass(frozen=True)
class PortMapping:
    """One ``docker run -p host_port:container_port/proto``."""

    proto: str
    host_port: int
    container_port: int


PUBLISHED: tuple[PortMapping, ...] = (
    PortMapping("tcp", 8080, 80),
    PortMapping("tcp", 443, 443),
    PortMapping("tcp", 25, 25),
    PortMapping("tcp", 8443, 8443),
    PortMapping("tcp", 9000, 9000),
    PortMapping("tcp", 9001, 9001),
    PortMapping("udp", 5353, 53),
)
CTR_TCP_PORTS: tuple[int, ...] = tuple(m.container_port for m in PUBLISHED if m.proto == "tcp")
CTR_UDP_PORTS: tuple[int, ...] = tuple(m.container_port for m in PUBLISHED if m.proto == "udp")

# Started by path (not -m): no package import in each server, and it works without installation.
_SERVER_SCRIPT = Path(__file__).resolve().with_name("_probe_server.py")
_NETNS_DIR = "/run/netns"
_NS_NAME_RE = re.compile(r"^dg(\d+)-[0-9a-f]{4}-(?:ext|host|ctr|int)$")
_CLONE_NEWNET = 0x40000000


# ---------------------------------------------------------------------------
# Errors and small helpers
# ---------------------------------------------------------------------------


class CommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message includes stderr (the stock one hides it)."""

    def __str__(self) -> str:
        cmd = " ".join(map(str, self.cmd)) if isinstance(self.cmd, (list, tuple)) else str(self.cmd)
        err = (self.stderr or "").strip() if isinstance(self.stderr, str) else ""
        out = (self.output or "").strip() if isinstance(self.output, str) else ""
        return f"command {cmd!r} exited {self.returncode}: {err or out or '(no output)'}"


class TopologyError(RuntimeError):
    """The topology could not be built (or a server did not come up)."""


def _run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = 30,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, list(argv), proc.stdout, proc.stderr)
    return proc


def _family(family: int | str) -> Family:
    """Accept 4/6, "4"/"6", "ipv4"/"ipv6", "ip"/"ip6" (callers and tests spell families as they like)."""
    key = str(family).lower()
    if key in ("4", "ipv4", "ip", "inet"):
        return Family.IPV4
    if key in ("6", "ipv6", "ip6", "inet6"):
        return Family.IPV6
    raise ValueError(f"unknown address family {family!r}")


def iptables_command(flavour: str, family: int | str, suffix: str = "") -> str:
    """``iptables_command("iptables-nft", 6, "-restore") == "ip6tables-nft-restore"``: the product's
    ``iptables_binary`` for a sandbox flavour (``"iptables-nft"`` is its ``"nft"``)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS}")
    return iptables_binary(flavour.split("-", 1)[1], _family(family), suffix)


# ---------------------------------------------------------------------------
# Docker-like ruleset
# ---------------------------------------------------------------------------


def docker_ruleset(family: int | str, bridge: str = BRIDGE_IF, int_if: str = HOST_INT_IF) -> str:
    """iptables-restore input mimicking dockerd 20-27 with one bridge network and one container.

    Written in iptables-save's canonical spelling so that the rule lines round-trip
    unchanged through ``<flavour>-save`` (tests may compare them verbatim).
    """
    if _family(family) is Family.IPV4:
        net, ctr, ctr_host, loopback = BRIDGE_NET_V4, CTR_V4, f"{CTR_V4}/32", "127.0.0.0/8"
    else:
        net, ctr, ctr_host, loopback = BRIDGE_NET_V6, f"[{CTR_V6}]", f"{CTR_V6}/128", "::1/128"
    nat = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        ":DOCKER - [0:0]",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        f"-A OUTPUT ! -d {loopback} -m addrtype --dst-type LOCAL -j DOCKER",
        f"-A POSTROUTING -s {net} ! -o {bridge} -j MASQUERADE",
        f"-A DOCKER -i {bridge} -j RETURN",
    ]
    filt = [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD DROP [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":DOCKER - [0:0]",
        ":DOCKER-ISOLATION-STAGE-1 - [0:0]",
        ":DOCKER-ISOLATION-STAGE-2 - [0:0]",
        ":DOCKER-USER - [0:0]",
        "-A FORWARD -j DOCKER-USER",
        "-A FORWARD -j DOCKER-ISOLATION-STAGE-1",
        f"-A FORWARD -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-A FORWARD -o {bridge} -j DOCKER",
        f"-A FORWARD -i {bridge} ! -o {bridge} -j ACCEPT",
        f"-A FORWARD -i {bridge} -o {bridge} -j ACCEPT",
        # What the admin of a real host adds so the internal network is routed.
        f"-A FORWARD -i {int_if} -j ACCEPT",
        f"-A FORWARD -o {int_if} -j ACCEPT",
    ]
    for m in PUBLISHED:
        p = m.proto
        nat.append(
            f"-A DOCKER ! -i {bridge} -p {p} -m {p} --dport {m.host_port}"
            f" -j DNAT --to-destination {ctr}:{m.container_port}"
        )
        filt.append(
            f"-A DOCKER -d {ctr_host} ! -i {bridge} -o {bridge} -p {p} -m {p}"
            f" --dport {m.container_port} -j ACCEPT"
        )
    filt += [
        f"-A DOCKER-ISOLATION-STAGE-1 -i {bridge} ! -o {bridge} -j DOCKER-ISOLATION-STAGE-2",
        "-A DOCKER-ISOLATION-STAGE-1 -j RETURN",
        f"-A DOCKER-ISOLATION-STAGE-2 -o {bridge} -j DROP",
        "-A DOCKER-ISOLATION-STAGE-2 -j RETURN",
        "-A DOCKER-USER -j RETURN",
    ]
    return "\n".join([*nat, "COMMIT", *filt, "COMMIT", ""])


def docker_nft_ruleset(bridge: str = BRIDGE_IF, int_if: str = HOST_INT_IF) -> str:
    """``nft -f`` input mimicking dockerd 29+ with ``"firewall-backend": "nftables"``.

    Modelled on moby's generated nftables documentation (integration/network/bridge/nftablesdoc,
    "usernet-portmap"): one user-defined bridge network with one container publishing PUBLISHED,
    userland proxy on (so ``nat-postrouting-in__<bridge>`` stays empty), gateway mode "nat"
    (hence the raw DROP DIRECT ACCESS rule). There is no DOCKER-USER equivalent. The base chain
    ``filter-FORWARD`` hooks forward at priority filter (0) with policy accept; per bridge, verdict
    maps jump to ``filter-forward-in__<bridge>`` (towards containers: established, ICC, the
    published container ports, then drop) and ``filter-forward-out__<bridge>``.
    The two ``<int_if>`` accepts stand for the iptables flavours' admin rules; they change
    nothing while the policy is accept (dockerd sets it to drop only if it enabled forwarding itself).
    nat-OUTPUT's priority is spelled -100 (= dstnat): nft < 1.0.7 refuses "dstnat" on the output hook.
    """
    tables = []
    for family, l3, net, ctr, loopback in (
        ("ip", "ip", BRIDGE_NET_V4, CTR_V4, "ip daddr != 127.0.0.0/8 "),
        ("ip6", "ip6", BRIDGE_NET_V6, CTR_V6, ""),  # moby's ip6 nat-OUTPUT has no loopback test
    ):
        dnat_to = ctr if family == "ip" else f"[{ctr}]"
        dnat = "\n".join(
            f'\t\tiifname != "{bridge}" {m.proto} dport {m.host_port} counter'
            f' dnat to {dnat_to}:{m.container_port} comment "DNAT"'
            for m in PUBLISHED
        )
        published = "\n".join(
            f"\t\t{l3} daddr {ctr} {m.proto} dport {m.container_port} counter accept" for m in PUBLISHED
        )
        jumps = "\n".join(
            f"\tmap {name}-jumps {{\n\t\ttype ifname : verdict\n"
            f'\t\telements = {{ "{bridge}" : jump {name}__{bridge} }}\n\t}}\n'
            for name in ("filter-forward-in", "filter-forward-out", "nat-postrouting-in", "nat-postrouting-out")
        )
        tables.append(
            f"""table {family} {DOCKER_NFT_TABLE} {{
{jumps}
\tchain filter-FORWARD {{
\t\ttype filter hook forward priority filter; policy accept;
\t\toifname vmap @filter-forward-in-jumps
\t\tiifname vmap @filter-forward-out-jumps
\t\tiifname "{int_if}" accept comment "admin: route the internal network"
\t\toifname "{int_if}" accept comment "admin: route the internal network"
\t}}

\tchain nat-OUTPUT {{
\t\ttype nat hook output priority -100; policy accept;
\t\t{loopback}fib daddr type local counter jump nat-prerouting-and-output
\t}}

\tchain nat-POSTROUTING {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tiifname vmap @nat-postrouting-out-jumps
\t\toifname vmap @nat-postrouting-in-jumps
\t}}

\tchain nat-PREROUTING {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tfib daddr type local counter jump nat-prerouting-and-output
\t}}

\tchain nat-prerouting-and-output {{
{dnat}
\t}}

\tchain raw-PREROUTING {{
\t\ttype filter hook prerouting priority raw; policy accept;
\t\t{l3} daddr {ctr} iifname != "{bridge}" counter drop comment "DROP DIRECT ACCESS"
\t}}

\tchain filter-forward-in__{bridge} {{
\t\tct state established,related counter accept
\t\tiifname "{bridge}" counter accept comment "ICC"
{published}
\t\tcounter drop comment "UNPUBLISHED PORT DROP"
\t}}

\tchain filter-forward-out__{bridge} {{
\t\tct state established,related counter accept
\t\tcounter accept comment "OUTGOING"
\t}}

\tchain nat-postrouting-in__{bridge} {{
\t}}

\tchain nat-postrouting-out__{bridge} {{
\t\toifname != "{bridge}" {l3} saddr {net} counter masquerade comment "MASQUERADE"
\t}}
}}
"""
        )
    return "\n".join(tables)


# ---------------------------------------------------------------------------
# Switching the current thread into a namespace
# ---------------------------------------------------------------------------

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python >= 3.12
    if setns is not None:
        setns(fd, _CLONE_NEWNET)
        return
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_path(name: str) -> str:
    """``/run/netns/NAME`` (a value containing ``/`` is taken as a path already)."""
    return name if "/" in name else f"{_NETNS_DIR}/{name}"


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with the *current thread* in network namespace ``name``.

    Only the network namespace changes (not the mount namespace, so ``/sys`` still
    shows the caller's view; netlink, sockets and ``/proc/sys/net`` follow the thread).
    Sockets keep the namespace they were created in; subprocesses and threads started
    inside the block inherit it. Nests fine; not for use across ``await``.
    """
    # /proc/thread-self, not /proc/self: the latter is the main thread's namespace.
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            if os.fstat(target).st_ino != os.stat("/proc/thread-self/ns/net").st_ino:
                _setns(orig)
                raise OSError(f"setns into {name!r} did not take effect")
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(orig)  # failure here must propagate: the thread would be stranded
    finally:
        os.close(orig)


def can_create_netns() -> str | None:
    """None when ``ip netns add`` works here, else the reason it does not."""
    name = f"dg{os.getpid()}-{secrets.token_hex(2)}-ext"
    try:
        proc = _run(["ip", "netns", "add", name], check=False, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if proc.returncode != 0:
        return proc.stderr.strip() or f"ip netns add exited {proc.returncode}"
    _run(["ip", "netns", "del", name], check=False, timeout=10)
    return None


def cleanup_stale_namespaces() -> list[str]:
    """Delete namespaces left by earlier runs of this harness whose creating process is dead.

    Only names matching our own pattern (``dg<pid>-<hex4>-<role>``) with a dead ``<pid>``
    are touched. Returns the names deleted.
    """
    try:
        names = os.listdir(_NETNS_DIR)
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        m = _NS_NAME_RE.match(name)
        if not m or Path(f"/proc/{m.group(1)}").exists():
            continue
        if _run(["ip", "netns", "del", name], check=False, timeout=10).returncode == 0:
            removed.append(name)
    return removed


# ---------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# The topology
# ---------------------------------------------------------------------------

_LIVE: set[Topology] = set()
_LIVE_LOCK = threading.Lock()


def _close_all_live() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for topo in live:
        with contextlib.suppress(Exception):
            topo.close()


atexit.register(_close_all_live)


@dataclass
class _Server:
    role: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass(eq=False)
class Topology:
    """Simulated Docker host in four network namespaces; use as a context manager.

    ``flavour``: "iptables-legacy" or "iptables-nft" selects which
    ``*-restore`` loads the Docker-like rules in the host namespace; "docker-nftables"
    loads Docker 29's nftables tables instead (one ``nft -f``); ``None`` means
    no Docker rules at all (plain routing, FORWARD policy ACCEPT).
    """

    flavour: str | None = "iptables-legacy"
    ready_timeout: float = 10.0
    namespaces: dict[str, str] = field(init=False)
    build_seconds: float = field(init=False, default=0.0)
    _servers: list[_Server] = field(init=False, default_factory=list)
    _tmpdir: Path | None = field(init=False, default=None)
    _closed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if self.flavour is not None and self.flavour not in ALL_FLAVOURS:
            raise ValueError(f"unknown flavour {self.flavour!r}; expected one of {ALL_FLAVOURS} or None")
        stem = f"dg{os.getpid()}-{secrets.token_hex(2)}"
        self.namespaces = {role: f"{stem}-{role}" for role in ROLES}

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Topology:
        start = time.monotonic()
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        self.build_seconds = time.monotonic() - start
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop our processes (by PID) and delete our namespaces. Idempotent, bounded."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_servers()
        finally:
            existing = [n for n in self.namespaces.values() if os.path.exists(netns_path(n))]
            if existing:
                batch = "".join(f"netns del {n}\n" for n in existing)
                _run(["ip", "-force", "-batch", "-"], input=batch, check=False, timeout=30)
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
            with _LIVE_LOCK:
                _LIVE.discard(self)

    def _build(self) -> None:
        n = self.namespaces
        ext, host, ctr, int_ = n["ext"], n["host"], n["ctr"], n["int"]
        self._tmpdir = Path(tempfile.mkdtemp(prefix="dgtopo-"))
        _run(["ip", "-batch", "-"], input="".join(f"netns add {n[r]}\n" for r in ROLES))
        for role in ROLES:
            # No IPv6 DAD, not even for link-local addresses: it would delay v6 by ~2 s.
            # "all" and "default" must both be 0; interfaces created later inherit "default".
            sysctls = {"net/ipv6/conf/all/accept_dad": "0", "net/ipv6/conf/default/accept_dad": "0"}
            # ICMP errors (REJECT, closed UDP ports) are rate-limited per peer; tests send bursts.
            sysctls.update({"net/ipv4/icmp_ratelimit": "0", "net/ipv6/icmp/ratelimit": "0"})
            if role == "host":
                sysctls.update({"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "1"})
            self.write_sysctls(role, sysctls)

        # Veth peers are created directly inside the target namespaces: the root ns never sees them.
        # Explicit, distinct ifindexes: every new netns numbers from 2, and a veth whose
        # ifindex equals its peer's makes the kernel treat its carrier change as
        # non-urgent (linkwatch batches it for up to 1 s), which stalls IPv6 (no
        # solicited-node group joins before the link is "ready") for ~1 s.
        self._ip_batch(
            host,
            f"""
            link add {HOST_EXT_IF} index 10 type veth peer name eth0 index 11 netns {ext}
            link add {HOST_INT_IF} index 20 type veth peer name eth0 index 21 netns {int_}
            link add vethctr index 30 type veth peer name eth0 index 31 netns {ctr}
            link add {BRIDGE_IF} index 40 type bridge stp_state 0
            link set vethctr master {BRIDGE_IF}
            addr add {HOST_EXT_V4}/24 dev {HOST_EXT_IF}
            addr add {HOST_EXT_V6}/64 dev {HOST_EXT_IF} nodad
            addr add {BRIDGE_V4}/24 dev {BRIDGE_IF}
            addr add {BRIDGE_V6}/64 dev {BRIDGE_IF} nodad
            addr add {HOST_INT_V4}/24 dev {HOST_INT_IF}
            addr add {HOST_INT_V6}/64 dev {HOST_INT_IF} nodad
            link set lo up
            link set {HOST_EXT_IF} up
            link set {HOST_INT_IF} up
            link set vethctr up
            link set {BRIDGE_IF} up
            """,
        )
        ext_addrs = "\n".join(
            [f"addr add {a}/24 dev eth0" for a in EXT_SOURCES_V4]
            + [f"addr add {a}/64 dev eth0 nodad" for a in EXT_SOURCES_V6]
        )
        for ns, addrs, gw4, gw6 in (
            (ext, ext_addrs, HOST_EXT_V4, HOST_EXT_V6),
            (
                ctr,
                f"addr add {CTR_V4}/24 dev eth0\naddr add {CTR_V6}/64 dev eth0 nodad",
                BRIDGE_V4,
                BRIDGE_V6,
            ),
            (
                int_,
                f"addr add {INT_V4}/24 dev eth0\naddr add {INT_V6}/64 dev eth0 nodad",
                HOST_INT_V4,
                HOST_INT_V6,
            ),
        ):
            self._ip_batch(
                ns,
                f"""
                {addrs}
                link set lo up
                link set eth0 up
                route add default via {gw4}
                route add ::/0 via {gw6}
                """,
            )

        if self.flavour == DOCKER_NFTABLES:
            # Both tables, one transaction; from a file: nft 0.9.8 cannot read /dev/stdin under `ip netns exec`.
            assert self._tmpdir is not None
            ruleset = self._tmpdir / "docker-bridges.nft"
            ruleset.write_text(docker_nft_ruleset())
            self.run("host", ["nft", "-f", str(ruleset)])
        elif self.flavour is not None:
            for fam in (4, 6):
                # -w: the legacy xtables lock (/run/xtables.lock) is shared by every namespace,
                # so parallel test runs would otherwise fail on each other's lock.
                restore = iptables_command(self.flavour, fam, "-restore")
                self.run("host", [restore, "-w", "5"], input=docker_ruleset(fam))

        # Start all servers first, then wait: their start-up overlaps.
        self._spawn("ctr", "--bind", "::", "--tcp", _csv(CTR_TCP_PORTS), "--udp", _csv(CTR_UDP_PORTS))
        ext_binds = [arg for addr in (*EXT_SOURCES_V4, *EXT_SOURCES_V6) for arg in ("--bind", addr)]
        self._spawn("ext", *ext_binds, "--tcp", str(EGRESS_PORT))
        self._spawn("host", "--bind", "::", "--tcp", str(HOST_SERVICE_PORT))
        deadline = time.monotonic() + self.ready_timeout
        for srv in self._servers:
            self._wait_ready(srv, deadline)
        self._wait_links(deadline)

    def _wait_links(self, deadline: float) -> None:
        """Wait until every link passes traffic, v4 and v6, in both directions.

        Carrier/operstate changes are processed asynchronously, and IPv6 neighbour
        discovery only works once the link is "ready"; IPv4 may work before IPv6.
        The paths checked here do not cross FORWARD, so the Docker rules do not matter.
        """
        checks = [
            Probe(role, dst, HOST_SERVICE_PORT, timeout=0.25)
            for role, dsts in (
                ("ext", (HOST_EXT_V4, HOST_EXT_V6)),
                ("int", (HOST_INT_V4, HOST_INT_V6)),
                ("ctr", (BRIDGE_V4, BRIDGE_V6)),
            )
            for dst in dsts
        ]
        # host -> every ext address: each needs its own neighbour solicitation answered.
        checks += [Probe("host", a, EGRESS_PORT, timeout=0.25) for a in (*EXT_SOURCES_V4, *EXT_SOURCES_V6)]
        checks += [Probe("host", a, CTR_TCP_PORTS[0], timeout=0.25) for a in (CTR_V4, CTR_V6)]
        while True:
            results = self.probe_results(checks)
            if all(r.ok for r in results):
                return
            if time.monotonic() >= deadline:
                bad = ", ".join(f"{r.probe.src_ns}->{r.probe.dst}: {r.outcome}" for r in results if not r.ok)
                raise TopologyError(f"links not ready within {self.ready_timeout}s: {bad}")
            time.sleep(0.02)

    def _ip_batch(self, ns: str, script: str) -> None:
        lines = [ln.strip() for ln in script.strip().splitlines() if ln.strip()]
        _run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n")

    def _spawn(self, role: str, *args: str) -> None:
        assert self._tmpdir is not None
        log = self._tmpdir / f"{role}-server.log"
        with open(log, "wb") as errf:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(role), _python(), str(_SERVER_SCRIPT), "--name", role, *args],
                stdin=subprocess.PIPE,  # EOF on this pipe stops the server if we die
                stdout=subprocess.PIPE,
                stderr=errf,
                start_new_session=True,  # a terminal ^C must not kill it before teardown runs
            )
        self._servers.append(_Server(role, proc, log))

    def _wait_ready(self, srv: _Server, deadline: float) -> None:
        assert srv.proc.stdout is not None
        line = _readline_until(srv.proc.stdout, deadline)
        if line.strip() != b"READY":
            with contextlib.suppress(OSError):
                srv.proc.kill()
            log = srv.log.read_text(errors="replace").strip() if srv.log.exists() else ""
            raise TopologyError(
                f"server in {srv.role} ns not ready within {self.ready_timeout}s"
                f" (exit={srv.proc.poll()}): {log[-2000:] or line!r}"
            )

    def _stop_servers(self) -> None:
        for srv in self._servers:
            if srv.proc.poll() is None:
                with contextlib.suppress(OSError):
                    srv.proc.terminate()
        deadline = time.monotonic() + 2.0
        for srv in self._servers:
            try:
                srv.proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    srv.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    srv.proc.wait(timeout=2.0)
            for f in (srv.proc.stdin, srv.proc.stdout):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()

    # -- introspection / commands ----------------------------------------------------

    def ns(self, role: str) -> str:
        """Real namespace name of a role ("ext", "host", "ctr", "int")."""
        try:
            return self.namespaces[role]
        except KeyError:
            raise KeyError(f"unknown role {role!r}; expected one of {ROLES}") from None

    def netns_path(self, role: str) -> str:
        return netns_path(self.ns(role))

    @property
    def server_pids(self) -> dict[str, int]:
        return {srv.role: srv.proc.pid for srv in self._servers}

    def inside(self, role: str) -> contextlib.AbstractContextManager[None]:
        """``with topo.inside("host"): ...`` - the current thread runs in that namespace."""
        return in_netns(self.ns(role))

    def run(
        self,
        role: str,
        argv: Sequence[str],
        check: bool = True,
        input: str | None = None,
        timeout: float = 30,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside a role's namespace; text mode, stdout/stderr captured.
        ``env`` adds to (overrides in) this process's environment."""
        return _run(
            ["ip", "netns", "exec", self.ns(role), *argv], input=input, check=check, timeout=timeout, env=env
        )

    def iptables(self, family: int | str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run this topology's flavour of (ip6)tables in the host namespace."""
        return self.run(
            "host", [iptables_command(self._need_flavour(), family), "-w", "5", *args], check=check
        )

    def iptables_save(self, family: int | str) -> str:
        """Current ``<flavour>-save`` output of the host namespace."""
        return self.run("host", [iptables_command(self._need_flavour(), family, "-save")]).stdout

    def write_sysctls(self, role: str, values: dict[str, str]) -> None:
        """Set sysctls (``"net/ipv4/ip_forward": "1"``) inside a role's namespace, in-process."""
        with self.inside(role):
            for key, value in values.items():
                if not key.startswith("net/"):
                    raise ValueError(f"{key!r}: only per-namespace net/ sysctls can be set")
                with open(f"/proc/sys/{key}", "w") as f:
                    f.write(value)

    def nft_ruleset(self) -> str:
        """``nft list ruleset`` of the host namespace (every table: Docker's, dockerguard's, iptables-nft's)."""
        return self.run("host", ["nft", "list", "ruleset"]).stdout

    def nft_objects(self) -> list[dict[str, Any]]:
        """``nft -j list ruleset`` of the host namespace: the objects (``{"chain": {...}}``, ...)
        without the metainfo entry."""
        data = json.loads(self.run("host", ["nft", "-j", "list", "ruleset"]).stdout)
        return [item for item in data["nftables"] if "metainfo" not in item]

    def _need_flavour(self) -> str:
        if self.flavour is None:
            raise ValueError("this topology has no iptables flavour (flavour=None)")
        if self.flavour not in FLAVOURS:
            raise ValueError(
                f"flavour {self.flavour!r} simulates Docker's nftables firewall backend: the host has no"
                " iptables rules (and no DOCKER-USER chain); use nft_ruleset() or nft_objects()"
            )
        return self.flavour

    # -- probing ---------------------------------------------------------------------

    def probe_results(self, probes: Iterable[Probe]) -> list[ProbeReport]:
        """Run the probes concurrently (``run_probes``), each from its role's namespace."""
        return run_probes(list(probes), self.namespaces)


def _csv(ports: Iterable[int]) -> str:
    return ",".join(map(str, ports))


def _python() -> str:
    return sys.executable or shutil.which("python3") or "python3"


def _readline_until(stream: IO[bytes], deadline: float) -> bytes:
    """Read one line from a pipe without blocking past ``deadline``."""
    fd = stream.fileno()
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(timeout=remaining):
                break
            chunk = os.read(fd, 256)
            if not chunk:
                break
            buf += chunk
    return buf
