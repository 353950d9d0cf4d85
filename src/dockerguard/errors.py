"""Typed errors of the dockerguard API. The CLI maps them to exit codes (2: bad input, 1: runtime)."""

from __future__ import annotations

import subprocess
from typing import Any


class DockerguardError(Exception):
    """Base class of every error dockerguard raises on purpose.

    `steps` is what the engine did before it failed (engine.Step records; the CLI shows them with
    --verbose); `evidence` are (fact, value) pairs behind a decision, e.g. a detection conflict."""

    exit_code = 1
    steps: tuple[Any, ...] = ()
    evidence: tuple[tuple[str, str], ...] = ()


class PolicyError(DockerguardError):
    """The policy file is malformed; nothing was sent to the kernel."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.key = key
        # Every mistake found (validation goes on after the first); this one is errors[0].
        self.errors: tuple[PolicyError, ...] = (self,)
        super().__init__(str(self))

    @classmethod
    def of(cls, errors: list[PolicyError]) -> PolicyError:
        """One error carrying all of `errors` (in file order): str() has one line per mistake."""
        ordered = sorted(errors, key=lambda error: (error.file != errors[0].file, error.line or 0))
        first = ordered[0]
        combined = cls(first.message, file=first.file, line=first.line, key=first.key)
        combined.errors = (combined, *ordered[1:])
        combined.args = (str(combined),)
        return combined

    def line_text(self) -> str:
        """This one mistake: FILE:LINE: [KEY] MESSAGE."""
        where = self.file or "<policy>"
        if not where.isprintable():  # a newline in a file name would start a line of its own
            where = repr(where)
        if self.line is not None:
            where += f":{self.line}"
        key = f" [{self.key}]" if self.key else ""
        return f"{where}:{key} {self.message}"

    def __str__(self) -> str:
        return "\n".join(error.line_text() for error in getattr(self, "errors", (self,)))


class UsageError(DockerguardError):
    """A command-line argument is wrong (unknown backend name, ...)."""

    exit_code = 2


class BackendUnavailable(DockerguardError):
    """The chosen backend cannot work on this host (missing tool, library or kernel feature)."""


class DetectionError(DockerguardError):
    """`backend = "auto"` could not decide which firewall Docker uses."""

    def __init__(self, message: str, evidence: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.evidence = evidence


class ApplyError(DockerguardError):
    """The kernel refused the ruleset or verification failed; the previous ruleset was restored."""


class RollbackError(DockerguardError):
    """Applying failed AND restoring the previous ruleset failed: the host needs attention."""


class TransactionError(DockerguardError):
    """The firewall tool or the kernel refused a transaction; nothing of it took effect."""


class StateError(DockerguardError):
    """The state directory (history, pending confirmation) cannot be read or written, or holds nothing
    to act on (e.g. `rollback` with an empty history)."""


class LockTimeout(StateError):
    """Another dockerguard held the lock for too long; `holder` (locking.Holder, or None when it did not
    say) is who it was."""

    def __init__(self, message: str, holder: Any = None) -> None:
        super().__init__(message)
        self.holder = holder


class PendingConfirmationError(DockerguardError):
    """An `apply --confirm` still awaits `dockerguard confirm`; nothing else may change the ruleset first."""


class SupersededError(DockerguardError):
    """A repair (`Engine.keep`) found another policy in force: another dockerguard changed it meanwhile, and
    nothing was applied."""


class ConfirmError(DockerguardError):
    """`confirm` found nothing to confirm, or came too late: the previous ruleset was already restored."""


class LockoutError(DockerguardError):
    """The policy's [host] rules would cut the admin's own SSH session; nothing was sent."""

    exit_code = 2


class DockerUnavailable(DockerguardError):
    """Docker's API socket cannot be reached or answered with an error."""


class DemoError(DockerguardError):
    """The demo could not run (no root, a missing tool, the sandbox or dockerguard failed inside it)."""


class TopologyError(RuntimeError):
    """The sandbox (`dockerguard demo`, the tests' namespaces) could not be built, or a server did not come up."""


class CommandError(subprocess.CalledProcessError):
    """A sandbox command failed; unlike the stock CalledProcessError, the message includes stderr."""

    def __str__(self) -> str:
        cmd = " ".join(map(str, self.cmd)) if isinstance(self.cmd, (list, tuple)) else str(self.cmd)
        err = (self.stderr or "").strip() if isinstance(self.stderr, str) else ""
        out = (self.output or "").strip() if isinstance(self.output, str) else ""
        return f"command {cmd!r} exited {self.returncode}: {err or out or '(no output)'}"


class MigrationError(DockerguardError):
    """`dockerguard import` cannot read its input (not a firewall file of the expected format); nothing
    was written. Names the file and, when it knows, the line."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {self.message}"
