"""Warnings about a valid policy that probably does not do what its author meant (check, plan and apply
print them as `warning: ...` on stderr; never fatal). Pure but for the interface lookup, which asks the
kernel of the current network namespace."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

from .net import PortRange
from .policy import Allow, Policy, SetRef


def interface_names() -> set[str]:
    """The network interfaces of this process's network namespace."""
    try:
        return {name for _, name in socket.if_nameindex()}
    except OSError:
        return set()


def policy_warnings(policy: Policy, interfaces: Callable[[], set[str]] | None = None) -> list[str]:
    return interface_warnings(policy.external_interfaces, interfaces) + entry_warnings(policy)


def interface_warnings(names: Sequence[str], interfaces: Callable[[], set[str]] | None = None) -> list[str]:
    """The part that depends on the host: asked again whenever it is printed (the engine's no-op path
    keeps the policy's names and `entry_warnings`, not the policy)."""
    present = (interfaces or interface_names)()  # looked up now: tests replace the module's function
    # No wildcards to expand: the policy refuses "eth+" and "eth*" (net.IFNAME).
    return [f"external interface {name!r} does not exist on this host (network namespace): "
            "nothing entering through it is judged until it appears" for name in names if name not in present]


def entry_warnings(policy: Policy) -> list[str]:
    """The part that depends on the policy alone."""
    warnings = []
    for number, entry in enumerate(policy.allow, start=1):
        if _opens_everything(entry):
            warnings.append(f"allow entry {number}{_label(entry)} lets anyone reach every published "
                            f"{entry.proto} port: the policy filters nothing there")
    if not policy.allow:
        warnings.append(f"no [[allow]] entry and default {policy.default}: every published port is closed to "
                        "everyone from outside")
    if policy.host is not None and not policy.host.allow:
        passes = "established connections" + (" and ping" if policy.host.icmp_echo else "")
        warnings.append(f"[host] without [[host.allow]] and default {policy.host.default}: from outside, only "
                        f"{passes} reach the host itself (no SSH)")
    return warnings


def _label(entry: Allow) -> str:
    return f" ({entry.comment})" if entry.comment else ""


def _opens_everything(entry: Allow) -> bool:
    """Sources include everyone and the ports cover 1-65535 (container entries: not known here)."""
    if entry.containers is not None or not _covers_all(entry.ports):  # first: sources may be 100,000
        return False
    return any(not isinstance(source, SetRef) and source.prefixlen == 0 for source in entry.sources)


def _covers_all(ports: Sequence[PortRange]) -> bool:
    covered = 1
    for span in sorted(ports, key=lambda span: span.first):
        if span.first > covered:
            return False
        covered = max(covered, span.last + 1)
    return covered > 65535
