"""The ticket outbox: delivering the engine's decisions to helpdesks exactly once, in order.

Every action waits in the `outbox` table, written in the same transaction as the decision
that caused it. The dispatcher takes, for each incident, its oldest pending action only (a
note never overtakes its open, a resolve never its open) and delivers it:

- a transient error (network, timeout, 5xx, 408, 429, a body that is not what the API
  promised) is retried without end, with exponential backoff and jitter, never sooner than the
  helpdesk's Retry-After, which pauses the whole route;
- a permanent one (another 4xx, a missing setting) marks the action failed, logged with the
  helpdesk's message, counted, and shown by `probe status` and `probe tickets failed`;
- an open whose outcome is unknown (a timeout, a crash after sending: its attempt was counted
  before the call) is sent again only after `find(key)` says there is no such ticket.

The watcher asks helpdesks about open tickets every `ticketing.poll_interval`: a ticket nobody
has taken after `escalate_after` is escalated through the route's `escalate_to`; a ticket a
human closed while the outage goes on is reopened, replaced by a new one, or left, as
`on_human_close` says.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from probe.config import Check
from probe.engine import TransitionKind
from probe.helpdesks import make_backend
from probe.helpdesks.base import Backend, RouteBase, TicketError
from probe.log import fields
from probe.store import Store
from probe.tickets import render, triage

log = logging.getLogger("probe.tickets")

MAX_BACKOFF = 300.0
CONCURRENCY = 32
RECONCILE_EVERY = 10  # polls
RECONCILE_WAIT = 30.0  # seconds deliveries wait at start for lost tickets to be taken up
DISPATCH_EVERY = 5.0  # the longest the dispatcher sleeps between two looks at the outbox
STATE_RETRY = 5.0  # seconds between tries while the state database refuses writes
INTERNAL_ATTEMPTS = 3  # attempts of an action that meets a bug in probe before it fails
# Helpdesk requests one ticket's look may take in the watcher (a status; a resolve or a note
# with what it reads first), each bounded by its route's timeout.
WATCH_STEP_REQUESTS = 3


# The engine's transitions, and what the watcher adds: the actions an outbox row can hold.
Action = TransitionKind | Literal["reopen", "new-ticket", "escalate"]
GroupHealth = tuple[str, str | None]  # ("open", key) | ("failing"|"healthy"|"unknown", None)


@dataclass(frozen=True)
class Row:
    id: int
    incident_key: str
    action: str
    route: str
    created_at: float
    facts: dict[str, Any]
    attempts: int
    unknown_outcome: bool


@dataclass(frozen=True)
class Context:
    """What the daemon knows of an incident's group that the ticket shows."""

    checks: Sequence[Check]
    recent: Sequence[Mapping[str, Any]]


class OutboxMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.depth = Gauge("probe_ticket_outbox_depth",
                           "Ticket actions waiting for delivery", registry=registry)
        self.latency = Histogram(
            "probe_ticket_delivery_seconds",
            "From the decision to the helpdesk's acknowledgement of the action",
            ["route", "action"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=registry,
        )
        self.attempts = Counter("probe_ticket_attempts_total", "Delivery attempts",
                                ["route", "action"], registry=registry)
        self.failures = Counter("probe_ticket_failures_total",
                                "Failed delivery attempts (transient ones are retried)",
                                ["route", "action", "kind"], registry=registry)
        self.internal_errors = Counter(
            "probe_internal_errors_total",
            "Ticket deliveries that met a bug in probe's own code (logged with a traceback)",
            registry=registry)


class Dispatcher:
    def __init__(
        self,
        store: Store,
        routes: Mapping[str, RouteBase],
        metrics: OutboxMetrics,
        context: Callable[[str], Context],
        *,
        agent: str,
        group_state: Callable[[str], GroupHealth] = lambda group: ("unknown", None),
        poll_interval: float = 60.0,
    ) -> None:
        self.agent = agent
        self.group_state = group_state
        # Tickets found open in a helpdesk that probe does not track, by group: the next
        # incident of the group takes one up instead of opening another.
        self.orphans: dict[str, tuple[str, str, str]] = {}  # group -> (route, key, ref)
        self.reconciled = asyncio.Event()
        self.store = store
        self.routes = dict(routes)
        self.metrics = metrics
        self.context = context
        self.poll_interval = poll_interval
        self._backends: dict[str, Backend[Any]] = {}
        self._wake = asyncio.Event()
        self._busy: set[str] = set()  # incidents with a delivery in flight
        self._paused: dict[str, float] = {}  # route -> not before (a 429's Retry-After)
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()
        self._precounted: dict[int, bool] = {}
        self._state_pause = 0.0  # no deliveries before this: the state database refused
        # What each action of the outbox does: the engine's transitions, and the watcher's.
        self._actions: dict[Action, Callable[[Row], Awaitable[None]]] = {
            "open": self._open_incident, "still-open": self._still_open,
            "resolve": self._resolve, "reopen": self._reopen, "new-ticket": self._new_ticket,
            "escalate": self._escalate,
        }

    # --- set-up --------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def update_routes(self, routes: Mapping[str, RouteBase]) -> None:
        for name, backend in list(self._backends.items()):
            if routes.get(name) != self.routes.get(name):
                del self._backends[name]
                task = asyncio.ensure_future(backend.close())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self.routes = dict(routes)
        self.wake()

    def backend(self, route: str) -> Backend[Any]:
        if route not in self._backends:
            settings = self.routes.get(route)
            if settings is None:
                raise TicketError(f"route {route!r} is not configured (any more)")
            self._backends[route] = make_backend(route, settings, database=self.store.path)
        return self._backends[route]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for backend in self._backends.values():
            await backend.close()

    # --- the loops -----------------------------------------------------------------------------
    # Each marks its progress (for probe.supervisor, which judges it against *_every).

    async def serve(self, progress: Callable[[], None] = lambda: None) -> None:
        try:
            async with asyncio.timeout(RECONCILE_WAIT):
                await self.reconciled.wait()  # adopt lost tickets before opening new ones
        except TimeoutError:
            log.warning("reconciling tickets takes long: delivering anyway")
        while True:
            progress()
            self._wake.clear()
            try:
                wait = await self._dispatch_due()
            except sqlite3.Error as err:
                wait = self._state_failed(err)
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _dispatch_due(self) -> float:
        """Start the deliveries that are due; return how long to sleep at most."""
        now = time.time()
        if now < self._state_pause:
            return self._state_pause - now
        heads = await asyncio.to_thread(self.store.run, _heads)
        self.metrics.depth.set(heads.pending)
        wait = DISPATCH_EVERY
        for row in heads.rows:
            not_before = max(row.next_attempt_at, self._paused.get(row.route, 0.0))
            if row.incident_key in self._busy:
                continue
            if not_before > now:
                wait = min(wait, not_before - now)
                continue
            self._busy.add(row.incident_key)
            task = asyncio.create_task(self._deliver(row))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return max(wait, 0.01)

    def delivery_every(self) -> float:
        """The longest serve() goes between two marks of progress."""
        return DISPATCH_EVERY if self.reconciled.is_set() else RECONCILE_WAIT

    async def watch(self, progress: Callable[[], None] = lambda: None) -> None:
        """Look at open tickets every poll_interval; reconcile at start and every ten polls."""
        polls = 0
        while True:
            progress()
            try:
                if polls % RECONCILE_EVERY == 0:
                    await self.reconcile(progress)
                await self.check_tickets(progress)
            except Exception:
                log.exception("watching tickets failed")
            finally:
                self.reconciled.set()
            polls += 1
            await asyncio.sleep(self.poll_interval)

    def watch_every(self) -> float:
        """The longest watch() goes between two marks of progress: a poll's sleep and one
        ticket's look, which it marks one by one (a poll may look at hundreds)."""
        timeout = max((route.timeout for route in self.routes.values()), default=0.0)
        return self.poll_interval + WATCH_STEP_REQUESTS * timeout

    # --- one delivery --------------------------------------------------------------------------

    async def _deliver(self, head: _Head) -> None:
        try:
            async with self._slots:
                row = await asyncio.to_thread(self.store.run, lambda db: _load(db, head.id))
                if row is None:
                    return
                self.metrics.attempts.labels(row.route, row.action).inc()
                try:
                    await self._perform(row)
                except TicketError as err:
                    await self._failed(row, err)
                except sqlite3.Error:
                    raise  # the state database, not the helpdesk: see below
                except Exception as err:  # a bug in probe, not a flaky helpdesk
                    await self._failed(row, self._internal_error(row, err))
                else:
                    self._precounted.pop(row.id, None)
                    self.metrics.latency.labels(row.route, row.action).observe(
                        max(0.0, time.time() - row.created_at))
        except sqlite3.Error as err:
            self._state_failed(err)
        finally:
            self._busy.discard(head.incident_key)
            self.wake()

    def _internal_error(self, row: Row, err: Exception) -> TicketError:
        """A bug in probe's own code on the way to the helpdesk: logged with its traceback and
        counted; tried again a few times (it may depend on a passing state), then failed for
        good, listed by `probe tickets failed` and sent again by `probe tickets retry` once
        fixed. Never dropped, and never retried forever as if the helpdesk were flaky."""
        log.exception("ticket delivery crashed: a bug in probe %s", fields(
            route=row.route, action=row.action, key=row.incident_key, attempt=row.attempts + 1))
        self.metrics.internal_errors.inc()
        final = row.attempts + 1 >= INTERNAL_ATTEMPTS
        return TicketError(f"internal error (a bug in probe{', given up after ' if final else ''}"
                           f"{f'{INTERNAL_ATTEMPTS} attempts' if final else ''}): {err!r}",
                           permanent=final)

    def _state_failed(self, err: sqlite3.Error) -> float:
        """The state database refuses (read-only, full): deliver nothing until it takes
        writes again, since a delivery that cannot be recorded would be made twice."""
        if time.time() >= self._state_pause:
            log.error("ticket delivery paused: the state database cannot be written %s",
                      fields(error=err))
        self._state_pause = time.time() + STATE_RETRY
        return STATE_RETRY

    async def _failed(self, row: Row, err: TicketError) -> None:
        # An attempt that may create a ticket was counted before its call (see _count).
        counted = 0 if self._precounted.pop(row.id, False) else 1
        if err.refused:
            await self._write("UPDATE outbox SET unknown_outcome = 0 WHERE id = ?", (row.id,))
        kind = "permanent" if err.permanent else "transient"
        self.metrics.failures.labels(row.route, row.action, kind).inc()
        now = time.time()
        if err.permanent:
            log.error("ticket action failed for good %s", fields(
                route=row.route, action=row.action, key=row.incident_key, error=err.message))
            await self._write(
                "UPDATE outbox SET status = 'failed', last_error = ?, attempts = attempts + ?"
                " WHERE id = ?", (err.message, counted, row.id))
            return
        backoff = min(MAX_BACKOFF, 2.0 ** min(row.attempts, 16)) * random.uniform(0.5, 1.0)
        if err.retry_after is not None:
            self._paused[row.route] = now + err.retry_after
            backoff = max(backoff, err.retry_after)
        level = logging.WARNING if row.attempts < 3 else logging.DEBUG
        log.log(level, "ticket action will be retried %s", fields(
            route=row.route, action=row.action, key=row.incident_key, error=err.message,
            retry_in=f"{backoff:.1f}s"))
        await self._write(
            "UPDATE outbox SET attempts = attempts + ?, next_attempt_at = ?, last_error = ?"
            " WHERE id = ?", (counted, now + backoff, err.message, row.id))

    async def _count(self, row: Row) -> None:
        """Count an attempt before a call that may create a ticket: should probe die during
        the call, or the call time out, the next attempt asks find() first."""
        await self._write("UPDATE outbox SET attempts = attempts + 1, unknown_outcome = 1"
                          " WHERE id = ?", (row.id,))
        self._precounted[row.id] = True

    async def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(sql, params)

        await asyncio.to_thread(self.store.run, work)

    async def _perform(self, row: Row) -> None:
        perform = self._actions.get(row.action)  # type: ignore[call-overload]
        if perform is None:
            raise TicketError(f"unknown action {row.action!r}", permanent=True)
        await perform(row)

    async def _open_incident(self, row: Row) -> None:
        await self._open(row, ticket_key=row.incident_key, follows=None)

    async def _still_open(self, row: Row) -> None:
        await self._each_open_ticket(row, lambda b, ref: b.note(ref, render.still_open(
            row.facts)))
        await self._done(row)

    async def _resolve(self, row: Row) -> None:
        await self._each_open_ticket(row, lambda b, ref: b.resolve(ref, render.resolved(
            row.facts)), new_state="resolved")
        await self._done(row)

    async def _new_ticket(self, row: Row) -> None:
        await self._open(row, ticket_key=row.facts["ticket_key"], follows=row.facts["follows"])

    async def _reopen(self, row: Row) -> None:
        tickets = await asyncio.to_thread(
            self.store.query, "SELECT ticket_key, route, ref FROM tickets WHERE incident_key = ?"
            " AND state = 'open'", (row.incident_key,))
        for ticket_key, route, ref in tickets:
            try:
                await self.backend(route).reopen(ref, render.reopened(row.facts))
            except TicketError as err:
                if not err.permanent:
                    raise
                # Some helpdesks cannot reopen (a Zendesk ticket closed for good, a
                # ServiceNow incident in Closed): a new ticket that refers to it instead.
                log.warning("ticket cannot be reopened: opening a new one %s", fields(
                    route=route, ref=ref, error=err.message))
                await self._replace(ticket_key, row.incident_key, route, ref, row.facts)
        await self._done(row)

    async def _open(self, row: Row, *, ticket_key: str, follows: str | None) -> None:
        existing = await asyncio.to_thread(self.store.query,
                                           "SELECT ref FROM tickets WHERE ticket_key = ?",
                                           (ticket_key,))
        if existing:
            await self._done(row)  # delivered before a crash that came before this mark
            return
        backend = self.backend(row.route)
        orphan = self.orphans.get(row.facts["group"])
        if orphan is not None and orphan[0] == row.route and follows is None:
            del self.orphans[row.facts["group"]]
            await self._adopt(row.route, backend, orphan[1], orphan[2], row.incident_key)
            await self._done(row)
            return
        ref = None
        if row.unknown_outcome:
            ref = await backend.find(ticket_key)
            if ref is not None:
                log.info("ticket found after an unknown outcome %s", fields(
                    route=row.route, key=ticket_key, ref=ref))
        if ref is None:
            policy = row.facts.get("ticket") or {}
            context = self.context(row.facts["group"])
            ticket = render.ticket(
                row.facts, ticket_key, policy.get("priority", "urgent"),
                recent=context.recent,
                links={"runbook": policy.get("runbook"), "dashboard": policy.get("dashboard")},
                title_template=policy.get("title_template"),
                body_template=policy.get("body_template"),
                follows=follows,
            )
            # Counted before the call: after a crash or a timeout, find() decides.
            await self._count(row)
            ref = await backend.open(ticket)
        policy_json = json.dumps(row.facts.get("ticket") or {})

        def record(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT OR IGNORE INTO tickets (ticket_key, incident_key, route, ref, opened_at,"
                " policy) VALUES (?, ?, ?, ?, ?, ?)",
                (ticket_key, row.incident_key, row.route, ref, time.time(), policy_json))
            db.execute("UPDATE outbox SET status = 'delivered', delivered_at = ? WHERE id = ?",
                       (time.time(), row.id))
            db.execute("COMMIT")

        await asyncio.to_thread(self.store.run, record)
        log.warning("ticket opened %s", fields(route=row.route, key=ticket_key, ref=ref))
        await self._triage(backend, ref, row)

    async def _triage(self, backend: Backend[Any], ref: str, row: Row) -> None:
        """Evidence as the ticket's first note: gathered after the open so that the ticket
        is not delayed by it. Best effort: a few tries, then a log line."""
        checks = self.context(row.facts["group"]).checks
        lines = await triage.gather(checks)
        if not lines:
            return
        for attempt in range(3):
            try:
                await backend.note(ref, render.triage(lines))
                return
            except TicketError as err:
                if err.permanent or attempt == 2:
                    log.warning("triage note not delivered %s", fields(
                        route=row.route, ref=ref, error=err.message))
                    return
                await asyncio.sleep(2.0 * (attempt + 1))

    async def _each_open_ticket(
        self, row: Row, act: Callable[[Backend[Any], str], Any], new_state: str | None = None,
    ) -> None:
        tickets = await asyncio.to_thread(
            self.store.query,
            "SELECT ticket_key, route, ref FROM tickets WHERE incident_key = ? AND state = 'open'",
            (row.incident_key,))
        if not tickets and row.action != "still-open":
            failed = await asyncio.to_thread(
                self.store.query,
                "SELECT last_error FROM outbox WHERE incident_key = ? AND action = 'open'"
                " AND status = 'failed'", (row.incident_key,))
            if failed:
                raise TicketError(f"no ticket to update: its open failed ({failed[0][0]})",
                                  permanent=True)
        for ticket_key, route, ref in tickets:
            await act(self.backend(route), ref)
            if new_state is not None:
                await self._write("UPDATE tickets SET state = ? WHERE ticket_key = ?",
                                  (new_state, ticket_key))

    async def _done(self, row: Row) -> None:
        await self._write(
            "UPDATE outbox SET status = 'delivered', delivered_at = ? WHERE id = ?",
            (time.time(), row.id))

    async def _escalate(self, row: Row) -> None:
        target_route = row.facts["escalate_to"]
        ticket_key = row.facts["ticket_key"]
        target = self.backend(target_route)
        escalation_key = f"{ticket_key}/escalation"
        ref = await target.find(escalation_key) if row.unknown_outcome else None
        if ref is None:
            policy = row.facts.get("ticket") or {}
            context = self.context(row.facts["group"])
            ticket = render.ticket(row.facts, escalation_key, policy.get("priority", "urgent"),
                                   recent=context.recent)
            await self._count(row)
            await target.open(ticket)
        await self.backend(row.route).note(
            row.facts["ref"], render.escalated(target_route, row.facts["after"]))
        await self._done(row)
        log.warning("ticket escalated %s", fields(route=row.route, to=target_route,
                                                  key=ticket_key))

    # --- the watcher ---------------------------------------------------------------------------

    async def reconcile(self, progress: Callable[[], None] = lambda: None) -> None:
        """Tickets open in a helpdesk with this agent's key that probe does not track (its
        state was lost or restored from a backup): adopted when their check still fails,
        resolved with a note when it is healthy."""
        prefix = f"{self.agent}/"
        for route in list(self.routes):
            progress()
            try:
                backend = self.backend(route)
                found = await backend.open_tickets(prefix)
            except TicketError as err:
                log.info("reconcile skipped %s", fields(route=route, error=err.message))
                continue
            for key, ref in (found or {}).items():
                progress()
                await self._reconcile_one(route, backend, key, ref)

    async def _reconcile_one(self, route: str, backend: Backend[Any], key: str, ref: str) -> None:
        known = await asyncio.to_thread(
            self.store.query, "SELECT state FROM tickets WHERE ticket_key = ? OR ref = ?",
            (key, ref))
        parts = key.split("/")
        if known or len(parts) < 3 or parts[2].endswith("escalation"):
            return
        group = parts[1]
        incident_key = "/".join(parts[:3]).split("+")[0]
        pending = await asyncio.to_thread(
            self.store.query,
            "SELECT 1 FROM outbox WHERE incident_key = ? AND status = 'pending'", (incident_key,))
        if pending:
            return  # its own actions are on their way
        health, current = self.group_state(group)
        if health == "open" and current is not None:
            tracked = await asyncio.to_thread(
                self.store.query, "SELECT 1 FROM tickets WHERE incident_key = ? AND state ="
                " 'open'", (current,))
            if not tracked:
                await self._adopt(route, backend, key, ref, current)
            else:
                log.info("untracked ticket left alone %s", fields(route=route, ref=ref, key=key))
            return
        if health in ("failing", "unknown"):
            self.orphans.setdefault(group, (route, key, ref))  # decided when it is known
            return
        self.orphans.pop(group, None)
        try:
            await backend.resolve(ref, "probe found this ticket open, but no outage of "
                                       f"{parts[1]} is going on: the check is healthy.")
        except TicketError as err:
            log.warning("stray ticket not resolved %s", fields(route=route, ref=ref,
                                                               error=err.message))
            return
        log.warning("stray ticket resolved %s", fields(route=route, ref=ref, key=key))

    async def _adopt(
        self, route: str, backend: Backend[Any], key: str, ref: str, incident_key: str,
    ) -> None:
        await self._write(
            "INSERT OR REPLACE INTO tickets (ticket_key, incident_key, route, ref, opened_at)"
            " VALUES (?, ?, ?, ?, ?)", (key, incident_key, route, ref, time.time()))
        log.warning("ticket adopted %s", fields(route=route, ref=ref, key=key,
                                                incident=incident_key))
        try:
            await backend.note(ref, "probe had lost track of this ticket and took it up "
                                    "again: the outage it reports goes on.")
        except TicketError as err:
            log.info("adoption note not delivered %s", fields(ref=ref, error=err.message))

    async def check_tickets(self, progress: Callable[[], None] = lambda: None) -> None:
        """Ask the helpdesks about open tickets: escalate the untaken, handle the closed."""
        rows = await asyncio.to_thread(
            self.store.query,
            "SELECT t.ticket_key, t.incident_key, t.route, t.ref, t.opened_at, t.escalated_at,"
            " t.policy, i.facts FROM tickets t JOIN incidents i ON i.key = t.incident_key"
            " WHERE t.state = 'open' AND i.resolved_at IS NULL")
        for ticket_key, incident_key, route, ref, opened_at, escalated_at, policy_text, facts in (
            rows
        ):
            progress()
            pending = await asyncio.to_thread(
                self.store.query,
                "SELECT 1 FROM outbox WHERE incident_key = ? AND status = 'pending'"
                " AND action IN ('resolve', 'reopen', 'new-ticket', 'escalate')",
                (incident_key,))
            if pending or route not in self.routes:
                continue
            backend = self.backend(route)
            if not backend.tracks_status:
                continue
            try:
                state = await backend.status(ref)
            except TicketError as err:
                log.info("ticket status unknown %s", fields(route=route, ref=ref,
                                                            error=err.message))
                continue
            policy = json.loads(policy_text)
            facts_now = {**json.loads(facts), "ticket": policy}
            if state in ("closed", "gone"):
                await self._closed_by_human(ticket_key, incident_key, route, ref, state,
                                            policy, facts_now)
            elif state == "open" and escalated_at is None:
                await self._maybe_escalate(ticket_key, incident_key, route, ref, opened_at,
                                           policy, facts_now)

    async def _closed_by_human(
        self, ticket_key: str, incident_key: str, route: str, ref: str, state: str,
        policy: Mapping[str, Any], facts: dict[str, Any],
    ) -> None:
        choice = policy.get("on_human_close", "reopen")
        if choice == "reopen" and state == "gone":
            choice = "new"  # nothing left to reopen
        log.warning("ticket closed while the outage goes on %s", fields(
            route=route, ref=ref, key=ticket_key, policy=choice))
        if choice == "leave":
            await self._write("UPDATE tickets SET state = 'left' WHERE ticket_key = ?",
                              (ticket_key,))
            return
        if choice == "reopen":
            await self._enqueue(incident_key, "reopen", route, facts)
            return
        await self._replace(ticket_key, incident_key, route, ref, facts)

    async def _replace(
        self, ticket_key: str, incident_key: str, route: str, ref: str, facts: Mapping[str, Any]
    ) -> None:
        """Leave a ticket that is closed for good, and open one that refers to it."""
        count = await asyncio.to_thread(
            self.store.query, "SELECT COUNT(*) FROM tickets WHERE incident_key = ?",
            (incident_key,))
        await self._write("UPDATE tickets SET state = 'left' WHERE ticket_key = ?",
                          (ticket_key,))
        await self._enqueue(incident_key, "new-ticket", route,
                            {**facts, "ticket_key": f"{incident_key}+{count[0][0]}",
                             "follows": ref})

    async def _maybe_escalate(
        self, ticket_key: str, incident_key: str, route: str, ref: str, opened_at: float,
        policy: Mapping[str, Any], facts: dict[str, Any],
    ) -> None:
        after = policy.get("escalate_after")
        target = getattr(self.routes.get(route), "escalate_to", None)
        if after is None or target is None or time.time() - opened_at < after:
            return
        await self._write("UPDATE tickets SET escalated_at = ? WHERE ticket_key = ?",
                          (time.time(), ticket_key))
        await self._enqueue(incident_key, "escalate", route,
                            {**facts, "escalate_to": target, "ticket_key": ticket_key,
                             "ref": ref, "after": after})

    async def _enqueue(self, incident_key: str, action: str, route: str,
                       facts: Mapping[str, Any]) -> None:
        now = time.time()
        await self._write(
            "INSERT INTO outbox (incident_key, action, route, created_at, payload,"
            " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
            (incident_key, action, route, now, json.dumps(facts, default=str), now))
        self.wake()


@dataclass(frozen=True)
class _Head:
    id: int
    incident_key: str
    route: str
    next_attempt_at: float


@dataclass(frozen=True)
class _Heads:
    rows: list[_Head]
    pending: int


def _heads(db: sqlite3.Connection) -> _Heads:
    """The oldest pending action of each incident."""
    rows = db.execute(
        "SELECT MIN(id), incident_key FROM outbox WHERE status = 'pending' GROUP BY incident_key"
    ).fetchall()
    heads = []
    pending = db.execute("SELECT COUNT(*) FROM outbox WHERE status = 'pending'").fetchone()[0]
    for row_id, _ in rows:
        head = db.execute("SELECT id, incident_key, route, next_attempt_at FROM outbox"
                          " WHERE id = ?", (row_id,)).fetchone()
        heads.append(_Head(*head))
    return _Heads(heads, pending)


def _load(db: sqlite3.Connection, row_id: int) -> Row | None:
    found = db.execute(
        "SELECT id, incident_key, action, route, created_at, payload, attempts, unknown_outcome"
        " FROM outbox WHERE id = ? AND status = 'pending'", (row_id,)).fetchone()
    if found is None:
        return None
    row_id, key, action, route, created, payload, attempts, unknown = found
    return Row(row_id, key, action, route, created, json.loads(payload), attempts, bool(unknown))


def failed_actions(store: Store) -> list[tuple[Any, ...]]:
    return store.query(
        "SELECT id, incident_key, action, route, attempts, last_error FROM outbox"
        " WHERE status = 'failed' ORDER BY id")

