"""`dockerguard watch`: keep the operator's policy in the kernel while Docker and others change things.

Watch runs the policy it loaded and verified (the file's bytes and its list files): editing the file changes
nothing until SIGHUP (`systemctl reload`), which validates the file again and applies it as an operator
change (the lock-out guard and its confirmation window included), or logs one error and keeps the running
policy when it is broken. In between, it keeps its policy in place (a repair, not a history entry) when:
- Docker reports a container or network event (a recreated container may publish other ports),
- the periodic drift check finds the kernel differs (someone flushed or changed the rules, dockerd restarted),
- the Docker event stream comes back after the daemon went away.
When another dockerguard changes the policy in force (`apply`, `rollback`, `remove`, a confirmation that ran
out), watch takes that one up (current.json) instead of fighting it; after a `remove` it waits for a reload.
Failures never remove rules: the last good ruleset stays in the kernel, and retries back off (bounded).
What it did and how it is doing is in the state directory's watch.json (`status`, `metrics`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .docker import ContainerInfo, DockerUnavailable
from .engine import ApplyResult, Engine
from .errors import DockerguardError, PendingConfirmationError, SupersededError
from .policy import Policy

log = logging.getLogger("dockerguard.watch")

TICK = 0.5  # at most this long between looks at a requested reload, whatever the drift interval


class EventSource(Protocol):
    def containers(self) -> list[ContainerInfo]: ...

    def events(self, idle_timeout: float) -> Iterator[dict[str, Any] | None]: ...


@dataclass
class WatchStats:
    reconciles: int = 0
    repairs: int = 0  # reconciles that had to change the kernel
    failures: int = 0


class Watcher:
    """`policy`: the policy loaded (and validated) at start; `load_policy` reads the file again on reload.
    `on_check(ok, status)` hears every check (systemd's READY/STATUS/WATCHDOG)."""

    def __init__(self, engine: Engine, load_policy: Callable[[], Policy], docker: EventSource | None, *,
                 interval: float = 5.0, max_backoff: float = 60.0, policy: Policy | None = None,
                 on_check: Callable[[bool, str], None] | None = None) -> None:
        self.engine = engine
        self.load_policy = load_policy
        self.policy: Policy | None = policy
        self.docker = docker
        self.interval = interval
        self.max_backoff = max_backoff
        self.stats = WatchStats()
        self.on_check = on_check or (lambda ok, status: None)
        self._backoff = min(1.0, max_backoff)
        self._reload = threading.Event()
        self._said: dict[str, str] = {}  # what was logged last per topic: a condition is logged once
        self._ports: frozenset[tuple[str, int]] | None = None
        self._ruleset: str | None = None
        self._health: dict[str, Any] = {"pid": os.getpid(), "started": time.time(), "interval": interval,
                                        "state": "starting", "checks": 0, "repairs": 0, "failures": 0,
                                        "policy": None, "message": None, "last_check": None, "last_success": None,
                                        "last_repair": None, "last_failure": None}

    # -- what the signal handler and the CLI call --------------------------------------------------
    def request_reload(self) -> None:
        """SIGHUP: read the policy file again at the next tick (never from within the handler)."""
        self._reload.set()

    # -- one check ---------------------------------------------------------------------------------
    def reconcile(self, reason: str) -> bool:
        """Reload if asked; take up a policy another dockerguard put in force; keep the policy in place.
        True when it is in place (or deliberately not enforced) afterwards."""
        self.stats.reconciles += 1
        if self._reload.is_set():
            self._reload.clear()
            self._reloaded()
        try:
            if self.policy is None:  # not given at start: read it now (a broken file stops watch from starting)
                self.policy = self.load_policy()
            if not self._follow_the_policy_in_force(starting=reason == "start"):
                return self._checked(True, "idle", self._said.get("idle", "no policy in force"))
            if self.engine.state.pending() is not None:
                self._once("pending", logging.INFO, "a confirmation is pending (`dockerguard confirm`): repairs "
                                                    "wait until it is confirmed or rolled back")
                return self._checked(True, "waiting for confirmation", "waiting for `dockerguard confirm`")
            self._said.pop("pending", None)
            assert self.policy is not None
            if reason == "start" and not self.engine.in_force(self.policy):  # the file changed while watch was away
                result = self._operator_apply(self.policy, "watch start")
                if result is None:
                    return self._checked(False, "failing", self._said.get("apply", "could not apply"))
                return self._checked(True, "enforcing", f"ruleset {result.digest} in place ({result.backend})")
            result = self.engine.keep(self.policy)
        except SupersededError:  # another dockerguard changed the policy in force between our look and the apply:
            # the kernel holds what it put there; the next check takes that policy up
            return self._checked(True, "enforcing", "the policy in force changed meanwhile; taken up next")
        except DockerUnavailable as exc:  # container entries cannot be resolved: the rules stay as they are
            self.stats.failures += 1
            self._once("docker", logging.WARNING, f"{exc}; the installed rules stay until Docker answers", key="away")
            return self._checked(False, "failing", f"{reason}: Docker is not answering; the installed rules stay")
        except DockerguardError as exc:
            self.stats.failures += 1
            first = str(exc).splitlines()[0]
            self._once("apply", logging.ERROR, f"{reason}: could not apply, the installed rules stay as they are: "
                                               f"{exc}", key=first)
            return self._checked(False, "failing", f"{reason}: could not apply ({first}); the installed rules stay")
        if self._said.pop("apply", None) is not None:
            log.info("%s: the policy is in place again (ruleset %s)", reason, result.digest)
        self._report(reason, result)
        return self._checked(True, "enforcing", f"ruleset {result.digest} in place ({result.backend}); since start "
                                                f"{self.stats.repairs} repairs, {self.stats.failures} failures")

    def _reloaded(self) -> None:
        """SIGHUP: the file, validated and applied as an operator change; broken: one error, nothing changes."""
        try:
            policy = self.load_policy()
        except DockerguardError as exc:
            log.error("reload: the policy file is not valid, the running policy stays: %s", exc)
            return
        if self.policy is not None and self.engine.in_force(policy):
            self.policy = policy
            log.info("reload: the policy file is the one in force (%s)", (policy.source_digest or "?")[:12])
            return
        if self._operator_apply(policy, "reload") is not None:
            self.policy = policy

    def _operator_apply(self, policy: Policy, reason: str) -> ApplyResult | None:
        """An operator change (reload, or a start with a policy not in force): the lock-out guard and its
        confirmation window apply; refused or failed, the running policy stays."""
        try:
            result = self.engine.apply(policy, guard=True, reason=reason)
        except PendingConfirmationError as exc:
            log.error("%s: not applied, the running policy stays: %s", reason, exc)
            return None
        except DockerguardError as exc:
            self.stats.failures += 1
            log.error("%s: not applied, the running policy stays: %s", reason, exc)
            self._said["apply"] = str(exc)
            return None
        self.policy = policy
        if result.changed:
            log.info("%s: applied %s (ruleset %s, +%d -%d)%s", reason, policy.path, result.digest, result.added,
                     result.removed, f"; history entry {result.history_entry}" if result.history_entry else "")
            for change in result.changes:
                log.info("  %s", change)
        else:
            log.info("%s: %s is installed already (ruleset %s)", reason, policy.path, result.digest)
        if result.pending is not None:
            left = result.pending.deadline - time.time()
            log.warning("%s: the [host] rules changed: run `dockerguard confirm` within %.0f s, or the previous "
                        "policy comes back", reason, left)
        self._ruleset = result.digest
        self._ports = self.engine.discovery.ports
        return result

    def _follow_the_policy_in_force(self, starting: bool) -> bool:
        """Take up the policy another dockerguard put in force (current.json). False: none is (removed, or
        not known any more), so nothing is enforced until a reload. At start, without any record yet, the
        policy loaded is the one to put in force."""
        current = self.engine.state.current()
        if self.policy is not None and ((current is None and starting) or self.engine.in_force(self.policy)):
            self._said.pop("idle", None)
            return True
        if current is None or current.policy is None:
            what = "dockerguard's rules were removed" if current is not None else "the policy in force is not known"
            by = f" by {current.origin}" if current is not None and current.origin else ""
            self._once("idle", logging.WARNING, f"{what}{by}: watch enforces nothing until `systemctl reload "
                                                "dockerguard-watch` (SIGHUP) installs the policy file again")
            return False
        _, policy = self.engine.current_policy()
        assert policy is not None
        if current.policy.backend != self.engine.backend(policy)[0].name:
            self.engine = self.engine.with_backend(current.policy.backend)
        log.warning("the policy in force changed: %s is in force again after %s%s; watch keeps it from now on",
                    current.policy.path, current.action, f" by {current.origin}" if current.origin else "")
        self.policy = policy
        self._said.pop("idle", None)
        return True

    # -- what it says ------------------------------------------------------------------------------
    def _report(self, reason: str, result: ApplyResult) -> None:
        """Docker's changes are news (INFO); a change to the kernel nobody announced is drift (WARNING)."""
        ports = self.engine.discovery.ports
        if self._ports is not None and ports != self._ports:
            owners = dict(self.engine.discovery.owners)
            for proto, port in sorted(ports - self._ports, key=lambda item: (item[1], item[0])):
                names = ", ".join(owners.get((proto, port), ())) or "a process Docker started"
                log.info("+%d/%s published by %s", port, proto, names)
            for proto, port in sorted(self._ports - ports, key=lambda item: (item[1], item[0])):
                log.info("-%d/%s no longer published", port, proto)
        self._ports = ports
        if result.changed:
            self.stats.repairs += 1
            self._health["last_repair"] = time.time()
            if result.digest == self._ruleset:  # the same ruleset: someone else changed the kernel
                log.warning("%s: the kernel differed from the policy in force (+%d -%d); repaired: %s", reason,
                            result.added, result.removed, "; ".join(result.changes))
            else:
                log.info("%s: ruleset %s applied (+%d -%d) with %s", reason, result.digest, result.added,
                         result.removed, result.backend)
                for resolution in self.engine.resolutions:
                    log.info("  %s", resolution.describe())
        else:
            log.debug("%s: rules in place (ruleset %s)", reason, result.digest)
        self._ruleset = result.digest

    def _once(self, topic: str, level: int, message: str, key: str | None = None) -> None:
        """Log a condition when it starts (or changes), not at every retry while it lasts."""
        if self._said.get(topic) != (key or message):
            log.log(level, "%s", message)
        else:
            log.debug("%s", message)
        self._said[topic] = key or message

    def _checked(self, ok: bool, state: str, status: str) -> bool:
        now = time.time()
        self._health.update(state=state, message=status, checks=self.stats.reconciles, repairs=self.stats.repairs,
                            failures=self.stats.failures, last_check=now,
                            policy=self.policy.source_digest if self.policy is not None else None)
        self._health["last_success" if ok else "last_failure"] = now
        self.engine.state.write_watch(self._health)
        self.on_check(ok, status)
        return ok

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, stop: threading.Event, *, until: float | None = None) -> WatchStats:
        """Watch until `stop` is set (or the monotonic deadline `until` passes)."""

        def done() -> bool:
            return stop.is_set() or (until is not None and time.monotonic() >= until)

        reason = "start"
        while not done():
            healthy = self.reconcile(reason)
            if self.docker is None:
                self._wait(stop, self.interval, done)
                reason = "drift check"
                continue
            try:
                checked = time.monotonic()
                for event in self.docker.events(idle_timeout=min(TICK, self.interval)):
                    if done():
                        break
                    if event is not None:
                        self.reconcile(_describe(event))
                    elif self._reload.is_set() or time.monotonic() - checked >= self.interval:
                        self.reconcile("reload" if self._reload.is_set() else "drift check")
                    else:
                        continue
                    checked = time.monotonic()
                    self._backoff = min(1.0, self.max_backoff)
                    if self._said.pop("docker", None) is not None:
                        log.info("Docker answers again")
            except DockerUnavailable as exc:
                wait = self._next_backoff()
                self._once("docker", logging.WARNING, f"{exc}; checking the rules every {self.interval:g} s "
                                                      "meanwhile, reconnecting with a growing delay", key="away")
                log.debug("reconnecting to Docker in %g s", wait)
                self._poll(stop, wait, done)
                reason = "reconnecting to Docker" if healthy else "retry"
        self._health["state"] = "stopped"
        self.engine.state.write_watch(self._health)
        log.info("watch stopped after %d checks, %d repairs, %d failures",
                 self.stats.reconciles, self.stats.repairs, self.stats.failures)
        return self.stats

    def _wait(self, stop: threading.Event, seconds: float, done: Callable[[], bool]) -> None:
        """Sleep `seconds`, but look at a requested reload every tick."""
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            stop.wait(min(TICK, max(0.0, deadline - time.monotonic())))
            if self._reload.is_set() and not done():
                self.reconcile("reload")

    def _poll(self, stop: threading.Event, seconds: float, done: Callable[[], bool]) -> None:
        """Keep repairing drift while Docker is away: its rules (and ours) may be changing right now."""
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            self._wait(stop, min(self.interval, max(0.0, deadline - time.monotonic())), done)
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
