"""The one way the nft driver talks to the kernel: libnftables' JSON API through the `nftables` module
(PyPI pip-nftables, or Debian's python3-nftables). `FakeNftKernel` (fake_kernel.py) offers the same
`json_cmd`, so the driver runs unchanged against an in-memory kernel in tests.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol


class NftClient(Protocol):
    def json_cmd(self, payload: dict[str, Any], *, json_output: bool = False,
                 dry_run: bool = False) -> tuple[int, str, str]:
        """Run one JSON batch; (return code, output as JSON text when `json_output`, error text)."""


class Libnftables:
    """The real kernel, through libnftables."""

    def json_cmd(self, payload: dict[str, Any], *, json_output: bool = False,
                 dry_run: bool = False) -> tuple[int, str, str]:
        rc, output, error = _context(json_output, dry_run).json_cmd(payload)
        # json_cmd returns the decoded output; keep the interface textual like cmd().
        return rc, json.dumps(output) if isinstance(output, dict) else (output or ""), error or ""


def _context(json_output: bool, dry_run: bool) -> Any:
    # A new context per call: its netlink socket belongs to the network namespace we are in now.
    import nftables

    nft = nftables.Nftables()
    nft.set_json_output(json_output)
    nft.set_handle_output(False)
    if dry_run:
        _set_dry_run(nft)
    return nft


def _set_dry_run(nft: Any) -> None:
    """Check mode (`nft -c`). Debian's binding has set_dry_run; PyPI's pip-nftables lacks it, so call
    libnftables directly on the binding's context."""
    if hasattr(nft, "set_dry_run"):
        nft.set_dry_run(True)
        return
    import ctypes

    library = ctypes.CDLL("libnftables.so.1")
    library.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
    library.nft_ctx_set_dry_run(nft._Nftables__ctx, True)


def version_tuple(version: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", version)
    return tuple(int(n) for n in numbers[:3]) if numbers else (99,)  # unknown: assume a current nft


def metainfo_version(output: str) -> str:
    """The nft version a JSON listing names in its metainfo, or "?"."""
    try:
        for item in json.loads(output)["nftables"]:
            if "metainfo" in item:
                return str(item["metainfo"].get("version", "?"))
    except (ValueError, KeyError, TypeError):
        pass
    return "?"
