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
  before the call) is sent again only after `find(key)` says there is no such ticket, and
  find() is not asked before the earlier call's timeout has passed (the ledger keeps that
  moment, so a restarted probe waits too).

What happens to a ticket after it opens (escalation, a human closing it, lost tickets) is the
watcher's (probe.tickets.watcher), which queues its actions here. The rows themselves are the
ledger's (probe.tickets.ledger).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from probe.facts import Policy
from probe.helpdesks.base import Backend, TicketError
from probe.log import fields
from probe.tickets import render, triage
from probe.tickets.groups import Context
from probe.tickets.ledger import Action, FenceRejected, Head, Ledger, LedgerError, Row
from probe.tickets.pool import Backends
from probe.tickets.watcher import Orphans, adopt

log = logging.getLogger("probe.tickets")

MAX_BACKOFF = 300.0
CONCURRENCY = 32
RECONCILE_WAIT = 30.0  # seconds deliveries wait at start for lost tickets to be taken up
DISPATCH_EVERY = 5.0  # the longest the dispatcher sleeps between two looks at the outbox
STATE_RETRY = 5.0  # seconds between tries while the state database refuses writes
INTERNAL_ATTEMPTS = 3  # attempts of an action that meets a bug in probe before it fails


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
            "Ticket deliveries and looks at open tickets that met a bug in probe's own code"
            " (logged with a traceback)",
            registry=registry)
        # Counted by the watcher's reconcile, which closes the duplicates: it should stay 0.
        self.duplicates = Counter(
            "probe_ticket_duplicates_detected_total",
            "Tickets found open in a helpdesk beside another with the same key (closed as"
            " duplicates of the one kept)",
            ["route"], registry=registry)


class Dispatcher:
    def __init__(
        self,
        ledger: Ledger,
        backends: Backends,
        metrics: OutboxMetrics,
        context: Callable[[str], Awaitable[Context]],
        *,
        orphans: Orphans,
        reconciled: asyncio.Event,
        lost: Callable[[frozenset[str]], None] = lambda groups: None,
    ) -> None:
        self.ledger = ledger
        self.backends = backends
        self.metrics = metrics
        self.context = context
        self.orphans = orphans
        self.reconciled = reconciled  # set by the watcher's first reconcile
        self.lost = lost  # in a cluster: groups another agent delivers for now
        self._wake = asyncio.Event()
        self._busy: set[str] = set()  # incidents with a delivery in flight
        self._idle = asyncio.Event()  # set when the last delivery in flight ends
        self._paused: dict[str, float] = {}  # route -> not before (a 429's Retry-After)
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()
        self._precounted: dict[int, bool] = {}
        self._state_pause = 0.0  # no deliveries before this: the state database refused
        # What each action of the outbox does: the engine's transitions, and the watcher's.
        self._actions: dict[str, Callable[[Row], Awaitable[None]]] = {
            action: perform for action, perform in (
                self._each("open", self._open_incident), self._each("still-open", self._note),
                self._each("resolve", self._resolve), self._each("reopen", self._reopen),
                self._each("new-ticket", self._new_ticket), self._each("escalate", self._escalate),
            )}

    @staticmethod
    def _each(action: Action, perform: Callable[[Row], Awaitable[None]],
              ) -> tuple[Action, Callable[[Row], Awaitable[None]]]:
        return action, perform

    def wake(self) -> None:
        self._wake.set()

    async def quiesce(self, timeout: float) -> bool:
        """Wait for the deliveries in flight to end (at most `timeout` seconds): before a
        cluster's agent hands groups over, so that their new holder does not send again what
        this one is sending. False: some were still going."""
        try:
            async with asyncio.timeout(timeout):
                while self._busy:
                    self._idle.clear()
                    await self._idle.wait()
        except TimeoutError:
            pass
        return not self._busy

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- the loop ------------------------------------------------------------------------------

    async def serve(self, progress: Callable[[], None] = lambda: None) -> None:
        """Deliver what is due, until cancelled. Marks its progress for probe.supervisor,
        which judges it against `every()`."""
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
            except LedgerError as err:
                wait = self._state_failed(err)
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def every(self) -> float:
        """The longest serve() goes between two marks of progress."""
        return DISPATCH_EVERY if self.reconciled.is_set() else RECONCILE_WAIT

    async def _dispatch_due(self) -> float:
        """Start the deliveries that are due; return how long to sleep at most."""
        now = time.time()
        if now < self._state_pause:
            return self._state_pause - now
        heads = await self.ledger.heads()
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

    # --- one delivery --------------------------------------------------------------------------

    async def _deliver(self, head: Head) -> None:
        try:
            async with self._slots:
                row = await self.ledger.load(head.id)
                if row is None:
                    return
                self.metrics.attempts.labels(row.route, row.action).inc()
                try:
                    await self._perform(row)
                except TicketError as err:
                    await self._failed(row, err)
                except LedgerError:
                    raise  # the ledger's database, not the helpdesk: see below
                except Exception as err:  # a bug in probe, not a flaky helpdesk
                    await self._failed(row, self._internal_error(row, err))
                else:
                    self._precounted.pop(row.id, None)
                    self.metrics.latency.labels(row.route, row.action).observe(
                        max(0.0, time.time() - row.created_at))
        except FenceRejected as err:
            # Another agent holds the incident's group now (this one was paused, or thought
            # gone): it delivers, this one stops.
            log.warning("ticket delivery handed to another agent %s", fields(
                key=head.incident_key, groups=",".join(sorted(err.groups))))
            self.lost(err.groups)
        except LedgerError as err:
            self._state_failed(err)
        finally:
            self._busy.discard(head.incident_key)
            if not self._busy:
                self._idle.set()
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

    def _state_failed(self, err: LedgerError) -> float:
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
            await self.ledger.refused(row.id)
        kind = "permanent" if err.permanent else "transient"
        self.metrics.failures.labels(row.route, row.action, kind).inc()
        if err.permanent:
            log.error("ticket action failed for good %s", fields(
                route=row.route, action=row.action, key=row.incident_key, error=err.message))
            await self.ledger.give_up(row.id, counted=counted, error=err.message)
            return
        backoff = min(MAX_BACKOFF, 2.0 ** min(row.attempts, 16)) * random.uniform(0.5, 1.0)
        now = time.time()
        if err.retry_after is not None:
            self._paused[row.route] = now + err.retry_after
            backoff = max(backoff, err.retry_after)
        level = logging.WARNING if row.attempts < 3 else logging.DEBUG
        log.log(level, "ticket action will be retried %s", fields(
            route=row.route, action=row.action, key=row.incident_key, error=err.message,
            retry_in=f"{backoff:.1f}s"))
        await self.ledger.postpone(row.id, counted=counted, until=now + backoff,
                                   error=err.message)

    async def _count(self, row: Row, backend: Backend[Any]) -> None:
        """Count an attempt before a call that may create a ticket: should probe die during
        the call, or the call time out, the next attempt waits until the call's timeout has
        passed and then asks find() first."""
        await self.ledger.count_attempt(row.id, deadline=time.time() + backend.route.timeout)
        self._precounted[row.id] = True

    async def _perform(self, row: Row) -> None:
        perform = self._actions.get(row.action)
        if perform is None:
            raise TicketError(f"unknown action {row.action!r}", permanent=True)
        await perform(row)

    # --- the actions ---------------------------------------------------------------------------

    async def _open_incident(self, row: Row) -> None:
        await self._open(row, ticket_key=row.incident_key, follows=None)

    async def _new_ticket(self, row: Row) -> None:
        assert row.followup.ticket_key is not None
        await self._open(row, ticket_key=row.followup.ticket_key, follows=row.followup.follows)

    async def _note(self, row: Row) -> None:
        await self._each_open_ticket(row, lambda b, ref: b.note(ref, render.still_open(
            row.facts)))
        await self.ledger.delivered(row.id)

    async def _resolve(self, row: Row) -> None:
        await self._each_open_ticket(row, lambda b, ref: b.resolve(ref, render.resolved(
            row.facts)), resolves=True)
        await self.ledger.delivered(row.id)

    async def _reopen(self, row: Row) -> None:
        # The ticket a human closed is on the route the watcher queued this on; the
        # incident's other open ticket (its escalation's) was never closed.
        for ticket in [t for t in await self.ledger.open_tickets(row.incident_key)
                       if t.route == row.route]:
            try:
                await self.backends[ticket.route].reopen(ticket.ref, render.reopened(row.facts))
            except TicketError as err:
                if not err.permanent:
                    raise
                # Some helpdesks cannot reopen (a Zendesk ticket closed for good, a
                # ServiceNow incident in Closed): a new ticket that refers to it instead.
                log.warning("ticket cannot be reopened: opening a new one %s", fields(
                    route=ticket.route, ref=ticket.ref, error=err.message))
                await self.ledger.replace(ticket.ticket_key, row.incident_key, ticket.route,
                                          ticket.ref, row.facts)
        await self.ledger.delivered(row.id)

    async def _open(self, row: Row, *, ticket_key: str, follows: str | None) -> None:
        if await self.ledger.ticket_ref(ticket_key) is not None:
            await self.ledger.delivered(row.id)  # delivered before a crash before this mark
            return
        backend = self.backends[row.route]
        orphan = self.orphans.take(row.facts.group, row.route) if follows is None else None
        if orphan is not None:
            await adopt(self.ledger, backend, row.route, *orphan, row.incident_key)
            await self.ledger.delivered(row.id)
            return
        ref = None
        if row.unknown_outcome:
            ref = await backend.find(ticket_key)
            if ref is not None:
                log.info("ticket found after an unknown outcome %s", fields(
                    route=row.route, key=ticket_key, ref=ref))
        if ref is None:
            policy = row.facts.ticket or Policy()
            ticket = render.ticket(
                row.facts, ticket_key, policy.priority,
                recent=(await self.context(row.facts.group)).recent,
                links={"runbook": policy.runbook, "dashboard": policy.dashboard},
                title_template=policy.title_template, body_template=policy.body_template,
                follows=follows,
            )
            # Counted before the call: after a crash or a timeout, find() decides.
            await self._count(row, backend)
            ref = await backend.open(ticket)
        await self.ledger.opened(row.id, ticket_key, row.incident_key, row.route, ref,
                                 row.facts.ticket)
        log.warning("ticket opened %s", fields(route=row.route, key=ticket_key, ref=ref))
        await self._triage(backend, ref, row)

    async def _triage(self, backend: Backend[Any], ref: str, row: Row) -> None:
        """Evidence as the ticket's first note: gathered after the open so that the ticket
        is not delayed by it. Best effort: a few tries, then a log line."""
        lines = await triage.gather((await self.context(row.facts.group)).checks)
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

    async def _each_open_ticket(self, row: Row, act: Callable[[Backend[Any], str], Any],
                                resolves: bool = False) -> None:
        tickets = await self.ledger.open_tickets(row.incident_key)
        if not tickets and row.action != "still-open":
            failed = await self.ledger.failed_open(row.incident_key)
            if failed is not None:
                raise TicketError(f"no ticket to update: its open failed ({failed})",
                                  permanent=True)
        for ticket in tickets:
            await act(self.backends[ticket.route], ticket.ref)
            if resolves:
                await self.ledger.set_state(ticket.ticket_key, "resolved")

    async def _escalate(self, row: Row) -> None:
        follow = row.followup
        assert follow.escalate_to and follow.ticket_key and follow.ref and follow.after
        target = self.backends[follow.escalate_to]
        escalation_key = f"{follow.ticket_key}/escalation"
        policy = row.facts.ticket or Policy()
        ref = await target.find(escalation_key) if row.unknown_outcome else None
        if ref is None:
            ticket = render.ticket(row.facts, escalation_key, policy.priority,
                                   recent=(await self.context(row.facts.group)).recent)
            await self._count(row, target)
            ref = await target.open(ticket)
        await self.backends[row.route].note(
            follow.ref, render.escalated(follow.escalate_to, follow.after))
        # One of the incident's tickets from now on, recorded as its action is delivered:
        # resolved with the others at the recovery (it used to be left open there), never
        # escalated itself.
        await self.ledger.opened(row.id, escalation_key, row.incident_key, follow.escalate_to,
                                 ref, dataclasses.replace(policy, escalate_after=None))
        log.warning("ticket escalated %s", fields(route=row.route, to=follow.escalate_to,
                                                  key=follow.ticket_key))
