"""The locks dockerguard takes: one flock loop for the xtables lock, and its own locks, which name their
holder.

Every command that changes the ruleset takes, in this order:

1. the ruleset lock of its network namespace, `/run/dockerguard/net-<inode>.lock`: the kernel's objects
   are per network namespace, and two dockerguards given different state directories must still not
   interleave their read-compare-send-verify sequences (one would verify, or undo, the other's rules);
2. the state directory's `lock`, which guards the history and the pending confirmation.

Always in this order, so two processes can never each hold the lock the other waits for. The holder
writes its pid, command and start time into the lock file; whoever waits reads them to say whom it waits
for (after about a second) and whom it gave up on (`LockTimeout`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .errors import LockTimeout, StateError

RUN_DIR = "/run/dockerguard"  # root's ruleset locks; another user's live in their runtime directory
WAIT_NOTICE = 1.0  # seconds of waiting before saying whom for
_COMMAND = re.compile(r"[A-Za-z0-9 ._:/-]{1,80}")


def flock_exclusive(fd: int, timeout: float) -> bool:
    """Take an exclusive flock on `fd`, retrying for up to `timeout` seconds; False when it stayed taken.
    Other errors are raised as they come."""
    deadline = time.monotonic() + timeout
    while True:
        if _try_flock(fd):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return False


@dataclass(frozen=True)
class Holder:
    """Who holds one of dockerguard's locks, as the holder wrote it into the lock file."""

    pid: int
    command: str
    since: float

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command}, since {time.strftime('%H:%M:%S', time.localtime(self.since))})"


def read_holder(fd: int) -> Holder | None:
    """The holder recorded in the lock file open at `fd`; None when unreadable (being written, damaged).
    It is data from a file: checked before it is shown."""
    try:
        raw = json.loads(os.pread(fd, 512, 0).decode("utf-8"))
        pid, command, since = raw["pid"], raw["command"], raw["since"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if (isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**31
            or not isinstance(command, str) or not _COMMAND.fullmatch(command)
            or isinstance(since, bool) or not isinstance(since, (int, float)) or not math.isfinite(since)):
        return None
    return Holder(pid, command, float(since))


def acquire(fd: int, where: str, command: str, timeout: float,
            on_wait: Callable[[str], None] | None = None) -> None:
    """flock `fd` (the lock file `where`) within `timeout` seconds, then record this process as its
    holder. `on_wait` hears once, after WAIT_NOTICE seconds, whom we wait for; LockTimeout names the
    holder we gave up on."""
    started = time.monotonic()
    told = False
    while not _try_flock(fd):
        waited = time.monotonic() - started
        if waited >= timeout:
            holder = read_holder(fd)
            shown = f"{waited:.0f}" if waited >= 10 else f"{waited:.1f}"
            raise LockTimeout(f"{where} is held by {_whom(holder)}; gave up after {shown} s", holder)
        if on_wait is not None and not told and waited >= WAIT_NOTICE:
            on_wait(f"waiting for the lock held by {_whom(holder=read_holder(fd))} on {where}")
            told = True
        time.sleep(0.05)
    record = {"pid": os.getpid(), "command": command if _COMMAND.fullmatch(command) else "dockerguard",
              "since": time.time()}
    with contextlib.suppress(OSError):  # only a courtesy to those who wait
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)


def _whom(holder: Holder | None) -> str:
    return holder.describe() if holder is not None else "another process (it did not say which)"


def netns_inode() -> int:
    """Identifies this thread's network namespace (the same number `ip netns` shows as the inode of
    /run/netns/NAME)."""
    for path in ("/proc/thread-self/ns/net", "/proc/self/ns/net"):
        with contextlib.suppress(OSError):
            return os.stat(path).st_ino
    return 0  # no /proc: one lock for everything


def ruleset_lock_dir() -> str:
    """/run/dockerguard for root. Other users cannot change a ruleset outside a user namespace of their
    own, but tests and the API run unprivileged: their locks live in their runtime directory."""
    if os.geteuid() == 0:
        return RUN_DIR
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "dockerguard")
    return os.path.join(tempfile.gettempdir(), f"dockerguard-{os.geteuid()}")


@contextlib.contextmanager
def ruleset_lock(command: str, timeout: float, on_wait: Callable[[str], None] | None = None,
                 directory: str | None = None) -> Iterator[None]:
    """Hold the ruleset lock of the current network namespace (see the module docstring). Its directory
    is checked like the state directory (ours, 0700, nothing above it writable by others)."""
    from . import safefs  # safefs imports errors only; kept local so `locking` stays light for the drivers

    chosen = directory or ruleset_lock_dir()
    name = f"net-{netns_inode()}.lock"
    where = os.path.join(chosen, name)
    try:
        with safefs.opened_dir(chosen, create=True) as parent:
            fd = safefs.open_lock_file(parent, name, where)
    except StateError as exc:
        raise StateError(f"cannot take the ruleset lock {where}: {exc}") from None
    try:
        acquire(fd, where, command, timeout, on_wait)
        yield
    finally:
        os.close(fd)  # also releases the lock


def remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
