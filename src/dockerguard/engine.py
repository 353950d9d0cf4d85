"""Plan, apply (with verification and rollback), status and remove: the API behind the CLI.

    from dockerguard import Engine, load_policy
    Engine().apply(load_policy("/etc/dockerguard/policy.toml"))
"""

from __future__ import annotations

from dataclasses import dataclass

from .backends import Backend, InstalledState, Rendered, get_backend
from .compiler import compile_policy
from .detect import Detection, detect
from .errors import ApplyError, DockerguardError, RollbackError
from .model import Ruleset
from .policy import Policy


@dataclass(frozen=True)
class Plan:
    backend: str
    ruleset: Ruleset
    rendered: Rendered
    installed: InstalledState | None
    expected: InstalledState
    detection: Detection | None = None

    @property
    def in_sync(self) -> bool:
        return self.installed == self.expected


@dataclass(frozen=True)
class ApplyResult:
    backend: str
    changed: bool
    digest: str


@dataclass(frozen=True)
class Status:
    backend: str
    installed: InstalledState | None
    in_sync: bool | None  # None when no policy was given to compare with
    detection: Detection | None = None


class Engine:
    """Drives one backend. `backend` may be a driver instance, a driver name, "auto", or None to
    follow the policy's `backend` setting."""

    def __init__(self, backend: Backend | str | None = None) -> None:
        self._requested = backend
        self._resolved: tuple[Backend, Detection | None] | None = None

    def backend(self, policy: Policy | None = None) -> tuple[Backend, Detection | None]:
        if self._resolved is None:
            requested = self._requested
            if requested is None:
                requested = policy.backend if policy is not None else "auto"
            if isinstance(requested, Backend):
                self._resolved = (requested, None)
            elif requested == "auto":
                detection = detect()
                self._resolved = (get_backend(detection.backend), detection)
            else:
                self._resolved = (get_backend(requested), None)
        return self._resolved

    def plan(self, policy: Policy) -> Plan:
        backend, detection = self.backend(policy)
        backend.ensure_available()
        ruleset = compile_policy(policy)
        return Plan(backend.name, ruleset, backend.render(ruleset), backend.installed(),
                    backend.expected(ruleset), detection)

    def render(self, policy: Policy) -> Rendered:
        """What apply would send, without reading the kernel (works without root)."""
        backend, _ = self.backend(policy)
        return backend.render(compile_policy(policy))

    def apply(self, policy: Policy) -> ApplyResult:
        """Install `policy` atomically; on any failure put the previous ruleset back and raise."""
        backend, _ = self.backend(policy)
        plan = self.plan(policy)
        if plan.in_sync:
            return ApplyResult(backend.name, False, plan.ruleset.digest)  # the kernel is not touched
        snapshot = backend.snapshot()
        try:
            backend.apply(plan.rendered)
            installed = backend.installed()
            if installed != plan.expected:
                raise ApplyError("verification failed: the rules read back differ from the rules sent")
        except DockerguardError as exc:
            try:
                backend.restore(snapshot)
            except DockerguardError as restore_exc:
                raise RollbackError(f"apply failed ({exc}) and restoring the previous ruleset failed "
                                    f"too ({restore_exc})") from restore_exc
            if isinstance(exc, ApplyError):
                raise
            raise ApplyError(f"{exc}; the previous ruleset was restored") from exc
        return ApplyResult(backend.name, True, plan.ruleset.digest)

    def status(self, policy: Policy | None = None) -> Status:
        backend, detection = self.backend(policy)
        backend.ensure_available()
        installed = backend.installed()
        in_sync = None if policy is None else installed == backend.expected(compile_policy(policy))
        return Status(backend.name, installed, in_sync, detection)

    def remove(self) -> bool:
        """Delete everything dockerguard installed with this backend; False if nothing was there."""
        backend, _ = self.backend()
        backend.ensure_available()
        if backend.installed() is None:
            return False
        backend.remove()
        return True
