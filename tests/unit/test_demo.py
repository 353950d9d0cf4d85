"""`dockerguard demo`: the pure parts (expectations, argument checks, verdict) and the CLI's output for
a given result; the real run in network namespaces is in tests/integration/test_demo_run.py."""

from __future__ import annotations

import sys

import pytest

from dockerguard import cli, demo, sandbox
from dockerguard.demo import Check, DemoResult, Row, demo_checks, lets_through, sandbox_flavour
from dockerguard.errors import DemoError, UsageError
from dockerguard.policy import parse_policy


def expectations() -> dict[tuple[str, str, int], bool]:
    return {(c.source, c.proto, c.port): c.expected for c in demo_checks()}


def test_demo_policy_is_the_classic_example_for_the_sandbox_ports() -> None:
    policy = parse_policy(demo.DEMO_POLICY)
    assert policy.external_interfaces == (sandbox.HOST_EXT_IF,)
    assert policy.default == "drop"
    assert [sorted(p.first for p in entry.ports) for entry in policy.allow] == [[443, 8080], [8443]]


def test_checks_follow_the_policy_for_both_families() -> None:
    got = expectations()
    assert len(got) == 20
    for admin, other in zip(demo.ADMIN, demo.OTHER):
        for source in (admin, other):
            assert got[(source, "tcp", 8080)] and got[(source, "tcp", 443)]
            assert not got[(source, "tcp", 9000)]  # published by Docker, not allowed
            assert not got[(source, "udp", 5353)]
        assert got[(admin, "tcp", 8443)] and not got[(other, "tcp", 8443)]


def test_checks_target_the_host_and_only_published_ports() -> None:
    published = {(m.proto, m.host_port) for m in sandbox.PUBLISHED}
    for check in demo_checks():
        assert (check.proto, check.port) in published
        assert check.target == (sandbox.HOST_EXT_V6 if ":" in check.source else sandbox.HOST_EXT_V4)
        probe = check.probe(0.3)
        assert (probe.src_ns, probe.src, probe.timeout) == ("ext", check.source, 0.3)


def test_lets_through_matches_family_proto_source_and_port_range() -> None:
    from dockerguard.compiler import compile_policy

    ruleset = compile_policy(parse_policy(
        '[[allow]]\nports = ["8000-8100"]\nsources = ["203.0.113.0/24"]\n'
        '[[allow]]\nports = [53]\nproto = "udp"\nsources = ["2001:db8::/32"]\n'))
    assert lets_through(ruleset, "203.0.113.9", "tcp", 8050)
    assert not lets_through(ruleset, "203.0.113.9", "tcp", 8101)
    assert not lets_through(ruleset, "203.0.113.9", "udp", 8050)
    assert not lets_through(ruleset, "198.51.100.9", "tcp", 8050)
    assert lets_through(ruleset, "2001:db8:1::1", "udp", 53)
    assert not lets_through(ruleset, "2001:db8:1::1", "tcp", 53)


@pytest.mark.parametrize(("backend", "firewall", "flavour"), [
    ("nft", None, "iptables-nft"),
    ("auto", None, "iptables-nft"),
    ("iptables-legacy", None, "iptables-legacy"),
    ("iptables-nft", None, "iptables-nft"),
    ("nft", "nftables", sandbox.DOCKER_NFTABLES),
    ("nft", "iptables-legacy", "iptables-legacy"),
    ("auto", "nftables", sandbox.DOCKER_NFTABLES),
    ("iptables-legacy", "iptables-legacy", "iptables-legacy"),
])
def test_sandbox_flavour(backend: str, firewall: str | None, flavour: str) -> None:
    assert sandbox_flavour(backend, firewall, which=lambda tool: f"/usr/sbin/{tool}") == flavour
    assert flavour in sandbox.ALL_FLAVOURS


def test_nft_without_iptables_tools_simulates_dockers_nftables_mode() -> None:
    def no_iptables(tool: str) -> str | None:
        return None if "iptables" in tool else f"/usr/sbin/{tool}"

    assert sandbox_flavour("nft", None, which=no_iptables) == sandbox.DOCKER_NFTABLES
    assert sandbox_flavour("auto", None, which=no_iptables) == sandbox.DOCKER_NFTABLES
    assert sandbox_flavour("nft", "iptables-nft", which=no_iptables) == "iptables-nft"  # asked for: reported
    assert sandbox_flavour("nft", None, which=lambda tool: None) == "iptables-nft"  # then the tool is reported


@pytest.mark.parametrize(("backend", "firewall", "message"), [
    ("pf", None, "unknown backend 'pf'"),
    ("nft", "ufw", "unknown Docker firewall 'ufw'"),
    ("iptables-legacy", "iptables-nft", "use --docker-firewall iptables-legacy"),
    ("iptables-nft", "nftables", "use --docker-firewall iptables-nft"),
])
def test_sandbox_flavour_refuses_pairs_that_cannot_work(backend: str, firewall: str | None, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        sandbox_flavour(backend, firewall)


def test_environment_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = demo.environment_problems("iptables-nft", euid=1000)
    assert len(problems) == 1 and "needs root" in problems[0]  # tools are not even looked at
    monkeypatch.setattr(demo.shutil, "which", lambda tool: None if tool != "ip" else "/sbin/ip")
    assert demo.environment_problems(sandbox.DOCKER_NFTABLES, euid=0) == [
        "dockerguard demo needs the tool 'nft' (not found in PATH)"]
    assert [p.split("'")[1] for p in demo.environment_problems("iptables-legacy", euid=0)] == [
        "iptables-legacy-restore", "ip6tables-legacy-restore"]


def result(outcomes: dict[tuple[str, int], str] | None = None, before: str = "open", after: str = "open",
           ) -> DemoResult:
    """A result whose probes all behaved as the policy says, except `outcomes[(source, port)]`."""
    checks = demo_checks()
    rows = tuple(Row(c, (outcomes or {}).get((c.source, c.port), "open" if c.expected else "timeout"))
                 for c in checks)
    return DemoResult("nft", "nft", "iptables-nft", None, demo.DEMO_POLICY,
                      tuple(Row(c, before) for c in checks), rows, tuple(Row(c, after) for c in checks), 1.5)


def test_result_verdict() -> None:
    assert result().ok and not result().mismatches
    leaked = result({("198.51.100.12", 8443): "open"})
    assert not leaked.ok
    assert [(r.check.source, r.check.port, r.check.expected, r.through) for r in leaked.mismatches] == [
        ("198.51.100.12", 8443, False, True)]
    assert not result({("198.51.100.11", 443): "refused"}).ok  # an allowed port must get through
    assert not result(before="timeout").ok  # the sandbox did not publish: nothing was proven
    assert not result(after="timeout").ok  # remove did not restore reachability
    assert result().docker_firewall == "iptables-nft"
    assert DemoResult("nft", "nft", sandbox.DOCKER_NFTABLES, None, "", (), (), (), 0).docker_firewall == "nftables"


def test_row_ok() -> None:
    check = Check("198.51.100.12", "other", sandbox.HOST_EXT_V4, "tcp", 9000, expected=False)
    assert Row(check, "timeout").ok and Row(check, "refused").ok and not Row(check, "open").ok


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["dockerguard", "demo", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    code = exit_info.value.code
    return 0 if code is None else int(code)


def test_cli_prints_the_table_and_exits_0_when_everything_matched(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[str, str | None]] = []

    def fake_run_demo(backend: str, docker_firewall: str | None, **kwargs: object) -> DemoResult:
        calls.append((backend, docker_firewall))
        return result()

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert run_cli(monkeypatch) == 0
    assert calls == [("nft", None)]
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if "source" in line and "expected" in line)
    assert [cell.strip() for cell in header.strip("┃").split("┃")] == ["source", "port", "expected", "got", "ok"]
    rows = [[cell.strip() for cell in line.strip("│").split("│")] for line in lines if line.startswith("│")]
    assert len(rows) == 20
    assert ["198.51.100.12 (other)", "8443/tcp", "blocked", "blocked (no answer)", "yes"] in rows
    assert ["2001:db8:100::11 (admin)", "8443/tcp", "through", "through", "yes"] in rows
    assert any(line.startswith("demo passed") for line in lines)


def test_cli_exits_1_when_an_outcome_differs(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: result({("2001:db8:100::12", 9000): "open"}))
    assert run_cli(monkeypatch, "--backend", "auto") == 1
    out = capsys.readouterr().out
    assert ["2001:db8:100::12 (other)", "9000/tcp", "blocked", "through", "NO"] in [
        [cell.strip() for cell in line.strip("│").split("│")] for line in out.splitlines() if line.startswith("│")]
    assert "demo FAILED: 1 outcome differs from the policy" in out


def test_cli_without_root_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(demo, "Topology", None)  # must not get that far
    assert run_cli(monkeypatch) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        "error: dockerguard demo needs root: it builds network namespaces (try: sudo dockerguard demo)"]


def test_cli_bad_arguments_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(monkeypatch, "--backend", "iptables-nft", "--docker-firewall", "nftables") == 2
    assert "cannot protect a Docker host" in capsys.readouterr().err


def test_demo_error_is_a_runtime_error() -> None:
    assert DemoError("x").exit_code == 1
