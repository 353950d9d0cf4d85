"""Learning the published ports: each source's parser on what that source really prints, and the
union with its evidence (no root: a fake /proc, the Docker API stubbed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dockerguard import published
from dockerguard.docker import ContainerInfo, PublishedPort
from dockerguard.errors import DockerUnavailable

# dockerd 20.10 / 28 nat table (iptables-save): one container publishing 8080->80 and 53/udp, and a range.
NAT = """\
*nat
:PREROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
-A DOCKER -d 198.51.100.1/32 ! -i docker0 -p udp -m udp --dport 5353 -j DNAT --to-destination 172.17.0.2:53
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 9000:9002 -j DNAT --to-destination 172.17.0.3:9000-9002
COMMIT
*filter
:DOCKER - [0:0]
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
COMMIT
"""

# `nft -j list table ip docker-bridges` of Docker 29 (nftables firewall backend), trimmed to its nat rules.
DOCKER_BRIDGES = {"nftables": [
    {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
    {"table": {"family": "ip", "name": "docker-bridges", "handle": 3}},
    {"rule": {"family": "ip", "table": "docker-bridges", "chain": "nat-prerouting-and-output", "handle": 20, "expr": [
        {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "docker0"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}},
        {"counter": {"packets": 0, "bytes": 0}},
        {"dnat": {"addr": "172.17.0.2", "port": 80}}]}},
    {"rule": {"family": "ip", "table": "docker-bridges", "chain": "nat-prerouting-and-output", "handle": 21, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                   "right": {"range": [6000, 6001]}}},
        {"dnat": {"addr": "172.17.0.2", "port": 6000}}]}},
    {"rule": {"family": "ip", "table": "docker-bridges", "chain": "filter-forward-in__docker0", "handle": 22,
              "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                                  "right": 80}}, {"accept": None}]}},  # a filter rule: not a published port
]}


@pytest.fixture
def no_published_ports() -> None:
    """This file tests the real discovery (conftest stubs it for every other unit test)."""


def test_iptables_nat_dnat_rules_give_the_published_ports() -> None:
    assert published.parse_iptables_nat(NAT) == {("tcp", 8080), ("udp", 5353), ("tcp", 9000), ("tcp", 9001),
                                                  ("tcp", 9002)}
    assert published.parse_iptables_nat(NAT.replace("*nat", "*mangle")) == set()  # only the nat table


def test_docker_bridges_dnat_rules_give_the_published_ports() -> None:
    assert published.parse_nft_dnat(DOCKER_BRIDGES) == {("tcp", 8080), ("udp", 6000), ("udp", 6001)}


@pytest.mark.parametrize(("argv", "port"), [
    (["/usr/bin/docker-proxy", "-proto", "tcp", "-host-ip", "0.0.0.0", "-host-port", "8080",
      "-container-ip", "172.17.0.2", "-container-port", "80"], ("tcp", 8080)),
    (["docker-proxy", "-proto", "udp", "-host-ip", "::", "-host-port", "5353", "-container-ip", "172.17.0.2",
      "-container-port", "53", "-use-listen-fd"], ("udp", 5353)),
    (["docker-proxy", "--proto=tcp", "--host-port=443"], ("tcp", 443)),
    (["docker-proxy", "-proto", "sctp", "-host-port", "9"], None),
    (["docker-proxy", "-host-port", "70000"], None),
    (["docker-proxy"], None),
])
def test_docker_proxy_arguments(argv: list[str], port: tuple[str, int] | None) -> None:
    assert published.parse_proxy_argv(argv) == port


def fake_proc(tmp_path: Path, processes: dict[str, tuple[str, list[str], bool]]) -> Path:
    """A /proc with `processes` (pid -> comm, argv, in our network namespace?)."""
    proc = tmp_path / "proc"
    (proc / "thread-self" / "ns").mkdir(parents=True)
    ours, theirs = tmp_path / "netns-ours", tmp_path / "netns-theirs"
    ours.write_text(""), theirs.write_text("")
    os.symlink(ours, proc / "thread-self" / "ns" / "net")
    for pid, (comm, argv, same_netns) in processes.items():
        (proc / pid / "ns").mkdir(parents=True)
        (proc / pid / "comm").write_text(comm + "\n")
        (proc / pid / "cmdline").write_bytes(b"\0".join(arg.encode() for arg in argv) + b"\0")
        os.symlink(ours if same_netns else theirs, proc / pid / "ns" / "net")
    return proc


def test_discover_unions_every_source_and_says_what_each_found(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(published, "run_tool", lambda argv, **_: type("P", (), {
        "returncode": 0, "stdout": NAT if argv[0] == "iptables-nft-save" else ""})())
    monkeypatch.setattr(published, "_nft_dnat", lambda found: set())
    proc = fake_proc(tmp_path, {
        "100": ("docker-proxy", ["docker-proxy", "-proto", "tcp", "-host-port", "7443"], True),
        "101": ("docker-proxy", ["docker-proxy", "-proto", "tcp", "-host-port", "9999"], False),  # not our netns
        "102": ("sshd", ["sshd", "-host-port", "22"], True),
    })
    containers = [ContainerInfo("a", "web", (), (PublishedPort(80, "tcp", 8080, "0.0.0.0"),
                                                 PublishedPort(80, "tcp", 8088, "::")))]
    found = published.discover(lambda: containers, proc=proc)
    assert found.ports == {("tcp", 8080), ("tcp", 8088), ("udp", 5353), ("tcp", 9000), ("tcp", 9001),
                           ("tcp", 9002), ("tcp", 7443)}
    evidence = dict(found.evidence)
    assert evidence["Docker API"] == "8080/tcp, 8088/tcp"
    assert evidence["docker-proxy processes"] == "7443/tcp"
    assert evidence["iptables-legacy-save nat DOCKER"] == "none"

    def down() -> list[ContainerInfo]:
        raise DockerUnavailable("cannot reach Docker at /run/docker.sock")

    without_api = published.discover(down, proc=proc)
    assert ("tcp", 8080) in without_api.ports  # the kernel still knows
    assert dict(without_api.evidence)["Docker API"].startswith("unreadable (cannot reach Docker")
