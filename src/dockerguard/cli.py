"""The `dockerguard` command (typer). The only module that prints.

Exit codes: 0 ok, 1 runtime/kernel error (and `diff --exit-code` with changes, `import` with warnings),
2 bad input (policy, arguments, an unreadable `import` file), 3 drift (`status -c`), 4 `apply --exit-code`
changed the kernel.
"""

from __future__ import annotations

import gc
import json
import os
import select
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from typer.core import TyperGroup

from . import DEFAULT_DOCKER_SOCKET, __version__
from .backends import BACKEND_CHOICES, check_backend_name
from .errors import DockerguardError, UsageError

# Imported where a command needs them: `dockerguard --help` and `check` stay fast (rich, the engine,
# the drivers and the Docker client cost most of a start-up).
if TYPE_CHECKING:
    from rich.table import Table
    from rich.text import Text

    from .audit import AuditReport
    from .engine import Engine, Status, Step
    from .policy import Policy

DEFAULT_POLICY = "/etc/dockerguard/policy.toml"
CHANGED_EXIT = 4  # `apply --exit-code`: the kernel was changed

_GLOBAL_FLAGS = ("-v", "--verbose")


class _Group(TyperGroup):
    """Global flags (-v/--verbose) are accepted after the subcommand too: `dockerguard apply -v -c p.toml`
    is `dockerguard -v apply -c p.toml`. Nothing after `--` moves."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            head, tail = args[:cut], args[cut:]
        else:
            head, tail = list(args), []
        command = next((index for index, arg in enumerate(head) if not arg.startswith("-")), None)
        if command is not None:
            moved = [arg for arg in head[command + 1:] if arg in _GLOBAL_FLAGS]
            rest = [arg for arg in head[command + 1:] if arg not in _GLOBAL_FLAGS]
            head = moved + head[:command + 1] + rest
        return super().parse_args(ctx, head + tail)


app = typer.Typer(
    cls=_Group,
    help="One declarative firewall policy for Docker-published ports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode=None,  # plain help: no rich import, and "[host]" in a help text stays as written
)


class _LazyConsole:
    """A rich Console made on first use."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


# markup=False: policy paths, comments and kernel messages may contain [brackets].
out = _LazyConsole(highlight=False, markup=False, soft_wrap=True)  # never fold lines that scripts parse
err = _LazyConsole(stderr=True, highlight=False, markup=False, soft_wrap=True)


def _text(*args: Any, **kwargs: Any) -> Text:
    from rich.text import Text

    return Text(*args, **kwargs)


def _table(*args: Any, **kwargs: Any) -> Table:
    from rich.table import Table

    return Table(*args, **kwargs)


def _grid(**kwargs: Any) -> Table:
    from rich.table import Table

    return Table.grid(**kwargs)

PolicyOption = typer.Option(None, "--config", "-c", show_default=False,
                            help=f"Policy file (TOML; default {DEFAULT_POLICY}); or give it as POLICY.")
PolicyArgument = typer.Argument(None, metavar="[POLICY]", show_default=False,
                                help="Policy file (TOML); the same as -c POLICY.")
BackendOption = typer.Option(
    None, "--backend", "-b", help=f"Override the policy's backend: {', '.join(BACKEND_CHOICES)}."
)
JsonOption = typer.Option(False, "--json", help="Machine-readable output.")
StateDirOption = typer.Option(
    None, "--state-dir", envvar="DOCKERGUARD_STATE_DIR",
    help="History and pending confirmation (default /var/lib/dockerguard; must be root's, 0700).",
)
_options = {"verbose": False}  # global options from the callback
_LEVEL_STYLE = {"ok": "green", "warning": "yellow", "info": ""}


def _engine(backend: Optional[str], **options: Any) -> Engine:
    from .engine import Engine

    options.setdefault("notify", _notice)
    return Engine(None if backend is None else check_backend_name(backend), **options)


def _notice(message: str) -> None:
    """What the engine says while it works (whom a lock is waited for, ignored damaged state files), on
    stderr: stdout stays parseable."""
    err.print(message, soft_wrap=True)


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str)) if out.is_terminal else print(json.dumps(data, default=str))


def _show_steps(steps: Sequence[Step]) -> None:
    """--verbose: what the engine did and how long each step took, on stderr (stdout stays parseable)."""
    if _options["verbose"]:
        _warn_plain([f"  {step.action}: {step.detail} ({step.seconds * 1000:.1f} ms)" for step in steps])


def _policy_path(positional: Optional[str], option: Optional[str], default: Optional[str] = DEFAULT_POLICY
                 ) -> Optional[str]:
    """The policy named as POLICY or -c POLICY (both: only if the same file), else `default`."""
    if positional is not None and option is not None and os.path.normpath(positional) != os.path.normpath(option):
        raise typer.BadParameter(f"two different policies: {positional!r} and -c {option!r}; give one",
                                 param_hint="POLICY / -c")
    return positional or option or default


def load_policy(path: str) -> Policy:
    """policy.load_policy, imported when a command reads a policy: `--help` does not (20 ms)."""
    from .policy import load_policy as load

    return load(path)


def _warn(lines: Sequence[str]) -> None:
    """Warnings on stderr, one `warning: ...` line each (plain print: `check` does not load rich)."""
    _warn_plain([f"warning: {line}" for line in lines])


def _warn_plain(lines: Sequence[str]) -> None:
    sys.stdout.flush()
    sys.stderr.write("".join(f"{line}\n" for line in lines))
    sys.stderr.flush()


def _say(line: str) -> None:
    """An unstyled line on stdout. Plain print: rich takes 40 ms to import, more than a no-op apply's work."""
    print(line, flush=True)


def _policy_warnings(policy: Any) -> None:
    from .lint import policy_warnings

    _warn(policy_warnings(policy))


def _docker_warnings(engine: Engine, policy: Any, applied: bool) -> None:
    _warn(_docker_problems(engine, policy, applied))


def _docker_problems(engine: Engine, policy: Any, applied: bool) -> list[str]:
    """Container entries compiled without Docker (it did not answer): what they will select, and when."""
    if engine.docker_problem is None:
        return []
    selectors = [str(entry.containers) for entry in policy.allow if entry.containers is not None]
    selectors += [str(entry.containers) if entry.containers is not None else f"networks {', '.join(entry.networks)}"
                  for entry in policy.egress if entry.containers is not None or entry.networks]
    if applied:
        return [f"Docker not reachable ({engine.docker_problem}): {'; '.join(selectors)}: select no containers "
                "now (closed); `dockerguard watch` applies again when Docker answers"]
    return [f"{selector}: resolved from Docker when applied; Docker not reachable at {policy.docker_socket} now"
            for selector in selectors]


def _apply_json(result: Any, warnings: Sequence[str]) -> dict[str, Any]:
    """`apply --json`: keys stay; new ones may be added."""
    pending = result.pending
    return {"changed": result.changed, "digest": result.digest, "backend": result.backend,
            "added": result.added, "removed": result.removed, "warnings": list(warnings),
            "history_entry": result.history_entry, "repair": result.repair,
            "pending": None if pending is None else {"token": pending.token, "deadline": pending.deadline}}


def _clock(timestamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(timestamp))


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


@app.command()
def check(positional: Optional[str] = PolicyArgument, config: Optional[str] = PolicyOption) -> None:
    """Validate a policy file; changes nothing."""
    policy = str(_policy_path(positional, config))
    loaded = load_policy(policy)
    # print(), not the rich console: `check` runs in scripts and editors' save hooks; rich costs 40 ms.
    print(f"{policy}: OK ({len(loaded.allow)} allow entries, {len(loaded.sets)} sets, "
          f"backend {loaded.backend}, default {loaded.default})")
    _policy_warnings(loaded)


@app.command()
def plan(positional: Optional[str] = PolicyArgument, config: Optional[str] = PolicyOption,
         backend: Optional[str] = BackendOption) -> None:
    """Print exactly what apply would send to the kernel; changes nothing, needs no root."""
    config = str(_policy_path(positional, config))
    policy = load_policy(config)
    _policy_warnings(policy)
    engine = _engine(backend)
    rendered = engine.render(policy)
    _docker_warnings(engine, policy, applied=False)
    sys.stdout.write(rendered.text if rendered.text.endswith("\n") else rendered.text + "\n")


@app.command()
def diff(
    positional: Optional[str] = PolicyArgument,
    config: Optional[str] = PolicyOption,
    backend: Optional[str] = BackendOption,
    as_json: bool = JsonOption,
    exit_code: bool = typer.Option(False, "--exit-code", help="Exit 1 when apply would change something."),
    state_dir: Optional[str] = StateDirOption,
) -> None:
    """Show what apply would change (+ add, - remove): hooks, rules, set elements. Empty when nothing."""
    config = str(_policy_path(positional, config))
    result = _engine(backend, state_dir=state_dir).diff(load_policy(config))
    if as_json:
        _print_json({"backend": result.backend, "changed": result.changed,
                     "changes": [asdict(change) for change in result.changes]})
    else:
        for change in result.changes:
            out.print(_text(str(change), style="green" if change.op == "+" else "red"), soft_wrap=True)
    if exit_code and result.changed:
        raise typer.Exit(1)


@app.command()
def apply(
    positional: Optional[str] = PolicyArgument,
    config: Optional[str] = PolicyOption,
    backend: Optional[str] = BackendOption,
    confirm: Optional[float] = typer.Option(
        None, "--confirm", metavar="SECONDS",
        help="Roll back automatically after SECONDS unless `dockerguard confirm` (or 'y' on a terminal) "
             "keeps the new rules; survives this process being killed."),
    state_dir: Optional[str] = StateDirOption,
    force: bool = typer.Option(False, "--force", help="Apply [host] rules even if they cut your SSH session."),
    no_guard: bool = typer.Option(
        False, "--no-guard",
        help="No automatic confirmation window when [host] rules change: for boot units and scripts "
             "re-applying a known policy, where nobody could confirm."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the result as one JSON object (changed, digest, backend, added, removed, "
                              "warnings, history_entry, repair, pending); warnings go into it, not to stderr."),
    exit_code: bool = typer.Option(
        False, "--exit-code", help=f"Exit {CHANGED_EXIT} when the kernel was changed (0: it already held the policy)."),
) -> None:
    """Install the policy in one atomic transaction (rolled back if verification fails).

    When the [host] rules change, the lock-out guard refuses a policy that cuts your SSH session
    (unless --force) and rolls the change back after 120 s unless `dockerguard confirm` arrives."""
    config = str(_policy_path(positional, config))
    engine = _engine(backend, state_dir=state_dir)
    loaded: list[Policy] = []
    warnings: list[str] = []

    def warn_first(policy: Policy) -> None:  # the full path: warnings before anything is applied
        from .lint import policy_warnings

        loaded.append(policy)
        warnings.extend(policy_warnings(policy))
        if not as_json:
            _warn(policy_warnings(policy))

    # Parses the file only when it is not the one installed (100,000 sources: most of a no-op's time).
    result = engine.apply_file(config, confirm=confirm, force=force, guard=not no_guard, on_load=warn_first)
    warnings += result.warnings  # the no-op path's: recorded at the verified apply
    if loaded:
        warnings += _docker_problems(engine, loaded[0], applied=True)
    if as_json:
        _print_json(_apply_json(result, warnings))
        if exit_code and result.changed:
            raise typer.Exit(CHANGED_EXIT)
        return
    _warn([*result.warnings, *(_docker_problems(engine, loaded[0], applied=True) if loaded else [])])
    _show_steps(result.steps)
    if not result.changed:
        _say(f"ruleset {result.digest} already installed with backend {result.backend}; nothing changed")
        return
    _say(f"applied ruleset {result.digest} with backend {result.backend}")
    pending = result.pending
    if pending is None:
        if exit_code:
            raise typer.Exit(CHANGED_EXIT)
        return
    if not sys.stdin.isatty():
        why = "" if confirm is not None else "the [host] rules changed (lock-out guard): "
        out.print(f"{why}run `dockerguard confirm` before {_clock(pending.deadline)} "
                  f"(in {pending.deadline - time.time():.0f} s), or the previous ruleset comes back automatically",
                  soft_wrap=True)
        if exit_code:
            raise typer.Exit(CHANGED_EXIT)
        return
    answer = _ask_keep(pending.deadline)
    if answer:
        engine.confirm()
        out.print(f"kept ruleset {pending.policy_digest}", soft_wrap=True)
        if exit_code:
            raise typer.Exit(CHANGED_EXIT)
        return
    undone = engine.expire_pending(pending.token, "declined" if answer is False else "deadline")
    if undone is not None:
        _show_steps(undone.steps)
    out.print("previous ruleset restored" + (" (no answer in time)" if answer is None else ""), soft_wrap=True)
    if answer is None:
        raise typer.Exit(1)


def _ask_keep(deadline: float) -> Optional[bool]:
    """'keep? [y/N]' until the deadline: True (y), False (anything else, EOF, Ctrl-C), None (no answer)."""
    out.print(f"keep the new rules? [y/N] (rolled back at {_clock(deadline)} otherwise) ", end="")
    sys.stdout.flush()
    try:
        while True:
            remaining = deadline - time.time()
            if remaining <= 0:
                out.print()
                return None
            ready, _, _ = select.select([sys.stdin], [], [], remaining)
            if ready:
                return sys.stdin.readline().strip().lower() in ("y", "yes")
    except KeyboardInterrupt:
        out.print()
        return False


@app.command()
def confirm(state_dir: Optional[str] = StateDirOption) -> None:
    """Keep the rules of a pending `apply --confirm`; its rollback timer stands down."""
    from .engine import Engine

    pending = Engine(state_dir=state_dir, notify=_notice).confirm()
    out.print(f"confirmed ruleset {pending.policy_digest} ({pending.backend}); it stays installed", soft_wrap=True)


@app.command()
def rollback(backend: Optional[str] = BackendOption, state_dir: Optional[str] = StateDirOption) -> None:
    """Restore the rules from before the last apply (or remove), verified, and drop it from the history."""
    result = _engine(backend, state_dir=state_dir).rollback()
    _show_steps(result.steps)
    out.print(f"rolled back the {result.action} of {_when(result.changed_at)} (history entry {result.entry}): "
              f"previous ruleset restored and verified ({result.backend})", soft_wrap=True)


@app.command()
def status(
    positional: Optional[str] = typer.Argument(None, metavar="[POLICY]", show_default=False,
                                               help="Also report drift from this policy (the same as -c)."),
    backend: Optional[str] = BackendOption,
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Also report drift from this policy."),
    as_json: bool = JsonOption,
    state_dir: Optional[str] = StateDirOption,
) -> None:
    """Show the backend, whether our hook runs first, one row per policy entry with its counters, what each
    path's default dropped, drift and pending confirmation. Exit 3 on drift from POLICY.

    The entries are those of POLICY, else of the policy file the last apply used. A row's packets and bytes
    are its rules'; "shared" marks rules that serve other entries too (an nft set of many entries' pairs).
    The rules themselves, with counters, follow with --verbose or when there are no rows.

    --json prints one object (keys stay; new ones may be added): backend, installed {backend, hooks,
    rules [{chain, description, packets, bytes}], sets}, in_sync (null without POLICY), detection, path
    [{level, message}], diff, pending, interrupted, history [{number, backend, timestamp, action,
    policy_digest, origin {command, uid, login_uid, reason}}], last_rollback, state_dir, state_error,
    policy_path, entries [{section (allow, deny, host), number, entry, ports, proto, sources, limits,
    packets, bytes (null: not installed), shared, published ["8080/tcp"]}], drops [{path (forward,
    docker-proxy, host), verdict, packets, bytes}], unfinished (null, or the change killed half way:
    {action, backend, pid, started, entry, ...}), current (the operator's policy in force: {policy {path,
    digest, files, backend} or null after a remove, action, time, origin}), watch (null when no watch ran
    here, else {running, stale, state, pid, started, interval, checks, repairs, failures, last_check,
    last_success, last_repair, last_failure, policy, message})."""
    config = _policy_path(positional, config, default=None)
    policy = load_policy(config) if config else None
    result = _engine(backend, state_dir=state_dir).status(policy)
    if as_json:
        _print_json(asdict(result))
    else:
        _print_status(result)
    if result.in_sync is False:
        raise typer.Exit(3)


def _print_status(result: Status) -> None:
    grid = _grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    detection = f" (auto: {result.detection.reason})" if result.detection is not None else ""
    grid.add_row("backend", result.backend + detection)
    if result.installed is None:
        grid.add_row("installed", _text("nothing", style="yellow"))
    for index, finding in enumerate(result.path):
        grid.add_row("path" if index == 0 else "", _text(f"{finding.level}: {finding.message}",
                                                          style=_LEVEL_STYLE.get(finding.level, "")))
    if result.pending is not None:
        left = result.pending.deadline - time.time()
        text = (f"apply --confirm of ruleset {result.pending.policy_digest}: rolled back at "
                f"{_clock(result.pending.deadline)} (in {left:.0f} s) unless `dockerguard confirm`"
                if left > 0 else f"apply --confirm of ruleset {result.pending.policy_digest}: OVERDUE by "
                                 f"{-left:.0f} s (its timer is gone; the next apply or rollback does it)")
        grid.add_row("pending", _text(text, style="yellow"))
    if result.unfinished is not None:
        unfinished = result.unfinished
        grid.add_row("interrupted", _text(
            f"the last {unfinished.action} ({unfinished.backend}, pid {unfinished.pid}, {_when(unfinished.started)}) "
            "was interrupted before it finished: the ruleset may be half changed (e.g. IPv4 new, IPv6 old); the "
            f"next apply, rollback or remove first restores the ruleset saved in history entry {unfinished.entry}",
            style="red"))
    for interrupted in result.interrupted:
        grid.add_row("rollback", _text(f"rollback of ruleset {interrupted.policy_digest} did not finish: "
                                      "run `dockerguard rollback`", style="red"))
    last = result.last_rollback
    if last is not None:
        outcome = "restored and verified" if last.get("ok") else f"FAILED: {last.get('error')}"
        grid.add_row("last rollback", _text(f"{_when(float(last.get('time', 0)))} ({last.get('reason')}): {outcome}",
                                           style="" if last.get("ok") else "red"))
    current = result.current
    if current is not None:
        what = "no policy (dockerguard's rules removed)" if current.policy is None else (
            f"{current.policy.path} ({current.policy.digest[:12]}, {current.policy.backend})")
        grid.add_row("in force", f"{what}: {current.action} at {_when(current.time)}"
                                 + (f" by {current.origin}" if current.origin is not None else ""))
    if result.history:
        newest = result.history[-1]
        count = f"{len(result.history)} change{'s' if len(result.history) != 1 else ''}"
        by = f" by {newest.origin}" if newest.origin is not None else ""
        grid.add_row("history", f"{count} recorded in {result.state_dir} (last: "
                                f"{newest.action} at {_when(newest.timestamp)}{by}); `dockerguard rollback` undoes it")
    watch = result.watch
    if watch is not None:
        if not watch["running"]:
            line, style = f"not running (last seen {_when(watch['last_check'] or watch['started'])})", "yellow"
        elif watch["stale"]:
            line, style = (f"STALE: pid {watch['pid']} has not checked since "
                           f"{_when(watch['last_check'] or watch['started'])}", "red")
        else:
            line = (f"{watch['state']} (pid {watch['pid']}, last check {_when(watch['last_check'] or watch['started'])}"
                    f"; {watch['repairs']} repairs, {watch['failures']} failures since {_when(watch['started'])})")
            style = "green" if watch["state"] == "enforcing" else "yellow"
        grid.add_row("watch", _text(line + (f": {watch['message']}" if watch["state"] != "enforcing"
                                            and watch.get("message") else ""), style=style))
    if result.state_error is not None:
        grid.add_row("state", _text(result.state_error, style="red"))
    if result.diff is not None:
        grid.add_row("policy", _text("in sync", style="green") if not result.diff.changed else _text(
            f"DRIFT: {len(result.diff.changes)} differences from the policy (+ apply would add, - remove)",
            style="red"))
    if result.policy_path is not None:
        grid.add_row("entries", f"of {result.policy_path}")
    for drops in result.drops:
        grid.add_row("dropped" if drops is result.drops[0] else "",
                     f"{drops.path}: {drops.packets} packets, {_size(drops.bytes)} by the default {drops.verdict}")
    _print_wide(grid)
    if result.entries:
        table = _table("entry", "ports", "proto", "sources", "limits", "packets", "bytes", "published")
        for row in result.entries:
            counted = row.packets is not None
            table.add_row(f"{row.section} {row.number}" + (f": {row.entry}" if row.entry != f"{row.section} "
                                                                                   f"{row.number}" else ""),
                          row.ports, row.proto, row.sources, row.limits,
                          (str(row.packets) + (" shared" if row.shared else "")) if counted else "-",
                          _size(row.bytes) if row.bytes is not None else "-", ", ".join(row.published))
        _print_wide(table)
    if result.installed is not None and (not result.entries or _options["verbose"]):
        table = _table("chain", "rule", "packets", "bytes")
        for rule in result.installed.rules:
            table.add_row(rule.chain, rule.description, str(rule.packets), str(rule.bytes))
        _print_wide(table)
    if result.diff is not None:
        for change in result.diff.changes:
            out.print(_text(f"  {change}", style="green" if change.op == "+" else "red"), soft_wrap=True)


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


def _print_wide(renderable: Any) -> None:
    """On a terminal as wide as it is; elsewhere (a pipe, a file) never wrapped nor cut: one line per row."""
    if out.is_terminal:
        out.print(renderable)
        return
    import io

    from rich.console import Console

    if getattr(renderable, "box", None) is not None:
        renderable.box = None  # plain columns: no box-drawing characters for grep and awk
        renderable.pad_edge = False
    text = io.StringIO()
    Console(file=text, width=100_000, highlight=False, markup=False, color_system=None).print(
        renderable, crop=False, overflow="ignore", no_wrap=True)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in text.getvalue().splitlines()))


@app.command()
def metrics(
    backend: Optional[str] = BackendOption,
    config: Optional[str] = typer.Option(
        None, "--config", "-c", help="Attribute counters to this policy's entries; report drift and which "
                                     "published ports its allows cover."),
    textfile: Optional[str] = typer.Option(
        None, "--textfile", metavar="PATH",
        help="Write to PATH (temporary file renamed into place: node_exporter's textfile collector) instead of "
             "stdout."),
    state_dir: Optional[str] = StateDirOption,
) -> None:
    """Prometheus text exposition of the installed rules' counters: per policy entry, the defaults' drops per
    path, every rule; with -c also drift and published ports; the ban sets' size, the last apply."""
    from . import metrics as exposition  # prometheus_client loads only here

    report = _engine(backend, state_dir=state_dir).metrics(load_policy(config) if config else None)
    for note in report.notes:
        _notice(f"note: {note}")
    if textfile is None:
        sys.stdout.write(exposition.exposition(report))
        return
    try:
        exposition.write_textfile(report, textfile)
    except OSError as exc:
        raise UsageError(f"cannot write {textfile}: {exc}") from None


@app.command("trace")
def trace_command(
    source: str = typer.Argument(..., metavar="SRC", help="The client's address (IPv4 or IPv6)."),
    port: int = typer.Argument(..., metavar="DPORT", help="The host port it connects to (the published port)."),
    proto: str = typer.Option("tcp", "--proto", help="tcp or udp."),
    path: str = typer.Option("forward", "--path",
                             help="forward: to a container through a published port; input: addressed to the host "
                                  "(docker-proxy's path, [host])."),
    interface: Optional[str] = typer.Option(None, "--interface", "-i", help="The interface it enters (default: an "
                                                                             "external one)."),
    live: Optional[float] = typer.Option(
        None, "--live", metavar="SECONDS",
        help="nft backend: also watch the kernel trace such packets for SECONDS (nft monitor trace; a temporary "
             "rule in dockerguard's own table marks them, removed afterwards). Send the connection meanwhile."),
    config: str = PolicyOption,
    backend: Optional[str] = BackendOption,
    as_json: bool = JsonOption,
) -> None:
    """Which rule of the policy decides a new connection from SRC to DPORT: walks the compiled rules in the
    order every backend installs them (bans, denies, allows, default) and prints the deciding one."""
    from .net import PROTOCOLS, AddressError, parse_network
    from .trace import PATHS, Connection

    try:
        address = parse_network(source)
    except AddressError as exc:
        raise UsageError(str(exc)) from None
    if address.prefixlen != address.max_prefixlen:
        raise UsageError(f"SRC must be one address, not the network {source}")
    if proto not in PROTOCOLS:
        raise UsageError(f"--proto must be one of {', '.join(PROTOCOLS)}, not {proto!r}")
    if path not in PATHS:
        raise UsageError(f"--path must be one of {', '.join(PATHS)}, not {path!r}")
    if not 1 <= port <= 65535:
        raise UsageError(f"DPORT must be 1-65535, not {port}")
    engine = _engine(backend)
    policy = load_policy(config)
    connection = Connection(address, port, proto, path, interface)
    decision = engine.trace(policy, connection)
    events: tuple[Any, ...] = ()
    if live is not None:
        _notice(f"tracing packets from {source} to {port}/{proto} for {live:g} s: send the connection now")
        events = engine.live_trace(policy, connection, live)
    if as_json:
        _print_json({"source": source, "port": port, "proto": proto, "path": path, "interface": interface,
                     **asdict(decision), **({"live": [asdict(event) for event in events]} if live is not None else {})})
        return
    where = f" (chain {decision.role})" if decision.role else ""
    entry = f"{decision.section}[{decision.entry}]" if decision.section is not None else decision.kind
    comment = f" \"{decision.comment}\"" if decision.comment else ""
    out.print(f"{source} -> {port}/{proto} ({path}): {decision.verdict.upper()}", soft_wrap=True)
    out.print(f"decided by {entry}{comment}: {decision.rule}{where}", soft_wrap=True)
    for other in decision.also:
        out.print(f"also matching (not reached): {other}", soft_wrap=True)
    if decision.steps:
        table = _table("chain", "kind", "rule", "matches", "verdict")
        for step in decision.steps:
            table.add_row(step.role, step.kind, step.rule, "yes" if step.matched else "no", step.verdict or "")
        _print_wide(table)
    for note in decision.notes:
        out.print(f"note: {note}", soft_wrap=True)
    if live is not None:
        _print_live(events)


def _print_live(events: Sequence[Any]) -> None:
    """Per traced packet, the rules of ours it met and the verdict of the last one; others' rules dimmed."""
    if not events:
        out.print("live: no matching packet was traced", soft_wrap=True)
        return
    packets: dict[str, list[Any]] = {}
    for event in events:
        packets.setdefault(event.trace, []).append(event)
    for number, (trace_id, seen) in enumerate(packets.items(), start=1):
        out.print(f"live packet {number} (trace id {trace_id}):", soft_wrap=True)
        for event in seen:
            out.print(f"  {event.table} {event.chain}: {event.rule} -> {event.verdict}",
                      style="" if event.ours else "dim", soft_wrap=True)


@app.command()
def audit(
    positional: Optional[str] = PolicyArgument,
    config: Optional[str] = PolicyOption,
    backend: Optional[str] = BackendOption,
    as_json: bool = JsonOption,
) -> None:
    """Who can reach each published port now, per family and path (forwarded / docker-proxy), against what
    the policy allows. Exit 3 when a port is open to more sources than the policy allows."""
    config = str(_policy_path(positional, config))
    report = _engine(backend).audit(load_policy(config))
    if as_json:
        _print_json({"backend": report.backend, "in_sync": report.in_sync, "open": len(report.open),
                     "reaches": [{**asdict(reach), "family": reach.family.value, "verdict": reach.verdict}
                                 for reach in report.reaches],
                     "unmentioned": [f"{port}/{proto}" for proto, port in report.unmentioned],
                     "path": [asdict(finding) for finding in report.path],
                     "evidence": dict(report.evidence)})
    else:
        _print_audit(report)
    if report.open:
        raise typer.Exit(3)


def _print_audit(report: AuditReport) -> None:
    table = _table("port", "family", "path", "reachable by", "policy allows", "verdict",
                  title=f"published ports, backend {report.backend}")
    for reach in report.reaches:
        style = {"ok": "green", "OPEN": "bold red", "closed": "yellow"}[reach.verdict]
        table.add_row(f"{reach.port}/{reach.proto}", f"ipv{reach.family.value}", reach.path,
                      _who(reach.reachable) + (f" ({reach.note})" if reach.note else ""), _who(reach.allowed),
                      _text(reach.verdict, style=style))
    _print_wide(table)
    if not report.reaches:
        out.print("no published ports found (evidence below)")
    for proto, port in report.unmentioned:
        out.print(f"{port}/{proto} is published but no allow entry mentions it: nobody may connect", soft_wrap=True)
    for finding in report.path:
        if finding.level == "warning":
            out.print(_text(f"warning: {finding.message}", style="yellow"), soft_wrap=True)
    if not report.in_sync:
        out.print(_text("the installed rules differ from the policy (see `dockerguard diff`)", style="yellow"))
    for source, said in report.evidence:
        out.print(f"  {source}: {said}", style="dim", soft_wrap=True)
    opened = len(report.open)
    out.print(_text(f"{opened} path{'s are' if opened != 1 else ' is'} open beyond the policy", style="bold red")
              if opened else _text("nothing is reachable beyond the policy", style="green"), soft_wrap=True)


def _who(sources: Optional[tuple[str, ...]]) -> str:
    if sources is None:
        return "anyone (not filtered)"
    if not sources:
        return "nobody"
    if any(source in ("0.0.0.0/0", "::/0") for source in sources):
        return "anyone"
    shown = ", ".join(sources[:4])
    return shown + (f" (+{len(sources) - 4} more)" if len(sources) > 4 else "")


@app.command()
def remove(backend: Optional[str] = BackendOption, state_dir: Optional[str] = StateDirOption) -> None:
    """Delete everything dockerguard installed (with --backend: with that backend only; without: with every
    backend that holds rules of ours). Recorded, so `rollback` puts them back; when the state directory is
    unusable, the rules are still removed and a warning says so."""
    removed = _engine(backend, state_dir=state_dir).remove()
    out.print(f"removed dockerguard's rules ({', '.join(removed)})" if removed else
              f"nothing installed{f' ({backend})' if backend else ''}")


_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(text: str) -> Optional[int]:
    """"3600", "90s", "30m", "1h", "2d" -> seconds; "-1", "0" or "" (fail2ban's permanent) -> None."""
    text = text.strip()
    number, unit = (text[:-1], text[-1]) if text[-1:] in _DURATION else (text, "s")
    if not (number.isascii() and number.lstrip("-").isdigit()):
        raise UsageError(f"--timeout: expected seconds or a duration like 30m, 1h, 2d; got {text!r}")
    seconds = int(number) * _DURATION[unit]
    return seconds if seconds > 0 else None


@app.command()
def ban(
    address: str = typer.Argument(..., help="Address or CIDR (IPv4 or IPv6)."),
    timeout: str = typer.Option("", "--timeout", "-t", help="For how long: 3600, 30m, 1h, 2d (default: until unban)."),
    backend: Optional[str] = BackendOption,
) -> None:
    """Drop everything from ADDRESS on every path dockerguard judges, until unbanned or the timeout ends.
    The ban sets survive applies, rollbacks and `watch` repairs (fail2ban and crowdsec write to them too)."""
    seconds = _seconds(timeout) if timeout else None
    network = _engine(backend).ban(address, seconds)
    out.print(f"banned {network}" + (f" for {seconds} s" if seconds else " until unbanned"), soft_wrap=True)


@app.command()
def unban(address: str = typer.Argument(..., help="Address or CIDR."), backend: Optional[str] = BackendOption) -> None:
    """Take ADDRESS out of the ban sets."""
    if not _engine(backend).unban(address):
        out.print(f"{address} was not banned")
        raise typer.Exit(1)
    out.print(f"unbanned {address}")


@app.command("bans")
def list_bans(backend: Optional[str] = BackendOption, as_json: bool = JsonOption) -> None:
    """List the banned sources and how long each ban still lasts."""
    found = _engine(backend).bans()
    if as_json:
        _print_json([asdict(item) for item in found])
        return
    for item in found:
        out.print(f"{item.network}  " + (f"{item.expires_in} s left" if item.expires_in else "until unbanned"))
    if not found:
        out.print("nobody is banned")



@app.command()
def backends(
    as_json: bool = JsonOption,
    docker_socket: str = typer.Option(DEFAULT_DOCKER_SOCKET, "--docker-socket",
                                      help="Docker API socket, asked which firewall backend Docker uses."),
) -> None:
    """Probe every backend and show which one `auto` picks, and why."""
    from .backends import probe_all
    from .detect import detect
    from .docker import DockerClient

    probes = probe_all()
    try:
        detection: Any = detect(DockerClient(docker_socket))
        decision = {"backend": detection.backend, "reason": detection.reason,
                    "evidence": dict(detection.evidence)}
    except DockerguardError as exc:
        # A detection conflict carries the counts that caused it.
        decision = {"backend": None, "reason": str(exc), "evidence": dict(exc.evidence)}
    if as_json:
        _print_json({"backends": [asdict(probe) for probe in probes], "auto": decision})
        return
    table = _table("backend", "available", "details")
    for probe in probes:
        facts = "".join(f"\n{key}: {value}" for key, value in probe.details if key in ("commit", "ipsets"))
        table.add_row(probe.backend, "yes" if probe.available else _text("no", style="red"), probe.reason + facts)
    _print_wide(table)
    out.print(f"auto -> {decision['backend'] or 'none'}: {decision['reason']}", soft_wrap=True)
    for key, value in decision["evidence"].items():
        out.print(f"  {key}: {value}", soft_wrap=True)


@app.command()
def watch(
    positional: Optional[str] = PolicyArgument,
    config: Optional[str] = PolicyOption,
    backend: Optional[str] = BackendOption,
    interval: float = typer.Option(5.0, "--interval", min=0.2, help="Seconds between drift checks."),
    docker_socket: Optional[str] = typer.Option(
        None, "--docker-socket", help="Docker API socket (default: the policy's docker_socket)."),
    state_dir: Optional[str] = StateDirOption,
) -> None:
    """Keep the policy in place: repair it on Docker events, dockerd restarts and drift (e.g. a flush).

    It runs the policy it loaded at start: editing the file changes nothing until SIGHUP (`systemctl reload
    dockerguard-watch`), which validates the file and applies it like `apply` does (lock-out guard and
    confirmation window included), or logs one error and keeps the running policy. A rollback, apply or
    remove by another dockerguard is followed, not fought. Repairs are logged (a foreign change as a warning
    naming what differed), not recorded as changes. Runs until SIGTERM or Ctrl-C; logs to stderr. Run by
    systemd (Type=notify): READY=1 once the policy is in place, STATUS= when it changes, WATCHDOG=1 after
    every check; log lines carry journald's priority prefixes (<3> error, <4> warning, <6> info) when stderr
    is the journal. Its health (last check, repairs, failures) is in `status --json` and `metrics`."""
    config = str(_policy_path(positional, config))
    gc.enable()  # main() turned it off for one-shot commands; this one runs for months
    import logging
    import signal
    import threading

    from .docker import DockerClient
    from .systemd import JournalFormatter, Notifier, journal_stderr
    from .watch import Watcher

    handler = logging.StreamHandler(sys.stderr)
    journal = journal_stderr()  # run by systemd: journald takes the priority from a <N> prefix
    handler.setFormatter(JournalFormatter("%(message)s") if journal else
                         logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    notifier = Notifier()
    policy = load_policy(config)  # refuse to start on a bad policy; edits are read again on SIGHUP only
    socket_path = docker_socket or policy.docker_socket
    docker = DockerClient(socket_path)
    engine = _engine(backend, docker=docker, state_dir=state_dir, notify=logging.getLogger("dockerguard").warning)
    stop = threading.Event()
    watcher = Watcher(engine, lambda: load_policy(config), docker, interval=interval, policy=policy,
                      on_check=notifier.checked)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: watcher.request_reload())
    logging.getLogger("dockerguard").info("watching %s (Docker API %s, drift check every %g s; SIGHUP reloads "
                                          "the file)%s", config, socket_path, interval,
                                          "; systemd notified" if notifier.enabled else "")
    try:
        watcher.run(stop)
    finally:
        notifier.stopping()


@app.command()
def export(
    fmt: str = typer.Option(..., "--format", "-f", help="iptables-restore, ipset, nft or systemd."),
    positional: Optional[str] = PolicyArgument,
    config: Optional[str] = PolicyOption,
    backend: Optional[str] = BackendOption,
    family: int = typer.Option(4, "--family", help="iptables-restore: address family, 4 or 6."),
    watch: bool = typer.Option(False, "--watch", help="systemd: a service running `dockerguard watch`."),
) -> None:
    """Print a persistence file: an `nft -f` file, iptables-restore text, or a systemd unit that applies
    the policy at boot before Docker starts (--watch: the unit running `dockerguard watch`)."""
    config = str(_policy_path(positional, config))
    from .export import FORMATS, export_text

    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r} (expected one of: {', '.join(FORMATS)})")
    if family not in (4, 6):
        raise UsageError(f"--family must be 4 or 6, got {family}")
    policy = load_policy(config)
    engine = _engine(backend)
    ruleset = None if fmt == "systemd" else engine.compile(policy)
    sys.stdout.write(export_text(policy, fmt, ruleset=ruleset, backend=backend, command=_entry_point(),
                                 family=family, watch=watch))


def _entry_point() -> list[str]:
    """How systemd should start dockerguard: this very script, else the one on PATH, else `python -m`."""
    script = Path(sys.argv[0])
    if script.name == "dockerguard" and script.is_file():
        return [str(script.absolute())]
    found = shutil.which("dockerguard")
    if found:
        return [os.path.abspath(found)]
    return [sys.executable, "-m", "dockerguard"]


RootOption = typer.Option("/", "--root", metavar="DIR",
                          help="Work under DIR instead of / (a package build, a test): paths inside the files stay "
                               "the installed system's, and systemctl is left to you.")
DryRunOption = typer.Option(False, "--dry-run", help="Print what would be done; change nothing.")


@app.command("install")
def install_command(
    root: str = RootOption,
    config: str = typer.Option(
        DEFAULT_POLICY, "--config", "-c",
        help="The policy the units apply; written from a commented template when no file is there "
             "(an existing file is never overwritten)."),
    backend: Optional[str] = typer.Option(
        None, "--backend", "-b", help="Write --backend NAME into the units (default: the policy's backend, read "
                                      "at every start)."),
    watch: bool = typer.Option(True, "--watch/--no-watch", help="Also install dockerguard-watch.service."),
    now: bool = typer.Option(False, "--now", help="Start the units too (systemctl enable --now); otherwise they "
                                                  "start at the next boot."),
    force: bool = typer.Option(False, "--force", help="Replace files and links in the way that dockerguard did not "
                                                      "write (never the policy)."),
    dry_run: bool = DryRunOption,
) -> None:
    """Install dockerguard on this host (root): the policy from a template, the systemd units (the rules are
    applied before Docker starts; the watch keeps them), bash completion, the man page and
    /usr/local/sbin/dockerguard. Recorded in /var/lib/dockerguard/install-manifest.json for uninstall."""
    from . import install as setup
    from .manpage import render

    if backend is not None:
        check_backend_name(backend)
    target = setup.Root(root)
    _need_root(target, dry_run)
    command = _entry_point()
    items = setup.install_items(config=config, command=command, backend=backend, watch=watch,
                                man_page=render(typer.main.get_command(app)), link_target=_link_target(command))
    policy = setup.check_config_path(config)
    report = setup.install(target, items, force=force, dry_run=dry_run, now=now,
                           settings={"policy": policy, "backend": backend})
    steps = report.next_steps
    if any(action.verb == "create" and action.path == target.shown(policy) for action in report.actions):
        steps.insert(0, f"edit {policy} (a template), then: dockerguard check {policy} && dockerguard diff -c {policy}")
    if target.systemd_running() and not now:
        steps.append(f"systemctl start {' '.join(setup.units_in(items))}  (enabled: they start at every boot)")
    _print_report(target, report, dry_run)


@app.command("uninstall")
def uninstall_command(
    root: str = RootOption,
    backend: Optional[str] = typer.Option(
        None, "--backend", "-b", help="Remove the rules of this backend (default: the one install wrote into the "
                                      "units, else the policy's)."),
    keep_rules: bool = typer.Option(False, "--keep-rules", help="Leave the rules in the kernel."),
    dry_run: bool = DryRunOption,
) -> None:
    """Undo `dockerguard install` (root): stop and disable the units, remove the rules (`dockerguard remove`),
    and delete each file, link and directory install created while it is still as install left it; an
    edited policy stays."""
    from . import install as setup

    target = setup.Root(root)
    _need_root(target, dry_run)
    manifest = setup.read_manifest(target) or {}

    def remove_rules() -> str:
        engine = _engine(backend or _installed_backend(manifest))
        try:
            removed = engine.remove()
        except DockerguardError:
            print("uninstall stopped before deleting any file (the units are stopped): fix the cause and run it "
                  "again, or pass --keep-rules to leave the rules in place", file=sys.stderr)
            raise
        name = engine.backend()[0].name
        return f"removed the rules ({name})" if removed else f"no rules installed ({name})"

    report = setup.uninstall(target, dry_run=dry_run, keep_rules=keep_rules,
                             remove_rules=remove_rules if target.is_system else None)
    _print_report(target, report, dry_run)


def _need_root(target: Any, dry_run: bool) -> None:
    if target.is_system and not dry_run and os.geteuid() != 0:
        raise UsageError("this writes to /etc, /usr and /var: run it as root (or try --dry-run, or --root DIR)")


def _link_target(command: list[str]) -> Optional[str]:
    """What /usr/local/sbin/dockerguard should point at: the script running now (None for `python -m`)."""
    return os.path.realpath(command[0]) if len(command) == 1 else None


def _installed_backend(manifest: dict[str, Any]) -> Optional[str]:
    """The backend install wrote into the units, else the installed policy's (when it still loads)."""
    if manifest.get("backend"):
        return str(manifest["backend"])
    try:
        chosen = load_policy(str(manifest.get("policy") or DEFAULT_POLICY)).backend
    except DockerguardError:
        return None  # auto
    return None if chosen == "auto" else chosen


def _print_report(target: Any, report: Any, dry_run: bool) -> None:
    if not target.is_system:
        print(f"under {target.path} (paths inside the files are the installed system's):")
    for action in report.actions:
        print(action.line(dry_run))
    if report.next_steps:
        print("next steps:")
        for step in report.next_steps:
            print(f"  {step}")


@app.command("import")
def import_rules(
    file: str = typer.Argument(..., metavar="FILE",
                               help="rules.v4/rules.v6 (iptables-save), /etc/ufw/after.rules or user.rules, or saved "
                                    "`ufw status` output; - reads stdin."),
    fmt: str = typer.Option("auto", "--format", "-f",
                            help="auto, iptables-save, ufw-after-rules (any ufw rules file) or ufw-status."),
    family: Optional[int] = typer.Option(None, "--family", help="4 or 6 (default: from the file)."),
    output: Optional[str] = typer.Option(None, "--output", "-o",
                                         help="Write the policy to this new file (an existing one is not replaced)."),
    docker_socket: Optional[str] = typer.Option(
        None, "--docker-socket",
        help="Ask Docker (this API socket) which host ports publish the container ports the old rules matched."),
) -> None:
    """Turn hand-written DOCKER-USER rules or a ufw-docker setup into a policy (printed, or written to -o).

    Warnings (FILE:LINE: warning: ...) go to stderr and into the policy as REVIEW comments. Exit 0: everything
    mapped; 1: the policy needs review (warnings); 2: unreadable input, or -o exists."""
    from .migrate import import_text

    if output is not None and os.path.lexists(output):
        raise UsageError(f"{output} already exists; refusing to overwrite it (remove it or pick another name)")
    name = "<stdin>" if file == "-" else file
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        from .errors import MigrationError

        raise MigrationError(f"cannot read: {exc}", file=name) from None
    containers, docker_problem = None, None
    if docker_socket is not None:
        from .docker import DockerClient

        try:
            containers = DockerClient(docker_socket).containers()
        except DockerguardError as exc:  # the import still works; it just cannot translate ports
            docker_problem = f"Docker did not answer ({exc}): container ports are not translated"
    result = import_text(text, name, fmt, family, containers, docker_socket)
    problems = [f"{name}: warning: {docker_problem}"] if docker_problem else []
    for finding in result.findings:
        where = f"{name}:{finding.line}" if finding.line is not None else name
        problems.append(f"{where}: warning: {finding.message}" + (f"; rule: {finding.rule}" if finding.rule else ""))
    if output is None:
        sys.stdout.write(result.text)
    else:
        _write_new(output, result.text)
        print(f"wrote {output}: {len(result.entries)} allow entries, {len(problems)} warnings; next: review it, "
              f"then `dockerguard plan -c {output}`")
    sys.stdout.flush()
    sys.stderr.write("".join(line + "\n" for line in problems))
    if problems:
        raise typer.Exit(1)


def _write_new(path: str, text: str) -> None:
    """Write `path` only if it does not exist, never half: a temporary file linked into place (link refuses
    to replace), with the permissions a plain new file gets."""
    import tempfile

    umask = os.umask(0)
    os.umask(umask)
    fd, temporary = tempfile.mkstemp(prefix=".dockerguard-import-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~umask)
        try:
            os.link(temporary, path)
        except FileExistsError:
            raise UsageError(f"{path} already exists; refusing to overwrite it") from None
    finally:
        os.unlink(temporary)


@app.command("_rollback-timer", hidden=True)
def rollback_timer(token: str = typer.Argument(...), state_dir: Optional[str] = StateDirOption) -> None:
    """Internal: the detached process `apply --confirm` starts (see state.spawn_rollback_timer)."""
    from .engine import Engine
    from .state import StateDir, check_token

    found = StateDir(state_dir).read_pending(check_token(token))
    if found is not None:
        Engine(found.pending.backend, state_dir=state_dir).run_rollback_timer(token)


_DEMO_GOT = {"open": "through", "timeout": "blocked (no answer)", "refused": "blocked (refused)",
             "unreachable": "blocked (unreachable)"}


@app.command()
def demo(
    backend: str = typer.Option(
        "nft", "--backend", "-b", help=f"Backend to try: {', '.join(BACKEND_CHOICES)} (auto: detected in the sandbox)."
    ),
    docker_firewall: Optional[str] = typer.Option(
        None, "--docker-firewall",
        help="How the sandbox's Docker runs its firewall: iptables-nft, iptables-legacy or nftables (Docker 29+). "
             "Default: the backend's own; iptables-nft for nft and auto.",
    ),
) -> None:
    """Try dockerguard safely: a throw-away sandbox (network namespaces) with a Docker-like host gets an example
    policy, outside clients probe its published ports, then everything is removed. Needs root; the host's own
    firewall and network are not touched. Exit 0 when every outcome matched the policy."""
    from .demo import run_demo  # only this command needs the sandbox

    result = run_demo(backend, docker_firewall,
                      progress=lambda message: out.print(message, style="dim", soft_wrap=True))
    out.print("policy:", soft_wrap=True)
    out.print("\n".join(f"  {line}" for line in result.policy.strip().splitlines()), style="dim", soft_wrap=True)
    through = sum(row.through for row in result.before)
    out.print(f"without dockerguard: {through} of {len(result.before)} probes got through "
              "(Docker publishes all of these ports)", soft_wrap=True)
    table = _table("source", "port", "expected", "got", "ok",
                  title=f"with the policy, backend {result.backend}, Docker firewall {result.docker_firewall}")
    for row in result.rows:
        check = row.check
        table.add_row(f"{check.source} ({check.label})", f"{check.port}/{check.proto}",
                      "through" if check.expected else "blocked", _DEMO_GOT.get(row.outcome, row.outcome),
                      _text("yes", style="green") if row.ok else _text("NO", style="bold red"))
    out.print(table)
    through = sum(row.through for row in result.after_remove)
    out.print(f"after `dockerguard remove`: {through} of {len(result.after_remove)} probes got through again",
              soft_wrap=True)
    if result.ok:
        out.print(f"demo passed: every outcome matched the policy ({result.seconds:.1f} s); the sandbox is gone",
                  style="green", soft_wrap=True)
        return
    wrong = len(result.mismatches)
    problems = [f"{wrong} outcome{' differs' if wrong == 1 else 's differ'} from the policy"] if wrong else []
    problems += [] if result.baseline_ok else ["some published ports were closed before dockerguard ran"]
    problems += [] if result.restored_ok else ["some published ports stayed closed after remove"]
    out.print(f"demo FAILED: {'; '.join(problems)}; the sandbox is gone", style="bold red", soft_wrap=True)
    raise typer.Exit(1)

def _version(value: bool) -> None:
    if value:
        out.print(f"dockerguard {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Show the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show what the engine did, with timings."),
) -> None:
    """dockerguard: protect Docker-published ports with one declarative policy."""
    _options["verbose"] = verbose


def main() -> None:
    # A one-shot command at 100,000 sources allocates a million small objects (parsed policy, compiled
    # sets, listings) and keeps nearly all of them to the end: the cyclic collector would walk them again
    # and again for garbage that is not there, a fifth of an apply's time. `watch` turns it back on.
    gc.disable()
    try:
        app()  # typer handles --help and usage errors itself (exit 2)
    except DockerguardError as exc:
        _show_steps(exc.steps)
        from rich.text import Text

        for line in str(exc).split("\n"):  # a policy with several mistakes: one line each
            err.print(Text.assemble(("error:", "red"), f" {line}"), soft_wrap=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
