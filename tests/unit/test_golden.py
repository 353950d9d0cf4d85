"""Golden files: every example policy rendered by every backend, compared byte for byte with
tests/unit/golden/<backend>/<example>.txt (regenerate with DOCKERGUARD_UPDATE_GOLDEN=1 and review the diff).

Rendering reads nothing from the kernel here: the iptables drivers assume their baseline layout and
container entries resolve against a fixed list of running containers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dockerguard import compile_policy, load_policy
from dockerguard.backends import DRIVERS, Backend, driver_class
from dockerguard.backends.iptables.driver import IptablesDriver
from dockerguard.containers import resolve_containers
from dockerguard.docker import ContainerInfo, PublishedPort

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))
GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLE_CONTAINERS = [
    ContainerInfo("a1", "web", (), (PublishedPort(80, "tcp", 8080, "0.0.0.0"),)),
    ContainerInfo("b2", "shop", (("dockerguard.public", "true"),),
                  (PublishedPort(443, "tcp", 8443, "0.0.0.0"), PublishedPort(9090, "tcp", 9090, "0.0.0.0"))),
]


# What the examples' host publishes: their docker-proxy path (INPUT) is judged too.
EXAMPLE_PUBLISHED = {("tcp", 8080), ("tcp", 8443), ("tcp", 9090), ("tcp", 9000), ("tcp", 9001), ("udp", 5353)}


def render_example(backend: str, example: Path) -> str:
    policy = load_policy(example)
    if policy.uses_containers:  # render against a fixed set of running containers
        policy, _ = resolve_containers(policy, EXAMPLE_CONTAINERS)
    cls = driver_class(backend)
    driver: Backend = cls(live=False) if issubclass(cls, IptablesDriver) else cls()
    return driver.render(compile_policy(policy, EXAMPLE_PUBLISHED)).text


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.stem for path in EXAMPLES])
@pytest.mark.parametrize("backend", list(DRIVERS))
def test_golden_render(backend: str, example: Path) -> None:
    text = render_example(backend, example)
    golden = GOLDEN / backend / f"{example.stem}.txt"
    if os.environ.get("DOCKERGUARD_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}: run with DOCKERGUARD_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"{golden} differs: review, then regenerate with DOCKERGUARD_UPDATE_GOLDEN=1"
