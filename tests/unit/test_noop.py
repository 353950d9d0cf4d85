"""The cheap no-op: the same policy file over the same Docker inputs on an unchanged kernel costs no
parse, no compile and no listing; any change anywhere takes the full path (never a missed drift)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockerguard import Engine
from dockerguard.backends.nft.driver import NftBackend
from dockerguard.backends.nft.fake_kernel import FakeNftKernel
from dockerguard.published import Discovery

POLICY = '[[allow]]\nports = [8080]\nsources = ["198.51.100.9", "2001:db8:5::9"]\n'


@pytest.fixture
def kernel() -> FakeNftKernel:
    return FakeNftKernel()


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


def engine(kernel: FakeNftKernel, ports: frozenset[tuple[str, int]] = frozenset({("tcp", 8080)})) -> Engine:
    return Engine(NftBackend(kernel), discover=lambda containers: Discovery(ports))


def actions(result: object) -> list[str]:
    return [step.detail for step in result.steps]  # type: ignore[attr-defined]


def test_unchanged_everything_costs_no_listing(kernel: FakeNftKernel, policy: Path) -> None:
    assert engine(kernel).apply_file(policy).changed
    listings, batches = kernel.listings, kernel.batches
    again = engine(kernel).apply_file(policy)
    assert not again.changed and kernel.batches == batches
    assert kernel.listings == listings  # the generation told: nothing was listed
    assert any("generation" in detail and "unchanged" in detail for detail in actions(again))


def test_a_foreign_change_costs_one_read_back_and_is_not_drift(kernel: FakeNftKernel, policy: Path) -> None:
    engine(kernel).apply_file(policy)
    kernel.json_cmd({"nftables": [{"add": {"table": {"family": "ip", "name": "docker-bridges"}}}]})
    listings, batches = kernel.listings, kernel.batches
    result = engine(kernel).apply_file(policy)
    # one read-back: our table and the bans table, one listing each
    assert not result.changed and kernel.batches == batches and kernel.listings == listings + 2
    assert any("read back equal" in detail for detail in actions(result))
    listings = kernel.listings
    assert not engine(kernel).apply_file(policy).changed and kernel.listings == listings  # generation stored


def test_drift_is_repaired_never_missed(kernel: FakeNftKernel, policy: Path) -> None:
    engine(kernel).apply_file(policy)
    kernel.json_cmd({"nftables": [{"flush": {"chain": {"family": "inet", "table": "dockerguard",
                                                      "name": "external"}}}]})
    assert engine(kernel).apply_file(policy).changed
    assert not engine(kernel).apply_file(policy).changed


def test_an_edited_policy_or_new_published_ports_take_the_full_path(kernel: FakeNftKernel, policy: Path) -> None:
    engine(kernel).apply_file(policy)
    policy.write_text(POLICY.replace("8080", "8081"))
    assert engine(kernel).apply_file(policy).changed
    more = frozenset({("tcp", 8080), ("tcp", 9090)})
    assert engine(kernel, more).apply_file(policy).changed  # 9090's docker-proxy path is judged now
    assert not engine(kernel, more).apply_file(policy).changed


def test_remove_and_rollback_forget_what_was_installed(kernel: FakeNftKernel, policy: Path) -> None:
    engine(kernel).apply_file(policy)
    assert engine(kernel).remove()
    assert engine(kernel).apply_file(policy).changed  # not "unchanged": the table is gone
    engine(kernel).rollback()  # back to nothing installed
    assert engine(kernel).apply_file(policy).changed


def test_another_backend_asked_for_takes_the_full_path(kernel: FakeNftKernel, policy: Path) -> None:
    engine(kernel).apply_file(policy)
    other = FakeNftKernel()
    assert Engine(NftBackend(other), discover=lambda containers: Discovery(frozenset({("tcp", 8080)}))
                  ).apply_file(policy).changed  # same name, but its kernel holds nothing


def test_a_changed_sources_file_is_never_taken_for_a_no_op(kernel: FakeNftKernel, tmp_path: Path) -> None:
    """The policy file's bytes are the same, but the blocklist it names is not: the full path runs."""
    listed = tmp_path / "block.netset"
    listed.write_text("203.0.113.0/25\n")
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY + '[[deny]]\nsources_file = "block.netset"\n')
    assert engine(kernel).apply_file(policy).changed
    assert not engine(kernel).apply_file(policy).changed
    listed.write_text("203.0.113.0/25\n192.0.2.7\n")
    result = engine(kernel).apply_file(policy)
    assert result.changed and "192.0.2.7" in str(NftBackend(kernel).snapshot().data)
    assert not engine(kernel).apply_file(policy).changed


def test_the_no_op_path_parses_nothing_and_still_warns(kernel: FakeNftKernel, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's warnings come from the parsed policy on the full path, from the record on the no-op path:
    the same lines either way, with the interface check made again (interfaces come and go)."""
    from dockerguard import engine as engine_module
    from dockerguard import lint

    policy = tmp_path / "policy.toml"
    policy.write_text('external_interfaces = ["eth0", "wan9"]\n[[allow]]\nports = ["1-65535"]\n'
                      'sources = ["any"]\ncomment = "web"\n')
    seen: list[object] = []
    first = engine(kernel).apply_file(policy, on_load=seen.append)
    assert first.changed and len(seen) == 1 and first.warnings == ()
    expected = lint.policy_warnings(seen[0])  # type: ignore[arg-type]
    assert len(expected) == 2 and "'wan9'" in expected[0] and "(web)" in expected[1]

    def no_parsing(path: object) -> object:
        raise AssertionError("the no-op path parsed the policy")

    monkeypatch.setattr(engine_module, "load_policy", no_parsing)
    again = engine(kernel).apply_file(policy, on_load=seen.append)
    assert not again.changed and len(seen) == 1 and list(again.warnings) == expected
    monkeypatch.setattr(lint, "interface_names", lambda: {"lo", "eth0", "wan9"})  # wan9 came up since
    assert list(engine(kernel).apply_file(policy).warnings) == expected[1:]
