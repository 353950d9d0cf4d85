"""Deny lists, bans and limits with real packets, on every backend and both families."""

from __future__ import annotations

import configparser
import shlex
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockerguard.backends import DRIVERS
from dockerguard.sandbox import CTR_V4, CTR_V6, EGRESS_PORT, HOST_EXT_V4, HOST_EXT_V6, PROXY_PORT, Probe, Topology

from guarded import Host, ext
from harness import probe_outcomes

CASES = [(backend, flavour) for backend, flavour in [
    ("nft", "iptables-nft"),
    ("nft", "docker-nftables"),
    ("iptables-nft", "iptables-nft"),
    ("iptables-legacy", "iptables-legacy"),
] if backend in DRIVERS]
ACTION = Path(__file__).resolve().parents[2] / "contrib" / "fail2ban" / "action.d" / "dockerguard.conf"
OPEN = f'[[allow]]\nports = [8080, 443, {PROXY_PORT}]\ncomment = "web"\n'


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
    guarded.cli("remove")


@pytest.mark.distro
def test_deny_lists_refuse_before_any_allow(host: Host) -> None:
    netset = host.tmp / "blocklist.netset"
    netset.write_text("# FireHOL-style list\n198.51.100.12\n2001:db8:100::12 ; a comment\n\n203.0.113.0/24\n")
    host.apply(OPEN + f'[[deny]]\nsources_file = "{netset}"\ncomment = "blocklist"\n'
               '[[deny]]\nsources = ["198.51.100.10", "2001:db8:100::10"]\nports = [443]\n')
    host.expect({
        ext(4, 11, 8080): True, ext(6, 11, 8080): True,
        ext(4, 12, 8080): False, ext(6, 12, 8080): False,  # the file's entries: every port
        ext(4, 12, PROXY_PORT): False, ext(6, 12, PROXY_PORT): False,  # docker-proxy's path too
        ext(4, 10, 443): False, ext(6, 10, 443): False,  # denied on 443 only
        ext(4, 10, 8080): True, ext(6, 10, 8080): True,
    })


def fail2ban(host: Host, action: str, ip: str, bantime: int = 600) -> None:
    """Run the action file's command the way fail2ban does: its tags replaced, by a shell."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(ACTION)
    command = config["Definition"][action].strip()
    dockerguard = f"{shlex.quote(sys.executable)} -m dockerguard"
    for tag, value in (("<dockerguard>", dockerguard), ("<ip>", ip), ("<bantime>", str(bantime))):
        command = command.replace(tag, value)
    host.topo.run("host", ["sh", "-c", command])


def test_a_fail2ban_ban_blocks_every_path_and_survives_reapply_and_rollback(host: Host) -> None:
    host.apply(OPEN)
    fail2ban(host, "actionban", "198.51.100.12")
    fail2ban(host, "actionban", "2001:db8:100::12", bantime=-1)  # permanent
    blocked = {ext(4, 12, 8080): False, ext(6, 12, 8080): False, ext(4, 12, PROXY_PORT): False,
               ext(6, 12, PROXY_PORT): False, ext(4, 11, 8080): True, ext(6, 11, 8080): True}
    host.expect(blocked)
    listed = host.cli("bans", "--json").stdout
    assert "198.51.100.12/32" in listed and "2001:db8:100::12/128" in listed
    host.apply(OPEN + '[[allow]]\nports = [8443]\nsources = ["198.51.100.11"]\n')  # a new ruleset: bans stay
    host.expect(blocked)
    host.cli("rollback")
    host.expect(blocked)
    fail2ban(host, "actionunban", "198.51.100.12")
    fail2ban(host, "actionunban", "2001:db8:100::12")
    host.expect({ext(4, 12, 8080): True, ext(6, 12, PROXY_PORT): True})


def test_max_connections_per_source(host: Host) -> None:
    host.apply('[[allow]]\nports = [8080]\nmax_connections = 1\n')
    with host.topo.inside("ext"):
        held = [socket.create_connection((dst, 8080), timeout=3, source_address=(src, 0))
                for dst, src in ((HOST_EXT_V4, "198.51.100.11"), (HOST_EXT_V6, "2001:db8:100::11"))]
    try:
        host.expect({ext(4, 11, 8080): False, ext(6, 11, 8080): False,  # the second one is over the limit
                     ext(4, 12, 8080): True, ext(6, 12, 8080): True})  # per source
    finally:
        for connection in held:
            connection.close()


def test_rate_limit_per_source(host: Host) -> None:
    host.apply('[[allow]]\nports = [8080]\nlimit = "1/minute"\nlimit_burst = 1\n')
    first = host.topo.probe_results([ext(4, 11, 8080), ext(6, 11, 8080)])
    assert all(result.ok for result in first)
    host.expect({ext(4, 11, 8080): False, ext(6, 11, 8080): False,  # the next within the minute: over
                 ext(4, 12, 8080): True})


def outbound(family: int, last: int, port: int = EGRESS_PORT) -> Probe:
    """The container connecting out to an external address ending in `last`."""
    return Probe("ctr", f"198.51.100.{last}" if family == 4 else f"2001:db8:100::{last}", port,
                 src=CTR_V4 if family == 4 else CTR_V6)


@pytest.mark.distro
def test_egress_default_drop_allows_only_what_the_policy_lists(host: Host) -> None:
    host.apply('egress_default = "drop"\n' + OPEN +
               '[[egress]]\ndestinations = ["198.51.100.11", "2001:db8:100::11"]\nports = [7000]\n'
               'comment = "the one partner"\n')
    host.expect({
        outbound(4, 11): True, outbound(6, 11): True,  # allowed (and the replies come back)
        outbound(4, 12): False, outbound(6, 12): False,  # the default
        ext(4, 12, 8080): True, ext(6, 12, 8080): True,  # inbound published ports: the allows, as before
    })


def test_egress_entries_refuse_named_destinations_and_leave_the_rest(host: Host) -> None:
    host.apply(OPEN + '[[egress]]\nsources = ["192.0.2.0/24", "2001:db8:2::/64"]\n'
               'destinations = ["198.51.100.12", "2001:db8:100::12"]\naction = "reject"\n')
    outcomes = probe_outcomes(host.topo, [outbound(4, 12), outbound(6, 12)])
    assert outcomes == ["refused", "refused"]  # rejected, not dropped
    host.expect({outbound(4, 11): True, outbound(6, 11): True})  # egress_default: allow
