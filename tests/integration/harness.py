"""Test-only helpers over ``dockerguard.sandbox``: yes/no and outcome-only probes, and iptables-save dumps
read table by table with the product's parser."""

from __future__ import annotations

import re
from collections.abc import Iterable

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
