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
    with pytest.raises(ApplyError, match="previous ruleset was restored"):
        engine.apply(OTHER)
    assert fake.kernel == before


def test_verification_failure_restores_previous_ruleset() -> None:
    fake = FakeBackend()
    engine = Engine(fake)
    engine.apply(POLICY)
    before = fake.kernel
    fake.corrupt_next_apply = True
    with pytest.raises(ApplyError, match="verification failed"):
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
    armed = mocker.patch("dockerguard.engine.Engine._arm_timer")
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
