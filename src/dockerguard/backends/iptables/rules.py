"""Rule building shared by the iptables-legacy and iptables-nft drivers: pure functions, no I/O.

Chain model in table `filter`, the same for IPv4 (iptables) and IPv6 (ip6tables)::

    FORWARD      rule 1: -j DOCKER-USER         Docker's jump, moved first if it is not (moby #48560)
    DOCKER-USER  rules 1..k: -i IFACE -m comment --comment dockerguard -j DOCKERGUARD
                 (one per external interface), then Docker's and the admin's rules, never touched
    DOCKERGUARD  ours, flushed and refilled as a whole on every apply:
                 established,related -> RETURN; each allow -> RETURN; [LOG]; DROP or REJECT
    INPUT        rules 1..k: -i IFACE ... -j DOCKERGUARD-INPUT      only with a [host] policy section
    DOCKERGUARD-INPUT  ours: established,related, IPv6 neighbour discovery, [echo-request],
                 each host allow (plain --dport: no DNAT on INPUT) -> RETURN; DROP or REJECT

RETURN hands the packet back to DOCKER-USER and on to Docker's chains, so an allow never opens more
than Docker publishes. `--ctorigdstport` is the destination port before Docker's DNAT, i.e. the
published host port. Allows use one rule per (source network, port span) of `Ruleset.rules_for`
rather than `Ruleset.elements()`: iptables has no interval sets, first match wins (overlaps are
harmless), and rules that follow the policy entries keep each entry's comment and counters.

Which lines a transaction needs depends on the live table: declaring an existing user chain in
`iptables-restore --noflush` input flushes it (legacy and nft flavours alike), and `-D` of a missing
rule fails. So the live table is read first (`parse_save` -> `layout_of`), and `transition` emits
only the lines that turn that `Layout` into the target one. The same `canonical` spelling is applied
to what we render and to what `iptables-save` prints, so read-back compares like with like.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import StateError
from ...model import (
    AllowRule,
    Allows,
    Bans,
    Chain,
    Default,
    Denies,
    Egress,
    Established,
    Family,
    IcmpEcho,
    LogDrops,
    NeighbourDiscovery,
    PortMatch,
    Role,
    Ruleset,
    ToHost,
    ToProxy,
    Verdict,
)
from ...net import PROTOCOLS, AddressError, Limit, Network, PortRange, network_of
from ..base import Exposure, InstalledRule, InstalledState, RuleOrigin, Span
from ..common import COMMENT, IPTABLES_CHAIN, IPTABLES_ENTRY, LOG_PREFIX
from . import ipsets

GUARD_CHAIN = IPTABLES_CHAIN[Role.FORWARD]  # DOCKERGUARD
INBOUND_CHAIN = IPTABLES_CHAIN[Role.INPUT]  # DOCKERGUARD-INPUT
HOST_CHAIN = IPTABLES_CHAIN[Role.HOST]  # DOCKERGUARD-HOST
OUR_CHAINS = tuple(sorted(IPTABLES_CHAIN.values()))
INPUT_CHAIN = IPTABLES_ENTRY[Role.INPUT]
USER_CHAIN = IPTABLES_ENTRY[Role.FORWARD]
MULTIPORT_MAX = 15  # ports per multiport match; a range counts as two
FORWARD_CHAIN = "FORWARD"
# Exactly Docker's spelling, so Docker's own `-C FORWARD -j DOCKER-USER` finds the jump we keep first.
FORWARD_JUMP = f"-j {USER_CHAIN}"
LOG_LIMIT = "-m limit --limit 5/min --limit-burst 10"  # as iptables-save prints it
MAX_COMMENT_BYTES = 255  # xt_comment holds 256 bytes including the NUL

_REJECT_WITH = {Family.IPV4: "icmp-port-unreachable", Family.IPV6: "icmp6-port-unreachable"}
_FAMILY_LABEL = {Family.IPV4: "ipv4", Family.IPV6: "ipv6"}
_SHORT = {"--source": "-s", "--destination": "-d", "--protocol": "-p"}
_PROTOCOL_NAMES = {"1": "icmp", "6": "tcp", "17": "udp", "58": "ipv6-icmp", "icmpv6": "ipv6-icmp"}
_ND_TYPES = (133, 134, 135, 136)  # router solicitation/advertisement, neighbour solicitation/advertisement

Managed = tuple[str, int, str]  # (chain, 1-based position, canonical spec)


def family_label(family: Family) -> str:
    return _FAMILY_LABEL[family]


# -- tokens and the canonical spelling ------------------------------------------------------------
def tokenize(spec: str) -> list[str]:
    """Split a rule spec as iptables-restore does: double quotes group, and inside them a backslash
    escapes the next character (iptables-save writes `"it\\'s"`)."""
    tokens: list[str] = []
    buf: list[str] = []
    in_token = quoted = escaped = False
    for char in spec:
        if escaped:
            buf.append(char)
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
            in_token = True
        elif char.isspace() and not quoted:
            if in_token:
                tokens.append("".join(buf))
                buf, in_token = [], False
        else:
            buf.append(char)
            in_token = True
    if quoted or escaped:
        raise ValueError(f"unterminated quote in rule spec: {spec!r}")
    if in_token:
        tokens.append("".join(buf))
    return tokens


def quote(token: str) -> str:
    """A token as iptables-save would write it: quoted only when it has to be."""
    if token and not any(char.isspace() or char in "\"'\\" for char in token):
        return token
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'


_SAVE_PLAIN = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
STRING_OPTIONS = ("--comment", "--log-prefix")  # values iptables-save writes with xtables_save_string


def save_string(value: str) -> str:
    """A comment or log prefix as iptables-save writes it: bare only if made of [A-Za-z0-9_-]."""
    if value and all(char in _SAVE_PLAIN for char in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'") + '"'


def canonical(spec: str) -> str:
    """One spelling for a rule spec, whether we rendered it or iptables-save printed it.

    Folds what -save canonicalises: `/32` (`/128`) on host addresses, protocol numbers and aliases,
    a `-m tcp`/`-m udp` without options, long option names, and quoting.
    """
    tokens = tokenize(spec)
    out: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if token in ("-s", "-d", "--source", "--destination") and following is not None:
            out += [_SHORT.get(token, token), quote(_network(following))]
            index += 2
            continue
        if token in ("-p", "--protocol") and following is not None:
            out += ["-p", quote(_PROTOCOL_NAMES.get(following.lower(), following.lower()))]
            index += 2
            continue
        if token == "-m" and following in ("tcp", "udp"):
            after = tokens[index + 2] if index + 2 < len(tokens) else ""
            if not after.startswith("--") and after != "!":  # a protocol match without options adds nothing
                index += 2
                continue
        if token in STRING_OPTIONS and following is not None:
            out += [token, save_string(following)]
            index += 2
            continue
        out.append(quote(token))
        index += 1
    return " ".join(out)


def _network(text: str) -> str:
    try:
        return str(network_of(text))
    except (AddressError, ValueError):
        return text


def jump_target(spec: str) -> str | None:
    tokens = tokenize(spec)
    for index in range(len(tokens) - 1, 0, -1):
        if tokens[index - 1] in ("-j", "-g", "--jump", "--goto"):
            return tokens[index]
    return None


def sanitize_comment(text: str) -> str:
    """A comment that survives every tool: no control characters (a newline would start a new
    restore line), no quotes or backslashes (python-iptables re-parses comments with shlex and
    adds a backslash before a quote in a quoted comment), at most 255 bytes."""
    cleaned = "".join("_" if ord(char) < 32 or ord(char) == 127 or char in "\"'\\" else char
                      for char in text).strip()
    while len(cleaned.encode()) > MAX_COMMENT_BYTES:
        cleaned = cleaned[:-1]
    return cleaned


# -- what our chains hold: one function per piece kind (model.Piece) ----------------------------------
def _with_comment(matches: str, comment: str, target: str) -> str:
    middle = f"{matches} " if matches else ""
    return f"{middle}-m comment --comment {save_string(sanitize_comment(comment))} {target}"


@dataclass(frozen=True)
class Context:
    """What the piece renderers need besides the piece and its chain."""

    family: Family
    ipsets: bool = False  # large source groups as ipsets (`ipset` usable here)


def bans(piece: Bans, chain: Chain, ctx: Context) -> list[str]:
    """The family's ban set, first: everything from a banned source is dropped (needs ipset)."""
    if not ctx.ipsets:
        return []
    return [_with_comment(f"-m set --match-set {ipsets.BAN_SETS[ctx.family]} src", "banned", "-j DROP")]


def denies(piece: Denies, chain: Chain, ctx: Context) -> list[str]:
    """Each deny's sources (one ipset, or one rule per source), to every port or to the ports given."""
    rules: list[str] = []
    for deny in piece.rules:
        if deny.family is not ctx.family:
            continue
        comment = sanitize_comment(deny.comment) or "deny"
        target = _refusal(deny.verdict, deny.proto, ctx.family)
        # (-s part, match part): iptables-save prints -s/-p before any -m, so a set match goes after -p.
        sources = ([("", f"-m set --match-set {ipsets.set_name(ctx.family, deny.sources)} src ")]
                   if ctx.ipsets and _settable(deny.sources)
                   else [(f"-s {net} " if net.prefixlen else "", "") for net in deny.sources])
        for address, set_match in sources:
            if not deny.ports:
                rules.append(_with_comment(f"{address}{set_match}".strip(), comment, target))
                continue
            proto = deny.proto or "tcp"
            for span in deny.ports:
                rules.append(_with_comment(f"{address}-p {proto} {set_match}{_port_match(proto, span, piece.port)}",
                                           comment, target))
    return rules


def _settable(sources: Sequence[Network]) -> bool:
    """hash:net takes prefixes of 1 bit or more; "any" (collapsed to one /0) is matched without a set."""
    return all(net.prefixlen for net in sources)


def _refusal(verdict: Verdict, proto: str | None, family: Family) -> str:
    if verdict is Verdict.DROP:
        return "-j DROP"
    return "-j REJECT --reject-with tcp-reset" if proto == "tcp" else f"-j REJECT --reject-with {_REJECT_WITH[family]}"


def _port_match(proto: str, span: PortRange, port_match: PortMatch) -> str:
    port = str(span.first) if span.first == span.last else f"{span.first}:{span.last}"
    return (f"-m conntrack --ctorigdstport {port}" if port_match is PortMatch.PUBLISHED
            else f"-m {proto} --dport {port}")


def established(piece: Established, chain: Chain, ctx: Context) -> list[str]:
    return [_with_comment("-m conntrack --ctstate RELATED,ESTABLISHED", "established,related", "-j RETURN")]


def neighbour_discovery(piece: NeighbourDiscovery, chain: Chain, ctx: Context) -> list[str]:
    if ctx.family is not Family.IPV6:
        return []
    return [_with_comment(f"-p ipv6-icmp -m icmp6 --icmpv6-type {kind}", "ipv6 neighbour discovery", "-j RETURN")
            for kind in _ND_TYPES]


def icmp_echo(piece: IcmpEcho, chain: Chain, ctx: Context) -> list[str]:
    if ctx.family is Family.IPV4:
        return [_with_comment("-p icmp -m icmp --icmp-type 8", "icmp echo-request", "-j RETURN")]
    return [_with_comment("-p ipv6-icmp -m icmp6 --icmpv6-type 128", "icmpv6 echo-request", "-j RETURN")]


def allows(piece: Allows, chain: Chain, ctx: Context) -> list[str]:
    """In policy order, one RETURN rule per (source network, port span) of each allow of the family; with
    ipsets, a large group of sources sharing a port list (`SourceGroup.factored`) is one set instead,
    matched in one rule per port span where the group's first allow stood. A published port is
    conntrack's original destination port (before Docker's DNAT)."""
    factored = {(group.ports, proto, group.limit, group.max_connections): group for proto in PROTOCOLS
                for group in piece.factored(ctx.family, proto)[0] if _settable(group.sources)} if ctx.ipsets else {}
    checks: list[str] = []
    rules: list[str] = []
    written: set[tuple[Any, ...]] = set()
    for allow in piece.rules:
        if allow.family is not ctx.family:
            continue
        key = (allow.ports, allow.proto, allow.limit, allow.max_connections)
        group = factored.get(key)
        if group is None:
            checks += _limit_rules(allow, piece, ctx)
            rules += _allow_rules(allow, piece.port)
        elif key not in written:
            written.add(key)
            name = ipsets.set_name(ctx.family, group.sources)
            checks += _limit_rules(allow, piece, ctx, name)
            rules += _allow_rules(allow, piece.port, name, len(group.sources))
    return checks + rules  # every limit is checked before anything is let through


def _limit_rules(allow: AllowRule, piece: Allows, ctx: Context, set_name: str = "") -> list[str]:
    """Connections over an allow's limits get the chain's default: per source, new connections per time
    (hashlimit) and open connections (connlimit)."""
    if not allow.limited:
        return []
    target = _refusal(piece.over_limit, allow.proto, ctx.family)
    sources = (("", f"-m set --match-set {set_name} src "),) if set_name else tuple(
        (f"-s {net} " if net.prefixlen else "", "") for net in allow.sources)
    name = hashlib.sha256(repr((allow.sources, allow.ports, allow.proto)).encode()).hexdigest()[:12]
    checks = []
    for address, set_match in sources:
        for span in allow.ports:
            match = (f"{address}-p {allow.proto} {set_match}-m conntrack --ctstate NEW "
                     f"{_port_match(allow.proto, span, piece.port)}")
            if allow.limit is not None:
                limit = f"-m hashlimit --hashlimit-above {_hashlimit_rate(allow.limit)} --hashlimit-burst " \
                        f"{allow.limit.burst} --hashlimit-mode srcip --hashlimit-name dg{name}"
                checks.append(_with_comment(f"{match} {limit}", f"over {allow.limit.rate}/{allow.limit.per}", target))
            if allow.max_connections is not None:
                mask = 32 if ctx.family is Family.IPV4 else 128
                connlimit = f"-m connlimit --connlimit-above {allow.max_connections} --connlimit-mask {mask} " \
                            "--connlimit-saddr"
                checks.append(_with_comment(f"{match} {connlimit}", f"over {allow.max_connections} connections",
                                            target))
    return checks


_PER_SECONDS = {"second": 1, "minute": 60, "hour": 3600}


def _hashlimit_rate(limit: Limit) -> str:
    """The rate as iptables-save prints it: in the largest unit that keeps a whole number (60/minute is
    1/sec), so that read-back compares like with like."""
    per_hour = limit.rate * 3600 // _PER_SECONDS[limit.per]
    for unit, seconds in (("sec", 1), ("min", 60), ("hour", 3600)):
        if per_hour * seconds % 3600 == 0:
            return f"{per_hour * seconds // 3600}/{unit}"
    raise AssertionError("unreachable: every rate is whole per hour")


def _allow_rules(allow: AllowRule, port_match: PortMatch, set_name: str = "", set_size: int = 0) -> list[str]:
    """One rule per source (or for the ipset `set_name` of `set_size` sources) and port span."""
    comment = f"allow {allow.proto}: {set_size} sources" if set_name else (
        sanitize_comment(allow.comment) or f"allow {allow.proto}")
    set_match = f"-m set --match-set {set_name} src " if set_name else ""
    rules = []
    sources = ("",) if set_name else tuple(f"-s {net} " if net.prefixlen else "" for net in allow.sources)
    for source in sources:  # iptables-save omits -s 0.0.0.0/0
        for span in allow.ports:
            port = str(span.first) if span.first == span.last else f"{span.first}:{span.last}"
            match = (f"-m conntrack --ctorigdstport {port}" if port_match is PortMatch.PUBLISHED
                     else f"-m {allow.proto} --dport {port}")
            rules.append(_with_comment(f"{source}-p {allow.proto} {set_match}{match}", comment, "-j RETURN"))
    return rules


def log_drops(piece: LogDrops, chain: Chain, ctx: Context) -> list[str]:
    return [_with_comment(LOG_LIMIT, "log dropped", f"-j LOG --log-prefix {save_string(LOG_PREFIX[chain.role])}")]


def default(piece: Default, chain: Chain, ctx: Context) -> list[str]:
    if piece.verdict is Verdict.REJECT:
        return [_with_comment("-p tcp", "default reject tcp", "-j REJECT --reject-with tcp-reset"),
                _with_comment("", "default reject", f"-j REJECT --reject-with {_REJECT_WITH[ctx.family]}")]
    return [_with_comment("", "default drop", "-j DROP")]


def to_proxy(piece: ToProxy, chain: Chain, ctx: Context) -> list[str]:
    """Connections to published ports go (goto: the PROXY chain's RETURN goes back to INPUT, past the
    rest of this chain) to the PROXY chain, in multiport matches of at most 15 ports."""
    rules = []
    for proto in PROTOCOLS:
        for chunk in _multiport_chunks(piece.ports_of(proto)):
            rules.append(_with_comment(f"-p {proto} -m multiport --dports {chunk}", f"published {proto} ports",
                                       f"-g {IPTABLES_CHAIN[Role.PROXY]}"))
    return rules


def _multiport_chunks(ports: Sequence[PortRange]) -> list[str]:
    chunks: list[list[str]] = [[]]
    used = 0
    for span in ports:
        item, cost = (str(span.first), 1) if span.first == span.last else (f"{span.first}:{span.last}", 2)
        if used + cost > MULTIPORT_MAX:
            chunks.append([])
            used = 0
        chunks[-1].append(item)
        used += cost
    return [",".join(chunk) for chunk in chunks if chunk]


def egress(piece: Egress, chain: Chain, ctx: Context) -> list[str]:
    """Containers' new connections to the outside: per egress rule of the family, one rule per interface,
    source, destination and port span (RETURN lets Docker's chains decide), then the default."""
    specs: list[str] = []
    for rule in piece.rules:
        if rule.family is not ctx.family:
            continue
        comment = sanitize_comment(rule.comment) or "egress"
        interfaces = [f"-i {name} " for name in rule.interfaces] or [""]
        sources = [f"-s {net} " for net in rule.sources if net.prefixlen] or [""]
        destinations = [f"-d {net} " for net in rule.destinations if net.prefixlen] or [""]
        proto = rule.proto or "tcp"
        ports = [f"-p {proto} -m {proto} --dport {_port_text(span)} " for span in rule.ports] or [""]
        for interface in interfaces:
            for source in sources:
                for destination in destinations:
                    for port in ports:
                        specs += _egress_verdicts(f"{source}{destination}{interface}{port}".strip(), comment,
                                                  rule.verdict, rule.proto if rule.ports else None, ctx.family)
    if piece.default != "accept":
        specs += _egress_verdicts("", f"egress default {piece.default}", piece.default, None, ctx.family)
    return specs


def _egress_verdicts(matches: str, comment: str, verdict: str, proto: str | None, family: Family) -> list[str]:
    """As the nft driver: a refusal of any protocol is a TCP reset for TCP, an ICMP error for the rest."""
    if verdict == "accept":
        return [_with_comment(matches, comment, "-j RETURN")]
    if verdict == "reject" and proto is None:
        tcp = f"{matches} -p tcp" if matches else "-p tcp"
        return [_with_comment(tcp, f"{comment} (tcp)", "-j REJECT --reject-with tcp-reset"),
                _with_comment(matches, comment, _refusal(Verdict.REJECT, None, family))]
    return [_with_comment(matches, comment, _refusal(Verdict(verdict), proto, family))]


def _port_text(span: PortRange) -> str:
    return str(span.first) if span.first == span.last else f"{span.first}:{span.last}"


def to_host(piece: ToHost, chain: Chain, ctx: Context) -> list[str]:
    return [_with_comment("", "everything else", f"-g {IPTABLES_CHAIN[Role.HOST]}")]


_PIECES: dict[type, Callable[[Any, Chain, Context], list[str]]] = {
    Bans: bans,
    Denies: denies,
    Established: established,
    NeighbourDiscovery: neighbour_discovery,
    IcmpEcho: icmp_echo,
    Allows: allows,
    LogDrops: log_drops,
    Default: default,
    ToProxy: to_proxy,
    ToHost: to_host,
    Egress: egress,
}


def chain_rules(chain: Chain, family: Family, use_ipsets: bool = False) -> tuple[str, ...]:
    """The rule specs of the role's chain (DOCKERGUARD, DOCKERGUARD-INPUT, ...) for one family, without `-A`."""
    ctx = Context(family, use_ipsets)
    return tuple(spec for piece in chain.pieces for spec in _PIECES[type(piece)](piece, chain, ctx))


def chain_sets(chain: Chain, family: Family) -> dict[str, ipsets.Members]:
    """The content ipsets the chain's rules match when rendered with ipsets: name -> members."""
    groups = [group.sources for piece in chain.pieces if isinstance(piece, Allows) for proto in PROTOCOLS
              for group in piece.factored(family, proto)[0]]
    groups += [deny.sources for piece in chain.pieces if isinstance(piece, Denies) for deny in piece.rules
               if deny.family is family]
    return {ipsets.set_name(family, sources): ipsets.members(sources) for sources in groups if _settable(sources)}


def jump_spec(interface: str, chain: str = GUARD_CHAIN, outgoing: bool = False) -> str:
    return f"{'-o' if outgoing else '-i'} {interface} -m comment --comment {COMMENT} -j {chain}"


# -- the managed part of one family's filter table -----------------------------------------------
@dataclass(frozen=True)
class Layout:
    """What dockerguard manages in one family's filter table, and nothing else.

    `managed` are the rules we place or move: the unconditional FORWARD -> DOCKER-USER jumps and every
    jump to one of our chains, with their positions. `chains` are our chains that exist, with their
    rules. `foreign_user_rules` counts DOCKER-USER's other rules (Docker's RETURN, the admin's), which
    we never touch but must know about before deleting a DOCKER-USER we created. `sets` are our ipsets
    of this family (name, members): the driver creates and destroys them around the rules' transaction;
    `set_specs` their declarations as `ipsets.parse_save` reads them (not part of a snapshot: a restored
    set is created as we declare every set).
    """

    user_chain: bool
    managed: tuple[Managed, ...]
    chains: tuple[tuple[str, tuple[str, ...]], ...]
    foreign_user_rules: int = 0
    sets: tuple[tuple[str, ipsets.Members], ...] = ()
    set_specs: tuple[tuple[str, str], ...] = ()

    def tampered_sets(self, target: Layout, family: Family) -> list[str]:
        """Sets of `target` that exist here with other members or declared otherwise than we declare sets."""
        members, specs = dict(self.sets), dict(self.set_specs)
        return [name for name, content in target.sets
                if name in members and (members[name] != content or specs.get(name) != ipsets.spec(family))]

    @property
    def key(self) -> tuple[object, ...]:
        """What a transition from or to this layout depends on (foreign rules only matter for
        deleting DOCKER-USER)."""
        return self.user_chain, self.managed, self.chains, self.sets

    @property
    def rules_key(self) -> tuple[object, ...]:
        """The part an iptables transaction changes (sets are created and destroyed around it)."""
        return self.user_chain, self.managed, self.chains

    @property
    def installed(self) -> bool:
        """Is anything of dockerguard's there? (Docker's FORWARD jump alone is not ours.)"""
        return bool(self.chains or self.sets) or any(jump_target(spec) in OUR_CHAINS for _, _, spec in self.managed)

    def to_json(self) -> dict[str, Any]:
        return {"user_chain": self.user_chain, "managed": [list(item) for item in self.managed],
                "chains": [[name, list(specs)] for name, specs in self.chains],
                "foreign_user_rules": self.foreign_user_rules,
                "sets": [[name, list(members)] for name, members in self.sets]}

    @classmethod
    def from_json(cls, data: Any) -> Layout:
        """A snapshot's layout. It comes from the state directory, so it is data: only our chains (with
        our targets), jumps to them from DOCKER-USER/FORWARD/INPUT, Docker's FORWARD jump and our ipsets
        pass, and nothing that would be restore syntax (a newline, another command); else StateError."""
        try:
            return _checked_layout(data)
        except (KeyError, TypeError, ValueError) as exc:
            problem = f"{exc.args[0]!r} is missing" if isinstance(exc, KeyError) else str(exc)
            raise StateError(f"the iptables snapshot is not one dockerguard writes ({problem}): "
                             "refusing to restore it") from None


_ENTRY_CHAINS = frozenset({USER_CHAIN, FORWARD_CHAIN, INPUT_CHAIN})  # where our jumps sit
_OUR_TARGETS = frozenset({"RETURN", "DROP", "REJECT", "LOG", *OUR_CHAINS})  # what our chains' rules do
# Would start another command in an iptables-restore line (or change tables).
_COMMANDS = frozenset({"-A", "--append", "-I", "--insert", "-D", "--delete", "-R", "--replace", "-N", "--new-chain",
                       "-X", "--delete-chain", "-F", "--flush", "-P", "--policy", "-E", "--rename-chain", "-Z",
                       "--zero", "-L", "--list", "-S", "--list-rules", "-t", "--table"})
_SET_NAME = re.compile(re.escape(ipsets.PREFIX) + r"[A-Za-z0-9_]{1,19}")  # ipset names hold 31 characters
_MAX_POSITION = 100_000


def _checked_layout(data: Any) -> Layout:
    if not isinstance(data, Mapping):
        raise TypeError("a family's layout is not an object")
    user_chain = data["user_chain"]
    if not isinstance(user_chain, bool):
        raise TypeError("user_chain is not true or false")
    managed = []
    for item in _json_list(data["managed"], "managed"):
        chain, position, spec = _json_list(item, "a managed rule", 3)
        if chain not in _ENTRY_CHAINS:
            raise ValueError(f"a jump sits in chain {chain!r:.40}, not in {', '.join(sorted(_ENTRY_CHAINS))}")
        if isinstance(position, bool) or not isinstance(position, int) or not 0 < position <= _MAX_POSITION:
            raise ValueError(f"rule position {position!r:.20} is out of range")
        target = _checked_spec(spec)
        if not (chain == FORWARD_CHAIN and spec == FORWARD_JUMP) and target not in OUR_CHAINS:
            raise ValueError(f"the {chain} rule {spec!r:.80} is not a jump to one of our chains")
        managed.append((chain, position, spec))
    chains = []
    for item in _json_list(data["chains"], "chains"):
        name, specs = _json_list(item, "a chain", 2)
        if name not in OUR_CHAINS or name in dict(chains):
            raise ValueError(f"chain {name!r:.40} is not one of ours ({', '.join(OUR_CHAINS)}) or is repeated")
        for spec in _json_list(specs, f"{name}'s rules"):
            if _checked_spec(spec) not in _OUR_TARGETS:
                raise ValueError(f"the {name} rule {spec!r:.80} has a target our chains never use")
        chains.append((name, tuple(specs)))
    foreign = data.get("foreign_user_rules", 0)
    if isinstance(foreign, bool) or not isinstance(foreign, int) or not 0 <= foreign <= _MAX_POSITION:
        raise ValueError("foreign_user_rules is not a count")
    sets = []
    for item in _json_list(data.get("sets", []), "sets"):
        name, members = _json_list(item, "a set", 2)
        if not isinstance(name, str) or not _SET_NAME.fullmatch(name):
            raise ValueError(f"ipset {name!r:.40} is not named like ours ({ipsets.PREFIX}...)")
        for member in _json_list(members, f"{name}'s members"):
            if not _is_network(member):
                raise ValueError(f"{name} member {member!r:.60} is not a network")
        sets.append((name, tuple(members)))
    return Layout(user_chain, tuple(managed), tuple(chains), foreign, tuple(sets))


def _is_network(member: Any) -> bool:
    """Written as ipset members are (`ipsets.members`): an address with its prefix length."""
    try:
        return isinstance(member, str) and str(network_of(member)) == member
    except (AddressError, ValueError):
        return False


def _json_list(value: Any, what: str, length: int | None = None) -> list[Any]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise TypeError(f"{what} is not a list" + (f" of {length}" if length is not None else ""))
    return value


def _checked_spec(spec: Any) -> str | None:
    """A rule spec that is one rule and nothing more; returns its jump (or goto) target."""
    if not isinstance(spec, str) or not spec or len(spec) > 8192:
        raise TypeError("a rule spec is not a string")
    if any(ord(char) < 32 or ord(char) == 127 for char in spec):
        raise ValueError(f"the rule spec {spec!r:.80} holds a line break or another control character")
    tokens = tokenize(spec)
    targets = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token in STRING_OPTIONS:  # a comment may say anything
            index += 2
            continue
        if token in _COMMANDS:
            raise ValueError(f"the rule spec {spec!r:.80} holds the command {token}")
        if token in ("-j", "--jump", "-g", "--goto"):
            targets.append(tokens[index + 1] if index + 1 < len(tokens) else "")
        index += 1
    if len(targets) != 1:
        raise ValueError(f"the rule spec {spec!r:.80} does not have exactly one target")
    return targets[0]


# What render() assumes when it cannot read the live table (no root): a Docker host where nothing of
# dockerguard is installed yet.
BASELINE = Layout(user_chain=True, managed=((FORWARD_CHAIN, 1, FORWARD_JUMP),), chains=(),
                  foreign_user_rules=1)
BASELINE_NOTE = ("assumed live state (not read): DOCKER-USER exists, FORWARD jumps to it first, "
                 "nothing of dockerguard installed")


def target_layout(ruleset: Ruleset, family: Family, use_ipsets: bool = False) -> Layout:
    """Each chain of the ruleset as one of our chains; a role entered from a hook is jumped to from the
    top of its entry chain (DOCKER-USER, INPUT) once per external interface. FORWARD's jump to
    DOCKER-USER comes first. With `use_ipsets`, large source groups are ipsets (`Layout.sets`)."""
    managed: list[Managed] = [(FORWARD_CHAIN, 1, FORWARD_JUMP)]
    chains = []
    sets: dict[str, ipsets.Members] = {}
    placed: dict[str, int] = {}  # jumps placed so far per entry chain: FORWARD's and EGRESS's share DOCKER-USER
    for chain in ruleset.chains:
        ours = IPTABLES_CHAIN[chain.role]
        if chain.role.hook is not None:
            entry = IPTABLES_ENTRY[chain.role]
            first = placed.get(entry, 0) + 1
            managed += [(entry, index, canonical(jump_spec(interface, ours, chain.role.outgoing)))
                        for index, interface in enumerate(ruleset.interfaces, start=first)]
            placed[entry] = first - 1 + len(ruleset.interfaces)
        chains.append((ours, tuple(canonical(spec) for spec in chain_rules(chain, family, use_ipsets))))
        if use_ipsets:
            sets.update(chain_sets(chain, family))
    return Layout(True, tuple(sorted(managed)), tuple(sorted(chains)), sets=tuple(sorted(sets.items())),
                  set_specs=tuple(sorted((name, ipsets.spec(family)) for name in sets)))


@dataclass(frozen=True)
class SavedRule:
    chain: str
    spec: str  # canonical
    packets: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class FilterTable:
    """The `*filter` section of an iptables-save dump (`-c` counters optional)."""

    chains: tuple[str, ...]
    rules: tuple[SavedRule, ...]

    def chain(self, name: str) -> list[SavedRule]:
        return [rule for rule in self.rules if rule.chain == name]


def parse_save(text: str) -> FilterTable:
    """Read the filter table out of iptables-save output; other tables and comments are skipped."""
    chains: list[str] = []
    rules: list[SavedRule] = []
    table = ""
    for raw in text.split("\n"):  # not splitlines(): U+2028 in a comment is no line end
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = line[1:]
            continue
        if table != "filter" or line == "COMMIT":
            continue
        if line.startswith(":"):
            chains.append(line[1:].split()[0])
            continue
        packets = octets = 0
        if line.startswith("["):  # `iptables-save -c`: "[packets:bytes] -A CHAIN ..."
            counters, _, line = line.partition("] ")
            packets, octets = (int(value) for value in counters[1:].split(":"))
        if not line.startswith("-A "):
            raise ValueError(f"unexpected iptables-save line: {raw!r}")
        _, chain, spec = [*line.split(None, 2), ""][:3]
        rules.append(SavedRule(chain, canonical(spec), packets, octets))
    return FilterTable(tuple(chains), tuple(rules))


def layout_of(table: FilterTable, sets: Mapping[str, ipsets.Members] | None = None,
              specs: Mapping[str, str] | None = None) -> Layout:
    """The managed part of a live filter table; `sets`: our ipsets of the family (from `ipset save`), with
    their declarations `specs`."""
    managed: list[Managed] = []
    foreign_user_rules = 0
    for chain in table.chains:
        if chain in OUR_CHAINS:  # their gotos between each other are their content, not placed jumps
            continue
        for position, rule in enumerate(table.chain(chain), start=1):
            if (chain == FORWARD_CHAIN and rule.spec == FORWARD_JUMP) or jump_target(rule.spec) in OUR_CHAINS:
                managed.append((chain, position, rule.spec))
            elif chain == USER_CHAIN:
                foreign_user_rules += 1
    chains = tuple((name, tuple(rule.spec for rule in table.chain(name)))
                   for name in sorted(OUR_CHAINS) if name in table.chains)
    return Layout(USER_CHAIN in table.chains, tuple(sorted(managed)), chains, foreign_user_rules,
                  tuple(sorted((sets or {}).items())), tuple(sorted((specs or {}).items())))


# -- from one layout to another -------------------------------------------------------------------
def transition(current: Layout, target: Layout) -> list[str]:
    """iptables-restore `--noflush` lines that turn `current` into `target` (table filter).

    Our chains are declared (created or flushed) and refilled whenever the target has them. Managed
    rules are only touched in chains where they differ: all of them are deleted by spec, then the
    target's are inserted at their positions in ascending order, which restores exact positions as
    long as the other rules of the chain are unchanged.
    """
    ours = dict(target.chains)
    if any(jump_target(spec) in OUR_CHAINS and jump_target(spec) not in ours for _, _, spec in target.managed):
        raise ValueError("a target layout cannot jump to one of our chains it does not have")
    drop_user_chain = current.user_chain and not target.user_chain
    if drop_user_chain and (current.foreign_user_rules or any(
            chain == USER_CHAIN or jump_target(spec) == USER_CHAIN for chain, _, spec in target.managed)):
        raise ValueError("cannot delete DOCKER-USER: it holds other rules or is still jumped to")
    lines: list[str] = []
    if target.user_chain and not current.user_chain:
        lines.append(f":{USER_CHAIN} - [0:0]")  # absent, so declaring it flushes nothing
    lines += [f":{name} - [0:0]" for name in ours]  # created, or flushed to be refilled below
    changed = [chain for chain in sorted({chain for chain, _, _ in (*current.managed, *target.managed)})
               if _in_chain(current.managed, chain) != _in_chain(target.managed, chain)]
    for chain in changed:
        lines += [f"-D {chain} {spec}" for _, _, spec in _in_chain(current.managed, chain)]
    for name, specs in target.chains:
        lines += [f"-A {name} {spec}" for spec in specs]
    gone = [name for name, _ in current.chains if name not in ours]
    # Every jump to them from other chains was deleted above; their gotos to each other go with -F.
    lines += [f"-F {name}" for name in gone] + [f"-X {name}" for name in gone]
    for chain in changed:
        lines += [f"-I {chain} {position} {spec}" for _, position, spec in _in_chain(target.managed, chain)]
    if drop_user_chain:
        lines.append(f"-X {USER_CHAIN}")
    return lines


def _in_chain(managed: Sequence[Managed], chain: str) -> list[Managed]:
    return sorted(item for item in managed if item[0] == chain)


def removal_target(current: Layout) -> Layout:
    """`current` without anything of dockerguard's; DOCKER-USER and FORWARD's jump to it stay."""
    kept = tuple(item for item in current.managed if jump_target(item[2]) not in OUR_CHAINS)
    return Layout(current.user_chain, kept, (), current.foreign_user_rules)


def restore_target(current: Layout, snapshot: Layout) -> Layout:
    """The snapshot, unless that would delete a DOCKER-USER that meanwhile got other rules (Docker
    started): then DOCKER-USER and the current FORWARD jumps to it stay."""
    if snapshot.user_chain or not current.user_chain or not current.foreign_user_rules:
        return snapshot
    forward = tuple(item for item in current.managed if item[0] == FORWARD_CHAIN and item[2] == FORWARD_JUMP)
    return Layout(True, tuple(sorted((*snapshot.managed, *forward))), snapshot.chains,
                  current.foreign_user_rules, snapshot.sets, snapshot.set_specs)


def restore_text(family: Family, lines: Sequence[str], note: str | None = None) -> str:
    """One family's iptables-restore input, headed by a `# ipv4`/`# ipv6` comment line."""
    header = [f"# {family_label(family)}"] + ([f"# {note}"] if note else [])
    return "\n".join([*header, "*filter", *lines, "COMMIT"]) + "\n"


# -- read-back: the same code reads what we render and what iptables-save prints -----------------
def state(backend: str, layouts: Mapping[Family, Layout],
          counters: Mapping[Family, FilterTable] | None = None) -> InstalledState:
    """An InstalledState from per-family layouts; counters, when given, come from the live tables."""
    hooks: list[str] = []
    rules: list[InstalledRule] = []
    sets: list[tuple[str, ipsets.Members]] = []
    declarations: list[tuple[str, str]] = []
    for family in Family:
        layout = layouts.get(family)
        if layout is None:
            continue
        label = family_label(family)
        hooks += [f"{label} {chain} rule {position}: {spec}" for chain, position, spec in layout.managed]
        hooks.append(f"{label} chains: {', '.join(name for name, _ in layout.chains) or 'none'}")
        sets += layout.sets
        declarations += layout.set_specs
        for name, specs in layout.chains:
            live = counters[family].chain(name) if counters and family in counters else []
            for index, spec in enumerate(specs):
                packets, octets = (live[index].packets, live[index].bytes) if index < len(live) else (0, 0)
                rules.append(InstalledRule(f"{label} {name}", spec, packets, octets))
    return InstalledState(backend, tuple(hooks), tuple(rules), tuple(sorted(sets)), tuple(sorted(declarations)))


def expected_state(backend: str, ruleset: Ruleset, use_ipsets: bool = False) -> InstalledState:
    return state(backend, {family: target_layout(ruleset, family, use_ipsets) for family in Family})


def installed_state(backend: str, tables: Mapping[Family, FilterTable],
                    sets: Mapping[Family, Mapping[str, ipsets.Members]] | None = None,
                    specs: Mapping[Family, Mapping[str, str]] | None = None) -> InstalledState | None:
    layouts = {family: layout_of(table, (sets or {}).get(family), (specs or {}).get(family))
               for family, table in tables.items()}
    if not any(layout.installed for layout in layouts.values()):
        return None
    return state(backend, layouts, tables)


# -- what installed chains let through (dockerguard audit) --------------------------------------------
def exposure_of(state: InstalledState | None) -> Exposure:
    """Read our chains' specs back into an `Exposure`: which roles are reached (from their entry chain,
    FORWARD's jump to DOCKER-USER first) and end in an unconditional drop/reject, the (source, port)
    pairs their RETURN rules pass, and the ports DOCKERGUARD-INPUT sends to DOCKERGUARD-PROXY."""
    if state is None:
        return Exposure()
    judged: set[tuple[Role, Family]] = set()
    allowed: dict[tuple[Role, Family, str], list[Span]] = {}
    dispatched: dict[tuple[Family, str], list[tuple[int, int]]] = {}
    set_members = dict(state.sets)
    for family in Family:
        label = family_label(family)
        specs = {name: [rule.description for rule in state.rules if rule.chain == f"{label} {name}"]
                 for name in OUR_CHAINS}
        hooks = [hook[len(label) + 1:] for hook in state.hooks if hook.startswith(f"{label} ")]
        entered = {
            Role.FORWARD: f"{FORWARD_CHAIN} rule 1: {FORWARD_JUMP}" in hooks
                          and any(h.startswith(f"{USER_CHAIN} rule ") and h.endswith(f"-j {GUARD_CHAIN}")
                                  for h in hooks),
            Role.PROXY: any(h.startswith(f"{INPUT_CHAIN} rule ") and h.endswith(f"-j {INBOUND_CHAIN}") for h in hooks),
        }
        for role, port_option in ((Role.FORWARD, "--ctorigdstport"), (Role.PROXY, "--dport")):
            chain = specs[IPTABLES_CHAIN[role]]
            if entered[role] and chain and _unconditional_refusal(chain[-1]):
                judged.add((role, family))
            for spec in chain:
                options = _options(spec)
                if options.get("-j") == "RETURN" and port_option in options and options.get("-p") in PROTOCOLS:
                    sources = ((options.get("-s", "0.0.0.0/0" if family is Family.IPV4 else "::/0"),)
                               if "--match-set" not in options else set_members.get(options["--match-set"], ()))
                    allowed.setdefault((role, family, options["-p"]), []).extend(
                        (source, *_port_span(options[port_option])) for source in sources)
        for spec in specs[INBOUND_CHAIN]:
            options = _options(spec)
            if options.get("-g") == IPTABLES_CHAIN[Role.PROXY] and "--dports" in options:
                dispatched.setdefault((family, options.get("-p", "")), []).extend(
                    _port_span(item) for item in options["--dports"].split(","))
    return Exposure(frozenset(judged), {key: tuple(spans) for key, spans in allowed.items()},
                    {key: tuple(spans) for key, spans in dispatched.items()})


def _options(spec: str) -> dict[str, str]:
    """`-s NET -p tcp ... -j RETURN` -> {"-s": NET, "-p": "tcp", ..., "-j": "RETURN"} (negations: "!")."""
    tokens = tokenize(spec)
    options: dict[str, str] = {}
    for index, token in enumerate(tokens):
        if token.startswith("-") and index + 1 < len(tokens) and not tokens[index + 1].startswith("-"):
            options[token] = "!" if index and tokens[index - 1] == "!" else tokens[index + 1]
    return options


def _unconditional_refusal(spec: str) -> bool:
    """A DROP or REJECT that matches every packet (a comment matches everything)."""
    tokens = tokenize(spec)
    if "-j" not in tokens or tokens[tokens.index("-j") + 1:tokens.index("-j") + 2] not in (["DROP"], ["REJECT"]):
        return False
    matches = tokens[:tokens.index("-j")]
    if matches[:2] == ["-m", "comment"] and len(matches) >= 4:
        matches = matches[4:]
    return not matches


def _port_span(text: str) -> tuple[int, int]:
    first, _, last = text.partition(":")
    return int(first), int(last or first)


# -- which piece each of our rules renders (Backend.origins) ---------------------------------------
_KIND = {Established: "established", NeighbourDiscovery: "other", IcmpEcho: "other", LogDrops: "log",
         Default: "default", ToProxy: "dispatch", ToHost: "dispatch", Egress: "egress", Bans: "ban"}
_ROLE_OF_CHAIN = {name: role for role, name in IPTABLES_CHAIN.items()}


def chain_role(chain: str) -> tuple[Role | None, Family | None]:
    """"ipv4 DOCKERGUARD" -> (Role.FORWARD, Family.IPV4)."""
    label, _, name = chain.partition(" ")
    family = next((family for family in Family if family_label(family) == label), None)
    return _ROLE_OF_CHAIN.get(name), family


def origins(ruleset: Ruleset, use_ipsets: bool = False) -> dict[tuple[str, str], RuleOrigin]:
    """Keyed like `state()` names rules: ("ipv4 DOCKERGUARD", canonical spec). Each deny and allow is
    rendered alone too, so a spec is attributed to the entries whose own rules it is; a spec no single
    allow renders is an ipset group's, carried by every allow of that group."""
    found: dict[tuple[str, str], RuleOrigin] = {}
    for family in Family:
        ctx = Context(family, use_ipsets)
        for chain in ruleset.chains:
            name = f"{family_label(family)} {IPTABLES_CHAIN[chain.role]}"
            for piece in chain.pieces:
                specs = [canonical(spec) for spec in _PIECES[type(piece)](piece, chain, ctx)]
                if isinstance(piece, Denies):
                    for index, deny in enumerate(piece.rules):
                        for spec in denies(Denies((deny,), piece.port), chain, ctx):
                            found[(name, canonical(spec))] = RuleOrigin("deny", chain.role, family, denies=(index,))
                elif isinstance(piece, Allows):
                    found.update(_allow_origins(piece, chain, ctx, name, specs))
                else:
                    found.update({(name, spec): RuleOrigin(_KIND.get(type(piece), "other"), chain.role, family)
                                  for spec in specs})
    return found


def _allow_origins(piece: Allows, chain: Chain, ctx: Context, name: str,
                   specs: list[str]) -> dict[tuple[str, str], RuleOrigin]:
    alone = Context(ctx.family)  # without ipsets: one allow's own rules
    owners: dict[str, list[int]] = {}
    for index, allow in enumerate(piece.rules):
        if allow.family is not ctx.family:
            continue
        for spec in allows(Allows((allow,), piece.port, piece.over_limit), chain, alone):
            owners.setdefault(canonical(spec), []).append(index)
    groups = {ipsets.set_name(ctx.family, group.sources): (group.ports, proto, group.limit, group.max_connections)
              for proto in PROTOCOLS for group in piece.factored(ctx.family, proto)[0]} if ctx.ipsets else {}
    found = {}
    for spec in specs:
        members = owners.get(spec)
        if members is None:  # an ipset group's rule
            key = next((key for set_name, key in groups.items() if f"--match-set {set_name} " in spec), None)
            members = [index for index, allow in enumerate(piece.rules) if allow.family is ctx.family
                       and (allow.ports, allow.proto, allow.limit, allow.max_connections) == key]
        kind = "limit" if "--hashlimit-above" in spec or "--connlimit-above" in spec else "allow"
        found[(name, spec)] = RuleOrigin(kind, chain.role, ctx.family, allows=tuple(members))
    return found
