"""What the benchmark scripts share: namespaces that always go away, timed processes, the source
addresses and policies they measure with, machine facts and Markdown tables. Stdlib and dockerguard only.

Every script runs as root and works only inside network namespaces it creates (``ip netns add``); the
root namespace's firewall and network are never touched. A timed command is started with the calling
thread inside the namespace (``dockerguard.sandbox.in_netns``), so the child inherits it: this costs
nothing, whereas ``ip netns exec`` would add its own mount-namespace set-up to every measured command.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ipaddress
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NS_PREFIX = "dgbench"  # namespaces are dgbench<pid>-<hex4>; never the sandbox's dg<pid>-<hex4>-<role>
_NS_RE = re.compile(rf"^{NS_PREFIX}(\d+)-[0-9a-f]{{4}}$")
# Published ports: the sandbox publishes the first six (packet_path.py connects to 8080). None is
# adjacent to another, so the compiler cannot merge them into one range.
_PORT_POOL = (8080, 443, 8443, 25, 9000, 9002)
_V4_DOCUMENTATION = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
_V4_BULK = "10.0.0.0/8"  # beyond the 384 odd documentation hosts; these addresses never carry a packet
_V6_BASE = "2001:db8::"


# -- making `import dockerguard` work, and finding its CLI ---------------------------------------------
def ensure_dockerguard() -> None:
    """`sudo python3 bench/x.py` runs the system interpreter: without dockerguard installed there, re-run
    the script with the repository's virtualenv (README set-up) if it has one."""
    try:
        import dockerguard
    except ImportError:
        venv_python = REPO / ".venv" / "bin" / "python"
        if venv_python.exists() and not os.environ.get("DGBENCH_REEXEC"):
            os.environ["DGBENCH_REEXEC"] = "1"  # once: the venv's interpreter must import it, or we stop
            os.execv(str(venv_python), [str(venv_python), *sys.argv])
        sys.exit(f"cannot import dockerguard with {sys.executable}: install it (pip install -e .) "
                 "or run the script with the interpreter that has it")
    # Bytecode as `pip install` leaves it: an editable install run with PYTHONDONTWRITEBYTECODE=1 would
    # otherwise compile every edited module again in every measured process (~50 ms each time).
    import compileall

    compileall.compile_dir(str(Path(dockerguard.__file__).parent), quiet=2)


def dockerguard_cli() -> list[str]:
    """The console script next to this interpreter (how users run it), else `python -m dockerguard`."""
    script = Path(sys.executable).with_name("dockerguard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dockerguard"]


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("needs root: it creates network namespaces and installs firewall rules inside them")


# -- namespaces that always go away ---------------------------------------------------------------------
def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def handle_signals() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every `finally` deletes its namespaces."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)


def _ip(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout, check=False)


class Namespaces:
    """Creates namespaces and deletes them on `delete`, `close`, or at interpreter exit."""

    def __init__(self) -> None:
        self.live: list[str] = []
        atexit.register(self.close)

    def create(self) -> str:
        name = f"{NS_PREFIX}{os.getpid()}-{secrets.token_hex(2)}"
        proc = _ip("netns", "add", name)
        if proc.returncode != 0:
            raise RuntimeError(f"ip netns add {name}: {proc.stderr.strip()}")
        self.live.append(name)
        return name

    def delete(self, name: str) -> None:
        if name in self.live:
            self.live.remove(name)
        _ip("netns", "del", name)
        settle()

    def close(self) -> None:
        for name in list(self.live):
            self.delete(name)

    @contextlib.contextmanager
    def scoped(self) -> Iterator[str]:
        name = self.create()
        try:
            yield name
        finally:
            self.delete(name)


def settle(deadline: float = 2.0, window: float = 0.1, idle_share: float = 0.8) -> None:
    """Wait (at most `deadline` seconds) until the CPUs are idle for one `window`: the kernel frees a deleted
    namespace's rules in the background (100,000 set elements: a good part of a second), and that work
    would otherwise be timed as part of the next measurement."""
    def times() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        total, idle = times()
        time.sleep(window)
        total_after, idle_after = times()
        if total_after > total and (idle_after - idle) / (total_after - total) >= idle_share:
            return


def cleanup_stale_namespaces() -> None:
    """Namespaces of earlier runs that were SIGKILLed (their pid is gone)."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir("/run/netns"):
            match = _NS_RE.match(name)
            if match and not Path(f"/proc/{match.group(1)}").exists():
                _ip("netns", "del", name)


@contextlib.contextmanager
def inside(netns: str | None) -> Iterator[None]:
    """The calling thread in `netns` (children started here inherit it); None: stay."""
    if netns is None:
        yield
        return
    from dockerguard.sandbox import in_netns

    with in_netns(netns):
        yield


# -- timed processes ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One process: wall time from start to exit, how it ended, its output."""

    seconds: float
    returncode: int | None  # None: killed at the timeout
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def why(self, argv0: str) -> str:
        if self.timed_out:
            return f"{argv0}: timed out after {self.seconds:.0f} s"
        tail = (self.stderr or self.stdout).strip().splitlines()[-3:]
        return f"{argv0}: exit {self.returncode}: {' | '.join(tail)}"


def run(argv: Sequence[str], *, netns: str | None = None, timeout: float = 60, input_text: str | None = None,
        env: Mapping[str, str] | None = None) -> Run:
    """Start `argv` in `netns` (its own process group), wait at most `timeout` seconds, kill the group on
    timeout or interruption."""
    with inside(netns):
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            env=None if env is None else {**os.environ, **env})
    try:
        stdout, stderr = proc.communicate(input_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return Run(time.perf_counter() - start, None)
    except BaseException:
        _kill_group(proc)
        raise
    return Run(time.perf_counter() - start, proc.returncode, stdout, stderr)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    # The group is the child's own (start_new_session): its pid, so only what we started.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired, OSError, ValueError):
        proc.communicate(timeout=10)


def check(result: Run, argv0: str) -> Run:
    if not result.ok:
        raise RuntimeError(result.why(argv0))
    return result


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


# -- what is measured: sources, ports, policies ------------------------------------------------------
def ports(count: int) -> list[int]:
    """`count` published ports, no two adjacent (so each stays its own port span)."""
    extra = [10000 + 2 * i for i in range(max(0, count - len(_PORT_POOL)))]
    return [*_PORT_POOL, *extra][:count]


def v4_sources(count: int) -> list[str]:
    """Distinct IPv4 host addresses that cannot collapse into prefixes (odd hosts only): the 384 odd hosts of
    the three documentation /24s first, then odd hosts of 10.0.0.0/8. Such large sets never carry a packet
    (packet_path.py's client is one documentation address added to them)."""
    out: list[str] = []
    for net in _V4_DOCUMENTATION:
        base = int(ipaddress.IPv4Network(net).network_address)
        out += [str(ipaddress.IPv4Address(base + host)) for host in range(1, 256, 2)]
    base = int(ipaddress.IPv4Network(_V4_BULK).network_address)
    out += [str(ipaddress.IPv4Address(base + 2 * i + 1)) for i in range(max(0, count - len(out)))]
    return out[:count]


def v6_sources(count: int) -> list[str]:
    """Distinct IPv6 host addresses from 2001:db8::/32, each in its own /64 (2001:db8:HHHH:LLLL::1)."""
    base = int(ipaddress.IPv6Address(_V6_BASE))
    return [str(ipaddress.IPv6Address(base + (i << 64) + 1)) for i in range(count)]


def split_sources(count: int, family: str) -> tuple[list[str], list[str]]:
    """(IPv4, IPv6) sources: `count` of `family` ("4", "6"), or half each ("both", IPv4 gets the odd one)."""
    if family == "4":
        return v4_sources(count), []
    if family == "6":
        return [], v6_sources(count)
    return v4_sources(count - count // 2), v6_sources(count // 2)


def extra_source(v4: Sequence[str], v6: Sequence[str]) -> str:
    """The next address of the generator: what "one source added" adds."""
    return v4_sources(len(v4) + 1)[-1] if v4 else v6_sources(len(v6) + 1)[-1]


def policy_toml(sources: Sequence[str], published: Sequence[int], socket_path: str, proxy_path: bool = False) -> str:
    """One allow entry, as an admin writes it. `docker_socket` points at a path with no Docker behind it: the
    measurement never asks a real daemon. Without `proxy_path` the policy judges the forwarded path only
    (`filter_proxy_path = false`), the semantics the floors implement."""
    quoted = ",\n  ".join(f'"{source}"' for source in sources)
    return (f'external_interfaces = ["eth0"]\ndefault = "drop"\ndocker_socket = "{socket_path}"\n'
            f"filter_proxy_path = {'true' if proxy_path else 'false'}\n\n"
            f"[[allow]]\nports = [{', '.join(map(str, published))}]\nproto = \"tcp\"\n"
            f'comment = "benchmark"\nsources = [\n  {quoted}\n]\n')


# Docker 20-27's filter table at its most minimal: DOCKER-USER exists and FORWARD jumps to it.
DOCKER_MINIMAL = "*filter\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j RETURN\nCOMMIT\n"


def iptables_tool(flavour: str, family: int, suffix: str = "") -> str:
    """`iptables_tool("legacy", 6, "-save")` -> "ip6tables-legacy-save"."""
    return f"{'iptables' if family == 4 else 'ip6tables'}-{flavour}{suffix}"


def load_docker_minimal(netns: str, flavour: str) -> None:
    for family in (4, 6):
        check(run([iptables_tool(flavour, family, "-restore"), "-w", "5"], netns=netns, input_text=DOCKER_MINIMAL),
              iptables_tool(flavour, family, "-restore"))


def usable_backends(namespaces: Namespaces, wanted: Sequence[str]) -> tuple[list[str], list[str]]:
    """(backends usable here, notes on the others), as `dockerguard backends --json` says in a fresh namespace."""
    import json

    with namespaces.scoped() as ns:
        result = check(run([*dockerguard_cli(), "backends", "--json"], netns=ns, timeout=60), "dockerguard backends")
    probes = {item["backend"]: item for item in json.loads(result.stdout)["backends"]}
    usable, notes = [], []
    for name in wanted:
        probe = probes.get(name)
        if probe is None:
            notes.append(f"{name}: unknown to this dockerguard")
        elif probe["available"]:
            usable.append(name)
        else:
            notes.append(f"{name}: not usable here ({probe['reason']})")
    return usable, notes


# -- facts and tables ---------------------------------------------------------------------------------
def _first_line(argv: Sequence[str], netns: str | None) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    result = run(argv, netns=netns, timeout=15)
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else f"exit {result.returncode}"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def _dockerguard_revision() -> str:
    from importlib.metadata import version

    text = f"dockerguard {version('dockerguard')}"
    if shutil.which("git") and (REPO / ".git").exists():
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, check=False).stdout.strip()
        if rev:
            text += f", commit {rev}" + (" with uncommitted changes in src/" if dirty else "")
    return text


def machine_facts(netns: str, tools: Sequence[Sequence[str]] = ()) -> list[tuple[str, str]]:
    """Kernel, CPUs, load, versions. Tools run inside `netns` (`ipset --version` asks the kernel)."""
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    spawn = median([run(["true"], netns=netns).seconds for _ in range(5)]) or 0.0
    facts = [
        ("kernel", platform.release()),
        ("CPUs", f"{os.cpu_count()} x {_cpu_model()}"),
        ("load average at start (1, 5, 15 min)", load),
        ("python", platform.python_version()),
        ("dockerguard", _dockerguard_revision()),
        ("nft", _first_line(["nft", "--version"], netns)),
        ("iptables-nft", _first_line(["iptables-nft", "--version"], netns)),
        ("iptables-legacy", _first_line(["iptables-legacy", "--version"], netns)),
        ("ipset", _first_line(["ipset", "--version"], netns)),
    ]
    facts += [(argv[0], _first_line(argv, netns)) for argv in tools]
    facts.append(("`true` as a process (the floor of any command here)", f"{spawn * 1000:.1f} ms"))
    return facts


def facts_table(facts: Sequence[tuple[str, str]]) -> str:
    """The facts, and the load average now (other work on the machine during the run shows there)."""
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return table(["machine", "value"], [[key, value] for key, value in facts] + [["load average at end", load]])


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (GitHub flavour), numbers right-aligned by their header's marker."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def seconds(value: float | None) -> str:
    """Seconds with three significant digits (0.0123, 1.23, 123)."""
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or not denominator:
        return "-"
    value = numerator / denominator
    return f"{value:.3g}x" if value < 1000 else f"{value:,.0f}x"


def command_line() -> str:
    """How this run was started, repository-relative (no machine-specific paths)."""
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(REPO)
    return shlex.join(["sudo", "python3", str(script), *sys.argv[1:]])


def progress(message: str) -> None:
    """Progress goes to stderr: stdout is only the Markdown the README takes verbatim."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def positive_int(text: str) -> int:
    value = int(text.replace(",", "").replace("_", ""))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def start(description: str) -> Namespaces:
    """Common start of every script: dockerguard importable, root, stale namespaces gone, signals unwind."""
    ensure_dockerguard()
    require_root()
    for tool in ("ip",):
        if shutil.which(tool) is None:
            sys.exit(f"missing tool: {tool} (iproute2)")
    handle_signals()
    cleanup_stale_namespaces()
    progress(description)
    return Namespaces()
