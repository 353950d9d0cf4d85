"""100,000 entries are a valid policy, not a hostile one: `check` takes them and `apply` installs them (in a
throw-away namespace), inline in the policy file and as a netset sources_file, within a bounded time."""

from __future__ import annotations

import ipaddress
import subprocess
import time
from pathlib import Path

import pytest
from relenv import Netns, dockerguard_argv

ENTRIES = 100_000
BASE = int(ipaddress.IPv6Address("2001:db8::"))  # documentation addresses only: 2001:db8:0:N::1


def addresses() -> list[str]:
    return [str(ipaddress.IPv6Address(BASE + (index << 64) + 1)) for index in range(ENTRIES)]


def write_policy(directory: Path, inline: bool) -> Path:
    policy = directory / "policy.toml"
    if inline:
        listed = ", ".join(f'"{address}"' for address in addresses())
        policy.write_text(f'external_interfaces = ["eth0"]\n[[allow]]\nports = [8080]\nsources = [{listed}]\n')
    else:
        (directory / "big.netset").write_text("# 100k\n" + "\n".join(addresses()) + "\n")
        policy.write_text('external_interfaces = ["eth0"]\n[[deny]]\nsources_file = "big.netset"\n')
    return policy


@pytest.mark.parametrize(("inline", "backend"), [(True, "nft"), (False, "iptables-legacy")],
                         ids=["inline-sources-nft", "sources-file-iptables-legacy"])
def test_100k_entries_check_and_apply(inline: bool, backend: str, tmp_path: Path, netns: Netns) -> None:
    policy = write_policy(tmp_path, inline)
    started = time.monotonic()
    check = subprocess.run([*dockerguard_argv(), "check", str(policy)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    applied = netns.run([*dockerguard_argv(), "apply", "-c", str(policy), "--backend", backend], timeout=120)
    assert applied.returncode == 0, applied.stderr
    assert "applied ruleset" in applied.stdout
    assert time.monotonic() - started < 120
    if backend == "nft":
        # One set holds them all (a factored source set, or the (source . port) set): whichever it is.
        listed = netns.run(["nft", "list", "table", "inet", "dockerguard"], check=True).stdout
        assert listed.count("2001:db8:") >= ENTRIES
    else:
        saved = netns.run(["ip6tables-legacy-save"], check=True).stdout
        assert "-A DOCKERGUARD -m set --match-set dockerguard-" in saved
        assert netns.run(["ipset", "list", "-t"], check=True).stdout.count(f"Number of entries: {ENTRIES}") == 1
