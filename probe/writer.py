"""The state writer: what the daemon decided, written to the state database in batches, never
on a check's path. A write the database refuses (read-only, full, gone) is kept, in order, and
tried again; the daemon goes on deciding meanwhile. In a cluster, a write refused because
another agent now decides for some of its groups (FenceRejected) loses those groups' part:
`fenced` takes it out, and the rest is written."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from probe.log import fields
from probe.metrics import Metrics
from probe.state import State
from probe.store import Batch, StoreError
from probe.supervisor import Progress
from probe.tickets.ledger import FenceRejected

log = logging.getLogger("probe")

FLUSH_EVERY = 0.2  # seconds between state writes: batched, never on the check's path
FLUSH_RETRY = 1.0  # seconds between state writes while the database refuses them
MAX_PENDING_RESULTS = 20_000  # results kept in memory while the state cannot be written
# The history's minutes kept meanwhile (probe.history): ten minutes of 10,000 checks, about
# 30 MB; older ones go, and their time shows as n/a.
MAX_PENDING_MINUTES = 100_000


class Writer:
    def __init__(self, state: State, metrics: Metrics, *, written: Callable[[], None],
                 fenced: Callable[[Batch, frozenset[str]], Batch] | None = None,
                 every: float = FLUSH_EVERY, results_every: float = 0.0) -> None:
        self.state = state
        self.every = every
        # A batch of results only (the history, nothing decided) waits this long: in a
        # cluster, each write is a statement on the database every agent shares.
        self.results_every = results_every
        self._written_at = time.monotonic()
        self._lock = asyncio.Lock()  # one write at a time: a later batch never lands first
        self.metrics = metrics
        self.written = written  # called when a batch with transitions is written
        self.fenced = fenced  # the batch without the groups another agent holds now
        self.pending = Batch()
        self.writable = True
        self._soon = asyncio.Event()

    def soon(self) -> None:
        """Write without waiting for the next batch (tickets should not wait)."""
        self._soon.set()

    async def serve(self, progress: Progress) -> None:
        failing_since: float | None = None
        while True:
            progress()
            try:
                async with asyncio.timeout(self.every if failing_since is None else FLUSH_RETRY):
                    await self._soon.wait()
            except TimeoutError:
                pass
            self._soon.clear()
            failing_since = await self.flush(failing_since, history_waits=True)

    async def flush(self, failing_since: float | None = None, *,
                    history_waits: bool = False) -> float | None:
        """Write what is pending (a batch of results only may wait for `results_every`, if
        `history_waits`); on failure keep it, in order, for the next try. Returns when writes
        began to fail (None: they do not)."""
        async with self._lock:
            return await self._flush(failing_since, history_waits)

    async def _flush(self, failing_since: float | None, history_waits: bool) -> float | None:
        if not self.pending:
            return failing_since
        pending = self.pending
        if (history_waits and not pending.decided
                and time.monotonic() - self._written_at < self.results_every):
            return failing_since
        batch, self.pending = self.pending, Batch()
        try:
            await self.state.write(batch)
        except FenceRejected as err:
            if self.fenced is None:
                raise
            batch.merge(self.pending)
            self.pending = self.fenced(batch, err.groups)
            self.soon()
            return failing_since
        except StoreError as err:
            batch.merge(self.pending)
            # Decisions and states are kept whatever it costs; the history of results is
            # only history: while the disk refuses, keep its newest part, not all of it.
            del batch.results[:-MAX_PENDING_RESULTS]
            del batch.minutes[:-MAX_PENDING_MINUTES]
            self.pending = batch
            self.metrics.state_errors.inc()
            self.metrics.state_ok.set(0)
            self.writable = False
            if failing_since is None:
                log.error("state not saved, retrying %s", fields(error=err))
            return failing_since or time.time()
        except Exception:
            # A bug, not the disk; the transaction's COMMIT is its last statement, so nothing
            # was written: keep the decisions for the flusher the supervisor restarts.
            batch.merge(self.pending)
            self.pending = batch
            raise
        self._written_at = time.monotonic()
        if failing_since is not None:
            log.warning("state saved again %s", fields(after=f"{time.time() - failing_since:.0f}s"))
        self.metrics.state_ok.set(1)
        self.writable = True
        if batch.transitions:
            self.written()
        return None
