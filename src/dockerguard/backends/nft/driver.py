"""Native nftables driver: one table of our own, `inet dockerguard`, replaced in one libnftables JSON
transaction (render.py builds it, readback.py reads it back, text.py writes it as an `nft -f` file).

Every kernel call goes through an `NftClient`: libnftables by default, `FakeNftKernel` in tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from ...errors import DockerguardError, StateError, TransactionError
from ...model import AllowRule, Family, Role, Ruleset, Verdict
from ...net import Network, PortRange, parse_network
from ..base import (
    Backend,
    Ban,
    Exposure,
    InstalledState,
    PathFinding,
    ProbeResult,
    Rendered,
    RuleOrigin,
    Snapshot,
)
from ..common import NFT_BANS_TABLE, NFT_CHAIN, NFT_SET_PREFIX, NFT_TABLE
from .libnft import Libnftables, NftClient, metainfo_version, version_tuple
from .readback import dynamic_set, element_texts, exposure_of, path_findings, state_of
from .render import (
    BANS_TABLE,
    DELETE_BANS,
    REPLACE_TABLE,
    TABLE,
    Transaction,
    transaction,
    upkeep_commands,
)
from .render import (
    address_value as _address,
)

_OBJECT_KINDS = ("chain", "set", "rule")  # what a snapshot holds and restores
_LISTED_KINDS = ("table", *_OBJECT_KINDS)  # what read-back compares (a table's flags decide packets too)
_TABLE_FLAG_BITS = ((1, "dormant"), (2, "owner"), (4, "persist"))  # NFT_TABLE_F_*


class NftBackend(Backend):
    name = "nft"

    def __init__(self, client: NftClient | None = None) -> None:
        self.client: NftClient = client or Libnftables()
        self._rendered: tuple[Ruleset, Transaction] | None = None  # plan renders and expects one ruleset
        self._nft_version: str | None = None

    # -- probing ---------------------------------------------------------------------------------
    @classmethod
    def probe(cls) -> ProbeResult:
        try:
            import nftables  # noqa: F401
        except ImportError as exc:
            return ProbeResult(cls.name, False, f"Python module 'nftables' missing ({exc}); "
                                                "install pip-nftables and libnftables1")
        return cls(Libnftables()).probe_client()

    def availability(self) -> ProbeResult:
        return self.probe() if isinstance(self.client, Libnftables) else self.probe_client()

    def probe_client(self) -> ProbeResult:
        """Can this client's kernel take our ruleset form? Checked without committing anything."""
        try:  # an always empty listing, for its metainfo (see `_version`)
            rc, output, error = self.client.json_cmd({"nftables": [{"list": {"flowtables": {"family": "arp"}}}]},
                                                     json_output=True)
        except OSError as exc:
            return ProbeResult(self.name, False, f"libnftables cannot be loaded ({exc}); install libnftables1")
        if rc != 0:
            return ProbeResult(self.name, False, f"cannot list nftables objects: {error.strip()} "
                                                 "(needs root / CAP_NET_ADMIN)")
        version = metainfo_version(output)
        # Concatenated interval sets and `ct original proto-dst` appeared in different releases.
        rc, _, error = self.client.json_cmd(transaction(_PROBE_RULESET).payload, dry_run=True)
        details = (("nft", version),)
        if rc != 0:
            return ProbeResult(self.name, False, f"nft {version} rejects the ruleset form: {error.strip()}",
                               details)
        note = (" (lists IPv6 prefixes inside concatenations as /64 and per-source limits without their rate "
                "and burst: read-back compares those elements' addresses, not their prefix lengths, and not "
                "those rates and bursts)" if version_tuple(version) < (1, 0) else "")
        return ProbeResult(self.name, True, f"libnftables {version}{note}", details)

    # -- rendering -------------------------------------------------------------------------------
    def transaction(self, ruleset: Ruleset) -> Transaction:
        if self._rendered is None or self._rendered[0] is not ruleset:
            self._rendered = (ruleset, transaction(ruleset))
        return self._rendered[1]

    def render(self, ruleset: Ruleset) -> Rendered:
        built = self.transaction(ruleset)
        return Rendered(self.name, lambda: built.text, built.payload)

    def expected(self, ruleset: Ruleset) -> InstalledState:
        return state_of(self.transaction(ruleset).state_objects, self._old_nft())

    def render_persistent(self, ruleset: Ruleset, family: Family) -> str:
        """The same transaction as `render`, written as an `nft -f` file (both families: one inet table)."""
        from .text import json_to_text

        return json_to_text(self.transaction(ruleset).payload)

    # -- kernel I/O ------------------------------------------------------------------------------
    def apply(self, rendered: Rendered) -> None:
        self._send(rendered.payload, "nftables refused the transaction")

    def installed(self) -> InstalledState | None:
        objects = self._list_table()
        return None if objects is None else state_of(objects, self._old_nft())

    def snapshot(self) -> Snapshot:
        """Our table's chains, sets and rules as listed (counters included), as JSON data; None: no table."""
        return self.read()[1]

    def read(self) -> tuple[InstalledState | None, Snapshot]:
        objects = self._list_table()  # one listing for both: a large set costs as much to list as to load
        if objects is None:
            return None, Snapshot(self.name, None)
        return (state_of(objects, self._old_nft()),
                Snapshot(self.name, [_snapshot_form(item) for item in objects if "table" not in item]))

    def generation(self) -> int | None:
        return self.client.generation()

    def restore(self, snapshot: Snapshot) -> None:
        if snapshot.data is None:
            self.remove()
            return
        objects = _checked_snapshot(snapshot.data)
        # Rules after the chains and sets they use: nft 0.9.8 (bullseye) lists sets after the rules.
        ours = tuple(sorted((item for item in objects if next(iter(item.values()))["table"] == NFT_TABLE),
                            key=lambda item: "rule" in item))
        bans = [item for item in objects if next(iter(item.values()))["table"] == NFT_BANS_TABLE]
        self._send(Transaction(REPLACE_TABLE, ours, upkeep_commands(bans) if bans else DELETE_BANS).payload,
                   "nftables refused to restore the snapshot")

    def remove(self) -> None:
        self._send({"nftables": [*REPLACE_TABLE[:2], *DELETE_BANS]}, f"cannot delete table inet {NFT_TABLE}")

    def exposure(self, state: InstalledState | None) -> Exposure:
        return exposure_of(state)

    # -- bans ------------------------------------------------------------------------------------
    def ban(self, network: Network, timeout: int | None) -> None:
        value: Any = _address(network)
        if timeout is not None:
            value = {"elem": {"val": value, "timeout": timeout}}
        self._ban_command("add", network, [value])

    def unban(self, network: Network) -> bool:
        if not any(ban.network == str(network) for ban in self.bans()):
            return False
        self._ban_command("delete", network, [_address(network)])
        return True

    def bans(self) -> tuple[Ban, ...]:
        found = []
        for family in Family:
            rc, output, error = self.client.json_cmd({"nftables": [{"list": {"set": {
                "family": "inet", "table": NFT_BANS_TABLE, "name": f"bans_v{family.value}"}}}]}, json_output=True)
            if rc != 0:
                raise _no_ban_sets(error)
            for item in json.loads(output)["nftables"]:
                for elem in item.get("set", {}).get("elem", []):
                    expires = elem["elem"].get("expires") if isinstance(elem, dict) and "elem" in elem else None
                    value = elem["elem"]["val"] if isinstance(elem, dict) and "elem" in elem else elem
                    found += [Ban(text, None if expires is None else int(expires))
                              for text in element_texts(value, kind="address")]
        return tuple(found)

    def _ban_command(self, verb: str, network: Network, elements: list[Any]) -> None:
        element = {"family": "inet", "table": NFT_BANS_TABLE, "name": f"bans_v{network.version}", "elem": elements}
        rc, _, error = self.client.json_cmd({"nftables": [{verb: {"element": element}}]})
        if rc != 0:
            raise _no_ban_sets(error) if "No such file" in error else TransactionError(
                f"nftables refused to {verb} {network} in the ban set: {error.strip()}")

    def is_host_chain(self, chain: str) -> bool:
        return chain == NFT_CHAIN[Role.HOST]

    def origins(self, ruleset: Ruleset) -> dict[tuple[str, str], RuleOrigin]:
        from .origins import origins

        return origins(ruleset)

    def chain_role(self, chain: str) -> tuple[Role | None, Family | None]:
        from .origins import chain_role

        return chain_role(chain)

    def live_trace(self, source: Network, proto: str, port: int, path: str, seconds: float,
                   locked: Callable[[], AbstractContextManager[object]]) -> tuple[Any, ...]:
        from .live import watch

        return watch(self.client, source, proto, port, path, seconds, locked)

    def is_host_set(self, name: str) -> bool:
        return name.startswith(f"{NFT_SET_PREFIX[Role.HOST]}_")

    def path_report(self) -> tuple[PathFinding, ...]:
        """Which other base chains on our hooks run before ours (all tables, read-only)."""
        rc, output, error = self.client.json_cmd({"nftables": [{"list": {"chains": {}}}]}, json_output=True)
        if rc != 0:
            raise TransactionError(f"cannot list nftables chains: {error.strip()}")
        return path_findings([item["chain"] for item in json.loads(output)["nftables"] if "chain" in item])

    # -- helpers ---------------------------------------------------------------------------------
    def _send(self, payload: dict[str, Any], what: str) -> None:
        rc, _, error = self.client.json_cmd(payload)
        if rc != 0:
            raise TransactionError(f"{what}: {error.strip()}")

    def _list_table(self) -> list[dict[str, Any]] | None:
        """Our tables and their objects as the kernel lists them (the bans table's after the main one's);
        None when the main table does not exist."""
        objects = self._list(TABLE)
        if objects is None:
            return None
        return objects + (self._list(BANS_TABLE) or [])

    def _list(self, table: dict[str, str]) -> list[dict[str, Any]] | None:
        flags = self.client.table_flags(table["name"])
        if flags and version_tuple(self._version()) < (1, 1):
            # nft before 1.1 cannot list a table with flags in JSON: garbage, a cut-off listing, or (1.0.6) a
            # crash of this process. Such a table (dormant: switched off) decides nothing; apply replaces it.
            return [{"table": {**table, "flags": [name for bit, name in _TABLE_FLAG_BITS if flags & bit] or ["?"]}}]
        rc, output, error = self.client.json_cmd({"nftables": [{"list": {"table": table}}]}, json_output=True)
        if rc != 0:
            if "No such file or directory" in error:
                return None
            raise TransactionError(f"cannot list table inet {table['name']}: {error.strip()}")
        if self._nft_version is None:
            self._nft_version = metainfo_version(output)
        try:
            listed = json.loads(output)["nftables"]
        except (ValueError, KeyError, TypeError):
            raise TransactionError(f"nft listed table inet {table['name']} as invalid JSON") from None
        return [item for item in listed if any(kind in item for kind in _LISTED_KINDS)]

    def _old_nft(self) -> bool:
        """nft before 1.0 (Debian 11's 0.9.8) lists less than the kernel holds: every IPv6 prefix inside a
        concatenation as /64, a set statement without its limit (a newer nft lists both correctly). With such
        an nft, read-back compares those elements' addresses, not their prefix lengths, and not the limits."""
        return version_tuple(self._version()) < (1, 0)

    def _version(self) -> str:
        """libnftables' version, from the metainfo of a listing that is always empty (flowtables of the arp
        family): listing tables could meet one with flags, which old versions cannot write (see `_list`)."""
        if self._nft_version is None:
            _, output, _ = self.client.json_cmd({"nftables": [{"list": {"flowtables": {"family": "arp"}}}]},
                                                json_output=True)
            self._nft_version = metainfo_version(output)
        return self._nft_version


def _no_ban_sets(error: str) -> DockerguardError:
    return StateError(f"the ban sets (table inet {NFT_BANS_TABLE}) are not there: apply a policy with bans "
                      f"enabled first ({error.strip() or 'no such table'})")


def _snapshot_form(item: dict[str, Any]) -> dict[str, Any]:
    """A listed object as we keep it: no handle; no elements of the sets whose elements are not ours to
    restore (bans others wrote, limits' per-source state)."""
    (kind, body), = item.items()
    dropped = {"handle", "elem"} if kind == "set" and dynamic_set(body["name"]) else {"handle"}
    return {kind: {key: value for key, value in body.items() if key not in dropped}}


def _checked_snapshot(data: Any) -> tuple[dict[str, Any], ...]:
    """A snapshot is data from the state directory: only chains, sets and rules of our own table pass,
    so restoring it can never touch another table."""
    if not isinstance(data, list):
        raise StateError("the nft snapshot is not a list of objects (written by an older dockerguard?): "
                         "refusing to restore it")
    objects = []
    for item in data:
        if not (isinstance(item, dict) and len(item) == 1):
            raise StateError(f"the nft snapshot holds a malformed object: {item!r:.100}")
        (kind, body), = item.items()
        if kind not in _OBJECT_KINDS or not isinstance(body, dict):
            raise StateError(f"the nft snapshot holds a {kind!r} object: only chains, sets and rules are restored")
        if body.get("family") != "inet" or body.get("table") not in (NFT_TABLE, NFT_BANS_TABLE):
            raise StateError(f"the nft snapshot names table {body.get('family')} {body.get('table')}, "
                             f"not inet {NFT_TABLE}: refusing to restore it")
        objects.append({kind: body})
    return tuple(objects)


# One of each form we render, checked with the kernel (dry run) by probe().
_PROBE_RULESET = Ruleset(("eth0",), Verdict.REJECT, True, (AllowRule(
    Family.IPV4, "tcp", (parse_network("192.0.2.0/24"),), (PortRange(80, 81),), "probe"),))
