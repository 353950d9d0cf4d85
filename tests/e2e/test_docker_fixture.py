"""The real-Docker fixture itself, without dockerguard: publishing works from the external namespace,
dockerd restarts bring containers back, the rules land where the chosen firewall mode puts them, and
nothing is left behind, not even after dockerd was killed. Also the facts about Docker 20.10, 28 and 29
that dockerguard depends on: chains and their order, the firewall backend /info reports, forwarding at
start, docker-proxy's command line and sockets, and reference dumps (fixtures/) of each engine's rules."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from docker_host import (
    EXT_SOURCES_V4,
    EXT_SOURCES_V6,
    FLAVOURS,
    NFTABLES,
    PAGE,
    SYSTEM_ENGINE,
    DockerHost,
    DockerHostError,
    Probe,
    on_host_addresses,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# DOCKERGUARD_E2E_WRITE_REFERENCES=1 rewrites fixtures/*.rules from live engines instead of comparing.
WRITE_REFERENCES = os.environ.get("DOCKERGUARD_E2E_WRITE_REFERENCES") == "1"

# Host modes for the tests that record one fact per engine rather than per firewall mode.
ONE_PER_ENGINE = [("20.10", "iptables-legacy"), ("28", "iptables-nft"), ("29", NFTABLES)]


def mode_ids(modes: list[tuple[str, str]]) -> list[str]:
    return [f"docker{engine}-{flavour}" for engine, flavour in modes]


def other(flavour: str) -> str:
    return next(f for f in FLAVOURS if f != flavour)


def docker_chains(save_text: str) -> set[str]:
    return set(re.findall(r"^:(DOCKER[\w-]*)", save_text, re.MULTILINE))


def table_rules(save_text: str, table: str) -> list[str]:
    """The ``-A`` lines of one table of an iptables-save dump, in order."""
    found, inside = [], False
    for line in save_text.splitlines():
        if line.startswith("*"):
            inside = line == f"*{table}"
        elif inside and line.startswith("-A "):
            found.append(line)
    return found


def test_published_port_is_reachable_and_others_are_not(docker_host: DockerHost) -> None:
    docker_host.run_web("web", publish=["8080:80"])
    docker_host.wait_reachable([Probe(8080)])
    for src in EXT_SOURCES_V4:
        assert docker_host.fetch(8080, src=src) == PAGE
    # Nothing DNATs 8081 and nothing listens on it: the host kernel answers with a reset.
    assert docker_host.probe_outcome(8081, timeout=0.5) == "refused"


def test_container_comes_back_after_daemon_restart(docker_host: DockerHost) -> None:
    container = docker_host.run_web("web", publish=["8080:80"])
    docker_host.wait_reachable([Probe(8080)])
    old_pid = docker_host.daemon_pid
    docker_host.restart_daemon()
    assert docker_host.daemon_pid != old_pid
    docker_host.wait_reachable([Probe(8080)])
    assert docker_host.fetch(8080) == PAGE
    assert docker_host.docker("ps", "-q", "--no-trunc").stdout.split() == [container]


def test_rules_live_where_the_firewall_mode_puts_them(docker_host: DockerHost) -> None:
    """Where a DOCKER-USER jump or a forward-hook chain has to sit, per engine: 20.10 jumps from FORWARD to
    DOCKER-USER and then to its own chains; 28 and 29 jump to DOCKER-USER and then to DOCKER-FORWARD only,
    and drop direct access to container addresses in the raw table; nftables mode has its own tables and
    no DOCKER-USER at all."""
    docker_host.run_web("web", publish=["8080:80"])
    docker_host.wait_reachable([Probe(8080)])
    address = docker_host.container_ip("web")
    nft = docker_host.nft_ruleset()
    if docker_host.flavour == NFTABLES:
        for flavour in FLAVOURS:
            for family in (4, 6):
                assert docker_chains(docker_host.iptables_save(family, flavour)) == set(), (flavour, family)
        assert "table ip docker-bridges" in nft and "table ip6 docker-bridges" in nft
        assert "DOCKER-USER" not in nft
        ours = docker_host.docker_tables(4)
        assert re.search(r"chain filter-FORWARD \{\n\s+type filter hook forward priority filter;", ours)
        assert re.search(rf'chain raw-PREROUTING \{{\n\s+type filter hook prerouting priority raw; policy accept;\n'
                         rf'\s+ip daddr {address} iifname != "docker0" counter packets \d+ bytes \d+ drop '
                         r'comment "DROP DIRECT ACCESS"\n', ours), ours
        assert docker_host.dnat_ports(4) == {("tcp", 8080)}
        return
    ours = docker_host.iptables_save(4)
    assert {"DOCKER", "DOCKER-USER"} <= docker_chains(ours)
    assert "--dport 8080 -j DNAT --to-destination" in ours
    assert docker_chains(docker_host.iptables_save(4, flavour=other(docker_host.flavour))) == set()
    in_nft = "DOCKER" in nft  # iptables-nft rules are nftables underneath
    assert in_nft == (docker_host.flavour == "iptables-nft")
    assert "docker-bridges" not in nft
    forward = table_rules(ours, "filter")
    forward = [line for line in forward if line.startswith("-A FORWARD ")]
    raw = table_rules(ours, "raw")
    if docker_host.engine == SYSTEM_ENGINE:
        assert forward[:2] == ["-A FORWARD -j DOCKER-USER", "-A FORWARD -j DOCKER-ISOLATION-STAGE-1"]
        assert raw == []
    else:
        assert forward == ["-A FORWARD -j DOCKER-USER", "-A FORWARD -j DOCKER-FORWARD"]
        assert {"DOCKER-FORWARD", "DOCKER-CT", "DOCKER-BRIDGE"} <= docker_chains(ours)
        assert raw == [f"-A PREROUTING -d {address}/32 ! -i docker0 -j DROP"]
        # ip6tables is on by default since 27: the same skeleton for IPv6, without a container address.
        v6 = docker_host.iptables_save(6)
        assert [line for line in table_rules(v6, "filter") if line.startswith("-A FORWARD ")] == forward


def test_dual_stack_network_and_udp(docker_host: DockerHost) -> None:
    network = docker_host.dual_stack_network()
    docker_host.run_web("web", publish=on_host_addresses(8080, 80), network=network)
    docker_host.run_udp_echo("echo", publish=on_host_addresses(5353, 53, "udp"), network=network)
    assert docker_host.container_ip("web", 6).startswith("2001:db8:2::")
    docker_host.wait_reachable([Probe(8080, family=6), Probe(5353, proto="udp"),
                                Probe(5353, EXT_SOURCES_V6[1], "udp", 6)])
    assert docker_host.fetch(8080, src=EXT_SOURCES_V6[1], family=6) == PAGE
    # Docker DNATs IPv6 itself when "ip6tables" is on (20.10: experimental); see on_host_addresses.
    assert docker_host.dnat_ports(6) == {("tcp", 8080), ("udp", 5353)}
    assert f"[{docker_host.container_ip('web', 6)}]:80" in docker_host.docker_tables(6)


def _root_state() -> dict[str, str]:
    """Read-only view of the root namespace's firewall, links and Docker paths."""
    def out(argv: list[str]) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        text = proc.stdout + proc.stderr
        # Counters and timestamps change on a busy host without anything being modified.
        text = re.sub(r"\[\d+:\d+\]|packets \d+ bytes \d+", "", text)
        return "\n".join(line for line in text.splitlines() if not line.startswith("#"))

    state = {" ".join(argv): out(argv) for argv in (
        ["iptables-legacy-save"], ["ip6tables-legacy-save"], ["iptables-nft-save"], ["ip6tables-nft-save"],
        ["nft", "list", "ruleset"], ["ip", "-o", "link", "show"])}
    # What an unisolated dockerd/containerd would write; they live in the holder's private /run here.
    for path in ("/run/docker", "/run/containerd", "/var/run/docker.sock", "/etc/docker/key.json"):
        state[path] = str(os.path.lexists(path))
    for name in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
        state[name] = Path(f"/proc/sys/{name}").read_text()
    return state


def test_teardown_leaves_nothing_even_after_dockerd_was_killed(host_mode: tuple[str, str]) -> None:
    before = _root_state()
    engine, flavour = host_mode
    host = DockerHost(flavour, engine=engine)
    with host:
        network = host.dual_stack_network()
        host.run_web("web", publish=["8080:80"], network=network)
        host.run_udp_echo("echo", network=network)
        host.wait_reachable([Probe(8080), Probe(5353, proto="udp")])
        owned = host.owned_processes()
        commands = {p.comm for p in owned}
        assert {"sleep", "containerd", "dockerd", "httpd", "docker-proxy"} <= commands, commands
        assert any(c.startswith("containerd-shim") for c in commands), commands
        tmp, netns = host.tmp, [host.host_ns, host.ext_ns]
        cgroups = host.cgroup_dirs()
        assert cgroups, "containers should sit below our cgroup parent"
        # A crash: containers and shims outlive a SIGKILLed dockerd; teardown must still find them.
        pid = host.daemon_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    assert [p for p in owned if p.alive()] == []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(name in listed for name in netns)
    assert tmp is not None and not tmp.exists()
    assert not any(path.exists() for path in cgroups)
    with open("/proc/self/mounts") as mounts:
        assert str(tmp) not in mounts.read()
    assert _root_state() == before


@pytest.mark.parametrize("host_mode", [("20.10", "iptables-legacy"), ("29", NFTABLES)],
                         ids=mode_ids([("20.10", "iptables-legacy"), ("29", NFTABLES)]), indirect=True)
def test_daemon_can_start_after_the_namespaces_exist(host_mode: tuple[str, str],
                                                     make_docker_host: Callable[..., DockerHost]) -> None:
    engine, flavour = host_mode
    host = make_docker_host(flavour, engine=engine, start=False)
    assert not host.daemon_running
    assert "DOCKER" not in host.iptables_save(4)
    assert "docker" not in host.nft_ruleset()
    host.start_daemon()
    host.run_web("web", publish=["8080:80"])
    host.wait_reachable([Probe(8080)])


def test_forwarding_off_at_start(host_mode: tuple[str, str], make_docker_host: Callable[..., DockerHost]) -> None:
    """On a fresh host (forwarding off): the iptables modes turn IPv4 forwarding on and then set FORWARD's
    policy to DROP; Docker 29's nftables mode refuses to start (moby#50646: it no longer enables
    forwarding). The other tests start with forwarding on, as nftables mode needs, so FORWARD's policy
    stays ACCEPT there."""
    engine, flavour = host_mode
    host = make_docker_host(flavour, engine=engine, start=False, forwarding=False)
    if flavour == NFTABLES:
        with pytest.raises(DockerHostError, match=r"IPv4 forwarding is disabled.*net\.ipv4\.ip_forward=1"):
            host.start_daemon()
        return
    host.start_daemon()
    assert host.host_exec(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
    assert ":FORWARD DROP" in host.iptables_save(4)
    host.run_web("web", publish=["8080:80"])
    host.wait_reachable([Probe(8080)])


def test_info_reports_the_firewall_backend(docker_host: DockerHost) -> None:
    """Engine API /info (``docker info --format '{{json .}}'``): "FirewallBackend" is {"Driver": ...}
    since 28 ("iptables" for either iptables flavour: it does not say legacy or nft), with "Info" pairs
    since 29; 20.10 has no such field."""
    info = docker_host.docker_info()
    if docker_host.engine == SYSTEM_ENGINE:
        assert "FirewallBackend" not in info
        return
    backend = info["FirewallBackend"]
    assert isinstance(backend, dict)
    assert backend["Driver"] == ("nftables" if docker_host.flavour == NFTABLES else "iptables")
    if docker_host.engine == "28":
        assert set(backend) == {"Driver"}
    else:
        assert dict(backend["Info"])["EnableUserlandProxy"] == "true"


@pytest.mark.parametrize("host_mode", ONE_PER_ENGINE, ids=mode_ids(ONE_PER_ENGINE), indirect=True)
def test_ipv6_reaches_an_ipv4_only_container_through_docker_proxy(docker_host: DockerHost) -> None:
    """A fact of every engine that filters must know: a container on an IPv4-only network (here the
    default bridge) is still published on [::]:PORT by the userland proxy. Such connections go
    through the host's INPUT path (no DNAT, no FORWARD), not through DOCKER-USER or a forward hook."""
    docker_host.run_web("web", publish=["8080:80"])
    docker_host.run_udp_echo("echo", publish=["5353:53/udp"])
    # IPv4 is DNATed straight to httpd; the proxy would accept IPv6 before httpd listens.
    docker_host.wait_reachable([Probe(8080), Probe(5353, proto="udp")])
    assert docker_host.fetch(8080, family=6) == PAGE
    assert docker_host.probe(5353, proto="udp", family=6, timeout=3.0)
    assert docker_host.dnat_ports(6) == set()
    assert docker_host.listeners(8080) == [("tcp", "0.0.0.0:8080", "docker-proxy"),
                                           ("tcp", "[::]:8080", "docker-proxy")]
    assert docker_host.listeners(5353) == [("udp", "0.0.0.0:5353", "docker-proxy"),
                                           ("udp", "[::]:5353", "docker-proxy")]
    web, echo = docker_host.container_ip("web"), docker_host.container_ip("echo")
    # 28 and 29: dockerd binds the socket itself and hands it over (-use-listen-fd).
    handover = [] if docker_host.engine == SYSTEM_ENGINE else ["-use-listen-fd"]
    expected = sorted([
        ["-proto", proto, "-host-ip", host_ip, "-host-port", port, "-container-ip", address, "-container-port",
         inner, *handover]
        for proto, port, address, inner in (("tcp", "8080", web, "80"), ("udp", "5353", echo, "53"))
        for host_ip in ("0.0.0.0", "::")])
    commands = docker_host.proxy_commands()
    assert sorted(argv[1:] for argv in commands) == expected
    engine_proxy = str(docker_host.engine_bin / "docker-proxy") if docker_host.engine_bin else "/usr/sbin/docker-proxy"
    assert {argv[0] for argv in commands} == {engine_proxy}


def reference_text(host: DockerHost) -> str:
    """What fixtures/<label>.rules holds: the host's iptables-save (IPv4, IPv6) and nft list ruleset, with
    counters zeroed and the "Generated/Completed" comment lines dropped."""
    kind = host.iptables_flavour.split("-", 1)[1]
    sections = [(f"iptables-{kind}-save", host.iptables_save(4)), (f"ip6tables-{kind}-save", host.iptables_save(6)),
                ("nft list ruleset", host.nft_ruleset())]
    out = [f"# {host.label}: one container (busybox httpd) on the default bridge 192.0.2.1/28, `docker run -p "
           "8080:80`, daemon.json of tests/e2e/docker_host.py (ip6tables on), forwarding on before dockerd started",
           "# written by tests/e2e/test_docker_fixture.py::test_reference_rulesets "
           "(DOCKERGUARD_E2E_WRITE_REFERENCES=1)"]
    for title, text in sections:
        text = re.sub(r"\[\d+:\d+\]", "[0:0]", text)
        text = re.sub(r"packets \d+ bytes \d+", "packets 0 bytes 0", text)
        lines = [line for line in text.splitlines() if not re.match(r"# (Generated|Completed) ", line)]
        out += [f"### {title}", *lines]
    return "\n".join(out) + "\n"


REFERENCE_MODES = [("20.10", "iptables-nft"), ("28", "iptables-nft"), ("29", "iptables-nft"), ("29", NFTABLES)]


@pytest.mark.parametrize("host_mode", REFERENCE_MODES, ids=mode_ids(REFERENCE_MODES), indirect=True)
def test_reference_rulesets(docker_host: DockerHost) -> None:
    """The exact rules each engine makes for one published port, kept under fixtures/ as reference (the
    addresses are documentation ranges); a new engine build that changes them fails here first."""
    docker_host.run_web("web", publish=["8080:80"])
    docker_host.wait_reachable([Probe(8080)])
    assert docker_host.container_ip("web") == "192.0.2.2"  # the first address of docker0's /28
    path = FIXTURES / f"{docker_host.label}.rules"
    text = reference_text(docker_host)
    if WRITE_REFERENCES:
        path.write_text(text)
        pytest.skip(f"wrote {path}")
    assert text == path.read_text()
