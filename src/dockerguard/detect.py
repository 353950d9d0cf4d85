"""`backend = "auto"`: find which firewall Docker uses on this host."""

from __future__ import annotations

from dataclasses import dataclass

from .backends import driver_class
from .errors import DetectionError


@dataclass(frozen=True)
class Detection:
    backend: str
    reason: str
    evidence: tuple[tuple[str, str], ...] = ()


def detect() -> Detection:
    probe = driver_class("nft").probe()
    if probe.available:
        return Detection("nft", "native nftables is usable here", (("nft", probe.reason),))
    raise DetectionError(f"no usable backend found: nft: {probe.reason}")
