"""`dockerguard trace`: which of our rules decides a new connection, by walking the compiled ruleset. Pure.

The walk follows the pieces of each chain in the order every driver renders them (model.Ruleset.chains):
bans, denies, established (never a new connection), allows, log, default; the INPUT side dispatches to
the PROXY chain (published ports) or the HOST chain ([host]). It judges the policy as compiled, not the
kernel: `Engine.trace` says when the installed rules differ from it (drift).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import (
    Allows,
    Bans,
    Chain,
    Default,
    Denies,
    Established,
    Family,
    IcmpEcho,
    LogDrops,
    NeighbourDiscovery,
    Role,
    Ruleset,
    ToHost,
    ToProxy,
)
from .net import Network, PortRange

PATHS = ("forward", "input")  # forwarded to a container (published port), or addressed to the host


@dataclass(frozen=True)
class Connection:
    """A new connection from `source` (one address: a /32 or /128) to host port `port` (the published port,
    before Docker's DNAT) entering `interface` (None: an external one)."""

    source: Network
    port: int
    proto: str = "tcp"
    path: str = "forward"
    interface: str | None = None

    @property
    def family(self) -> Family:
        return Family.IPV4 if self.source.version == 4 else Family.IPV6


@dataclass(frozen=True)
class TraceStep:
    """One rule looked at: its chain role, piece kind, what it is, whether it matched and what it does."""

    role: str
    kind: str
    rule: str
    matched: bool
    verdict: str | None = None


@dataclass(frozen=True)
class Decision:
    """`verdict`: accept, drop, reject, or "not judged" (dockerguard lets it pass to Docker's own rules).
    `section`/`entry`/`comment`: the policy entry that decided, when one did."""

    verdict: str
    role: str | None
    kind: str
    rule: str
    section: str | None = None
    entry: int | None = None
    comment: str = ""
    steps: tuple[TraceStep, ...] = ()
    also: tuple[str, ...] = ()  # other entries that match too (shadowed by the deciding one)
    notes: tuple[str, ...] = field(default=())


def trace(ruleset: Ruleset, connection: Connection, banned: tuple[Network, ...] = ()) -> Decision:
    if connection.path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}, not {connection.path!r}")
    if connection.interface is not None and connection.interface not in ruleset.interfaces:
        return Decision("not judged", None, "interface", f"{connection.interface} is not an external interface "
                        f"({', '.join(ruleset.interfaces)}): dockerguard does not look at it")
    chains = {chain.role: chain for chain in ruleset.chains}
    steps: list[TraceStep] = []
    if connection.path == "forward":
        return _walk(chains[Role.FORWARD], ruleset, connection, banned, steps)
    inbound = chains.get(Role.INPUT)
    if inbound is None:
        return Decision("not judged", Role.INPUT.value, "path", "no INPUT rules: this policy judges neither "
                        "docker-proxy's path (filter_proxy_path) nor the host ([host])")
    for piece in inbound.pieces:
        if isinstance(piece, ToProxy):
            hit = _in_ports(connection.port, piece.ports_of(connection.proto))
            steps.append(TraceStep(Role.INPUT.value, "dispatch", f"published {connection.proto} ports -> proxy",
                                   hit, "goto proxy" if hit else None))
            if hit:
                return _walk(chains[Role.PROXY], ruleset, connection, banned, steps)
        elif isinstance(piece, ToHost):
            steps.append(TraceStep(Role.INPUT.value, "dispatch", "everything else -> host", True, "goto host"))
            return _walk(chains[Role.HOST], ruleset, connection, banned, steps)
    return Decision("not judged", Role.INPUT.value, "path", f"port {connection.port}/{connection.proto} is not "
                    "published and there is no [host] section", steps=tuple(steps))


def _walk(chain: Chain, ruleset: Ruleset, connection: Connection, banned: tuple[Network, ...],
          steps: list[TraceStep]) -> Decision:
    role = chain.role.value
    family, source = connection.family, connection.source
    notes: list[str] = []
    for piece in chain.pieces:
        if isinstance(piece, Bans):
            hit = [net for net in banned if net.contains(source.version, source.value)]
            steps.append(TraceStep(role, "ban", "banned sources -> drop", bool(hit), "drop" if hit else None))
            if hit:
                return Decision("drop", role, "ban", f"{hit[0]} is in the ban set", steps=tuple(steps))
        elif isinstance(piece, Denies):
            for deny in piece.rules:
                if deny.family is not family:
                    continue
                proto = deny.proto or "tcp"  # a deny with ports and no proto is rendered for tcp
                hit = _in_networks(source, deny.sources) and (
                    not deny.ports or (connection.proto == proto and _in_ports(connection.port, deny.ports)))
                text = f"deny {_describe_sources(deny.sources)}" + (
                    f" {proto} {_describe_ports(deny.ports)}" if deny.ports else "")
                steps.append(TraceStep(role, "deny", text, hit, deny.verdict.value if hit else None))
                if hit:
                    return Decision(deny.verdict.value, role, "deny", text, "deny", deny.entry, deny.comment,
                                    tuple(steps))
        elif isinstance(piece, Established):
            steps.append(TraceStep(role, "established", "established,related -> accept", False))
        elif isinstance(piece, (NeighbourDiscovery, IcmpEcho)):
            continue  # ICMP only: never a tcp/udp connection
        elif isinstance(piece, Allows):
            matching = [rule for rule in piece.rules_for(family, connection.proto)
                        if _in_networks(source, rule.sources) and _in_ports(connection.port, rule.ports)]
            section = "host.allow" if chain.role is Role.HOST else "allow"
            for rule in piece.rules_for(family, connection.proto):  # up to the first match: it decides
                hit = rule in matching
                text = f"allow {rule.proto} {_describe_sources(rule.sources)} {_describe_ports(rule.ports)}"
                steps.append(TraceStep(role, "allow", text + (f" ({rule.comment})" if rule.comment else ""),
                                       hit, "accept" if hit else None))
                if hit:
                    break
            if matching:
                first = matching[0]
                if first.limited:
                    notes.append(f"within its limits ({_limits(first)}); over them it gets {piece.over_limit.value}")
                return Decision("accept", role, "allow", f"allow {first.proto} {_describe_sources(first.sources)} "
                                f"{_describe_ports(first.ports)}", section, first.entry, first.comment, tuple(steps),
                                tuple(f"{section}[{rule.entry}]" + (f" ({rule.comment})" if rule.comment else "")
                                      for rule in matching[1:]), tuple(notes))
        elif isinstance(piece, LogDrops):
            notes.append("logged (rate-limited) before the default refuses it")
        elif isinstance(piece, Default):
            steps.append(TraceStep(role, "default", f"default {piece.verdict.value}", True, piece.verdict.value))
            return Decision(piece.verdict.value, role, "default", f"default {piece.verdict.value}: no allow entry "
                            "matches", steps=tuple(steps), notes=tuple(notes))
    raise AssertionError(f"chain {role} has no default")  # every judging chain ends in one


def _in_networks(source: Network, networks: tuple[Network, ...]) -> bool:
    return any(net.contains(source.version, source.value) for net in networks)


def _in_ports(port: int, spans: tuple[PortRange, ...]) -> bool:
    return any(span.first <= port <= span.last for span in spans)


def _describe_sources(sources: tuple[Network, ...]) -> str:
    if any(net.prefixlen == 0 for net in sources):
        return "from any"
    shown = ", ".join(map(str, sources[:3]))
    return f"from {shown}" + (f" (+{len(sources) - 3} more)" if len(sources) > 3 else "")


def _describe_ports(spans: tuple[PortRange, ...]) -> str:
    return "port " + ",".join(map(str, spans)) if spans else "any port"


def _limits(rule: object) -> str:
    limit = getattr(rule, "limit", None)
    connections = getattr(rule, "max_connections", None)
    parts = [f"{limit.rate}/{limit.per}"] if limit is not None else []
    parts += [f"{connections} connections"] if connections is not None else []
    return ", ".join(parts)
