#!/usr/bin/env python3
"""Start-up cost of the dockerguard CLI: what every command pays before it does anything.

    sudo python3 bench/startup.py [--runs 10] [--importtime-runs 5] [--top 15] [--no-hyperfine] [--quick]

Wall time (median, min, max of --runs, after one warm-up run) of `dockerguard --help` and `dockerguard
check examples/classic.toml`, next to the interpreter alone (`python -c pass`) and `import dockerguard.cli`,
measured with hyperfine (`-N`: no shell in between) when it is installed, else with a loop of timed
processes. Then `python -X importtime -c "import dockerguard.cli"`: the modules that cost the most, by
cumulative and by self time (median per module of --importtime-runs runs). Runs inside a throw-away
network namespace like the other scripts (these commands touch no firewall, and the namespace makes
sure of it). Prints Markdown on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import benchlib
from benchlib import median

QUICK = {"runs": 3, "importtime_runs": 1, "top": 10}
_IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S.*)$")


def commands() -> list[tuple[str, list[str]]]:
    python = sys.executable
    cli = benchlib.dockerguard_cli()
    classic = benchlib.REPO / "examples" / "classic.toml"
    return [
        ("`python -c pass` (the interpreter alone)", [python, "-c", "pass"]),
        ("`python -c 'import dockerguard.cli'`", [python, "-c", "import dockerguard.cli"]),
        ("`dockerguard --help`", [*cli, "--help"]),
        ("`dockerguard check examples/classic.toml`", [*cli, "check", str(classic)]),
    ]


def with_hyperfine(argv: Sequence[str], runs: int, netns: str, tmp: Path) -> tuple[float, float, float]:
    """(median, min, max) seconds; hyperfine runs inside the namespace, so its children do too."""
    export = tmp / "hyperfine.json"
    benchlib.check(benchlib.run(
        ["hyperfine", "-N", "--style", "none", "--warmup", "1", "--runs", str(runs), "--export-json", str(export),
         shlex.join(argv)], netns=netns, timeout=60 + 30 * runs), "hyperfine")
    stats = json.loads(export.read_text())["results"][0]
    return float(stats["median"]), float(stats["min"]), float(stats["max"])


def with_loop(argv: Sequence[str], runs: int, netns: str) -> tuple[float, float, float]:
    benchlib.check(benchlib.run(argv, netns=netns, timeout=60), argv[0])  # warm-up: caches, .pyc files
    times = [benchlib.check(benchlib.run(argv, netns=netns, timeout=60), argv[0]).seconds for _ in range(runs)]
    return median(times) or 0.0, min(times), max(times)


def importtime(runs: int, netns: str) -> tuple[dict[str, tuple[float, float, int]], float | None]:
    """Per module: (median self ms, median cumulative ms, nesting level); and the total for dockerguard.cli."""
    samples: dict[str, list[tuple[int, int]]] = defaultdict(list)
    levels: dict[str, int] = {}
    for _ in range(runs):
        result = benchlib.check(benchlib.run([sys.executable, "-X", "importtime", "-c", "import dockerguard.cli"],
                                             netns=netns, timeout=60), "python -X importtime")
        for line in result.stderr.splitlines():
            match = _IMPORTTIME.match(line)
            if match:
                module = match.group(4).strip()
                samples[module].append((int(match.group(1)), int(match.group(2))))
                levels[module] = (len(match.group(3)) - 1) // 2  # " | " then two spaces per level
    table = {module: (median([s for s, _ in values]) / 1000, median([c for _, c in values]) / 1000, levels[module])
             for module, values in samples.items() if values}
    total = table.get("dockerguard.cli", (0.0, None, 0))[1]
    return table, total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=benchlib.positive_int, default=10, help="timed runs per command (median)")
    parser.add_argument("--importtime-runs", type=benchlib.positive_int, default=5,
                        help="python -X importtime runs (median per module)")
    parser.add_argument("--top", type=benchlib.positive_int, default=15, help="modules listed per table")
    parser.add_argument("--no-hyperfine", action="store_true", help="time with a loop even if hyperfine is installed")
    parser.add_argument("--quick", action="store_true", help="3 runs, importtime once, top 10: a smoke run (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    tool = "hyperfine" if shutil.which("hyperfine") and not args.no_hyperfine else "loop"

    namespaces = benchlib.start("bench/startup.py: CLI start-up and import time")
    rows: list[list[object]] = []
    interrupted = False
    facts: list[tuple[str, str]] = []
    modules: dict[str, tuple[float, float, int]] = {}
    total = None
    try:
        with namespaces.scoped() as netns, tempfile.TemporaryDirectory(prefix="dgbench-") as tmp:
            facts = benchlib.machine_facts(netns, [["hyperfine", "--version"]])
            for label, command in commands():
                benchlib.progress(f"{label}: {args.runs} runs ({tool})")
                benchlib.settle()  # not timed with whatever the machine was finishing
                if tool == "hyperfine":
                    middle, low, high = with_hyperfine(command, args.runs, netns, Path(tmp))
                else:
                    middle, low, high = with_loop(command, args.runs, netns)
                rows.append([label, f"{middle * 1000:.0f}", f"{low * 1000:.0f}", f"{high * 1000:.0f}", args.runs, tool])
            benchlib.progress(f"python -X importtime: {args.importtime_runs} runs")
            modules, total = importtime(args.importtime_runs, netns)
    except KeyboardInterrupt:
        interrupted = True
        benchlib.progress("interrupted: cleaning up, printing what was measured")
    finally:
        namespaces.close()

    out = ["## CLI start-up (bench/startup.py)", "",
           f"Command: `{benchlib.command_line()}`" + (" (interrupted: partial results)" if interrupted else ""), "",
           benchlib.facts_table(facts), "",
           "### Wall time per command", "",
           benchlib.table(["command", "median (ms)", "min (ms)", "max (ms)", "runs", "measured with"], rows), ""]
    if modules:
        by_cumulative = sorted(modules.items(), key=lambda item: -item[1][1])[:args.top]
        by_self = sorted(modules.items(), key=lambda item: -item[1][0])[:args.top]
        total_text = f"{total:.0f} ms" if total is not None else "?"
        out += [f"### `python -X importtime -c 'import dockerguard.cli'`: top {args.top} by cumulative time", "",
                f"Median per module of {args.importtime_runs} run(s); importing dockerguard.cli took {total_text} "
                "in all. Level: nesting depth (1 = imported by the `-c` statement itself).", "",
                benchlib.table(["module", "level", "cumulative (ms)", "self (ms)"],
                               [[f"`{name}`", level + 1, f"{cumulative:.1f}", f"{own:.1f}"]
                                for name, (own, cumulative, level) in by_cumulative]), "",
                f"### Top {args.top} by self time (the module's own code, without its imports)", "",
                benchlib.table(["module", "self (ms)", "cumulative (ms)"],
                               [[f"`{name}`", f"{own:.1f}", f"{cumulative:.1f}"]
                                for name, (own, cumulative, _) in by_self]), ""]
    print("\n".join(out))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
