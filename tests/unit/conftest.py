"""Unit tests never read the host: published-port discovery (Docker API, the kernel's DNAT rules,
docker-proxy processes) finds nothing unless a test says otherwise, the host's network interfaces are a
fixed set (a VM without eth0 must not change a CLI's output), and the ruleset locks are private."""

from __future__ import annotations

import pytest

from dockerguard import published


@pytest.fixture(autouse=True)
def no_published_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(published, "discover", lambda containers, **_: published.Discovery())


@pytest.fixture(autouse=True)
def fixed_interfaces(monkeypatch: pytest.MonkeyPatch) -> None:
    from dockerguard import lint

    monkeypatch.setattr(lint, "interface_names", lambda: {"lo", "eth0", "eth1", "docker0"})


@pytest.fixture(autouse=True)
def private_ruleset_locks(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ruleset lock of the network namespace lives in /run/dockerguard for root: unit tests (which
    never touch a kernel) take theirs in a directory of their own, so a dockerguard on the host and
    the tests never wait for each other."""
    from dockerguard import locking

    run = tmp_path_factory.mktemp("run")
    monkeypatch.setattr(locking, "RUN_DIR", str(run / "dockerguard"))  # root's
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))  # another user's
