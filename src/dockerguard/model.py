"""The backend-neutral rule model the compiler produces and every backend renders.

Nothing here knows any backend's syntax: it only says which new connections from outside may pass.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from enum import Enum

from .policy import Network, PortRange


class Family(Enum):
    IPV4 = 4
    IPV6 = 6


class Verdict(Enum):
    DROP = "drop"
    REJECT = "reject"


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


@dataclass(frozen=True)
class Element:
    """One (source network, port range) pair of a set-based backend."""

    source: Network
    ports: PortRange


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
        return _rules_for(self.allows, family, proto)

    def elements(self, family: Family, proto: str) -> tuple[Element, ...]:
        return disjoint_elements(self.rules_for(family, proto))


@dataclass(frozen=True)
class Ruleset:
    """What the DOCKER-USER equivalent does for packets entering an external interface:
    established/related pass, new connections matching an AllowRule pass, the rest gets `default`."""

    interfaces: tuple[str, ...]
    default: Verdict
    log_dropped: bool
    allows: tuple[AllowRule, ...]
    host: HostRules | None = None

    def rules_for(self, family: Family, proto: str) -> tuple[AllowRule, ...]:
        return _rules_for(self.allows, family, proto)

    def elements(self, family: Family, proto: str) -> tuple[Element, ...]:
        """Disjoint (network, port range) pairs covering exactly the allowed forwarded traffic."""
        return disjoint_elements(self.rules_for(family, proto))

    @property
    def digest(self) -> str:
        """A short stable fingerprint, shown by plan/status to tell rulesets apart."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:12]


def _rules_for(rules: tuple[AllowRule, ...], family: Family, proto: str) -> tuple[AllowRule, ...]:
    return tuple(rule for rule in rules if rule.family is family and rule.proto == proto)


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
        collapsed = covering[0].sources if len(covering) == 1 else tuple(
            ipaddress.collapse_addresses(net for rule in covering for net in rule.sources))  # type: ignore[arg-type]
        if pieces and pieces[-1][1] == collapsed and pieces[-1][0].last + 1 == first:
            pieces[-1] = (PortRange(pieces[-1][0].first, after - 1), collapsed)
        else:
            pieces.append((PortRange(first, after - 1), collapsed))
    return tuple(Element(net, span) for span, nets in pieces for net in nets)
