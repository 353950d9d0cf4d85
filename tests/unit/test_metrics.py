"""`dockerguard metrics` without a kernel: the fake nft kernel (real renderer and read-back) and the fake
driver, counters poked in by hand, the exposition parsed back with prometheus_client's parser."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dockerguard import published
from dockerguard.backends.fake import FakeBackend
from dockerguard.backends.iptables import rules as iptables_rules
from dockerguard.backends.nft.driver import NftBackend
from dockerguard.backends.nft.fake_kernel import FakeNftKernel
from dockerguard.compiler import compile_policy
from dockerguard.engine import Engine
from dockerguard.metrics import exposition, write_textfile
from dockerguard.model import Family, Role
from dockerguard.policy import parse_policy

POLICY = """\
external_interfaces = ["eth0"]
default = "drop"

[sets]
admins = ["198.51.100.11", "2001:db8:100::11"]

[[allow]]
ports = [8080, 443]
comment = "web"

[[allow]]
ports = [8443]
sources = ["@admins"]
comment = "admin only"

[[allow]]
ports = [5353]
proto = "udp"
sources = ["198.51.100.0/24"]
comment = "dns"

[[deny]]
sources = ["203.0.113.0/24"]
comment = "scanners"
"""
PUBLISHED = frozenset({("tcp", 8080), ("tcp", 9000)})


def _engine(backend: Any, tmp_path: Path) -> Engine:
    return Engine(backend, state_dir=tmp_path / "state",
                  discover=lambda containers: published.Discovery(PUBLISHED))


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def _count(kernel: FakeNftKernel, chain: str, comment: str, packets: int, octets: int) -> None:
    """What the kernel's counter statement of one rule would say after some traffic."""
    for table in kernel.tables.values():
        for rule in table.rules.get(chain, []):
            if rule.get("comment") == comment:
                for statement in rule["expr"]:
                    if "counter" in statement:
                        statement["counter"] = {"packets": packets, "bytes": octets}


@pytest.fixture
def nft(tmp_path: Path) -> tuple[Engine, FakeNftKernel]:
    kernel = FakeNftKernel()
    engine = _engine(NftBackend(client=kernel), tmp_path)
    engine.apply(parse_policy(POLICY), guard=False)
    return engine, kernel


def test_nft_entries_defaults_and_rules_are_counted(nft: tuple[Engine, FakeNftKernel]) -> None:
    engine, kernel = nft
    _count(kernel, "external", "allow tcp ipv4", 7, 700)  # the (source . port) set rule: web and admin only
    _count(kernel, "external", "allow udp ipv4", 3, 300)  # dns alone
    _count(kernel, "external", "default drop", 5, 500)
    _count(kernel, "proxy", "default drop", 2, 200)
    _count(kernel, "external", "deny ipv4 deny_v4_1: scanners", 4, 400)
    samples = _samples(exposition(engine.metrics(parse_policy(POLICY))))

    allows = {(labels["comment"], labels["family"], labels["path"]): (labels, value)
              for labels, value in samples["dockerguard_allow_packets_total"]}
    web, value = allows[("web", "ipv4", "forward")]
    assert value == 7 and web["exact"] == "false"  # shared with "admin only": counts for both
    assert web["entry"] == "0" and web["proto"] == "tcp" and web["ports"] == "443,8080"
    assert allows[("admin only", "ipv4", "forward")][0]["exact"] == "false"
    dns, value = allows[("dns", "ipv4", "forward")]
    assert value == 3 and dns["exact"] == "true" and dns["entry"] == "2" and dns["ports"] == "5353"
    assert allows[("web", "ipv4", "proxy")][1] == 0
    assert ("dns", "ipv6", "forward") not in allows  # an IPv4-only entry has no IPv6 rule

    bytes_ = {(labels["comment"], labels["family"], labels["path"]): value
              for labels, value in samples["dockerguard_allow_bytes_total"]}
    assert bytes_[("dns", "ipv4", "forward")] == 300
    drops = {labels["path"]: value for labels, value in samples["dockerguard_default_drop_packets_total"]}
    assert drops == {"forward": 5, "proxy": 2}
    denies = {(labels["comment"], labels["path"]): value for labels, value in samples["dockerguard_deny_packets_total"]}
    assert denies == {("scanners", "forward"): 4, ("scanners", "proxy"): 0}
    rules = {(labels["chain"], labels["rule"]): (labels["kind"], value)
             for labels, value in samples["dockerguard_rule_packets_total"]}
    assert rules[("external", "default drop -> drop")] == ("default", 5)
    assert rules[("forward", "judge forwarded traffic entering external interfaces -> jump external")][0] == "hook"
    assert samples["dockerguard_drift"] == [({}, 0.0)]
    ports = {(labels["proto"], labels["port"]): value
             for labels, value in samples["dockerguard_published_port_allowed"]}
    assert ports == {("tcp", "8080"): 1.0, ("tcp", "9000"): 0.0}
    assert samples["dockerguard_last_apply_timestamp_seconds"][0][1] > 0
    assert samples["dockerguard_rules_installed"] == [({"backend": "nft"}, 1.0)]


def test_without_a_policy_defaults_and_rules_still_count(nft: tuple[Engine, FakeNftKernel]) -> None:
    engine, kernel = nft
    _count(kernel, "external", "default drop", 5, 500)
    samples = _samples(exposition(engine.metrics(None)))
    assert {labels["path"]: value for labels, value in samples["dockerguard_default_drop_packets_total"]}[
        "forward"] == 5
    assert "dockerguard_allow_packets_total" not in samples and "dockerguard_drift" not in samples


def test_drift_is_reported(nft: tuple[Engine, FakeNftKernel]) -> None:
    engine, _ = nft
    changed = POLICY.replace("ports = [8443]", "ports = [8444]")
    samples = _samples(exposition(engine.metrics(parse_policy(changed))))
    assert samples["dockerguard_drift"] == [({}, 1.0)]


def test_nothing_installed(tmp_path: Path) -> None:
    samples = _samples(exposition(_engine(NftBackend(client=FakeNftKernel()), tmp_path).metrics(None)))
    assert samples["dockerguard_rules_installed"] == [({"backend": "nft"}, 0.0)]
    assert "dockerguard_rule_packets_total" not in samples


def test_textfile_is_the_same_exposition_and_replaced_whole(nft: tuple[Engine, FakeNftKernel],
                                                            tmp_path: Path) -> None:
    engine, _ = nft
    report = engine.metrics(parse_policy(POLICY))
    target = tmp_path / "textfile" / "dockerguard.prom"
    target.parent.mkdir()
    target.write_text("old\n")
    write_textfile(report, str(target))
    assert target.read_text() == exposition(report)
    assert [path.name for path in target.parent.iterdir()] == ["dockerguard.prom"]


def test_fake_driver_attributes_by_position(tmp_path: Path) -> None:
    backend = FakeBackend()
    engine = _engine(backend, tmp_path)
    engine.apply(parse_policy(POLICY), guard=False)
    backend.count("external", "allow udp ipv4", 9, 900)
    samples = _samples(exposition(engine.metrics(parse_policy(POLICY))))
    dns = [(labels, value) for labels, value in samples["dockerguard_allow_packets_total"]
           if labels["comment"] == "dns" and labels["path"] == "forward"]
    assert dns == [({"section": "allow", "entry": "2", "comment": "dns", "proto": "udp", "ports": "5353",
                     "family": "ipv4", "path": "forward", "exact": "true"}, 9.0)]


def test_iptables_rules_belong_to_their_entries_and_ipset_groups_to_all_of_theirs() -> None:
    # 15 scattered sources sharing three ports: worth an ipset (SourceGroup.factored)
    many = "\n".join(f'[[allow]]\nports = [80, 90, 100]\nsources = ["198.51.100.{n}"]\ncomment = "client {n}"\n'
                     for n in range(101, 131, 2))
    ruleset = compile_policy(parse_policy(POLICY + many), [("tcp", 8080)])
    origins = iptables_rules.origins(ruleset, use_ipsets=True)
    state = iptables_rules.expected_state("iptables-nft", ruleset, use_ipsets=True)
    forward = [(rule.description, origins[(rule.chain, rule.description)]) for rule in state.rules
               if rule.chain == "ipv4 DOCKERGUARD"]
    web = [origin for spec, origin in forward if "--comment web" in spec]
    assert web and all(origin.allows == (0,) and origin.kind == "allow" for origin in web)
    group = [origin for spec, origin in forward if "sources" in spec and "--match-set" in spec]
    assert len(group) == 3 and all(len(origin.allows) == 15 for origin in group)  # one rule per port, all clients
    assert {ruleset.allows[index].comment for index in group[0].allows} == {f"client {n}" for n in range(101, 131, 2)}
    default = [origin for spec, origin in forward if "default drop" in spec]
    assert default[0].kind == "default" and default[0].role is Role.FORWARD and default[0].family is Family.IPV4
    assert all((rule.chain, rule.description) in origins for rule in state.rules)


def test_help_does_not_import_prometheus_client() -> None:
    code = ("import sys\nfrom dockerguard import cli\ntry:\n    cli.app(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('prometheus_client' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip().endswith("False")
