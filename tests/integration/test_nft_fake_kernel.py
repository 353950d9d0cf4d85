"""The fake nft kernel answers like the real one: the same driver calls, once against libnftables in a
fresh network namespace and once against FakeNftKernel, read back the same states."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockerguard import compile_policy, load_policy
from dockerguard.backends.nft.driver import NftBackend
from dockerguard.backends.nft.fake_kernel import FakeNftKernel
from dockerguard.sandbox import in_netns

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.distro


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"dgfk{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)
    try:
        with in_netns(name):
            yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=10)


def journey(backend: NftBackend) -> list[object]:
    """Apply, replace, snapshot, remove, restore: what each step reads back."""
    office, classic = (compile_policy(load_policy(EXAMPLES / name)) for name in ("office.toml", "classic.toml"))
    seen: list[object] = [backend.installed()]
    backend.apply(backend.render(classic))
    seen.append(backend.installed())
    snapshot = backend.snapshot()
    backend.apply(backend.render(office))
    seen += [backend.installed(), backend.installed() == backend.expected(office)]
    backend.restore(snapshot)
    seen += [backend.installed(), backend.installed() == backend.expected(classic)]
    backend.remove()
    seen.append(backend.installed())
    return seen


def test_fake_and_real_kernel_read_back_alike(netns: str) -> None:
    live = NftBackend()
    real = journey(live)
    faked = NftBackend(FakeNftKernel())
    # nft 0.9.8 (bullseye) lists IPv6 prefixes inside concatenations as /64, so the driver reads them as
    # "/?" there: the fake kernel answers exactly, and is read the way this host's nft must be read.
    unreadable = live._old_nft()
    faked._old_nft = lambda: unreadable  # type: ignore[method-assign]
    fake = journey(faked)
    assert real == fake
    assert real[3] is True and real[5] is True and real[-1] is None


def test_fake_and_real_kernel_list_the_same_objects(netns: str) -> None:
    ruleset = compile_policy(load_policy(EXAMPLES / "office.toml"))
    real, fake = NftBackend(), NftBackend(FakeNftKernel())
    for backend in (real, fake):
        backend.apply(backend.render(ruleset))
    names = [sorted((kind, body.get("name", body.get("chain")))
                    for item in backend.snapshot().data for kind, body in item.items()) for backend in (real, fake)]
    assert names[0] == names[1]
    assert real.path_report() == fake.path_report()
