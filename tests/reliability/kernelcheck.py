"""Rendered rulesets through the REAL parsers, inside a throw-away namespace: `nft -c -f -` for the nft
driver's persistent file, `ipset restore` of the sets file then `<flavour>-restore --test` for the
iptables text of each family and flavour. Nothing is committed but the ipsets, destroyed again after."""

from __future__ import annotations

from dataclasses import dataclass

from relenv import Netns

from dockerguard.backends import get_backend
from dockerguard.model import Family, Ruleset

RESTORE = {(flavour, family): f"{'ip6' if family is Family.IPV6 else 'ip'}tables-{flavour}-restore"
           for flavour in ("nft", "legacy") for family in Family}


@dataclass(frozen=True)
class Rendered:
    nft: str
    iptables: dict[Family, str]
    ipsets: str


def render_all(ruleset: Ruleset) -> Rendered:
    iptables = get_backend("iptables-nft")
    return Rendered(get_backend("nft").render_persistent(ruleset, Family.IPV4),
                    {family: iptables.render_persistent(ruleset, family) for family in Family},
                    iptables.render_persistent_sets(ruleset))


def kernel_refusals(netns: Netns, rendered: Rendered) -> list[str]:
    """What the kernel's tools refuse of `rendered` (empty: they accept every file)."""
    problems = []
    proc = netns.run(["nft", "-c", "-f", "-"], input=rendered.nft)
    if proc.returncode != 0:
        problems.append(f"nft -c: {proc.stderr.strip()}")
    try:
        if rendered.ipsets:
            proc = netns.run(["ipset", "restore", "-exist"], input=rendered.ipsets)
            if proc.returncode != 0:
                problems.append(f"ipset restore: {proc.stderr.strip()}")
        for (_flavour, family), tool in RESTORE.items():
            proc = netns.run([tool, "--test"], input=rendered.iptables[family])
            if proc.returncode != 0:
                problems.append(f"{tool} --test: {proc.stderr.strip()}")
    finally:
        if rendered.ipsets:
            netns.run(["ipset", "destroy"])
    return problems
