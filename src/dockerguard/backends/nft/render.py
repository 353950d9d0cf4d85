"""Ruleset -> one libnftables JSON transaction on `table inet dockerguard`. Pure: no kernel access.

The transaction replaces our table as a whole (add table; delete table; add table + contents), so other
tables are never touched. Per `Chain` of the ruleset, a regular chain holding one rule per piece; a role
entered from a hook also gets a base chain on that hook at priority filter - 1 (before iptables-nft's
and Docker's filter chains) that jumps there for packets entering an external interface. An accept here
only ends our table's say (other tables' chains still run); a drop is final.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...model import (
    AllowRule,
    Allows,
    Chain,
    Default,
    Element,
    Established,
    Family,
    IcmpEcho,
    LogDrops,
    NeighbourDiscovery,
    PortMatch,
    Role,
    Ruleset,
    ToHost,
    ToProxy,
    Verdict,
)
from ...net import PROTOCOLS, Network, PortRange
from ..common import (
    LOG_PREFIX,
    NFT_CHAIN,
    NFT_PRIORITY,
    NFT_PUBLISHED_SET,
    NFT_SET_PREFIX,
    NFT_TABLE,
    ROLE_TRAFFIC,
)

TABLE = {"family": "inet", "name": NFT_TABLE}
# add + delete works whether or not the table exists; the second add starts it empty.
REPLACE_TABLE: tuple[dict[str, Any], ...] = (
    {"add": {"table": TABLE}}, {"delete": {"table": TABLE}}, {"add": {"table": TABLE}})

_ADDR_TYPE = {Family.IPV4: "ipv4_addr", Family.IPV6: "ipv6_addr"}
_PAYLOAD_PROTO = {Family.IPV4: "ip", Family.IPV6: "ip6"}
_COUNTER: dict[str, Any] = {"counter": {"packets": 0, "bytes": 0}}
_ND_TYPES = ["nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert"]

Objects = tuple[list[dict[str, Any]], list[dict[str, Any]]]  # (chains and sets, rules) to add


@dataclass(frozen=True)
class Transaction:
    """One atomic batch: `preamble` clears the way, then every object of `objects` is added in order
    (chains and sets before the rules that use them)."""

    preamble: tuple[dict[str, Any], ...]
    objects: tuple[dict[str, Any], ...]  # {"chain": ...}, {"set": ...} or {"rule": ...}

    @property
    def payload(self) -> dict[str, Any]:
        return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *self.preamble,
                             *({"add": item} for item in self.objects)]}

    @property
    def text(self) -> str:
        """The JSON document, one command per line: exact, yet readable and diffable."""
        lines = ",\n".join(f"  {json.dumps(command)}" for command in self.payload["nftables"])
        return f'{{"nftables": [\n{lines}\n]}}\n'


def transaction(ruleset: Ruleset) -> Transaction:
    objects: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    added: set[str] = set()
    for chain in ruleset.chains:
        chain_objects, chain_rules = _chain(chain, ruleset.interfaces)
        # FORWARD and PROXY share their allow sets: each set is added once.
        objects += [item for item in chain_objects if "set" not in item or item["set"]["name"] not in added]
        added.update(item["set"]["name"] for item in chain_objects if "set" in item)
        rules += chain_rules
    return Transaction(REPLACE_TABLE, tuple(objects + [{"rule": rule} for rule in rules]))


def _chain(chain: Chain, interfaces: tuple[str, ...]) -> Objects:
    """The role's chain with its pieces' sets and rules, after the base chain on its hook (if any)
    that jumps there."""
    name, hook = NFT_CHAIN[chain.role], chain.role.hook
    objects: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    if hook is not None:
        objects.append({"chain": {**_in_table(), "name": hook, "type": "filter", "hook": hook,
                                  "prio": NFT_PRIORITY, "policy": "accept"}})
        rules.append(_rule(hook, f"judge {ROLE_TRAFFIC[chain.role]} traffic entering external interfaces",
                           _match({"meta": {"key": "iifname"}}, _set_or_value(list(interfaces))),
                           _COUNTER, {"jump": {"target": name}}))
    objects.append({"chain": {**_in_table(), "name": name}})
    for piece in chain.pieces:
        piece_objects, piece_rules = _PIECES[type(piece)](piece, chain)
        objects += piece_objects
        rules += piece_rules
    return objects, rules


# -- one function per piece kind (model.Piece) --------------------------------------------------------
def established(piece: Established, chain: Chain) -> Objects:
    return [], [_rule(NFT_CHAIN[chain.role], "established,related",
                      {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
                      _COUNTER, {"accept": None})]


def neighbour_discovery(piece: NeighbourDiscovery, chain: Chain) -> Objects:
    return [], [_rule(NFT_CHAIN[chain.role], "ipv6 neighbour discovery",
                      _match({"payload": {"protocol": "icmpv6", "field": "type"}}, {"set": _ND_TYPES}),
                      _COUNTER, {"accept": None})]


def icmp_echo(piece: IcmpEcho, chain: Chain) -> Objects:
    return [], [_rule(NFT_CHAIN[chain.role], f"{protocol} echo-request",
                      _match({"payload": {"protocol": protocol, "field": "type"}}, "echo-request"),
                      _COUNTER, {"accept": None}) for protocol in ("icmp", "icmpv6")]


def allows(piece: Allows, chain: Chain) -> Objects:
    """Per family and protocol: sources sharing their ports with many others become a source set matched
    with their port list (`SourceGroup.factored`), one rule each; all other (source, port) pairs go into one
    two-field interval set (source . port) and one rule. FORWARD and PROXY share the sets."""
    rules: list[dict[str, Any]] = []
    chain_name = NFT_CHAIN[chain.role]
    port = ({"ct": {"key": "proto-dst", "dir": "original"}} if piece.port is PortMatch.PUBLISHED else None)
    sets, matches = _allow_sets(piece.rules, NFT_SET_PREFIX[chain.role])
    for family, proto, comment, set_match in matches:
        destination = port or {"payload": {"protocol": proto, "field": "dport"}}
        source = {"payload": {"protocol": _PAYLOAD_PROTO[family], "field": "saddr"}}
        # inet tables need the l4 protocol stated before `ct original proto-dst`.
        l4proto = _match({"meta": {"key": "l4proto"}}, proto)
        if isinstance(set_match, str):  # one (source . port) set
            rules.append(_rule(chain_name, comment, l4proto, _match({"concat": [source, destination]}, set_match),
                               _COUNTER, {"accept": None}))
        else:  # a source set and its port set
            rules.append(_rule(chain_name, comment, l4proto, _match(source, set_match[0]),
                               _match(destination, set_match[1]), _COUNTER, {"accept": None}))
    return list(sets), rules


@functools.lru_cache(maxsize=4)
def _allow_sets(rules: tuple[AllowRule, ...], prefix: str
                ) -> tuple[tuple[dict[str, Any], ...], tuple[tuple[Family, str, str, Any], ...]]:
    """The sets of some allows (built once for the chains that share them), and per rule to write:
    (family, protocol, comment, "@pairs" or ("@sources", "@ports"))."""
    piece = Allows(rules, PortMatch.PUBLISHED)
    sets: list[dict[str, Any]] = []
    matches: list[tuple[Family, str, str, Any]] = []
    for proto in PROTOCOLS:
        for family in Family:
            groups, pairs = piece.factored(family, proto)
            name = f"{prefix}_v{family.value}_{proto}"
            if pairs:
                sets.append({"set": {**_in_table(), "name": name, "type": [_ADDR_TYPE[family], "inet_service"],
                                     "flags": ["interval"], "elem": [_element(element) for element in pairs]}})
                matches.append((family, proto, f"allow {proto} ipv{family.value}", f"@{name}"))
            for number, group in enumerate(groups, start=1):
                # Named sets for the ports too (not an anonymous one in the rule): read-back and audit see them.
                group_name = f"{name}_{number}"
                sets += [{"set": {**_in_table(), "name": group_name, "type": _ADDR_TYPE[family], "flags": ["interval"],
                                  "elem": [_address(net) for net in group.sources]}},
                         {"set": {**_in_table(), "name": f"{group_name}_ports", "type": "inet_service",
                                  "flags": ["interval"], "elem": [_port(span) for span in group.ports]}}]
                matches.append((family, proto, f"allow {proto} ipv{family.value} group {number}",
                                (f"@{group_name}", f"@{group_name}_ports")))
    return tuple(sets), tuple(matches)


def log_drops(piece: LogDrops, chain: Chain) -> Objects:
    return [], [_rule(NFT_CHAIN[chain.role], "log dropped", {"limit": {"rate": 5, "per": "minute", "burst": 10}},
                      {"log": {"prefix": LOG_PREFIX[chain.role]}})]


def default(piece: Default, chain: Chain) -> Objects:
    name = NFT_CHAIN[chain.role]
    if piece.verdict is Verdict.REJECT:
        return [], [_rule(name, "default reject tcp", _match({"meta": {"key": "l4proto"}}, "tcp"),
                          _COUNTER, {"reject": {"type": "tcp reset"}}),
                    _rule(name, "default reject", _COUNTER, {"reject": {"type": "icmpx", "expr": "port-unreachable"}})]
    return [], [_rule(name, "default drop", _COUNTER, {"drop": None})]


def to_proxy(piece: ToProxy, chain: Chain) -> Objects:
    """One port set per protocol (kept even when empty, so a container coming or going changes only its
    elements), and a goto into the PROXY chain for connections to those ports."""
    sets: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    for proto in PROTOCOLS:
        name = f"{NFT_PUBLISHED_SET}_{proto}"
        ports = piece.ports_of(proto)
        body: dict[str, Any] = {**_in_table(), "name": name, "type": "inet_service", "flags": ["interval"]}
        if ports:
            body["elem"] = [_port(span) for span in ports]
        sets.append({"set": body})
        rules.append(_rule(NFT_CHAIN[chain.role], f"published {proto} ports",
                           _match({"payload": {"protocol": proto, "field": "dport"}}, f"@{name}"),
                           _COUNTER, {"goto": {"target": NFT_CHAIN[Role.PROXY]}}))
    return sets, rules


def to_host(piece: ToHost, chain: Chain) -> Objects:
    return [], [_rule(NFT_CHAIN[chain.role], "everything else", _COUNTER, {"goto": {"target": NFT_CHAIN[Role.HOST]}})]


_PIECES: dict[type, Callable[[Any, Chain], Objects]] = {
    Established: established,
    NeighbourDiscovery: neighbour_discovery,
    IcmpEcho: icmp_echo,
    Allows: allows,
    LogDrops: log_drops,
    Default: default,
    ToProxy: to_proxy,
    ToHost: to_host,
}


# -- JSON builders -------------------------------------------------------------------------------------
def _in_table() -> dict[str, str]:
    return {"family": "inet", "table": NFT_TABLE}


def _match(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def _set_or_value(values: list[str]) -> Any:
    return values[0] if len(values) == 1 else {"set": values}


def _rule(chain: str, comment: str, *statements: dict[str, Any]) -> dict[str, Any]:
    return {**_in_table(), "chain": chain, "comment": comment, "expr": list(statements)}


def _element(element: Element) -> dict[str, Any]:
    return {"concat": [_address(element.source), _port(element.ports)]}


def _address(net: Network) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return net.network_address
    return {"prefix": {"addr": net.network_address, "len": net.prefixlen}}


def _port(span: PortRange) -> Any:
    return span.first if span.first == span.last else {"range": [span.first, span.last]}
