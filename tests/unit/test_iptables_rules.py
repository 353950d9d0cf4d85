"""The iptables rule model shared by the iptables-legacy and iptables-nft drivers (no root needed).

Also the golden files: every example policy rendered by every backend, compared byte for byte with
tests/unit/golden/<backend>/<example>.txt (regenerate with DOCKERGUARD_UPDATE_GOLDEN=1).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pytest

from dockerguard import compile_policy, load_policy, parse_policy
from dockerguard.backends.iptables import rules
from dockerguard.backends.iptables.driver import IptablesDriver
from dockerguard.backends.iptables.legacy import IptablesLegacyBackend
from dockerguard.backends.iptables.nft import IptablesNftBackend
from dockerguard.backends.iptables.rules import (
    BASELINE,
    FORWARD_JUMP,
    FilterTable,
    Layout,
    SavedRule,
    canonical,
    chain_rules,
    layout_of,
    parse_save,
    transition,
)
from dockerguard.model import Family

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))
GOLDEN = Path(__file__).resolve().parent / "golden"
V4, V6 = Family.IPV4, Family.IPV6
# The DOCKER-USER mechanics below are shown on the forward chain alone; the INPUT side (docker-proxy's
# path, [host]) has tests of its own and is part of the transition matrix.
CLASSIC = replace(compile_policy(load_policy(ROOT / "examples" / "classic.toml")), published=None)
JUMP_ETH0 = (rules.USER_CHAIN, 1, "-i eth0 -m comment --comment dockerguard -j DOCKERGUARD")


def ruleset(text: str):  # type: ignore[no-untyped-def]
    return compile_policy(parse_policy(text))


# -- what DOCKERGUARD holds -----------------------------------------------------------------------
def test_classic_ipv4_rules() -> None:
    assert chain_rules(CLASSIC.forward_chain, V4) == (
        '-m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "established,related" -j RETURN',
        '-p tcp -m conntrack --ctorigdstport 25 -m comment --comment "mail and web" -j RETURN',
        '-p tcp -m conntrack --ctorigdstport 80 -m comment --comment "mail and web" -j RETURN',
        '-p tcp -m conntrack --ctorigdstport 443 -m comment --comment "mail and web" -j RETURN',
        '-s 198.51.100.7/32 -p tcp -m conntrack --ctorigdstport 8443 '
        '-m comment --comment "admin console, one address only" -j RETURN',
        '-m comment --comment "default drop" -j DROP',
    )


def test_classic_ipv6_gets_only_the_any_sources() -> None:
    v6 = chain_rules(CLASSIC.forward_chain, V6)
    assert len(v6) == 5 and not any("-s " in spec for spec in v6)  # ::/0 is written as no -s at all
    assert not any("8443" in spec for spec in v6)  # the admin address is IPv4 only


def test_sources_and_port_ranges_split_by_family() -> None:
    specs = chain_rules(ruleset('[[allow]]\nports = ["8000-8100", 22]\nproto = "udp"\n'
                                'sources = ["203.0.113.0/24", "2001:db8:1::/48"]\ncomment = "x"\n').forward_chain, V6)
    assert specs[1:3] == ('-s 2001:db8:1::/48 -p udp -m conntrack --ctorigdstport 22 -m comment --comment x -j RETURN',
                          '-s 2001:db8:1::/48 -p udp -m conntrack --ctorigdstport 8000:8100 '
                          '-m comment --comment x -j RETURN')


@pytest.mark.parametrize(("family", "icmp"), [(V4, "icmp-port-unreachable"), (V6, "icmp6-port-unreachable")])
def test_reject_default_is_family_specific(family: Family, icmp: str) -> None:
    specs = chain_rules(ruleset('default = "reject"\n').forward_chain, family)
    assert specs[-2:] == ('-p tcp -m comment --comment "default reject tcp" -j REJECT --reject-with tcp-reset',
                          f'-m comment --comment "default reject" -j REJECT --reject-with {icmp}')


def test_log_rule_comes_right_before_the_default() -> None:
    specs = chain_rules(ruleset("log_dropped = true\n").forward_chain, V4)
    assert specs[-2] == ('-m limit --limit 5/min --limit-burst 10 -m comment --comment "log dropped" '
                         '-j LOG --log-prefix "dockerguard-drop: "')
    assert not any("LOG" in spec for spec in chain_rules(CLASSIC.forward_chain, V4))


def test_every_rule_and_jump_carries_a_comment() -> None:
    target = rules.target_layout(ruleset('log_dropped = true\ndefault = "reject"\n[host]\n'), V6)
    specs = [spec for _, specs in target.chains for spec in specs]
    specs += [spec for _, _, spec in target.managed if spec != FORWARD_JUMP]
    assert specs and all(" -m comment --comment " in f" {spec}" for spec in specs)


def test_missing_comment_names_the_protocol() -> None:
    udp = ruleset('[[allow]]\nports = [53]\nproto = "udp"\n')
    assert "--comment \"allow udp\"" in chain_rules(udp.forward_chain, V4)[1]


@pytest.mark.parametrize(("raw", "clean"), [
    ("Bob's laptop", "Bob_s laptop"),
    ('back\\slash and "quotes"', "back_slash and _quotes_"),
    ("line\nbreak\t-A FORWARD -j ACCEPT", "line_break_-A FORWARD -j ACCEPT"),  # no restore-line injection
    ("café", "café"),
    ("é" * 200, "é" * 127),  # 255 bytes at most, cut on a character boundary
])
def test_sanitize_comment(raw: str, clean: str) -> None:
    assert rules.sanitize_comment(raw) == clean


def test_host_rules_follow_the_nft_driver() -> None:
    host = ruleset('[host]\nicmp_echo = true\ndefault = "reject"\n[[host.allow]]\nports = [22]\n'
                   'sources = ["192.0.2.10"]\ncomment = "ssh"\n').host
    assert host is not None
    v4, v6 = chain_rules(host.chain, V4), chain_rules(host.chain, V6)
    assert v4[1] == '-p icmp -m icmp --icmp-type 8 -m comment --comment "icmp echo-request" -j RETURN'
    assert v4[2] == "-s 192.0.2.10/32 -p tcp -m tcp --dport 22 -m comment --comment ssh -j RETURN"
    assert [spec.split()[5] for spec in v6[1:5]] == ["133", "134", "135", "136"]  # neighbour discovery
    assert "icmp6-port-unreachable" in v6[-1] and "ipv6-icmp -m icmp6 --icmpv6-type 128" in v6[5]


def test_input_chains_are_jumped_to_from_input_per_interface() -> None:
    target = rules.target_layout(ruleset('external_interfaces = ["eth0", "eth1"]\n[host]\n'), V4)
    assert [name for name, _ in target.chains] == ["DOCKERGUARD", "DOCKERGUARD-HOST", "DOCKERGUARD-INPUT",
                                                   "DOCKERGUARD-PROXY"]
    assert [(chain, position) for chain, position, _ in target.managed] == [
        ("DOCKER-USER", 1), ("DOCKER-USER", 2), ("FORWARD", 1), ("INPUT", 1), ("INPUT", 2)]
    assert not any(chain == "INPUT" for chain, _, _ in rules.target_layout(CLASSIC, V4).managed)


def test_published_ports_go_to_the_proxy_chain_and_the_rest_to_host() -> None:
    policy = parse_policy('[[allow]]\nports = [8080]\nsources = ["198.51.100.9"]\n[host]\n')
    published = [("tcp", port) for port in (*range(9000, 9005), 8080, 8443, *range(20000, 20011))]
    target = rules.target_layout(compile_policy(policy, [*published, ("udp", 5353)]), V4)
    dispatch = dict(target.chains)["DOCKERGUARD-INPUT"]
    goto = "-g DOCKERGUARD-PROXY"
    assert dispatch == (
        f'-p tcp -m multiport --dports 8080,8443,9000:9004,20000:20010 -m comment --comment "published tcp ports" '
        f"{goto}",
        f'-p udp -m multiport --dports 5353 -m comment --comment "published udp ports" {goto}',
        '-m comment --comment "everything else" -g DOCKERGUARD-HOST')
    proxy = dict(target.chains)["DOCKERGUARD-PROXY"]
    assert "-s 198.51.100.9/32 -p tcp -m tcp --dport 8080 -m comment --comment \"allow tcp\" -j RETURN" in proxy
    assert proxy[-1] == '-m comment --comment "default drop" -j DROP'
    many = rules.target_layout(compile_policy(policy, [("tcp", port) for port in range(1000, 1040, 2)]), V4)
    assert [spec.count(",") for spec in dict(many.chains)["DOCKERGUARD-INPUT"][:2]] == [14, 4]  # 15 + 5 ports
    off = rules.target_layout(compile_policy(parse_policy("filter_proxy_path = false\n")), V4)
    assert [name for name, _ in off.chains] == ["DOCKERGUARD"]


# -- the canonical spelling -----------------------------------------------------------------------
@pytest.mark.parametrize(("spelling", "canonical_form"), [
    ("-s 198.51.100.7 -p 6 -m tcp -j RETURN", "-s 198.51.100.7/32 -p tcp -j RETURN"),
    ("--source 2001:DB8::7 -p icmpv6 -j DROP", "-s 2001:db8::7/128 -p ipv6-icmp -j DROP"),
    ("-p tcp -m tcp --dport 22 -j RETURN", "-p tcp -m tcp --dport 22 -j RETURN"),  # -m tcp with options stays
    ("-p udp -m udp ! --dport 53 -j RETURN", "-p udp -m udp ! --dport 53 -j RETURN"),
    ('-m comment --comment "it\\\'s \\"x\\"" -j RETURN', '-m comment --comment "it\\\'s \\"x\\"" -j RETURN'),
    ('-m comment --comment "dockerguard" -j X', "-m comment --comment dockerguard -j X"),
    ("-m comment --comment a,b -j X", '-m comment --comment "a,b" -j X'),  # as xtables_save_string writes
    ("-m conntrack   --ctstate RELATED,ESTABLISHED -j RETURN",
     "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"),
])
def test_canonical_folds_what_save_canonicalises(spelling: str, canonical_form: str) -> None:
    assert canonical(spelling) == canonical_form
    assert canonical(canonical_form) == canonical_form


def test_tokenize_follows_restore_quoting() -> None:
    assert rules.tokenize('-m comment --comment "a \\"b\\" c" -j X') == ["-m", "comment", "--comment", 'a "b" c',
                                                                       "-j", "X"]
    with pytest.raises(ValueError, match="unterminated"):
        rules.tokenize('--comment "open')


def test_rendered_rules_are_already_canonical() -> None:
    logged = ruleset('log_dropped = true\ndefault = "reject"\n')
    for family in Family:
        for spec in chain_rules(CLASSIC.forward_chain, family) + chain_rules(logged.forward_chain, family):
            assert canonical(spec) == spec


# -- reading iptables-save ------------------------------------------------------------------------
SAVE = """\
# Generated by iptables-save v1.8.9 on Thu Nov 26 06:20:06 2026
*nat
:PREROUTING ACCEPT [0:0]
:DOCKER - [0:0]
[5:300] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-USER - [0:0]
:DOCKERGUARD - [0:0]
[1:60] -A FORWARD -o br0 -j DOCKER
[9:540] -A FORWARD -j DOCKER-USER
[4:240] -A DOCKER-USER -i eth0 -m comment --comment dockerguard -j DOCKERGUARD
[7:420] -A DOCKER-USER -j RETURN
[3:180] -A DOCKERGUARD -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "established,related" -j RETURN
[1:60] -A DOCKERGUARD -m comment --comment "default drop" -j DROP
COMMIT
"""


def test_parse_save_reads_only_the_filter_table_with_counters() -> None:
    table = parse_save(SAVE)
    assert table.chains == ("INPUT", "FORWARD", "OUTPUT", "DOCKER", "DOCKER-USER", "DOCKERGUARD")
    assert table.chain("DOCKERGUARD")[1] == SavedRule("DOCKERGUARD", '-m comment --comment "default drop" -j DROP',
                                                      1, 60)
    assert all(rule.chain != "PREROUTING" for rule in table.rules)
    with pytest.raises(ValueError, match="unexpected"):
        parse_save("*filter\n-I FORWARD 1 -j X\nCOMMIT\n")


def test_layout_of_finds_the_managed_rules() -> None:
    layout = layout_of(parse_save(SAVE))
    assert layout.user_chain and layout.foreign_user_rules == 1
    assert layout.managed == (JUMP_ETH0, ("FORWARD", 2, FORWARD_JUMP))
    assert layout.chains[0][0] == "DOCKERGUARD" and len(layout.chains[0][1]) == 2
    assert layout.installed and not BASELINE.installed


def test_installed_state_reports_counters_and_problems() -> None:
    state = rules.installed_state("iptables-nft", {V4: parse_save(SAVE), V6: parse_save("")})
    assert state is not None
    assert "ipv4 FORWARD rule 2: -j DOCKER-USER" in state.hooks  # not first: differs from expected
    assert "ipv6 chains: none" in state.hooks
    assert [(rule.packets, rule.bytes) for rule in state.rules] == [(3, 180), (1, 60)]
    assert rules.installed_state("iptables-nft", {V4: parse_save(""), V6: parse_save("")}) is None


# -- transitions ----------------------------------------------------------------------------------
def layout(*managed: tuple[str, int, str], user: bool = True, chains: dict[str, tuple[str, ...]] | None = None,
           foreign: int = 1) -> Layout:
    return Layout(user, tuple(sorted(managed)), tuple(sorted((chains or {}).items())), foreign)


TARGET = rules.target_layout(CLASSIC, V4)
BODY = [f"-A DOCKERGUARD {spec}" for spec in TARGET.chains[0][1]]


def test_first_apply_on_a_docker_host() -> None:
    assert transition(BASELINE, TARGET) == [
        ":DOCKERGUARD - [0:0]", *BODY, "-I DOCKER-USER 1 -i eth0 -m comment --comment dockerguard -j DOCKERGUARD"]


def test_never_declares_an_existing_docker_user() -> None:
    # `:DOCKER-USER` in --noflush input flushes it: Docker's RETURN and the admin's rules would go.
    lines = transition(layout(("FORWARD", 1, FORWARD_JUMP)), TARGET)
    assert ":DOCKER-USER - [0:0]" not in lines


def test_creates_docker_user_and_the_forward_jump_when_docker_has_not() -> None:
    lines = transition(layout(user=False, foreign=0), TARGET)
    assert lines[:2] == [":DOCKER-USER - [0:0]", ":DOCKERGUARD - [0:0]"]
    assert lines[-2:] == ["-I DOCKER-USER 1 -i eth0 -m comment --comment dockerguard -j DOCKERGUARD",
                          "-I FORWARD 1 -j DOCKER-USER"]


def test_moves_the_forward_jump_first_moby_48560() -> None:
    lines = transition(layout(("FORWARD", 3, FORWARD_JUMP), JUMP_ETH0, chains=dict(TARGET.chains)), TARGET)
    assert lines == [":DOCKERGUARD - [0:0]", "-D FORWARD -j DOCKER-USER", *BODY, "-I FORWARD 1 -j DOCKER-USER"]


def test_duplicate_forward_jumps_become_one() -> None:
    lines = transition(layout(("FORWARD", 1, FORWARD_JUMP), ("FORWARD", 4, FORWARD_JUMP), JUMP_ETH0), TARGET)
    assert lines.count("-D FORWARD -j DOCKER-USER") == 2 and lines.count("-I FORWARD 1 -j DOCKER-USER") == 1


def test_in_place_jumps_are_left_alone() -> None:
    lines = transition(layout(("FORWARD", 1, FORWARD_JUMP), JUMP_ETH0, chains={"DOCKERGUARD": ("-j DROP",)}), TARGET)
    assert lines == [":DOCKERGUARD - [0:0]", *BODY]


def test_changed_interfaces_replace_the_jumps() -> None:
    target = rules.target_layout(replace(ruleset('external_interfaces = ["eth1", "wan0"]\n'), published=None), V4)
    lines = transition(layout(("FORWARD", 1, FORWARD_JUMP), JUMP_ETH0, chains=dict(TARGET.chains)), target)
    assert "-D DOCKER-USER -i eth0 -m comment --comment dockerguard -j DOCKERGUARD" in lines
    assert lines[-2:] == ["-I DOCKER-USER 1 -i eth1 -m comment --comment dockerguard -j DOCKERGUARD",
                          "-I DOCKER-USER 2 -i wan0 -m comment --comment dockerguard -j DOCKERGUARD"]


def test_remove_deletes_only_ours() -> None:
    current = layout(("FORWARD", 1, FORWARD_JUMP), JUMP_ETH0, chains=dict(TARGET.chains))
    assert transition(current, rules.removal_target(current)) == [
        "-D DOCKER-USER -i eth0 -m comment --comment dockerguard -j DOCKERGUARD", "-F DOCKERGUARD", "-X DOCKERGUARD"]


def test_restore_deletes_a_docker_user_we_created_unless_docker_uses_it_now() -> None:
    before = layout(user=False, foreign=0)
    after_apply = layout(("FORWARD", 1, FORWARD_JUMP), JUMP_ETH0, chains=dict(TARGET.chains), foreign=0)
    lines = transition(after_apply, rules.restore_target(after_apply, before))
    assert lines[-1] == "-X DOCKER-USER" and "-D FORWARD -j DOCKER-USER" in lines
    docker_started = layout(("FORWARD", 1, FORWARD_JUMP), JUMP_ETH0, chains=dict(TARGET.chains), foreign=1)
    lines = transition(docker_started, rules.restore_target(docker_started, before))
    assert "-X DOCKER-USER" not in lines and "-D FORWARD -j DOCKER-USER" not in lines


def test_inconsistent_targets_are_refused() -> None:
    with pytest.raises(ValueError, match="does not have"):
        transition(BASELINE, layout(JUMP_ETH0))
    with pytest.raises(ValueError, match="DOCKER-USER"):
        transition(layout(foreign=2), layout(user=False))


def test_layout_json_round_trip() -> None:
    assert Layout.from_json(TARGET.to_json()) == TARGET


# A tiny model of `iptables-restore --noflush` over a FilterTable, to check that each transition
# really lands on its target, and that read-back then equals expected() (the second apply is a no-op).
def simulate(table: FilterTable, lines: Iterable[str]) -> FilterTable:
    chains = {name: [rule.spec for rule in table.chain(name)] for name in table.chains}
    for builtin in ("INPUT", "FORWARD", "OUTPUT"):  # a table not instantiated yet has them all the same
        chains.setdefault(builtin, [])
    for line in lines:
        if line.startswith(":"):
            chains[line[1:].split()[0]] = []  # creates, or flushes an existing user chain
            continue
        command, chain, rest = [*line.split(None, 2), ""][:3]
        if command == "-A":
            chains[chain].append(canonical(rest))
        elif command == "-I":
            position, spec = rest.split(None, 1)
            assert int(position) <= len(chains[chain]) + 1, line
            chains[chain].insert(int(position) - 1, canonical(spec))
        elif command == "-D":
            chains[chain].remove(canonical(rest))  # ValueError, like restore failing on a missing rule
        elif command == "-F":
            chains[chain] = []
        elif command == "-X":
            assert not chains[chain] and not any(re.search(rf"-[jg] {chain}$", spec)
                                                 for specs in chains.values() for spec in specs), line
            del chains[chain]
    return FilterTable(tuple(chains), tuple(SavedRule(name, spec) for name, specs in chains.items() for spec in specs))


def docker_table(*forward: str, user: tuple[str, ...] | None = ("-j RETURN",)) -> FilterTable:
    chains = {"INPUT": ["-i lo -j ACCEPT"], "FORWARD": list(forward), "OUTPUT": [], "DOCKER": ["-j RETURN"]}
    if user is not None:
        chains["DOCKER-USER"] = list(user)
    return FilterTable(tuple(chains), tuple(SavedRule(n, canonical(s)) for n, specs in chains.items() for s in specs))


STARTS = {
    "docker": docker_table("-j DOCKER-USER", "-o br0 -j DOCKER"),
    "jump-not-first": docker_table("-o br0 -j DOCKER", "-j DOCKER-USER", "-i br0 -j ACCEPT"),
    "two-jumps": docker_table("-j DOCKER-USER", "-o br0 -j DOCKER", "-j DOCKER-USER"),
    "no-docker-yet": docker_table(user=None),
    "empty": FilterTable((), ()),
}
POLICIES = {
    "classic": CLASSIC,
    "proxy": compile_policy(parse_policy('[[allow]]\nports = [8080]\n'), [("tcp", 8080), ("udp", 53)]),
    "two-ifaces-host": ruleset('external_interfaces = ["eth0", "eth1"]\ndefault = "reject"\n[host]\n'),
}


@pytest.mark.parametrize("start", list(STARTS))
@pytest.mark.parametrize("policy", list(POLICIES))
def test_transitions_land_on_their_target(start: str, policy: str) -> None:
    table, target_rules = STARTS[start], POLICIES[policy]
    for family in Family:
        target = rules.target_layout(target_rules, family)
        applied = simulate(table, transition(layout_of(table), target))
        assert layout_of(applied).key == target.key
        assert rules.installed_state("x", {family: applied}) == rules.state("x", {family: target})
        # Docker's own rules are untouched (the FORWARD jump may only have moved to the top).
        for name in ("INPUT", "OUTPUT", "DOCKER", "FORWARD"):
            others = [r.spec for r in table.chain(name) if r.spec != FORWARD_JUMP]
            assert [r.spec for r in applied.chain(name) if r.spec != FORWARD_JUMP and "dockerguard" not in r.spec] \
                == others
        # Removing, then restoring the snapshot taken before, gives the start back exactly.
        removed = simulate(applied, transition(layout_of(applied), rules.removal_target(layout_of(applied))))
        assert not layout_of(removed).installed
        restored = simulate(applied, transition(layout_of(applied),
                                                rules.restore_target(layout_of(applied), layout_of(table))))
        assert restored.rules == table.rules or start in ("jump-not-first", "two-jumps", "empty")
        assert layout_of(restored).key == layout_of(table).key


# -- drivers' render (pure with live=False) -------------------------------------------------------
@pytest.mark.parametrize("cls", [IptablesNftBackend, IptablesLegacyBackend])
def test_render_is_one_restore_text_per_family(cls: type[IptablesDriver]) -> None:
    rendered = cls(live=False).render(CLASSIC)
    assert rendered.backend == cls.name
    assert rendered.text == rendered.payload.texts[V4] + rendered.payload.texts[V6]
    assert rendered.payload.texts[V4].startswith("# ipv4\n# assumed live state")
    assert rendered.payload.texts[V6].startswith("# ipv6\n")
    assert rendered.text.count("*filter") == 2 and rendered.text.count("COMMIT") == 2
    assert cls(live=False).expected(CLASSIC) == rules.expected_state(cls.name, CLASSIC)


def test_both_flavours_send_the_same_transaction() -> None:
    assert IptablesNftBackend(live=False).render(CLASSIC).text == IptablesLegacyBackend(live=False).render(CLASSIC).text


def test_a_large_group_on_one_port_is_one_ipset_rule_not_a_rule_per_source() -> None:
    """1,000 sources on a single port: with ipsets, one `-m set` rule (a rule per source would be walked
    linearly by every new connection)."""
    sources = ", ".join(f'"198.51.100.{i}"' if i < 256 else f'"2001:db8:7::{i:x}"' for i in range(1, 256, 2))
    specs = chain_rules(ruleset(f"[[allow]]\nports = [8080]\nsources = [{sources}]\n").forward_chain, V4, True)
    allows = [spec for spec in specs if "8080" in spec]
    assert len(allows) == 1 and "--match-set" in allows[0], allows
