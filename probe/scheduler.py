"""When each check runs: every `interval`, every `retry_interval` while its last result was a
failure, start times spread over the interval, at most `max_concurrency` in flight.

Heaps of due times drive the checks, one for healthy checks and one for failing checks'
retries; when every slot is taken, a retry that is due goes before healthy checks, since a
ticket is being decided on it. A run is a task of its own, so a slow or hanging target holds
one slot (until its timeout) and never delays any other check.
"""

from __future__ import annotations

import asyncio
import heapq
import zlib
from collections.abc import Awaitable, Callable, Mapping

from probe.config import Check

# A check due within the slack starts now, with the others due around then: one wake-up of
# the process for several checks instead of one each. Waking an idle process, and the loop
# iteration that follows, cost more than a TCP connect on loopback, so at a few hundred
# checks a second the batching saves a quarter of the daemon's CPU. A check never starts
# late for it (early by at most a twentieth of its interval), and keeps its cadence.
TIMER_SLACK = 0.05

RunCheck = Callable[[Check, float], Awaitable[bool]]  # (check, lag) -> whether it failed


def spread(name: str, interval: float) -> float:
    """A stable offset in [0, interval) so that checks do not all fire at once, and a restart
    keeps each check's phase."""
    return (zlib.crc32(name.encode()) % 10_000) / 10_000 * interval


class Scheduler:
    def __init__(
        self,
        run: RunCheck,
        max_concurrency: int,
        *,
        on_skip: Callable[[Check], None] = lambda check: None,
    ) -> None:
        self._run = run
        self._on_skip = on_skip
        # Slots as a plain count: asyncio.Semaphore.locked() walks its waiters on every acquire.
        self._free = max_concurrency
        self._slot_freed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._checks: dict[str, Check] = {}
        # Due times of healthy checks, and of failing ones (their retries): when slots are
        # short, a due retry goes first, since a ticket is being decided on it.
        self._heap: list[tuple[float, int, str]] = []
        self._retries: list[tuple[float, int, str]] = []
        self._generation: dict[str, int] = {}  # a heap entry of an older generation is stale
        self._pushed = 0
        self._running: dict[str, asyncio.Task[None]] = {}
        self._failing: set[str] = set()
        self._resume: dict[str, float] = {}  # taken over: when its own cadence goes on
        self._wake = asyncio.Event()
        self._sleeping_until = float("inf")  # when serve() wakes up by itself
        self._stopped = False

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def update(self, checks: list[Check], resume: Mapping[str, float] | None = None) -> None:
        """Take a new set of checks: new ones are spread over their interval, removed ones
        stop, and ones whose interval changed are rescheduled. A new check in `resume` (one
        taken over from another agent, which may have died before its last run) runs at once,
        then goes on at its own pace: next in `resume[name]` seconds, at most an interval."""
        now = self._loop.time()
        resume = resume or {}
        old = self._checks
        self._checks = {c.name: c for c in checks}
        for name in old.keys() - self._checks.keys():
            self._generation.pop(name, None)
            self._failing.discard(name)
            self._resume.pop(name, None)
        for check in checks:
            before = old.get(check.name)
            timing = (check.interval, check.retry_interval)
            if before is None and check.name in resume:
                self._push(check.name, now)
                then = min(resume[check.name], check.interval)
                if then > check.interval / 10:  # else its cadence from now is near enough
                    self._resume[check.name] = now + then
            elif before is None or (before.interval, before.retry_interval) != timing:
                self._push(check.name, now + spread(check.name, check.interval))
        self._wake.set()

    def _push(self, name: str, due: float) -> None:
        self._pushed += 1
        self._generation[name] = self._pushed
        heap = self._retries if name in self._failing else self._heap
        heapq.heappush(heap, (due, self._pushed, name))
        if due < self._sleeping_until:
            self._wake.set()  # sooner than serve() meant to look again

    def run_soon(self, name: str) -> None:
        """Run a check now rather than at its turn (a parent asked for by the engine)."""
        if name in self._checks and name not in self._running:
            self._push(name, self._loop.time())
            self._wake.set()

    def _next(self) -> list[tuple[float, int, str]] | None:
        """The heap whose head goes next: a due retry's, else the earlier head's."""
        if self._retries and (not self._heap or self._retries[0][0] <= max(
                self._heap[0][0], self._loop.time())):
            return self._retries
        return self._heap or None

    async def serve(self) -> None:
        while not self._stopped:
            heap = self._next()
            if heap is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            due, generation, name = heap[0]
            if self._generation.get(name) != generation:
                heapq.heappop(heap)
                continue
            if due > self._loop.time() + min(TIMER_SLACK, self._checks[name].interval / 20):
                # One timer for the next due check; _push wakes us if an earlier one comes.
                self._wake.clear()
                self._sleeping_until = due
                timer = self._loop.call_at(due, self._wake.set)
                await self._wake.wait()
                timer.cancel()
                self._sleeping_until = float("inf")
                continue
            check = self._checks[name]
            if name in self._running:
                # Still running (a retry_interval shorter than the timeout): skip this turn.
                heapq.heappop(heap)
                self._on_skip(check)
                self._push(name, due + self._step(check))
                continue
            if self._free == 0:
                # Wait for a slot, then choose again: a retry may have fallen due meanwhile.
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            heapq.heappop(heap)
            self._free -= 1
            self._running[name] = asyncio.create_task(self._one(check, due), name=name)

    def _step(self, check: Check) -> float:
        return check.retry_interval if check.name in self._failing else check.interval

    async def _one(self, check: Check, due: float) -> None:
        try:
            failed = await self._run(check, max(0.0, self._loop.time() - due))
        finally:
            self._free += 1
            self._slot_freed.set()
            self._running.pop(check.name, None)
        current = self._checks.get(check.name)
        if current is None or self._stopped:
            return  # removed by a reload while it ran
        if failed:
            self._failing.add(check.name)
        else:
            self._failing.discard(check.name)
        now = self._loop.time()
        # Keep the cadence (due + step), unless the run took us past it; a check taken over
        # goes back to its own.
        resumed = self._resume.pop(check.name, None)
        self._push(check.name, max(resumed if resumed is not None and not failed
                                   else due + self._step(current), now))

    async def stop(self) -> None:
        """Start nothing more, and cancel the runs in flight: their results were not decided."""
        self._stopped = True
        self._wake.set()
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
