#!/usr/bin/env python3
"""`dockerguard apply` at scale, as a process, against the kernel's floor, in throw-away namespaces.

    sudo python3 bench/apply.py [--sizes 100 1000 10000 100000] [--ports 2] [--family both]
                                [--repeat 3] [--per-rule-max 1000] [--quick]

For N allowed sources (half IPv4, half IPv6 by default) and P published ports, for every backend usable
here, each in a fresh network namespace (iptables backends: with Docker's minimal filter table,
DOCKER-USER and FORWARD's jump to it):

- `dockerguard apply -c POLICY --backend B` as a process (the CLI as users run it), first apply;
- the floor: the best hand-written load of the same semantics as processes. nft: one `nft -f` file with
  an interval set of sources per family, one port set and the rules in a forward base chain. iptables
  flavours: `ipset restore` (hash:net per family) plus one `*-restore --noflush` per family with
  `-m set --match-set ... src -m conntrack --ctorigdstport P` rules, and the variant without ipset (one
  `-s SOURCE -g PORTS` rule per source into a chain of P `--ctorigdstport` rules); the faster is the floor;
- per-rule calls (one `nft add rule` / `iptables -A` process per rule, as admin scripts do) up to
  --per-rule-max calls, extrapolated above;
- the no-op re-apply of the same policy, and reading our objects back with the tools
  (`nft -j list table inet dockerguard`; `iptables-save` and `ip6tables-save` of the flavour, plus
  `ipset save` when ipsets are in use);
- one source added to the policy of the largest size up to 10,000 (--add-one-at): re-apply time, against
  the floor's one incremental command (`nft add element`, `ipset add`, `iptables -I`).

Semantics measured: new connections entering eth0 from the sources to the published ports (conntrack's
original destination port) pass, other new connections are dropped, established traffic passes. The
policy says `filter_proxy_path = false` (docker-proxy's INPUT path, on by default, would double the
iptables rules and has no counterpart in the floors) unless --proxy-path. Prints Markdown on stdout,
progress on stderr; medians of --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import benchlib
from benchlib import Namespaces, Run, check, median, ratio, run, seconds

BACKENDS = ("nft", "iptables-nft", "iptables-legacy")
FLAVOUR = {"iptables-nft": "nft", "iptables-legacy": "legacy"}
# Quick: the smallest size gets the added source, so the slowest backend's 1,000-source apply runs once.
QUICK = {"sizes": [100, 1000], "repeat": 1, "per_rule_max": 100, "timeout": 120.0, "add_one_at": 100}
_STEP = re.compile(r"^\s+(?P<action>[^:]+): .*\((?P<ms>[\d.]+) ms\)\s*$")


@dataclass
class Case:
    """One size: its sources, ports and files (written once, never timed)."""

    size: int
    v4: list[str]
    v6: list[str]
    ports: list[int]
    dir: Path
    policy: Path
    plus_one: Path | None  # the policy with one source more (only at the --add-one-at size)
    extra: str  # that source


@dataclass
class Cell:
    """The runs of one measurement: median seconds of those that worked, and how many did not."""

    values: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "timeout", "exit 1"
    note: str = ""

    def add(self, result: Run, what: str) -> bool:
        if result.ok:
            self.values.append(result.seconds)
            return True
        self.failures.append("timeout" if result.timed_out else f"exit {result.returncode}")
        benchlib.progress(f"  {result.why(what)}")
        return False

    @property
    def median(self) -> float | None:
        return median(self.values)

    def text(self) -> str:
        if self.values:
            runs = len(self.values) + len(self.failures)
            failed = f" ({len(self.failures)} of {runs} runs failed)" if self.failures else ""
            return seconds(self.median) + self.note + failed
        if self.failures:
            reasons = ", ".join(sorted(set(self.failures)))
            runs = len(self.failures)
            return f"failed ({reasons})" if runs == 1 else f"failed in all {runs} runs ({reasons})"
        return "not run"


class Bench:
    def __init__(self, args: argparse.Namespace, namespaces: Namespaces, tmp: Path) -> None:
        self.args = args
        self.ns = namespaces
        self.tmp = tmp
        self.cli = benchlib.dockerguard_cli()
        self.cells: dict[tuple[str, int, str], Cell] = defaultdict(Cell)
        self.steps: dict[tuple[str, int, str], list[dict[str, float]]] = defaultdict(list)
        self.walls: dict[tuple[str, int, str], list[float]] = defaultdict(list)
        self.objects: dict[tuple[str, int], str] = {}
        self.readback_tools: dict[str, str] = {}
        self.stopped: dict[str, str] = {}  # backend -> why larger sizes are not run
        self.per_call: dict[str, tuple[float, int]] = {}  # backend -> (seconds per call, calls sampled)
        self.errors: dict[tuple[str, int, str], str] = {}  # the first error message of a failed measurement
        self.has_ipset = shutil.which("ipset") is not None
        self.notes: list[str] = []

    def cell(self, backend: str, size: int, metric: str) -> Cell:
        return self.cells[(backend, size, metric)]

    # -- files ---------------------------------------------------------------------------------------
    def case(self, size: int) -> Case:
        v4, v6 = benchlib.split_sources(size, self.args.family)
        published = benchlib.ports(self.args.ports)
        folder = self.tmp / f"n{size}"
        folder.mkdir()
        socket_path = str(folder / "no-docker.sock")
        policy = folder / "policy.toml"
        policy.write_text(benchlib.policy_toml([*v4, *v6], published, socket_path, self.args.proxy_path))
        extra = benchlib.extra_source(v4, v6)
        plus_one = None
        if size == self.args.add_one_at:
            plus_one = folder / "policy-plus-one.toml"
            plus_one.write_text(benchlib.policy_toml([*v4, *v6, extra], published, socket_path, self.args.proxy_path))
        case = Case(size, v4, v6, published, folder, policy, plus_one, extra)
        (folder / "floor.nft").write_text(nft_floor(case))
        (folder / "floor.ipset").write_text(ipset_floor(case))
        for family in (4, 6):
            (folder / f"floor-ipset.v{family}").write_text(iptables_floor(case, family, with_ipset=True))
            (folder / f"floor-goto.v{family}").write_text(iptables_floor(case, family, with_ipset=False))
        return case

    # -- dockerguard -----------------------------------------------------------------------------------
    def dockerguard(self, backend: str, case: Case, repeat: int) -> None:
        timeout = self.args.timeout
        with self.ns.scoped() as netns:
            if backend in FLAVOUR:
                benchlib.load_docker_minimal(netns, FLAVOUR[backend])
            env = {"DOCKERGUARD_STATE_DIR": str(Path(tempfile.mkdtemp(prefix="state-", dir=self.tmp)))}
            def argv(policy: Path) -> list[str]:
                return [*self.cli, "-v", "apply", "-c", str(policy), "--backend", backend]

            benchlib.progress(f"{backend} N={case.size} run {repeat + 1}: dockerguard apply")
            first = run(argv(case.policy), netns=netns, timeout=timeout, env=env)
            if not self.record(backend, case.size, "apply", first):
                if first.timed_out:
                    self.stopped[backend] = f"not run: apply timed out at N={case.size:,}"
                return
            benchlib.progress(f"{backend} N={case.size} run {repeat + 1}: no-op re-apply, read-back")
            noop = run(argv(case.policy), netns=netns, timeout=timeout, env=env)
            if noop.ok and "nothing changed" not in noop.stdout:
                benchlib.progress(f"  note: the re-apply did not say 'nothing changed': {noop.stdout.strip()}")
            self.record(backend, case.size, "noop", noop)
            self.read_back(backend, case.size, netns)
            if case.plus_one is not None:
                benchlib.progress(f"{backend} N={case.size} run {repeat + 1}: one source added")
                added = run(argv(case.plus_one), netns=netns, timeout=timeout, env=env)
                self.record(backend, case.size, "add_one", added)

    def record(self, backend: str, size: int, metric: str, result: Run) -> bool:
        if not self.cell(backend, size, metric).add(result, f"dockerguard {metric}"):
            lines = [line.strip() for line in result.stderr.splitlines() if line.startswith("error")]
            self.errors.setdefault((backend, size, metric), lines[-1] if lines else result.why("dockerguard"))
            return False
        steps: dict[str, float] = {}
        for line in result.stderr.splitlines():
            match = _STEP.match(line)
            if match:
                action = match.group("action").strip()
                steps[action] = steps.get(action, 0.0) + float(match.group("ms")) / 1000
        self.steps[(backend, size, metric)].append(steps)
        self.walls[(backend, size, metric)].append(result.seconds)
        return True

    def read_back(self, backend: str, size: int, netns: str) -> None:
        if backend == "nft":
            commands = [["nft", "-j", "list", "table", "inet", "dockerguard"]]
        else:
            commands = [[benchlib.iptables_tool(FLAVOUR[backend], family, "-save")] for family in (4, 6)]
            if self.has_ipset and run(["ipset", "list", "-n"], netns=netns).stdout.strip():
                commands.append(["ipset", "save"])  # dockerguard keeps sources in ipsets: they are read too
        self.readback_tools[backend] = " + ".join(f"`{' '.join(argv)}`" for argv in commands)
        total, outputs = 0.0, []
        for argv in commands:
            result = run(argv, netns=netns, timeout=self.args.timeout)
            if not self.cell(backend, size, "readback").add(result, argv[0]):
                return
            self.cell(backend, size, "readback").values.pop()  # the sum of the commands is the sample
            total += result.seconds
            outputs.append(result.stdout)
        self.cell(backend, size, "readback").values.append(total)
        self.objects[(backend, size)] = count_objects(backend, outputs)

    # -- the floor -----------------------------------------------------------------------------------
    def floor(self, backend: str, case: Case, repeat: int) -> None:
        benchlib.progress(f"{backend} N={case.size} run {repeat + 1}: floor")
        if backend == "nft":
            src_set = "src4" if case.v4 else "src6"
            self.floor_variant(backend, case, "nft", [(["nft", "-f", str(case.dir / "floor.nft")], None)],
                               ["nft", "add", "element", "inet", "dgfloor", src_set, f"{{ {case.extra} }}"])
            return
        flavour = FLAVOUR[backend]
        restores = [([benchlib.iptables_tool(flavour, family, "-restore"), "-w", "5", "--noflush"], family)
                    for family in (4, 6)]
        if self.has_ipset:
            set_name = "dgfloor4" if case.v4 else "dgfloor6"
            self.floor_variant(backend, case, "ipset",
                               [(["ipset", "restore"], "floor.ipset"),
                                *((argv, f"floor-ipset.v{family}") for argv, family in restores)],
                               ["ipset", "add", set_name, case.extra])
        family = 4 if case.v4 else 6
        self.floor_variant(backend, case, "goto",
                           [(argv, f"floor-goto.v{family}") for argv, family in restores],
                           [benchlib.iptables_tool(flavour, family), "-w", "5", "-I", "DGFLOOR", "2",
                            "-s", case.extra, "-g", "DGFLOOR-PORTS"])

    def floor_variant(self, backend: str, case: Case, variant: str, steps: Sequence[tuple[list[str], str | None]],
                      increment: list[str]) -> None:
        """Load the variant (its commands one after the other: the sum is the sample), then add one source."""
        cell = self.cell(backend, case.size, f"floor_{variant}")
        with self.ns.scoped() as netns:
            if backend in FLAVOUR:
                benchlib.load_docker_minimal(netns, FLAVOUR[backend])
            total = 0.0
            for argv, input_file in steps:
                text = None if input_file is None else (case.dir / input_file).read_text()
                result = run(argv, netns=netns, timeout=self.args.timeout, input_text=text)
                if not cell.add(result, argv[0]):
                    return
                cell.values.pop()
                total += result.seconds
            cell.values.append(total)
            if case.plus_one is not None:
                self.cell(backend, case.size, f"floor_inc_{variant}").add(
                    run(increment, netns=netns, timeout=60), increment[0])

    # -- one process per rule --------------------------------------------------------------------------
    def per_rule(self, backend: str, case: Case) -> None:
        calls = per_rule_calls(backend, case)
        cell = self.cell(backend, case.size, "per_rule")
        limit = self.args.per_rule_max
        known = self.per_call.get(backend)
        if len(calls) > limit and known is not None and known[1] >= limit:  # a full-size sample exists
            per_call, sampled = known
            cell.values.append(per_call * len(calls))
            cell.note = f" (extrapolated from {sampled:,} of {len(calls):,} calls)"
            return
        runs = self.args.repeat if len(calls) <= limit else 1
        for repeat in range(runs):
            benchlib.progress(f"{backend} N={case.size}: per-rule calls, run {repeat + 1} "
                              f"({min(len(calls), limit):,} of {len(calls):,} calls)")
            with self.ns.scoped() as netns:
                self.per_rule_setup(backend, netns, case)
                total, done = 0.0, 0
                for argv in calls[:limit]:
                    result = run(argv, netns=netns, timeout=30)
                    if not result.ok:
                        cell.add(result, argv[0])
                        return
                    total += result.seconds
                    done += 1
                    if total > self.args.timeout:  # bounded: extrapolate from what ran
                        break
            if done == len(calls):
                cell.values.append(total)
            else:
                cell.values.append(total / done * len(calls))
                cell.note = f" (extrapolated from {done:,} of {len(calls):,} calls)"
        if cell.median is not None and done >= self.per_call.get(backend, (0.0, 0))[1]:
            self.per_call[backend] = (cell.median / len(calls), done)  # larger sizes extrapolate from this

    def per_rule_setup(self, backend: str, netns: str, case: Case) -> None:
        if backend == "nft":
            text = ("table inet dgrule {\n\tchain forward {\n\t\ttype filter hook forward priority -1; policy accept;\n"
                    '\t\tiifname "eth0" jump judge\n\t}\n\tchain judge {\n\t\tct state established,related accept\n'
                    "\t}\n}\n")
            check(run(["nft", "-f", "-"], netns=netns, input_text=text), "nft -f")
            return
        benchlib.load_docker_minimal(netns, FLAVOUR[backend])
        text = ("*filter\n:DGFLOOR - [0:0]\n-I DOCKER-USER 1 -i eth0 -j DGFLOOR\n"
                "-A DGFLOOR -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\nCOMMIT\n")
        for family in (4, 6):
            restore = benchlib.iptables_tool(FLAVOUR[backend], family, "-restore")
            check(run([restore, "-w", "5", "--noflush"], netns=netns, input_text=text), restore)


# -- what the floors and admin scripts send ---------------------------------------------------------------
def _chunked(items: Sequence[str], per_line: int = 16) -> list[str]:
    return ["\t\t\t" + ", ".join(items[i:i + per_line]) + "," for i in range(0, len(items), per_line)]


def nft_floor(case: Case) -> str:
    """One table: an interval set of sources per family, one port set, a forward base chain jumping (for
    packets entering eth0) to a chain with established, one rule per family and drop."""
    lines = ["table inet dgfloor {"]
    for name, kind, items in (("src4", "ipv4_addr", case.v4), ("src6", "ipv6_addr", case.v6)):
        if items:
            lines += [f"\tset {name} {{", f"\t\ttype {kind}", "\t\tflags interval", "\t\telements = {",
                      *_chunked(items), "\t\t}", "\t}"]
    lines += ["\tset ports {", "\t\ttype inet_service", f"\t\telements = {{ {', '.join(map(str, case.ports))} }}",
              "\t}", "\tchain forward {", "\t\ttype filter hook forward priority -1; policy accept;",
              '\t\tiifname "eth0" jump judge', "\t}", "\tchain judge {", "\t\tct state established,related accept"]
    for name, l3, items in (("src4", "ip", case.v4), ("src6", "ip6", case.v6)):
        if items:
            lines.append(f"\t\tmeta l4proto tcp {l3} saddr @{name} ct original proto-dst @ports accept")
    lines += ["\t\tdrop", "\t}", "}", ""]
    return "\n".join(lines)


def ipset_floor(case: Case) -> str:
    """`ipset restore` input: one hash:net set per family, sized up front (no resizing while loading)."""
    lines = []
    for family, kind, items in ((4, "inet", case.v4), (6, "inet6", case.v6)):
        if items:
            size = max(1024, 1 << (len(items) - 1).bit_length())
            lines.append(f"create dgfloor{family} hash:net family {kind} hashsize {size} "
                         f"maxelem {max(65536, len(items))}")
            lines += [f"add dgfloor{family} {item}" for item in items]
    return "\n".join(lines) + "\n"


def iptables_floor(case: Case, family: int, with_ipset: bool) -> str:
    """One `*-restore --noflush` transaction: chain DGFLOOR, jumped to first from DOCKER-USER for eth0:
    established, the allows, drop. With ipset: one rule per port matching the family's set. Without: one
    `-s SOURCE -g DGFLOOR-PORTS` rule per source, and in DGFLOOR-PORTS one rule per port and a drop (a
    goto's RETURN goes back to DOCKER-USER; `-m multiport` cannot help: it sees the port after DNAT)."""
    items = case.v4 if family == 4 else case.v6
    lines = ["*filter", ":DGFLOOR - [0:0]"]
    if not with_ipset:
        lines.append(":DGFLOOR-PORTS - [0:0]")
    lines += ["-I DOCKER-USER 1 -i eth0 -j DGFLOOR",
              "-A DGFLOOR -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"]
    if with_ipset and items:
        lines += [f"-A DGFLOOR -p tcp -m set --match-set dgfloor{family} src -m conntrack --ctorigdstport {port} "
                  "-j RETURN" for port in case.ports]
    elif not with_ipset:
        lines += [f"-A DGFLOOR -s {item} -g DGFLOOR-PORTS" for item in items]
    lines.append("-A DGFLOOR -j DROP")
    if not with_ipset:
        lines += [f"-A DGFLOOR-PORTS -p tcp -m conntrack --ctorigdstport {port} -j RETURN" for port in case.ports]
        lines.append("-A DGFLOOR-PORTS -j DROP")
    return "\n".join([*lines, "COMMIT", ""])


def per_rule_calls(backend: str, case: Case) -> list[list[str]]:
    """The admin script: one process per rule, IPv4 and IPv6 interleaved (so a sample covers both)."""
    order = [source for pair in zip(case.v4, case.v6) for source in pair]
    order += case.v4[len(case.v6):] + case.v6[len(case.v4):]
    calls = []
    for source in order:
        v6 = ":" in source
        if backend == "nft":
            ports = str(case.ports[0]) if len(case.ports) == 1 else f"{{ {', '.join(map(str, case.ports))} }}"
            calls.append(["nft", "add", "rule", "inet", "dgrule", "judge", "meta", "l4proto", "tcp",
                          "ip6" if v6 else "ip", "saddr", source, "ct", "original", "proto-dst", ports, "accept"])
        else:
            tool = benchlib.iptables_tool(FLAVOUR[backend], 6 if v6 else 4)
            calls += [[tool, "-w", "5", "-A", "DGFLOOR", "-s", source, "-p", "tcp", "-m", "conntrack",
                       "--ctorigdstport", str(port), "-j", "RETURN"] for port in case.ports]
    return calls


def count_objects(backend: str, outputs: Sequence[str]) -> str:
    """What the read-back listed: nft set elements and rules; iptables rules (Docker's four not counted) and
    ipset members."""
    if backend == "nft":
        items = json.loads(outputs[0])["nftables"]
        elements = sum(len(item["set"].get("elem", [])) for item in items if "set" in item)
        rules = sum(1 for item in items if "rule" in item)
        return f"{elements:,} set elements, {rules:,} rules"
    docker = {line for line in benchlib.DOCKER_MINIMAL.splitlines() if line.startswith("-A ")}
    rules = sum(1 for text in outputs[:2] for line in text.splitlines()
                if line.startswith("-A ") and line.strip() not in docker)
    members = sum(1 for text in outputs[2:] for line in text.splitlines() if line.startswith("add "))
    return f"{rules:,} rules" + (f", {members:,} ipset members" if len(outputs) > 2 else "")


# -- the report ---------------------------------------------------------------------------------------
def report(bench: Bench, backends: Sequence[str], sizes: Sequence[int], facts: list[tuple[str, str]],
           interrupted: bool) -> str:
    args = bench.args
    cell = bench.cell
    family = {"both": "half IPv4, half IPv6", "4": "IPv4", "6": "IPv6"}[args.family]
    out = ["## `dockerguard apply` at scale (bench/apply.py)", "",
           f"Command: `{benchlib.command_line()}`" + (" (interrupted: partial results)" if interrupted else ""), "",
           benchlib.facts_table(facts), "",
           f"One `[[allow]]` entry: N sources ({family}), {len(benchlib.ports(args.ports))} published TCP ports "
           f"({', '.join(map(str, benchlib.ports(args.ports)))}), `filter_proxy_path = "
           f"{'true' if args.proxy_path else 'false'}`. Seconds of wall time per process (sum when a step takes "
           f"several), median of {args.repeat} run(s). Every run in a fresh network namespace.", ""]

    def floor(backend: str, size: int, prefix: str = "floor") -> tuple[float | None, str]:
        if backend == "nft":
            return cell(backend, size, f"{prefix}_nft").median, "`nft -f`" if prefix == "floor" else "`nft add element`"
        options = [(cell(backend, size, f"{prefix}_{variant}").median, label) for variant, label in (
            ("ipset", "ipset + restore" if prefix == "floor" else "`ipset add`"),
            ("goto", "restore, rule per source" if prefix == "floor" else "`iptables -I`"))]
        measured = [option for option in options if option[0] is not None]
        return min(measured) if measured else (None, "-")

    rows = []
    for backend in backends:
        for size in sizes:
            apply = cell(backend, size, "apply")
            apply_text = apply.text() if apply.values or apply.failures else bench.stopped.get(backend, "not run")
            floor_seconds, floor_label = floor(backend, size)
            rows.append([backend, f"{size:,}", apply_text, seconds(floor_seconds), floor_label,
                         ratio(apply.median, floor_seconds), cell(backend, size, "per_rule").text()])
    out += ["### First apply into an empty namespace", "",
            benchlib.table(["backend", "N sources", "dockerguard apply (s)", "floor (s)", "floor is",
                            "apply / floor", "per-rule calls (s)"], rows), ""]

    rows = []
    for backend in backends:
        for size in sizes:
            noop, back = cell(backend, size, "noop"), cell(backend, size, "readback")
            if not (noop.values or noop.failures):
                continue
            rows.append([backend, f"{size:,}", noop.text(), back.text(), bench.readback_tools.get(backend, "-"),
                         bench.objects.get((backend, size), "-"), ratio(noop.median, back.median)])
    out += ["### No-op re-apply (same policy again) against reading our objects back", "",
            benchlib.table(["backend", "N sources", "no-op re-apply (s)", "read-back (s)", "read back with",
                            "objects read back", "no-op / read-back"], rows), ""]

    rows = []
    for backend in backends:
        for size in sizes:
            added = cell(backend, size, "add_one")
            if not (added.values or added.failures):
                continue
            floor_seconds, floor_label = floor(backend, size, "floor_inc")
            rows.append([backend, f"{size:,}", added.text(), seconds(floor_seconds), floor_label,
                         ratio(added.median, floor_seconds)])
    if rows:
        out += ["### One source added to the policy", "",
                benchlib.table(["backend", "N sources before", "dockerguard apply (s)", "floor (s)", "floor is",
                                "apply / floor"], rows), ""]

    rows = []
    for backend in backends:
        if backend == "nft":
            continue
        for size in sizes:
            added = size == args.add_one_at
            rows.append([backend, f"{size:,}", cell(backend, size, "floor_ipset").text() if bench.has_ipset
                         else "ipset not installed", cell(backend, size, "floor_goto").text(),
                         cell(backend, size, "floor_inc_ipset").text() if bench.has_ipset and added else "-",
                         cell(backend, size, "floor_inc_goto").text() if added else "-"])
    if rows:
        out += ["### The iptables floors: with and without ipset", "",
                benchlib.table(["backend", "N sources", "ipset restore + *-restore (s)",
                                "*-restore, one rule per source (s)", "add one: `ipset add` (s)",
                                "add one: `iptables -I` (s)"], rows), ""]

    rows = []
    for backend in backends:
        for size in sizes:
            for metric, label in (("apply", "first apply"), ("noop", "no-op"), ("add_one", "one source added")):
                samples = bench.steps.get((backend, size, metric))
                if not samples:
                    continue
                names = list(dict.fromkeys(name for sample in samples for name in sample))
                steps = {name: median([sample.get(name, 0.0) for sample in samples]) or 0.0 for name in names}
                wall = median(bench.walls[(backend, size, metric)]) or 0.0
                listed = ", ".join(f"{name} {seconds(value)}" for name, value in steps.items())
                rows.append([backend, f"{size:,}", label, seconds(wall), listed or "-",
                             seconds(max(0.0, wall - sum(steps.values())))])
    out += ["### Where dockerguard's time goes (`dockerguard -v` steps, median seconds)", "",
            benchlib.table(["backend", "N sources", "run", "wall (s)", "engine steps (s)",
                            "outside the steps (s)"], rows), "",
            "Outside the steps: interpreter start-up, imports, loading the policy, printing, exit.", ""]

    labels = {"apply": "apply", "noop": "no-op re-apply", "add_one": "apply with one source added"}
    errors = [f"{backend} N={size:,}, {labels.get(metric, metric)} failed: {message[:400]}"
              for (backend, size, metric), message in bench.errors.items()]
    notes = [*bench.notes, *errors,
             "floor: the best hand-written load of the same semantics, as processes (see bench/README.md); "
             "iptables flavours report the faster of the two variants in the table above.",
             f"per-rule calls: one process per rule (nft: per source; iptables: per source and port), at most "
             f"{args.per_rule_max:,} calls; above that the time per call of the largest sample is extrapolated "
             "linearly (a lower bound where each call gets slower as the table grows).",
             "Sources beyond the 384 odd host addresses of 192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24 are "
             "odd host addresses of 10.0.0.0/8; IPv6 sources are 2001:db8:HHHH:LLLL::1. None carries a packet."]
    out += ["Notes:", "", *(f"- {note}" for note in notes), ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=benchlib.positive_int, nargs="+", default=[100, 1000, 10000, 100000],
                        help="numbers of allowed sources N (default 100 1000 10000 100000)")
    parser.add_argument("--ports", type=benchlib.positive_int, default=2, help="published ports P (default 2)")
    parser.add_argument("--family", choices=("4", "6", "both"), default="both",
                        help="address family of the sources (default both: half each)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--repeat", type=benchlib.positive_int, default=3, help="runs per measurement (median)")
    parser.add_argument("--per-rule-max", type=benchlib.positive_int, default=1000,
                        help="most one-process-per-rule calls per measurement; extrapolated above (default 1000)")
    parser.add_argument("--add-one-at", type=benchlib.positive_int, default=None,
                        help="size whose policy gets one source more (default: the largest size up to 10,000)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds any one process may take (default 1800); a backend whose apply times out "
                             "is not run at larger sizes")
    parser.add_argument("--proxy-path", action="store_true",
                        help="judge docker-proxy's INPUT path too (the product default; the floors do not)")
    parser.add_argument("--quick", action="store_true",
                        help="N = 100 and 1,000, one run, 100 per-rule calls, one source added at N = 100: "
                             "a smoke run (CI) printing the same tables")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.sizes = sorted(set(args.sizes))
    if args.add_one_at is None:
        args.add_one_at = max([size for size in args.sizes if size <= 10000], default=None)

    namespaces = benchlib.start("bench/apply.py: dockerguard apply against the floor")
    interrupted = False
    backends: list[str] = []
    facts: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="dgbench-") as tmp:
        bench = Bench(args, namespaces, Path(tmp))
        try:
            backends, notes = benchlib.usable_backends(namespaces, args.backends)
            bench.notes += notes
            with namespaces.scoped() as netns:
                facts = benchlib.machine_facts(netns)
            for size in args.sizes:
                case = bench.case(size)
                for backend in backends:
                    for repeat in range(args.repeat):
                        if backend not in bench.stopped:
                            bench.dockerguard(backend, case, repeat)
                        bench.floor(backend, case, repeat)
                    bench.per_rule(backend, case)
        except KeyboardInterrupt:
            interrupted = True
            benchlib.progress("interrupted: cleaning up, printing what was measured")
        finally:
            namespaces.close()
        print(report(bench, backends, args.sizes, facts, interrupted))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
