"""diff: installed vs expected, hook by hook, rule by rule, set element by element."""

from __future__ import annotations

from dataclasses import replace

from dockerguard import Engine, parse_policy
from dockerguard.backends import InstalledRule, InstalledState
from dockerguard.backends.fake import FakeBackend
from dockerguard.diff import Change, change_counts, diff_states, summary

POLICY = parse_policy('[[allow]]\nports = [443]\n')
OTHER = parse_policy('[[allow]]\nports = [80]\n')


def state(rules: list[str], sets: dict[str, list[str]] | None = None, hooks: tuple[str, ...] = ("hook a",)
          ) -> InstalledState:
    return InstalledState("t", hooks, tuple(InstalledRule("c", text) for text in rules),
                          tuple(sorted((name, tuple(sorted(elements))) for name, elements in (sets or {}).items())))


def test_identical_states_have_no_changes() -> None:
    one = state(["a", "b"], {"s": ["1", "2"]})
    assert not diff_states("t", one, one).changed


def test_counters_are_not_changes() -> None:
    old = InstalledState("t", (), (InstalledRule("c", "a", packets=5, bytes=300),))
    new = InstalledState("t", (), (InstalledRule("c", "a"),))
    assert diff_states("t", old, new).changes == ()


def test_nothing_installed_means_everything_is_added() -> None:
    result = diff_states("t", None, state(["a"], {"s": ["1"]}))
    assert [str(change) for change in result.changes] == [
        "+ hook hook a", "+ rule c: a", "+ set s", "+ element s: 1"]


def test_set_elements_are_compared_one_by_one() -> None:
    result = diff_states("t", state(["a"], {"s": ["1", "2"], "gone": ["9"]}), state(["a"], {"s": ["2", "3"]}))
    assert set(result.changes) == {
        Change("-", "set", "gone", ""), Change("-", "element", "gone", "9"),
        Change("-", "element", "s", "1"), Change("+", "element", "s", "3")}


def test_rule_order_matters_like_in_the_kernel() -> None:
    result = diff_states("t", state(["a", "b", "c"]), state(["b", "a", "c"]))
    assert result.changed
    assert result.count("+", "rule") == result.count("-", "rule") == 1


def test_hook_changes() -> None:
    result = diff_states("t", state([], hooks=("old",)), state([], hooks=("new",)))
    assert [str(change) for change in result.changes] == ["- hook old", "+ hook new"]


def test_engine_diff_on_the_fake_backend() -> None:
    fake = FakeBackend()
    engine = Engine(fake)
    assert engine.diff(POLICY).changed  # nothing installed yet
    engine.apply(POLICY)
    assert engine.diff(POLICY).changes == ()
    changes = engine.diff(OTHER).changes
    # one rule per address family, in the forward and in the proxy chain
    assert [change.op for change in changes] == ["-", "-", "+", "+"] * 2
    assert [change.where for change in changes] == ["external"] * 4 + ["proxy"] * 4
    assert all(("443" in c.what) == (c.op == "-") for c in changes)
    assert fake.transactions == 1  # diff never writes


def test_empty_diff_means_apply_is_a_no_op() -> None:
    fake = FakeBackend()
    engine = Engine(fake)
    engine.apply(POLICY)
    assert not engine.diff(POLICY).changed
    assert not engine.apply(POLICY).changed
    assert fake.transactions == 1


def test_the_change_counts_are_the_diff_s_additions_and_removals() -> None:
    cases = [(state(["a"], {"s": ["1", "2"], "gone": ["9"]}), state(["a"], {"s": ["2", "3"], "new": ["4", "5"]})),
             (None, state(["a"], {"s": ["1"]})), (state(["a", "b", "c"]), state(["b", "a", "c"])),
             (state([], hooks=("old",)), state([], hooks=("new",))), (state(["a"]), state(["a"])),
             (replace(state([], {"s": ["1"]}), set_specs=(("s", "type a"),)),
              replace(state([], {"s": ["1"]}), set_specs=(("s", "type b"),)))]
    for old, new in cases:
        changes = diff_states("t", old, new).changes
        assert change_counts("t", old, new) == (sum(c.op == "+" for c in changes), sum(c.op == "-" for c in changes))


def test_the_summary_shows_rules_first_and_counts_the_rest() -> None:
    old = state(["a"], {"s": [str(n) for n in range(100)]})
    new = state(["b"], {"s": []})
    assert summary("t", old, new, limit=3) == ("- rule c: a", "+ rule c: b", "- element s: 0", "... 99 more")
