"""The local backend: tickets kept in probe's own state database, for a first run and for
teams without a helpdesk. `probe tickets` lists and shows them; `probe tickets ack|close`
play the human's part (take a ticket, close it by hand); `probe demo` prints them as they
change.

This module owns the tables local_tickets and local_notes (probe.store creates them with the
rest of the schema): every statement on them is a method of LocalTickets.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from probe.helpdesks import base
from probe.helpdesks.base import RouteBase, Ticket, TicketError, TicketState


class Route(RouteBase):
    backend: Literal["local"]
    proxied: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class LocalTicket:
    id: int
    key: str
    title: str
    priority: str
    status: str  # new | open (someone took it, or probe reopened it) | resolved
    owner: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class LocalNote:
    ticket_id: int
    at: float
    kind: str  # note | resolve | reopen
    text: str


_TICKET = "SELECT id, key, title, priority, status, owner, created_at FROM local_tickets"


class LocalTickets:
    """The local helpdesk's tables, for the backend, `probe tickets` and `probe demo`. A
    database error is a transient TicketError (the state database may be busy or full)."""

    def __init__(self, database: Path) -> None:
        self._db = sqlite3.connect(database, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._lock = threading.Lock()

    # --- what the backend does -------------------------------------------------------------

    def find(self, key: str) -> int | None:
        """The newest ticket carrying `key`, open or not."""
        rows = self._rows("SELECT id FROM local_tickets WHERE key = ? ORDER BY id DESC LIMIT 1",
                          (key,))
        return int(rows[0][0]) if rows else None

    def create(self, ticket: Ticket) -> int:
        now = time.time()
        with self._lock:
            try:
                row_id = self._db.execute(
                    "INSERT INTO local_tickets (key, title, body, priority, created_at,"
                    " updated_at, follows) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (ticket.key, ticket.title, ticket.body, ticket.priority, now, now,
                     ticket.follows)).lastrowid
            except sqlite3.Error as err:
                raise TicketError(f"local tickets: {err}") from err
        assert row_id is not None
        return row_id

    def add_note(self, ticket_id: int, kind: str, text: str, status: str | None = None) -> None:
        """A note of `kind` on the ticket, and its new `status` if one is given."""
        now = time.time()
        with self._lock:
            try:
                if not self._db.execute("SELECT 1 FROM local_tickets WHERE id = ?",
                                        (ticket_id,)).fetchone():
                    raise TicketError(f"local ticket {ticket_id} does not exist", permanent=True)
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("INSERT INTO local_notes VALUES (?, ?, ?, ?)",
                                 (ticket_id, now, kind, text))
                self._db.execute(
                    "UPDATE local_tickets SET updated_at = ?, status = COALESCE(?, status)"
                    " WHERE id = ?", (now, status, ticket_id))
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise TicketError(f"local tickets: {err}") from err

    def get(self, ticket_id: int) -> LocalTicket | None:
        rows = self._rows(f"{_TICKET} WHERE id = ?", (ticket_id,))
        return LocalTicket(*rows[0]) if rows else None

    def open_keys(self, prefix: str) -> list[tuple[str, int]]:
        """(key, ticket) of the tickets not resolved whose key starts with `prefix`, oldest
        first."""
        rows = self._rows("SELECT key, id FROM local_tickets WHERE status != 'resolved'"
                          " AND substr(key, 1, ?) = ? ORDER BY id", (len(prefix), prefix))
        return [(str(key), int(ticket_id)) for key, ticket_id in rows]

    # --- what a human does (`probe tickets`), and what `probe demo` shows -------------------

    def all(self) -> list[LocalTicket]:
        """Every ticket, newest first."""
        return [LocalTicket(*row) for row in self._rows(f"{_TICKET} ORDER BY id DESC")]

    def exists(self, ticket_id: int) -> bool:
        return bool(self._rows("SELECT 1 FROM local_tickets WHERE id = ?", (ticket_id,)))

    def take(self, ticket_id: int, owner: str) -> None:
        """`owner` takes the ticket (`probe tickets ack`): it counts as acknowledged."""
        self._rows("UPDATE local_tickets SET owner = ?, status = 'open' WHERE id = ?",
                   (owner, ticket_id))

    def notes(self, ticket_id: int | None = None) -> list[LocalNote]:
        """The notes of one ticket, or of all, oldest first."""
        where, params = ("WHERE ticket_id = ?", (ticket_id,)) if ticket_id is not None else ("", ())
        return [LocalNote(*row) for row in self._rows(
            f"SELECT ticket_id, at, kind, text FROM local_notes {where} ORDER BY at", params)]

    def show(self, ticket_id: int) -> str:
        """One ticket with its notes, as `probe tickets show` and `probe demo` print it."""
        rows = self._rows("SELECT body FROM local_tickets WHERE id = ?", (ticket_id,))
        ticket = self.get(ticket_id)
        if ticket is None or not rows:
            return f"no local ticket {ticket_id}"
        out = [f"#{ticket_id} {ticket.title}",
               f"priority {ticket.priority}, status {ticket.status}, owner "
               f"{ticket.owner or 'nobody'}, key {ticket.key}",
               f"opened {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ticket.created_at))}",
               "", rows[0][0]]
        for note in self.notes(ticket_id):
            out += ["", f"--- {note.kind} at {time.strftime('%H:%M:%S', time.localtime(note.at))}",
                    note.text]
        return "\n".join(out)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as err:
                raise TicketError(f"local tickets: {err}") from err


class Backend(base.Backend[Route]):
    def __init__(self, name: str, route: Route, *, database: Path) -> None:
        super().__init__(name, route, database=database)
        self.tickets = LocalTickets(database)

    async def find(self, key: str) -> str | None:
        found = await asyncio.to_thread(self.tickets.find, key)
        return None if found is None else str(found)

    async def open(self, ticket: Ticket) -> str:
        return str(await asyncio.to_thread(self.tickets.create, ticket))

    async def note(self, ref: str, text: str) -> None:
        await asyncio.to_thread(self.tickets.add_note, _number(ref), "note", text)

    async def resolve(self, ref: str, text: str) -> None:
        await asyncio.to_thread(self.tickets.add_note, _number(ref), "resolve", text, "resolved")

    async def reopen(self, ref: str, text: str) -> None:
        await asyncio.to_thread(self.tickets.add_note, _number(ref), "reopen", text, "open")

    async def status(self, ref: str) -> TicketState:
        ticket = await asyncio.to_thread(self.tickets.get, _number(ref))
        if ticket is None:
            return "gone"
        if ticket.status == "resolved":
            return "closed"
        return "acknowledged" if ticket.owner else "open"

    async def open_tickets(self, prefix: str) -> list[tuple[str, str]] | None:
        found = await asyncio.to_thread(self.tickets.open_keys, prefix)
        return [(key, str(ticket_id)) for key, ticket_id in found]

    async def close(self) -> None:
        self.tickets.close()


def _number(ref: str) -> int:
    if not ref.isdigit():
        raise TicketError(f"{ref!r} is not a local ticket number", permanent=True)
    return int(ref)


HELPDESK = base.Helpdesk(route=Route, backend=Backend)
