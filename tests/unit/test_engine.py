"""Engine behaviour on the in-memory fake backend: apply, no-op re-apply, verification, rollback."""

from __future__ import annotations

import pytest

from dockerguard import ApplyError, Engine, RollbackError, UsageError, parse_policy
from dockerguard.backends.fake import FakeBackend

POLICY = parse_policy('[[allow]]\nports = [443]\n')
OTHER = parse_policy('[[allow]]\nports = [80]\n')


def test_apply_installs_and_second_apply_touches_nothing() -> None:
    fake = FakeBackend()
    engine = Engine(fake)
    first = engine.apply(POLICY)
    assert first.changed and fake.transactions == 1
    assert engine.status(POLICY).in_sync is True
    second = engine.apply(POLICY)
    assert not second.changed and fake.transactions == 1
    assert second.digest == first.digest


def test_status_reports_drift() -> None:
    fake = FakeBackend()
    engine = Engine(fake)
    engine.apply(POLICY)
    assert engine.status(OTHER).in_sync is False
    assert engine.status().in_sync is None


def test_failed_transaction_restores_previous_ruleset() -> None:
    fake = FakeBackend()
    engine = Engine(fake)
    engine.apply(POLICY)
    before = fake.kernel
    fake.fail_next_apply = True
    with pytest.raises(ApplyError, match=r"^fake: fake kernel refused the transaction; the previous ruleset was"):
        engine.apply(OTHER)
    assert fake.kernel == before


def test_verification_failure_restores_previous_ruleset() -> None:
    fake = FakeBackend()
    engine = Engine(fake)
    engine.apply(POLICY)
    before = fake.kernel
    fake.corrupt_next_apply = True
    with pytest.raises(ApplyError, match=r"^fake: verification failed"):
        engine.apply(OTHER)
    assert fake.kernel == before


def test_first_apply_failing_leaves_nothing_installed() -> None:
    fake = FakeBackend()
    fake.corrupt_next_apply = True
    with pytest.raises(ApplyError):
        Engine(fake).apply(POLICY)
    assert fake.kernel is None


def test_failed_restore_raises_rollback_error(mocker) -> None:  # type: ignore[no-untyped-def]
    fake = FakeBackend()
    engine = Engine(fake)
    engine.apply(POLICY)
    fake.fail_next_apply = True
    mocker.patch.object(fake, "restore", side_effect=ApplyError("disk on fire"))
    with pytest.raises(RollbackError, match="restoring the previous ruleset failed"):
        engine.apply(OTHER)


def test_remove() -> None:
    fake = FakeBackend()
    engine = Engine(fake)
    assert engine.remove() == ()
    engine.apply(POLICY)
    assert engine.remove() == ("fake",)
    assert fake.kernel is None


HOST = parse_policy('[host]\n[[host.allow]]\nports = [22]\nsources = ["198.51.100.0/24"]\n')




def test_host_change_cutting_a_session_is_refused_before_anything_is_sent(mocker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dockerguard.errors import LockoutError
    from dockerguard.lockout import Session

    mocker.patch("dockerguard.engine.current_sessions", return_value=[Session("203.0.113.9", 22, "ss", "eth0")])
    fake = FakeBackend()
    with pytest.raises(LockoutError, match=r"203\.0\.113\.9 -> port 22 via eth0"):
        Engine(fake, state_dir=tmp_path).apply(HOST)
    assert fake.transactions == 0


def test_host_change_arms_the_guard_unless_disabled(mocker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mocker.patch("dockerguard.engine.current_sessions", return_value=[])
    armed = mocker.patch("dockerguard.engine.Engine._arm_timer", return_value=None)
    Engine(FakeBackend(), state_dir=tmp_path / "a").apply(HOST)
    assert armed.call_args.args[2] == 120.0  # HOST_GUARD_SECONDS
    armed.reset_mock()
    Engine(FakeBackend(), state_dir=tmp_path / "b").apply(HOST, guard=False)
    Engine(FakeBackend(), state_dir=tmp_path / "c").apply(POLICY)  # no [host]: no guard
    assert not armed.called


def test_commands_without_a_backend_act_on_the_recorded_one(tmp_path: object) -> None:
    """After `apply --backend nft`, a plain `status`/`remove` must not fall back to auto-detection."""
    from dockerguard.backends.nft.driver import NftBackend
    from dockerguard.backends.nft.fake_kernel import FakeNftKernel

    kernel = FakeNftKernel()
    Engine(NftBackend(kernel)).apply(POLICY)
    plain = Engine()
    assert plain._recorded_backend() == "nft"


def test_ban_unban_and_list_on_the_fake() -> None:
    fake = FakeBackend()
    engine = Engine(fake)
    assert str(engine.ban("198.51.100.7", 3600)) == "198.51.100.7/32"
    engine.ban("2001:db8::/64")
    assert [(b.network, b.expires_in) for b in engine.bans()] == [("198.51.100.7/32", 3600), ("2001:db8::/64", None)]
    assert engine.unban("198.51.100.7") and not engine.unban("198.51.100.7")
    with pytest.raises(UsageError, match="host bits"):
        engine.ban("198.51.100.7/24")


# -- a change killed half way (issue 13): intent.json, and the next command repairs --------------------
class HalfwayKilled(FakeBackend):
    """Writes half of the next apply's (or restore's) rules, then dies like a SIGKILLed process would:
    not through an exception the engine handles (the iptables drivers commit IPv4, then IPv6)."""

    def __init__(self) -> None:
        super().__init__()
        self.die_in: str | None = None

    def _write(self, state):  # type: ignore[no-untyped-def]
        import inspect
        from dataclasses import replace

        caller = inspect.stack()[1].function
        if state is not None and self.die_in == caller:
            self.die_in = None
            super()._write(replace(state, rules=state.rules[: len(state.rules) // 2]))
            raise SystemExit(-9)
        super()._write(state)


def test_an_apply_killed_half_way_is_reported_and_undone_first_by_the_next_apply(tmp_path, mocker) -> None:  # type: ignore[no-untyped-def]
    fake = HalfwayKilled()
    heard: list[str] = []
    Engine(fake, state_dir=tmp_path).apply(POLICY)
    old = fake.kernel
    fake.die_in = "apply"
    with pytest.raises(SystemExit):
        Engine(fake, state_dir=tmp_path).apply(OTHER)
    assert fake.kernel not in (old, fake.expected(Engine(fake).compile(OTHER)))  # half changed
    status = Engine(fake, state_dir=tmp_path).status(OTHER)
    # The "killed" process is this one, still running: status takes no lock and must not cry wolf while
    # a change is under way.
    assert status.unfinished is None
    mocker.patch("dockerguard.engine.os.kill", side_effect=ProcessLookupError)
    status = Engine(fake, state_dir=tmp_path).status(OTHER)
    assert status.unfinished is not None and status.unfinished.action == "apply" and status.unfinished.entry == 2
    engine = Engine(fake, state_dir=tmp_path, notify=heard.append)
    result = engine.apply(OTHER)
    assert result.changed and fake.kernel == fake.expected(engine.compile(OTHER))
    assert any("was interrupted before it finished" in message for message in heard)
    assert engine.status().unfinished is None
    assert [entry.number for entry in engine.state.history()] == [1, 2]  # the killed apply's entry was dropped
    engine.rollback()
    assert fake.kernel == old  # never the half-changed ruleset: the repair recorded the old one


def test_a_rollback_killed_half_way_is_finished_by_the_next_rollback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fake = HalfwayKilled()
    Engine(fake, state_dir=tmp_path).apply(POLICY)
    old = fake.kernel
    Engine(fake, state_dir=tmp_path).apply(OTHER)
    fake.die_in = "restore"
    with pytest.raises(SystemExit):
        Engine(fake, state_dir=tmp_path).rollback()
    assert fake.kernel != old
    engine = Engine(fake, state_dir=tmp_path)
    assert engine.state.intent().action == "rollback"  # type: ignore[union-attr]
    result = engine.rollback()
    assert (result.entry, result.reason) == (2, "interrupted") and fake.kernel == old
    assert [entry.number for entry in engine.state.history()] == [1]
    assert engine.status().unfinished is None


def test_a_damaged_intent_file_is_reported_and_ignored(tmp_path) -> None:  # type: ignore[no-untyped-def]
    heard: list[str] = []
    fake = FakeBackend()
    Engine(fake, state_dir=tmp_path).apply(POLICY)
    (tmp_path / "intent.json").write_text('{"action": "rm -rf", "backend": "fake", "entry": 1}')
    engine = Engine(fake, state_dir=tmp_path, notify=heard.append)
    assert engine.apply(OTHER).changed
    assert any("intent.json: damaged" in message for message in heard)
