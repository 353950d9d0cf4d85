"""Talking to systemd when it runs `dockerguard watch` (Type=notify): sd_notify(3) over a plain AF_UNIX
datagram socket (no library), and journald's syslog priority prefixes on stderr.

- `NOTIFY_SOCKET` set: READY=1 once the first apply succeeded, STATUS= lines, WATCHDOG=1 pings while
  the loop runs (when `WATCHDOG_USEC` is set for this process), STOPPING=1 at the end.
- `JOURNAL_STREAM` naming the stderr we write to: log lines start with `<3>` (error), `<4>` (warning),
  `<6>` (info), `<7>` (debug), so journald records their priority, and carry no timestamp of their own.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

# logging level -> syslog priority (sd-daemon(3))
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `message` ("READY=1", "STATUS=...", ...) to $NOTIFY_SOCKET; False when there is none or it
    cannot be reached (never raises: systemd's absence is not an error)."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET", "")
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    elif not address.startswith("/"):  # unset, or vsock: not supported
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8", "replace"))
    except OSError:
        return False
    return True


def watchdog_seconds(environ: Mapping[str, str] | None = None) -> float | None:
    """How often to ping the watchdog (half of WatchdogSec=), or None when it is not ours to ping."""
    env = environ if environ is not None else os.environ
    pid = env.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


def journal_stderr(environ: Mapping[str, str] | None = None) -> bool:
    """Is stderr the journal stream systemd connected (JOURNAL_STREAM=DEVICE:INODE of it)?"""
    value = (environ if environ is not None else os.environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        info = os.fstat(2)
        return (info.st_dev, info.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


class JournalFormatter(logging.Formatter):
    """`<6>message`: journald reads the priority from the prefix and adds the time itself."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).split("\n"))


class Notifier:
    """What `watch` tells systemd after each check: READY=1 after the first successful apply, STATUS= when
    the status text changes, WATCHDOG=1 while the loop runs (its checks come every --interval seconds;
    pings at most every second)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = dict(environ if environ is not None else os.environ)
        self.enabled = bool(self.environ.get("NOTIFY_SOCKET"))
        self.watchdog = watchdog_seconds(self.environ) if self.enabled else None
        self.ready = False
        self._status: str | None = None
        self._pinged = 0.0

    def send(self, message: str) -> None:
        if self.enabled:
            notify(message, self.environ)

    def checked(self, ok: bool, status: str) -> None:
        """After a check: `ok` when the policy is in place, `status` one line on what happened."""
        lines = []
        if ok and not self.ready:
            self.ready = True
            lines.append("READY=1")
        if status != self._status:
            self._status = status
            lines.append(f"STATUS={status}")
        now = time.monotonic()
        if self.watchdog is not None and now - self._pinged >= min(1.0, self.watchdog / 10):
            self._pinged = now
            lines.append("WATCHDOG=1")
        if lines:
            self.send("\n".join(lines))

    def stopping(self) -> None:
        self.send("STOPPING=1")
