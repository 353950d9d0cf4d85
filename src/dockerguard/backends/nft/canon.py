"""One normal form for what decides packets in our nft objects, whether we rendered them or nft listed them
back: a rule's matches, statements and verdict (a counter's presence, never its values), a set's type and
flags. Pure.

nft lists a rule in the kernel's terms, which differ from what was sent only in ways that change nothing
(seen with nft 0.9.8, 1.0.6, 1.1.3 and 1.1.7):
- it leaves out the protocol checks a later match implies (`meta l4proto tcp` before `tcp dport`,
  `meta nfproto ipv4` before `ip saddr`), or shows some of them, depending on the version;
- anonymous set elements come back sorted (1.1);
- `reject` with the inet family's default (icmpx port-unreachable) comes back bare (0.9.8);
- a set that rules add to is flagged `dynamic` (1.1).
The normal form removes exactly those differences, on both sides; anything else (another interface, port,
set, rate, burst, verdict, a match more or less) stays, so two rules with one normal form decide alike.
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import DockerguardError
from . import text

_L4_NUMBERS = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp"}
_NFPROTO_OF_PAYLOAD = {"ipv4": "ip", "ipv6": "ip6"}
_DEFAULT_REJECT = {"type": "icmpx", "expr": "port-unreachable"}
_SET_NAMING = frozenset({"family", "table", "name", "handle", "elem"})


def rule_body(statements: list[dict[str, Any]], old_nft: bool = False) -> str:
    """A rule's statements in normal form, as nft-like text (one token group per statement)."""
    return " ".join(_text(statement) for statement in normalised(statements, old_nft))


def normalised(statements: list[dict[str, Any]], old_nft: bool = False) -> list[dict[str, Any]]:
    """`old_nft`: nft before 1.0 (Debian 11's 0.9.8) lists a set statement without the limit it carries,
    though the kernel holds it: the limit is then left out of the comparison (`backends` says so)."""
    out = [_statement(statement) for statement in statements]
    if old_nft:
        out = [{"set": {key: value for key, value in statement["set"].items() if key != "stmt"}}
               if isinstance(statement.get("set"), dict) else statement for statement in out]
    # Matches before the first other statement are one conjunction: a protocol check that another of them
    # implies is redundant there (the kernel checks it for that match anyway). After a statement with an
    # effect (a set update, a limit) a check is no longer redundant, so only the leading run is pruned.
    end = next((index for index, statement in enumerate(out) if "match" not in statement), len(out))
    implied = {protocol for statement in out[:end] for protocol in _payload_protocols(statement["match"]["left"])}
    return [statement for index, statement in enumerate(out)
            if index >= end or not _implied(statement["match"], implied)]


def set_spec(body: dict[str, Any]) -> str:
    """A set's declaration without its name and elements: type, flags, size, timeout, ... as text."""
    parts: list[str] = []
    for key in sorted(set(body) - _SET_NAMING):
        value = body[key]
        if key == "flags":
            value = sorted(flag for flag in text.as_list(value) if flag != "dynamic")
            if not value:
                continue
        if key == "type":
            parts.insert(0, f"type {' . '.join(text.as_list(value))}")
            continue
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        parts.append(f"{key} {shown if isinstance(shown, (int, str)) else json.dumps(shown, sort_keys=True)}")
    return "; ".join(parts)


def _statement(statement: Any) -> Any:
    if not isinstance(statement, dict) or len(statement) != 1:
        return statement
    (name, arg), = statement.items()
    if name == "counter":
        return {"counter": None}
    if name == "match" and isinstance(arg, dict):
        return {"match": {**arg, "right": _value(arg.get("right"))}}
    if name == "reject" and arg == _DEFAULT_REJECT:
        return {"reject": None}
    if name in ("limit", "ct count") and isinstance(arg, dict) and arg.get("inv") is False:
        return {name: {key: value for key, value in arg.items() if key != "inv"}}
    if name == "set" and isinstance(arg, dict) and isinstance(arg.get("stmt"), list):
        return {"set": {**arg, "stmt": [_statement(item) for item in arg["stmt"]]}}
    return statement


def _value(value: Any) -> Any:
    if isinstance(value, dict) and isinstance(value.get("set"), list):  # an anonymous set: no order
        return {"set": sorted(value["set"], key=lambda item: json.dumps(item, sort_keys=True))}
    return value


def _payload_protocols(expression: Any) -> set[str]:
    if isinstance(expression, dict):
        if isinstance(expression.get("payload"), dict):
            return {str(expression["payload"].get("protocol"))}
        if isinstance(expression.get("concat"), list):
            return {protocol for part in expression["concat"] for protocol in _payload_protocols(part)}
    return set()


def _implied(match: dict[str, Any], protocols: set[str]) -> bool:
    """Is this match a protocol check that one of `protocols`' payload matches implies?"""
    left, right = match.get("left"), match.get("right")
    if match.get("op") != "==" or not isinstance(left, dict) or not isinstance(left.get("meta"), dict):
        return False
    key = left["meta"].get("key")
    if key == "l4proto":
        name = _L4_NUMBERS.get(right) if isinstance(right, int) else right
        return isinstance(name, str) and name in protocols
    if key == "nfproto":
        return isinstance(right, str) and _NFPROTO_OF_PAYLOAD.get(right) in protocols
    return False


def _text(statement: Any) -> str:
    """nft's words where the export writer knows the statement, else its JSON: total, and one text per form."""
    try:
        return text.statement_text(statement)
    except (DockerguardError, KeyError, TypeError, ValueError, AttributeError):
        return json.dumps(statement, sort_keys=True, separators=(",", ":"))
