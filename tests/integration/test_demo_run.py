"""`dockerguard demo` as a new user runs it: a subprocess, real namespaces, real packets."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest

from dockerguard import demo
from dockerguard.backends import DRIVERS
from dockerguard.sandbox import ROLES

# Every registered backend in front of its default Docker firewall, auto-detection, and the nft driver in
# front of Docker 29's nftables mode.
CASES = [(backend, None) for backend in DRIVERS] + [("auto", None), ("nft", "nftables"), ("auto", "nftables")]


def demo_command(backend: str, firewall: str | None) -> list[str]:
    argv = [sys.executable, "-m", "dockerguard", "demo", "--backend", backend]
    return argv + (["--docker-firewall", firewall] if firewall else [])


def our_namespaces(pid: int) -> set[str]:
    """Namespaces the sandbox of process `pid` created (they are named dg<pid>-<hex>-<role>)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(f"dg{pid}-")}


def table_rows(stdout: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("│").split("│")] for line in stdout.splitlines()
            if line.startswith("│")]


@pytest.mark.parametrize(("backend", "firewall"), CASES, ids=[f"{b}-{f or 'default'}" for b, f in CASES])
def test_demo_passes_and_reports_every_probe(backend: str, firewall: str | None) -> None:
    proc = subprocess.Popen(demo_command(backend, firewall), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, stdout + stderr
    assert "Traceback" not in stderr
    rows = table_rows(stdout)
    expected = {(f"{c.source} ({c.label})", f"{c.port}/{c.proto}"): c.expected for c in demo.demo_checks()}
    assert len(rows) == len(expected) == 20
    for source, port, wanted, got, ok in rows:
        assert wanted == ("through" if expected[(source, port)] else "blocked")
        assert (got == "through") == expected[(source, port)], (source, port, got)
        assert ok == "yes"
    assert ["198.51.100.12 (other)", "8443/tcp", "blocked", "blocked (no answer)", "yes"] in rows
    assert ["198.51.100.11 (admin)", "8443/tcp", "through", "through", "yes"] in rows
    assert "without dockerguard: 20 of 20 probes got through" in stdout
    assert "after `dockerguard remove`: 20 of 20 probes got through again" in stdout
    assert "demo passed" in stdout
    if backend == "auto":
        picked = "nft" if firewall == "nftables" else "iptables-nft"
        if picked in DRIVERS:
            assert f"auto-detection inside the sandbox picked {picked}" in stdout
    assert not our_namespaces(proc.pid)


def test_a_policy_that_lets_too_much_through_fails_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    # Expectations from the real demo policy; the sandbox gets a policy that also opens 9000.
    checks = demo.demo_checks()
    monkeypatch.setattr(demo, "demo_checks", lambda: checks)
    leaky = demo.DEMO_POLICY.replace("ports = [8080, 443]", "ports = [8080, 443, 9000]")
    assert leaky != demo.DEMO_POLICY
    monkeypatch.setattr(demo, "DEMO_POLICY", leaky)
    result = demo.run_demo("nft", probe_timeout=0.5)
    assert not result.ok and result.baseline_ok and result.restored_ok
    assert sorted((row.check.source, row.check.port) for row in result.mismatches) == sorted(
        (source, 9000) for source in (*demo.ADMIN, *demo.OTHER))
    assert not our_namespaces(os.getpid())


def test_sigterm_mid_demo_still_deletes_the_sandbox() -> None:
    proc = subprocess.Popen(demo_command("nft", "nftables"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        line = ""
        while "applying the demo policy" not in line:  # the sandbox exists by then
            assert time.monotonic() < deadline, "demo did not get to apply within 60 s"
            if select.select([proc.stdout], [], [], 1.0)[0]:
                line = proc.stdout.readline()
                assert line, f"demo exited early: {proc.wait(timeout=10)} {proc.stderr.read() if proc.stderr else ''}"
        assert len(our_namespaces(proc.pid)) == len(ROLES)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert not our_namespaces(proc.pid)
