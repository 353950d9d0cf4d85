"""The grammar fixes behind tests/reliability, in-process and without root: interface names, comments,
hostile TOML, Docker's names and bridges, nft's comment length."""

from __future__ import annotations

import json
import time

import pytest

from dockerguard import PolicyError, parse_policy
from dockerguard.backends.nft.render import _fit_comment
from dockerguard.docker import _container, _network


def interfaces(*names: str) -> str:
    listed = ", ".join(json.dumps(name) for name in names)  # JSON's escapes are TOML's
    return f"external_interfaces = [{listed}]\n"


@pytest.mark.parametrize("name", ["eth0", "ens3", "br-1a2b3c4d5e6f", "eth0.100", "veth1@if5", "wg_0", "COMMIT",
                                  "abcdefghijklmno", "_x", "0"])
def test_interface_names_taken(name: str) -> None:
    assert parse_policy(interfaces(name)).external_interfaces == (name,)


@pytest.mark.parametrize("name", ["eth0+", "eth*", 'e"0', "e'0", "!eth0", "eth\u00e9", "abcdefghijklmnop", "e;",
                                  "e{0}", "-A", "@set", ".", "..", ".x", "eth0:1", "eth 0", "e/0", "", "e\n0",
                                  "e\u2028", "e\x00"])
def test_interface_names_refused(name: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(interfaces(name), filename="p.toml")
    assert caught.value.key == "external_interfaces" and caught.value.line == 1


@pytest.mark.parametrize("comment", ["a\\nb", "a\\rb", "a\\tb", "a\\u0000b", "a\\u2028b", "a\\u2029b", "a\\u0085b",
                                     "\\u202eevil", "\\u200b", "\\u001b[31m", "q\\\"", "back\\\\slash", "x" * 101])
def test_comments_refused(comment: str) -> None:
    text = f'[[allow]]\nports = [80]\ncomment = "{comment}"\n'
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, filename="p.toml")
    assert caught.value.key == "allow[1].comment" and caught.value.line == 3


@pytest.mark.parametrize("comment", ["COMMIT", "-A INPUT -j ACCEPT", "caf\u00e9 \u2713", "} accept {", "'", "x" * 100])
def test_printable_comments_taken(comment: str) -> None:
    assert parse_policy(f'[[deny]]\nsources = ["192.0.2.1"]\ncomment = "{comment}"\n').deny[0].comment == comment


@pytest.mark.parametrize(("text", "line"), [
    ("x = " + "[" * 100_000 + "]" * 100_000, None),
    ("x = " + "{a=" * 3000 + "1" + "}" * 3000, None),
    ("a" + ".a" * 100_000 + " = 1", 1),
    ("x = 1\n[" + "a." * 40 + "a]", 2),
    ("[[allow]]\nports = [" + "9" * 5000 + "]", None),
])
def test_hostile_toml_is_a_policy_error_quickly(text: str, line: int | None) -> None:
    started = time.monotonic()
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, filename="p.toml")
    if line is not None:  # None: any line (Python 3.9 has no digit limit: there a 5,000-digit port is "out of range")
        assert caught.value.line == line
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("port", ['"\u0668\u0660"', '"80\\u2028"', '"' + "9" * 5000 + '"', '"000000080"'])
def test_port_strings_are_ascii_and_short(port: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(f"[[allow]]\nports = [{port}]\n")
    assert caught.value.key == "allow[1].ports"


def test_a_dotted_key_of_the_schema_is_fine() -> None:
    assert parse_policy('host.allow = [{ ports = [22] }]\n').host is not None


@pytest.mark.parametrize("bridge", ["-A", "-j", "..", "eth0+", "br0\n-A INPUT", "b\"r", "abcdefghijklmnop", "@s"])
def test_docker_bridge_names_outside_the_grammar_are_not_used(bridge: str) -> None:
    raw = {"Name": "n", "Id": "d" * 64, "Driver": "bridge", "Options": {"com.docker.network.bridge.name": bridge}}
    network = _network(raw)
    assert network is not None and network.bridge == ""


@pytest.mark.parametrize("name", ["web\n-A INPUT -j ACCEPT", "we b", 'w"', "w\u2028", "-web", ""])
def test_docker_container_names_outside_dockers_grammar_become_the_id(name: str) -> None:
    problems: list[str] = []
    container = _container({"Id": "0123456789abcdef", "Names": [f"/{name}"]}, problems)
    assert container.name == "0123456789ab"
    assert problems and "\n" not in problems[0]


def test_nft_comments_fit_128_bytes_at_a_character_boundary() -> None:
    assert _fit_comment("x" * 128) == "x" * 128
    fitted = _fit_comment("deny ipv4 deny_v4_0: " + "\u00e9" * 100)
    assert len(fitted.encode()) <= 128 and fitted.startswith("deny ipv4")
    assert len(_fit_comment("\U0001f525" * 40).encode()) == 128
