"""The backend-neutral rule model the compiler produces and every backend renders.

Nothing here knows any backend's syntax: it only says which new connections from outside may pass.

A Ruleset is a list of `Chain`s, each an ordered list of typed pieces. The order of the pieces is
decided here, once; every renderer walks `Ruleset.chains` and turns each piece kind into its own syntax
with a function of the same name (`established`, `neighbour_discovery`, `icmp_echo`, `allows`,
`log_drops`, `default`, `to_proxy`, `to_host`), so a new rule kind is one grep away in every driver.

Chains by role, for packets entering an external interface::

    forward hook -> FORWARD   forwarded to containers (after Docker's DNAT): the DOCKER-USER equivalent
    input hook   -> INPUT     addressed to the host itself; dispatches, nothing else:
                      published ports -> PROXY   docker-proxy's path, judged like FORWARD
                      everything else -> HOST    the policy's [host] section, when there is one
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Union

from .net import Limit, Network, PortRange, collapse


class Family(Enum):
    IPV4 = 4
    IPV6 = 6


class Verdict(Enum):
    DROP = "drop"
    REJECT = "reject"


class Role(Enum):
    """What a chain judges. Drivers map each role to their own chain names (backends.common)."""

    FORWARD = "forward"  # forwarded traffic entering an external interface: the DOCKER-USER equivalent
    EGRESS = "egress"  # forwarded traffic leaving through an external interface: containers' own connections
    INPUT = "input"  # traffic entering an external interface addressed to the host: dispatches only
    PROXY = "proxy"  # ... to a published port (docker-proxy listens there): the allows apply as on FORWARD
    HOST = "host"  # ... to anything else, judged by the policy's [host] section

    @property
    def hook(self) -> str | None:
        """The netfilter hook whose packets enter this chain; None: only reached from another chain."""
        return {Role.FORWARD: "forward", Role.EGRESS: "forward", Role.INPUT: "input"}.get(self)

    @property
    def outgoing(self) -> bool:
        """Entered by packets LEAVING through an external interface (else: entering through one)."""
        return self is Role.EGRESS


class PortMatch(Enum):
    """Which destination port an allow compares."""

    PUBLISHED = "published"  # the port before Docker's DNAT (conntrack's original destination port)
    DESTINATION = "destination"  # the packet's own destination port (INPUT: no DNAT happened)


@dataclass(frozen=True)
class AllowRule:
    """New connections of `proto` from `sources` to published host ports `ports` pass.

    One rule per family: a policy entry with IPv4 and IPv6 sources becomes two rules.
    """

    family: Family
    proto: str
    sources: tuple[Network, ...]
    ports: tuple[PortRange, ...]
    comment: str
    limit: Limit | None = None  # new connections per source
    max_connections: int | None = None  # open connections per source
    # The policy entry it came from (index in its [[allow]] / [[host.allow]] list), for metrics and trace;
    # left out of comparisons and repr, so the ruleset digest stays what it was.
    entry: int | None = field(default=None, compare=False, repr=False)

    @property
    def limited(self) -> bool:
        return self.limit is not None or self.max_connections is not None


@dataclass(frozen=True)
class DenyRule:
    """Everything from `sources` (of one family) gets `verdict`, before any allow; with `ports`, only
    connections of `proto` to those published ports."""

    family: Family
    sources: tuple[Network, ...]
    ports: tuple[PortRange, ...]
    proto: str | None
    verdict: Verdict
    comment: str
    entry: int | None = field(default=None, compare=False, repr=False)  # index in [[deny]], as AllowRule's


@dataclass(frozen=True)
class EgressRule:
    """New connections from containers to the outside (one family) that come in through `interfaces`
    (empty: any) from `sources` (empty: any) and go to `destinations` (and `ports` of `proto`) get
    `verdict`: "accept", "drop" or "reject"."""

    family: Family
    interfaces: tuple[str, ...]
    sources: tuple[Network, ...]
    destinations: tuple[Network, ...]
    ports: tuple[PortRange, ...]
    proto: str | None
    verdict: str
    comment: str


@dataclass(frozen=True)
class Element:
    """One (source network, port range) pair of a set-based backend."""

    source: Network
    ports: PortRange


@dataclass(frozen=True)
class SourceGroup:
    """The sources that share exactly the same ports (one family and protocol), collapsed: a backend
    matches them as one source set and one port set, |sources| + |ports| elements instead of the product."""

    sources: tuple[Network, ...]
    ports: tuple[PortRange, ...]
    limit: Limit | None = None
    max_connections: int | None = None

    @property
    def limited(self) -> bool:
        return self.limit is not None or self.max_connections is not None

    @property
    def factored(self) -> bool:
        """Worth its own sets and rule: the (source, port) pairs would cost more elements than the
        separate sets plus what one more rule weighs (FACTOR_COST elements), or it has more than
        FACTOR_SOURCES sources. A group with limits always is: its limits apply to it alone."""
        pairs = len(self.sources) * len(self.ports)
        # A large group is worth it even on one port: iptables then matches one ipset instead of walking a
        # rule per source (nft pays one element and one rule more).
        return (self.limited or pairs > len(self.sources) + len(self.ports) + FACTOR_COST
                or len(self.sources) > FACTOR_SOURCES)


FACTOR_COST = 8
FACTOR_SOURCES = 64


# -- the pieces of a chain, in the order they are judged ---------------------------------------------
@dataclass(frozen=True)
class Established:
    """Established and related traffic passes."""


@dataclass(frozen=True)
class NeighbourDiscovery:
    """IPv6 neighbour discovery passes (without it IPv6 stops working altogether)."""


@dataclass(frozen=True)
class IcmpEcho:
    """ICMP and ICMPv6 echo requests pass."""


@dataclass(frozen=True)
class Allows:
    """New connections matching one of `rules` pass; `port` says which destination port is compared.
    A rule's limits are checked before any rule accepts: over them, a connection gets `over_limit`."""

    rules: tuple[AllowRule, ...]
    port: PortMatch
    over_limit: Verdict = Verdict.DROP

    def rules_for(self, family: Family, proto: str) -> tuple[AllowRule, ...]:
        return tuple(rule for rule in self.rules if rule.family is family and rule.proto == proto)

    def elements(self, family: Family, proto: str) -> tuple[Element, ...]:
        """Disjoint (network, port range) pairs covering exactly what this piece allows."""
        return disjoint_elements(self.rules_for(family, proto))

    def groups(self, family: Family, proto: str) -> tuple[SourceGroup, ...]:
        """The allows of one family and protocol, one group per distinct port list (and limits), in
        policy order."""
        by_ports: dict[tuple[Any, ...], list[AllowRule]] = {}
        for rule in self.rules_for(family, proto):
            by_ports.setdefault((rule.ports, rule.limit, rule.max_connections), []).append(rule)
        return tuple(SourceGroup(rules[0].sources if len(rules) == 1 else collapse(
            net for rule in rules for net in rule.sources), ports, limit, connections)
            for (ports, limit, connections), rules in by_ports.items())

    def factored(self, family: Family, proto: str) -> tuple[tuple[SourceGroup, ...], tuple[Element, ...]]:
        """(groups matched as a source set and a port set, disjoint pairs of all the other groups)."""
        return _factored(self.rules, family, proto)


@dataclass(frozen=True)
class Bans:
    """Sources in the ban sets (written by `dockerguard ban`, fail2ban, crowdsec) are dropped, first."""


@dataclass(frozen=True)
class Denies:
    """Sources of `rules` are refused before any allow (see DenyRule)."""

    rules: tuple[DenyRule, ...]
    port: PortMatch


@dataclass(frozen=True)
class Egress:
    """Containers' new connections to the outside: the first matching rule decides, else `default`
    ("accept", "drop" or "reject")."""

    rules: tuple[EgressRule, ...]
    default: str


@dataclass(frozen=True)
class LogDrops:
    """What the default is about to refuse is logged (rate-limited)."""


@dataclass(frozen=True)
class Default:
    """Everything else gets `verdict`."""

    verdict: Verdict


@dataclass(frozen=True)
class ToProxy:
    """New and established connections to a published port (`ports` per protocol) go to the PROXY chain
    and are judged there; it always decides, nothing comes back."""

    ports: tuple[tuple[str, tuple[PortRange, ...]], ...]

    def ports_of(self, proto: str) -> tuple[PortRange, ...]:
        return dict(self.ports).get(proto, ())


@dataclass(frozen=True)
class ToHost:
    """Everything else goes to the HOST chain ([host] in the policy)."""


Piece = Union[Bans, Denies, Established, NeighbourDiscovery, IcmpEcho, Allows, LogDrops, Default, ToProxy, ToHost,
              Egress]


@dataclass(frozen=True)
class Chain:
    """One judging chain: packets of `role` entering an external interface go through `pieces` in order."""

    role: Role
    pieces: tuple[Piece, ...]


@dataclass(frozen=True)
class HostRules:
    """The INPUT side ([host] in the policy), for packets entering an external interface and addressed
    to the host itself: loopback never reaches it, established/related and (optionally) ICMP echo pass,
    new connections to `allows` ports (plain destination port: no DNAT here) pass, the rest gets `default`.
    IPv6 neighbour discovery always passes, or IPv6 would stop working."""

    allows: tuple[AllowRule, ...]
    icmp_echo: bool
    default: Verdict

    def rules_for(self, family: Family, proto: str) -> tuple[AllowRule, ...]:
        return Allows(self.allows, PortMatch.DESTINATION).rules_for(family, proto)

    @property
    def chain(self) -> Chain:
        pieces: list[Piece] = [Established(), NeighbourDiscovery()]
        if self.icmp_echo:
            pieces.append(IcmpEcho())
        pieces += [Allows(self.allows, PortMatch.DESTINATION, self.default), Default(self.default)]
        return Chain(Role.HOST, tuple(pieces))


@dataclass(frozen=True)
class Ruleset:
    """What dockerguard does with packets entering an external interface: on their way to a container
    (forwarded) and, when `published` is set, addressed to the host on a published port (docker-proxy),
    established/related pass, new connections matching an AllowRule pass, the rest gets `default`.
    `host` judges the rest of the traffic addressed to the host."""

    interfaces: tuple[str, ...]
    default: Verdict
    log_dropped: bool
    allows: tuple[AllowRule, ...]
    host: HostRules | None = None
    # The published host ports per protocol whose INPUT path (docker-proxy) is judged; None: not judged.
    published: tuple[tuple[str, tuple[PortRange, ...]], ...] | None = None
    denies: tuple[DenyRule, ...] = ()
    bans: bool = False  # the ban sets are created and checked first on every path judged
    egress: tuple[EgressRule, ...] = ()
    egress_default: str = "accept"

    @property
    def forward_chain(self) -> Chain:
        return Chain(Role.FORWARD, self._judged(PortMatch.PUBLISHED))

    @property
    def proxy_chain(self) -> Chain:
        return Chain(Role.PROXY, self._judged(PortMatch.DESTINATION))

    def _judged(self, port: PortMatch) -> tuple[Piece, ...]:
        pieces: list[Piece] = [Bans()] if self.bans else []
        if self.denies:
            pieces.append(Denies(self.denies, port))
        pieces += [Established(), Allows(self.allows, port, self.default)]
        if self.log_dropped:
            pieces.append(LogDrops())
        return (*pieces, Default(self.default))

    @property
    def chains(self) -> tuple[Chain, ...]:
        """Every chain to install, in order."""
        chains = [self.forward_chain]
        dispatch: list[Piece] = []
        if self.published is not None:
            dispatch.append(ToProxy(self.published))
            chains.append(self.proxy_chain)
        if self.host is not None:
            dispatch.append(ToHost())
            host = self.host.chain
            chains.append(Chain(host.role, (Bans(), *host.pieces)) if self.bans else host)
        if dispatch:
            chains.insert(1, Chain(Role.INPUT, tuple(dispatch)))
        if self.egress or self.egress_default != "accept":
            chains.append(Chain(Role.EGRESS, (Established(), Egress(self.egress, self.egress_default))))
        return tuple(chains)

    def rules_for(self, family: Family, proto: str) -> tuple[AllowRule, ...]:
        return Allows(self.allows, PortMatch.PUBLISHED).rules_for(family, proto)

    def elements(self, family: Family, proto: str) -> tuple[Element, ...]:
        """Disjoint (network, port range) pairs covering exactly the allowed forwarded traffic."""
        return Allows(self.allows, PortMatch.PUBLISHED).elements(family, proto)

    @functools.cached_property  # the repr of 100,000 sources takes 0.1 s; apply needs the digest twice
    def digest(self) -> str:
        """A short stable fingerprint, shown by plan/status to tell rulesets apart."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=16)
def _factored(rules: tuple[AllowRule, ...], family: Family, proto: str
              ) -> tuple[tuple[SourceGroup, ...], tuple[Element, ...]]:
    # Cached: every chain judging these allows, in every renderer, asks (a blocklist costs a collapse).
    groups = Allows(rules, PortMatch.PUBLISHED).groups(family, proto)
    small = tuple(AllowRule(family, proto, group.sources, group.ports, "") for group in groups if not group.factored)
    return tuple(group for group in groups if group.factored), disjoint_elements(small)


def disjoint_elements(rules: tuple[AllowRule, ...]) -> tuple[Element, ...]:
    """Disjoint (network, port range) pairs covering exactly what `rules` (one family) allow.

    Set-based backends need them disjoint: nftables rejects overlapping interval elements in a
    concatenated set. Ports are cut at every range boundary, the networks of each piece are
    collapsed, and neighbouring pieces with the same networks are joined again.
    """
    if not rules:
        return ()
    spans = [span for rule in rules for span in rule.ports]
    bounds = sorted({span.first for span in spans} | {span.last + 1 for span in spans})
    pieces: list[tuple[PortRange, tuple[Network, ...]]] = []
    for first, after in zip(bounds, bounds[1:]):
        covering = [rule for rule in rules if any(s.first <= first and after - 1 <= s.last for s in rule.ports)]
        if not covering:
            continue
        # The compiler already collapsed each rule's sources: only a mix of rules needs it again.
        collapsed = covering[0].sources if len(covering) == 1 else collapse(
            net for rule in covering for net in rule.sources)
        if pieces and pieces[-1][1] == collapsed and pieces[-1][0].last + 1 == first:
            pieces[-1] = (PortRange(pieces[-1][0].first, after - 1), collapsed)
        else:
            pieces.append((PortRange(first, after - 1), collapsed))
    return tuple(Element(net, span) for span, nets in pieces for net in nets)
