"""The state directory: apply history (for `rollback`) and the pending `apply --confirm`.

Layout (default /var/lib/dockerguard, or $DOCKERGUARD_STATE_DIR, or --state-dir)::

    lock                      flock()ed by every command that changes the ruleset; names its holder
    history/0001.json ...     one per changing apply/remove: the driver's snapshot from just before it
    pending/<token>.json      an `apply --confirm` awaiting `dockerguard confirm` (at most one)
    pending/<token>.claimed   the same file after the rollback timer (or `rollback`) took it over
    timer-<token>.pid         written by the detached rollback timer while it runs
    installed.json            what the last verified apply installed (the cheap no-op compares with it)
    current.json              the operator's policy in force: what `watch` keeps, what `rollback` undid
    policies/<sha256>         the policy files (and list files) in force or recorded in the history
    watch.json                `watch`'s health: its last check, repairs, failures (status, metrics)
    last-rollback.json        outcome of the last automatic rollback (the timer has no terminal)

Root installs what these files say, so the directory is trusted only as far as `safefs` checks it (ours,
0700, no symlinks, no directory above it writable by others), every file goes through a descriptor of
it without following symlinks, and every file read is DATA: validated field by field (our own backend
names, digests and tokens of a fixed form, numbers in range) and, when damaged, reported and ignored
(or the command that needs it refuses), never acted upon. Snapshots are validated once more by the
driver that restores them, against its own object names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from . import safefs
from .backends import BACKEND_CHOICES, InstalledRule, InstalledState, Snapshot, check_backend_name
from .errors import DockerguardError, StateError
from .locking import acquire

DEFAULT_STATE_DIR = "/var/lib/dockerguard"
ENV_STATE_DIR = "DOCKERGUARD_STATE_DIR"
HISTORY_LIMIT = 10
LOCK_TIMEOUT = 30.0
TIMER_START_TIMEOUT = 15.0
_FORMAT = 1

TOKEN = re.compile(r"[0-9a-f]{16}")  # secrets.token_hex(8): names pending files, pid files, timer argv
_T = TypeVar("_T")
_DIGEST = re.compile(r"[0-9a-f]{1,64}")  # ruleset digests (12), sha256 digests (64)
_BOOT_ID = re.compile(r"[0-9a-f-]{0,64}")
_HISTORY_NAME = re.compile(r"([0-9]{1,9})\.json")
_ACTIONS = ("apply", "remove", "repair")
_CURRENT_ACTIONS = ("apply", "rollback", "remove")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_POLICY_STORE = "policies"
_ENTRY_HEAD = 64 << 10  # a history entry's fields before its snapshot fit in this
_REASONS = ("rollback", "deadline", "declined", "overdue")
_INTENTS = ("apply", "rollback", "remove")
_MAX_TEXT = 4096
# The in-memory test driver (backends/fake.py) records changes too. It is no registered driver, so a
# record naming it can never make the CLI load a driver and install anything.
_TEST_BACKENDS = frozenset({"fake"})

Warn = Callable[[str], None]


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


def check_token(token: str) -> str:
    """A pending confirmation's token, which names files and is a command-line argument of the timer."""
    if not isinstance(token, str) or not TOKEN.fullmatch(token):
        raise StateError(f"{token!r:.40} is not a pending-confirmation token (16 hex digits)")
    return token


@dataclass(frozen=True)
class Origin:
    """What made a change: the command line, who ran it (`uid`; `login_uid`: the person a `sudo` or `su`
    started from, as the kernel's audit records it; None when unset) and why (`reason`: "apply", "reload",
    "rollback", "deadline", "remove", ...)."""

    command: str
    uid: int
    login_uid: int | None
    reason: str

    @classmethod
    def here(cls, reason: str, command: str | None = None) -> Origin:
        """This process: its command line (the program's name, not its path), its uids."""
        if command is None:
            argv = [os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "dockerguard", *sys.argv[1:]]
            command = " ".join(shlex.quote(arg) for arg in argv)
        return cls(_shown(command), os.getuid(), _login_uid(), reason)

    def __str__(self) -> str:
        who = f"uid {self.uid}" + (f" (login uid {self.login_uid})" if self.login_uid not in (None, self.uid)
                                   else "")
        return f"`{self.command}` by {who} ({self.reason})"


@dataclass(frozen=True)
class PolicySource:
    """A policy as applied: its file (absolute path, sha256 of its bytes), the list files it read (path,
    sha256) and the backend it was applied with. Its bytes are kept in policies/ while it is in force or
    recorded in the history, so `watch` can take it up again after a `rollback`."""

    path: str
    digest: str
    files: tuple[tuple[str, str], ...]
    backend: str


@dataclass(frozen=True)
class Current:
    """The operator's policy in force (current.json): `policy` None when dockerguard's rules were removed.
    `action` is what put it there ("apply", "rollback" or "remove"), `origin` who and why (its reason says
    more: "reload", "deadline", ...)."""

    policy: PolicySource | None
    action: str
    time: float
    origin: Origin | None


@dataclass(frozen=True)
class HistoryEntry:
    """One recorded change: `snapshot` (and `previous`, what was installed) from right before it. `origin`
    says what made it; `before` is the operator's policy that was in force before it (what `rollback` puts
    back in force), `before_known` False for entries of an older dockerguard that did not record it."""

    number: int
    backend: str
    timestamp: float
    action: str  # "apply" or "remove"
    policy_digest: str | None
    policy_path: str | None
    snapshot: Snapshot
    previous: InstalledState | None
    origin: Origin | None = None
    before: PolicySource | None = None
    before_known: bool = False


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
class Intent:
    """A change under way (intent.json): `action` ("apply", "rollback", "remove") with `backend`, begun by
    process `pid` at `started`; history entry `entry` holds the ruleset from before it. `token`: the
    pending confirmation an `apply --confirm` armed for it."""

    action: str
    backend: str
    entry: int
    pid: int
    started: float
    token: str | None = None


@dataclass(frozen=True)
class PendingRecord:
    """A pending file's whole content: what the rollback timer restores without any other input, and the
    operator's policy it puts back in force (`before`; `before_known` False in an older file)."""

    pending: Pending
    snapshot: Snapshot
    previous: InstalledState | None
    before: PolicySource | None = None
    before_known: bool = False


class StateDir:
    """`backends`: names besides the registered drivers that recorded changes may name (an Engine built
    on a driver instance, e.g. the test driver). `warn` hears about damaged files that were ignored."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, backends: Iterable[str] = (),
                 warn: Warn | None = None) -> None:
        self.path = resolve_state_dir(path)
        self.history_dir = self.path / "history"
        self.pending_dir = self.path / "pending"
        self._backends = _TEST_BACKENDS | frozenset(backends)
        self._warn: Warn = warn if warn is not None else (lambda message: None)
        self._held: int | None = None  # the directory's descriptor while locked() holds it

    # -- the directory -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _root(self, *, create: bool = False) -> Iterator[int]:
        """A checked descriptor of the state directory (FileNotFoundError when missing, unless `create`)."""
        if self._held is not None:
            yield self._held
            return
        fd = self._open(create=create)
        try:
            yield fd
        finally:
            os.close(fd)

    def _open(self, *, create: bool) -> int:
        try:
            return safefs.open_dir(self.path, create=create)
        except StateError as exc:
            raise StateError(f"unusable state directory {self.path}: {exc}; or use another state directory "
                             f"(--state-dir DIR, ${ENV_STATE_DIR})") from None

    @contextlib.contextmanager
    def _sub(self, name: str, *, create: bool = False) -> Iterator[int]:
        """history/ or pending/, checked like the state directory itself."""
        with self._root(create=create) as root:
            fd = safefs.open_subdir(root, name, str(self.path / name), create=create)
            try:
                yield fd
            finally:
                os.close(fd)

    def check(self) -> None:
        """Raise StateError when the state directory exists but cannot be trusted."""
        with contextlib.suppress(FileNotFoundError), self._root():
            pass

    # -- locking -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, command: str = "dockerguard", *, timeout: float | None = None,
               on_wait: Warn | None = None) -> Iterator[None]:
        """Serialise changes between dockerguard processes sharing this state directory (CLI, rollback
        timer, systemd at boot). The lock file names its holder for those who wait. Leftover temporary
        files of writers that died are deleted."""
        root = self._open(create=True)
        try:
            lock = safefs.open_lock_file(root, "lock", str(self.path / "lock"))
            try:
                acquire(lock, str(self.path / "lock"), command, LOCK_TIMEOUT if timeout is None else timeout,
                        on_wait)
                self._held = root
                try:
                    self._clean_temporaries(root)
                    yield
                finally:
                    self._held = None
            finally:
                os.close(lock)  # also releases the lock
        finally:
            os.close(root)

    def _clean_temporaries(self, root: int) -> None:
        removed = [str(self.path / name) for name in safefs.clean_stale_temporaries(root)]
        for sub in ("history", "pending"):
            with contextlib.suppress(FileNotFoundError), self._sub(sub) as fd:
                removed += [str(self.path / sub / name) for name in safefs.clean_stale_temporaries(fd)]
        if removed:
            self._warn(f"deleted {len(removed)} temporary file(s) left by an interrupted dockerguard: "
                       + ", ".join(removed))

    # -- history -----------------------------------------------------------------------------------
    def history_numbers(self) -> list[int]:
        try:
            with self._sub("history") as fd:
                names = os.listdir(fd)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateError(f"cannot read {self.history_dir}: {exc.strerror}") from None
        return sorted(int(match.group(1)) for match in map(_HISTORY_NAME.fullmatch, names) if match)

    def history(self) -> list[HistoryEntry]:
        """The readable entries; damaged ones are reported and left out."""
        entries = []
        for number in self.history_numbers():
            try:
                entries.append(self.entry(number))
            except FileNotFoundError:
                continue
            except StateError as exc:
                self._warn(f"warning: {exc}")
        return entries

    def entry(self, number: int) -> HistoryEntry:
        where = self._entry_path(number)
        try:
            raw = self._read_json("history", where.name, where)
        except FileNotFoundError:
            raise StateError(f"{where} is gone (deleted meanwhile?)") from None
        try:
            entry = self._history_from_json(raw, number)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"{where} is damaged ({_problem(exc)}): nothing in it is used; move it away to "
                             "roll back past it") from None
        return entry

    def push(self, *, backend: str, action: str, policy_digest: str | None, policy_path: str | None,
             snapshot: Snapshot, previous: InstalledState | None, origin: Origin | None = None,
             before: Current | None = None) -> HistoryEntry:
        """Record a snapshot before a change; keeps the newest HISTORY_LIMIT entries. A "repair" (the policy in
        force, applied again: Docker or drift changed the kernel) is recorded only while it runs, for crash
        recovery: it trims nothing, and the engine drops it once done (`rollback` never walks one)."""
        numbers = self.history_numbers()
        known = before is not None  # `before`: the current.json of the moment (None: not known)
        entry = HistoryEntry((numbers[-1] + 1) if numbers else 1, backend, time.time(), action,
                             policy_digest, policy_path, snapshot, previous, origin,
                             before.policy if before is not None else None, known)
        with self._sub("history", create=True) as fd:
            # "before" ahead of the snapshot: `_referenced_policies` reads it from the head of the file.
            _write_json(fd, self._entry_path(entry.number), {
                "format": _FORMAT, "number": entry.number, "backend": backend, "timestamp": entry.timestamp,
                "action": action, "policy_digest": policy_digest, "policy_path": policy_path,
                "origin": None if origin is None else asdict(origin),
                **({"before": _source_json(entry.before)} if known else {}),
                "snapshot": snapshot_to_json(snapshot), "previous": state_to_json(previous)})
            if action != "repair":
                for old in [*numbers, entry.number][:-HISTORY_LIMIT]:
                    safefs.unlink(fd, self._entry_path(old).name)
        return entry

    def drop(self, number: int) -> None:
        with contextlib.suppress(FileNotFoundError), self._sub("history") as fd:
            safefs.unlink(fd, self._entry_path(number).name)

    def _entry_path(self, number: int) -> Path:
        return self.history_dir / f"{number:04d}.json"

    # -- pending confirmation ----------------------------------------------------------------------
    def pending(self) -> PendingRecord | None:
        """The pending confirmation, if any (there is at most one: apply refuses a second). A damaged or
        foreign file is reported and ignored: it guards nothing we could restore."""
        for record in self._pending_records(".json"):
            return record
        return None

    def claimed(self) -> list[PendingRecord]:
        """Pending files a rollback took over and has not finished (it failed, or it runs right now)."""
        return list(self._pending_records(".claimed"))

    def _pending_records(self, suffix: str) -> Iterator[PendingRecord]:
        try:
            with self._sub("pending") as fd:
                names = sorted(name for name in os.listdir(fd) if name.endswith(suffix))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateError(f"cannot read {self.pending_dir}: {exc.strerror}") from None
        for name in names:
            token = name[:-len(suffix)]
            if not TOKEN.fullmatch(token):
                self._warn(f"warning: ignored {self.pending_dir / name}: not a name dockerguard writes")
                continue
            try:
                record = self._read_record(token, name)
            except FileNotFoundError:  # confirmed or claimed meanwhile
                continue
            except StateError as exc:
                self._warn(f"warning: ignored {exc}")
                continue
            yield record

    def create_pending(self, record: PendingRecord) -> None:
        pending = record.pending
        check_token(pending.token)
        with self._sub("pending", create=True) as fd:
            _write_json(fd, self.pending_dir / f"{pending.token}.json", {
                "format": _FORMAT, "token": pending.token, "backend": pending.backend,
                "created": pending.created, "deadline": pending.deadline, "entry": pending.entry,
                "policy_digest": pending.policy_digest, "boot_id": pending.boot_id,
                "snapshot": snapshot_to_json(record.snapshot), "previous": state_to_json(record.previous),
                **({"before": _source_json(record.before)} if record.before_known else {})})

    # The decision point between `confirm` and the rollback timer: whichever of the unlink (confirm) and
    # the rename (rollback) of pending/<token>.json succeeds first wins, the other gets ENOENT. Both are
    # atomic in the kernel, so "confirm at the deadline" has exactly one outcome.
    def unlink_pending(self, token: str) -> bool:
        """`confirm` (and an apply that failed and was undone) take the pending file away."""
        check_token(token)
        try:
            with self._sub("pending") as fd:
                if not safefs.unlink(fd, f"{token}.json"):
                    return False
                safefs.fsync_dir(fd)
        except FileNotFoundError:
            return False
        return True

    def claim_pending(self, token: str) -> PendingRecord | None:
        check_token(token)
        try:
            with self._sub("pending") as fd:
                os.rename(f"{token}.json", f"{token}.claimed", src_dir_fd=fd, dst_dir_fd=fd)
                safefs.fsync_dir(fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot claim {self.pending_dir / f'{token}.json'}: {exc.strerror}") from None
        return self._read_record(token, f"{token}.claimed")

    def set_aside_claim(self, token: str) -> Path:
        """A claimed file whose snapshot was refused becomes `<token>.refused`: kept for a human to look
        at, never read again."""
        check_token(token)
        with contextlib.suppress(FileNotFoundError), self._sub("pending") as fd:
            os.rename(f"{token}.claimed", f"{token}.refused", src_dir_fd=fd, dst_dir_fd=fd)
        return self.pending_dir / f"{token}.refused"

    def release_claim(self, token: str) -> None:
        check_token(token)
        with contextlib.suppress(FileNotFoundError), self._sub("pending") as fd:
            safefs.unlink(fd, f"{token}.claimed")

    def read_pending(self, token: str) -> PendingRecord | None:
        check_token(token)
        try:
            return self._read_record(token, f"{token}.json")
        except FileNotFoundError:
            return None

    def is_pending(self, token: str) -> bool:
        check_token(token)
        try:
            with self._sub("pending") as fd:
                return safefs.exists(fd, f"{token}.json")
        except FileNotFoundError:
            return False

    def _read_record(self, token: str, name: str) -> PendingRecord:
        where = self.pending_dir / name
        raw = self._read_json("pending", name, where)
        try:
            record = self._pending_from_json(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"{where} is damaged ({_problem(exc)}): nothing in it is used") from None
        if record.pending.token != token:
            raise StateError(f"{where} names token {record.pending.token}, not {token}: nothing in it is used")
        return record

    # -- what the last verified apply installed -----------------------------------------------------
    def installed_record(self) -> dict[str, Any] | None:
        """installed.json (see Engine._unchanged); None when missing or not what we wrote."""
        return self._read_checked("installed.json", self._installed_from_json)

    def write_installed(self, record: dict[str, Any]) -> None:
        with self._root(create=True) as fd:
            _write_json(fd, self.path / "installed.json", {"format": _FORMAT, **record})

    def forget_installed(self) -> None:
        """Before anything changes the ruleset: the next apply takes the full path."""
        with contextlib.suppress(FileNotFoundError), self._root() as fd:
            safefs.unlink(fd, "installed.json")

    # -- the operator's policy in force, and the policy files it and the history need ----------------
    def current(self) -> Current | None:
        """current.json; None when missing (nothing recorded yet) or damaged (reported)."""
        return self._read_checked("current.json", self._current_from_json)

    def write_current(self, current: Current, files: dict[str, bytes] | None = None) -> None:
        """Put `current` in force: `files` (sha256 -> bytes) are its policy's files, stored first; then the
        policy files nothing refers to any more (neither `current` nor a history entry) go."""
        if files:
            with self._sub(_POLICY_STORE, create=True) as fd:
                have = set(os.listdir(fd))
                for digest, data in files.items():
                    if digest not in have and _SHA256.fullmatch(digest):
                        safefs.write_file(fd, digest, data, str(self.path / _POLICY_STORE / digest))
        with self._root(create=True) as fd:
            _write_json(fd, self.path / "current.json", {
                "format": _FORMAT, "policy": _source_json(current.policy), "action": current.action,
                "time": current.time, "origin": None if current.origin is None else asdict(current.origin)})
        self._forget_unused_policies(current)

    def forget_current(self) -> None:
        """The operator's policy in force is not known (a rollback to an entry of an older dockerguard)."""
        with contextlib.suppress(FileNotFoundError), self._root() as fd:
            safefs.unlink(fd, "current.json")

    def policy_file(self, digest: str) -> bytes:
        """A stored policy (or list) file's bytes, checked against its digest; StateError when missing or damaged."""
        if not _SHA256.fullmatch(digest):
            raise StateError(f"{digest!r:.80} is not a policy file's digest")
        where = self.path / _POLICY_STORE / digest
        try:
            with self._sub(_POLICY_STORE) as fd:
                data = safefs.read_file(fd, digest, str(where))
        except FileNotFoundError:
            raise StateError(f"{where} is missing: the policy it keeps cannot be read") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise StateError(f"{where} is damaged (its content does not match its name)")
        return data

    def _forget_unused_policies(self, current: Current) -> None:
        """Delete the stored policy files neither `current` nor a history entry refers to (a pending file's
        policy is its history entry's). Nothing goes when an entry does not say (written by an older
        dockerguard, or damaged)."""
        try:
            with self._sub(_POLICY_STORE) as fd:
                stored = [name for name in os.listdir(fd) if _SHA256.fullmatch(name)]
        except FileNotFoundError:
            return
        befores = self._referenced_policies()
        if befores is None:
            return
        used = {digest for source in (current.policy, *befores) if source is not None
                for digest in (source.digest, *(digest for _, digest in source.files))}
        with self._sub(_POLICY_STORE) as fd:
            for name in stored:
                if name not in used:
                    safefs.unlink(fd, name)

    def _referenced_policies(self) -> list[PolicySource | None] | None:
        """Each history entry's `before`, read from the head of its file (its snapshot, megabytes at 100,000
        sources, is not read); None when one does not say."""
        found = []
        for number in self.history_numbers():
            where = self._entry_path(number)
            try:
                with self._sub("history") as fd:
                    head = safefs.read_file(fd, where.name, str(where), prefix=_ENTRY_HEAD).decode("utf-8", "replace")
                start = head.index('"before": ') + len('"before": ')
                found.append(self._source(json.JSONDecoder().raw_decode(head, start)[0]))
            except FileNotFoundError:
                continue
            except (StateError, ValueError, TypeError, KeyError):
                return None
        return found

    def _current_from_json(self, raw: dict[str, Any]) -> Current:
        return Current(self._source(raw["policy"]), _choice(raw, "action", _CURRENT_ACTIONS), _float(raw, "time"),
                       _origin(raw.get("origin")))

    # -- watch's health: a heartbeat, not a record (written without fsync) ---------------------------
    def write_watch(self, health: dict[str, Any]) -> None:
        with contextlib.suppress(StateError, FileNotFoundError), self._root() as fd:
            safefs.write_file(fd, "watch.json", json.dumps({"format": _FORMAT, **health}).encode(),
                              str(self.path / "watch.json"), durable=False)

    def watch_health(self) -> dict[str, Any] | None:
        return self._read_checked("watch.json", _watch_from_json)

    # -- the change being made: a journal of one ----------------------------------------------------
    def write_intent(self, intent: Intent) -> None:
        """Before a change that sends more than one transaction (the iptables drivers send IPv4 and IPv6
        separately) or may be killed half way: what is being done, and which history entry holds the
        ruleset from before. Removed when the change is finished; found by the next command otherwise."""
        with self._root(create=True) as fd:
            _write_json(fd, self.path / "intent.json", {"format": _FORMAT, **asdict(intent)})

    def clear_intent(self) -> None:
        with contextlib.suppress(FileNotFoundError), self._root() as fd:
            safefs.unlink(fd, "intent.json")

    def intent(self) -> Intent | None:
        """The change a dockerguard began and did not finish (it was killed), or None. A damaged file
        is reported and ignored: the history entry it would name is still there for `rollback`."""
        def checked(raw: dict[str, Any]) -> Intent:
            return Intent(_choice(raw, "action", _INTENTS), self._backend(raw["backend"]),
                          _int(raw, "entry", 1, 10**9), _int(raw, "pid", 1, 2**31 - 1), _float(raw, "started"),
                          _text(raw, "token", TOKEN, optional=True))

        return self._read_checked("intent.json", checked)

    # -- the timer's traces ------------------------------------------------------------------------
    def timer_pid_path(self, token: str) -> Path:
        return self.path / f"timer-{check_token(token)}.pid"

    def write_timer_pid(self, token: str) -> None:
        with self._root() as fd:
            safefs.write_file(fd, self.timer_pid_path(token).name, f"{os.getpid()}\n".encode(),
                              str(self.timer_pid_path(token)))

    def remove_timer_pid(self, token: str) -> None:
        with contextlib.suppress(FileNotFoundError, StateError), self._root() as fd:
            safefs.unlink(fd, self.timer_pid_path(token).name)

    def timer_started(self, token: str) -> bool:
        try:
            with self._root() as fd:
                return safefs.exists(fd, self.timer_pid_path(token).name)
        except FileNotFoundError:
            return False

    def write_last_rollback(self, outcome: dict[str, Any]) -> None:
        # A report: never worth failing a rollback for.
        with contextlib.suppress(StateError, FileNotFoundError), self._root() as fd:
            _write_json(fd, self.path / "last-rollback.json", outcome)

    def last_rollback(self) -> dict[str, Any] | None:
        return self._read_checked("last-rollback.json", self._last_rollback_from_json)

    # -- reading: every file is data ----------------------------------------------------------------
    def _read_checked(self, name: str, check: Callable[[dict[str, Any]], _T]) -> _T | None:
        """A file of the state directory's top level through its schema check; None when it is missing.
        An untrusted or damaged one is reported (a warning) and ignored like a missing one."""
        where = self.path / name
        try:
            return check(self._read_json(None, name, where))
        except FileNotFoundError:
            return None
        except StateError as exc:
            self._warn(f"warning: ignored {exc}")
        except (KeyError, TypeError, ValueError) as exc:
            self._warn(f"warning: ignored {where}: damaged ({_problem(exc)})")
        return None

    def _read_json(self, sub: str | None, name: str, where: Path) -> dict[str, Any]:
        with contextlib.ExitStack() as stack:
            fd = stack.enter_context(self._sub(sub) if sub else self._root())
            data = safefs.read_file(fd, name, str(where))
        try:
            raw = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise StateError(f"{where} is damaged: {_problem(exc)}") from None
        if not isinstance(raw, dict):
            raise StateError(f"{where} is damaged: not a JSON object")
        return raw

    def _backend(self, value: Any) -> str:
        if isinstance(value, str) and value in self._backends:
            return value
        try:
            return check_backend_name(value, allow_auto=False)
        except DockerguardError:
            raise ValueError(f"backend {value!r:.40} is not one of dockerguard's") from None

    def _history_from_json(self, raw: dict[str, Any], number: int) -> HistoryEntry:
        if _int(raw, "number", 1, 10**9) != number:
            raise ValueError(f"it says it is entry {raw['number']}")
        backend = self._backend(raw["backend"])
        return HistoryEntry(number, backend, _float(raw, "timestamp"), _choice(raw, "action", _ACTIONS),
                            _text(raw, "policy_digest", _DIGEST, optional=True),
                            _text(raw, "policy_path", optional=True),
                            self._snapshot(raw["snapshot"], backend), self._state(raw.get("previous")),
                            _origin(raw.get("origin")), self._source(raw.get("before")), "before" in raw)

    def _pending_from_json(self, raw: dict[str, Any]) -> PendingRecord:
        backend = self._backend(raw["backend"])
        pending = Pending(str(_text(raw, "token", TOKEN)), backend, _float(raw, "created"), _float(raw, "deadline"),
                          _int(raw, "entry", 1, 10**9), str(_text(raw, "policy_digest", _DIGEST)),
                          str(_text(raw, "boot_id", _BOOT_ID, optional=True) or ""))
        return PendingRecord(pending, self._snapshot(raw["snapshot"], backend), self._state(raw.get("previous")),
                             self._source(raw.get("before")), "before" in raw)

    def _source(self, raw: Any) -> PolicySource | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise TypeError("a policy source is not an object")
        files = raw.get("files", [])
        if not isinstance(files, list):
            raise TypeError("files is not a list")
        return PolicySource(_absolute(_text(raw, "path")), str(_text(raw, "digest", _SHA256)),
                            tuple((_absolute(path), str(_text({"digest": digest}, "digest", _SHA256)))
                                  for path, digest in (_strings(pair, "a list file", 2) for pair in files)),
                            self._backend(raw["backend"]))

    def _installed_from_json(self, raw: dict[str, Any]) -> dict[str, Any]:
        facts = raw["facts"]
        if not isinstance(facts, dict):
            raise TypeError("facts is not an object")
        if facts.get("backend") not in BACKEND_CHOICES and facts.get("backend") not in self._backends:
            raise ValueError(f"facts.backend {facts.get('backend')!r:.40} is not one of dockerguard's")
        socket = _text(facts, "docker_socket")
        if not socket or not socket.startswith("/"):
            raise ValueError("facts.docker_socket is not an absolute path")
        checked_facts = {"backend": facts["backend"], "docker_socket": socket,
                         "uses_containers": _bool(facts, "uses_containers"),
                         "filter_proxy_path": _bool(facts, "filter_proxy_path"),
                         "uses_networks": _bool(facts, "uses_networks") if "uses_networks" in facts else False}
        generation = raw.get("generation")
        if generation is not None:
            generation = _int(raw, "generation", 0, 2**64)
        state = raw["state"]
        if state != "nothing":
            _text(raw, "state", _DIGEST)
        files = []
        for item in raw.get("files", []):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and item[0].startswith("/")
                    and "\0" not in item[0] and isinstance(item[1], str) and _DIGEST.fullmatch(item[1])):
                raise ValueError("files is not a list of [absolute path, digest]")
            files.append(item)
        # Printed by the no-op path as they are (None: written by an older dockerguard, take the full path).
        warnings = interfaces = None
        if "warnings" in raw:
            warnings = [_printable(text, "warnings") for text in _strings(raw["warnings"], "warnings")]
            interfaces = [_printable(name, "interfaces") for name in _strings(raw["interfaces"], "interfaces")]
        return {"backend": self._backend(raw["backend"]), "policy": _text(raw, "policy", _DIGEST), "files": files,
                "facts": checked_facts, "ruleset": _text(raw, "ruleset", _DIGEST),
                "inputs": _text(raw, "inputs", _DIGEST), "generation": generation, "state": state,
                "warnings": warnings, "interfaces": interfaces}

    def _last_rollback_from_json(self, raw: dict[str, Any]) -> dict[str, Any]:
        outcome = {"token": _text(raw, "token", TOKEN), "backend": self._backend(raw["backend"]),
                   "entry": _int(raw, "entry", 1, 10**9), "policy_digest": _text(raw, "policy_digest", _DIGEST),
                   "reason": _choice(raw, "reason", _REASONS), "time": _float(raw, "time"), "ok": _bool(raw, "ok")}
        if "error" in raw:
            outcome["error"] = _text(raw, "error", optional=True)
        return outcome

    def _snapshot(self, raw: Any, backend: str) -> Snapshot:
        if not isinstance(raw, dict):
            raise TypeError("snapshot is not an object")
        if self._backend(raw["backend"]) != backend:
            raise ValueError(f"the snapshot is of backend {raw['backend']!r}, the change of {backend!r}")
        return Snapshot(backend, raw.get("data"))  # the driver checks the data against its own objects

    def _state(self, raw: Any) -> InstalledState | None:
        state = state_from_json(raw)
        if state is not None:
            self._backend(state.backend)
        return state


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
    argv = [sys.executable, "-m", "dockerguard", "_rollback-timer", "--state-dir", str(state_dir), check_token(token)]
    try:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True, cwd="/")
    except OSError as exc:
        raise StateError(f"cannot start the rollback timer: {exc}") from None
    _TIMERS.append(process)  # keep a reference: no "still running" warning when the CLI exits first
    state = StateDir(state_dir)
    deadline = time.monotonic() + TIMER_START_TIMEOUT
    while not state.timer_started(token):
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
            "rules": [[rule.chain, rule.description, rule.body] for rule in state.rules],
            "sets": [[name, list(elements)] for name, elements in state.sets],
            "set_specs": [[name, spec] for name, spec in state.set_specs]}


def state_from_json(raw: Any) -> InstalledState | None:
    """An InstalledState (compared with read-backs, never installed); ValueError/TypeError when malformed."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise TypeError("previous state is not an object")
    rules = _list(raw, "rules")
    sets = raw.get("sets", [])
    if not isinstance(sets, list):
        raise TypeError("sets is not a list")
    # Written before rule bodies and set declarations were kept: [chain, description] pairs, no set_specs.
    partial = "set_specs" not in raw
    specs = [] if partial else _list(raw, "set_specs")
    return InstalledState(
        str(_text(raw, "backend")), tuple(_strings(_list(raw, "hooks"), "hooks")),
        tuple(_rule(item, partial) for item in rules),
        tuple((_strings([pair[0]], "set")[0], tuple(_strings(pair[1], "set elements")))
              for pair in sets if _pair(pair, "set")),
        tuple((name, spec) for name, spec in (_strings(pair, "set declaration", 2) for pair in specs)),
        partial)


def _rule(item: Any, partial: bool) -> InstalledRule:
    chain, description, *body = _strings(item, "rule", 2 if partial else 3)
    return InstalledRule(chain, description, body=body[0] if body else "")


def snapshot_to_json(snapshot: Snapshot) -> dict[str, Any]:
    return {"backend": snapshot.backend, "data": snapshot.data}


def snapshot_from_json(raw: dict[str, Any]) -> Snapshot:
    return Snapshot(str(raw["backend"]), raw["data"])


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` in a checked directory: a 0600 temporary file, fsync, rename, fsync the
    directory; a reader sees the old content or the new, never a part."""
    try:
        with safefs.opened_dir(path.parent) as fd:
            safefs.write_file(fd, path.name, text.encode(), str(path))
    except FileNotFoundError:
        raise StateError(f"cannot write {path}: its directory does not exist") from None


def _write_json(directory: int, path: Path, data: dict[str, Any]) -> None:
    safefs.write_file(directory, path.name, json.dumps(data, indent=1).encode(), str(path))


def _source_json(source: PolicySource | None) -> dict[str, Any] | None:
    if source is None:
        return None
    return {"path": source.path, "digest": source.digest, "files": [list(pair) for pair in source.files],
            "backend": source.backend}


def _origin(raw: Any) -> Origin | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise TypeError("origin is not an object")
    login = raw.get("login_uid")
    return Origin(_printable(str(_text(raw, "command")), "origin.command"), _int(raw, "uid", 0, 2**32 - 1),
                  None if login is None else _int(raw, "login_uid", 0, 2**32 - 1),
                  _printable(str(_text(raw, "reason")), "origin.reason"))


_WATCH_STATES = ("starting", "enforcing", "waiting for confirmation", "idle", "failing", "stopped")


def _watch_from_json(raw: dict[str, Any]) -> dict[str, Any]:
    health: dict[str, Any] = {
        "pid": _int(raw, "pid", 1, 2**31 - 1), "started": _float(raw, "started"),
        "interval": _float(raw, "interval"), "state": _choice(raw, "state", _WATCH_STATES),
        "checks": _int(raw, "checks", 0, 2**62), "repairs": _int(raw, "repairs", 0, 2**62),
        "failures": _int(raw, "failures", 0, 2**62),
        "policy": _text(raw, "policy", optional=True), "message": _text(raw, "message", optional=True)}
    for key in ("last_check", "last_success", "last_repair", "last_failure"):
        health[key] = None if raw.get(key) is None else _float(raw, key)
    return health


def _absolute(path: str | None) -> str:
    if not path or not path.startswith("/") or "\0" in path:
        raise ValueError("a policy path is not absolute")
    return path


def _shown(command: str) -> str:
    """A command line as recorded: printable, at most 512 characters."""
    printable = "".join(char if char.isprintable() else "?" for char in command)
    return printable if len(printable) <= 512 else printable[:509] + "..."


def _login_uid() -> int | None:
    try:
        value = int(Path("/proc/self/loginuid").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if value == 0xFFFFFFFF else value  # (uid_t) -1: no login session set it


# -- field validation: a planted or damaged file is refused, never half-trusted ---------------------------
def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number dockerguard writes")


def _problem(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"{exc.args[0]!r} is missing"
    return str(exc) or type(exc).__name__


def _text(raw: dict[str, Any], key: str, pattern: re.Pattern[str] | None = None, *,
          optional: bool = False) -> str | None:
    value = raw.get(key) if optional else raw[key]
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise TypeError(f"{key} is not a string")
    if pattern is not None and not pattern.fullmatch(value):
        raise ValueError(f"{key} {value!r:.40} is not of the form dockerguard writes")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):  # it is shown on terminals
        raise ValueError(f"{key} holds control characters")
    return value


def _float(raw: dict[str, Any], key: str) -> float:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{key} is not a time")
    return float(value)


def _int(raw: dict[str, Any], key: str, low: int, high: int) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} is not a number from {low} to {high}")
    return value


def _bool(raw: dict[str, Any], key: str) -> bool:
    value = raw[key]
    if not isinstance(value, bool):
        raise TypeError(f"{key} is not true or false")
    return value


def _choice(raw: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = raw[key]
    if value not in choices:
        raise ValueError(f"{key} {value!r:.40} is not one of {', '.join(choices)}")
    return str(value)


def _list(raw: dict[str, Any], key: str) -> list[Any]:
    value = raw[key]
    if not isinstance(value, list):
        raise TypeError(f"{key} is not a list")
    return value


def _strings(values: Any, what: str, count: int | None = None) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise TypeError(f"{what} is not a list of strings")
    if count is not None and len(values) != count:
        raise ValueError(f"{what} does not have {count} parts")
    return values


def _printable(text: str, what: str) -> str:
    """A line for the terminal: bounded, no control characters (escape sequences, line breaks)."""
    if len(text) > _MAX_TEXT or not text.isprintable():
        raise ValueError(f"{what} holds text that is not printable")
    return text


def _pair(value: Any, what: str) -> bool:
    if not isinstance(value, list) or len(value) != 2:
        raise TypeError(f"{what} is not a pair")
    return True
