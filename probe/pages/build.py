"""The pages' models (probe.pages.model), filled from the status document (probe.status: what
the daemon knows now, the whole cluster's in a cluster) and the archive (probe.archive: what
the state database remembers)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from checks import KINDS
from checks.values import format_duration
from probe.archive import Archive, Hourly
from probe.availability import Rule, compute, merge_buckets, merged, rule_text
from probe.config import Config, Maintenance
from probe.engine import window_active
from probe.history import DAY, MINUTE, Bucket, MinuteRow, bucket
from probe.pages.model import (
    LATENCY_WINDOWS,
    WINDOWS,
    Availability,
    CheckRow,
    Dashboard,
    Day,
    Detail,
    IncidentPage,
    Outbox,
    Point,
    ResultRow,
    ServiceRow,
    StatusPage,
    StatusService,
    Window,
)

EMPTY: Mapping[str, float] = {}
Downtime = Mapping[str, Sequence[tuple[str, float, float | None]]]  # archive.downtime's
SECONDS = {"24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0, "90d": 90 * 86400.0}
STEPS = {"24h": 900.0, "7d": 3600.0, "30d": 4 * 3600.0}  # a latency chart's point
STATES = ("up", "failing", "down", "maintenance", "unreachable", "unknown")
BAR_DAYS = 90


def check_state(entry: Mapping[str, Any], in_incident: bool) -> str:
    """A check's state as the pages say it."""
    if in_incident:
        return "down"
    if entry.get("in_maintenance"):
        return "maintenance"
    if entry.get("unreachable"):
        return "unreachable"
    state = entry.get("state")
    return {"up": "up", "down": "failing"}.get(state or "", "unknown")


def streak(entry: Mapping[str, Any]) -> str:
    failures = entry.get("consecutive_failures") or 0
    if failures:
        return f"{failures} failure{'s' if failures != 1 else ''}"
    successes = entry.get("consecutive_successes") or 0
    return f"{successes} success{'es' if successes != 1 else ''}"


class Pages:
    """Builds each page's model. `doc` is the status document, as /api/status serves it."""

    def __init__(self, config: Config, archive: Archive,
                 counting: Callable[[Sequence[str]], Mapping[str, list[MinuteRow]]] | None = None,
                 ) -> None:
        self.config = config
        self.archive = archive
        # The running daemon's minutes not yet written (probe.history.Recorder.peek).
        self.counting = counting or (lambda names: {})
        self.rule: Rule = config.history.maintenance
        self.rule_text = rule_text(self.rule)
        self.checks = {c.name: c for c in config.effective_checks()}

    def members(self, group: str) -> list[str]:
        """The checks of a service (or the check alone)."""
        return [c.name for c in self.checks.values() if c.group == group]

    def services(self) -> list[str]:
        return sorted({c.service for c in self.checks.values() if c.service})

    def _open(self, doc: Mapping[str, Any]) -> dict[str, str]:
        """The open incident's key of each check in one."""
        return {name: i["key"] for i in doc.get("incidents", [])
                for name in [*i.get("checks", []), i["group"]]}

    # --- figures ----------------------------------------------------------------------------

    async def availability(self, names: Sequence[str], start: float, end: float,
                           now: float) -> Availability:
        return self._figure(*await self._span(names, start, end, now), start, end)

    async def _span(self, names: Sequence[str], start: float, end: float,
                    now: float) -> tuple[dict[str, list[Bucket]], Downtime]:
        """What a period's figures are computed from, read once: the buckets and the
        downtime. A shorter period within it is computed from the same (compute counts only
        what falls in it)."""
        return (await self.buckets(names, start, end, now),
                await self.archive.downtime(names, start, end))

    async def buckets(self, names: Sequence[str], start: float, end: float,
                      now: float) -> dict[str, list[Bucket]]:
        """The stored buckets, and the minutes being counted now."""
        per_check = await self.archive.buckets(names, start, end, now)
        for name, rows in self.counting(names).items():
            per_check.setdefault(name, []).extend(
                bucket(MINUTE, row[1:]) for row in rows if start <= row[1] < end)
        return per_check

    def _figure(self, per_check: Mapping[str, Sequence[Bucket]], downs: Downtime,
                start: float, end: float) -> Availability:
        buckets = (list(next(iter(per_check.values()))) if len(per_check) == 1
                   else merge_buckets(list(per_check.values())))
        intervals = [(a, b) for rows in downs.values() for _, a, b in rows]
        keys = {key for rows in downs.values() for key, a, b in rows
                if a < end and (b is None or b > start)}
        return compute(buckets, merged(intervals, start, end), start, end, self.rule,
                       incidents=len(keys))

    async def days(self, names: Sequence[str], now: float, count: int = BAR_DAYS,
                   span: tuple[dict[str, list[Bucket]], Downtime] | None = None) -> list[Day]:
        """The last `count` UTC days, oldest first, today's so far included; from `span`
        when the caller read one that covers them."""
        today = int(now // DAY) * DAY
        start = today - (count - 1) * DAY
        per_check, downs = span or await self._span(names, start, now, now)
        out = []
        for i in range(count):
            a = start + i * DAY
            b = min(a + DAY, now)
            cut = {n: [x for x in bs if x.start < b and x.start + x.size > a]
                   for n, bs in per_check.items()}
            out.append(Day(_date(a), self._figure(cut, downs, a, b)))
        return out

    async def latency(self, name: str, window: str, now: float) -> list[Point]:
        span, step = SECONDS[window], STEPS[window]
        start = (int((now - span) // step) + 1) * step
        buckets = (await self.buckets([name], start, now, now))[name]
        kind = KINDS.get(self.checks[name].kind)
        phase_names = kind.phases if kind is not None else ()
        points: dict[int, list[Bucket]] = {}
        for b in buckets:
            points.setdefault(int((max(b.start, start) - start) // step), []).append(b)
        out = []
        for i in range(int(span // step)):
            group = points.get(i, [])
            n = sum(b.results for b in group)
            phases: dict[str, float] = {}
            for b in group:
                for phase, ms in zip(phase_names, b.phase_sums_ms, strict=False):
                    phases[phase] = phases.get(phase, 0.0) + ms
            p95 = [b.p95_ms for b in group if b.p95_ms is not None]
            out.append(Point(
                at=start + i * step, step=step,
                mean_ms=sum(b.duration_sum_ms for b in group) / n if n else None,
                max_ms=max(b.duration_max_ms for b in group) if n else None,
                p95_ms=max(p95) if p95 else None,
                phases_ms={p: ms / n for p, ms in phases.items()} if n else {},
                failed=sum(b.failed for b in group)))
        return out

    # --- pages ------------------------------------------------------------------------------

    async def dashboard(self, doc: Mapping[str, Any], windows: Sequence[tuple[int | None,
                        Maintenance]], now: float, *, state: str | None = None,
                        service: str | None = None) -> Dashboard:
        open_keys = self._open(doc)
        entries = [e for e in doc.get("checks", []) if e["name"] in self.checks]
        names = [e["name"] for e in entries]
        recent = await self.archive.recent(names, now)
        for name, minutes in self.counting(names).items():
            recent.setdefault(name, []).extend(
                (int(row[1] // 3600) * 3600, *row[2:4], *row[5:10]) for row in minutes)
        downs = await self.archive.downtime(names, now - DAY, now)
        # The last 24 h: a sparkline of hours, and one bucket for the figure.
        start = int(now // 3600) * 3600 - 23 * 3600
        sparks, day = {}, {}
        for name in names:
            sparks[name], day[name] = _last_day(start, recent.get(name, []))
        rows = [self._row(e, open_keys.get(e["name"]), sparks.get(e["name"], ()),
                          self._figure({e["name"]: day[e["name"]]},
                                       {e["name"]: downs.get(e["name"], [])}, start, now))
                for e in entries]
        services = []
        for name in self.services():
            members = [r for r in rows if r.service == name]
            member_names = [r.name for r in members]
            figure = self._figure({n: day[n] for n in member_names},
                                  {n: downs.get(n, []) for n in member_names}, start, now)
            services.append(ServiceRow(name, _service_state(members), member_names,
                                       open_keys.get(name), figure))
        shown = [r for r in rows if (state is None or r.state == state)
                 and (service is None or r.service == service)]
        incidents = await self.archive.incidents(open_only=True)
        pending = doc.get("ticket_actions_pending") or {}
        failed = doc.get("ticket_actions_failed") or []
        oldest = pending.get("oldest_at")
        outbox = Outbox(int(pending.get("count") or 0), len(failed),
                        None if oldest is None else max(0.0, now - oldest),
                        str(failed[0].get("error") or "") if failed else "")
        return Dashboard(
            generated_at=now, agent=str(doc.get("agent", "")), rule=self.rule_text,
            services=services, checks=shown, incidents=incidents,
            windows=[_window(n, w, now) for n, w in windows], outbox=outbox,
            state_filter=state, service_filter=service, states=STATES,
            service_names=self.services())

    def _row(self, entry: Mapping[str, Any], incident: str | None, spark: Sequence[Point],
             figure: Availability | None = None) -> CheckRow:
        duration = entry.get("duration_seconds")
        return CheckRow(
            name=entry["name"], kind=str(entry.get("kind", "")), service=entry.get("service"),
            target=str(entry.get("target", "")), state=check_state(entry, incident is not None),
            streak=streak(entry), last_at=entry.get("last_run_at"),
            last_duration_ms=None if duration is None else duration * 1000,
            last_reason=str(entry.get("reason") or ""), incident=incident, spark=spark,
            availability_24h=figure)

    async def detail(self, kind: str, name: str, doc: Mapping[str, Any],
                     recent: Sequence[Mapping[str, Any]], now: float) -> Detail | None:
        """A check's page (`kind` "check") or a service's; None when there is no such one.
        `recent`: the check's last results (a service: none)."""
        if kind == "check":
            check = self.checks.get(name)
            if check is None:
                return None
            names = [name]
            description, sla = check.description, check.sla
        else:
            names = [c.name for c in self.checks.values() if c.service == name]
            if not names:
                return None
            check = None
            described = self.config.services.get(name)
            description = described.description if described else ""
            sla = described.sla if described else None
        open_keys = self._open(doc)
        entries = {e["name"]: e for e in doc.get("checks", [])}
        rows = [self._row(entries.get(n, {"name": n}), open_keys.get(n), ()) for n in names]
        # The 90 days, read once, answer for every window and for the bars.
        span = await self._span(names, now - SECONDS["90d"], now, now)
        figures = {w: self._figure(*span, now - SECONDS[w], now) for w in WINDOWS}
        latency = ({w: await self.latency(name, w, now) for w in LATENCY_WINDOWS}
                   if check is not None else {})
        phases = sorted({p for points in latency.values() for pt in points
                         for p in pt.phases_ms})
        group = check.group if check is not None else name
        incidents = [i for i in await self.archive.incidents(groups=[group], limit=50)
                     if check is None or name in i.checks or i.group == name]
        state = rows[0].state if check is not None else _service_state(rows)
        return Detail(
            kind=kind, name=name, description=description,
            check_kind=check.kind if check else None,
            target=check.spec.target if check else None,
            service=check.service if check else None, checks=rows, state=state,
            days=await self.days(names, now, span=span), availability=figures,
            sla_percent=None if sla is None else sla * 100, latency=latency,
            phases=phases,
            results=[ResultRow(r["at"], r["state"], r["duration"] * 1000, str(r["reason"]))
                     for r in recent],
            incidents=incidents, rule=self.rule_text, generated_at=now)

    async def incident(self, key: str, now: float) -> IncidentPage | None:
        found = await self.archive.incident(key)
        if found is None:
            return None
        row, timeline = found
        return IncidentPage(row, timeline, now)

    async def status(self, doc: Mapping[str, Any], now: float) -> StatusPage:
        page = self.config.status_page
        listed = page.services or self.services() or sorted(
            {c.group for c in self.checks.values()})
        open_groups = {i["group"]: i for i in doc.get("incidents", [])}
        entries = {e["name"]: e for e in doc.get("checks", [])}
        services = []
        for name in listed:
            names = self.members(name)
            incident = open_groups.get(name)
            members = [entries.get(n, {}) for n in names]
            if incident is not None:
                state = "outage"
            elif members and all(e.get("in_maintenance") for e in members):
                state = "maintenance"
            elif not any(e.get("state") for e in members):
                state = "unknown"
            else:
                state = "operational"
            span = await self._span(names, now - SECONDS["90d"], now, now)
            days = await self.days(names, now, span=span)
            figure = self._figure(*span, now - SECONDS["90d"], now)
            services.append(StatusService(
                name, state, days, figure,
                None if incident is None else incident["first_failure_at"]))
        return StatusPage(page.title, page.description, services, self.rule_text, now)


def _last_day(start: int, hours: Sequence[Hourly]) -> tuple[list[Point], list[Bucket]]:
    """A check's last 24 hours from `start`: a point each (an hour may come in parts: stored,
    and being counted), and all of them as one bucket."""
    counts = [[0, 0, 0, 0] for _ in range(24)]  # results, failed, duration sum, max
    n = failed = covered = na = maintenance = dsum = dmax = 0
    for t, hn, hfailed, hcovered, hna, hmaint, hdsum, hdmax in hours:
        i = (t - start) // 3600
        if 0 <= i < 24:
            c = counts[i]
            c[0], c[1], c[2], c[3] = c[0] + hn, c[1] + hfailed, c[2] + hdsum, max(c[3], hdmax)
        n, failed, covered, na = n + hn, failed + hfailed, covered + hcovered, na + hna
        maintenance, dsum, dmax = maintenance + hmaint, dsum + hdsum, max(dmax, hdmax)
    points = [Point(start + i * 3600, 3600.0, c[2] / c[0], c[3], None, EMPTY, c[1]) if c[0]
              else Point(start + i * 3600, 3600.0, None, None) for i, c in enumerate(counts)]
    return points, [Bucket(start, DAY, n, failed, 0, min(covered / 1000, DAY), na / 1000,
                           maintenance / 1000, dsum, dmax, None, None, None)]


def _service_state(rows: Sequence[CheckRow]) -> str:
    states = {r.state for r in rows}
    for state in ("down", "failing", "unreachable"):
        if state in states:
            return state
    if states and states <= {"maintenance"}:
        return "maintenance"
    if not states or states <= {"unknown"}:
        return "unknown"
    return "up"


def _date(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d")


def _clock(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _window(number: int | None, window: Maintenance, now: float) -> Window:
    start: float | None = None
    end: float | None = None
    if window.start is not None and window.end is not None:
        text = f"{_clock(window.start)} to {_clock(window.end)}"
        start, end = window.start.timestamp(), window.end.timestamp()
    else:
        days = "every day" if len(window.weekdays) == 7 else "every " + ", ".join(window.weekdays)
        at = window.at.strftime("%H:%M") if window.at else "?"
        text = (f"{days} at {at} {window.timezone} for "
                f"{format_duration(window.duration or 0)}")
    return Window(number=number, checks=list(window.checks), services=list(window.services),
                  reason=window.reason, active=window_active(window, now), next_start=start,
                  next_end=end, description=text)
