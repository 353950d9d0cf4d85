"""Lint for the files under vagrant/: every shell script passes shellcheck, vagrant/matrix passes ruff.

A missing linter skips the test on a developer machine but fails it when ``CI`` is set, so CI cannot
pass by not linting. The vagrant/matrix guests (which set DOCKERGUARD_VM_GUEST) run the unit tests on
each distro with CI set but have no shellcheck: linting does not depend on the distro, so there a
missing linter is a skip.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[2]
VAGRANT = REPO / "vagrant"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing(tool: str) -> NoReturn:
    message = f"{tool} is not installed"
    if _in_ci() and not os.environ.get("DOCKERGUARD_VM_GUEST"):
        pytest.fail(message + " (CI is set, so this is an error, not a skip)", pytrace=False)
    pytest.skip(message)


def _ruff() -> list[str] | None:
    # Prefer the venv's ruff (the test extra) over whatever is on PATH.
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    path = shutil.which("ruff")
    return [path] if path else None


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = sorted(VAGRANT.rglob("*.sh"))
    assert VAGRANT / "provision.sh" in scripts
    if shutil.which("shellcheck") is None:
        _missing("shellcheck")
    p = subprocess.run(
        ["shellcheck", *map(str, scripts)], cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert p.returncode == 0, f"shellcheck found problems:\n{p.stdout}{p.stderr}"


def test_matrix_passes_ruff() -> None:
    ruff = _ruff()
    if ruff is None:
        _missing("ruff")
    # --show-files: the file has no .py suffix, so make sure the project's ruff config includes it.
    listed = subprocess.run([*ruff, "check", "--show-files", "."], cwd=REPO, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert any(Path(line.strip()).resolve() == VAGRANT / "matrix" for line in listed.stdout.splitlines()), (
        "ruff's file list (pyproject.toml [tool.ruff] extend-include) does not include vagrant/matrix"
    )
    p = subprocess.run([*ruff, "check", "vagrant/matrix"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, f"ruff found problems in vagrant/matrix:\n{p.stdout}{p.stderr}"
