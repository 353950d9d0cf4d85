"""`dockerguard trace` agrees with real packets: on every backend, what the trace says each connection gets
is what a probe of it gets (accept: connected; reject: refused)."""

from __future__ import annotations

import json
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
