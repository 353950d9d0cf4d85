"""SIGKILL `dockerguard apply` at random moments (issue 13, item 3), on every backend, in a namespace of
its own.

Each run applies the other of two large policies (many sources, so an apply takes a while), kills the
CLI's whole process group (the CLI and the iptables/ipset/nft tools it runs, like systemd's
KillMode=control-group or the OOM killer) after a seeded random delay spread over the apply's measured
duration, then checks:

- within each family our objects are exactly the old or exactly the new ruleset (compared normalised:
  nft JSON without handles/counters; iptables-save without counters plus the ipsets the rules match);
- when the two iptables families disagree (IPv4 new, IPv6 old: they are two commits), `status` says the
  last apply was interrupted;
- the next apply ends exactly at the new ruleset: no leftover ipsets, no pending files or timers, and
  `status -c POLICY` reports it in sync.

Runs per backend: $DOCKERGUARD_KILL_RUNS, else 50 under CI and 10 on a developer machine.
Seed: $DOCKERGUARD_KILL_SEED (default 13). The outcomes are printed (pytest -s shows them).
"""

from __future__ import annotations

import collections
import difflib
import itertools
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from pprint import pformat

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crashlib import BACKENDS, big_policy, in_ci, kill_group, namespace

pytestmark = pytest.mark.integration

# Sources per policy (distinct set elements, half IPv4, half IPv6): enough that a changing apply takes a
# second or two on a busy 2-core machine, few enough that 50 runs fit in about 3 minutes per backend.
SOURCES = {"nft": 3_000, "iptables-nft": 1_000, "iptables-legacy": 400}
SEED = int(os.environ.get("DOCKERGUARD_KILL_SEED", "13"))
BUDGET = 420.0  # seconds per backend: the loop fails rather than run away (50 runs take ~2-3 min here)


def kill_runs() -> int:
    if os.environ.get("DOCKERGUARD_KILL_RUNS"):
        return int(os.environ["DOCKERGUARD_KILL_RUNS"])
    return 50 if in_ci() else 10


def classify(view: dict[str, object], old: dict[str, object], new: dict[str, object]) -> dict[str, str]:
    """Per family: "old", "new" (both when old == new... never here) or "partial"."""
    out = {}
    for family, objects in view.items():
        out[family] = "new" if objects == new[family] else "old" if objects == old[family] else "partial"
    return out


def explain(view: dict[str, object], old: dict[str, object], new: dict[str, object]) -> str:
    """The first lines in which a partial family differs from the old and the new ruleset."""
    lines = []
    for family, objects in view.items():
        for name, reference in (("old", old), ("new", new)):
            if objects != reference[family]:
                diff = difflib.unified_diff(pformat(reference[family]).split("\n"), pformat(objects).split("\n"),
                                            name, "now", lineterm="", n=0)
                lines += [f"{family} vs {name}:", *itertools.islice(diff, 30)]
    return "\n".join(lines)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_mid_apply_leaves_old_or_new_and_the_next_apply_repairs(backend: str, tmp_path: Path) -> None:
    runs = kill_runs()
    rng = random.Random(f"{SEED}-{backend}")
    with namespace(tmp_path) as ns:
        count = SOURCES[backend]
        policies = [ns.policy(big_policy(count, [443, 8443]), "a"),
                    ns.policy(big_policy(count, [80, 443], drop_last=7), "b")]
        references = []
        for policy in policies:
            ns.cli("apply", "-c", policy, "--backend", backend)
            references.append(ns.ours(backend))
        # How long a changing apply takes, the CLI's start included: the kills are spread over all of it.
        # The estimate follows the machine's load: the median of the last changing applies (the repairs).
        durations = []
        for policy in (policies[0], policies[1]):
            started = time.monotonic()
            ns.cli("apply", "-c", policy, "--backend", backend)
            durations.append(time.monotonic() - started)
        current = 1
        outcomes: collections.Counter[str] = collections.Counter()
        began = time.monotonic()
        for run in range(runs):
            assert time.monotonic() - began < BUDGET, f"{backend}: over {BUDGET:g} s after {run} runs: {outcomes}"
            target = 1 - current
            duration = statistics.median(durations[-9:])
            delay = rng.uniform(0.0, duration)
            proc = ns.popen("apply", "-c", policies[target], "--backend", backend)
            try:
                out, err = proc.communicate(timeout=delay)
                assert proc.returncode == 0, f"run {run}: apply failed on its own: {out}{err}"
                finished = True
            except subprocess.TimeoutExpired:
                kill_group(proc)
                finished = False
            view = ns.ours(backend)
            state = classify(view, references[current], references[target])
            where = f"{backend} run {run} (seed {SEED}, killed after {delay:.3f} s of {duration:.2f})"
            assert "partial" not in state.values(), (f"{where}: a family is half changed: {state}\n"
                                                     f"{explain(view, references[current], references[target])}")
            if finished:
                outcome = "completed"
            elif state["ipv4"] != state["ipv6"]:
                outcome = f"mixed v4 {state['ipv4']} v6 {state['ipv6']}"
                status = ns.cli("status", "--backend", backend, check=False)
                assert "interrupted" in status.stdout + status.stderr, f"{where}: status is silent: {status.stdout}"
            else:
                outcome = f"killed, {state['ipv4']}"
            outcomes[outcome] += 1
            started = time.monotonic()
            repaired = ns.cli("apply", "-c", policies[target], "--backend", backend)
            if state["ipv4"] == state["ipv6"] == "old" and "was interrupted" not in repaired.stderr:
                durations.append(time.monotonic() - started)  # a plain changing apply, like the killed one
            assert ns.ours(backend) == references[target], f"{where}: the next apply did not repair: {repaired}"
            if backend != "nft":
                used = sorted({name for family in ("ipv4", "ipv6") for name in references[target][family][1]})
                assert ns.our_ipsets() == used, f"{where}: leftover ipsets"
            assert ns.pending_files() == [] and ns.timer_pids() == [], f"{where}: pending files or timers left"
            status = ns.cli("status", "--backend", backend, "-c", policies[target], check=False)
            assert status.returncode == 0 and "in sync" in status.stdout, f"{where}: drift after repair: {status}"
            current = target
        elapsed = time.monotonic() - began
        print(f"\n{backend}: {runs} runs, {count} sources, changing apply {min(durations):.2f}-{max(durations):.2f} s "
              f"(median {statistics.median(durations):.2f}), seed {SEED}, "
              f"{elapsed:.0f} s: {dict(sorted(outcomes.items()))}")


# The CLI, dying (os._exit, as SIGKILL would) right after the first family's transaction of an apply
# (`send`) or of a rollback's restore: the moment between the iptables drivers' two commits.
DIE_BETWEEN_FAMILIES = """
import os, sys
from dockerguard.model import Family
from dockerguard.backends.iptables.driver import IptablesDriver
from dockerguard.backends.iptables.nft import IptablesNftBackend
from dockerguard.backends.iptables.legacy import IptablesLegacyBackend
for cls in (IptablesNftBackend, IptablesLegacyBackend):
    def _send(self, family, text, original=cls._send):
        original(self, family, text)
        if family is Family.IPV4:
            os._exit(137)
    cls._send = _send
from dockerguard.cli import main
sys.argv = ["dockerguard", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("backend", ["iptables-nft", "iptables-legacy"])
def test_killed_between_the_two_families_is_reported_and_repaired(backend: str, tmp_path: Path) -> None:
    with namespace(tmp_path) as ns:
        policies = [ns.policy(big_policy(40, [443, 8443]), "a"), ns.policy(big_policy(40, [80, 443], drop_last=7), "b")]
        references = []
        for policy in policies:
            ns.cli("apply", "-c", policy, "--backend", backend)
            references.append(ns.ours(backend))
        old, new = references
        ns.cli("rollback")
        assert ns.ours(backend) == old

        died = ns.run(sys.executable, "-c", DIE_BETWEEN_FAMILIES, "apply", "-c", policies[1], "--backend", backend,
                      check=False)
        assert died.returncode == 137, died
        assert classify(ns.ours(backend), old, new) == {"ipv4": "new", "ipv6": "old"}  # two commits: mixed
        status = ns.cli("status", "--backend", backend, "-c", policies[1], check=False)
        assert status.returncode == 3 and "interrupted" in status.stdout and "DRIFT" in status.stdout
        repaired = ns.cli("apply", "-c", policies[1], "--backend", backend)
        assert "was interrupted before it finished" in repaired.stderr
        assert ns.ours(backend) == new
        assert "interrupted" not in ns.cli("status", "--backend", backend).stdout
        # The repair recorded the ruleset from before the killed apply, not the mixed one.
        ns.cli("rollback")
        assert ns.ours(backend) == old

        # A rollback killed between the families: the next rollback finishes it.
        ns.cli("apply", "-c", policies[1], "--backend", backend)
        died = ns.run(sys.executable, "-c", DIE_BETWEEN_FAMILIES, "rollback", check=False)
        assert died.returncode == 137, died
        assert classify(ns.ours(backend), new, old) == {"ipv4": "new", "ipv6": "old"}  # v4 back at a, v6 still b
        finished = ns.cli("rollback")
        assert "was interrupted before it finished" in finished.stderr and ns.ours(backend) == old
        assert ns.cli("status", "--backend", backend, "-c", policies[0]).returncode == 0

        # A remove killed between the families: IPv4 removed, IPv6 not; the next remove finishes it, and
        # its rollback brings back both families as they were.
        ns.cli("apply", "-c", policies[1], "--backend", backend)
        died = ns.run(sys.executable, "-c", DIE_BETWEEN_FAMILIES, "remove", "--backend", backend, check=False)
        assert died.returncode == 137, died
        half = ns.ours(backend)
        assert "DOCKERGUARD" not in half["ipv4"][0] and half["ipv6"] == new["ipv6"]
        assert "interrupted" in ns.cli("status", "--backend", backend, check=False).stdout
        removed = ns.cli("remove", "--backend", backend)
        assert "was interrupted before it finished" in removed.stderr
        assert not any("DOCKERGUARD" in ns.ours(backend)[family][0] for family in ("ipv4", "ipv6"))
        ns.cli("rollback")
        assert ns.ours(backend) == new
