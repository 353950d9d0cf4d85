"""Policy validation: every mistake is a PolicyError naming file, line and key; never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockerguard import PolicyError, load_policy, parse_policy
from dockerguard.net import parse_network
from dockerguard.policy import ANY_SOURCE, PortRange, SetRef

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

VALID = """\
backend = "nft"
external_interfaces = ["eth0", "ens3"]
default = "reject"
log_dropped = true

[sets]
office = ["203.0.113.0/24", "2001:db8:1::/48"]

[[allow]]
ports = [80, 443, "8000-8100"]
proto = "tcp"
sources = ["any"]
comment = "public web"

[[allow]]
ports = [5353]
proto = "udp"
sources = ["@office", "198.51.100.7"]
"""


def test_valid_policy_is_parsed_into_frozen_dataclasses() -> None:
    policy = parse_policy(VALID)
    assert policy.backend == "nft"
    assert policy.external_interfaces == ("eth0", "ens3")
    assert policy.default == "reject"
    assert policy.log_dropped is True
    assert policy.sets[0].networks == (parse_network("203.0.113.0/24"),
                                       parse_network("2001:db8:1::/48"))
    web, dns = policy.allow
    assert web.ports == (PortRange(80, 80), PortRange(443, 443), PortRange(8000, 8100))
    assert web.sources == ANY_SOURCE
    assert dns.proto == "udp"
    assert dns.sources == (SetRef("office"), parse_network("198.51.100.7/32"))
    with pytest.raises(AttributeError):
        policy.backend = "auto"  # type: ignore[misc]


def test_defaults() -> None:
    policy = parse_policy("[[allow]]\nports = [443]\n")
    assert (policy.backend, policy.external_interfaces, policy.default, policy.log_dropped) == (
        "auto", ("eth0",), "drop", False)
    assert policy.allow[0].proto == "tcp"
    assert policy.allow[0].sources == ANY_SOURCE


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_is_valid(example: Path) -> None:
    assert load_policy(example).path == str(example)


BAD = [
    # (policy text, expected line, expected key, words in the message)
    ('backend = "nft"\nfoo = 1\n', 2, "foo", "unknown key"),
    ('backend = "pf"\n', 1, "backend", "expected one of auto, nft, iptables-legacy, iptables-nft"),
    ("external_interfaces = []\n", 1, "external_interfaces", "non-empty list"),
    ('external_interfaces = ["eth0/1"]\n', 1, "external_interfaces", "invalid interface name"),
    ('external_interfaces = ["averyveryverylongname"]\n', 1, "external_interfaces", "1-15 characters"),
    ('default = "accept"\n', 1, "default", "'drop' or 'reject'"),
    ("log_dropped = 1\n", 1, "log_dropped", "true or false"),
    ('[[allow]]\nports = [0]\n', 2, "allow[1].ports", "port 0 out of range"),
    ('[[allow]]\nports = [65536]\n', 2, "allow[1].ports", "port 65536 out of range"),
    ('[[allow]]\nports = ["9000-8000"]\n', 2, "allow[1].ports", "reversed range"),
    ('[[allow]]\nports = ["http"]\n', 2, "allow[1].ports", "expected a port number"),
    ('[[allow]]\nports = [true]\n', 2, "allow[1].ports", "expected a port number"),
    ('[[allow]]\nports = []\n', 2, "allow[1].ports", "at least one port"),
    ('[[allow]]\nproto = "tcp"\n', 1, "allow[1]", "missing key 'ports'"),
    ('[[allow]]\nports = [1]\nproto = "icmp"\n', 3, "allow[1].proto", "'tcp' or 'udp'"),
    ('[[allow]]\nports = [1]\n\n[[allow]]\nports = [2]\nsources = ["10.0.0.300"]\n', 6,
     "allow[2].sources", "invalid address or CIDR '10.0.0.300'"),
    ('[[allow]]\nports = [1]\nsources = ["203.0.113.7/24"]\n', 3, "allow[1].sources", "host bits set"),
    ('[[allow]]\nports = [1]\nsources = ["@nope"]\n', 3, "allow[1].sources", "unknown set '@nope'"),
    ('[[allow]]\nports = [1]\nsources = []\n', 3, "allow[1].sources", "at least one source"),
    ('[[allow]]\nports = [1]\nport = 2\n', 3, "allow[1].port", "unknown key"),
    ('[sets]\noffice = ["nonsense"]\n', 2, "sets.office", "invalid address"),
    ('[sets]\noffice = []\n', 2, "sets.office", "non-empty list"),
    ('[sets]\n"1bad" = ["192.0.2.1"]\n', 2, "sets.1bad", "set names start with a letter"),
    ('[host]\nfoo = 1\n', 2, "host.foo", "unknown key"),
    ('[host]\ndefault = "allow"\n', 2, "host.default", "'drop' or 'reject'"),
    ('[host]\nicmp_echo = "yes"\n', 2, "host.icmp_echo", "true or false"),
    ('[[allow]]\nports = [1]\n[host]\n[[host.allow]]\nports = [22]\n[[host.allow]]\nports = [0]\n', 7,
     "host.allow[2].ports", "port 0 out of range"),
    ('backend = "nft"\nports = [\n', 2, None, "invalid TOML"),
    ('backend = "nft"\nports = ]\nx = 1\n', 2, None, "invalid TOML"),
]


@pytest.mark.parametrize(("text", "line", "key", "words"), BAD, ids=[case[3] for case in BAD])
def test_bad_input_names_file_line_and_key(tmp_path: Path, text: str, line: int, key: str | None,
                                           words: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    error = caught.value
    assert (error.file, error.line, error.key) == (str(path), line, key)
    assert words in error.message
    assert str(error).startswith(f"{path}:{line}:")


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="file not found"):
        load_policy(tmp_path / "absent.toml")


def test_host_section() -> None:
    policy = parse_policy('[host]\nicmp_echo = false\n[[host.allow]]\nports = [22]\nsources = ["198.51.100.0/24"]\n')
    assert policy.host is not None
    assert policy.host.icmp_echo is False and policy.host.default == "drop"
    assert policy.host.allow[0].sources == (parse_network("198.51.100.0/24"),)
    assert parse_policy("").host is None
