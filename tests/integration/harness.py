"""Test-only helpers over ``dockerguard.sandbox``: yes/no and outcome-only probes, and iptables-save dumps
read table by table with the product's parser."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from dockerguard.backends.iptables.rules import FilterTable, parse_save
from dockerguard.sandbox import Outcome, Probe, ProbeReport, Topology


def probe_outcomes(topo: Topology, probes: Iterable[Probe]) -> list[Outcome]:
    return [r.outcome for r in topo.probe_results(probes)]


def probe_many(topo: Topology, probes: Iterable[Probe]) -> list[bool]:
    """True for each probe that got through (TCP connected, UDP echoed)."""
    return [r.ok for r in topo.probe_results(probes)]


def probe_report(
    topo: Topology, src_ns: str, dst: str, port: int, proto: str = "tcp", src: str | None = None,
    timeout: float = 1.0,
) -> ProbeReport:
    return topo.probe_results([Probe(src_ns, dst, port, proto, src, timeout)])[0]


def probe(
    topo: Topology, src_ns: str, dst: str, port: int, proto: str = "tcp", src: str | None = None,
    timeout: float = 1.0,
) -> bool:
    """True when a TCP connect succeeds or a UDP datagram is echoed back."""
    return probe_report(topo, src_ns, dst, port, proto, src, timeout).ok


def probe_outcome(
    topo: Topology, src_ns: str, dst: str, port: int, proto: str = "tcp", src: str | None = None,
    timeout: float = 1.0,
) -> Outcome:
    """Tell DROP from REJECT: ``"open"``; ``"refused"`` (TCP RST or ICMP port-unreachable: REJECT, or
    nothing listening); ``"unreachable"`` (other ICMP errors, e.g. admin-prohibited); ``"timeout"`` (DROP)."""
    return probe_report(topo, src_ns, dst, port, proto, src, timeout).outcome


def saved_tables(save_text: str) -> dict[str, FilterTable]:
    """iptables-save text -> ``{table: its chains and rules}``, without counters and comments.

    The product's ``parse_save`` reads the section headed ``*filter``; each table is handed to it under
    that heading. Tables are keyed: their order in a dump differs between flavours.
    """
    tables: dict[str, FilterTable] = {}
    for section in re.split(r"^\*", save_text, flags=re.M)[1:]:
        name, _, body = section.partition("\n")
        tables[name.strip()] = parse_save(f"*filter\n{body}")
    return tables


def wait_for(condition: Callable[[], bool], seconds: float, step: float = 0.1) -> bool:
    """Poll `condition` until it holds or `seconds` pass; its last answer."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


@contextlib.contextmanager
def watching(topo: Topology, policy: Path, backend: str, log: Path, interval: float = 0.5
             ) -> Iterator[subprocess.Popen[bytes]]:
    """`dockerguard watch` in the host namespace (no Docker behind its socket), its stderr into `log`;
    stopped with SIGTERM on the way out (killed if it does not stop within 10 s)."""
    with log.open("w") as stderr:
        watcher = subprocess.Popen(
            ["ip", "netns", "exec", topo.ns("host"), sys.executable, "-m", "dockerguard", "watch", "-c", str(policy),
             "--backend", backend, "--interval", str(interval), "--docker-socket", str(log.parent / "no-docker.sock")],
            stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL)
    try:
        yield watcher
    finally:
        watcher.send_signal(signal.SIGTERM)
        try:
            watcher.wait(timeout=10)
        except subprocess.TimeoutExpired:
            watcher.kill()
            watcher.wait(timeout=5)
