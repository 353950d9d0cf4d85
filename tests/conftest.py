"""Fixtures for every test directory."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every apply records history in the state directory: keep tests (and the CLI subprocesses they
    start, which inherit the environment) away from the host's /var/lib/dockerguard."""
    state = tmp_path / "dockerguard-state"
    monkeypatch.setenv("DOCKERGUARD_STATE_DIR", str(state))
    return state
