"""Fixtures for the hostile-input suite (tests/reliability/).

Tests that need the kernel (a throw-away network namespace, the real nft/iptables parsers) use the
`netns` or `module_netns` fixtures: without root or the tools they are skipped on a developer machine but
FAIL when ``CI`` is set (the pattern of tests/integration/conftest.py). The helpers live in relenv.py.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # importlib import mode: make `import corpus` / `import relenv` work
    sys.path.insert(0, str(_HERE))

from relenv import XTABLES_LOCKFILE, Netns, throwaway_netns  # noqa: E402

REQUIRED_TOOLS = ("ip", "nft", "ipset", "iptables-nft-restore", "ip6tables-nft-restore", "iptables-legacy-restore",
                  "ip6tables-legacy-restore", "iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save",
                  "ip6tables-legacy-save")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _problems() -> list[str]:
    if os.geteuid() != 0:
        return ["not running as root (network namespaces need it)"]
    return [f"missing tool: {tool}" for tool in REQUIRED_TOOLS if shutil.which(tool) is None]


@pytest.fixture(scope="session")
def kernel_environment() -> None:
    problems = _problems()
    if problems:
        message = "kernel tests cannot run: " + "; ".join(problems)
        if _in_ci():
            pytest.fail(message + " (CI is set, so this is an error, not a skip)", pytrace=False)
        pytest.skip(message)


@pytest.fixture(autouse=True)
def _xtables_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XTABLES_LOCKFILE", XTABLES_LOCKFILE)


@pytest.fixture
def netns(kernel_environment: None) -> Iterator[Netns]:
    with throwaway_netns() as namespace:
        yield namespace


@pytest.fixture(scope="module")
def module_netns(kernel_environment: None) -> Iterator[Netns]:
    """One namespace for a module whose tests only parse (`nft -c`, `*-restore --test`): nothing stays."""
    with throwaway_netns() as namespace:
        yield namespace
