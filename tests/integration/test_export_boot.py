"""Persistence files load on a fresh boot and equal what `apply` installs (status reports no drift)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockerguard.backends import DRIVERS

pytestmark = pytest.mark.distro  # runs in the VM matrix on every distro kernel

CLASSIC = Path(__file__).resolve().parents[2] / "examples" / "classic.toml"


@pytest.fixture
def fresh_netns() -> Iterator[str]:
    name = f"dgboot{os.getpid()}-{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def dockerguard(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "dockerguard", *args],
                          capture_output=True, text=True, timeout=60, check=check)


@pytest.mark.parametrize("backend", [b for b in ("iptables-nft", "iptables-legacy") if b in DRIVERS])
def test_iptables_restore_export_is_a_complete_boot_file(fresh_netns: str, backend: str) -> None:
    flavour = backend.split("-", 1)[1]
    # as netfilter-persistent does at boot: ipset-persistent's sets first (the bans, large source groups)
    sets = dockerguard(fresh_netns, "export", "-f", "ipset", "-c", str(CLASSIC)).stdout
    assert "create dockerguard-ban4 hash:net family inet timeout 0" in sets
    subprocess.run(["ip", "netns", "exec", fresh_netns, "ipset", "restore"], input=sets, text=True, check=True)
    for family, tool in ((4, f"iptables-{flavour}-restore"), (6, f"ip6tables-{flavour}-restore")):
        text = dockerguard(fresh_netns, "export", "-f", "iptables-restore", "--family", str(family),
                           "-c", str(CLASSIC)).stdout
        # as iptables-persistent does at boot: a plain restore (it flushes the tables it names)
        subprocess.run(["ip", "netns", "exec", fresh_netns, tool, "-w", "5"], input=text, text=True, check=True)
    status = dockerguard(fresh_netns, "status", "--backend", backend, "-c", str(CLASSIC), check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "in sync" in status.stdout


def test_nft_export_is_what_apply_installs(fresh_netns: str, tmp_path: Path) -> None:
    exported = tmp_path / "dockerguard.nft"  # a file, as nftables.service loads it
    exported.write_text(dockerguard(fresh_netns, "export", "-f", "nft", "-c", str(CLASSIC)).stdout)
    subprocess.run(["ip", "netns", "exec", fresh_netns, "nft", "-f", str(exported)], check=True)
    status = dockerguard(fresh_netns, "status", "--backend", "nft", "-c", str(CLASSIC), check=False)
    assert status.returncode == 0, status.stdout + status.stderr
