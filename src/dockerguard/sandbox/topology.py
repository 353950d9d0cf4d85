"""``Topology``: the simulated Docker host in four network namespaces (see the package docstring for the
layout), built on entry, torn down on exit: namespaces, veths and bridge, Docker-like rules, servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TopologyError
from . import netns
from .fixtures import (
    ALL_FLAVOURS,
    BRIDGE_IF,
    BRIDGE_V4,
    BRIDGE_V6,
    CTR_TCP_PORTS,
    CTR_UDP_PORTS,
    CTR_V4,
    CTR_V6,
    DOCKER_NFTABLES,
    EGRESS_PORT,
    EXT_SOURCES_V4,
    EXT_SOURCES_V6,
    FLAVOURS,
    HOST_EXT_IF,
    HOST_EXT_V4,
    HOST_EXT_V6,
    HOST_INT_IF,
    HOST_INT_V4,
    HOST_INT_V6,
    HOST_SERVICE_PORT,
    INT_V4,
    INT_V6,
    PROXY_PORT,
    ROLES,
    docker_nft_ruleset,
    docker_ruleset,
    iptables_command,
)
from .netns import in_netns, netns_path, run_command
from .probes import Probe, ProbeReport, run_probes

# Started by path (not -m): no package import in each server, and it works without installation.
_SERVER_SCRIPT = Path(__file__).resolve().with_name("_probe_server.py")


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
    ready_timeout: float = 30.0  # a loaded CI machine starts Python servers slowly
    namespaces: dict[str, str] = field(init=False)
    build_seconds: float = field(init=False, default=0.0)
    _servers: list[_Server] = field(init=False, default_factory=list)
    _tmpdir: Path | None = field(init=False, default=None)
    _closed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if self.flavour is not None and self.flavour not in ALL_FLAVOURS:
            raise ValueError(f"unknown flavour {self.flavour!r}; expected one of {ALL_FLAVOURS} or None")
        self.namespaces = netns.namespace_names(ROLES)

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Topology:
        start = time.monotonic()
        with netns.closing_on_failure(self):
            self._build()
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
            netns.delete_namespaces(self.namespaces.values())  # bounded; nothing to do about a failure
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
            netns.closed(self)

    def _build(self) -> None:
        n = self.namespaces
        ext, host, ctr, int_ = n["ext"], n["host"], n["ctr"], n["int"]
        self._tmpdir = Path(tempfile.mkdtemp(prefix="dgtopo-"))
        netns.create_namespaces(n[role] for role in ROLES)
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
        netns.ip_batch(
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
            """.splitlines(),
            host,
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
            netns.ip_batch(
                f"""
                {addrs}
                link set lo up
                link set eth0 up
                route add default via {gw4}
                route add ::/0 via {gw6}
                """.splitlines(),
                ns,
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
        self._spawn("host", "--bind", "::", "--tcp", _csv((HOST_SERVICE_PORT, PROXY_PORT)))
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
        line = netns.readline_until(srv.proc.stdout, deadline)
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
        return run_command(
            ["ip", "netns", "exec", self.ns(role), *argv],
            input=input,
            check=check,
            timeout=timeout,
            env=None if env is None else {**os.environ, **env},
        )

    def iptables(self, family: int | str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run this topology's flavour of (ip6)tables in the host namespace."""
        return self.run(
            "host", [iptables_command(self._need_flavour(), family), "-w", "5", *args], check=check
        )

    def iptables_save(self, family: int | str) -> str:
        """Current ``<flavour>-save`` output of the host namespace."""
        return self.run("host", [iptables_command(self._need_flavour(), family, "-save")]).stdout

    def write_sysctls(self, role: str, values: Mapping[str, str]) -> None:
        """Set sysctls (``"net/ipv4/ip_forward": "1"``) inside a role's namespace, in-process."""
        netns.write_sysctls(self.ns(role), values)

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

