"""One flock loop for the two locks dockerguard takes: the xtables lock and its state directory's."""

from __future__ import annotations

import errno
import fcntl
import time


def flock_exclusive(fd: int, timeout: float) -> bool:
    """Take an exclusive flock on `fd`, retrying for up to `timeout` seconds; False when it stayed taken.
    Other errors are raised as they come."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
