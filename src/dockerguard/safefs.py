"""Files that root may trust: dockerguard's state directory and its ruleset locks (/run/dockerguard).

Whoever can write a file that root reads back (a history snapshot, a pending confirmation) decides what
root installs in the kernel, and whoever can plant a symlink where root writes decides which file root
overwrites. So:

- a directory is only used through a file descriptor obtained by walking its path from / one component
  at a time (`openat`, O_NOFOLLOW), checking each directory on the way: owned by root (or by the
  effective uid when not root) and writable by nobody else, except sticky-bit directories like /tmp
  (then the directory itself must be ours and 0700). A symlink on the way is followed only when its
  directory was trusted and it is owned by a trusted user; the directory itself must not be a symlink;
- every file is opened relative to that descriptor with O_NOFOLLOW, must be a regular file of ours with
  one link, and is written to an unpredictable O_EXCL temporary name (0600 whatever the umask), fsynced
  and renamed into place; the temporary name carries the writer's pid so leftovers can be cleaned.

Every problem is a StateError naming the path and what is wrong with it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Iterator

from .errors import StateError

DIR_MODE = 0o700
FILE_MODE = 0o600
MAX_FILE_BYTES = 256 << 20  # a snapshot of a very large ruleset stays far below this
_MAX_SYMLINKS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# `.NAME.PID-RANDOM.tmp` (and `.NAME.PID.tmp`, written by dockerguard before 0.2): the pid tells whether
# its writer still runs; "-" cannot occur in the pid, so the pattern is unambiguous.
_TEMPORARY = re.compile(r"\..+\.([0-9]{1,10})(?:-[0-9a-f]+)?\.tmp")


def trusted_owners() -> frozenset[int]:
    return frozenset({0, os.geteuid()})


def owner_name(uid: int) -> str:
    return "root" if uid == 0 else f"uid {uid}"


def open_dir(path: str | os.PathLike[str], *, create: bool = False) -> int:
    """A descriptor of directory `path` after checking it and every directory above it (see the module
    docstring). With `create`, missing directories are made 0700, and the directory's own mode is
    tightened to 0700 when it is ours and only readable by others. Without `create`, a missing
    directory raises FileNotFoundError."""
    target = os.fspath(path)
    if not os.path.isabs(target):
        raise StateError(f"{target}: not an absolute path")
    parts = _split(target)
    fd = _open_root()
    current = "/"
    hops = 0
    sticky_above = False
    try:
        while parts:
            name = parts.pop(0)
            where = os.path.join(current, name)
            if name == "..":  # resolved on the real path walked so far, like the kernel does
                parts = _split(os.path.dirname(current)) + parts
                os.close(fd)
                fd, current = _open_root(), "/"
                continue
            info = _lstat_or_create(fd, name, where, create)
            if stat.S_ISLNK(info.st_mode):
                if not parts:
                    raise StateError(f"{where} is a symbolic link: refusing to use it (give the real path)")
                if info.st_uid not in trusted_owners():
                    raise StateError(f"{where} is a symbolic link owned by {owner_name(info.st_uid)}: "
                                     "refusing to follow it")
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise StateError(f"{target}: too many levels of symbolic links")
                link = os.readlink(name, dir_fd=fd)
                parts = _split(os.path.join(current, link)) + parts
                os.close(fd)
                fd, current = _open_root(), "/"
                continue
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise StateError(f"cannot open directory {where}: {_reason(exc)}") from None
            os.close(fd)
            fd, current = child, where
            if parts:
                sticky_above = _check_parent(fd, where) or sticky_above
            else:
                _check_own_dir(fd, where, fix=create, sticky_above=sticky_above)
        if current == "/":
            raise StateError("/ cannot be dockerguard's state directory")
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def opened_dir(path: str | os.PathLike[str], *, create: bool = False) -> Iterator[int]:
    fd = open_dir(path, create=create)
    try:
        yield fd
    finally:
        os.close(fd)


def open_subdir(parent: int, name: str, where: str, *, create: bool = False) -> int:
    """A checked subdirectory (ours, 0700 when we create it) of a checked directory."""
    if create:
        try:
            os.mkdir(name, DIR_MODE, dir_fd=parent)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StateError(f"cannot create {where}: {_reason(exc)}") from None
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StateError(f"cannot open directory {where}: {_reason(exc)}") from None
    try:
        _check_own_dir(fd, where, fix=create, sticky_above=False)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_file(directory: int, name: str, where: str, limit: int = MAX_FILE_BYTES, *, prefix: int | None = None
              ) -> bytes:
    """The content of regular file `name` (ours, one link, not a symlink); FileNotFoundError when missing.
    With `prefix`: its first `prefix` bytes only, however large it is."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=directory)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StateError(f"cannot read {where}: {_reason(exc)}") from None
    try:
        info = os.fstat(fd)
        _check_own_file(info, where)
        if prefix is not None:
            return os.read(fd, prefix)
        if info.st_size > limit:
            raise StateError(f"{where} is {info.st_size} bytes, more than dockerguard ever writes: not reading it")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            limit -= len(chunk)
            if limit < 0:
                raise StateError(f"{where} grew beyond what dockerguard ever writes: not reading it")
        return b"".join(chunks)
    except OSError as exc:
        raise StateError(f"cannot read {where}: {_reason(exc)}") from None
    finally:
        os.close(fd)


def write_file(directory: int, name: str, data: bytes, where: str, *, durable: bool = True) -> None:
    """Replace `name` atomically: an O_EXCL temporary of unpredictable name (0600), fsync, rename over
    `name` (which replaces a symlink there instead of following it), fsync the directory. Not `durable`:
    no fsync (a heartbeat, rewritten every few seconds, need not survive a crash of the machine)."""
    temporary = f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE,
                     dir_fd=directory)
    except OSError as exc:
        raise StateError(f"cannot write {where}: {_reason(exc)}") from None
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # the umask may have taken bits away, never added: make it exact
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=directory)
        raise StateError(f"cannot write {where}: {_reason(exc)}") from None
    if durable:
        fsync_dir(directory)


def open_lock_file(directory: int, name: str, where: str) -> int:
    """A lock file (created 0600), for flock() and for recording its holder; never through a symlink."""
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY,
                     FILE_MODE, dir_fd=directory)
    except OSError as exc:
        raise StateError(f"cannot open {where}: {_reason(exc)}") from None
    try:
        info = os.fstat(fd)
        _check_own_file(info, where)
        if stat.S_IMODE(info.st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def unlink(directory: int, name: str) -> bool:
    """Remove `name` (a symlink itself, never its target); False when it was not there."""
    try:
        os.unlink(name, dir_fd=directory)
    except FileNotFoundError:
        return False
    return True


def exists(directory: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def clean_stale_temporaries(directory: int) -> list[str]:
    """Delete the temporary files of writers that no longer run (a killed apply); returns their names."""
    removed = []
    for name in os.listdir(directory):
        match = _TEMPORARY.fullmatch(name)
        if match is None or _alive(int(match.group(1))):
            continue
        if unlink(directory, name):
            removed.append(name)
    return removed


def fsync_dir(directory: int) -> None:
    with contextlib.suppress(OSError):
        os.fsync(directory)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:
        return False  # no such pid can exist
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def _split(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _open_root() -> int:
    fd = os.open("/", _DIR_FLAGS)
    try:
        _check_parent(fd, "/")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lstat_or_create(parent: int, name: str, where: str, create: bool) -> os.stat_result:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        if not create:
            raise
    try:
        os.mkdir(name, DIR_MODE, dir_fd=parent)
    except FileExistsError:
        pass  # someone else made it meanwhile: it is checked like any other
    except OSError as exc:
        raise StateError(f"cannot create {where}: {_reason(exc)}") from None
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    try:
        info = os.fstat(fd)
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != DIR_MODE:
            os.fchmod(fd, DIR_MODE)  # the umask may have taken bits away
    finally:
        os.close(fd)
    return os.stat(name, dir_fd=parent, follow_symlinks=False)


def _check_parent(fd: int, where: str) -> bool:
    """A directory above the state directory: owned by root or us, writable by nobody else unless it is
    sticky (/tmp). Returns whether it was such a sticky, shared directory."""
    info = os.fstat(fd)
    if info.st_uid not in trusted_owners():
        raise StateError(f"{where} is owned by {owner_name(info.st_uid)}: dockerguard's state cannot live below "
                         "a directory another user controls")
    shared = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if shared and not info.st_mode & stat.S_ISVTX:
        raise StateError(f"{where} is writable by {_who(info.st_mode)} (mode {_mode(info)}): dockerguard's "
                         "state cannot live below it")
    return bool(shared)


def _check_own_dir(fd: int, where: str, *, fix: bool, sticky_above: bool) -> None:
    info = os.fstat(fd)
    if info.st_uid != os.geteuid():
        raise StateError(f"{where} is owned by {owner_name(info.st_uid)}, not {owner_name(os.geteuid())}: "
                         f"refusing to trust it (chown {owner_name(os.geteuid()).replace('uid ', '')} {where}, "
                         "and check what it holds)")
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StateError(f"{where} is writable by {_who(info.st_mode)} (mode {_mode(info)}): refusing to trust "
                         f"what it holds (chmod 0700 {where}, and check its files)")
    if mode != DIR_MODE:
        if fix:
            os.fchmod(fd, DIR_MODE)  # readable by others: snapshots describe the firewall
        elif sticky_above and mode & 0o077:
            raise StateError(f"{where} has mode {_mode(info)} below a shared directory: it must be 0700 "
                             f"(chmod 0700 {where})")


def _check_own_file(info: os.stat_result, where: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise StateError(f"{where} is not a regular file: refusing to use it")
    if info.st_uid != os.geteuid():
        raise StateError(f"{where} is owned by {owner_name(info.st_uid)}, not {owner_name(os.geteuid())}: "
                         "refusing to use it")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StateError(f"{where} is writable by {_who(info.st_mode)} (mode {_mode(info)}): refusing to use it")
    if info.st_nlink == 0:  # deleted between open and fstat (a confirm racing the timer): it is gone
        raise FileNotFoundError(errno.ENOENT, "deleted while being read", where)
    if info.st_nlink != 1:
        raise StateError(f"{where} has {info.st_nlink} hard links: refusing to use it")


def _who(mode: int) -> str:
    return " and ".join(who for who, bit in (("its group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if mode & bit)


def _mode(info: os.stat_result) -> str:
    return f"{stat.S_IMODE(info.st_mode):04o}"


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link"
    if exc.errno == errno.ENOTDIR:
        return "not a directory"
    return exc.strerror or str(exc)
