"""`dockerguard audit`: who can reach each published port under the rules installed now. Pure.

For every port Docker publishes (API and kernel evidence), every address family and both paths into it
(forwarded to the container, and addressed to the host where docker-proxy listens), it compares what the
installed rules let through (read back from the kernel: `Backend.exposure`) with what the policy allows
(the compiled ruleset), and names the ports no allow entry mentions. A path the installed rules let
anyone through while the policy says otherwise is OPEN: `audit` exits 3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .backends import Exposure, InstalledState, PathFinding
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


def altered_paths(installed: InstalledState | None, expected: InstalledState,
                  chain_role: Callable[[str], tuple[Role | None, Family | None]]) -> frozenset[tuple[Role, Family]]:
    """The (role, family) paths whose installed rules cannot be read as the policy's: how traffic reaches our
    rules differs (a hook, a jump, a table flag), or a rule the policy has (same chain and name) was changed
    in place (another interface, port, set, verdict, ...). What such a path lets through is not known."""
    if installed is None:
        return frozenset()
    everything = frozenset((role, family) for role in PATHS for family in Family)
    if set(installed.hooks) != set(expected.hooks):
        return everything
    bodies = {(rule.chain, rule.description): rule.body for rule in expected.rules}
    altered: set[tuple[Role, Family]] = set()
    for rule in installed.rules:
        wanted = bodies.get((rule.chain, rule.description))
        if wanted is None or wanted == rule.body:
            continue
        role, family = chain_role(rule.chain)
        for path_role in PATHS:  # the INPUT chain hands docker-proxy's traffic to the PROXY chain
            if role is path_role or (role is Role.INPUT and path_role is Role.PROXY) or role is None:
                altered.update((path_role, each) for each in Family if family in (None, each))
    return frozenset(altered)


def audit(backend: str, ruleset: Ruleset, exposure: Exposure, discovery: Discovery, *, in_sync: bool,
          path: tuple[PathFinding, ...] = (), altered: frozenset[tuple[Role, Family]] = frozenset()) -> AuditReport:
    """`altered` (see `altered_paths`): paths reported as reachable by anyone, as their rules are not known."""
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
                reachable = exposure.sources(role, family, proto, port)
                if (role, family) in altered:
                    reachable, note = None, "rules changed in place: see `dockerguard diff`"
                reaches.append(Reach(proto, port, family, name, reachable, allowed, note))
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
