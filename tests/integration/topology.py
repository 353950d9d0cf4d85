"""The namespace harness, for the tests' ``from topology import ...``: it lives in the package now,
as ``dockerguard.sandbox`` (``dockerguard demo`` runs in it too).

This module IS ``dockerguard.sandbox`` rather than a copy of its names (``from ... import *``):
tests monkeypatch module attributes (``topology.docker_ruleset``) and the sandbox's own code must
see the patch.
"""

from __future__ import annotations

import sys

from dockerguard import sandbox

sys.modules[__name__] = sandbox
