"""Driver registry. Drivers are imported lazily: `import iptc` alone costs 0.2 s."""

from __future__ import annotations

import importlib

from ..errors import UsageError
from .base import Backend, InstalledRule, InstalledState, PathFinding, ProbeResult, Rendered, Snapshot

# name -> "module:Class"; "auto" is resolved by dockerguard.detect.
DRIVERS: dict[str, str] = {
    "nft": "dockerguard.backends.nft:NftBackend",
    "iptables-legacy": "dockerguard.backends.iptables_legacy:IptablesLegacyBackend",
    "iptables-nft": "dockerguard.backends.iptables_nft:IptablesNftBackend",
}


def driver_class(name: str) -> type[Backend]:
    try:
        module_name, class_name = DRIVERS[name].split(":")
    except KeyError:
        raise UsageError(f"unknown backend {name!r} (expected one of: {', '.join(DRIVERS)})") from None
    cls: type[Backend] = getattr(importlib.import_module(module_name), class_name)
    return cls


def get_backend(name: str) -> Backend:
    return driver_class(name)()


def probe_all() -> list[ProbeResult]:
    return [driver_class(name).probe() for name in DRIVERS]


__all__ = [
    "DRIVERS",
    "Backend",
    "InstalledRule",
    "InstalledState",
    "PathFinding",
    "ProbeResult",
    "Rendered",
    "Snapshot",
    "driver_class",
    "get_backend",
    "probe_all",
]
