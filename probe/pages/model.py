"""What the pages show, as plain values: probe.pages.build fills these from the state database
and the running daemon; probe.pages.render turns them into HTML and SVG. Nothing here is
trusted markup: every string may come from a target or a helpdesk, and the templates escape
it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

# The windows the pages, badges and reports speak of.
WINDOWS: tuple[str, ...] = ("24h", "7d", "30d", "90d")
LATENCY_WINDOWS: tuple[str, ...] = ("24h", "7d", "30d")


@dataclass(frozen=True, slots=True)
class Availability:
    """Availability over one period, computed as probe.availability says (`rule` names how)."""

    start: float
    end: float
    monitored: float  # seconds with results
    down: float  # seconds failing in an incident (maintenance counted as the rule says)
    maintenance: float
    na: float  # seconds not monitored or whose results could not run
    incidents: int
    percent: float | None  # None: nothing counted ("n/a")
    text: str  # the percent as shown: "99.95 %", "n/a"; never "100 %" with any downtime


@dataclass(frozen=True, slots=True)
class Day:
    """One bar of the 90-day bar: a UTC day."""

    date: str  # YYYY-MM-DD
    availability: Availability


class Point(NamedTuple):
    """One point of a latency chart: the mean duration of the results in [at, at + step). A
    tuple: a dashboard of a thousand checks makes 24,000 of them."""

    at: float
    step: float
    mean_ms: float | None  # None: no result in the step
    max_ms: float | None
    p95_ms: float | None = None
    phases_ms: Mapping[str, float] = MappingProxyType({})  # mean per phase (http)
    failed: int = 0  # results that failed in the step


@dataclass(frozen=True, slots=True)
class ResultRow:
    at: float
    state: str  # up | down | unknown
    duration_ms: float
    reason: str


@dataclass(frozen=True, slots=True)
class Ticket:
    route: str
    ref: str  # the helpdesk's id
    url: str | None  # a link to it in the helpdesk, where the backend knows one
    state: str  # open | resolved | left
    opened_at: float
    acknowledged_at: float | None  # when the helpdesk first said someone took it
    escalated_at: float | None


@dataclass(frozen=True, slots=True)
class Event:
    """One line of an incident's timeline."""

    at: float
    kind: str  # failing | opened | note | escalated | acknowledged | reopened | resolved | error
    text: str


@dataclass(frozen=True, slots=True)
class IncidentRow:
    key: str
    group: str  # the check or service
    is_service: bool
    checks: Sequence[str]  # the checks that failed in it
    first_failure_at: float
    opened_at: float
    resolved_at: float | None  # None: open
    why: str  # "3 consecutive failures"
    reason: str  # the latest failure reason (target's words: escape)
    tickets: Sequence[Ticket] = ()
    # Fed by Alertmanager (probe.alerts): its receiver and group labels, "ops: alertname=X"
    # (Alertmanager's words: escape); None for the checks' own.
    alert_group: str | None = None


@dataclass(frozen=True, slots=True)
class CheckRow:
    """A check as the dashboard lists it."""

    name: str
    kind: str
    service: str | None
    target: str
    state: str  # up | failing | down (in an incident) | maintenance | unreachable | unknown
    streak: str  # "3 failures", "12 successes"
    last_at: float | None
    last_duration_ms: float | None
    last_reason: str
    incident: str | None  # the open incident's key
    spark: Sequence[Point]  # the last 24 h
    availability_24h: Availability | None = None


@dataclass(frozen=True, slots=True)
class ServiceRow:
    name: str
    state: str  # up | down | maintenance | unknown (the worst of its checks')
    checks: Sequence[str]
    incident: str | None
    availability_24h: Availability | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """A maintenance window."""

    number: int | None  # None: from the configuration
    checks: Sequence[str]
    services: Sequence[str]
    reason: str
    active: bool
    next_start: float | None
    next_end: float | None
    description: str  # "every sat 02:00 UTC for 2h", "2026-12-01 02:00 to 04:00 UTC"


@dataclass(frozen=True, slots=True)
class Outbox:
    pending: int
    failed: int
    oldest_pending_age: float | None
    last_error: str  # the helpdesk's words: escape


@dataclass(frozen=True, slots=True)
class Dashboard:
    generated_at: float
    agent: str
    rule: str  # how availability is computed, one sentence
    services: Sequence[ServiceRow]
    checks: Sequence[CheckRow]  # already filtered
    incidents: Sequence[IncidentRow]  # open ones
    windows: Sequence[Window]
    outbox: Outbox
    state_filter: str | None  # the filters applied (echoed in the form)
    service_filter: str | None
    states: Sequence[str]  # the choices of the filters
    service_names: Sequence[str]


@dataclass(frozen=True, slots=True)
class Detail:
    """A check's or a service's page."""

    kind: str  # "check" | "service"
    name: str
    description: str
    check_kind: str | None  # http, tcp, ... for a check
    target: str | None
    service: str | None  # a check's service
    checks: Sequence[CheckRow]  # a service's checks (a check: itself)
    state: str
    days: Sequence[Day]  # 90, oldest first
    availability: Mapping[str, Availability]  # by WINDOWS
    sla_percent: float | None
    latency: Mapping[str, Sequence[Point]]  # by LATENCY_WINDOWS
    phases: Sequence[str]  # the phase names, in order, for http; () otherwise
    results: Sequence[ResultRow]  # newest first
    incidents: Sequence[IncidentRow]  # newest first
    rule: str
    generated_at: float


@dataclass(frozen=True, slots=True)
class IncidentPage:
    incident: IncidentRow
    timeline: Sequence[Event]  # oldest first
    generated_at: float


@dataclass(frozen=True, slots=True)
class StatusService:
    """A service on the public status page: nothing internal (no hosts, no reasons)."""

    name: str
    state: str  # operational | outage | maintenance | unknown
    days: Sequence[Day]
    availability_90d: Availability
    incident_since: float | None  # the current incident's first failure


@dataclass(frozen=True, slots=True)
class StatusPage:
    title: str
    description: str
    services: Sequence[StatusService]
    rule: str
    generated_at: float


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One row of `probe report`: a service, a check, or an Alertmanager receiver (its
    incidents; its availability n/a, its downtime the time its groups fired)."""

    kind: str  # service | check | alertmanager
    name: str
    service: str | None
    availability: Availability
    days: Sequence[Day]
    incidents: Sequence[IncidentRow]
    mtta: float | None  # mean seconds to the helpdesk's acknowledgement
    mttr: float | None  # mean seconds from first failure to recovery
    sla_percent: float | None
    sla_met: bool | None


@dataclass(frozen=True, slots=True)
class Report:
    start: float
    end: float
    rule: str
    rows: Sequence[ReportRow]
    generated_at: float
