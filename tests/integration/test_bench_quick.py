"""The benchmarks must not rot: each bench/ script runs in --quick mode and prints its table.

Only that it exits 0 and printed a Markdown table with the expected header is asserted, never a time:
CI machines are too noisy for thresholds, the numbers are for people (bench/README.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
# script -> the header row its main table starts with
SCRIPTS = {
    "apply.py": "| backend | N sources | dockerguard apply (s) |",
    "startup.py": "| command | median (ms) |",
    "packet_path.py": "| backend | allowed sources per family |",
    "blocklist.py": "| backend | CIDRs | dockerguard apply (s) |",
}


def test_bench_scripts_quick() -> None:
    failures = []
    for script, header in SCRIPTS.items():
        proc = subprocess.run([sys.executable, str(BENCH / script), "--quick"], capture_output=True, text=True,
                              timeout=600, check=False)
        printed = header in proc.stdout
        if proc.returncode != 0 or not printed:
            failures.append(f"{script}: exit {proc.returncode}, table {'printed' if printed else 'missing'}\n"
                            f"{proc.stderr[-3000:]}")
    assert not failures, "\n\n".join(failures)
