#!/usr/bin/env python3
"""A 100,000-CIDR blocklist (`[[deny]]` with `sources_file`) applied with `dockerguard apply`, as a process,
against the floor: the same semantics hand-written as one kernel transaction. Root; throw-away namespaces.

Semantics: a published port open to everyone (8080/tcp), except the sources of a netset file (IPv4 and IPv6
CIDRs of mixed lengths, never adjacent, so none merge), which are dropped first; established traffic
passes. Floors: one `nft -f` (an interval set per family, a drop rule per family before the allow); for the
iptables flavours `ipset restore` (hash:net per family) + one `*-restore --noflush` per family.
"""

from __future__ import annotations

import argparse
import ipaddress
import tempfile
from pathlib import Path

import benchlib
from benchlib import check, run

FLAVOUR = {"iptables-nft": "nft", "iptables-legacy": "legacy"}


def blocklist(count: int) -> tuple[list[str], list[str]]:
    """`count` CIDRs, half IPv4 (/32 and /28 alternating, every other block skipped so none merge), half
    IPv6 (/64s of 2001:db8::/32). IPv4 beyond the documentation ranges uses 10.0.0.0/8: never a packet."""
    v4: list[str] = []
    base = int(ipaddress.IPv4Address("10.0.0.0"))
    for i in range(count - count // 2):
        start = base + 32 * i
        v4.append(f"{ipaddress.IPv4Address(start)}/28" if i % 2 else str(ipaddress.IPv4Address(start + 1)))
    v6_base = int(ipaddress.IPv6Address("2001:db8::"))
    v6 = [f"{ipaddress.IPv6Address(v6_base + ((2 * i + 1) << 64))}/64" for i in range(count // 2)]
    return v4, v6


def policy_toml(netset: str) -> str:
    return ('external_interfaces = ["eth0"]\ndefault = "drop"\ndocker_socket = "/nonexistent/docker.sock"\n'
            "filter_proxy_path = false\nbans = false\n\n"
            f'[[deny]]\nsources_file = "{netset}"\ncomment = "blocklist"\n\n'
            '[[allow]]\nports = [8080]\nproto = "tcp"\nsources = ["any"]\n')


def nft_floor(v4: list[str], v6: list[str]) -> str:
    def chunk(items: list[str]) -> str:
        return ",\n\t\t\t".join(", ".join(items[i:i + 16]) for i in range(0, len(items), 16))

    return (f"table inet dgfloor {{\n\tset bl4 {{ type ipv4_addr; flags interval; elements = {{ {chunk(v4)} }} }}\n"
            f"\tset bl6 {{ type ipv6_addr; flags interval; elements = {{ {chunk(v6)} }} }}\n"
            "\tchain forward {\n\t\ttype filter hook forward priority -1; policy accept;\n"
            '\t\tiifname "eth0" jump judge\n\t}\n'
            "\tchain judge {\n\t\tip saddr @bl4 drop\n\t\tip6 saddr @bl6 drop\n"
            "\t\tct state established,related accept\n"
            "\t\tmeta l4proto tcp ct original proto-dst 8080 accept\n\t\tdrop\n\t}\n}\n")


def ipset_floor(v4: list[str], v6: list[str]) -> str:
    lines = []
    for family, kind, items in ((4, "inet", v4), (6, "inet6", v6)):
        size = max(1024, 1 << (len(items) - 1).bit_length())
        lines.append(f"create dgbl{family} hash:net family {kind} hashsize {size} maxelem {max(65536, len(items))}")
        lines += [f"add dgbl{family} {item}" for item in items]
    return "\n".join(lines) + "\n"


def iptables_floor(family: int) -> str:
    return "\n".join(["*filter", ":DGFLOOR - [0:0]", "-I DOCKER-USER 1 -i eth0 -j DGFLOOR",
                      f"-A DGFLOOR -m set --match-set dgbl{family} src -j DROP",
                      "-A DGFLOOR -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                      "-A DGFLOOR -p tcp -m conntrack --ctorigdstport 8080 -j RETURN",
                      "-A DGFLOOR -j DROP", "COMMIT", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=benchlib.positive_int, default=100_000, help="CIDRs in the list")
    parser.add_argument("--backends", nargs="+", default=["nft", "iptables-nft", "iptables-legacy"])
    parser.add_argument("--repeat", type=benchlib.positive_int, default=3)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--quick", action="store_true", help="1,000 CIDRs, one run: a smoke run (CI)")
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeat = 1000, 1
    namespaces = benchlib.start(f"blocklist of {args.size:,} CIDRs")
    usable, notes = benchlib.usable_backends(namespaces, args.backends)
    v4, v6 = blocklist(args.size)
    tmp = Path(tempfile.mkdtemp(prefix="dgbench-blocklist-"))
    netset = tmp / "blocklist.netset"
    netset.write_text("# benchmark blocklist\n" + "\n".join([*v4, *v6]) + "\n")
    policy = tmp / "policy.toml"
    policy.write_text(policy_toml(str(netset)))
    rows = []
    for backend in usable:
        applies, noops, floors = [], [], []
        for attempt in range(args.repeat):
            benchlib.progress(f"{backend} run {attempt + 1}")
            with namespaces.scoped() as netns:
                if backend != "nft":
                    benchlib.load_docker_minimal(netns, FLAVOUR[backend])
                env = {"DOCKERGUARD_STATE_DIR": tempfile.mkdtemp(prefix="state-", dir=tmp)}
                argv = [*benchlib.dockerguard_cli(), "apply", "-c", str(policy), "--backend", backend, "--no-guard"]
                for into in (applies, noops):  # the first apply, then the same again: a no-op
                    into.append(check(run(argv, netns=netns, timeout=args.timeout, env=env), "apply").seconds)
            with namespaces.scoped() as netns:
                if backend == "nft":
                    floors.append(check(run(["nft", "-f", "-"], netns=netns, input_text=nft_floor(v4, v6),
                                            timeout=args.timeout), "nft -f").seconds)
                    continue
                benchlib.load_docker_minimal(netns, FLAVOUR[backend])
                total = check(run(["ipset", "restore"], netns=netns, input_text=ipset_floor(v4, v6),
                                  timeout=args.timeout), "ipset restore").seconds
                for family in (4, 6):
                    tool = benchlib.iptables_tool(FLAVOUR[backend], family, "-restore")
                    total += check(run([tool, "-w", "5", "--noflush"], netns=netns, input_text=iptables_floor(family),
                                       timeout=args.timeout), tool).seconds
                floors.append(total)
        apply, noop, floor = benchlib.median(applies), benchlib.median(noops), benchlib.median(floors)
        rows.append([backend, f"{args.size:,}", benchlib.seconds(apply), benchlib.seconds(floor),
                     "`nft -f`" if backend == "nft" else "ipset restore + *-restore", benchlib.ratio(apply, floor),
                     benchlib.seconds(noop)])
    facts = benchlib.machine_facts(namespaces.create())
    print(f"## A {args.size:,}-CIDR blocklist (bench/blocklist.py)\n\nCommand: `{benchlib.command_line()}`\n")
    print(benchlib.facts_table(facts))
    print(f"\n`[[deny]]` with `sources_file` ({len(v4):,} IPv4 /32 and /28, {len(v6):,} IPv6 /64), one allow "
          f"for 8080/tcp from anyone. Median of {args.repeat} run(s), each in a fresh namespace.\n")
    print(benchlib.table(["backend", "CIDRs", "dockerguard apply (s)", "floor (s)", "floor is", "apply / floor",
                          "no-op re-apply (s)"], rows))
    for note in notes:
        print(f"\n- {note}")


if __name__ == "__main__":
    main()
