"""Policy -> Ruleset: a pure function, no I/O, no backend syntax."""

from __future__ import annotations

from collections.abc import Iterable

from .containers import ResolvedEgress, resolve_egress
from .model import AllowRule, DenyRule, EgressRule, Family, HostRules, Ruleset, Verdict
from .net import PROTOCOLS, Network, PortRange, collapse
from .policy import Allow, Policy, SetRef, Source


def compile_policy(policy: Policy, published: Iterable[tuple[str, int]] = (),
                   egress: tuple[ResolvedEgress, ...] | None = None) -> Ruleset:
    """`published`: the (protocol, host port) pairs Docker publishes now (dockerguard.published); their
    INPUT path is judged unless the policy says `filter_proxy_path = false`. `egress`: the [[egress]]
    entries with their containers and networks looked up (containers.resolve_egress)."""
    if any(entry.containers is not None for entry in policy.allow):
        raise ValueError("container selectors must be resolved first (dockerguard.containers.resolve_containers)")
    if egress is None:
        if any(entry.containers is not None or entry.networks for entry in policy.egress):
            raise ValueError("egress selectors must be resolved first (dockerguard.containers.resolve_egress)")
        egress = resolve_egress(policy, [], [])
    host = None
    if policy.host is not None:
        host = HostRules(_allow_rules(policy, policy.host.allow), policy.host.icmp_echo,
                         Verdict(policy.host.default))
    return Ruleset(
        interfaces=policy.external_interfaces,
        default=Verdict(policy.default),
        log_dropped=policy.log_dropped,
        allows=_allow_rules(policy, policy.allow),
        host=host,
        published=_published(published) if policy.filter_proxy_path else None,
        denies=_deny_rules(policy),
        bans=policy.bans,
        egress=_egress_rules(policy, egress),
        egress_default=_EGRESS_VERDICT[policy.egress_default],
    )


_EGRESS_VERDICT = {"allow": "accept", "drop": "drop", "reject": "reject"}


def _egress_rules(policy: Policy, resolved: tuple[ResolvedEgress, ...]) -> tuple[EgressRule, ...]:
    """Per entry and family, in policy order; an entry whose containers or networks are not there now
    matches nothing and is left out."""
    rules: list[EgressRule] = []
    for item in resolved:
        if not item.selected:
            continue
        entry = item.entry
        sources = dict(_by_family(collapse(item.sources)))
        destinations = dict(_by_family(collapse(_resolve_sources(policy, entry.destinations))))
        for family in Family:
            if family not in destinations or (item.sources and family not in sources):
                continue  # nothing of this family is selected
            rules.append(EgressRule(family, item.interfaces, sources.get(family, ()), destinations[family],
                                    _merge_ports(entry.ports), entry.proto, _EGRESS_VERDICT[entry.action],
                                    entry.comment))
    return tuple(rules)


def _deny_rules(policy: Policy) -> tuple[DenyRule, ...]:
    """One rule per entry and address family, sources resolved and collapsed."""
    rules: list[DenyRule] = []
    for index, entry in enumerate(policy.deny):
        ports = _merge_ports(entry.ports)
        for family, networks in _by_family(collapse(_resolve_sources(policy, entry.sources))):
            rules.append(DenyRule(family, networks, ports, entry.proto, Verdict(entry.action), entry.comment,
                                  index))
    return tuple(rules)


def _by_family(collapsed: tuple[Network, ...]) -> list[tuple[Family, tuple[Network, ...]]]:
    """Collapsed networks (IPv4 first) split by family, leaving out a family without any."""
    split = next((index for index, net in enumerate(collapsed) if net.version == 6), len(collapsed))
    return [(family, networks) for family, networks in ((Family.IPV4, collapsed[:split]),
                                                        (Family.IPV6, collapsed[split:])) if networks]


def _published(ports: Iterable[tuple[str, int]]) -> tuple[tuple[str, tuple[PortRange, ...]], ...]:
    pairs = set(ports)
    return tuple((proto, _merge_ports(tuple(PortRange(port, port) for p, port in pairs if p == proto)))
                 for proto in PROTOCOLS)


def _allow_rules(policy: Policy, entries: tuple[Allow, ...]) -> tuple[AllowRule, ...]:
    """One rule per entry and address family, sources resolved and collapsed, ports merged."""
    rules: list[AllowRule] = []
    for index, entry in enumerate(entries):
        ports = _merge_ports(entry.ports)
        for family, networks in _by_family(collapse(_resolve_sources(policy, entry.sources))):
            rules.append(AllowRule(family, entry.proto, networks, ports, entry.comment, entry.limit,
                                   entry.max_connections, index if entry.position is None else entry.position))
    return tuple(rules)


def _resolve_sources(policy: Policy, sources: tuple[Source, ...]) -> list[Network]:
    networks: list[Network] = []
    for source in sources:
        if isinstance(source, SetRef):
            networks.extend(policy.address_set(source.name).networks)
        else:
            networks.append(source)
    return networks


def _merge_ports(ports: tuple[PortRange, ...]) -> tuple[PortRange, ...]:
    """Sort and join overlapping or adjacent ranges: [80, 81, "79-80"] -> 79-81."""
    merged: list[PortRange] = []
    for span in sorted(ports):
        if merged and span.first <= merged[-1].last + 1:
            merged[-1] = PortRange(merged[-1].first, max(merged[-1].last, span.last))
        else:
            merged.append(span)
    return tuple(merged)
