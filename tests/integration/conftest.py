"""Fixtures for the network-namespace integration tests (tests/integration/).

Every test here is marked ``integration``. They need root and a few tools; without
them the tests are skipped on a developer machine but FAIL when ``CI`` is set, so a
misconfigured CI runner cannot pass by skipping everything.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
# Tests import their helpers as top-level modules ("from harness import ...", "from guarded
# import ..."). pytest's default "prepend" import mode already puts this directory on sys.path;
# importlib mode does not, so make it explicit.
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from dockerguard.sandbox import FLAVOURS, Topology, can_create_netns, cleanup_stale_namespaces  # noqa: E402

REQUIRED_TOOLS: tuple[str, ...] = (
    "ip",
    "nft",
    "iptables-legacy-restore",
    "ip6tables-legacy-restore",
    "iptables-nft-restore",
    "ip6tables-nft-restore",
    "iptables-legacy-save",
    "iptables-nft-save",
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _environment_problems() -> list[str]:
    if os.geteuid() != 0:
        return ["not running as root (network namespaces and firewall rules need it)"]
    problems = [f"missing tool: {tool}" for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if not (sys.executable or shutil.which("python3")):
        problems.append("missing tool: python3")
    if not problems:
        reason = can_create_netns()
        if reason is not None:
            problems.append(f"cannot create a network namespace: {reason}")
    return problems


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items; only mark the ones in this directory.
    ours = [item for item in items if _HERE in Path(str(item.path)).resolve().parents]
    for item in ours:
        item.add_marker(pytest.mark.integration)
    # The VM matrix runs under software emulation (~5x slower): there, only the tests marked `distro`,
    # which exercise each backend's rule forms against the distro's kernel and userland.
    if os.environ.get("DOCKERGUARD_TEST_SCOPE") == "distro":
        skipped = [item for item in ours if item.get_closest_marker("distro") is None]
        if skipped:
            config.hook.pytest_deselected(items=skipped)
            items[:] = [item for item in items if item not in skipped]


@pytest.fixture(scope="session", autouse=True)
def integration_environment() -> None:
    """Skip (locally) or fail (under CI) every test here when the host cannot run them."""
    problems = _environment_problems()
    if problems:
        message = "integration tests cannot run: " + "; ".join(problems)
        if _in_ci():
            pytest.fail(message + " (CI is set, so this is an error, not a skip)", pytrace=False)
        pytest.skip(message)
    cleanup_stale_namespaces()  # leftovers of a run that was SIGKILLed


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    """Flavour of iptables the simulated Docker host uses; override with parametrize("flavour", ...)."""
    return str(request.param)


@pytest.fixture
def topology(flavour: str) -> Iterator[Topology]:
    """A fresh simulated Docker host (~0.15 s to build) for one test."""
    with Topology(flavour=flavour) as topo:
        yield topo


@pytest.fixture
def make_topology() -> Iterator[Callable[..., Topology]]:
    """Factory: ``make_topology("iptables-nft")`` returns an entered Topology, torn down after the test."""
    with ExitStack() as stack:

        def factory(flavour: str | None = "iptables-legacy", ready_timeout: float = 10.0) -> Topology:
            return stack.enter_context(Topology(flavour=flavour, ready_timeout=ready_timeout))

        yield factory
