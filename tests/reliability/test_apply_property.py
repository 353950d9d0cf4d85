"""Proof by difference: for random valid policies A and B (the schema's generator of
test_policy_properties.py), after `apply A; apply B` our objects in the kernel are exactly what a fresh
namespace holds after loading `export` of B (nft: `nft -f`; iptables: `ipset restore` + `*-restore`), and the
second apply reported a change exactly when the exports of A and B load different objects. In one namespace
per backend, with the CLI as users run it; the same property on the in-memory nft kernel runs many more
examples.

DOCKERGUARD_PROPERTY_EXAMPLES sets the kernel examples per backend (default 25; the fake kernel runs 10x).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from relenv import Netns, dockerguard_argv, throwaway_netns
from test_policy_properties import policies

from dockerguard import Engine
from dockerguard.backends.iptables import ipsets
from dockerguard.backends.nft.driver import NftBackend
from dockerguard.backends.nft.fake_kernel import FakeNftKernel
from dockerguard.compiler import compile_policy
from dockerguard.errors import PolicyError
from dockerguard.policy import parse_policy
from dockerguard.published import Discovery

EXAMPLES = int(os.environ.get("DOCKERGUARD_PROPERTY_EXAMPLES", "25"))
_NO_PORTS = Discovery(frozenset())  # a host without Docker: nothing published
SETTINGS = {"deadline": None, "database": None, "derandomize": False,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture]}


def valid(text: str) -> bool:
    try:
        parse_policy(text, "generated.toml")
    except PolicyError:
        return False
    return True


# -- the pure part: the real nft renderer and read-back on the in-memory kernel ---------------------------
def _fake_table(kernel: FakeNftKernel) -> list[Any]:
    return [kernel._list({"table": {"family": "inet", "name": name}}) for name in ("dockerguard", "dockerguard_bans")
            if ("inet", name) in kernel.tables]


def _without_handles(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_handles(item) for key, item in value.items() if key != "handle"}
    if isinstance(value, list):
        return [_without_handles(item) for item in value]
    return value


@settings(max_examples=10 * EXAMPLES, **SETTINGS)  # type: ignore[arg-type]
@given(a=policies(may_stray=False), b=policies(may_stray=False))
def test_on_the_fake_kernel_apply_a_then_b_holds_exactly_b(a: str, b: str) -> None:
    assume(valid(a) and valid(b))
    kernel = FakeNftKernel()
    engine = Engine(NftBackend(kernel), discover=lambda containers: _NO_PORTS)
    first, second = parse_policy(a, "a.toml"), parse_policy(b, "b.toml")
    engine.apply(first, guard=False)
    result = engine.apply(second, guard=False)
    fresh = FakeNftKernel()
    payload = NftBackend(fresh).transaction(compile_policy(second, frozenset())).payload
    assert fresh.json_cmd(payload) == (0, "", "")
    assert _without_handles(_fake_table(kernel)) == _without_handles(_fake_table(fresh))
    other = FakeNftKernel()
    assert other.json_cmd(NftBackend(other).transaction(compile_policy(first, frozenset())).payload)[0] == 0
    assert result.changed == (_without_handles(_fake_table(other)) != _without_handles(_fake_table(fresh)))


# -- the kernel: every backend, the CLI as a process -------------------------------------------------------
BACKENDS = ("nft", "iptables-nft", "iptables-legacy")


def cli(ns: Netns, *args: str) -> subprocess.CompletedProcess[str]:
    return ns.run([*dockerguard_argv(), *args], timeout=120)


def exports(ns: Netns, backend: str, policy: Path) -> dict[str, str]:
    """What `export` writes for `policy` (its header line, which names the file, left out)."""
    formats = {"nft": ["nft"]}.get(backend, ["iptables-restore 4", "iptables-restore 6", "ipset"])
    found = {}
    for spec in formats:
        fmt, *family = spec.split()
        proc = cli(ns, "export", "-f", fmt, "-c", str(policy), "--backend", backend,
                   *(["--family", family[0]] if family else []))
        assert proc.returncode == 0, proc.stderr
        found[spec] = "".join(line + "\n" for line in proc.stdout.splitlines() if not line.startswith("# generated"))
    return found


def load(ns: Netns, backend: str, exported: dict[str, str]) -> None:
    if backend == "nft":
        ns.run(["nft", "-f", "-"], input=exported["nft"], check=True)
        return
    flavour = backend.split("-")[1]
    if exported["ipset"].strip():
        ns.run(["ipset", "restore"], input=exported["ipset"], check=True)
    for family, tool in (("4", "iptables"), ("6", "ip6tables")):
        ns.run([f"{tool}-{flavour}-restore", "--noflush"], input=exported[f"iptables-restore {family}"], check=True)


def kernel_view(ns: Netns, backend: str) -> Any:
    """Our objects as the kernel lists them, without what differs between equal rulesets (handles, the
    order in which chains were declared)."""
    if backend == "nft":
        tables = []
        for name in ("dockerguard", "dockerguard_bans"):
            proc = ns.run(["nft", "-j", "list", "table", "inet", name])
            if proc.returncode == 0:
                tables.append([item for item in json.loads(proc.stdout)["nftables"] if "metainfo" not in item])
        return _without_handles(tables)
    flavour = backend.split("-")[1]
    view: dict[str, Any] = {}
    for tool in ("iptables", "ip6tables"):
        saved = ns.run([f"{tool}-{flavour}-save", "-t", "filter"], check=True).stdout
        chains = sorted(line.split()[0] for line in saved.splitlines() if line.startswith(":"))
        rules = [line for line in saved.splitlines() if line.startswith("-A ")]
        view[tool] = (chains, {chain: [rule for rule in rules if rule.split()[1] == chain[1:]] for chain in chains})
    saved_sets = ns.run(["ipset", "save"], check=True).stdout
    view["ipsets"] = ipsets.parse_save(saved_sets)  # content sets: the ban sets outlive a policy without bans
    return view


@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_a_then_b_holds_exactly_what_export_of_b_loads(netns: Netns, tmp_path: Path, backend: str) -> None:
    seen = {"examples": 0, "changed": 0}

    # No shrinking: an example costs seconds of kernel work, and shrinking one ran past five minutes (the
    # failing pair is reported as generated; tests/integration keeps the small case it turned out to be).
    @settings(max_examples=EXAMPLES, phases=(Phase.explicit, Phase.reuse, Phase.generate),
              **SETTINGS)  # type: ignore[arg-type]
    @given(a=policies(may_stray=False), b=policies(may_stray=False))
    def property_holds(a: str, b: str) -> None:
        assume(valid(a) and valid(b))
        first, second = tmp_path / "a.toml", tmp_path / "b.toml"
        first.write_text(a)
        second.write_text(b)
        applied = cli(netns, "apply", "-c", str(first), "--backend", backend, "--no-guard")
        assert applied.returncode == 0, applied.stderr
        result = cli(netns, "apply", "-c", str(second), "--backend", backend, "--no-guard", "--json")
        assert result.returncode == 0, result.stderr
        changed = json.loads(result.stdout)["changed"]
        views = []
        for policy in (first, second):
            with throwaway_netns() as fresh:
                load(fresh, backend, exports(netns, backend, policy))
                views.append(kernel_view(fresh, backend))
        assert kernel_view(netns, backend) == views[1], f"A:\n{a}\nB:\n{b}"
        assert changed == (views[0] != views[1]), f"A:\n{a}\nB:\n{b}"
        seen["examples"] += 1
        seen["changed"] += changed

    property_holds()
    print(f"{backend}: {seen['examples']} examples, {seen['changed']} changed the kernel")  # shown with -s
    assert seen["examples"] >= EXAMPLES // 2 and seen["changed"], seen  # the property said something

