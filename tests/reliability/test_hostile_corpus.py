"""Every case of the hostile corpus (corpus.py), through the real CLI as its own process:

- `dockerguard check FILE` and `dockerguard apply -c FILE --backend B` exit 2 with one error line per mistake
  (a case has one, sometimes two: every mistake is reported), one of which names the file, the line (where
  the case has one) and the key, and no traceback;
- the apply runs in a throw-away network namespace whose firewall (nft ruleset, iptables-save and
  ip6tables-save of both flavours) is byte-for-byte the same afterwards.

The backend B rotates over the cases (each backend gets a third of them, in a namespace of its own); the
cases about the policy path itself run every backend, also after a valid apply is on record (the engine's
no-op fast path reads the file first).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from corpus import ANY_LINE, CASES, Case
from relenv import Netns, dockerguard_argv, throwaway_netns

from dockerguard.backends import DRIVERS

BACKENDS = tuple(DRIVERS)  # nft, iptables-legacy, iptables-nft
TIMEOUT = 30  # seconds for one CLI process; a FIFO or /dev/zero read unbounded would hang or eat memory


def materialise(case: Case, directory: Path) -> tuple[str, str]:
    """Write the case's files; (the policy path to pass, the path the message must name)."""
    for name, content in case.files.items():
        data = content.encode() if isinstance(content, str) else content
        (directory / name).write_bytes(data)
    path = directory / "policy.toml"
    if case.special == "directory":
        path.mkdir()
    elif case.special == "fifo":
        os.mkfifo(path)
    elif case.special == "dev-zero":
        return "/dev/zero", "/dev/zero"
    elif case.special == "dangling-symlink":
        path.symlink_to(directory / "absent.toml")
    elif case.special == "missing":
        pass
    elif case.special == "newline-name":  # named in the message as Python would write it: one line
        path = directory / "po\nlicy.toml"
        path.write_text("backend = 5\n")
        return str(path), repr(str(path))
    elif case.special == "huge":
        line = b"# " + b"x" * 1021 + b"\n"
        with path.open("wb") as handle:
            handle.write(b'external_interfaces = ["eth0"]\n')
            for _ in range(50 * 1024):  # 50 MiB
                handle.write(line)
    else:
        path.write_bytes(case.policy.encode() if isinstance(case.policy, str) else case.policy)
    named = str(directory / case.named) if case.named else str(path)
    return str(path), named


def assert_refused(proc: subprocess.CompletedProcess[str], case: Case, named: str) -> None:
    """Exit 2; stderr is the error message: one line per mistake found (most cases have one), each
    `error: FILE:LINE: [KEY] ...`; the case's own mistake (file, line, key) is among them; no traceback."""
    where = f"{case.name}: exit {proc.returncode}, stderr {proc.stderr!r}, stdout {proc.stdout!r}"
    assert proc.returncode == 2, where
    assert "Traceback" not in proc.stderr, where
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), where
    assert len(lines) <= 3, where  # several mistakes at most, never a dump
    assert any(matches(line, case, named) for line in lines), where


def matches(message: str, case: Case, named: str) -> bool:
    if named not in message:
        return False
    after = message.split(named, 1)[1]
    if case.line == ANY_LINE and not re.match(r":\d+:", after):
        return False
    if case.line not in (None, ANY_LINE) and not after.startswith(f":{case.line}:"):
        return False
    return case.key is None or f"[{case.key}]" in message


def run_cli(argv: list[str], netns: Netns | None = None) -> subprocess.Popen[str]:
    prefix = ["ip", "netns", "exec", netns.name] if netns is not None else []
    return subprocess.Popen([*prefix, *dockerguard_argv(), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)


def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child, by its handle
        stdout, stderr = proc.communicate(timeout=10)
        raise AssertionError(f"{proc.args} did not finish in {TIMEOUT} s: {stderr!r}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60
    assert len({case.name for case in CASES}) == len(CASES)


WORKERS = 4  # processes at once: the CLI's start-up is CPU-bound, and the machine may be shared


@dataclass
class Outcome:
    named: str
    results: list[subprocess.CompletedProcess[str]] = field(default_factory=list)


@dataclass
class Corpus:
    outcomes: dict[str, Outcome]
    before: dict[str, dict[str, str]]  # backend -> its namespace's firewall before the corpus
    after: dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def corpus_run(kernel_environment: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    """Every case's `check` and `apply` (backend rotating over the cases; the policy-path cases: every
    backend), run as processes WORKERS at a time. Each backend applies in a namespace of its own, whose
    firewall is read before the first and after the last."""
    with ExitStack() as stack:
        spaces = {backend: stack.enter_context(throwaway_netns()) for backend in BACKENDS}
        before = {backend: ns.firewall() for backend, ns in spaces.items()}
        jobs: list[tuple[str, list[str], Netns | None]] = []
        outcomes: dict[str, Outcome] = {}
        for index, case in enumerate(CASES):
            policy, named = materialise(case, tmp_path_factory.mktemp("case"))
            outcomes[case.name] = Outcome(named)
            jobs.append((case.name, ["check", policy], None))
            backends = BACKENDS if case.special else (BACKENDS[index % len(BACKENDS)],)
            jobs += [(case.name, ["apply", "-c", policy, "--backend", b], spaces[b]) for b in backends]
        with ThreadPoolExecutor(WORKERS) as pool:
            done = pool.map(lambda job: (job[0], finish(run_cli(job[1], job[2]))), jobs)
            for name, result in done:
                outcomes[name].results.append(result)
        after = {backend: ns.firewall() for backend, ns in spaces.items()}
        yield Corpus(outcomes, before, after)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_policy_is_refused(case: Case, corpus_run: Corpus) -> None:
    outcome = corpus_run.outcomes[case.name]
    assert len(outcome.results) >= 2  # check, and at least one apply
    for result in outcome.results:
        assert_refused(result, case, outcome.named)


@pytest.mark.parametrize("backend", BACKENDS)
def test_corpus_left_the_kernel_unchanged(backend: str, corpus_run: Corpus) -> None:
    assert corpus_run.after[backend] == corpus_run.before[backend]


PATH_CASES = [case for case in CASES if case.special]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hostile_path_after_a_recorded_apply(backend: str, tmp_path: Path, netns: Netns) -> None:
    """With a verified apply on record, `apply` first compares the policy file's bytes with the recorded
    ones (the no-op fast path): that read must be bounded too (a FIFO blocked it; /dev/zero never ended)."""
    good = tmp_path / "good.toml"
    good.write_text('external_interfaces = ["eth0"]\n[[allow]]\nports = [8080]\nsources = ["198.51.100.0/24"]\n')
    applied = finish(run_cli(["apply", "-c", str(good), "--backend", backend], netns))
    assert applied.returncode == 0, applied.stderr
    before = netns.firewall()
    for case in PATH_CASES:
        directory = tmp_path / case.special
        directory.mkdir()
        policy, named = materialise(case, directory)
        assert_refused(finish(run_cli(["apply", "-c", policy, "--backend", backend], netns)), case, named)
    assert netns.firewall() == before
