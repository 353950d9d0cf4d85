"""Safe operations against the real nft backend, each test inside network namespaces of its own.

- diff of an unchanged policy is empty and the second apply touches nothing (same rule handles, same
  non-zero counters);
- `apply --confirm` without an answer restores the old ruleset at the deadline even when the CLI and its
  whole process group are SIGKILLed right after applying (the detached timer does it);
- `confirm` in time keeps the new ruleset; `rollback` walks the history back;
- the exported nft text file builds exactly the table the JSON transaction builds;
- two applies with different state directories in one namespace wait for each other (the ruleset lock),
  end with exactly one of the policies installed, and the other's next apply repairs it;
- a state directory others can write is refused, and planted snapshots (another nft table, an iptables
  INPUT accept) never reach the kernel; `remove` still removes when the state directory is unusable.

Everything runs through `ip netns exec NS python -m dockerguard ...` with a per-test state directory;
the root namespace's firewall is never touched. Needs root (skipped without, failed under CI).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

POLICY_A = '[[allow]]\nports = [443]\ncomment = "web"\n'
POLICY_B = '[[allow]]\nports = [80, 8080]\nsources = ["198.51.100.0/24"]\ncomment = "office"\n'
_names = itertools.count()


def _require_environment() -> None:
    problems = [] if os.geteuid() == 0 else ["not root"]
    problems += [f"missing {tool}" for tool in ("ip", "nft") if shutil.which(tool) is None]
    if problems:
        message = "safe-ops integration tests need: " + ", ".join(problems)
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(message + " (CI is set: failing instead of skipping)", pytrace=False)
        pytest.skip(message)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll until `predicate()`; return the seconds it took, fail after `timeout`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has finished; its reaper just has not collected it


class Netns:
    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.tmp = tmp
        self.state_dir = tmp / f"state-{name}"
        self.env = {**os.environ, "DOCKERGUARD_STATE_DIR": str(self.state_dir)}

    def argv(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, sys.executable, "-m", "dockerguard", *args]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=60, check=False,
                                env=self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"dockerguard {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True,
                              timeout=30, check=check)

    def listing(self, handles: bool = False) -> str | None:
        result = self.run("nft", *(["-a"] if handles else []), "list", "table", "inet", "dockerguard", check=False)
        return result.stdout if result.returncode == 0 else None

    def policy(self, text: str, name: str = "policy") -> str:
        path = self.tmp / f"{name}.toml"
        path.write_text(text)
        return str(path)

    def timer_pids(self) -> list[int]:
        pids = []
        for path in self.state_dir.glob("timer-*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(path.read_text()))
        return pids

    def pending_files(self) -> list[Path]:
        return sorted((self.state_dir / "pending").glob("*")) if (self.state_dir / "pending").exists() else []


@pytest.fixture
def make_netns(tmp_path: Path) -> Iterator[Callable[[], Netns]]:
    """Factory of fresh namespaces, all deleted afterwards (and any rollback timer they still run)."""
    _require_environment()
    created: list[Netns] = []

    def factory() -> Netns:
        ns = Netns(f"dgsafe-{os.getpid()}-{next(_names)}", tmp_path)
        subprocess.run(["ip", "netns", "add", ns.name], check=True, timeout=30)
        created.append(ns)
        return ns

    try:
        yield factory
    finally:
        for ns in created:
            for pid in ns.timer_pids():
                with contextlib.suppress(OSError):
                    if b"_rollback-timer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns.name], check=False, timeout=30)


@pytest.fixture
def ns(make_netns: Callable[[], Netns]) -> Netns:
    return make_netns()


def add_client(host: Netns, make_netns: Callable[[], Netns]) -> Callable[[int], None]:
    """A client namespace on the host's eth0, and a routed network behind the host's int0 (whose peer
    sits unaddressed in the client namespace), so packets from the client are forwarded by the host:
    through dockerguard's chain, counted by its counters."""
    client = make_netns()
    for outside, inside in (("dgc0", "eth0"), ("dgc1", "int0")):
        subprocess.run(["ip", "link", "add", outside, "netns", client.name, "type", "veth", "peer", "name", inside,
                        "netns", host.name], check=True, timeout=30)
    for argv in (["ip", "addr", "add", "198.51.100.1/24", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"],
                 ["ip", "addr", "add", "203.0.113.1/24", "dev", "int0"], ["ip", "link", "set", "int0", "up"],
                 ["sysctl", "-qw", "net.ipv4.ip_forward=1"]):
        host.run(*argv)
    for argv in (["ip", "addr", "add", "198.51.100.10/24", "dev", "dgc0"], ["ip", "link", "set", "dgc0", "up"],
                 ["ip", "link", "set", "dgc1", "up"], ["ip", "route", "add", "203.0.113.0/24", "via", "198.51.100.1"]):
        client.run(*argv)

    def send(count: int) -> None:
        client.run(sys.executable, "-c", "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                   f"for _ in range({count}): s.sendto(b'x', ('203.0.113.10', 9))\n")

    return send


def test_diff_is_empty_and_second_apply_is_a_no_op(ns: Netns, make_netns: Callable[[], Netns]) -> None:
    send = add_client(ns, make_netns)
    policy = ns.policy(POLICY_A)
    assert "applied ruleset" in ns.cli("apply", "-c", policy, "--backend", "nft").stdout
    send(7)
    before = ns.listing(handles=True)
    assert before is not None and "# handle" in before
    assert "counter packets 7 " in before  # the default drop saw the forwarded packets

    diff = ns.cli("diff", "-c", policy, "--backend", "nft", "--exit-code")
    assert (diff.returncode, diff.stdout, diff.stderr) == (0, "", "")
    assert "nothing changed" in ns.cli("apply", "-c", policy, "--backend", "nft").stdout
    assert ns.listing(handles=True) == before  # same handles: nothing was replaced; counters kept
    assert sorted(p.name for p in (ns.state_dir / "history").iterdir()) == ["0001.json"]

    other = ns.policy(POLICY_B, "b")
    changed = ns.cli("diff", "-c", other, "--backend", "nft", "--exit-code", check=False)
    assert changed.returncode == 1
    assert "+ element allow_v4_tcp: 198.51.100.0/24 . 8080-8080" in changed.stdout.splitlines()
    assert "- set allow_v6_tcp: type ipv6_addr . inet_service; flags interval" in changed.stdout.splitlines()
    assert ns.listing(handles=True) == before  # diff changes nothing


def test_unconfirmed_apply_is_rolled_back_even_when_the_cli_is_killed(ns: Netns) -> None:
    ns.cli("apply", "-c", ns.policy(POLICY_A), "--backend", "nft")
    old = ns.listing()
    master, slave = pty.openpty()  # a terminal: the CLI sits at "keep? [y/N]" like over SSH
    started = time.monotonic()
    proc = subprocess.Popen(ns.argv("apply", "-c", ns.policy(POLICY_B, "b"), "--backend", "nft", "--confirm", "3"),
                            stdin=slave, stdout=slave, stderr=slave, env=ns.env, start_new_session=True)
    os.close(slave)
    try:
        seen = b""
        while b"keep the new rules?" not in seen:
            assert time.monotonic() - started < 30, f"no prompt; output so far: {seen!r}"
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                with contextlib.suppress(OSError):
                    seen += os.read(master, 4096)
        assert ns.listing() != old and "198.51.100.0/24 . 8080" in (ns.listing() or "")
        (pending,) = ns.pending_files()
        deadline = json.loads(pending.read_text())["deadline"]
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its whole process group, like a lost session
        proc.wait(timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        os.close(master)
    assert proc.returncode == -signal.SIGKILL
    wait_for(lambda: ns.listing() == old, timeout=15, what="the rollback timer to restore the old ruleset")
    assert time.time() >= deadline - 0.1  # not before the deadline
    # The timer restores, reads the rules back, releases its claim, and only then records the outcome.
    wait_for(lambda: (ns.state_dir / "last-rollback.json").exists(), timeout=10, what="the timer's report")
    assert ns.pending_files() == []
    last = json.loads((ns.state_dir / "last-rollback.json").read_text())
    assert last["ok"] and last["reason"] == "deadline"
    wait_for(lambda: not any(alive(pid) for pid in ns.timer_pids()) and not ns.timer_pids(), timeout=5,
             what="the timer to exit")
    assert sorted(p.name for p in (ns.state_dir / "history").iterdir()) == ["0001.json"]  # undone apply dropped


def test_confirm_in_time_keeps_the_new_ruleset(ns: Netns) -> None:
    ns.cli("apply", "-c", ns.policy(POLICY_A), "--backend", "nft")
    # 10 s: a loaded CI machine needs seconds for the processes between apply and confirm.
    applied = ns.cli("apply", "-c", ns.policy(POLICY_B, "b"), "--backend", "nft", "--confirm", "10")
    assert "run `dockerguard confirm` before" in applied.stdout
    new = ns.listing()
    pids = ns.timer_pids() or [0]
    status = json.loads(ns.cli("status", "--backend", "nft", "--json").stdout)
    assert status["pending"]["deadline"] > time.time()
    assert "confirmed ruleset" in ns.cli("confirm").stdout
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=5, what="the timer to stand down")
    time.sleep(max(0.0, status["pending"]["deadline"] + 1 - time.time()))
    assert ns.listing() == new
    assert json.loads(ns.cli("status", "--backend", "nft", "--json").stdout)["pending"] is None
    late = ns.cli("confirm", check=False)
    assert late.returncode == 1 and "nothing to confirm" in late.stderr


def test_answering_yes_on_the_terminal_keeps_the_new_ruleset(ns: Netns) -> None:
    ns.cli("apply", "-c", ns.policy(POLICY_A), "--backend", "nft")
    master, slave = pty.openpty()
    proc = subprocess.Popen(ns.argv("apply", "-c", ns.policy(POLICY_B, "b"), "--backend", "nft", "--confirm", "20"),
                            stdin=slave, stdout=slave, stderr=slave, env=ns.env, start_new_session=True)
    os.close(slave)
    output = b""
    try:
        started = time.monotonic()
        while b"keep the new rules?" not in output and time.monotonic() - started < 30:
            if select.select([master], [], [], 1)[0]:
                output += os.read(master, 4096)
        os.write(master, b"y\n")
        proc.wait(timeout=30)
        with contextlib.suppress(OSError):
            while select.select([master], [], [], 0.2)[0]:
                output += os.read(master, 4096)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        os.close(master)
    assert proc.returncode == 0, output
    assert b"kept ruleset" in output
    assert ns.pending_files() == []
    assert "198.51.100.0/24 . 8080" in (ns.listing() or "")


def test_rollback_walks_the_history_back(ns: Netns) -> None:
    assert ns.listing() is None
    ns.cli("apply", "-c", ns.policy(POLICY_A), "--backend", "nft")
    first = ns.listing()
    ns.cli("apply", "-c", ns.policy(POLICY_B, "b"), "--backend", "nft")
    assert ns.listing() != first
    assert "previous ruleset restored and verified" in ns.cli("rollback", "--backend", "nft").stdout
    assert ns.listing() == first
    ns.cli("rollback")  # the backend comes from the history entry
    assert ns.listing() is None
    empty = ns.cli("rollback", check=False)
    assert empty.returncode == 1 and "nothing to roll back" in empty.stderr


def test_second_confirm_apply_is_refused_while_one_is_pending(ns: Netns) -> None:
    ns.cli("apply", "-c", ns.policy(POLICY_A), "--backend", "nft", "--confirm", "30")
    refused = ns.cli("apply", "-c", ns.policy(POLICY_B, "b"), "--backend", "nft", "--confirm", "30", check=False)
    assert refused.returncode == 1
    assert "an apply --confirm is pending until" in refused.stderr and "Traceback" not in refused.stderr
    assert "pending" in ns.cli("status", "--backend", "nft").stdout
    ns.cli("rollback")  # undoes the pending apply at once; its timer finds nothing left to do
    assert ns.listing() is None and ns.pending_files() == []


def test_status_warns_about_forward_chains_that_run_before_ours(ns: Netns) -> None:
    ns.cli("apply", "-c", ns.policy(POLICY_A), "--backend", "nft")
    first = json.loads(ns.cli("status", "--backend", "nft", "--json").stdout)
    assert [finding["level"] for finding in first["path"]] == ["ok", "ok"]  # forward and input hooks
    ns.run("nft", "add table ip early; add chain ip early fw { type filter hook forward priority -10; }")
    status = ns.cli("status", "--backend", "nft", "-c", ns.policy(POLICY_A))
    assert "warning: ip early chain fw (forward hook, priority -10) runs before ours" in " ".join(status.stdout.split())
    assert "in sync" in status.stdout
    data = json.loads(ns.cli("status", "--backend", "nft", "--json").stdout)
    assert [finding["level"] for finding in data["path"]] == ["warning", "ok"]  # the input hook has no rival
    ours = [rule["description"] for rule in data["installed"]["rules"] if not rule["chain"].startswith("bans_")]
    assert ours[-1] == "default drop -> drop"


@pytest.mark.parametrize("text", [
    POLICY_A,
    'default = "reject"\n' + POLICY_B,
    'external_interfaces = ["eth0", "ens3"]\nlog_dropped = true\ndefault = "reject"\n'
    '[sets]\noffice = ["198.51.100.0/24", "2001:db8:100::/64"]\n'
    '[[allow]]\nports = [25, 80, 443]\n'
    '[[allow]]\nports = ["8000-8100"]\nproto = "udp"\nsources = ["@office", "203.0.113.7"]\n',
    '[[allow]]\nports = [443]\n[host]\ndefault = "reject"\n[[host.allow]]\nports = [22]\nsources = ["2001:db8::/32"]\n',
], ids=["simple", "reject", "sets-v6-udp-log", "host"])
def test_exported_nft_text_builds_the_same_table_as_the_json_transaction(
        make_netns: Callable[[], Netns], text: str) -> None:
    by_text, by_json = make_netns(), make_netns()
    policy = by_json.policy(text)
    exported = by_json.cli("export", "--format", "nft", "-c", policy, "--backend", "nft").stdout
    nft_file = by_text.tmp / "dockerguard.nft"
    nft_file.write_text(exported)
    by_text.run("nft", "-f", str(nft_file))
    by_json.cli("apply", "-c", policy, "--backend", "nft")
    assert by_text.listing() is not None
    assert by_text.listing() == by_json.listing()
    by_text.run("nft", "-f", str(nft_file))  # loading it again replaces the table: still the same
    assert by_text.listing() == by_json.listing()
    # and the driver sees its own ruleset in the text-loaded table
    assert by_text.cli("diff", "-c", policy, "--backend", "nft").stdout == ""


# -- the state directory and the locks under attack (tests/unit/test_state_security.py has the rest) ----
def reference_listing(make_netns: Callable[[], Netns], text: str) -> str:
    """What applying `text` alone, in a namespace of its own, installs."""
    other = make_netns()
    other.cli("apply", "-c", other.policy(text, f"ref-{other.name}"), "--backend", "nft")
    listing = other.listing()
    assert listing is not None
    return listing


def test_applies_with_different_state_dirs_in_one_namespace_are_serialised(
        ns: Netns, make_netns: Callable[[], Netns]) -> None:
    references = {"a": reference_listing(make_netns, POLICY_A), "b": reference_listing(make_netns, POLICY_B)}
    policies = {"a": ns.policy(POLICY_A, "a"), "b": ns.policy(POLICY_B, "b")}
    # Someone holds this namespace's ruleset lock: both applies must wait for it, then for each other.
    holder = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, sys.executable, "-c",
         "import sys\nfrom dockerguard.locking import ruleset_lock\n"
         "with ruleset_lock('dockerguard test-holder', 5):\n    print('held', flush=True)\n    sys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        applies = {name: subprocess.Popen(ns.argv("apply", "-c", policies[name], "--backend", "nft",
                                                  "--state-dir", str(ns.tmp / f"state-{name}")),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ns.env)
                   for name in policies}
        waiting = {name: b"" for name in applies}
        notice = f"waiting for the lock held by pid {holder.pid} (dockerguard test-holder, since ".encode()
        started = time.monotonic()
        while not all(notice in b" ".join(text.split()) for text in waiting.values()):
            assert time.monotonic() - started < 30, f"no waiting notice: {waiting}"
            streams = {proc.stderr: name for name, proc in applies.items() if proc.stderr is not None}
            for stream in select.select(list(streams), [], [], 1)[0]:
                waiting[streams[stream]] += os.read(stream.fileno(), 4096)
        assert ns.listing() is None  # nobody went past the lock
    finally:
        if holder.stdin is not None:
            holder.stdin.write("\n")
            holder.stdin.close()
        holder.wait(timeout=10)
    outputs = {name: proc.communicate(timeout=60) for name, proc in applies.items()}
    for name, proc in applies.items():
        out, err = outputs[name]
        assert proc.returncode == 0, f"{name}: {out!r}{waiting[name] + err!r}"
        assert b"applied ruleset" in out
    final = ns.listing()
    (last,) = [name for name, listing in references.items() if listing == final]  # exactly one of them
    first = "a" if last == "b" else "b"
    # The one that ran second recorded what the kernel holds; the first one's record is stale and its
    # next apply repairs the kernel instead of trusting it.
    again = ns.cli("apply", "-c", policies[last], "--backend", "nft", "--state-dir", str(ns.tmp / f"state-{last}"))
    assert "nothing changed" in again.stdout
    repaired = ns.cli("apply", "-c", policies[first], "--backend", "nft", "--state-dir", str(ns.tmp / f"state-{first}"))
    assert "applied ruleset" in repaired.stdout and ns.listing() == references[first]


PWNED_TABLE = [{"chain": {"family": "inet", "table": "pwned", "name": "input", "type": "filter", "hook": "input",
                          "prio": -500, "policy": "accept"}}]


def plant(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_a_planted_state_dir_never_reaches_the_kernel(ns: Netns) -> None:
    state = ns.tmp / "shared-state"
    state.mkdir()
    state.chmod(0o777)  # anyone could have put files here
    token = "0123456789abcdef"
    now = time.time()
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    plant(state / "pending" / f"{token}.json", {
        "format": 1, "token": token, "backend": "nft", "created": now - 100, "deadline": now - 60, "entry": 1,
        "policy_digest": "abcdef012345", "boot_id": boot, "snapshot": {"backend": "nft", "data": PWNED_TABLE},
        "previous": None})
    ns.env["DOCKERGUARD_STATE_DIR"] = str(state)
    refused = ns.cli("apply", "-c", ns.policy(POLICY_A), "--backend", "nft", check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"unusable state directory {state}: {state} is writable by its group and others" in " ".join(
        refused.stderr.split())
    assert ns.run("nft", "list", "tables").stdout == ""
    # The admin tightens it; the planted (overdue) confirmation is still there and names another table.
    state.chmod(0o700)
    (state / "pending").chmod(0o700)
    (state / "pending" / f"{token}.json").chmod(0o600)
    applied = ns.cli("apply", "-c", ns.policy(POLICY_A), "--backend", "nft")
    assert "names table inet pwned, not inet dockerguard: refusing to restore it" in " ".join(applied.stderr.split())
    assert sorted(ns.run("nft", "list", "tables").stdout.splitlines()) == ["table inet dockerguard",
                                                                         "table inet dockerguard_bans"]


def test_a_planted_iptables_snapshot_is_refused(ns: Netns) -> None:
    state = ns.state_dir
    state.mkdir(mode=0o700)
    layout = {"user_chain": True, "managed": [["INPUT", 1, "-j ACCEPT"], ["FORWARD", 1, "-j DOCKER-USER"]],
              "chains": [], "foreign_user_rules": 0, "sets": []}
    plant(state / "history" / "0001.json", {
        "format": 1, "number": 1, "backend": "iptables-nft", "timestamp": time.time(), "action": "apply",
        "policy_digest": None, "policy_path": None, "previous": None,
        "snapshot": {"backend": "iptables-nft", "data": {"ipv4": layout, "ipv6": layout}}})
    (state / "history").chmod(0o700)
    (state / "history" / "0001.json").chmod(0o600)
    refused = ns.cli("rollback", check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "is not a jump to one of our chains" in refused.stderr and "0001.json" in refused.stderr
    saved = ns.run("iptables-nft-save").stdout
    assert "-j ACCEPT" not in saved


def test_remove_with_an_unusable_state_dir_still_removes(ns: Netns) -> None:
    ns.cli("apply", "-c", ns.policy(POLICY_A), "--backend", "nft")
    assert ns.listing() is not None
    ns.state_dir.chmod(0o777)
    removed = ns.cli("remove", "--backend", "nft")
    assert "removed dockerguard's rules (nft)" in removed.stdout
    assert "warning: removing without recording it" in removed.stderr and str(ns.state_dir) in removed.stderr
    assert ns.listing() is None
    ns.state_dir.chmod(0o700)
    assert sorted(p.name for p in (ns.state_dir / "history").iterdir()) == ["0001.json"]  # nothing recorded
