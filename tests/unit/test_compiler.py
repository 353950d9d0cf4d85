"""Compiler and the disjoint set elements it feeds to set-based backends (pure, no root)."""

from __future__ import annotations

import ipaddress
import random

from dockerguard import compile_policy, parse_policy
from dockerguard.model import Family, Ruleset, Verdict
from dockerguard.net import parse_network
from dockerguard.policy import PortRange

net = parse_network


def test_entries_split_by_family_with_sets_resolved_and_ports_merged() -> None:
    ruleset = compile_policy(parse_policy("""
default = "reject"
[sets]
office = ["203.0.113.0/25", "203.0.113.128/25", "2001:db8:1::/48"]
[[allow]]
ports = [81, 80, "79-80", 443]
sources = ["@office", "198.51.100.7"]
comment = "office"
"""))
    assert ruleset.default is Verdict.REJECT
    v4, v6 = ruleset.allows
    assert v4.family is Family.IPV4
    # the two /25 halves collapse into one /24
    assert v4.sources == (net("198.51.100.7/32"), net("203.0.113.0/24"))
    assert v4.ports == (PortRange(79, 81), PortRange(443, 443))
    assert v6.family is Family.IPV6 and v6.sources == (net("2001:db8:1::/48"),)
    assert v4.comment == v6.comment == "office"


def test_ipv4_only_entry_makes_no_ipv6_rule() -> None:
    ruleset = compile_policy(parse_policy('[[allow]]\nports = [1]\nsources = ["192.0.2.0/24"]\n'))
    assert [rule.family for rule in ruleset.allows] == [Family.IPV4]


def test_digest_is_stable_and_changes_with_the_policy() -> None:
    text = '[[allow]]\nports = [1]\n'
    assert compile_policy(parse_policy(text)).digest == compile_policy(parse_policy(text)).digest
    assert compile_policy(parse_policy(text)).digest != compile_policy(parse_policy(text + 'proto = "udp"\n')).digest


def _covered(ruleset: Ruleset, family: Family, proto: str, address: str, port: int) -> bool:
    """Reference semantics straight from the rules: is (address, port) allowed?"""
    ip = ipaddress.ip_address(address)  # ipaddress: an oracle independent of dockerguard.net
    return any(ip in ipaddress.ip_network(str(source)) and span.first <= port <= span.last
               for rule in ruleset.rules_for(family, proto) for source in rule.sources for span in rule.ports)


def test_elements_are_disjoint_and_cover_exactly_the_rules() -> None:
    ruleset = compile_policy(parse_policy("""
[[allow]]
ports = ["8000-8100", 443]
sources = ["203.0.113.0/24"]
[[allow]]
ports = ["8050-8200"]
sources = ["203.0.113.7", "198.51.100.0/24"]
[[allow]]
ports = [443]
sources = ["any"]
"""))
    elements = ruleset.elements(Family.IPV4, "tcp")
    for i, first in enumerate(elements):
        for second in elements[i + 1:]:
            ports_overlap = first.ports.first <= second.ports.last and second.ports.first <= first.ports.last
            overlap = ipaddress.ip_network(str(first.source)).overlaps(ipaddress.ip_network(str(second.source)))
            assert not (ports_overlap and overlap), (first, second)
    rng = random.Random(7)
    addresses = ["203.0.113.7", "203.0.113.8", "198.51.100.1", "192.0.2.1"]
    ports = [442, 443, 444, 7999, 8000, 8049, 8050, 8100, 8101, 8200, 8201, *rng.sample(range(1, 65536), 30)]
    for address in addresses:
        for port in ports:
            in_elements = any(ipaddress.ip_address(address) in ipaddress.ip_network(str(e.source))
                              and e.ports.first <= port <= e.ports.last
                              for e in elements)
            assert in_elements == _covered(ruleset, Family.IPV4, "tcp", address, port), (address, port)


def test_elements_join_neighbouring_pieces() -> None:
    ruleset = compile_policy(parse_policy('[[allow]]\nports = ["1-10", "11-20"]\nsources = ["192.0.2.0/24"]\n'))
    (element,) = ruleset.elements(Family.IPV4, "tcp")
    assert element.ports == PortRange(1, 20)
    assert ruleset.elements(Family.IPV6, "tcp") == ()
