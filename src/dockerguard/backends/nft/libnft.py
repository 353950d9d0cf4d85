"""The one way the nft driver talks to the kernel: libnftables' JSON API through the `nftables` module
(PyPI pip-nftables, or Debian's python3-nftables). `FakeNftKernel` (fake_kernel.py) offers the same
`json_cmd`, so the driver runs unchanged against an in-memory kernel in tests.
"""

from __future__ import annotations

import json
import re
import socket
import struct
from typing import Any, Protocol

from ...stderr_noise import privilege_noise_filtered


class NftClient(Protocol):
    def json_cmd(self, payload: dict[str, Any], *, json_output: bool = False,
                 dry_run: bool = False) -> tuple[int, str, str]:
        """Run one JSON batch; (return code, output as JSON text when `json_output`, error text)."""

    def generation(self) -> int | None:
        """The ruleset generation (bumped by every committed transaction); None if unknown."""

    def table_flags(self, name: str) -> int | None:
        """The flags of table inet `name` (1: dormant); None when there is no such table or no answer."""


class Libnftables:
    """The real kernel, through libnftables."""

    def json_cmd(self, payload: dict[str, Any], *, json_output: bool = False,
                 dry_run: bool = False) -> tuple[int, str, str]:
        # cmd() with JSON text, not the binding's json_cmd(): that decodes the output, which the caller
        # would have to encode again to keep this interface textual (a 100,000-element listing: 0.2 s).
        # libnftables parses JSON input only with JSON output on, so output is always JSON text here.
        with privilege_noise_filtered():  # without root libnftables also prints "... (you must be root)"
            rc, output, error = _context(dry_run).cmd(json.dumps(payload))
        return rc, output or "", error or ""

    def generation(self) -> int | None:
        return generation_id()

    def table_flags(self, name: str) -> int | None:
        return table_flags(name)


def _context(dry_run: bool) -> Any:
    # A new context per call: its netlink socket belongs to the network namespace we are in now.
    import nftables

    nft = nftables.Nftables()
    nft.set_json_output(True)
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


# -- the ruleset generation: one netlink round trip, no listing ------------------------------------------
_NETLINK_NETFILTER = 12
_NFT_MSG_GETGEN = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN
_NFT_MSG_NEWGEN = (10 << 8) | 15
_NFT_MSG_NEWTABLE = (10 << 8) | 0
_NFT_MSG_GETTABLE = (10 << 8) | 1
_NFTA_GEN_ID = 1
_NFTA_TABLE_NAME = 1
_NFTA_TABLE_FLAGS = 2
_NFPROTO_INET = 1
_NLMSG_ERROR = 2


def generation_id() -> int | None:
    """The nftables ruleset generation of this network namespace: the kernel counts up on every committed
    transaction, whoever sends it, so an unchanged number means an unchanged ruleset. None when the
    kernel cannot be asked."""
    return _ask(_NFT_MSG_GETGEN, _NFT_MSG_NEWGEN, 0, b"", _NFTA_GEN_ID)


def table_flags(name: str) -> int | None:
    """NFTA_TABLE_FLAGS of table inet `name`, asked without libnftables: nft before 1.1 cannot write a
    table's flags in a JSON listing (garbage, a cut-off listing, or a crash of the process)."""
    encoded = name.encode() + b"\0"
    attribute = struct.pack("=HH", 4 + len(encoded), _NFTA_TABLE_NAME) + encoded
    return _ask(_NFT_MSG_GETTABLE, _NFT_MSG_NEWTABLE, _NFPROTO_INET, attribute + b"\0" * (-len(attribute) % 4),
                _NFTA_TABLE_FLAGS)


def _ask(request: int, answer: int, family: int, attributes: bytes, wanted: int) -> int | None:
    """One netlink request to nf_tables; the big-endian u32 attribute `wanted` of its answer, or None."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER) as sock:
            sock.settimeout(2.0)
            # nlmsghdr (len, type, flags=NLM_F_REQUEST, seq, pid) + nfgenmsg (family, NFNETLINK_V0, res_id)
            sock.send(struct.pack("=IHHII", 20 + len(attributes), request, 1, 1, 0)
                      + struct.pack("=BBH", family, 0, 0) + attributes)
            reply = sock.recv(4096)
    except OSError:
        return None
    length, kind = struct.unpack_from("=IH", reply)
    if kind != answer:  # NLMSG_ERROR: no such table, no permission
        return None
    offset = 16 + 4  # after nlmsghdr and nfgenmsg
    while offset + 4 <= min(length, len(reply)):
        attr_length, attr_type = struct.unpack_from("=HH", reply, offset)
        if attr_length < 4:
            return None
        if attr_type & 0x3FFF == wanted and attr_length >= 8:
            return int(struct.unpack_from(">I", reply, offset + 4)[0])
        offset += (attr_length + 3) & ~3
    return None
