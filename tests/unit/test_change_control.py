"""Change control: what is an operator's change (recorded, with who and why) and what is a repair (the policy
in force applied again: not recorded), what `rollback` returns to, and the policy in force kept for `watch`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dockerguard import Engine
from dockerguard.backends.fake import FakeBackend
from dockerguard.errors import StateError
from dockerguard.policy import load_policy


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def engine(fake: FakeBackend, tmp_path: Path) -> Engine:
    return Engine(fake, state_dir=tmp_path / "state", timer_launcher=lambda state_dir, token: 4242)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_repairs_are_not_history_and_rollback_returns_to_the_operators_previous_policy(
        fake: FakeBackend, engine: Engine, tmp_path: Path) -> None:
    first = engine.apply_file(write(tmp_path / "a.toml", "[[allow]]\nports = [443]\n"))
    kernel_a = fake.kernel
    second = engine.apply_file(write(tmp_path / "b.toml", "[[allow]]\nports = [80]\n"))
    assert (first.history_entry, second.history_entry) == (1, 2) and not second.repair
    for _ in range(3):  # someone flushes; the policy in force is applied again each time
        fake.kernel = None
        repaired = engine.apply_file(tmp_path / "b.toml")
        assert repaired.changed and repaired.repair and repaired.history_entry is None
    assert engine.state.history_numbers() == [1, 2]
    undone = engine.rollback()
    assert undone.entry == 2 and fake.kernel == kernel_a
    current, policy = engine.current_policy()
    assert current is not None and current.action == "rollback" and policy is not None
    assert policy.path == str(tmp_path / "a.toml") and policy.allow[0].ports[0].first == 443


def test_each_change_records_what_made_it(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["/usr/sbin/dockerguard", "apply", "-c", str(tmp_path / "a.toml")])
    engine.apply_file(write(tmp_path / "a.toml", "[[allow]]\nports = [443]\n"))
    engine.remove()
    first, removal = engine.state.history()
    assert first.origin is not None and removal.origin is not None
    assert first.origin.command == f"dockerguard apply -c {tmp_path / 'a.toml'}"
    assert (first.origin.uid, first.origin.reason, removal.origin.reason) == (os.getuid(), "apply", "remove")
    assert engine.status().history[0].origin == first.origin
    current = engine.state.current()
    assert current is not None and current.policy is None and current.action == "remove"


def test_the_policy_in_force_is_kept_as_applied_even_when_its_files_are_edited(engine: Engine, tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    write(lists / "admins.txt", "198.51.100.7\n2001:db8::7\n")
    path = write(tmp_path / "policy.toml", '[[allow]]\nports = [8443]\nsources_file = "lists/admins.txt"\n')
    engine.apply_file(path)
    write(lists / "admins.txt", "203.0.113.9\n")  # edited afterwards, not applied
    path.write_text("garbage = [\n")
    _, policy = engine.current_policy()
    assert policy is not None and policy.source_digest == load_policy_digest(engine)
    assert sorted(str(net) for net in policy.allow[0].sources) == ["198.51.100.7/32", "2001:db8::7/128"]


def load_policy_digest(engine: Engine) -> str:
    current = engine.state.current()
    assert current is not None and current.policy is not None
    return current.policy.digest


def test_stored_policies_go_when_nothing_refers_to_them(engine: Engine, tmp_path: Path) -> None:
    store = tmp_path / "state" / "policies"
    for number in range(12):  # more than the history keeps
        engine.apply_file(write(tmp_path / "p.toml", f"[[allow]]\nports = [{1000 + number}]\n"))
    kept = {entry.before.digest for entry in engine.state.history() if entry.before is not None}
    current = engine.state.current()
    assert current is not None and current.policy is not None
    assert {path.name for path in store.iterdir()} == kept | {current.policy.digest}
    assert len(kept) == 10


def test_a_damaged_stored_policy_is_refused(engine: Engine, tmp_path: Path) -> None:
    engine.apply_file(write(tmp_path / "p.toml", "[[allow]]\nports = [443]\n"))
    digest = load_policy_digest(engine)
    (tmp_path / "state" / "policies" / digest).write_text("[[allow]]\nports = [1]\n")
    with pytest.raises(StateError, match="damaged"):
        engine.current_policy()


def test_a_rolled_back_confirmation_puts_the_previous_policy_back_in_force(engine: Engine, tmp_path: Path) -> None:
    engine.apply_file(write(tmp_path / "a.toml", "[[allow]]\nports = [443]\n"))
    before = load_policy_digest(engine)
    result = engine.apply_file(write(tmp_path / "b.toml", "[[allow]]\nports = [80]\n"), confirm=30)
    assert result.pending is not None and load_policy_digest(engine) != before  # in force while pending
    engine.expire_pending(result.pending.token, "deadline")
    current = engine.state.current()
    assert current is not None and current.action == "rollback" and current.origin is not None
    assert current.origin.reason == "deadline" and load_policy_digest(engine) == before


def test_an_older_entry_that_does_not_say_what_was_in_force_leaves_it_unknown(engine: Engine, tmp_path: Path) -> None:
    engine.apply_file(write(tmp_path / "a.toml", "[[allow]]\nports = [443]\n"))
    engine.apply_file(write(tmp_path / "b.toml", "[[allow]]\nports = [80]\n"))
    entry = tmp_path / "state" / "history" / "0002.json"
    raw = json.loads(entry.read_text())
    del raw["before"], raw["origin"]  # as an older dockerguard wrote it
    entry.write_text(json.dumps(raw))
    engine.rollback()
    assert engine.state.current() is None and engine.current_policy() == (None, None)


def test_apply_json_and_exit_code_say_whether_the_kernel_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    from typer.testing import CliRunner

    from dockerguard import cli
    from dockerguard.backends.nft.driver import NftBackend
    from dockerguard.backends.nft.fake_kernel import FakeNftKernel

    kernel = FakeNftKernel()
    monkeypatch.setattr(cli, "_engine", lambda backend, **options: Engine(NftBackend(kernel), **options))
    policy = write(tmp_path / "p.toml", 'external_interfaces = ["eth9"]\n[[allow]]\nports = [443]\n')
    args = ["apply", str(policy), "--state-dir", str(tmp_path / "state"), "--json", "--exit-code"]
    first = CliRunner().invoke(cli.app, args)
    assert first.exit_code == cli.CHANGED_EXIT, first.output
    data = json.loads(first.output)
    assert data["changed"] is True and data["history_entry"] == 1 and data["added"] > 10 and data["removed"] == 0
    assert data["warnings"] == ["external interface 'eth9' does not exist on this host (network namespace): "
                                "nothing entering through it is judged until it appears"]
    again = CliRunner().invoke(cli.app, args)
    assert again.exit_code == 0 and json.loads(again.output)["changed"] is False
    kernel.json_cmd({"nftables": [{"delete": {"table": {"family": "inet", "name": "dockerguard"}}}]})
    repaired = json.loads(CliRunner().invoke(cli.app, args).output)
    assert repaired["changed"] and repaired["repair"] and repaired["history_entry"] is None
    plain = CliRunner().invoke(cli.app, args[:4])
    assert plain.exit_code == 0 and "nothing changed" in plain.output


def test_metrics_show_watch_health_and_a_pending_confirmation(engine: Engine, tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from dockerguard.metrics import exposition
    from dockerguard.watch import Watcher

    def values() -> dict[str, float]:
        text = exposition(engine.metrics())
        return {sample.name: sample.value for family in text_string_to_metric_families(text)
                for sample in family.samples if sample.name.startswith(("dockerguard_watch", "dockerguard_conf"))}

    assert values() == {"dockerguard_watch_up": 0.0, "dockerguard_confirmation_pending": 0.0}
    policy = write(tmp_path / "p.toml", "[[allow]]\nports = [443]\n")
    watcher = Watcher(engine, lambda: load_policy(policy), None, interval=5)
    watcher.reconcile("start")
    seen = values()
    assert seen["dockerguard_watch_up"] == 1.0 and seen["dockerguard_watch_enforcing"] == 1.0
    assert seen["dockerguard_watch_repairs_total"] == 0.0 and seen["dockerguard_watch_failures_total"] == 0.0
    assert seen["dockerguard_watch_last_check_timestamp_seconds"] > 0
    pending = engine.apply_file(write(tmp_path / "q.toml", "[[allow]]\nports = [80]\n"), confirm=60).pending
    assert pending is not None
    seen = values()
    assert seen["dockerguard_confirmation_pending"] == 1.0
    assert seen["dockerguard_confirmation_deadline_timestamp_seconds"] == pytest.approx(pending.deadline)


def test_no_stored_policy_goes_while_an_entry_does_not_say_which_it_needs(engine: Engine, tmp_path: Path) -> None:
    engine.apply_file(write(tmp_path / "a.toml", "[[allow]]\nports = [443]\n"))
    engine.apply_file(write(tmp_path / "b.toml", "[[allow]]\nports = [80]\n"))
    entry = tmp_path / "state" / "history" / "0002.json"
    raw = json.loads(entry.read_text())
    del raw["before"]  # as an older dockerguard wrote it
    entry.write_text(json.dumps(raw))
    store = tmp_path / "state" / "policies"
    kept = {path.name for path in store.iterdir()}
    engine.apply_file(write(tmp_path / "c.toml", "[[allow]]\nports = [25]\n"))
    assert kept <= {path.name for path in store.iterdir()}
