"""Fixtures for the real-Docker end-to-end tests (tests/e2e/).

Every test here is marked ``e2e`` (``pytest -m "not e2e"`` skips them). They need root, Debian's
``docker.io`` and ``busybox-static``, and for Docker 28 and 29 the engines the prepare script makes (see
docker_host); without them the tests are skipped on a developer machine but FAIL when ``CI`` is set, so a
CI runner that lacks Docker cannot pass by skipping.
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

from docker_host import HOST_MODES, SYSTEM_ENGINE, DockerHost, missing_engine, missing_requirements  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: runs a real dockerd in network namespaces (needs root, docker.io)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items; mark only the ones in this directory.
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _cannot_run(message: str) -> None:
    if _in_ci():
        pytest.fail(message + " (CI is set, so this is an error, not a skip)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session", autouse=True)
def e2e_environment() -> None:
    """Skip (locally) or fail (under CI) every test here when the host cannot run them."""
    problems = missing_requirements()
    if problems:
        _cannot_run("e2e tests cannot run: " + "; ".join(problems))


@pytest.fixture
def require_engine() -> Callable[[str], None]:
    """``require_engine("28")``: skip (locally) or fail (under CI) unless that engine is prepared here."""
    def require(engine: str) -> None:
        problem = missing_engine(engine)
        if problem:
            _cannot_run(f"engine not available: {problem}")
    return require


@pytest.fixture(params=HOST_MODES, ids=[f"docker{engine}-{flavour}" for engine, flavour in HOST_MODES])
def host_mode(request: pytest.FixtureRequest, require_engine: Callable[[str], None]) -> tuple[str, str]:
    """(engine, firewall mode) of every Docker host kind; override with parametrize("host_mode", ...)."""
    engine, flavour = request.param
    require_engine(engine)
    return str(engine), str(flavour)


@pytest.fixture
def docker_host(host_mode: tuple[str, str]) -> Iterator[DockerHost]:
    """A fresh Docker host with dockerd running (~1 s to build), torn down after the test."""
    engine, flavour = host_mode
    with DockerHost(flavour, engine=engine) as host:
        yield host


@pytest.fixture
def make_docker_host(require_engine: Callable[[str], None]) -> Iterator[Callable[..., DockerHost]]:
    """Factory: ``make_docker_host("iptables-nft", engine="28", start=False)``; torn down after the test."""
    with ExitStack() as stack:

        def factory(flavour: str = "iptables-legacy", engine: str = SYSTEM_ENGINE, **kwargs: object) -> DockerHost:
            require_engine(engine)
            return stack.enter_context(DockerHost(flavour, engine=engine, **kwargs))  # type: ignore[arg-type]

        yield factory
