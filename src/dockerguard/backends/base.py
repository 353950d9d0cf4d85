"""The one interface every firewall driver implements.

A driver turns a Ruleset into the exact text/JSON it sends (`render`), sends it in one atomic
transaction (`apply`), reads back what is installed (`installed`), and can snapshot, restore and
remove its own objects. Drivers never print and never hold UI text beyond error causes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import BackendUnavailable, UsageError
from ..model import Family, Role, Ruleset
from ..net import Network


@dataclass(frozen=True)
class ProbeResult:
    """Whether a driver can work on this host, and why not."""

    backend: str
    available: bool
    reason: str
    details: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Rendered:
    """Exactly what `apply` will send: `text` for humans and golden files, `payload` for the driver.
    The text may be given as a function that writes it: apply never shows it, and writing 100,000 set
    elements costs 0.1 s."""

    backend: str
    text_or_writer: str | Callable[[], str] = field(repr=False)
    payload: Any = field(compare=False, repr=False)

    @property
    def text(self) -> str:
        return self.text_or_writer if isinstance(self.text_or_writer, str) else self.text_or_writer()


@dataclass(frozen=True)
class InstalledRule:
    """One installed rule: `description` names it for people (the iptables drivers: the whole rule spec;
    nft: its comment and verdict), `body` is the rest of what decides its packets, normalised (nft: every
    match and statement; "" where the description says it all). Both are compared; counters are reported,
    never compared."""

    chain: str
    description: str
    packets: int = field(default=0, compare=False)
    bytes: int = field(default=0, compare=False)
    body: str = ""

    @property
    def text(self) -> str:
        """The rule as one line: its description, and its body when that says more."""
        return f"{self.description} :: {self.body}" if self.body else self.description


@dataclass(frozen=True)
class InstalledState:
    """What a driver's objects in the kernel amount to, in a form comparable with `expected()`: equal
    states decide every packet alike.

    `hooks` are facts about how traffic reaches our rules (chain hook/priority/policy, the jump from
    DOCKER-USER, table flags, ...), `rules` every rule of our chains in order, `sets` normalised set
    contents, `set_specs` each set's declaration (type, flags; ipsets: also members' options).
    `partial`: read from a record written before rule bodies and set declarations were kept (compare
    with `labels()` of a read-back)."""

    backend: str
    hooks: tuple[str, ...]
    rules: tuple[InstalledRule, ...]
    sets: tuple[tuple[str, tuple[str, ...]], ...] = ()
    set_specs: tuple[tuple[str, str], ...] = ()
    partial: bool = field(default=False, compare=False)

    def labels(self) -> InstalledState:
        """This state as an older dockerguard recorded it: rules by description only, no set declarations."""
        return InstalledState(self.backend, self.hooks, tuple(InstalledRule(rule.chain, rule.description)
                                                              for rule in self.rules), self.sets, (), True)

    def matches(self, recorded: InstalledState | None) -> bool:
        """Is this read-back what `recorded` says (compared as far as the record goes)?"""
        if recorded is not None and recorded.partial:
            return self.labels() == recorded
        return self == recorded


@dataclass(frozen=True)
class PathFinding:
    """One fact about how traffic reaches our rules. `level` is "ok", "warning" (something runs before
    us and can decide first) or "info" (reported by the driver, not judged)."""

    level: str
    message: str


Span = tuple[str, int, int]  # (source network, first port, last port)


@dataclass(frozen=True)
class Exposure:
    """What installed rules let through, read back from an InstalledState (`dockerguard audit`).

    `judged` are the (role, family) pairs whose chain is reached from its hook (or dispatch) and ends in
    a default drop/reject; elsewhere dockerguard lets everything pass. `allowed[(role, family, proto)]`
    are the (source, port range) pairs that pass new connections; `dispatched[(family, proto)]` the port
    ranges the INPUT side sends to the PROXY chain."""

    judged: frozenset[tuple[Role, Family]] = frozenset()
    allowed: dict[tuple[Role, Family, str], tuple[Span, ...]] = field(default_factory=dict)
    dispatched: dict[tuple[Family, str], tuple[tuple[int, int], ...]] = field(default_factory=dict)

    def sources(self, role: Role, family: Family, proto: str, port: int) -> tuple[str, ...] | None:
        """Who may open a connection to `port`; None: anyone (the path is not judged)."""
        if (role, family) not in self.judged:
            return None
        if role is Role.PROXY and not any(first <= port <= last
                                          for first, last in self.dispatched.get((family, proto), ())):
            return None
        return tuple(sorted({net for net, first, last in self.allowed.get((role, family, proto), ())
                             if first <= port <= last}))


@dataclass(frozen=True)
class Ban:
    """A banned source, and for how many more seconds (None: until unbanned)."""

    network: str
    expires_in: int | None = None


# What a rule does for the policy (RuleOrigin.kind).
RULE_KINDS = ("allow", "limit", "deny", "default", "ban", "established", "dispatch", "hook", "log", "egress", "other")


@dataclass(frozen=True)
class RuleOrigin:
    """Which part of the ruleset an installed rule renders: `kind` (RULE_KINDS), the `role` of its chain,
    its `family` (None: both, as nft's inet chains), and the indexes of the AllowRules (in `Ruleset.allows`,
    or `HostRules.allows` on the HOST role) or DenyRules (`Ruleset.denies`) it carries. A rule carrying
    several allows (an nft set, an ipset group) counts for all of them together."""

    kind: str
    role: Role | None = None
    family: Family | None = None
    allows: tuple[int, ...] = ()
    denies: tuple[int, ...] = ()


@dataclass(frozen=True)
class RuleCounter:
    """One installed rule (as `InstalledState` names it) with its counters and its origin."""

    chain: str
    rule: str
    origin: RuleOrigin
    packets: int
    bytes: int


@dataclass(frozen=True)
class Snapshot:
    """Enough to put a driver's objects back exactly as they were; `data` is JSON-serialisable."""

    backend: str
    data: Any


class Backend(ABC):
    """A firewall driver. Subclasses are registered by `name` in `dockerguard.backends`."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def probe(cls) -> ProbeResult:
        """Can this driver work here? Must be cheap and must not change anything."""

    @abstractmethod
    def render(self, ruleset: Ruleset) -> Rendered:
        """The exact transaction `apply` would send, without sending it."""

    @abstractmethod
    def apply(self, rendered: Rendered) -> None:
        """Replace our objects with `rendered` in ONE atomic kernel transaction."""

    @abstractmethod
    def installed(self) -> InstalledState | None:
        """Read back our objects; None when nothing of ours is installed."""

    @abstractmethod
    def expected(self, ruleset: Ruleset) -> InstalledState:
        """What `installed()` returns right after applying `ruleset`."""

    @abstractmethod
    def snapshot(self) -> Snapshot:
        """Capture our objects as they are now (possibly nothing)."""

    def read(self) -> tuple[InstalledState | None, Snapshot]:
        """`installed()` and `snapshot()` of one moment; drivers that can read once for both override this."""
        return self.installed(), self.snapshot()

    def generation(self) -> int | None:
        """A number the kernel changes whenever anything of this driver's objects may have changed (the
        nftables ruleset generation), or None when there is no such number: then only a read tells."""
        return None

    @abstractmethod
    def restore(self, snapshot: Snapshot) -> None:
        """Put our objects back as captured, atomically."""

    @abstractmethod
    def remove(self) -> None:
        """Delete everything this driver installed, atomically; no error if nothing is there."""

    def render_persistent(self, ruleset: Ruleset, family: Family) -> str:
        """A file the host's own boot-time loader installs `ruleset` from, without dockerguard
        (`dockerguard export`). `family` matters only where a file holds one family."""
        raise UsageError(f"backend {self.name!r} has no persistent file format")

    def render_persistent_sets(self, ruleset: Ruleset) -> str:
        """The sets `render_persistent`'s rules use, as a file loaded before them at boot (ipset-persistent's
        `ipsets`); "" when they use none."""
        return ""

    def is_host_chain(self, chain: str) -> bool:
        """Does this chain (as named in InstalledState) hold the [host] section's rules?"""
        return False

    def is_host_set(self, name: str) -> bool:
        """Does this set (as named in InstalledState) belong to the [host] section?"""
        return False

    def host_part(self, state: InstalledState | None) -> tuple[object, ...]:
        """The [host] share of a state: the lock-out guard compares it before and after an apply."""
        if state is None:
            return ()
        rules = tuple(rule for rule in state.rules if self.is_host_chain(rule.chain))
        sets = tuple(item for item in state.sets if self.is_host_set(item[0]))
        return (rules, sets) if rules or sets else ()

    def ban(self, network: Network, timeout: int | None) -> None:
        """Add `network` to the ban set of its family (for `timeout` seconds; None: until unbanned)."""
        raise UsageError(f"backend {self.name!r} has no ban sets")

    def unban(self, network: Network) -> bool:
        """Take `network` out of the ban sets; False when it was not there."""
        raise UsageError(f"backend {self.name!r} has no ban sets")

    def bans(self) -> tuple[Ban, ...]:
        raise UsageError(f"backend {self.name!r} has no ban sets")

    def exposure(self, state: InstalledState | None) -> Exposure:
        """What `state` (read back from this driver) lets through; drivers that cannot tell say nothing
        is judged, which audit reports as open."""
        return Exposure()

    def path_report(self) -> tuple[PathFinding, ...]:
        """Is our hook first in the packet's path? Drivers that can check override this; the default
        passes on the driver's `hooks` facts unjudged."""
        installed = self.installed()
        if installed is None:
            return ()
        return tuple(PathFinding("info", hook) for hook in installed.hooks)

    def origins(self, ruleset: Ruleset) -> dict[tuple[str, str], RuleOrigin]:
        """(chain, description) of each rule `expected(ruleset)` lists -> its origin; drivers that can tell
        override this (the default knows nothing: `counters` then guesses from the text)."""
        return {}

    def chain_role(self, chain: str) -> tuple[Role | None, Family | None]:
        """The role (and family) of one of our chains as InstalledState names it; (None, None): not known."""
        return None, None

    def counters(self, ruleset: Ruleset | None = None, installed: InstalledState | None = None
                 ) -> tuple[RuleCounter, ...]:
        """Every installed rule of ours with its packet and byte counters, attributed to the pieces of
        `ruleset` (the policy's, compiled) where the rule is one `expected(ruleset)` lists; without a
        ruleset, or for a rule the ruleset does not explain (drift), by its chain and text alone.
        `installed`: a state just read (else it is read here)."""
        if installed is None:
            installed = self.installed()
        if installed is None:
            return ()
        known = self.origins(ruleset) if ruleset is not None else {}
        found = []
        for rule in installed.rules:
            origin = known.get((rule.chain, rule.description))
            if origin is None:
                role, family = self.chain_role(rule.chain)
                origin = RuleOrigin(guess_kind(rule.description), role, family)
            found.append(RuleCounter(rule.chain, rule.description, origin, rule.packets, rule.bytes))
        return tuple(found)

    def live_trace(self, source: Network, proto: str, port: int, path: str, seconds: float,
                   locked: Callable[[], AbstractContextManager[object]]) -> tuple[Any, ...]:
        """Watch the kernel trace packets of `source` to `port` for `seconds` (`dockerguard trace --live`):
        the rules they meet, in order; whatever it changes, it changes under `locked()`. Only drivers whose
        kernel interface can trace override this."""
        raise UsageError(f"backend {self.name!r} cannot trace live (only nft can)")

    def availability(self) -> ProbeResult:
        """`probe()` for this instance (a driver talking to a fake kernel probes that instead)."""
        return self.probe()

    def ensure_available(self) -> None:
        result = self.availability()
        if not result.available:
            raise BackendUnavailable(f"backend {self.name!r} is not usable here: {result.reason}")


def guess_kind(description: str) -> str:
    """A rule's kind from its text alone (every driver writes these words into its comments)."""
    text = description.lower()
    for word, kind in (("default", "default"), ("banned", "ban"), ("established", "established"),
                       ("judge ", "hook"), ("log", "log"), ("egress", "egress"), ("published", "dispatch"),
                       ("everything else", "dispatch")):
        if word in text:
            return kind
    return "other"
