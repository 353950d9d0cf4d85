"""sd_notify over a real AF_UNIX datagram socket, watchdog settings, journald priority prefixes, and
`watch` telling systemd READY=1 once the first apply succeeded."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockerguard.systemd import JournalFormatter, Notifier, journal_stderr, notify, watchdog_seconds


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def received(sock: socket.socket) -> list[str]:
    messages = []
    sock.setblocking(False)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    sock.settimeout(2)
    return messages


def test_notify_sends_one_datagram(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    assert notify("READY=1\nSTATUS=hello", {"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1\nSTATUS=hello"


def test_notify_abstract_socket() -> None:
    name = f"dockerguard-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"WATCHDOG=1"


def test_without_systemd_nothing_is_sent_and_nothing_fails(tmp_path: Path) -> None:
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1"})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent")})
    Notifier({}).checked(True, "fine")  # no socket: a no-op


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process() -> None:
    assert watchdog_seconds({"WATCHDOG_USEC": "120000000"}) == 60.0
    assert watchdog_seconds({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid())}) == 60.0
    assert watchdog_seconds({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_seconds({}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "x"}) is None


def test_notifier_ready_once_status_on_change_and_watchdog(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
    notifier.checked(False, "could not apply")  # not ready yet: the rules are not in place
    notifier.checked(True, "ruleset a in place")
    notifier.checked(True, "ruleset a in place")  # the same status, a ping within a second: nothing
    notifier.stopping()
    assert received(sock) == ["STATUS=could not apply\nWATCHDOG=1", "READY=1\nSTATUS=ruleset a in place",
                              "STOPPING=1"]


def test_journal_prefixes() -> None:
    formatter = JournalFormatter("%(message)s")

    def line(level: int, message: str) -> str:
        return formatter.format(logging.LogRecord("dockerguard", level, __file__, 1, message, None, None))

    assert line(logging.ERROR, "bad") == "<3>bad"
    assert line(logging.WARNING, "hm") == "<4>hm"
    assert line(logging.INFO, "ok\nmore") == "<6>ok\n<6>more"


def test_journal_stream_must_name_our_stderr() -> None:
    info = os.fstat(2)
    assert journal_stderr({"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
    assert not journal_stderr({"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino + 1}"})
    assert not journal_stderr({})


def test_watch_says_ready_after_the_first_apply(tmp_path: Path, listener: tuple[socket.socket, str]) -> None:
    import threading
    import time

    from dockerguard.backends.fake import FakeBackend
    from dockerguard.engine import Engine
    from dockerguard.policy import load_policy
    from dockerguard.watch import Watcher

    sock, path = listener
    policy = tmp_path / "policy.toml"
    policy.write_text('external_interfaces = ["lo"]\nfilter_proxy_path = false\n[[allow]]\nports = [443]\n')
    engine = Engine(FakeBackend(), state_dir=tmp_path / "state")
    notifier = Notifier({"NOTIFY_SOCKET": path})
    watcher = Watcher(engine, lambda: load_policy(policy), None, interval=0.01, on_check=notifier.checked)
    watcher.run(threading.Event(), until=time.monotonic() + 0.1)
    messages = received(sock)
    assert messages[0].startswith("READY=1\nSTATUS=ruleset ")
    assert "in place (fake)" in messages[0]
    assert not any("READY=1" in message for message in messages[1:])
