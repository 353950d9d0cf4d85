"""The DOCKER-USER equivalent, proven with real packets on every backend and both address families.

Each case is (dockerguard backend, flavour of the simulated Docker host's firewall). The native nft
backend must work in front of every flavour, Docker's own nftables mode included; an iptables backend
only in front of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockerguard import Engine, parse_policy
from dockerguard.backends import DRIVERS
from dockerguard.sandbox import (
    CTR_V4,
    CTR_V6,
    EGRESS_PORT,
    EXT_V4,
    EXT_V6,
    HOST_INT_V4,
    HOST_INT_V6,
    Probe,
    Topology,
)

from guarded import POLICY, Host, ext
from harness import probe_outcomes

CASES = [(backend, flavour) for backend, flavour in [
    ("nft", "iptables-nft"),
    ("nft", "iptables-legacy"),
    ("nft", "docker-nftables"),  # Docker 29+ "firewall-backend": "nftables": no DOCKER-USER at all
    ("iptables-nft", "iptables-nft"),
    ("iptables-legacy", "iptables-legacy"),
] if backend in DRIVERS]

@pytest.fixture(scope="module", params=CASES, ids=[f"{b}-on-{f}" for b, f in CASES])
def topology(request: pytest.FixtureRequest) -> Iterator[tuple[Topology, str]]:
    backend, flavour = request.param
    with Topology(flavour=flavour) as topo:
        yield topo, backend


@pytest.fixture
def host(topology: tuple[Topology, str], tmp_path: Path) -> Iterator[Host]:
    topo, backend = topology
    guarded = Host(topo, backend, tmp_path)
    yield guarded
    guarded.cli("remove", "--backend", backend)  # each test starts from an unprotected host



@pytest.mark.distro
@pytest.mark.parametrize("family", [4, 6])
def test_allowed_ports_open_others_closed(host: Host, family: int) -> None:
    host.apply(POLICY.format(default="drop"))
    host.expect({
        **{ext(family, source, port): True for source in (10, 11, 12) for port in (8080, 443)},
        ext(family, 10, 5353, "udp"): True,
        # published by Docker but not allowed by the policy
        ext(family, 10, 9000): False,
        ext(family, 12, 25): False,
    })


@pytest.mark.parametrize("family", [4, 6])
def test_per_source_rule_holds(host: Host, family: int) -> None:
    host.apply(POLICY.format(default="drop"))
    host.expect({ext(family, 11, 8443): True, ext(family, 10, 8443): False, ext(family, 12, 8443): False})


def test_rules_match_the_published_port_not_the_container_port(host: Host) -> None:
    # 8080 is published to container port 80: allowing "80" must not open 8080 (ufw-docker #48).
    host.apply('[[allow]]\nports = [80]\n')
    host.expect({ext(4, 10, 8080): False, ext(6, 10, 8080): False})


def test_udp_is_filtered_too(host: Host) -> None:
    host.apply('[[allow]]\nports = [8080]\n')
    host.expect({ext(4, 10, 5353, "udp"): False, ext(6, 10, 5353, "udp"): False, ext(4, 10, 8080): True})


def test_container_egress_and_replies_still_work(host: Host) -> None:
    host.apply(POLICY.format(default="drop"))
    host.expect({Probe("ctr", EXT_V4, EGRESS_PORT, src=CTR_V4): True,
                 Probe("ctr", EXT_V6, EGRESS_PORT, src=CTR_V6): True})


def test_traffic_not_entering_an_external_interface_is_untouched(host: Host) -> None:
    host.apply(POLICY.format(default="drop"))
    host.expect({Probe("int", HOST_INT_V4, 9000): True, Probe("int", HOST_INT_V6, 9000): True,
                 Probe("int", HOST_INT_V4, 8443): True, ext(4, 10, 9000): False})


def test_reject_default_refuses_quickly(host: Host) -> None:
    host.apply(POLICY.format(default="reject"))
    outcomes = probe_outcomes(host.topo, [ext(4, 10, 9000), ext(6, 10, 9000), ext(4, 10, 8080)])
    assert outcomes == ["refused", "refused", "open"]


def test_remove_restores_reachability(host: Host) -> None:
    host.apply(POLICY.format(default="drop"))
    host.expect({ext(4, 10, 9000): False, ext(6, 10, 9000): False})
    assert "removed" in host.cli("remove", "--backend", host.backend).stdout
    host.expect({ext(4, 10, 9000): True, ext(6, 10, 9000): True, ext(4, 10, 8443): True})
    assert "nothing installed" in host.cli("remove", "--backend", host.backend).stdout


@pytest.mark.distro
def rules_of(status_json: str) -> object:
    installed = json.loads(status_json)["installed"]
    return installed["hooks"], [(r["chain"], r["description"]) for r in installed["rules"]], installed["sets"]


def test_second_apply_is_a_no_op(host: Host) -> None:
    text = POLICY.format(default="drop")
    assert "applied ruleset" in host.apply(text).stdout
    before = rules_of(host.cli("status", "--backend", host.backend, "--json").stdout)
    assert "nothing changed" in host.apply(text).stdout
    after = rules_of(host.cli("status", "--backend", host.backend, "--json").stdout)
    assert before == after  # same rules, no duplicates (counters move: neighbour discovery reaches INPUT)
    drift = host.cli("status", "--backend", host.backend, "-c", str(host.tmp / "policy.toml"), check=False)
    assert drift.returncode == 0, drift.stdout + drift.stderr


def test_changed_policy_replaces_the_old_one(host: Host) -> None:
    host.apply(POLICY.format(default="drop"))
    host.apply('[[allow]]\nports = [9000]\n')
    host.expect({ext(4, 10, 9000): True, ext(4, 10, 8080): False, ext(6, 10, 443): False})


def test_api_in_process(host: Host) -> None:
    """The importable API does what the CLI does, from inside the host namespace."""
    engine = Engine(host.backend)
    with host.topo.inside("host"):
        result = engine.apply(parse_policy('[[allow]]\nports = [443]\nsources = ["198.51.100.12"]\n'))
        assert result.changed
        assert engine.status().installed is not None
    host.expect({ext(4, 12, 443): True, ext(4, 10, 443): False, ext(6, 12, 443): False})
