"""Fixtures for the real-Docker end-to-end tests (tests/e2e/).

Every test here is marked ``e2e`` (``pytest -m "not e2e"`` skips them). They need root, Debian's
``docker.io`` and ``busybox-static``; without them the tests are skipped on a developer machine but
FAIL when ``CI`` is set, so a CI runner that lacks Docker cannot pass by skipping.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
# The tests import the harness as a top-level module; importlib import mode does not add this
# directory to sys.path by itself.
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from docker_host import FLAVOURS, DockerHost, missing_requirements  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: runs a real dockerd in network namespaces (needs root, docker.io)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items; mark only the ones in this directory.
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session", autouse=True)
def e2e_environment() -> None:
    """Skip (locally) or fail (under CI) every test here when the host cannot run them."""
    problems = missing_requirements()
    if problems:
        message = "e2e tests cannot run: " + "; ".join(problems)
        if _in_ci():
            pytest.fail(message + " (CI is set, so this is an error, not a skip)", pytrace=False)
        pytest.skip(message)


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    """Which iptables dockerd uses; override with parametrize("flavour", ...)."""
    return str(request.param)


@pytest.fixture
def docker_host(flavour: str) -> Iterator[DockerHost]:
    """A fresh Docker host with dockerd running (~0.6 s to build), torn down after the test."""
    with DockerHost(flavour) as host:
        yield host


@pytest.fixture
def make_docker_host() -> Iterator[Callable[..., DockerHost]]:
    """Factory: ``make_docker_host("iptables-nft", start=False)``; torn down after the test."""
    with ExitStack() as stack:

        def factory(flavour: str = "iptables-legacy", **kwargs: object) -> DockerHost:
            return stack.enter_context(DockerHost(flavour, **kwargs))  # type: ignore[arg-type]

        yield factory
