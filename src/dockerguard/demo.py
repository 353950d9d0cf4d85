"""`dockerguard demo`: a safe first run, in a throw-away sandbox of network namespaces.

It builds the sandbox (`dockerguard.sandbox`: an outside client, a Docker-like host publishing ports,
a container with servers), probes the published ports from outside without dockerguard, applies the
demo policy (the classic example, adapted to the sandbox's ports) with the chosen backend, probes again
from an allowed admin address and from another address, removes the rules, probes once more, and
deletes the sandbox. Nothing outside the sandbox's namespaces is touched: dockerguard runs as
`ip netns exec <host ns> python -m dockerguard ...`, so even a driver that cached a netlink socket
could only reach the sandbox, and its history goes to a temporary state directory.

Returns data (`DemoResult`); the CLI prints it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from . import sandbox
from .backends import check_backend_name
from .compiler import compile_policy
from .errors import DemoError, UsageError
from .model import Family, Ruleset
from .net import parse_address
from .policy import parse_policy
from .sandbox import HOST_EXT_V4, HOST_EXT_V6, PUBLISHED, Probe, ProbeReport, Topology

DEFAULT_BACKEND = "nft"
# --docker-firewall value -> sandbox flavour. "nftables" is Docker 29+'s "firewall-backend": "nftables".
DOCKER_FIREWALLS: dict[str, str] = {
    "iptables-nft": "iptables-nft",
    "iptables-legacy": "iptables-legacy",
    "nftables": sandbox.DOCKER_NFTABLES,
}
# An iptables driver only reaches Docker's traffic through Docker's own iptables flavour.
_ONLY_FLAVOUR = {"iptables-nft": "iptables-nft", "iptables-legacy": "iptables-legacy"}
# Most Docker hosts today: iptables-nft (Debian >= 11, Ubuntu >= 21.04).
_DEFAULT_FLAVOUR = "iptables-nft"

ADMIN = ("198.51.100.11", "2001:db8:100::11")  # the one address allowed to reach the admin console
OTHER = ("198.51.100.12", "2001:db8:100::12")  # anybody else
SOURCES: tuple[tuple[str, str], ...] = (
    (ADMIN[0], "admin"), (OTHER[0], "other"), (ADMIN[1], "admin"), (OTHER[1], "other"),
)
PORTS: tuple[tuple[str, int], ...] = (("tcp", 8080), ("tcp", 443), ("tcp", 8443), ("tcp", 9000), ("udp", 5353))

DEMO_POLICY = f"""\
# examples/classic.toml adapted to the sandbox: its "Docker" publishes tcp 8080->80, 443, 25, 8443,
# 9000, 9001 and udp 5353->53. Web open to everyone, the admin console for one address only;
# everything else (9000, 5353/udp, ...) stays closed although Docker publishes it.
external_interfaces = ["{sandbox.HOST_EXT_IF}"]
default = "drop"

[[allow]]
ports = [8080, 443]
sources = ["any"]
comment = "web"

[[allow]]
ports = [8443]
sources = ["{ADMIN[0]}", "{ADMIN[1]}"]
comment = "admin console, one address only"
"""

PROBE_TIMEOUT = 1.0  # a dropped probe costs this once: all probes of a round run concurrently
CLI_TIMEOUT = 120.0


@dataclass(frozen=True)
class Check:
    """One probe from outside, and whether the demo policy lets it through."""

    source: str
    label: str  # "admin" or "other"
    target: str  # the Docker host's external address
    proto: str
    port: int
    expected: bool

    def probe(self, timeout: float = PROBE_TIMEOUT) -> Probe:
        return Probe("ext", self.target, self.port, self.proto, src=self.source, timeout=timeout)


@dataclass(frozen=True)
class Row:
    check: Check
    outcome: str  # sandbox outcome: "open", "refused", "timeout" or "unreachable"

    @property
    def through(self) -> bool:
        return self.outcome == "open"

    @property
    def ok(self) -> bool:
        return self.through == self.check.expected


@dataclass(frozen=True)
class DemoResult:
    backend: str  # the backend used (what "auto" resolved to)
    requested: str  # what was asked for
    flavour: str  # the sandbox flavour (sandbox.ALL_FLAVOURS)
    detection: str | None  # auto's reason, when auto was asked for
    policy: str
    before: tuple[Row, ...]  # without dockerguard: everything Docker publishes gets through
    rows: tuple[Row, ...]  # with the policy applied
    after_remove: tuple[Row, ...]  # after `dockerguard remove`: everything gets through again
    seconds: float

    @property
    def docker_firewall(self) -> str:
        """The flavour as --docker-firewall names it ("nftables" for Docker 29's nftables mode)."""
        return docker_firewall_name(self.flavour)

    @property
    def mismatches(self) -> tuple[Row, ...]:
        return tuple(row for row in self.rows if not row.ok)

    @property
    def baseline_ok(self) -> bool:
        return all(row.through for row in self.before)

    @property
    def restored_ok(self) -> bool:
        return all(row.through for row in self.after_remove)

    @property
    def ok(self) -> bool:
        return self.baseline_ok and not self.mismatches and self.restored_ok


# -- pure parts ------------------------------------------------------------------------------------
def demo_ruleset() -> Ruleset:
    return compile_policy(parse_policy(DEMO_POLICY, "<demo policy>"))


def lets_through(ruleset: Ruleset, source: str, proto: str, port: int) -> bool:
    """Whether a new connection from outside to a published host port passes `ruleset` (interfaces aside)."""
    version, address = parse_address(source)
    family = Family(version)
    return any(
        rule.family is family and rule.proto == proto
        and any(net.contains(version, address) for net in rule.sources)
        and any(span.first <= port <= span.last for span in rule.ports)
        for rule in ruleset.allows
    )


def demo_checks(ruleset: Ruleset | None = None) -> tuple[Check, ...]:
    """Every (source, port) the demo probes, each with what the policy says about it. Only ports the
    sandbox's Docker publishes are probed: an allow never opens more than Docker publishes."""
    ruleset = ruleset or demo_ruleset()
    published = {(m.proto, m.host_port) for m in PUBLISHED}
    checks = []
    for source, label in SOURCES:
        target = HOST_EXT_V4 if parse_address(source)[0] == 4 else HOST_EXT_V6
        for proto, port in PORTS:
            if (proto, port) not in published:
                raise ValueError(f"{port}/{proto} is not published in the sandbox")
            checks.append(Check(source, label, target, proto, port, lets_through(ruleset, source, proto, port)))
    return tuple(checks)


def sandbox_flavour(backend: str, docker_firewall: str | None,
                    which: Callable[[str], str | None] = shutil.which) -> str:
    """The sandbox flavour for a backend and --docker-firewall; UsageError for a pair that cannot work."""
    check_backend_name(backend)
    if docker_firewall is None:
        if backend in _ONLY_FLAVOUR:
            return _ONLY_FLAVOUR[backend]
        # nft needs no iptables: without iptables-nft's tools, simulate Docker's nftables mode instead.
        restore = sandbox.iptables_command(_DEFAULT_FLAVOUR, 4, "-restore")
        return _DEFAULT_FLAVOUR if which(restore) or not which("nft") else sandbox.DOCKER_NFTABLES
    try:
        flavour = DOCKER_FIREWALLS[docker_firewall]
    except KeyError:
        raise UsageError(f"unknown Docker firewall {docker_firewall!r} "
                         f"(expected one of: {', '.join(DOCKER_FIREWALLS)})") from None
    needed = _ONLY_FLAVOUR.get(backend)
    if needed is not None and flavour != needed:
        raise UsageError(f"backend {backend} cannot protect a Docker host whose firewall is {docker_firewall}: "
                         f"its rules would never see Docker's traffic (use --docker-firewall {needed})")
    return flavour


def docker_firewall_name(flavour: str) -> str:
    return next((name for name, value in DOCKER_FIREWALLS.items() if value == flavour), flavour)


def environment_problems(flavour: str, euid: int | None = None) -> list[str]:
    """What stops the demo from running here; empty when nothing does."""
    if (os.geteuid() if euid is None else euid) != 0:
        return ["dockerguard demo needs root: it builds network namespaces (try: sudo dockerguard demo)"]
    tools = ["ip", "nft"] if flavour == sandbox.DOCKER_NFTABLES else [
        "ip", *(sandbox.iptables_command(flavour, family, "-restore") for family in (4, 6))]
    return [f"dockerguard demo needs the tool {tool!r} (not found in PATH)" for tool in tools
            if shutil.which(tool) is None]


# -- the run ---------------------------------------------------------------------------------------
def run_demo(backend: str = DEFAULT_BACKEND, docker_firewall: str | None = None, *,
             progress: Callable[[str], None] | None = None, probe_timeout: float = PROBE_TIMEOUT) -> DemoResult:
    """Build the sandbox, apply DEMO_POLICY with `backend` inside it, probe, remove, tear down."""
    say = progress or (lambda message: None)
    flavour = sandbox_flavour(backend, docker_firewall)
    problems = environment_problems(flavour)
    if problems:
        raise DemoError("; ".join(problems))
    checks = demo_checks()
    started = time.monotonic()
    sandbox.cleanup_stale_namespaces()  # left by a demo or test run that was SIGKILLed
    try:
        with _sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="dockerguard-demo-") as tmp:
            say(f"building the sandbox: an outside client, a Docker host (firewall: {docker_firewall_name(flavour)}),"
                " a container")
            with Topology(flavour=flavour) as topo:
                box = _Sandbox(topo, Path(tmp))
                before = box.probe(checks, probe_timeout)
                chosen, detection = backend, None
                if backend == "auto":
                    chosen, detection = box.detect()
                    say(f"auto-detection inside the sandbox picked {chosen}: {detection}")
                say(f"applying the demo policy with backend {chosen}")
                box.dockerguard("apply", "-c", str(box.policy_path), "--backend", chosen)
                rows = box.probe(checks, probe_timeout)
                say("removing dockerguard's rules")
                box.dockerguard("remove", "--backend", chosen)
                after = box.probe(checks, probe_timeout)
                say("deleting the sandbox")
    except (sandbox.TopologyError, subprocess.SubprocessError, OSError) as exc:
        raise DemoError(f"the sandbox failed: {exc}") from exc
    return DemoResult(chosen, backend, flavour, detection, DEMO_POLICY, before, rows, after,
                      round(time.monotonic() - started, 2))


class _Sandbox:
    def __init__(self, topo: Topology, tmp: Path) -> None:
        self.topo = topo
        self.policy_path = tmp / "policy.toml"
        self.policy_path.write_text(DEMO_POLICY)
        self.env = {"DOCKERGUARD_STATE_DIR": str(tmp / "state")}  # never the host's real history

    def dockerguard(self, *args: str) -> str:
        argv = [sys.executable or "python3", "-m", "dockerguard", *args]
        result = self.topo.run("host", argv, check=False, timeout=CLI_TIMEOUT, env=self.env)
        if result.returncode != 0:
            message = (result.stderr.strip() or result.stdout.strip() or "(no output)").replace("\n", " ")
            raise DemoError(f"`dockerguard {' '.join(args[:1])}` failed inside the sandbox "
                            f"(exit {result.returncode}): {message}")
        return result.stdout

    def detect(self) -> tuple[str, str]:
        output = self.dockerguard("backends", "--json")
        try:
            auto = json.loads(output).get("auto") or {}
        except (ValueError, AttributeError):
            raise DemoError(f"`dockerguard backends --json` did not print JSON: {output[:200]!r}") from None
        if not auto.get("backend"):
            raise DemoError(f"auto-detection inside the sandbox found no backend: {auto.get('reason')}")
        return str(auto["backend"]), str(auto.get("reason", ""))

    def probe(self, checks: Sequence[Check], timeout: float) -> tuple[Row, ...]:
        results: list[ProbeReport] = self.topo.probe_results(check.probe(timeout) for check in checks)
        return tuple(Row(check, result.outcome) for check, result in zip(checks, results))


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (kill, systemd, CI timeouts) exits through the `with` blocks, so the sandbox is deleted.
    Only the main thread may set handlers; elsewhere the default stays."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
