"""An in-memory nftables kernel behind the `NftClient` interface (knftables' Fake, for libnftables JSON).

`NftBackend(client=FakeNftKernel())` runs the real renderer, transaction and read-back with no root and
no kernel: engine and CLI tests use it. It executes the JSON commands the driver sends (add, create,
delete, flush of tables, chains, sets, rules and elements; list of tables, a table, chains), all or
nothing per batch like the kernel, and lists objects the way nft 1.0 does (table, sets, chains, rules,
each with a handle; a rule without the protocol check a later match implies). It checks what the kernel
would refuse in our usage: missing tables, chains and sets, a rule naming a set or jump target that does
not exist, deleting what is still used.

It does not interpret rules (no packets), nor check set element overlaps. `fail_next` makes the next
writing batch fail, for fault injection; `batches` counts committed writing batches.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

_ENOENT = "No such file or directory"
_EBUSY = "Device or resource busy"
_EEXIST = "File exists"


class _Refused(Exception):
    pass


@dataclass
class _Table:
    family: str
    name: str
    handle: int
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # chain -> rules in order
    flags: list[str] = field(default_factory=list)


class FakeNftKernel:
    version = "1.0.6"

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], _Table] = {}
        self.fail_next: str | None = None  # the error text of the next writing batch
        self.batches = 0
        self.listings = 0  # list requests answered (what a cheap no-op must avoid)
        self._handle = 0

    # -- NftClient -------------------------------------------------------------------------------
    def json_cmd(self, payload: dict[str, Any], *, json_output: bool = False,
                 dry_run: bool = False) -> tuple[int, str, str]:
        commands = [command for command in payload.get("nftables", []) if "metainfo" not in command]
        if commands and all("list" in command for command in commands):
            self.listings += 1
            try:
                listed = [item for command in commands for item in self._list(command["list"])]
            except _Refused as exc:
                return -1, "", f"internal:0:0-0: Error: {exc}\n\n"
            return 0, json.dumps({"nftables": [self._metainfo(), *listed]}) if json_output else "", ""
        if self.fail_next is not None and not dry_run:
            error, self.fail_next = self.fail_next, None
            return -1, "", f"internal:0:0-0: Error: {error}\n\n"
        saved = (copy.deepcopy(self.tables), self._handle)
        try:
            for command in commands:
                (verb, body), = command.items()
                (kind, spec), = body.items()
                getattr(self, f"_{verb}_{kind}")(spec)
        except (_Refused, AttributeError, KeyError, TypeError, ValueError) as exc:
            self.tables, self._handle = saved  # all or nothing, like the kernel
            reason = str(exc) if isinstance(exc, _Refused) else f"Invalid argument ({exc!r})"
            return -1, "", f"internal:0:0-0: Error: Could not process rule: {reason}\n\n"
        if dry_run:
            self.tables, self._handle = saved
        else:
            self.batches += 1
        return 0, "", ""

    def generation(self) -> int:
        """Like the kernel's: one more per committed writing batch."""
        return self.batches

    def table_flags(self, name: str) -> int | None:
        table = self.tables.get(("inet", name))
        return None if table is None else sum(bit for bit, flag in ((1, "dormant"), (2, "owner"), (4, "persist"))
                                               if flag in table.flags)

    # -- tables ----------------------------------------------------------------------------------
    def _add_table(self, spec: dict[str, Any]) -> None:
        key = (spec["family"], spec["name"])
        if key not in self.tables:
            self.tables[key] = _Table(spec["family"], spec["name"], self._next_handle())
        if "flags" in spec:  # `add table ... { flags dormant; }` changes an existing table's flags
            self.tables[key].flags = list(spec["flags"]) if isinstance(spec["flags"], list) else [spec["flags"]]

    def _create_table(self, spec: dict[str, Any]) -> None:
        if (spec["family"], spec["name"]) in self.tables:
            raise _Refused(_EEXIST)
        self._add_table(spec)

    def _delete_table(self, spec: dict[str, Any]) -> None:
        self._table(spec["family"], spec["name"])
        del self.tables[(spec["family"], spec["name"])]

    # -- chains ----------------------------------------------------------------------------------
    def _add_chain(self, spec: dict[str, Any]) -> None:
        table = self._table(spec["family"], spec["table"])
        if spec["name"] not in table.chains:
            table.chains[spec["name"]] = {**_strip(spec), "handle": self._next_handle()}
            table.rules[spec["name"]] = []

    def _flush_chain(self, spec: dict[str, Any]) -> None:
        table = self._table(spec["family"], spec["table"])
        self._chain(table, spec["name"])
        table.rules[spec["name"]] = []

    def _delete_chain(self, spec: dict[str, Any]) -> None:
        table = self._table(spec["family"], spec["table"])
        self._chain(table, spec["name"])
        if table.rules[spec["name"]] or any(spec["name"] in _targets(rule) for rule in _all_rules(table)):
            raise _Refused(_EBUSY)
        del table.chains[spec["name"]], table.rules[spec["name"]]

    # -- sets ------------------------------------------------------------------------------------
    def _add_set(self, spec: dict[str, Any]) -> None:
        table = self._table(spec["family"], spec["table"])
        existing = table.sets.get(spec["name"])
        if existing is None:
            table.sets[spec["name"]] = {**_strip(spec), "handle": self._next_handle(),
                                        "elem": list(spec.get("elem", []))}
            return
        if existing.get("type") != spec.get("type"):
            raise _Refused(_EEXIST)
        _add_elements(existing, spec.get("elem", []))

    def _flush_set(self, spec: dict[str, Any]) -> None:
        self._set(spec)["elem"] = []

    def _delete_set(self, spec: dict[str, Any]) -> None:
        table = self._table(spec["family"], spec["table"])
        self._set(spec)
        if any(f"@{spec['name']}" in _set_references(rule) for rule in _all_rules(table)):
            raise _Refused(_EBUSY)
        del table.sets[spec["name"]]

    def _add_element(self, spec: dict[str, Any]) -> None:
        _add_elements(self._set(spec), spec.get("elem", []))

    def _delete_element(self, spec: dict[str, Any]) -> None:
        nft_set = self._set(spec)
        for element in spec.get("elem", []):
            if element not in nft_set["elem"]:
                raise _Refused(_ENOENT)
            nft_set["elem"].remove(element)

    # -- rules -----------------------------------------------------------------------------------
    def _add_rule(self, spec: dict[str, Any]) -> None:
        table = self._table(spec["family"], spec["table"])
        self._chain(table, spec["chain"])
        for name in _set_references(spec):
            if name[1:] not in table.sets:
                raise _Refused(f"{_ENOENT} (set {name})")
        for target in _targets(spec):
            if target not in table.chains:
                raise _Refused(f"{_ENOENT} (chain {target})")
        table.rules[spec["chain"]].append({**_strip(spec), "handle": self._next_handle()})

    def _insert_rule(self, spec: dict[str, Any]) -> None:
        """At the top of its chain (`dockerguard trace --live`'s marking rule)."""
        self._add_rule(spec)
        rules = self._table(spec["family"], spec["table"]).rules[spec["chain"]]
        rules.insert(0, rules.pop())

    def _replace_rule(self, spec: dict[str, Any]) -> None:
        """`nft replace rule ... handle H`: the rule at that handle becomes `spec`, in its place."""
        table = self._table(spec["family"], spec["table"])
        self._chain(table, spec["chain"])
        rules = table.rules[spec["chain"]]
        index = next((i for i, rule in enumerate(rules) if rule["handle"] == spec["handle"]), None)
        if index is None:
            raise _Refused(f"{_ENOENT} (rule handle {spec['handle']})")
        rules[index] = {**_strip(spec), "handle": spec["handle"]}

    def _delete_rule(self, spec: dict[str, Any]) -> None:
        table = self._table(spec["family"], spec["table"])
        self._chain(table, spec["chain"])
        rules = table.rules[spec["chain"]]
        kept = [rule for rule in rules if rule["handle"] != spec["handle"]]
        if len(kept) == len(rules):
            raise _Refused(f"{_ENOENT} (rule handle {spec['handle']})")
        table.rules[spec["chain"]] = kept

    # -- listing ---------------------------------------------------------------------------------
    def _list(self, what: dict[str, Any]) -> list[dict[str, Any]]:
        (kind, spec), = what.items()
        if kind == "tables":
            return [{"table": _table_json(table)} for table in self.tables.values()]
        if kind == "flowtables":
            return []
        if kind == "chains":
            return [{"chain": chain} for table in self.tables.values() for chain in table.chains.values()]
        if kind == "table":
            table = self._table(spec["family"], spec["name"])
            return [{"table": _table_json(table)}, *({"set": copy.deepcopy(s)} for s in table.sets.values()),
                    *({"chain": dict(c)} for c in table.chains.values()),
                    *({"rule": _as_listed(rule)} for rule in _all_rules(table))]
        raise _Refused(f"listing {kind} is not supported by the fake kernel")

    def _metainfo(self) -> dict[str, Any]:
        return {"metainfo": {"version": self.version, "release_name": "fake", "json_schema_version": 1}}

    # -- helpers ---------------------------------------------------------------------------------
    def _table(self, family: str, name: str) -> _Table:
        try:
            return self.tables[(family, name)]
        except KeyError:
            raise _Refused(_ENOENT) from None

    @staticmethod
    def _chain(table: _Table, name: str) -> dict[str, Any]:
        if name not in table.chains:
            raise _Refused(_ENOENT)
        return table.chains[name]

    def _set(self, spec: dict[str, Any]) -> dict[str, Any]:
        table = self._table(spec["family"], spec["table"])
        if spec["name"] not in table.sets:
            raise _Refused(_ENOENT)
        return table.sets[spec["name"]]

    def _next_handle(self) -> int:
        self._handle += 1
        return self._handle


def _strip(spec: dict[str, Any]) -> dict[str, Any]:
    return {key: copy.deepcopy(value) for key, value in spec.items() if key != "handle"}


def _table_json(table: _Table) -> dict[str, Any]:
    listed: dict[str, Any] = {"family": table.family, "name": table.name, "handle": table.handle}
    if table.flags:
        listed["flags"] = list(table.flags)
    return listed


def _as_listed(rule: dict[str, Any]) -> dict[str, Any]:
    """A rule as nft 1.0 lists it: without a `meta l4proto P` that a following `P dport` match implies."""
    listed = copy.deepcopy(rule)
    expr = listed.get("expr", [])
    protocols = {item["payload"].get("protocol") for item in _walk(expr) if isinstance(item.get("payload"), dict)}
    listed["expr"] = [statement for index, statement in enumerate(expr)
                      if not (index + 1 < len(expr) and "match" in statement
                              and statement["match"].get("left") == {"meta": {"key": "l4proto"}}
                              and statement["match"].get("right") in protocols)]
    return listed


def _all_rules(table: _Table) -> list[dict[str, Any]]:
    return [rule for rules in table.rules.values() for rule in rules]


def _add_elements(nft_set: dict[str, Any], elements: list[Any]) -> None:
    for element in elements:
        if element not in nft_set["elem"]:
            nft_set["elem"].append(copy.deepcopy(element))


def _walk(value: Any) -> Any:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _set_references(rule: dict[str, Any]) -> set[str]:
    return {match["match"]["right"] for match in _walk(rule.get("expr", []))
            if "match" in match and isinstance(match["match"].get("right"), str)
            and match["match"]["right"].startswith("@")}


def _targets(rule: dict[str, Any]) -> set[str]:
    return {item[verb]["target"] for item in _walk(rule.get("expr", [])) for verb in ("jump", "goto")
            if verb in item and isinstance(item[verb], dict)}
