"""iptables-legacy driver: python-iptables (libiptc), one table commit per family (IPv4, then IPv6).

The transaction is the same iptables-restore text the iptables-nft driver sends (built by
`rules.py`), interpreted line by line on a private libiptc handle and committed once: libiptc
replaces the whole table in one setsockopt, so each family changes atomically. The live table is read
with iptables-legacy-save, so read-back shares the iptables-nft driver's normaliser.

python-iptables is optional (the `libiptc` extra: it ships only an sdist with a C extension, so installing
it needs a compiler). Without it, or when it cannot build our rule forms, the same text is committed with
iptables-legacy-restore, one transaction per family; `probe` (so `dockerguard backends`) says which path
commits and why.

python-iptables gotchas handled here:
- `import iptc` runs `modprobe ip_tables`: it is imported only to probe or commit. Loading libxtables/libiptc
  may complain on fd 2 without root: filtered (stderr_noise), our probe says it better. On its own the
  import costs 0.3 s: it finds its libraries with ldconfig, gcc and ld, and imports setuptools (for
  distutils' get_python_lib): `_library_hints` tells it where they are (0.05 s).
- `iptc.Table`/`Table6` objects are cached process-wide per table name, together with a libiptc handle
  whose socket belongs to the network namespace current when it was opened (and which may hold
  someone else's uncommitted changes): every transaction opens a private, uncached handle instead.
- python-iptables does not take the xtables lock that `iptables -w` (so Docker) uses, and a libiptc
  commit replaces the whole table: we hold the lock from reading the table to committing it.
- On hosts where `iptables` means nf_tables, libiptc writes land silently in the unused legacy tables
  (python-iptables #342 #319 #298 #306): detect.py picks this driver only where Docker's rules are.
- A quoted comment with a quote in it comes back with a backslash added (python-iptables re-parses
  parameters with shlex): `rules.sanitize_comment` keeps quotes out of comments.
- Whether `-j NAME` jumps to a chain is decided by asking `rule.tables`, i.e. the process-wide cached
  handles of ALL tables (which instantiates every legacy table, and never sees a chain created in our
  uncommitted transaction): our rules answer from the transaction's own handle.
- libnftables and python-iptables share the process's libxtables and each installs its own globals; an
  extension error under libnftables' globals exits the process: `_iptc` makes python-iptables re-install
  its own before every use.
- `python-iptables` parameter parsing redirects the process's fd 1 for a moment (it captures the
  extension's save output): not thread-safe, but dockerguard calls it from one thread.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any, ClassVar

from ...errors import TransactionError
from ...locking import flock_exclusive
from ...model import Family
from ...stderr_noise import privilege_noise_filtered
from ..base import InstalledState, ProbeResult, Rendered, Snapshot
from ..common import run_tool
from . import rules
from .driver import IptablesDriver, ipset_detail, probe_binaries
from .rules import Layout

LOCK_WAIT = 5.0  # seconds, like `iptables -w 5`
_RULE_ATTRIBUTES = {"-s": "src", "-d": "dst", "-i": "in_interface", "-o": "out_interface", "-p": "protocol"}
# python-iptables knows protocols by its own names (Rule6 says "icmpv6", iptables-save "ipv6-icmp"):
# numbers always work.
_PROTOCOL_NUMBERS = {"icmp": "1", "tcp": "6", "udp": "17", "ipv6-icmp": "58", "icmpv6": "58"}


def _iptc() -> Any:
    """python-iptables, ready to parse rules with its own libxtables globals. Called before every use."""
    # once per process: the module is cached afterwards
    with privilege_noise_filtered(always=True), _library_hints():
        import iptc  # lazily: a modprobe

    # The process has one libxtables, and libnftables (published-port discovery, detection) initialises it
    # with globals whose error handler exits the process ("Try `nft -h'"). python-iptables puts its own
    # back (errors raise XTablesError) only when it makes a new `xtables` object, i.e. when the old one was
    # freed: by the garbage collector, so by luck. Forgetting its cached objects makes that happen now.
    cache = getattr(getattr(getattr(iptc, "xtables", None), "xtables", None), "_cache", None)
    if cache is not None:
        cache.clear()
    return iptc


@contextlib.contextmanager
def _library_hints() -> Iterator[None]:
    """For the duration of `import iptc`: python-iptables' documented variables XTABLES_LIBDIR,
    IPTABLES_LIBDIR and PYTHON_IPTABLES_XTABLES_VERSION (unless set already) name the directories of
    libxtables, its extensions and python-iptables' own C wrapper, found with a few stat calls; and
    distutils is missing, so python-iptables takes its one path from sysconfig as on Python 3.12+. Any
    library not found this way is looked up as python-iptables always does."""
    hints = {}
    found = next(((folder, name) for folder in _library_folders() for name in _XTABLES_NAMES
                  if os.path.exists(os.path.join(folder, name))), None)
    if found is not None:
        folder, name = found
        hints["PYTHON_IPTABLES_XTABLES_VERSION"] = name.rsplit(".", 1)[1]
        folders = [folder]
        wrapper = importlib.util.find_spec("libxtwrapper")
        if wrapper is not None and wrapper.origin:
            folders.append(os.path.dirname(wrapper.origin))
        hints["IPTABLES_LIBDIR"] = ":".join(folders)
        if os.path.exists(os.path.join(folder, "xtables", "libxt_conntrack.so")):
            hints["XTABLES_LIBDIR"] = os.path.join(folder, "xtables")
    added = {key: value for key, value in hints.items() if key not in os.environ}
    blocked = "distutils" not in sys.modules
    os.environ.update(added)
    if blocked:
        sys.modules["distutils"] = None  # type: ignore[assignment]  # import raises ModuleNotFoundError
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
        if blocked and sys.modules.get("distutils", 0) is None:
            del sys.modules["distutils"]


_XTABLES_NAMES = tuple(f"libxtables.so.{major}" for major in range(20, 9, -1))


def _library_folders() -> list[str]:
    multiarch = sysconfig.get_config_var("MULTIARCH")
    arch = [f"/usr/lib/{multiarch}", f"/lib/{multiarch}"] if multiarch else []
    return [*arch, "/usr/lib64", "/lib64", "/usr/lib", "/lib", "/usr/local/lib"]


def _library(iptc: Any) -> str:
    return f"python-iptables {getattr(getattr(iptc, 'version', None), '__version__', '?')}"


def _unloadable(exc: Exception) -> str:
    if isinstance(exc, ModuleNotFoundError) and exc.name == "iptc":
        return "python-iptables is not installed (pip install 'dockerguard[libiptc]' adds it)"
    return f"python-iptables cannot be loaded ({_message(exc)})"


class IptablesLegacyBackend(IptablesDriver):
    name = "iptables-legacy"
    flavour = "legacy"
    _refusal: ClassVar[str | None] = None  # see _python_iptables_refusal

    @classmethod
    def probe(cls) -> ProbeResult:
        failed = probe_binaries(cls, ("", "-save"))
        if failed is not None:
            return failed
        version = run_tool([cls.binary(Family.IPV4), "--version"]).stdout.strip()
        refusal = cls._python_iptables_refusal()
        if refusal is None:
            library = _library(_iptc())
            return ProbeResult(cls.name, True, f"{library}, {version}",
                               (("library", library), ("version", version),
                                ("commit", f"libiptc ({library}): one table commit per family"), ipset_detail()))
        if probe_binaries(cls, ("-restore",)) is not None:
            return ProbeResult(cls.name, False, f"{refusal}, and iptables-legacy-restore is missing",
                               (("version", version), ipset_detail()))
        return ProbeResult(cls.name, True, f"{version} through iptables-legacy-restore: {refusal}",
                           (("version", version),
                            ("commit", f"iptables-legacy-restore, one transaction per family: {refusal}"),
                            ipset_detail()))

    @classmethod
    def _python_iptables_refusal(cls) -> str | None:
        """Why our rules cannot be committed through python-iptables, or None. It may be missing (an
        optional extra) or fail to load, and its option parsing goes through the installed libxtables,
        whose extensions change between iptables releases (1.8.13's conntrack match rejects
        --ctorigdstport through python-iptables). Cached per process."""
        if cls._refusal is None:
            try:
                iptc = _iptc()
            except Exception as exc:  # ImportError, or libxtables/libiptc failing to load (OSError, XTablesError)
                cls._refusal = _unloadable(exc)
                return cls._refusal
            cls._refusal = ""
            for family, spec in _CAPABILITY_RULES:
                try:
                    _rule(iptc, None, family, spec)
                except Exception as exc:  # XTablesError, ValueError, ...
                    cls._refusal = (f"{_library(iptc)} cannot build our rules with this libxtables "
                                    f"({rules.family_label(family)} {spec!r}: {_message(exc)})")
                    break
        return cls._refusal or None

    # -- IPv6 rules with python-iptables 1.2.0's interface masks (see _mend_masks) --------------------
    def installed(self) -> InstalledState | None:
        return self._with_damage(super().installed())

    def read(self) -> tuple[InstalledState | None, Snapshot]:
        state, snapshot = super().read()
        return self._with_damage(state), snapshot

    def apply(self, rendered: Rendered) -> None:
        self._mend()
        super().apply(rendered)

    def restore(self, snapshot: Snapshot) -> None:
        self._mend()
        super().restore(snapshot)

    def _with_damage(self, state: InstalledState | None) -> InstalledState | None:
        """A damaged mask is a fact about how traffic reaches (or runs through) our rules: drift."""
        if state is None or self._python_iptables_refusal() is not None:
            return state
        damaged = damaged_masks(_iptc())  # a read: libiptc takes the table whole, no lock needed
        facts = tuple(f"ipv6 {chain} rule {position}: its interface compares one bit per character (written by "
                      "python-iptables 1.2.0)" for chain, position in damaged)
        return replace(state, hooks=state.hooks + facts) if facts else state

    def _mend(self) -> None:
        if self._python_iptables_refusal() is None:
            with xtables_lock():
                damaged_masks(_iptc(), mend=True)

    def _lock(self, target: Iterable[Layout] = ()) -> contextlib.AbstractContextManager[object]:
        if self._python_iptables_refusal() is not None or _rate_limited(target):
            return contextlib.nullcontext()  # iptables-legacy-restore -w takes the lock itself
        return xtables_lock()

    def _send(self, family: Family, text: str) -> None:
        # python-iptables 1.2.0 builds hashlimit matches the kernel refuses at commit (EINVAL, every
        # revision): a transaction adding rate limits goes through iptables-legacy-restore, the same text,
        # also one transaction. (`_lock` knows from the target, before reading the table.)
        if self._python_iptables_refusal() is not None or "-m hashlimit" in text:
            self._restore(family, text)
            return
        label = rules.family_label(family)
        current = self.read_table(family)  # under the xtables lock: positions hold until the commit
        live = {chain: [rule.spec for rule in current.chain(chain)] for chain in current.chains}
        try:
            iptc = _iptc()
            table = _private_table(iptc, family)
        except Exception as exc:  # import failure, or libiptc refusing the table (EPERM, no module)
            raise TransactionError(f"python-iptables cannot open the {label} filter table: {_message(exc)}"
                                   ) from exc
        try:
            for number, line in enumerate(text.split("\n"), start=1):
                try:
                    _apply_line(iptc, table, family, line, live)
                except Exception as exc:  # python-iptables raises IPTCError, XTablesError, ValueError, ...
                    raise TransactionError(f"python-iptables refused {label} line {number} ({line!r}): "
                                           f"{_message(exc)}; nothing was committed") from exc
            try:
                table.commit()
            except iptc.IPTCError as exc:
                raise TransactionError(f"libiptc could not commit the {label} filter table: "
                                       f"{_message(exc)}") from exc
        finally:
            table.close()


def _rate_limited(target: Iterable[Layout]) -> bool:
    return any("-m hashlimit" in spec for layout in target for _, specs in layout.chains for spec in specs)


# One of each rule form rules.py emits, parsed (never committed) to find out whether python-iptables
# and this libxtables agree on them.
_CAPABILITY_RULES = (
    (Family.IPV4, "-m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment probe -j RETURN"),
    (Family.IPV4, "-s 192.0.2.0/24 -p tcp -m conntrack --ctorigdstport 8000:8100 -j RETURN"),
    (Family.IPV6, "-p udp -m conntrack --ctorigdstport 53 -j RETURN"),
    (Family.IPV4, "-p tcp -m tcp --dport 22 -j RETURN"),
    (Family.IPV4, "-m limit --limit 5/min --limit-burst 10 -j LOG --log-prefix probe"),
    (Family.IPV6, "-p tcp -j REJECT --reject-with tcp-reset"),
    (Family.IPV6, "-p udp -m multiport --dports 53,8000:8100 -j RETURN"),
)


def _private_table(iptc: Any, family: Family) -> Any:
    """A fresh libiptc handle on the filter table of the current network namespace, autocommit off.

    `Table.__new__` would hand out the process-wide cached object; `_init` is what it runs on a cache
    miss (checked against python-iptables 1.2.0).
    """
    cls = iptc.Table if family is Family.IPV4 else iptc.Table6
    table = object.__new__(cls)
    table._init(cls.FILTER, False)
    return table


def _apply_line(iptc: Any, table: Any, family: Family, line: str, live: dict[str, list[str]]) -> None:
    """Do one iptables-restore `--noflush` line on the handle (the subset rules.py emits). `live` holds each
    chain's canonical specs as the transaction goes, to find the entry a `-D` means by its position."""
    if not line or line.startswith("#") or line in ("*filter", "COMMIT"):
        return
    if line.startswith("*"):
        raise ValueError("only table filter is supported")
    if line.startswith(":"):
        chain = line[1:].split()[0]
        if not table.is_chain(chain):
            table.create_chain(chain)
        elif not table.builtin_chain(chain):
            table.flush_entries(chain)  # what iptables-restore --noflush does to a declared user chain
        live[chain] = []
        return
    command, chain, rest = [*line.split(None, 2), "", ""][:3]
    if command == "-A":
        iptc.Chain(table, chain).append_rule(_rule(iptc, table, family, rest))
        live.setdefault(chain, []).append(rules.canonical(rest))
    elif command == "-I":
        first, _, spec = rest.partition(" ")
        position, spec = (int(first), spec) if first.isdigit() else (1, rest)
        iptc.Chain(table, chain).insert_rule(_rule(iptc, table, family, spec), position - 1)  # 0-based here
        live.setdefault(chain, []).insert(position - 1, rules.canonical(spec))
    elif command == "-D":
        # The entry as the kernel holds it, by position: an entry python-iptables builds from the spec
        # differs in its bytes from one iptables(-restore) made, so libiptc would not find it.
        specs = live.get(chain, [])
        canonical = rules.canonical(rest)
        if canonical not in specs:
            raise ValueError(f"no such rule in {chain}")
        position = specs.index(canonical)
        iptc.Chain(table, chain).delete_rule(iptc.Chain(table, chain).rules[position])
        del specs[position]
    elif command == "-F":
        table.flush_entries(chain)
        live[chain] = []
    elif command == "-X":
        table.delete_chain(chain)
        live.pop(chain, None)
    else:
        raise ValueError(f"unsupported command {command!r}")


def _rule(iptc: Any, table: Any, family: Family, spec: str) -> Any:
    """An iptc Rule(6) from a rule spec in iptables-save syntax; chain jumps resolve against `table`."""
    rule = _rule_class(iptc, family)()
    rule.transaction_table = table
    tokens = rules.tokenize(spec)
    module: Any = None
    negate = False
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == "!":
            negate, index = True, index + 1
            continue
        if token in _RULE_ATTRIBUTES or token in ("-m", "-j", "-g"):
            if index + 1 >= len(tokens):
                raise ValueError(f"{token} without a value")
            value = tokens[index + 1]
            index += 2
            if token == "-m":
                module = rule.create_match(value)
            elif token in ("-j", "-g"):
                module = rule.create_target(value, goto=token == "-g")
            else:
                if token == "-p":
                    value = _PROTOCOL_NUMBERS.get(value, value)
                setattr(rule, _RULE_ATTRIBUTES[token], f"!{value}" if negate else value)
            negate = False
            continue
        if token.startswith("--") and module is not None:
            index += 1
            values: list[str] = []
            if token in rules.STRING_OPTIONS and index < len(tokens):  # free text: one token, whatever it says
                values.append(tokens[index])
                index += 1
            # Other option values never start with "-" in what we render or what -save prints for our rules.
            while index < len(tokens) and tokens[index] != "!" and not tokens[index].startswith("-"):
                values.append(tokens[index])
                index += 1
            module.set_parameter(token[2:], ["!", *values] if negate else values)
            negate = False
            continue
        raise ValueError(f"unsupported token {token!r}")
    if family is Family.IPV6:
        _mend_masks(rule)
    return rule


# python-iptables 1.2.0 writes an IPv6 interface match with a mask of 0x01 per character where ip6tables
# writes 0xff: the kernel then compares one bit of each character (`-i eth0` matches other names too), and
# ip6tables-restore cannot delete such an entry by its spec. iptables-save prints both alike.
_INTERFACE_MASKS = ("iniface_mask", "outiface_mask")


def _mend_masks(rule: Any) -> bool:
    """Give an IPv6 rule the interface masks ip6tables gives it; True when there was something to mend."""
    mended = False
    for name in _INTERFACE_MASKS:
        mask = bytes(getattr(rule.entry.ipv6, name))
        if mask.strip(b"\x00\xff"):
            setattr(rule.entry.ipv6, name, bytes(0xFF if byte else 0 for byte in mask))
            mended = True
    return mended


def damaged_masks(iptc: Any, mend: bool = False) -> list[tuple[str, int]]:
    """The IPv6 rules (chain, 1-based position) with such a mask (an older dockerguard committed them through
    python-iptables); with `mend`, each is replaced in place by the same rule with ip6tables' masks, in one
    commit (what decides changes only as the rule's own text says it should)."""
    table = _private_table(iptc, Family.IPV6)
    found = []
    try:
        for chain in table.chains:
            for position, rule in enumerate(chain.rules, start=1):
                if any(bytes(getattr(rule.entry.ipv6, name)).strip(b"\x00\xff") for name in _INTERFACE_MASKS):
                    found.append((chain.name, position))
                    if mend and _mend_masks(rule):
                        chain.replace_rule(rule, position - 1)
        if mend and found:
            table.commit()
    finally:
        table.close()
    return found


_RULE_CLASSES: dict[Family, Any] = {}


def _rule_class(iptc: Any, family: Family) -> Any:
    """iptc.Rule/Rule6 whose `tables` (consulted to tell a chain jump from a target extension) is
    the transaction's handle rather than python-iptables' process-wide cached tables."""
    if family not in _RULE_CLASSES:
        base = iptc.Rule if family is Family.IPV4 else iptc.Rule6

        class TransactionRule(base):  # type: ignore[misc, valid-type]
            transaction_table: Any = None

            @property
            def tables(self) -> list[Any]:
                return [self.transaction_table]

        _RULE_CLASSES[family] = TransactionRule
    return _RULE_CLASSES[family]


def _message(exc: Exception) -> str:
    # python-iptables puts libiptc's strerror() bytes into its messages: "can't commit: b'...'".
    return re.sub(r"""b(['"])(.*?)\1""", r"\2", str(exc))


@contextlib.contextmanager
def xtables_lock(wait: float = LOCK_WAIT) -> Iterator[None]:
    """The lock `iptables -w` and iptables-restore take (`XTABLES_LOCKFILE`, default /run/xtables.lock)."""
    path = os.environ.get("XTABLES_LOCKFILE", "/run/xtables.lock")
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDONLY | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise TransactionError(f"cannot open the xtables lock {path}: {exc}") from exc
    try:
        if not flock_exclusive(fd, wait):
            raise TransactionError(f"another iptables process held {path} for {wait:g} s")
        yield
    finally:
        os.close(fd)  # also releases the lock
