#!/usr/bin/env python3
"""What dockerguard's rules cost a new connection, per backend and number of allowed sources.

    sudo python3 bench/packet_path.py [--sizes 1 1000 10000] [--family both] [--duration 2] [--repeat 3]
                                      [--quick]

Per backend and size, a fresh sandbox (`dockerguard.sandbox.Topology`: an outside client namespace, a
Docker-like host whose eth0 DNATs published port 8080 to a container namespace's server on port 80; Docker's
rules in the iptables flavour of the backend, iptables-nft for the nft backend), then `dockerguard apply`
of a policy allowing N sources per family on the published ports, the client's address among them (it
sorts near the end, so linear rule chains are measured near their worst case). A check proves the policy
is in force: the client connects, 198.51.100.12 / 2001:db8:100::12 (not allowed) are dropped. Then, for
--duration seconds, a tight loop of new TCP connections from the client to host:8080 (connect, read the
server's one-line banner, close): connections per second and the median connect() time, which includes the
SYN's trip through the rules. "none" is the same sandbox without dockerguard. Flat numbers across N mean
the cost does not grow with the number of sources. The loop, the server and the kernel share the machine's
CPUs: compare rows of one run, not runs on different machines. Prints Markdown on stdout.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import benchlib
from benchlib import median

benchlib.ensure_dockerguard()  # before importing it: `sudo python3` may need the repository's venv

from dockerguard.sandbox import (  # noqa: E402
    EXT_V4,
    EXT_V6,
    HOST_EXT_V4,
    HOST_EXT_V6,
    Probe,
    Topology,
)

BACKENDS = ("nft", "iptables-nft", "iptables-legacy")
DOCKER_FLAVOUR = {"nft": "iptables-nft", "iptables-nft": "iptables-nft", "iptables-legacy": "iptables-legacy"}
QUICK = {"sizes": [1, 1000], "repeat": 1, "duration": 0.5, "warmup": 0.5}
PORT = 8080  # published by the sandbox (-> container port 80)
WARMUP = 0.2  # seconds of connections before each measurement (caches, neighbour entries)


def policy_sources(size: int, families: Sequence[int]) -> list[str]:
    """N sources per family: N - 1 generated ones and the client's address."""
    sources: list[str] = []
    if 4 in families:
        sources += [*benchlib.v4_sources(size - 1), EXT_V4]
    if 6 in families:
        sources += [*benchlib.v6_sources(size - 1), EXT_V6]
    return sources


def connection_loop(topo: Topology, family: int, duration: float) -> tuple[float, float | None, int]:
    """(connections per second, median connect() seconds, failed attempts) for `duration` seconds."""
    source, target = (EXT_V4, HOST_EXT_V4) if family == 4 else (EXT_V6, HOST_EXT_V6)
    address_family = socket.AF_INET if family == 4 else socket.AF_INET6
    latencies: list[float] = []
    done = failed = 0
    with topo.inside("ext"):  # sockets belong to the namespace they are created in

        def attempt() -> float | None:
            sock = socket.socket(address_family, socket.SOCK_STREAM)
            sock.settimeout(1.0)
            try:
                sock.bind((source, 0))
                begin = time.perf_counter()
                sock.connect((target, PORT))
                took = time.perf_counter() - begin
                return took if sock.recv(256) else None  # the banner: the server took the connection
            except OSError:
                return None
            finally:
                sock.close()

        deadline = time.perf_counter() + WARMUP
        while time.perf_counter() < deadline:
            attempt()
        begin = time.perf_counter()
        deadline = begin + duration
        while time.perf_counter() < deadline:
            took = attempt()
            if took is None:
                failed += 1
            else:
                latencies.append(took)
                done += 1
        elapsed = time.perf_counter() - begin
    return done / elapsed, median(latencies), failed


def policy_check(topo: Topology, families: Sequence[int]) -> str:
    """"ok" when the client connects and a source outside the policy is dropped, in every family measured."""
    probes = []
    for family in families:
        client, target = (EXT_V4, HOST_EXT_V4) if family == 4 else (EXT_V6, HOST_EXT_V6)
        outsider = "198.51.100.12" if family == 4 else "2001:db8:100::12"
        probes += [(Probe("ext", target, PORT, src=client, timeout=2.0), "open"),
                   (Probe("ext", target, PORT, src=outsider, timeout=0.5), "timeout")]
    results = topo.probe_results([probe for probe, _ in probes])
    wrong = [f"{probe.src} got {result.outcome}" for (probe, expected), result in zip(probes, results)
             if result.outcome != expected]
    return "ok" if not wrong else "FAILED: " + ", ".join(wrong)


def measure(topo: Topology, families: Sequence[int], args: argparse.Namespace) -> dict[int, tuple[str, str, int]]:
    """Per family: (median conn/s, median connect µs, failures over all runs) as table text."""
    results: dict[int, tuple[str, str, int]] = {}
    for family in families:
        rates, connects, failures = [], [], 0
        for _ in range(args.repeat):
            rate, connect, failed = connection_loop(topo, family, args.duration)
            rates.append(rate)
            if connect is not None:
                connects.append(connect)
            failures += failed
        rate_text = f"{median(rates):,.0f}" if rates else "-"
        connect_median = median(connects)
        results[family] = (rate_text, "-" if connect_median is None else f"{connect_median * 1e6:.0f}", failures)
    return results


def _change(before: str, after: str) -> str:
    try:
        return f"{float(after.replace(',', '')) / float(before.replace(',', '')) - 1:+.0%}"
    except (ValueError, ZeroDivisionError):
        return "-"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=benchlib.positive_int, nargs="+", default=[1, 1000, 10000],
                        help="allowed sources per family, the client among them (default 1 1000 10000)")
    parser.add_argument("--family", choices=("4", "6", "both"), default="both", help="families measured")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--duration", type=float, default=2.0, help="seconds of connections per run (default 2)")
    parser.add_argument("--repeat", type=benchlib.positive_int, default=3, help="runs per measurement (median)")
    parser.add_argument("--ports", type=benchlib.positive_int, default=2,
                        help="published ports in the policy (default 2: 8080 and 443); the loop uses 8080")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds `dockerguard apply` may take")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds of discarded connections before the first measurement (default 10): an idle "
                             "machine speeds up over the first seconds, which would favour the rows measured last")
    parser.add_argument("--quick", action="store_true", help="N = 1 and 1,000, one 0.5 s run: a smoke run (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.sizes = sorted(set(args.sizes))
    families = [4, 6] if args.family == "both" else [int(args.family)]

    namespaces = benchlib.start("bench/packet_path.py: new-connection cost per number of allowed sources")
    cli = benchlib.dockerguard_cli()
    rows: list[list[object]] = []
    measured_at: dict[tuple[str, int], dict[int | None, tuple[str, str]]] = {}  # (conn/s, connect µs)
    facts: list[tuple[str, str]] = []
    notes: list[str] = []
    interrupted = False
    backends: list[str] = []
    try:
        backends, notes = benchlib.usable_backends(namespaces, args.backends)
        with namespaces.scoped() as netns:
            facts = benchlib.machine_facts(netns)
        if backends:
            benchlib.progress(f"warm-up: {args.warmup:g} s of connections, not reported")
            with Topology(flavour=DOCKER_FLAVOUR[backends[0]]) as topo:
                topo.write_sysctls("ext", {"net/ipv4/ip_local_port_range": "10000 65000"})
                connection_loop(topo, families[0], args.warmup)
        with tempfile.TemporaryDirectory(prefix="dgbench-") as tmp:
            for backend in backends:
                for size in [None, *args.sizes]:
                    label = "none (Docker's rules only)" if size is None else f"{size:,}"
                    with Topology(flavour=DOCKER_FLAVOUR[backend]) as topo:
                        topo.write_sysctls("ext", {"net/ipv4/ip_local_port_range": "10000 65000"})
                        verdict = "-"
                        if size is not None:
                            folder = Path(tempfile.mkdtemp(dir=tmp))
                            policy = folder / "policy.toml"
                            policy.write_text(benchlib.policy_toml(
                                policy_sources(size, families), benchlib.ports(args.ports),
                                str(folder / "no-docker.sock")))
                            benchlib.progress(f"{backend} N={size}: dockerguard apply")
                            applied = benchlib.run([*cli, "apply", "-c", str(policy), "--backend", backend],
                                                   netns=topo.ns("host"), timeout=args.timeout,
                                                   env={"DOCKERGUARD_STATE_DIR": str(folder / "state")})
                            if not applied.ok:
                                rows.append([backend, label, *["-"] * (2 * len(families)),
                                             applied.why("dockerguard apply")])
                                continue
                            verdict = policy_check(topo, families)
                        benchlib.progress(f"{backend} N={label}: {args.repeat} x {args.duration:g} s of connections")
                        measured = measure(topo, families, args)
                    cells: list[object] = []
                    for family in families:
                        rate, connect, failures = measured[family]
                        cells += [rate + (f" ({failures} failed)" if failures else ""), connect]
                        measured_at.setdefault((backend, family), {})[size] = (rate, connect)
                    rows.append([backend, label, *cells, verdict])
    except KeyboardInterrupt:
        interrupted = True
        benchlib.progress("interrupted: cleaning up, printing what was measured")
    finally:
        namespaces.close()

    headers = ["backend", "allowed sources per family"]
    for family in families:
        headers += [f"IPv{family} conn/s", f"IPv{family} connect p50 (µs)"]
    headers.append("policy check")
    out = ["## New connections through the rules (bench/packet_path.py)", "",
           f"Command: `{benchlib.command_line()}`" + (" (interrupted: partial results)" if interrupted else ""), "",
           benchlib.facts_table(facts), "",
           f"One client, one connection at a time, {args.duration:g} s per run, median of {args.repeat} run(s), "
           f"after {args.warmup:g} s of warm-up; connect p50: median time of connect(), the SYN's round trip "
           "through the host's rules. Rows were measured top to bottom.", "",
           benchlib.table(headers, rows), ""]
    if args.sizes and measured_at:
        first, last = args.sizes[0], args.sizes[-1]
        flat = []
        for (backend, family), by_size in measured_at.items():
            if first in by_size and last in by_size:
                (rate_low, connect_low), (rate_high, connect_high) = by_size[first], by_size[last]
                flat.append([backend, f"IPv{family}", rate_low, rate_high, _change(rate_low, rate_high),
                             connect_low, connect_high, _change(connect_low, connect_high)])
        out += [f"### Is it flat? N = {first:,} against N = {last:,}", "",
                "connect() time is the steadier signal: connections per second also carry the machine's noise.", "",
                benchlib.table(["backend", "family", f"conn/s at {first:,}", f"conn/s at {last:,}", "change",
                                f"connect p50 at {first:,} (µs)", f"connect p50 at {last:,} (µs)", "change"],
                               flat), ""]
    out += ["Notes:", "", *(f"- {note}" for note in notes),
            "- Generated sources (odd hosts of the documentation /24s, then of 10.0.0.0/8; 2001:db8:HHHH:LLLL::1) "
            "never carry a packet; the client is 198.51.100.10 / 2001:db8:100::10.", ""]
    print("\n".join(out))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
