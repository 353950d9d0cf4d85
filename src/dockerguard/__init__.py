"""dockerguard: one declarative firewall policy for Docker-published ports."""

from __future__ import annotations

from .compiler import compile_policy
from .diff import Change, Diff
from .engine import ApplyResult, Engine, Plan, RollbackResult, Status, Step
from .errors import (
    ApplyError,
    BackendUnavailable,
    ConfirmError,
    DetectionError,
    DockerguardError,
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
    "DetectionError",
    "Diff",
    "DockerguardError",
    "Engine",
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
