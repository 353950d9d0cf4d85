"""The command line's ergonomics: the policy as POLICY or -c, global flags after the subcommand, every
policy mistake at once, warnings, plan without Docker, and status at a glance. In-process (CliRunner)
with the fake backend; nothing here needs root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dockerguard import cli
from dockerguard.backends.fake import FakeBackend
from dockerguard.engine import Engine

runner = CliRunner()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    backend = FakeBackend()

    def engine(name: str | None, **options: Any) -> Engine:
        options.pop("state_dir", None)  # the autouse fixture's $DOCKERGUARD_STATE_DIR applies
        return Engine(backend, timer_launcher=lambda state_dir, token: 4242, **options)

    monkeypatch.setattr(cli, "_engine", engine)
    return backend


@pytest.fixture
def policy(tmp_path: Path) -> str:
    path = tmp_path / "policy.toml"
    path.write_text('external_interfaces = ["lo"]\n[[allow]]\nports = [443]\nsources = ["198.51.100.0/24"]\n'
                    'comment = "web"\n')
    return str(path)


def invoke(*args: str) -> Any:
    return runner.invoke(cli.app, list(args), catch_exceptions=False)


@pytest.mark.parametrize("command", ["check", "plan", "diff", "apply", "status", "audit", "export"])
def test_policy_positional_or_c_mean_the_same(fake: FakeBackend, policy: str, command: str) -> None:
    extra = ["--format", "nft"] if command == "export" else []
    if command in ("status", "audit"):
        invoke("apply", policy)
    positional = invoke(command, policy, *extra)
    option = invoke(command, "-c", policy, *extra)
    assert positional.exit_code == option.exit_code
    assert positional.exit_code in (0, 3), positional.output
    if command == "apply":  # the second run finds the same ruleset installed
        assert positional.output.split()[2] == option.output.split()[1]
    else:
        assert positional.output == option.output
    both_same = invoke(command, policy, "-c", policy, *extra)
    assert both_same.exit_code == positional.exit_code


@pytest.mark.parametrize("command", ["check", "plan", "diff", "apply", "status", "audit", "export", "watch"])
def test_two_different_policies_is_a_usage_error(fake: FakeBackend, policy: str, tmp_path: Path,
                                                 command: str) -> None:
    other = tmp_path / "other.toml"
    other.write_text("")
    extra = ["--format", "nft"] if command == "export" else []
    result = runner.invoke(cli.app, [command, policy, "-c", str(other), *extra])
    assert result.exit_code == 2
    assert "two different policies" in result.output


def test_apply_positional_installs_the_rules(fake: FakeBackend, policy: str) -> None:
    assert invoke("apply", policy).exit_code == 0
    assert fake.installed() is not None


def test_verbose_is_accepted_after_the_subcommand(fake: FakeBackend, policy: str) -> None:
    before = runner.invoke(cli.app, ["-v", "apply", "-c", policy])
    invoke("remove")
    after = runner.invoke(cli.app, ["apply", "-v", "-c", policy])
    invoke("remove")
    trailing = runner.invoke(cli.app, ["apply", policy, "--verbose"])
    for result in (before, after, trailing):
        assert result.exit_code == 0, result.output
        assert " ms)" in result.output  # the --verbose step timings
    quiet = runner.invoke(cli.app, ["apply", policy])
    assert " ms)" not in quiet.output


BAD_POLICY = '''backend = "nftables"
extrnal_interfaces = ["eth0"]

[sets]
office = ["203.0.113.0/24"]

[[allow]]
port = [80]
sources = ["198.51.100.0/24"]

[[allow]]
ports = [70000]
proto = "tpc"
sources = ["@offce"]

[[deny]]
sources = ["203.0.113.300"]
'''


def test_every_policy_mistake_at_once_with_did_you_mean(tmp_path: Path) -> None:
    from dockerguard.errors import PolicyError
    from dockerguard.policy import parse_policy

    with pytest.raises(PolicyError) as caught:
        parse_policy(BAD_POLICY, "bad.toml")
    found = [(error.line, error.key) for error in caught.value.errors]
    assert found == [(1, "backend"), (2, "extrnal_interfaces"), (7, "allow[1]"), (8, "allow[1].port"),
                     (12, "allow[2].ports"), (13, "allow[2].proto"), (14, "allow[2].sources"),
                     (17, "deny[1].sources")]
    messages = [error.message for error in caught.value.errors]
    assert "did you mean 'iptables-nft'?" in messages[0]
    assert "did you mean 'external_interfaces'?" in messages[1]
    assert "did you mean 'ports'?" in messages[3]
    assert "did you mean 'tcp'?" in messages[5]
    assert "did you mean '@office'?" in messages[6]
    assert all(error.file == "bad.toml" for error in caught.value.errors)


def test_one_mistake_is_one_error_as_before() -> None:
    from dockerguard.errors import PolicyError
    from dockerguard.policy import parse_policy

    with pytest.raises(PolicyError) as caught:
        parse_policy('[[allow]]\nports = [80]\nsources = ["203.0.113.300"]\n', "one.toml")
    assert len(caught.value.errors) == 1
    assert str(caught.value) == "one.toml:3: [allow[1].sources] invalid address or CIDR '203.0.113.300'"


def test_check_prints_one_line_per_mistake_and_exits_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "bad.toml"
    path.write_text(BAD_POLICY)
    result = subprocess.run([sys.executable, "-m", "dockerguard", "check", str(path)], capture_output=True,
                            text=True, timeout=60, check=False, env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 8 and all(line.startswith(f"error: {path}:") for line in lines), result.stderr
    assert "Traceback" not in result.stderr
