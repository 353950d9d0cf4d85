"""Helpers of the crash, concurrency and foreign-rule tests (test_kill.py, test_concurrency.py,
test_foreign.py): throw-away network namespaces, the dockerguard CLI run inside them, and normalised
views of the firewall (ours and everybody else's) to compare byte for byte.

Everything runs through `ip netns exec NS ...`: the root namespace's firewall is never read or written.
`XTABLES_LOCKFILE` points at a lock file of our own, so these tests do not contend with other iptables
users of the machine for /run/xtables.lock (iptables(-restore) honour it; dockerguard passes its
environment on to the tools and takes the same file for its libiptc commits, see legacy.xtables_lock).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

XTABLES_LOCKFILE = "/run/xtables-crash.lock"
BACKENDS = ("nft", "iptables-nft", "iptables-legacy")
TOOLS = ("ip", "nft", "ipset", "iptables-nft-save", "iptables-legacy-save", "iptables-nft-restore",
         "iptables-legacy-restore")
_names = itertools.count()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_environment() -> None:
    """Skip without root or tools; fail instead under CI (a broken runner must not pass by skipping)."""
    problems = [] if os.geteuid() == 0 else ["not root"]
    problems += [f"missing {tool}" for tool in TOOLS if shutil.which(tool) is None]
    if problems:
        message = "reliability tests need: " + ", ".join(problems)
        if in_ci():
            pytest.fail(message + " (CI is set: failing instead of skipping)", pytrace=False)
        pytest.skip(message)


def sources(count: int) -> list[str]:
    """`count` single-address sources, half IPv4 and half IPv6, from the documentation ranges; beyond
    their 381 odd IPv4 hosts, 10.0.0.0/8 addresses (set members only: no packet is ever sent from them).
    No two are adjacent, so the compiler cannot merge them into prefixes: `count` set elements."""
    v4: list[str] = []
    for net in ("198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24"):
        v4 += [str(host) for host in ipaddress.ip_network(net).hosts() if int(host) % 2]
    half = count // 2
    v4 = v4[:half] + [str(ipaddress.ip_address(0x0A000000 + 4 * i + 1)) for i in range(max(0, half - len(v4)))]
    v6 = [f"2001:db8::{2 * i + 1:x}" for i in range(count - half)]
    return v4 + v6


def big_policy(count: int, ports: list[int], *, drop_last: int = 0, interface: str = "eth0") -> str:
    """A policy whose one allow entry has `count - drop_last` sources (so apply takes a while)."""
    chosen = sources(count)
    chosen = chosen[:len(chosen) - drop_last] if drop_last else chosen
    return (f'external_interfaces = ["{interface}"]\n[[allow]]\nports = {json.dumps(ports)}\n'
            f'sources = {json.dumps(chosen)}\ncomment = "many sources"\n')


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (the killed CLI and the tools it ran)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def kill_group(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGKILL the process group we started (the CLI and its iptables/ipset/nft children), and wait until
    none of it runs any more."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while group_members(proc.pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process group {proc.pid} still runs after SIGKILL: {group_members(proc.pid)}")
        time.sleep(0.01)


def _strip_counters(node: Any) -> Any:
    """nft JSON without handles and counter values (and the metainfo with the nft version)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "handle":
                continue
            if key == "counter" and isinstance(value, dict):
                value = {k: v for k, v in value.items() if k not in ("packets", "bytes")}
            out[key] = _strip_counters(value)
        return out
    if isinstance(node, list):
        return [_strip_counters(item) for item in node if not (isinstance(item, dict) and "metainfo" in item)]
    return node


# ipset's hash seed is random per creation, and its bucket/hash sizes follow from the history of adds.
_SET_RANDOM = re.compile(r" (initval 0x[0-9a-f]+|bucketsize \d+|hashsize \d+)")
_CHAIN_COUNTERS = re.compile(r" \[\d+:\d+\]$")
_RULE_COUNTERS = re.compile(r"^\[\d+:\d+\] ")


def normalised_save(text: str) -> str:
    """iptables-save output without comments/timestamps and packet counters."""
    lines = []
    for line in text.split("\n"):
        if not line or line.startswith("#"):
            continue
        lines.append(_RULE_COUNTERS.sub("", _CHAIN_COUNTERS.sub("", line)))
    return "\n".join(lines)


class Netns:
    """One throw-away network namespace with a state directory of its own."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.tmp = tmp
        self.state_dir = tmp / f"state-{name}"
        self.env = {**os.environ, "DOCKERGUARD_STATE_DIR": str(self.state_dir), "XTABLES_LOCKFILE": XTABLES_LOCKFILE}

    # -- running things inside ----------------------------------------------------------------------
    def argv(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, sys.executable, "-m", "dockerguard", *args]

    def cli(self, *args: str, check: bool = True, timeout: float = 120,
            state_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = self.env if state_dir is None else {**self.env, "DOCKERGUARD_STATE_DIR": str(state_dir)}
        result = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout, check=False,
                                env=env)
        if check and result.returncode != 0:
            raise AssertionError(f"dockerguard {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def popen(self, *args: str, state_dir: Path | None = None) -> subprocess.Popen[str]:
        """The CLI in a process group of its own (so it can be killed with all its children)."""
        env = self.env if state_dir is None else {**self.env, "DOCKERGUARD_STATE_DIR": str(state_dir)}
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, start_new_session=True)

    def run(self, *argv: str, check: bool = True, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True,
                              timeout=timeout, check=check, input=input, env=self.env)

    def hold_ruleset_lock(self) -> subprocess.Popen[str]:
        """A process that holds this namespace's ruleset lock (as "dockerguard test-holder") until a line
        is written to its stdin; returns once it holds it."""
        code = ("import sys\nfrom dockerguard.locking import ruleset_lock\n"
                "with ruleset_lock('dockerguard test-holder', 30):\n"
                "    print('held', flush=True)\n    sys.stdin.readline()\n")
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, sys.executable, "-c", code],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=self.env,
                                start_new_session=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "held":
            kill_group(proc)
            raise AssertionError("the lock holder did not start")
        return proc

    def policy(self, text: str, name: str) -> str:
        path = self.tmp / f"{self.name}-{name}.toml"
        path.write_text(text)
        return str(path)

    # -- reading the firewall -------------------------------------------------------------------------
    def nft_json(self, *what: str) -> Any:
        result = self.run("nft", "-j", "list", *what, check=False)
        if result.returncode != 0:
            return None
        return _strip_counters(json.loads(result.stdout)["nftables"])

    def save(self, binary: str) -> str:
        return normalised_save(self.run(binary).stdout)

    def ipsets(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """Every ipset: name -> (create line, sorted members)."""
        sets: dict[str, tuple[str, list[str]]] = {}
        for line in self.run("ipset", "save").stdout.split("\n"):
            words = line.split()
            if len(words) >= 2 and words[0] == "create":
                sets[words[1]] = (_SET_RANDOM.sub("", line), [])
            elif len(words) >= 3 and words[0] == "add" and words[1] in sets:
                sets[words[1]][1].append(" ".join(words[2:]))
        return {name: (create, tuple(sorted(members))) for name, (create, members) in sets.items()}

    def ours(self, backend: str) -> dict[str, Any]:
        """Our objects per family ("ipv4", "ipv6"), normalised; for nft both families are one table, so
        both keys hold the same. The iptables families hold their whole filter table (the namespace
        holds nothing else) and the ipsets their rules match."""
        if backend == "nft":
            table = (self.nft_json("table", "inet", "dockerguard"), self.nft_json("table", "inet", "dockerguard_bans"))
            return {"ipv4": table, "ipv6": table}
        flavour = backend.split("-", 1)[1]
        sets = self.ipsets()
        view = {}
        for family, binary in (("ipv4", f"iptables-{flavour}-save"), ("ipv6", f"ip6tables-{flavour}-save")):
            text = self.save(binary)
            used = sorted(set(re.findall(r"--match-set (\S+)", text)))
            view[family] = (text, {name: sets.get(name) for name in used})
        return view

    def our_ipsets(self) -> list[str]:
        return sorted(name for name in self.ipsets() if name.startswith("dockerguard-"))

    def foreign(self) -> dict[str, Any]:
        """Everything in the namespace's firewall that is not dockerguard's, normalised (no counters)."""
        view: dict[str, Any] = {}
        ruleset = self.nft_json("ruleset") or []
        ours = {("inet", "dockerguard"), ("inet", "dockerguard_bans")}
        # The iptables-nft tables are compared through iptables-nft-save below (our chains live in them).
        xt = {("ip", "filter"), ("ip6", "filter")}
        kept = []
        for item in ruleset:
            (kind, body), = item.items()
            key = (body.get("family"), body.get("table") if kind != "table" else body.get("name"))
            if key in ours or key in xt:
                continue
            kept.append(item)
        view["nft"] = kept
        for binary in ("iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"):
            view[binary] = "\n".join(line for line in self.save(binary).split("\n")
                                     if "DOCKERGUARD" not in line and "dockerguard" not in line)
        view["ipset"] = {name: value for name, value in self.ipsets().items() if not name.startswith("dockerguard-")}
        return view

    # -- state directory ------------------------------------------------------------------------------
    def pending_files(self) -> list[Path]:
        where = self.state_dir / "pending"
        return sorted(where.iterdir()) if where.exists() else []

    def timer_pids(self) -> list[int]:
        pids = []
        for path in self.state_dir.glob("timer-*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(path.read_text()))
        return pids


@contextlib.contextmanager
def namespace(tmp: Path, prefix: str = "dgcrash") -> Iterator[Netns]:
    """A fresh namespace, deleted afterwards whatever happens (rollback timers it still runs killed by pid)."""
    require_environment()
    ns = Netns(f"{prefix}-{os.getpid()}-{next(_names)}", tmp)
    subprocess.run(["ip", "netns", "add", ns.name], check=True, timeout=30)
    try:
        ns.run("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        for pid in ns.timer_pids():
            with contextlib.suppress(OSError):
                if b"_rollback-timer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns.name], check=False, timeout=30)
