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
import secrets
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


def restore_text(create: Mapping[str, tuple[Family, Members]],
                 replace: Mapping[str, tuple[Family, Members]] | None = None) -> str:
    """`ipset restore` input creating and filling the sets `create`, in one call; each set of `replace`
    (it exists with other members, or declared otherwise: tampered with) is filled anew under a new
    name and swapped in, atomically per set, while the rules go on matching it by its name."""
    lines = []
    for name, (family, members) in sorted(create.items()):
        lines += _create(name, family, members)
    for name, (family, members) in sorted((replace or {}).items()):
        fresh = f"{PREFIX}n{secrets.token_hex(6)}"  # never taken; a leftover is ours, destroyed by the next apply
        lines += [*_create(fresh, family, members), f"swap {fresh} {name}", f"destroy {fresh}"]
    return "\n".join(lines) + "\n"


def _create(name: str, family: Family, members: Members) -> list[str]:
    maxelem = max(MIN_MAXELEM, 1 << (2 * len(members) - 1).bit_length())
    return [f"create {name} {spec(family)} maxelem {maxelem}", *(f"add {name} {member}" for member in members)]


def destroy_text(names: Iterable[str]) -> str:
    return "".join(f"destroy {name}\n" for name in sorted(names))


def ban_restore_text(existing: Iterable[str]) -> str:
    """`ipset restore` input creating the ban sets that do not exist yet (`timeout 0`: entries may
    carry their own timeout)."""
    return "".join(f"create {name} hash:net family {_FAMILY[family]} timeout 0 maxelem {MIN_MAXELEM * 16}\n"
                   for family, name in BAN_SETS.items() if name not in existing)


def parse_save(text: str) -> dict[str, tuple[Family, Members, str]]:
    """Our content sets (name prefix; the ban sets are not content) in `ipset save` output:
    name -> (family, sorted members, declaration). ipset prints host entries without a prefix length; our
    members always have one. The declaration (`spec`) is what else decides packets: the set's type and
    family, a default timeout, and members flagged `nomatch` (they exclude) or with a timeout (they expire).
    One regex scan per set, not a split per line: 100,000 members cost 0.5 s that way."""
    sets: dict[str, tuple[Family, Members, str]] = {}
    for name, options in _CREATE.findall(text):
        if name in BAN_SETS.values():
            continue
        words = options.split()
        family = Family.IPV6 if "inet6" in words else Family.IPV4
        suffix = "/32" if family is Family.IPV4 else "/128"
        found = re.findall(rf"^add {re.escape(name)} (\S+)(.*)$", text, re.M)
        members = [member if "/" in member else member + suffix for member, _ in found]
        flagged = sorted(f"{member} {_deciding(rest.split())}" for member, (_, rest) in zip(members, found)
                         if _deciding(rest.split()))
        declared = " ".join([words[0] if words else "?", "family", _FAMILY[family], *(
            ["timeout"] if "timeout" in words else [])])
        sets[name] = (family, tuple(sorted(members)), "; ".join([declared, *flagged]))
    return sets


def spec(family: Family) -> str:
    """The declaration `parse_save` reads back from a set `restore_text` created."""
    return f"hash:net family {_FAMILY[family]}"


def _deciding(options: list[str]) -> str:
    """A member's options that decide packets: `nomatch`, and whether it expires (not when: that counts down)."""
    return " ".join(word for word in options if word in ("nomatch", "timeout"))


_CREATE = re.compile(rf"^create ({re.escape(PREFIX)}\S+) (.*)$", re.M)


def members(sources: tuple[Network, ...]) -> Members:
    return tuple(sorted(_texts(sources)))
