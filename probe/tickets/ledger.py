"""The ledger: every statement on the ticket tables (outbox, tickets, incidents), behind names.

- `outbox`: the actions to deliver, one row each, in the order they were decided. An action is
  pending until delivered, or failed for good (listed by `probe tickets failed`, sent again by
  `probe tickets retry`).
- `tickets`: the helpdesk tickets of incidents, by the key the helpdesk carries.
- `incidents`: each incident's facts at open, then at resolve.

`Ledger` is what the dispatcher, the watcher, the endpoint and the commands use; `SqliteLedger`
keeps it in the state database beside the checks' states. The engine's transitions are written
by `record_transitions`, inside the state's own transaction, so that a decision and its actions
are written together or not at all. A ledger on another database drops in behind `Ledger`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, TypeVar, get_args

from probe.engine import Transition, TransitionKind
from probe.facts import Facts, Policy

# The engine's transitions, and what the watcher adds: the actions an outbox row can hold.
WatcherAction = Literal["reopen", "new-ticket", "escalate"]
Action = TransitionKind | WatcherAction
ACTIONS: frozenset[str] = frozenset(get_args(TransitionKind) + get_args(WatcherAction))
TicketState = Literal["open", "resolved", "left"]

T = TypeVar("T")


@dataclass(frozen=True)
class Followup:
    """What the watcher adds to an action's facts: the ticket a new-ticket opens (and the one it
    follows), where an escalation goes."""

    ticket_key: str | None = None
    follows: str | None = None  # new-ticket: the ref of the ticket a human closed
    escalate_to: str | None = None  # escalate: the route
    ref: str | None = None  # escalate: the ticket escalated
    after: float | None = None  # escalate: seconds nobody took it

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Head:
    """The oldest pending action of an incident: the next to deliver."""

    id: int
    incident_key: str
    route: str
    next_attempt_at: float


@dataclass(frozen=True)
class Heads:
    rows: list[Head]
    pending: int  # actions pending in all


@dataclass(frozen=True)
class Row:
    """A pending action, whole."""

    id: int
    incident_key: str
    action: str  # an Action; a row written by a newer release may hold another
    route: str
    created_at: float
    payload: str  # JSON: the facts, and the watcher's followup
    attempts: int
    unknown_outcome: bool  # an attempt may have created the ticket: ask find() first

    # Read when the action is performed: a payload probe cannot read fails that delivery
    # (an internal error, listed by `probe tickets failed`), not the dispatcher.
    @functools.cached_property
    def _data(self) -> dict[str, Any]:
        data = json.loads(self.payload)
        if not isinstance(data, dict):
            raise TypeError(f"an action's payload is not an object: {self.payload[:100]!r}")
        return data

    @functools.cached_property
    def facts(self) -> Facts:
        return Facts.from_json(self._data)

    @functools.cached_property
    def followup(self) -> Followup:
        fields = Followup.__dataclass_fields__
        return Followup(**{k: v for k, v in self._data.items() if k in fields})


@dataclass(frozen=True)
class Ticket:
    ticket_key: str
    route: str
    ref: str


@dataclass(frozen=True)
class Watched:
    """An open ticket of an incident still going on: what the watcher asks the helpdesk about."""

    ticket_key: str
    incident_key: str
    route: str
    ref: str
    opened_at: float
    escalated_at: float | None
    policy: Policy
    facts: Facts  # the incident's facts at open, with the policy its ticket opened with


@dataclass(frozen=True)
class Failed:
    id: int
    incident_key: str
    action: str
    route: str
    attempts: int
    error: str


@dataclass(frozen=True)
class Backlog:
    count: int
    oldest_at: float | None
    most_attempts: int


def watched_row(ticket_key: str, incident_key: str, route: str, ref: str, opened_at: float,
                escalated_at: float | None, policy: str, facts: str) -> Watched:
    """A watched ticket from its row (the policy and the incident's facts as stored JSON): the
    facts carry the policy its ticket opened with."""
    terms = Policy.from_json(json.loads(policy))
    return Watched(ticket_key, incident_key, route, ref, opened_at, escalated_at, terms,
                   Facts.from_json(json.loads(facts)).with_ticket(terms))


class LedgerError(Exception):
    """The ledger's database refuses or cannot be reached (read-only, full, gone): what the
    call was to write is not written. The dispatcher delivers nothing until it answers again,
    since a delivery that cannot be recorded would be made twice."""


class FenceRejected(LedgerError):
    """A write on a group this agent no longer decides for: another agent claimed it (this one
    was paused, or thought dead) and took a new fence. Nothing was written; the caller drops
    the group's work, which its new owner does."""

    def __init__(self, groups: Collection[str]) -> None:
        self.groups = frozenset(groups)
        super().__init__(f"no longer decides for {', '.join(sorted(self.groups))}")


class Ledger(Protocol):
    """Every call raises LedgerError when its database refuses; any other exception is a bug."""

    # --- delivery: the outbox --------------------------------------------------------------
    async def heads(self) -> Heads: ...
    async def load(self, action_id: int) -> Row | None: ...
    async def count_attempt(self, action_id: int, *, deadline: float) -> None:
        """Before a call that may create a ticket, which the helpdesk may go on making until
        `deadline` (its start and the route's timeout): should it never answer, the next
        attempt, by this process or a restarted one, waits for the deadline and then asks
        find() first. Asked sooner, find() can miss a ticket still being made (Request
        Tracker committing it after probe was killed) and a second one is opened."""
    async def refused(self, action_id: int) -> None:
        """The helpdesk answered that it created nothing: nothing to wait for or find."""
    async def postpone(self, action_id: int, *, counted: int, until: float, error: str) -> None:
        """The next attempt not before `until`, nor, while the outcome of a create is
        unknown, before that create's deadline."""
    async def give_up(self, action_id: int, *, counted: int, error: str) -> None: ...
    async def delivered(self, action_id: int) -> None: ...
    async def opened(self, action_id: int, ticket_key: str, incident_key: str, route: str,
                     ref: str, policy: Policy | None) -> None:
        """A ticket opened: recorded, and its action delivered, together."""
    async def enqueue(self, incident_key: str, action: Action, route: str, facts: Facts,
                      followup: Followup = ...) -> None: ...
    # --- tickets -----------------------------------------------------------------------------
    async def ticket_ref(self, ticket_key: str) -> str | None: ...
    async def open_tickets(self, incident_key: str) -> list[Ticket]: ...
    async def failed_open(self, incident_key: str) -> str | None:
        """The error of the incident's open when it failed for good, else None."""
    async def set_state(self, ticket_key: str, state: TicketState) -> None: ...
    async def acknowledged(self, ticket_key: str, at: float) -> None:
        """The helpdesk says someone took the ticket: the first time it said so is kept."""
    async def knows(self, ticket_key: str, ref: str) -> bool: ...
    async def adopt(self, ticket_key: str, incident_key: str, route: str, ref: str) -> None: ...
    async def pending(self, incident_key: str, actions: Collection[Action] | None = None,
                      ) -> bool:
        """Whether the incident has actions on their way (of these kinds; None: any)."""
    async def watched(self) -> list[Watched]: ...
    async def replace(self, ticket_key: str, incident_key: str, route: str, ref: str,
                      facts: Facts) -> None:
        """Leave a ticket closed for good, and queue a new one that follows it."""
    async def escalate(self, ticket_key: str, incident_key: str, route: str, facts: Facts,
                       followup: Followup) -> None:
        """Mark a ticket escalated and queue its escalation, together."""
    # --- the operator's view -----------------------------------------------------------------
    async def failed(self, *, newest_first: bool = False, limit: int | None = None,
                     ) -> list[Failed]: ...
    async def retry_failed(self) -> int: ...
    async def backlog(self) -> Backlog: ...


class Connection(Protocol):
    """The state database's one connection (probe.store.Store)."""

    def run(self, work: Callable[[sqlite3.Connection], T]) -> T: ...


class SqliteLedger:
    """The ledger in the state database, through its connection's lock; each call in a thread,
    so that the event loop never waits for the disk."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await asyncio.to_thread(self._db.run, work)
        except sqlite3.Error as err:
            raise LedgerError(f"the state database: {err}") from err

    async def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return await self._run(lambda db: db.execute(sql, params).fetchall())

    async def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        await self._run(lambda db: db.execute(sql, params))

    # --- delivery ------------------------------------------------------------------------------

    async def heads(self) -> Heads:
        def work(db: sqlite3.Connection) -> Heads:
            firsts = db.execute("SELECT MIN(id) FROM outbox WHERE status = 'pending'"
                                " GROUP BY incident_key").fetchall()
            pending = db.execute("SELECT COUNT(*) FROM outbox WHERE status = 'pending'"
                                 ).fetchone()[0]
            rows = [Head(*db.execute("SELECT id, incident_key, route, next_attempt_at"
                                     " FROM outbox WHERE id = ?", first).fetchone())
                    for first in firsts]
            return Heads(rows, pending)

        return await self._run(work)

    async def load(self, action_id: int) -> Row | None:
        found = await self._rows(
            "SELECT id, incident_key, action, route, created_at, payload, attempts,"
            " unknown_outcome FROM outbox WHERE id = ? AND status = 'pending'", (action_id,))
        if not found:
            return None
        row_id, key, action, route, created, payload, attempts, unknown = found[0]
        return Row(row_id, key, action, route, created, payload, attempts, bool(unknown))

    async def count_attempt(self, action_id: int, *, deadline: float) -> None:
        await self._write("UPDATE outbox SET attempts = attempts + 1, unknown_outcome = 1,"
                          " next_attempt_at = ? WHERE id = ?", (deadline, action_id))

    async def refused(self, action_id: int) -> None:
        await self._write("UPDATE outbox SET unknown_outcome = 0 WHERE id = ?", (action_id,))

    async def postpone(self, action_id: int, *, counted: int, until: float, error: str) -> None:
        await self._write("UPDATE outbox SET attempts = attempts + ?, next_attempt_at ="
                          " CASE WHEN unknown_outcome THEN MAX(next_attempt_at, ?) ELSE ? END,"
                          " last_error = ? WHERE id = ?",
                          (counted, until, until, error, action_id))

    async def give_up(self, action_id: int, *, counted: int, error: str) -> None:
        await self._write("UPDATE outbox SET status = 'failed', last_error = ?,"
                          " attempts = attempts + ? WHERE id = ?", (error, counted, action_id))

    async def delivered(self, action_id: int) -> None:
        await self._run(lambda db: _delivered(db, action_id))

    async def opened(self, action_id: int, ticket_key: str, incident_key: str, route: str,
                     ref: str, policy: Policy | None) -> None:
        policy_json = json.dumps(policy.to_json() if policy is not None else {})

        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT OR IGNORE INTO tickets (ticket_key, incident_key, route, ref,"
                       " opened_at, policy) VALUES (?, ?, ?, ?, ?, ?)",
                       (ticket_key, incident_key, route, ref, time.time(), policy_json))
            _delivered(db, action_id)
            db.execute("COMMIT")

        await self._run(work)

    async def enqueue(self, incident_key: str, action: Action, route: str, facts: Facts,
                      followup: Followup = Followup()) -> None:
        await self._run(lambda db: _enqueue(db, incident_key, action, route, facts, followup))

    # --- tickets -------------------------------------------------------------------------------

    async def ticket_ref(self, ticket_key: str) -> str | None:
        found = await self._rows("SELECT ref FROM tickets WHERE ticket_key = ?", (ticket_key,))
        return str(found[0][0]) if found else None

    async def open_tickets(self, incident_key: str) -> list[Ticket]:
        return [Ticket(*row) for row in await self._rows(
            "SELECT ticket_key, route, ref FROM tickets WHERE incident_key = ? AND state = 'open'",
            (incident_key,))]

    async def failed_open(self, incident_key: str) -> str | None:
        found = await self._rows("SELECT last_error FROM outbox WHERE incident_key = ? AND"
                                 " action = 'open' AND status = 'failed'", (incident_key,))
        return str(found[0][0]) if found else None

    async def set_state(self, ticket_key: str, state: TicketState) -> None:
        await self._write("UPDATE tickets SET state = ? WHERE ticket_key = ?",
                          (state, ticket_key))

    async def acknowledged(self, ticket_key: str, at: float) -> None:
        await self._write("UPDATE tickets SET acknowledged_at = ? WHERE ticket_key = ?"
                          " AND acknowledged_at IS NULL", (at, ticket_key))

    async def knows(self, ticket_key: str, ref: str) -> bool:
        return bool(await self._rows("SELECT 1 FROM tickets WHERE ticket_key = ? OR ref = ?",
                                     (ticket_key, ref)))

    async def adopt(self, ticket_key: str, incident_key: str, route: str, ref: str) -> None:
        await self._write("INSERT OR REPLACE INTO tickets (ticket_key, incident_key, route, ref,"
                          " opened_at) VALUES (?, ?, ?, ?, ?)",
                          (ticket_key, incident_key, route, ref, time.time()))

    async def pending(self, incident_key: str, actions: Collection[Action] | None = None,
                      ) -> bool:
        sql = "SELECT 1 FROM outbox WHERE incident_key = ? AND status = 'pending'"
        if actions is not None:
            sql += f" AND action IN ({', '.join('?' * len(actions))})"
        return bool(await self._rows(sql, (incident_key, *sorted(actions or ()))))

    async def watched(self) -> list[Watched]:
        rows = await self._rows(
            "SELECT t.ticket_key, t.incident_key, t.route, t.ref, t.opened_at, t.escalated_at,"
            " t.policy, i.facts FROM tickets t JOIN incidents i ON i.key = t.incident_key"
            " WHERE t.state = 'open' AND i.resolved_at IS NULL")
        return [watched_row(*row) for row in rows]

    async def replace(self, ticket_key: str, incident_key: str, route: str, ref: str,
                      facts: Facts) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            (count,) = db.execute("SELECT COUNT(*) FROM tickets WHERE incident_key = ?",
                                  (incident_key,)).fetchone()
            db.execute("UPDATE tickets SET state = 'left' WHERE ticket_key = ?", (ticket_key,))
            _enqueue(db, incident_key, "new-ticket", route, facts,
                     Followup(ticket_key=f"{incident_key}+{count}", follows=ref))
            db.execute("COMMIT")

        await self._run(work)

    async def escalate(self, ticket_key: str, incident_key: str, route: str, facts: Facts,
                       followup: Followup) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE tickets SET escalated_at = ? WHERE ticket_key = ?",
                       (time.time(), ticket_key))
            _enqueue(db, incident_key, "escalate", route, facts, followup)
            db.execute("COMMIT")

        await self._run(work)

    # --- the operator's view -------------------------------------------------------------------

    async def failed(self, *, newest_first: bool = False, limit: int | None = None,
                     ) -> list[Failed]:
        order = "DESC" if newest_first else "ASC"
        rows = await self._rows(
            "SELECT id, incident_key, action, route, attempts, last_error FROM outbox"
            f" WHERE status = 'failed' ORDER BY id {order} LIMIT ?",
            (-1 if limit is None else limit,))
        return [Failed(*row) for row in rows]

    async def retry_failed(self) -> int:
        return await self._run(lambda db: db.execute(
            "UPDATE outbox SET status = 'pending', next_attempt_at = 0 WHERE status = 'failed'"
        ).rowcount)

    async def backlog(self) -> Backlog:
        (count, oldest, attempts), = await self._rows(
            "SELECT COUNT(*), MIN(created_at), MAX(attempts) FROM outbox WHERE status = 'pending'")
        return Backlog(count, oldest, attempts or 0)


def record_transitions(db: sqlite3.Connection,
                       transitions: Iterable[tuple[Transition, str | None]]) -> None:
    """The engine's transitions, in the caller's transaction: the incident opened or resolved,
    and each action queued on the route its ticket opens on (notes and the resolve go where the
    open went, whatever the configuration says by then; None: no ticket)."""
    for transition, route in transitions:
        facts = json.dumps(transition.facts.to_json(), default=str)
        if transition.kind == "open":
            db.execute("INSERT OR IGNORE INTO incidents (key, grp, opened_at, facts)"
                       " VALUES (?, ?, ?, ?)",
                       (transition.key, transition.group, transition.at, facts))
        elif transition.kind == "resolve":
            db.execute("UPDATE incidents SET resolved_at = ?, facts = ? WHERE key = ?",
                       (transition.at, facts, transition.key))
        if transition.kind != "open":
            row = db.execute("SELECT route FROM outbox WHERE incident_key = ? AND action = 'open'",
                             (transition.key,)).fetchone()
            route = row[0] if row else None
        if route is not None:
            db.execute("INSERT INTO outbox (incident_key, action, route, created_at, payload,"
                       " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
                       (transition.key, transition.kind, route, transition.at, facts,
                        transition.at))


def _delivered(db: sqlite3.Connection, action_id: int) -> None:
    db.execute("UPDATE outbox SET status = 'delivered', delivered_at = ? WHERE id = ?",
               (time.time(), action_id))


def _enqueue(db: sqlite3.Connection, incident_key: str, action: Action, route: str,
             facts: Facts, followup: Followup) -> None:
    now = time.time()
    payload: Mapping[str, Any] = {**facts.to_json(), **followup.to_json()}
    db.execute("INSERT INTO outbox (incident_key, action, route, created_at, payload,"
               " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
               (incident_key, action, route, now, json.dumps(payload, default=str), now))
