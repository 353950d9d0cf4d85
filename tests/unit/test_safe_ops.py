"""History, rollback and the confirmation deadline on the in-memory fake backend.

The rollback timer runs in-process here (`run_rollback_timer`); the detached process, which needs a real
kernel to restore, is tested in tests/integration/test_safe_ops.py.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dockerguard import ApplyError, Engine, RollbackError, UsageError, parse_policy
from dockerguard import engine as engine_module
from dockerguard.backends.fake import FakeBackend
from dockerguard.errors import ConfirmError, PendingConfirmationError, StateError
from dockerguard.state import HISTORY_LIMIT, StateDir, resolve_state_dir, spawn_rollback_timer

POLICY = parse_policy('[[allow]]\nports = [443]\n')
OTHER = parse_policy('[[allow]]\nports = [80]\n')
THIRD = parse_policy('[[allow]]\nports = [25]\n')


@dataclass
class Rig:
    fake: FakeBackend
    engine: Engine
    state_dir: Path
    launched: list[str] = field(default_factory=list)

    def expected(self, policy: object) -> object:
        return self.engine.plan(policy).expected  # type: ignore[arg-type]

    def files(self) -> list[str]:
        return sorted(str(path.relative_to(self.state_dir)) for path in self.state_dir.rglob("*") if path.is_file())


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    fake = FakeBackend()
    launched: list[str] = []

    def launcher(state_dir: Path, token: str) -> int:
        launched.append(token)
        return 4242

    state_dir = tmp_path / "state"
    return Rig(fake, Engine(fake, state_dir=state_dir, timer_launcher=launcher), state_dir, launched)


# -- state directory -------------------------------------------------------------------------------------
def test_state_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKERGUARD_STATE_DIR", raising=False)
    assert resolve_state_dir() == Path("/var/lib/dockerguard")
    monkeypatch.setenv("DOCKERGUARD_STATE_DIR", str(tmp_path / "env"))
    assert Engine().state.path == tmp_path / "env"
    assert Engine(state_dir=tmp_path / "explicit").state.path == tmp_path / "explicit"


def test_read_only_commands_create_nothing(rig: Rig) -> None:
    rig.engine.diff(POLICY)
    rig.engine.plan(POLICY)
    assert not rig.state_dir.exists()


def test_unwritable_state_dir_is_a_clear_error_and_nothing_is_applied(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    fake = FakeBackend()
    with pytest.raises(StateError, match=f"unusable state directory {blocker / 'state'}: .*not a directory"):
        Engine(fake, state_dir=blocker / "state").apply(POLICY)
    assert fake.kernel is None


# -- history and rollback --------------------------------------------------------------------------------
def test_each_changing_apply_records_the_snapshot_before_it(rig: Rig) -> None:
    first = rig.engine.apply(POLICY)
    second = rig.engine.apply(OTHER)
    rig.engine.apply(OTHER)  # no-op: not recorded
    assert (first.history_entry, second.history_entry) == (1, 2)
    assert rig.files() == ["history/0001.json", "history/0002.json", "lock"]
    entry = json.loads((rig.state_dir / "history/0002.json").read_text())
    assert entry["backend"] == "fake" and entry["action"] == "apply"
    assert entry["policy_digest"] == second.digest
    assert entry["snapshot"]["data"] is not None  # POLICY's ruleset, from before the second apply
    assert oct((rig.state_dir / "history").stat().st_mode & 0o777) == "0o700"


def test_rollback_restores_each_previous_ruleset_then_says_nothing_left(rig: Rig) -> None:
    rig.engine.apply(POLICY)
    after_first = rig.fake.kernel
    rig.engine.apply(OTHER)
    result = rig.engine.rollback()
    assert rig.fake.kernel == after_first
    assert (result.entry, result.action, result.reason) == (2, "apply", "rollback")
    assert [step.action for step in result.steps] == ["restore", "verify", "history"]
    rig.engine.rollback()
    assert rig.fake.kernel is None  # before the first apply nothing was installed
    with pytest.raises(StateError, match="nothing to roll back"):
        rig.engine.rollback()


def test_history_keeps_the_last_ten(rig: Rig) -> None:
    for index in range(HISTORY_LIMIT + 3):
        rig.engine.apply(POLICY if index % 2 == 0 else OTHER)
    numbers = StateDir(rig.state_dir).history_numbers()
    assert numbers == list(range(4, HISTORY_LIMIT + 4))


def test_rollback_verifies_by_reading_back(rig: Rig, mocker) -> None:  # type: ignore[no-untyped-def]
    rig.engine.apply(POLICY)
    rig.engine.apply(OTHER)
    mocker.patch.object(rig.fake, "restore", lambda snapshot: None)  # "restores" nothing
    with pytest.raises(RollbackError, match="differs from the one saved"):
        rig.engine.rollback()
    assert StateDir(rig.state_dir).history_numbers() == [1, 2]  # kept for another try


def test_rollback_with_another_backend_is_refused(rig: Rig) -> None:
    rig.engine.apply(POLICY)
    with pytest.raises(UsageError, match="made with backend 'fake'"):
        Engine("nft", state_dir=rig.state_dir).rollback()


def test_remove_is_recorded_and_can_be_rolled_back(rig: Rig) -> None:
    rig.engine.apply(POLICY)
    installed = rig.fake.kernel
    assert rig.engine.remove() == ("fake",)
    result = rig.engine.rollback()
    assert result.action == "remove" and rig.fake.kernel == installed


def test_failed_apply_leaves_no_history_entry(rig: Rig) -> None:
    rig.engine.apply(POLICY)
    rig.fake.fail_next_apply = True
    with pytest.raises(ApplyError) as caught:
        rig.engine.apply(OTHER)
    assert StateDir(rig.state_dir).history_numbers() == [1]
    assert [step.action for step in caught.value.steps][-2:] == ["failed", "restore"]  # type: ignore[attr-defined]


def test_apply_reports_its_steps(rig: Rig) -> None:
    result = rig.engine.apply(POLICY)
    assert [step.action for step in result.steps] == [
        "backend", "plan", "compare", "snapshot", "history", "transaction", "verify"]
    assert all(step.seconds >= 0 for step in result.steps)
    assert [step.action for step in rig.engine.apply(POLICY).steps] == ["backend", "plan", "compare"]


def test_no_temporary_files_are_left_behind(rig: Rig) -> None:
    rig.engine.apply(POLICY)
    rig.engine.apply(OTHER, confirm=60)
    assert not [name for name in rig.files() if ".tmp" in name]


# -- confirmation deadline -------------------------------------------------------------------------------
def test_confirm_arms_a_timer_before_the_transaction(rig: Rig, mocker) -> None:  # type: ignore[no-untyped-def]
    order: list[str] = []
    rig.engine._launch_timer = lambda state_dir, token: order.append("timer") or 1  # type: ignore[assignment]
    real_apply = rig.fake.apply
    mocker.patch.object(rig.fake, "apply", lambda rendered: order.append("transaction") or real_apply(rendered))
    result = rig.engine.apply(POLICY, confirm=30)
    assert order == ["timer", "transaction"]
    assert result.pending is not None and 29 < result.pending.deadline - time.time() <= 30
    assert result.pending.entry == result.history_entry


def test_timer_rolls_back_at_the_deadline(rig: Rig) -> None:
    rig.engine.apply(POLICY)
    before = rig.fake.kernel
    result = rig.engine.apply(OTHER, confirm=0.2)
    assert rig.launched == [result.pending.token]  # type: ignore[union-attr]
    assert rig.fake.kernel != before
    started = time.monotonic()
    undone = rig.engine.run_rollback_timer(rig.launched[0], poll=0.01)
    assert 0.1 < time.monotonic() - started < 2
    assert undone is not None and undone.reason == "deadline"
    assert rig.fake.kernel == before
    assert StateDir(rig.state_dir).history_numbers() == [1]  # the undone apply left the history
    assert StateDir(rig.state_dir).pending() is None
    last = StateDir(rig.state_dir).last_rollback()
    assert last is not None and last["ok"] and last["token"] == rig.launched[0]


def test_confirm_in_time_keeps_the_rules_and_the_timer_stands_down(rig: Rig) -> None:
    rig.engine.apply(POLICY)
    result = rig.engine.apply(OTHER, confirm=5)
    kept = rig.fake.kernel
    assert rig.engine.confirm().token == result.pending.token  # type: ignore[union-attr]
    started = time.monotonic()
    assert rig.engine.run_rollback_timer(rig.launched[0]) is None
    assert time.monotonic() - started < 1  # it does not sleep until the deadline
    assert rig.fake.kernel == kept
    with pytest.raises(ConfirmError, match="nothing to confirm"):
        rig.engine.confirm()


def test_confirm_after_the_rollback_is_too_late(rig: Rig) -> None:
    rig.engine.apply(POLICY, confirm=0.05)
    rig.engine.run_rollback_timer(rig.launched[0], poll=0.01)
    with pytest.raises(ConfirmError, match="was rolled back at"):
        rig.engine.confirm()


def test_confirm_losing_the_race_to_the_timer_is_too_late(rig: Rig, mocker) -> None:  # type: ignore[no-untyped-def]
    rig.engine.apply(POLICY, confirm=5)
    state = rig.engine.state
    seen = state.pending()
    state.claim_pending(rig.launched[0])  # the timer renamed the file first
    with pytest.raises(ConfirmError, match="being rolled back"):
        rig.engine.confirm()
    mocker.patch.object(state, "pending", return_value=seen)  # confirm saw the file, then lost the unlink
    with pytest.raises(ConfirmError, match="took over at the deadline"):
        rig.engine.confirm()


def test_confirm_at_the_deadline_has_exactly_one_outcome(tmp_path: Path) -> None:
    """Race confirm against the timer many times: each round either keeps the new rules (confirm won,
    the timer did nothing) or restores the old ones (the timer won, confirm says too late)."""
    outcomes = set()
    for round_number in range(25):
        fake = FakeBackend()
        engine = Engine(fake, state_dir=tmp_path / str(round_number), timer_launcher=lambda d, t: 1)
        engine.apply(POLICY)
        old = fake.kernel
        pending = engine.apply(OTHER, confirm=0.02).pending
        new = fake.kernel
        assert pending is not None
        timer_result: list[object] = []
        timer = threading.Thread(target=lambda e, t, out: out.append(e.run_rollback_timer(t, 0.001)),
                                 args=(engine, pending.token, timer_result))
        timer.start()
        time.sleep(max(0.0, pending.deadline - time.time() - 0.001 * (round_number % 3)))
        try:
            engine.confirm()
            confirmed = True
        except ConfirmError:
            confirmed = False
        timer.join(5)
        rolled_back = timer_result[0] is not None
        assert confirmed != rolled_back
        assert fake.kernel == (new if confirmed else old)
        outcomes.add(confirmed)
    assert outcomes  # both outcomes are fine; which one happens is timing


def test_a_second_change_while_pending_is_refused(rig: Rig) -> None:
    rig.engine.apply(POLICY, confirm=30)
    for attempt in (lambda: rig.engine.apply(OTHER, confirm=30), lambda: rig.engine.apply(OTHER),
                    rig.engine.remove):
        with pytest.raises(PendingConfirmationError, match="dockerguard confirm"):
            attempt()
    assert not rig.engine.apply(POLICY).changed  # an unchanged policy changes nothing: allowed
    rig.engine.confirm()
    assert rig.engine.apply(OTHER).changed


def test_rollback_while_pending_undoes_the_pending_apply(rig: Rig) -> None:
    rig.engine.apply(POLICY)
    before = rig.fake.kernel
    rig.engine.apply(OTHER, confirm=30)
    result = rig.engine.rollback()
    assert rig.fake.kernel == before and result.entry == 2
    assert rig.engine.run_rollback_timer(rig.launched[0]) is None  # the timer finds nothing to do


def test_failed_apply_with_confirm_disarms_the_timer(rig: Rig) -> None:
    rig.engine.apply(POLICY)
    rig.fake.fail_next_apply = True
    with pytest.raises(ApplyError):
        rig.engine.apply(OTHER, confirm=30)
    assert StateDir(rig.state_dir).pending() is None
    assert rig.engine.run_rollback_timer(rig.launched[0]) is None


def test_timer_that_cannot_start_aborts_before_the_transaction(rig: Rig) -> None:
    def broken(state_dir: Path, token: str) -> int:
        raise StateError("cannot start the rollback timer: no fork for you")

    engine = Engine(rig.fake, state_dir=rig.state_dir, timer_launcher=broken)
    with pytest.raises(StateError, match="no fork"):
        engine.apply(POLICY, confirm=30)
    assert rig.fake.kernel is None and rig.fake.transactions == 0
    assert StateDir(rig.state_dir).history_numbers() == [] and StateDir(rig.state_dir).pending() is None


def test_overdue_pending_whose_timer_died_is_rolled_back_by_the_next_apply(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "OVERDUE_GRACE", 0.0)
    rig.engine.apply(POLICY)
    rig.engine.apply(OTHER, confirm=0.01)  # the "timer" never runs
    time.sleep(0.02)
    result = rig.engine.apply(THIRD)
    assert any(step.action == "pending" and "overdue" in step.detail for step in result.steps)
    assert rig.fake.kernel == rig.expected(THIRD)
    assert StateDir(rig.state_dir).last_rollback()["reason"] == "overdue"  # type: ignore[index]
    rig.engine.rollback()
    assert rig.fake.kernel == rig.expected(POLICY)  # OTHER was undone, not kept


def test_pending_from_an_earlier_boot_is_discarded(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    rig.engine.apply(POLICY, confirm=30)
    monkeypatch.setattr(engine_module, "boot_id", lambda: "another-boot")
    assert rig.engine.apply(OTHER).changed
    assert StateDir(rig.state_dir).pending() is None


def test_interrupted_rollback_is_finished_by_rollback(rig: Rig, mocker) -> None:  # type: ignore[no-untyped-def]
    rig.engine.apply(POLICY)
    before = rig.fake.kernel
    rig.engine.apply(OTHER, confirm=0.01)
    mocker.patch.object(rig.fake, "restore", side_effect=ApplyError("kernel busy"))
    with pytest.raises(ApplyError):
        rig.engine.run_rollback_timer(rig.launched[0], poll=0.001)
    status = rig.engine.status()
    assert [p.token for p in status.interrupted] == rig.launched
    assert status.last_rollback is not None and not status.last_rollback["ok"]
    mocker.stopall()
    rig.engine.rollback()
    assert rig.fake.kernel == before and rig.engine.status().interrupted == ()


def test_status_reports_pending_history_path_and_drift(rig: Rig) -> None:
    rig.engine.apply(POLICY)
    rig.engine.apply(OTHER, confirm=30)
    status = rig.engine.status(POLICY)
    assert status.pending is not None and status.pending.policy_digest == rig.engine.plan(OTHER).ruleset.digest
    assert [entry.number for entry in status.history] == [1, 2]
    assert status.path and all(finding.level == "info" for finding in status.path)  # the default report
    assert status.in_sync is False and status.diff is not None and status.diff.changed
    assert status.state_dir == str(rig.state_dir)
    assert rig.engine.status(OTHER).in_sync is True


def test_pending_file_is_self_contained(rig: Rig) -> None:
    rig.engine.apply(POLICY)
    rig.engine.apply(OTHER, confirm=30)
    (path,) = (rig.state_dir / "pending").iterdir()
    raw = json.loads(path.read_text())
    assert {"token", "deadline", "backend", "snapshot", "previous", "entry", "boot_id"} <= raw.keys()
    assert path.name == f"{raw['token']}.json"
    assert os.stat(path).st_mode & 0o077 == 0


# -- the detached timer process (real subprocess; restoring needs a kernel: see tests/integration) --------
def test_spawned_timer_is_running_when_arming_returns_and_stands_down_on_confirm(tmp_path: Path) -> None:
    launched: list[int] = []

    def launcher(state_dir: Path, token: str) -> int:
        launched.append(spawn_rollback_timer(state_dir, token))
        return launched[-1]

    state_dir = tmp_path / "state"
    engine = Engine(FakeBackend(), state_dir=state_dir, timer_launcher=launcher)
    pending = engine.apply(POLICY, confirm=60).pending
    assert pending is not None
    pid_file = StateDir(state_dir).timer_pid_path(pending.token)
    assert pid_file.read_text().strip() == str(launched[0])  # it is up before the transaction is sent
    assert os.getsid(launched[0]) == launched[0]  # its own session: no terminal, not our process group
    engine.confirm()
    deadline = time.monotonic() + 10
    while pid_file.exists():
        assert time.monotonic() < deadline, "the timer did not stand down after confirm"
        time.sleep(0.05)


def test_timer_that_dies_on_start_aborts_the_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")
    fake = FakeBackend()
    with pytest.raises(StateError, match=r"rollback timer did not start \(it exited with status 1\)"):
        Engine(fake, state_dir=tmp_path / "state").apply(POLICY, confirm=60)
    assert fake.kernel is None and StateDir(tmp_path / "state").pending() is None
