"""Network primitives every layer shares (policy, model, backends): port ranges and address networks.

Kept apart from `policy` so the rule model and the drivers do not depend on the policy file's schema.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True, order=True)
class PortRange:
    first: int
    last: int

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
