"""`dockerguard watch`: keep the installed rules equal to the policy while Docker and admins change things.

It re-applies (atomically, through the engine, so an unchanged ruleset costs one read-back) when:
- Docker reports a container or network event (a recreated container may publish other ports),
- the periodic drift check finds the kernel differs (someone flushed the rules, dockerd restarted),
- the Docker event stream comes back after the daemon went away.
Failures never remove rules: the last good ruleset stays in the kernel, and retries back off (bounded).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .docker import ContainerInfo, DockerUnavailable
from .engine import Engine
from .errors import DockerguardError
from .policy import Policy

log = logging.getLogger("dockerguard.watch")


class EventSource(Protocol):
    def containers(self) -> list[ContainerInfo]: ...

    def events(self, idle_timeout: float) -> Iterator[dict[str, Any] | None]: ...


@dataclass
class WatchStats:
    reconciles: int = 0
    repairs: int = 0  # reconciles that had to change the kernel
    failures: int = 0


class Watcher:
    def __init__(self, engine: Engine, load_policy: Callable[[], Policy], docker: EventSource | None, *,
                 interval: float = 5.0, max_backoff: float = 60.0, policy_path: str | None = None,
                 on_check: Callable[[bool, str], None] | None = None) -> None:
        self.engine = engine
        self.load_policy = load_policy
        self.policy_path = policy_path  # given: checks take the engine's cheap path for an unchanged file
        self.docker = docker
        self.interval = interval
        self.max_backoff = max_backoff
        self.stats = WatchStats()
        # after every check: (policy in place?, one line on the state) -- systemd's READY/STATUS/WATCHDOG
        self.on_check = on_check or (lambda ok, status: None)
        self._backoff = min(1.0, max_backoff)

    def reconcile(self, reason: str) -> bool:
        """Apply the policy if the kernel differs from it; True when it is in place afterwards."""
        self.stats.reconciles += 1
        try:
            # guard=False: re-installing the policy being watched, nobody is there to confirm it.
            result = (self.engine.apply_file(self.policy_path, guard=False) if self.policy_path is not None
                      else self.engine.apply(self.load_policy(), guard=False))
        except DockerguardError as exc:
            self.stats.failures += 1
            log.error("%s: could not apply, the installed rules stay as they are: %s", reason, exc)
            self.on_check(False, f"{reason}: could not apply ({str(exc).splitlines()[0]}); the installed rules stay")
            return False
        if result.changed:
            self.stats.repairs += 1
            log.warning("%s: rules differed from the policy; re-applied ruleset %s with %s",
                        reason, result.digest, result.backend)
            for resolution in self.engine.resolutions:
                log.info("  %s", resolution.describe())
        else:
            log.debug("%s: rules in place (ruleset %s)", reason, result.digest)
        self.on_check(True, f"ruleset {result.digest} in place ({result.backend}); since start {self.stats.repairs} "
                            f"repairs, {self.stats.failures} failures")
        return True

    def run(self, stop: threading.Event, *, until: float | None = None) -> WatchStats:
        """Watch until `stop` is set (or the monotonic deadline `until` passes)."""

        def done() -> bool:
            return stop.is_set() or (until is not None and time.monotonic() >= until)

        reason = "start"
        while not done():
            healthy = self.reconcile(reason)
            if self.docker is None:
                stop.wait(self.interval)
                reason = "drift check"
                continue
            try:
                for event in self.docker.events(idle_timeout=self.interval):
                    if done():
                        break
                    if event is None:
                        self.reconcile("drift check")
                    else:
                        self.reconcile(_describe(event))
                    self._backoff = min(1.0, self.max_backoff)
            except DockerUnavailable as exc:
                wait = self._next_backoff()
                log.warning("%s; checking the rules every %g s meanwhile, reconnecting in %g s",
                            exc, self.interval, wait)
                self._poll(stop, wait, done)
                reason = "Docker is back" if healthy else "retry"
        log.info("watch stopped after %d checks, %d repairs, %d failures",
                 self.stats.reconciles, self.stats.repairs, self.stats.failures)
        return self.stats

    def _poll(self, stop: threading.Event, seconds: float, done: Callable[[], bool]) -> None:
        """Keep repairing drift while Docker is away: its rules (and ours) may be changing right now."""
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            stop.wait(min(self.interval, max(0.0, deadline - time.monotonic())))
            if not done() and time.monotonic() < deadline:
                self.reconcile("drift check")

    def _next_backoff(self) -> float:
        wait = self._backoff
        self._backoff = min(self._backoff * 2, self.max_backoff)
        return wait


def _describe(event: dict[str, Any]) -> str:
    actor = event.get("Actor") or {}
    name = (actor.get("Attributes") or {}).get("name") or str(actor.get("ID", "?"))[:12]
    return f"docker {event.get('Type', '?')} {event.get('Action', '?')} {name}"
