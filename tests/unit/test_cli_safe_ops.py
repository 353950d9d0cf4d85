"""diff, apply --confirm, confirm, rollback, status, export and --verbose as the CLI prints them.

In-process (typer's CliRunner) with the fake backend patched into the CLI's engine factory, plus a few
real subprocesses for exit codes and messages; nothing here needs root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dockerguard import cli
from dockerguard.backends.fake import FakeBackend
from dockerguard.engine import Engine
from dockerguard.errors import PendingConfirmationError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
runner = CliRunner()


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    backend = FakeBackend()

    def engine(name: str | None, **options: Any) -> Engine:
        options.pop("state_dir", None)  # the autouse fixture's $DOCKERGUARD_STATE_DIR applies
        return Engine(backend, timer_launcher=lambda state_dir, token: 4242, **options)

    monkeypatch.setattr(cli, "_engine", engine)
    return backend


@pytest.fixture
def policies(tmp_path: Path) -> tuple[str, str]:
    one, two = tmp_path / "one.toml", tmp_path / "two.toml"
    one.write_text('[[allow]]\nports = [443]\n')
    two.write_text('[[allow]]\nports = [80]\n')
    return str(one), str(two)


def invoke(*args: str) -> Any:
    return runner.invoke(cli.app, list(args), catch_exceptions=False)


def test_diff_prints_plus_and_minus_lines_and_nothing_when_in_sync(fake: FakeBackend,
                                                                 policies: tuple[str, str]) -> None:
    one, two = policies
    assert invoke("apply", "-c", one).exit_code == 0
    same = invoke("diff", "-c", one, "--exit-code")
    assert (same.exit_code, same.output) == (0, "")
    changed = invoke("diff", "-c", two)
    assert changed.exit_code == 0
    lines = changed.output.splitlines()
    # per family, in the forward chain and in the proxy chain (docker-proxy's path judges the same allows)
    assert [line[0] for line in lines] == ["-", "-", "+", "+"] * 2
    assert [line.split()[2] for line in lines] == ["external:"] * 4 + ["proxy:"] * 4
    assert "\x1b[" not in changed.output  # no colours when not on a terminal
    assert invoke("diff", "-c", two, "--exit-code").exit_code == 1


def test_diff_json(fake: FakeBackend, policies: tuple[str, str]) -> None:
    one, two = policies
    invoke("apply", "-c", one)
    data = json.loads(invoke("diff", "-c", two, "--json").output)
    assert data["changed"] is True and data["backend"] == "fake"
    assert {change["op"] for change in data["changes"]} == {"+", "-"}
    assert json.loads(invoke("diff", "-c", one, "--json").output)["changes"] == []


def test_apply_confirm_then_confirm(fake: FakeBackend, policies: tuple[str, str]) -> None:
    one, two = policies
    invoke("apply", "-c", one)
    applied = invoke("apply", "-c", two, "--confirm", "30")
    assert applied.exit_code == 0
    assert "run `dockerguard confirm` before" in applied.output
    status = invoke("status")
    assert "pending" in status.output and "unless `dockerguard confirm`" in status.output
    # In-process on the fake driver: a real driver here would change the host's own firewall if the
    # pending confirmation were ever not seen.
    with pytest.raises(PendingConfirmationError, match="an apply --confirm is pending"):
        invoke("apply", "-c", one)
    confirmed = invoke("confirm")
    assert confirmed.exit_code == 0 and "confirmed ruleset" in confirmed.output
    assert "pending" not in invoke("status").output


def test_rollback_command(fake: FakeBackend, policies: tuple[str, str]) -> None:
    one, two = policies
    invoke("apply", "-c", one)
    first = fake.kernel
    invoke("apply", "-c", two)
    result = invoke("rollback")
    assert result.exit_code == 0 and "previous ruleset restored and verified" in result.output
    assert fake.kernel == first


def separate_streams() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 always keeps stderr apart


def test_verbose_shows_the_engine_steps_on_stderr(fake: FakeBackend, policies: tuple[str, str]) -> None:
    result = separate_streams().invoke(cli.app, ["-v", "apply", "-c", policies[0]], catch_exceptions=False)
    assert "applied ruleset" in result.stdout
    for action in ("snapshot:", "history:", "transaction:", "verify:"):
        assert action in result.stderr
    quiet = separate_streams().invoke(cli.app, ["apply", "-c", policies[1]], catch_exceptions=False)
    assert quiet.stderr == ""
    cli._options["verbose"] = False


def test_status_table_and_json(fake: FakeBackend, policies: tuple[str, str]) -> None:
    one, two = policies
    invoke("apply", "-c", one)
    text = invoke("status", "-c", one)
    assert text.exit_code == 0
    for word in ("backend", "fake", "path", "history", "in sync", "packets"):
        assert word in text.output
    drift = invoke("status", "-c", two)
    assert drift.exit_code == 3 and "DRIFT" in drift.output and "+ rule" in drift.output
    data = json.loads(invoke("status", "--json").output)
    assert data["backend"] == "fake" and data["pending"] is None
    assert [entry["number"] for entry in data["history"]] == [1]
    assert data["path"][0]["level"] == "info"
    assert invoke("status", "-c", two, "--json").exit_code == 3


def test_ask_keep_reads_an_answer_before_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    for answer, expected in (("y\n", True), ("yes\n", True), ("n\n", False), ("\n", False), ("", False)):
        read, write = os.pipe()
        os.write(write, answer.encode())
        os.close(write)
        with os.fdopen(read) as stdin:
            monkeypatch.setattr(sys, "stdin", stdin)
            assert cli._ask_keep(time.time() + 5) is expected
    read, write = os.pipe()
    with os.fdopen(read) as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        started = time.monotonic()
        assert cli._ask_keep(time.time() + 0.2) is None  # no answer: None at the deadline
        assert time.monotonic() - started < 2
    os.close(write)


# -- real subprocesses ------------------------------------------------------------------------------------
def subprocess_run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dockerguard", *args], capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, **env})


def test_confirm_with_nothing_pending_exits_1_with_one_line() -> None:
    result = subprocess_run("confirm")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: nothing to confirm: no apply --confirm is pending"


def test_rollback_with_empty_history_exits_1() -> None:
    result = subprocess_run("rollback")
    assert result.returncode == 1 and "nothing to roll back" in result.stderr
    assert "Traceback" not in result.stderr


def test_state_dir_flag_wins_over_environment(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = subprocess_run("rollback", "--state-dir", str(blocker / "x"))
    assert result.returncode == 1 and f"{blocker / 'x'}" in result.stderr


def test_rollback_timer_is_hidden() -> None:
    assert "_rollback-timer" not in subprocess_run("--help").stdout
    assert subprocess_run("_rollback-timer", "--help").returncode == 0


def test_export_nft_is_the_transaction_as_nft_text() -> None:
    result = subprocess_run("export", "--format", "nft", "-c", str(EXAMPLES / "classic.toml"), "--backend", "nft")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    assert lines[:3] == ["add table inet dockerguard", "delete table inet dockerguard", "add table inet dockerguard"]
    assert any("ct original proto-dst @allow_v4_tcp" in line for line in lines)
    assert any(line.startswith("add rule inet dockerguard external counter drop") for line in lines)
    ours = [line for line in lines if line.startswith("add rule inet dockerguard ")]
    assert ours[-1].startswith("add rule inet dockerguard proxy counter drop")
    assert "flush chain inet dockerguard_bans bans_forward" in lines


def test_export_systemd_unit(tmp_path: Path) -> None:
    policy = tmp_path / "my policy%.toml"
    policy.write_text('backend = "nft"\n[[allow]]\nports = [443]\n')
    result = subprocess_run("export", "--format", "systemd", "-c", str(policy))
    assert result.returncode == 0, result.stderr
    unit = result.stdout
    # before Docker publishes anything (closed by default); the rules stay when the unit stops
    for line in ("Before=network-pre.target docker.service shutdown.target", "Type=oneshot", "RemainAfterExit=yes",
                 "WantedBy=multi-user.target docker.service"):
        assert f"\n{line}\n" in unit
    (start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    # `python -m dockerguard` names no script: the unit runs the dockerguard on PATH, else `python -m`
    on_path = shutil.which("dockerguard")
    command = os.path.abspath(on_path) if on_path else f"{sys.executable} -m dockerguard"
    assert start.startswith(f"ExecStart={command} apply -c ")
    assert '"' + str(policy).replace("%", "%%") + '"' in start and start.endswith("--backend nft")
    settings = [line for line in unit.splitlines() if not line.startswith("#")]
    assert not [line for line in settings if line.startswith("ExecStop") or " remove" in line]


def test_export_unknown_format_exits_2() -> None:
    result = subprocess_run("export", "--format", "pf", "-c", str(EXAMPLES / "classic.toml"))
    assert result.returncode == 2 and "unknown export format 'pf'" in result.stderr


def test_export_iptables_restore_names_the_missing_driver_or_renders() -> None:
    from dockerguard.backends import DRIVERS

    result = subprocess_run("export", "--format", "iptables-restore", "-c", str(EXAMPLES / "classic.toml"))
    if "iptables-nft" in DRIVERS:
        assert result.returncode == 0, result.stderr
        assert "*filter" in result.stdout and "COMMIT" in result.stdout
    else:
        assert result.returncode == 1
        assert "needs the iptables-nft driver" in result.stderr
