"""A simulated Docker host driven through the dockerguard CLI, shared by the enforcement tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dockerguard.sandbox import HOST_EXT_V4, HOST_EXT_V6, Probe, Topology

# Published on the simulated host: tcp 8080->80, 443, 25, 8443, 9000, 9001; udp 5353->53.
POLICY = """\
external_interfaces = ["eth0"]
default = "{default}"

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


def ext(family: int, last: int, port: int, proto: str = "tcp") -> Probe:
    """A probe from the external client's address ending in `last` to a published host port."""
    dst, prefix = ADDRESSES[family]
    return Probe("ext", dst, port, proto, src=f"{prefix}{last}")


class Host:
    """One simulated Docker host with a dockerguard backend to drive through the CLI (its state directory
    comes from the environment: tests/conftest.py gives every test its own)."""

    def __init__(self, topo: Topology, backend: str, tmp: Path) -> None:
        self.topo = topo
        self.backend = backend
        self.tmp = tmp

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = self.topo.run("host", [sys.executable, "-m", "dockerguard", *args], check=False, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"dockerguard {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def apply(self, text: str) -> subprocess.CompletedProcess[str]:
        path = self.tmp / "policy.toml"
        path.write_text(text)
        return self.cli("apply", "-c", str(path), "--backend", self.backend)

    def expect(self, expectations: dict[Probe, bool]) -> None:
        """Run all probes at once; report every mismatch, not just the first."""
        probes = list(expectations)
        results = self.topo.probe_results(probes)
        wrong = [f"{p.proto} {p.src or p.src_ns} -> [{p.dst}]:{p.port}: expected "
                 f"{'open' if expectations[p] else 'blocked'}, got {r.outcome}"
                 for p, r in zip(probes, results) if r.ok != expectations[p]]
        assert not wrong, "\n".join(wrong)
