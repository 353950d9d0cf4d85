"""The hostile-review findings on the state directory, the locks and the tool search path, on the fake
drivers (no root needed; where a directory "owned by someone else" is needed, root chowns it and another
user pretends to be someone else by patching os.geteuid).

1. the state directory and its files are trusted only when nobody else could have written them, symlinks
   are never followed, and every file read back is validated data that never makes root install
   anything;
2. an unusable state directory makes `apply` refuse clearly and lets `remove` remove;
3. leftovers of killed writers are cleaned, every file is 0600 whatever the umask;
4. locks name their holder while one waits and when one gives up; the CLI's commands all take --state-dir;
5. the ruleset lock of the network namespace serialises applies that use different state directories;
6. tools are run from a fixed, root-only search path.
"""

from __future__ import annotations

import json
import os
import select
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dockerguard import Engine, LockTimeout, StateError, cli, locking, parse_policy, safefs
from dockerguard import state as state_module
from dockerguard.backends import Rendered, Snapshot, common
from dockerguard.backends.fake import FakeBackend
from dockerguard.backends.iptables import rules
from dockerguard.backends.nft.driver import NftBackend
from dockerguard.backends.nft.fake_kernel import FakeNftKernel
from dockerguard.compiler import compile_policy
from dockerguard.model import Family
from dockerguard.state import StateDir, boot_id

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


# -- 1. which state directories are trusted --------------------------------------------------------------
def test_state_dir_writable_by_others_is_refused_and_nothing_is_applied(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    fake = FakeBackend()
    with pytest.raises(StateError) as refused:
        engine(state, fake).apply(POLICY)
    message = str(refused.value)
    assert f"unusable state directory {state}" in message and "writable by its group and others" in message
    assert f"chmod 0700 {state}" in message and "--state-dir" in message
    assert fake.kernel is None and os.listdir(state) == []


def test_state_dir_owned_by_someone_else_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    foreign(state, monkeypatch)
    # (Pretending to be another user, the first directory refused may be one above it.)
    with pytest.raises(StateError, match=f"unusable state directory {state}: .* is owned by"):
        StateDir(state).push(backend="fake", action="apply", policy_digest=None, policy_path=None,
                             snapshot=Snapshot("fake", None), previous=None)
    with pytest.raises(StateError, match="owned by"):
        StateDir(state).pending()  # reading is refused too: its files could say anything


def test_parent_writable_by_others_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # no sticky bit: anyone could rename our state directory away and put theirs
    with pytest.raises(StateError, match=f"{shared} is writable by its group and others"):
        engine(shared / "state").apply(POLICY)
    assert not (shared / "state").exists()


def test_parent_owned_by_someone_else_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = tmp_path / "theirs"
    parent.mkdir(mode=0o755)
    (parent / "state").mkdir(mode=0o700)
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory away")
    os.chown(parent, OTHER_UID, OTHER_UID)
    with pytest.raises(StateError, match=f"{parent} is owned by uid {OTHER_UID}"):
        StateDir(parent / "state").history()


def test_sticky_parent_is_allowed_only_for_our_own_0700_state_dir(tmp_path: Path) -> None:
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp
    state = sticky / "state"
    assert engine(state).apply(POLICY).changed
    assert mode(state) == 0o700
    state.chmod(0o755)  # readable by others under a shared directory: refused for reading...
    with pytest.raises(StateError, match="must be 0700"):
        StateDir(state).pending()
    engine(state).apply(OTHER)  # ...and tightened by a writer, since it is ours
    assert mode(state) == 0o700


def test_our_state_dir_with_a_loose_mode_is_tightened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    engine(state).apply(POLICY)
    assert mode(state) == 0o700


def test_symlinked_state_dir_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(StateError, match=f"{link} is a symbolic link"):
        engine(link).apply(POLICY)
    assert os.listdir(real) == []


def test_a_symlink_above_the_state_dir_in_a_trusted_directory_is_followed(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir(mode=0o755)
    (tmp_path / "run").symlink_to(tmp_path / "var")  # like /var/run -> /run, made by root
    engine(tmp_path / "run" / "state").apply(POLICY)
    assert (tmp_path / "var" / "state" / "history" / "0001.json").is_file()


def test_symlinked_history_or_pending_dir_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    state.mkdir(mode=0o700)
    (state / "history").symlink_to(elsewhere)
    fake = FakeBackend()
    with pytest.raises(StateError, match=f"{state / 'history'}: not a directory|symbolic link"):
        engine(state, fake).apply(POLICY)
    assert os.listdir(elsewhere) == [] and fake.kernel is None
    (state / "history").unlink()
    (state / "pending").symlink_to(elsewhere)
    with pytest.raises(StateError, match="pending"):
        engine(state, fake).apply(OTHER, confirm=30)
    assert os.listdir(elsewhere) == []


def test_planted_symlinks_are_replaced_or_refused_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    state = tmp_path / "state"
    (state / "history").mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    for name in ("installed.json", "history/0001.json", "last-rollback.json"):
        (state / name).symlink_to(victim)
    fake = FakeBackend()
    eng = engine(state, fake)
    eng.apply_file(policy_file(tmp_path))  # reads nothing through the links, writes by renaming over them
    assert victim.read_text() == "root's file\n"
    assert (state / "installed.json").is_file() and not (state / "installed.json").is_symlink()
    token = "0123456789abcdef"
    (state / f"timer-{token}.pid").symlink_to(victim)
    eng.state.write_timer_pid(token)
    assert victim.read_text() == "root's file\n" and (state / f"timer-{token}.pid").read_text().strip().isdigit()
    (state / "lock").unlink()
    (state / "lock").symlink_to(victim)
    with pytest.raises(StateError, match=f"cannot open {state / 'lock'}: it is a symbolic link"):
        eng.apply(OTHER)
    assert victim.read_text() == "root's file\n"


def test_hard_linked_or_foreign_files_are_not_read(tmp_path: Path) -> None:
    state = tmp_path / "state"
    notes = Notes()
    eng = engine(state, notify=notes)
    eng.apply_file(policy_file(tmp_path))
    record = state / "installed.json"
    assert eng.state.installed_record() is not None
    os.link(record, tmp_path / "second-name")
    assert eng.state.installed_record() is None
    assert "has 2 hard links" in notes.text()
    (tmp_path / "second-name").unlink()
    record.chmod(0o666)
    assert eng.state.installed_record() is None and "writable by its group and others" in notes.text()


# -- 1. files read back are data -------------------------------------------------------------------------
def pending_record(token: str, snapshot: Any, *, backend: str = "nft", overdue: bool = True) -> dict[str, Any]:
    now = time.time()
    return {"format": 1, "token": token, "backend": backend, "created": now - 100,
            "deadline": now - 60 if overdue else now + 600, "entry": 1, "policy_digest": "abcdef012345",
            "boot_id": boot_id(), "snapshot": {"backend": backend, "data": snapshot}, "previous": None}


def plant(state: Path, name: str, content: Any) -> Path:
    path = state / name
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.parent.chmod(0o700)
    state.chmod(0o700)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    path.chmod(0o600)
    return path


PWNED = [{"chain": {"family": "inet", "table": "pwned", "name": "input", "type": "filter", "hook": "input",
                    "prio": -500, "policy": "accept"}}]


def test_planted_overdue_pending_naming_another_table_installs_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    token = "00112233445566ff"
    plant(state, f"pending/{token}.json", pending_record(token, PWNED))
    kernel = FakeNftKernel()
    notes = Notes()
    result = engine(state, NftBackend(kernel), notify=notes).apply(POLICY, guard=False)
    assert result.changed  # the apply itself goes on
    assert ("inet", "pwned") not in kernel.tables and ("inet", "dockerguard") in kernel.tables
    assert "not inet dockerguard: refusing to restore it" in notes.text()
    assert (state / "pending" / f"{token}.refused").exists()  # set aside, never read again
    assert StateDir(state).claimed() == [] and StateDir(state).pending() is None
    last = StateDir(state).last_rollback()
    assert last is not None and last["ok"] is False


def test_planted_history_entry_is_refused_by_rollback_naming_the_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    kernel = FakeNftKernel()
    plant(state, "history/0001.json", {"format": 1, "number": 1, "backend": "nft", "timestamp": time.time(),
                                       "action": "apply", "policy_digest": None, "policy_path": None,
                                       "snapshot": {"backend": "nft", "data": PWNED}, "previous": None})
    with pytest.raises(StateError, match=f"{state / 'history' / '0001.json'}: the nft snapshot names table "
                                         "inet pwned.*move it away"):
        engine(state, NftBackend(kernel)).rollback()
    assert kernel.tables == {}


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("backend", "../../../tmp/evil", "is not one of dockerguard's"),
    ("backend", ["nft"], "is not one of dockerguard's"),
    ("number", 7, "says it is entry 7"),
    ("action", "rm -rf", "action 'rm -rf' is not one of"),
    ("timestamp", "yesterday", "timestamp is not a time"),
    ("policy_digest", "$(reboot)", "not of the form"),
    ("policy_path", "/etc/x\x1b[2J", "control characters"),
    ("snapshot", {"backend": "iptables-nft", "data": {}}, "the snapshot is of backend"),
    ("previous", {"backend": "nft", "hooks": "x", "rules": []}, "hooks is not a list"),
])
def test_damaged_history_entries_are_reported_never_used(tmp_path: Path, field: str, value: Any,
                                                          problem: str) -> None:
    state = tmp_path / "state"
    entry = {"format": 1, "number": 1, "backend": "nft", "timestamp": 1.0, "action": "apply",
             "policy_digest": None, "policy_path": None, "snapshot": {"backend": "nft", "data": None},
             "previous": None, field: value}
    plant(state, "history/0001.json", entry)
    kernel = FakeNftKernel()
    with pytest.raises(StateError, match=f"0001.json is damaged \\(.*{problem}"):
        engine(state, NftBackend(kernel)).rollback()
    notes = Notes()
    assert StateDir(state, warn=notes).history() == [] and "0001.json is damaged" in notes.text()
    assert kernel.batches == 0


def test_damaged_or_foreign_pending_files_are_ignored_with_a_warning(tmp_path: Path) -> None:
    state = tmp_path / "state"
    token = "aaaaaaaaaaaaaaaa"
    plant(state, f"pending/{token}.json", "{not json")
    plant(state, "pending/../../x.json", "{}") if False else None  # a name cannot leave the directory
    plant(state, "pending/EVIL.json", json.dumps(pending_record("EVIL", None)))
    plant(state, "pending/bbbbbbbbbbbbbbbb.json", json.dumps(pending_record("cccccccccccccccc", None)))
    notes = Notes()
    fake = FakeBackend()
    assert engine(state, fake, notify=notes).apply(POLICY).changed  # never blocks the apply
    text = notes.text()
    assert f"{state / 'pending' / token}.json is damaged" in text
    assert "EVIL.json: not a name dockerguard writes" in text
    assert "names token cccccccccccccccc, not bbbbbbbbbbbbbbbb" in text


def test_damaged_installed_record_takes_the_full_path(tmp_path: Path) -> None:
    state = tmp_path / "state"
    policy = policy_file(tmp_path)
    kernel = FakeNftKernel()
    eng = engine(state, NftBackend(kernel))
    eng.apply_file(policy)
    record = json.loads((state / "installed.json").read_text())
    for damage in ({"facts": {**record["facts"], "docker_socket": "relative.sock"}},
                   {"generation": "7"}, {"backend": "pwned"}, {"state": "not a digest"}):
        plant(state, "installed.json", {**record, **damage})
        notes = Notes()
        assert StateDir(state, warn=notes).installed_record() is None
        assert "installed.json: damaged" in notes.text()
    again = engine(state, NftBackend(kernel)).apply_file(policy)  # the full path: still correct
    assert not again.changed


def test_last_rollback_with_terminal_escapes_is_ignored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    plant(state, "last-rollback.json", {"token": "0123456789abcdef", "backend": "nft", "entry": 1,
                                        "policy_digest": "abc", "reason": "deadline", "time": 1.0, "ok": False,
                                        "error": "\x1b]0;pwned\x07"})
    notes = Notes()
    assert StateDir(state, warn=notes).last_rollback() is None and "control characters" in notes.text()


def test_tokens_never_name_paths(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    for token in ("../../etc/passwd", "0123456789ABCDEF", "", "0123456789abcdef0"):
        with pytest.raises(StateError, match="not a pending-confirmation token"):
            state.read_pending(token)
    result = CliRunner().invoke(cli.app, ["_rollback-timer", "--state-dir", str(tmp_path / "state"), "../x"])
    assert isinstance(result.exception, StateError)


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


# -- 2. unusable state directories ------------------------------------------------------------------------
def test_remove_with_an_unusable_state_dir_still_removes_and_says_it_was_not_recorded(tmp_path: Path) -> None:
    fake = FakeBackend()
    engine(tmp_path / "good", fake).apply(POLICY)
    bad = tmp_path / "bad"
    bad.mkdir()
    bad.chmod(0o777)
    notes = Notes()
    assert engine(bad, fake, notify=notes).remove() == ("fake",)
    assert fake.kernel is None
    assert "warning: removing without recording it (`rollback` cannot undo this remove)" in notes.text()
    assert f"unusable state directory {bad}" in notes.text() and os.listdir(bad) == []


def test_remove_goes_on_when_the_history_cannot_be_written(tmp_path: Path) -> None:
    fake = FakeBackend()
    state = tmp_path / "state"
    engine(state, fake).apply(POLICY)
    for path in (state / "history").iterdir():
        path.unlink()
    (state / "history").rmdir()
    (state / "history").write_text("")  # a file where the directory should be
    notes = Notes()
    assert engine(state, fake, notify=notes).remove() and fake.kernel is None
    assert "removing without recording it" in notes.text() and "history: not a directory" in notes.text()


def test_remove_waits_for_a_busy_state_dir_instead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBackend()
    state = tmp_path / "state"
    engine(state, fake).apply(POLICY)
    monkeypatch.setattr(state_module, "LOCK_TIMEOUT", 0.3)
    with StateDir(state).locked("dockerguard apply"), pytest.raises(LockTimeout):
        engine(state, fake).remove()  # someone is changing the ruleset right now: not behind their back
    assert fake.kernel is not None


def test_cli_apply_with_an_unusable_state_dir_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeBackend()
    monkeypatch.setattr(cli, "_engine", lambda name, **options: engine(options.pop("state_dir"), fake, **options))
    bad = tmp_path / "bad"
    bad.mkdir()
    bad.chmod(0o757)
    policy = policy_file(tmp_path)
    monkeypatch.setattr(sys, "argv", ["dockerguard", "apply", "-c", str(policy), "--state-dir", str(bad)])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"error: unusable state directory {bad}: {bad} is writable by others (mode 0757)" in " ".join(err.split())
    assert fake.kernel is None


# -- 3. leftovers and modes ------------------------------------------------------------------------------
def test_temporaries_of_dead_writers_are_cleaned_by_the_next_locked_command(tmp_path: Path) -> None:
    state = tmp_path / "state"
    engine(state).apply(POLICY)
    dead = dead_pid()
    stale = [state / "history" / f".0002.json.{dead}.tmp", state / f".installed.json.{dead}-0badc0de.tmp",
             state / "pending" / f".0123456789abcdef.json.{dead}-00000001.tmp"]
    (state / "pending").mkdir(mode=0o700)
    for path in stale:
        path.write_text("half")
    alive = state / "history" / f".0003.json.{os.getpid()}-12345678.tmp"  # a writer that still runs
    alive.write_text("in progress")
    notes = Notes()
    engine(state, notify=notes).apply(OTHER)
    assert not any(path.exists() for path in stale) and alive.exists()
    assert "deleted 3 temporary file(s) left by an interrupted dockerguard" in notes.text()


def test_every_file_is_0600_and_every_directory_0700_whatever_the_umask(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = os.umask(0)
    try:
        eng = engine(state)
        eng.apply_file(policy_file(tmp_path))
        pending = eng.apply(OTHER, confirm=30).pending
        assert pending is not None
        eng.state.write_timer_pid(pending.token)
        eng.state.write_last_rollback({"token": pending.token, "backend": "fake", "entry": 1,
                                       "policy_digest": "abc", "reason": "deadline", "time": 1.0, "ok": True})
    finally:
        os.umask(old)
    files = [path for path in state.rglob("*") if path.is_file()]
    assert {path.name for path in files} >= {"lock", "0001.json", "0002.json", f"{pending.token}.json",
                                             f"timer-{pending.token}.pid", "last-rollback.json"}
    assert {str(path.relative_to(state)): mode(path) for path in files} == {
        str(path.relative_to(state)): 0o600 for path in files}
    assert {mode(path) for path in [state, *state.rglob("*")] if path.is_dir()} == {0o700}


def test_the_detached_timer_writes_its_pid_file_0600_whatever_the_umask(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = os.umask(0)
    try:
        eng = Engine(FakeBackend(), state_dir=state, timer_launcher=state_module.spawn_rollback_timer)
        pending = eng.apply(POLICY, confirm=60).pending
    finally:
        os.umask(old)
    assert pending is not None
    pid_file = state / f"timer-{pending.token}.pid"
    try:
        assert mode(pid_file) == 0o600
    finally:
        eng.confirm()
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not pid_file.exists()


def test_status_reports_an_unusable_state_dir_and_still_the_kernel(tmp_path: Path) -> None:
    fake = FakeBackend()
    engine(tmp_path / "good", fake).apply(POLICY)
    bad = tmp_path / "bad"
    bad.mkdir()
    bad.chmod(0o770)
    status = engine(bad, fake).status(POLICY)
    assert status.installed is not None and status.in_sync is True
    assert status.state_error is not None and f"{bad} is writable by its group" in status.state_error


def test_temporary_names_are_unpredictable_and_exclusive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    real_open = os.open

    def spying_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(".tmp"):
            made.append(str(path))
            assert flags & os.O_EXCL and flags & os.O_NOFOLLOW and flags & os.O_CREAT
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spying_open)
    engine(tmp_path / "state").apply(POLICY)
    engine(tmp_path / "state").apply(OTHER)
    assert made and len(set(made)) == len(made)
    assert all(name.startswith(".") and f".{os.getpid()}-" in name for name in made)


# -- 4. locks name their holder --------------------------------------------------------------------------
def test_a_waiting_command_names_the_holder_then_gives_up_naming_it(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "LOCK_TIMEOUT", 1.0)
    monkeypatch.setattr(locking, "WAIT_NOTICE", 0.2)
    state = tmp_path / "state"
    notes = Notes()
    fake = FakeBackend()
    with StateDir(state).locked("dockerguard apply"):
        started = time.strftime("%H:%M:%S")
        with pytest.raises(LockTimeout) as gave_up:
            engine(state, fake, notify=notes).apply(POLICY)
    holder = f"pid {os.getpid()} (dockerguard apply, since "
    assert notes == [f"waiting for the lock held by {holder}{started}) on {state / 'lock'}"] or (
        len(notes) == 1 and notes[0].startswith(f"waiting for the lock held by {holder}"))
    assert str(gave_up.value).startswith(f"{state / 'lock'} is held by {holder}")
    assert str(gave_up.value).endswith("gave up after 1.0 s")
    assert gave_up.value.holder is not None and gave_up.value.holder.pid == os.getpid()
    assert fake.kernel is None
    assert engine(state, fake).apply(POLICY).changed  # released: works again


def test_the_cli_prints_whom_it_waits_for(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateDir(state).locked("dockerguard apply"):
        # `rollback` with an empty history touches no kernel: it only waits, then finds nothing to do.
        proc = subprocess.Popen([sys.executable, "-m", "dockerguard", "rollback", "--state-dir", str(state)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Hold the lock until the CLI says it waits (a slow machine may take seconds to start Python).
        assert proc.stderr is not None
        waited = ""
        deadline = time.monotonic() + 60
        while "waiting for" not in waited and time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stderr], [], [], 1)[0]:
                waited += proc.stderr.readline()
    _, rest = proc.communicate(timeout=60)
    err = waited + rest
    assert proc.returncode == 1
    assert f"waiting for the lock held by pid {os.getpid()} (dockerguard apply, since " in " ".join(err.split())
    assert "nothing to roll back" in err


def test_a_garbage_holder_record_is_not_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "LOCK_TIMEOUT", 0.2)
    state = tmp_path / "state"
    with StateDir(state).locked("dockerguard apply"):
        (state / "lock").write_text('{"pid": 1, "command": "\\u001b[31mevil", "since": 0}')
        with pytest.raises(LockTimeout, match=r"held by another process \(it did not say which\)"):
            engine(state).apply(POLICY)


@pytest.mark.parametrize("command", ["remove", "diff", "watch", "apply", "confirm", "rollback", "status"])
def test_every_state_using_command_takes_state_dir(command: str) -> None:
    help_text = CliRunner().invoke(cli.app, [command, "--help"], env={"COLUMNS": "200"}).output
    assert "--state-dir" in help_text and "DOCKERGUARD_STATE_DIR" in help_text


def test_remove_and_diff_use_the_given_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBackend()
    seen: list[Path] = []

    def factory(name: Any, **options: Any) -> Engine:
        made = engine(options.pop("state_dir"), fake, **options)
        seen.append(made.state.path)
        return made

    monkeypatch.setattr(cli, "_engine", factory)
    policy = policy_file(tmp_path)
    runner = CliRunner()
    assert runner.invoke(cli.app, ["apply", "-c", str(policy), "--state-dir", str(tmp_path / "a")]).exit_code == 0
    assert runner.invoke(cli.app, ["diff", "-c", str(policy)], env={"DOCKERGUARD_STATE_DIR": str(tmp_path / "b")},
                         ).exit_code == 0
    assert runner.invoke(cli.app, ["remove", "--state-dir", str(tmp_path / "a")]).exit_code == 0
    assert seen == [tmp_path / "a", tmp_path / "b", tmp_path / "a"]
    assert StateDir(tmp_path / "a").history_numbers() == [1, 2]  # the remove was recorded there


# -- 5. the ruleset lock of the network namespace -----------------------------------------------------------
class SlowFake(FakeBackend):
    """A shared "kernel" that notices overlapping transactions and verifications."""

    def __init__(self) -> None:
        super().__init__()
        self.busy = 0
        self.overlaps = 0
        self.guard = threading.Lock()

    def apply(self, rendered: Rendered) -> None:
        with self.guard:
            self.busy += 1
            self.overlaps += self.busy > 1
        time.sleep(0.2)  # a read-compare-send-verify sequence takes time
        super().apply(rendered)
        with self.guard:
            self.busy -= 1


def test_applies_with_different_state_dirs_are_serialised(tmp_path: Path) -> None:
    kernel = SlowFake()
    policies = {"a": POLICY, "b": OTHER}
    results: dict[str, Any] = {}

    def run(name: str) -> None:
        try:
            results[name] = engine(tmp_path / name, kernel).apply(policies[name])
        except Exception as exc:  # reported below
            results[name] = exc

    threads = [threading.Thread(target=run, args=(name,)) for name in policies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(not isinstance(result, Exception) and result.changed for result in results.values()), results
    assert kernel.overlaps == 0
    expected = {name: engine(tmp_path / "x", FakeBackend()).plan(policy).expected for name, policy in policies.items()}
    last = next(name for name, state in expected.items() if state == kernel.kernel)  # exactly one of them
    first = "a" if last == "b" else "b"
    # The second apply's record holds; the first one's does not, and its next apply repairs the kernel.
    assert not engine(tmp_path / last, kernel).apply(policies[last]).changed
    assert engine(tmp_path / first, kernel).apply(policies[first]).changed
    assert kernel.kernel == expected[first]


def test_the_ruleset_lock_is_taken_before_the_state_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same order everywhere: a command waiting for the ruleset lock holds no state lock meanwhile."""
    monkeypatch.setattr(state_module, "LOCK_TIMEOUT", 0.5)
    with locking.ruleset_lock("dockerguard apply", 1.0), pytest.raises(LockTimeout, match=r"net-\d+\.lock"):
        engine(tmp_path / "state").apply(POLICY)
    assert not (tmp_path / "state").exists()


def test_ruleset_lock_file_is_per_namespace_and_private(monkeypatch: pytest.MonkeyPatch) -> None:
    directory = Path(locking.ruleset_lock_dir())
    with locking.ruleset_lock("dockerguard apply", 1.0):
        lock = directory / f"net-{os.stat('/proc/thread-self/ns/net').st_ino}.lock"
        assert lock.is_file() and mode(lock) == 0o600 and mode(directory) == 0o700
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "dockerguard apply"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(locking, "RUN_DIR", "/run/dockerguard")
    assert locking.ruleset_lock_dir() == "/run/dockerguard"


def test_a_ruleset_lock_dir_others_can_write_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "run"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setattr(locking, "RUN_DIR", str(shared / "dockerguard"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(shared))
    with pytest.raises(StateError, match=f"cannot take the ruleset lock .*{shared} is writable by"), \
            locking.ruleset_lock("dockerguard apply", 1.0):
        pass


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


def test_safefs_refuses_relative_paths() -> None:
    with pytest.raises(StateError, match="not an absolute path"):
        safefs.open_dir("relative/state")
