#!/usr/bin/env python3
"""Time `dockerguard apply` against the baselines admins use today, in one run, in a throw-away netns.

    sudo python bench/apply_bench.py [--sizes 1000 5000] [--per-rule-max 1000]

For N allowed source addresses (one published port each, so N distinct (source, port) pairs) it measures:
- dockerguard apply through the Python API (compile + render + one transaction + read-back verification),
  for every backend usable here;
- raw `nft -f` of N plain rules, and of one set of N elements + 1 rule;
- `iptables-legacy-restore` / `iptables-nft-restore` of N rules;
- one `nft add rule` / `iptables` call per rule (the scripts dockerguard replaces), up to --per-rule-max.
Ratios are reported against the raw restore/`nft -f` of the same rules. Runs only inside its own namespace.
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dockerguard import Engine, parse_policy
from dockerguard.backends import DRIVERS, driver_class

CLONE_NEWNET = 0x40000000


def sources(count: int) -> list[str]:
    """Distinct documentation-range host addresses, spaced so that they cannot collapse into prefixes."""
    base = int(ipaddress.ip_address("2001:db8:100::"))
    return [str(ipaddress.ip_address(base + 2 * i + 1)) for i in range(count)]


def policy_text(addresses: list[str]) -> str:
    quoted = ", ".join(f'"{address}"' for address in addresses)
    return f'external_interfaces = ["eth0"]\n[[allow]]\nports = [8443]\nsources = [{quoted}]\n'


@contextmanager
def netns(name: str) -> Iterator[None]:
    """Create a namespace and move this thread into it; always return and delete it."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")
        yield
    finally:
        libc.setns(home, CLONE_NEWNET)
        os.close(home)
        os.close(target)
        subprocess.run(["ip", "netns", "del", name], check=False)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run(argv: list[str], text: str | None = None) -> None:
    subprocess.run(argv, input=text, text=True, check=True, capture_output=True)


def nft_rules_text(addresses: list[str]) -> str:
    rules = "\n".join(f"add rule inet raw c ip6 saddr {a} tcp dport 8443 accept" for a in addresses)
    return f"add table inet raw\ndelete table inet raw\nadd table inet raw\n" \
           f"add chain inet raw c {{ type filter hook forward priority -1; }}\n{rules}\n"


def nft_set_text(addresses: list[str]) -> str:
    return ("add table inet raw\ndelete table inet raw\nadd table inet raw\n"
            "add chain inet raw c { type filter hook forward priority -1; }\n"
            "add set inet raw s { type ipv6_addr . inet_service; flags interval; }\n"
            f"add element inet raw s {{ {', '.join(f'{a} . 8443' for a in addresses)} }}\n"
            "add rule inet raw c ip6 saddr . tcp dport @s accept\n")


def iptables_text(addresses: list[str]) -> str:
    rules = "\n".join(f"-A RAW -s {a} -p tcp --dport 8443 -j ACCEPT" for a in addresses)
    return f"*filter\n:RAW - [0:0]\n{rules}\nCOMMIT\n"


def bench_size(count: int, per_rule_max: int) -> dict[str, float]:
    addresses = sources(count)
    policy = parse_policy(policy_text(addresses))
    results: dict[str, float] = {}
    for backend in DRIVERS:
        if not driver_class(backend).probe().available:
            continue
        engine = Engine(backend)
        results[f"dockerguard apply ({backend})"] = timed(lambda engine=engine: engine.apply(policy))
        engine.remove()
    with tempfile.TemporaryDirectory() as tmp:
        rules_file, set_file = Path(tmp, "rules.nft"), Path(tmp, "set.nft")
        rules_file.write_text(nft_rules_text(addresses))
        set_file.write_text(nft_set_text(addresses))
        results["nft -f, N rules"] = timed(lambda: run(["nft", "-f", str(rules_file)]))
        results["nft -f, set of N + 1 rule"] = timed(lambda: run(["nft", "-f", str(set_file)]))
        run(["nft", "delete", "table", "inet", "raw"])
    for flavour in ("legacy", "nft"):
        restore = shutil.which(f"ip6tables-{flavour}-restore")
        if restore:
            text = iptables_text(addresses)
            results[f"ip6tables-{flavour}-restore, N rules"] = timed(lambda r=restore, t=text: run([r], t))
            run([f"ip6tables-{flavour}", "-F", "RAW"])
            run([f"ip6tables-{flavour}", "-X", "RAW"])
    if count <= per_rule_max:
        run(["nft", "add", "table", "inet", "raw"])
        run(["nft", "add chain inet raw c { type filter hook forward priority -1; }"])

        def nft_per_rule() -> None:
            for a in addresses:
                run(["nft", "add", "rule", "inet", "raw", "c", "ip6", "saddr", a, "tcp", "dport", "8443", "accept"])

        results["one `nft add rule` per rule"] = timed(nft_per_rule)
        run(["nft", "delete", "table", "inet", "raw"])
        for flavour in ("legacy", "nft"):
            binary = shutil.which(f"ip6tables-{flavour}")
            if not binary:
                continue
            run([binary, "-N", "RAW"])

            def iptables_per_rule(binary: str = binary) -> None:
                for a in addresses:
                    run([binary, "-A", "RAW", "-s", a, "-p", "tcp", "--dport", "8443", "-j", "ACCEPT"])

            results[f"one ip6tables-{flavour} call per rule"] = timed(iptables_per_rule)
            run([binary, "-F", "RAW"])
            run([binary, "-X", "RAW"])
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--per-rule-max", type=int, default=1000,
                        help="skip the one-call-per-rule baselines above this N (they take minutes)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (it creates a network namespace)", file=sys.stderr)
        return 2
    for count in args.sizes:
        with netns(f"dgbench-{os.getpid()}-{secrets.token_hex(2)}"):
            results = bench_size(count, args.per_rule_max)
        reference = results.get("nft -f, N rules")
        print(f"\nN = {count} allowed sources (one port each)")
        print(f"{'operation':45} {'seconds':>9} {'vs nft -f N rules':>18}")
        for name, seconds in results.items():
            ratio = f"{seconds / reference:.2f}x" if reference else "-"
            print(f"{name:45} {seconds:9.3f} {ratio:>18}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
