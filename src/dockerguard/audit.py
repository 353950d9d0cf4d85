"""`dockerguard audit`: who can reach each published port under the rules installed now. Pure.

For every port Docker publishes (API and kernel evidence), every address family and both paths into it
(forwarded to the container, and addressed to the host where docker-proxy listens), it compares what the
installed rules let through (read back from the kernel: `Backend.exposure`) with what the policy allows
(the compiled ruleset), and names the ports no allow entry mentions. A path the installed rules let
anyone through while the policy says otherwise is OPEN: `audit` exits 3.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backends import Exposure, PathFinding
from .model import Family, Role, Ruleset
from .net import AddressError, Cidr, network_of, parse_address
from .published import Discovery, Port

PATHS = {Role.FORWARD: "forward", Role.PROXY: "docker-proxy"}
_LOOPBACK = {Family.IPV4: "127.0.0.1", Family.IPV6: "::1"}


@dataclass(frozen=True)
class Reach:
    """One published port, family and path: who the installed rules let connect, and who the policy allows.
    `reachable`/`allowed`: None means anyone (not judged), () nobody, else the source networks."""

    proto: str
    port: int
    family: Family
    path: str  # "forward" or "docker-proxy"
    reachable: tuple[str, ...] | None
    allowed: tuple[str, ...] | None
    note: str = ""

    @property
    def verdict(self) -> str:
        """"ok", "OPEN" (more can connect than the policy allows) or "closed" (fewer)."""
        if _covers(self.allowed, self.reachable):
            return "ok" if _covers(self.reachable, self.allowed) else "closed"
        return "OPEN"


@dataclass(frozen=True)
class AuditReport:
    backend: str
    reaches: tuple[Reach, ...]
    unmentioned: tuple[Port, ...]  # published, but no allow entry names the port: nobody may connect
    in_sync: bool  # the installed rules equal the policy's
    path: tuple[PathFinding, ...]
    evidence: tuple[tuple[str, str], ...]

    @property
    def open(self) -> tuple[Reach, ...]:
        return tuple(reach for reach in self.reaches if reach.verdict == "OPEN")


def audit(backend: str, ruleset: Ruleset, exposure: Exposure, discovery: Discovery, *, in_sync: bool,
          path: tuple[PathFinding, ...] = ()) -> AuditReport:
    bindings = dict(discovery.bindings)
    reaches = []
    for proto, port in sorted(discovery.ports):
        bound = bindings.get((proto, port))  # None: the API did not say
        for family in Family:
            if bound is not None and not any(_binds(ip, family) for ip in bound):
                continue  # Docker does not publish this port on this family
            loopback_only = bound is not None and all(ip in ("127.0.0.1", "::1") for ip in bound if _binds(ip, family))
            for role, name in PATHS.items():
                allowed = None if role is Role.PROXY and ruleset.published is None else _allowed(
                    ruleset, family, proto, port)
                if loopback_only:
                    reaches.append(Reach(proto, port, family, name, (), allowed, f"bound to {_LOOPBACK[family]}"))
                    continue
                note = "" if allowed is not None else "filter_proxy_path = false"
                reaches.append(Reach(proto, port, family, name, exposure.sources(role, family, proto, port),
                                     allowed, note))
    unmentioned = tuple((proto, port) for proto, port in sorted(discovery.ports)
                        if not any(rule.proto == proto and any(s.first <= port <= s.last for s in rule.ports)
                                   for rule in ruleset.allows))
    return AuditReport(backend, tuple(reaches), unmentioned, in_sync, path, discovery.evidence)


def _allowed(ruleset: Ruleset, family: Family, proto: str, port: int) -> tuple[str, ...]:
    return tuple(sorted({str(net) for rule in ruleset.rules_for(family, proto)
                         if any(span.first <= port <= span.last for span in rule.ports) for net in rule.sources}))


def _binds(ip: str, family: Family) -> bool:
    """Does a PublishedPort's host IP ("0.0.0.0", "::", "198.51.100.1", "") serve this family?"""
    if not ip:
        return True
    try:
        return parse_address(ip)[0] == family.value
    except AddressError:
        return True


def _covers(outer: tuple[str, ...] | None, inner: tuple[str, ...] | None) -> bool:
    """Does `outer` let through everyone `inner` does? (None: anyone.)"""
    if outer is None:
        return True
    if inner is None:
        return any(network_of(net).prefixlen == 0 for net in outer)
    networks = [network_of(net) for net in outer]
    return all(any(_within(network_of(net), wide) for wide in networks) for net in inner)


def _within(net: Cidr, wide: Cidr) -> bool:
    return net.version == wide.version and wide.value <= net.value and net.last <= wide.last
