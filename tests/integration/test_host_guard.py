"""[host] protection and the lock-out guard, with a long-lived "SSH" connection from the outside."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockerguard.backends import DRIVERS
from dockerguard.sandbox import HOST_EXT_V4, Probe, Topology

from harness import probe_many

SSH_PORT = 2222  # a stand-in sshd: an echo server in the host namespace
ADMIN = "198.51.100.10"
ECHO_SERVER = f"""
import socket, threading
server = socket.create_server(("0.0.0.0", {SSH_PORT}), reuse_port=True)
def echo(conn):
    with conn:
        while data := conn.recv(1024):
            conn.sendall(data)
while True:
    threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()
"""
SESSION_ENV = {"SSH_CONNECTION": f"{ADMIN} 40000 {HOST_EXT_V4} {SSH_PORT}"}
CASES = [(b, f) for b, f in [("nft", "iptables-nft"), ("iptables-nft", "iptables-nft"),
                             ("iptables-legacy", "iptables-legacy")] if b in DRIVERS]


def host_policy(ssh_sources: str) -> str:
    return f'[[allow]]\nports = [8080]\n[host]\n[[host.allow]]\nports = [{SSH_PORT}]\nsources = [{ssh_sources}]\n'


class Guarded:
    def __init__(self, topo: Topology, backend: str, tmp: Path) -> None:
        self.topo, self.backend, self.tmp = topo, backend, tmp

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, **(env or {})}
        # confirm and rollback act on what the state directory recorded; the rest take the backend
        backend = [] if args[0] in ("confirm", "rollback") else ["--backend", self.backend]
        return subprocess.run(["ip", "netns", "exec", self.topo.ns("host"), sys.executable, "-m", "dockerguard",
                               *args, *backend], capture_output=True, text=True, timeout=60,
                              env=environment, check=False, stdin=subprocess.DEVNULL)

    def apply(self, text: str, *extra: str) -> subprocess.CompletedProcess[str]:
        path = self.tmp / "policy.toml"
        path.write_text(text)
        return self.cli("apply", "-c", str(path), *extra, env=SESSION_ENV)

    def ssh_opens(self, source: str) -> bool:
        return probe_many(self.topo, [Probe("ext", HOST_EXT_V4, SSH_PORT, src=source, timeout=0.7)])[0]


def echo(sock: socket.socket) -> bool:
    """Does the established session still carry traffic both ways?"""
    try:
        sock.sendall(b"ping\n")
        return sock.recv(16) == b"ping\n"
    except OSError:
        return False


@pytest.fixture(params=CASES, ids=[f"{b}-on-{f}" for b, f in CASES])
def guarded(request: pytest.FixtureRequest, make_topology, tmp_path: Path) -> Iterator[Guarded]:  # type: ignore[no-untyped-def]
    backend, flavour = request.param
    topo = make_topology(flavour)
    server = subprocess.Popen(["ip", "netns", "exec", topo.ns("host"), sys.executable, "-c", ECHO_SERVER],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not probe_many(topo, [Probe("ext", HOST_EXT_V4, SSH_PORT, src=ADMIN, timeout=0.3)])[0]:
            assert time.monotonic() < deadline, "echo server did not come up"
            time.sleep(0.1)
        yield Guarded(topo, backend, tmp_path)
    finally:
        server.kill()
        server.wait(timeout=10)


@pytest.fixture
def session(guarded: Guarded) -> Iterator[socket.socket]:
    """The admin's established connection, made from the external namespace."""
    with guarded.topo.inside("ext"):
        sock = socket.create_connection((HOST_EXT_V4, SSH_PORT), timeout=2, source_address=(ADMIN, 0))
    with sock:
        assert echo(sock)
        yield sock


def test_policy_cutting_the_session_is_refused_and_changes_nothing(guarded: Guarded, session: socket.socket) -> None:
    result = guarded.apply(host_policy('"203.0.113.0/24"'))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"would refuse your SSH session {ADMIN} -> port {SSH_PORT} via eth0" in result.stderr
    assert "nothing" in guarded.cli("status").stdout.lower()  # the kernel was not touched
    assert guarded.ssh_opens(ADMIN) and echo(session)


def test_host_change_keeps_the_session_and_waits_for_confirmation(guarded: Guarded, session: socket.socket) -> None:
    result = guarded.apply(host_policy(f'"{ADMIN}"'))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lock-out guard" in result.stdout and "dockerguard confirm" in result.stdout
    assert echo(session)
    assert guarded.ssh_opens(ADMIN)
    assert not guarded.ssh_opens("198.51.100.12")  # the [host] default drop holds for everyone else
    assert "pending" in guarded.cli("status").stdout
    confirmed = guarded.cli("confirm")
    assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
    again = guarded.apply(host_policy(f'"{ADMIN}"'))
    assert "nothing changed" in again.stdout  # an unchanged [host] needs no new confirmation


def test_forced_cut_spares_the_established_session_and_rolls_back(guarded: Guarded, session: socket.socket) -> None:
    result = guarded.apply(host_policy('"203.0.113.0/24"'), "--force", "--confirm", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    assert echo(session)  # established traffic passes
    assert not guarded.ssh_opens(ADMIN)  # but a new login would be refused
    rolled = guarded.cli("rollback")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert guarded.ssh_opens(ADMIN) and echo(session)
