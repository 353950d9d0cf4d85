"""dockerguard: one declarative firewall policy for Docker-published ports."""

from __future__ import annotations

from .compiler import compile_policy
from .diff import Change, Diff
from .engine import ApplyResult, Engine, Plan, RollbackResult, Status, Step
from .errors import (
    ApplyError,
    BackendUnavailable,
    ConfirmError,
    DemoError,
    DetectionError,
    DockerguardError,
    DockerUnavailable,
    LockoutError,
    PendingConfirmationError,
    PolicyError,
    RollbackError,
    StateError,
    TransactionError,
    UsageError,
)
from .policy import Policy, load_policy, parse_policy

__version__ = "0.1.0"

__all__ = [
    "ApplyError",
    "ApplyResult",
    "BackendUnavailable",
    "Change",
    "ConfirmError",
    "DemoError",
    "DetectionError",
    "Diff",
    "DockerUnavailable",
    "DockerguardError",
    "Engine",
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
    "TransactionError",
    "UsageError",
    "compile_policy",
    "load_policy",
    "parse_policy",
]
