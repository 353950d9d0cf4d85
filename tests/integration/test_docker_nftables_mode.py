"""dockerguard in front of Docker 29+'s nftables firewall backend ("firewall-backend": "nftables").

There is no DOCKER-USER chain in this mode: Docker owns `table ip docker-bridges` and
`table ip6 docker-bridges`, with a base chain `filter-FORWARD` at priority filter (0). The nft driver's
own base chain must hook forward earlier (priority filter - 1), and since an nftables accept only ends
the chain it is in, an allow can never open what Docker itself drops.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from topology import (
    CTR_V4,
    CTR_V6,
    DOCKER_NFT_TABLE,
    DOCKER_NFTABLES,
    EGRESS_PORT,
    EXT_V4,
    EXT_V6,
    HOST_EXT_V4,
    HOST_EXT_V6,
    HOST_INT_V4,
    HOST_INT_V6,
    UNPUBLISHED_PORT,
    Probe,
    Topology,
)

BACKEND = "nft"

# Published on the simulated host: tcp 8080->80, 443, 25, 8443, 9000, 9001; udp 5353->53.
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
comment = "dns"
"""

ADDRESSES = {4: (HOST_EXT_V4, "198.51.100."), 6: (HOST_EXT_V6, "2001:db8:100::")}


class Host:
    """The simulated Docker host, driven through the CLI with a private state directory."""

    def __init__(self, topo: Topology, tmp: Path) -> None:
        self.topo = topo
        self.tmp = tmp
        self.env = {"DOCKERGUARD_STATE_DIR": str(tmp / "state")}  # never the real host's history

    def cli(self, *args: str, check: bool = True) -> str:
        result = self.topo.run("host", [sys.executable, "-m", "dockerguard", *args], check=False, timeout=60,
                               env=self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"dockerguard {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}{result.stderr}")
        return result.stdout

    def apply(self, text: str) -> str:
        path = self.tmp / "policy.toml"
        path.write_text(text)
        return self.cli("apply", "-c", str(path), "--backend", BACKEND)

    def expect(self, expectations: dict[Probe, bool]) -> None:
        """Run all probes at once; report every mismatch, not just the first."""
        probes = list(expectations)
        results = self.topo.probe_results(probes)
        wrong = [f"{p.proto} {p.src or p.src_ns} -> [{p.dst}]:{p.port}: expected "
                 f"{'open' if expectations[p] else 'blocked'}, got {r.outcome}"
                 for p, r in zip(probes, results) if r.ok != expectations[p]]
        assert not wrong, "\n".join(wrong)

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
def host(topology: Topology, tmp_path: Path) -> Iterator[Host]:
    guarded = Host(topology, tmp_path)
    yield guarded
    guarded.cli("remove", "--backend", BACKEND)  # each test starts from an unprotected host


def ext(family: int, last: int, port: int, proto: str = "tcp") -> Probe:
    dst, prefix = ADDRESSES[family]
    return Probe("ext", dst, port, proto, src=f"{prefix}{last}")


def test_auto_detection_picks_nft(host: Host) -> None:
    report = json.loads(host.cli("backends", "--json"))
    assert report["auto"]["backend"] == "nft", report["auto"]
    # Picked because of Docker's tables, not merely because nft is usable.
    assert "docker-bridges" in json.dumps(report["auto"]), report["auto"]


def test_our_base_chain_runs_before_dockers(host: Host) -> None:
    host.apply(POLICY)
    forward = [o["chain"] for o in host.topo.nft_objects() if o.get("chain", {}).get("hook") == "forward"]
    ours = [c for c in forward if (c["family"], c["table"]) == ("inet", "dockerguard")]
    dockers = [c for c in forward if c["table"] == DOCKER_NFT_TABLE]
    assert [c["name"] for c in dockers] == ["filter-FORWARD", "filter-FORWARD"], forward
    assert len(ours) == 1, forward
    # Lower priority runs earlier on the same hook; equal priorities would leave the order undefined.
    assert all(ours[0]["prio"] < c["prio"] for c in dockers), forward
    assert ours[0]["prio"] == min(c["prio"] for c in forward)


@pytest.mark.parametrize("family", [4, 6])
def test_allowed_ports_open_others_closed(host: Host, family: int) -> None:
    host.apply(POLICY)
    host.expect({
        **{ext(family, source, port): True for source in (10, 11, 12) for port in (8080, 443)},
        ext(family, 10, 5353, "udp"): True,
        # published by Docker but not allowed by the policy
        ext(family, 10, 9000): False,
        ext(family, 12, 25): False,
        ext(family, 11, 9001): False,
    })


@pytest.mark.parametrize("family", [4, 6])
def test_per_source_rule_holds(host: Host, family: int) -> None:
    host.apply(POLICY)
    host.expect({ext(family, 11, 8443): True, ext(family, 10, 8443): False, ext(family, 12, 8443): False})


def test_container_egress_and_internal_network_untouched(host: Host) -> None:
    host.apply(POLICY)
    host.expect({
        Probe("ctr", EXT_V4, EGRESS_PORT, src=CTR_V4): True,
        Probe("ctr", EXT_V6, EGRESS_PORT, src=CTR_V6): True,
        Probe("int", HOST_INT_V4, 9000): True,
        Probe("int", HOST_INT_V6, 9000): True,
        Probe("int", HOST_INT_V4, 8443): True,
        ext(4, 10, 9000): False,
    })


def test_an_allow_only_ends_our_chain(host: Host) -> None:
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


def test_remove_restores_reachability_and_docker_tables_are_never_touched(host: Host) -> None:
    before = host.docker_tables()
    host.apply(POLICY)
    host.expect({ext(4, 10, 9000): False, ext(6, 10, 9000): False})
    assert host.docker_tables() == before
    assert "removed" in host.cli("remove", "--backend", BACKEND)
    host.expect({ext(4, 10, 9000): True, ext(6, 10, 9000): True, ext(4, 10, 8443): True, ext(6, 12, 8443): True})
    assert host.docker_tables() == before
    assert "table inet dockerguard" not in host.topo.nft_ruleset()
