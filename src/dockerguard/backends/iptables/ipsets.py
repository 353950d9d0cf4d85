"""ipsets for the iptables drivers: large source groups become one `hash:net` set each, matched with
`-m set --match-set NAME src`, so the rule count is O(port groups) and the match O(1). Pure text here;
the driver runs `ipset`.

A set's name carries a digest of its family and members (`dockerguard-<12 hex>`): changed content is a new
set, created before the iptables transaction that switches the rules to it, and the old set is destroyed
after. The switch is the rules' own atomic commit, so no packet ever sees new members with old rules
(`ipset swap` would mix them for a moment), and a set that exists already by that name is reused as is.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping

from ...model import Family
from ...net import Network

PREFIX = "dockerguard-"
# The ban sets other tools write to (fail2ban, crowdsec, `dockerguard ban`): created once, never replaced
# by an apply or a rollback, timeouts per entry.
BAN_SETS = {Family.IPV4: f"{PREFIX}ban4", Family.IPV6: f"{PREFIX}ban6"}
MIN_MAXELEM = 65536  # ipset's default; "Hash is full" beyond it (crowdsec-firewall-bouncer #260)
_FAMILY = {Family.IPV4: "inet", Family.IPV6: "inet6"}

Members = tuple[str, ...]


def set_name(family: Family, sources: tuple[Network, ...]) -> str:
    text = f"{family.value}|" + "".join(f"{net} " for net in _texts(sources))
    return f"{PREFIX}{hashlib.sha256(text.encode()).hexdigest()[:12]}"


# One rendering names and fills a group's set several times (rules, expected state, restore text, both
# families): the text of 100,000 networks is made once (a cache hit costs a hash of the tuple).
@functools.lru_cache(maxsize=16)
def _texts(sources: tuple[Network, ...]) -> tuple[str, ...]:
    return tuple(map(str, sources))


def restore_text(create: Mapping[str, tuple[Family, Members]]) -> str:
    """`ipset restore` input creating and filling the sets `create`, in one call."""
    lines = []
    for name, (family, members) in sorted(create.items()):
        maxelem = max(MIN_MAXELEM, 1 << (2 * len(members) - 1).bit_length())
        lines.append(f"create {name} hash:net family {_FAMILY[family]} maxelem {maxelem}")
        lines += [f"add {name} {member}" for member in members]
    return "\n".join(lines) + "\n"


def destroy_text(names: Iterable[str]) -> str:
    return "".join(f"destroy {name}\n" for name in sorted(names))


def ban_restore_text(existing: Iterable[str]) -> str:
    """`ipset restore` input creating the ban sets that do not exist yet (`timeout 0`: entries may
    carry their own timeout)."""
    return "".join(f"create {name} hash:net family {_FAMILY[family]} timeout 0 maxelem {MIN_MAXELEM * 16}\n"
                   for family, name in BAN_SETS.items() if name not in existing)


def parse_save(text: str) -> dict[str, tuple[Family, Members]]:
    """Our content sets (name prefix; the ban sets are not content) in `ipset save` output:
    name -> (family, sorted members). ipset prints host entries without a prefix length; our members
    always have one. One regex scan per set, not a split per line: 100,000 members cost 0.5 s that way."""
    sets: dict[str, tuple[Family, Members]] = {}
    for name, options in _CREATE.findall(text):
        if name in BAN_SETS.values():
            continue
        family = Family.IPV6 if "inet6" in options.split() else Family.IPV4
        suffix = "/32" if family is Family.IPV4 else "/128"
        found = re.findall(rf"^add {re.escape(name)} (\S+)", text, re.M)
        sets[name] = (family, tuple(sorted(member if "/" in member else member + suffix for member in found)))
    return sets


_CREATE = re.compile(rf"^create ({re.escape(PREFIX)}\S+) (.*)$", re.M)


def members(sources: tuple[Network, ...]) -> Members:
    return tuple(sorted(_texts(sources)))
