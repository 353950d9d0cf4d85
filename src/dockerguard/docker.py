"""A small Docker Engine API client over the unix socket (no third-party dependency).

Only what dockerguard needs: list running containers with their published ports and labels, and
follow the event stream. Unversioned paths work with every Engine API version.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .errors import DockerUnavailable
from .net import IFNAME, AddressError, format_address, parse_address

if TYPE_CHECKING:
    import http.client


@dataclass(frozen=True)
class PublishedPort:
    container_port: int
    proto: str
    host_port: int
    host_ip: str


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    labels: tuple[tuple[str, str], ...]
    ports: tuple[PublishedPort, ...]
    addresses: tuple[str, ...] = ()  # its IPv4 and IPv6 addresses on Docker networks
    networks: tuple[str, ...] = ()  # the names of the networks it is attached to


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    bridge: str  # the host interface of a bridge network ("" for other drivers)


def _unix_connection(path: str, timeout: float | None) -> http.client.HTTPConnection:
    """An HTTP connection over Docker's unix socket. http.client is imported here, not at start-up:
    it pulls in ssl (~70 ms), and most commands never talk to Docker."""
    import http.client

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(path)
            self.sock = sock

    return UnixConnection("localhost", timeout=timeout)


class DockerClient:
    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _get(self, path: str, timeout: float | None = None
             ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        connection = _unix_connection(self.socket_path, self.timeout if timeout is None else timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
        except OSError as exc:
            connection.close()
            raise DockerUnavailable(f"cannot reach Docker at {self.socket_path}: {exc}") from exc
        if response.status != 200:
            body = response.read(1000).decode(errors="replace").strip()
            connection.close()
            raise DockerUnavailable(f"Docker API {path} answered {response.status}: {body}")
        return connection, response

    def _get_json(self, path: str) -> Any:
        connection, response = self._get(path)
        try:
            return json.loads(response.read())
        except (OSError, ValueError) as exc:
            raise DockerUnavailable(f"bad answer from Docker API {path}: {exc}") from exc
        finally:
            connection.close()

    def ping(self) -> bool:
        try:
            connection, _ = self._get("/_ping")
        except DockerUnavailable:
            return False
        connection.close()
        return True

    def info(self) -> dict[str, Any]:
        """The daemon's /info (since 29.0 it names its firewall backend: FirewallBackend.Driver)."""
        info = self._get_json("/info")
        if not isinstance(info, dict):
            raise DockerUnavailable(f"Docker API /info answered {type(info).__name__}, not an object")
        return info

    def containers(self) -> list[ContainerInfo]:
        """Running containers, with the host ports they publish. Docker's answer is data from outside: a
        field of the wrong type or out of range is left out (and said in `problems`), never a traceback."""
        listed = self._get_json("/containers/json")
        if not isinstance(listed, list):
            raise DockerUnavailable(f"Docker API /containers/json answered {type(listed).__name__}, not a list")
        self.problems: list[str] = []
        return [_container(raw, self.problems) for raw in listed if isinstance(raw, dict)]

    def networks(self) -> list[NetworkInfo]:
        """Docker's networks, with the host bridge interface of each bridge network."""
        listed = self._get_json("/networks")
        if not isinstance(listed, list):
            raise DockerUnavailable(f"Docker API /networks answered {type(listed).__name__}, not a list")
        return [network for raw in listed if isinstance(raw, dict) for network in [_network(raw)] if network]

    def events(self, idle_timeout: float) -> Iterator[dict[str, Any] | None]:
        """Container and network events as they happen; yields None after `idle_timeout` seconds without
        one (so a caller can do periodic work). Ends with DockerUnavailable when the daemon goes away.

        A reader thread blocks on the stream: a socket timeout would leave Python's socket file unusable
        for the next read, so the waiting with a timeout happens on a queue instead."""
        filters = quote(json.dumps({"type": ["container", "network"]}))
        connection, response = self._get(f"/events?filters={filters}")
        stream = connection.sock
        assert stream is not None
        stream.settimeout(None)  # the stream is idle for as long as nothing happens
        lines: queue.Queue[bytes | Exception] = queue.Queue()

        def read() -> None:
            try:
                while True:
                    line = response.readline()
                    lines.put(line)
                    if not line:
                        return
            except Exception as exc:  # closed by the generator, or the daemon went away
                lines.put(exc)

        threading.Thread(target=read, name="docker-events", daemon=True).start()
        try:
            while True:
                try:
                    item = lines.get(timeout=idle_timeout)
                except queue.Empty:
                    yield None
                    continue
                if isinstance(item, Exception):
                    raise DockerUnavailable(f"Docker event stream broke: {item}")
                if not item:
                    raise DockerUnavailable("Docker closed the event stream (daemon stopped or restarting)")
                if item.strip():
                    yield json.loads(item)
        finally:
            # Wake the reader first: closing the response while it blocks in readline would wait
            # for its buffer lock forever.
            with contextlib.suppress(OSError):
                stream.shutdown(socket.SHUT_RDWR)
            connection.close()


def _container(raw: dict[str, Any], problems: list[str]) -> ContainerInfo:
    ident = raw.get("Id") if isinstance(raw.get("Id"), str) else ""
    names = raw.get("Names")
    short = ident[:12] if _ID.fullmatch(ident[:12]) else "?"
    name = names[0].lstrip("/") if isinstance(names, list) and names and isinstance(names[0], str) else short
    if not _CONTAINER_NAME.fullmatch(name):  # Docker's own grammar: never a newline, quote or space in a log line
        problems.append(f"container {short}: ignored the name {name!r:.60}")
        name = short
    ports = []
    for port in raw.get("Ports") if isinstance(raw.get("Ports"), list) else []:
        if not isinstance(port, dict) or "PublicPort" not in port:  # unpublished exposed ports have none
            continue
        private, public, proto, address = port.get("PrivatePort"), port.get("PublicPort"), port.get("Type", "tcp"), \
            port.get("IP", "")
        if not (_port(private) and _port(public) and proto in ("tcp", "udp") and isinstance(address, str)):
            problems.append(f"container {name}: ignored a published port Docker described as {port!r:.200}")
            continue
        ports.append(PublishedPort(private, proto, public, address))
    labels_raw = raw.get("Labels") if isinstance(raw.get("Labels"), dict) else {}
    labels = tuple(sorted((str(k), str(v)) for k, v in labels_raw.items()))
    settings = raw.get("NetworkSettings") if isinstance(raw.get("NetworkSettings"), dict) else {}
    attached = settings.get("Networks") if isinstance(settings.get("Networks"), dict) else {}
    addresses = []
    for details in attached.values():
        for key in ("IPAddress", "GlobalIPv6Address"):
            value = details.get(key) if isinstance(details, dict) else None
            if isinstance(value, str) and value:
                try:
                    version, number = parse_address(value)
                except AddressError:
                    problems.append(f"container {name}: ignored the address {value!r:.60}")
                    continue
                addresses.append(format_address(version, number))
    published = tuple(sorted(set(ports), key=lambda p: (p.host_port, p.proto, p.host_ip)))
    return ContainerInfo(ident, name, labels, published, tuple(sorted(set(addresses))),
                         tuple(sorted(str(key) for key in attached)))


_ID = re.compile(r"[0-9a-f]{1,12}")
_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}")  # what `docker run --name` accepts


def _port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _network(raw: dict[str, Any]) -> NetworkInfo | None:
    name, ident = raw.get("Name"), raw.get("Id")
    if not isinstance(name, str) or not isinstance(ident, str):
        return None
    options = raw.get("Options") if isinstance(raw.get("Options"), dict) else {}
    bridge = ""
    if raw.get("Driver") == "bridge":
        default = "docker0" if name == "bridge" else f"br-{ident[:12]}"
        bridge = options.get("com.docker.network.bridge.name") or default
    return NetworkInfo(name, bridge if isinstance(bridge, str) and IFNAME.fullmatch(bridge) else "")
