"""The nft read-back compares whole rules (matches, statements, verdict) and set declarations, in one normal
form for what we render and what nft lists (backends/nft/canon.py).

nft_listings/nft-*.json are what real nft releases (0.9.8 bullseye, 1.0.6 bookworm, 1.1.3 trixie, 1.1.7
forky) listed after loading the transaction of nft_listings/policy.toml (record.sh re-records them): each
must read back equal to the current render, and any change that decides packets must not.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from dockerguard.backends import get_backend
from dockerguard.backends.nft.canon import normalised, rule_body
from dockerguard.backends.nft.readback import state_of
from dockerguard.compiler import compile_policy
from dockerguard.policy import parse_policy

LISTINGS = Path(__file__).parent / "nft_listings"
PUBLISHED = frozenset({("tcp", 8080), ("udp", 5353)})
VERSIONS = ("0.9.8", "1.0.6", "1.1.3", "1.1.7")


def _rendered(version: str) -> list[dict[str, Any]]:
    text = (LISTINGS / "policy.toml").read_text()
    if version.startswith("0."):  # recorded in the VM matrix's bullseye guest: 5.10 refuses `ct count` there
        text = "\n".join(line for line in text.splitlines() if not line.startswith("max_connections ="))
    ruleset = compile_policy(parse_policy(text, "policy.toml"), PUBLISHED)
    return get_backend("nft").transaction(ruleset).state_objects


def _listed(version: str) -> list[dict[str, Any]]:
    items = json.loads((LISTINGS / f"nft-{version}.json").read_text())["nftables"]
    return [item for item in items if any(kind in item for kind in ("table", "chain", "set", "rule"))]


@pytest.mark.parametrize("version", VERSIONS)
def test_what_each_nft_release_lists_reads_back_as_rendered(version: str) -> None:
    old = version.startswith("0.")
    rendered, listed = state_of(_rendered(version), old), state_of(_listed(version), old)
    assert listed == rendered
    assert len(listed.rules) > 30 and all(rule.body for rule in listed.rules)


def test_nft_0_9_8_lists_no_limit_inside_a_set_statement_so_only_that_is_left_out() -> None:
    """Debian 11's nft lists `add @s { ip saddr limit rate over 20/minute }` as `add @s { ip saddr }`: the
    kernel holds the limit, nft 0.9.8 cannot show it, so its rate and burst are not compared there (and
    `backends` says so); everything else of such a rule still is."""
    listed = _listed("0.9.8")
    limited = _rule(listed, "allow tcp ipv4 group 1: over 20/minute", "external")
    assert next(statement["set"] for statement in limited["expr"] if "set" in statement).get("stmt") is None
    rendered = state_of(_rendered("0.9.8"), old_nft=True)
    assert state_of(listed) != state_of(_rendered("0.9.8"))  # read as a current nft would: drift
    assert state_of(listed, old_nft=True) == rendered
    limited["expr"][0]["match"]["right"] = "established"  # another match of the same rule: still drift
    assert state_of(listed, old_nft=True) != rendered


def _rule(listed: list[dict[str, Any]], comment: str, chain: str | None = None) -> dict[str, Any]:
    return next(item["rule"] for item in listed if "rule" in item and item["rule"].get("comment") == comment
                and chain in (None, item["rule"]["chain"]))


def _limit(listed: list[dict[str, Any]]) -> dict[str, Any]:
    rule = _rule(listed, "allow tcp ipv4 group 1: over 20/minute")
    update = next(statement["set"] for statement in rule["expr"] if "set" in statement)
    limit: dict[str, Any] = update["stmt"][0]["limit"]
    return limit


def _tampered(change: Any) -> list[dict[str, Any]]:
    listed = copy.deepcopy(_listed("1.0.6"))
    change(listed)
    return listed


def _set_right(rule: dict[str, Any], index: int, value: Any) -> None:
    rule["expr"][index]["match"]["right"] = value


# Each alters one rule (or set, or the table) in place and keeps every comment: what `nft replace rule ...
# handle H` or `nft add table ... { flags dormant; }` by an admin or a script does.
TAMPERING = {
    "another interface": lambda listed: _set_right(
        _rule(listed, "judge forwarded traffic entering external interfaces"), 0, "ens18"),
    "another port set": lambda listed: _set_right(
        _rule(listed, "deny ipv4 deny_v4_1"), 1, "@allow_v4_tcp_1_ports"),
    "another source set": lambda listed: _set_right(_rule(listed, "allow tcp ipv4 group 1"), 0, "@deny_v4_1"),
    "another burst": lambda listed: _limit(listed).update(burst=1),
    "another rate": lambda listed: _limit(listed).update(rate=2000),
    "accept instead of reject": lambda listed: _rule(listed, "default reject")["expr"].__setitem__(1, {"accept": None}),
    "one match removed": lambda listed: _rule(listed, "allow tcp ipv4 group 1")["expr"].pop(0),
    "counter removed": lambda listed: _rule(listed, "default drop")["expr"].pop(0),
    "log prefix": lambda listed: _rule(listed, "log dropped")["expr"][1]["log"].update(prefix="x "),
    "table switched off": lambda listed: next(item["table"] for item in listed if "table" in item).update(
        flags=["dormant"]),
    "set flags": lambda listed: next(item["set"] for item in listed if "set" in item
                                     and item["set"]["name"] == "deny_v4_1").update(flags=["constant"]),
    "set element": lambda listed: next(item["set"] for item in listed if "set" in item
                                       and item["set"]["name"] == "deny_v4_1")["elem"].append("198.51.100.99"),
}


@pytest.mark.parametrize("name", TAMPERING)
def test_tampering_that_keeps_the_comment_is_drift(name: str) -> None:
    assert state_of(_tampered(TAMPERING[name])) != state_of(_rendered("1.0.6"))


def test_what_decides_nothing_is_no_drift() -> None:
    def harmless(listed: list[dict[str, Any]]) -> None:
        for item in listed:
            if "rule" in item:
                for statement in item["rule"]["expr"]:
                    if "counter" in statement:
                        statement["counter"] = {"packets": 12, "bytes": 3400}  # counters count
                item["rule"]["handle"] = 999
        judge = _rule(listed, "judge forwarded traffic entering external interfaces")
        judge["expr"][0]["match"]["right"]["set"].reverse()  # an anonymous set has no order
        deny = _rule(listed, "deny ipv4 deny_v4_1", "proxy")  # a protocol check `tcp dport` implies
        deny["expr"].insert(1, {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}})

    assert state_of(_tampered(harmless)) == state_of(_rendered("1.0.6"))


def test_only_the_leading_matches_drop_an_implied_protocol_check() -> None:
    l4proto = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}
    dport = {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}}
    update = {"set": {"op": "add", "elem": {"payload": {"protocol": "ip", "field": "saddr"}}, "set": "@s",
                      "stmt": [{"limit": {"rate": 1, "per": "second", "burst": 5, "inv": True}}]}}
    assert normalised([l4proto, dport, {"accept": None}]) == [dport, {"accept": None}]
    # with a statement between them, the check guards that statement: it stays
    assert normalised([l4proto, update, dport, {"accept": None}])[0] == l4proto
    # `ip saddr` implies IPv4, not a protocol
    nfproto = {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}}
    saddr = {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@s"}}
    assert normalised([nfproto, saddr, {"drop": None}]) == [saddr, {"drop": None}]
    assert normalised([nfproto, dport, {"drop": None}])[0] == nfproto


def test_bodies_read_like_nft_and_fall_back_to_json() -> None:
    assert rule_body([{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": {"set": ["eth1", "eth0"]}}},
                      {"counter": {"packets": 5, "bytes": 300}}, {"jump": {"target": "external"}}]) == (
        'meta iifname { "eth0", "eth1" } counter jump external')
    assert rule_body([{"reject": {"type": "icmpx", "expr": "port-unreachable"}}]) == "reject"
    # a statement nft's export writer does not know (a foreign tool's) is compared as JSON
    assert rule_body([{"mangle": {"key": {"meta": {"key": "mark"}}, "value": 1}}]) == (
        '{"mangle":{"key":{"meta":{"key":"mark"}},"value":1}}')
