"""The CLI as a user runs it (a subprocess): exit codes and messages; nothing here needs root."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dockerguard", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_check_ok() -> None:
    result = run("check", str(EXAMPLES / "classic.toml"))
    assert result.returncode == 0, result.stderr
    assert "OK (2 allow entries" in result.stdout


def test_check_bad_policy_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    policy = tmp_path / "bad.toml"
    policy.write_text('[[allow]]\nports = [80]\nsources = ["203.0.113.300"]\n')
    result = run("check", str(policy))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{policy}:3: [allow[1].sources] invalid address or CIDR '203.0.113.300'" in " ".join(
        result.stderr.split())


def test_apply_with_bad_policy_exits_2_before_touching_anything(tmp_path: Path) -> None:
    policy = tmp_path / "bad.toml"
    policy.write_text('external_interfaces = []\n')
    result = run("apply", "-c", str(policy), "--backend", "nft")
    assert result.returncode == 2
    assert "external_interfaces" in result.stderr


def test_unknown_backend_exits_2() -> None:
    result = run("plan", "-c", str(EXAMPLES / "classic.toml"), "--backend", "pf")
    assert result.returncode == 2
    assert "unknown backend 'pf'" in result.stderr


def test_plan_prints_the_exact_nft_transaction() -> None:
    result = run("plan", "-c", str(EXAMPLES / "classic.toml"), "--backend", "nft")
    assert result.returncode == 0, result.stderr
    commands = json.loads(result.stdout)["nftables"]
    assert {"add": {"table": {"family": "inet", "name": "dockerguard"}}} in commands
    rules = [c["add"]["rule"] for c in commands if "rule" in c.get("add", {})]
    ours = [rule for rule in rules if rule["table"] == "dockerguard"]
    assert ours[-1]["comment"] == "default drop"
    # The bans table's ban sets are only ever added (what fail2ban put there stays), its chains refilled.
    assert {"flush": {"chain": {"family": "inet", "table": "dockerguard_bans", "name": "bans_forward"}}} in commands
    assert not any("set" in c.get("flush", {}) and c["flush"]["set"]["name"].startswith("bans_v") for c in commands)
    assert {"delete": {"table": {"family": "inet", "name": "dockerguard_bans"}}} not in commands


def test_missing_default_policy_file_is_reported(tmp_path: Path) -> None:
    result = run("check", str(tmp_path / "none.toml"))
    assert result.returncode == 2
    assert "file not found" in result.stderr
