"""The `dockerguard` command (typer). The only module that prints.

Exit codes: 0 ok, 1 runtime/kernel error, 2 bad input (policy, arguments).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from .backends import probe_all
from .detect import detect
from .engine import Engine
from .errors import DockerguardError, UsageError
from .policy import BACKEND_NAMES, load_policy

DEFAULT_POLICY = "/etc/dockerguard/policy.toml"

app = typer.Typer(
    help="One declarative firewall policy for Docker-published ports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
# markup=False: policy paths, comments and kernel messages may contain [brackets].
out = Console(highlight=False, markup=False)
err = Console(stderr=True, highlight=False, markup=False)

PolicyOption = typer.Option(DEFAULT_POLICY, "--config", "-c", help="Policy file (TOML).")
BackendOption = typer.Option(
    None, "--backend", "-b", help=f"Override the policy's backend: {', '.join(BACKEND_NAMES)}."
)
JsonOption = typer.Option(False, "--json", help="Machine-readable output.")


def _engine(backend: Optional[str]) -> Engine:
    if backend is not None and backend not in BACKEND_NAMES:
        raise UsageError(f"unknown backend {backend!r} (expected one of: {', '.join(BACKEND_NAMES)})")
    return Engine(backend)


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str)) if out.is_terminal else print(json.dumps(data, default=str))


@app.command()
def check(policy: str = typer.Argument(DEFAULT_POLICY, help="Policy file (TOML).")) -> None:
    """Validate a policy file; changes nothing."""
    loaded = load_policy(policy)
    out.print(f"{policy}: OK ({len(loaded.allow)} allow entries, {len(loaded.sets)} sets, "
              f"backend {loaded.backend}, default {loaded.default})")


@app.command()
def plan(config: str = PolicyOption, backend: Optional[str] = BackendOption) -> None:
    """Print exactly what apply would send to the kernel; changes nothing, needs no root."""
    rendered = _engine(backend).render(load_policy(config))
    sys.stdout.write(rendered.text if rendered.text.endswith("\n") else rendered.text + "\n")


@app.command()
def apply(config: str = PolicyOption, backend: Optional[str] = BackendOption) -> None:
    """Install the policy in one atomic transaction (rolled back if verification fails)."""
    result = _engine(backend).apply(load_policy(config))
    if result.changed:
        out.print(f"applied ruleset {result.digest} with backend {result.backend}")
    else:
        out.print(f"ruleset {result.digest} already installed with backend {result.backend}; nothing changed")


@app.command()
def status(
    backend: Optional[str] = BackendOption,
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Also report drift from this policy."),
    as_json: bool = JsonOption,
) -> None:
    """Show what dockerguard has installed, with packet counters."""
    policy = load_policy(config) if config else None
    result = _engine(backend).status(policy)
    if as_json:
        _print_json(asdict(result))
        return
    if result.detection is not None:
        out.print(f"backend: {result.backend} (auto: {result.detection.reason})")
    else:
        out.print(f"backend: {result.backend}")
    if result.installed is None:
        out.print("installed: nothing")
    else:
        for hook in result.installed.hooks:
            out.print(f"hook: {hook}")
        table = Table("chain", "rule", "packets", "bytes")
        for rule in result.installed.rules:
            table.add_row(rule.chain, rule.description, str(rule.packets), str(rule.bytes))
        out.print(table)
    if result.in_sync is not None:
        if not result.in_sync:
            out.print("DRIFT: the installed rules differ from the policy", style="red")
            raise typer.Exit(3)
        out.print("in sync with the policy")


@app.command()
def remove(backend: Optional[str] = BackendOption) -> None:
    """Delete everything dockerguard installed with this backend."""
    engine = _engine(backend)
    removed = engine.remove()
    name = engine.backend()[0].name
    out.print(f"removed dockerguard rules ({name})" if removed else f"nothing installed ({name})")


@app.command()
def backends(as_json: bool = JsonOption) -> None:
    """Probe every backend and show which one `auto` picks, and why."""
    probes = probe_all()
    try:
        detection: Any = detect()
        decision = {"backend": detection.backend, "reason": detection.reason,
                    "evidence": dict(detection.evidence)}
    except DockerguardError as exc:
        decision = {"backend": None, "reason": str(exc), "evidence": {}}
    if as_json:
        _print_json({"backends": [asdict(probe) for probe in probes], "auto": decision})
        return
    table = Table("backend", "available", "details")
    for probe in probes:
        table.add_row(probe.backend, "yes" if probe.available else Text("no", style="red"), probe.reason)
    out.print(table)
    out.print(f"auto -> {decision['backend'] or 'none'}: {decision['reason']}")


def _version(value: bool) -> None:
    if value:
        out.print(f"dockerguard {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    """dockerguard: protect Docker-published ports with one declarative policy."""


def main() -> None:
    try:
        app()  # typer handles --help and usage errors itself (exit 2)
    except DockerguardError as exc:
        err.print(Text.assemble(("error:", "red"), f" {exc}"), soft_wrap=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
