"""The local backend: tickets kept in probe's own state database, for a first run and for
teams without a helpdesk. `probe tickets` lists and shows them; `probe tickets ack|close`
play the human's part (take a ticket, close it by hand)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Literal

from probe.helpdesks import base
from probe.helpdesks.base import RouteBase, Ticket, TicketError, TicketState


class Route(RouteBase):
    backend: Literal["local"]


class LocalTickets:
    """The tables, for the backend and for `probe tickets`."""

    def __init__(self, database: Path) -> None:
        self._db = sqlite3.connect(database, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._lock = threading.Lock()

    def show(self, ticket_id: int) -> str:
        """One ticket with its notes, as `probe tickets show` and `probe demo` print it."""
        rows = self.execute(
            "SELECT key, title, body, priority, status, owner, created_at FROM local_tickets"
            " WHERE id = ?", (ticket_id,))
        if not rows:
            return f"no local ticket {ticket_id}"
        key, title, body, priority, status, owner, created = rows[0]
        out = [f"#{ticket_id} {title}",
               f"priority {priority}, status {status}, owner {owner or 'nobody'}, key {key}",
               f"opened {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(created))}", "",
               body]
        for at, kind, text in self.execute(
            "SELECT at, kind, text FROM local_notes WHERE ticket_id = ? ORDER BY at", (ticket_id,)
        ):
            out += ["", f"--- {kind} at {time.strftime('%H:%M:%S', time.localtime(at))}", text]
        return "\n".join(out)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as err:
                raise TicketError(f"local tickets: {err}") from err

    def insert(self, sql: str, params: tuple[Any, ...]) -> int:
        with self._lock:
            try:
                row_id = self._db.execute(sql, params).lastrowid
            except sqlite3.Error as err:
                raise TicketError(f"local tickets: {err}") from err
        assert row_id is not None
        return row_id

    def add_note(self, ticket_id: int, kind: str, text: str, status: str | None = None) -> None:
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

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Backend(base.Backend[Route]):
    def __init__(self, name: str, route: Route, *, database: Path) -> None:
        super().__init__(name, route, database=database)
        self.tickets = LocalTickets(database)

    async def find(self, key: str) -> str | None:
        rows = await asyncio.to_thread(
            self.tickets.execute,
            "SELECT id FROM local_tickets WHERE key = ? ORDER BY id DESC LIMIT 1", (key,))
        return str(rows[0][0]) if rows else None

    async def open(self, ticket: Ticket) -> str:
        now = time.time()
        ticket_id = await asyncio.to_thread(
            self.tickets.insert,
            "INSERT INTO local_tickets (key, title, body, priority, created_at, updated_at,"
            " follows) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (ticket.key, ticket.title, ticket.body, ticket.priority, now, now, ticket.follows),
        )
        return str(ticket_id)

    async def note(self, ref: str, text: str) -> None:
        await asyncio.to_thread(self.tickets.add_note, _number(ref), "note", text)

    async def resolve(self, ref: str, text: str) -> None:
        await asyncio.to_thread(self.tickets.add_note, _number(ref), "resolve", text, "resolved")

    async def reopen(self, ref: str, text: str) -> None:
        await asyncio.to_thread(self.tickets.add_note, _number(ref), "reopen", text, "open")

    async def status(self, ref: str) -> TicketState:
        rows = await asyncio.to_thread(
            self.tickets.execute, "SELECT status, owner FROM local_tickets WHERE id = ?",
            (_number(ref),))
        if not rows:
            return "gone"
        status, owner = rows[0]
        if status == "resolved":
            return "closed"
        return "acknowledged" if owner else "open"

    async def open_tickets(self, prefix: str) -> dict[str, str] | None:
        rows = await asyncio.to_thread(
            self.tickets.execute,
            "SELECT key, id FROM local_tickets WHERE status != 'resolved' AND substr(key, 1, ?)"
            " = ? ORDER BY id", (len(prefix), prefix))
        return {key: str(ticket_id) for key, ticket_id in rows}

    async def close(self) -> None:
        self.tickets.close()


def _number(ref: str) -> int:
    if not ref.isdigit():
        raise TicketError(f"{ref!r} is not a local ticket number", permanent=True)
    return int(ref)


HELPDESK = base.Helpdesk(route=Route, backend=Backend)
