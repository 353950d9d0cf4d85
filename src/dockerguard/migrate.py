"""`dockerguard import`: a hand-written Docker firewall turned into a policy. Pure: text in, data out (the
CLI reads the file, asks Docker, prints).

Inputs:

* iptables-save / iptables-persistent files (`/etc/iptables/rules.v4`, `rules.v6`): the filter table's
  DOCKER-USER chain;
* ufw rules files: `/etc/ufw/after.rules` (ufw-docker's DOCKER-USER block) and `/etc/ufw/user.rules`, where
  `ufw route allow` (what `ufw-docker allow` runs) keeps its rules, each after a `### tuple ###` line;
* saved `ufw status` output (also `numbered` and `verbose`, and `ufw-docker status`).

Old rules and a policy do not mean the same things everywhere, so the import never guesses silently: every
rule it cannot map, and every assumption it makes, is a Finding (input line, message, the rule), and the
policy text carries the same notes as comments beside the entries they concern. The main trap: DOCKER-USER
runs after Docker's DNAT, so `--dport` there (and every ufw-docker rule) matches the CONTAINER port, while a
policy names PUBLISHED host ports. With the containers Docker lists, the import translates; without them it
keeps the number and says so.
"""

from __future__ import annotations

import os
import re
import socket
import textwrap
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .docker import ContainerInfo, PublishedPort
from .errors import DockerguardError, MigrationError, PolicyError
from .net import IFNAME, AddressError, PortRange, network_of, range_cidrs
from .policy import COMMENT_REFUSED_CATEGORIES, DEFAULT_DOCKER_SOCKET, Policy, parse_policy

FORMATS = ("auto", "iptables-save", "ufw-after-rules", "ufw-status")
ANY = "any"
ALL_PORTS = (PortRange(1, 65535),)
# A valid container name that no container has: the entry checks, and allows nothing until filled in.
PLACEHOLDER = "FIXME"
DEFAULT_INTERFACE = "eth0"
USER_CHAIN = "DOCKER-USER"
ACCEPTS = ("ACCEPT", "RETURN")  # RETURN in DOCKER-USER hands the packet on to Docker's rules: an allow
DENIES = ("DROP", "REJECT")
_MAX_COMMENT = 100
_WIDTH = 110  # policy comments
_CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
# What Docker itself puts in the filter table: saved along with the admin's rules, never the admin's.
_DOCKER_CHAINS = ("DOCKER", "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2", "DOCKER-FORWARD",
                  "DOCKER-BRIDGE", "DOCKER-CT", "DOCKER-INTERNAL", "DOCKER-INGRESS")
_DOCKER_FORWARD = (
    re.compile(r"^-j (DOCKER-USER|DOCKER-FORWARD|DOCKER-ISOLATION-STAGE-1|DOCKER-INGRESS)$"),
    re.compile(r"^-o (\S+) -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT$"),
    re.compile(r"^-o (\S+) -j DOCKER$"),
    re.compile(r"^-i (\S+) ! -o \1 -j ACCEPT$"),
    re.compile(r"^-i (\S+) -o \1 -j (ACCEPT|DROP)$"),
)
_DOCKER_IFACE = re.compile(r"^(docker\d*|br-[0-9a-f]{12}|docker_gwbridge)$")
_DOCKER_POOL = network_of("172.16.0.0/12")  # Docker's default address pools start at 172.17.0.0/16


# -- results -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """Something the import could not map, or an assumption the user must check."""

    line: int | None  # 1-based input line; None: about the input as a whole
    message: str
    rule: str = ""  # the input line as written


@dataclass(frozen=True)
class Entry:
    """One [[allow]] of the imported policy, and the input line it came from."""

    proto: str
    sources: tuple[str, ...]
    comment: str
    line: int | None
    rule: str
    ports: tuple[PortRange, ...] = ()
    container: str | None = None
    container_ports: tuple[PortRange, ...] = ()


@dataclass(frozen=True)
class Migration:
    source: str  # the input's name, as given
    format: str
    family: int | None
    interfaces: tuple[str, ...]
    default: str
    log_dropped: bool
    entries: tuple[Entry, ...]
    findings: tuple[Finding, ...]
    text: str  # the policy TOML
    policy: Policy  # `text`, validated

    @property
    def needs_review(self) -> bool:
        return bool(self.findings)


def import_text(text: str, filename: str = "<input>", fmt: str = "auto", family: int | None = None,
                containers: Sequence[ContainerInfo] | None = None,
                docker_socket: str | None = None) -> Migration:
    """Turn `text` (a firewall file of format `fmt`) into a validated policy plus findings.

    `containers`: what Docker runs now (DockerClient.containers()), to translate container ports to published
    host ports; None when Docker was not asked. `docker_socket`: written into the policy when it is not the
    default and an entry selects containers. Raises MigrationError (exit 2) when the input cannot be read."""
    if fmt not in FORMATS:
        raise MigrationError(f"unknown format {fmt!r} (expected one of: {', '.join(FORMATS)})", file=filename)
    if family not in (None, 4, 6):
        raise MigrationError(f"--family must be 4 or 6, got {family}", file=filename)
    if fmt == "auto":
        fmt = detect_format(text, filename)
    job = _Import(filename, containers)
    if fmt == "iptables-save":
        save = _read_save(text, filename)
        family = _save_family(save, filename, family)
        _IptablesImport(job, save).run()
    elif fmt == "ufw-after-rules":
        save = _read_save(text, filename)
        _UfwRulesImport(job, save, family).run()
    else:
        _UfwStatusImport(job, text, family).run()
    return job.finish(fmt, family, docker_socket)


def detect_format(text: str, filename: str = "<input>") -> str:
    """Which of FORMATS `text` is; MigrationError when it looks like none."""
    restore = re.search(r"^\s*(\*[a-z]+\s*$|(\[\d+:\d+\]\s*)?-[AI]\s)", text, re.M)
    if restore:
        if "### tuple ###" in text or "# BEGIN UFW AND DOCKER" in text or re.search(
                r"^\s*(:|-[AI]\s+)ufw6?-", text, re.M):
            return "ufw-after-rules"
        return "iptables-save"
    if re.search(r"^Status: (in)?active\s*$", text, re.M) or _STATUS_RULE.search(text):
        return "ufw-status"
    raise MigrationError("cannot tell the format (expected iptables-save rules, a ufw rules file or "
                         "`ufw status` output): give --format", file=filename)


# -- the shared accumulator ----------------------------------------------------------------------------
class _Import:
    def __init__(self, filename: str, containers: Sequence[ContainerInfo] | None) -> None:
        self.filename = filename
        self.base = os.path.basename(filename) or filename
        self.containers = None if containers is None else list(containers)
        self.interfaces: list[str] = []
        self.default = "drop"
        self.log_dropped = False
        self.entries: list[Entry] = []
        self.findings: list[Finding] = []
        self.notes: list[str] = []  # header comments that are no warnings

    def warn(self, line: int | None, message: str, rule: str = "") -> None:
        self.findings.append(Finding(line, message, rule))

    def interface(self, name: str, line: int | None, rule: str) -> bool:
        if not IFNAME.fullmatch(name):  # the policy's grammar: no "eth+" wildcard either
            self.warn(line, f"interface {name!r} is a wildcard or not an interface name: list the external "
                            "interfaces by name in external_interfaces", rule)
            return False
        if name not in self.interfaces:
            self.interfaces.append(name)
        return True

    def entry(self, line: int | None, rule: str, proto: str, sources: Sequence[str], comment: str, *,
              ports: Sequence[PortRange] = (), container: str | None = None,
              container_ports: Sequence[PortRange] = ()) -> None:
        entry = Entry(proto, tuple(sources), _clean_comment(comment), line, rule, _merge(ports), container,
                      _merge(container_ports))
        if entry not in self.entries:
            self.entries.append(entry)

    def default_comment(self, line: int) -> str:
        return f"imported from {self.base}:{line}"

    def finish(self, fmt: str, family: int | None, docker_socket: str | None) -> Migration:
        if not self.interfaces:
            self.interfaces.append(DEFAULT_INTERFACE)
            self.warn(None, f"the input does not say which interface faces the outside world: "
                            f"external_interfaces = [\"{DEFAULT_INTERFACE}\"] is an assumption, set it")
        socket_path = docker_socket if docker_socket and docker_socket != DEFAULT_DOCKER_SOCKET and any(
            entry.container for entry in self.entries) else None
        findings = tuple(sorted(self.findings, key=lambda f: (f.line is not None, f.line or 0)))
        text = _render(self, fmt, family, findings, socket_path)
        try:
            policy = parse_policy(text, f"<policy imported from {self.filename}>")
        except PolicyError as exc:  # our bug, not the user's input: say so rather than print a bad policy
            raise DockerguardError(f"internal error: the imported policy does not validate ({exc})") from None
        return Migration(self.filename, fmt, family, tuple(self.interfaces), self.default, self.log_dropped,
                         tuple(self.entries), findings, text, policy)


# -- iptables-save files -------------------------------------------------------------------------------
@dataclass
class _SavedRule:
    line: int
    table: str
    chain: str
    text: str  # the line as written
    tokens: list[str]  # the rule spec after "-A CHAIN"
    tuple_line: int | None = None  # ufw: the `### tuple ###` line this rule was written for
    tuple_text: str = ""


@dataclass
class _SaveFile:
    chains: dict[tuple[str, str], list[_SavedRule]] = field(default_factory=dict)
    markers: dict[str, int] = field(default_factory=dict)  # ufw-docker's "# BEGIN UFW AND DOCKER" -> line
    tables: set[str] = field(default_factory=set)

    def chain(self, table: str, name: str) -> list[_SavedRule]:
        return self.chains.get((table, name), [])

    def rules(self, table: str) -> Iterable[_SavedRule]:
        for (rule_table, _), rules in self.chains.items():
            if rule_table == table:
                yield from rules


def _read_save(text: str, filename: str) -> _SaveFile:
    """iptables-save / iptables-restore text (also ufw's rules files), with line numbers. Reads every table
    (so a broken one is reported), keeps the rules; MigrationError on anything iptables-restore would refuse."""
    from .backends.iptables.rules import tokenize

    save = _SaveFile()
    table: str | None = None
    table_line = 0
    pending_tuple: tuple[int, str] | None = None
    lines = text.split("\n")  # not splitlines(): U+2028 in a comment is no line end
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if line.startswith("### tuple ###"):
                pending_tuple = (number, line)
            elif line.startswith("###"):  # ### END RULES ###, ### LOGGING ###: no tuple's rules follow
                pending_tuple = None
            elif line.startswith("# BEGIN UFW AND DOCKER"):
                save.markers.setdefault("ufw-docker", number)
            continue
        if line.startswith("*"):
            if table is not None:
                raise MigrationError(f"table *{table} (line {table_line}) has no COMMIT before *{line[1:]}",
                                     file=filename, line=number)
            table, table_line = line[1:].strip(), number
            save.tables.add(table)
            continue
        if table is None:
            raise MigrationError(f"expected a table (*filter) first, got {_short(line)!r}", file=filename,
                                 line=number)
        if line == "COMMIT":
            table, pending_tuple = None, None
            continue
        if line.startswith(":"):
            parts = line[1:].split()
            if not parts:
                raise MigrationError("chain declaration without a name", file=filename, line=number)
            save.chains.setdefault((table, parts[0]), [])
            continue
        body = line
        if body.startswith("["):  # `iptables-save -c`: "[packets:bytes] -A CHAIN ..."
            counters, _, body = body.partition("] ")
            if not re.fullmatch(r"\[\d+:\d+", counters):
                raise MigrationError(f"bad counters {counters}]", file=filename, line=number)
        try:
            words = tokenize(body)
        except ValueError as exc:
            raise MigrationError(str(exc), file=filename, line=number) from None
        command = words[0]
        if command in ("-A", "--append", "-I", "--insert") and len(words) >= 2:
            rules = save.chains.setdefault((table, words[1]), [])
            spec = words[2:]
            position = len(rules)
            if command in ("-I", "--insert"):
                position = 0
                if spec and spec[0].isdigit():
                    position = min(int(spec[0]) - 1, len(rules))
                    spec = spec[1:]
            rule = _SavedRule(number, table, words[1], line, spec)
            if pending_tuple is not None:
                rule.tuple_line, rule.tuple_text = pending_tuple
            rules.insert(max(position, 0), rule)
        elif command in ("-N", "--new-chain") and len(words) == 2:
            save.chains.setdefault((table, words[1]), [])
        elif command in ("-F", "--flush"):
            for key in [key for key in save.chains if key[0] == table and (len(words) == 1 or key[1] == words[1])]:
                save.chains[key] = []
        elif command in ("-P", "--policy", "-X", "--delete-chain", "-Z", "--zero"):
            pass  # chain policies and clean-up say nothing about DOCKER-USER
        else:
            raise MigrationError(f"unsupported line {_short(line)!r} (expected -A/-I rules, :CHAIN, COMMIT)",
                                 file=filename, line=number)
    if table is not None:
        last = max(number for number, raw in enumerate(lines, start=1) if raw.strip())
        raise MigrationError(f"table *{table} (line {table_line}) is not closed by COMMIT", file=filename,
                             line=last)
    if not save.tables:
        raise MigrationError("no table in the file (expected *filter)", file=filename)
    return save


def _save_family(save: _SaveFile, filename: str, family: int | None) -> int:
    """The file's address family: --family, else the addresses it names, else its name (rules.v6)."""
    for rule in save.rules("filter"):
        for index, token in enumerate(rule.tokens[:-1]):
            if token in ("-s", "-d", "--source", "--destination", "--src", "--dst"):
                found = 6 if ":" in rule.tokens[index + 1] else 4
                if family is not None and found != family:
                    raise MigrationError(f"an IPv{found} address in a file read as IPv{family} (--family)",
                                         file=filename, line=rule.line)
                return found
    if family is not None:
        return family
    return 6 if re.search(r"(v6|6\.rules|ip6tables[^/]*)$", filename) else 4


# -- one iptables rule ----------------------------------------------------------------------------------
_ONE_VALUE = {"-i": "-i", "--in-interface": "-i", "-o": "-o", "--out-interface": "-o", "-s": "-s",
              "--source": "-s", "--src": "-s", "-d": "-d", "--destination": "-d", "--dst": "-d", "-p": "-p",
              "--protocol": "-p", "-m": "-m", "--match": "-m", "-j": "-j", "--jump": "-j", "-g": "-g",
              "--goto": "-g"}
_KNOWN_MODULES = ("tcp", "udp", "multiport", "conntrack", "state", "comment", "iprange")
_NEEDS_VALUE = ("--dport", "--destination-port", "--dports", "--destination-ports", "--ctorigdstport", "--ctstate",
                "--state", "--comment", "--src-range", "--sport", "--source-port")
_PROTOCOLS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "all": None, "0": None}


@dataclass(frozen=True)
class _Option:
    name: str
    values: tuple[str, ...]
    negated: bool
    context: str | None  # the -m module (or "target") the option belongs to


@dataclass
class _Rule:
    """What one rule matches, in the terms a policy can express; `problems` is what it cannot."""

    line: int
    text: str
    in_iface: str | None = None
    out_iface: str | None = None
    proto: str | None = None
    other_proto: str | None = None  # icmp, sctp, ...: not tcp/udp
    sources: list[str] = field(default_factory=list)
    destinations: list[str] = field(default_factory=list)
    states: frozenset[str] | None = None
    host_ports: list[PortRange] | None = None  # --ctorigdstport: the published host port
    container_ports: list[PortRange] | None = None  # --dport/--dports in DOCKER-USER: after DNAT
    port_option: str = ""
    comment: str = ""
    target: str | None = None
    log_prefix: str | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)  # (module or "", what cannot be mapped)

    @property
    def unmappable(self) -> list[str]:
        ignored = ("limit",) if self.target == "LOG" else ()  # a LOG rule's rate limit is its own business
        return [text for module, text in self.problems if module not in ignored]

    @property
    def is_catch_all(self) -> bool:
        """Matches every new connection entering its interface (the chain's verdict for it)."""
        return (self.target in ACCEPTS + DENIES and self.proto is None and self.other_proto is None
                and not self.sources and not self.destinations and self.host_ports is None
                and self.container_ports is None and not self.problems
                and (self.states is None or "NEW" in self.states))

    @property
    def is_established(self) -> bool:
        return bool(self.states) and self.states <= {"ESTABLISHED", "RELATED"} and self.target in ACCEPTS


def _options(tokens: Sequence[str]) -> list[_Option]:
    """Tokens of a rule spec as (option, values, negated, module). Long options take every following token
    that is not an option (`--tcp-flags MASK COMP`, `--match-set NAME src`)."""
    options: list[_Option] = []
    index, negate, context = 0, False, None
    while index < len(tokens):
        token = tokens[index]
        if token == "!":
            negate = True
            index += 1
            continue
        if token in _ONE_VALUE:
            name = _ONE_VALUE[token]
            index += 1
            if index < len(tokens) and tokens[index] == "!":  # old spelling: "-s ! 198.51.100.7"
                negate, index = True, index + 1
            if index >= len(tokens) or _is_option(tokens[index]):
                raise ValueError(f"{token} needs a value")
            value = tokens[index]
            index += 1
            if name == "-m":
                context = value
            elif name in ("-j", "-g"):
                context = "target"
            elif name == "-p" and value in ("tcp", "udp", "6", "17"):
                context = context or _PROTOCOLS[value]  # `-p tcp --dport 80` loads the tcp match implicitly
            options.append(_Option(name, (value,), negate, None))
        elif token in ("-c", "--set-counters"):
            index += 3
        elif token in ("-f", "--fragment"):
            options.append(_Option("-f", (), negate, None))
            index += 1
        elif token.startswith("--"):
            index += 1
            if index + 1 < len(tokens) and tokens[index] == "!" and not _is_option(tokens[index + 1]):
                negate, index = True, index + 1  # old spelling: "--dport ! 80"
            values = []
            while index < len(tokens) and tokens[index] != "!" and not _is_option(tokens[index]):
                values.append(tokens[index])
                index += 1
            options.append(_Option(token, tuple(values), negate, context))
        else:
            raise ValueError(f"unexpected {token!r} in the rule")
        negate = False
    if negate:
        raise ValueError("'!' at the end of the rule")
    return options


def _is_option(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not token[1].isdigit()


def _parse_rule(rule: _SavedRule, filename: str) -> _Rule:
    try:
        return _interpret(rule, _options(rule.tokens))
    except ValueError as exc:
        raise MigrationError(f"{exc}: {_short(rule.text)!r}", file=filename, line=rule.line) from None


def _interpret(saved: _SavedRule, options: list[_Option]) -> _Rule:
    rule = _Rule(saved.line, saved.text)

    def problem(text: str, module: str = "") -> None:
        rule.problems.append((module, text))

    for option in options:
        name, values, negated = option.name, option.values, option.negated
        value = values[0] if values else ""
        shown = f"{'! ' if negated else ''}{name} {' '.join(values)}".strip()
        if option.context not in (None, "target", *_KNOWN_MODULES):
            continue  # the module itself is the problem, reported once
        if name in _NEEDS_VALUE and len(values) != 1:
            raise ValueError(f"{name} needs a value" if not values else f"unexpected {values[1]!r} after {name}")
        if name == "-i":
            if negated:
                problem(f"{shown} (every interface but one)")
            else:
                rule.in_iface = value
        elif name == "-o":
            if negated:
                problem(f"{shown} (every output interface but one)")
            else:
                rule.out_iface = value
        elif name == "-s":
            if negated:
                problem(f"{shown} (everybody but these: an allow lists who may connect)")
                continue
            for item in value.split(","):
                try:
                    rule.sources.append(_source(item))
                except (AddressError, ValueError):
                    problem(f"source {item!r} is not an address or network")
        elif name == "-d":
            rule.destinations.append(f"{'! ' if negated else ''}{value}")
        elif name == "-p":
            proto = value.lower()
            if negated:
                problem(shown)
            elif proto in _PROTOCOLS:
                rule.proto = _PROTOCOLS[proto]
            else:
                rule.other_proto = proto
        elif name == "-m":
            if value == "set":
                problem("-m set (an ipset: define its members in [sets], use \"@name\")", "set")
            elif value not in _KNOWN_MODULES:
                problem(f"-m {value}", value)
        elif name in ("-j", "-g"):
            rule.target = value
        elif name == "-f":
            problem("-f (fragments)")
        elif name in ("--dport", "--destination-port", "--dports", "--destination-ports"):
            if negated:
                problem(f"{shown} (every port but these)")
            else:
                rule.container_ports = (rule.container_ports or []) + _port_list(value, rule.proto)
                rule.port_option = "--dport" if "ports" not in name else "-m multiport --dports"
        elif name == "--ctorigdstport":
            if negated:
                problem(f"{shown} (every port but these)")
            else:
                rule.host_ports = (rule.host_ports or []) + _port_list(value, rule.proto)
        elif name in ("--ctstate", "--state"):
            if negated:
                problem(shown)
            else:
                rule.states = frozenset(state.upper() for state in value.split(","))
        elif name == "--ctdir" and value.upper() == "ORIGINAL" and not negated:
            pass
        elif name == "--syn" and not negated:
            pass  # first packets of connections: what the policy judges anyway
        elif name == "--tcp-flags" and len(values) == 2 and values[1] == "SYN" and not negated:
            pass
        elif name == "--comment":
            rule.comment = value
        elif name == "--src-range" and not negated:
            try:
                first, last = (network_of(part) for part in value.split("-", 1))
                if first.version != last.version or first.value > last.value:
                    raise ValueError(value)
                rule.sources += [_format_net(net) for net in range_cidrs(first.version, first.value, last.value)]
            except (AddressError, ValueError):
                problem(f"{shown} is not an address range")
        elif option.context == "target":
            if name == "--log-prefix":
                rule.log_prefix = value
            # --reject-with, --log-level, ...: the default's own details
        else:
            problem(shown, option.context or "")
    for destination in rule.destinations:
        problem(f"-d {destination} (a destination address; a policy names published ports)")
    return rule


def _port_list(text: str, proto: str | None) -> list[PortRange]:
    """"80", "8000:8100", "80,443,8000:8100", ":1024", service names -> ranges (port 0 dropped)."""
    ranges = []
    for item in text.split(","):
        first_text, colon, last_text = item.partition(":")
        first = _port(first_text, proto) if first_text else 0
        last = (_port(last_text, proto) if last_text else 65535) if colon else first
        if first > last:
            raise ValueError(f"reversed port range {item!r}")
        if last == 0:
            raise ValueError("port 0")
        ranges.append(PortRange(max(first, 1), last))
    return ranges


def _port(text: str, proto: str | None) -> int:
    if text.isdigit():
        if int(text) > 65535:
            raise ValueError(f"port {text} out of range")
        return int(text)
    try:
        return socket.getservbyname(text, proto or "tcp")
    except OSError:
        raise ValueError(f"unknown port or service name {text!r}") from None


def _source(text: str) -> str:
    return _format_net(network_of(text.strip()))


def _format_net(net: object) -> str:
    """A host network without its /32 (/128): how people write addresses in a policy."""
    text = str(net)
    address, _, length = text.partition("/")
    return address if length in ("32", "128") and ((":" in address) == (length == "128")) else text


# -- DOCKER-USER from an iptables-save file -----------------------------------------------------------
class _IptablesImport:
    """The chain, read as the kernel runs it: first match wins, each interface's first catch-all ends it."""

    def __init__(self, job: _Import, save: _SaveFile) -> None:
        self.job = job
        self.save = save
        self.inlined: set[str] = set()  # chains whose rules were read in place of the jump to them

    def run(self) -> None:
        job = self.job
        if "filter" not in self.save.tables:
            raise MigrationError("no *filter table (DOCKER-USER lives there)", file=job.filename)
        rules = self.inline([_parse_rule(saved, job.filename) for saved in self.save.chain("filter", USER_CHAIN)])
        self.other_chains()
        if not rules:
            job.warn(None, f"no rules in {USER_CHAIN}: the policy allows nothing (every published port closed "
                           "on the external interfaces)")
            return
        ends = self.ends(rules)
        global_end = ends.get(None)
        named = list(dict.fromkeys(rule.in_iface for rule in rules if rule.in_iface))

        def end_of(iface: str) -> tuple[int, _Rule] | None:
            found = [end for end in (ends.get(iface), global_end) if end is not None]
            return min(found, key=lambda end: end[0]) if found else None

        verdicts: list[_Rule] = []
        wildcards: set[str] = set()  # "eth+": filtered, but no name for external_interfaces
        for name in named:  # an interface is external when the chain ends in DROP/REJECT for it
            end = end_of(name)
            if end is not None and end[1].target in DENIES:
                verdicts.append(end[1])
                if not job.interface(name, end[1].line, end[1].text):
                    wildcards.add(name)
        if global_end is not None and global_end[1].target in DENIES:
            verdicts.append(global_end[1])
            assumed = ", ".join(job.interfaces) or DEFAULT_INTERFACE
            if not job.interfaces:
                job.interfaces.append(DEFAULT_INTERFACE)
            job.warn(global_end[1].line, f"this {global_end[1].target} applies to every interface (container egress "
                                         "and internal networks too); dockerguard judges only new connections "
                                         f"entering external_interfaces, assumed to be: {assumed}",
                     global_end[1].text)
        if not verdicts:
            last = rules[-1]
            how = f"-j {last.target}" if last.is_catch_all else "no final DROP or REJECT"
            job.warn(last.line, f"the chain ends open ({how}): the old rules let through every connection that no "
                                "rule dropped, the imported policy drops it (default = \"drop\"); add an allow for "
                                "every published port that must stay reachable", last.text)
            for name in named:
                job.interface(name, None, "")
        for verdict in verdicts:
            if verdict.out_iface:
                job.warn(verdict.line, f"this {verdict.target} only covered connections forwarded to "
                                       f"{verdict.out_iface}; dockerguard's default covers every bridge", verdict.text)
        targets = {verdict.target for verdict in verdicts}
        if targets == {"REJECT"}:
            job.default = "reject"
        elif len(targets) > 1:
            reject = next(verdict for verdict in verdicts if verdict.target == "REJECT")
            job.warn(reject.line, "some interfaces end in DROP, others in REJECT: a policy has one default; the "
                                  "import uses drop", reject.text)
        chosen = {id(end[1]) for end in ends.values()}
        for index, rule in enumerate(rules):
            if rule.is_catch_all:
                if id(rule) not in chosen and rule.target in DENIES:
                    job.warn(rule.line, "never reached (an earlier rule ends the chain for its interface): not "
                                        "imported", rule.text)
                continue
            if rule.in_iface and rule.in_iface not in job.interfaces and rule.in_iface not in wildcards:
                if not rule.is_established:
                    job.warn(rule.line, f"a rule for interface {rule.in_iface}, which these rules do not filter "
                                        "(the chain does not end in DROP/REJECT for it): not imported", rule.text)
                continue
            scope = [rule.in_iface] if rule.in_iface else job.interfaces
            if scope and all((end_of(name) or (len(rules), rule))[0] < index for name in scope):
                job.warn(rule.line, "never reached (it comes after the chain's final verdict for its "
                                    "interface): not imported", rule.text)
                continue
            self.rule(rule, rules, index, ends)

    def inline(self, rules: list[_Rule]) -> list[_Rule]:
        """`-i eth0 -j MYCHAIN` into a chain of plain rules (ACCEPT, RETURN, DROP, REJECT, LOG; no -i, no
        further jump) is that chain run in place: its rules take the jump's place. A RETURN there goes back to
        DOCKER-USER after the jump, so it is an allow only when nothing after the jump can refuse the packet;
        otherwise (and for any other jump) the jump is reported instead."""
        inlined: list[_Rule] = []
        for position, rule in enumerate(rules):
            chain = self.save.chains.get(("filter", rule.target or ""))
            plain_jump = (chain is not None and rule.target != USER_CHAIN and not rule.problems
                          and rule.proto is None and rule.other_proto is None and not rule.sources
                          and not rule.destinations and rule.states is None and rule.host_ports is None
                          and rule.container_ports is None and "-g" not in rule.text.split())
            if not plain_jump or not chain:
                inlined.append(rule)
                continue
            body = [_parse_rule(saved, self.job.filename) for saved in chain]
            plain_body = all(sub.target in (*ACCEPTS, "LOG", *DENIES) and not sub.in_iface for sub in body)
            returns_mean_allow = all(later.target in ACCEPTS or (rule.in_iface and later.in_iface not in (
                None, rule.in_iface)) for later in rules[position + 1:])
            if not plain_body or (any(sub.target == "RETURN" for sub in body) and not returns_mean_allow):
                inlined.append(rule)
                continue
            self.inlined.add(rule.target or "")
            for sub in body:
                sub.in_iface = rule.in_iface
                sub.comment = sub.comment or rule.comment
            inlined += body
        return inlined

    @staticmethod
    def ends(rules: list[_Rule]) -> dict[str | None, tuple[int, _Rule]]:
        """Each interface's first catch-all (None: the first one without -i), before the global one."""
        ends: dict[str | None, tuple[int, _Rule]] = {}
        for index, rule in enumerate(rules):
            if not rule.is_catch_all or None in ends:
                continue
            if rule.in_iface not in ends:
                ends[rule.in_iface] = (index, rule)
        return ends

    def rule(self, rule: _Rule, rules: list[_Rule], index: int, ends: dict[str | None, tuple[int, _Rule]]) -> None:
        job = self.job
        target = rule.target
        if rule.is_established:
            return  # dockerguard passes established and related traffic itself
        if target in ACCEPTS:
            self.allow(rule)
        elif target == "LOG":
            follows = rules[index + 1] if index + 1 < len(rules) else None
            ending = follows is not None and follows.is_catch_all and follows.target in DENIES and any(
                end[1] is follows for end in ends.values())
            if ending and not rule.unmappable and rule.proto is None and not rule.sources and (
                    rule.container_ports is None and rule.host_ports is None):
                job.log_dropped = True
                job.warn(rule.line, "logging what the chain drops becomes log_dropped = true: dockerguard logs at "
                                    "most 5/minute with the prefix 'dockerguard-drop: '"
                                    + (f" (was {rule.log_prefix!r})" if rule.log_prefix else ""), rule.text)
            else:
                job.warn(rule.line, "a LOG rule for some traffic only: dockerguard logs what its default drops "
                                    "(log_dropped), nothing else: not imported", rule.text)
        elif target in DENIES:
            if rule.states and "INVALID" in rule.states:
                job.warn(rule.line, f"{target} of packets in conntrack state INVALID: dockerguard has no such "
                                    "rule: not imported", rule.text)
            else:
                what = f" ({'; '.join(rule.unmappable)})" if rule.unmappable else ""
                job.warn(rule.line, f"a {target} for some traffic only{what}: a policy cannot deny, it allows (and "
                                    "its default refuses the rest); a later allow for the same port now admits "
                                    "what this rule refused: not imported", rule.text)
        elif target is None:
            job.warn(rule.line, "a rule without -j (it only counts packets): not imported", rule.text)
        else:
            job.warn(rule.line, f"a jump to chain {target}: its rules are not followed: not imported (write them "
                                "into DOCKER-USER, or into the policy by hand)", rule.text)

    def allow(self, rule: _Rule) -> None:
        job = self.job
        problems = rule.unmappable
        if rule.other_proto:
            problems.append(f"-p {rule.other_proto} (dockerguard allows TCP and UDP ports)")
        if problems:
            job.warn(rule.line, f"not imported: a policy cannot express {'; '.join(problems)}. The policy does not "
                                "allow this traffic: write an allow by hand if it must pass", rule.text)
            return
        protos = [rule.proto] if rule.proto else ["tcp", "udp"]
        sources = rule.sources or [ANY]
        comment = rule.comment or job.default_comment(rule.line)
        if rule.out_iface:
            job.warn(rule.line, f"-o {rule.out_iface}: dockerguard does not look at the bridge a connection is "
                                "forwarded to; the allow covers the published port whatever container is behind "
                                "it", rule.text)
        if rule.in_iface and len(job.interfaces) > 1:
            job.warn(rule.line, f"the allow covers every external interface ({', '.join(job.interfaces)}); the "
                                f"old rule only {rule.in_iface}", rule.text)
        for proto in protos:
            if rule.host_ports is not None:
                job.entry(rule.line, rule.text, proto, sources, comment, ports=rule.host_ports)
            elif rule.container_ports is not None:
                self.container_ports(rule, proto, sources, comment)
            else:
                job.entry(rule.line, rule.text, proto, sources, comment, ports=ALL_PORTS)

    def container_ports(self, rule: _Rule, proto: str, sources: list[str], comment: str) -> None:
        """--dport in DOCKER-USER: the packet is already DNATed, the port is the container's."""
        job = self.job
        ports = rule.container_ports or []
        shown = f"{_ports_text(ports)}/{proto}"
        because = (f"{rule.port_option} {_ports_text(ports)} in DOCKER-USER matches the CONTAINER port (Docker's "
                   "DNAT has already rewritten the destination)")
        if job.containers is None:
            job.warn(rule.line, f"{because}; the import assumes the published host port is also {shown}: check "
                                "`docker ps` (for -p 8080:80 the entry must say 8080) or rerun with --docker-socket "
                                "(Docker's docs match the published port with -m conntrack --ctorigdstport)",
                     rule.text)
            job.entry(rule.line, rule.text, proto, sources, comment, ports=ports)
            return
        matches = _published(job.containers, proto, ports)
        if not matches:
            job.warn(rule.line, f"{because}, and no running container publishes container port {shown}: the "
                                f"import keeps {_ports_text(ports)} as the published port: check", rule.text)
            job.entry(rule.line, rule.text, proto, sources, comment, ports=ports)
            return
        host = [PortRange(p.host_port, p.host_port) for _, p in matches]
        job.warn(rule.line, f"{because}; Docker publishes container port {shown} as host port "
                            f"{_ports_text(host)} ({_describe(matches)}): the entry names the host ports. "
                            "Translated from the containers running now: check", rule.text)
        named = _describe(matches)
        job.entry(rule.line, rule.text, proto, sources, f"{rule.comment} ({named})" if rule.comment else named,
                  ports=host)

    def other_chains(self) -> None:
        """Rules outside DOCKER-USER that touch Docker's traffic are not imported: say which."""
        docker_chains = []
        for (table, chain), rules in self.save.chains.items():
            if table != "filter" or chain == USER_CHAIN or chain in self.inlined or not rules:
                continue
            if chain in _DOCKER_CHAINS or chain.startswith("DOCKER-ISOLATION"):
                docker_chains.append((chain, rules[0]))
                continue
            for saved in rules:
                reason = _docker_related(saved)
                if reason:
                    self.job.warn(saved.line, f"a rule in chain {chain} that looks Docker-related ({reason}): "
                                              f"only {USER_CHAIN} is imported; check what it did by hand",
                                  saved.text)
        if docker_chains:
            names = ", ".join(chain for chain, _ in docker_chains)
            first = docker_chains[0][1]
            self.job.warn(first.line, f"the file holds Docker's own chains ({names}), saved while Docker ran: not "
                                      "imported (Docker writes them itself; restoring them at boot fights Docker)",
                          first.text)


def _docker_related(saved: _SavedRule) -> str | None:
    from .backends.iptables.rules import canonical

    try:
        spec = canonical(" ".join(_requote(token) for token in saved.tokens))
    except ValueError:
        spec = " ".join(saved.tokens)
    if saved.chain == "FORWARD" and any(pattern.match(spec) for pattern in _DOCKER_FORWARD):
        return None  # Docker's own FORWARD rules
    tokens = saved.tokens
    for index, token in enumerate(tokens[:-1]):
        value = tokens[index + 1]
        if token in ("-i", "-o", "--in-interface", "--out-interface") and _DOCKER_IFACE.match(value):
            return f"{token} {value}"
        if token in ("-j", "-g") and value.startswith("DOCKER"):
            return f"{token} {value}"
        if token in ("-d", "--destination", "-s", "--source"):
            try:
                net = network_of(value)
            except (AddressError, ValueError):
                continue
            if net.version == 4 and _DOCKER_POOL.value <= net.value <= _DOCKER_POOL.last:
                return f"{token} {value}, in Docker's default address pool"
        if token == "--ctorigdstport":
            return f"{token} {value}"
        if token == "--comment" and "docker" in value.lower():
            return f"comment {value!r}"
    return None


def _requote(token: str) -> str:
    from .backends.iptables.rules import quote

    return quote(token)


# -- ufw rules files (after.rules, user.rules) -----------------------------------------------------------
@dataclass(frozen=True)
class _Route:
    """A `ufw route allow` rule (what `ufw-docker allow` adds): container address and CONTAINER ports."""

    line: int
    rule: str
    address: str | None  # None: any container
    ports: tuple[PortRange, ...]  # container ports; empty: all
    protos: tuple[str, ...]
    sources: tuple[str, ...]
    name: str | None  # the container, from ufw-docker's comment
    comment: str


class _UfwRulesImport:
    """ufw's rules files: `route` tuples (and hand-written ufw-user-forward rules) become entries, ufw-docker's
    DOCKER-USER block the default."""

    def __init__(self, job: _Import, save: _SaveFile, family: int | None) -> None:
        self.job = job
        self.save = save
        self.family = family

    def run(self) -> None:
        job = self.job
        routes = 0
        seen_tuples: set[int] = set()
        for saved in self.save.rules("filter"):
            chain = saved.chain
            chain_family = 6 if chain.startswith("ufw6-") else 4
            if saved.tuple_line is not None:
                if saved.tuple_line in seen_tuples:
                    continue  # ufw writes one tuple line, then the rule once per protocol
                seen_tuples.add(saved.tuple_line)
                if self.family is not None and chain_family != self.family:
                    continue
                routes += self.tuple(saved)
            elif chain in ("ufw-user-forward", "ufw6-user-forward") and self.family in (None, chain_family):
                routes += self.forward_rule(saved)
        self.docker_user()
        if not routes:
            where = self.save.markers.get("ufw-docker")
            job.warn(where, "no `ufw route` rules in this file: ufw keeps them (and so the rules `ufw-docker "
                            "allow` adds) in /etc/ufw/user.rules (user6.rules for IPv6), not in after.rules: "
                            "import that file, both files concatenated, or saved `ufw status` output")

    def tuple(self, saved: _SavedRule) -> int:
        """A `### tuple ###` line: ufw's own record of a rule (action proto dport dst sport src [dapp sapp]
        direction [comment=HEX])."""
        job = self.job
        line, text = saved.tuple_line or saved.line, saved.tuple_text
        fields = text[len("### tuple ###"):].split()
        comment = ""
        if fields and fields[-1].startswith("comment="):
            comment = _unhex(fields.pop()[len("comment="):])
        if len(fields) not in (7, 9):
            raise MigrationError(f"unexpected ufw tuple {_short(text)!r}", file=job.filename, line=line)
        action, proto, dport, dst, sport, src = fields[:6]
        direction = fields[-1]
        apps = fields[6:8] if len(fields) == 9 else ["-", "-"]
        forward = action.startswith("route:")
        verb = action.split(":")[-1]
        if not forward:
            if verb.startswith("allow") or verb.startswith("limit"):
                job.warn(line, f"a ufw rule for the host itself ({verb} {dport}/{proto}): not imported "
                               "(dockerguard protects the host only with a [host] section)", text)
            return 0
        if not verb.startswith("allow"):
            job.warn(line, f"ufw route {verb}: a policy cannot deny, it allows (its default refuses the rest): "
                           "not imported", text)
            return 0
        problems = []
        if apps != ["-", "-"]:
            problems.append(f"an application profile ({' '.join(apps).replace('%20', ' ')})")
        if sport != "any":
            problems.append(f"source port {sport}")
        if proto not in ("tcp", "udp", "any"):
            problems.append(f"protocol {proto}")
        iface = self.direction(direction, line, text, problems)
        if problems:
            job.warn(line, "not imported: " + "; ".join(problems) + " (a policy cannot express it)", text)
            return 0
        try:
            ports = () if dport == "any" else tuple(_port_list(dport, None if proto == "any" else proto))
            sources = (ANY,) if src in ("0.0.0.0/0", "::/0") else (_source(src),)
        except (AddressError, ValueError) as exc:
            raise MigrationError(f"bad ufw tuple ({exc})", file=job.filename, line=line) from None
        if iface:
            job.interface(iface, line, text)
        address = None if dst in ("0.0.0.0/0", "::/0") else dst
        protos = ("tcp", "udp") if proto == "any" else (proto,)
        _map_route(job, _Route(line, text, address, ports, protos, sources, _container_name(comment), comment))
        return 1

    def direction(self, direction: str, line: int, text: str, problems: list[str]) -> str | None:
        """"in", "in_eth0", "in_eth0!out_docker0", "out_eth1" -> the incoming interface, if any."""
        iface = None
        for part in direction.split("!"):
            way, _, name = part.partition("_")
            if way == "in" and name:
                iface = name
            elif way == "out" and name:
                self.job.warn(line, f"out on {name}: dockerguard does not look at the interface a connection is "
                                    "forwarded to", text)
            elif way not in ("in", "out"):
                problems.append(f"direction {part!r}")
        return iface

    def forward_rule(self, saved: _SavedRule) -> int:
        """A hand-written `-A ufw-user-forward ...` (no tuple): the same kind of rule, in iptables syntax."""
        job = self.job
        rule = _parse_rule(saved, job.filename)
        if rule.target not in ACCEPTS:
            job.warn(rule.line, f"a rule in {saved.chain} with -j {rule.target}: only allows are imported",
                     rule.text)
            return 0
        problems = [text for module, text in rule.problems if not text.startswith("-d ")]
        if rule.other_proto:
            problems.append(f"-p {rule.other_proto}")
        if len(rule.destinations) > 1 or any(d.startswith("!") for d in rule.destinations):
            problems.append("destinations " + ", ".join(rule.destinations))
        if problems:
            job.warn(rule.line, "not imported: " + "; ".join(problems) + " (a policy cannot express it)", rule.text)
            return 0
        if rule.in_iface:
            job.interface(rule.in_iface, rule.line, rule.text)
        if rule.host_ports is not None:  # --ctorigdstport: already the published port
            for proto in [rule.proto] if rule.proto else ["tcp", "udp"]:
                job.entry(rule.line, rule.text, proto, rule.sources or [ANY],
                          rule.comment or job.default_comment(rule.line), ports=rule.host_ports)
            return 1
        address = rule.destinations[0] if rule.destinations else None
        protos = (rule.proto,) if rule.proto else ("tcp", "udp")
        _map_route(job, _Route(rule.line, rule.text, address, tuple(rule.container_ports or ()), protos,
                               tuple(rule.sources) or (ANY,), _container_name(rule.comment), rule.comment))
        return 1

    def docker_user(self) -> None:
        """ufw-docker's DOCKER-USER block: recognised, turned into the default; anything else flagged."""
        job = self.job
        private: list[tuple[int, str]] = []
        for saved in self.save.chain("filter", USER_CHAIN):
            rule = _parse_rule(saved, job.filename)
            target = rule.target or ""
            if target in ("ufw-user-forward", "ufw6-user-forward") and not rule.problems and not rule.sources:
                continue  # the hook into `ufw route` rules
            if rule.is_established or (rule.target == "ACCEPT" and rule.in_iface and rule.in_iface == rule.out_iface):
                continue  # replies, and traffic between containers of one bridge: not judged by dockerguard
            if target == "RETURN" and rule.sources and not rule.problems and rule.proto is None:
                private += [(rule.line, source) for source in rule.sources]
                continue
            if target in ("ufw-docker-logging-deny", "ufw6-docker-logging-deny", "DROP") and rule.destinations:
                continue  # ufw-docker's default: new connections to containers' private addresses dropped
            if target == "RETURN" and rule.proto == "udp" and rule.problems and all(
                    text == "--sport 53" for _, text in rule.problems):
                continue  # DNS answers to containers (legacy block): established traffic to dockerguard
            if rule.is_catch_all and target == "RETURN":
                continue  # the block's last rule: everything else goes on to Docker's rules
            if rule.states == frozenset({"INVALID"}) and target == "DROP":
                job.warn(rule.line, "DROP of packets in conntrack state INVALID: dockerguard has no such rule: "
                                    "not imported", rule.text)
                continue
            job.warn(rule.line, f"a rule in {USER_CHAIN} that is not part of ufw-docker's block: not imported",
                     rule.text)
        for chain in ("ufw-docker-logging-deny", "ufw6-docker-logging-deny"):
            for saved in self.save.chain("filter", chain):
                rule = _parse_rule(saved, job.filename)
                if rule.target == "LOG":
                    job.log_dropped = True
                    job.warn(rule.line, "ufw-docker's logging of blocked connections becomes log_dropped = true: "
                                        "dockerguard logs at most 5/minute with the prefix 'dockerguard-drop: '"
                                        + (f" (was {rule.log_prefix!r})" if rule.log_prefix else ""), rule.text)
        if private:
            lines = ", ".join(str(line) for line in sorted({line for line, _ in private}))
            nets = ", ".join(dict.fromkeys(source for _, source in private))
            job.warn(private[0][0], f"ufw-docker passed every connection from {nets} (lines {lines}) before judging "
                                    "it; dockerguard judges all new connections entering the external interfaces, "
                                    "whatever their source (traffic arriving on other interfaces is not judged): if "
                                    "such sources reach published ports through an external interface, add them to "
                                    "the allows")
        if self.save.chain("filter", USER_CHAIN):
            job.notes.append("default drop: ufw-docker's block dropped new connections to the containers that no "
                             "`ufw route` rule allowed")
        else:
            job.notes.append("default drop: ufw-docker's block (in /etc/ufw/after.rules, not in this file) drops new "
                             "connections to the containers that no `ufw route` rule allows")


# -- saved `ufw status` output ---------------------------------------------------------------------------
_STATUS_RULE = re.compile(
    r"^\s*(?:\[\s*\d+\]\s*)?(?P<to>\S.*?)\s+(?P<action>ALLOW|DENY|REJECT|LIMIT)(?:\s+(?P<dir>IN|OUT|FWD))?"
    r"(?:\s+\((?:log|log-all)\))?\s+(?P<from>\S.*?)(?:\s+#\s?(?P<comment>.*?))?\s*$", re.M)
_STATUS_PORTS = re.compile(r"^(?P<ports>\d[\d,:]*)(?:/(?P<proto>[a-z]+))?$")
_STATUS_SKIP = re.compile(r"^(Status:|Logging:|Default:|New profiles:|To\s+Action\s+From\s*$|--\s+------\s+----)")


class _UfwStatusImport:
    def __init__(self, job: _Import, text: str, family: int | None) -> None:
        self.job = job
        self.text = text
        self.family = family

    def run(self) -> None:
        job = self.job
        routes = 0
        seen: set[tuple[str, ...]] = set()
        for number, raw in enumerate(self.text.split("\n"), start=1):
            line = raw.strip()
            if not line or _STATUS_SKIP.match(line):
                if line.startswith("Status: inactive"):
                    job.warn(number, "ufw was inactive when this was saved: these rules were not in force", line)
                continue
            match = _STATUS_RULE.match(line)
            line = " ".join(line.split())  # ufw pads its columns; the rule is quoted in one line
            if match is None:
                raise MigrationError(f"not a `ufw status` line: {_short(line)!r}", file=job.filename, line=number)
            to, action, direction, src = match["to"], match["action"], match["dir"], match["from"]
            comment = match["comment"] or ""
            v6 = "(v6)" in to.split() or "(v6)" in src.split()
            if self.family is not None and (6 if v6 else 4) != self.family:
                continue
            twin = (to.replace(" (v6)", ""), action, direction or "", src.replace(" (v6)", ""), comment)
            if twin in seen:
                continue  # ufw lists a rule once per family: the IPv6 twin adds nothing
            seen.add(twin)
            if direction != "FWD":
                if action in ("ALLOW", "LIMIT") and direction != "OUT":
                    job.warn(number, f"a ufw rule for the host itself ({to} {action}): not imported (dockerguard "
                                     "protects the host only with a [host] section)", line)
                continue
            if action != "ALLOW":
                job.warn(number, f"ufw route {action.lower()}: a policy cannot deny, it allows (its default "
                                 "refuses the rest): not imported", line)
                continue
            routes += self.route(number, line, to, src, comment)
        if not routes:
            job.warn(None, "no routed (ALLOW FWD) rules: ufw-docker's allows are `ufw route` rules; the policy "
                           "allows nothing")
        job.notes.append("default drop: ufw-docker's block in /etc/ufw/after.rules drops new connections to the "
                         "containers that no `ufw route` rule allows")

    def route(self, number: int, line: str, to: str, src: str, comment: str) -> int:
        job = self.job
        problems: list[str] = []
        address, ports, proto, out_iface = self.location(to, problems, "to")
        source, sport, _, in_iface = self.location(src, problems, "from")
        if sport:
            problems.append(f"source port {sport}")
        if problems:
            job.warn(number, "not imported: " + "; ".join(problems) + " (a policy cannot express it)", line)
            return 0
        if out_iface:
            job.warn(number, f"out on {out_iface}: dockerguard does not look at the interface a connection is "
                             "forwarded to", line)
        if in_iface:
            job.interface(in_iface, number, line)
        try:
            port_list = tuple(_port_list(ports, proto)) if ports else ()
            sources = (ANY,) if source is None else (_source(source),)
        except (AddressError, ValueError) as exc:
            raise MigrationError(f"bad `ufw status` line ({exc})", file=job.filename, line=number) from None
        protos = (proto,) if proto else ("tcp", "udp")
        _map_route(job, _Route(number, line, address, port_list, protos, sources, _container_name(comment), comment))
        return 1

    @staticmethod
    def location(text: str, problems: list[str], side: str) -> tuple[str | None, str, str | None, str | None]:
        """"172.17.0.2 80/tcp on docker0 (v6)" -> (address or None for Anywhere, ports, proto, interface)."""
        words = text.split()
        iface = None
        if "(v6)" in words:
            words.remove("(v6)")
        if "on" in words:
            at = words.index("on")
            iface = words[at + 1] if at + 1 < len(words) else None
            del words[at:at + 2]
        address: str | None = None
        ports, proto = "", None
        if words and words[0] == "Anywhere":
            words.pop(0)
        elif words and not _STATUS_PORTS.match(words[0]):
            try:
                network_of(words[0])
                address = words.pop(0)
            except (AddressError, ValueError):
                problems.append(f"{side} {' '.join(words)!r} (an application profile or unknown form)")
                return None, "", None, iface
        if words:
            match = _STATUS_PORTS.match(words[0])
            if match is None or len(words) > 1:
                problems.append(f"{side} {' '.join(words)!r} (an application profile or unknown form)")
                return address, "", None, iface
            ports, proto = match["ports"], match["proto"]
            if proto not in (None, "tcp", "udp"):
                problems.append(f"protocol {proto}")
        return address, ports, proto, iface


# -- container rules: container address and container ports -> published host ports --------------------
def _map_route(job: _Import, route: _Route) -> None:
    """ufw-docker rules match a container's address and its CONTAINER port after DNAT; a policy names
    published host ports (or selects containers by name, resolved to host ports at apply time)."""
    shown = f"{_ports_text(route.ports) if route.ports else 'every port'}/{'+'.join(route.protos)}"
    target = f"container {route.address}" if route.address else "EVERY container"
    because = f"ufw matched {target} and its CONTAINER port ({shown}) after Docker's DNAT"
    placeholder = PLACEHOLDER if route.address is None else f"{PLACEHOLDER}-{re.sub(r'[:/]', '-', route.address)}"
    comment = route.comment or job.default_comment(route.line)

    def select(name: str) -> None:
        for proto in route.protos:
            job.entry(route.line, route.rule, proto, route.sources, comment, container=name,
                      container_ports=route.ports)

    if job.containers is None:
        if route.name:
            job.warn(route.line, f"{because}; without Docker (--docker-socket) the published host port is "
                                 f"unknown: the entry selects container {route.name!r} (named in ufw-docker's "
                                 f"comment) and its container port, and dockerguard allows the host port Docker "
                                 "publishes it on, looked up at apply time: check with `dockerguard plan`",
                     route.rule)
            select(route.name)
        else:
            job.warn(route.line, f"{because}" + (" (ufw-docker#48: this opens that port on every container)"
                                                 if route.address is None else "")
                     + f"; which container is unknown: fill in container = \"...\" (the placeholder "
                       f"{placeholder!r} matches no container, so the entry allows nothing until then) or rerun "
                       "with --docker-socket", route.rule)
            select(placeholder)
        return
    for proto in route.protos:
        _map_route_with_docker(job, route, proto, because, placeholder, comment)


def _map_route_with_docker(job: _Import, route: _Route, proto: str, because: str, placeholder: str,
                           comment: str) -> None:
    assert job.containers is not None
    shown = f"{_ports_text(route.ports) if route.ports else 'every port'}/{proto}"
    matches = _published(job.containers, proto, route.ports, [route.name] if route.name else None)
    owners = sorted({name for name, _ in matches})
    if matches and (route.name or route.address is None or len(owners) == 1):
        host = [PortRange(port.host_port, port.host_port) for _, port in matches]
        if route.name:
            note = ""
        elif route.address is None:
            note = ("; it opened that port on every container that has it (ufw-docker#48): remove the ones that "
                    "should stay closed")
        else:
            note = f"; Docker's container list has no addresses: check that {owners[0]} is {route.address}"
        job.warn(route.line, f"{because}; Docker publishes it as host port {_ports_text(host)} "
                             f"({_describe(matches)}){note}. Translated from the containers running now: check",
                 route.rule)
        job.entry(route.line, route.rule, proto, route.sources,
                  f"{route.comment} ({_describe(matches)})" if route.comment else _describe(matches), ports=host)
        return
    if route.name:
        running = {container.name for container in job.containers}
        why = (f"no running container is named {route.name!r}" if route.name not in running
               else f"container {route.name!r} does not publish {shown}")
        job.warn(route.line, f"{because}; {why}: the entry selects {route.name!r} by name, resolved to host ports "
                             "at apply time", route.rule)
        job.entry(route.line, route.rule, proto, route.sources, comment, container=route.name,
                  container_ports=route.ports)
        return
    why = (f"several containers publish {shown} ({_describe(matches)}) and Docker's container list has no "
           f"addresses to tell which one is {route.address}" if matches else f"no running container publishes {shown}")
    job.warn(route.line, f"{because}; {why}: fill in container = \"...\" (the placeholder {placeholder!r} matches "
                         "no container, so the entry allows nothing until then)", route.rule)
    job.entry(route.line, route.rule, proto, route.sources, comment, container=placeholder,
              container_ports=route.ports)


def _published(containers: Sequence[ContainerInfo], proto: str, container_ports: Sequence[PortRange],
               names: Sequence[str] | None = None) -> list[tuple[str, PublishedPort]]:
    """(container, published port) for each mapping of these container ports; loopback-only ones are left
    out (nothing from outside reaches them anyway)."""
    found: dict[tuple[str, int, int], tuple[str, PublishedPort]] = {}
    for container in containers:
        if names is not None and container.name not in names:
            continue
        for port in container.ports:
            if port.proto != proto or port.host_ip.startswith("127.") or port.host_ip == "::1":
                continue
            if container_ports and not any(span.first <= port.container_port <= span.last
                                           for span in container_ports):
                continue
            found.setdefault((container.name, port.container_port, port.host_port), (container.name, port))
    return sorted(found.values(), key=lambda match: (match[1].host_port, match[0]))


def _describe(matches: Sequence[tuple[str, PublishedPort]]) -> str:
    return ", ".join(f"{name} {port.container_port}->{port.host_port}" for name, port in matches)


def _container_name(comment: str) -> str | None:
    """The container ufw-docker named in its rule comment ("allow web 80/tcp"), or ufw-docker-automated's
    "web:<container id>"."""
    match = re.fullmatch(r"allow (\S+)(?: \d+/(?:tcp|udp))?", comment.strip()) or re.fullmatch(
        r"([^\s:]+):[0-9a-f]{12,64}", comment.strip())
    if match and _CONTAINER_NAME.match(match.group(1)):
        return match.group(1)
    return None


def _unhex(text: str) -> str:
    try:
        return bytes.fromhex(text).decode("utf-8", errors="replace")
    except ValueError:
        return text


# -- the policy text ------------------------------------------------------------------------------------
def _render(job: _Import, fmt: str, family: int | None, findings: Sequence[Finding],
            docker_socket: str | None) -> str:
    by_line: dict[int | None, list[Finding]] = {}
    for finding in findings:
        by_line.setdefault(finding.line, []).append(finding)
    entry_lines = {entry.line for entry in job.entries}
    label = f"{fmt}, IPv{family}" if family else fmt
    out = [f"# Imported from {job.base} ({label}) by `dockerguard import`."]
    if findings:
        count = f"{len(findings)} warning{'s' if len(findings) != 1 else ''}"
        out.append(f"# {count}: read every REVIEW note before `dockerguard apply` (`dockerguard plan` shows the "
                   "rules).")
    out.append('# Sources "any" mean every IPv4 and IPv6 address.')
    out += [_wrapped(note) for note in job.notes]
    out += [_wrapped(f"REVIEW: {finding.message}") for finding in by_line.get(None, [])]
    out.append(f"external_interfaces = [{', '.join(_toml_string(name) for name in job.interfaces)}]")
    out.append(f"default = {_toml_string(job.default)}")
    if job.log_dropped:
        out.append("log_dropped = true")
    if docker_socket:
        out.append(f"docker_socket = {_toml_string(docker_socket)}")
    for entry in job.entries:
        out += ["", "[[allow]]"]
        if entry.line is not None:
            out.append(f"# {job.base}:{entry.line}: {_comment_line(entry.rule)}")
        out += [_wrapped(f"REVIEW: {finding.message}") for finding in by_line.get(entry.line, [])]
        if entry.container:
            out.append(f"container = {_toml_string(entry.container)}")
            if entry.container_ports:
                out.append(f"container_ports = {_toml_ports(entry.container_ports)}")
        if entry.ports:
            out.append(f"ports = {_toml_ports(entry.ports)}")
        out.append(f"proto = {_toml_string(entry.proto)}")
        out.append(f"sources = [{', '.join(_toml_string(source) for source in entry.sources)}]")
        if entry.comment:
            out.append(f"comment = {_toml_string(entry.comment)}")
    skipped = [finding for finding in findings if finding.line is not None and finding.line not in entry_lines]
    if skipped:
        out += ["", "# Not imported (or only informing the settings above):"]
        for finding in skipped:
            if finding.rule:
                out.append(f"# {job.base}:{finding.line}: {_comment_line(finding.rule)}")
                out.append(_wrapped(f"REVIEW: {finding.message}"))
            else:
                out.append(_wrapped(f"{job.base}:{finding.line}: REVIEW: {finding.message}"))
    return "\n".join(out) + "\n"


def _toml_string(text: str) -> str:
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 32 or ord(char) == 127:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _toml_ports(ports: Sequence[PortRange]) -> str:
    return "[" + ", ".join(str(span.first) if span.first == span.last else f'"{span}"' for span in ports) + "]"


def _wrapped(text: str) -> str:
    """A long note as TOML comment lines (the same note is one line on stderr)."""
    return "\n".join(textwrap.wrap(_comment_line(text), width=_WIDTH, initial_indent="# ",
                                    subsequent_indent="#   ", break_on_hyphens=False, break_long_words=False))


def _comment_line(text: str) -> str:
    return "".join(" " if ord(char) < 32 or ord(char) == 127 else char for char in text)


def _clean_comment(text: str) -> str:
    """A comment the policy accepts: one line of printable text, no double quote or backslash, at most 100
    characters (control characters and line separators become spaces, format characters go)."""
    text = "".join(" " if unicodedata.category(char) in ("Cc", "Zl", "Zp") else
                   "" if unicodedata.category(char) in COMMENT_REFUSED_CATEGORIES else char
                   for char in text.replace('"', "'").replace("\\", "/"))
    cleaned = " ".join(text.split())
    return cleaned if len(cleaned) <= _MAX_COMMENT else cleaned[:_MAX_COMMENT - 3] + "..."


def _merge(ports: Sequence[PortRange]) -> tuple[PortRange, ...]:
    merged: list[PortRange] = []
    for span in sorted(set(ports)):
        if merged and span.first <= merged[-1].last + 1:
            merged[-1] = PortRange(merged[-1].first, max(merged[-1].last, span.last))
        else:
            merged.append(span)
    return tuple(merged)


def _ports_text(ports: Sequence[PortRange]) -> str:
    return ",".join(str(span) for span in _merge(ports))


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."

