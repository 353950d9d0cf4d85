"""Ruleset -> one libnftables JSON transaction on `table inet dockerguard`. Pure: no kernel access.

The transaction replaces our table as a whole (add table; delete table; add table + contents), so other
tables are never touched. Per `Chain` of the ruleset, a regular chain holding one rule per piece; a role
entered from a hook also gets a base chain on that hook at priority filter - 1 (before iptables-nft's
and Docker's filter chains) that jumps there for packets entering an external interface. An accept here
only ends our table's say (other tables' chains still run); a drop is final.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ...model import (
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
from ...net import PROTOCOLS, PortRange
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
    for chain in ruleset.chains:
        chain_objects, chain_rules = _chain(chain, ruleset.interfaces)
        # FORWARD and PROXY share their allow sets: each set is added once.
        objects += [item for item in chain_objects if item not in objects]
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
    """One two-field interval set (source . port) per family and protocol, and one rule matching it."""
    sets: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    port = ({"ct": {"key": "proto-dst", "dir": "original"}} if piece.port is PortMatch.PUBLISHED
            else None)
    for family, proto, elements in _nonempty(piece):
        set_name = f"{NFT_SET_PREFIX[chain.role]}_v{family.value}_{proto}"
        sets.append(_set(set_name, family, elements))
        source = {"payload": {"protocol": _PAYLOAD_PROTO[family], "field": "saddr"}}
        destination = port or {"payload": {"protocol": proto, "field": "dport"}}
        # inet tables need the l4 protocol stated before `ct original proto-dst`.
        rules.append(_rule(NFT_CHAIN[chain.role], f"allow {proto} ipv{family.value}",
                           _match({"meta": {"key": "l4proto"}}, proto),
                           _match({"concat": [source, destination]}, f"@{set_name}"),
                           _COUNTER, {"accept": None}))
    return sets, rules


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
def _nonempty(piece: Allows) -> Iterator[tuple[Family, str, tuple[Element, ...]]]:
    for proto in ("tcp", "udp"):
        for family in Family:
            elements = piece.elements(family, proto)
            if elements:
                yield family, proto, elements


def _set(name: str, family: Family, elements: tuple[Element, ...]) -> dict[str, Any]:
    return {"set": {**_in_table(), "name": name, "type": [_ADDR_TYPE[family], "inet_service"],
                    "flags": ["interval"], "elem": [_element(element) for element in elements]}}


def _in_table() -> dict[str, str]:
    return {"family": "inet", "table": NFT_TABLE}


def _match(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def _set_or_value(values: list[str]) -> Any:
    return values[0] if len(values) == 1 else {"set": values}


def _rule(chain: str, comment: str, *statements: dict[str, Any]) -> dict[str, Any]:
    return {**_in_table(), "chain": chain, "comment": comment, "expr": list(statements)}


def _element(element: Element) -> dict[str, Any]:
    net = element.source
    address: Any = (str(net.network_address) if net.prefixlen == net.max_prefixlen
                    else {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}})
    return {"concat": [address, _port(element.ports)]}


def _port(span: PortRange) -> Any:
    return span.first if span.first == span.last else {"range": [span.first, span.last]}
