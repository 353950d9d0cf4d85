"""What every driver shares: the names of our objects in the kernel, and the runner for external tools.

External tools (nft, iptables-*-restore, ipset, ss, ...) are found here and nowhere else (`find_tool`):
as root, only in a fixed search path of directories only root can write, never in the current directory
or wherever $PATH points, so that whoever can influence root's environment or working directory cannot
run their own `iptables-nft-restore` with root's rights.

Chain names are given per `Role` (model), so a renderer asks for "the forward chain" the same way in
every driver, and tests and tools find our objects by importing these names instead of spelling them.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Sequence
from typing import IO

from ..model import Family, Role

COMMENT = "dockerguard"  # marks the jumps we place in chains that are not ours
# On log lines of what a chain's default refuses, per role; kernel logs cut prefixes at 29 characters.
LOG_PREFIX = {Role.FORWARD: "dockerguard-drop: ", Role.PROXY: "dockerguard-proxy-drop: ",
              Role.HOST: "dockerguard-host-drop: "}

# -- native nftables: one table of our own ------------------------------------------------------------
NFT_TABLE = "dockerguard"  # `table inet dockerguard`
NFT_PRIORITY = -1  # "filter - 1": before iptables-nft's and Docker's filter chains at priority 0
# Roles entered from a hook get a base chain named after the hook (`Role.hook`), which jumps here:
NFT_CHAIN = {Role.FORWARD: "external", Role.INPUT: "inbound", Role.PROXY: "proxy", Role.HOST: "host",
             Role.EGRESS: "egress"}
# allow_v4_tcp, host_v6_udp, ...: FORWARD and PROXY judge the same (source, port) pairs, so share sets.
NFT_SET_PREFIX = {Role.FORWARD: "allow", Role.PROXY: "allow", Role.HOST: "host"}
NFT_PUBLISHED_SET = "published"  # published_tcp, published_udp: the ports whose INPUT path is judged
# The ban sets live in a table of their own that an apply never replaces (only its chains and port sets
# are refilled), so what fail2ban or crowdsec put there survives applies, rollbacks and repairs. Its base
# chains run before ours.
NFT_BANS_TABLE = "dockerguard_bans"
NFT_BANS_PRIORITY = -2
NFT_BAN_SETS = {"bans_v4", "bans_v6"}

# -- iptables (both flavours): our chains in table filter, jumped to from chains we do not own ----------
IPTABLES_CHAIN = {Role.FORWARD: "DOCKERGUARD", Role.INPUT: "DOCKERGUARD-INPUT", Role.PROXY: "DOCKERGUARD-PROXY",
                  Role.HOST: "DOCKERGUARD-HOST", Role.EGRESS: "DOCKERGUARD-EGRESS"}
# where the jumps to our chains sit (one per external interface: -i IFACE, or -o IFACE for EGRESS)
IPTABLES_ENTRY = {Role.FORWARD: "DOCKER-USER", Role.EGRESS: "DOCKER-USER", Role.INPUT: "INPUT"}

# What the jump into a hook's chain says about the traffic it judges ("judge forwarded traffic ...").
ROLE_TRAFFIC = {Role.FORWARD: "forwarded traffic entering", Role.INPUT: "host traffic entering",
                Role.EGRESS: "containers' traffic leaving"}

TOOL_TIMEOUT = 30.0
SAFE_PATH = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
# Searched too when root owns them (and /usr/local) and nobody else can write them.
LOCAL_PATH = ("/usr/local/sbin", "/usr/local/bin")


def tool_search_path() -> str:
    """Where tools are looked for: as root, SAFE_PATH and the trustworthy LOCAL_PATH directories; for
    another user (who cannot change the ruleset anyway), $PATH without relative entries (which name
    directories relative to wherever the process happens to run)."""
    if os.geteuid() != 0:
        entries = [entry for entry in os.environ.get("PATH", os.defpath).split(os.pathsep) if os.path.isabs(entry)]
        return os.pathsep.join(entries)
    return os.pathsep.join([*SAFE_PATH, *(entry for entry in LOCAL_PATH if _root_only(entry))])


def _root_only(directory: str) -> bool:
    for path in (directory, os.path.dirname(directory)):
        try:
            info = os.stat(path)
        except OSError:
            return False
        if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
    return True


def find_tool(name: str) -> str | None:
    """The absolute path of tool `name` in `tool_search_path()`, or None."""
    if os.sep in name:  # an explicit path is taken as given, if absolute
        return name if os.path.isabs(name) and os.access(name, os.X_OK) else None
    found = shutil.which(name, path=tool_search_path())
    return os.path.abspath(found) if found else None


def iptables_binary(flavour: str, family: Family, suffix: str = "") -> str:
    """`iptables_binary("nft", Family.IPV6, "-save")` -> "ip6tables-nft-save"."""
    return f"{'iptables' if family is Family.IPV4 else 'ip6tables'}-{flavour}{suffix}"


def run_tool(argv: Sequence[str], input: str | None = None,
             timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run a firewall tool (found by `find_tool`), capturing its output; never raises for a non-zero exit.
    FileNotFoundError when the tool is not in the search path."""
    command = list(argv)
    path = find_tool(command[0])
    if path is None:
        raise FileNotFoundError(errno.ENOENT, f"{command[0]} not found in {tool_search_path() or 'an empty PATH'}",
                                command[0])
    # argv[0] stays the name: multi-call binaries (xtables-nft-multi) dispatch on it.
    return subprocess.run(command, executable=path, input=input, capture_output=True, text=True, timeout=timeout,
                          check=False)


def start_tool(argv: Sequence[str], output: IO[str]) -> subprocess.Popen[str]:
    """Start a long-running firewall tool (`nft monitor trace`), found like `run_tool`'s, writing stdout and
    stderr to `output`; the caller stops it. FileNotFoundError when the tool is not in the search path."""
    command = list(argv)
    path = find_tool(command[0])
    if path is None:
        raise FileNotFoundError(errno.ENOENT, f"{command[0]} not found in {tool_search_path() or 'an empty PATH'}",
                                command[0])
    return subprocess.Popen(command, executable=path, stdout=output, stderr=subprocess.STDOUT, text=True)


def tool_complaint(proc: subprocess.CompletedProcess[str]) -> str:
    """The tool's complaint on one line, without its "Try `... --help'" advice."""
    lines = [line.strip() for line in (proc.stderr or proc.stdout).split("\n")
             if line.strip() and not line.startswith("Try `")]
    return "; ".join(lines) or f"exit status {proc.returncode}"
