"""The backend registry: every driver's name, checked here and nowhere else.

Drivers are imported lazily (`import iptc` alone costs 0.2 s): `DRIVERS` maps a name to "module:Class".
"auto" is not a driver: `dockerguard.detect` resolves it to one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from .base import (
        Backend,
        Ban,
        Exposure,
        InstalledRule,
        InstalledState,
        PathFinding,
        ProbeResult,
        Rendered,
        Snapshot,
    )

# The base classes pull in the rule model (~50 ms): `--help` and `check` only need the names below, so
# they are attributes loaded on first use (PEP 562).
_BASE_NAMES = frozenset({"Backend", "Ban", "Exposure", "InstalledRule", "InstalledState", "PathFinding",
                         "ProbeResult", "Rendered", "Snapshot"})


def __getattr__(name: str) -> Any:
    if name in _BASE_NAMES:
        return getattr(importlib.import_module(".base", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

DRIVERS: dict[str, str] = {
    "nft": "dockerguard.backends.nft.driver:NftBackend",
    "iptables-legacy": "dockerguard.backends.iptables.legacy:IptablesLegacyBackend",
    "iptables-nft": "dockerguard.backends.iptables.nft:IptablesNftBackend",
}
AUTO = "auto"
BACKEND_CHOICES: tuple[str, ...] = (AUTO, *DRIVERS)


def check_backend_name(name: object, *, allow_auto: bool = True) -> str:
    """`name` if it names a driver (or "auto"), else UsageError listing the choices."""
    choices = BACKEND_CHOICES if allow_auto else tuple(DRIVERS)
    if not isinstance(name, str) or name not in choices:
        raise UsageError(f"unknown backend {name!r} (expected one of: {', '.join(choices)})")
    return name


def driver_class(name: str) -> type[Backend]:
    module_name, class_name = DRIVERS[check_backend_name(name, allow_auto=False)].split(":")
    cls: type[Backend] = getattr(importlib.import_module(module_name), class_name)
    return cls


def get_backend(name: str) -> Backend:
    return driver_class(name)()


def probe_all() -> list[ProbeResult]:
    return [driver_class(name).probe() for name in DRIVERS]


__all__ = [
    "AUTO",
    "BACKEND_CHOICES",
    "DRIVERS",
    "Backend",
    "Ban",
    "Exposure",
    "InstalledRule",
    "InstalledState",
    "PathFinding",
    "ProbeResult",
    "Rendered",
    "Snapshot",
    "check_backend_name",
    "driver_class",
    "get_backend",
    "probe_all",
]
