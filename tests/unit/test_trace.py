"""`dockerguard trace`: the model walk on compiled policies, the engine's notes, and the command's output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dockerguard import cli, published
from dockerguard.backends.fake import FakeBackend
from dockerguard.compiler import compile_policy
from dockerguard.engine import Engine
from dockerguard.net import parse_network
from dockerguard.policy import parse_policy
from dockerguard.trace import Connection, trace

POLICY = """\
external_interfaces = ["eth0"]
default = "reject"

[[allow]]
ports = [8080, 443]
comment = "web"

[[allow]]
ports = ["8000-8100"]
sources = ["198.51.100.0/24"]
comment = "office range"

[[allow]]
ports = [5353]
proto = "udp"
sources = ["2001:db8:100::/48"]
comment = "dns v6"

[[deny]]
sources = ["198.51.100.66"]
comment = "abuser"

[[deny]]
sources = ["192.0.2.0/24"]
ports = [443]
comment = "no tls from there"

[host]
default = "drop"

[[host.allow]]
ports = [22]
sources = ["203.0.113.0/24"]
comment = "ssh"
"""
PUBLISHED = [("tcp", 8080), ("tcp", 443), ("tcp", 9000)]


def _trace(source: str, port: int, proto: str = "tcp", path: str = "forward", interface: str | None = None,
           banned: tuple[str, ...] = ()):
    ruleset = compile_policy(parse_policy(POLICY), PUBLISHED)
    return trace(ruleset, Connection(parse_network(source), port, proto, path, interface),
                 tuple(parse_network(net) for net in banned))


def test_first_matching_allow_decides_and_later_matches_are_listed() -> None:
    decision = _trace("198.51.100.7", 8080)
    assert (decision.verdict, decision.role, decision.section, decision.entry, decision.comment) == (
        "accept", "forward", "allow", 0, "web")
    assert decision.also == ("allow[1] (office range)",)
    assert [step.kind for step in decision.steps] == ["ban", "deny", "deny", "established", "allow"]


def test_deny_comes_before_allows() -> None:
    decision = _trace("198.51.100.66", 8080)
    assert (decision.verdict, decision.kind, decision.entry, decision.comment) == ("reject", "deny", 0, "abuser")


def test_deny_with_ports_only_refuses_those_ports() -> None:
    assert _trace("192.0.2.5", 443).comment == "no tls from there"
    decision = _trace("192.0.2.5", 8080)
    assert (decision.verdict, decision.comment) == ("accept", "web")


def test_nothing_matches_so_the_default_decides() -> None:
    decision = _trace("203.0.113.9", 9000)
    assert (decision.verdict, decision.kind, decision.entry) == ("reject", "default", None)
    assert decision.steps[-1].matched and decision.steps[-1].kind == "default"


def test_family_and_protocol_must_match() -> None:
    assert _trace("2001:db8:100::5", 5353, "udp").comment == "dns v6"
    assert _trace("198.51.100.5", 5353, "udp").kind == "default"  # the entry has IPv6 sources only
    assert _trace("2001:db8:100::5", 5353, "tcp").kind == "default"


def test_input_path_dispatches_published_ports_to_proxy_and_the_rest_to_host() -> None:
    proxy = _trace("198.51.100.7", 443, path="input")
    assert (proxy.verdict, proxy.role, proxy.comment) == ("accept", "proxy", "web")
    assert proxy.steps[0].kind == "dispatch"
    ssh = _trace("203.0.113.4", 22, path="input")
    assert (ssh.verdict, ssh.role, ssh.section, ssh.entry) == ("accept", "host", "host.allow", 0)
    other = _trace("198.51.100.7", 22, path="input")
    assert (other.verdict, other.role, other.kind) == ("drop", "host", "default")


def test_banned_sources_are_dropped_first() -> None:
    decision = _trace("198.51.100.7", 8080, banned=("198.51.100.0/28",))
    assert (decision.verdict, decision.kind) == ("drop", "ban")


def test_other_interfaces_are_not_judged() -> None:
    decision = _trace("198.51.100.7", 9000, interface="docker0")
    assert decision.verdict == "not judged" and decision.steps == ()


def test_input_without_proxy_or_host_rules_is_not_judged() -> None:
    ruleset = compile_policy(parse_policy('external_interfaces = ["eth0"]\nfilter_proxy_path = false\n'
                                          '[[allow]]\nports = [80]\n'))
    decision = trace(ruleset, Connection(parse_network("198.51.100.7"), 80, path="input"))
    assert decision.verdict == "not judged"


def _engine(tmp_path: Path, backend: FakeBackend) -> Engine:
    return Engine(backend, state_dir=tmp_path / "state",
                  discover=lambda containers: published.Discovery(frozenset(PUBLISHED)))


def test_engine_notes_whether_the_installed_rules_are_the_policys(tmp_path: Path) -> None:
    backend = FakeBackend()
    policy = parse_policy(POLICY)
    connection = Connection(parse_network("198.51.100.7"), 8080)
    assert "nothing of dockerguard is installed" in _engine(tmp_path, backend).trace(policy, connection).notes[0]
    _engine(tmp_path, backend).apply(policy, guard=False)
    assert _engine(tmp_path, backend).trace(policy, connection).notes == ()
    other = parse_policy(POLICY.replace("8080, 443", "8080"))
    assert "differ from the policy" in _engine(tmp_path, backend).trace(other, connection).notes[0]


@pytest.fixture
def runner_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    monkeypatch.setattr(cli, "_engine", lambda backend, **options: _engine(tmp_path, FakeBackend()))
    return path


def test_command_json(runner_policy: Path) -> None:
    result = CliRunner().invoke(cli.app, ["trace", "198.51.100.66", "443", "-c", str(runner_policy), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["verdict"], data["section"], data["entry"], data["comment"]) == ("reject", "deny", 0, "abuser")
    assert data["steps"][-1] == {"role": "forward", "kind": "deny", "rule": "deny from 198.51.100.66/32",
                                 "matched": True, "verdict": "reject"}


def test_command_text(runner_policy: Path) -> None:
    result = CliRunner().invoke(cli.app, ["trace", "203.0.113.4", "22", "--path", "input", "-c", str(runner_policy)])
    assert result.exit_code == 0, result.output
    assert "203.0.113.4 -> 22/tcp (input): ACCEPT" in result.output
    assert 'decided by host.allow[0] "ssh"' in result.output


@pytest.mark.parametrize("args", [["198.51.100.0/24", "80"], ["nonsense", "80"], ["198.51.100.7", "0"],
                                  ["198.51.100.7", "80", "--proto", "sctp"], ["198.51.100.7", "80", "--path", "out"]])
def test_command_refuses_bad_input(runner_policy: Path, args: list[str]) -> None:
    result = CliRunner().invoke(cli.app, ["trace", *args, "-c", str(runner_policy)])
    assert isinstance(result.exception, cli.UsageError) or result.exit_code == 2
