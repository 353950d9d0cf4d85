"""`dockerguard trace --live`: the kernel's own account of which rules a matching packet went through.

A temporary rule at the top of our hook chain (`forward` or `input` of table inet dockerguard, nothing
else is touched) sets `meta nftrace` for packets of one source, protocol and port; `nft monitor trace`
reports every rule those packets meet, in every table. The rule is deleted afterwards, also when the
watch is interrupted; a killed process leaves it behind until the next apply replaces our table (it
only marks packets, and `status` shows it as drift).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from ...errors import TransactionError, UsageError
from ...net import Network
from ..common import NFT_BANS_TABLE, NFT_TABLE, start_tool
from .libnft import NftClient

TRACE_COMMENT = "dockerguard trace (temporary)"
MAX_SECONDS = 600.0
_LINE = re.compile(r"^trace id (?P<id>\S+) (?P<family>\S+) (?P<table>\S+) (?P<chain>\S+) (?P<what>.*)$")
_VERDICT = re.compile(r"\(verdict (?P<verdict>[^)]*)\)\s*$")
_COMMENT = re.compile(r'comment "(?P<comment>(?:[^"\\]|\\.)*)"')
_POLICY = re.compile(r"^policy (?P<verdict>\S+)")
_COUNTER = re.compile(r"\bcounter packets \d+ bytes \d+ ?")  # changes with every packet: noise here


@dataclass(frozen=True)
class TraceEvent:
    """One rule (or chain policy) a traced packet met: `trace` tells packets apart; `ours` is True for
    dockerguard's tables. `rule` is our rule's comment (or nft's text of someone else's rule)."""

    trace: str
    table: str
    chain: str
    rule: str
    verdict: str
    ours: bool


def parse_monitor(text: str) -> tuple[TraceEvent, ...]:
    """The rule and policy lines of `nft monitor trace` output (packet and header lines carry no verdict)."""
    events = []
    for line in text.splitlines():
        found = _LINE.match(line.strip())
        if found is None:
            continue
        what = found["what"]
        if what.startswith("rule "):
            verdict = _VERDICT.search(what)
            comment = _COMMENT.search(what)
            body = _COUNTER.sub("", _VERDICT.sub("", what[len("rule "):])).strip()
            rule, decided = (comment["comment"] if comment else body), (verdict["verdict"] if verdict else "continue")
        elif _POLICY.match(what):
            rule, decided = "(chain policy)", _POLICY.match(what)["verdict"]  # type: ignore[index]
        else:
            continue
        if rule == TRACE_COMMENT:
            continue  # the marking rule itself
        table = f"{found['family']} {found['table']}"
        events.append(TraceEvent(found["id"], table, found["chain"], rule, decided,
                                 found["family"] == "inet" and found["table"] in (NFT_TABLE, NFT_BANS_TABLE)))
    return tuple(events)


def trace_rule(source: Network, proto: str, port: int, path: str) -> dict[str, Any]:
    """The temporary rule: packets from `source` of `proto` to `port` (forward: the published port, before
    Docker's DNAT, as our allows compare it) get nftrace."""
    protocol = "ip" if source.version == 4 else "ip6"
    address: Any = source.network_address if source.prefixlen == source.max_prefixlen else {
        "prefix": {"addr": source.network_address, "len": source.prefixlen}}
    destination = ({"ct": {"key": "proto-dst", "dir": "original"}} if path == "forward"
                   else {"payload": {"protocol": proto, "field": "dport"}})
    return {"family": "inet", "table": NFT_TABLE, "chain": path, "comment": TRACE_COMMENT, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": protocol, "field": "saddr"}}, "right": address}},
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": proto}},
        {"match": {"op": "==", "left": destination, "right": port}},
        {"mangle": {"key": {"meta": {"key": "nftrace"}}, "value": 1}}]}


def watch(client: NftClient, source: Network, proto: str, port: int, path: str, seconds: float,
          locked: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext) -> tuple[TraceEvent, ...]:
    """Trace matching packets for `seconds`; the temporary rule is gone when this returns or raises. The rule
    is added and deleted under `locked()` (the ruleset lock), never while an apply is between its send
    and its verifying read; an apply in between replaces our table, trace rule and all, which is fine."""
    if not 0 < seconds <= MAX_SECONDS:
        raise UsageError(f"--live takes 0-{MAX_SECONDS:g} seconds, got {seconds:g}")
    # Into a file, not a pipe: a busy port's trace lines must never block the monitor.
    with tempfile.TemporaryFile(mode="w+") as log:
        try:
            monitor = start_tool(["nft", "monitor", "trace"], log)
        except OSError as exc:
            raise UsageError(f"--live needs the nft tool (nft monitor trace): {exc}") from None
        try:
            time.sleep(0.2)  # let the monitor subscribe before packets are marked
            if monitor.poll() is not None:
                log.seek(0)
                raise TransactionError(f"nft monitor trace stopped: {log.read().strip()}")
            with locked():
                rc, _, error = client.json_cmd({"nftables": [{"insert": {"rule": trace_rule(source, proto, port,
                                                                                            path)}}]})
            if rc != 0:
                raise TransactionError(f"cannot add the trace rule to chain {path} of table inet {NFT_TABLE} (is a "
                                       f"policy applied with the nft backend?): {error.strip()}")
            try:
                time.sleep(seconds)
            finally:
                with locked():
                    _delete_trace_rules(client, path)
        finally:
            monitor.terminate()  # our own child, by its handle
            try:
                monitor.wait(timeout=5)
            except subprocess.TimeoutExpired:
                monitor.kill()
                monitor.wait()
        log.seek(0)
        output = log.read()
    return parse_monitor(output)


def _delete_trace_rules(client: NftClient, chain: str) -> None:
    rc, output, error = client.json_cmd({"nftables": [{"list": {"table": {"family": "inet", "name": NFT_TABLE}}}]},
                                        json_output=True)
    if rc != 0:
        raise TransactionError(f"cannot list table inet {NFT_TABLE} to remove the trace rule: {error.strip()}")
    rules = [item["rule"] for item in json.loads(output)["nftables"] if "rule" in item]
    handles = [rule["handle"] for rule in rules if rule.get("chain") == chain and rule.get("comment") == TRACE_COMMENT]
    if not handles:
        return
    rc, _, error = client.json_cmd({"nftables": [
        {"delete": {"rule": {"family": "inet", "table": NFT_TABLE, "chain": chain, "handle": handle}}}
        for handle in handles]})
    if rc != 0:
        raise TransactionError(f"the trace rule could not be removed from chain {chain}: {error.strip()}")
