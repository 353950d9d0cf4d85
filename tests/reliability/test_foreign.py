"""Foreign rules are sacred (issue 13, item 5): on a simulated Docker host (the sandbox Topology: Docker's
rules in iptables-legacy, iptables-nft or Docker 29's nftables tables) the test adds

- an admin's rules: an nft table of their own (`inet admin`, with a set and an input chain), an iptables
  chain `ADMIN-IN` with INPUT rules jumping to it, in both families;
- fail2ban-like: chain `f2b-sshd` with a banned address and a jump from INPUT, in both families;
- crowdsec-like: `table ip crowdsec` / `table ip6 crowdsec6` with sets and input chains, and the ipsets
  `crowdsec-blacklists` / `crowdsec6-blacklists` matched from INPUT;

then applies a policy, applies a changed one, rolls back, removes, rolls the remove back, re-applies and
removes again, with every backend; after each step everything that is not dockerguard's (nft tables,
both iptables flavours' tables without our chains and jumps, ipsets) is byte-identical, counters aside.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crashlib import XTABLES_LOCKFILE, Netns, big_policy, require_environment

from dockerguard.sandbox import Topology

pytestmark = pytest.mark.integration

ADMIN_NFT = """
table inet admin {
    set trusted { type ipv4_addr; elements = { 192.0.2.10, 192.0.2.11 } }
    chain input {
        type filter hook input priority 10; policy accept;
        ip saddr @trusted tcp dport 2222 counter accept
        tcp dport 2223 counter drop
    }
}
table ip crowdsec {
    set crowdsec-blacklists { type ipv4_addr; elements = { 198.51.100.66, 203.0.113.66 } }
    chain crowdsec-chain {
        type filter hook input priority -10; policy accept;
        ip saddr @crowdsec-blacklists counter drop
    }
}
table ip6 crowdsec6 {
    set crowdsec6-blacklists { type ipv6_addr; elements = { 2001:db8::66 } }
    chain crowdsec6-chain {
        type filter hook input priority -10; policy accept;
        ip6 saddr @crowdsec6-blacklists counter drop
    }
}
"""

IPSETS = """create crowdsec-blacklists hash:ip family inet
add crowdsec-blacklists 198.51.100.77
add crowdsec-blacklists 192.0.2.77
create crowdsec6-blacklists hash:ip family inet6
add crowdsec6-blacklists 2001:db8::77
"""


def iptables_text(family: int) -> str:
    """An admin's and fail2ban's and crowdsec's filter rules, for `iptables-restore --noflush`."""
    banned, reject = ("203.0.113.99/32", "icmp-port-unreachable") if family == 4 else ("2001:db8::99/128",
                                                                                      "icmp6-port-unreachable")
    admin = "192.0.2.0/24" if family == 4 else "2001:db8:1::/48"
    crowdsec = "crowdsec-blacklists" if family == 4 else "crowdsec6-blacklists"
    return (f"*filter\n:ADMIN-IN - [0:0]\n:f2b-sshd - [0:0]\n"
            f"-A ADMIN-IN -s {admin} -p tcp -m tcp --dport 2222 -j ACCEPT\n-A ADMIN-IN -j RETURN\n"
            f"-A f2b-sshd -s {banned} -j REJECT --reject-with {reject}\n-A f2b-sshd -j RETURN\n"
            f"-I INPUT 1 -p tcp -m multiport --dports 22 -j f2b-sshd\n"
            f"-A INPUT -i lo -j ACCEPT\n-A INPUT -p tcp -m tcp --dport 2222 -j ADMIN-IN\n"
            f"-A INPUT -m set --match-set {crowdsec} src -j DROP\nCOMMIT\n")


CASES = [("nft", "iptables-nft"), ("nft", "docker-nftables"), ("iptables-nft", "iptables-nft"),
         ("iptables-legacy", "iptables-legacy")]


@pytest.mark.parametrize(("backend", "docker"), CASES, ids=[f"{b}-on-{d}" for b, d in CASES])
def test_foreign_objects_are_untouched_by_every_step(backend: str, docker: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    require_environment()
    monkeypatch.setenv("XTABLES_LOCKFILE", XTABLES_LOCKFILE)  # the Topology's iptables calls too
    flavour = backend.split("-", 1)[1] if backend.startswith("iptables") else "nft"
    with Topology(flavour=docker) as topo:
        ns = Netns(topo.ns("host"), tmp_path)
        ns.run("nft", "-f", "-", input=ADMIN_NFT)
        ns.run("ipset", "restore", input=IPSETS)
        ns.run(f"iptables-{flavour}-restore", "--noflush", input=iptables_text(4))
        ns.run(f"ip6tables-{flavour}-restore", "--noflush", input=iptables_text(6))
        before = ns.foreign()
        assert "f2b-sshd" in before[f"iptables-{flavour}-save"] and "crowdsec-blacklists" in before["ipset"]
        assert any("table" in item and item["table"]["name"] == "crowdsec6" for item in before["nft"])

        policies = [ns.policy(big_policy(600, [443, 8443]), "a"),
                    ns.policy(big_policy(400, [80], drop_last=3) + '\n[[allow]]\nports = [25]\n', "b")]
        steps = [("apply a", ("apply", "-c", policies[0], "--backend", backend), True),
                 ("apply b", ("apply", "-c", policies[1], "--backend", backend), True),
                 ("re-apply b", ("apply", "-c", policies[1], "--backend", backend), True),
                 ("rollback", ("rollback",), True),
                 ("remove", ("remove", "--backend", backend), False),
                 ("rollback the remove", ("rollback",), True),
                 ("apply b again", ("apply", "-c", policies[1], "--backend", backend), True),
                 ("remove again", ("remove", "--backend", backend), False)]
        for name, argv, installed in steps:
            ns.cli(*argv)
            ours = ns.ours(backend)["ipv4"]
            present = ours[0] is not None if backend == "nft" else "DOCKERGUARD" in ours[0]
            assert present == installed, f"after {name}: ours {'missing' if installed else 'still there'}"
            after = ns.foreign()
            for key, value in before.items():
                assert after[key] == value, f"after {name} ({backend} on {docker}): {key} changed"
