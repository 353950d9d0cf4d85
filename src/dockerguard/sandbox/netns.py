"""Network namespaces: create, enter (per thread), run commands in, and clean up.

Shared by the sandbox's ``Topology`` and by the tests' real-Docker harness (tests/e2e/docker_host.py).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import secrets
import selectors
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

from ..errors import CommandError
from .fixtures import ROLES

_NETNS_DIR = "/run/netns"
_NAME_PREFIX = "dg"
# What namespace_names() makes: "dg<pid>-<hex4>-<role>"; the pid tells whether its creator still runs.
_NS_NAME_RE = re.compile(rf"^{_NAME_PREFIX}(\d+)-[0-9a-f]{{4}}-(?:{'|'.join(ROLES)})$")
_CLONE_NEWNET = 0x40000000


def run_command(
    argv: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = 30,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with text output captured; ``CommandError`` on a non-zero exit when ``check``.
    ``env`` is the whole environment, as for ``subprocess.run``."""
    proc = subprocess.run(
        list(argv),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=None if env is None else dict(env),
    )
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, list(argv), proc.stdout, proc.stderr)
    return proc


def ip_batch(commands: Iterable[str], netns: str | None = None, timeout: float = 30) -> None:
    """One ``ip [-n NETNS] -batch -`` for all ``commands`` (blank lines and indentation ignored)."""
    lines = [line.strip() for line in commands if line.strip()]
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    run_command(argv, input="\n".join(lines) + "\n", timeout=timeout)


def readline_until(stream: IO[bytes], deadline: float) -> bytes:
    """Read one line from a child's pipe without blocking past ``deadline`` (``time.monotonic()``)."""
    fd = stream.fileno()
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(timeout=remaining):
                break
            chunk = os.read(fd, 256)
            if not chunk:
                break
            buf += chunk
    return buf


# -- naming, creating and deleting ------------------------------------------------------------------


def namespace_names(roles: Iterable[str] = ROLES) -> dict[str, str]:
    """Fresh names for one set of namespaces, ``{role: "dg<pid>-<hex4>-<role>"}``."""
    stem = f"{_NAME_PREFIX}{os.getpid()}-{secrets.token_hex(2)}"
    return {role: f"{stem}-{role}" for role in roles}


def netns_path(name: str) -> str:
    """``/run/netns/NAME`` (a value containing ``/`` is taken as a path already)."""
    return name if "/" in name else f"{_NETNS_DIR}/{name}"


def create_namespaces(names: Iterable[str]) -> None:
    """``ip netns add`` every name, in one ``ip`` process."""
    ip_batch(f"netns add {name}" for name in names)


def delete_namespaces(names: Iterable[str], timeout: float = 30) -> list[str]:
    """Delete those of ``names`` that exist, in one ``ip`` process that goes on after a failure;
    returns what went wrong (empty when all are gone)."""
    existing = [name for name in names if os.path.exists(netns_path(name))]
    if not existing:
        return []
    batch = "".join(f"netns del {name}\n" for name in existing)
    proc = run_command(["ip", "-force", "-batch", "-"], input=batch, check=False, timeout=timeout)
    left = [name for name in existing if os.path.exists(netns_path(name))]
    if proc.returncode == 0 and not left:
        return []
    return [f"ip netns del {', '.join(left or existing)}: {proc.stderr.strip() or f'exit {proc.returncode}'}"]


def can_create_netns() -> str | None:
    """None when ``ip netns add`` works here, else the reason it does not."""
    (name,) = namespace_names(ROLES[:1]).values()  # a name cleanup_stale_namespaces() would know
    try:
        proc = run_command(["ip", "netns", "add", name], check=False, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if proc.returncode != 0:
        return proc.stderr.strip() or f"ip netns add exited {proc.returncode}"
    run_command(["ip", "netns", "del", name], check=False, timeout=10)
    return None


def cleanup_stale_namespaces() -> list[str]:
    """Delete namespaces left by earlier runs of this harness whose creating process is dead.

    Only names matching our own pattern (``dg<pid>-<hex4>-<role>``) with a dead ``<pid>``
    are touched. Returns the names deleted.
    """
    try:
        names = os.listdir(_NETNS_DIR)
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        m = _NS_NAME_RE.match(name)
        if not m or Path(f"/proc/{m.group(1)}").exists():
            continue
        if run_command(["ip", "netns", "del", name], check=False, timeout=10).returncode == 0:
            removed.append(name)
    return removed


# -- switching the current thread into a namespace --------------------------------------------------

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python >= 3.12
    if setns is not None:
        setns(fd, _CLONE_NEWNET)
        return
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with the *current thread* in network namespace ``name`` (a name or a path).

    Only the network namespace changes (not the mount namespace, so ``/sys`` still
    shows the caller's view; netlink, sockets and ``/proc/sys/net`` follow the thread).
    Sockets keep the namespace they were created in; subprocesses and threads started
    inside the block inherit it. Nests fine; not for use across ``await``.
    """
    # /proc/thread-self, not /proc/self: the latter is the main thread's namespace.
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            if os.fstat(target).st_ino != os.stat("/proc/thread-self/ns/net").st_ino:
                _setns(orig)
                raise OSError(f"setns into {name!r} did not take effect")
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(orig)  # failure here must propagate: the thread would be stranded
    finally:
        os.close(orig)


def write_sysctls(name: str, values: Mapping[str, str]) -> None:
    """Set per-namespace sysctls (``{"net/ipv4/ip_forward": "1"}``) inside namespace ``name``, in-process."""
    with in_netns(name):
        for key, value in values.items():
            if not key.startswith("net/"):
                raise ValueError(f"{key!r}: only per-namespace net/ sysctls can be set")
            with open(f"/proc/sys/{key}", "w") as f:
                f.write(value)


# -- nothing outlives the interpreter --------------------------------------------------------------


class _Closable(Protocol):
    def close(self) -> None: ...


_OPEN: set[_Closable] = set()
_OPEN_LOCK = threading.Lock()


def close_at_exit(obj: _Closable) -> None:
    """Have ``obj.close()`` called at interpreter exit unless ``closed(obj)`` said it was done first:
    a run that ends without tearing down must not leave namespaces and processes behind."""
    with _OPEN_LOCK:
        _OPEN.add(obj)


def closed(obj: _Closable) -> None:
    with _OPEN_LOCK:
        _OPEN.discard(obj)


@contextlib.contextmanager
def closing_on_failure(obj: _Closable) -> Iterator[None]:
    """Around building ``obj``: it is closed at exit (``close_at_exit``), or at once if the block fails."""
    close_at_exit(obj)
    try:
        yield
    except BaseException:
        obj.close()
        raise


def _close_all() -> None:
    with _OPEN_LOCK:
        still_open = list(_OPEN)
    for obj in still_open:
        with contextlib.suppress(Exception):
            obj.close()


atexit.register(_close_all)
