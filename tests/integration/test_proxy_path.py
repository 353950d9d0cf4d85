"""Published ports are judged on docker-proxy's path too, by default: on a dual-stack host a container
without IPv6 is published for IPv4 with DNAT (forwarded, FORWARD) while Docker's userland proxy answers
IPv6 on the host itself (INPUT), where no DOCKER-USER or forward-hook rule ever looks. The sandbox
publishes PROXY_PORT that way (its host namespace plays docker-proxy). Real packets, every backend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockerguard.backends import DRIVERS
from dockerguard.sandbox import HOST_SERVICE_PORT, PROXY_PORT, Topology

from guarded import Host, ext
from harness import probe_outcomes

CASES = [(backend, flavour) for backend, flavour in [
    ("nft", "iptables-nft"),
    ("nft", "docker-nftables"),
    ("iptables-nft", "iptables-nft"),
    ("iptables-legacy", "iptables-legacy"),
] if backend in DRIVERS]

POLICY = f"""\
external_interfaces = ["eth0"]
{{extra}}
[[allow]]
ports = [{PROXY_PORT}]
sources = ["198.51.100.11", "2001:db8:100::11"]
comment = "one admin, either family"
"""


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
    guarded.cli("remove", "--backend", backend)


@pytest.mark.distro
def test_the_ipv6_proxy_path_is_closed_to_sources_the_policy_does_not_allow(host: Host) -> None:
    # Without dockerguard both paths are open to anyone: IPv4 reaches the container, IPv6 the proxy.
    host.expect({ext(4, 12, PROXY_PORT): True, ext(6, 12, PROXY_PORT): True})
    host.apply(POLICY.format(extra=""))
    host.expect({
        ext(4, 11, PROXY_PORT): True, ext(4, 12, PROXY_PORT): False,  # forwarded (DNAT)
        ext(6, 11, PROXY_PORT): True, ext(6, 12, PROXY_PORT): False,  # docker-proxy on the host (INPUT)
        # The host's own services are not published ports: dockerguard does not judge them.
        ext(4, 12, HOST_SERVICE_PORT): True, ext(6, 12, HOST_SERVICE_PORT): True,
    })


def test_audit_reports_both_paths_and_exits_0_when_they_follow_the_policy(host: Host) -> None:
    policy = host.tmp / "policy.toml"
    policy.write_text(POLICY.format(extra=""))
    before = host.cli("audit", "-c", str(policy), "--backend", host.backend, "--json", check=False)
    assert before.returncode == 3, before.stdout + before.stderr
    opened = {(r["port"], r["family"], r["path"]) for r in json.loads(before.stdout)["reaches"]
              if r["verdict"] == "OPEN"}
    assert {(PROXY_PORT, 4, "forward"), (PROXY_PORT, 6, "docker-proxy")} <= opened
    host.cli("apply", "-c", str(policy), "--backend", host.backend)
    after = host.cli("audit", "-c", str(policy), "--backend", host.backend, "--json")
    reaches = {(r["port"], r["family"], r["path"]): r for r in json.loads(after.stdout)["reaches"]}
    assert reaches[(PROXY_PORT, 6, "docker-proxy")]["reachable"] == ["2001:db8:100::11/128"]
    assert reaches[(PROXY_PORT, 4, "forward")]["reachable"] == ["198.51.100.11/32"]
    assert all(r["verdict"] == "ok" for r in reaches.values())


def test_filter_proxy_path_false_leaves_it_to_docker(host: Host) -> None:
    host.apply(POLICY.format(extra="filter_proxy_path = false"))
    host.expect({ext(4, 12, PROXY_PORT): False, ext(6, 12, PROXY_PORT): True})


def test_a_newly_published_port_makes_the_unchanged_policy_apply_again(host: Host) -> None:
    """The published ports are learned at every apply: an unchanged policy file over a changed set of
    published ports is no no-op (`watch` runs this on every Docker event)."""
    policy = host.tmp / "policy.toml"
    policy.write_text(POLICY.format(extra=""))
    host.cli("apply", "-c", str(policy), "--backend", host.backend)
    assert "nothing changed" in host.cli("apply", "-c", str(policy), "--backend", host.backend).stdout
    assert probe_outcomes(host.topo, [ext(6, 12, 9999)]) == ["refused"]  # not published: not judged
    # Docker publishes one more port (its DNAT rule appears): the next apply judges its INPUT path too.
    if host.topo.flavour == "docker-nftables":
        host.topo.run("host", ["nft", "add rule ip docker-bridges nat-prerouting-and-output tcp dport 9999 "
                                      "dnat to 192.0.2.2:9999"])
    else:
        host.topo.run("host", [f"iptables-{host.topo.flavour.split('-')[1]}", "-t", "nat", "-A", "DOCKER", "-p", "tcp",
                               "--dport", "9999", "-j", "DNAT", "--to-destination", "192.0.2.2:9999"])
    assert "applied ruleset" in host.cli("apply", "-c", str(policy), "--backend", host.backend).stdout
    # Nothing listens there, but the port is judged now: the default drops it instead of the host refusing.
    assert probe_outcomes(host.topo, [ext(6, 12, 9999)]) == ["timeout"]
