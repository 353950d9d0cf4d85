"""Plan, diff, apply (with verification, history and an optional confirmation deadline), rollback,
status and remove: the API behind the CLI.

    from dockerguard import Engine, load_policy
    Engine().apply(load_policy("/etc/dockerguard/policy.toml"))

Every method that changes the ruleset holds the ruleset lock of its network namespace and then the state
directory's lock (see `locking`), records the driver's snapshot in the history first, and reports what it
did as `Step`s (the CLI prints them with --verbose).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from . import published
from . import state as state_module
from .audit import AuditReport, altered_paths, audit
from .backends import (
    DRIVERS,
    Backend,
    Ban,
    InstalledState,
    PathFinding,
    Rendered,
    Snapshot,
    check_backend_name,
    get_backend,
)
from .compiler import compile_policy
from .containers import Resolution, resolve_containers, resolve_egress
from .detect import Detection, detect
from .diff import Diff, change_counts, diff_states, summary
from .docker import ContainerInfo, DockerClient, NetworkInfo
from .errors import (
    ApplyError,
    ConfirmError,
    DockerguardError,
    DockerUnavailable,
    LockoutError,
    LockTimeout,
    PendingConfirmationError,
    PolicyError,
    RollbackError,
    StateError,
    SupersededError,
    TransactionError,
    UsageError,
)
from .glance import EntryRow, PathDrops, entry_rows, path_drops
from .lint import entry_warnings, interface_warnings
from .locking import remaining, ruleset_lock
from .lockout import current_sessions, cut_sessions
from .model import Ruleset
from .net import AddressError, Network, parse_network
from .policy import (
    DEFAULT_DOCKER_SOCKET,
    MAX_POLICY_FILE,
    MAX_SOURCES_FILE,
    Policy,
    load_policy,
    parse_policy,
    read_bounded,
    source_digest,
)
from .state import (
    Current,
    HistoryEntry,
    Intent,
    Origin,
    Pending,
    PendingRecord,
    PolicySource,
    StateDir,
    boot_id,
    spawn_rollback_timer,
)

if TYPE_CHECKING:
    from .metrics import MetricsReport
    from .trace import Connection, Decision

# How long a changed [host] section stays on probation when the user gave no --confirm.
HOST_GUARD_SECONDS = 120.0
# A pending confirmation this far past its deadline has lost its timer (killed, host suspended):
# the next command that changes the ruleset performs the rollback itself.
OVERDUE_GRACE = 5.0
TIMER_POLL = 0.25  # how often the timer looks whether `confirm` removed the pending file

TimerLauncher = Callable[[Path, str], int]
Notify = Callable[[str], None]
# Optional, not `X | None`: a module-level alias is evaluated at run time, also on Python 3.9.
Discoverer = Callable[[Optional[Callable[[], list[ContainerInfo]]]], published.Discovery]


@dataclass(frozen=True)
class Plan:
    backend: str
    ruleset: Ruleset
    rendered: Rendered
    installed: InstalledState | None
    expected: InstalledState
    detection: Detection | None = None
    snapshot: Snapshot | None = None  # of the same moment as `installed`
    generation: int | None = None  # the ruleset generation read just before `installed`

    @property
    def in_sync(self) -> bool:
        return self.installed == self.expected


@dataclass(frozen=True)
class Step:
    """One thing the engine did, and how long it took (since the previous step)."""

    action: str
    detail: str
    seconds: float


@dataclass(frozen=True)
class ApplyResult:
    """What an apply did. `history_entry` is the entry `rollback` would undo: None when nothing changed, or
    for a repair (the policy in force applied again after Docker or someone else changed the kernel: no
    operator change, so no history entry). `added`/`removed` count the hooks, rules, sets and set elements
    the kernel gained and lost; `changes` are the first few of them as `diff` shows them."""

    backend: str
    changed: bool
    digest: str
    steps: tuple[Step, ...] = ()
    history_entry: int | None = None
    pending: Pending | None = None  # set by apply(confirm=...): roll back at pending.deadline unless confirmed
    # apply_file's no-op path, which parses nothing: the policy's warnings as recorded (lint), host part fresh
    warnings: tuple[str, ...] = ()
    added: int = 0
    removed: int = 0
    repair: bool = False
    changes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RollbackResult:
    backend: str
    entry: int  # the history entry undone
    action: str  # what it undid: "apply" or "remove"
    changed_at: float  # when that change was made
    reason: str  # "rollback", "deadline", "declined", "overdue"
    steps: tuple[Step, ...] = ()


@dataclass(frozen=True)
class HistorySummary:
    number: int
    backend: str
    timestamp: float
    action: str
    policy_digest: str | None
    origin: Origin | None = None  # what made it (None: recorded by an older dockerguard)


@dataclass(frozen=True)
class Status:
    backend: str
    installed: InstalledState | None
    in_sync: bool | None  # None when no policy was given to compare with
    detection: Detection | None = None
    path: tuple[PathFinding, ...] = ()
    diff: Diff | None = None  # with a policy: what apply would change
    pending: Pending | None = None
    interrupted: tuple[Pending, ...] = ()  # rollbacks that failed or were interrupted: run `rollback`
    history: tuple[HistorySummary, ...] = ()
    last_rollback: dict[str, Any] | None = None
    state_dir: str = ""
    state_error: str | None = None  # the kernel part is still reported when the state dir is unreadable
    # at a glance (glance.py): per policy entry and per path's default; from `policy_path` (the policy
    # given, else the one the last apply recorded, when it still loads)
    policy_path: str | None = None
    entries: tuple[EntryRow, ...] = ()
    drops: tuple[PathDrops, ...] = ()
    unfinished: Intent | None = None  # a change killed half way: the next apply, rollback or remove repairs it
    current: Current | None = None  # the operator's policy in force, and what put it there
    watch: dict[str, Any] | None = None  # `watch`'s health (see `watch_health`), None when it never ran here


class _Recorder:
    def __init__(self) -> None:
        self.steps: list[Step] = []
        self._last = time.perf_counter()

    def __call__(self, action: str, detail: str) -> None:
        now = time.perf_counter()
        self.steps.append(Step(action, detail, round(now - self._last, 6)))
        self._last = now


class Engine:
    """Drives one backend. `backend` may be a driver instance, a driver name, "auto", or None to
    follow the policy's `backend` setting. `state_dir` defaults to $DOCKERGUARD_STATE_DIR, then
    /var/lib/dockerguard. `timer_launcher(state_dir, token) -> pid` starts the rollback timer of
    `apply(confirm=...)` (tests replace it; the default is a detached process). `discover(containers)`
    finds the published ports (default: `published.discover`, which asks the Docker API through
    `containers` and reads the kernel). `notify(message)` hears what the user should know while it
    happens: whom a lock is waited for, damaged state files that were ignored, a remove that could not be
    recorded (default: the "dockerguard" logger)."""

    def __init__(self, backend: Backend | str | None = None, *, state_dir: str | os.PathLike[str] | None = None,
                 timer_launcher: TimerLauncher | None = None, docker: DockerClient | None = None,
                 discover: Discoverer | None = None, notify: Notify | None = None) -> None:
        self._requested = backend
        self._resolved: tuple[Backend, Detection | None] | None = None
        self._notify = notify if notify is not None else logging.getLogger("dockerguard").warning
        # A driver instance (the test driver) may name itself in what it recorded.
        own = (backend.name,) if isinstance(backend, Backend) else ()
        self.state = StateDir(state_dir, backends=own, warn=self._notify)
        self._launch_timer = timer_launcher or spawn_rollback_timer
        self._docker = docker
        self._discover = discover or published.discover
        self.resolutions: tuple[Resolution, ...] = ()  # what container selectors resolved to last time
        self.discovery = published.Discovery()  # the published ports found last time, and by whom
        self._containers: list[ContainerInfo] = []  # what container entries were resolved against
        self._networks: list[NetworkInfo] = []  # and egress entries' networks
        # Why container entries were compiled without Docker (it did not answer): they select nothing.
        self.docker_problem: str | None = None

    def with_backend(self, backend: str) -> Engine:
        """The same engine (state directory, Docker, timer, notices) driving another backend."""
        return Engine(backend, state_dir=self.state.path, timer_launcher=self._launch_timer, docker=self._docker,
                      discover=self._discover, notify=self._notify)

    def compile(self, policy: Policy, *, without_docker: bool | None = None) -> Ruleset:
        """compile_policy, after looking up the host ports that container-selecting entries publish now
        and the ports Docker publishes (whose docker-proxy path is judged too).

        When Docker does not answer, container entries select nothing (`docker_problem` says why) if
        `without_docker`, or (None) if nothing of ours is installed yet: at boot, before Docker starts, they
        are closed until `watch` applies again. With rules installed it raises: they stay as they are
        (with live-restore, containers keep running while dockerd restarts)."""
        client = self._docker or DockerClient(policy.docker_socket)
        listed: list[ContainerInfo] | None = None

        def containers() -> list[ContainerInfo]:
            nonlocal listed
            if listed is None:
                listed = client.containers()
            return listed

        egress = None
        self.docker_problem = None
        if policy.uses_containers:
            try:
                containers()
                if any(entry.networks for entry in policy.egress):
                    self._networks = client.networks()
            except DockerUnavailable as exc:
                if without_docker is False or (without_docker is None and self.backend(policy)[0].installed()
                                                is not None):
                    raise
                self.docker_problem = str(exc)
                self._networks = []
            found = [] if self.docker_problem is not None else containers()
            policy, self.resolutions = resolve_containers(policy, found)
            egress = resolve_egress(policy, found, self._networks)
            self._containers = listed or []
        if not policy.filter_proxy_path:
            return compile_policy(policy, egress=egress)
        self.discovery = self._discover(containers)
        return compile_policy(policy, self.discovery.ports, egress)

    def backend(self, policy: Policy | None = None) -> tuple[Backend, Detection | None]:
        """The driver asked for; else the policy's `backend`; without a policy, the one the state directory
        says the rules were installed with; else what `auto` detects."""
        if self._resolved is None:
            requested = self._requested
            if requested is None:
                requested = policy.backend if policy is not None else (self._recorded_backend() or "auto")
            if isinstance(requested, Backend):
                self._resolved = (requested, None)
            elif requested == "auto":
                detection = detect(self._docker or DockerClient(
                    policy.docker_socket if policy is not None else DEFAULT_DOCKER_SOCKET))
                self._resolved = (get_backend(detection.backend), detection)
            else:
                self._resolved = (get_backend(requested), None)
        return self._resolved

    def _recorded_backend(self) -> str | None:
        """The backend of the last verified apply, else of the newest history entry (None: unknown)."""
        try:
            known = self.state.installed_record()
            if known is not None:
                return check_backend_name(known["backend"], allow_auto=False)
            numbers = self.state.history_numbers()
            return check_backend_name(self.state.entry(numbers[-1]).backend, allow_auto=False) if numbers else None
        except (DockerguardError, OSError):
            return None

    def plan(self, policy: Policy) -> Plan:
        backend, detection = self.backend(policy)
        backend.ensure_available()
        ruleset = self.compile(policy)
        generation = backend.generation()
        installed, snapshot = backend.read()
        return Plan(backend.name, ruleset, backend.render(ruleset), installed, backend.expected(ruleset),
                    detection, snapshot, generation)

    def render(self, policy: Policy) -> Rendered:
        """What apply would send, without reading the kernel (works without root)."""
        backend, _ = self.backend(policy)
        return backend.render(self.compile(policy, without_docker=True))

    def diff(self, policy: Policy) -> Diff:
        """What `apply(policy)` would change, from the installed and the expected state; changes nothing."""
        plan = self.plan(policy)
        return diff_states(plan.backend, plan.installed, plan.expected)

    def apply(self, policy: Policy, *, confirm: float | None = None, force: bool = False,
              guard: bool = True, reason: str = "apply") -> ApplyResult:
        """Install `policy` atomically; on any failure put the previous ruleset back and raise.

        With `confirm` (seconds), a detached timer restores the previous ruleset at the deadline unless
        `confirm()` is called first; the result's `pending` tells the token and deadline.

        An apply that changes the operator's policy in force is recorded in the history with what made it
        (this command line, the uid, `reason`); applying the policy in force again is a repair (see
        ApplyResult).

        The lock-out guard, when the [host] rules change: refuse (LockoutError) if they would cut a
        current SSH session unless `force`, and arm the confirmation timer (HOST_GUARD_SECONDS unless
        `confirm` says otherwise). `guard=False` is for unattended re-applies of a known policy (boot,
        `watch`), where nobody could confirm.
        """
        if confirm is not None and not confirm > 0:
            raise UsageError(f"--confirm needs a positive number of seconds, got {confirm:g}")
        record = _Recorder()
        try:
            return self._apply(policy, confirm, record, force=force, guard=guard, reason=reason)
        except DockerguardError as exc:
            exc.steps = tuple(record.steps)
            raise

    def _apply(self, policy: Policy, confirm: float | None, record: _Recorder, *, force: bool,
               guard: bool, reason: str) -> ApplyResult:
        backend, detection = self.backend(policy)
        record("backend", backend.name + (f" (auto: {detection.reason})" if detection else ""))
        with self._locked("apply"):
            self._settle_unfinished(record)
            pending = self._settle_pending(record)
            plan = self.plan(policy)
            digest = plan.ruleset.digest
            record("plan", f"ruleset {digest} compiled and rendered; installed rules read back")
            if plan.in_sync:
                record("compare", "installed rules equal the policy: the kernel is not touched")
                self._remember(backend, policy, plan.ruleset, plan.installed, plan.generation)
                return ApplyResult(backend.name, False, digest, tuple(record.steps))
            self.state.forget_installed()
            if pending is not None:
                raise PendingConfirmationError(_pending_message(pending.pending))
            counts = change_counts(backend.name, plan.installed, plan.expected)
            record("compare", f"{sum(counts)} changes to make")
            if guard and backend.host_part(plan.installed) != backend.host_part(plan.expected):
                self._check_lockout(plan.ruleset, force, record)
                if confirm is None:
                    confirm = HOST_GUARD_SECONDS
                    record("guard", f"[host] rules change: rolled back in {confirm:g} s unless confirmed")
            snapshot = plan.snapshot or backend.snapshot()
            record("snapshot", f"{len(json.dumps(snapshot.data))} bytes of the current ruleset")
            source = _source_of(policy, backend)
            current = self.state.current()
            # The policy in force, applied again (Docker or someone else changed the kernel): a repair, which
            # `rollback` does not walk. Its entry only covers a crash half way, and goes when it is done.
            repair = confirm is None and source is not None and current is not None and current.policy == source
            if reason == "repair" and not repair:  # `keep`: never an operator change of its own
                raise SupersededError("the policy in force changed meanwhile (another dockerguard): not applied")
            origin = Origin.here(reason)
            entry = self.state.push(backend=backend.name, action="repair" if repair else "apply", policy_digest=digest,
                                    policy_path=source.path if source else policy.path, snapshot=snapshot,
                                    previous=plan.installed, origin=origin, before=current)
            record("history", f"saved as entry {entry.number} in {self.state.history_dir}"
                              + (" while the repair runs" if repair else ""))
            armed = None
            if confirm is not None:
                armed = self._arm_timer(backend, digest, confirm, entry, snapshot, plan.installed, record)
            self._begin("apply", backend, entry.number, armed.token if armed is not None else None)
            try:
                backend.apply(plan.rendered)
                record("transaction", "sent in one atomic transaction")
                generation = backend.generation()
                verified = backend.installed()
                if verified != plan.expected:
                    raise ApplyError(f"{backend.name}: verification failed: the rules read back differ from the "
                                     "rules sent")
                record("verify", "rules read back equal the rules sent")
            except DockerguardError as exc:
                self._undo_failed_apply(backend, snapshot, exc, record)
                # Nothing changed after all: the history entry and the timer have nothing to undo.
                self.state.drop(entry.number)
                if armed is not None:
                    self.state.unlink_pending(armed.token)
                self.state.clear_intent()
                if isinstance(exc, ApplyError):
                    raise
                # Name the driver: its tools' messages do not always (python-iptables, nftables).
                raise ApplyError(f"{backend.name}: {exc}; the previous ruleset was restored") from exc
            if repair:
                self.state.drop(entry.number)  # before the intent: a crash in between finds the change done
            elif source is None:  # a policy of no file (the API's parse_policy): `watch` cannot take it up
                self.state.forget_current()
            else:
                self._put_in_force(Current(source, "apply", time.time(), origin), source, record)
            self.state.clear_intent()
            if armed is None:  # a pending confirmation may still roll it back: nothing to remember yet
                self._remember(backend, policy, plan.ruleset, verified, generation)
            return ApplyResult(backend.name, True, digest, tuple(record.steps), None if repair else entry.number,
                               armed, added=counts[0], removed=counts[1], repair=repair,
                               changes=summary(backend.name, plan.installed, plan.expected, counts=counts))

    # -- the unchanged policy, cheaply ---------------------------------------------------------------
    def apply_file(self, path: str | os.PathLike[str], *, confirm: float | None = None, force: bool = False,
                   guard: bool = True, on_load: Callable[[Policy], None] | None = None) -> ApplyResult:
        """`apply(load_policy(path))`, except that the same policy file over the same Docker inputs on an
        unchanged kernel is recognised without parsing, compiling or (nft) listing anything: see
        `_unchanged` (its result carries the policy's warnings as recorded). Whatever differs, or cannot be
        told cheaply, takes the full path; `on_load` sees the policy it parsed before anything is applied."""
        if confirm is None:
            record = _Recorder()
            try:
                result = self._unchanged(Path(path), record)
            except LockTimeout:
                raise  # the full path would only wait as long again
            except (DockerguardError, OSError) as exc:  # the full path says it properly, if it matters
                record("fast path", f"not taken: {exc}")
                result = None
            if result is not None:
                return result
        policy = load_policy(path)
        if on_load is not None:
            on_load(policy)
        return self.apply(policy, confirm=confirm, force=force, guard=guard)

    def keep(self, policy: Policy) -> ApplyResult:
        """`watch`: keep `policy` (the one in force, loaded once) in the kernel. Its files are not read again:
        an unchanged kernel over unchanged Docker inputs is told as cheaply as `apply_file` tells it; else the
        policy is applied again without the confirmation guard (nobody is there to confirm a repair)."""
        if policy.source_digest is not None:
            record = _Recorder()
            try:
                result = self._unchanged(None, record, policy)
            except LockTimeout:
                raise
            except (DockerguardError, OSError) as exc:
                record("fast path", f"not taken: {exc}")
                result = None
            if result is not None:
                return result
        return self.apply(policy, guard=False, reason="repair")

    def _unchanged(self, path: Path | None, record: _Recorder, policy: Policy | None = None) -> ApplyResult | None:
        """An ApplyResult (nothing changed) when all of these equal what the last verified apply recorded:
        the policy file's bytes (`path`'s, or the digests of `policy` as loaded), the backend, the published
        ports and container ports Docker reports, and the kernel: its nftables generation (no transaction
        since, by anyone), or else a read-back of our objects. None otherwise."""
        with self._locked("apply"):
            known = self.state.installed_record()
            if known is None or known["warnings"] is None or self.state.pending() is not None \
                    or self.state.intent() is not None:
                return None
            if policy is not None:
                files = sorted([os.path.abspath(listed), digest] for listed, digest in policy.source_files)
                if policy.source_digest != known["policy"] or files != sorted(known.get("files", ())):
                    return None
            # Bounded: the path may be a FIFO (a plain read would block) or /dev/zero (it would never end).
            elif source_digest(read_bounded(str(path), MAX_POLICY_FILE)) != known["policy"]:
                return None
            # The same policy names the same list files (sources_file, ...): their bytes must be the same too.
            for listed, digest in () if policy is not None else known.get("files", ()):
                if source_digest(read_bounded(listed, MAX_SOURCES_FILE)) != digest:
                    record("fast path", f"not taken: {listed} changed since the last apply")
                    return None
            facts = known["facts"]
            requested = self._requested if self._requested is not None else facts["backend"]
            backend = self._backend_for_record(requested, known["backend"], str(facts["docker_socket"]))
            if backend is None:
                return None
            record("backend", f"{backend.name} (as recorded)")
            if self._inputs_digest(facts) != known["inputs"]:
                return None
            record("inputs", "policy file, published ports and container ports as at the last apply")
            generation = backend.generation()
            if generation is not None and generation == known.get("generation"):
                record("compare", f"ruleset generation {generation} unchanged since the verified apply: "
                                  "the kernel is not touched")
            elif state_digest(backend.installed()) == known["state"]:
                record("compare", "installed rules read back equal the verified ones: the kernel is not touched")
                self.state.write_installed({**known, "generation": _stable(backend, generation)})
            else:
                return None
            warnings = (*interface_warnings(known["interfaces"]), *known["warnings"])
            return ApplyResult(backend.name, False, str(known["ruleset"]), tuple(record.steps), warnings=warnings)

    def _backend_for_record(self, requested: Backend | str, recorded: str, docker_socket: str) -> Backend | None:
        """The driver to check against the record: the one asked for, if it is the recorded one; for
        "auto", the recorded one while detection still picks it."""
        if isinstance(requested, Backend):
            return requested if requested.name == recorded else None
        if requested == "auto":
            requested = detect(self._docker or DockerClient(docker_socket)).backend
        return get_backend(recorded) if requested == recorded else None

    def _inputs_digest(self, facts: dict[str, Any]) -> str:
        """What, besides the policy file, the compiled ruleset depends on: Docker's published ports (their
        docker-proxy path is judged) and the ports container entries resolve to."""
        client = self._docker or DockerClient(str(facts["docker_socket"]))
        containers = client.containers() if facts["uses_containers"] else None
        networks = client.networks() if facts.get("uses_networks") else None
        ports = self._discover(client.containers).ports if facts["filter_proxy_path"] else None
        return _inputs_digest(containers, ports, networks)

    def in_force(self, policy: Policy) -> bool:
        """Is `policy` (these bytes, applied with this engine's backend) the operator's policy in force?"""
        current = self.state.current()
        return current is not None and current.policy is not None and \
            current.policy == _source_of(policy, self.backend(policy)[0])

    def _remember(self, backend: Backend, policy: Policy, ruleset: Ruleset, verified: InstalledState | None,
                  generation: int | None) -> None:
        """After a verified apply (or a verified no-op): what `_unchanged` compares with next time.
        `generation` was read before the verifying read; kept only if still the same after it."""
        if policy.source_digest is None:
            return
        if self.docker_problem is not None:  # compiled without Docker: the next apply must look again
            self.state.forget_installed()
            return
        uses_networks = any(entry.networks for entry in policy.egress)
        facts = {"backend": policy.backend, "docker_socket": policy.docker_socket,
                 "uses_containers": policy.uses_containers, "filter_proxy_path": policy.filter_proxy_path,
                 "uses_networks": uses_networks}
        self.state.write_installed({
            "backend": backend.name, "policy": policy.source_digest, "facts": facts, "ruleset": ruleset.digest,
            "files": [[os.path.abspath(listed), digest] for listed, digest in policy.source_files],
            "inputs": _inputs_digest(self._containers if policy.uses_containers else None,
                                     self.discovery.ports if policy.filter_proxy_path else None,
                                     self._networks if uses_networks else None),
            "generation": _stable(backend, generation), "state": state_digest(verified),
            "interfaces": list(policy.external_interfaces), "warnings": entry_warnings(policy)})

    @staticmethod
    def _check_lockout(ruleset: Ruleset, force: bool, record: _Recorder) -> None:
        sessions = current_sessions()
        cut = cut_sessions(ruleset, sessions)
        if cut and not force:
            raise LockoutError("the [host] rules would refuse your SSH session "
                               f"{'; '.join(map(str, cut))}: allow it in [[host.allow]], or pass --force")
        record("lock-out check", f"{len(sessions)} SSH sessions found, {len(cut)} cut"
                                 + (" (--force)" if cut else ""))

    def _arm_timer(self, backend: Backend, digest: str, seconds: float, entry: HistoryEntry, snapshot: Snapshot,
                   previous: InstalledState | None, record: _Recorder) -> Pending:
        # The timer starts BEFORE the transaction: a CLI killed right after sending it is still covered.
        now = time.time()
        pending = Pending(secrets.token_hex(8), backend.name, now, now + seconds, entry.number, digest, boot_id())
        self.state.create_pending(PendingRecord(pending, snapshot, previous, entry.before, entry.before_known))
        try:
            pid = self._launch_timer(self.state.path, pending.token)
        except BaseException:
            self.state.unlink_pending(pending.token)
            self.state.drop(entry.number)
            raise
        record("timer", f"rollback timer (pid {pid}) armed: restores this snapshot in {seconds:g} s "
                        "unless confirmed")
        return pending

    def _undo_failed_apply(self, backend: Backend, snapshot: Snapshot, exc: DockerguardError,
                           record: _Recorder) -> None:
        record("failed", str(exc))
        try:
            backend.restore(snapshot)
        except DockerguardError as restore_exc:
            raise RollbackError(f"apply failed ({exc}) and restoring the previous ruleset failed "
                                f"too ({restore_exc})") from restore_exc
        record("restore", "previous ruleset restored")

    # -- confirmation and rollback -----------------------------------------------------------------
    def confirm(self) -> Pending:
        """Keep the ruleset of the pending `apply(confirm=...)`; its timer then exits without acting."""
        found = self.state.pending()
        if found is None:
            if self.state.claimed():
                raise ConfirmError("too late: the pending apply is being rolled back (or its rollback "
                                   "failed: see `dockerguard status`)")
            last = self.state.last_rollback()
            if last is not None and last.get("ok"):
                raise ConfirmError(f"nothing to confirm: the last apply --confirm was rolled back at "
                                   f"{_clock(float(last.get('time', 0)))} ({last.get('reason')})")
            raise ConfirmError("nothing to confirm: no apply --confirm is pending")
        if not self.state.unlink_pending(found.pending.token):
            raise ConfirmError("too late: the rollback timer took over at the deadline; "
                               "the previous ruleset is being restored")
        return found.pending

    def expire_pending(self, token: str, reason: str = "deadline") -> RollbackResult | None:
        """Roll back the pending apply `token` now, unless `confirm` got there first (then None)."""
        record = _Recorder()
        with self._locked("rollback"):
            claimed = self.state.claim_pending(token)
            if claimed is None:
                return None
            record("claim", f"took over pending confirmation {token}")
            return self._undo_claimed(claimed, reason, record)

    def run_rollback_timer(self, token: str, poll: float = TIMER_POLL) -> RollbackResult | None:
        """The body of the detached timer: wait for the deadline (or for the pending file to go away),
        then roll back. Returns None when the apply was confirmed or cancelled."""
        # `spawn_rollback_timer` waits for this file (written atomically: never seen half-written); when it
        # cannot be written, that reports the timer did not start.
        with contextlib.suppress(StateError, FileNotFoundError):
            self.state.write_timer_pid(token)
        try:
            found = self.state.read_pending(token)
            if found is None:
                return None
            # Wall-clock deadline (it is shown to users), checked often, so a clock step delays at most a poll.
            while self.state.is_pending(token):
                remaining = found.pending.deadline - time.time()
                if remaining <= 0:
                    return self.expire_pending(token, "deadline")
                time.sleep(min(poll, remaining))
            return None
        finally:
            self.state.remove_timer_pid(token)

    def rollback(self) -> RollbackResult:
        """Restore the ruleset from before the last recorded change (a pending `apply --confirm` first),
        verify it by reading it back, and drop that history entry."""
        record = _Recorder()
        try:
            with self._locked("rollback"):
                settled = self._settle_unfinished(record)
                if settled is not None:  # the interrupted change is undone (or its rollback finished)
                    return settled
                for interrupted in self.state.claimed():  # under the lock: no timer is working on it
                    record("retry", f"finishing the interrupted rollback of {interrupted.pending.token}")
                    return self._undo_claimed(interrupted, "rollback", record)
                found = self.state.pending()
                if found is not None:
                    claimed = self.state.claim_pending(found.pending.token)
                    if claimed is not None:
                        record("claim", f"took over pending confirmation {found.pending.token}")
                        return self._undo_claimed(claimed, "rollback", record)
                entry = self._last_change()
                if entry is None:
                    raise StateError(f"nothing to roll back: no change recorded in {self.state.history_dir}")
                backend = self._backend_named(entry.backend)
                self._begin("rollback", backend, entry.number)
                try:
                    self._restore_verified(backend, entry.snapshot, entry.previous, record)
                except StateError as exc:  # refused as data: nothing was sent
                    self.state.clear_intent()
                    raise StateError(f"{self.state.history_dir / f'{entry.number:04d}.json'}: {exc}; move it "
                                     "away to roll back past it") from exc
                self._put_back(entry.before if entry.before_known else _UNKNOWN, "rollback", record)
                self.state.drop(entry.number)
                self.state.clear_intent()
                record("history", f"dropped entry {entry.number}")
                return RollbackResult(backend.name, entry.number, entry.action, entry.timestamp, "rollback",
                                      tuple(record.steps))
        except DockerguardError as exc:
            exc.steps = tuple(record.steps)
            raise

    # -- the operator's policy in force ------------------------------------------------------------
    def _put_in_force(self, current: Current, source: PolicySource | None, record: _Recorder) -> None:
        """Record what is in force now (current.json), with the bytes of its policy files: `watch` takes it up
        from there after a `rollback` has put it back, when the file on disk says something else by then."""
        files: dict[str, bytes] = {}
        if source is not None:
            for path, digest in ((source.path, source.digest), *source.files):
                try:
                    data = read_bounded(path, max(MAX_POLICY_FILE, MAX_SOURCES_FILE))
                except DockerguardError:
                    data = b""
                if hashlib.sha256(data).hexdigest() != digest:  # changed since it was read: keep what is known
                    self._notify(f"warning: {path} changed while it was applied: its bytes as applied are not kept")
                    self.state.forget_current()
                    return
                files[digest] = data
        self.state.write_current(current, files)
        record("in force", "no policy (removed)" if source is None else f"{source.path} ({source.digest[:12]})")

    def _put_back(self, before: object, reason: str, record: _Recorder) -> None:
        """After a rollback: the operator's policy from before the change undone is in force again."""
        if before is _UNKNOWN:  # an entry of an older dockerguard: it did not say
            self.state.forget_current()
            return
        assert before is None or isinstance(before, PolicySource)
        self.state.write_current(Current(before, "rollback", time.time(), Origin.here(reason)))
        record("in force", "no policy" if before is None else f"{before.path} ({before.digest[:12]}) again")

    def current_policy(self) -> tuple[Current | None, Policy | None]:
        """The operator's policy in force (current.json) and that policy, parsed from the bytes kept of it
        (None when none is in force: removed, or not known). StateError when its files are missing."""
        current = self.state.current()
        if current is None or current.policy is None:
            return current, None
        source = current.policy
        digests = dict(source.files)

        def stored(path: str, limit: int) -> bytes:
            if os.path.abspath(path) not in digests:
                raise PolicyError("not among the list files kept with the policy in force", file=path)
            return self.state.policy_file(digests[os.path.abspath(path)])

        text = self.state.policy_file(source.digest).decode("utf-8")
        policy = replace(parse_policy(text, source.path, stored), source_digest=source.digest)
        return current, policy

    def _last_change(self) -> HistoryEntry | None:
        """The newest history entry `rollback` undoes; a repair's entry left by a crash is no change: dropped."""
        for number in reversed(self.state.history_numbers()):
            entry = self.state.entry(number)
            if entry.action != "repair":
                return entry
            self.state.drop(number)
        return None

    # -- changes killed half way -------------------------------------------------------------------
    def _begin(self, action: str, backend: Backend, entry: int, token: str | None = None) -> None:
        """Journal the change about to be sent (see StateDir.write_intent); `clear_intent` ends it."""
        self.state.write_intent(Intent(action, backend.name, entry, os.getpid(), time.time(), token))

    def _settle_unfinished(self, record: _Recorder) -> RollbackResult | None:
        """Under the lock: a change whose process was killed before it finished (intent.json is there)
        may have left the ruleset half changed, e.g. IPv4 new and IPv6 old (the iptables drivers commit
        each family on its own). Put back, in both families, the ruleset from before it (its history
        entry), verify it and drop that entry; also stand its rollback timer down. Returns what was done,
        or None when nothing was unfinished."""
        intent = self.state.intent()
        if intent is None:
            return None
        what = (f"the {intent.action} begun by pid {intent.pid} at {_clock(intent.started)} was interrupted "
                "before it finished")
        if intent.entry not in self.state.history_numbers():  # it got as far as dropping its entry
            self.state.clear_intent()
            record("interrupted", f"{what}, after it was done")
            return None
        entry = self.state.entry(intent.entry)
        self._notify(f"warning: {what}: restoring the ruleset saved in history entry {entry.number} "
                     f"({'the one the rollback restores' if intent.action == 'rollback' else 'from before it'}) "
                     "in both families")
        requested = self._requested
        backend = (requested if isinstance(requested, Backend) and requested.name == entry.backend
                   else self._resolved[0] if self._resolved is not None and self._resolved[0].name == entry.backend
                   else get_backend(entry.backend))
        self._restore_verified(backend, entry.snapshot, entry.previous, record)
        if entry.before_known:
            self._put_back(entry.before, "interrupted", record)
        self.state.drop(entry.number)
        if intent.token is not None:
            self.state.unlink_pending(intent.token)  # its timer stands down: nothing left to undo
        self.state.clear_intent()
        record("interrupted", f"{what}: the ruleset saved in entry {entry.number} is back (entry dropped)")
        return RollbackResult(backend.name, entry.number, entry.action, entry.timestamp, "interrupted",
                              tuple(record.steps))

    def _undo_claimed(self, claimed: PendingRecord, reason: str, record: _Recorder) -> RollbackResult:
        """Restore a claimed pending apply's snapshot; on failure the claim stays for `rollback` to retry."""
        pending = claimed.pending
        outcome: dict[str, Any] = {"token": pending.token, "backend": pending.backend, "entry": pending.entry,
                                   "policy_digest": pending.policy_digest, "reason": reason}
        try:
            backend = self._backend_named(pending.backend)
            self._restore_verified(backend, claimed.snapshot, claimed.previous, record)
        except StateError as exc:
            # The driver refused the snapshot as data (not its own objects), before sending anything:
            # retrying cannot help, so set the file aside instead of leaving it for `rollback` forever.
            aside = self.state.set_aside_claim(pending.token)
            message = f"{exc} ({aside} holds it)"
            self.state.write_last_rollback({**outcome, "time": time.time(), "ok": False, "error": message})
            raise StateError(message) from exc
        except DockerguardError as exc:
            self.state.write_last_rollback({**outcome, "time": time.time(), "ok": False, "error": str(exc)})
            raise
        self._put_back(claimed.before if claimed.before_known else _UNKNOWN, reason, record)
        self.state.drop(pending.entry)
        self.state.release_claim(pending.token)
        self.state.write_last_rollback({**outcome, "time": time.time(), "ok": True})
        record("history", f"dropped entry {pending.entry}")
        return RollbackResult(backend.name, pending.entry, "apply", pending.created, reason, tuple(record.steps))

    def _restore_verified(self, backend: Backend, snapshot: Snapshot, previous: InstalledState | None,
                          record: _Recorder) -> None:
        backend.ensure_available()
        self.state.forget_installed()
        backend.restore(snapshot)
        record("restore", "snapshot sent in one atomic transaction")
        installed = backend.installed()
        same = installed == previous if installed is None or previous is None else installed.matches(previous)
        if not same:
            raise RollbackError("the restored ruleset read back differs from the one saved before the change; "
                                "check `dockerguard status`")
        record("verify", "restored rules read back equal the saved ones")

    def _settle_pending(self, record: _Recorder) -> PendingRecord | None:
        """Under the lock: drop a pending confirmation from an earlier boot (its ruleset is gone), roll back
        an overdue one whose timer died; return one that is still running."""
        found = self.state.pending()
        if found is None:
            return None
        pending = found.pending
        if pending.boot_id and pending.boot_id != boot_id():
            if self.state.unlink_pending(pending.token):
                record("pending", f"discarded confirmation {pending.token} from an earlier boot")
            return None
        if time.time() > pending.deadline + OVERDUE_GRACE:
            claimed = self.state.claim_pending(pending.token)
            if claimed is not None:
                record("pending", f"confirmation {pending.token} is overdue and its timer is gone: rolling back")
                try:
                    self._undo_claimed(claimed, "overdue", record)
                except StateError as exc:  # a snapshot refused as data installs nothing: go on without it
                    self._notify(f"warning: the overdue apply --confirm was not rolled back: {exc}")
            return None
        return found

    def _backend_named(self, name: str) -> Backend:
        """The driver a recorded change was made with; an explicit different --backend is an error."""
        requested = self._requested
        if isinstance(requested, Backend):
            if requested.name != name:
                raise UsageError(f"the recorded change was made with backend {name!r}, not {requested.name!r}")
            return requested
        if requested not in (None, "auto") and requested != name:
            raise UsageError(f"the recorded change was made with backend {name!r}, not {requested!r}")
        if self._resolved is not None and self._resolved[0].name == name:
            return self._resolved[0]
        return get_backend(name)

    # -- reading -----------------------------------------------------------------------------------
    def status(self, policy: Policy | None = None) -> Status:
        backend, detection = self.backend(policy)
        backend.ensure_available()
        installed = backend.installed()
        diff = None
        ruleset = None
        glance = policy
        if policy is not None:
            ruleset = self.compile(policy)
            diff = diff_states(backend.name, installed, backend.expected(ruleset))
        elif installed is not None:
            glance = self._recorded_policy()
            try:
                ruleset = None if glance is None else self.compile(glance, without_docker=True)
            except DockerguardError:
                glance = None
        rows: dict[str, Any] = {}
        if glance is not None and ruleset is not None and installed is not None:
            counters = backend.counters(ruleset, installed)
            rows = {"policy_path": glance.path, "drops": path_drops(counters, glance),
                    "entries": entry_rows(glance, ruleset, counters, self.discovery.ports)}
        state: dict[str, Any] = {"state_dir": str(self.state.path), **rows}
        try:
            found = self.state.pending()
            state.update(
                pending=None if found is None else found.pending,
                interrupted=tuple(claimed.pending for claimed in self.state.claimed()),
                history=tuple(HistorySummary(e.number, e.backend, e.timestamp, e.action, e.policy_digest, e.origin)
                              for e in self.state.history() if e.action != "repair"),
                current=self.state.current(), watch=watch_health(self.state.watch_health()),
                last_rollback=self.state.last_rollback(),
                unfinished=_dead(self.state.intent()))
        except StateError as exc:
            state["state_error"] = str(exc)
        return Status(backend.name, installed, None if diff is None else not diff.changed, detection,
                      backend.path_report(), diff, **state)

    def _recorded_policy(self) -> Policy | None:
        """The policy file of the newest recorded apply, if it is still there and loads."""
        try:
            applied = [entry for entry in self.state.history() if entry.action == "apply" and entry.policy_path]
            return load_policy(str(applied[-1].policy_path)) if applied else None
        except (DockerguardError, OSError):
            return None

    def audit(self, policy: Policy) -> AuditReport:
        """Who can reach each published port under the installed rules, against what `policy` allows."""
        backend, _ = self.backend(policy)
        backend.ensure_available()
        ruleset = self.compile(policy)
        if not policy.filter_proxy_path:  # compile did not look for them
            self.discovery = self._discover(lambda: (self._docker or DockerClient(policy.docker_socket)).containers())
        installed = backend.installed()
        expected = backend.expected(ruleset)
        return audit(backend.name, ruleset, backend.exposure(installed), self.discovery,
                     in_sync=installed == expected, path=backend.path_report(),
                     altered=altered_paths(installed, expected, backend.chain_role))

    def metrics(self, policy: Policy | None = None) -> MetricsReport:
        """The installed rules' counters (attributed to `policy`'s entries when given), drift from it, which
        published ports its allows cover, the ban sets' size and the newest recorded apply (`dockerguard
        metrics`). Reads only."""
        from .metrics import MetricsReport

        backend, _ = self.backend(policy)
        backend.ensure_available()
        notes: list[str] = []
        ruleset, published_ports, drift = None, None, None
        installed = backend.installed()
        if policy is not None:
            ruleset = self.compile(policy)
            if not policy.filter_proxy_path:  # compile did not look for them
                self.discovery = self._discover(
                    lambda: (self._docker or DockerClient(policy.docker_socket)).containers())
            published_ports = frozenset(self.discovery.ports)
            drift = installed != backend.expected(ruleset)
        banned = None
        try:
            banned = len(backend.bans()) if installed is not None else None
        except DockerguardError as exc:  # no ban sets with this backend or ruleset
            notes.append(f"ban sets: {exc}")
        last_apply = None
        try:
            applies = [entry.timestamp for entry in self.state.history() if entry.action == "apply"]
            last_apply = max(applies) if applies else None
        except StateError as exc:
            notes.append(f"history: {exc}")
        watch = pending_deadline = None
        try:
            watch = watch_health(self.state.watch_health())
            pending = self.state.pending()
            pending_deadline = None if pending is None else pending.pending.deadline
        except StateError as exc:
            notes.append(f"state: {exc}")
        return MetricsReport(backend.name, backend.counters(ruleset, installed), installed is not None, ruleset,
                             published_ports, drift, last_apply, banned, tuple(notes), watch, pending_deadline)

    def trace(self, policy: Policy, connection: Connection) -> Decision:
        """Which rule of `policy` (compiled) decides a new `connection`; notes whether the installed rules
        are that policy's, and checks the ban sets when the backend can read them. Changes nothing."""
        from .trace import trace

        ruleset = self.compile(policy)
        backend, _ = self.backend(policy)
        notes: list[str] = []
        banned: tuple[Network, ...] = ()
        try:
            backend.ensure_available()
            installed = backend.installed()
            if installed is None:
                notes.append(f"nothing of dockerguard is installed ({backend.name}): this is what the policy "
                             "would decide once applied")
            elif installed != backend.expected(ruleset):
                notes.append(f"the installed rules ({backend.name}) differ from the policy: this is what the policy "
                             "decides once applied (see `dockerguard diff`)")
            if ruleset.bans and installed is not None:
                banned = tuple(parse_network(ban.network) for ban in backend.bans())
        except DockerguardError as exc:
            notes.append(f"the installed rules were not read ({exc}): this is what the policy decides")
        decision = trace(ruleset, connection, banned)
        return replace(decision, notes=(*decision.notes, *notes))

    def live_trace(self, policy: Policy, connection: Connection, seconds: float) -> tuple[Any, ...]:
        """The kernel's trace of matching packets for `seconds` (nft only; see backends.nft.live). The
        temporary rule comes and goes under the ruleset lock; the watch in between does not hold it."""
        backend, _ = self.backend(policy)
        backend.ensure_available()
        if connection.interface is not None:
            raise UsageError("--live traces packets on every external interface: leave out --interface")
        return backend.live_trace(connection.source, connection.proto, connection.port, connection.path, seconds,
                                  lambda: ruleset_lock("dockerguard trace --live", state_module.LOCK_TIMEOUT,
                                                       self._notify))

    def remove(self) -> tuple[str, ...]:
        """Delete everything dockerguard installed: with the backend asked for, or, when none was, with every
        backend that holds objects of ours. Returns the backends removed from (empty: nothing was there).
        Each removal is recorded in the history like an apply, so `rollback` can put the rules back.
        Raises when something of ours is still there afterwards: `remove` never reports a success it did
        not achieve.

        An unusable state directory (untrusted, damaged, unwritable) does not stop it: remove reads
        nothing from there and only deletes our own objects, under the ruleset lock, so the rules go and
        `notify` says that this remove could not be recorded (`rollback` cannot undo it). Someone who
        needs the rules gone at 3 a.m. should not first have to repair a directory. A state directory
        locked by another dockerguard still stops it (LockTimeout names the holder): that one is busy
        changing the ruleset right now."""
        if self._requested is not None:
            backends = [self.backend()[0]]
        else:
            backends = [backend for backend in map(get_backend, DRIVERS) if backend.availability().available]
        record = _Recorder()
        removed: list[str] = []
        deadline = time.monotonic() + state_module.LOCK_TIMEOUT
        with contextlib.ExitStack() as held:
            held.enter_context(ruleset_lock("dockerguard remove", state_module.LOCK_TIMEOUT, self._notify))
            problem = None
            try:
                held.enter_context(self.state.locked("dockerguard remove", timeout=remaining(deadline),
                                                     on_wait=self._notify))
            except LockTimeout:
                raise
            except StateError as exc:
                problem = str(exc)
            if problem is None:
                self._settle_unfinished(record)
            pending = self._settle_pending(record) if problem is None else None
            for backend in backends:
                backend.ensure_available()
                installed, snapshot = backend.read()
                if installed is None:
                    continue
                if pending is not None:
                    raise PendingConfirmationError(_pending_message(pending.pending))
                recorded = None
                if problem is None:
                    try:
                        current = self.state.current()
                        recorded = self.state.push(backend=backend.name, action="remove", policy_digest=None,
                                                   policy_path=None, snapshot=snapshot, previous=installed,
                                                   origin=Origin.here("remove"), before=current)
                        self.state.forget_installed()
                        self._begin("remove", backend, recorded.number)
                    except StateError as exc:
                        problem = str(exc)
                if problem is not None:
                    self._notify(f"warning: removing without recording it (`rollback` cannot undo this remove): "
                                 f"{problem}")
                backend.remove()
                if recorded is not None:
                    self._put_in_force(Current(None, "remove", time.time(), recorded.origin), None, record)
                    self.state.clear_intent()
                removed.append(backend.name)
            left = [backend.name for backend in backends if backend.installed() is not None]
        if left:
            raise TransactionError(f"objects of dockerguard are still installed with {', '.join(left)} after remove")
        return tuple(removed)

    # -- bans ----------------------------------------------------------------------------------------
    def ban(self, address: str, timeout: int | None = None) -> Network:
        """Put a source into the ban sets (checked first on every judged path); `timeout` in seconds."""
        network = _ban_network(address)
        backend, _ = self.backend()
        backend.ensure_available()
        backend.ban(network, timeout)
        return network

    def unban(self, address: str) -> bool:
        network = _ban_network(address)
        backend, _ = self.backend()
        backend.ensure_available()
        return backend.unban(network)

    def bans(self) -> tuple[Ban, ...]:
        backend, _ = self.backend()
        backend.ensure_available()
        return backend.bans()


    # -- locking -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, command: str) -> Iterator[None]:
        """The ruleset lock of this network namespace, then the state directory's (always in this order:
        see `locking`), within one LOCK_TIMEOUT; `notify` hears whom we wait for."""
        deadline = time.monotonic() + state_module.LOCK_TIMEOUT
        with ruleset_lock(f"dockerguard {command}", state_module.LOCK_TIMEOUT, self._notify), \
                self.state.locked(f"dockerguard {command}", timeout=remaining(deadline), on_wait=self._notify):
            yield


_UNKNOWN = object()  # the policy in force before a change recorded by an older dockerguard


def _source_of(policy: Policy, backend: Backend) -> PolicySource | None:
    """The policy as applied (its file and list files by digest, the backend); None for a policy that was
    not read from a file (the API's parse_policy)."""
    if policy.path is None or policy.source_digest is None:
        return None
    return PolicySource(os.path.abspath(policy.path), policy.source_digest,
                        tuple(sorted((os.path.abspath(path), digest) for path, digest in policy.source_files)),
                        backend.name)


def watch_health(recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """watch.json with `running` (its process is alive) and `stale` (alive, but no check for three intervals
    and 30 s: hung) added; None when no watch ever ran with this state directory."""
    if recorded is None:
        return None
    running = _alive(int(recorded["pid"])) and recorded["state"] != "stopped"
    last = recorded.get("last_check") or recorded["started"]
    stale = running and time.time() - last > max(3 * float(recorded["interval"]), 30.0)
    return {**recorded, "running": running, "stale": stale}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


def _dead(intent: Intent | None) -> Intent | None:
    """`intent` unless its process still runs: status takes no lock, and a change under way is not an
    interrupted one."""
    if intent is None:
        return None
    try:
        os.kill(intent.pid, 0)
    except ProcessLookupError:
        return intent
    except OSError:  # EPERM: it runs, as another user
        return None
    return None


def _ban_network(address: str) -> Network:
    try:
        return parse_network(address)
    except AddressError as exc:
        raise UsageError(str(exc)) from None


def _stable(backend: Backend, generation: int | None) -> int | None:
    """`generation` (read before a verifying read) if nothing was committed since; else None, so that
    the next check reads back instead of trusting a number that covers a change nobody verified."""
    return generation if generation is not None and backend.generation() == generation else None


def state_digest(state: InstalledState | None) -> str:
    """A fingerprint of a read-back state (hooks, rules, set elements; counters left out)."""
    if state is None:
        return "nothing"
    text = json.dumps([state.hooks, [(rule.chain, rule.description, rule.body) for rule in state.rules], state.sets,
                       state.set_specs])
    return hashlib.sha256(text.encode()).hexdigest()


def _inputs_digest(containers: list[ContainerInfo] | None, ports: frozenset[tuple[str, int]] | None,
                   networks: list[NetworkInfo] | None = None) -> str:
    """The Docker facts a compiled ruleset depends on: containers (for container and egress entries),
    published ports, networks (egress entries)."""
    listed = None if containers is None else sorted(repr(container) for container in containers)
    bridges = None if networks is None else sorted(repr(network) for network in networks)
    return hashlib.sha256(json.dumps([listed, None if ports is None else sorted(ports), bridges]).encode()).hexdigest()


def _clock(timestamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(timestamp))


def _pending_message(pending: Pending) -> str:
    return (f"an apply --confirm is pending until {_clock(pending.deadline)} (ruleset {pending.policy_digest}): "
            "run `dockerguard confirm` to keep it or `dockerguard rollback` to undo it first")
