"""`dockerguard install` / `uninstall`: put dockerguard's files in place on a host, and take back exactly
those.

install writes the policy from a commented template (only where no file exists: never overwritten), the
two systemd units (export.apply_unit / export.watch_unit), bash completion (typer's own script, what
`--show-completion bash` prints), the man page (manpage.py, from the CLI's help) and the link
/usr/local/sbin/dockerguard to the running script. Every file, link and directory it creates is recorded
with what it wrote (a SHA-256, a link target) in a manifest; uninstall removes an entry only while it
still is what install wrote, so an edited policy, a replaced unit or a directory someone else filled stay.

`root` is a prefix (like DESTDIR): paths inside files are the installed system's (`/etc/...`), files
go to `root/etc/...`. systemctl runs only for root "/" on a host where systemd is running; otherwise
the commands are returned as next steps. Nothing here touches the firewall: the CLI passes
`remove_rules` for uninstall.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from . import __version__
from .backends.common import run_tool
from .errors import UsageError
from .export import APPLY_UNIT, WATCH_UNIT, apply_unit, safe_text, watch_unit

DEFAULT_POLICY = "/etc/dockerguard/policy.toml"
MANIFEST = "/var/lib/dockerguard/install-manifest.json"
UNIT_DIR = "/etc/systemd/system"
BASH_COMPLETION = "/usr/share/bash-completion/completions/dockerguard"
MAN_PAGE = "/usr/local/share/man/man8/dockerguard.8"
SBIN_LINK = "/usr/local/sbin/dockerguard"
_PRIVATE_DIRS = {"/var/lib/dockerguard"}  # the state directory: snapshots describe the firewall (0700)
_MANIFEST_FORMAT = 1

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class Item:
    """One thing install puts in place: a file (`content`) or a symlink (`target`)."""

    path: str  # as on the installed system
    content: bytes | None = None
    target: str | None = None
    mode: int = 0o644
    never_overwrite: bool = False  # the policy: an existing file is the admin's
    note: str = ""

    @property
    def kind(self) -> str:
        return "file" if self.content is not None else "symlink"


@dataclass(frozen=True)
class Action:
    """What install/uninstall did (or, in a dry run, would do) to one path."""

    verb: str  # create, replace, unchanged, keep, mkdir, link, remove, rmdir, leave, gone, run, skip
    path: str
    detail: str = ""

    def line(self, dry_run: bool) -> str:
        words = {"create": "write", "replace": "replace", "mkdir": "create directory", "link": "link",
                 "remove": "remove", "rmdir": "remove directory", "run": "run"}
        verb = f"would {words[self.verb]}" if dry_run and self.verb in words else self.verb
        return f"{verb:<16} {self.path}" + (f"  ({self.detail})" if self.detail else "")


@dataclass
class Report:
    actions: list[Action] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)


# -- what install writes -------------------------------------------------------------------------------
def policy_template() -> bytes:
    from importlib.resources import files

    return files("dockerguard").joinpath("policy-template.toml").read_bytes()


def completion_script(shell: str = "bash", prog_name: str = "dockerguard") -> str:
    """typer's completion script: the one `dockerguard --show-completion bash` prints. It calls
    `dockerguard` with _DOCKERGUARD_COMPLETE set, so completions always match the installed CLI."""
    from typer._completion_shared import get_completion_script  # typer >= 0.4, vendored click or not

    complete_var = "_{}_COMPLETE".format(prog_name.replace("-", "_").replace(".", "_").upper())
    return get_completion_script(prog_name=prog_name, complete_var=complete_var, shell=shell) + "\n"


def install_items(*, config: str, command: Sequence[str], backend: str | None, watch: bool, man_page: str,
                  link_target: str | None) -> list[Item]:
    """Everything install puts in place, in creation order. `command` runs dockerguard in the units;
    `link_target` is the script /usr/local/sbin/dockerguard points at (None: no link)."""
    config = check_config_path(config)
    items = [
        Item(config, policy_template(), never_overwrite=True, note="policy template: edit it"),
        Item(f"{UNIT_DIR}/{APPLY_UNIT}", apply_unit(config, command, backend).encode()),
    ]
    if watch:
        items.append(Item(f"{UNIT_DIR}/{WATCH_UNIT}", watch_unit(config, command, backend).encode()))
    items += [
        Item(BASH_COMPLETION, completion_script("bash").encode()),
        Item(MAN_PAGE, man_page.encode()),
    ]
    if link_target is not None:
        items.append(Item(SBIN_LINK, target=safe_text(link_target, "program path")))
    return items


def check_config_path(config: str) -> str:
    """The policy path as written into the units: absolute and free of characters units cannot carry."""
    safe_text(config, "policy path")
    if not config.startswith("/"):
        raise UsageError(f"--config must be an absolute path on the installed system, got {config!r}")
    return os.path.normpath(config)


def units_in(items: Sequence[Item]) -> list[str]:
    return [PurePosixPath(item.path).name for item in items if item.path.startswith(UNIT_DIR + "/")]


# -- the root prefix -------------------------------------------------------------------------------------
class Root:
    """Maps installed-system paths to paths under the prefix, refusing any that would leave it (through
    a symlink an earlier tenant of the prefix left there)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        path = Path(root).absolute()
        if not path.is_dir():
            raise UsageError(f"--root {str(root)!r} is not a directory")
        self.path = path
        self.real = Path(os.path.realpath(path))
        self.is_system = self.real == Path("/")

    def __call__(self, system_path: str) -> Path:
        if not system_path.startswith("/") or ".." in PurePosixPath(system_path).parts:
            raise UsageError(f"refusing path {system_path!r}: not an absolute, normalised path")
        path = self.path / system_path.lstrip("/")
        if not self.is_system and path != self.path:
            # The directory it is in must be inside the prefix; the last component is what install
            # writes or removes itself (a link of ours is a symlink leading out, by design).
            existing = path.parent
            while not existing.exists() and existing != self.path:
                existing = existing.parent
            real = Path(os.path.realpath(existing))
            if real != self.real and self.real not in real.parents:
                raise UsageError(f"{path} leads out of --root {self.path} (through a symlink to {real})")
        return path

    def shown(self, system_path: str) -> str:
        return system_path if self.is_system else str(self(system_path))

    def systemd_running(self) -> bool:
        """systemctl only for the real root of a host booted with systemd (sd_booted()'s test)."""
        return self.is_system and Path("/run/systemd/system").is_dir()


# -- install -----------------------------------------------------------------------------------------
def install(root: Root, items: Sequence[Item], *, force: bool = False, dry_run: bool = False, now: bool = False,
            settings: dict[str, Any] | None = None, run: Runner | None = None) -> Report:
    """Put `items` in place under `root` and record them (and `settings`, for uninstall) in the manifest.
    Refuses (UsageError, nothing written) when a file or link is in the way that install did not write,
    unless `force` (never for the policy)."""
    report = Report()
    manifest = read_manifest(root)
    recorded = {entry["path"]: entry for entry in manifest.get("entries", [])} if manifest else {}
    plans: list[tuple[Item, str]] = []
    conflicts: list[str] = []
    for item in items:
        verb, detail = _decide(root, item, recorded.get(item.path), force)
        if verb == "create" and item.kind == "symlink":
            detail = f"-> {item.target}"
        if verb == "conflict":
            conflicts.append(f"{root.shown(item.path)} ({detail})")
        plans.append((item, verb))
        if verb != "conflict":
            shown = "link" if verb == "create" and item.kind == "symlink" else verb
            report.actions.append(Action(shown, root.shown(item.path), detail))
    if conflicts:
        raise UsageError("not written by `dockerguard install` (or changed since), so not replaced: "
                         + "; ".join(conflicts) + ". Move them away, or use --force (never applies to the policy)")
    made_dirs = _missing_dirs(root, [item.path for item in items] + [MANIFEST])
    report.actions[:0] = [Action("mkdir", root.shown(path)) for path in made_dirs]
    entries = {**recorded, **{path: {"path": path, "kind": "dir"} for path in made_dirs if path not in recorded}}
    for item, verb in plans:
        if verb in ("create", "replace", "unchanged"):
            entries[item.path] = _entry(item)
    if not dry_run:
        for path in made_dirs:
            root(path).mkdir(mode=0o700 if path in _PRIVATE_DIRS else 0o755)
        for item, verb in plans:
            if verb in ("create", "replace"):
                _put(root(item.path), item)
        write_manifest(root, list(entries.values()), settings or {})
    report.actions.append(Action("create" if manifest is None else "replace", root.shown(MANIFEST),
                                 "what uninstall removes"))
    units = units_in(items)
    commands = [["systemctl", "daemon-reload"], ["systemctl", "enable", *(["--now"] if now else []), *units]]
    _systemctl(root, commands, report, dry_run, run)
    return report


def _decide(root: Root, item: Item, recorded: dict[str, Any] | None, force: bool) -> tuple[str, str]:
    """(verb, detail) for one item: create, unchanged, replace, keep or conflict."""
    path = root(item.path)
    if not os.path.lexists(path):
        return "create", item.note
    if item.never_overwrite:
        return "keep", "exists: never overwritten"
    if item.kind == "symlink":
        current = os.readlink(path) if path.is_symlink() else None
        if current == item.target:
            return "unchanged", f"-> {item.target}"
        if current is not None and recorded is not None and recorded.get("target") == current:
            return "replace", f"-> {item.target}, was -> {current}"
        return ("replace", "--force") if force else ("conflict", "a link elsewhere" if current else "not a link")
    if path.is_symlink() or not path.is_file():
        return ("replace", "--force") if force else ("conflict", "not a regular file")
    digest = _sha256(path.read_bytes())
    if digest == _sha256(item.content or b""):
        return "unchanged", ""
    if recorded is not None and recorded.get("sha256") == digest:
        return "replace", "written by an earlier install"
    return ("replace", "--force") if force else ("conflict", "different content")


def _missing_dirs(root: Root, paths: Sequence[str]) -> list[str]:
    """Directories to create, parents first."""
    missing: list[str] = []
    for path in paths:
        for parent in reversed(PurePosixPath(path).parents):
            name = str(parent)
            if name != "/" and name not in missing and not os.path.lexists(root(name)):
                missing.append(name)
    return missing


def _entry(item: Item) -> dict[str, Any]:
    if item.kind == "symlink":
        return {"path": item.path, "kind": "symlink", "target": item.target}
    return {"path": item.path, "kind": "file", "sha256": _sha256(item.content or b""),
            **({"policy": True} if item.never_overwrite else {})}


def _put(path: Path, item: Item) -> None:
    """Atomically: a temporary name in the same directory, then rename over the old one."""
    temporary = path.with_name(f".{path.name}.dockerguard-tmp")
    if os.path.lexists(temporary):
        temporary.unlink()
    if item.kind == "symlink":
        os.symlink(item.target or "", temporary)
    else:
        with open(temporary, "xb") as stream:
            stream.write(item.content or b"")
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, item.mode)
    os.replace(temporary, path)


# -- uninstall ---------------------------------------------------------------------------------------
def uninstall(root: Root, *, dry_run: bool = False, remove_rules: Callable[[], str] | None = None,
              keep_rules: bool = False, run: Runner | None = None) -> Report:
    """Stop and disable the units (systemd hosts), remove the rules (`remove_rules`, given for the real
    root; elsewhere it is a next step unless `keep_rules`), then every recorded file and link that is
    still what install wrote, the manifest, and the recorded directories that are empty by then."""
    manifest = read_manifest(root)
    if manifest is None:
        raise UsageError(f"no install manifest at {root.shown(MANIFEST)}: `dockerguard install` did not install "
                         "anything there")
    entries = [_checked(entry) for entry in manifest["entries"]]
    report = Report()
    units = [PurePosixPath(entry["path"]).name for entry in entries
             if entry["kind"] == "file" and str(PurePosixPath(entry["path"]).parent) == UNIT_DIR]
    units.sort(key=lambda unit: unit != WATCH_UNIT)  # the watch first: it would put removed rules back
    if units:
        _systemctl(root, [["systemctl", "disable", "--now", *units]], report, dry_run, run)
    if not keep_rules:
        if remove_rules is None:
            report.next_steps.append("dockerguard remove")
        else:
            report.actions.append(Action("run", "dockerguard remove", "" if dry_run else remove_rules()))
    for entry in reversed(entries):
        if entry["kind"] != "dir":
            report.actions.append(_take_back(root, entry, dry_run))
    report.actions.append(Action("remove", root.shown(MANIFEST)))
    if not dry_run:
        root(MANIFEST).unlink()
    # Deepest first, and only when empty: a directory that held something else before, or got something
    # since (the state directory's history), stays.
    for entry in sorted((e for e in entries if e["kind"] == "dir"), key=lambda e: -len(PurePosixPath(e["path"]).parts)):
        report.actions.append(_remove_dir(root, entry["path"], dry_run))
    if units:
        _systemctl(root, [["systemctl", "daemon-reload"]], report, dry_run, run)
    return report


def _checked(entry: Any) -> dict[str, Any]:
    """A manifest entry uninstall may act on: a known kind at an absolute, normalised path."""
    if not isinstance(entry, dict) or entry.get("kind") not in ("file", "symlink", "dir") \
            or not isinstance(entry.get("path"), str) or not entry["path"].startswith("/") \
            or os.path.normpath(entry["path"]) != entry["path"] or ".." in PurePosixPath(entry["path"]).parts:
        raise UsageError(f"the install manifest has an entry uninstall does not trust: {entry!r}")
    return entry


def _take_back(root: Root, entry: dict[str, Any], dry_run: bool) -> Action:
    shown = root.shown(entry["path"])
    path = root(entry["path"])
    if not os.path.lexists(path):
        return Action("gone", shown, "already removed")
    if entry["kind"] == "symlink":
        if not path.is_symlink() or os.readlink(path) != entry.get("target"):
            return Action("leave", shown, "changed since install")
    elif path.is_symlink() or not path.is_file() or _sha256(path.read_bytes()) != entry.get("sha256"):
        return Action("leave", shown, "your policy, edited since install" if entry.get("policy")
                      else "changed since install")
    if not dry_run:
        path.unlink()
    return Action("remove", shown)


def _remove_dir(root: Root, system_path: str, dry_run: bool) -> Action:
    shown = root.shown(system_path)
    path = root(system_path)
    if not path.is_dir() or path.is_symlink():
        return Action("gone", shown, "already removed")
    if dry_run:
        return Action("rmdir", shown, "if empty by then")
    try:
        path.rmdir()
    except OSError:
        return Action("leave", shown, "not empty")
    return Action("rmdir", shown)


# -- the manifest and systemctl ---------------------------------------------------------------------
def read_manifest(root: Root) -> dict[str, Any] | None:
    path = root(MANIFEST)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the install manifest {root.shown(MANIFEST)}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != _MANIFEST_FORMAT \
            or not isinstance(data.get("entries"), list):
        raise UsageError(f"{root.shown(MANIFEST)} is not an install manifest this dockerguard understands")
    return data


def write_manifest(root: Root, entries: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    body = json.dumps({"format": _MANIFEST_FORMAT, "version": __version__, **settings, "entries": entries},
                      indent=1) + "\n"
    _put(root(MANIFEST), Item(MANIFEST, body.encode(), mode=0o600))


def _systemctl(root: Root, commands: list[list[str]], report: Report, dry_run: bool, run: Runner | None) -> None:
    if not root.systemd_running():
        report.next_steps += [" ".join(command) for command in commands]
        return
    for command in commands:
        if dry_run:
            report.actions.append(Action("run", " ".join(command)))
            continue
        proc = (run or _run)(command)
        if proc.returncode != 0:
            raise UsageError(f"`{' '.join(command)}` failed: {(proc.stderr or proc.stdout).strip()}")
        report.actions.append(Action("run", " ".join(command), "ok"))


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return run_tool(argv, timeout=120)  # systemctl from the fixed tool search path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
