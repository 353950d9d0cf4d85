"""Property: any policy the generator can write either is refused with a PolicyError, or compiles to rules
the REAL kernel tools accept: the nft driver's persistent file through `nft -c -f -`, the iptables text of
each family through `ip(6)tables-{nft,legacy}-restore --test` (after `ipset restore` of its sets), all in a
throw-away namespace. The generator follows the policy schema (allow / deny / egress / [host] entries with
ports, ranges, protocols, IPv4 and IPv6 sources, sets, limits, comments, interfaces) and strays from it
at every edge (port 0 and 65536, host bits, mapped and zoned IPv6, control characters, long names)."""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any

from corpus import toml_string
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernelcheck import kernel_refusals, render_all
from relenv import Netns

from dockerguard.compiler import compile_policy
from dockerguard.errors import PolicyError
from dockerguard.policy import parse_policy

# Documentation ranges (and a few edges around them) only.
_V4_BASES = ["198.51.100.0", "203.0.113.0", "192.0.2.0", "0.0.0.0"]
_V6_BASES = ["2001:db8::", "2001:db8:1:2::", "::", "fe80::1%eth0", "::ffff:192.0.2.1"]


@st.composite
def networks(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        base = ipaddress.IPv4Address(draw(st.sampled_from(_V4_BASES))) + draw(st.integers(0, 255))
        prefix = draw(st.integers(0, 33))
        return f"{base}/{prefix}" if draw(st.booleans()) else str(base)
    base = draw(st.sampled_from(_V6_BASES))
    if "%" in base or "ffff" in base:
        return base
    address = ipaddress.IPv6Address(base) + draw(st.integers(0, 2**32))
    prefix = draw(st.integers(0, 129))
    return f"{address}/{prefix}" if draw(st.booleans()) else str(address)


@st.composite
def valid_networks(draw: st.DrawFn) -> str:
    """Networks without host bits (the grammar's own edge cases are the stray generator's)."""
    if draw(st.booleans()):
        base = ipaddress.IPv4Address(draw(st.sampled_from(_V4_BASES[:3]))) + draw(st.integers(0, 255))
        return str(ipaddress.IPv4Network(f"{base}/{draw(st.integers(0, 32))}", strict=False))
    base = ipaddress.IPv6Address("2001:db8::") + draw(st.integers(0, 2**80))
    return str(ipaddress.IPv6Network(f"{base}/{draw(st.integers(0, 128))}", strict=False))


def strategies(stray: bool) -> dict[str, st.SearchStrategy[Any]]:
    """The schema's values; `stray`: with every kind of wrong value mixed in."""
    network = networks() if stray else valid_networks()
    port_item: st.SearchStrategy[Any] = st.one_of(
        st.integers(1, 65535), st.sampled_from([1, 65535]), st.integers(1, 65535).map(str),
        st.tuples(st.integers(1, 65535), st.integers(1, 65535)).map(
            lambda pair: f"{min(pair)}-{max(pair)}"),
    )
    comment: st.SearchStrategy[str] = st.one_of(
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E).filter(lambda c: c not in '"\\'),
                max_size=100),
        st.text(st.characters(whitelist_categories=("L", "N", "P", "S", "Zs")).filter(lambda c: c not in '"\\'),
                max_size=100),
        st.sampled_from(["COMMIT", "-A INPUT -j ACCEPT", "} accept {", "caf\u00e9" * 25, "\U0001f525" * 25]),
    )
    name: st.SearchStrategy[str] = st.one_of(
        st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,14}", fullmatch=True), st.just("eth0"))
    if stray:
        port_item = st.one_of(
            port_item, st.sampled_from([0, -1, 65536, 80.0, True, "90-80", "0-10", "65535-65536", "80x"]))
        comment = st.one_of(comment, st.text(st.characters(blacklist_categories=("Cs",)), max_size=110),
                            st.sampled_from(["a\nb", "x\u2028y", "\x00", "\u202e", "q\"", "x" * 101]))
        name = st.one_of(name, st.text(max_size=17), st.sampled_from(["eth0+", "eth*", "@s", "-A", "a" * 16]))
    return {
        "sources": st.lists(st.one_of(network, st.just("any"), st.just("@office")), min_size=1, max_size=4),
        "networks": st.lists(network, min_size=1, max_size=3),
        "ports": st.lists(port_item, min_size=1, max_size=4),
        "comment": comment,
        "interface": name,
        "proto": st.sampled_from(["tcp", "udp", "icmp"] if stray else ["tcp", "udp"]),
        "limit": st.sampled_from(["1/second", "20/minute", "5/hour"] + (["0/second", "3/day"] if stray else [])),
        "max_connections": st.integers(0, 1_000_001) if stray else st.integers(1, 1_000_000),
        "default": st.sampled_from(["drop", "reject"] + (["accept"] if stray else [])),
    }


def maybe(entry: dict[str, Any], key: str, strategy: st.SearchStrategy[Any], draw: st.DrawFn) -> None:
    if draw(st.booleans()):
        entry[key] = draw(strategy)


def allow_entry(draw: st.DrawFn, s: dict[str, st.SearchStrategy[Any]], host: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {"ports": draw(s["ports"])}
    for key in ("proto", "sources", "comment") if host else ("proto", "sources", "comment", "limit",
                                                             "max_connections"):
        maybe(entry, key, s[key], draw)
    return entry


def deny_entry(draw: st.DrawFn, s: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    entry: dict[str, Any] = {"sources": draw(s["sources"])}
    if draw(st.booleans()):
        entry["ports"] = draw(s["ports"])
        maybe(entry, "proto", st.sampled_from(["tcp", "udp"]), draw)
    maybe(entry, "action", st.sampled_from(["drop", "reject"]), draw)
    maybe(entry, "comment", s["comment"], draw)
    return entry


def egress_entry(draw: st.DrawFn, s: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    maybe(entry, "destinations", s["sources"], draw)
    maybe(entry, "sources", s["sources"], draw)
    if draw(st.booleans()):
        entry["ports"] = draw(s["ports"])
        maybe(entry, "proto", st.sampled_from(["tcp", "udp"]), draw)
    maybe(entry, "action", st.sampled_from(["allow", "drop", "reject"]), draw)
    maybe(entry, "comment", s["comment"], draw)
    return entry


@st.composite
def policies(draw: st.DrawFn, may_stray: bool = True) -> str:
    """A policy file; one in four strays from the schema somewhere (then it is likely refused), unless not
    `may_stray`."""
    s = strategies(stray=may_stray and draw(st.integers(0, 3)) == 0)
    names = draw(st.lists(s["interface"], min_size=1, max_size=3, unique=True))
    lines = [f"external_interfaces = {toml(names)}"]
    for key, strategy in (("default", s["default"]), ("log_dropped", st.booleans()), ("bans", st.booleans()),
                          ("egress_default", st.sampled_from(["allow", "drop", "reject"]))):
        if draw(st.booleans()):
            lines.append(f"{key} = {toml(draw(strategy))}")
    lines += ["[sets]", f"office = {toml(draw(s['networks']))}"]
    for table, make, most in (("allow", allow_entry, 4), ("deny", deny_entry, 3), ("egress", egress_entry, 2)):
        for _ in range(draw(st.integers(0, most))):
            lines.append(f"[[{table}]]")
            lines += [f"{key} = {toml(value)}" for key, value in make(draw, s).items()]
    if draw(st.booleans()):
        lines += ["[host]", f"default = {toml(draw(s['default']))}", f"icmp_echo = {toml(draw(st.booleans()))}"]
        for _ in range(draw(st.integers(0, 2))):
            lines.append("[[host.allow]]")
            lines += [f"{key} = {toml(value)}" for key, value in allow_entry(draw, s, host=True).items()]
    return "\n".join(lines) + "\n"


def toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    return "[" + ", ".join(toml(item) for item in value) + "]"


def test_policy_is_refused_or_the_kernel_accepts_it(module_netns: Netns) -> None:
    outcomes: Counter[str] = Counter()

    @settings(max_examples=120, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(text=policies())
    def refused_or_accepted(text: str) -> None:
        try:
            policy = parse_policy(text, filename="generated.toml")
        except PolicyError as exc:
            assert exc.file == "generated.toml" and exc.message
            outcomes["refused"] += 1
            return
        rendered = render_all(compile_policy(policy))
        assert kernel_refusals(module_netns, rendered) == [], text
        outcomes["accepted"] += 1

    refused_or_accepted()
    # The generator must mostly write policies that reach the kernel, or the property says little.
    assert outcomes["accepted"] >= outcomes["refused"], outcomes
