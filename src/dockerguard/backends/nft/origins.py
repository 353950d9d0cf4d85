"""Which piece of a Ruleset each rule of our nft tables renders (`Backend.origins`). Pure.

The renderer's own piece functions are run again and their rules named the way read-back names them,
so the keys are exactly those of `InstalledState.rules`.
"""

from __future__ import annotations

from ...model import AllowRule, Allows, Denies, Family, Role, Ruleset
from ..base import RuleOrigin, guess_kind
from ..common import NFT_CHAIN, NFT_SET_PREFIX
from . import render
from .readback import state_of

_ROLE_OF_CHAIN = {name: role for role, name in NFT_CHAIN.items()}
_BANS_CHAINS = {"bans_forward": Role.FORWARD, "bans_input": Role.INPUT}
_KIND = {"Established": "established", "NeighbourDiscovery": "other", "IcmpEcho": "other", "LogDrops": "log",
         "Default": "default", "ToProxy": "dispatch", "ToHost": "dispatch", "Egress": "egress", "Bans": "ban"}


def chain_role(chain: str) -> tuple[Role | None, Family | None]:
    """Our chains are inet: no family. The hook chains (forward, input) and the bans table's chains dispatch
    for the role whose traffic enters there."""
    role = _ROLE_OF_CHAIN.get(chain) or _BANS_CHAINS.get(chain) or {"forward": Role.FORWARD,
                                                                     "input": Role.INPUT}.get(chain)
    return role, None


def origins(ruleset: Ruleset) -> dict[tuple[str, str], RuleOrigin]:
    found: dict[tuple[str, str], RuleOrigin] = {}
    for chain in ruleset.chains:
        for piece in chain.pieces:
            _, rules = render._PIECES[type(piece)](piece, chain)
            described = state_of([{"rule": rule} for rule in rules]).rules
            for rule, installed in zip(rules, described):
                key = (installed.chain, installed.description)
                if isinstance(piece, Denies):
                    index = next(i for i, deny in enumerate(piece.rules)
                                 if rule["comment"].startswith(f"deny ipv{deny.family.value} deny_v{deny.family.value}_"
                                                               f"{i + 1}"))
                    found[key] = RuleOrigin("deny", chain.role, piece.rules[index].family, denies=(index,))
                elif isinstance(piece, Allows):
                    found[key] = _allow_origin(piece, chain.role, rule["comment"])
                else:
                    found[key] = RuleOrigin(_KIND.get(type(piece).__name__, "other"), chain.role)
    return found


def _allow_origin(piece: Allows, role: Role, comment: str) -> RuleOrigin:
    """The rule named `comment` of an Allows piece: a set's accept rule, or a group's limit check. Allows
    sharing (ports, limits) with a factored group are matched by that group's rule, the rest of their family
    and protocol by the one (source . port) set rule."""
    _, matches = render._allow_sets(piece.rules, NFT_SET_PREFIX[role])
    for family, proto, name, _, group in matches:
        if comment != name and not comment.startswith(f"{name}: over "):
            continue
        factored = {(g.ports, g.limit, g.max_connections) for g in piece.factored(family, proto)[0]}
        wanted = None if group is None else (group.ports, group.limit, group.max_connections)
        members = tuple(index for index, allow in enumerate(piece.rules)
                        if allow.family is family and allow.proto == proto
                        and (_key(allow) == wanted if wanted is not None else _key(allow) not in factored))
        return RuleOrigin("allow" if comment == name else "limit", role, family, allows=members)
    return RuleOrigin(guess_kind(comment), role)


def _key(allow: AllowRule) -> tuple[object, ...]:
    return allow.ports, allow.limit, allow.max_connections
