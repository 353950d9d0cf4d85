"""`dockerguard metrics`: what the installed rules counted, as Prometheus text exposition.

`Engine.metrics` gathers a `MetricsReport` (counters read once from the kernel, the compiled policy, the
published ports, history); `families` turns it into metric families; `exposition` / `write_textfile`
render them with prometheus_client, imported only here (`dockerguard --help` never loads it).

Counters are the kernel's own: they start at 0 when a rule is (re)created, as Prometheus counters
may (a reset is what `rate()` expects after a restart). Rules that carry several policy entries
(nft's shared (source . port) set, an iptables ipset group) count for all of them together: their
entries' samples say `exact="false"`, and summing those would count the same packets more than once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .backends.base import RuleCounter
from .model import AllowRule, DenyRule, Family, Role, Ruleset

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

PREFIX = "dockerguard"


@dataclass(frozen=True)
class MetricsReport:
    backend: str
    counters: tuple[RuleCounter, ...]
    installed: bool
    ruleset: Ruleset | None = None  # with a policy
    published: frozenset[tuple[str, int]] | None = None  # (proto, host port) Docker publishes; with a policy
    drift: bool | None = None  # with a policy
    last_apply: float | None = None  # time of the newest recorded apply
    banned: int | None = None  # None: this backend or ruleset has no ban sets
    notes: tuple[str, ...] = field(default=())  # what could not be measured, and why
    watch: dict[str, Any] | None = None  # engine.watch_health(): None when no watch ever ran here
    pending_deadline: float | None = None  # an `apply --confirm` awaits confirmation until then


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class MetricFamily:
    """One metric family: `kind` "counter" (name without _total) or "gauge"."""

    name: str
    kind: str
    help: str
    samples: tuple[Sample, ...]


def _family_label(family: Family | None) -> str:
    return "any" if family is None else f"ipv{family.value}"


def _ports(rule: AllowRule | DenyRule) -> str:
    return ",".join(str(span) for span in rule.ports) or "any"


def _path(role: Role | None) -> str:
    return "unknown" if role is None else role.value


def families(report: MetricsReport) -> list[MetricFamily]:
    found = [MetricFamily(f"{PREFIX}_rules_installed", "gauge", "1 when rules of dockerguard are installed with "
                     "this backend", (Sample({"backend": report.backend}, float(report.installed)),))]
    found += _rule_families(report.counters)
    found += _default_families(report.counters)
    if report.ruleset is not None:
        found += _entry_families(report.counters, report.ruleset)
    if report.published is not None and report.ruleset is not None:
        found.append(MetricFamily(f"{PREFIX}_published_port_allowed", "gauge",
                             "1 when an allow entry of the policy covers this port Docker publishes (0: only the "
                             "default reaches it)", tuple(
                                 Sample({"proto": proto, "port": str(port)}, float(_covered(report.ruleset, proto,
                                                                                             port)))
                                 for proto, port in sorted(report.published))))
    if report.drift is not None:
        found.append(MetricFamily(f"{PREFIX}_drift", "gauge", "1 when the installed rules differ from the policy's",
                             (Sample({}, float(report.drift)),)))
    if report.last_apply is not None:
        found.append(MetricFamily(f"{PREFIX}_last_apply_timestamp_seconds", "gauge",
                             "When the newest recorded apply was made (Unix time)", (Sample({}, report.last_apply),)))
    if report.banned is not None:
        found.append(MetricFamily(f"{PREFIX}_banned_sources", "gauge", "Sources in the ban sets",
                             (Sample({}, float(report.banned)),)))
    found += _watch_families(report.watch)
    found.append(MetricFamily(f"{PREFIX}_confirmation_pending", "gauge", "1 while an apply --confirm (or the "
                              "lock-out guard) awaits `dockerguard confirm`", (Sample({}, float(
                                  report.pending_deadline is not None)),)))
    if report.pending_deadline is not None:
        found.append(MetricFamily(f"{PREFIX}_confirmation_deadline_timestamp_seconds", "gauge",
                                  "When the pending apply is rolled back unless confirmed (Unix time)",
                                  (Sample({}, report.pending_deadline),)))
    return found


def _watch_families(health: dict[str, Any] | None) -> list[MetricFamily]:
    """`watch`'s health, from its watch.json: up, stale, when it last checked (and succeeded), how often it
    repaired or failed since it started."""
    up = health is not None and bool(health["running"]) and not health["stale"]
    found = [MetricFamily(f"{PREFIX}_watch_up", "gauge", "1 while `dockerguard watch` runs (its process is alive "
                          "and checking)", (Sample({}, float(up)),))]
    if health is None:
        return found
    running = bool(health["running"])
    found.append(MetricFamily(f"{PREFIX}_watch_enforcing", "gauge", "1 while watch keeps a policy in place (0: "
                              "idle after a remove, waiting for a confirmation, failing)",
                              (Sample({"state": str(health["state"])}, float(running and health["state"] ==
                                                                             "enforcing")),)))
    for key, what in (("last_check", "checked the kernel"), ("last_success", "found the policy in place"),
                      ("last_repair", "repaired the kernel")):
        if health.get(key) is not None:
            found.append(MetricFamily(f"{PREFIX}_watch_{key}_timestamp_seconds", "gauge",
                                      f"When watch last {what} (Unix time)", (Sample({}, float(health[key])),)))
    for key, what in (("repairs", "repaired the kernel (Docker's changes and drift)"),
                      ("failures", "could not check or apply")):
        found.append(MetricFamily(f"{PREFIX}_watch_{key}", "counter", f"How often watch {what} since it started",
                                  (Sample({}, float(health[key])),)))
    return found


def _rule_families(counters: Iterable[RuleCounter]) -> list[MetricFamily]:
    rows = [({"chain": c.chain, "rule": c.rule, "kind": c.origin.kind, "path": _path(c.origin.role)}, c)
            for c in counters]
    return [MetricFamily(f"{PREFIX}_rule_packets", "counter", "Packets matched by each installed rule of dockerguard",
                    tuple(Sample(labels, c.packets) for labels, c in rows)),
            MetricFamily(f"{PREFIX}_rule_bytes", "counter", "Bytes matched by each installed rule of dockerguard",
                    tuple(Sample(labels, c.bytes) for labels, c in rows))]


def _default_families(counters: Iterable[RuleCounter]) -> list[MetricFamily]:
    """The chains' defaults, per path (forward, proxy: docker-proxy's INPUT path, host) and family."""
    sums: dict[tuple[str, str, str], list[int]] = {}
    for counter in counters:
        if counter.origin.kind != "default" or counter.origin.role is Role.EGRESS:
            continue
        verdict = "reject" if "reject" in counter.rule.lower() else "drop"
        key = (_path(counter.origin.role), _family_label(counter.origin.family), verdict)
        total = sums.setdefault(key, [0, 0])
        total[0] += counter.packets
        total[1] += counter.bytes
    labels = [({"path": path, "family": family, "verdict": verdict}, total)
              for (path, family, verdict), total in sorted(sums.items())]
    return [MetricFamily(f"{PREFIX}_default_drop_packets", "counter",
                    "Packets refused by a chain's default (verdict: drop or reject)",
                    tuple(Sample(label, total[0]) for label, total in labels)),
            MetricFamily(f"{PREFIX}_default_drop_bytes", "counter", "Bytes refused by a chain's default",
                    tuple(Sample(label, total[1]) for label, total in labels))]


def _entry_families(counters: Iterable[RuleCounter], ruleset: Ruleset) -> list[MetricFamily]:
    """Per policy entry (and family, and path): the counters of the rules carrying it."""
    allows: dict[tuple[str, int, str], list[Any]] = {}
    denies: dict[tuple[int, str], list[Any]] = {}
    for counter in counters:
        origin = counter.origin
        if origin.kind == "allow":
            section = "host.allow" if origin.role is Role.HOST else "allow"
            for index in origin.allows:
                total = allows.setdefault((section, index, _path(origin.role)), [0, 0, True])
                total[0] += counter.packets
                total[1] += counter.bytes
                total[2] = total[2] and len(origin.allows) == 1
        elif origin.kind == "deny":
            for index in origin.denies:
                total = denies.setdefault((index, _path(origin.role)), [0, 0, True])
                total[0] += counter.packets
                total[1] += counter.bytes
    host_rules = ruleset.host.allows if ruleset.host is not None else ()
    allow_rows = []
    for (section, index, path), total in sorted(allows.items()):
        rules = host_rules if section == "host.allow" else ruleset.allows
        if index >= len(rules):
            continue
        rule = rules[index]
        allow_rows.append(({"section": section, "entry": str(rule.entry), "comment": rule.comment,
                            "proto": rule.proto, "ports": _ports(rule), "family": _family_label(rule.family),
                            "path": path, "exact": str(total[2]).lower()}, total))
    deny_rows = []
    for (index, path), total in sorted(denies.items()):
        if index >= len(ruleset.denies):
            continue
        deny = ruleset.denies[index]
        deny_rows.append(({"entry": str(deny.entry), "comment": deny.comment, "proto": deny.proto or "any",
                           "ports": _ports(deny), "family": _family_label(deny.family), "path": path,
                           "verdict": deny.verdict.value}, total))
    what = "new connections let through by"
    return [
        MetricFamily(f"{PREFIX}_allow_packets", "counter", f"Packets of {what} each allow entry (exact=false: the rule "
                "is shared with other entries and counts for all of them)",
                tuple(Sample(labels, total[0]) for labels, total in allow_rows)),
        MetricFamily(f"{PREFIX}_allow_bytes", "counter", f"Bytes of {what} each allow entry",
                tuple(Sample(labels, total[1]) for labels, total in allow_rows)),
        MetricFamily(f"{PREFIX}_deny_packets", "counter", "Packets refused by each deny entry",
                tuple(Sample(labels, total[0]) for labels, total in deny_rows)),
        MetricFamily(f"{PREFIX}_deny_bytes", "counter", "Bytes refused by each deny entry",
                tuple(Sample(labels, total[1]) for labels, total in deny_rows)),
    ]


def _covered(ruleset: Ruleset, proto: str, port: int) -> bool:
    return any(rule.proto == proto and any(span.first <= port <= span.last for span in rule.ports)
               for rule in ruleset.allows)


# -- prometheus_client ---------------------------------------------------------------------------------
def registry(report: MetricsReport) -> CollectorRegistry:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import CollectorRegistry

    built = families(report)

    class _Collector:
        def collect(self) -> Iterator[Any]:
            for item in built:
                labels = sorted({name for sample in item.samples for name in sample.labels})
                cls = CounterMetricFamily if item.kind == "counter" else GaugeMetricFamily
                metric = cls(item.name, item.help, labels=labels)
                for sample in item.samples:
                    metric.add_metric([sample.labels.get(name, "") for name in labels], sample.value)
                yield metric

    found = CollectorRegistry(auto_describe=False)
    found.register(_Collector())
    return found


def exposition(report: MetricsReport) -> str:
    from prometheus_client.exposition import generate_latest

    return generate_latest(registry(report)).decode()


def write_textfile(report: MetricsReport, path: str) -> None:
    """For node_exporter's textfile collector: a temporary file renamed into place, so a scrape never
    reads half a file."""
    from prometheus_client.exposition import write_to_textfile

    write_to_textfile(path, registry(report))
