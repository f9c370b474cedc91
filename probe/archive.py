"""What the state database remembers, read for the pages and `probe report`: each check's
history buckets (probe.history), its downtime, and the incidents with their tickets and what
happened to them. SQLite and PostgreSQL alike: the history's tables are the same in both, and
the incidents' times are read through `epoch` (PostgreSQL keeps them as timestamptz).

Which resolution answers for which part of a period: minutes where they are surely kept (from
the first whole hour after `history.minutes` ago), hours before that back to the first whole
day after `history.hours` ago, days before that. A bucket partly in the period counts pro rata
(probe.availability)."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from probe.history import DAY, HOUR, MINUTE, TABLES, Bucket, bucket, columns
from probe.pages.model import Event, IncidentRow, Ticket

Query = Callable[[str, tuple[Any, ...]], Awaitable[list[tuple[Any, ...]]]]


@dataclass(frozen=True)
class Keep:
    """How long each resolution is kept (the configuration's `history`)."""

    minutes: float
    hours: float
    days: float


# A check's results in one hour, as the dashboard needs them, as the database gives them:
# (start, results, failed, covered ms, n/a ms, maintenance ms, duration sum ms, max ms).
Hourly = tuple[int, int, int, int, int, int, int, int]


class Archive:
    """Reads through `query` (SQL with `?` placeholders; PostgreSQL's adapter turns them into
    its own) and `epoch` (a time column as seconds since the epoch)."""

    def __init__(self, query: Query, keep: Keep, *, epoch: Callable[[str], str] = str,
                 link: Callable[[str, str], str | None] = lambda route, ref: None) -> None:
        self._query = query
        self.keep = keep
        self._epoch = epoch
        self._link = link  # a ticket's address in its helpdesk, by route and ref
        # The dashboard's rolled-up hours, as last read: (what was asked, the rows).
        self._hours: tuple[Any, list[tuple[Any, ...]]] = (None, [])

    # --- buckets ----------------------------------------------------------------------------

    def bounds(self, now: float) -> tuple[int, int]:
        """Where minutes begin to answer, and where hours do (probe.archive's rule)."""
        minutes_from = int((now - self.keep.minutes) // HOUR) * HOUR + HOUR
        hours_from = int((now - self.keep.hours) // DAY) * DAY + DAY
        return minutes_from, min(hours_from, minutes_from)

    async def buckets(self, names: Sequence[str], start: float, end: float,
                      now: float) -> dict[str, list[Bucket]]:
        """Each check's buckets over [start, end), oldest first, each at the resolution that
        answers for its time."""
        if not names:
            return {}
        minutes_from, hours_from = self.bounds(now)
        out: dict[str, list[Bucket]] = {name: [] for name in names}
        spans = ((DAY, start, min(end, hours_from)), (HOUR, max(start, hours_from),
                 min(end, minutes_from)), (MINUTE, max(start, minutes_from), end))
        for size, a, b in spans:
            if b <= a:
                continue
            # Whole buckets that overlap [a, b): a bucket starting before `a` counts pro rata.
            lo = int(a // size) * size
            for name, row in await self._rows(names, size, lo, b):
                out[name].append(bucket(size, row))
        return out

    async def _rows(self, names: Sequence[str], size: int, start: float,
                    end: float) -> list[tuple[Any, ...]]:
        marks = ",".join("?" * len(names))
        shown = ", ".join(f"h.{c}" for c in columns(size))
        return [(row[0], row[1:]) for row in await self._query(
            f"SELECT c.name, {shown} FROM history_checks c JOIN {TABLES[size]} h"
            f" ON h.check_id = c.id AND h.t >= ? AND h.t < ? WHERE c.name IN ({marks})"
            " ORDER BY c.name, h.t", (int(start), math.ceil(end), *names))]

    async def recent(self, names: Sequence[str], now: float) -> dict[str, list[Hourly]]:
        """The last 24 h of each check by hour: the dashboard's sparklines and figures. The
        hours rolled up are read once per roll-up (they change only then); the others from
        their minutes, summed by the database."""
        hour = int(now // HOUR) * HOUR
        first = hour - 23 * HOUR
        out: dict[str, list[Hourly]] = {name: [] for name in names}
        ids = await self._ids(names)
        if not ids:
            return out
        by_id = {i: name for name, i in ids.items()}
        marks = ",".join("?" * len(ids))
        found = await self._query("SELECT upto FROM history_rolled WHERE res = ?", (HOUR,))
        rolled = max(first, min(hour, int(found[0][0]) if found else first))
        key = (first, rolled, tuple(ids.values()))
        if self._hours[0] != key:
            self._hours = (key, await self._query(
                "SELECT check_id, t, n, failed, min(covered, 3600000), na, maintenance, dsum,"
                f" dmax FROM history_hours WHERE check_id IN ({marks}) AND t >= ? AND t < ?",
                (*ids.values(), first, rolled)))
        rows = self._hours[1] + await self._query(
            f"SELECT check_id, t / {HOUR} * {HOUR} AS h, sum(n), sum(failed),"
            " sum(min(covered, 60000)), sum(na), sum(maintenance), sum(dsum), max(dmax)"
            f" FROM history_minutes WHERE check_id IN ({marks}) AND t >= ?"
            " GROUP BY check_id, h", (*ids.values(), rolled))
        for row in rows:
            out[by_id[row[0]]].append(row[1:])
        return out

    async def _ids(self, names: Sequence[str]) -> dict[str, int]:
        wanted = set(names)
        return {name: int(i) for i, name in await self._query(
            "SELECT id, name FROM history_checks", ()) if name in wanted}

    # --- downtime and incidents ---------------------------------------------------------------

    async def downtime(self, names: Sequence[str], start: float,
                       end: float) -> dict[str, list[tuple[str, float, float | None]]]:
        """Each check's downtime overlapping [start, end): (incident, since, until or None)."""
        out: dict[str, list[tuple[str, float, float | None]]] = {name: [] for name in names}
        if not names:
            return out
        marks = ",".join("?" * len(names))
        for key, name, since, until in await self._query(
                "SELECT incident_key, check_name, since, until FROM downtime"
                f" WHERE check_name IN ({marks}) AND since < ? AND (until IS NULL OR until > ?)"
                " ORDER BY since", (*names, end, start)):
            out[name].append((key, float(since), None if until is None else float(until)))
        return out

    async def incidents(self, *, groups: Iterable[str] | None = None, open_only: bool = False,
                        start: float | None = None, end: float | None = None,
                        limit: int = 200) -> list[IncidentRow]:
        """Incidents, newest first: of `groups` (None: all), open only, or overlapping
        [start, end)."""
        where: list[str] = []
        params: list[Any] = []
        if groups is not None:
            wanted = list(groups)
            if not wanted:
                return []
            where.append(f"grp IN ({','.join('?' * len(wanted))})")
            params += wanted
        opened, resolved = self._epoch("opened_at"), self._epoch("resolved_at")
        if open_only:
            where.append("resolved_at IS NULL")
        if end is not None:
            where.append(f"{opened} < ?")
            params.append(end)
        if start is not None:
            where.append(f"(resolved_at IS NULL OR {resolved} > ?)")
            params.append(start)
        sql = (f"SELECT key, grp, {opened}, {resolved}, facts FROM incidents"
               f"{' WHERE ' + ' AND '.join(where) if where else ''}"
               f" ORDER BY opened_at DESC LIMIT {int(limit)}")
        rows = await self._query(sql, tuple(params))
        tickets = await self.tickets([row[0] for row in rows])
        keys = [row[0] for row in rows]
        members = await self._members(keys)
        return [_incident(row, tickets.get(row[0], []), members.get(row[0], []))
                for row in rows]

    async def _members(self, keys: Sequence[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for chunk in _chunks(keys):
            for key, name in await self._query(
                    "SELECT incident_key, check_name FROM downtime WHERE incident_key IN"
                    f" ({','.join('?' * len(chunk))}) ORDER BY since", tuple(chunk)):
                out.setdefault(key, []).append(name)
        return out

    async def tickets(self, keys: Sequence[str]) -> dict[str, list[Ticket]]:
        out: dict[str, list[Ticket]] = {}
        for chunk in _chunks(keys):
            for key, route, ref, state, opened, acked, escalated in await self._query(
                    f"SELECT incident_key, route, ref, state, {self._epoch('opened_at')},"
                    f" {self._epoch('acknowledged_at')}, {self._epoch('escalated_at')}"
                    f" FROM tickets WHERE incident_key IN ({','.join('?' * len(chunk))})"
                    " ORDER BY opened_at", tuple(chunk)):
                out.setdefault(key, []).append(Ticket(
                    route=route, ref=ref, url=self._link(route, ref), state=state,
                    opened_at=float(opened), acknowledged_at=_time(acked),
                    escalated_at=_time(escalated)))
        return out

    async def incident(self, key: str) -> tuple[IncidentRow, list[Event]] | None:
        """An incident and its timeline: the first failure, the opening, each ticket action
        as the outbox delivered (or failed to deliver) it, the acknowledgement, the end."""
        opened, resolved = self._epoch("opened_at"), self._epoch("resolved_at")
        rows = await self._query(f"SELECT key, grp, {opened}, {resolved}, facts FROM incidents"
                                 " WHERE key = ?", (key,))
        if not rows:
            return None
        tickets = (await self.tickets([key])).get(key, [])
        row = _incident(rows[0], tickets, (await self._members([key])).get(key, []))
        events = [Event(row.first_failure_at, "failing", "first failed result"),
                  Event(row.opened_at, "opened", f"incident opened: {row.why}")]
        for action, created, delivered, status, error in await self._query(
                f"SELECT action, {self._epoch('created_at')}, {self._epoch('delivered_at')},"
                " status, last_error FROM outbox WHERE incident_key = ? ORDER BY id", (key,)):
            events.append(_action_event(action, float(created), _time(delivered), status,
                                        error))
        for ticket in tickets:
            if ticket.acknowledged_at is not None:
                events.append(Event(ticket.acknowledged_at, "acknowledged",
                                    f"the helpdesk says ticket {ticket.ref} was taken"))
        if row.resolved_at is not None:
            events.append(Event(row.resolved_at, "resolved", "incident resolved"))
        events.sort(key=lambda e: e.at)
        return row, events


_ACTIONS = {"open": ("opened", "ticket opened"), "still-open": ("note", "status note"),
            "resolve": ("resolved", "ticket resolved"), "escalate": ("escalated", "escalated"),
            "reopen": ("reopened", "ticket reopened"),
            "new-ticket": ("reopened", "a new ticket replaces the closed one")}


def _action_event(action: str, created: float, delivered: float | None, status: str,
                  error: str | None) -> Event:
    kind, text = _ACTIONS.get(action, ("note", action))
    if status == "failed":
        return Event(created, "error", f"{text}: not delivered: {error or 'unknown error'}")
    if delivered is None:
        return Event(created, kind, f"{text}: waiting to be delivered"
                     + (f" (last error: {error})" if error else ""))
    return Event(delivered, kind, f"{text} in the helpdesk")


def _incident(row: Sequence[Any], tickets: list[Ticket], members: list[str]) -> IncidentRow:
    key, group, opened, resolved, facts_text = row
    try:
        facts: Mapping[str, Any] = json.loads(facts_text)
    except ValueError:
        facts = {}
    checks = facts.get("checks") or {}
    fed = _alert_group(facts.get("alerts"))
    return IncidentRow(
        key=key, group=group, is_service=bool(facts.get("service")),
        checks=[] if fed is not None else members or sorted(checks) or [group],
        alert_group=fed,
        first_failure_at=float(facts.get("first_failure_at") or opened),
        opened_at=float(opened), resolved_at=_time(resolved), why=str(facts.get("why", "")),
        reason=str(facts.get("reason", "")), tickets=tickets)


def _alert_group(alerts: Any) -> str | None:
    """An incident fed by Alertmanager: "RECEIVER: label=value, ..." (None: a check's)."""
    if not isinstance(alerts, dict):
        return None
    labels = alerts.get("group_labels")
    shown = ", ".join(f"{k}={v}" for k, v in labels.items()) if isinstance(labels, dict) else ""
    return f"{alerts.get('receiver', '?')}: {shown}"


def _time(value: Any) -> float | None:
    return None if value is None else float(value)


def _chunks(items: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def sqlite_query(store: Any) -> Query:
    """Queries on probe.store.Store (its lock, in a thread: the event loop never waits)."""
    import asyncio

    async def query(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = await asyncio.to_thread(store.query, sql, params)
        return rows

    return query


def pg_query(pool: Any) -> Query:
    """Queries on the cluster's pool: `?` becomes psycopg's placeholder (no statement here
    has a literal `?` or `%`)."""

    async def query(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async with pool.connection() as conn:
            cursor = await conn.execute(sql.replace("?", "%s"), params)
            rows: list[tuple[Any, ...]] = await cursor.fetchall()
        return rows

    return query


def pg_epoch(column: str) -> str:
    return f"extract(epoch FROM {column})::float8"
