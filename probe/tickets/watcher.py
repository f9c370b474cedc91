"""The watcher: what happens to tickets after they open, asked of the helpdesks every
`ticketing.poll_interval`.

- A ticket nobody has taken after `escalate_after` is escalated through the route's
  `escalate_to`.
- A ticket a human closed while the outage goes on is reopened, replaced by a new one that
  refers to it, or left, as `on_human_close` says.
- At start and every ten polls, tickets open in a helpdesk with this agent's key that probe
  does not track (its state was lost, or restored from a backup) are reconciled: adopted when
  their outage goes on, resolved with a note when their check is healthy.
- The same look finds duplicates: two or more open tickets carrying one key (a create sent
  twice, by two agents or across a crash). The one the ledger records is kept (else the
  oldest), the others are resolved with a note naming it, and each is counted in
  probe_ticket_duplicates_detected_total, which should stay 0: exactly-once delivery is the
  dispatcher's promise, and this is where a broken promise shows.

What to do is decided by the pure functions `on_status`, `on_stray` and `on_duplicates`
(tested by tables, as the engine is); the watcher asks, decides, and queues the actions in the
ledger for the dispatcher to deliver.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import Counter

from probe.facts import Policy
from probe.helpdesks.base import Backend, TicketError, TicketState
from probe.log import fields
from probe.tickets.ledger import Followup, Ledger, LedgerError, Watched
from probe.tickets.pool import Backends

log = logging.getLogger("probe.tickets")

RECONCILE_EVERY = 10  # polls
# Helpdesk requests one ticket's look may take (a status; a resolve or a note with what it
# reads first), each bounded by its route's timeout.
WATCH_STEP_REQUESTS = 3


@dataclass(frozen=True)
class GroupHealth:
    """For reconciling: is the group's outage going on? `incident` is its key when open."""

    state: Literal["open", "failing", "healthy", "unknown"]
    incident: str | None = None


StatusDecision = Literal["none", "escalate", "reopen", "replace", "leave"]
StrayDecision = Literal["adopt", "leave", "wait", "resolve"]


def on_status(state: TicketState, policy: Policy, *, opened_at: float,
              escalated_at: float | None, escalate_to: str | None, now: float) -> StatusDecision:
    """What to do about an open ticket of an outage going on, given what its helpdesk says."""
    if state in ("closed", "gone"):
        if policy.on_human_close == "leave":
            return "leave"
        if policy.on_human_close == "reopen" and state == "closed":
            return "reopen"
        return "replace"  # "new", or nothing left to reopen
    if (state == "open" and escalated_at is None and escalate_to is not None
            and policy.escalate_after is not None and now - opened_at >= policy.escalate_after):
        return "escalate"
    return "none"


def stray_incident(key: str) -> tuple[str, str] | None:
    """The group and incident of an untracked ticket's key (agent/group/seq, or agent/group/
    seq+n for one that replaced another); None for an escalation's or a key of another form."""
    parts = key.split("/")
    if len(parts) < 3 or parts[-1] == "escalation":  # the escalated ticket's business
        return None
    return parts[1], "/".join(parts[:3]).split("+")[0]


def on_stray(health: GroupHealth, *, incident_tracked: bool) -> StrayDecision:
    """What to do about a ticket probe does not track, whose own actions are not on their way.
    `incident_tracked`: the group's open incident has a ticket already."""
    if health.state == "open" and health.incident is not None:
        return "leave" if incident_tracked else "adopt"
    if health.state in ("failing", "unknown"):
        return "wait"  # decided by the group's next incident, or its recovery
    return "resolve"


def on_duplicates(refs: Sequence[str], recorded: str | None, *,
                  opening: bool = False) -> tuple[str, list[str]]:
    """Of the open tickets carrying one key (`refs`, at least one), the one to keep and the
    duplicates to close: the ticket the ledger records (`recorded`) when it is among them,
    since its incident's notes and resolve go there; else the oldest, the lowest number (a
    human may already be working it), or the first listed where refs are not numbers.
    `opening`: the ledger records none and the incident's actions are on their way (an open
    of unknown outcome, whose find() is about to record one of them): none is closed yet,
    lest find() record the one just closed; the next reconcile decides."""
    if recorded is not None and recorded in refs:
        keep = recorded
    elif recorded is None and opening:
        return refs[0], []
    else:
        numbers = [ref for ref in refs if ref.isdigit()]
        keep = min(numbers, key=int) if numbers else refs[0]
    return keep, [ref for ref in refs if ref != keep]


SHOWN_REF = re.compile(r"[\w.:#/-]{1,100}")


def shown_ref(ref: str) -> str:
    """A ticket's reference, as the helpdesk gave it, fit to put in a note: as it is when it
    looks like one, else quoted and capped."""
    return ref if SHOWN_REF.fullmatch(ref) else repr(ref[:100])


class Orphans:
    """Tickets found open in a helpdesk that probe does not track, by group: the next incident
    of the group takes one up instead of opening another."""

    def __init__(self) -> None:
        self._by_group: dict[str, tuple[str, str, str]] = {}  # group -> (route, key, ref)

    def keep(self, group: str, route: str, key: str, ref: str) -> None:
        self._by_group.setdefault(group, (route, key, ref))

    def drop(self, group: str) -> None:
        self._by_group.pop(group, None)

    def take(self, group: str, route: str) -> tuple[str, str] | None:
        """(key, ref) of the group's orphan on `route`, which the caller adopts."""
        found = self._by_group.get(group)
        if found is None or found[0] != route:
            return None
        del self._by_group[group]
        return found[1], found[2]


async def adopt(ledger: Ledger, backend: Backend[Any], route: str, key: str, ref: str,
                incident_key: str) -> None:
    await ledger.adopt(key, incident_key, route, ref)
    log.warning("ticket adopted %s", fields(route=route, ref=ref, key=key, incident=incident_key))
    try:
        await backend.note(ref, "probe had lost track of this ticket and took it up "
                                "again: the outage it reports goes on.")
    except TicketError as err:
        log.info("adoption note not delivered %s", fields(ref=ref, error=err.message))


class Watcher:
    def __init__(
        self,
        ledger: Ledger,
        backends: Backends,
        *,
        agent: str,
        group_health: Callable[[str], GroupHealth],
        wake: Callable[[], None],
        duplicates: Counter,
        internal_error: Callable[[], None] = lambda: None,
        mine: Callable[[str], bool] = lambda group: True,
        poll_interval: float = 60.0,
    ) -> None:
        self.ledger = ledger
        self.backends = backends
        self.agent = agent
        self.group_health = group_health
        self.wake = wake  # the dispatcher's: an action was queued
        self.duplicates = duplicates  # probe_ticket_duplicates_detected_total, by route
        self.internal_error = internal_error  # counts probe_internal_errors_total
        self.poll_interval = poll_interval
        self.orphans = Orphans()
        self.reconciled = asyncio.Event()  # the first reconcile is done (or failed)
        self._counted: set[tuple[str, str]] = set()  # (route, ref) duplicates counted once
        # In a cluster: the groups whose tickets this agent reconciles (those it holds).
        self.mine = mine

    async def serve(self, progress: Callable[[], None] = lambda: None) -> None:
        """Look at open tickets every poll_interval; reconcile at start and every ten polls.
        Marks its progress for probe.supervisor, which judges it against `every()`."""
        polls = 0
        while True:
            progress()
            try:
                if polls % RECONCILE_EVERY == 0:
                    await self.reconcile(progress)
                await self.check_tickets(progress)
            except LedgerError as err:  # the database, not probe: no traceback to show
                log.warning("watching tickets paused %s", fields(error=err))
            except Exception:
                log.exception("watching tickets failed")
            finally:
                self.reconciled.set()
            polls += 1
            await asyncio.sleep(self.poll_interval)

    def every(self) -> float:
        """The longest serve() goes between two marks of progress: a poll's sleep and one
        ticket's look, which it marks one by one (a poll may look at hundreds)."""
        return self.poll_interval + WATCH_STEP_REQUESTS * self.backends.longest_timeout()

    # --- tickets probe tracks ------------------------------------------------------------------

    async def check_tickets(self, progress: Callable[[], None] = lambda: None) -> None:
        """Ask the helpdesks about open tickets: escalate the untaken, handle the closed."""
        for ticket in await self.ledger.watched():
            progress()
            busy = await self.ledger.pending(ticket.incident_key,
                                             ("resolve", "reopen", "new-ticket", "escalate"))
            if busy or ticket.route not in self.backends.routes:
                continue
            backend = self.backends[ticket.route]
            if not backend.tracks_status:
                continue
            try:
                state = await backend.status(ticket.ref)
            except TicketError as err:
                log.info("ticket status unknown %s", fields(route=ticket.route, ref=ticket.ref,
                                                            error=err.message))
                continue
            except Exception:  # a bug in probe: said and counted; the other tickets go on
                self._bug("status", ticket.route, ticket.ref)
                continue
            if state == "acknowledged":
                await self.ledger.acknowledged(ticket.ticket_key, time.time())
            escalate_to = self.backends.escalate_to(ticket.route)
            decision = on_status(state, ticket.policy, opened_at=ticket.opened_at,
                                 escalated_at=ticket.escalated_at, escalate_to=escalate_to,
                                 now=time.time())
            await self._act(decision, ticket, escalate_to)

    async def _act(self, decision: StatusDecision, ticket: Watched,
                   escalate_to: str | None) -> None:
        if decision == "none":
            return
        if decision == "escalate":
            assert escalate_to is not None
            await self.ledger.escalate(
                ticket.ticket_key, ticket.incident_key, ticket.route, ticket.facts,
                Followup(escalate_to=escalate_to, ticket_key=ticket.ticket_key, ref=ticket.ref,
                         after=ticket.policy.escalate_after))
            self.wake()
            return
        log.warning("ticket closed while the outage goes on %s", fields(
            route=ticket.route, ref=ticket.ref, key=ticket.ticket_key, decision=decision))
        if decision == "leave":
            await self.ledger.set_state(ticket.ticket_key, "left")
        elif decision == "reopen":
            await self.ledger.enqueue(ticket.incident_key, "reopen", ticket.route, ticket.facts)
        else:
            await self.ledger.replace(ticket.ticket_key, ticket.incident_key, ticket.route,
                                      ticket.ref, ticket.facts)
        self.wake()

    def _bug(self, call: str, route: str, ref: str | None) -> None:
        log.exception("watching tickets crashed: a bug in probe %s", fields(
            call=call, route=route, ref=ref))
        self.internal_error()

    # --- tickets probe lost --------------------------------------------------------------------

    async def reconcile(self, progress: Callable[[], None] = lambda: None) -> None:
        """Tickets open in a helpdesk with this agent's key that probe does not track, and
        duplicates."""
        prefix = f"{self.agent}/"
        for route in list(self.backends.routes):
            progress()
            self.duplicates.labels(route)  # the series exists, at 0, from the first look
            try:
                backend = self.backends[route]
                found = await backend.open_tickets(prefix)
            except TicketError as err:
                log.info("reconcile skipped %s", fields(route=route, error=err.message))
                continue
            except Exception:  # a bug in probe: said and counted; the other routes go on
                self._bug("open_tickets", route, None)
                continue
            by_key: dict[str, list[str]] = {}
            for key, ref in found or []:
                by_key.setdefault(key, []).append(ref)
            for key, refs in by_key.items():
                progress()
                stray = stray_incident(key)
                if stray is not None and not self.mine(stray[0]):
                    continue  # another agent of the cluster decides for its group
                ref = refs[0] if len(refs) == 1 else await self._deduplicate(
                    route, backend, key, refs)
                await self._stray(route, backend, key, ref)

    async def _deduplicate(self, route: str, backend: Backend[Any], key: str,
                           refs: list[str]) -> str:
        """Close all but one of the open tickets carrying `key`; the one kept."""
        stray = stray_incident(key)
        opening = stray is not None and await self.ledger.pending(stray[1])
        keep, extra = on_duplicates(refs, await self.ledger.ticket_ref(key), opening=opening)
        log.warning("duplicate tickets %s", fields(
            route=route, key=key, refs=",".join(refs), kept=keep if extra else None,
            closing=",".join(extra) or None, waiting=None if extra else "its open is under way"))
        for ref in extra:
            if (route, ref) not in self._counted:  # one that resists closing: counted once
                self._counted.add((route, ref))
                self.duplicates.labels(route).inc()
            try:
                await backend.resolve(ref, f"probe opened this ticket twice: it duplicates "
                                           f"ticket {shown_ref(keep)}, which stays open.")
            except TicketError as err:
                log.warning("duplicate ticket not closed %s", fields(route=route, ref=ref,
                                                                     error=err.message))
        return keep

    async def _stray(self, route: str, backend: Backend[Any], key: str, ref: str) -> None:
        stray = stray_incident(key)
        if stray is None or await self.ledger.knows(key, ref):
            return
        group, incident_key = stray
        if await self.ledger.pending(incident_key):
            return  # its own actions are on their way
        health = self.group_health(group)
        tracked = (health.incident is not None
                   and bool(await self.ledger.open_tickets(health.incident)))
        decision = on_stray(health, incident_tracked=tracked)
        if decision == "adopt":
            assert health.incident is not None
            await adopt(self.ledger, backend, route, key, ref, health.incident)
        elif decision == "leave":
            log.info("untracked ticket left alone %s", fields(route=route, ref=ref, key=key))
        elif decision == "wait":
            self.orphans.keep(group, route, key, ref)
        else:
            self.orphans.drop(group)
            await self._resolve_stray(route, backend, key, ref, group)

    async def _resolve_stray(self, route: str, backend: Backend[Any], key: str, ref: str,
                             group: str) -> None:
        try:
            await backend.resolve(ref, "probe found this ticket open, but no outage of "
                                       f"{group} is going on: the check is healthy.")
        except TicketError as err:
            log.warning("stray ticket not resolved %s", fields(route=route, ref=ref,
                                                               error=err.message))
            return
        log.warning("stray ticket resolved %s", fields(route=route, ref=ref, key=key))
