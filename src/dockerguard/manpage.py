"""dockerguard(8) as roff, generated from the CLI's own help (its click command tree), so the man page
cannot drift from `dockerguard COMMAND --help`.

Only click's public Command/Context/Parameter interface is used, duck-typed: typer vendors click from
0.24 on (typer._click) and depends on the click package before that (Python 3.9 gets typer 0.23).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from . import __version__

_DESCRIPTION = """dockerguard compiles one TOML policy into firewall rules for the ports Docker publishes and installs
them atomically with the driver that matches the host: native nftables (its own table inet dockerguard),
iptables-nft or iptables-legacy (the DOCKER-USER chain). For packets entering an external interface,
established traffic passes; a new connection passes when its protocol and original destination port (the
published host port, before Docker's DNAT) match an allow entry and its source matches; every other new
connection gets the policy's default. Every change is verified by reading the rules back, and rolled back
when that fails."""

# Sections help texts cannot give: what the files, variables and exit codes are.
_EXIT_STATUS = (
    ("0", "success"),
    ("1", "runtime or kernel error (the previous ruleset is restored); also `diff --exit-code` with changes "
          "and `apply --confirm` left unanswered on a terminal"),
    ("2", "bad input: policy, arguments, a path that cannot be written into a unit"),
    ("3", "drift from the policy (`status -c`), or a port open beyond the policy (`audit`)"),
)
_FILES = (
    ("/etc/dockerguard/policy.toml", "the policy (default of -c/--config); written from a commented template "
                                     "by `dockerguard install`, never overwritten"),
    ("/etc/systemd/system/dockerguard.service", "applies the policy at boot, before docker.service starts; "
                                                "stopping it leaves the rules in place"),
    ("/etc/systemd/system/dockerguard-watch.service", "runs `dockerguard watch` once Docker is up "
                                                      "(Restart=always; a crash keeps the last good rules)"),
    ("/var/lib/dockerguard", "state directory: history for rollback, pending confirmations (mode 0700)"),
    ("/var/lib/dockerguard/install-manifest.json", "what `dockerguard install` wrote, for `uninstall`"),
)
_ENVIRONMENT = (
    ("DOCKERGUARD_STATE_DIR", "state directory instead of /var/lib/dockerguard (as --state-dir)"),
)
_SEE_ALSO = "nft(8), iptables(8), iptables-restore(8), systemctl(1), systemd.service(5), dockerd(8)"


def render(command: Any, *, name: str = "dockerguard", section: int = 8) -> str:
    """The man page of a click group (`typer.main.get_command(app)`): global options, then every
    command that `--help` lists, with its usage, help text and options."""
    root = command.context_class(command, info_name=name)
    lines = [
        f'.TH {name.upper()} {section} "" "{name} {__version__}" "System Administration"',
        ".SH NAME",
        f"{name} \\- {_escape(_lower_first(_first_sentence(command.help or '')))}",
        ".SH SYNOPSIS",
        f".B {name}",
        "[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIARGUMENTS\\fR]",
        ".SH DESCRIPTION",
        *_paragraphs(command.help or ""),
        *_paragraphs(_DESCRIPTION),
        ".PP",
        _escape(f"Run `{name} COMMAND --help` for a command's help, and `{name} install` to set up the policy "
                "file, the systemd units, shell completion, this page and a link in /usr/local/sbin."),
        ".SH GLOBAL OPTIONS",
        *_options(command, root),
        ".SH COMMANDS",
    ]
    for sub_name in command.list_commands(root):
        sub = command.get_command(root, sub_name)
        if sub is None or getattr(sub, "hidden", False):
            continue
        context = sub.context_class(sub, parent=root, info_name=sub_name)
        usage = " ".join([name, sub_name, *sub.collect_usage_pieces(context)])
        lines += [f'.SS "{_escape(usage)}"', *_paragraphs(sub.help or ""), *_options(sub, context)]
    lines += [".SH EXIT STATUS", *_tagged(_EXIT_STATUS), ".SH ENVIRONMENT", *_tagged(_ENVIRONMENT),
              ".SH FILES", *_tagged(_FILES), ".SH SEE ALSO", _escape(_SEE_ALSO)]
    return "\n".join(lines) + "\n"


def _options(command: Any, context: Any) -> list[str]:
    lines: list[str] = []
    for param in command.get_params(context):
        record = param.get_help_record(context)
        if record is None or getattr(param, "hidden", False) or record[0] == "--help":
            continue
        declaration, text = record
        lines += [".TP", _bold_options(declaration), _escape(" ".join(text.split())) if text else ""]
    return [line for line in lines if line != ""]


def _tagged(items: tuple[tuple[str, str], ...]) -> list[str]:
    lines: list[str] = []
    for tag, text in items:
        lines += [".TP", f"\\fB{_escape(tag)}\\fR", _escape(text)]
    return lines


def _paragraphs(text: str) -> list[str]:
    lines: list[str] = []
    for paragraph in re.split(r"\n\s*\n", inspect.cleandoc(text)):
        if paragraph.strip():
            lines += [".PP", _escape(" ".join(paragraph.split()))]
    return lines


def _first_sentence(text: str) -> str:
    first = inspect.cleandoc(text).split("\n\n")[0]
    return " ".join(first.split()).rstrip(".")


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _bold_options(declaration: str) -> str:
    """`-c, --config <str>` -> option names in bold, the value's metavariable in italics; an argument's
    name (no leading dash) in italics."""
    words = declaration.split(" ")
    if not words[0].startswith("-"):
        return f"\\fI{_escape(declaration)}\\fR"
    count = next((index for index, word in enumerate(words) if not (word.startswith("-") or word == "/")),
                 len(words))
    names = " ".join(word if word == "/" else f"\\fB{_escape(word)}\\fR" for word in words[:count])
    metavar = " ".join(words[count:])
    return names + (f" \\fI{_escape(metavar)}\\fR" if metavar else "")


def _escape(text: str) -> str:
    """Plain text as roff: backslashes and minus signs escaped, no line starting a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))
