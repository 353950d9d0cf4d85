"""Read-back: the same normalisation turns what we render and what the kernel lists into one
`InstalledState`, so they compare like with like (counters are carried, never compared). Pure.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from ...model import Family, Role
from ...net import PROTOCOLS, parse_address, range_cidrs
from ..base import Exposure, InstalledRule, InstalledState, PathFinding, Span
from ..common import NFT_BAN_SETS, NFT_BANS_TABLE, NFT_CHAIN, NFT_PUBLISHED_SET, NFT_SET_PREFIX, NFT_TABLE
from .canon import rule_body, set_spec
from .text import as_list


def state_of(objects: list[dict[str, Any]], old_nft: bool = False) -> InstalledState:
    """`objects`: {"table": ...}/{"chain": ...}/{"set": ...}/{"rule": ...} items, as rendered or as listed.
    Rules and sets are compared in canon's normal form: everything that decides packets. `old_nft`: read by
    an nft before 1.0, which lists less than the kernel holds (see `element_texts`, `canon.normalised`):
    what it cannot list is left out on both sides."""
    hooks: list[str] = []
    rules: list[InstalledRule] = []
    sets: list[tuple[str, tuple[str, ...]]] = []
    specs: list[tuple[str, str]] = []
    for item in objects:
        if "table" in item:
            flags = item["table"].get("flags")
            if flags:  # we never set any: `dormant` switches the whole table off
                named = sorted(flag if flag in TABLE_FLAGS else "?" for flag in as_list(flags))
                hooks.append(f"table {item['table'].get('name')}: flags {','.join(named)}")
        elif "chain" in item:
            chain = item["chain"]
            if "hook" in chain:
                hooks.append(f"chain {chain['name']}: {chain.get('type')} hook {chain['hook']} "
                             f"priority {chain.get('prio')} policy {chain.get('policy')}")
        elif "set" in item:
            nft_set = item["set"]
            kind = "port" if nft_set.get("type") == "inet_service" else (
                "address" if isinstance(nft_set.get("type"), str) else "pair")
            if dynamic_set(nft_set["name"]):
                elements = []
            elif kind == "address":  # the large sets: plain addresses and prefixes, without a call per element
                elements = sorted(_address_texts(nft_set.get("elem", [])))
            else:
                elements = sorted({text for elem in nft_set.get("elem", [])
                                   for text in element_texts(elem, old_nft, kind)})
            sets.append((nft_set["name"], tuple(elements)))
            specs.append((nft_set["name"], set_spec(nft_set)))
        elif "rule" in item:
            rule = item["rule"]
            packets, octets = _counter(rule["expr"])
            description = f"{rule.get('comment', '?')} -> {_verdict(rule['expr'])}"
            rules.append(InstalledRule(rule["chain"], description, packets, octets, rule_body(rule["expr"], old_nft)))
    return InstalledState("nft", tuple(hooks), tuple(rules), tuple(sorted(sets)), tuple(sorted(specs)))


# nft before 1.1 writes a table's flags into JSON as garbage (or cuts the listing off there): "?".
TABLE_FLAGS = frozenset({"dormant", "owner", "persist"})


def dynamic_set(name: str) -> bool:
    """Sets whose elements are not ours to compare or restore: the ban sets (other tools write them) and
    the per-source state of limits."""
    return name in NFT_BAN_SETS or name.endswith(("_limit", "_conns"))


def _verdict(statements: list[dict[str, Any]]) -> str:
    last = statements[-1] if statements else {}
    for verb in ("jump", "goto"):
        if verb in last:
            return f"{verb} {last[verb]['target']}"
    return next(iter(last), "?")


def _counter(statements: list[dict[str, Any]]) -> tuple[int, int]:
    for statement in statements:
        counter = statement.get("counter")
        if isinstance(counter, dict):
            return int(counter.get("packets", 0)), int(counter.get("bytes", 0))
    return 0, 0


def element_texts(elem: Any, loose_ipv6_prefixes: bool = False, kind: str = "pair") -> list[str]:
    """One set element as text, however nft printed it: "203.0.113.0/24 . 80-80" in a (source . port)
    set (`kind` "pair"), "80-80" in a port set, "203.0.113.0/24" in an address set.

    nft before 1.0 (Debian 11's 0.9.8) lists every IPv6 prefix inside a concatenation as /64, though the
    kernel holds the right one: with `loose_ipv6_prefixes` those prefix lengths are not compared."""
    if isinstance(elem, dict) and "elem" in elem:  # element with its own comment/counter
        elem = elem["elem"]["val"]
    if kind == "port":
        first, last = _ports(elem)
        return [f"{first}-{last}"]
    if kind == "address":
        return _networks(elem)
    parts = elem["concat"]
    first, last = _ports(parts[1])
    networks = _networks(parts[0])
    if loose_ipv6_prefixes:
        networks = [re.sub(r"/\d+$", "/?", net) if ":" in net and not net.endswith("/128") else net
                    for net in networks]
    return [f"{net} . {first}-{last}" for net in networks]


def _address_texts(elements: list[Any]) -> set[str]:
    """element_texts(elem, kind="address") of every element, as one set."""
    texts = set()
    for elem in elements:
        if isinstance(elem, str):
            texts.add(f"{elem}/{128 if ':' in elem else 32}")
        elif "prefix" in elem:
            texts.add(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
        else:
            texts.update(element_texts(elem, kind="address"))
    return texts


def _networks(value: Any) -> list[str]:
    # nft and dockerguard both print addresses with inet_ntop, so the text is compared as it
    # is (parsing 10,000 elements costs more than the kernel transaction).
    if isinstance(value, str):
        return [f"{value}/{128 if ':' in value else 32}"]
    if "prefix" in value:
        return [f"{value['prefix']['addr']}/{value['prefix']['len']}"]
    if "range" in value:
        (version, low), (_, high) = (parse_address(bound) for bound in value["range"])
        return [str(net) for net in range_cidrs(version, low, high)]
    raise ValueError(f"unexpected set element address {value!r}")


def _ports(value: Any) -> tuple[int, int]:
    if isinstance(value, dict) and "range" in value:
        return _port(value["range"][0]), _port(value["range"][1])
    return _port(value), _port(value)


def _port(value: Any) -> int:
    return value if isinstance(value, int) else socket.getservbyname(str(value))


def path_findings(chains: list[dict[str, Any]]) -> tuple[PathFinding, ...]:
    """Base chains of the ip/ip6/inet families on the same hook run in priority order; a lower priority
    than ours runs first, and its drop is final before we judge (its accept is not: ours still runs).
    Equal priorities run in an unspecified order. The bridge family's forward hook is another path."""
    def ours(chain: dict[str, Any]) -> bool:
        return chain.get("family") == "inet" and chain.get("table") in (NFT_TABLE, NFT_BANS_TABLE)

    findings: list[PathFinding] = []
    for chain in (c for c in chains if ours(c) and "hook" in c and c.get("table") == NFT_TABLE):
        hook, prio = chain["hook"], int(chain["prio"])
        others = [c for c in chains if not ours(c) and c.get("hook") == hook
                  and c.get("family") in ("ip", "ip6", "inet")]
        before = sorted((c for c in others if int(c["prio"]) <= prio), key=lambda c: int(c["prio"]))
        for other in before:
            name = f"{other['family']} {other['table']} chain {other['name']}"
            if int(other["prio"]) == prio:
                findings.append(PathFinding("warning", f"{name} shares our {hook} priority {prio}: which of the "
                                                       "two runs first is not defined"))
            else:
                findings.append(PathFinding("warning", f"{name} ({hook} hook, priority {other['prio']}) runs "
                                                       f"before ours ({prio}): what it drops never reaches us"))
        if not before:
            findings.append(PathFinding("ok", f"chain {chain['name']} ({hook} hook, priority {prio}) runs first "
                                              f"of {len(others) + 1} {hook}-hook base chains"))
    return tuple(findings)


def exposure_of(state: InstalledState | None) -> Exposure:
    """What our installed table lets through (see `Exposure`), from its read-back state."""
    if state is None:
        return Exposure()
    rules = {(rule.chain, rule.description) for rule in state.rules}
    chains = {chain for chain, _ in rules}
    sets = dict(state.sets)

    def has(chain: str, description: str) -> bool:
        return (chain, description) in rules

    def decides(role: Role) -> bool:
        return any(chain == NFT_CHAIN[role] and text.startswith("default ") for chain, text in rules)

    judged: set[tuple[Role, Family]] = set()
    forward_hook = any(hook.startswith("chain forward: filter hook forward") for hook in state.hooks)
    if forward_hook and has("forward", f"judge forwarded traffic entering external interfaces -> jump "
                                       f"{NFT_CHAIN[Role.FORWARD]}") and decides(Role.FORWARD):
        judged |= {(Role.FORWARD, family) for family in Family}
    input_hook = any(hook.startswith("chain input: filter hook input") for hook in state.hooks)
    if input_hook and NFT_CHAIN[Role.INPUT] in chains and decides(Role.PROXY):
        judged |= {(Role.PROXY, family) for family in Family}
    allowed: dict[tuple[Role, Family, str], tuple[Span, ...]] = {}
    dispatched: dict[tuple[Family, str], tuple[tuple[int, int], ...]] = {}
    for proto in PROTOCOLS:
        if has(NFT_CHAIN[Role.INPUT], f"published {proto} ports -> goto {NFT_CHAIN[Role.PROXY]}"):
            ports = tuple(_span(text) for text in sets.get(f"{NFT_PUBLISHED_SET}_{proto}", ()))
            dispatched.update({(family, proto): ports for family in Family})
        for family in Family:
            for role in (Role.FORWARD, Role.PROXY):
                name = f"{NFT_SET_PREFIX[role]}_v{family.value}_{proto}"
                spans: list[Span] = []
                if has(NFT_CHAIN[role], f"allow {proto} ipv{family.value} -> accept"):
                    spans += [(net, *_span(ports)) for net, ports in (text.split(" . ") for text in sets.get(name, ()))]
                for chain, text in rules:
                    prefix = f"allow {proto} ipv{family.value} group "
                    if chain == NFT_CHAIN[role] and text.startswith(prefix) and text.endswith(" -> accept"):
                        group = f"{name}_{text[len(prefix):-len(' -> accept')]}"
                        spans += [(net, *_span(ports)) for net in sets.get(group, ())
                                  for ports in sets.get(f"{group}_ports", ())]
                if spans:
                    allowed[(role, family, proto)] = tuple(spans)
    return Exposure(frozenset(judged), allowed, dispatched)


def _span(text: str) -> tuple[int, int]:
    first, last = text.split("-")
    return int(first), int(last)
