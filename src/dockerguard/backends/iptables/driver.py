"""`IptablesDriver`: what the iptables-nft and iptables-legacy drivers share.

Reading the live filter table with `<flavour>-save`, rendering with `rules`, snapshot/restore/remove as
layout transitions and the IPv4-then-IPv6 orchestration. A flavour (nft.py, legacy.py) only says how one
family's transaction is sent (`_send`) and how concurrent writers are kept out (`_lock`).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from ...errors import StateError, TransactionError
from ...model import Family, Role, Ruleset
from ...net import Network
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
from ..common import find_tool, iptables_binary, run_tool, tool_complaint
from . import ipsets, rules
from .rules import Layout

_WAIT = ("-w", "5")  # wait for the xtables lock (legacy) instead of failing when Docker holds it


@dataclass(frozen=True)
class IptablesPayload:
    """What `render` computed: the layouts it assumed, the layouts it aims for, the texts per family."""

    assumed: dict[Family, Layout]
    target: dict[Family, Layout]
    texts: dict[Family, str]


class IptablesDriver(Backend):
    """Shared driver logic; subclasses set `name`, `flavour` and implement `probe` and `_send`.

    `live=False` makes `render` assume `rules.BASELINE` instead of reading the kernel (golden files).
    """

    flavour: ClassVar[str]  # binary suffix: "nft" or "legacy"

    def __init__(self, live: bool = True) -> None:
        self.live = live

    @classmethod
    def binary(cls, family: Family, suffix: str = "") -> str:
        """`binary(Family.IPV6, "-save")` -> "ip6tables-nft-save"."""
        return iptables_binary(cls.flavour, family, suffix)

    _wait_supported: ClassVar[bool | None] = None

    @classmethod
    def _wait_args(cls) -> tuple[str, ...]:
        """`-w 5` if this flavour's restore accepts it (an empty test transaction tells)."""
        if cls._wait_supported is None:
            proc = run_tool([cls.binary(Family.IPV4, "-restore"), *_WAIT, "--test", "--noflush"],
                            input="*filter\nCOMMIT\n")
            cls._wait_supported = proc.returncode == 0
        return _WAIT if cls._wait_supported else ()

    def _restore(self, family: Family, text: str) -> None:
        """One `<flavour>-restore --noflush` call: one atomic transaction for the family."""
        argv = [self.binary(family, "-restore"), *self._wait_args(), "--noflush"]
        try:
            proc = run_tool(argv, input=text)
        except (OSError, subprocess.SubprocessError) as exc:
            raise TransactionError(f"cannot run {argv[0]}: {exc}") from exc
        if proc.returncode != 0:
            raise TransactionError(f"{argv[0]} refused the {rules.family_label(family)} transaction: "
                                   f"{tool_complaint(proc)}")

    # -- hooks for the flavours ------------------------------------------------------------------
    def _send(self, family: Family, text: str) -> None:
        """Send one family's restore text as ONE atomic transaction, or raise TransactionError."""
        raise NotImplementedError

    def _lock(self, target: Iterable[Layout] = ()) -> contextlib.AbstractContextManager[object]:
        """Held from reading the table to committing `target`; nft transactions need no lock."""
        return contextlib.nullcontext()

    # -- reading ---------------------------------------------------------------------------------
    def read_table(self, family: Family) -> rules.FilterTable:
        # No `-t filter`: with it iptables-legacy-save would instantiate an absent legacy table.
        argv = [self.binary(family, "-save"), "-c"]
        try:
            proc = run_tool(argv)
        except (OSError, subprocess.SubprocessError) as exc:
            raise TransactionError(f"cannot run {argv[0]}: {exc}") from exc
        if proc.returncode != 0:
            raise TransactionError(f"{argv[0]} failed: {tool_complaint(proc)}")
        try:
            return rules.parse_save(proc.stdout)
        except ValueError as exc:
            raise TransactionError(f"cannot parse {argv[0]} output: {exc}") from None

    def _layouts(self) -> dict[Family, Layout]:
        sets, specs = self._read_sets()
        return {family: rules.layout_of(self.read_table(family), sets.get(family), specs.get(family))
                for family in Family}

    # -- ipsets ----------------------------------------------------------------------------------
    @staticmethod
    def ipsets_usable() -> bool:
        """Large source groups become ipsets when the `ipset` tool is here (probe says whether)."""
        return find_tool("ipset") is not None

    def _use_ipsets(self) -> bool:
        return self.live and self.ipsets_usable()

    def _read_sets(self) -> tuple[dict[Family, dict[str, ipsets.Members]], dict[Family, dict[str, str]]]:
        """Our ipsets (by name prefix) per family: their members, and their declarations; none when `ipset`
        is not installed."""
        members: dict[Family, dict[str, ipsets.Members]] = {}
        specs: dict[Family, dict[str, str]] = {}
        if not self.ipsets_usable():
            return members, specs
        proc = self._ipset(["save"])
        for name, (family, content, spec) in ipsets.parse_save(proc.stdout).items():
            members.setdefault(family, {})[name] = content
            specs.setdefault(family, {})[name] = spec
        return members, specs

    def _ipset(self, argv: Sequence[str], text: str | None = None, *, check: bool = True
               ) -> subprocess.CompletedProcess[str]:
        try:
            proc = run_tool(["ipset", *argv], input=text)
        except (OSError, subprocess.SubprocessError) as exc:
            raise TransactionError(f"cannot run ipset: {exc}") from exc
        if check and proc.returncode != 0:
            raise TransactionError(f"ipset {argv[0]} failed: {tool_complaint(proc)}")
        return proc

    def _create_sets(self, current: dict[Family, Layout], target: dict[Family, Layout]) -> list[str]:
        """Create (one `ipset restore`) the target's sets that do not exist yet; their names say their
        content, so an existing one is reused, unless someone changed it (members, `nomatch`, timeouts):
        then it is filled anew and swapped in. Returns the names created."""
        have = {name for layout in current.values() for name, _ in layout.sets}
        create = {name: (family, members) for family, layout in target.items() for name, members in layout.sets
                  if name not in have}
        tampered = {name for family, layout in target.items() if family in current
                    for name in current[family].tampered_sets(layout, family)}
        replace = {name: (family, members) for family, layout in target.items() for name, members in layout.sets
                   if name in tampered}
        text = ipsets.restore_text(create, replace) if create or replace else ""
        if any(ban in spec for layout in target.values() for _, specs in layout.chains for spec in specs
               for ban in ipsets.BAN_SETS.values()):
            text += ipsets.ban_restore_text(self._ipset(["list", "-n"]).stdout.split())
        if text:
            self._ipset(["restore"], text)
        return sorted(create)

    def _destroy_sets(self, names: Sequence[str]) -> None:
        """Destroy sets nothing references any more; one still in use (e.g. by the other iptables flavour's
        rules) stays, and the next apply or remove tries again. Without the ipset tool there are none."""
        if not self.ipsets_usable():
            return
        for name in names:
            self._ipset(["destroy", name], check=False)

    # -- Backend ---------------------------------------------------------------------------------
    def exposure(self, state: InstalledState | None) -> Exposure:
        return rules.exposure_of(state)

    # -- bans: the ipsets dockerguard-ban4/6 ----------------------------------------------------------
    def ban(self, network: Network, timeout: int | None) -> None:
        name = self._ban_set(network)
        self._ipset(["add", name, str(network), *(["timeout", str(timeout)] if timeout is not None else []),
                     "-exist"])

    def unban(self, network: Network) -> bool:
        return self._ipset(["del", self._ban_set(network), str(network)], check=False).returncode == 0

    def bans(self) -> tuple[Ban, ...]:
        found = []
        for family in Family:
            self._ban_set_of(family)
            for line in self._ipset(["save", ipsets.BAN_SETS[family]]).stdout.split("\n"):
                words = line.split()
                if len(words) >= 3 and words[0] == "add":
                    expires = int(words[words.index("timeout") + 1]) if "timeout" in words else None
                    member = words[2] if "/" in words[2] else f"{words[2]}/{32 if family is Family.IPV4 else 128}"
                    found.append(Ban(member, expires or None))
        return tuple(found)

    def _ban_set(self, network: Network) -> str:
        return self._ban_set_of(Family.IPV4 if network.version == 4 else Family.IPV6)

    def _ban_set_of(self, family: Family) -> str:
        name = ipsets.BAN_SETS[family]
        if not self.ipsets_usable() or self._ipset(["list", "-n", name], check=False).returncode != 0:
            raise StateError(f"the ban set {name} is not there: apply a policy with bans enabled first "
                             "(the iptables drivers keep bans in ipsets: install ipset)")
        return name

    def is_host_chain(self, chain: str) -> bool:
        return chain.split()[-1] == rules.HOST_CHAIN  # rules read "ipv4 DOCKERGUARD-HOST"

    def origins(self, ruleset: Ruleset) -> dict[tuple[str, str], RuleOrigin]:
        return rules.origins(ruleset, self._use_ipsets())

    def chain_role(self, chain: str) -> tuple[Role | None, Family | None]:
        return rules.chain_role(chain)

    def render(self, ruleset: Ruleset) -> Rendered:
        assumed, note = self._assumed()
        target = {family: rules.target_layout(ruleset, family, self._use_ipsets()) for family in Family}
        texts = {family: rules.restore_text(family, rules.transition(assumed[family], target[family]), note)
                 for family in Family}
        return Rendered(self.name, "".join(texts.values()), IptablesPayload(assumed, target, texts))

    def render_persistent(self, ruleset: Ruleset, family: Family) -> str:
        """A self-contained file for a fresh boot, loaded before Docker starts (iptables-persistent's
        rules.v4 / rules.v6): it creates DOCKER-USER and FORWARD's jump to it, which dockerd then keeps.
        Both flavours load the same text."""
        nothing_yet = Layout(user_chain=False, managed=(), chains=())
        lines = rules.transition(nothing_yet, rules.target_layout(ruleset, family, self._use_ipsets()))
        return rules.restore_text(family, lines, "for boot, before Docker starts: creates DOCKER-USER and the jumps")

    def render_persistent_sets(self, ruleset: Ruleset) -> str:
        """ipset-persistent's file: the ban sets and the content sets the rules match (`ipset restore`)."""
        if not self._use_ipsets():
            return ""
        layouts = [rules.target_layout(ruleset, family, True) for family in Family]
        sets = {name: (family, members) for family, layout in zip(Family, layouts) for name, members in layout.sets}
        bans = any(ban in spec for layout in layouts for _, specs in layout.chains for spec in specs
                   for ban in ipsets.BAN_SETS.values())
        return (ipsets.ban_restore_text(()) if bans else "") + (ipsets.restore_text(sets) if sets else "")

    def _assumed(self) -> tuple[dict[Family, Layout], str | None]:
        """The live layouts when readable (the text is then exactly what apply sends now), else the
        baseline, said so in a comment line of the text."""
        if self.live:
            with contextlib.suppress(OSError, subprocess.SubprocessError, TransactionError):
                return self._layouts(), None
        return {family: rules.BASELINE for family in Family}, rules.BASELINE_NOTE

    def apply(self, rendered: Rendered) -> None:
        """ipsets the new rules need first, then the rules of each family in one transaction each, then
        the ipsets nothing uses any more. A failure destroys what was created and puts back what was sent."""
        payload: IptablesPayload = rendered.payload
        with self._lock(payload.target.values()):
            before = self._layouts()
            created = self._create_sets(before, payload.target)
            sent: list[Family] = []
            for family in Family:
                text = payload.texts[family]
                if before[family].key != payload.assumed[family].key:
                    # The table changed since render (or render could not read it): the same target,
                    # reached from what is there now.
                    text = rules.restore_text(family, rules.transition(before[family], payload.target[family]))
                try:
                    self._send(family, text)
                except TransactionError as exc:
                    # Two families are two transactions: never leave IPv4 new and IPv6 old.
                    error = self._undo(sent, before, exc) if sent else exc
                    self._destroy_sets(created)
                    raise error from exc
                sent.append(family)
            self._destroy_sets(_unused(before, payload.target))

    def _undo(self, sent: Sequence[Family], before: dict[Family, Layout],
              cause: TransactionError) -> TransactionError:
        """Put the families already sent back as they were; the error to raise says how that went."""
        for family in sent:
            try:
                self._restore_family(family, before[family])
            except TransactionError as exc:
                return TransactionError(f"{cause}; putting {rules.family_label(family)} back failed too: {exc}")
        return TransactionError(f"{cause}; {', '.join(map(rules.family_label, sent))} put back as before")

    def installed(self) -> InstalledState | None:
        return rules.installed_state(self.name, {family: self.read_table(family) for family in Family},
                                     *self._read_sets())

    def expected(self, ruleset: Ruleset) -> InstalledState:
        return rules.expected_state(self.name, ruleset, self._use_ipsets())

    def snapshot(self) -> Snapshot:
        return self.read()[1]

    def read(self) -> tuple[InstalledState | None, Snapshot]:
        tables = {family: self.read_table(family) for family in Family}
        sets, specs = self._read_sets()
        layouts = {family: rules.layout_of(table, sets.get(family), specs.get(family))
                   for family, table in tables.items()}
        data = {rules.family_label(family): layout.to_json() for family, layout in layouts.items()}
        return rules.installed_state(self.name, tables, sets, specs), Snapshot(self.name, data)

    def restore(self, snapshot: Snapshot) -> None:
        errors: list[str] = []
        data = snapshot.data if isinstance(snapshot.data, dict) else {}  # from_json refuses what is missing
        wanted = {family: Layout.from_json(data.get(rules.family_label(family))) for family in Family}
        with self._lock(wanted.values()):
            before = self._layouts()
            self._create_sets(before, wanted)
            for family in Family:
                try:
                    self._restore_family(family, wanted[family])
                except TransactionError as exc:
                    errors.append(str(exc))  # still try the other family
            if not errors:
                self._destroy_sets(_unused(before, wanted))
        if errors:
            raise TransactionError("; ".join(errors))

    def _restore_family(self, family: Family, snapshot: Layout) -> None:
        sets, specs = self._read_sets()
        current = rules.layout_of(self.read_table(family), sets.get(family), specs.get(family))
        target = rules.restore_target(current, snapshot)
        if current.rules_key != target.rules_key:
            self._send(family, rules.restore_text(family, rules.transition(current, target)))

    def path_report(self) -> tuple[PathFinding, ...]:
        """Are our chains reached first, in both families? Also warns about rules in the other iptables
        flavour, whose hooks run as well (read-only, plain dumps)."""
        other = "legacy" if self.flavour == "nft" else "nft"
        findings: list[PathFinding] = []
        for family in Family:
            layout = rules.layout_of(self.read_table(family))
            if not layout.installed:
                continue
            other_save = iptables_binary(other, family, "-save")
            other_table = None
            with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
                proc = run_tool([other_save])  # a plain dump creates no table
                other_table = rules.parse_save(proc.stdout) if proc.returncode == 0 else None
            findings += _path_findings(rules.family_label(family), layout, f"iptables-{other}", other_table)
        return tuple(findings)

    def remove(self) -> None:
        with self._lock():
            before = self._layouts()
            for family, current in before.items():
                if current.installed:
                    self._send(family, rules.restore_text(
                        family, rules.transition(current, rules.removal_target(current))))
            self._destroy_sets([*_unused(before, {}), *ipsets.BAN_SETS.values()])


def _unused(before: dict[Family, Layout], target: dict[Family, Layout]) -> list[str]:
    """Our sets in `before` that `target` does not use."""
    wanted = {name for layout in target.values() for name, _ in layout.sets}
    return sorted(name for layout in before.values() for name, _ in layout.sets if name not in wanted)


def _path_findings(label: str, layout: Layout, other: str, other_table: rules.FilterTable | None
                   ) -> list[PathFinding]:
    """Is each of our chains reached first? `other_table` is the other iptables flavour's table,
    whose hooks run too (what it drops never reaches us)."""
    findings: list[PathFinding] = []
    forward = [position for chain, position, spec in layout.managed
               if chain == rules.FORWARD_CHAIN and spec == rules.FORWARD_JUMP]
    if forward == [1]:
        findings.append(PathFinding("ok", f"{label}: FORWARD rule 1 jumps to DOCKER-USER"))
    elif not forward:
        findings.append(PathFinding("warning", f"{label}: nothing in FORWARD jumps to DOCKER-USER: "
                                               "forwarded traffic never reaches our rules"))
    else:
        findings.append(PathFinding("warning", f"{label}: FORWARD jumps to DOCKER-USER at rule(s) "
                                               f"{', '.join(map(str, forward))}; the rules before decide first"))
    ours = {name for name, _ in layout.chains}
    for chain, guard in ((rules.USER_CHAIN, rules.GUARD_CHAIN), (rules.INPUT_CHAIN, rules.INBOUND_CHAIN)):
        positions = [position for where, position, spec in layout.managed
                     if where == chain and rules.jump_target(spec) == guard]
        if guard not in ours and not positions:
            continue
        if positions and positions == list(range(1, len(positions) + 1)):
            findings.append(PathFinding("ok", f"{label}: {chain} rules 1-{len(positions)} jump to {guard}"))
        else:
            findings.append(PathFinding("warning", f"{label}: {chain} jumps to {guard} at rule(s) "
                                                   f"{', '.join(map(str, positions)) or 'none'}, not first"))
    if other_table is not None:
        for chain in (rules.FORWARD_CHAIN, rules.INPUT_CHAIN):
            count = len(other_table.chain(chain))
            if count:
                findings.append(PathFinding("warning", f"{label}: {other} also has {count} {chain} rule(s); "
                                                       "its hooks run too, and what they drop never reaches us"))
    return findings


def ipset_detail() -> tuple[str, str]:
    """The probe's word on ipsets."""
    if find_tool("ipset") is None:
        return "ipsets", "no: install ipset (without it a large source list costs one rule per source)"
    proc = run_tool(["ipset", "list", "-n"])
    if proc.returncode != 0:
        return "ipsets", f"no: ipset cannot list sets ({tool_complaint(proc)})"
    return "ipsets", "yes: a large source group is one hash:net set, matched in one rule per port span"


def probe_binaries(cls: type[IptablesDriver], tools: Sequence[str]) -> ProbeResult | None:
    """The common probe steps; None when they all pass. `tools` are the binary suffixes needed."""
    missing = [cls.binary(family, suffix) for family in Family for suffix in tools
               if find_tool(cls.binary(family, suffix)) is None]
    if missing:
        return ProbeResult(cls.name, False, f"missing {', '.join(missing)} (install the iptables package)")
    try:
        return _probe_kernel(cls)
    except (OSError, subprocess.SubprocessError) as exc:
        return ProbeResult(cls.name, False, f"cannot run the iptables tools: {exc}")


def _probe_kernel(cls: type[IptablesDriver]) -> ProbeResult | None:
    for family in Family:
        help_text = run_tool([cls.binary(family), "-m", "conntrack", "--help"])
        if "--ctorigdstport" not in help_text.stdout:
            return ProbeResult(cls.name, False, f"{cls.binary(family)} lacks the conntrack match with "
                                                "--ctorigdstport (libxt_conntrack)")
        saved = run_tool([cls.binary(family, "-save")])
        if saved.returncode != 0:
            return ProbeResult(cls.name, False, f"cannot read the {rules.family_label(family)} filter table: "
                                                f"{tool_complaint(saved)} (needs root / CAP_NET_ADMIN)")
    return None
