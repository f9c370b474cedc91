"""Prometheus metrics: per check, what blackbox_exporter users know (`probe_success`,
`probe_http_status_code`, `probe_ssl_earliest_cert_expiry`...), the incident engine's view, and
the daemon's own health.

Per-check series are built at scrape time from the last Result of each configured check and the
engine's state, so a check removed by a reload disappears from the next scrape, and running a
check costs no metric bookkeeping at all. The series every kind has are written here; those of
one kind (its phase durations, `probe_http_status_code`...) are what its `checks.Kind` declares,
written as they come, so that this module names no kind.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import platform
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from checks import KINDS
from checks.base import Result
from probe.config import Check
from probe.engine import Engine
from probe.version import components

LABELS = ["check", "kind", "service"]


@dataclass
class View:
    """What the collector reads at scrape time; the daemon swaps `checks` on reload."""

    checks: dict[str, Check]
    results: dict[str, Result]
    engine: Engine | None = None


class Metrics:
    def __init__(self, registry: CollectorRegistry, view: Callable[[], View]) -> None:
        self.registry = registry
        self.view = view
        self.schedule_lag = Histogram(
            "probe_check_schedule_lag_seconds",
            "How late a check started after it was due",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.in_flight = Gauge(
            "probe_checks_in_flight", "Checks running right now", registry=registry
        )
        self.skipped = Counter(
            "probe_checks_skipped_total",
            "Runs skipped because the previous run of the check had not finished",
            registry=registry,
        )
        self.reload_ok = Gauge(
            "probe_config_last_reload_successful",
            "Whether the last configuration reload attempt was successful",
            registry=registry,
        )
        self.reload_time = Gauge(
            "probe_config_last_reload_success_timestamp_seconds",
            "Timestamp of the last successful configuration reload",
            registry=registry,
        )
        self.opened = Counter(
            "probe_incidents_opened_total", "Incidents opened", ["group"], registry=registry
        )
        self.resolved = Counter(
            "probe_incidents_resolved_total", "Incidents resolved", ["group"], registry=registry
        )
        # The receiver is one the configuration names, or "" (a payload's own word is never
        # a label: it could be anything, and as many as a sender likes).
        self.alert_notifications = Counter(
            "probe_alertmanager_notifications",
            "Alertmanager webhook notifications: firing or resolved when taken (written to the "
            "state), invalid, unauthorized or unavailable when refused",
            ["receiver", "status"], registry=registry,
        )
        self.state_errors = Counter(
            "probe_state_write_errors_total",
            "Failed writes to the state database (retried)",
            registry=registry,
        )
        self.state_ok = Gauge(
            "probe_state_writable",
            "Whether the last write to the state database succeeded",
            registry=registry,
        )
        self.state_ok.set(1)
        parts = components()
        build = Gauge(
            "probe_build_info",
            "A metric with a constant '1' value labeled by probe's version and those of Python, "
            "OpenSSL and the libraries that talk to targets and helpdesks (probe --version)",
            ["version", "pythonversion", *(k for k in parts if k not in ("probe", "python"))],
            registry=registry,
        )
        build.labels(version=parts.pop("probe"),
                     pythonversion=platform.python_version(),
                     **{k: v for k, v in parts.items() if k != "python"}).set(1)


async def exposition(metrics: Metrics) -> list[bytes | bytearray]:
    """Everything /metrics serves, as chunks to send one after the other: the per-check
    series, family by family, then the registry's own."""
    return [*(await render_checks(metrics.view())), generate_latest(metrics.registry)]


async def render_checks(view: View) -> list[bytearray]:
    """The per-check and per-incident series, in the text format, one chunk per family.

    Built check by check with a pause every few hundred checks: with 10,000 checks a scrape is
    a quarter of a million lines, which must not hold the event loop (and the checks' start
    times) for its length. Each line goes into its family's buffer as soon as it is made, so
    that a scrape never holds a quarter of a million strings (memory a long-running process
    would keep)."""
    families = _Families()
    engine = view.engine
    for i, (name, check) in enumerate(list(view.checks.items())):
        if i % 250 == 249:
            await asyncio.sleep(0)
        labels = _check_labels(name, check)
        result = view.results.get(name)
        if result is not None:
            families.result(labels, check, result)
        st = engine.checks.get(name) if engine is not None else None
        if st is not None:
            families.gauge("probe_check_consecutive_failures",
                           "Failed results in a row", labels, st.failures)
            families.gauge("probe_check_flapping",
                           "Whether the check is flapping", labels, st.flapping)
            families.gauge("probe_check_unreachable",
                           "Whether a check it depends on is failing", labels, st.unreachable)
            families.gauge("probe_check_in_maintenance",
                           "Whether a maintenance window covers the check", labels,
                           st.in_maintenance)
            if st.quorum:  # sites vote: served by the agent that decides for the check
                families.gauge("probe_check_quorum", "The sites' verdict on the check: 1 for "
                               "its state (failing, healthy, undecided)", labels, 1,
                               extra={"state": st.quorum})
                for seen in st.sites:
                    families.gauge("probe_check_site_vote", "Each site's vote on the check: 1 "
                                   "for its vote (failing, healthy, unknown: could not run "
                                   "it; unheard: no fresh vote; silent: out of the vote)",
                                   labels, 1, extra={"site": seen["site"],
                                                     "vote": seen["vote"]})
    if engine is not None:
        for i, (group, gs) in enumerate(list(engine.groups.items())):
            if i % 1000 == 999:
                await asyncio.sleep(0)
            labels = _label_text(group=group)
            families.gauge("probe_incident_open", "Whether the group has an open incident",
                           labels, gs.incident is not None)
            if gs.incident is not None:
                families.gauge("probe_incident_opened_timestamp_seconds",
                               "When the open incident opened", labels, gs.incident.opened_at)
    return families.chunks()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label_text(**labels: str) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())


@functools.lru_cache(maxsize=65536)
def _label_cache(name: str, kind: str, service: str) -> str:
    return _label_text(check=name, kind=kind, service=service)


@functools.lru_cache(maxsize=256)
def _phase_label(phase: str) -> str:
    return _label_text(phase=phase)


def _check_labels(name: str, check: Check) -> str:
    return _label_cache(name, check.kind, check.service or "")


class _Families:
    """Gauge families as text lines, in the order first seen."""

    def __init__(self) -> None:
        self._chunks: dict[str, bytearray] = {}

    def gauge(
        self, name: str, doc: str, labels: str, value: float,
        *, extra: Mapping[str, str] | None = None,
    ) -> None:
        chunk = self._chunks.get(name)
        if chunk is None:
            chunk = self._chunks[name] = bytearray(
                f"# HELP {name} {doc}\n# TYPE {name} gauge\n".encode())
        if extra:
            labels = f"{labels},{_label_text(**extra)}"
        chunk += f"{name}{{{labels}}} {float(value)!r}\n".encode()

    def chunks(self) -> list[bytearray]:
        return list(self._chunks.values())

    def result(self, labels: str, check: Check, result: Result) -> None:
        ev = result.evidence
        self.gauge("probe_success", "Displays whether or not the probe was a success",
                   labels, result.ok)
        self.gauge("probe_duration_seconds",
                   "Returns how long the probe took to complete in seconds",
                   labels, result.duration)
        self.gauge("probe_check_could_not_run",
                   "Whether the last run could not reach a verdict (e.g. no permission)",
                   labels, result.state == "unknown")
        self.gauge("probe_check_last_run_timestamp_seconds",
                   "When the last run of the check started", labels, result.started_at)
        self.gauge("probe_dns_lookup_time_seconds",
                   "Returns the time taken for probe dns lookup in seconds",
                   labels, result.phases.get("resolve", 0.0))
        kind = KINDS[check.kind]
        doc = f"Duration of the {check.kind} check by phase"
        for phase in kind.phases:
            self.gauge(kind.phase_metric, doc, f"{labels},{_phase_label(phase)}",
                       result.phases.get(phase, 0.0))
        address = ev.get("address")
        if isinstance(address, str):
            self.gauge("probe_ip_protocol",
                       "Specifies whether probe ip protocol is IP4 or IP6",
                       labels, 6 if ":" in address else 4)
            self.gauge("probe_ip_addr_hash",
                       "Specifies the hash of IP address. It's useful to detect if the IP "
                       "address changes.", labels, zlib.crc32(address.encode()))
        if isinstance(ev.get("tls_version"), str):
            self.gauge("probe_tls_version_info", "Returns the TLS version used or NaN when "
                       "unknown", labels, 1, extra={"version": ev["tls_version"]})
        not_after = ev.get("cert_not_after") or ev.get("not_after")
        if isinstance(not_after, str):
            expiry = dt.datetime.fromisoformat(not_after.replace("Z", "+00:00")).timestamp()
            self.gauge("probe_ssl_earliest_cert_expiry",
                       "Returns last SSL chain expiry in unixtime", labels, expiry)
            self.gauge("probe_tls_cert_remaining_seconds",
                       "Time left until the certificate expires (negative: expired)",
                       labels, expiry - result.started_at)
        for name, doc, value, extra in kind.gauges(result):
            self.gauge(name, doc, labels, value, extra=extra)
