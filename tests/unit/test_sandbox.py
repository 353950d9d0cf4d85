"""dockerguard.sandbox without root: the rule texts and argument checks (the namespaces themselves are
tested in tests/integration/test_topology.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dockerguard import sandbox
from dockerguard.sandbox import topology as sandbox_topology


def test_flavours() -> None:
    assert sandbox.FLAVOURS == sandbox.IPTABLES_FLAVOURS == ("iptables-legacy", "iptables-nft")
    assert sandbox.ALL_FLAVOURS[:-1] == sandbox.FLAVOURS
    assert sandbox.ALL_FLAVOURS[-1] == sandbox.DOCKER_NFTABLES == "docker-nftables"
    with pytest.raises(ValueError, match="unknown flavour"):
        sandbox.Topology(flavour="docker-pf")  # checked before anything is built
    with pytest.raises(ValueError, match="unknown flavour"):
        sandbox.iptables_command(sandbox.DOCKER_NFTABLES, 4)
    assert sandbox.iptables_command("iptables-nft", 6, "-restore") == "ip6tables-nft-restore"


def test_docker_nft_ruleset_is_dockers_two_tables_without_docker_user() -> None:
    text = sandbox.docker_nft_ruleset()
    assert re.findall(r"^table (\S+) (\S+) \{$", text, re.M) == [("ip", "docker-bridges"), ("ip6", "docker-bridges")]
    assert "DOCKER-USER" not in text
    assert text.count("type filter hook forward priority filter; policy accept;") == 2
    for mapping in sandbox.PUBLISHED:
        assert (f'iifname != "br0" {mapping.proto} dport {mapping.host_port} counter dnat to '
                f"{sandbox.CTR_V4}:{mapping.container_port}") in text
        assert f"dnat to [{sandbox.CTR_V6}]:{mapping.container_port}" in text
        assert f"ip daddr {sandbox.CTR_V4} {mapping.proto} dport {mapping.container_port} counter accept" in text
        assert f"ip6 daddr {sandbox.CTR_V6} {mapping.proto} dport {mapping.container_port} counter accept" in text
    assert f"ip saddr {sandbox.BRIDGE_NET_V4} counter masquerade" in text
    assert f"ip6 saddr {sandbox.BRIDGE_NET_V6} counter masquerade" in text
    # Published ports are accepted before the final drop of the chain towards the bridge.
    chain = text.split("chain filter-forward-in__br0 {")[1].split("}")[0]
    assert chain.strip().splitlines()[-1].strip() == 'counter drop comment "UNPUBLISHED PORT DROP"'


def test_the_probe_server_ships_inside_the_package() -> None:
    script = sandbox_topology._SERVER_SCRIPT
    assert script.name == "_probe_server.py" and script.is_file()
    assert script.parent == Path(sandbox.__file__).resolve().parent
    assert "import dockerguard" not in script.read_text()  # stand-alone, started by path


def test_sandbox_does_not_import_pytest() -> None:
    modules = sorted(Path(sandbox.__file__).resolve().parent.glob("*.py"))
    assert len(modules) >= 6  # __init__, fixtures, netns, probes, topology, _probe_server
    for module in modules:
        assert not re.search(r"^\s*(import|from)\s+pytest", module.read_text(), re.M), module.name

