"""A real Docker engine isolated in network namespaces, for end-to-end tests.

No pytest dependency: usable from tests, benchmarks or a REPL (as root)::

    with DockerHost("iptables-nft", engine="28") as host:
        host.run_web("web", publish=["8080:80"])
        assert host.probe(8080, src="198.51.100.11")

Engines: "20.10" is the system's docker.io (Debian bookworm); "28" and "29" are real newer engines
(dockerd, containerd, runc, docker-proxy and CLI in one bin directory) made by the prepare script,
``$DOCKERGUARD_DOCKER_PREPARE`` (default ``<repository>/../shared/docker-engines/prepare``), in
``$DOCKERGUARD_ENGINES_DIR/<version>`` (default /var/cache/dockerguard-engines). Firewall modes: dockerd
with iptables-legacy or iptables-nft (every engine), or Docker 29's own nftables backend ("nftables").

Layout (documentation addresses only; the root namespace's network and firewall are never touched)::

    ext   eth0 198.51.100.10-12/24, 2001:db8:100::10-11/64           (external clients)
      | veth
    host  eth0 198.51.100.1/24, 2001:db8:100::1/64, forwarding on    (the "docker host")
          docker0 192.0.2.1/28, user networks from 192.0.2.128/25, optional dual-stack
          network 192.0.2.64/26 + 2001:db8:2::/64; containerd + dockerd run here

Processes, all started by us and tracked by PID:

* a *holder* (``sleep``) that owns a private mount namespace (propagation slave) joined to the host
  network namespace. It mounts a tmpfs over ``/run`` there, so everything dockerd, containerd and
  the shims write below /run (exec-root, data-root, shim sockets, /run/docker/plugins, key.json) lives
  in memory and vanishes with the namespace. ``/run/xtables.lock`` there is a bind mount of this host's
  own lock file, which every process of the host is also pointed at with ``XTABLES_LOCKFILE`` (dockerd's
  iptables calls, and dockerguard run through ``ip netns exec``, which sees the real /run): dockerguard
  and dockerd share one lock as on a real host, and no other iptables user of the machine can stall
  them (one holding the machine's lock for minutes made applies time out);
* containerd (separate, like Debian's containerd.service: restarting dockerd does not restart it);
* dockerd, entered into the holder's namespaces with ``nsenter`` (not ``ip netns exec``, which remounts
  /sys and loses /sys/fs/cgroup), with a directory of ``iptables*`` symlinks first on its PATH that
  selects iptables-legacy or iptables-nft, then the engine's bin directory (28, 29), so containerd,
  runc and docker-proxy are the engine's own (docker-init is the system's tini, see _ENGINE_TOOLS).

Containers get a per-run ``cgroup-parent``; together with the holder's mount namespace that names every
process we own, so teardown never has to guess (no pkill).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dockerguard.sandbox import in_netns  # accepts a /run/netns path
from dockerguard.sandbox.netns import (
    closed,
    closing_on_failure,
    create_namespaces,
    delete_namespaces,
    ip_batch,
    netns_path,
    readline_until,
    run_command,
    write_sysctls,
)

FLAVOURS: tuple[str, ...] = ("iptables-legacy", "iptables-nft")  # the iptables dockerd can be given
NFTABLES = "nftables"  # Docker 29's own firewall backend (daemon.json "firewall-backend")
SYSTEM_ENGINE = "20.10"  # Debian bookworm's docker.io, on PATH
ENGINES: tuple[str, ...] = (SYSTEM_ENGINE, "28", "29")
# Firewall modes per engine ("flavour" below): what dockerd programs its rules with.
ENGINE_FIREWALLS: dict[str, tuple[str, ...]] = {SYSTEM_ENGINE: FLAVOURS, "28": FLAVOURS, "29": (*FLAVOURS, NFTABLES)}
HOST_MODES: tuple[tuple[str, str], ...] = tuple((e, f) for e in ENGINES for f in ENGINE_FIREWALLS[e])

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ENGINES_DIR = "/var/cache/dockerguard-engines"
_PREPARE_TIMEOUT = 900  # a first preparation downloads packages; later calls only check the directory

HOST_V4 = "198.51.100.1"
HOST_V6 = "2001:db8:100::1"
EXT_SOURCES_V4: tuple[str, ...] = ("198.51.100.10", "198.51.100.11", "198.51.100.12")
EXT_SOURCES_V6: tuple[str, ...] = ("2001:db8:100::10", "2001:db8:100::11")
EXT_V4, EXT_V6 = EXT_SOURCES_V4[0], EXT_SOURCES_V6[0]
BRIDGE_IP = "192.0.2.1/28"  # docker0
ADDRESS_POOL = "192.0.2.128/25"  # user-defined networks without an explicit subnet
DUAL_STACK_SUBNETS = ("192.0.2.64/26", "2001:db8:2::/64")

IMAGE = "dge2e/busybox:1"
PAGE = "dockerguard-e2e\n"  # what the test image's httpd serves at /

# Under the holder's private /run (paths as dockerd and containerd see them).
_PRIVATE = "/run/dge"
_CONTAINERD_SOCK = f"{_PRIVATE}/ctd/containerd.sock"
_DOCKER_PIDFILE = f"{_PRIVATE}/docker.pid"

_PR_SET_PDEATHSIG = 1
_IPTABLES_TOOLS = ("iptables", "ip6tables")
_IPTABLES_SUFFIXES = ("", "-save", "-restore")

# The holder: private /run (tmpfs) with the host's own xtables lock ($1) bound in, then sleep forever.
_HOLDER_SCRIPT = f"""set -e
mount -t tmpfs -o mode=0755,size=256m dge2e-run /run
: > /run/xtables.lock
mount --bind "$1" /run/xtables.lock
mkdir -p {_PRIVATE}/ctd
echo READY
exec sleep infinity
"""

_UDP_ECHO = """\
import socket, sys
port = int(sys.argv[1])
try:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
except OSError:  # no IPv6 in this container's network
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
while True:
    data, peer = sock.recvfrom(2048)
    sock.sendto(data, peer)
"""


def on_host_addresses(host_port: int, container_port: int, proto: str = "tcp") -> list[str]:
    """``-p`` specs publishing on the host's own IPv4 and IPv6 addresses.

    With the iptables-legacy flavour, dockerd 20.10 misses IPv6 DNAT rules: it checks with
    ``ip6tables -C`` before ``-A``, and ip6tables-legacy 1.8.9 ``-C`` ignores the rule's matches
    (``--dport``...), so a rule like an existing one looks present. Measured: plain ``-p 8080:80`` on a
    dual-stack network got its IPv6 DNAT for 3-5 of 8 containers; explicit host addresses, one
    published port per container, for 8 of 8, also after restarts. A port without its DNAT is still
    answered over IPv6, by docker-proxy through INPUT, past any FORWARD filter.
    """
    return [f"{address}:{host_port}:{container_port}/{proto}" for address in (HOST_V4, f"[{HOST_V6}]")]


class DockerHostError(RuntimeError):
    """The Docker host could not be built, or a daemon did not come up in time."""


# ---------------------------------------------------------------------------------------------
# Requirements
# ---------------------------------------------------------------------------------------------

def docker_cli() -> str | None:
    """The docker CLI of the same package as dockerd (Debian: /usr/bin/docker), else any on PATH."""
    dockerd = shutil.which("dockerd")
    for candidate in ("/usr/bin/docker", os.path.join(os.path.dirname(dockerd or "/"), "docker")):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("docker")


def static_busybox() -> str | None:
    """A statically linked busybox (Debian: busybox-static), or None: the image has no libc."""
    for candidate in (shutil.which("busybox"), "/bin/busybox", "/usr/bin/busybox"):
        if candidate and os.access(candidate, os.X_OK) and _is_static_elf(candidate):
            return candidate
    return None


def _is_static_elf(path: str) -> bool:
    """True for an ELF64 little-endian file without a PT_INTERP program header."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return False
        phoff = int.from_bytes(header[32:40], "little")
        phentsize = int.from_bytes(header[54:56], "little")
        phnum = int.from_bytes(header[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(int.from_bytes(table[i:i + 4], "little") != 3 for i in range(0, len(table), phentsize))


def host_python() -> str | None:
    """A system python3 whose files live under /usr (bind-mounted read-only into the UDP container)."""
    for candidate in ("/usr/bin/python3",):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


REQUIRED_TOOLS: tuple[str, ...] = (
    "dockerd", "containerd", "containerd-shim-runc-v2", "runc", "docker-init", "ip", "nsenter", "unshare",
    "mount", "sleep", "nft",
    *(f"{tool}-{kind}{suffix}" for tool in _IPTABLES_TOOLS for kind in ("legacy", "nft")
      for suffix in _IPTABLES_SUFFIXES),
)


def missing_requirements() -> list[str]:
    """What this host lacks to run a DockerHost (empty when everything is there)."""
    if os.geteuid() != 0:
        return ["not running as root (namespaces, mounts and dockerd need it)"]
    problems = [f"missing tool: {tool}" for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if docker_cli() is None:
        problems.append("missing tool: docker (the CLI; Debian package docker.io)")
    if static_busybox() is None:
        problems.append("no statically linked busybox (Debian package busybox-static)")
    if host_python() is None:
        problems.append("missing /usr/bin/python3 (runs the UDP echo server inside a container)")
    return problems


# ---------------------------------------------------------------------------------------------
# Newer engines, made by the prepare script (see the module docstring)
# ---------------------------------------------------------------------------------------------

def prepare_script() -> Path:
    return Path(os.environ.get("DOCKERGUARD_DOCKER_PREPARE") or REPO_ROOT.parent / "shared/docker-engines/prepare")


def engines_dir() -> Path:
    return Path(os.environ.get("DOCKERGUARD_ENGINES_DIR") or DEFAULT_ENGINES_DIR)


_engine_lock = threading.Lock()
_engine_bins: dict[str, Path | str] = {}  # engine -> its bin directory, or why there is none


def engine_bin(engine: str) -> Path | None:
    """The bin directory of a prepared engine (None: the system's docker.io). Runs the prepare script
    once per process: idempotent, so it only checks a directory prepared before (.ci/run does that),
    and otherwise prepares it. Raises DockerHostError with the reason when the engine is unavailable."""
    if engine == SYSTEM_ENGINE:
        return None
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    with _engine_lock:
        if engine not in _engine_bins:
            _engine_bins[engine] = _prepare(engine)
        found = _engine_bins[engine]
    if isinstance(found, str):
        raise DockerHostError(found)
    return found


def _prepare(engine: str) -> Path | str:
    script, target = prepare_script(), engines_dir() / engine
    if not os.access(script, os.X_OK):
        return f"Docker {engine}: no prepare script at {script} (set DOCKERGUARD_DOCKER_PREPARE)"
    try:
        proc = run_command([str(script), engine, str(target)], check=False, timeout=_PREPARE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"Docker {engine}: {script} {engine} {target} took longer than {_PREPARE_TIMEOUT} s"
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        detail = (proc.stderr or proc.stdout).strip() or "(no output)"
        return f"Docker {engine}: {script} {engine} {target} exited {proc.returncode}: {detail}"
    bin_dir = Path(lines[-1])
    missing = [tool for tool in _ENGINE_TOOLS if not os.access(bin_dir / tool, os.X_OK)]
    if missing:
        return f"Docker {engine}: {bin_dir} lacks {', '.join(missing)}"
    return bin_dir


# docker-init is not among them: the prepared one links to tini-static, which no extracted package holds,
# so dockerd skips that dangling link on PATH and runs the system's (REQUIRED_TOOLS); tini is tini.
_ENGINE_TOOLS = ("dockerd", "docker-proxy", "containerd", "containerd-shim-runc-v2", "runc", "docker")


def missing_engine(engine: str) -> str | None:
    """Why ``engine`` cannot run here, or None."""
    try:
        engine_bin(engine)
    except DockerHostError as error:
        return str(error)
    return None


# ---------------------------------------------------------------------------------------------
# The test image: a busybox rootfs imported with `docker import` (no registry needed)
# ---------------------------------------------------------------------------------------------

_image_lock = threading.Lock()
_image_tar: Path | None = None


def image_tar() -> Path:
    """Build the rootfs tar once per process (cached in a temporary directory removed at exit)."""
    global _image_tar
    with _image_lock:
        if _image_tar is None:
            busybox = static_busybox()
            if busybox is None:
                raise DockerHostError("no statically linked busybox: apt-get install busybox-static")
            directory = Path(tempfile.mkdtemp(prefix="dge2e-image-"))
            atexit.register(shutil.rmtree, directory, True)
            path = directory / "rootfs.tar"
            with tarfile.open(path, "w") as tar:
                for name in ("bin", "dev", "etc", "proc", "sys", "www", "usr"):
                    _tar_dir(tar, name)
                _tar_dir(tar, "tmp", 0o1777)
                tar.add(busybox, "bin/busybox")
                for applet in ("sh", "httpd", "nc", "cat", "sleep", "echo", "ls", "ip"):
                    _tar_link(tar, f"bin/{applet}", "busybox")
                _tar_file(tar, "www/index.html", PAGE.encode())
                _tar_file(tar, "udp_echo.py", _UDP_ECHO.encode())
                # The UDP container bind-mounts the host's /usr; mirror the host's /lib* layout
                # (symlinks on merged-/usr Debian, else mount points) so python3 finds its libraries.
                for name in _lib_dirs():
                    if os.path.islink(f"/{name}"):
                        _tar_link(tar, name, os.readlink(f"/{name}"))
                    else:
                        _tar_dir(tar, name)
            _image_tar = path
        return _image_tar


def _lib_dirs() -> list[str]:
    return [name for name in ("lib", "lib64", "lib32", "libx32") if os.path.lexists(f"/{name}")]


def _tar_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    tar.addfile(info)


def _tar_link(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    tar.addfile(info)


def _tar_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------------------------------------
# Network namespaces from Python threads
# ---------------------------------------------------------------------------------------------

# Loaded up front: the prctl in _die_with_parent runs between fork and exec, no place for dlopen.
_libc = ctypes.CDLL(None, use_errno=True)


def _libc_call(name: str, *args: int) -> None:
    if getattr(_libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the daemons if the test process dies without tearing down."""
    _libc_call("prctl", _PR_SET_PDEATHSIG, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Probe:
    """One connection attempt from the external namespace to the docker host's published ``port``."""

    port: int
    src: str | None = None  # source address in the external namespace (default: its first)
    proto: str = "tcp"
    family: int = 4
    timeout: float = 1.0
    to: str | None = None  # another destination than the host, e.g. a container (see route_to_containers)

    @property
    def dst(self) -> str:
        return self.to or (HOST_V4 if self.family == 4 else HOST_V6)

    def __str__(self) -> str:
        dst = self.dst if self.family == 4 else f"[{self.dst}]"
        return f"{self.proto} {self.src or 'ext'} -> {dst}:{self.port}"


def _probe(netns: str, probe: Probe) -> str:
    """'open' (TCP connected / UDP echoed), 'refused', 'unreachable' or 'timeout' (dropped)."""
    family = socket.AF_INET if probe.family == 4 else socket.AF_INET6
    kind = socket.SOCK_STREAM if probe.proto == "tcp" else socket.SOCK_DGRAM
    with in_netns(netns):
        sock = socket.socket(family, kind)
    with sock:
        sock.settimeout(probe.timeout)
        try:
            if probe.src:
                sock.bind((probe.src, 0))
            sock.connect((probe.dst, probe.port))
            if probe.proto == "udp":
                token = f"dge2e-{secrets.token_hex(8)}".encode()
                sock.send(token)
                while sock.recv(2048) != token:
                    pass
            return "open"
        except socket.timeout:
            return "timeout"
        except (ConnectionRefusedError, ConnectionResetError):
            return "refused"
        except OSError as exc:
            if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM):
                return "unreachable"
            raise


def _http_get(netns: str, family: int, port: int, src: str | None, timeout: float) -> str | None:
    with in_netns(netns):
        sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        try:
            if src:
                sock.bind((src, 0))
            sock.connect((HOST_V4 if family == 4 else HOST_V6, port))
            sock.sendall(b"GET / HTTP/1.0\r\nHost: dge2e\r\n\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        except OSError:
            return None
    head, _, body = data.partition(b"\r\n\r\n")
    return body.decode(errors="replace") if head.startswith(b"HTTP/1.") and b" 200 " in head else None


# ---------------------------------------------------------------------------------------------
# The Docker host
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OwnedProcess:
    pid: int
    start_time: str  # /proc/PID/stat field 22: tells a PID apart from a later reuse
    comm: str

    def alive(self) -> bool:
        """Same process still there and not a zombie (init reaps orphans in its own time)."""
        fields = _proc_stat(self.pid)
        return fields is not None and fields[19] == self.start_time and fields[0] != "Z"


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name: [0] is the state, [19] the start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


class DockerHost:
    """A Docker host in its own network namespaces; use as a context manager.

    ``engine`` is one of ENGINES; ``flavour`` is the firewall dockerd programs: "iptables-legacy" or
    "iptables-nft" (through the iptables on its PATH), or "nftables" (Docker 29's own backend).
    ``start=False`` builds everything but dockerd (call ``start_daemon()``), e.g. to install a
    firewall first. ``forwarding=False`` leaves IPv4/IPv6 forwarding off in the host namespace, as on a
    fresh machine (Docker's iptables modes turn it on themselves; nftables mode refuses to start).
    """

    def __init__(self, flavour: str = "iptables-legacy", *, engine: str = SYSTEM_ENGINE, start: bool = True,
                 forwarding: bool = True, ready_timeout: float = 20.0) -> None:
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
        if flavour not in ENGINE_FIREWALLS[engine]:
            raise ValueError(f"Docker {engine} has no firewall mode {flavour!r}; expected one of "
                             f"{ENGINE_FIREWALLS[engine]}")
        self.engine = engine
        self.engine_bin = engine_bin(engine)
        self.flavour = flavour
        # The iptables an admin's shell on this host has; in nftables mode Debian's default (nft).
        self.iptables_flavour = flavour if flavour in FLAVOURS else "iptables-nft"
        self.autostart = start
        self.forwarding = forwarding
        self.ready_timeout = ready_timeout
        # "dge" + pid: never matches tests/integration's "dg<pid>-" stale-namespace pattern.
        self.run_id = f"dge{os.getpid()}-{secrets.token_hex(3)}"
        self.host_ns = f"{self.run_id}-host"
        self.ext_ns = f"{self.run_id}-ext"
        self.cgroup_parent = f"/{self.run_id}"
        self.timings: dict[str, float] = {}
        self.tmp: Path | None = None
        self._holder: subprocess.Popen[bytes] | None = None
        self._containerd: subprocess.Popen[bytes] | None = None
        self._dockerd: subprocess.Popen[bytes] | None = None
        self._mnt_ns: str | None = None
        self._image_loaded = False
        self._closed = False

    # -- paths and environment ---------------------------------------------------------------

    @property
    def socket_path(self) -> str:
        assert self.tmp is not None
        return str(self.tmp / "docker.sock")

    @property
    def label(self) -> str:
        """e.g. "docker28-iptables-nft": engine and firewall mode, for messages and test ids."""
        return f"docker{self.engine}-{self.flavour}"

    def _env(self) -> dict[str, str]:
        assert self.tmp is not None
        # Flavour symlinks first: dockerd runs plain "iptables", "ip6tables", "iptables-save"...; then the
        # engine's own containerd, runc, docker-proxy (dockerd finds them on PATH).
        engine = f"{self.engine_bin}:" if self.engine_bin else ""
        path = f"{self.tmp / 'bin'}:{engine}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        return {"PATH": path, "HOME": str(self.tmp), "LANG": "C.UTF-8", "XTABLES_LOCKFILE": self.xtables_lock}

    @property
    def xtables_lock(self) -> str:
        """This host's xtables lock (see the module docstring); pass it as XTABLES_LOCKFILE to iptables
        users started outside host_exec."""
        assert self.tmp is not None
        return str(self.tmp / "xtables.lock")

    def docker_cli(self) -> str:
        """The CLI of the same release as dockerd."""
        cli = str(self.engine_bin / "docker") if self.engine_bin else docker_cli()
        if cli is None:
            raise DockerHostError("docker CLI not found")
        return cli

    def netns_path(self, which: str = "host") -> str:
        return netns_path(self.host_ns if which == "host" else self.ext_ns)

    def private_path(self, path: str) -> str:
        """A path inside the holder's mount namespace (its /run), seen from ours."""
        assert self._holder is not None
        return f"/proc/{self._holder.pid}/root{path}"

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> DockerHost:
        with closing_on_failure(self):
            self._build()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            self.close()
        except DockerHostError as error:
            if exc_type is None:
                raise
            print(f"DockerHost {self.run_id}: {error}", file=sys.stderr)  # keep the test's own error

    def _build(self) -> None:
        start = time.monotonic()
        tmp_root = tempfile.gettempdir()
        if tmp_root.startswith("/run"):  # would be hidden by the holder's private /run
            tmp_root = "/var/tmp"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.run_id}-", dir=tmp_root))
        (self.tmp / "bin").mkdir()
        Path(self.xtables_lock).touch()
        kind = self.iptables_flavour.split("-", 1)[1]
        for tool in _IPTABLES_TOOLS:
            for suffix in _IPTABLES_SUFFIXES:
                target = shutil.which(f"{tool}-{kind}{suffix}")
                if target is None:
                    raise DockerHostError(f"missing {tool}-{kind}{suffix}")
                (self.tmp / "bin" / f"{tool}{suffix}").symlink_to(target)
        (self.tmp / "docker-config").mkdir()  # DOCKER_CONFIG: never read or write ~/.docker
        self._write_configs()
        self._build_network()
        self._start_holder()
        self._start_containerd()
        self.timings["build"] = time.monotonic() - start
        if self.autostart:
            self.start_daemon()

    def _write_configs(self) -> None:
        assert self.tmp is not None
        daemon = {
            "iptables": True,
            "ip6tables": True,  # docker 20.10: experimental, needs "experimental": true
            "experimental": True,
            "ipv6": False,  # the default bridge stays IPv4; dual_stack_network() adds IPv6
            "bip": BRIDGE_IP,
            "default-address-pools": [{"base": ADDRESS_POOL, "size": 28}],
            "storage-driver": "vfs",  # no overlay mounts; the image is 2 MB
            "exec-opts": ["native.cgroupdriver=cgroupfs"],
            "cgroup-parent": self.cgroup_parent,
            "shutdown-timeout": 3,
            "log-level": "info",
            "deprecated-key-path": f"{_PRIVATE}/key.json",  # else dockerd writes /etc/docker/key.json
        }
        if self.flavour == NFTABLES:
            daemon["firewall-backend"] = "nftables"
        (self.tmp / "daemon.json").write_text(json.dumps(daemon, indent=2))
        (self.tmp / "containerd.toml").write_text(
            "version = 2\n"
            f'root = "{_PRIVATE}/containerd"\n'
            f'state = "{_PRIVATE}/ctd/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{_CONTAINERD_SOCK}"\n'
            '[debug]\n  level = "info"\n'
        )

    def _build_network(self) -> None:
        host, ext = self.host_ns, self.ext_ns
        create_namespaces([host, ext])
        for ns, forwarding in ((host, True), (ext, False)):
            # No IPv6 duplicate address detection: it delays v6 by ~2 s.
            values = {"net/ipv6/conf/all/accept_dad": "0", "net/ipv6/conf/default/accept_dad": "0"}
            if forwarding and self.forwarding:
                values.update({"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "1"})
            write_sysctls(ns, values)
        # Distinct ifindexes: a veth whose index equals its peer's gets its carrier change batched
        # for up to 1 s by linkwatch, which stalls IPv6 neighbour discovery.
        host_script = [
            f"link add eth0 index 10 type veth peer name eth0 index 11 netns {ext}",
            f"addr add {HOST_V4}/24 dev eth0",
            f"addr add {HOST_V6}/64 dev eth0 nodad",
            "link set lo up",
            "link set eth0 up",
        ]
        ext_script = [
            *(f"addr add {a}/24 dev eth0" for a in EXT_SOURCES_V4),
            *(f"addr add {a}/64 dev eth0 nodad" for a in EXT_SOURCES_V6),
            "link set lo up",
            "link set eth0 up",
        ]
        ip_batch(host_script, host, timeout=60)
        ip_batch(ext_script, ext, timeout=60)
        # Ready when the host kernel answers every source (RST from a closed port: the path works).
        probes = [Probe(9, src, family=4, timeout=0.25) for src in EXT_SOURCES_V4]
        probes += [Probe(9, src, family=6, timeout=0.25) for src in EXT_SOURCES_V6]
        deadline = time.monotonic() + 10
        while (outcomes := self.probe_outcomes(probes)) != ["refused"] * len(probes):
            if time.monotonic() > deadline:
                raise DockerHostError(f"links not ready within 10 s: {list(zip(map(str, probes), outcomes))}")
            time.sleep(0.02)

    def _spawn(self, argv: Sequence[str], log_name: str, *, pipe: bool = False) -> subprocess.Popen[bytes]:
        assert self.tmp is not None
        with open(self.tmp / log_name, "ab") as log:  # the child keeps its own copy of the fd
            return subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe else log,
                stderr=log,
                env=self._env(),
                cwd=str(self.tmp),
                start_new_session=True,  # a terminal ^C must reach us, not the daemons, first
                # PDEATHSIG fires when the forking *thread* ends: only tie daemons to the main thread.
                preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
            )

    def _start_holder(self) -> None:
        argv = ["nsenter", f"--net={self.netns_path('host')}", "unshare", "--mount", "--propagation", "slave",
                "sh", "-c", _HOLDER_SCRIPT, "holder", self.xtables_lock]
        self._holder = self._spawn(argv, "holder.log", pipe=True)
        assert self._holder.stdout is not None
        line = readline_until(self._holder.stdout, time.monotonic() + 10)
        if line.strip() != b"READY":
            raise DockerHostError(f"mount-namespace holder failed: {line!r} {self.log_tail('holder.log')}")
        self._holder.stdout.close()
        self._mnt_ns = os.readlink(f"/proc/{self._holder.pid}/ns/mnt")
        if self._mnt_ns == os.readlink("/proc/self/ns/mnt"):
            raise DockerHostError("the holder did not get its own mount namespace")

    def _enter(self) -> list[str]:
        assert self._holder is not None
        return ["nsenter", "-t", str(self._holder.pid), "--mount", "--net", "--"]

    def _start_containerd(self) -> None:
        assert self.tmp is not None
        self._containerd = self._spawn([*self._enter(), "containerd", "--config", str(self.tmp / "containerd.toml")],
                                       "containerd.log")
        sock = self.private_path(_CONTAINERD_SOCK)
        self._wait(lambda: os.path.exists(sock), self._containerd, "containerd.log", "containerd socket")

    def start_daemon(self) -> None:
        """Start dockerd and wait until its API answers (bounded); import the test image once."""
        assert self.tmp is not None
        if self.daemon_running:
            raise DockerHostError("dockerd is already running")
        start = time.monotonic()
        argv = [*self._enter(), "dockerd",
                "--config-file", str(self.tmp / "daemon.json"),
                "--containerd", _CONTAINERD_SOCK,
                "--data-root", f"{_PRIVATE}/docker",
                "--exec-root", f"{_PRIVATE}/exec",
                "--pidfile", _DOCKER_PIDFILE,
                "-H", f"unix://{self.socket_path}"]
        self._dockerd = self._spawn(argv, "dockerd.log")
        self._wait(self._ping, self._dockerd, "dockerd.log", "dockerd API")
        self.timings.setdefault("daemon_start", time.monotonic() - start)
        self.timings["last_daemon_start"] = time.monotonic() - start
        if not self._image_loaded:
            start = time.monotonic()
            self.docker("import", "--change", 'CMD ["/bin/httpd", "-f", "-p", "80", "-h", "/www"]',
                        str(image_tar()), IMAGE)
            self._image_loaded = True
            self.timings["image_import"] = time.monotonic() - start

    def stop_daemon(self, timeout: float = 15.0) -> None:
        """SIGTERM dockerd by PID, wait (bounded), then SIGKILL. Containers stop with it."""
        proc, self._dockerd = self._dockerd, None
        if proc is None:
            return
        start = time.monotonic()
        _terminate(proc, timeout)
        self.timings["last_daemon_stop"] = time.monotonic() - start

    def restart_daemon(self) -> None:
        """Stop dockerd and start it again; containers with ``--restart always`` come back."""
        self.stop_daemon()
        self.start_daemon()

    @property
    def daemon_running(self) -> bool:
        return self._dockerd is not None and self._dockerd.poll() is None

    @property
    def daemon_pid(self) -> int | None:
        return self._dockerd.pid if self.daemon_running and self._dockerd else None

    def _ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(self.socket_path)
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                reply = sock.recv(4096)
        except OSError:
            return False
        return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0]

    def _wait(self, ready: object, proc: subprocess.Popen[bytes], log: str, what: str) -> None:
        assert callable(ready)
        deadline = time.monotonic() + self.ready_timeout
        while not ready():
            if proc.poll() is not None:
                raise DockerHostError(f"{what}: process exited {proc.returncode}: {self.log_tail(log)}")
            if time.monotonic() > deadline:
                raise DockerHostError(f"{what} not ready within {self.ready_timeout} s: {self.log_tail(log)}")
            time.sleep(0.02)

    def log_tail(self, name: str = "dockerd.log", lines: int = 30) -> str:
        if self.tmp is None or not (self.tmp / name).exists():
            return "(no log)"
        return "\n".join((self.tmp / name).read_text(errors="replace").splitlines()[-lines:])

    # -- teardown ----------------------------------------------------------------------------

    def owned_processes(self) -> list[OwnedProcess]:
        """Every live process this host started: the daemons, whatever shares the holder's mount
        namespace (shims, docker-proxy) and whatever sits in our containers' cgroup parent."""
        pids: set[int] = set()
        for proc in (self._holder, self._containerd, self._dockerd):
            if proc is not None and proc.poll() is None:
                pids.add(proc.pid)
        if self._mnt_ns is not None:
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{entry}/ns/mnt") == self._mnt_ns:
                            pids.add(int(entry))
        for directory in self.cgroup_dirs():
            for procs in directory.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(pid) for pid in procs.read_text().split())
        owned = []
        for pid in sorted(pids - {os.getpid()}):
            fields = _proc_stat(pid)
            if fields is not None and fields[0] != "Z":
                with contextlib.suppress(OSError):
                    owned.append(OwnedProcess(pid, fields[19], Path(f"/proc/{pid}/comm").read_text().strip()))
        return owned

    def cgroup_dirs(self) -> list[Path]:
        """Our containers' cgroup parent in every mounted hierarchy (v1: one per controller)."""
        name = self.cgroup_parent.strip("/")
        found = [Path("/sys/fs/cgroup") / name, *Path("/sys/fs/cgroup").glob(f"*/{name}")]
        return [path for path in found if path.is_dir()]

    def close(self) -> None:
        """Remove containers, stop every process we own (by PID), delete the namespaces and files.
        Idempotent and bounded in time; keeps going after individual failures."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        try:
            if self.daemon_running:
                with contextlib.suppress(Exception):
                    ids = self.docker("ps", "-aq", timeout=10).stdout.split()
                    if ids:
                        self.docker("rm", "-f", *ids, check=False, timeout=30)
            self.stop_daemon()
            if self._containerd is not None:
                _terminate(self._containerd, 10)
            leftovers = [p for p in self.owned_processes() if self._holder is None or p.pid != self._holder.pid]
            for proc in leftovers:  # shims or containers that outlived their daemons
                with contextlib.suppress(ProcessLookupError):
                    if proc.alive():
                        os.kill(proc.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while any(p.alive() for p in leftovers) and time.monotonic() < deadline:
                time.sleep(0.02)
            if self._holder is not None:
                _terminate(self._holder, 5)  # last one out: the private /run and its mounts go
            still = [f"{p.comm}[{p.pid}]" for p in leftovers if p.alive()]
            if still:
                errors.append(f"processes survived SIGKILL: {', '.join(still)}")
            errors += self._remove_cgroups()
        finally:
            errors += delete_namespaces([self.host_ns, self.ext_ns])
            if self.tmp is not None:
                errors += _unmount_below(str(self.tmp))
                shutil.rmtree(self.tmp, ignore_errors=True)
            closed(self)
        if errors:
            raise DockerHostError("teardown incomplete: " + "; ".join(errors))

    def _remove_cgroups(self) -> list[str]:
        """rmdir our cgroup-parent trees, deepest first (the kernel may need a moment after the
        last process left)."""
        deadline = time.monotonic() + 5
        while True:
            remaining = []
            for root in self.cgroup_dirs():
                for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        directory.rmdir()
                with contextlib.suppress(OSError):
                    root.rmdir()
                if root.exists():
                    remaining.append(str(root))
            if not remaining:
                return []
            if time.monotonic() > deadline:
                return [f"cgroups not removed: {', '.join(remaining)}"]
            time.sleep(0.05)

    # -- docker CLI --------------------------------------------------------------------------

    def docker(self, *args: str, check: bool = True, timeout: float = 60,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this daemon's socket."""
        assert self.tmp is not None
        env = {**self._env(), "DOCKER_CONFIG": str(self.tmp / "docker-config")}
        return run_command([self.docker_cli(), "-H", f"unix://{self.socket_path}", *args], check=check, timeout=timeout,
                           input=input, env=env)

    def run_web(self, name: str, publish: Iterable[str] = ("8080:80",), *, network: str | None = None,
                extra: Sequence[str] = ()) -> str:
        """``docker run -d --init --restart always`` busybox httpd serving PAGE on port 80; the id.

        --init: busybox httpd as PID 1 would ignore SIGTERM, so every stop would wait for SIGKILL.
        """
        args = ["run", "-d", "--init", "--restart", "always", "--name", name]
        args += [arg for spec in publish for arg in ("-p", spec)]
        if network:
            args += ["--network", network]
        return self.docker(*args, *extra, IMAGE).stdout.strip()

    def run_udp_echo(self, name: str, publish: Iterable[str] = ("5353:53/udp",), *, port: int = 53,
                     network: str | None = None, extra: Sequence[str] = ()) -> str:
        """A UDP echo server (busybox nc has no UDP; python3 from the host's read-only /usr)."""
        python = host_python()
        if python is None:
            raise DockerHostError("missing /usr/bin/python3")
        mounts = ["-v", "/usr:/usr:ro"]
        for lib in _lib_dirs():
            if not os.path.islink(f"/{lib}"):
                mounts += ["-v", f"/{lib}:/{lib}:ro"]
        if os.path.exists("/etc/ld.so.cache"):
            mounts += ["-v", "/etc/ld.so.cache:/etc/ld.so.cache:ro"]
        args = ["run", "-d", "--init", "--restart", "always", "--name", name, *mounts]
        args += [arg for spec in publish for arg in ("-p", spec)]
        if network:
            args += ["--network", network]
        return self.docker(*args, *extra, IMAGE, python, "-u", "/udp_echo.py", str(port)).stdout.strip()

    def dual_stack_network(self, name: str = "v6net") -> str:
        """A user-defined network with IPv4 and IPv6 subnets (docker 20.10: IPv6 only here)."""
        v4, v6 = DUAL_STACK_SUBNETS
        self.docker("network", "create", "--ipv6", "--subnet", v6, "--subnet", v4, name)
        return name

    def container_ip(self, name: str, family: int = 4) -> str:
        key = "IPAddress" if family == 4 else "GlobalIPv6Address"
        fmt = "{{range .NetworkSettings.Networks}}{{." + key + "}} {{end}}"
        return self.docker("inspect", "-f", fmt, name).stdout.split()[0]

    # -- running things in the namespaces ----------------------------------------------------

    def host_exec(self, argv: Sequence[str], *, check: bool = True, input: str | None = None,
                  timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``ip netns exec HOST argv``: as an admin's shell on the docker host would run it (with the host's
        xtables lock)."""
        env = {**os.environ, "XTABLES_LOCKFILE": self.xtables_lock}
        return run_command(["ip", "netns", "exec", self.host_ns, *argv], check=check, input=input, timeout=timeout,
                           env=env)

    def ext_exec(self, argv: Sequence[str], *, check: bool = True, timeout: float = 60
                 ) -> subprocess.CompletedProcess[str]:
        return run_command(["ip", "netns", "exec", self.ext_ns, *argv], check=check, timeout=timeout)

    def route_to_containers(self) -> None:
        """Let the external namespace route to the container networks through the host (as a neighbour on
        the same LAN could), for probes straight to container addresses."""
        script = [f"route add 192.0.2.0/24 via {HOST_V4}", f"route add {DUAL_STACK_SUBNETS[1]} via {HOST_V6}"]
        run_command(["ip", "-n", self.ext_ns, "-batch", "-"], input="\n".join(script) + "\n")

    def iptables_save(self, family: int = 4, flavour: str | None = None) -> str:
        """``(ip6)tables-<flavour>-save`` in the host namespace (default: the flavour dockerd uses, or in
        nftables mode the host's default iptables-nft)."""
        kind = (flavour or self.iptables_flavour).split("-", 1)[1]
        tool = "iptables" if family == 4 else "ip6tables"
        return self.host_exec([f"{tool}-{kind}-save"]).stdout

    def nft_ruleset(self) -> str:
        return self.host_exec(["nft", "list", "ruleset"]).stdout

    def docker_tables(self, family: int = 4) -> str:
        """Docker's own rules for one family: iptables-save of its flavour, or in nftables mode its
        ``ip``/``ip6 docker-bridges`` table ("" while dockerd has not made it)."""
        if self.flavour in FLAVOURS:
            return self.iptables_save(family)
        proc = self.host_exec(["nft", "list", "table", "ip" if family == 4 else "ip6", "docker-bridges"], check=False)
        return proc.stdout if proc.returncode == 0 else ""

    def dnat_ports(self, family: int = 4) -> set[tuple[str, int]]:
        """(protocol, host port) pairs Docker DNATs to a container in this family."""
        text = self.docker_tables(family)
        if self.flavour in FLAVOURS:
            found = re.findall(r"-p (tcp|udp) -m \1 --dport (\d+) -j DNAT", text)
        else:  # nftables: `iifname != "br-..." tcp dport 8080 counter ... dnat to 192.0.2.2:80 comment "DNAT"`
            found = re.findall(r"\b(tcp|udp) dport (\d+) .*\bdnat\b", text)
        return {(proto, int(port)) for proto, port in found}

    def docker_info(self) -> dict[str, object]:
        """The Engine API's /info, as ``docker info --format '{{json .}}'`` prints it."""
        info: dict[str, object] = json.loads(self.docker("info", "--format", "{{json .}}").stdout)
        return info

    def proxy_commands(self) -> list[list[str]]:
        """The argv (from /proc/PID/cmdline) of every docker-proxy this host runs, sorted."""
        commands = []
        for proc in self.owned_processes():
            if proc.comm == "docker-proxy":
                with contextlib.suppress(OSError):
                    raw = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
                    commands.append([arg.decode() for arg in raw.split(b"\0") if arg])
        return sorted(commands)

    def listeners(self, port: int) -> list[tuple[str, str, str]]:
        """(protocol, local address:port, process) of every socket bound to ``port`` in the host namespace."""
        out = self.host_exec(["ss", "-Hltunp", f"sport = :{port}"]).stdout
        found = []
        for line in out.splitlines():
            fields = line.split()
            process = re.search(r'\(\("([^"]+)"', line)
            found.append((fields[0], fields[4], process.group(1) if process else ""))
        return sorted(found)

    # -- probing from the external namespace -------------------------------------------------

    def probe_outcomes(self, probes: Sequence[Probe]) -> list[str]:
        """Run probes concurrently (wall time ~ the longest timeout); see ``_probe`` for outcomes."""
        if not probes:
            return []
        netns = self.netns_path("ext")
        with ThreadPoolExecutor(max_workers=min(32, len(probes))) as pool:
            return list(pool.map(lambda probe: _probe(netns, probe), probes))

    def probe_outcome(self, port: int, src: str | None = None, proto: str = "tcp", family: int = 4,
                      timeout: float = 1.0) -> str:
        return self.probe_outcomes([Probe(port, src, proto, family, timeout)])[0]

    def probe(self, port: int, src: str | None = None, proto: str = "tcp", family: int = 4,
              timeout: float = 1.0) -> bool:
        """True when a TCP connect to the host's published ``port`` succeeds (UDP: echo comes back)."""
        return self.probe_outcome(port, src, proto, family, timeout) == "open"

    def fetch(self, port: int, src: str | None = None, family: int = 4, timeout: float = 2.0) -> str | None:
        """The HTTP body served on the host's ``port`` (None if not reachable or not 200)."""
        return _http_get(self.netns_path("ext"), family, port, src, timeout)

    def wait_reachable(self, probes: Sequence[Probe], timeout: float = 10.0) -> None:
        """Wait (bounded) until every probe is open: containers restart asynchronously."""
        deadline = time.monotonic() + timeout
        while True:
            outcomes = self.probe_outcomes(probes)
            if all(outcome == "open" for outcome in outcomes):
                return
            if time.monotonic() > deadline:
                bad = ", ".join(f"{p}: {o}" for p, o in zip(probes, outcomes) if o != "open")
                raise DockerHostError(f"not reachable within {timeout} s: {bad}")
            time.sleep(0.05)


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM one process we started, wait up to ``timeout``, then SIGKILL (and reap)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def _unmount_below(path: str) -> list[str]:
    """Unmount (lazily) anything mounted under ``path`` in our mount namespace; normally nothing is,
    since dockerd's mounts live in the holder's namespace and die with it."""
    errors = []
    prefix = path.rstrip("/") + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if (p + "/").startswith(prefix)), key=len, reverse=True):
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)
        proc = run_command(["umount", "-l", point], check=False, timeout=30)
        errors.append(f"had to unmount {point}" + (f" (failed: {proc.stderr.strip()})" if proc.returncode else ""))
    return errors
