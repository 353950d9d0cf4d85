"""Policy -> Ruleset: a pure function, no I/O, no backend syntax."""

from __future__ import annotations

from collections.abc import Iterable

from .model import AllowRule, Family, HostRules, Ruleset, Verdict
from .net import PROTOCOLS, Network, PortRange, collapse
from .policy import Allow, Policy, SetRef


def compile_policy(policy: Policy, published: Iterable[tuple[str, int]] = ()) -> Ruleset:
    """`published`: the (protocol, host port) pairs Docker publishes now (dockerguard.published); their
    INPUT path is judged unless the policy says `filter_proxy_path = false`."""
    if policy.uses_containers:
        raise ValueError("container selectors must be resolved first (dockerguard.containers.resolve_containers)")
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
    )


def _published(ports: Iterable[tuple[str, int]]) -> tuple[tuple[str, tuple[PortRange, ...]], ...]:
    pairs = set(ports)
    return tuple((proto, _merge_ports(tuple(PortRange(port, port) for p, port in pairs if p == proto)))
                 for proto in PROTOCOLS)


def _allow_rules(policy: Policy, entries: tuple[Allow, ...]) -> tuple[AllowRule, ...]:
    """One rule per entry and address family, sources resolved and collapsed, ports merged."""
    rules: list[AllowRule] = []
    for entry in entries:
        collapsed = collapse(_resolve_sources(policy, entry))  # IPv4 first, then IPv6
        ports = _merge_ports(entry.ports)
        split = next((index for index, net in enumerate(collapsed) if net.version == 6), len(collapsed))
        for family, networks in ((Family.IPV4, collapsed[:split]), (Family.IPV6, collapsed[split:])):
            if networks:
                rules.append(AllowRule(family, entry.proto, networks, ports, entry.comment))
    return tuple(rules)


def _resolve_sources(policy: Policy, entry: Allow) -> list[Network]:
    networks: list[Network] = []
    for source in entry.sources:
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
