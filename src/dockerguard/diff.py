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


def change_count(backend: str, installed: InstalledState | None, expected: InstalledState | None) -> int:
    """len(diff_states(...).changes), without making (and sorting) a Change per set element: apply
    reports the count, and 100,000 Change objects cost more than the kernel transaction."""
    old = installed or InstalledState(backend, (), ())
    new = expected or InstalledState(backend, (), ())
    count = len(_ordered("hook", [("", hook) for hook in old.hooks], [("", hook) for hook in new.hooks]))
    count += len(_ordered("rule", _rules(old), _rules(new)))
    old_sets, new_sets = dict(old.sets), dict(new.sets)
    old_specs, new_specs = dict(old.set_specs), dict(new.set_specs)
    for name in old_sets.keys() | new_sets.keys():
        before, after = old_sets.get(name), new_sets.get(name)
        count += (before is None) + (after is None) + len(set(before or ()).symmetric_difference(after or ()))
        if before is not None and after is not None and old_specs.get(name) != new_specs.get(name):
            count += 2
    return count


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
