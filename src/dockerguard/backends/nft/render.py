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
    Bans,
    Chain,
    Default,
    Denies,
    DenyRule,
    Egress,
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
    NFT_BAN_SETS,
    NFT_BANS_PRIORITY,
    NFT_BANS_TABLE,
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
_SECONDS = {"second": 1, "minute": 60, "hour": 3600}
_PAYLOAD_PROTO = {Family.IPV4: "ip", Family.IPV6: "ip6"}
_COUNTER: dict[str, Any] = {"counter": {"packets": 0, "bytes": 0}}
_ND_TYPES = ["nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert"]

Objects = tuple[list[dict[str, Any]], list[dict[str, Any]]]  # (chains and sets, rules) to add


@dataclass(frozen=True)
class Transaction:
    """One atomic batch: `preamble` clears the way, then every object of `objects` is added in order
    (chains and sets before the rules that use them), then `upkeep` keeps the bans table current
    without touching its ban sets' elements. `upkeep_state` is what that table holds afterwards."""

    preamble: tuple[dict[str, Any], ...]
    objects: tuple[dict[str, Any], ...]  # {"chain": ...}, {"set": ...} or {"rule": ...}
    upkeep: tuple[dict[str, Any], ...] = ()  # whole commands: {"add": ...}, {"flush": ...}, ...
    upkeep_state: tuple[dict[str, Any], ...] = ()

    @property
    def payload(self) -> dict[str, Any]:
        return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *self.preamble,
                             *({"add": item} for item in self.objects), *self.upkeep]}

    @property
    def state_objects(self) -> list[dict[str, Any]]:
        """Everything of ours the kernel holds after this transaction, as listed objects."""
        return [*self.objects, *self.upkeep_state]

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
        # FORWARD and PROXY share their allow sets, FORWARD and EGRESS the forward hook: each is added once.
        objects += [item for item in chain_objects if _name(item) not in added]
        added.update(_name(item) for item in chain_objects)
        rules += chain_rules
    # A chain's rules together, chains in the order they were added: as the kernel lists them.
    order = {item["chain"]["name"]: index for index, item in enumerate(objects) if "chain" in item}
    rules.sort(key=lambda rule: order[rule["chain"]])
    upkeep, upkeep_state = _bans_table(ruleset)
    return Transaction(REPLACE_TABLE, tuple(objects + [{"rule": rule} for rule in rules]), upkeep, upkeep_state)


# -- the bans table ------------------------------------------------------------------------------------
BANS_TABLE = {"family": "inet", "name": NFT_BANS_TABLE}


def _bans_table(ruleset: Ruleset) -> tuple[tuple[dict[str, Any], ...], tuple[dict[str, Any], ...]]:
    """Commands keeping `table inet dockerguard_bans` current, and what it holds afterwards. Its ban sets
    are only ever `add`ed (a no-op when they exist: their elements stay); its chains and port sets are
    flushed and refilled. Banned sources entering an external interface are dropped on every path the
    ruleset judges: forwarded, and addressed to the host on published ports (everything, with [host])."""
    if not ruleset.bans:
        return DELETE_BANS, ()
    where = {"family": "inet", "table": NFT_BANS_TABLE}
    state: list[dict[str, Any]] = [
        {"set": {**where, "name": f"bans_v{family.value}", "type": _ADDR_TYPE[family],
                 "flags": ["interval", "timeout"]}} for family in Family]
    chains = {"forward": "bans_forward", "input": "bans_input"}
    state += [{"chain": {**where, "name": name, "type": "filter", "hook": hook, "prio": NFT_BANS_PRIORITY,
                         "policy": "accept"}} for hook, name in chains.items()]
    external = _match({"meta": {"key": "iifname"}}, _set_or_value(list(ruleset.interfaces)))
    rules = [(chains["forward"], [external], family, "") for family in Family]
    # The port sets always exist (empty when unused): the table's objects never change, only its contents.
    published = dict(ruleset.published or ())
    for proto in PROTOCOLS:
        name = f"bans_published_{proto}"
        body: dict[str, Any] = {**where, "name": name, "type": "inet_service", "flags": ["interval"]}
        if published.get(proto) and ruleset.host is None:
            body["elem"] = [_port(span) for span in published[proto]]
        state.append({"set": body})
        if ruleset.host is None and ruleset.published is not None:
            dport = _match({"payload": {"protocol": proto, "field": "dport"}}, f"@{name}")
            rules += [(chains["input"], [external, dport], family, f" {proto}") for family in Family]
    if ruleset.host is not None:  # [host] judges all traffic to the host from outside
        rules += [(chains["input"], [external], family, "") for family in Family]
    state += [{"rule": {**where, "chain": chain, "comment": f"banned ipv{family.value}{proto}",
                        "expr": [*matches, _match({"payload": {"protocol": _PAYLOAD_PROTO[family], "field": "saddr"}},
                                                  f"@bans_v{family.value}"), _COUNTER, {"drop": None}]}}
              for chain, matches, family, proto in rules]
    return upkeep_commands(state), tuple(state)


DELETE_BANS: tuple[dict[str, Any], ...] = ({"add": {"table": BANS_TABLE}}, {"delete": {"table": BANS_TABLE}})


def upkeep_commands(state: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """Commands making the bans table hold `state` (listed objects), without touching the elements of
    its ban sets: those are only ever `add`ed, which keeps an existing set as it is."""
    commands: list[dict[str, Any]] = [{"add": {"table": BANS_TABLE}}]
    for item in state:
        (kind, body), = item.items()
        if kind == "rule":
            commands.append({"add": item})
            continue
        commands.append({"add": {kind: {key: value for key, value in body.items() if key != "elem"}}})
        if kind == "chain" or body["name"] not in NFT_BAN_SETS:  # refilled; ban sets keep what they hold
            commands.append({"flush": {kind: {"family": "inet", "table": NFT_BANS_TABLE, "name": body["name"]}}})
        if "elem" in body:
            commands.append({"add": {"element": {"family": "inet", "table": NFT_BANS_TABLE, "name": body["name"],
                                                 "elem": body["elem"]}}})
    # chains and sets first, then the rules that use them
    commands.sort(key=lambda command: "rule" in next(iter(command.values())))
    return tuple(commands)


def _name(item: dict[str, Any]) -> str:
    (kind, body), = item.items()
    return f"{kind} {body['name']}"


def _chain(chain: Chain, interfaces: tuple[str, ...]) -> Objects:
    """The role's chain with its pieces' sets and rules, after the base chain on its hook (if any)
    that jumps there."""
    name, hook = NFT_CHAIN[chain.role], chain.role.hook
    objects: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    if hook is not None:
        objects.append({"chain": {**_in_table(), "name": hook, "type": "filter", "hook": hook,
                                  "prio": NFT_PRIORITY, "policy": "accept"}})
        direction = "oifname" if chain.role.outgoing else "iifname"
        rules.append(_rule(hook, f"judge {ROLE_TRAFFIC[chain.role]} external interfaces",
                           _match({"meta": {"key": direction}}, _set_or_value(list(interfaces))),
                           _COUNTER, {"jump": {"target": name}}))
    objects.append({"chain": {**_in_table(), "name": name}})
    for piece in chain.pieces:
        piece_objects, piece_rules = _PIECES[type(piece)](piece, chain)
        objects += piece_objects
        rules += piece_rules
    return objects, rules


# -- one function per piece kind (model.Piece) --------------------------------------------------------
def bans(piece: Bans, chain: Chain) -> Objects:
    """Nothing here: the bans table's own chains run before ours (see _bans_table)."""
    return [], []


def denies(piece: Denies, chain: Chain) -> Objects:
    """Per deny entry and family: a source set (and a port set), one rule refusing what matches."""
    sets, matches = _deny_sets(piece.rules)
    port = ({"ct": {"key": "proto-dst", "dir": "original"}} if piece.port is PortMatch.PUBLISHED else None)
    rules = []
    for deny, name in zip(piece.rules, matches):
        statements = [_match({"payload": {"protocol": _PAYLOAD_PROTO[deny.family], "field": "saddr"}}, f"@{name}")]
        if deny.ports:
            proto = deny.proto or "tcp"
            statements += [_match({"meta": {"key": "l4proto"}}, proto),
                           _match(port or {"payload": {"protocol": proto, "field": "dport"}}, f"@{name}_ports")]
        comment = f"deny ipv{deny.family.value} {name}" + (f": {deny.comment}" if deny.comment else "")
        rules.append(_rule(NFT_CHAIN[chain.role], comment[:100], *statements, _COUNTER,
                           _refusal(deny.verdict, deny.proto if deny.ports else None)))
    return list(sets), rules


@functools.lru_cache(maxsize=4)
def _deny_sets(rules: tuple[DenyRule, ...]) -> tuple[tuple[dict[str, Any], ...], tuple[str, ...]]:
    """The sets of some denies (built once for the chains that share them) and each deny's set name."""
    sets: list[dict[str, Any]] = []
    names = []
    for number, deny in enumerate(rules, start=1):
        name = f"deny_v{deny.family.value}_{number}"
        names.append(name)
        sets.append({"set": {**_in_table(), "name": name, "type": _ADDR_TYPE[deny.family], "flags": ["interval"],
                             "elem": [_address(net) for net in deny.sources]}})
        if deny.ports:
            sets.append({"set": {**_in_table(), "name": f"{name}_ports", "type": "inet_service", "flags": ["interval"],
                                 "elem": [_port(span) for span in deny.ports]}})
    return tuple(sets), tuple(names)


def _refusal(verdict: Verdict, proto: str | None) -> dict[str, Any]:
    if verdict is Verdict.DROP:
        return {"drop": None}
    return {"reject": {"type": "tcp reset"}} if proto == "tcp" else {"reject": {"type": "icmpx",
                                                                               "expr": "port-unreachable"}}


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
    checks: list[dict[str, Any]] = []
    for family, proto, comment, set_match, group in matches:
        destination = port or {"payload": {"protocol": proto, "field": "dport"}}
        source = {"payload": {"protocol": _PAYLOAD_PROTO[family], "field": "saddr"}}
        # inet tables need the l4 protocol stated before `ct original proto-dst`.
        l4proto = _match({"meta": {"key": "l4proto"}}, proto)
        if isinstance(set_match, str):  # one (source . port) set
            rules.append(_rule(chain_name, comment, l4proto, _match({"concat": [source, destination]}, set_match),
                               _COUNTER, {"accept": None}))
            continue
        # a source set and its port set
        matching = [l4proto, _match(source, set_match[0]), _match(destination, set_match[1])]
        rules.append(_rule(chain_name, comment, *matching, _COUNTER, {"accept": None}))
        new = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}}
        refusal = _refusal(piece.over_limit, proto)
        base = set_match[0][1:]
        if group.limit is not None:
            limit = {"limit": {"rate": group.limit.rate, "per": group.limit.per, "burst": group.limit.burst,
                               "inv": True}}
            checks.append(_rule(chain_name, f"{comment}: over {group.limit.rate}/{group.limit.per}", new, *matching,
                                {"set": {"op": "add", "elem": source, "set": f"@{base}_limit", "stmt": [limit]}},
                                _COUNTER, refusal))
        if group.max_connections is not None:
            count = {"ct count": {"val": group.max_connections, "inv": True}}
            checks.append(_rule(chain_name, f"{comment}: over {group.max_connections} connections", new, *matching,
                                {"set": {"op": "add", "elem": source, "set": f"@{base}_conns", "stmt": [count]}},
                                _COUNTER, refusal))
    return list(sets), checks + rules  # every limit is checked before anything is let through


@functools.lru_cache(maxsize=4)
def _allow_sets(rules: tuple[AllowRule, ...], prefix: str
                ) -> tuple[tuple[dict[str, Any], ...], tuple[tuple[Family, str, str, Any, Any], ...]]:
    """The sets of some allows (built once for the chains that share them), and per rule to write:
    (family, protocol, comment, "@pairs" or ("@sources", "@ports"), its SourceGroup or None)."""
    piece = Allows(rules, PortMatch.PUBLISHED)
    sets: list[dict[str, Any]] = []
    matches: list[tuple[Family, str, str, Any, Any]] = []
    for proto in PROTOCOLS:
        for family in Family:
            groups, pairs = piece.factored(family, proto)
            name = f"{prefix}_v{family.value}_{proto}"
            if pairs:
                sets.append({"set": {**_in_table(), "name": name, "type": [_ADDR_TYPE[family], "inet_service"],
                                     "flags": ["interval"], "elem": [_element(element) for element in pairs]}})
                matches.append((family, proto, f"allow {proto} ipv{family.value}", f"@{name}", None))
            for number, group in enumerate(groups, start=1):
                # Named sets for the ports too (not an anonymous one in the rule): read-back and audit see them.
                group_name = f"{name}_{number}"
                sets += [{"set": {**_in_table(), "name": group_name, "type": _ADDR_TYPE[family], "flags": ["interval"],
                                  "elem": [_address(net) for net in group.sources]}},
                         {"set": {**_in_table(), "name": f"{group_name}_ports", "type": "inet_service",
                                  "flags": ["interval"], "elem": [_port(span) for span in group.ports]}}]
                matches.append((family, proto, f"allow {proto} ipv{family.value} group {number}",
                                (f"@{group_name}", f"@{group_name}_ports"), group))
                if group.limit is not None:  # per source: how many new connections lately
                    sets.append({"set": {**_in_table(), "name": f"{group_name}_limit", "type": _ADDR_TYPE[family],
                                         "flags": ["timeout"], "size": 65535,
                                         "timeout": 2 * _SECONDS[group.limit.per]}})
                if group.max_connections is not None:  # per source: how many open connections
                    # no "dynamic" flag: JSON before nft 1.0.7 does not know it; a set that rules add to is one
                    sets.append({"set": {**_in_table(), "name": f"{group_name}_conns", "type": _ADDR_TYPE[family],
                                         "size": 65535}})
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


def egress(piece: Egress, chain: Chain) -> Objects:
    """Containers' new connections to the outside: one rule per egress rule, in order, then the default."""
    rules = []
    for rule in piece.rules:
        proto = _PAYLOAD_PROTO[rule.family]
        statements = []
        if rule.interfaces:
            statements.append(_match({"meta": {"key": "iifname"}}, _set_or_value(list(rule.interfaces))))
        if rule.sources:
            statements.append(_match({"payload": {"protocol": proto, "field": "saddr"}}, _addresses(rule.sources)))
        if any(net.prefixlen for net in rule.destinations):
            statements.append(_match({"payload": {"protocol": proto, "field": "daddr"}},
                                     _addresses(rule.destinations)))
        elif not rule.sources:  # nothing says the family yet
            statements.append(_match({"meta": {"key": "nfproto"}}, f"ipv{rule.family.value}"))
        if rule.ports:
            statements.append(_match({"payload": {"protocol": rule.proto or "tcp", "field": "dport"}},
                                     _set_or_value([_port(span) for span in rule.ports])))
        comment = f"egress ipv{rule.family.value}" + (f": {rule.comment}" if rule.comment else "")
        rules += _egress_verdicts(NFT_CHAIN[chain.role], comment[:100], statements, rule.verdict,
                                  rule.proto if rule.ports else None)
    if piece.default != "accept":
        rules += _egress_verdicts(NFT_CHAIN[chain.role], f"egress default {piece.default}", [], piece.default, None)
    return [], rules


def _egress_verdicts(chain: str, comment: str, statements: list[dict[str, Any]], verdict: str,
                     proto: str | None) -> list[dict[str, Any]]:
    """The rule(s) for a verdict: a refusal of any protocol is a TCP reset for TCP (an ICMP error the
    client may not even get would leave it waiting) and an ICMP port unreachable for the rest."""
    if verdict == "accept":
        return [_rule(chain, comment, *statements, _COUNTER, {"accept": None})]
    if verdict == "reject" and proto is None:
        return [_rule(chain, f"{comment} (tcp)", *statements, _match({"meta": {"key": "l4proto"}}, "tcp"), _COUNTER,
                      {"reject": {"type": "tcp reset"}}),
                _rule(chain, comment, *statements, _COUNTER, _refusal(Verdict.REJECT, None))]
    return [_rule(chain, comment, *statements, _COUNTER, _refusal(Verdict(verdict), proto))]


def _addresses(networks: tuple[Network, ...]) -> Any:
    return _set_or_value([_address(net) for net in networks])


def to_host(piece: ToHost, chain: Chain) -> Objects:
    return [], [_rule(NFT_CHAIN[chain.role], "everything else", _COUNTER, {"goto": {"target": NFT_CHAIN[Role.HOST]}})]


_PIECES: dict[type, Callable[[Any, Chain], Objects]] = {
    Bans: bans,
    Denies: denies,
    Established: established,
    NeighbourDiscovery: neighbour_discovery,
    IcmpEcho: icmp_echo,
    Allows: allows,
    LogDrops: log_drops,
    Default: default,
    ToProxy: to_proxy,
    ToHost: to_host,
    Egress: egress,
}


# -- JSON builders -------------------------------------------------------------------------------------
def _in_table() -> dict[str, str]:
    return {"family": "inet", "table": NFT_TABLE}


def _match(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def _set_or_value(values: list[str]) -> Any:
    return values[0] if len(values) == 1 else {"set": values}


def _rule(chain: str, comment: str, *statements: dict[str, Any]) -> dict[str, Any]:
    return {**_in_table(), "chain": chain, "comment": _fit_comment(comment), "expr": list(statements)}


# nft's parser refuses a comment over 128 bytes (NFTNL_UDATA_COMMENT_MAXLEN); its JSON parser does not
# check, so an exported file failed where `apply` worked. Cut at a character boundary: 100 characters of
# a policy comment can be 400 bytes of UTF-8.
_COMMENT_MAX_BYTES = 128


def _fit_comment(comment: str) -> str:
    data = comment.encode()
    if len(data) <= _COMMENT_MAX_BYTES:
        return comment
    return data[:_COMMENT_MAX_BYTES].decode(errors="ignore")


def _element(element: Element) -> dict[str, Any]:
    return {"concat": [_address(element.source), _port(element.ports)]}


def address_value(net: Network) -> Any:
    """A network as nft's JSON writes a set element: a plain address, or a prefix."""
    return _address(net)


def _address(net: Network) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return net.network_address
    return {"prefix": {"addr": net.network_address, "len": net.prefixlen}}


def _port(span: PortRange) -> Any:
    return span.first if span.first == span.last else {"range": [span.first, span.last]}
