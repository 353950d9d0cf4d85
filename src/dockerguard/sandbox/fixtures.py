"""The simulated Docker host's fixed parts: its addresses and published ports, and the firewall rules the
simulated dockerd loads (``docker_ruleset`` for the iptables flavours, ``docker_nft_ruleset`` for Docker
29+'s nftables mode). Pure data and text: nothing here touches a namespace.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backends.common import iptables_binary
from ..model import Family

ROLES: tuple[str, ...] = ("ext", "host", "ctr", "int")  # one network namespace each
# FLAVOURS keeps its meaning "flavours of iptables" (iptables_command() and the tests' fixtures use it).
FLAVOURS: tuple[str, ...] = ("iptables-legacy", "iptables-nft")
IPTABLES_FLAVOURS = FLAVOURS
DOCKER_NFTABLES = "docker-nftables"  # Docker 29+ "firewall-backend": "nftables"
ALL_FLAVOURS: tuple[str, ...] = (*FLAVOURS, DOCKER_NFTABLES)
DOCKER_NFT_TABLE = "docker-bridges"  # in families ip and ip6

# ext: external clients
EXT_V4 = "198.51.100.10"
EXT_V6 = "2001:db8:100::10"
EXT_SOURCES_V4: tuple[str, ...] = ("198.51.100.10", "198.51.100.11", "198.51.100.12")
EXT_SOURCES_V6: tuple[str, ...] = ("2001:db8:100::10", "2001:db8:100::11", "2001:db8:100::12")
# host: the "docker host"
HOST_EXT_IF = "eth0"
HOST_INT_IF = "eth1"
BRIDGE_IF = "br0"
HOST_EXT_V4 = "198.51.100.1"
HOST_EXT_V6 = "2001:db8:100::1"
HOST_INT_V4 = "203.0.113.1"
HOST_INT_V6 = "2001:db8:3::1"
BRIDGE_V4 = "192.0.2.1"
BRIDGE_V6 = "2001:db8:2::1"
BRIDGE_NET_V4 = "192.0.2.0/24"
BRIDGE_NET_V6 = "2001:db8:2::/64"
# ctr: the container
CTR_V4 = "192.0.2.2"
CTR_V6 = "2001:db8:2::2"
# int: the internal network behind eth1
INT_V4 = "203.0.113.10"
INT_V6 = "2001:db8:3::10"

EGRESS_PORT = 7000  # TCP server on every ext address, target of container egress tests
UNPUBLISHED_PORT = 8081  # nothing listens / no DNAT: negative control
HOST_SERVICE_PORT = 22  # TCP server in the host ns itself (INPUT path)


@dataclass(frozen=True)
class PortMapping:
    """One ``docker run -p host_port:container_port/proto``."""

    proto: str
    host_port: int
    container_port: int


PUBLISHED: tuple[PortMapping, ...] = (
    PortMapping("tcp", 8080, 80),
    PortMapping("tcp", 443, 443),
    PortMapping("tcp", 25, 25),
    PortMapping("tcp", 8443, 8443),
    PortMapping("tcp", 9000, 9000),
    PortMapping("tcp", 9001, 9001),
    PortMapping("udp", 5353, 53),
)
# Published with IPv4 DNAT only, as Docker does for a container without IPv6 on a dual-stack host: on
# IPv6 the userland proxy answers instead, listening on the host itself ([::]:9002), so those connections
# take the INPUT path. The host namespace's server plays docker-proxy on this port.
PROXIED: tuple[PortMapping, ...] = (PortMapping("tcp", 9002, 9002),)
PROXY_PORT = PROXIED[0].host_port
CTR_TCP_PORTS: tuple[int, ...] = tuple(m.container_port for m in (*PUBLISHED, *PROXIED) if m.proto == "tcp")
CTR_UDP_PORTS: tuple[int, ...] = tuple(m.container_port for m in PUBLISHED if m.proto == "udp")


def _family(family: int | str) -> Family:
    """Accept 4/6, "4"/"6", "ipv4"/"ipv6", "ip"/"ip6" (callers and tests spell families as they like)."""
    key = str(family).lower()
    if key in ("4", "ipv4", "ip", "inet"):
        return Family.IPV4
    if key in ("6", "ipv6", "ip6", "inet6"):
        return Family.IPV6
    raise ValueError(f"unknown address family {family!r}")


def iptables_command(flavour: str, family: int | str, suffix: str = "") -> str:
    """``iptables_command("iptables-nft", 6, "-restore") == "ip6tables-nft-restore"``: the product's
    ``iptables_binary`` for a sandbox flavour (``"iptables-nft"`` is its ``"nft"``)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS}")
    return iptables_binary(flavour.split("-", 1)[1], _family(family), suffix)


def docker_ruleset(family: int | str, bridge: str = BRIDGE_IF, int_if: str = HOST_INT_IF) -> str:
    """iptables-restore input mimicking dockerd 20-27 with one bridge network and one container.

    Written in iptables-save's canonical spelling so that the rule lines round-trip
    unchanged through ``<flavour>-save`` (tests may compare them verbatim).
    """
    if _family(family) is Family.IPV4:
        net, ctr, ctr_host, loopback = BRIDGE_NET_V4, CTR_V4, f"{CTR_V4}/32", "127.0.0.0/8"
    else:
        net, ctr, ctr_host, loopback = BRIDGE_NET_V6, f"[{CTR_V6}]", f"{CTR_V6}/128", "::1/128"
    nat = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        ":DOCKER - [0:0]",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        f"-A OUTPUT ! -d {loopback} -m addrtype --dst-type LOCAL -j DOCKER",
        f"-A POSTROUTING -s {net} ! -o {bridge} -j MASQUERADE",
        f"-A DOCKER -i {bridge} -j RETURN",
    ]
    filt = [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD DROP [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":DOCKER - [0:0]",
        ":DOCKER-ISOLATION-STAGE-1 - [0:0]",
        ":DOCKER-ISOLATION-STAGE-2 - [0:0]",
        ":DOCKER-USER - [0:0]",
        "-A FORWARD -j DOCKER-USER",
        "-A FORWARD -j DOCKER-ISOLATION-STAGE-1",
        f"-A FORWARD -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-A FORWARD -o {bridge} -j DOCKER",
        f"-A FORWARD -i {bridge} ! -o {bridge} -j ACCEPT",
        f"-A FORWARD -i {bridge} -o {bridge} -j ACCEPT",
        # What the admin of a real host adds so the internal network is routed.
        f"-A FORWARD -i {int_if} -j ACCEPT",
        f"-A FORWARD -o {int_if} -j ACCEPT",
    ]
    for m in PUBLISHED if _family(family) is Family.IPV6 else (*PUBLISHED, *PROXIED):
        p = m.proto
        nat.append(
            f"-A DOCKER ! -i {bridge} -p {p} -m {p} --dport {m.host_port}"
            f" -j DNAT --to-destination {ctr}:{m.container_port}"
        )
        filt.append(
            f"-A DOCKER -d {ctr_host} ! -i {bridge} -o {bridge} -p {p} -m {p}"
            f" --dport {m.container_port} -j ACCEPT"
        )
    filt += [
        f"-A DOCKER-ISOLATION-STAGE-1 -i {bridge} ! -o {bridge} -j DOCKER-ISOLATION-STAGE-2",
        "-A DOCKER-ISOLATION-STAGE-1 -j RETURN",
        f"-A DOCKER-ISOLATION-STAGE-2 -o {bridge} -j DROP",
        "-A DOCKER-ISOLATION-STAGE-2 -j RETURN",
        "-A DOCKER-USER -j RETURN",
    ]
    return "\n".join([*nat, "COMMIT", *filt, "COMMIT", ""])

def docker_nft_ruleset(bridge: str = BRIDGE_IF, int_if: str = HOST_INT_IF) -> str:
    """``nft -f`` input mimicking dockerd 29+ with ``"firewall-backend": "nftables"``.

    Modelled on moby's generated nftables documentation (integration/network/bridge/nftablesdoc,
    "usernet-portmap"): one user-defined bridge network with one container publishing PUBLISHED,
    userland proxy on (so ``nat-postrouting-in__<bridge>`` stays empty), gateway mode "nat"
    (hence the raw DROP DIRECT ACCESS rule). There is no DOCKER-USER equivalent. The base chain
    ``filter-FORWARD`` hooks forward at priority filter (0) with policy accept; per bridge, verdict
    maps jump to ``filter-forward-in__<bridge>`` (towards containers: established, ICC, the
    published container ports, then drop) and ``filter-forward-out__<bridge>``.
    The two ``<int_if>`` accepts stand for the iptables flavours' admin rules; they change
    nothing while the policy is accept (dockerd sets it to drop only if it enabled forwarding itself).
    nat-OUTPUT's priority is spelled -100 (= dstnat): nft < 1.0.7 refuses "dstnat" on the output hook.
    """
    tables = []
    for family, l3, net, ctr, loopback in (
        ("ip", "ip", BRIDGE_NET_V4, CTR_V4, "ip daddr != 127.0.0.0/8 "),
        ("ip6", "ip6", BRIDGE_NET_V6, CTR_V6, ""),  # moby's ip6 nat-OUTPUT has no loopback test
    ):
        dnat_to = ctr if family == "ip" else f"[{ctr}]"
        mappings = (*PUBLISHED, *PROXIED) if family == "ip" else PUBLISHED
        dnat = "\n".join(
            f'\t\tiifname != "{bridge}" {m.proto} dport {m.host_port} counter'
            f' dnat to {dnat_to}:{m.container_port} comment "DNAT"'
            for m in mappings
        )
        published = "\n".join(
            f"\t\t{l3} daddr {ctr} {m.proto} dport {m.container_port} counter accept" for m in mappings
        )
        jumps = "\n".join(
            f"\tmap {name}-jumps {{\n\t\ttype ifname : verdict\n"
            f'\t\telements = {{ "{bridge}" : jump {name}__{bridge} }}\n\t}}\n'
            for name in ("filter-forward-in", "filter-forward-out", "nat-postrouting-in", "nat-postrouting-out")
        )
        tables.append(
            f"""table {family} {DOCKER_NFT_TABLE} {{
{jumps}
\tchain filter-FORWARD {{
\t\ttype filter hook forward priority filter; policy accept;
\t\toifname vmap @filter-forward-in-jumps
\t\tiifname vmap @filter-forward-out-jumps
\t\tiifname "{int_if}" accept comment "admin: route the internal network"
\t\toifname "{int_if}" accept comment "admin: route the internal network"
\t}}

\tchain nat-OUTPUT {{
\t\ttype nat hook output priority -100; policy accept;
\t\t{loopback}fib daddr type local counter jump nat-prerouting-and-output
\t}}

\tchain nat-POSTROUTING {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tiifname vmap @nat-postrouting-out-jumps
\t\toifname vmap @nat-postrouting-in-jumps
\t}}

\tchain nat-PREROUTING {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tfib daddr type local counter jump nat-prerouting-and-output
\t}}

\tchain nat-prerouting-and-output {{
{dnat}
\t}}

\tchain raw-PREROUTING {{
\t\ttype filter hook prerouting priority raw; policy accept;
\t\t{l3} daddr {ctr} iifname != "{bridge}" counter drop comment "DROP DIRECT ACCESS"
\t}}

\tchain filter-forward-in__{bridge} {{
\t\tct state established,related counter accept
\t\tiifname "{bridge}" counter accept comment "ICC"
{published}
\t\tcounter drop comment "UNPUBLISHED PORT DROP"
\t}}

\tchain filter-forward-out__{bridge} {{
\t\tct state established,related counter accept
\t\tcounter accept comment "OUTGOING"
\t}}

\tchain nat-postrouting-in__{bridge} {{
\t}}

\tchain nat-postrouting-out__{bridge} {{
\t\toifname != "{bridge}" {l3} saddr {net} counter masquerade comment "MASQUERADE"
\t}}
}}
"""
        )
    return "\n".join(tables)
