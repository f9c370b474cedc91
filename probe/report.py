"""`probe report`: availability per service and per check over a period, read from the state
database (no daemon needed), as Markdown, CSV, HTML or JSON.

Each row: availability, downtime, maintenance and n/a time (probe.availability's rule, stated
in every form but the CSV), the incidents with their tickets, the mean time to acknowledge (from
the ticket's opening to the first time its helpdesk said someone took it, as the watcher saw
it) and to recover (from the first failed result to the recovery), the SLA target and whether
it was met."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Sequence
from typing import Any

from checks.values import format_duration
from probe import alerts
from probe.pages.build import Pages
from probe.pages.model import Availability, IncidentRow, Report, ReportRow

CSV_COLUMNS = ("kind", "name", "service", "from", "to", "availability_percent",
               "downtime_seconds", "maintenance_seconds", "na_seconds", "incidents",
               "mtta_seconds", "mttr_seconds", "sla_percent", "sla_met")
FORMATS = ("md", "csv", "html", "json")


def parse_when(text: str, *, end: bool) -> float:
    """A date (2026-11-01: its start; as --to, the end of that day) or an ISO 8601 time with
    a zone (UTC when none is given)."""
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        pass
    else:
        start = dt.datetime.combine(day, dt.time(), dt.UTC)
        return (start + dt.timedelta(days=1) if end else start).timestamp()
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (2026-11-01) or a time "
                         "(2026-11-01T08:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


async def build(pages: Pages, start: float, end: float, now: float,
                service: str | None = None) -> Report:
    """The report's rows: each service (or the one asked for), then its checks; checks with
    no service after all services."""
    end = min(end, now)
    checks = pages.checks
    services = [service] if service is not None else pages.services()
    rows = []
    for name in services:
        members = pages.members(name)
        described = pages.config.services.get(name)
        rows.append(await _row(pages, "service", name, None, members,
                               described.sla if described else None, start, end, now))
        for member in members:
            rows.append(await _row(pages, "check", member, name, [member],
                                   checks[member].sla, start, end, now))
    if service is None:
        for check in checks.values():
            if check.service is None:
                rows.append(await _row(pages, "check", check.name, None, [check.name],
                                       check.sla, start, end, now))
        section = pages.config.alertmanager
        if section is not None:
            fed = [i for i in await pages.archive.incidents(start=start, end=end, limit=10_000)
                   if i.alert_group is not None]  # read once, for every receiver
            rows += [_fed(receiver, fed, start, end, now) for receiver in section.receivers]
    return Report(start, end, pages.rule_text, rows, now)


def _fed(receiver: str, fed: Sequence[IncidentRow], start: float, end: float,
         now: float) -> ReportRow:
    """A receiver of Alertmanager's: its incidents in the period (of `fed`, every alert
    incident's), and as its downtime the time they fired in it (Alertmanager says nothing of
    the time between: availability is n/a)."""
    incidents = [i for i in fed if i.group.startswith(alerts.receiver_prefix(receiver))]
    firing = sum(max(0.0, min(end, i.resolved_at or now) - max(start, i.first_failure_at))
                 for i in incidents)
    figure = Availability(start, end, 0.0, firing, 0.0, 0.0, len(incidents), None, "n/a")
    return ReportRow("alertmanager", receiver, None, figure, [], incidents, _mtta(incidents),
                     _mttr(incidents), None, None)


async def _row(pages: Pages, kind: str, name: str, service: str | None,
               names: Sequence[str], sla: float | None, start: float, end: float,
               now: float) -> ReportRow:
    figure = await pages.availability(names, start, end, now)
    downs = await pages.archive.downtime(names, start, end)
    keys = {key for rows in downs.values() for key, _, _ in rows}
    group = name if kind == "service" else pages.checks[name].group
    incidents = [i for i in await pages.archive.incidents(groups=[group], start=start, end=end,
                                                          limit=10_000)
                 if i.key in keys or (kind == "check" and not i.is_service and i.group == name)]
    days = []
    if end - start <= 400 * 86400:  # the bars, for the HTML form
        days = [d for d in await pages.days(names, now, count=_days(start, now))
                if start <= _start_of(d.date) < end]
    sla_percent = None if sla is None else sla * 100
    met = None if sla_percent is None or figure.percent is None else figure.percent >= sla_percent
    return ReportRow(kind, name, service, figure, days, incidents, _mtta(incidents),
                     _mttr(incidents), sla_percent, met)


def _days(start: float, now: float) -> int:
    return max(1, int((now - start) // 86400) + 2)


def _start_of(date: str) -> float:
    return dt.datetime.combine(dt.date.fromisoformat(date), dt.time(), dt.UTC).timestamp()


def _mtta(incidents: Sequence[IncidentRow]) -> float | None:
    waits = [t.acknowledged_at - t.opened_at for i in incidents for t in i.tickets[:1]
             if t.acknowledged_at is not None]
    return sum(waits) / len(waits) if waits else None


def _mttr(incidents: Sequence[IncidentRow]) -> float | None:
    spans = [i.resolved_at - i.first_failure_at for i in incidents if i.resolved_at is not None]
    return sum(spans) / len(spans) if spans else None


# --- forms -------------------------------------------------------------------------------------

def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat().replace("+00:00", "Z")


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return ""
    return str(round(value)) if digits == 0 else f"{value:.{digits}f}"


def _percent(row: ReportRow) -> str:
    return "" if row.availability.percent is None else row.availability.text.removesuffix(" %")


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in report.rows:
        a = row.availability
        writer.writerow([
            row.kind, row.name, row.service or "", _iso(report.start), _iso(report.end),
            _percent(row), _num(a.down), _num(a.maintenance), _num(a.na), len(row.incidents),
            _num(row.mtta), _num(row.mttr),
            "" if row.sla_percent is None else f"{row.sla_percent:g}",
            "" if row.sla_met is None else str(row.sla_met).lower()])
    return out.getvalue()


def to_json(report: Report) -> str:
    def row(r: ReportRow) -> dict[str, Any]:
        a = r.availability
        return {
            "kind": r.kind, "name": r.name, "service": r.service,
            "availability_percent": a.percent, "availability_text": a.text,
            "downtime_seconds": a.down, "maintenance_seconds": a.maintenance,
            "na_seconds": a.na, "monitored_seconds": a.monitored,
            "incidents": [{"key": i.key, "first_failure_at": _iso(i.first_failure_at),
                           "opened_at": _iso(i.opened_at),
                           "resolved_at": None if i.resolved_at is None else _iso(i.resolved_at),
                           "tickets": [{"route": t.route, "ref": t.ref, "url": t.url,
                                        "acknowledged_at": None if t.acknowledged_at is None
                                        else _iso(t.acknowledged_at)} for t in i.tickets]}
                          for i in r.incidents],
            "mtta_seconds": r.mtta, "mttr_seconds": r.mttr,
            "sla_percent": r.sla_percent, "sla_met": r.sla_met}
    return json.dumps({"from": _iso(report.start), "to": _iso(report.end),
                       "rule": report.rule, "rows": [row(r) for r in report.rows]}, indent=2)


def to_markdown(report: Report) -> str:
    lines = [f"# Availability from {_iso(report.start)} to {_iso(report.end)}", "",
             f"How it is computed: {report.rule}", "",
             "| | name | availability | SLA | down | maintenance | n/a | incidents | MTTA |"
             " MTTR |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report.rows:
        a = r.availability
        verdict = {True: "met", False: "missed", None: "n/a"}[r.sla_met]
        sla = "" if r.sla_percent is None else f"{r.sla_percent:g} % ({verdict})"
        refs = ", ".join(t.ref for i in r.incidents for t in i.tickets)
        lines.append(
            f"| {r.kind} | {_md(r.name)} | {a.text} | {sla} | {_took(a.down)} |"
            f" {_took(a.maintenance)} | {_took(a.na)} | {len(r.incidents)}"
            f"{f' ({_md(refs)})' if refs else ''} | {_took(r.mtta)} | {_took(r.mttr)} |")
    return "\n".join(lines) + "\n"


def _took(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return format_duration(round(seconds)) if seconds >= 1 else "0s"


def _md(text: str) -> str:
    """A name or a helpdesk's ref in a Markdown table: its pipes and markup made inert."""
    return "".join(f"\\{c}" if c in "\\|*_`[]<>#" else c for c in text)
