"""Concurrent `dockerguard apply`/`remove`/`rollback` in one namespace (issue 13, item 4), every backend.

Each round starts 2-4 commands at once (seeded choice among apply A, apply B, apply C, remove,
rollback; one state directory, as on a host). The ruleset lock serialises them: every command succeeds
(a rollback may find nothing to roll back), the end state is exactly one of the policies' rulesets or
nothing (as before the first apply, or as a remove leaves it), nothing is duplicated (jumps, rules,
chains, sets), no intent file is left. A test process holds the ruleset lock at the start of each round
until every command said it waits: each must say so ("waiting for the lock held by pid N (dockerguard
...)"), naming the test holder or another command of the round.

Rounds per backend: $DOCKERGUARD_CONCURRENCY_ROUNDS (default 20); seed $DOCKERGUARD_CONCURRENCY_SEED (13).
"""

from __future__ import annotations

import collections
import difflib
import itertools
import os
import random
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from pprint import pformat

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crashlib import BACKENDS, big_policy, namespace

pytestmark = pytest.mark.integration

ROUNDS = int(os.environ.get("DOCKERGUARD_CONCURRENCY_ROUNDS", "20"))
SEED = int(os.environ.get("DOCKERGUARD_CONCURRENCY_SEED", "13"))
SOURCES = 300
BUDGET = 240.0  # seconds per backend
BAN_SETS = {"dockerguard-ban4", "dockerguard-ban6"}
WAITING = re.compile(r"waiting for the lock held by pid (\d+) \(dockerguard ([a-z -]+), since [0-9:]+\) on (\S+)")
NOTICE_TIMEOUT = 30.0  # seconds the test holder keeps the lock at most, waiting for every command's notice


def duplicates(ns_view: dict[str, object], backend: str) -> list[str]:
    """Rules, jumps or chains that occur twice in our objects."""
    found = []
    if backend == "nft":
        table, _ = ns_view["ipv4"]  # type: ignore[misc]
        items = [repr(item) for item in (table or [])]
    else:
        items = []
        for family in ("ipv4", "ipv6"):
            text, _ = ns_view[family]  # type: ignore[misc]
            items += [f"{family} {line}" for line in text.split("\n") if line.startswith(("-A", ":"))]
    for item, count in collections.Counter(items).items():
        if count > 1:
            found.append(f"{count}x {item[:200]}")
    return found


def differences(view: dict[str, object], reference: dict[str, object]) -> str:
    lines = []
    for family in ("ipv4", "ipv6"):
        lines += list(itertools.islice(difflib.unified_diff(pformat(reference[family]).split("\n"),
                                                            pformat(view[family]).split("\n"), lineterm="", n=0), 12))
    return "\n".join(lines)


def wait_for_notices(procs: dict[str, subprocess.Popen[str]]) -> dict[str, str]:
    """Read the commands' stderr until each said whom it waits for (or NOTICE_TIMEOUT passed): what
    each wrote so far."""
    seen = {name: "" for name in procs}
    streams = {proc.stderr.fileno(): name for name, proc in procs.items() if proc.stderr is not None}
    deadline = time.monotonic() + NOTICE_TIMEOUT
    while streams and time.monotonic() < deadline:
        for fd in select.select(list(streams), [], [], 0.5)[0]:
            chunk = os.read(fd, 65536).decode(errors="replace")
            name = streams[fd]
            seen[name] += chunk
            if not chunk or "waiting for the lock held by" in " ".join(seen[name].split()):
                del streams[fd]
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_commands_are_serialised_and_end_in_one_whole_state(backend: str, tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}-{backend}")
    with namespace(tmp_path) as ns:
        texts = {"a": big_policy(SOURCES, [443, 8443]), "b": big_policy(SOURCES, [80, 443], drop_last=5),
                 "c": big_policy(SOURCES // 2, [25])}
        policies = {name: ns.policy(text, name) for name, text in texts.items()}
        references = {"nothing": ns.ours(backend)}
        for name, policy in policies.items():
            ns.cli("apply", "-c", policy, "--backend", backend)
            references[name] = ns.ours(backend)
        # After a remove the iptables drivers leave DOCKER-USER and FORWARD's jump to it (Docker's place);
        # a rollback to before the first apply takes them away again.
        ns.cli("remove", "--backend", backend)
        if ns.ours(backend) != references["nothing"]:
            references["removed"] = ns.ours(backend)
        commands = {"apply a": ("apply", "-c", policies["a"], "--backend", backend),
                    "apply b": ("apply", "-c", policies["b"], "--backend", backend),
                    "apply c": ("apply", "-c", policies["c"], "--backend", backend),
                    "remove": ("remove", "--backend", backend),
                    "rollback": ("rollback",)}
        ends: collections.Counter[str] = collections.Counter()
        waited = 0
        began = time.monotonic()
        for round_ in range(ROUNDS):
            assert time.monotonic() - began < BUDGET, f"{backend}: over {BUDGET:g} s after {round_} rounds"
            chosen = rng.sample(sorted(commands), rng.randint(2, 4))
            holder = ns.hold_ruleset_lock()
            try:
                procs = {name: ns.popen(*commands[name]) for name in chosen}
                early = wait_for_notices(procs)
            finally:
                assert holder.stdin is not None
                holder.stdin.write("\n")
                holder.stdin.close()
                holder.wait(timeout=30)
            results = {name: (proc, *proc.communicate(timeout=120)) for name, proc in procs.items()}
            results = {name: (proc, out, early[name] + err) for name, (proc, out, err) in results.items()}
            pids = {proc.pid for proc in procs.values()} | {holder.pid}
            where = f"{backend} round {round_} (seed {SEED}): {chosen}"
            for name, (proc, out, err) in results.items():
                nothing = name == "rollback" and "nothing to roll back" in err
                assert proc.returncode == 0 or nothing, f"{where}: {name} exited {proc.returncode}: {out}{err}"
                assert "Traceback" not in err, f"{where}: {name}: {err}"
                notices = WAITING.findall(" ".join(err.split()))
                assert notices, f"{where}: {name} waited for the test holder without saying so: {err}"
                for pid, _command, _lock in notices:
                    assert int(pid) in pids - {proc.pid}, f"{where}: {name} waited for pid {pid}: {err}"
                    waited += 1
            view = ns.ours(backend)
            matches = [name for name, reference in references.items() if reference == view]
            assert len(matches) == 1, f"{where}: the end state is none of the policies' ({matches}):\n" + "\n".join(
                f"--- vs {name}:\n{differences(view, reference)}" for name, reference in references.items())
            assert duplicates(view, backend) == [], f"{where}: duplicated: {duplicates(view, backend)}"
            assert not (ns.state_dir / "intent.json").exists(), f"{where}: an intent file was left"
            if backend != "nft":  # content sets: exactly those the rules match (the ban sets come and go whole)
                used = {name for family in ("ipv4", "ipv6") for name in view[family][1]} - BAN_SETS
                assert set(ns.our_ipsets()) - BAN_SETS == used, f"{where}: ipsets nothing uses: {ns.our_ipsets()}"
            ends[matches[0]] += 1
        print(f"\n{backend}: {ROUNDS} rounds, {waited} waiting notices, "
              f"{time.monotonic() - began:.0f} s, end states {dict(sorted(ends.items()))}")
