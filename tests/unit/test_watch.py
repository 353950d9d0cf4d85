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
from dockerguard.published import Discovery, from_containers
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
    assert watcher.stats.repairs >= 1  # the start is no repair (it put the policy in force), the flush is


def test_recreated_container_gets_its_new_port(policy_file: Path) -> None:
    docker = FakeDocker([{"Type": "container", "Action": "start", "Actor": {"Attributes": {"name": "web"}}}])

    def recreate() -> None:
        docker.running = [ContainerInfo("b", "web", (), (PublishedPort(80, "tcp", 8081, "0.0.0.0"),))]

    docker.hooks[0] = recreate
    watcher, fake = make(policy_file, docker)
    run_briefly(watcher, 0.1)
    assert "8081" in installed(fake) and "8080" not in installed(fake)


def test_docker_going_away_is_one_warning_while_it_lasts(policy_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    docker = FakeDocker(["gone"])
    watcher, fake = make(policy_file, docker)
    with caplog.at_level(logging.INFO, logger="dockerguard.watch"):
        run_briefly(watcher, 0.3)
    assert fake.kernel is not None  # last good rules stay
    # while Docker is away the container list cannot be read: checks fail, rules are not removed
    assert watcher.stats.failures >= 2
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "Docker closed the event stream" in warnings[0].getMessage(), caplog.text


def test_an_edited_file_changes_nothing_until_a_reload(policy_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    watcher, fake = make(policy_file, FakeDocker([]))
    assert watcher.reconcile("start")
    policy_file.write_text('[[allow]]\nports = [9090]\n')
    assert watcher.reconcile("drift check") and "8080" in installed(fake) and "9090" not in installed(fake)
    watcher.request_reload()
    with caplog.at_level(logging.INFO, logger="dockerguard.watch"):
        assert watcher.reconcile("drift check")
    assert "9090" in installed(fake) and "8080" not in installed(fake)
    newest = watcher.engine.state.history()[-1]
    assert newest.origin is not None and newest.origin.reason == "reload"
    assert "reload: applied" in caplog.text


def test_a_broken_reload_is_one_error_and_the_running_policy_stays(policy_file: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    watcher, fake = make(policy_file, FakeDocker([]))
    watcher.reconcile("start")
    policy_file.write_text("[[allow]]\nports = [0]\n")
    watcher.request_reload()
    with caplog.at_level(logging.INFO, logger="dockerguard.watch"):
        assert watcher.reconcile("drift check")
        fake.remove()  # and the running policy is still what is repaired
        assert watcher.reconcile("drift check")
    assert "8080" in installed(fake)
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "port 0 out of range" in errors[0].getMessage()
    with pytest.raises(PolicyError):
        load_policy(policy_file)


def test_repairs_are_logged_with_what_differed_and_are_not_history(policy_file: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    watcher, fake = make(policy_file, FakeDocker([]))
    watcher.reconcile("start")
    entries = watcher.engine.state.history_numbers()
    for _ in range(3):
        fake.remove()
        with caplog.at_level(logging.INFO, logger="dockerguard.watch"):
            watcher.reconcile("drift check")
    assert watcher.engine.state.history_numbers() == entries and watcher.stats.repairs == 3
    drift = [record for record in caplog.records if "differed" in record.getMessage()]
    assert drift and all(record.levelno == logging.WARNING for record in drift)
    assert "+ rule external: allow tcp ipv4" in drift[0].getMessage()


def api_discovery(containers: Any) -> Discovery:
    """What published.discover says when only the Docker API knows the ports (unit tests read no kernel)."""
    listed = containers()
    owners = {(port.proto, port.host_port): (container.name,) for container in listed for port in container.ports}
    return Discovery(frozenset(from_containers(listed)), owners=tuple(sorted(owners.items())))


def test_a_new_published_port_is_news_naming_its_container(policy_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    docker = FakeDocker([])
    engine = Engine(FakeBackend(), docker=docker, state_dir=policy_file.parent / "state",  # type: ignore[arg-type]
                    discover=api_discovery)
    watcher = Watcher(engine, lambda: load_policy(policy_file), docker, interval=0.01)
    watcher.reconcile("start")
    docker.running.append(ContainerInfo("c", "metrics", (), (PublishedPort(9090, "tcp", 9090, "0.0.0.0"),)))
    with caplog.at_level(logging.INFO, logger="dockerguard.watch"):
        watcher.reconcile("docker container start metrics")
    news = [record for record in caplog.records if "published by" in record.getMessage()]
    assert [(record.levelno, record.getMessage()) for record in news] == [
        (logging.INFO, "+9090/tcp published by metrics")]


def test_watch_takes_up_a_rollback_instead_of_fighting_it(policy_file: Path, tmp_path: Path) -> None:
    watcher, fake = make(policy_file, FakeDocker([]))
    watcher.reconcile("start")
    policy_file.write_text('[[allow]]\nports = [9090]\n')
    watcher.request_reload()
    watcher.reconcile("drift check")
    assert "9090" in installed(fake)
    operator = Engine(fake, docker=watcher.docker, state_dir=tmp_path / "state")  # type: ignore[arg-type]
    operator.rollback()  # another dockerguard (the CLI) undoes the reload
    assert "8080" in installed(fake)
    watcher.reconcile("drift check")
    assert "8080" in installed(fake) and "9090" not in installed(fake)
    assert watcher.policy is not None and watcher.policy.allow[0].containers is not None


def test_after_a_remove_watch_waits_for_a_reload(policy_file: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    watcher, fake = make(policy_file, FakeDocker([]))
    watcher.reconcile("start")
    Engine(fake, state_dir=tmp_path / "state").remove()
    with caplog.at_level(logging.WARNING, logger="dockerguard.watch"):
        for _ in range(3):
            assert watcher.reconcile("drift check")
    assert fake.kernel is None
    assert len([r for r in caplog.records if "watch enforces nothing" in r.getMessage()]) == 1
    watcher.request_reload()
    watcher.reconcile("drift check")
    assert "8080" in installed(fake)


def test_health_is_written_for_status_and_metrics(policy_file: Path) -> None:
    watcher, fake = make(policy_file, FakeDocker([]))
    watcher.reconcile("start")
    fake.remove()
    watcher.reconcile("drift check")
    health = watcher.engine.status().watch
    assert health is not None and health["running"] and not health["stale"]
    assert (health["state"], health["checks"], health["repairs"], health["failures"]) == ("enforcing", 2, 1, 0)
    assert health["last_repair"] is not None and health["policy"] == load_policy(policy_file).source_digest


def test_a_rollback_between_watch_s_look_and_its_repair_is_not_overwritten(
        policy_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    watcher, fake = make(policy_file, FakeDocker([]))
    watcher.reconcile("start")
    policy_file.write_text('[[allow]]\nports = [9090]\n')
    watcher.request_reload()
    watcher.reconcile("drift check")
    operator = Engine(fake, state_dir=tmp_path / "state")
    follow = Watcher._follow_the_policy_in_force

    def then_rollback(self: Watcher, starting: bool) -> bool:
        followed = follow(self, starting)  # watch still sees its own policy in force...
        operator.rollback()  # ...when the operator's rollback lands
        fake.remove()  # and something else flushes: a repair would now put the wrong policy back
        return followed

    monkeypatch.setattr(Watcher, "_follow_the_policy_in_force", then_rollback)
    watcher.reconcile("drift check")
    assert fake.kernel is None  # nothing applied: not the policy the operator just rolled back
    monkeypatch.setattr(Watcher, "_follow_the_policy_in_force", follow)
    watcher.reconcile("drift check")
    assert "8080" in installed(fake) and "9090" not in installed(fake)
