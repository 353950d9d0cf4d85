"""iptables-nft driver: one `iptables-nft-restore --noflush` transaction per family (IPv4, then IPv6)."""

from __future__ import annotations

from ...model import Family
from ..base import ProbeResult
from ..common import run_tool
from .driver import IptablesDriver, ipset_detail, probe_binaries


class IptablesNftBackend(IptablesDriver):
    name = "iptables-nft"
    flavour = "nft"

    @classmethod
    def probe(cls) -> ProbeResult:
        failed = probe_binaries(cls, ("", "-save", "-restore"))
        if failed is not None:
            return failed
        version = run_tool([cls.binary(Family.IPV4), "--version"]).stdout.strip()
        if "nf_tables" not in version:
            return ProbeResult(cls.name, False, f"{cls.binary(Family.IPV4)} is not the nf_tables flavour "
                                                f"({version or 'no version'})")
        details = (("version", version), ("wait flag", "yes" if cls._wait_args() else "no"), ipset_detail())
        return ProbeResult(cls.name, True, version, details)

    def _send(self, family: Family, text: str) -> None:
        self._restore(family, text)
