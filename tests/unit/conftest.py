"""Unit tests never read the host: published-port discovery (Docker API, the kernel's DNAT rules,
docker-proxy processes) finds nothing unless a test says otherwise."""

from __future__ import annotations

import pytest

from dockerguard import published


@pytest.fixture(autouse=True)
def no_published_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(published, "discover", lambda containers, **_: published.Discovery())
