"""A small Docker Engine API client over the unix socket (no third-party dependency).

Only what dockerguard needs: list running containers with their published ports and labels, and
follow the event stream. Unversioned paths work with every Engine API version.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .errors import DockerUnavailable

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
        """Running containers, with the host ports they publish."""
        return [_container(raw) for raw in self._get_json("/containers/json")]

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


def _container(raw: dict[str, Any]) -> ContainerInfo:
    names = raw.get("Names") or ["/" + raw.get("Id", "?")[:12]]
    ports = []
    for port in raw.get("Ports") or []:
        if "PublicPort" in port:  # unpublished exposed ports have no PublicPort
            ports.append(PublishedPort(int(port["PrivatePort"]), str(port.get("Type", "tcp")),
                                       int(port["PublicPort"]), str(port.get("IP", ""))))
    labels = tuple(sorted((str(k), str(v)) for k, v in (raw.get("Labels") or {}).items()))
    return ContainerInfo(str(raw.get("Id", "")), names[0].lstrip("/"), labels, tuple(sorted(set(ports),
                         key=lambda p: (p.host_port, p.proto, p.host_ip))))
