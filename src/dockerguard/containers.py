"""Container-aware allow entries: turn `container = "web"` / `labels = {...}` into the host ports those
containers publish right now. Pure: the container list comes from the Docker API (docker.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .docker import ContainerInfo, NetworkInfo, PublishedPort
from .net import Network, parse_network
from .policy import Allow, ContainerSelector, Egress, Policy, PortRange, SetRef


@dataclass(frozen=True)
class Resolution:
    """What one container-selecting entry resolved to, for plan/status/watch logs."""

    selector: ContainerSelector
    proto: str
    matches: tuple[tuple[str, PublishedPort], ...]  # (container name, port)

    def describe(self) -> str:
        if not self.matches:
            return f"{self.selector}: no running container publishes a matching {self.proto} port"
        found = ", ".join(f"{name} {p.container_port}/{p.proto} -> host {p.host_port}" for name, p in self.matches)
        return f"{self.selector}: {found}"


def selects(selector: ContainerSelector, container: ContainerInfo) -> bool:
    if selector.name is not None and container.name != selector.name:
        return False
    labels = dict(container.labels)
    return all(labels.get(key) == value for key, value in selector.labels)


def resolve_containers(policy: Policy, containers: list[ContainerInfo]) -> tuple[Policy, tuple[Resolution, ...]]:
    """The policy with every container selector replaced by the host ports it selects now.

    An entry whose containers publish nothing (not running yet) allows nothing, rather than failing:
    `watch` fills it in when the container starts.
    """
    entries: list[Allow] = []
    resolutions: list[Resolution] = []
    for index, original in enumerate(policy.allow):
        entry = replace(original, position=index)  # entries may be left out below: keep each one's number
        if entry.containers is None:
            entries.append(entry)
            continue
        matches = tuple((container.name, port) for container in containers if selects(entry.containers, container)
                        for port in container.ports if _wanted(entry, port))
        resolutions.append(Resolution(entry.containers, entry.proto, matches))
        ports = entry.ports + tuple(PortRange(port.host_port, port.host_port) for _, port in matches)
        if ports:
            entries.append(replace(entry, ports=ports, containers=None))
    return replace(policy, allow=tuple(entries)), tuple(resolutions)


def _wanted(entry: Allow, port: PublishedPort) -> bool:
    if port.proto != entry.proto:
        return False
    wanted = entry.containers.container_ports if entry.containers else ()
    return not wanted or any(span.first <= port.container_port <= span.last for span in wanted)


@dataclass(frozen=True)
class ResolvedEgress:
    """An [[egress]] entry with its selection looked up: the containers' addresses (`sources`, added to
    the entry's own) and the bridges of its networks (`interfaces`). `selected` is False when it named
    containers or networks and none is there now: then it matches nothing."""

    entry: Egress
    sources: tuple[Network, ...]
    interfaces: tuple[str, ...]
    selected: bool = True


def resolve_egress(policy: Policy, containers: list[ContainerInfo], networks: list[NetworkInfo]
                   ) -> tuple[ResolvedEgress, ...]:
    bridges = {network.name: network.bridge for network in networks if network.bridge}
    resolved = []
    for entry in policy.egress:
        sources: list[Network] = [source for source in entry.sources if not isinstance(source, SetRef)]
        sources += [net for source in entry.sources if isinstance(source, SetRef)
                    for net in policy.address_set(source.name).networks]
        selected = True
        if entry.containers is not None:
            addresses = [parse_network(address) for container in containers if selects(entry.containers, container)
                         for address in container.addresses]
            sources += addresses
            selected = bool(addresses)
        interfaces = tuple(bridges[name] for name in entry.networks if name in bridges)
        if entry.networks and not interfaces:
            selected = False
        resolved.append(ResolvedEgress(entry, tuple(sources), interfaces, selected))
    return tuple(resolved)
