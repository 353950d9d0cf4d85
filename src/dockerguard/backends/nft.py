"""Native nftables driver: libnftables JSON through the `nftables` module (PyPI pip-nftables).

Our objects live in one table, `inet dockerguard`, replaced as a whole in one transaction
(add table; delete table; add table + contents), so other tables are never touched. A base chain on
the forward hook at priority filter - 1 runs before Docker's (iptables-nft's filter FORWARD or
Docker's own nftables tables). An accept here only ends our chain; a drop is final.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import TransactionError
from ..model import Element, Family, HostRules, Ruleset, Verdict
from .base import Backend, InstalledRule, InstalledState, PathFinding, ProbeResult, Rendered, Snapshot

TABLE_NAME = "dockerguard"
TABLE = {"family": "inet", "name": TABLE_NAME}
EXTERNAL_CHAIN = "external"  # forwarded traffic from external interfaces (the DOCKER-USER equivalent)
HOST_CHAIN = "host"  # traffic from external interfaces to the host itself ([host] in the policy)
PRIORITY = -1  # "filter - 1": before iptables-nft's and Docker's filter chains at priority 0
LOG_PREFIX = "dockerguard-drop: "

_ADDR_TYPE = {Family.IPV4: "ipv4_addr", Family.IPV6: "ipv6_addr"}
_PAYLOAD_PROTO = {Family.IPV4: "ip", Family.IPV6: "ip6"}
_COUNTER: dict[str, Any] = {"counter": {"packets": 0, "bytes": 0}}
_ND_TYPES = ["nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert"]


class NftBackend(Backend):
    name = "nft"

    # -- probing ---------------------------------------------------------------------------------
    @classmethod
    def probe(cls) -> ProbeResult:
        try:
            import nftables  # noqa: F401
        except ImportError as exc:
            return ProbeResult(cls.name, False, f"Python module 'nftables' missing ({exc}); "
                                                "install pip-nftables and libnftables1")
        try:
            rc, output, error = _run_json({"nftables": [{"list": {"tables": {}}}]}, json_output=True)
        except OSError as exc:
            return ProbeResult(cls.name, False, f"libnftables cannot be loaded ({exc}); install libnftables1")
        if rc != 0:
            return ProbeResult(cls.name, False, f"cannot list nftables tables: {error.strip()} "
                                                "(needs root / CAP_NET_ADMIN)")
        version = _metainfo_version(output)
        # Check (without committing) that this nft/kernel pair takes what we render: concatenated
        # interval sets and `ct original proto-dst` appeared in different releases.
        probe_rules = NftBackend().render(_PROBE_RULESET).payload
        rc, _, error = _run_json(probe_rules, dry_run=True)
        details = (("nft", version),)
        if rc != 0:
            return ProbeResult(cls.name, False, f"nft {version} rejects the ruleset form: {error.strip()}",
                               details)
        note = (" (lists IPv6 prefixes inside concatenations as /64: read-back compares those elements' "
                "addresses, not their prefix lengths)" if _version_tuple(version) < (1, 0) else "")
        return ProbeResult(cls.name, True, f"libnftables {version}{note}", details)

    # -- rendering -------------------------------------------------------------------------------
    def __init__(self) -> None:
        self._rendered: tuple[Ruleset, Rendered] | None = None  # plan needs render + expected of one ruleset
        self._nft_version: str | None = None

    def render(self, ruleset: Ruleset) -> Rendered:
        if self._rendered is None or self._rendered[0] is not ruleset:
            self._rendered = (ruleset, self._render(ruleset))
        return self._rendered[1]

    def _render(self, ruleset: Ruleset) -> Rendered:
        commands: list[dict[str, Any]] = [
            {"add": {"table": TABLE}},
            {"delete": {"table": TABLE}},  # with the add above: works whether or not it exists
            {"add": {"table": TABLE}},
        ]
        sets, rules = self._judge("forward", EXTERNAL_CHAIN, "forwarded", ruleset.interfaces)
        original_port = {"ct": {"key": "proto-dst", "dir": "original"}}
        for family, proto, elements in _nonempty(ruleset.elements):
            sets.append(_set(f"allow_v{family.value}_{proto}", family, elements))
            rules.append(_allow_rule(EXTERNAL_CHAIN, family, proto, original_port, f"allow_v{family.value}_{proto}"))
        if ruleset.log_dropped:
            rules.append(_rule(EXTERNAL_CHAIN, "log dropped",
                               {"limit": {"rate": 5, "per": "minute", "burst": 10}},
                               {"log": {"prefix": LOG_PREFIX}}))
        rules += _default_rules(EXTERNAL_CHAIN, ruleset.default)
        if ruleset.host is not None:
            host_sets, host_rules = self._host(ruleset.host, ruleset.interfaces)
            sets += host_sets
            rules += host_rules
        commands += [{"add": item} for item in sets]
        commands += [{"add": {"rule": rule}} for rule in rules]
        payload = {"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]}
        return Rendered(self.name, _one_command_per_line(payload), payload)

    @staticmethod
    def _judge(hook: str, chain: str, what: str, interfaces: tuple[str, ...]
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """A base chain on `hook` sending traffic from external interfaces to `chain`, where
        established/related pass first. Returns (chain objects, rules)."""
        objects: list[dict[str, Any]] = [
            {"chain": {**_in_table(), "name": hook, "type": "filter", "hook": hook, "prio": PRIORITY,
                       "policy": "accept"}},
            {"chain": {**_in_table(), "name": chain}},
        ]
        rules = [
            _rule(hook, f"judge {what} traffic entering external interfaces",
                  _match({"meta": {"key": "iifname"}}, _set_or_value(list(interfaces))),
                  _COUNTER, {"jump": {"target": chain}}),
            _rule(chain, "established,related",
                  {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
                  _COUNTER, {"accept": None}),
        ]
        return objects, rules

    def _host(self, host: HostRules, interfaces: tuple[str, ...]
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        objects, rules = self._judge("input", HOST_CHAIN, "host", interfaces)
        # Without neighbour discovery IPv6 stops working altogether.
        rules.append(_rule(HOST_CHAIN, "ipv6 neighbour discovery",
                           _match({"payload": {"protocol": "icmpv6", "field": "type"}}, {"set": _ND_TYPES}),
                           _COUNTER, {"accept": None}))
        if host.icmp_echo:
            for protocol in ("icmp", "icmpv6"):
                rules.append(_rule(HOST_CHAIN, f"{protocol} echo-request",
                                   _match({"payload": {"protocol": protocol, "field": "type"}}, "echo-request"),
                                   _COUNTER, {"accept": None}))
        for family, proto, elements in _nonempty(host.elements):
            name = f"host_v{family.value}_{proto}"
            objects.append(_set(name, family, elements))
            port = {"payload": {"protocol": proto, "field": "dport"}}  # INPUT sees the real port
            rules.append(_allow_rule(HOST_CHAIN, family, proto, port, name))
        return objects, rules + _default_rules(HOST_CHAIN, host.default)

    # -- kernel I/O ------------------------------------------------------------------------------
    def apply(self, rendered: Rendered) -> None:
        rc, _, error = _run_json(rendered.payload)
        if rc != 0:
            raise TransactionError(f"nftables refused the transaction: {error.strip()}")

    def installed(self) -> InstalledState | None:
        rc, output, error = _run_json({"nftables": [{"list": {"table": TABLE}}]}, json_output=True)
        if rc != 0:
            if "No such file or directory" in error:
                return None
            raise TransactionError(f"cannot list table inet {TABLE_NAME}: {error.strip()}")
        objects = [item for item in json.loads(output)["nftables"] if "metainfo" not in item]
        return _state(objects, self._ipv6_prefixes_unreadable(_metainfo_version(output)))

    def expected(self, ruleset: Ruleset) -> InstalledState:
        commands = self.render(ruleset).payload["nftables"]
        return _state([command["add"] for command in commands[4:]], self._ipv6_prefixes_unreadable())

    def _ipv6_prefixes_unreadable(self, version: str | None = None) -> bool:
        """nft before 1.0 (Debian 11's 0.9.8) lists every IPv6 prefix inside a concatenation as /64, though
        the kernel holds the right one (a newer nft lists it correctly). With such an nft, read-back can
        only compare those elements' addresses, not their prefix lengths."""
        if self._nft_version is None:
            if version is None:
                _, output, _ = _run_json({"nftables": [{"list": {"tables": {}}}]}, json_output=True)
                version = _metainfo_version(output)
            self._nft_version = version
        return _version_tuple(self._nft_version) < (1, 0)

    def snapshot(self) -> Snapshot:
        rc, output, error = _run_text(f"list table inet {TABLE_NAME}")
        if rc != 0 and "No such file or directory" not in error:
            raise TransactionError(f"cannot snapshot table inet {TABLE_NAME}: {error.strip()}")
        return Snapshot(self.name, output if rc == 0 else None)

    def restore(self, snapshot: Snapshot) -> None:
        if snapshot.data is None:
            self.remove()
            return
        text = f"add table inet {TABLE_NAME}\ndelete table inet {TABLE_NAME}\n{snapshot.data}"
        rc, _, error = _run_text(text)
        if rc != 0:
            raise TransactionError(f"nftables refused to restore the snapshot: {error.strip()}")

    def remove(self) -> None:
        rc, _, error = _run_text(f"add table inet {TABLE_NAME}\ndelete table inet {TABLE_NAME}")
        if rc != 0:
            raise TransactionError(f"cannot delete table inet {TABLE_NAME}: {error.strip()}")

    def is_host_chain(self, chain: str) -> bool:
        return chain in ("input", HOST_CHAIN)

    # -- export and path ---------------------------------------------------------------------------
    def render_text(self, ruleset: Ruleset) -> str:
        """The same transaction as `render`, written as an `nft -f` file (nftables.service hosts)."""
        from .nft_text import json_to_text

        return json_to_text(self.render(ruleset).payload)

    def path_report(self) -> tuple[PathFinding, ...]:
        """Which other base chains on our hooks run before ours (all tables, read-only)."""
        rc, output, error = _run_json({"nftables": [{"list": {"chains": {}}}]}, json_output=True)
        if rc != 0:
            raise TransactionError(f"cannot list nftables chains: {error.strip()}")
        return _path_findings([item["chain"] for item in json.loads(output)["nftables"] if "chain" in item])


def _one_command_per_line(payload: dict[str, Any]) -> str:
    """The JSON document, one command per line: exact, yet readable and diffable."""
    lines = ",\n".join(f"  {json.dumps(command)}" for command in payload["nftables"])
    return f'{{"nftables": [\n{lines}\n]}}\n'


# -- libnftables calls ---------------------------------------------------------------------------
def _context(json_output: bool = False, dry_run: bool = False) -> Any:
    # A new context per call: its netlink socket belongs to the network namespace we are in now.
    import nftables

    nft = nftables.Nftables()
    nft.set_json_output(json_output)
    nft.set_handle_output(False)
    if dry_run:
        _set_dry_run(nft)
    return nft


def _set_dry_run(nft: Any) -> None:
    """Check mode (`nft -c`). Debian's binding has set_dry_run; PyPI's pip-nftables lacks it, so call
    libnftables directly on the binding's context."""
    if hasattr(nft, "set_dry_run"):
        nft.set_dry_run(True)
        return
    import ctypes

    library = ctypes.CDLL("libnftables.so.1")
    library.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
    library.nft_ctx_set_dry_run(nft._Nftables__ctx, True)


def _run_json(payload: dict[str, Any], *, json_output: bool = False, dry_run: bool = False
              ) -> tuple[int, str, str]:
    rc, output, error = _context(json_output, dry_run).json_cmd(payload)
    # json_cmd returns the decoded output; keep the interface textual like cmd().
    return rc, json.dumps(output) if isinstance(output, dict) else (output or ""), error or ""


def _run_text(command: str) -> tuple[int, str, str]:
    rc, output, error = _context().cmd(command)
    return rc, output or "", error or ""


def _version_tuple(version: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", version)
    return tuple(int(n) for n in numbers[:3]) if numbers else (99,)  # unknown: assume a current nft


def _metainfo_version(output: str) -> str:
    try:
        for item in json.loads(output)["nftables"]:
            if "metainfo" in item:
                return str(item["metainfo"].get("version", "?"))
    except (ValueError, KeyError, TypeError):
        pass
    return "?"


# -- JSON builders -------------------------------------------------------------------------------
def _nonempty(elements_of: Callable[[Family, str], tuple[Element, ...]]
              ) -> Iterator[tuple[Family, str, tuple[Element, ...]]]:
    for proto in ("tcp", "udp"):
        for family in Family:
            elements = elements_of(family, proto)
            if elements:
                yield family, proto, elements


def _set(name: str, family: Family, elements: tuple[Element, ...]) -> dict[str, Any]:
    return {"set": {**_in_table(), "name": name, "type": [_ADDR_TYPE[family], "inet_service"],
                    "flags": ["interval"], "elem": [_element(element) for element in elements]}}


def _allow_rule(chain: str, family: Family, proto: str, port: dict[str, Any], set_name: str) -> dict[str, Any]:
    source = {"payload": {"protocol": _PAYLOAD_PROTO[family], "field": "saddr"}}
    # inet tables need the l4 protocol stated before `ct original proto-dst`.
    return _rule(chain, f"allow {proto} ipv{family.value}",
                 _match({"meta": {"key": "l4proto"}}, proto),
                 _match({"concat": [source, port]}, f"@{set_name}"),
                 _COUNTER, {"accept": None})


def _default_rules(chain: str, default: Verdict) -> list[dict[str, Any]]:
    if default is Verdict.REJECT:
        return [_rule(chain, "default reject tcp", _match({"meta": {"key": "l4proto"}}, "tcp"),
                      _COUNTER, {"reject": {"type": "tcp reset"}}),
                _rule(chain, "default reject", _COUNTER, {"reject": {"type": "icmpx", "expr": "port-unreachable"}})]
    return [_rule(chain, "default drop", _COUNTER, {"drop": None})]


def _in_table() -> dict[str, str]:
    return {"family": "inet", "table": TABLE_NAME}


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
    span = element.ports
    port: Any = span.first if span.first == span.last else {"range": [span.first, span.last]}
    return {"concat": [address, port]}


# -- read-back normalisation: the same code reads what we render and what the kernel lists --------
def _state(objects: list[dict[str, Any]], loose_ipv6_prefixes: bool = False) -> InstalledState:
    hooks: list[str] = []
    rules: list[InstalledRule] = []
    sets: list[tuple[str, tuple[str, ...]]] = []
    for item in objects:
        if "chain" in item:
            chain = item["chain"]
            if "hook" in chain:
                hooks.append(f"chain {chain['name']}: {chain.get('type')} hook {chain['hook']} "
                             f"priority {chain.get('prio')} policy {chain.get('policy')}")
        elif "set" in item:
            nft_set = item["set"]
            elements = sorted({text for elem in nft_set.get("elem", [])
                               for text in _element_texts(elem, loose_ipv6_prefixes)})
            sets.append((nft_set["name"], tuple(elements)))
        elif "rule" in item:
            rule = item["rule"]
            packets, octets = _counter(rule["expr"])
            description = f"{rule.get('comment', '?')} -> {_verdict(rule['expr'])}"
            rules.append(InstalledRule(rule["chain"], description, packets, octets))
    return InstalledState("nft", tuple(hooks), tuple(rules), tuple(sorted(sets)))


def _verdict(statements: list[dict[str, Any]]) -> str:
    last = statements[-1] if statements else {}
    if "jump" in last:
        return f"jump {last['jump']['target']}"
    return next(iter(last), "?")


def _counter(statements: list[dict[str, Any]]) -> tuple[int, int]:
    for statement in statements:
        counter = statement.get("counter")
        if isinstance(counter, dict):
            return int(counter.get("packets", 0)), int(counter.get("bytes", 0))
    return 0, 0


def _element_texts(elem: Any, loose_ipv6_prefixes: bool = False) -> list[str]:
    """"203.0.113.0/24 . 80-80" strings for one set element, however nft chose to print it."""
    if isinstance(elem, dict) and "elem" in elem:  # element with its own comment/counter
        elem = elem["elem"]["val"]
    parts = elem["concat"]
    first, last = _ports(parts[1])
    networks = _networks(parts[0])
    if loose_ipv6_prefixes:
        networks = [re.sub(r"/\d+$", "/?", net) if ":" in net and not net.endswith("/128") else net
                    for net in networks]
    return [f"{net} . {first}-{last}" for net in networks]


def _networks(value: Any) -> list[str]:
    # Both nft and Python's ipaddress print addresses canonically, so the text is compared as it
    # is (parsing 10,000 elements costs more than the kernel transaction).
    if isinstance(value, str):
        return [f"{value}/{128 if ':' in value else 32}"]
    if "prefix" in value:
        return [f"{value['prefix']['addr']}/{value['prefix']['len']}"]
    if "range" in value:
        low, high = (ipaddress.ip_address(bound) for bound in value["range"])
        return [str(net) for net in ipaddress.summarize_address_range(low, high)]  # type: ignore[arg-type]
    raise ValueError(f"unexpected set element address {value!r}")


def _ports(value: Any) -> tuple[int, int]:
    if isinstance(value, dict) and "range" in value:
        return _port(value["range"][0]), _port(value["range"][1])
    return _port(value), _port(value)


def _port(value: Any) -> int:
    return value if isinstance(value, int) else socket.getservbyname(str(value))


def _path_findings(chains: list[dict[str, Any]]) -> tuple[PathFinding, ...]:
    """Base chains of the ip/ip6/inet families on the same hook run in priority order; a lower priority
    than ours runs first, and its drop is final before we judge (its accept is not: ours still runs).
    Equal priorities run in an unspecified order. The bridge family's forward hook is another path."""
    def ours(chain: dict[str, Any]) -> bool:
        return chain.get("family") == "inet" and chain.get("table") == TABLE_NAME

    findings: list[PathFinding] = []
    for chain in (c for c in chains if ours(c) and "hook" in c):
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


def _probe_ruleset() -> Ruleset:
    from ..model import AllowRule
    from ..policy import PortRange

    net = ipaddress.ip_network("192.0.2.0/24")
    return Ruleset(("eth0",), Verdict.REJECT, True,
                   (AllowRule(Family.IPV4, "tcp", (net,), (PortRange(80, 81),), "probe"),))


_PROBE_RULESET = _probe_ruleset()
