"""watch on the fake backend: drift repair, container changes, Docker going away, bad policy edits."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockerguard import Engine, PolicyError, load_policy
from dockerguard.backends.fake import FakeBackend
from dockerguard.docker import ContainerInfo, DockerUnavailable, PublishedPort
from dockerguard.watch import Watcher

POLICY = '[[allow]]\ncontainer = "web"\n'


class FakeDocker:
    """Scripted Docker: `script` is a list of events (dicts), None (idle tick) or "gone" (daemon stops)."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.running = [ContainerInfo("a", "web", (), (PublishedPort(80, "tcp", 8080, "0.0.0.0"),))]
        self.hooks: dict[int, Any] = {}  # position in script -> callable run before yielding it
        self.position = 0
        self.gone = False

    def containers(self) -> list[ContainerInfo]:
        if self.gone:
            raise DockerUnavailable("cannot reach Docker")
        return list(self.running)

    def events(self, idle_timeout: float) -> Iterator[dict[str, Any] | None]:
        while self.position < len(self.script):
            item = self.script[self.position]
            hook = self.hooks.get(self.position)
            self.position += 1
            if hook:
                hook()
            if item == "gone":
                self.gone = True
                raise DockerUnavailable("Docker closed the event stream")
            yield item
        raise DockerUnavailable("script ended")


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


def make(policy_file: Path, docker: FakeDocker) -> tuple[Watcher, FakeBackend]:
    fake = FakeBackend()
    engine = Engine(fake, docker=docker, state_dir=policy_file.parent / "state")  # type: ignore[arg-type]
    return Watcher(engine, lambda: load_policy(policy_file), docker, interval=0.01, max_backoff=0.02), fake


def installed(fake: FakeBackend) -> str:
    return " ".join(rule.description for rule in fake.kernel.rules) if fake.kernel else ""


def run_briefly(watcher: Watcher, seconds: float = 0.3) -> None:
    watcher.run(threading.Event(), until=time.monotonic() + seconds)


def test_repairs_flushed_rules_on_the_next_drift_check(policy_file: Path) -> None:
    docker = FakeDocker([None, None, None])
    watcher, fake = make(policy_file, docker)
    docker.hooks[1] = fake.remove  # someone flushes our rules between two checks
    run_briefly(watcher)
    assert fake.kernel is not None and "8080" in installed(fake)
    assert watcher.stats.repairs >= 2  # the start, then the repair


def test_recreated_container_gets_its_new_port(policy_file: Path) -> None:
    docker = FakeDocker([{"Type": "container", "Action": "start", "Actor": {"Attributes": {"name": "web"}}}])

    def recreate() -> None:
        docker.running = [ContainerInfo("b", "web", (), (PublishedPort(80, "tcp", 8081, "0.0.0.0"),))]

    docker.hooks[0] = recreate
    watcher, fake = make(policy_file, docker)
    run_briefly(watcher, 0.1)
    assert "8081" in installed(fake) and "8080" not in installed(fake)


def test_docker_going_away_keeps_the_rules_and_backs_off(policy_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    docker = FakeDocker(["gone"])
    watcher, fake = make(policy_file, docker)
    with caplog.at_level(logging.WARNING, logger="dockerguard.watch"):
        run_briefly(watcher, 0.2)
    assert fake.kernel is not None  # last good rules stay
    assert "reconnecting in" in caplog.text
    # while Docker is away the container list cannot be read: apply fails, rules are not removed
    assert watcher.stats.failures >= 1


def test_broken_policy_edit_keeps_the_installed_rules(policy_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    docker = FakeDocker([None, None])
    watcher, fake = make(policy_file, docker)
    docker.hooks[1] = lambda: policy_file.write_text("[[allow]]\nports = [0]\n")
    with caplog.at_level(logging.ERROR, logger="dockerguard.watch"):
        run_briefly(watcher, 1.0)  # 0.1 s was too short for an emulated guest to reach the second event
    assert "8080" in installed(fake)
    assert "port 0 out of range" in caplog.text
    with pytest.raises(PolicyError):
        load_policy(policy_file)
