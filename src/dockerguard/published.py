"""Which host ports Docker publishes right now, from every source that can tell.

A published port is reachable on two paths: forwarded to the container after Docker's DNAT (what the
forward chain judges), and addressed to the host itself, where docker-proxy listens (IPv6 to a container
without IPv6, hairpin traffic, Docker without DNAT rules): the INPUT path. To judge the second path
dockerguard must know the ports, and it asks everyone who knows, so it works when one of them is down:

- the Docker API (`/containers/json`: each container's PublicPort/Type),
- Docker's DNAT rules in the kernel: iptables' nat chain DOCKER (both flavours, IPv4 and IPv6) and
  Docker 29's nftables tables `ip`/`ip6 docker-bridges`,
- docker-proxy processes of this network namespace (their `-proto`/`-host-port` arguments).

Protecting a port nobody publishes any more costs nothing (nothing listens there), so the union wins.
`parse_*` functions are pure; `discover` reads the host (best effort: what fails is reported, not raised).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends.common import iptables_binary, run_tool
from .docker import ContainerInfo
from .errors import DockerguardError
from .model import Family
from .net import PROTOCOLS

Port = tuple[str, int]  # (protocol, host port)

_DPORT = re.compile(r"(?:^|\s)-p (tcp|udp)\b.*?--dport (\d+)(?::(\d+))?(?:\s|$)")
_PROXY_ARG = re.compile(r"^--?(proto|host-port)(?:=(.*))?$")


@dataclass(frozen=True)
class Discovery:
    """The published ports found, per source what it said (or why it could not say), and the host
    addresses Docker binds each port to (only the Docker API tells those)."""

    ports: frozenset[Port] = frozenset()
    evidence: tuple[tuple[str, str], ...] = ()
    bindings: tuple[tuple[Port, tuple[str, ...]], ...] = ()
    owners: tuple[tuple[Port, tuple[str, ...]], ...] = ()  # the containers publishing each port (API only)

    @property
    def by_protocol(self) -> dict[str, tuple[int, ...]]:
        return {proto: tuple(sorted(port for p, port in self.ports if p == proto)) for proto in PROTOCOLS}


@dataclass
class _Collector:
    ports: set[Port] = field(default_factory=set)
    evidence: list[tuple[str, str]] = field(default_factory=list)

    def add(self, source: str, found: Iterable[Port]) -> None:
        found = sorted(set(found))
        self.ports.update(found)
        self.evidence.append((source, _describe(found)))

    def failed(self, source: str, why: str) -> None:
        self.evidence.append((source, f"unreadable ({why})"))

    def result(self, bindings: dict[Port, set[str]], owners: dict[Port, set[str]]) -> Discovery:
        return Discovery(frozenset(self.ports), tuple(self.evidence),
                         tuple(sorted((port, tuple(sorted(ips))) for port, ips in bindings.items())),
                         tuple(sorted((port, tuple(sorted(names))) for port, names in owners.items())))


# -- pure parsers ---------------------------------------------------------------------------------------
def from_containers(containers: Iterable[ContainerInfo]) -> set[Port]:
    return {(port.proto, port.host_port) for container in containers for port in container.ports
            if port.proto in PROTOCOLS and 1 <= port.host_port <= 65535}


def parse_iptables_nat(save_text: str) -> set[Port]:
    """DNAT rules of Docker's nat chain DOCKER in an iptables-save dump (any table order)."""
    ports: set[Port] = set()
    table = ""
    for line in save_text.split("\n"):
        if line.startswith("*"):
            table = line[1:].strip()
        elif table == "nat" and line.startswith("-A DOCKER ") and "-j DNAT" in line:
            match = _DPORT.search(line)
            if match:
                first = int(match.group(2))
                last = int(match.group(3) or first)
                ports.update((match.group(1), port) for port in range(first, min(last, 65535) + 1))
    return ports


def parse_nft_dnat(listing: dict[str, Any]) -> set[Port]:
    """Ports of rules that DNAT on a destination port match, in a JSON listing of docker-bridges."""
    ports: set[Port] = set()
    for item in listing.get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if not rule or not any("dnat" in statement for statement in rule.get("expr", [])):
            continue
        for statement in rule["expr"]:
            match = statement.get("match") if isinstance(statement, dict) else None
            if not match:
                continue
            left = match.get("left") or {}
            payload = left.get("payload") if isinstance(left, dict) else None
            if payload and payload.get("field") == "dport" and payload.get("protocol") in PROTOCOLS:
                ports.update((payload["protocol"], port) for port in _nft_ports(match.get("right")))
    return ports


def _nft_ports(value: Any) -> Iterator[int]:
    if isinstance(value, int):
        yield value
    elif isinstance(value, dict) and "range" in value:
        first, last = (int(bound) for bound in value["range"])
        yield from range(first, min(last, 65535) + 1)
    elif isinstance(value, dict) and "set" in value:
        for item in value["set"]:
            yield from _nft_ports(item)


def parse_proxy_argv(argv: list[str]) -> Port | None:
    """docker-proxy's (-proto tcp -host-ip X -host-port N ...) published port, or None."""
    values: dict[str, str] = {}
    index = 0
    while index < len(argv):
        match = _PROXY_ARG.match(argv[index])
        if match:
            value = match.group(2)
            if value is None and index + 1 < len(argv):
                index += 1
                value = argv[index]
            values[match.group(1)] = value or ""
        index += 1
    proto, port = values.get("proto", "tcp"), values.get("host-port", "")
    if proto in PROTOCOLS and port.isdigit() and 1 <= int(port) <= 65535:
        return proto, int(port)
    return None


# -- reading the host -------------------------------------------------------------------------------------
def discover(containers: Callable[[], list[ContainerInfo]] | None, *, proc: Path = Path("/proc")) -> Discovery:
    """Every source's published ports (see the module docstring). `containers` asks the Docker API."""
    found = _Collector()
    bindings: dict[Port, set[str]] = {}
    owners: dict[Port, set[str]] = {}
    if containers is not None:
        try:
            listed = containers()
        except DockerguardError as exc:
            found.failed("Docker API", str(exc))
        else:
            found.add("Docker API", from_containers(listed))
            for container in listed:
                for port in container.ports:
                    bindings.setdefault((port.proto, port.host_port), set()).add(port.host_ip)
                    owners.setdefault((port.proto, port.host_port), set()).add(container.name)
    for flavour in ("legacy", "nft"):
        for family in Family:
            binary = iptables_binary(flavour, family, "-save")
            try:
                proc_result = run_tool([binary])  # a plain dump: `-t nat` would create a legacy table
            except (OSError, subprocess.SubprocessError) as exc:
                found.failed(binary, str(exc))
                continue
            if proc_result.returncode == 0:
                found.add(f"{binary} nat DOCKER", parse_iptables_nat(proc_result.stdout))
    found.add("docker-bridges DNAT", _nft_dnat(found))
    try:
        found.add("docker-proxy processes", _proxy_ports(proc))
    except OSError as exc:
        found.failed("docker-proxy processes", str(exc))
    return found.result(bindings, owners)


def _nft_dnat(found: _Collector) -> set[Port]:
    try:
        from .backends.nft.libnft import Libnftables

        client = Libnftables()
    except ImportError:
        return set()
    ports: set[Port] = set()
    for family in ("ip", "ip6"):
        try:
            rc, output, _ = client.json_cmd({"nftables": [{"list": {"table": {
                "family": family, "name": "docker-bridges"}}}]}, json_output=True)
        except OSError as exc:
            found.failed("docker-bridges", str(exc))
            return ports
        if rc == 0:
            ports |= parse_nft_dnat(json.loads(output))
    return ports


def _proxy_ports(proc: Path) -> set[Port]:
    """docker-proxy processes in this network namespace (another namespace's proxies are not ours)."""
    ours = os.stat(proc / "thread-self" / "ns" / "net").st_ino  # the thread may have entered a netns
    ports: set[Port] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "docker-proxy":
                continue
            if os.stat(entry / "ns" / "net").st_ino != ours:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # the process ended meanwhile, or is not ours to read
            continue
        port = parse_proxy_argv([arg.decode(errors="replace") for arg in argv if arg])
        if port is not None:
            ports.add(port)
    return ports


def _describe(ports: list[Port]) -> str:
    if not ports:
        return "none"
    return ", ".join(f"{port}/{proto}" for proto, port in ports)
