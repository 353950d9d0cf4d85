"""The command line's ergonomics: the policy as POLICY or -c, global flags after the subcommand, every
policy mistake at once, warnings, plan without Docker, and status at a glance. In-process (CliRunner)
with the fake backend; nothing here needs root."""

from __future__ import annotations

import json
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


# -- warnings ------------------------------------------------------------------------------------------
def test_lint_warns_about_missing_interfaces_and_policies_that_allow_everything_or_nothing() -> None:
    from dockerguard.lint import policy_warnings
    from dockerguard.policy import parse_policy

    policy = parse_policy('external_interfaces = ["eth0", "dg-absent0"]\n'
                          '[[allow]]\nports = ["1-1000", "900-65535"]\ncomment = "all"\n'
                          '[[allow]]\nports = [443]\n')
    warnings = policy_warnings(policy, interfaces=lambda: {"lo", "eth0"})
    assert warnings == [
        "external interface 'dg-absent0' does not exist on this host (network namespace): nothing entering "
        "through it is judged until it appears",
        "allow entry 1 (all) lets anyone reach every published tcp port: the policy filters nothing there"]
    closed = parse_policy('external_interfaces = ["lo"]\n')
    assert policy_warnings(closed) == [  # the real lookup: lo is in every network namespace
        "no [[allow]] entry and default drop: every published port is closed to everyone from outside"]
    partial = parse_policy('external_interfaces = ["lo"]\n[[allow]]\nports = ["1-65535"]\n'
                           'sources = ["198.51.100.0/24"]\n')
    assert policy_warnings(partial) == []
    sealed = parse_policy('external_interfaces = ["lo"]\n[[allow]]\nports = [443]\n[host]\nicmp_echo = false\n')
    assert policy_warnings(sealed) == [
        "[host] without [[host.allow]] and default drop: from outside, only established connections reach the "
        "host itself (no SSH)"]


def test_check_plan_and_apply_print_warnings_on_stderr_and_succeed(fake: FakeBackend, tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "p.toml"
    path.write_text('external_interfaces = ["dg-absent0"]\n')
    result = subprocess.run([sys.executable, "-m", "dockerguard", "check", str(path)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        "warning: external interface 'dg-absent0' does not exist on this host (network namespace): nothing "
        "entering through it is judged until it appears",
        "warning: no [[allow]] entry and default drop: every published port is closed to everyone from outside"]
    assert "warning" not in result.stdout
    for command in ("plan", "apply"):
        # CliRunner mixes stderr into output
        outcome = runner.invoke(cli.app, [command, str(path)])
        assert outcome.exit_code == 0, outcome.output
        assert "warning: external interface 'dg-absent0' does not exist" in outcome.output


# -- container entries without Docker ------------------------------------------------------------------
def container_policy(tmp_path: Path) -> Path:
    path = tmp_path / "containers.toml"
    path.write_text(f'external_interfaces = ["lo"]\ndocker_socket = "{tmp_path}/absent.sock"\n'
                    '[[allow]]\ncontainer = "web"\n[[allow]]\nports = [443]\n')
    return path


def test_plan_of_container_entries_without_docker_says_what_it_would_resolve(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = container_policy(tmp_path)
    result = subprocess.run([sys.executable, "-m", "dockerguard", "plan", str(path), "-b", "nft"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"warning: container web: resolved from Docker when applied; Docker not reachable at "
        f"{tmp_path}/absent.sock now"]
    assert '"nftables"' in result.stdout


def test_apply_without_docker_closes_container_entries_and_warns(fake: FakeBackend, tmp_path: Path) -> None:
    from dockerguard.state import StateDir

    path = container_policy(tmp_path)
    result = runner.invoke(cli.app, ["apply", str(path)])
    assert result.exit_code == 0, result.output
    assert "warning: Docker not reachable (cannot reach Docker at" in result.output
    assert "container web: select no containers now (closed); `dockerguard watch` applies again" in result.output
    installed = fake.installed()
    assert installed is not None
    allowed = " ".join(rule.description for rule in installed.rules)
    assert "443" in allowed  # the plain entry is in place
    assert StateDir(None).installed_record() is None  # the next apply looks at Docker again


def test_apply_without_docker_over_installed_rules_fails_and_keeps_them(fake: FakeBackend, tmp_path: Path) -> None:
    path = container_policy(tmp_path)
    assert runner.invoke(cli.app, ["apply", str(path)]).exit_code == 0  # at boot: nothing was installed
    before = fake.installed()
    again = runner.invoke(cli.app, ["apply", str(path)])  # rules in place: Docker must answer to change them
    assert "cannot reach Docker" in str(again.exception)  # main() prints it and exits 1
    assert fake.installed() == before


# -- status at a glance --------------------------------------------------------------------------------
GLANCE = '''external_interfaces = ["lo"]
[sets]
office = ["203.0.113.0/24", "2001:db8:1::/48"]
[[allow]]
ports = [80, 443]
comment = "public web"
[[allow]]
ports = [8443]
sources = ["@office"]
comment = "admin tools, with a comment long enough to wrap any eighty column terminal window for sure"
[[allow]]
ports = [22]
sources = ["198.51.100.7"]
limit = "10/minute"
[[deny]]
sources = ["192.0.2.0/24"]
[host]
[[host.allow]]
ports = [22]
sources = ["@office"]
'''

STATUS_KEYS = {"backend", "installed", "in_sync", "detection", "path", "diff", "pending", "interrupted", "history",
               "last_rollback", "state_dir", "state_error", "policy_path", "entries", "drops", "unfinished", "current",
               "watch"}
ENTRY_KEYS = {"section", "number", "entry", "ports", "proto", "sources", "limits", "packets", "bytes", "shared",
              "published"}


@pytest.fixture
def nft(monkeypatch: pytest.MonkeyPatch) -> Any:
    from dockerguard.backends.nft.driver import NftBackend
    from dockerguard.backends.nft.fake_kernel import FakeNftKernel
    from dockerguard.published import Discovery

    kernel = FakeNftKernel()

    def engine(name: str | None, **options: Any) -> Engine:
        options.pop("state_dir", None)
        return Engine(NftBackend(kernel), timer_launcher=lambda state_dir, token: 4242,
                      discover=lambda containers: Discovery(frozenset({("tcp", 443), ("tcp", 8443)})), **options)

    monkeypatch.setattr(cli, "_engine", engine)
    return kernel


def count(kernel: Any, comment: str, packets: int) -> None:
    for rules in kernel.tables[("inet", "dockerguard")].rules.values():
        for rule in rules:
            if rule.get("comment") == comment:
                next(s for s in rule["expr"] if "counter" in s)["counter"] = {"packets": packets, "bytes": packets * 60}


def test_status_json_has_one_row_per_entry_and_the_drops_per_path(nft: Any, tmp_path: Path) -> None:
    policy = tmp_path / "glance.toml"
    policy.write_text(GLANCE)
    assert invoke("apply", str(policy), "--no-guard").exit_code == 0
    count(nft, "default drop", 7)
    count(nft, "allow tcp ipv4 group 1", 5)  # the limited entry's own rule (a group of its own)
    data = json.loads(invoke("status", "--json").output)  # no POLICY: the one the last apply used
    assert set(data) == STATUS_KEYS
    assert data["policy_path"] == str(policy)
    assert all(set(row) == ENTRY_KEYS for row in data["entries"])
    rows = {(row["section"], row["number"]): row for row in data["entries"]}
    assert list(rows) == [("allow", 1), ("allow", 2), ("allow", 3), ("deny", 1), ("host", 1)]
    web, admin, ssh = rows[("allow", 1)], rows[("allow", 2)], rows[("allow", 3)]
    assert (web["entry"], web["ports"], web["sources"], web["published"]) == ("public web", "80,443", "any",
                                                                               ["443/tcp"])
    assert (admin["sources"], admin["published"]) == ("@office (2 networks)", ["8443/tcp"])
    assert (ssh["entry"], ssh["limits"], ssh["packets"], ssh["bytes"], ssh["shared"]) == (
        "allow 3", "10/minute burst 5", 5 * 2, 600, False)  # FORWARD's and PROXY's rule
    assert web["shared"] is True  # the (source . port) pair set serves web and admin tools
    assert rows[("deny", 1)]["packets"] == 0 and rows[("host", 1)]["packets"] == 0
    assert {drop["path"]: drop["packets"] for drop in data["drops"]} == {"forward": 7, "docker-proxy": 7,
                                                                         "host": 7}


def test_status_text_is_one_line_per_row_when_not_a_terminal(nft: Any, tmp_path: Path) -> None:
    policy = tmp_path / "glance.toml"
    policy.write_text(GLANCE)
    invoke("apply", str(policy), "--no-guard")
    result = runner.invoke(cli.app, ["status", str(policy)], env={"COLUMNS": "40"}, catch_exceptions=False)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    admin = [line for line in lines if line.startswith("allow 2: admin tools")]
    assert len(admin) == 1 and "eighty column terminal window for sure" in admin[0]
    assert "@office (2 networks)" in admin[0] and "8443/tcp" in admin[0]
    assert any(line.startswith("dropped") and "forward: 0 packets" in line for line in lines)
    assert not any(line != line.rstrip() for line in lines)
    assert "─" not in result.output
    assert not any(line.split()[:1] == ["chain"] for line in lines)  # the rules table only with --verbose
    verbose = runner.invoke(cli.app, ["status", "-v", str(policy)], catch_exceptions=False).output.splitlines()
    assert any(line.split()[:2] == ["chain", "rule"] for line in verbose)


def test_egress_entries_report_each_mistake_too() -> None:
    from dockerguard.errors import PolicyError
    from dockerguard.policy import parse_policy

    with pytest.raises(PolicyError) as caught:
        parse_policy('[[egress]]\ndestinations = ["203.0.113.300"]\nports = [0]\ncomment = 5\n', "e.toml")
    assert [error.key for error in caught.value.errors] == ["egress[1].destinations", "egress[1].ports",
                                                            "egress[1].comment"]


def test_only_watch_runs_with_the_cyclic_collector(fake: FakeBackend, policy: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """main() turns the collector off (one-shot commands keep what they allocate to the end); `watch` runs
    for months and turns it back on before it starts watching."""
    import gc
    import sys

    from dockerguard import watch

    seen: list[bool] = []

    def run(self: object, stop: object) -> None:
        seen.append(gc.isenabled())

    monkeypatch.setattr(watch.Watcher, "run", run)
    monkeypatch.setattr(cli, "_engine", lambda name, **options: Engine(fake))
    try:
        for argv in (["check", policy], ["watch", policy, "--docker-socket", "/nonexistent/docker.sock"]):
            monkeypatch.setattr(sys, "argv", ["dockerguard", *argv])
            with pytest.raises(SystemExit) as exited:
                cli.main()
            assert exited.value.code in (0, None)
            seen.append(gc.isenabled())
    finally:
        gc.enable()
    assert seen == [False, True, True]  # after check; inside watch; after watch
