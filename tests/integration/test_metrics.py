"""`dockerguard metrics` counts real packets: on every backend, allowed and blocked connections to the
simulated Docker host, then the exposition parsed with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dockerguard.backends import DRIVERS
from dockerguard.sandbox import Topology

from guarded import POLICY, Host, ext

CASES = [(backend, flavour) for backend, flavour in [
    ("nft", "iptables-nft"),
    ("iptables-nft", "iptables-nft"),
    ("iptables-legacy", "iptables-legacy"),
] if backend in DRIVERS]


@pytest.fixture(params=CASES, ids=[f"{b}-on-{f}" for b, f in CASES])
def host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Host]:
    backend, flavour = request.param
    with Topology(flavour=flavour) as topo:
        yield Host(topo, backend, tmp_path)


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def test_counters_of_allowed_and_refused_connections(host: Host) -> None:
    host.apply(POLICY.format(default="drop"))
    policy = str(host.tmp / "policy.toml")
    # "web" allows 8080 to everyone; 9000 is published but allowed to nobody: the default drops it.
    host.expect({ext(4, 10, 8080): True, ext(6, 10, 8080): True, ext(4, 10, 9000): False, ext(6, 10, 9000): False})

    shown = host.cli("metrics", "-c", policy, "--backend", host.backend).stdout
    samples = _samples(shown)
    web = [value for labels, value in samples["dockerguard_allow_packets_total"]
           if labels["comment"] == "web" and labels["path"] == "forward"]
    assert web and sum(web) > 0, shown
    dropped = [value for labels, value in samples["dockerguard_default_drop_packets_total"]
               if labels["path"] == "forward"]
    assert sum(dropped) > 0, shown
    assert samples["dockerguard_drift"] == [({}, 0.0)]
    published = {(labels["proto"], labels["port"]): value for labels, value in
                 samples["dockerguard_published_port_allowed"]}
    assert published[("tcp", "8080")] == 1.0 and published[("tcp", "9000")] == 0.0
    assert samples["dockerguard_last_apply_timestamp_seconds"][0][1] > 0

    textfile = host.tmp / "dockerguard.prom"
    host.cli("metrics", "-c", policy, "--backend", host.backend, "--textfile", str(textfile))
    written = _samples(textfile.read_text())
    assert written.keys() == samples.keys()
    for name, rows in samples.items():  # the same series; counters may only have grown since
        assert sorted(sorted(labels.items()) for labels, _ in written[name]) == sorted(
            sorted(labels.items()) for labels, _ in rows), name
    assert not list(host.tmp.glob("dockerguard.prom.*")), "the temporary file was left behind"
    host.cli("remove", "--backend", host.backend)
