"""dockerguard: one declarative firewall policy for Docker-published ports.

The public API is imported on first use (PEP 562): the CLI imports this package on every start and
most commands need only a part of it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"  # here, not in policy: the CLI names it before loading one

_EXPORTS = {
    "compile_policy": "compiler",
    "Change": "diff", "Diff": "diff",
    "ApplyResult": "engine", "Engine": "engine", "Plan": "engine", "RollbackResult": "engine",
    "Status": "engine", "Step": "engine",
    "Policy": "policy", "load_policy": "policy", "parse_policy": "policy",
    **{name: "errors" for name in (
        "ApplyError", "BackendUnavailable", "ConfirmError", "DemoError", "DetectionError", "DockerUnavailable",
        "DockerguardError", "LockTimeout", "LockoutError", "PendingConfirmationError", "PolicyError",
        "RollbackError", "StateError", "SupersededError", "TransactionError", "UsageError", "TopologyError",
        "CommandError", "MigrationError")},
}
__all__ = [
    "ApplyError",
    "ApplyResult",
    "BackendUnavailable",
    "Change",
    "CommandError",
    "ConfirmError",
    "DemoError",
    "DetectionError",
    "Diff",
    "DockerUnavailable",
    "DockerguardError",
    "Engine",
    "LockTimeout",
    "LockoutError",
    "PendingConfirmationError",
    "Plan",
    "Policy",
    "PolicyError",
    "RollbackError",
    "RollbackResult",
    "StateError",
    "Status",
    "Step",
    "SupersededError",
    "TopologyError",
    "TransactionError",
    "UsageError",
    "compile_policy",
    "load_policy",
    "parse_policy",
]

if TYPE_CHECKING:
    from .compiler import compile_policy
    from .diff import Change, Diff
    from .engine import ApplyResult, Engine, Plan, RollbackResult, Status, Step
    from .errors import (
        ApplyError,
        BackendUnavailable,
        CommandError,
        ConfirmError,
        DemoError,
        DetectionError,
        DockerguardError,
        DockerUnavailable,
        LockoutError,
        LockTimeout,
        PendingConfirmationError,
        PolicyError,
        RollbackError,
        StateError,
        SupersededError,
        TopologyError,
        TransactionError,
        UsageError,
    )
    from .policy import Policy, load_policy, parse_policy


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
