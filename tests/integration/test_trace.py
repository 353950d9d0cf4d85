"""`dockerguard trace` agrees with real packets: on every backend, what the trace says each connection gets
is what a probe of it gets (accept: connected; reject: refused)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockerguard.backends import DRIVERS
from dockerguard.sandbox import PROXY_PORT, Probe, Topology

from guarded import POLICY, Host, ext

CASES = [(backend, flavour) for backend, flavour in [
    ("nft", "iptables-nft"),
    ("iptables-nft", "iptables-nft"),
    ("iptables-legacy", "iptables-legacy"),
] if backend in DRIVERS]
# docker-proxy's port: on IPv6 it is served by the host itself (the INPUT path).
PROXIED = f"\n[[allow]]\nports = [{PROXY_PORT}]\nsources = [\"@admins\"]\ncomment = \"proxied admin\"\n"
OUTCOME = {"accept": "open", "reject": "refused"}


@pytest.fixture(params=CASES, ids=[f"{b}-on-{f}" for b, f in CASES])
def host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Host]:
    backend, flavour = request.param
    with Topology(flavour=flavour) as topo:
        yield Host(topo, backend, tmp_path)


def test_trace_says_what_packets_get(host: Host) -> None:
    host.apply(POLICY.format(default="reject") + PROXIED)
    policy = str(host.tmp / "policy.toml")
    cases: list[tuple[Probe, str, str | None]] = [  # probe, path, deciding comment
        (ext(4, 10, 8080), "forward", "web"),
        (ext(6, 10, 443), "forward", "web"),
        (ext(4, 11, 8443), "forward", "admin only"),
        (ext(4, 10, 8443), "forward", None),
        (ext(6, 12, 9000), "forward", None),
        (ext(4, 10, 5353, "udp"), "forward", "dns"),
        (ext(6, 11, PROXY_PORT), "input", "proxied admin"),
        (ext(6, 10, PROXY_PORT), "input", None),
    ]
    results = host.topo.probe_results([probe for probe, _, _ in cases])
    wrong = []
    for (probe, path, comment), result in zip(cases, results):
        shown = host.cli("trace", str(probe.src), str(probe.port), "--proto", probe.proto, "--path", path,
                         "-c", policy, "--backend", host.backend, "--json").stdout
        decision = json.loads(shown)
        if decision["notes"]:
            wrong.append(f"{probe}: unexpected notes {decision['notes']}")
        if (decision["comment"] or None) != comment or OUTCOME[decision["verdict"]] != result.outcome:
            wrong.append(f"{probe.proto} {probe.src} -> {probe.port} ({path}): trace says {decision['verdict']} by "
                         f"{decision['kind']} {decision['comment']!r}, the probe got {result.outcome}")
    assert not wrong, "\n".join(wrong)
    host.cli("remove", "--backend", host.backend)


@pytest.mark.skipif("nft" not in DRIVERS, reason="the nft backend is not built in")
def test_live_trace_shows_the_rules_a_real_packet_meets(tmp_path: Path) -> None:
    with Topology(flavour="iptables-nft") as topo:
        guarded = Host(topo, "nft", tmp_path)
        guarded.apply(POLICY.format(default="reject"))
        policy = str(tmp_path / "policy.toml")
        shown: list[str] = []
        probe = ext(4, 10, 8080)
        watcher = threading.Thread(target=lambda: shown.append(guarded.cli(
            "trace", str(probe.src), "8080", "--live", "4", "-c", policy, "--backend", "nft", "--json").stdout))
        watcher.start()
        time.sleep(2.0)  # the command compiles, starts the monitor and adds its rule first
        blocked = ext(4, 10, 9000)  # another port: not traced
        results = topo.probe_results([probe, blocked])
        watcher.join(timeout=60)
        assert not watcher.is_alive()
        assert [result.outcome for result in results] == ["open", "refused"]
        live = json.loads(shown[0])["live"]
        ours = [(event["chain"], event["rule"], event["verdict"]) for event in live if event["ours"]]
        assert ("external", "allow tcp ipv4", "accept") in ours, live
        assert not any("9000" in event["rule"] for event in live)
        # the temporary rule is gone again: our table is exactly the policy's
        assert "dockerguard trace" not in topo.nft_ruleset()
        guarded.cli("status", "-c", policy, "--backend", "nft")  # exit 3 on drift
        guarded.cli("remove", "--backend", "nft")
