"""The local backend's tables (local_tickets, local_notes) read directly, as a helpdesk agent
would see them: not through probe's own view of its tickets."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


class Helpdesk:
    """The local backend's helpdesk in the state database at `database`."""

    def __init__(self, database: Path) -> None:
        self.database = database

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.database.exists():
            return []
        with sqlite3.connect(self.database) as db:
            try:
                return db.execute(sql, params).fetchall()
            except sqlite3.OperationalError:
                return []  # not created yet

    def tickets(self) -> list[tuple[Any, ...]]:
        return self.rows("SELECT id, key, priority, status, title FROM local_tickets ORDER BY id")

    def notes(self, ticket_id: int) -> list[tuple[str, str]]:
        return [(kind, text) for kind, text in self.rows(
            "SELECT kind, text FROM local_notes WHERE ticket_id = ? ORDER BY at", (ticket_id,))]

    def set(self, sql: str, params: tuple[Any, ...]) -> None:
        with sqlite3.connect(self.database) as db:
            db.execute(sql, params)
