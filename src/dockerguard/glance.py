"""`dockerguard status` at a glance: one row per policy entry with what it allows and what its rules have
matched, and what each path's default has refused. Pure: the counters come from `Backend.counters`.

An entry's packets and bytes are those of the installed rules serving it; when such a rule serves other
entries too (an nft set holding the (source, port) pairs of many entries), the row says `shared`: the
numbers are the rule's, not the entry's alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .backends.base import RuleCounter
from .model import Role, Ruleset
from .net import PortRange
from .policy import Allow, Deny, Policy, SetRef

MANY_SOURCES = 4  # more sources than this: shown as a count


@dataclass(frozen=True)
class EntryRow:
    """One [[allow]], [[deny]] or [[host.allow]] entry (`section` "allow", "deny" or "host"; `number`
    counts from 1 within its section)."""

    section: str
    number: int
    entry: str  # its comment, else "allow 2"
    ports: str  # "80,443", "all" (a deny without ports); container entries: the host ports found now
    proto: str  # "tcp", "udp", "all"
    sources: str  # "any", "198.51.100.0/24, ...", "@office (3 networks)", "1200 networks"
    limits: str  # "10/minute burst 5, 20 connections" or ""
    packets: int | None  # None: none of its rules is installed (or it resolved to nothing)
    bytes: int | None
    shared: bool  # counted by rules that serve other entries too
    published: tuple[str, ...]  # the ports Docker publishes now that it covers: "8080/tcp"


@dataclass(frozen=True)
class PathDrops:
    """What a path's default refused: `path` "forward" (to containers), "docker-proxy" (to the host's
    published ports) or "host" (the rest of the traffic to the host, [host])."""

    path: str
    verdict: str
    packets: int
    bytes: int


_PATHS = {Role.FORWARD: "forward", Role.PROXY: "docker-proxy", Role.HOST: "host"}


def path_drops(counters: Sequence[RuleCounter], policy: Policy | None) -> tuple[PathDrops, ...]:
    totals: dict[Role, list[int]] = {}
    for counter in counters:
        if counter.origin.kind == "default" and counter.origin.role in _PATHS:
            total = totals.setdefault(counter.origin.role, [0, 0])
            total[0] += counter.packets
            total[1] += counter.bytes
    verdict = {Role.FORWARD: policy.default if policy else "", Role.PROXY: policy.default if policy else "",
               Role.HOST: policy.host.default if policy and policy.host else ""}
    return tuple(PathDrops(_PATHS[role], verdict[role], *totals[role]) for role in _PATHS if role in totals)


def entry_rows(policy: Policy, ruleset: Ruleset, counters: Sequence[RuleCounter],
               published: Iterable[tuple[str, int]]) -> tuple[EntryRow, ...]:
    """`ruleset`: `policy` compiled (container entries resolved); its rules know their entry (`.entry`)."""
    ports = sorted(set(published))
    host_rules = ruleset.host.allows if ruleset.host is not None else ()
    sections: list[tuple[str, Sequence[Allow | Deny], Sequence[Any], str, set[Role]]] = [
        ("allow", policy.allow, ruleset.allows, "allow", {Role.FORWARD, Role.PROXY}),
        ("deny", policy.deny, ruleset.denies, "deny", {Role.FORWARD, Role.PROXY, Role.HOST}),
        ("host", policy.host.allow if policy.host else (), host_rules, "allow", {Role.HOST})]
    rows = []
    for section, entries, rules, kind, roles in sections:
        for index, entry in enumerate(entries):
            mine = {number for number, rule in enumerate(rules) if rule.entry == index}
            serving = [counter for counter in counters if counter.origin.kind == kind and counter.origin.role in roles
                       and mine & set(counter.origin.denies if kind == "deny" else counter.origin.allows)]
            carried = {rules[number].entry for counter in serving
                       for number in (counter.origin.denies if kind == "deny" else counter.origin.allows)
                       if number < len(rules)}
            found = bool(serving)
            own = [rules[number] for number in sorted(mine)]
            rows.append(EntryRow(
                section, index + 1, entry.comment or f"{section} {index + 1}", _ports(entry, own), _proto(entry),
                _sources(policy, entry), _limits(entry),
                sum(counter.packets for counter in serving) if found else None,
                sum(counter.bytes for counter in serving) if found else None,
                bool(carried - {index}),
                _covered(entry, own, ports) if section == "allow" else ()))
    return tuple(rows)


def _ports(entry: Allow | Deny, rules: Sequence[Any]) -> str:
    if isinstance(entry, Allow) and entry.containers is not None:
        found = ",".join(map(str, rules[0].ports)) if rules else "none now"
        return f"{found} ({entry.containers})"
    return ",".join(map(str, entry.ports)) or "all"


def _proto(entry: Allow | Deny) -> str:
    if isinstance(entry, Deny):
        return entry.proto or "all"
    return entry.proto


def _sources(policy: Policy, entry: Allow | Deny) -> str:
    networks = [source for source in entry.sources if not isinstance(source, SetRef)]
    if networks and {net.version for net in networks if net.prefixlen == 0} == {4, 6}:
        return "any"
    shown = [f"@{source.name} ({len(policy.address_set(source.name).networks)} networks)"
             for source in entry.sources if isinstance(source, SetRef)]
    if len(networks) > MANY_SOURCES:
        shown.append(f"{len(networks)} networks")
    else:
        shown += [str(net) for net in networks]
    return ", ".join(shown)


def _limits(entry: Allow | Deny) -> str:
    if not isinstance(entry, Allow):
        return ""
    parts = [str(entry.limit)] if entry.limit is not None else []
    if entry.max_connections is not None:
        parts.append(f"{entry.max_connections} connections")
    return ", ".join(parts)


def _covered(entry: Allow | Deny, rules: Sequence[Any], published: Sequence[tuple[str, int]]) -> tuple[str, ...]:
    if not isinstance(entry, Allow) or not rules:
        return ()
    spans: list[PortRange] = list(rules[0].ports)
    return tuple(f"{port}/{proto}" for proto, port in published
                 if proto == entry.proto and any(span.first <= port <= span.last for span in spans))
