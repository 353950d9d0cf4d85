"""Network primitives every layer shares (policy, model, backends): port ranges and address networks.

Kept apart from `policy` so the rule model and the drivers do not depend on the policy file's schema.

Networks are `Cidr` tuples of plain integers rather than `ipaddress` objects: a blocklist holds 100,000
of them, and parsing, collapsing and printing integers is ~20x cheaper. There is one grammar for addresses
(`parse_network`): ASCII only, no IPv6 zone ("%eth0"), no IPv4-mapped IPv6 ("::ffff:192.0.2.1": iptables
and nftables would treat it differently), no host bits; every backend therefore sees the same networks.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

PROTOCOLS = ("tcp", "udp")
# Interface names, from the policy and from Docker (a network's bridge) alike: the kernel (dev_valid_name)
# takes 1-15 bytes without '/', ':' or whitespace, but a name lands in iptables arguments and nft strings,
# where '+' (iptables) and '*' (nft) are wildcards, a leading '@' (nft: a set reference) or '-' (an option)
# changes the meaning and quotes end the string. So: ASCII letters, digits, '_', '.', '@', '-', starting
# with a letter, digit or '_' (eth0, br-1a2b, eth0.100, wg_0, veth1@if5).
IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,14}")

_BITS = {4: 32, 6: 128}
_HOSTMASK = {version: [(1 << (bits - prefixlen)) - 1 for prefixlen in range(bits + 1)]
             for version, bits in _BITS.items()}
_PREFIX = re.compile(r"[0-9]{1,3}")  # ASCII digits: int() and str.isdigit() take other scripts' digits too
_MAPPED = (0xFFFF << 32, 0xFFFF << 32 | 0xFFFFFFFF)  # ::ffff:0.0.0.0 - ::ffff:255.255.255.255


@dataclass(frozen=True, order=True)
class PortRange:
    first: int
    last: int

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True)
class Limit:
    """At most `rate` new connections per `per` from one source, `burst` at once."""

    rate: int
    per: str  # "second", "minute", "hour" or "day"
    burst: int

    def __str__(self) -> str:
        return f"{self.rate}/{self.per} burst {self.burst}"


class Cidr(NamedTuple):
    """One network: IP version (4 or 6), network address as an integer, prefix length."""

    version: int
    value: int
    prefixlen: int

    @property
    def max_prefixlen(self) -> int:
        return _BITS[self.version]

    @property
    def network_address(self) -> str:
        return format_address(self.version, self.value)

    @property
    def last(self) -> int:
        return self.value | ((1 << (_BITS[self.version] - self.prefixlen)) - 1)

    def contains(self, version: int, address: int) -> bool:
        return version == self.version and self.value <= address <= self.last

    def __str__(self) -> str:
        return f"{format_address(self.version, self.value)}/{self.prefixlen}"


Network = Cidr
ANY = (Cidr(4, 0, 0), Cidr(6, 0, 0))


class AddressError(ValueError):
    """Not an address or network in dockerguard's grammar; `suggestion` is the fixed form, if any."""

    def __init__(self, message: str, suggestion: str | None = None) -> None:
        super().__init__(message)
        self.suggestion = suggestion


def parse_address(text: str) -> tuple[int, int]:
    """(version, integer) of a plain IPv4 or IPv6 address; AddressError otherwise. glibc's inet_pton is
    the grammar: dotted quads without leading zeros, ASCII only."""
    if ":" not in text:
        try:
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
        except (OSError, ValueError):  # ValueError: an embedded NUL
            raise AddressError(f"invalid address or CIDR {text!r}") from None
    if "%" in text:
        raise AddressError(f"{text!r} has an IPv6 zone (%...): zones are not part of a firewall address")
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except (OSError, ValueError):
        raise AddressError(f"invalid address or CIDR {text!r}") from None
    if _MAPPED[0] <= value <= _MAPPED[1]:
        ipv4 = format_address(4, value & 0xFFFFFFFF)
        raise AddressError(f"{text!r} is an IPv4-mapped IPv6 address; write {ipv4}", ipv4)
    return 6, value


def parse_network(text: str) -> Cidr:
    """"198.51.100.7", "203.0.113.0/24", "2001:db8::/32" -> Cidr; AddressError (with the corrected
    network as `suggestion` when only host bits are wrong)."""
    address, slash, length = text.partition("/")
    version, value = parse_address(address)
    bits = _BITS[version]
    if not slash:
        return Cidr(version, value, bits)
    if not _PREFIX.fullmatch(length) or int(length) > bits:
        raise AddressError(f"invalid prefix length in {text!r} (expected 0-{bits})")
    prefixlen = int(length)
    host = (1 << (bits - prefixlen)) - 1
    if value & host:
        fixed = str(Cidr(version, value & ~host, prefixlen))
        raise AddressError(f"{text!r} has host bits set (did you mean {fixed}?)", fixed)
    return Cidr(version, value, prefixlen)


def format_address(version: int, value: int) -> str:
    if version == 4:  # arithmetic is 30% cheaper than inet_ntop here, and prints the same
        return f"{value >> 24}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"
    # inet_ntop: the spelling nft and ip6tables-save print, so read-back compares text with text.
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def collapse(networks: Iterable[Cidr]) -> tuple[Cidr, ...]:
    """The fewest networks covering exactly the union of `networks` (IPv4 first, then IPv6), sorted:
    overlapping and adjacent networks are merged through integer ranges."""
    ranges: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    given: dict[tuple[int, int], Cidr] = {}  # (version, first address): a network given, reused as it is
    for net in networks:
        version, value, prefixlen = net
        ranges[version].append((value, value | _HOSTMASK[version][prefixlen]))
        given[version, value] = net
    collapsed: list[Cidr] = []
    for version in (4, 6):
        bits = _BITS[version]
        for first, last in merge_ranges(ranges[version]):
            size = last - first + 1
            if not (size & (size - 1) or first & (size - 1)):  # one aligned block: the common case
                prefixlen = bits + 1 - size.bit_length()
                net = given[version, first]
                collapsed.append(net if net.prefixlen == prefixlen else Cidr(version, first, prefixlen))
            else:
                collapsed += range_cidrs(version, first, last)
    return tuple(collapsed)


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, overlapping or adjacent inclusive integer ranges joined."""
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for first, last in ranges:
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


def range_cidrs(version: int, first: int, last: int) -> Iterator[Cidr]:
    """The fewest CIDR blocks covering exactly the inclusive range first..last."""
    bits = _BITS[version]
    while first <= last:
        # the largest block aligned at `first` that does not pass `last`
        size = (first & -first) if first else 1 << bits
        while size > last - first + 1:
            size >>= 1
        yield Cidr(version, first, bits - size.bit_length() + 1)
        first += size


def network_of(text: str) -> Cidr:
    """A network as printed by a tool (read-back): like parse_network, host bits cleared."""
    address, _, length = text.partition("/")
    version, value = parse_address(address)
    prefixlen = int(length) if length else _BITS[version]
    return Cidr(version, value & ~((1 << (_BITS[version] - prefixlen)) - 1), prefixlen)
