"""`backend = "auto"`: find which firewall Docker uses on this host.

dockerguard must write where Docker's rules are: a DOCKER-USER jump in the iptables flavour Docker
does not use is never reached by Docker's traffic, or filters it a second time. So, in the spirit of
kubernetes-sigs/iptables-wrappers, the facts are counted rather than guessed:

0. Docker itself, when its API answers: since 29.0 `/info` names its firewall backend
   (`FirewallBackend.Driver`: "nftables", "iptables", "iptables+firewalld"). "nftables" -> `nft`;
   an iptables driver narrows the choice to the iptables flavours, decided as below.
1. Docker's nftables firewall backend (`table ip docker-bridges` / `ip6 docker-bridges`) -> `nft`
   (there is no DOCKER-USER there; our own base chain runs first).
2. Otherwise the iptables flavour holding Docker's chains and rules wins (IPv4 and IPv6 together);
   both holding some is a conflict we refuse to resolve silently.
3. Neither (Docker not started yet): the flavour `iptables --version` names, since dockerd will use
   that binary; no iptables at all -> `nft` if usable.

The reason of the decision names the evidence that decided. `gather_facts()` reads the host (needs root
for most of it); `decide(facts)` is pure.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, replace

from .backends import driver_class
from .backends.common import find_tool, iptables_binary, run_tool
from .docker import DockerClient
from .errors import DetectionError, DockerUnavailable
from .model import Family
from .stderr_noise import privilege_noise_filtered

FLAVOURS = ("iptables-legacy", "iptables-nft")
_TIMEOUT = 15
# Docker's chains: DOCKER, DOCKER-FORWARD, DOCKER-ISOLATION-STAGE-1, DOCKER-CT, ... (not DOCKERGUARD).
_DOCKER_CHAIN = re.compile(r"^DOCKER(-[A-Z0-9-]+)?$")
_NOT_DOCKERS = ("DOCKER-USER",)  # may be ours (created before Docker) or the admin's


@dataclass(frozen=True)
class Detection:
    backend: str
    reason: str
    evidence: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Counts:
    """Lines of Docker's making in one iptables flavour; None where it could not be read."""

    ipv4: int | None
    ipv6: int | None
    error: str = ""

    @property
    def total(self) -> int:
        return (self.ipv4 or 0) + (self.ipv6 or 0)

    @property
    def readable(self) -> bool:
        return self.ipv4 is not None or self.ipv6 is not None

    def __str__(self) -> str:
        if not self.readable:
            return f"unreadable ({self.error})" if self.error else "unreadable"
        return f"IPv4 {_count(self.ipv4)}, IPv6 {_count(self.ipv6)}"


@dataclass(frozen=True)
class Facts:
    docker_bridges: tuple[str, ...] | None  # e.g. ("ip docker-bridges",); None: nft ruleset unreadable
    counts: dict[str, Counts]  # flavour -> counts
    iptables_version: str | None  # `iptables --version`; None: no iptables binary
    nft_usable: bool
    nft_reason: str = ""
    # What the Docker API's /info says: FirewallBackend.Driver (29+), "" for an older Docker that does not
    # say, None when the API could not be asked (or no socket was given).
    docker_firewall: str | None = None
    docker_version: str = ""


def count_docker_lines(save_text: str) -> int:
    """Lines of an iptables-save dump (all tables) that Docker made: declarations of its chains, the
    rules in them and the jumps to them. DOCKER-USER's declaration and jumps to it are left out (we
    may have created it before Docker started), and so are dockerguard's own jumps."""
    count = 0
    for line in save_text.splitlines():
        words = line.split()
        if line.startswith(":") and words:
            count += _is_docker_chain(words[0][1:]) and words[0][1:] not in _NOT_DOCKERS
        elif line.startswith("-A ") and len(words) >= 2:
            target = words[words.index("-j") + 1] if "-j" in words[:-1] else ""
            if target.startswith("DOCKERGUARD"):
                continue
            count += _is_docker_chain(words[1]) or (_is_docker_chain(target) and target not in _NOT_DOCKERS)
    return count


def _is_docker_chain(name: str) -> bool:
    return bool(_DOCKER_CHAIN.match(name))


def decide(facts: Facts) -> Detection:
    """The backend for `auto`, with a one-sentence reason; DetectionError when the facts conflict."""
    evidence = _evidence(facts)
    legacy, nft = facts.counts.get("iptables-legacy"), facts.counts.get("iptables-nft")
    legacy_total = legacy.total if legacy else 0
    nft_total = nft.total if nft else 0
    said = facts.docker_firewall
    if said == "nftables":
        return Detection("nft", f"Docker {facts.docker_version} says (API /info) that its firewall backend is "
                                "nftables, which has no DOCKER-USER chain, so dockerguard uses its own nftables "
                                "table.", evidence)
    if said and said.startswith("iptables"):
        # Docker uses iptables; which flavour is for the kernel evidence to tell (nft is not an option).
        decided = decide(replace(facts, docker_firewall=None, docker_bridges=None, nft_usable=False,
                                 nft_reason=f"Docker's firewall backend is {said}"))
        return Detection(decided.backend, f"Docker {facts.docker_version} says (API /info) that its firewall "
                                          f"backend is {said}; {decided.reason}", evidence)
    if facts.docker_bridges:
        stale = ""
        if legacy_total or nft_total:
            stale = (f" (Docker rules also remain in iptables: legacy {legacy}, nft {nft}; "
                     "probably left from an earlier iptables-mode run)")
        return Detection("nft", f"Docker uses its nftables firewall backend ({', '.join(facts.docker_bridges)} "
                                "present), which has no DOCKER-USER chain, so dockerguard uses its own nftables "
                                f"table{stale}.", evidence)
    if legacy_total and nft_total:
        raise DetectionError(
            f"conflict: Docker's rules are in both iptables-legacy ({legacy}) and iptables-nft ({nft}); "
            "one set is stale (e.g. left by a dockerd that ran with the other iptables). Remove it, or set "
            "`backend` in the policy to the flavour the running dockerd uses (`iptables --version` says: "
            f"{facts.iptables_version or 'no iptables'}).", evidence)
    for flavour, total, other in (("iptables-legacy", legacy_total, nft), ("iptables-nft", nft_total, legacy)):
        if total:
            counts = facts.counts[flavour]
            other_name = "iptables-nft" if flavour == "iptables-legacy" else "iptables-legacy"
            other_text = "none" if other is None or other.readable else "it could not be read"
            return Detection(flavour, f"Docker's rules ({counts}) are in {flavour} and {other_text} in "
                                      f"{other_name}, so dockerguard writes to {flavour} too.", evidence)
    unread = "" if any(c.readable for c in facts.counts.values()) else (
        " (the iptables rules could not be read: not root?)")
    version = facts.iptables_version
    if version is not None:
        if "(nf_tables)" in version:
            flavour, why = "iptables-nft", "nf_tables"
        elif "(legacy)" in version:
            flavour, why = "iptables-legacy", "legacy"
        else:  # iptables before 1.8 has no nft flavour and does not say
            flavour, why = "iptables-legacy", "no flavour, i.e. legacy (before 1.8)"
        return Detection(flavour, f"No Docker rules found yet{unread}; `iptables --version` says {why}, the "
                                  f"iptables dockerd will use, so {flavour}.", evidence)
    if facts.nft_usable:
        return Detection("nft", f"No Docker rules found{unread} and iptables is not installed, so Docker can only "
                                "use its nftables backend: native nft.", evidence)
    raise DetectionError(f"no usable backend found: no Docker rules{unread}, no iptables binary, and nft is not "
                         f"usable ({facts.nft_reason or 'unknown reason'}).")


def _evidence(facts: Facts) -> tuple[tuple[str, str], ...]:
    bridges = ("unreadable" if facts.docker_bridges is None
               else ", ".join(facts.docker_bridges) or "none")
    api = ("no answer (Docker API not reachable)" if facts.docker_firewall is None else
           f"{facts.docker_firewall} (Docker {facts.docker_version})" if facts.docker_firewall else
           f"not said (Docker {facts.docker_version or '?'}, before 29)")
    items = [("Docker API firewall backend", api), ("nftables docker-bridges tables", bridges)]
    items += [(f"{flavour} Docker lines", str(counts)) for flavour, counts in facts.counts.items()]
    items.append(("iptables --version", facts.iptables_version or "not installed"))
    items.append(("nft backend", ("usable" if facts.nft_usable else "not usable")
                  + (f": {facts.nft_reason}" if facts.nft_reason else "")))
    return tuple(items)


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


# -- reading the host ------------------------------------------------------------------------------
def gather_facts(docker: DockerClient | None = None) -> Facts:
    """Read-only look at the host: Docker's /info (when `docker` is given and answers), nft tables,
    both iptables flavours' dumps, `iptables --version`."""
    nft_probe = driver_class("nft").probe()
    firewall, version = _docker_says(docker)
    return Facts(docker_bridges=_docker_bridges(), counts={flavour: _counts(flavour) for flavour in FLAVOURS},
                 iptables_version=_iptables_version(), nft_usable=nft_probe.available,
                 nft_reason=nft_probe.reason, docker_firewall=firewall, docker_version=version)


def _docker_says(docker: DockerClient | None) -> tuple[str | None, str]:
    """(FirewallBackend.Driver or "" if this Docker does not say, its version); (None, "") if unreachable."""
    if docker is None:
        return None, ""
    try:
        info = docker.info()
    except DockerUnavailable:
        return None, ""
    backend = info.get("FirewallBackend")
    driver = backend.get("Driver") if isinstance(backend, dict) else None
    return (driver if isinstance(driver, str) else ""), str(info.get("ServerVersion", ""))


def _run(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    """The tool's result; None when it is not installed or could not run."""
    if find_tool(argv[0]) is None:
        return None
    try:
        return run_tool(argv, timeout=_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None


def _docker_bridges() -> tuple[str, ...] | None:
    proc = _run(["nft", "list", "tables"])
    if proc is None or proc.returncode != 0:
        return _docker_bridges_libnftables()
    return _bridge_tables(proc.stdout)


def _docker_bridges_libnftables() -> tuple[str, ...] | None:
    try:
        import nftables

        with privilege_noise_filtered():
            rc, output, _ = nftables.Nftables().cmd("list tables")
    except Exception:  # module or libnftables missing: nothing to learn here
        return None
    return _bridge_tables(output or "") if rc == 0 else None


def _bridge_tables(listing: str) -> tuple[str, ...]:
    found = []
    for line in listing.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "table" and words[1] in ("ip", "ip6") and words[2] == "docker-bridges":
            found.append(f"{words[1]} {words[2]}")
    return tuple(found)


def _counts(flavour: str) -> Counts:
    values: list[int | None] = []
    errors: list[str] = []
    for family in Family:
        # A plain dump: `-t filter` would instantiate an absent legacy table.
        binary = iptables_binary(flavour.split("-", 1)[1], family, "-save")
        proc = _run([binary])
        if proc is None:
            values.append(None)
            errors.append(f"{binary} missing")
        elif proc.returncode != 0:
            values.append(None)
            errors.append(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else binary + " failed")
        else:
            values.append(count_docker_lines(proc.stdout))
    return Counts(values[0], values[1], "; ".join(errors))


def _iptables_version() -> str | None:
    proc = _run(["iptables", "--version"])
    if proc is None or proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def detect(docker: DockerClient | None = None) -> Detection:
    return decide(gather_facts(docker))
