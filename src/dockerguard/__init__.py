"""dockerguard: one declarative firewall policy for Docker-published ports."""

from __future__ import annotations

from .compiler import compile_policy
from .engine import ApplyResult, Engine, Plan, Status
from .errors import (
    ApplyError,
    BackendUnavailable,
    DetectionError,
    DockerguardError,
    PolicyError,
    RollbackError,
    TransactionError,
    UsageError,
)
from .policy import Policy, load_policy, parse_policy

__version__ = "0.1.0"

__all__ = [
    "ApplyError",
    "ApplyResult",
    "BackendUnavailable",
    "DetectionError",
    "DockerguardError",
    "Engine",
    "Plan",
    "Policy",
    "PolicyError",
    "RollbackError",
    "Status",
    "TransactionError",
    "UsageError",
    "compile_policy",
    "load_policy",
    "parse_policy",
]
