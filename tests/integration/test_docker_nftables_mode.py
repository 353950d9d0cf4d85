"""dockerguard in front of Docker 29+'s nftables firewall backend ("firewall-backend": "nftables").

There is no DOCKER-USER chain in this mode: Docker owns `table ip docker-bridges` and
`table ip6 docker-bridges`, with a base chain `filter-FORWARD` at priority filter (0). The nft driver's
own base chain must hook forward earlier (priority filter - 1), and since an nftables accept only ends
the chain it is in, an allow can never open what Docker itself drops.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockerguard.sandbox import (
    CTR_V4,
    CTR_V6,
    DOCKER_NFT_TABLE,
    DOCKER_NFTABLES,
    UNPUBLISHED_PORT,
    Probe,
    Topology,
)

from guarded import POLICY as GUARDED_POLICY
from guarded import Host, ext

BACKEND = "nft"

POLICY = GUARDED_POLICY.format(default="drop")


class DockerNftHost(Host):
    """The simulated Docker host in Docker's nftables mode, guarded by the nft backend."""

    def docker_tables(self) -> list[dict[str, Any]]:
        """Docker's two tables, without counters and handles (what must never change)."""
        objects = []
        for item in self.topo.nft_objects():
            kind, body = next(iter(item.items()))
            if body.get("table", body.get("name")) != DOCKER_NFT_TABLE or body.get("family") not in ("ip", "ip6"):
                continue
            body = {k: v for k, v in body.items() if k != "handle"}
            if "expr" in body:
                body["expr"] = [e for e in body["expr"] if "counter" not in e]
            objects.append({kind: body})
        return objects


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    with Topology(flavour=DOCKER_NFTABLES) as topo:
        yield topo


@pytest.fixture
def host(topology: Topology, tmp_path: Path) -> Iterator[DockerNftHost]:
    guarded = DockerNftHost(topology, BACKEND, tmp_path)
    yield guarded
    guarded.cli("remove", "--backend", BACKEND)  # each test starts from an unprotected host



def test_auto_detection_picks_nft(host: DockerNftHost) -> None:
    report = json.loads(host.cli("backends", "--json").stdout)
    assert report["auto"]["backend"] == "nft", report["auto"]
    # Picked because of Docker's tables, not merely because nft is usable.
    assert "docker-bridges" in json.dumps(report["auto"]), report["auto"]


def test_our_base_chain_runs_before_dockers(host: DockerNftHost) -> None:
    host.apply(POLICY)
    forward = [o["chain"] for o in host.topo.nft_objects() if o.get("chain", {}).get("hook") == "forward"]
    ours = [c for c in forward if (c["family"], c["table"]) == ("inet", "dockerguard")]
    bans = [c for c in forward if (c["family"], c["table"]) == ("inet", "dockerguard_bans")]
    dockers = [c for c in forward if c["table"] == DOCKER_NFT_TABLE]
    assert [c["name"] for c in dockers] == ["filter-FORWARD", "filter-FORWARD"], forward
    assert len(ours) == 1 and len(bans) == 1, forward
    # Lower priority runs earlier on the same hook; equal priorities would leave the order undefined.
    assert all(ours[0]["prio"] < c["prio"] for c in dockers), forward
    # Only our own bans table runs earlier still: what is banned is dropped before anything is judged.
    assert bans[0]["prio"] < ours[0]["prio"] == min(c["prio"] for c in forward if c not in bans)



def test_an_allow_only_ends_our_chain(host: DockerNftHost) -> None:
    # Allowed by the policy, but Docker publishes neither 8081 nor direct access to the container's port 80:
    # our accept hands the packet on, Docker's own rules still decide (and drop or refuse it).
    host.apply('[[allow]]\nports = [8081, 80]\n')
    host.expect({
        ext(4, 10, UNPUBLISHED_PORT): False,
        ext(6, 10, UNPUBLISHED_PORT): False,
        Probe("ext", CTR_V4, 80, src="198.51.100.10"): False,  # Docker's raw "DROP DIRECT ACCESS"
        Probe("ext", CTR_V6, 80, src="2001:db8:100::10"): False,
        ext(4, 10, 8080): False,  # and the policy does not allow the published 8080
    })


def test_remove_restores_reachability_and_docker_tables_are_never_touched(host: DockerNftHost) -> None:
    before = host.docker_tables()
    host.apply(POLICY)
    host.expect({ext(4, 10, 9000): False, ext(6, 10, 9000): False})
    assert host.docker_tables() == before
    assert "removed" in host.cli("remove", "--backend", BACKEND).stdout
    host.expect({ext(4, 10, 9000): True, ext(6, 10, 9000): True, ext(4, 10, 8443): True, ext(6, 12, 8443): True})
    assert host.docker_tables() == before
    assert "table inet dockerguard" not in host.topo.nft_ruleset()
