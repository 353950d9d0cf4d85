"""A throw-away sandbox of network namespaces that simulates a Docker host.

Product code: ``dockerguard demo`` runs in it, and so do the integration tests, benchmarks or a REPL
(as root). No pytest::

    with Topology(flavour="iptables-nft") as topo:
        [report] = topo.probe_results([Probe("ext", HOST_EXT_V4, 8080)])
        assert report.ok

Modules: ``fixtures`` (addresses, published ports, Docker's rules), ``netns`` (namespaces and commands in
them), ``probes`` (concurrent connection probes), ``topology`` (``Topology``: build and teardown), and
``_probe_server.py``, the servers' stand-alone script (started by path, imports nothing from here).

Layout (documentation addresses only; the root namespace is never touched: even the
veth pairs are created directly inside the namespaces)::

    ext   eth0 198.51.100.10-12/24, 2001:db8:100::10-12/64   external clients; TCP server
       |                                                      on :7000 (every address)
    host  eth0 198.51.100.1/24,  2001:db8:100::1/64           the "Docker host": forwarding on,
          br0  192.0.2.1/24,     2001:db8:2::1/64             Docker-like firewall rules,
          eth1 203.0.113.1/24,   2001:db8:3::1/64             TCP server on :22 (its own service)
       |                  |
    int   eth0 203.0.113.10/24, 2001:db8:3::10/64             internal network (untouched)
    ctr   eth0 192.0.2.2/24, 2001:db8:2::2/64 (veth in br0)   container: TCP 80, 443, 25, 8443,
                                                              9000, 9001; UDP 53 (echo)

Published (DNAT ``! -i br0``): tcp 8080->80, 443, 25, 8443, 9000, 9001; udp 5353->53.
Port 8081 is deliberately NOT published (negative control).

Flavours (how the simulated dockerd programs the host's firewall):

* ``"iptables-legacy"`` / ``"iptables-nft"``: Docker 20-27 style filter/nat rules with a
  DOCKER-USER chain, loaded with that flavour's ``*-restore`` (``docker_ruleset``);
* ``"docker-nftables"``: Docker 29+ with ``"firewall-backend": "nftables"``: tables
  ``ip docker-bridges`` and ``ip6 docker-bridges``, no DOCKER-USER (``docker_nft_ruleset``);
* ``None``: no Docker rules at all (plain routing).

Servers answer TCP with one line ``DG name=<role> proto=tcp port=<port> peer=<client>``;
``ProbeReport.peer`` exposes the client address they saw (to check SNAT/MASQUERADE).
"""

from __future__ import annotations

from .fixtures import (
    ALL_FLAVOURS,
    BRIDGE_IF,
    BRIDGE_NET_V4,
    BRIDGE_NET_V6,
    BRIDGE_V4,
    BRIDGE_V6,
    CTR_TCP_PORTS,
    CTR_UDP_PORTS,
    CTR_V4,
    CTR_V6,
    DOCKER_NFT_TABLE,
    DOCKER_NFTABLES,
    EGRESS_PORT,
    EXT_SOURCES_V4,
    EXT_SOURCES_V6,
    EXT_V4,
    EXT_V6,
    FLAVOURS,
    HOST_EXT_IF,
    HOST_EXT_V4,
    HOST_EXT_V6,
    HOST_INT_IF,
    HOST_INT_V4,
    HOST_INT_V6,
    HOST_SERVICE_PORT,
    INT_V4,
    INT_V6,
    IPTABLES_FLAVOURS,
    PROXIED,
    PROXY_PORT,
    PUBLISHED,
    ROLES,
    UNPUBLISHED_PORT,
    PortMapping,
    docker_nft_ruleset,
    docker_ruleset,
    iptables_command,
)
from .netns import CommandError, can_create_netns, cleanup_stale_namespaces, in_netns, netns_path
from .probes import Outcome, Probe, ProbeReport, run_probes
from .topology import Topology, TopologyError

__all__ = [
    "ALL_FLAVOURS",
    "BRIDGE_IF",
    "BRIDGE_NET_V4",
    "BRIDGE_NET_V6",
    "BRIDGE_V4",
    "BRIDGE_V6",
    "CTR_TCP_PORTS",
    "CTR_UDP_PORTS",
    "CTR_V4",
    "CTR_V6",
    "DOCKER_NFTABLES",
    "DOCKER_NFT_TABLE",
    "EGRESS_PORT",
    "EXT_SOURCES_V4",
    "EXT_SOURCES_V6",
    "EXT_V4",
    "EXT_V6",
    "FLAVOURS",
    "HOST_EXT_IF",
    "HOST_EXT_V4",
    "HOST_EXT_V6",
    "HOST_INT_IF",
    "HOST_INT_V4",
    "HOST_INT_V6",
    "HOST_SERVICE_PORT",
    "INT_V4",
    "INT_V6",
    "IPTABLES_FLAVOURS",
    "PROXIED",
    "PROXY_PORT",
    "PUBLISHED",
    "ROLES",
    "UNPUBLISHED_PORT",
    "CommandError",
    "Outcome",
    "PortMapping",
    "Probe",
    "ProbeReport",
    "Topology",
    "TopologyError",
    "can_create_netns",
    "cleanup_stale_namespaces",
    "docker_nft_ruleset",
    "docker_ruleset",
    "in_netns",
    "iptables_command",
    "netns_path",
    "run_probes",
]
