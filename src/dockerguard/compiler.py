"""Policy -> Ruleset: a pure function, no I/O, no backend syntax."""

from __future__ import annotations

import ipaddress

from .model import AllowRule, Family, Ruleset, Verdict
from .policy import Allow, Network, Policy, PortRange, SetRef


def compile_policy(policy: Policy) -> Ruleset:
    allows: list[AllowRule] = []
    for entry in policy.allow:
        networks = _resolve_sources(policy, entry)
        ports = _merge_ports(entry.ports)
        for family in Family:
            family_nets = [net for net in networks if net.version == family.value]
            if family_nets:
                collapsed = tuple(ipaddress.collapse_addresses(family_nets))  # type: ignore[arg-type]
                allows.append(AllowRule(family, entry.proto, collapsed, ports, entry.comment))
    return Ruleset(
        interfaces=policy.external_interfaces,
        default=Verdict(policy.default),
        log_dropped=policy.log_dropped,
        allows=tuple(allows),
    )


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
