"""In-memory driver for fast engine and CLI tests (the knftables Fake idea): no kernel involved.

`FakeBackend.kernel` plays the kernel; tests can make the next apply fail or corrupt what it installs
to exercise the engine's rollback.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from ..errors import TransactionError
from ..model import Allows, Default, Denies, Family, LogDrops, Piece, Role, Ruleset
from ..net import Network
from .base import (
    Backend,
    Ban,
    InstalledRule,
    InstalledState,
    ProbeResult,
    Rendered,
    RuleOrigin,
    Snapshot,
    guess_kind,
)

_SNAKE = re.compile(r"(?<=[a-z])(?=[A-Z])")
CHAIN = {Role.FORWARD: "external", Role.INPUT: "inbound", Role.PROXY: "proxy", Role.HOST: "host"}


def _describe(piece: Piece) -> list[str]:
    """One line per rule: the piece's kind, and for allows what they allow."""
    if isinstance(piece, Allows):
        return [f"allow {rule.proto} ipv{rule.family.value} {','.join(map(str, rule.sources))} "
                f"{','.join(map(str, rule.ports))} -> accept" for rule in piece.rules]
    if isinstance(piece, Default):
        return [f"default -> {piece.verdict.value}"]
    return [f"{_SNAKE.sub('_', type(piece).__name__).lower()} -> {'log' if isinstance(piece, LogDrops) else 'accept'}"]


class FakeBackend(Backend):
    name = "fake"

    def __init__(self) -> None:
        self.kernel: InstalledState | None = None
        self.transactions = 0  # how many times the "kernel" was written
        self.fail_next_apply = False
        self.corrupt_next_apply = False
        self.banned: dict[str, int | None] = {}

    @classmethod
    def probe(cls) -> ProbeResult:
        return ProbeResult(cls.name, True, "in-memory test driver")

    def render(self, ruleset: Ruleset) -> Rendered:
        state = self.expected(ruleset)
        lines = [*state.hooks, *(f"{rule.chain}: {rule.description}" for rule in state.rules)]
        return Rendered(self.name, "\n".join(lines) + "\n", state)

    def expected(self, ruleset: Ruleset) -> InstalledState:
        rules = [InstalledRule(CHAIN[chain.role], description)
                 for chain in ruleset.chains for piece in chain.pieces for description in _describe(piece)]
        hooks = (f"interfaces {','.join(ruleset.interfaces)}", f"log_dropped {ruleset.log_dropped}")
        return InstalledState(self.name, hooks, tuple(rules))

    def ban(self, network: Network, timeout: int | None) -> None:
        self.banned[str(network)] = timeout

    def unban(self, network: Network) -> bool:
        return self.banned.pop(str(network), "gone") != "gone"

    def bans(self) -> tuple[Ban, ...]:
        return tuple(Ban(network, timeout) for network, timeout in sorted(self.banned.items()))

    def is_host_chain(self, chain: str) -> bool:
        return chain == CHAIN[Role.HOST]

    def origins(self, ruleset: Ruleset) -> dict[tuple[str, str], RuleOrigin]:
        """By position: one line per AllowRule, in order; one line for all denies."""
        found = {}
        for chain in ruleset.chains:
            for piece in chain.pieces:
                lines = _describe(piece)
                for index, line in enumerate(lines):
                    key = (CHAIN[chain.role], line)
                    if isinstance(piece, Allows):
                        found[key] = RuleOrigin("allow", chain.role, piece.rules[index].family, allows=(index,))
                    elif isinstance(piece, Denies):
                        found[key] = RuleOrigin("deny", chain.role, denies=tuple(range(len(piece.rules))))
                    else:
                        found[key] = RuleOrigin(guess_kind(line), chain.role)
        return found

    def chain_role(self, chain: str) -> tuple[Role | None, Family | None]:
        return next((role for role, name in CHAIN.items() if name == chain), None), None

    def count(self, chain: str, prefix: str, packets: int, octets: int) -> None:
        """Tests: set the counters of the installed rules of `chain` whose text starts with `prefix`."""
        assert self.kernel is not None
        self.kernel = replace(self.kernel, rules=tuple(
            replace(rule, packets=packets, bytes=octets) if rule.chain == chain and rule.description.startswith(prefix)
            else rule for rule in self.kernel.rules))

    def apply(self, rendered: Rendered) -> None:
        if self.fail_next_apply:
            self.fail_next_apply = False
            raise TransactionError("fake kernel refused the transaction")
        state: InstalledState = rendered.payload
        if self.corrupt_next_apply:
            self.corrupt_next_apply = False
            state = replace(state, rules=state.rules[:-1])  # as if a rule silently went missing
        self._write(state)

    def installed(self) -> InstalledState | None:
        return self.kernel

    def snapshot(self) -> Snapshot:
        return Snapshot(self.name, None if self.kernel is None else _to_json(self.kernel))

    def restore(self, snapshot: Snapshot) -> None:
        self._write(None if snapshot.data is None else _from_json(snapshot.data))

    def remove(self) -> None:
        if self.kernel is not None:
            self._write(None)

    def _write(self, state: InstalledState | None) -> None:
        self.transactions += 1
        self.kernel = state


def _to_json(state: InstalledState) -> str:
    return json.dumps({"hooks": state.hooks, "rules": [[r.chain, r.description] for r in state.rules]})


def _from_json(data: str) -> InstalledState:
    raw: dict[str, Any] = json.loads(data)
    return InstalledState("fake", tuple(raw["hooks"]), tuple(InstalledRule(c, d) for c, d in raw["rules"]))
