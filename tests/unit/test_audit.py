"""`dockerguard audit` on the real nft driver over the fake kernel, and on the iptables read-back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dockerguard import Engine, cli, compile_policy, parse_policy
from dockerguard.audit import audit
from dockerguard.backends.iptables.nft import IptablesNftBackend
from dockerguard.backends.nft.driver import NftBackend
from dockerguard.backends.nft.fake_kernel import FakeNftKernel
from dockerguard.model import Family
from dockerguard.published import Discovery

POLICY = parse_policy('[[allow]]\nports = [8080]\nsources = ["198.51.100.9", "2001:db8:5::9"]\n'
                      '[[allow]]\nports = [443]\n')
PUBLISHED = Discovery(frozenset({("tcp", 8080), ("tcp", 443), ("tcp", 9090), ("tcp", 5432)}),
                      (("Docker API", "443/tcp, 5432/tcp, 8080/tcp, 9090/tcp"),),
                      ((("tcp", 5432), ("127.0.0.1",)), (("tcp", 8080), ("0.0.0.0", "::"))))


@pytest.fixture
def kernel() -> FakeNftKernel:
    return FakeNftKernel()


def engine(kernel: FakeNftKernel) -> Engine:
    return Engine(NftBackend(kernel), discover=lambda containers: PUBLISHED)


def rows(report: object) -> dict[tuple[int, int, str], tuple[str, str]]:
    return {(r.port, r.family.value, r.path): (r.verdict, ",".join(r.reachable) if r.reachable is not None else "*")
            for r in report.reaches}  # type: ignore[attr-defined]


def test_before_dockerguard_every_restricted_path_is_open(kernel: FakeNftKernel) -> None:
    report = engine(kernel).audit(POLICY)
    table = rows(report)
    assert table[(8080, 4, "forward")] == ("OPEN", "*") and table[(8080, 6, "docker-proxy")] == ("OPEN", "*")
    assert table[(443, 4, "forward")] == ("ok", "*")  # the policy allows anyone there anyway
    assert table[(5432, 4, "forward")] == ("ok", "")  # bound to 127.0.0.1: nobody from outside
    assert (5432, 6, "forward") not in table  # not published on IPv6
    assert report.unmentioned == (("tcp", 5432), ("tcp", 9090)) and not report.in_sync


def test_after_apply_each_path_lets_through_exactly_the_policy(kernel: FakeNftKernel) -> None:
    engine(kernel).apply(POLICY)
    report = engine(kernel).audit(POLICY)
    assert not report.open and report.in_sync
    table = rows(report)
    assert table[(8080, 4, "forward")] == ("ok", "198.51.100.9/32")
    assert table[(8080, 6, "docker-proxy")] == ("ok", "2001:db8:5::9/128")
    assert table[(9090, 6, "docker-proxy")] == ("ok", "")


def test_a_flushed_proxy_chain_is_reported_open(kernel: FakeNftKernel) -> None:
    engine(kernel).apply(POLICY)
    kernel.json_cmd({"nftables": [{"flush": {"chain": {"family": "inet", "table": "dockerguard", "name": "proxy"}}}]})
    report = engine(kernel).audit(POLICY)
    assert {(r.port, r.family.value) for r in report.open if r.path == "docker-proxy"} == {
        (8080, 4), (8080, 6), (9090, 4), (9090, 6)}
    assert all(r.verdict == "ok" for r in report.reaches if r.path == "forward")


def test_the_proxy_path_left_unfiltered_on_purpose_is_not_a_finding(kernel: FakeNftKernel) -> None:
    policy = parse_policy("filter_proxy_path = false\n[[allow]]\nports = [8080]\nsources = [\"198.51.100.9\"]\n")
    engine(kernel).apply(policy)
    report = engine(kernel).audit(policy)
    proxy = [r for r in report.reaches if r.path == "docker-proxy" and r.port == 8080]
    assert proxy and all(r.verdict == "ok" and r.note == "filter_proxy_path = false" for r in proxy)
    assert not report.open


def test_iptables_read_back_gives_the_same_answers() -> None:
    ruleset = compile_policy(POLICY, PUBLISHED.ports)
    backend = IptablesNftBackend(live=False)
    report = audit("iptables-nft", ruleset, backend.exposure(backend.expected(ruleset)), PUBLISHED, in_sync=True)
    assert not report.open
    by_key = {(r.port, r.family, r.path): r.reachable for r in report.reaches}
    assert by_key[(8080, Family.IPV6, "docker-proxy")] == ("2001:db8:5::9/128",)
    assert by_key[(443, Family.IPV4, "docker-proxy")] == ("0.0.0.0/0",)
    assert by_key[(9090, Family.IPV4, "forward")] == ()


def test_cli_exits_3_when_open_and_prints_json(kernel: FakeNftKernel, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_engine", lambda name, **options: engine(kernel))
    policy = tmp_path / "policy.toml"
    policy.write_text('[[allow]]\nports = [8080]\nsources = ["198.51.100.9", "2001:db8:5::9"]\n'
                      '[[allow]]\nports = [443]\n')
    runner = CliRunner()
    before = runner.invoke(cli.app, ["audit", "-c", str(policy)], catch_exceptions=False)
    assert before.exit_code == 3 and "OPEN" in before.output and "9090/tcp is published but no allow" in before.output
    engine(kernel).apply(POLICY)
    after = runner.invoke(cli.app, ["audit", "-c", str(policy), "--json"], catch_exceptions=False)
    data = json.loads(after.output)
    assert after.exit_code == 0 and data["open"] == 0 and data["in_sync"] is True
    assert {"port": 8080, "family": 6, "path": "docker-proxy", "verdict": "ok"}.items() <= next(
        r for r in data["reaches"] if (r["port"], r["family"], r["path"]) == (8080, 6, "docker-proxy")).items()


def test_a_rule_changed_in_place_makes_its_path_unknown_hence_open(kernel: FakeNftKernel) -> None:
    """`nft replace rule` of the judging rule with another interface, its comment kept: forwarded traffic on
    the real interface is no longer judged. The audit must not read the comment and call the path ok."""
    engine(kernel).apply(POLICY)
    table = kernel.tables[("inet", "dockerguard")]
    judge = next(rule for rule in table.rules["forward"] if rule["comment"].startswith("judge forwarded"))
    changed = json.loads(json.dumps(judge))
    changed["expr"][0]["match"]["right"] = "ens18"
    assert kernel.json_cmd({"nftables": [{"replace": {"rule": changed}}]})[0] == 0
    report = engine(kernel).audit(POLICY)
    table_rows = rows(report)
    assert table_rows[(8080, 4, "forward")] == ("OPEN", "*") and table_rows[(8080, 6, "forward")] == ("OPEN", "*")
    assert table_rows[(8080, 4, "docker-proxy")] == ("ok", "198.51.100.9/32")  # that path is as installed
    assert not report.in_sync
