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


# -- --live (nft): parsing nft monitor trace, the temporary rule --------------------------------------
MONITOR = """\
trace id d51df3f2 inet dockerguard forward packet: iif "eth0" oif "br0" ip saddr 198.51.100.10 tcp dport 80
trace id d51df3f2 inet dockerguard forward unknown rule handle 32 (verdict continue)
trace id d51df3f2 inet dockerguard forward rule iifname "eth0" counter packets 18 bytes 1064 jump external \
comment "judge forwarded traffic entering external interfaces" (verdict jump external)
trace id d51df3f2 inet dockerguard external rule meta l4proto tcp ip saddr . ct original proto-dst @allow_v4_tcp \
counter packets 3 bytes 180 accept comment "allow tcp ipv4" (verdict accept)
trace id d51df3f2 ip filter DOCKER rule iifname != "br0" oifname "br0" ip daddr 192.0.2.2 tcp dport 80 counter \
packets 2 bytes 120 accept (verdict accept)
trace id d51df3f2 ip nat POSTROUTING policy accept
trace id 0badcafe inet dockerguard_bans bans_forward rule iifname "eth0" ip saddr @bans_v4 counter packets 1 \
bytes 60 drop comment "banned ipv4" (verdict drop)
"""


def test_monitor_output_is_read_rule_by_rule() -> None:
    from dockerguard.backends.nft.live import TraceEvent, parse_monitor

    assert parse_monitor(MONITOR) == (
        TraceEvent("d51df3f2", "inet dockerguard", "forward", "judge forwarded traffic entering external interfaces",
                   "jump external", True),
        TraceEvent("d51df3f2", "inet dockerguard", "external", "allow tcp ipv4", "accept", True),
        TraceEvent("d51df3f2", "ip filter", "DOCKER", 'iifname != "br0" oifname "br0" ip daddr 192.0.2.2 tcp dport 80 '
                   "accept", "accept", False),
        TraceEvent("d51df3f2", "ip nat", "POSTROUTING", "(chain policy)", "accept", False),
        TraceEvent("0badcafe", "inet dockerguard_bans", "bans_forward", "banned ipv4", "drop", True),
    )


def test_the_temporary_rule_marks_only_the_connection_asked_about() -> None:
    from dockerguard.backends.nft.live import TRACE_COMMENT, trace_rule

    rule = trace_rule(parse_network("2001:db8:100::10"), "udp", 5353, "forward")
    assert (rule["table"], rule["chain"], rule["comment"]) == ("dockerguard", "forward", TRACE_COMMENT)
    assert rule["expr"][0]["match"]["right"] == "2001:db8:100::10"
    assert rule["expr"][0]["match"]["left"] == {"payload": {"protocol": "ip6", "field": "saddr"}}
    assert rule["expr"][2]["match"]["left"] == {"ct": {"key": "proto-dst", "dir": "original"}}  # before DNAT
    assert trace_rule(parse_network("198.51.100.10"), "tcp", 22, "input")["expr"][2]["match"]["left"] == {
        "payload": {"protocol": "tcp", "field": "dport"}}
    assert rule["expr"][-1] == {"mangle": {"key": {"meta": {"key": "nftrace"}}, "value": 1}}


def test_the_temporary_rule_is_deleted_and_nothing_else(tmp_path: Path) -> None:
    from dockerguard.backends.nft.driver import NftBackend
    from dockerguard.backends.nft.fake_kernel import FakeNftKernel
    from dockerguard.backends.nft.live import _delete_trace_rules, trace_rule

    kernel = FakeNftKernel()
    backend = NftBackend(client=kernel)
    engine = Engine(backend, state_dir=tmp_path / "state",
                    discover=lambda containers: published.Discovery(frozenset(PUBLISHED)))
    engine.apply(parse_policy(POLICY), guard=False)
    before = backend.installed()
    assert kernel.json_cmd({"nftables": [{"insert": {"rule": trace_rule(parse_network("198.51.100.10"), "tcp", 80,
                                                                     "forward")}}]})[0] == 0
    marked = backend.installed()
    assert marked is not None and before is not None
    assert marked.rules[0].description == "dockerguard trace (temporary) -> mangle"  # first in its chain
    _delete_trace_rules(kernel, "forward")
    assert backend.installed() == before


def test_live_is_bounded_and_only_for_nft(tmp_path: Path) -> None:
    from dockerguard.backends.nft.fake_kernel import FakeNftKernel
    from dockerguard.backends.nft.live import watch
    from dockerguard.errors import UsageError

    with pytest.raises(UsageError, match="seconds"):
        watch(FakeNftKernel(), parse_network("198.51.100.10"), "tcp", 80, "forward", 3600)
    engine = Engine(FakeBackend(), state_dir=tmp_path / "state",
                    discover=lambda containers: published.Discovery(frozenset(PUBLISHED)))
    with pytest.raises(UsageError, match="only nft"):
        engine.live_trace(parse_policy(POLICY), Connection(parse_network("198.51.100.10"), 80), 1)
