"""`dockerguard watch` repairs the rules after someone flushes them, proven with real packets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dockerguard.backends import DRIVERS
from dockerguard.sandbox import HOST_EXT_V4, Probe, Topology

from harness import probe_many, wait_for, watching

# How an admin (or a reload script) wipes each backend's rules behind dockerguard's back.
FLUSH = {
    "nft": ["nft", "delete", "table", "inet", "dockerguard"],
    "iptables-nft": ["iptables-nft", "-w", "5", "-F", "DOCKERGUARD"],
    "iptables-legacy": ["iptables-legacy", "-w", "5", "-F", "DOCKERGUARD"],
}
CASES = [(b, f) for b, f in [("nft", "iptables-nft"), ("iptables-nft", "iptables-nft"),
                             ("iptables-legacy", "iptables-legacy")] if b in DRIVERS]


@pytest.mark.parametrize(("backend", "flavour"), CASES, ids=[f"{b}-on-{f}" for b, f in CASES])
def test_watch_repairs_a_flush(make_topology, tmp_path: Path, backend: str, flavour: str) -> None:  # type: ignore[no-untyped-def]
    topo: Topology = make_topology(flavour)
    policy = tmp_path / "policy.toml"
    policy.write_text('[[allow]]\nports = [8080]\n')
    blocked = Probe("ext", HOST_EXT_V4, 9000)
    log = tmp_path / "watch.log"
    with watching(topo, policy, backend, log):
        assert wait_for(lambda: not probe_many(topo, [blocked])[0], 15), "watch never installed the rules"
        topo.run("host", FLUSH[backend])
        assert probe_many(topo, [blocked]) == [True], "the flush did not open the port (test is not testing)"
        assert wait_for(lambda: not probe_many(topo, [Probe("ext", HOST_EXT_V4, 9000, timeout=0.5)])[0], 10), \
            "watch did not repair the flushed rules"
        assert probe_many(topo, [Probe("ext", HOST_EXT_V4, 8080)]) == [True]
    text = log.read_text()
    assert "INFO watch start: applied" in text, text  # the start puts the file's policy in force
    assert re.search(r"WARNING [A-Za-z ]+: the kernel differed from the policy in force", text), text  # the flush
    assert "watch stopped after" in text, text
