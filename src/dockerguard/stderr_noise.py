"""Keep C libraries' complaints about missing privileges off the terminal.

libnftables prints "Operation not permitted (you must be root)" straight to file descriptor 2 whenever a
netlink request is refused, and libiptc's messages take the same form; without root every probe adds such a
line before dockerguard's own error, which already says what failed and why. Python's sys.stderr cannot
catch a write to fd 2, so fd 2 is pointed at a temporary file for the duration of the call; afterwards
every captured line except that noise is written to the real stderr, so nothing else printed meanwhile
(a log line from another thread, a library's real diagnostic) is lost.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile
from collections.abc import Iterator

NOISE = re.compile(rb"^[^\n]*\(you must be root\)[ \t]*\n?$")
_CAP_NET_ADMIN = 12


@functools.cache
def has_net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN (/proc/self/status); True when that cannot be read, so
    nothing is redirected where the libraries would not complain anyway."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return True


@contextlib.contextmanager
def privilege_noise_filtered(*, always: bool = False) -> Iterator[None]:
    """Drop the libraries' "(you must be root)" lines written to fd 2 during the block. Only done without
    CAP_NET_ADMIN (the only case they occur), so a root process's fd 2 (`dockerguard watch`'s log) is
    never redirected; `always` redirects anyway (for the one-time `import iptc`)."""
    if not always and has_net_admin():
        yield
        return
    with contextlib.suppress(AttributeError, OSError, ValueError):  # sys.stderr may be None or closed
        sys.stderr.flush()
    try:
        capture = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the `with capture` below)
    except OSError:  # no room for it: let the noise through rather than fail the caller
        yield
        return
    with capture:
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 at all (closed by the caller): nothing to protect
            yield
            return
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                sys.stderr.flush()  # Python-level writes made during the block belong to the capture
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = b"".join(line for line in capture.read().splitlines(keepends=True) if not NOISE.match(line))
            while kept:
                kept = kept[os.write(2, kept):]
