"""The policy file: TOML parsed once and validated into frozen dataclasses.

Every mistake becomes a PolicyError naming the file, the line (best effort: TOML parsers do not
report the line of a key, so it is looked up in the text) and the key.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import stat
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, TypeVar, Union

from . import DEFAULT_DOCKER_SOCKET
from .backends import BACKEND_CHOICES, check_backend_name
from .errors import PolicyError, UsageError
from .net import ANY, IFNAME, PROTOCOLS, AddressError, Limit, Network, PortRange, parse_network

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.9/3.10 hosts
    import tomli as tomllib

# tomli is tomllib's own upstream, compiled with mypyc: 3x faster (100,000 inline sources: 0.41 s -> 0.14 s)
# but 10 ms more to import, so it is used only for files large enough to repay that.
_COMPILED_TOML_FROM = 64 << 10

MAX_POLICY_FILE = 16 << 20  # a policy with 100,000 inline sources is ~3 MiB
MAX_SOURCES_FILE = 64 << 20  # FireHOL's largest lists are ~10 MiB
DEFAULT_VERDICTS = ("drop", "reject")
EGRESS_ACTIONS = ("allow", "drop", "reject")
ANY_SOURCE = ANY

_SET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
_MAX_COMMENT = 100
# Comments land in nft strings, iptables-restore lines and unit files: printable text only. Refused: control
# characters (a newline starts a line of its own), format characters (invisible; bidi overrides), line and
# paragraph separators (U+2028/U+2029 end a line for many readers), surrogates, private and unassigned code
# points; '"' and '\\' (they end or escape a quoted string).
COMMENT_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_NETWORK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")  # Docker's network names
_CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")  # Docker's own rule for names
_T = TypeVar("_T")


@dataclass(frozen=True)
class SetRef:
    """A reference to a named address set ("@office" in the policy)."""

    name: str

    def __str__(self) -> str:
        return f"@{self.name}"


Source = Union[Network, SetRef]


@dataclass(frozen=True)
class AddressSet:
    name: str
    networks: tuple[Network, ...]


@dataclass(frozen=True)
class ContainerSelector:
    """Containers chosen by name and/or labels; their published host ports are looked up through the
    Docker API at apply time (and kept current by `watch`)."""

    name: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    container_ports: tuple[PortRange, ...] = ()  # empty: every port the container publishes

    def __str__(self) -> str:
        parts = [f"container {self.name}"] if self.name else []
        parts += [f"label {key}={value}" for key, value in self.labels]
        if self.container_ports:
            parts.append(f"container ports {','.join(map(str, self.container_ports))}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Allow:
    """One [[allow]] entry: new connections to these published host ports from these sources pass,
    within `limit` (new connections per source) and `max_connections` (open at once, per source)."""

    ports: tuple[PortRange, ...]
    proto: str
    sources: tuple[Source, ...]
    comment: str = ""
    containers: ContainerSelector | None = None
    limit: Limit | None = None
    max_connections: int | None = None
    # Its index in the file's [[allow]] list once entries selecting no container were left out
    # (containers.resolve_containers); None: its index here. Metrics and trace name entries by it.
    position: int | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Deny:
    """One [[deny]] entry: everything from these sources (to these published ports, when given) is
    refused before any allow is looked at."""

    sources: tuple[Source, ...]
    ports: tuple[PortRange, ...] = ()  # empty: every port and protocol
    proto: str | None = None  # with ports: "tcp" or "udp"
    action: str = "drop"  # "drop" or "reject"
    comment: str = ""


@dataclass(frozen=True)
class Egress:
    """One [[egress]] entry: new connections that containers open to the outside (through an external
    interface) get `action` when they come from the selected containers (`containers` by name/labels,
    `networks` by Docker network, `sources` by address; none: every container) and go to `destinations`
    (and `ports`). The first matching entry decides; none: the policy's `egress_default`."""

    destinations: tuple[Source, ...]
    action: str = "allow"  # "allow", "drop" or "reject"
    containers: ContainerSelector | None = None
    networks: tuple[str, ...] = ()
    sources: tuple[Source, ...] = ()
    ports: tuple[PortRange, ...] = ()
    proto: str | None = None
    comment: str = ""


@dataclass(frozen=True)
class HostPolicy:
    """The optional [host] section: the INPUT side, protecting the host itself on external interfaces."""

    allow: tuple[Allow, ...] = ()
    icmp_echo: bool = True
    default: str = "drop"


@dataclass(frozen=True)
class Policy:
    backend: str = "auto"
    external_interfaces: tuple[str, ...] = ("eth0",)
    default: str = "drop"
    log_dropped: bool = False
    sets: tuple[AddressSet, ...] = ()
    allow: tuple[Allow, ...] = ()
    host: HostPolicy | None = None
    docker_socket: str = DEFAULT_DOCKER_SOCKET
    # Judge connections addressed to the host itself on published ports (docker-proxy's path) too.
    filter_proxy_path: bool = True
    deny: tuple[Deny, ...] = ()
    bans: bool = True  # the ban sets other tools (fail2ban, crowdsec) write to are checked first
    egress: tuple[Egress, ...] = ()
    egress_default: str = "allow"  # what containers' other new connections to the outside get
    path: str | None = None
    # sha256 of the file's bytes (load_policy): the same bytes always mean the same policy.
    source_digest: str | None = None
    # The source files (sources_file) read, each with the sha256 of its bytes: part of "the same policy".
    source_files: tuple[tuple[str, str], ...] = ()

    @property
    def uses_containers(self) -> bool:
        """Whether applying needs the Docker API (some entry selects containers or networks)."""
        return any(entry.containers is not None for entry in self.allow) or any(
            entry.containers is not None or entry.networks for entry in self.egress)

    def address_set(self, name: str) -> AddressSet:
        for address_set in self.sets:
            if address_set.name == name:
                return address_set
        raise KeyError(name)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file. Raises PolicyError on any mistake."""
    data = read_bounded(str(path), MAX_POLICY_FILE)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=str(path)) from None
    return replace(parse_policy(text, filename=str(path)), source_digest=source_digest(data))


def read_bounded(path: str, limit: int) -> bytes:
    """A regular file's bytes, at most `limit` of them: a FIFO would block, /dev/zero never end."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PolicyError("file not found", file=path) from None
    except OSError as exc:
        raise PolicyError(f"cannot read: {exc.strerror}", file=path) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise PolicyError(f"{kind}: expected a policy or list file", file=path)
        if info.st_size > limit:
            raise PolicyError(f"{info.st_size} bytes: larger than the {limit // (1 << 20)} MiB a file may have",
                              file=path)
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise PolicyError(f"cannot read: {exc.strerror}", file=path) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise PolicyError(f"larger than the {limit // (1 << 20)} MiB a file may have", file=path)
    return data


def source_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_policy(text: str, filename: str = "<policy>", read: Callable[[str, int], bytes] | None = None) -> Policy:
    """Validate policy TOML given as text (the file name is used in error messages and to find list files
    relative to it). `read(path, limit)` reads a list file (sources_file): from disk by default."""
    # A key is on one line: only a line with that many dots can hold one (the regex costs 4x this test).
    long_line = any(line.count(".") >= _MAX_KEY_PARTS for line in text.split("\n"))
    deep = _DEEP_KEY.search(text) if long_line else None
    if deep is not None:  # tomllib takes minutes (quadratic) over a key of 100,000 dotted parts
        line = text.count("\n", 0, deep.start()) + 1 + (text[deep.start()] == "\n")
        raise PolicyError(f"invalid TOML: a dotted key of more than {_MAX_KEY_PARTS} parts", file=filename,
                          line=line)
    toml = _toml_parser(len(text))
    try:
        raw = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        line = _line_from_toml_error(str(exc), text)
        raise PolicyError(f"invalid TOML: {exc}", file=filename, line=line) from None
    except RecursionError:  # arrays or inline tables nested thousands deep
        raise PolicyError("invalid TOML: arrays or tables nested too deeply", file=filename) from None
    except ValueError as exc:  # an integer of more than 4300 digits (int()'s limit), ...
        raise PolicyError(f"invalid TOML: {exc}", file=filename) from None
    validator = _Validator(text, filename, read or read_bounded)
    policy = validator.policy(raw)
    if validator.errors:
        raise PolicyError.of(validator.errors)
    return policy


def _toml_parser(size: int) -> ModuleType:
    if size >= _COMPILED_TOML_FROM:
        try:
            import tomli
            return tomli
        except ImportError:  # a dependency, but the standard library's parser does the same job
            pass
    return tomllib


# No key of the schema has more than 4 parts; tomllib's time grows with the square of a key's parts.
_MAX_KEY_PARTS = 32
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"[^"\n]*"|'[^'\n]*')"""
_DEEP_KEY = re.compile(rf"(?:^|[\[{{,])[ \t]*{_KEY_PART}(?:[ \t]*\.[ \t]*{_KEY_PART}){{{_MAX_KEY_PARTS}}}", re.M)


def _line_from_toml_error(message: str, text: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    if match:
        return int(match.group(1))
    return max(1, len(text.splitlines())) if "end of document" in message else None


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """ "; did you mean 'ports'?" when `word` is close to one of `choices`, else ""."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Validator:
    """Turns the parsed TOML document into a Policy. Validation goes on after a mistake: every PolicyError
    (with its location) is collected in `errors`, and the part in error is left out of the Policy."""

    TOP_KEYS = ("backend", "external_interfaces", "default", "log_dropped", "sets", "allow", "host",
                "docker_socket", "filter_proxy_path", "deny", "bans", "egress", "egress_default")
    EGRESS_KEYS = ("container", "labels", "networks", "sources", "destinations", "destinations_file", "ports",
                   "proto", "action", "comment")
    ALLOW_KEYS = ("ports", "proto", "sources", "sources_file", "comment", "container", "labels", "container_ports",
                  "limit", "limit_burst", "max_connections")
    DENY_KEYS = ("sources", "sources_file", "ports", "proto", "action", "comment")
    HOST_KEYS = ("allow", "icmp_echo", "default")

    def __init__(self, text: str, filename: str, read: Callable[[str, int], bytes]) -> None:
        self.lines = text.splitlines()
        self.filename = filename
        self.read = read
        self.files: dict[str, str] = {}  # sources files read: path -> sha256 of their bytes
        self.errors: list[PolicyError] = []

    def attempt(self, fallback: _T, check: Callable[..., _T], *args: Any) -> _T:
        """check(*args), or `fallback` when it finds a mistake (recorded in `errors`)."""
        try:
            return check(*args)
        except PolicyError as exc:
            self.errors.extend(exc.errors)
            return fallback

    def fail(self, path: tuple[str | int, ...], message: str) -> PolicyError:
        return PolicyError(message, file=self.filename, line=self._locate(path), key=_format_key(path))

    def policy(self, raw: Mapping[str, Any]) -> Policy:
        self._no_unknown_keys(raw, self.TOP_KEYS, ())
        backend = self.attempt("auto", self._backend, raw.get("backend", "auto"))
        default = self.attempt("drop", self._verdict, raw, ())
        log_dropped = self.attempt(False, self._bool, raw, "log_dropped", False)
        filter_proxy_path = self.attempt(True, self._bool, raw, "filter_proxy_path", True)
        sets = self.attempt((), self._sets, raw.get("sets", {}))
        set_names = {address_set.name for address_set in sets}
        if isinstance(raw.get("sets"), dict):  # a set in error is still known: no second error where it is used
            set_names |= {name for name in raw["sets"] if isinstance(name, str)}
        allow = self.attempt((), self._allow_list, raw, (), set_names)
        host = self.attempt(None, self._host, raw["host"], set_names) if "host" in raw else None
        deny = self.attempt((), self._deny_list, raw, set_names, default)
        egress = self.attempt((), self._egress_list, raw, set_names)
        egress_default = raw.get("egress_default", "allow")
        if egress_default not in EGRESS_ACTIONS:
            self.errors.append(self.fail(("egress_default",), f"expected one of {', '.join(EGRESS_ACTIONS)}, "
                                                              f"got {egress_default!r}"))
        return Policy(
            backend=backend,
            external_interfaces=self.attempt(("eth0",), self._interfaces, raw.get("external_interfaces", ["eth0"])),
            default=default,
            log_dropped=log_dropped,
            sets=sets,
            allow=allow,
            host=host,
            docker_socket=self.attempt(DEFAULT_DOCKER_SOCKET, self._socket,
                                       raw.get("docker_socket", DEFAULT_DOCKER_SOCKET)),
            filter_proxy_path=filter_proxy_path,
            deny=deny,
            bans=self.attempt(True, self._bool, raw, "bans", True),
            egress=egress,
            egress_default=str(egress_default),
            path=None if self.filename.startswith("<") else self.filename,
            source_files=tuple(sorted(self.files.items())),
        )

    def _backend(self, backend: Any) -> str:
        try:
            return check_backend_name(backend)
        except UsageError:
            raise self.fail(("backend",), f"expected one of {', '.join(BACKEND_CHOICES)}, got {backend!r}"
                            + (did_you_mean(backend, BACKEND_CHOICES) if isinstance(backend, str) else "")
                            ) from None

    def _bool(self, table: Mapping[str, Any], key: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail((key,), f"expected true or false, got {value!r}")
        return value

    def _verdict(self, table: Mapping[str, Any], base: tuple[str | int, ...]) -> str:
        default = table.get("default", "drop")
        if default not in DEFAULT_VERDICTS:
            raise self.fail((*base, "default"), f"expected 'drop' or 'reject', got {default!r}")
        return str(default)

    def _allow_list(self, table: Mapping[str, Any], base: tuple[str | int, ...],
                    set_names: set[str]) -> tuple[Allow, ...]:
        entries = table.get("allow", [])
        if not isinstance(entries, list):
            raise self.fail((*base, "allow"), f"expected [[{'.'.join(map(str, (*base, 'allow')))}]] tables")
        checked = (self.attempt(None, self._allow, entry, (*base, "allow", index), set_names)
                   for index, entry in enumerate(entries))
        if base == ("host",):
            checked = (self.attempt(None, self._host_allow, entry, (*base, "allow", index))
                       for index, entry in enumerate(checked))
        return tuple(entry for entry in checked if entry is not None)

    def _host(self, value: Any, set_names: set[str]) -> HostPolicy:
        base = ("host",)
        if not isinstance(value, dict):
            raise self.fail(base, "expected a [host] table")
        self._no_unknown_keys(value, self.HOST_KEYS, base)
        icmp_echo = value.get("icmp_echo", True)
        if not isinstance(icmp_echo, bool):
            self.errors.append(self.fail((*base, "icmp_echo"), f"expected true or false, got {icmp_echo!r}"))
            icmp_echo = True
        allow = self.attempt((), self._allow_list, value, base, set_names)
        return HostPolicy(allow, icmp_echo, self.attempt("drop", self._verdict, value, base))

    def _host_allow(self, entry: Allow | None, base: tuple[str | int, ...]) -> Allow | None:
        if entry is not None and entry.containers is not None:
            raise self.fail(base, "host rules take ports; containers are selected in [[allow]]")
        if entry is not None and (entry.limit is not None or entry.max_connections is not None):
            raise self.fail(base, "limits apply to published ports, in [[allow]]")
        return entry

    def _socket(self, value: Any) -> str:
        if not isinstance(value, str) or not value.startswith("/") or not value.isprintable():
            raise self.fail(("docker_socket",), f"expected an absolute path to Docker's unix socket, got {value!r}")
        return value

    def _containers(self, entry: Mapping[str, Any], base: tuple[str | int, ...]) -> ContainerSelector | None:
        if not any(key in entry for key in ("container", "labels", "container_ports")):
            return None
        name = entry.get("container")
        if name is not None and (not isinstance(name, str) or not _CONTAINER_NAME.match(name)):
            raise self.fail((*base, "container"), f"expected a container name, got {name!r}")
        labels = entry.get("labels", {})
        # Printable: labels are shown in plan/status/watch lines (a newline would forge a line of its own).
        if not isinstance(labels, dict) or not all(isinstance(v, str) and v.isprintable() and k.isprintable()
                                                   for k, v in labels.items()):
            raise self.fail((*base, "labels"),
                            'expected a table of label = "value" (printable text), e.g. { app = "web" }')
        if name is None and not labels:
            raise self.fail(base, "container_ports needs 'container' or 'labels' to say which containers")
        ports = self._ports(entry["container_ports"], (*base, "container_ports")) if "container_ports" in entry else ()
        return ContainerSelector(name, tuple(sorted(labels.items())), ports)

    def _interfaces(self, value: Any) -> tuple[str, ...]:
        key = ("external_interfaces",)
        if not isinstance(value, list) or not value:
            raise self.fail(key, 'expected a non-empty list of interface names, e.g. ["eth0"]')
        for name in value:
            if not isinstance(name, str) or not IFNAME.fullmatch(name):
                raise self.fail(key, f"invalid interface name {name!r} (1-15 characters: ASCII letters, digits, "
                                     "'_', '.', '@' or '-', starting with a letter, digit or '_'; no wildcards)")
        if len(set(value)) != len(value):
            raise self.fail(key, "interface listed twice")
        return tuple(value)

    def _sets(self, value: Any) -> tuple[AddressSet, ...]:
        if not isinstance(value, dict):
            raise self.fail(("sets",), "expected a [sets] table of name = [addresses]")
        result = []
        for name, members in value.items():
            key = ("sets", name)
            if not _SET_NAME.match(name):
                raise self.fail(key, "set names start with a letter and use letters, digits, '_' or '-'")
            if not isinstance(members, list) or not members:
                raise self.fail(key, "expected a non-empty list of addresses or CIDRs")
            networks = tuple(self._network(member, key) for member in members)
            result.append(AddressSet(name, networks))
        return tuple(result)

    def _allow(self, entry: Any, base: tuple[str | int, ...], set_names: set[str]) -> Allow | None:
        if not isinstance(entry, dict):
            raise self.fail(base, "expected a table")
        self._no_unknown_keys(entry, self.ALLOW_KEYS, base)
        errors = len(self.errors)
        unset = ContainerSelector()
        containers = self.attempt(unset, self._containers, entry, base)
        if "ports" not in entry and containers is None:
            raise self.fail(base, "missing key 'ports' (the published host ports, e.g. [80, \"8000-8100\"]) "
                                  "or 'container'/'labels'")
        proto = entry.get("proto", "tcp")
        if proto not in PROTOCOLS:
            self.errors.append(self.fail((*base, "proto"), f"expected 'tcp' or 'udp', got {proto!r}"
                                         + (did_you_mean(proto, PROTOCOLS) if isinstance(proto, str) else "")))
        allow = Allow(
            ports=self.attempt((), self._ports, entry["ports"], (*base, "ports")) if "ports" in entry else (),
            proto=proto,
            sources=self.attempt((), self._entry_sources, entry, base, set_names),
            comment=self.attempt("", self._comment, entry, base),
            containers=containers,
            limit=self.attempt(None, self._limit, entry, base),
            max_connections=self.attempt(None, self._count, entry, (*base, "max_connections")),
        )
        return allow if len(self.errors) == errors else None

    def _entry_sources(self, entry: Mapping[str, Any], base: tuple[str | int, ...],
                       set_names: set[str], default: Any = ("any",)) -> tuple[Source, ...]:
        """`sources` and/or `sources_file` (without either: `default`)."""
        if "sources_file" not in entry:
            return self._sources(entry.get("sources", list(default)), (*base, "sources"), set_names)
        listed = self._sources(entry["sources"], (*base, "sources"), set_names) if "sources" in entry else ()
        return (*listed, *self._sources_file(entry["sources_file"], (*base, "sources_file")))

    def _sources_file(self, value: Any, key: tuple[str | int, ...]) -> tuple[Network, ...]:
        """A netset file (FireHOL / ipset style: one address or CIDR per line, `#` or `;` comments)."""
        # Printable only: the path is named in messages, which must stay one line each.
        if not isinstance(value, str) or not value or not value.isprintable():
            raise self.fail(key, f"expected the path of a file of addresses, got {value!r:.100}")
        base = Path(self.filename).parent if not self.filename.startswith("<") else Path.cwd()
        path = str(base / value)
        try:
            data = self.read(path, MAX_SOURCES_FILE)
        except PolicyError as exc:
            raise self.fail(key, f"{path}: {exc.message}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(f"not UTF-8 text ({exc.reason})", file=path, key=_format_key(key)) from None
        self.files[path] = source_digest(data)
        networks = []
        for number, raw in enumerate(text.split("\n"), start=1):
            line = raw.split("#", 1)[0].split(";", 1)[0].strip()
            if not line:
                continue
            try:
                networks.append(parse_network(line))
            except AddressError as exc:
                raise PolicyError(str(exc), file=path, line=number, key=_format_key(key)) from None
        if not networks:
            raise PolicyError("no address or CIDR in the file", file=path, key=_format_key(key))
        return tuple(networks)

    def _limit(self, entry: Mapping[str, Any], base: tuple[str | int, ...]) -> Limit | None:
        if "limit" not in entry:
            if "limit_burst" in entry:
                raise self.fail((*base, "limit_burst"), "limit_burst needs a limit, e.g. limit = \"20/minute\"")
            return None
        value = entry["limit"]
        # No "/day": iptables' hashlimit cannot go below 1/hour (the nft and iptables drivers must agree).
        match = re.fullmatch(r"([0-9]{1,6})/(second|minute|hour)", value) if isinstance(value, str) else None
        if match is None or int(match.group(1)) < 1:
            raise self.fail((*base, "limit"), f'expected new connections per source as "N/second", "N/minute" '
                                              f'or "N/hour" (N >= 1), got {value!r}')
        burst = self._count(entry, (*base, "limit_burst")) or 5
        return Limit(int(match.group(1)), match.group(2), burst)

    def _count(self, entry: Mapping[str, Any], key: tuple[str | int, ...]) -> int | None:
        value = entry.get(str(key[-1]))
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
            raise self.fail(key, f"expected a whole number from 1 to 1000000, got {value!r}")
        return value

    def _deny_list(self, table: Mapping[str, Any], set_names: set[str], default: str) -> tuple[Deny, ...]:
        entries = table.get("deny", [])
        if not isinstance(entries, list):
            raise self.fail(("deny",), "expected [[deny]] tables")
        checked = (self.attempt(None, self._deny, entry, ("deny", index), set_names, default)
                   for index, entry in enumerate(entries))
        return tuple(entry for entry in checked if entry is not None)

    def _deny(self, entry: Any, base: tuple[str | int, ...], set_names: set[str], default: str) -> Deny:
        if not isinstance(entry, dict):
            raise self.fail(base, "expected a table")
        self._no_unknown_keys(entry, self.DENY_KEYS, base)
        if "sources" not in entry and "sources_file" not in entry:
            raise self.fail(base, "missing key 'sources' or 'sources_file' (who is refused)")
        ports = self.attempt((), self._ports, entry["ports"], (*base, "ports")) if "ports" in entry else ()
        proto = entry.get("proto", "tcp" if ports else None)
        if "proto" in entry and "ports" not in entry:
            raise self.fail((*base, "proto"), "proto narrows 'ports'; without ports every protocol is refused")
        if proto is not None and proto not in PROTOCOLS:
            raise self.fail((*base, "proto"), f"expected 'tcp' or 'udp', got {proto!r}")
        action = entry.get("action", default)
        if action not in DEFAULT_VERDICTS:
            raise self.fail((*base, "action"), f"expected 'drop' or 'reject', got {action!r}")
        return Deny(self.attempt((), self._entry_sources, entry, base, set_names), ports, proto, str(action),
                    self.attempt("", self._comment, entry, base))

    def _egress_list(self, table: Mapping[str, Any], set_names: set[str]) -> tuple[Egress, ...]:
        entries = table.get("egress", [])
        if not isinstance(entries, list):
            raise self.fail(("egress",), "expected [[egress]] tables")
        checked = (self.attempt(None, self._egress, entry, ("egress", index), set_names)
                   for index, entry in enumerate(entries))
        return tuple(entry for entry in checked if entry is not None)

    def _egress(self, entry: Any, base: tuple[str | int, ...], set_names: set[str]) -> Egress:
        if not isinstance(entry, dict):
            raise self.fail(base, "expected a table")
        self._no_unknown_keys(entry, self.EGRESS_KEYS, base)
        action = entry.get("action", "allow")
        if action not in EGRESS_ACTIONS:
            raise self.fail((*base, "action"), f"expected one of {', '.join(EGRESS_ACTIONS)}, got {action!r}")
        networks = entry.get("networks", [])
        if not isinstance(networks, list) or not all(isinstance(n, str) and _NETWORK_NAME.match(n) for n in networks):
            raise self.fail((*base, "networks"), 'expected a list of Docker network names, e.g. ["backend"]')
        containers = (self.attempt(None, self._containers, entry, base)
                      if any(key in entry for key in ("container", "labels")) else None)
        ports = self.attempt((), self._ports, entry["ports"], (*base, "ports")) if "ports" in entry else ()
        proto = entry.get("proto", "tcp" if ports else None)
        if proto is not None and proto not in PROTOCOLS:
            raise self.fail((*base, "proto"), f"expected 'tcp' or 'udp', got {proto!r}")
        if "proto" in entry and "ports" not in entry:
            raise self.fail((*base, "proto"), "proto narrows 'ports'; without ports every protocol matches")
        destinations = (self.attempt((), self._sources, entry.get("destinations", ["any"]), (*base, "destinations"),
                                     set_names)
                        if "destinations_file" not in entry else
                        self.attempt((), self._entry_sources, {
                            "sources_file": entry["destinations_file"],
                            **({"sources": entry["destinations"]} if "destinations" in entry else {})},
                            base, set_names))
        sources = (self.attempt((), self._sources, entry["sources"], (*base, "sources"), set_names)
                   if "sources" in entry else ())
        return Egress(destinations, str(action), containers, tuple(networks), sources, ports, proto,
                      self.attempt("", self._comment, entry, base))

    def _comment(self, entry: Mapping[str, Any], base: tuple[str | int, ...]) -> str:
        comment = entry.get("comment", "")
        if not isinstance(comment, str) or len(comment) > _MAX_COMMENT:
            raise self.fail((*base, "comment"), f"expected text of at most {_MAX_COMMENT} characters, "
                                                f"got {comment!r:.60}")
        for char in comment:
            if char in '"\\' or unicodedata.category(char) in COMMENT_REFUSED_CATEGORIES:
                raise self.fail((*base, "comment"),
                                f"comment contains {char!r} ({unicodedata.name(char, 'a control character')}): "
                                "comments are printable text without '\"' or '\\'")
        return comment

    def _ports(self, value: Any, key: tuple[str | int, ...]) -> tuple[PortRange, ...]:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.fail(key, "expected at least one port")
        ports = []
        for item in items:
            if isinstance(item, bool):  # bool is an int subclass; `true` is never a port
                raise self.fail(key, f"expected a port number or \"first-last\", got {item!r}")
            if isinstance(item, int):
                first = last = item
            # ASCII: \d also takes other scripts' digits ("٨٠" is int() 80) and \s takes U+2028.
            elif isinstance(item, str) and re.fullmatch(r"[ \t]*[0-9]{1,5}[ \t]*(-[ \t]*[0-9]{1,5}[ \t]*)?", item):
                bounds = [int(part) for part in item.split("-")]
                first, last = bounds[0], bounds[-1]
            else:
                raise self.fail(key, f"expected a port number or \"first-last\", got {item!r}")
            for port in (first, last):
                if not 1 <= port <= 65535:
                    raise self.fail(key, f"port {port} out of range (expected 1-65535)")
            if first > last:
                raise self.fail(key, f"reversed range {item!r} (expected first <= last)")
            ports.append(PortRange(first, last))
        return tuple(ports)

    def _sources(self, value: Any, key: tuple[str | int, ...], set_names: set[str]) -> tuple[Source, ...]:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.fail(key, 'expected at least one source ("any", an address/CIDR or "@set")')
        sources: list[Source] = []
        for item in items:
            if isinstance(item, str) and item[:1].isalnum() and item != "any":  # an address: 100,000 of them
                try:
                    sources.append(parse_network(item.strip()))
                    continue
                except AddressError:
                    pass  # said properly below, with the key
            if item == "any":
                sources.extend(ANY_SOURCE)
            elif isinstance(item, str) and item.startswith("@"):
                if item[1:] not in set_names:
                    known = ", ".join(sorted(set_names)) or "none defined"
                    close = did_you_mean(item[1:], sorted(set_names)).replace("did you mean '", "did you mean '@")
                    raise self.fail(key, f"unknown set {item!r}{close} (known sets: {known})")
                sources.append(SetRef(item[1:]))
            else:
                sources.append(self._network(item, key))
        return tuple(sources)

    def _network(self, value: Any, key: tuple[str | int, ...]) -> Network:
        if not isinstance(value, str):
            raise self.fail(key, f"expected an address or CIDR as a string, got {value!r}")
        try:
            return parse_network(value.strip())
        except AddressError as exc:
            raise self.fail(key, str(exc)) from None

    def _no_unknown_keys(self, table: Mapping[str, Any], allowed: Sequence[str],
                         base: tuple[str | int, ...]) -> None:
        for key in table:
            if key not in allowed:
                self.errors.append(self.fail((*base, key), f"unknown key{did_you_mean(str(key), allowed)} "
                                                           f"(expected one of: {', '.join(allowed)})"))

    def _locate(self, path: tuple[str | int, ...]) -> int | None:
        """Best-effort line number of a key path such as ("host", "allow", 2, "ports").

        The parts before an index (or all but the last part) name the table header ("host.allow");
        the index picks its n-th [[array table]]; the part after it is the key inside.
        """
        if not path:
            return None
        index = next((i for i, part in enumerate(path) if isinstance(part, int)), None)
        if index is None:
            header_parts, occurrence, rest = path[:-1], 0, path[-1:]
        else:
            header_parts, occurrence, rest = path[:index], int(path[index]), path[index + 1:]
        key = str(rest[0]) if rest else None
        headers = [n for n, line in enumerate(self.lines) if re.match(r"^\s*\[", line)]
        start, stop = 0, headers[0] if headers else len(self.lines)
        header_line: int | None = None
        if header_parts:
            header = r"\s*\.\s*".join(re.escape(str(part)) for part in header_parts)
            pattern = re.compile(rf"^\s*\[\[?\s*{header}\s*\]\]?\s*(#.*)?$")
            found = [n for n in headers if pattern.match(self.lines[n])]
            if occurrence >= len(found):
                return None
            start = found[occurrence]
            header_line = start + 1
            stop = next((n for n in headers if n > start), len(self.lines))
        if key is None:
            return header_line
        key_pattern = re.compile(rf'^\s*("{re.escape(key)}"|{re.escape(key)})\s*=')
        for number in range(start, stop):
            if key_pattern.match(self.lines[number]):
                return number + 1
        return header_line


def _format_key(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part + 1}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text
