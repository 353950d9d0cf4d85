"""The namespace harness itself, checked with real packets and no dockerguard involved.

If these fail, failures in the enforcement tests say nothing about dockerguard.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable

import pytest

from dockerguard.sandbox import (
    ALL_FLAVOURS,
    BRIDGE_IF,
    CTR_TCP_PORTS,
    CTR_V4,
    CTR_V6,
    DOCKER_NFTABLES,
    EGRESS_PORT,
    EXT_SOURCES_V4,
    EXT_SOURCES_V6,
    EXT_V4,
    EXT_V6,
    HOST_EXT_IF,
    HOST_EXT_V4,
    HOST_EXT_V6,
    HOST_INT_IF,
    HOST_INT_V4,
    HOST_INT_V6,
    HOST_SERVICE_PORT,
    PROXIED,
    PUBLISHED,
    UNPUBLISHED_PORT,
    CommandError,
    Probe,
    ProbeReport,
    Topology,
    TopologyError,
    docker_nft_ruleset,
    docker_ruleset,
    in_netns,
)
from dockerguard.sandbox import topology as sandbox_topology

from harness import probe, probe_many, probe_outcome, probe_outcomes, saved_tables

EXT_TARGETS = ((HOST_EXT_V4, EXT_SOURCES_V4), (HOST_EXT_V6, EXT_SOURCES_V6))
INT_TARGETS = (HOST_INT_V4, HOST_INT_V6)
NEGATIVE_TIMEOUT = 0.5  # probes expected to time out: keep them short

# The `flavour` fixture covers the iptables flavours (DOCKER-USER tests need them); tests that hold for
# every simulated Docker firewall, Docker 29's nftables mode included, override it with this.
every_flavour = pytest.mark.parametrize("flavour", ALL_FLAVOURS)


def _describe(r: ProbeReport) -> str:
    p = r.probe
    return f"{p.proto} {p.src_ns}:{p.src or '-'} -> [{p.dst}]:{p.port} = {r.outcome} {r.error}".strip()


def _assert_outcomes(results: list[ProbeReport], expected: str) -> None:
    wrong = [_describe(r) for r in results if r.outcome != expected]
    assert not wrong, f"expected {expected}:\n" + "\n".join(wrong)


def _policies(save_text: str) -> list[tuple[str, str]]:
    """Every table's chains with their policies ("-" for a user chain), which parse_save does not keep."""
    return sorted(re.findall(r"^:(\S+) (\S+)", save_text, re.M))


def _live_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _insert_docker_user(topology: Topology, *rule: str) -> None:
    for family in (4, 6):
        topology.iptables(family, "-I", "DOCKER-USER", *rule)


# -- reachability with Docker's rules only -------------------------------------------------


@every_flavour
def test_published_ports_reachable_from_every_ext_source(topology: Topology) -> None:
    cases = [
        (m, Probe("ext", dst, m.host_port, m.proto, src=src))
        for dst, srcs in EXT_TARGETS
        for src in srcs
        for m in PUBLISHED
    ]
    results = topology.probe_results(p for _, p in cases)
    _assert_outcomes(results, "open")
    for (mapping, sent), r in zip(cases, results):
        # DNAT reached the container's port, and the client's address was preserved (no SNAT inbound).
        assert r.info == {
            "name": "ctr",
            "proto": mapping.proto,
            "port": str(mapping.container_port),
            "peer": sent.src,
        }, _describe(r)


@every_flavour
def test_unpublished_ports_are_not_reachable(topology: Topology) -> None:
    probes = [
        Probe("ext", dst, port, proto)
        for dst, _ in EXT_TARGETS
        for port, proto in ((UNPUBLISHED_PORT, "tcp"), (UNPUBLISHED_PORT, "udp"), (CTR_TCP_PORTS[0], "tcp"))
    ]
    # Nothing listens on the host itself, so its kernel answers RST / port-unreachable.
    _assert_outcomes(topology.probe_results(probes), "refused")


@every_flavour
def test_internal_network_reaches_published_ports(topology: Topology) -> None:
    probes = [Probe("int", dst, m.host_port, m.proto) for dst in INT_TARGETS for m in PUBLISHED]
    _assert_outcomes(topology.probe_results(probes), "open")


@every_flavour
def test_container_egress_is_masqueraded(topology: Topology) -> None:
    v4, v6 = topology.probe_results([Probe("ctr", EXT_V4, EGRESS_PORT), Probe("ctr", EXT_V6, EGRESS_PORT)])
    assert (v4.outcome, v4.peer) == ("open", HOST_EXT_V4)
    assert (v6.outcome, v6.peer) == ("open", HOST_EXT_V6)


@every_flavour
def test_host_service_and_direct_container_access(topology: Topology) -> None:
    # The host's own service (INPUT path), and the host itself reaching the container directly.
    results = topology.probe_results(
        [Probe("ext", dst, HOST_SERVICE_PORT) for dst in (HOST_EXT_V4, HOST_EXT_V6)]
        + [Probe("int", dst, HOST_SERVICE_PORT) for dst in INT_TARGETS]
        + [Probe("host", dst, 80) for dst in (CTR_V4, CTR_V6)]
    )
    _assert_outcomes(results, "open")
    assert probe(topology, "ext", HOST_EXT_V4, HOST_SERVICE_PORT, src=EXT_SOURCES_V4[2])


def test_loaded_rules_round_trip_through_save(topology: Topology) -> None:
    # Lets later tests compare dumps verbatim to prove Docker's chains were left alone.
    for family in (4, 6):
        saved, loaded = topology.iptables_save(family), docker_ruleset(family)
        assert saved_tables(saved) == saved_tables(loaded)
        assert _policies(saved) == _policies(loaded)
    tables = topology.nft_ruleset()
    if topology.flavour == "iptables-nft":
        assert "chain DOCKER-USER" in tables
    else:
        assert "DOCKER-USER" not in tables  # legacy rules are invisible to nft


# -- Docker 29's nftables mode ----------------------------------------------------------------


@pytest.mark.parametrize("flavour", [DOCKER_NFTABLES])
def test_docker_nftables_tables_are_loaded_and_iptables_is_empty(topology: Topology) -> None:
    objects = topology.nft_objects()
    tables = {(o["table"]["family"], o["table"]["name"]) for o in objects if "table" in o}
    assert tables == {("ip", "docker-bridges"), ("ip6", "docker-bridges")}
    forward = [o["chain"] for o in objects if o.get("chain", {}).get("hook") == "forward"]
    assert [(c["family"], c["name"], c["prio"], c["policy"]) for c in forward] == [
        ("ip", "filter-FORWARD", 0, "accept"),
        ("ip6", "filter-FORWARD", 0, "accept"),
    ]
    text = topology.nft_ruleset()
    assert "DOCKER-USER" not in text
    dnat = [o["rule"] for o in objects if o.get("rule", {}).get("chain") == "nat-prerouting-and-output"]
    assert len(dnat) == 2 * len(PUBLISHED) + len(PROXIED) == docker_nft_ruleset().count("dnat to")  # PROXIED: v4
    with pytest.raises(ValueError, match="nftables"):
        topology.iptables_save(4)
    with pytest.raises(ValueError, match="nftables"):
        topology.iptables(6, "-S")
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save", "ip6tables-nft-save"):
        assert "-A " not in topology.run("host", [tool]).stdout  # no iptables rule anywhere


@pytest.mark.parametrize("flavour", [DOCKER_NFTABLES])
def test_docker_nftables_drops_direct_access_to_the_container(topology: Topology) -> None:
    # raw-PREROUTING "DROP DIRECT ACCESS" (gateway mode nat): only the published, DNATed path works.
    probes = [Probe("ext", ctr, 80, timeout=NEGATIVE_TIMEOUT) for ctr in (CTR_V4, CTR_V6)]
    probes += [Probe("int", ctr, 80, timeout=NEGATIVE_TIMEOUT) for ctr in (CTR_V4, CTR_V6)]
    _assert_outcomes(topology.probe_results(probes), "timeout")
    rules = [o["rule"] for o in topology.nft_objects() if o.get("rule", {}).get("comment") == "DROP DIRECT ACCESS"]
    packets = {r["family"]: next(e["counter"]["packets"] for e in r["expr"] if "counter" in e) for r in rules}
    assert packets.keys() == {"ip", "ip6"} and all(packets.values()), packets


@pytest.mark.parametrize("flavour", [DOCKER_NFTABLES])
def test_docker_nftables_host_reaches_published_ports_through_nat_output(topology: Topology) -> None:
    results = topology.probe_results([Probe("host", dst, 8080) for dst in (HOST_EXT_V4, HOST_EXT_V6)])
    _assert_outcomes(results, "open")
    assert [r.info.get("port") for r in results] == ["80", "80"]  # DNATed to the container


# -- the FORWARD -> DOCKER-USER path --------------------------------------------------------


def test_docker_user_drop_on_original_port_blocks_ext_only(topology: Topology) -> None:
    _insert_docker_user(
        topology, "-i", HOST_EXT_IF, "-p", "tcp", "-m", "conntrack", "--ctorigdstport", "8443", "-j", "DROP"
    )
    blocked = [Probe("ext", dst, 8443, src=srcs[0], timeout=NEGATIVE_TIMEOUT) for dst, srcs in EXT_TARGETS]
    still_open = (
        [Probe("ext", dst, 8080) for dst, _ in EXT_TARGETS]
        + [Probe("int", dst, 8443) for dst in INT_TARGETS]
        + [Probe("ctr", EXT_V4, EGRESS_PORT), Probe("ctr", EXT_V6, EGRESS_PORT)]
    )
    results = topology.probe_results(blocked + still_open)
    _assert_outcomes(results[: len(blocked)], "timeout")
    _assert_outcomes(results[len(blocked) :], "open")
    assert f"-A DOCKER-USER -i {HOST_EXT_IF} -p tcp" in topology.iptables_save(6)


def test_docker_user_blanket_drop_blocks_every_published_port_from_ext(topology: Topology) -> None:
    _insert_docker_user(topology, "-i", HOST_EXT_IF, "-j", "DROP")
    ext = [
        Probe("ext", dst, m.host_port, m.proto, timeout=NEGATIVE_TIMEOUT)
        for dst, _ in EXT_TARGETS
        for m in PUBLISHED
    ]
    internal = [Probe("int", dst, m.host_port, m.proto) for dst in INT_TARGETS for m in PUBLISHED]
    results = topology.probe_results(ext + internal)
    _assert_outcomes(results[: len(ext)], "timeout")
    _assert_outcomes(results[len(ext) :], "open")


def test_reject_and_drop_are_distinguishable(topology: Topology) -> None:
    for family in (4, 6):
        for port, proto, target in (
            ("9000", "tcp", ["REJECT", "--reject-with", "tcp-reset"]),
            ("9001", "tcp", ["DROP"]),
            ("5353", "udp", ["REJECT"]),  # default: ICMP(v6) port unreachable
        ):
            topology.iptables(
                family,
                "-I",
                "DOCKER-USER",
                "-i",
                HOST_EXT_IF,
                "-p",
                proto,
                "-m",
                "conntrack",
                "--ctorigdstport",
                port,
                "-j",
                *target,
            )
    cases = [
        (dst, port, proto)
        for dst, _ in EXT_TARGETS
        for port, proto in ((9000, "tcp"), (9001, "tcp"), (5353, "udp"), (8080, "tcp"))
    ]
    results = topology.probe_results(Probe("ext", d, p, pr, timeout=NEGATIVE_TIMEOUT) for d, p, pr in cases)
    expected = {9000: "refused", 9001: "timeout", 5353: "refused", 8080: "open"}
    wrong = [_describe(r) for r in results if r.outcome != expected[r.probe.port]]
    assert not wrong, "\n".join(wrong)
    assert all(r.elapsed < NEGATIVE_TIMEOUT / 2 for r in results if r.outcome == "refused")
    assert probe_outcome(topology, "ext", HOST_EXT_V6, 9000) == "refused"


# -- probing machinery ----------------------------------------------------------------------


def test_many_probes_cost_about_one_timeout(topology: Topology) -> None:
    # Unanswered addresses on ext's own link (documentation range): every probe times out.
    probes = [Probe("ext", f"198.51.100.{200 + i}", 80, timeout=0.4) for i in range(20)]
    probes += [Probe("ext", f"2001:db8:100::{200 + i:x}", 53, "udp", timeout=0.4) for i in range(20)]
    start = time.monotonic()
    outcomes = probe_outcomes(topology, probes)
    elapsed = time.monotonic() - start
    assert set(outcomes) == {"timeout"}
    assert elapsed < 0.8, f"40 concurrent 0.4 s probes took {elapsed:.2f} s"
    assert probe_many(topology, [Probe("ext", HOST_EXT_V4, 443), Probe("ext", HOST_EXT_V4, 444)]) == [
        True,
        False,
    ]


def test_probe_rejects_hostnames(topology: Topology) -> None:
    with pytest.raises(ValueError):
        probe(topology, "ext", "localhost", 80)


def test_in_netns_switches_only_the_current_thread(topology: Topology) -> None:
    def ino() -> int:
        return os.stat("/proc/thread-self/ns/net").st_ino

    root = ino()
    host_ino = os.stat(topology.netns_path("host")).st_ino
    seen: list[int] = []
    go = threading.Event()
    other = threading.Thread(target=lambda: (go.wait(5), seen.append(ino())))
    other.start()
    with in_netns(topology.ns("host")):
        assert ino() == host_ino
        go.set()
        other.join(5)
        names = {name for _, name in socket.if_nameindex()}
        assert {HOST_EXT_IF, HOST_INT_IF, BRIDGE_IF} <= names
        with topology.inside("ctr"):  # nesting returns to the outer namespace
            assert ino() == os.stat(topology.netns_path("ctr")).st_ino
        assert ino() == host_ino
    assert ino() == root
    assert seen == [root]  # the other thread never moved

    # Works from a worker thread too (it must use /proc/thread-self, not /proc/self).
    inside: list[int] = []

    def worker() -> None:
        with topology.inside("int"):
            inside.append(ino())
        inside.append(ino())

    t = threading.Thread(target=worker)
    t.start()
    t.join(5)
    assert inside == [os.stat(topology.netns_path("int")).st_ino, root]


def test_run_executes_inside_the_role_namespace(topology: Topology) -> None:
    out = topology.run("ctr", ["ip", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert CTR_V4 in out and CTR_V6 in out
    with pytest.raises(CommandError, match="exited"):
        topology.run("ctr", ["ip", "link", "show", "dev", "no-such-if"])


def test_no_docker_rules_flavour(make_topology: Callable[..., Topology]) -> None:
    plain = make_topology(None)
    assert not probe(plain, "ext", HOST_EXT_V4, 8080, timeout=NEGATIVE_TIMEOUT)  # no DNAT
    assert probe(plain, "ext", CTR_V4, 80) and probe(plain, "ext", CTR_V6, 80)  # routed, FORWARD ACCEPT
    with pytest.raises(ValueError):
        plain.iptables_save(4)


# -- lifecycle ------------------------------------------------------------------------------


def _assert_gone(topo: Topology, pids: dict[str, int]) -> None:
    assert not set(topo.namespaces.values()) & _live_namespaces()
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # reaped by Popen.wait, so the PID no longer exists


@every_flavour
def test_namespaces_and_processes_gone_after_exit(flavour: str) -> None:
    with Topology(flavour=flavour) as topo:
        assert set(topo.namespaces.values()) <= _live_namespaces()
        pids = topo.server_pids
        assert len(pids) == 3
    _assert_gone(topo, pids)
    topo.close()  # idempotent


@every_flavour
def test_namespaces_gone_after_exception_in_block(flavour: str) -> None:
    with pytest.raises(RuntimeError, match="boom"), Topology(flavour=flavour) as topo:
        pids = topo.server_pids
        raise RuntimeError("boom")
    _assert_gone(topo, pids)


@every_flavour
@pytest.mark.parametrize("stage", ["rules", "readiness"])
def test_failed_enter_cleans_up(flavour: str, stage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if stage == "rules":  # iptables-restore / nft rejects the input: servers not started yet
        # Patched where Topology looks them up: the module that builds the host.
        monkeypatch.setattr(sandbox_topology, "docker_ruleset", lambda family: "*filter\n-A NOPE -j NOPE\nCOMMIT\n")
        monkeypatch.setattr(sandbox_topology, "docker_nft_ruleset", lambda: "add rule ip nope nope drop\n")
        error: type[Exception] = CommandError
    else:  # everything built, servers running, then the last step fails

        def fail(self: Topology, deadline: float) -> None:
            raise TopologyError("simulated")

        monkeypatch.setattr(Topology, "_wait_links", fail)
        error = TopologyError
    topo = Topology(flavour=flavour)
    with pytest.raises(error), topo:
        pytest.fail("unreachable")
    assert not set(topo.namespaces.values()) & _live_namespaces()
    if stage == "readiness":
        _assert_gone(topo, topo.server_pids)
