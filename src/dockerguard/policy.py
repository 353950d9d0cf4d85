"""The policy file: TOML parsed once and validated into frozen dataclasses.

Every mistake becomes a PolicyError naming the file, the line (best effort: TOML parsers do not
report the line of a key, so it is looked up in the text) and the key.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

from .backends import BACKEND_CHOICES, check_backend_name
from .errors import PolicyError, UsageError
from .net import ANY, PROTOCOLS, AddressError, Network, PortRange, parse_network

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.9/3.10 hosts
    import tomli as tomllib

DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
DEFAULT_VERDICTS = ("drop", "reject")
ANY_SOURCE = ANY

_SET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
# Linux interface names: at most 15 bytes, no slash, no whitespace, not "." or "..".
_IFNAME = re.compile(r"^[^/\s:]{1,15}$")
_MAX_COMMENT = 100
_CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")  # Docker's own rule for names


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
    """One [[allow]] entry: new connections to these published host ports from these sources pass."""

    ports: tuple[PortRange, ...]
    proto: str
    sources: tuple[Source, ...]
    comment: str = ""
    containers: ContainerSelector | None = None


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
    path: str | None = None
    # sha256 of the file's bytes (load_policy): the same bytes always mean the same policy.
    source_digest: str | None = None

    @property
    def uses_containers(self) -> bool:
        """Whether applying needs the Docker API (some entry selects containers)."""
        return any(entry.containers is not None for entry in self.allow)

    def address_set(self, name: str) -> AddressSet:
        for address_set in self.sets:
            if address_set.name == name:
                return address_set
        raise KeyError(name)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file. Raises PolicyError on any mistake."""
    path = Path(path)
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise PolicyError("file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read: {exc}", file=str(path)) from None
    return replace(parse_policy(text, filename=str(path)), source_digest=source_digest(data))


def source_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_policy(text: str, filename: str = "<policy>") -> Policy:
    """Validate policy TOML given as text (the file name is used in error messages only)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = _line_from_toml_error(str(exc), text)
        raise PolicyError(f"invalid TOML: {exc}", file=filename, line=line) from None
    return _Validator(text, filename).policy(raw)


def _line_from_toml_error(message: str, text: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    if match:
        return int(match.group(1))
    return max(1, len(text.splitlines())) if "end of document" in message else None


class _Validator:
    """Turns the parsed TOML document into a Policy, raising PolicyError with a location."""

    TOP_KEYS = ("backend", "external_interfaces", "default", "log_dropped", "sets", "allow", "host",
                "docker_socket", "filter_proxy_path")
    ALLOW_KEYS = ("ports", "proto", "sources", "comment", "container", "labels", "container_ports")
    HOST_KEYS = ("allow", "icmp_echo", "default")

    def __init__(self, text: str, filename: str) -> None:
        self.lines = text.splitlines()
        self.filename = filename

    def fail(self, path: tuple[str | int, ...], message: str) -> PolicyError:
        return PolicyError(message, file=self.filename, line=self._locate(path), key=_format_key(path))

    def policy(self, raw: Mapping[str, Any]) -> Policy:
        self._no_unknown_keys(raw, self.TOP_KEYS, ())
        backend = raw.get("backend", "auto")
        try:
            check_backend_name(backend)
        except UsageError:
            raise self.fail(("backend",), f"expected one of {', '.join(BACKEND_CHOICES)}, got {backend!r}") from None
        default = self._verdict(raw, ())
        log_dropped = self._bool(raw, "log_dropped", False)
        filter_proxy_path = self._bool(raw, "filter_proxy_path", True)
        sets = self._sets(raw.get("sets", {}))
        set_names = {address_set.name for address_set in sets}
        allow = self._allow_list(raw, (), set_names)
        host = self._host(raw["host"], set_names) if "host" in raw else None
        return Policy(
            backend=backend,
            external_interfaces=self._interfaces(raw.get("external_interfaces", ["eth0"])),
            default=default,
            log_dropped=log_dropped,
            sets=sets,
            allow=allow,
            host=host,
            docker_socket=self._socket(raw.get("docker_socket", DEFAULT_DOCKER_SOCKET)),
            filter_proxy_path=filter_proxy_path,
            path=None if self.filename.startswith("<") else self.filename,
        )

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
        return tuple(self._allow(entry, (*base, "allow", index), set_names) for index, entry in enumerate(entries))

    def _host(self, value: Any, set_names: set[str]) -> HostPolicy:
        base = ("host",)
        if not isinstance(value, dict):
            raise self.fail(base, "expected a [host] table")
        self._no_unknown_keys(value, self.HOST_KEYS, base)
        icmp_echo = value.get("icmp_echo", True)
        if not isinstance(icmp_echo, bool):
            raise self.fail((*base, "icmp_echo"), f"expected true or false, got {icmp_echo!r}")
        allow = self._allow_list(value, base, set_names)
        for index, entry in enumerate(allow):
            if entry.containers is not None:
                raise self.fail((*base, "allow", index), "host rules take ports; containers are selected in [[allow]]")
        return HostPolicy(allow, icmp_echo, self._verdict(value, base))

    def _socket(self, value: Any) -> str:
        if not isinstance(value, str) or not value.startswith("/"):
            raise self.fail(("docker_socket",), f"expected an absolute path to Docker's unix socket, got {value!r}")
        return value

    def _containers(self, entry: Mapping[str, Any], base: tuple[str | int, ...]) -> ContainerSelector | None:
        if not any(key in entry for key in ("container", "labels", "container_ports")):
            return None
        name = entry.get("container")
        if name is not None and (not isinstance(name, str) or not _CONTAINER_NAME.match(name)):
            raise self.fail((*base, "container"), f"expected a container name, got {name!r}")
        labels = entry.get("labels", {})
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise self.fail((*base, "labels"), 'expected a table of label = "value", e.g. { app = "web" }')
        if name is None and not labels:
            raise self.fail(base, "container_ports needs 'container' or 'labels' to say which containers")
        ports = self._ports(entry["container_ports"], (*base, "container_ports")) if "container_ports" in entry else ()
        return ContainerSelector(name, tuple(sorted(labels.items())), ports)

    def _interfaces(self, value: Any) -> tuple[str, ...]:
        key = ("external_interfaces",)
        if not isinstance(value, list) or not value:
            raise self.fail(key, 'expected a non-empty list of interface names, e.g. ["eth0"]')
        for name in value:
            if not isinstance(name, str) or not _IFNAME.match(name) or name in (".", ".."):
                raise self.fail(key, f"invalid interface name {name!r} "
                                     "(1-15 characters, no '/', ':' or spaces)")
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

    def _allow(self, entry: Any, base: tuple[str | int, ...], set_names: set[str]) -> Allow:
        if not isinstance(entry, dict):
            raise self.fail(base, "expected a table")
        self._no_unknown_keys(entry, self.ALLOW_KEYS, base)
        containers = self._containers(entry, base)
        if "ports" not in entry and containers is None:
            raise self.fail(base, "missing key 'ports' (the published host ports, e.g. [80, \"8000-8100\"]) "
                                  "or 'container'/'labels'")
        proto = entry.get("proto", "tcp")
        if proto not in PROTOCOLS:
            raise self.fail((*base, "proto"), f"expected 'tcp' or 'udp', got {proto!r}")
        comment = entry.get("comment", "")
        if not isinstance(comment, str) or len(comment) > _MAX_COMMENT or '"' in comment:
            raise self.fail((*base, "comment"),
                            f"expected text of at most {_MAX_COMMENT} characters, without '\"'")
        return Allow(
            ports=self._ports(entry["ports"], (*base, "ports")) if "ports" in entry else (),
            proto=proto,
            sources=self._sources(entry.get("sources", ["any"]), (*base, "sources"), set_names),
            comment=comment,
            containers=containers,
        )

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
            elif isinstance(item, str) and re.fullmatch(r"\s*\d+\s*(-\s*\d+\s*)?", item):
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
            if item == "any":
                sources.extend(ANY_SOURCE)
            elif isinstance(item, str) and item.startswith("@"):
                if item[1:] not in set_names:
                    known = ", ".join(sorted(set_names)) or "none defined"
                    raise self.fail(key, f"unknown set {item!r} (known sets: {known})")
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
                raise self.fail((*base, key), f"unknown key (expected one of: {', '.join(allowed)})")

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
