"""The state directory: apply history (for `rollback`) and the pending `apply --confirm`.

Layout (default /var/lib/dockerguard, or $DOCKERGUARD_STATE_DIR, or --state-dir)::

    lock                      flock()ed by every command that changes the ruleset
    history/0001.json ...     one per changing apply/remove: the driver's snapshot from just before it
    pending/<token>.json      an `apply --confirm` awaiting `dockerguard confirm` (at most one)
    pending/<token>.claimed   the same file after the rollback timer (or `rollback`) took it over
    timer-<token>.pid         written by the detached rollback timer while it runs
    last-rollback.json        outcome of the last automatic rollback (the timer has no terminal)

Every file is written to a temporary name and renamed into place, so a reader (or a crash) never sees a
half-written file. Snapshots describe the firewall, so the directory is created 0700.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends import InstalledRule, InstalledState, Snapshot
from .errors import StateError
from .locking import flock_exclusive

DEFAULT_STATE_DIR = "/var/lib/dockerguard"
ENV_STATE_DIR = "DOCKERGUARD_STATE_DIR"
HISTORY_LIMIT = 10
LOCK_TIMEOUT = 30.0
TIMER_START_TIMEOUT = 15.0
_FORMAT = 1


def resolve_state_dir(value: str | os.PathLike[str] | None = None) -> Path:
    """Explicit value, else $DOCKERGUARD_STATE_DIR, else /var/lib/dockerguard; made absolute because the
    rollback timer runs from /."""
    chosen = value if value is not None else (os.environ.get(ENV_STATE_DIR) or DEFAULT_STATE_DIR)
    return Path(chosen).absolute()


def boot_id() -> str:
    """Changes at every boot: a pending confirmation from an earlier boot guards a ruleset that is gone."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class HistoryEntry:
    """One recorded change: `snapshot` (and `previous`, what was installed) from right before it."""

    number: int
    backend: str
    timestamp: float
    action: str  # "apply" or "remove"
    policy_digest: str | None
    policy_path: str | None
    snapshot: Snapshot
    previous: InstalledState | None


@dataclass(frozen=True)
class Pending:
    """An `apply --confirm` awaiting confirmation. `entry` is the history entry it would undo."""

    token: str
    backend: str
    created: float
    deadline: float
    entry: int
    policy_digest: str
    boot_id: str


@dataclass(frozen=True)
class PendingRecord:
    """A pending file's whole content: what the rollback timer restores without any other input."""

    pending: Pending
    snapshot: Snapshot
    previous: InstalledState | None


class StateDir:
    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = resolve_state_dir(path)
        self.history_dir = self.path / "history"
        self.pending_dir = self.path / "pending"

    # -- locking -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """Serialise changes between dockerguard processes (CLI, rollback timer, systemd at boot)."""
        self._ensure()
        try:
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open {self.path / 'lock'}: {exc.strerror}") from None
        try:
            try:
                locked = flock_exclusive(fd, timeout)
            except OSError:
                locked = False
            if not locked:
                raise StateError(f"{self.path} is locked by another dockerguard process (waited {timeout:.0f} s)")
            yield
        finally:
            os.close(fd)  # also releases the lock

    # -- history -----------------------------------------------------------------------------------
    def history_numbers(self) -> list[int]:
        try:
            names = os.listdir(self.history_dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateError(f"cannot read {self.history_dir}: {exc.strerror}") from None
        return sorted(int(name[:-5]) for name in names if name.endswith(".json") and name[:-5].isdigit())

    def history(self) -> list[HistoryEntry]:
        return [self.entry(number) for number in self.history_numbers()]

    def entry(self, number: int) -> HistoryEntry:
        raw = _read_json(self._entry_path(number))
        try:
            return HistoryEntry(int(raw["number"]), str(raw["backend"]), float(raw["timestamp"]),
                                str(raw.get("action", "apply")), raw.get("policy_digest"),
                                raw.get("policy_path"), snapshot_from_json(raw["snapshot"]),
                                state_from_json(raw.get("previous")))
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"{self._entry_path(number)} is damaged ({exc!r})") from None

    def push(self, *, backend: str, action: str, policy_digest: str | None, policy_path: str | None,
             snapshot: Snapshot, previous: InstalledState | None) -> HistoryEntry:
        """Record a snapshot before a change; keeps the newest HISTORY_LIMIT entries."""
        numbers = self.history_numbers()
        entry = HistoryEntry((numbers[-1] + 1) if numbers else 1, backend, time.time(), action,
                             policy_digest, policy_path, snapshot, previous)
        self._ensure(self.history_dir)
        _write_json(self._entry_path(entry.number), {
            "format": _FORMAT, "number": entry.number, "backend": backend, "timestamp": entry.timestamp,
            "action": action, "policy_digest": policy_digest, "policy_path": policy_path,
            "snapshot": snapshot_to_json(snapshot), "previous": state_to_json(previous)})
        for old in [*numbers, entry.number][:-HISTORY_LIMIT]:
            self.drop(old)
        return entry

    def drop(self, number: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._entry_path(number))

    def _entry_path(self, number: int) -> Path:
        return self.history_dir / f"{number:04d}.json"

    # -- pending confirmation ----------------------------------------------------------------------
    def pending(self) -> PendingRecord | None:
        """The pending confirmation, if any (there is at most one: apply refuses a second)."""
        try:
            names = sorted(name for name in os.listdir(self.pending_dir) if name.endswith(".json"))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self.pending_dir}: {exc.strerror}") from None
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # confirmed or claimed meanwhile
                return _pending_from_json(_read_json(self.pending_dir / name))
        return None

    def claimed(self) -> list[PendingRecord]:
        """Pending files a rollback took over and has not finished (it failed, or it runs right now)."""
        try:
            names = sorted(name for name in os.listdir(self.pending_dir) if name.endswith(".claimed"))
        except FileNotFoundError:
            return []
        records = []
        for name in names:
            with contextlib.suppress(FileNotFoundError, StateError):
                records.append(_pending_from_json(_read_json(self.pending_dir / name)))
        return records

    def create_pending(self, record: PendingRecord) -> None:
        self._ensure(self.pending_dir)
        pending = record.pending
        _write_json(self.pending_dir / f"{pending.token}.json", {
            "format": _FORMAT, "token": pending.token, "backend": pending.backend, "created": pending.created,
            "deadline": pending.deadline, "entry": pending.entry, "policy_digest": pending.policy_digest,
            "boot_id": pending.boot_id, "snapshot": snapshot_to_json(record.snapshot),
            "previous": state_to_json(record.previous)})

    # The decision point between `confirm` and the rollback timer: whichever of the unlink (confirm) and
    # the rename (rollback) of pending/<token>.json succeeds first wins, the other gets ENOENT. Both are
    # atomic in the kernel, so "confirm at the deadline" has exactly one outcome.
    def unlink_pending(self, token: str) -> bool:
        """`confirm` (and an apply that failed and was undone) take the pending file away."""
        try:
            os.unlink(self.pending_dir / f"{token}.json")
        except FileNotFoundError:
            return False
        _fsync_dir(self.pending_dir)
        return True

    def claim_pending(self, token: str) -> PendingRecord | None:
        claimed = self.pending_dir / f"{token}.claimed"
        try:
            os.rename(self.pending_dir / f"{token}.json", claimed)
        except FileNotFoundError:
            return None
        _fsync_dir(self.pending_dir)
        return _pending_from_json(_read_json(claimed))

    def release_claim(self, token: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pending_dir / f"{token}.claimed")

    def read_pending(self, token: str) -> PendingRecord | None:
        try:
            return _pending_from_json(_read_json(self.pending_dir / f"{token}.json"))
        except FileNotFoundError:
            return None

    def is_pending(self, token: str) -> bool:
        return (self.pending_dir / f"{token}.json").exists()

    # -- what the last verified apply installed -----------------------------------------------------
    def installed_record(self) -> dict[str, Any] | None:
        """installed.json (see Engine._unchanged); None when missing or not what we wrote."""
        try:
            record = _read_json(self.path / "installed.json")
        except (FileNotFoundError, StateError):
            return None
        keys = ("backend", "policy", "facts", "ruleset", "inputs", "state")
        if not all(key in record for key in keys) or not isinstance(record["facts"], dict):
            return None
        return record

    def write_installed(self, record: dict[str, Any]) -> None:
        self._ensure()
        _write_json(self.path / "installed.json", {"format": _FORMAT, **record})

    def forget_installed(self) -> None:
        """Before anything changes the ruleset: the next apply takes the full path."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path / "installed.json")

    # -- the timer's traces ------------------------------------------------------------------------
    def timer_pid_path(self, token: str) -> Path:
        return self.path / f"timer-{token}.pid"

    def write_last_rollback(self, outcome: dict[str, Any]) -> None:
        with contextlib.suppress(StateError):  # a report; never worth failing a rollback for
            _write_json(self.path / "last-rollback.json", outcome)

    def last_rollback(self) -> dict[str, Any] | None:
        try:
            return _read_json(self.path / "last-rollback.json")
        except (FileNotFoundError, StateError):
            return None

    def _ensure(self, directory: Path | None = None) -> None:
        for path in (self.path, directory):
            if path is None:
                continue
            try:
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise StateError(f"cannot create state directory {path}: {exc.strerror} "
                                 f"(use --state-dir or ${ENV_STATE_DIR})") from None


def spawn_rollback_timer(state_dir: Path, token: str) -> int:
    """Start the detached process that rolls back at the deadline unless `confirm` removes the pending
    file first.

    Why a detached process: it must outlive the CLI (SIGKILL, a dropped SSH session's SIGHUP), so it gets
    its own session (no controlling terminal, not in the CLI's process group) and /dev/null for stdio (a
    vanished terminal cannot hurt it). It inherits the network namespace of the apply, which is the one
    to restore. systemd-run timers would survive too, but there is no systemd in containers or in
    `ip netns exec`. Everything it needs is in the pending file, so it takes only the token.

    Returns only once the timer has written its pid file, i.e. it imported, read the pending file and is
    waiting: an apply is never sent with a safety net that died on start.
    """
    argv = [sys.executable, "-m", "dockerguard", "_rollback-timer", "--state-dir", str(state_dir), token]
    try:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True, cwd="/")
    except OSError as exc:
        raise StateError(f"cannot start the rollback timer: {exc}") from None
    _TIMERS.append(process)  # keep a reference: no "still running" warning when the CLI exits first
    ready = StateDir(state_dir).timer_pid_path(token)
    deadline = time.monotonic() + TIMER_START_TIMEOUT
    while not ready.exists():
        status = process.poll()
        if status == 0:
            break  # it found nothing pending (confirmed already) and left
        if status is not None or time.monotonic() > deadline:
            if status is None:
                process.kill()
            raise StateError("the rollback timer did not start " + (
                f"(it exited with status {status})" if status is not None else f"within {TIMER_START_TIMEOUT:g} s"))
        time.sleep(0.01)
    return process.pid


_TIMERS: list[subprocess.Popen[bytes]] = []


# -- JSON forms -----------------------------------------------------------------------------------------
def state_to_json(state: InstalledState | None) -> dict[str, Any] | None:
    if state is None:
        return None
    return {"backend": state.backend, "hooks": list(state.hooks),
            "rules": [[rule.chain, rule.description] for rule in state.rules],
            "sets": [[name, list(elements)] for name, elements in state.sets]}


def state_from_json(raw: dict[str, Any] | None) -> InstalledState | None:
    if raw is None:
        return None
    return InstalledState(str(raw["backend"]), tuple(raw["hooks"]),
                          tuple(InstalledRule(chain, description) for chain, description in raw["rules"]),
                          tuple((name, tuple(elements)) for name, elements in raw.get("sets", [])))


def snapshot_to_json(snapshot: Snapshot) -> dict[str, Any]:
    return {"backend": snapshot.backend, "data": snapshot.data}


def snapshot_from_json(raw: dict[str, Any]) -> Snapshot:
    return Snapshot(str(raw["backend"]), raw["data"])


def _pending_from_json(raw: dict[str, Any]) -> PendingRecord:
    try:
        pending = Pending(str(raw["token"]), str(raw["backend"]), float(raw["created"]),
                          float(raw["deadline"]), int(raw["entry"]), str(raw["policy_digest"]),
                          str(raw.get("boot_id", "")))
        return PendingRecord(pending, snapshot_from_json(raw["snapshot"]), state_from_json(raw.get("previous")))
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"damaged pending confirmation file ({exc!r})") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise StateError(f"{path} is damaged: {exc}") from None
    if not isinstance(data, dict):
        raise StateError(f"{path} is damaged: not a JSON object")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1))


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file (0600), fsync, rename over `path`, fsync the directory: a reader sees the
    old content or the new, never a part."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise StateError(f"cannot write {path}: {exc.strerror}") from None
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
