"""The real-Docker fixture itself, without dockerguard: publishing works from the external namespace,
dockerd restarts bring containers back, the rules land in the chosen iptables flavour, and nothing is
left behind, not even after dockerd was killed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
from docker_host import (
    EXT_SOURCES_V4,
    EXT_SOURCES_V6,
    FLAVOURS,
    PAGE,
    DockerHost,
    Probe,
    on_host_addresses,
)


def other(flavour: str) -> str:
    return next(f for f in FLAVOURS if f != flavour)


def docker_chains(save_text: str) -> set[str]:
    return set(re.findall(r"^:(DOCKER[\w-]*)", save_text, re.MULTILINE))


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


def test_rules_live_in_the_chosen_flavour(docker_host: DockerHost) -> None:
    docker_host.run_web("web", publish=["8080:80"])
    ours = docker_host.iptables_save(4)
    assert {"DOCKER", "DOCKER-USER", "DOCKER-ISOLATION-STAGE-1"} <= docker_chains(ours)
    assert "--dport 8080 -j DNAT --to-destination" in ours
    assert docker_chains(docker_host.iptables_save(4, flavour=other(docker_host.flavour))) == set()
    in_nft = "DOCKER" in docker_host.nft_ruleset()  # iptables-nft rules are nftables underneath
    assert in_nft == (docker_host.flavour == "iptables-nft")


def test_dual_stack_network_and_udp(docker_host: DockerHost) -> None:
    network = docker_host.dual_stack_network()
    docker_host.run_web("web", publish=on_host_addresses(8080, 80), network=network)
    docker_host.run_udp_echo("echo", publish=on_host_addresses(5353, 53, "udp"), network=network)
    assert docker_host.container_ip("web", 6).startswith("2001:db8:2::")
    docker_host.wait_reachable([Probe(8080, family=6), Probe(5353, proto="udp"),
                                Probe(5353, EXT_SOURCES_V6[1], "udp", 6)])
    assert docker_host.fetch(8080, src=EXT_SOURCES_V6[1], family=6) == PAGE
    # Docker 20.10 DNATs IPv6 itself when "ip6tables" is on (experimental); see on_host_addresses.
    save = docker_host.iptables_save(6)
    assert "--dport 8080 -j DNAT --to-destination [2001:db8:2::" in save
    assert "--dport 5353 -j DNAT --to-destination [2001:db8:2::" in save


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
    return state


def test_teardown_leaves_nothing_even_after_dockerd_was_killed(flavour: str) -> None:
    before = _root_state()
    host = DockerHost(flavour)
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


def test_daemon_can_start_after_the_namespaces_exist(make_docker_host: Callable[..., DockerHost]) -> None:
    host = make_docker_host("iptables-legacy", start=False)
    assert not host.daemon_running
    assert "DOCKER" not in host.iptables_save(4)
    host.start_daemon()
    host.run_web("web", publish=["8080:80"])
    host.wait_reachable([Probe(8080)])


@pytest.mark.parametrize("flavour", ["iptables-legacy"])
def test_ipv6_reaches_an_ipv4_only_container_through_docker_proxy(docker_host: DockerHost) -> None:
    """A fact of Docker 20.10 that filters must know: a container on an IPv4-only network (here the
    default bridge) is still published on [::]:PORT by the userland proxy. Such connections go
    through the host's INPUT path (no DNAT, no FORWARD), not through DOCKER-USER."""
    docker_host.run_web("web", publish=["8080:80"])
    # IPv4 is DNATed straight to httpd; the proxy would accept IPv6 before httpd listens.
    docker_host.wait_reachable([Probe(8080)])
    assert docker_host.fetch(8080, family=6) == PAGE
    assert "8080" not in docker_host.iptables_save(6)
    listeners = docker_host.host_exec(["ss", "-Hltnp", "sport = :8080"]).stdout
    assert "docker-proxy" in listeners and "[::]:8080" in listeners
