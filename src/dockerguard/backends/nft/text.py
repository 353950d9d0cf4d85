"""The nft driver's JSON transaction written as an `nft -f` file, for hosts that load their firewall with
nftables.service (`dockerguard export --format nft`).

It is a command-by-command translation of the JSON the driver sends (same commands, same order), not a
second renderer: whatever the JSON says, the text says. It covers exactly the JSON vocabulary the driver
uses and refuses anything else, so a new statement in nft.py cannot be exported wrongly in silence.
"""

from __future__ import annotations

from typing import Any

from ...errors import DockerguardError, UsageError

# Selectors whose values are strings and must be quoted (everything else is a number or an nft symbol).
_STRING_KEYS = {"iifname", "oifname"}


def json_to_text(payload: dict[str, Any]) -> str:
    lines: list[str] = []
    for command in payload["nftables"]:
        if "metainfo" in command:
            continue
        (verb, body), = command.items()
        (kind, spec), = body.items()
        if verb == "flush" or kind == "element":
            lines.append(f"{verb} {_reference(kind, spec)}")
        else:
            lines.append(f"{verb} {_object(kind, spec)}")
    return "\n".join(lines) + "\n"


def _reference(kind: str, spec: dict[str, Any]) -> str:
    """`flush chain inet t c`, `element inet t s { 1, 2 }`: an object by name (and elements to add)."""
    name = f"{kind} {spec['family']} {spec['table']} {spec['name']}"
    if kind == "element":
        return f"{name} {{ {', '.join(_value(element, quote=False) for element in spec['elem'])} }}"
    if kind in ("chain", "set"):
        return name
    raise _unsupported(kind, spec)


def _object(kind: str, spec: dict[str, Any]) -> str:
    if kind == "table":
        return f"table {spec['family']} {spec['name']}"
    where = f"{spec['family']} {spec['table']}"
    if kind == "chain":
        if "hook" not in spec:
            return f"chain {where} {spec['name']}"
        return (f"chain {where} {spec['name']} {{ type {spec['type']} hook {spec['hook']} priority "
                f"{spec['prio']}; policy {spec.get('policy', 'accept')}; }}")
    if kind == "set":
        parts = [f"type {' . '.join(as_list(spec['type']))};"]
        if "size" in spec:
            parts.append(f"size {int(spec['size'])};")
        if spec.get("flags"):
            parts.append(f"flags {', '.join(as_list(spec['flags']))};")
        if "timeout" in spec:
            parts.append(f"timeout {int(spec['timeout'])}s;")
        if spec.get("elem"):
            elements = ",\n\t".join(_value(element, quote=False) for element in spec["elem"])
            parts.append(f"elements = {{\n\t{elements}\n}};")
        return f"set {where} {spec['name']} {{ {' '.join(parts)} }}"
    if kind == "rule":
        text = " ".join(statement_text(statement) for statement in spec["expr"])
        if "comment" in spec:
            text += f" comment {_quote(spec['comment'])}"
        return f"rule {where} {spec['chain']} {text}"
    raise _unsupported(kind, spec)


def statement_text(statement: dict[str, Any]) -> str:
    """One rule statement in nft's syntax (read-back shows rules this way too: canon.py)."""
    (name, arg), = statement.items()
    if name == "match":
        left = arg["left"]
        quote = isinstance(left, dict) and left.get("meta", {}).get("key") in _STRING_KEYS
        op = {"==": "", "in": ""}.get(arg["op"], f"{arg['op']} ")
        return f"{_expression(left)} {op}{_value(arg['right'], quote)}"
    if name in ("accept", "drop", "continue", "return") and arg is None:
        return name
    if name in ("jump", "goto"):
        return f"{name} {arg['target']}"
    if name == "counter":
        packets, octets = (arg or {}).get("packets", 0), (arg or {}).get("bytes", 0)
        return f"counter packets {packets} bytes {octets}" if packets or octets else "counter"
    if name == "reject":
        if not arg:
            return "reject"
        if arg.get("type") == "tcp reset":
            return "reject with tcp reset"
        return f"reject with {arg['type']} {arg['expr']}"
    if name == "limit":
        over = "over " if arg.get("inv") else ""
        return f"limit rate {over}{arg['rate']}/{arg.get('per', 'second')} burst {arg.get('burst', 5)} packets"
    if name == "ct count":
        return f"ct count {'over ' if arg.get('inv') else ''}{int(arg['val'])}"
    if name == "set" and arg.get("op") in ("add", "update"):  # a dynamic set: per-source state
        statements = " ".join(statement_text(item) for item in arg.get("stmt", []))
        return f"{arg['op']} {arg['set']} {{ {_expression(arg['elem'])} {statements} }}"
    if name == "log":
        text = "log"
        if "prefix" in arg:
            text += f" prefix {_quote(arg['prefix'])}"
        if "level" in arg:
            text += f" level {arg['level']}"
        return text
    raise _unsupported(name, arg)


def _expression(expr: Any) -> str:
    if isinstance(expr, dict):
        if "meta" in expr:
            return f"meta {expr['meta']['key']}"
        if "ct" in expr:
            ct = expr["ct"]
            return f"ct {ct['dir']} {ct['key']}" if "dir" in ct else f"ct {ct['key']}"
        if "payload" in expr:
            return f"{expr['payload']['protocol']} {expr['payload']['field']}"
        if "concat" in expr:
            return " . ".join(_expression(part) for part in expr["concat"])
    raise _unsupported("expression", expr)


def _value(value: Any, quote: bool) -> str:
    if isinstance(value, bool):
        raise _unsupported("value", value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if value.startswith("@") or not quote:
            return value
        return _quote(value)
    if isinstance(value, list):  # flag list of an "in" match: ct state established,related
        return ",".join(_value(item, quote) for item in value)
    if isinstance(value, dict):
        if "set" in value:
            return "{ " + ", ".join(_value(item, quote) for item in value["set"]) + " }"
        if "concat" in value:
            return " . ".join(_value(item, quote) for item in value["concat"])
        if "range" in value:
            return "-".join(_value(item, quote) for item in value["range"])
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
    raise _unsupported("value", value)


def _quote(text: str) -> str:
    # nft's text syntax has no escape for '"' (the JSON form does): refuse rather than write a broken file.
    if '"' in text or "\n" in text or "\\" in text:
        raise UsageError(f"{text!r} cannot be written in nft's text syntax (it contains a quote, backslash "
                         "or newline); use `dockerguard apply` instead of an exported file")
    return f'"{text}"'


def as_list(value: Any) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else [str(value)]


def _unsupported(what: str, value: Any) -> DockerguardError:
    return DockerguardError(f"internal error: the nft text export does not know {what} {value!r}")
