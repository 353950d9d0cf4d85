"""Container-aware entries: policy syntax, resolution to published host ports, and the Docker API client."""

from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from dockerguard import PolicyError, compile_policy, parse_policy
from dockerguard.containers import resolve_containers
from dockerguard.docker import ContainerInfo, DockerClient, DockerUnavailable, PublishedPort
from dockerguard.policy import ContainerSelector, PortRange

POLICY = """
[[allow]]
container = "web"
container_ports = [80]
sources = ["198.51.100.11"]

[[allow]]
labels = { tier = "public" }
ports = [9443]

[[allow]]
ports = [443]
"""

WEB = ContainerInfo("a1", "web", (), (PublishedPort(80, "tcp", 8080, "0.0.0.0"), PublishedPort(80, "tcp", 8080, "::"),
                                      PublishedPort(9000, "tcp", 9000, "0.0.0.0")))
API = ContainerInfo("b2", "api", (("tier", "public"),), (PublishedPort(5000, "tcp", 15000, "0.0.0.0"),
                                                          PublishedPort(53, "udp", 5353, "0.0.0.0")))


def test_selector_syntax() -> None:
    policy = parse_policy(POLICY)
    assert policy.uses_containers
    assert policy.allow[0].containers == ContainerSelector("web", (), (PortRange(80, 80),))
    assert policy.allow[0].ports == ()
    assert policy.allow[1].containers == ContainerSelector(None, (("tier", "public"),), ())
    assert not parse_policy("[[allow]]\nports = [1]\n").uses_containers


@pytest.mark.parametrize(("text", "words"), [
    ('[[allow]]\ncontainer_ports = [80]\n', "needs 'container' or 'labels'"),
    ('[[allow]]\ncontainer = "/web"\n', "expected a container name"),
    ('[[allow]]\nlabels = { a = 1 }\n', "table of label"),
    ('[[allow]]\ncontainer = "web"\ncontainer_ports = [0]\n', "port 0 out of range"),
    ('[[allow]]\nproto = "tcp"\n', "or 'container'/'labels'"),
    ('[host]\n[[host.allow]]\ncontainer = "web"\n', "containers are selected in [[allow]]"),
    ('docker_socket = "docker.sock"\n', "absolute path"),
])
def test_selector_errors(text: str, words: str) -> None:
    with pytest.raises(PolicyError, match=words.replace("[", r"\[")):
        parse_policy(text)


def test_resolution_uses_the_published_host_ports() -> None:
    resolved, resolutions = resolve_containers(parse_policy(POLICY), [WEB, API])
    assert not resolved.uses_containers
    web, public, plain = resolved.allow
    assert web.ports == (PortRange(8080, 8080), PortRange(8080, 8080))  # v4 and v6 bindings; the compiler merges
    assert public.ports == (PortRange(9443, 9443), PortRange(15000, 15000))  # explicit ports are kept, udp 53 not
    assert plain.ports == (PortRange(443, 443),)
    assert "web 80/tcp -> host 8080" in resolutions[0].describe()
    ruleset = compile_policy(resolved)
    assert ruleset.allows[0].ports == (PortRange(8080, 8080),)


def test_entry_with_no_running_container_allows_nothing() -> None:
    resolved, resolutions = resolve_containers(parse_policy(POLICY), [])
    assert [entry.ports for entry in resolved.allow] == [(PortRange(9443, 9443),), (PortRange(443, 443),)]
    assert "no running container" in resolutions[0].describe()
    # the entries left keep their numbers in the file (metrics and trace name entries by them)
    assert [rule.entry for rule in compile_policy(resolved).allows] == [1, 1, 2, 2]


def test_compiler_refuses_unresolved_selectors() -> None:
    with pytest.raises(ValueError, match="resolved first"):
        compile_policy(parse_policy(POLICY))


# -- the HTTP-over-unix-socket client against a real socket ---------------------------------------
CONTAINERS_JSON = [
    {"Id": "a1" * 32, "Names": ["/web"], "Labels": {"tier": "public"},
     "Ports": [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
               {"PrivatePort": 443, "Type": "tcp"}]},
]
HOLD, RELEASE = threading.Event(), threading.Event()
EVENTS = [{"Type": "container", "Action": "start", "Actor": {"ID": "a1", "Attributes": {"name": "web"}}}]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def address_string(self) -> str:  # unix sockets have no peer address
        return "unix"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/containers/json":
            body = json.dumps(CONTAINERS_JSON).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path.startswith("/events"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if HOLD.is_set():  # a quiet daemon: the stream stays open with nothing to say
                self.wfile.flush()
                RELEASE.wait(5)
                return
            for event in EVENTS:
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")  # the daemon went away
        else:
            self.send_error(404, "no such thing")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def api_socket(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "docker.sock")
    server = _Server(path, _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path
    server.shutdown()
    server.server_close()


def test_client_lists_published_ports(api_socket: str) -> None:
    client = DockerClient(api_socket)
    assert client.ping() is False  # /_ping is not served by this fake: 404 means unavailable
    (web,) = client.containers()
    assert web.name == "web" and web.labels == (("tier", "public"),)
    assert web.ports == (PublishedPort(80, "tcp", 8080, "0.0.0.0"),)  # the unpublished 443 is left out


def test_client_streams_events_and_reports_the_end(api_socket: str) -> None:
    stream = DockerClient(api_socket).events(idle_timeout=2)
    assert next(stream) == EVENTS[0]
    with pytest.raises(DockerUnavailable, match="closed the event stream"):
        next(stream)


def test_client_without_daemon(tmp_path: Path) -> None:
    with pytest.raises(DockerUnavailable, match="cannot reach Docker"):
        DockerClient(str(tmp_path / "absent.sock")).containers()


def test_quiet_stream_ticks_and_closes_at_once(api_socket: str) -> None:
    HOLD.set()
    try:
        stream = DockerClient(api_socket).events(idle_timeout=0.1)
        assert next(stream) is None and next(stream) is None  # idle ticks for periodic drift checks
        started = time.monotonic()
        stream.close()  # must not wait for the blocked reader (it once deadlocked here)
        assert time.monotonic() - started < 1
    finally:
        HOLD.clear()
        RELEASE.set()
