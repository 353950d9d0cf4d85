"""The lock-out guard's first line: refuse a [host] policy that would cut the admin's own SSH session.

The session is found in `SSH_CONNECTION` (set by sshd for the login shell, inherited by sudo) and in
the established connections to the ports sshd listens on. Its incoming interface comes from the routing
table (pyroute2), since [host] rules only judge traffic entering an external interface.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from .backends.common import run_tool
from .model import Family, Ruleset
from .net import AddressError, format_address, parse_address


@dataclass(frozen=True)
class Session:
    """An inbound TCP connection to the host that an admin depends on."""

    peer: str
    local_port: int
    found_by: str  # "SSH_CONNECTION" or "ss"
    interface: str | None = None  # where packets from `peer` come in; None when unknown

    def __str__(self) -> str:
        via = f" via {self.interface}" if self.interface else ""
        return f"{self.peer} -> port {self.local_port}{via} (found by {self.found_by})"


def sessions_from_environment(environ: Mapping[str, str]) -> list[Session]:
    # "client_ip client_port server_ip server_port"
    parts = environ.get("SSH_CONNECTION", "").split()
    if len(parts) == 4 and parts[3].isdigit():
        try:
            version, value = parse_address(parts[0])
        except AddressError:
            return []
        return [Session(format_address(version, value), int(parts[3]), "SSH_CONNECTION")]
    return []


def sessions_from_ss(listening: str, established: str) -> list[Session]:
    """Parse `ss -Htlnp` (to find sshd's ports) and `ss -Htn state established` output."""
    ssh_ports = {int(match.group(1)) for line in listening.splitlines() if '"sshd' in line
                 for match in [re.search(r":(\d+)\s", line)] if match}
    sessions = []
    for line in established.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        local, peer = fields[-2], fields[-1]
        local_port = int(local.rsplit(":", 1)[1])
        if local_port in ssh_ports:
            address = peer.rsplit(":", 1)[0].strip("[]").split("%")[0]
            if address.startswith("::ffff:"):
                address = address[len("::ffff:"):]
            sessions.append(Session(address, local_port, "ss"))
    return sessions


def current_sessions(environ: Mapping[str, str] | None = None) -> list[Session]:
    """The SSH sessions into this host (network namespace), with their incoming interfaces."""
    found = sessions_from_environment(os.environ if environ is None else environ)
    try:
        listening = run_tool(["ss", "-Htlnp"], timeout=10).stdout
        established = run_tool(["ss", "-Htn", "state", "established"], timeout=10).stdout
        found += sessions_from_ss(listening, established)
    except (OSError, subprocess.SubprocessError):
        pass  # no ss: SSH_CONNECTION alone
    unique = {(session.peer, session.local_port): session for session in found}
    return [Session(s.peer, s.local_port, s.found_by, _incoming_interface(s.peer)) for s in unique.values()]


def _incoming_interface(peer: str) -> str | None:
    """The interface our replies to `peer` leave by, which is where its packets come in."""
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            route = ipr.route("get", dst=peer)
            index = route[0].get_attr("RTA_OIF")
            return str(ipr.get_links(index)[0].get_attr("IFLA_IFNAME"))
    except Exception:  # no route, no pyroute2, no permission: unknown, judged conservatively
        return None


def cut_sessions(ruleset: Ruleset, sessions: list[Session]) -> list[Session]:
    """The sessions whose reconnection `ruleset` would refuse (the live connection itself survives as
    established traffic, but the next login would not)."""
    host = ruleset.host
    if host is None:
        return []
    cut = []
    for session in sessions:
        if session.interface is not None and session.interface not in ruleset.interfaces:
            continue  # [host] rules do not judge this interface
        version, peer = parse_address(session.peer)
        family = Family.IPV4 if version == 4 else Family.IPV6
        allowed = any(source.contains(version, peer) and span.first <= session.local_port <= span.last
                      for rule in host.rules_for(family, "tcp") for source in rule.sources for span in rule.ports)
        if not allowed:
            cut.append(session)
    return cut
