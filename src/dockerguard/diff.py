"""What applying a policy would change: installed state vs expected state, hook by hook, rule by rule,
set element by set element. Pure functions; `Engine.diff` feeds them."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .backends import InstalledState


@dataclass(frozen=True)
class Change:
    """One line of a diff. `op` is "+" (apply would add it) or "-" (apply would remove it); `kind` is
    "hook", "rule", "set" or "element"; `where` names the chain or set ("" for hooks)."""

    op: str
    kind: str
    where: str
    what: str

    def __str__(self) -> str:
        if self.kind == "set":
            return f"{self.op} set {self.where}" + (f": {self.what}" if self.what else "")
        where = f"{self.where}: " if self.where else ""
        return f"{self.op} {self.kind} {where}{self.what}"


@dataclass(frozen=True)
class Diff:
    backend: str
    changes: tuple[Change, ...]

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def count(self, op: str, kind: str) -> int:
        return sum(1 for change in self.changes if change.op == op and change.kind == kind)


def diff_states(backend: str, installed: InstalledState | None, expected: InstalledState | None) -> Diff:
    old = installed or InstalledState(backend, (), ())
    new = expected or InstalledState(backend, (), ())
    changes = _ordered("hook", [("", hook) for hook in old.hooks], [("", hook) for hook in new.hooks])
    changes += _ordered("rule", _rules(old), _rules(new))
    changes += _set_changes(old, new)
    return Diff(backend, tuple(changes))


def _rules(state: InstalledState) -> list[tuple[str, str]]:
    """(chain, the whole rule as text): a rule that keeps its comment and changes a match differs."""
    return [(rule.chain, rule.text) for rule in state.rules]


def change_counts(backend: str, installed: InstalledState | None, expected: InstalledState | None
                  ) -> tuple[int, int]:
    """How many of diff_states(...).changes add and remove, without making (and sorting) a Change per set
    element: apply reports the counts, and 100,000 Change objects cost more than the kernel transaction."""
    old = installed or InstalledState(backend, (), ())
    new = expected or InstalledState(backend, (), ())
    lines = [*_ordered("hook", [("", hook) for hook in old.hooks], [("", hook) for hook in new.hooks]),
             *_ordered("rule", _rules(old), _rules(new))]
    added = sum(1 for change in lines if change.op == "+")
    removed = len(lines) - added
    old_sets, new_sets = dict(old.sets), dict(new.sets)
    old_specs, new_specs = dict(old.set_specs), dict(new.set_specs)
    for name in old_sets.keys() | new_sets.keys():
        before, after = old_sets.get(name), new_sets.get(name)
        replaced = before is not None and after is not None and old_specs.get(name) != new_specs.get(name)
        added += (before is None or replaced) + len(set(after or ()).difference(before or ()))
        removed += (after is None or replaced) + len(set(before or ()).difference(after or ()))
    return added, removed


def summary(backend: str, installed: InstalledState | None, expected: InstalledState | None,
            limit: int = 5, counts: tuple[int, int] | None = None) -> tuple[str, ...]:
    """The first `limit` changes as `diff` shows them (hooks and rules first: they say most), and how many
    more (`counts`: change_counts, when known already): for a log line. Set elements are only compared when
    hooks and rules leave room."""
    old = installed or InstalledState(backend, (), ())
    new = expected or InstalledState(backend, (), ())
    lines = [*_ordered("hook", [("", hook) for hook in old.hooks], [("", hook) for hook in new.hooks]),
             *_ordered("rule", _rules(old), _rules(new))]
    shown = [str(change) for change in lines[:limit]]
    if len(shown) < limit:
        shown += [str(change) for change in _set_changes(old, new)[:limit - len(shown)]]
    added, removed = counts if counts is not None else change_counts(backend, installed, expected)
    if added + removed > len(shown):
        shown.append(f"... {added + removed - len(shown)} more")
    return tuple(shown)


def _ordered(kind: str, before: list[tuple[str, str]], after: list[tuple[str, str]]) -> list[Change]:
    """Hooks and rules are ordered (as `InstalledState` equality is): a moved item is removed at its old
    place and added at the new one, so an empty diff means exactly "in sync"."""
    changes: list[Change] = []
    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    for tag, a_start, a_end, b_start, b_end in matcher.get_opcodes():
        if tag == "equal":
            continue
        changes += [Change("-", kind, where, text) for where, text in before[a_start:a_end]]
        changes += [Change("+", kind, where, text) for where, text in after[b_start:b_end]]
    return changes


def _set_changes(old: InstalledState, new: InstalledState) -> list[Change]:
    old_sets, new_sets = dict(old.sets), dict(new.sets)
    old_specs, new_specs = dict(old.set_specs), dict(new.set_specs)
    changes: list[Change] = []
    for name in sorted(old_sets.keys() | new_sets.keys()):
        before, after = old_sets.get(name), new_sets.get(name)
        if after is None:
            changes.append(Change("-", "set", name, old_specs.get(name, "")))
        elif before is None:
            changes.append(Change("+", "set", name, new_specs.get(name, "")))
        elif old_specs.get(name) != new_specs.get(name):  # declared otherwise: the set is replaced
            changes += [Change("-", "set", name, old_specs.get(name, "")), Change("+", "set", name,
                                                                                   new_specs.get(name, ""))]
        before_elements, after_elements = set(before or ()), set(after or ())
        changes += [Change("-", "element", name, e) for e in sorted(before_elements - after_elements)]
        changes += [Change("+", "element", name, e) for e in sorted(after_elements - before_elements)]
    return changes
