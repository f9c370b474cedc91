"""The daemon's state, whichever database keeps it: the calls the daemon makes on it (`State`),
and `SqliteState`, probe.store.Store behind them. The cluster's is probe.cluster.pgstate.PgState
on PostgreSQL; tests/test_state_contract.py asks the same of both.

The protocol is async. The cluster's database is reached through psycopg's async pool, which the
ledger and the membership share, and the next step takes each decision on a group under a lock
on the group's row, in one transaction with the ledger's actions (pgledger.record_transitions,
itself async): a sync protocol would need a second pool and a second copy of the ledger's
statements. SQLite stays sync underneath; `SqliteState` runs each call in a thread, as the
writer already runs Store.write.

Every call that the database refuses (gone, read-only, full, closed) raises StoreError and
changes nothing: the writer keeps the batch and tries again. Anything else is a bug.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from probe.store import Batch, Snapshot, Store, StoreError

T = TypeVar("T")


class State(Protocol):
    async def load(self) -> Snapshot:
        """Every check's and group's state, as last written."""
        ...

    async def write(self, batch: Batch) -> None:
        """The batch in one transaction, the engine's transitions with it (the ledger's
        record_transitions): all of it or nothing. The batch is not changed."""
        ...

    async def recent_results(self, name: str, limit: int = 10) -> list[dict[str, Any]]:
        """A check's last results, newest first (`at`, `state`, `duration`, `reason`,
        `evidence`; the evidence of a failure only, {} for a success)."""
        ...

    async def windows(self, since: float) -> dict[int, dict[str, Any]]:
        """The maintenance windows set at run time that end after `since`, by number; older
        ones go."""
        ...

    async def add_window(self, data: dict[str, Any], ends_at: float) -> int:
        """A window kept until `ends_at`; its number."""
        ...

    async def end_window(self, number: int) -> None: ...

    async def roll_up(self, now: float, keep: Mapping[int, float]) -> int:
        """Roll the history's closed hours and days up from their minutes and delete what is
        older than `keep` (seconds by resolution): probe.history. How many were rolled up."""
        ...

    async def close(self) -> None:
        """The daemon is done with its state: SqliteState closes the store (the SQLite ledger's
        too, as the daemon does today); PgState leaves the cluster's pool to its owner."""
        ...


class SqliteState:
    """probe.store.Store as a `State`: each call in a thread (the store has its own lock), and
    any SQLite error a StoreError (the store raises one from its writes only)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def _call(self, work: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(work)
        except sqlite3.Error as err:
            raise StoreError(f"the state database {self.store.path}: {err}") from err

    async def load(self) -> Snapshot:
        return await self._call(self.store.load)

    async def write(self, batch: Batch) -> None:
        await self._call(lambda: self.store.write(batch))

    async def recent_results(self, name: str, limit: int = 10) -> list[dict[str, Any]]:
        return await self._call(lambda: self.store.recent_results(name, limit))

    async def windows(self, since: float) -> dict[int, dict[str, Any]]:
        return await self._call(lambda: self.store.windows(since))

    async def add_window(self, data: dict[str, Any], ends_at: float) -> int:
        return await self._call(lambda: self.store.add_window(data, ends_at))

    async def end_window(self, number: int) -> None:
        await self._call(lambda: self.store.end_window(number))

    async def roll_up(self, now: float, keep: Mapping[int, float]) -> int:
        return await self._call(lambda: self.store.roll_up(now, keep))

    async def close(self) -> None:
        self.store.close()
