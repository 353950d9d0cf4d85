"""The hostile-review findings on the state directory, the locks and the tool search path, on the fake
drivers (no root needed; where a directory "owned by someone else" is needed, root chowns it and another
user pretends to be someone else by patching os.geteuid).

1. the state directory and its files are trusted only when nobody else could have written them, symlinks
   are never followed, and every file read back is validated data that never makes root install
   anything;
6. tools are run from a fixed, root-only search path.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dockerguard import Engine, StateError, parse_policy
from dockerguard.backends import Snapshot, common
from dockerguard.backends.fake import FakeBackend
from dockerguard.backends.iptables import rules
from dockerguard.compiler import compile_policy
from dockerguard.model import Family

POLICY = parse_policy('[[allow]]\nports = [443]\n')
OTHER = parse_policy('[[allow]]\nports = [80]\n')
OTHER_UID = 4242


class Notes(list):  # type: ignore[type-arg]
    """Collects what the engine notifies."""

    def __call__(self, message: str) -> None:
        self.append(message)

    def text(self) -> str:
        return "\n".join(self)


def engine(state_dir: Path, backend: Any = None, **options: Any) -> Engine:
    return Engine(backend or FakeBackend(), state_dir=state_dir, timer_launcher=lambda d, t: 4242, **options)


def foreign(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `path` belong to someone else: chown as root, else pretend to be another user."""
    if os.geteuid() == 0:
        os.chown(path, OTHER_UID, OTHER_UID)
    else:
        real = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: real + 1)


def policy_file(tmp_path: Path, text: str = '[[allow]]\nports = [443]\n') -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- 1. the iptables driver's snapshot is data too --------------------------------------------------------
def good_layout() -> dict[str, Any]:
    policy = parse_policy('[[allow]]\nports = [443]\nsources = ["198.51.100.0/24"]\n'
                          '[host]\n[[host.allow]]\nports = [22]\n')
    return rules.target_layout(compile_policy(policy), Family.IPV4).to_json()


def test_layout_round_trips_what_we_render() -> None:
    data = good_layout()
    assert rules.Layout.from_json(data).to_json() == data
    with_sets = {**data, "sets": [["dockerguard-0123456789ab", ["198.51.100.0/24", "192.0.2.7/32"]]]}
    assert rules.Layout.from_json(with_sets).sets == (("dockerguard-0123456789ab", ("198.51.100.0/24",
                                                                                    "192.0.2.7/32")),)
    assert rules.Layout.from_json(rules.BASELINE.to_json()) == rules.BASELINE


def _with(change: Any) -> dict[str, Any]:
    data = good_layout()
    change(data)
    return data


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda d: d["managed"].append(["OUTPUT", 1, "-j DOCKERGUARD"]), "jump sits in chain 'OUTPUT'"),
    (lambda d: d["managed"].append(["INPUT", 1, "-j ACCEPT"]), "is not a jump to one of our chains"),
    (lambda d: d["managed"].append(["INPUT", 0, "-j DOCKERGUARD-INPUT"]), "position 0 is out of range"),
    (lambda d: d["chains"][0][1].append("-j ACCEPT"), "has a target our chains never use"),
    (lambda d: d["chains"][0][1].append("-j RETURN\nCOMMIT\n*nat\n-A PREROUTING -j ACCEPT"), "line break"),
    (lambda d: d["chains"][0][1].append("-j RETURN -A INPUT -j ACCEPT"), "holds the command -A"),
    (lambda d: d["chains"][0][1].append('-m comment --comment "x'), "unterminated quote"),
    (lambda d: d["chains"].append(["INPUT", ["-j DROP"]]), "chain 'INPUT' is not one of ours"),
    (lambda d: d.update(sets=[["docker-evil", ["198.51.100.0/24"]]]), "is not named like ours"),
    (lambda d: d.update(sets=[["dockerguard-a b", ["198.51.100.0/24"]]]), "is not named like ours"),
    (lambda d: d.update(sets=[["dockerguard-0123456789ab", ["198.51.100.0/24\ncreate x hash:ip"]]]),
     "is not a network"),
    (lambda d: d.update(user_chain="yes"), "user_chain is not true or false"),
    (lambda d: d.pop("managed"), "'managed' is missing"),
])
def test_layout_from_json_refuses_what_we_never_write(damage: Any, problem: str) -> None:
    with pytest.raises(StateError, match=f"iptables snapshot is not one dockerguard writes \\(.*{problem}"):
        rules.Layout.from_json(_with(damage))


def test_a_comment_may_say_anything() -> None:
    data = _with(lambda d: d["chains"][0][1].append('-m comment --comment "-A INPUT -j ACCEPT" -j RETURN'))
    assert rules.Layout.from_json(data).chains == tuple((name, tuple(specs)) for name, specs in data["chains"])


def test_iptables_driver_refuses_a_snapshot_that_is_not_an_object() -> None:
    from dockerguard.backends.iptables.nft import IptablesNftBackend

    class Offline(IptablesNftBackend):
        def _layouts(self) -> dict[Family, rules.Layout]:
            return {family: rules.BASELINE for family in Family}

        def _send(self, family: Family, text: str) -> None:
            raise AssertionError("nothing may be sent")

    for data in (None, [], {"ipv4": good_layout()}, "x"):
        with pytest.raises(StateError, match="refusing to restore it"):
            Offline().restore(Snapshot("iptables-nft", data))


# -- 6. tools come from a fixed search path ------------------------------------------------------------------
def planted_tool(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tool = directory / name
    tool.write_text("#!/bin/sh\necho pwned\n")
    tool.chmod(0o755)
    return tool


def test_as_root_tools_are_never_taken_from_path_or_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    planted_tool(tmp_path / "bin", "nft")
    planted_tool(tmp_path / "bin", "dockerguard-test-tool")
    monkeypatch.chdir(tmp_path / "bin")
    monkeypatch.setenv("PATH", f".:bin:{tmp_path / 'bin'}")
    assert common.tool_search_path().split(":")[:4] == ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    found = common.find_tool("nft")
    assert found is None or not found.startswith(str(tmp_path))
    assert common.find_tool("dockerguard-test-tool") is None
    with pytest.raises(FileNotFoundError, match="dockerguard-test-tool not found in /usr/sbin"):
        common.run_tool(["dockerguard-test-tool"])


def test_usr_local_is_searched_only_when_only_root_can_write_it(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    local = tmp_path / "local"
    planted_tool(local / "sbin", "dockerguard-test-tool")
    local.chmod(0o755)
    monkeypatch.setattr(common, "LOCAL_PATH", (str(local / "sbin"),))
    root_owned = os.stat(local).st_uid == 0
    assert (common.find_tool("dockerguard-test-tool") is not None) is root_owned
    (local / "sbin").chmod(0o775)  # group-writable: someone else could replace the tools
    assert common.find_tool("dockerguard-test-tool") is None


def test_another_user_keeps_path_without_relative_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("PATH", f".:bin::{tmp_path}")
    assert common.tool_search_path() == str(tmp_path)


def test_run_tool_keeps_the_tool_name_as_argv0() -> None:
    proc = common.run_tool(["sh", "-c", 'tr "\\0" " " < /proc/$$/cmdline'])
    assert proc.stdout.startswith("sh -c ")


def test_no_subprocess_outside_the_tool_runner() -> None:
    """Drivers and helpers run tools through common.run_tool; the only other subprocess dockerguard
    starts is itself (the rollback timer, by sys.executable). The demo's sandbox is a test harness; the
    CLI looks itself up on PATH only to write the command into an exported systemd unit."""
    src = Path(common.__file__).resolve().parents[1]
    allowed = {"backends/common.py", "state.py", "demo.py", "_probe_server.py", "cli.py"}
    calls = ("subprocess.run(", "subprocess.Popen(", "os.system(", "shutil.which(")
    relative = {str(path.relative_to(src)): path for path in src.rglob("*.py")}
    offenders = [name for name, path in relative.items()
                 if name not in allowed and not name.startswith("sandbox")  # sandbox.py, or the sandbox package
                 and any(call in path.read_text() for call in calls)]
    assert offenders == []
