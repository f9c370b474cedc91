"""The daemon's long-running loops — the scheduler, the state flusher, the engine's ticker, the
history's writer, ticket delivery, the ticket watcher and the systemd watchdog's pinger —
started and watched in one place, so that none of them can stop without anyone noticing.

- **A loop that raises** is logged with its traceback (one error line naming it), counted in
  `probe_loop_failures_total{loop}`, and restarted after 1s, then 2s, then 4s. A loop keeps its
  state on its object (the scheduler's heaps, the dispatcher's paused routes), so a restart in
  place picks up where it was, and every other loop runs on meanwhile: a rare failure costs one
  loop a second, not the daemon a restart (which systemd allows only 5 times in 5 minutes).
- **A loop that keeps failing** — a fourth time within ten minutes — is no passing accident: the
  supervisor gives up, the daemon stops as on SIGTERM (the state is saved) and exits with
  EXIT_LOOP_FAILED, and systemd's Restart=on-failure starts a fresh process from the database.
- **A loop that makes no progress** (alive, but blocked on something that never comes) is found
  by its marks: each loop marks progress as it goes and says how long it may go between two
  marks; one late by more than the watchdog's timeout (WatchdogSec; 30s outside systemd) is
  stuck. systemd's watchdog is pinged only while no loop is stuck or has given up, so systemd
  kills and restarts a daemon that runs but no longer delivers, as it does a hung event loop.

/-/healthy answers 503 exactly when the watchdog is not pinged (a liveness probe outside
systemd restarts the same cases); /-/ready also while a failed loop waits for its restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter

from probe import sdnotify
from probe.log import fields

log = logging.getLogger("probe")

# sysexits.h's EX_SOFTWARE, "internal software error": not 2 (a bad configuration), which the
# unit tells systemd not to restart, and not 1, which an uncaught exception exits with.
EXIT_LOOP_FAILED = 70
RESTARTS = 3  # restarts of one loop within RESTART_WINDOW; the next failure gives up
RESTART_WINDOW = 600.0
FIRST_BACKOFF = 1.0  # seconds before the first restart, doubled for each one after
LATE_WITHOUT_WATCHDOG = 30.0  # how late a loop may be outside systemd: the unit's WatchdogSec
LOOK_EVERY = 5.0  # seconds between looks for stuck loops when systemd wants no pings
MAX_ERROR = 200  # what /-/ready shows of an exception's message

Progress = Callable[[], None]


@dataclass(eq=False)
class Loop:
    """One long-running loop. `run` is called with the loop's progress mark and runs until it
    is cancelled, calling the mark as it gets on; `every` says the longest it may go between
    two marks (None: nothing to do, so it cannot be late)."""

    name: str
    run: Callable[[Progress], Awaitable[None]]
    every: Callable[[], float | None]
    last_progress: float = field(default=0.0, init=False)  # time.monotonic()
    failed_at: list[float] = field(default_factory=list, init=False)  # within RESTART_WINDOW
    error: str | None = field(default=None, init=False)  # why it is not running, while it is not
    gave_up: bool = field(default=False, init=False)

    def progress(self) -> None:
        self.last_progress = time.monotonic()


class Supervisor:
    """Runs the loops given to `add`, and its own, which pings the watchdog."""

    def __init__(self, registry: CollectorRegistry, *, watchdog: float | None) -> None:
        """`watchdog`: systemd's WatchdogSec in seconds, None when systemd asks for no pings."""
        self.watchdog = watchdog
        self.late_after = watchdog or LATE_WITHOUT_WATCHDOG
        self.loops: list[Loop] = []
        self.running = False
        self.failures = Counter(
            "probe_loop_failures_total",
            "Exceptions that ended one of the daemon's loops (each restarted, up to "
            f"{RESTARTS} times in {RESTART_WINDOW / 60:g} minutes; then probe exits)",
            ["loop"], registry=registry)
        self._stuck: set[str] = set()  # loops whose lack of progress has been logged
        self.add("watchdog", self._watch)

    def add(self, name: str, run: Callable[[Progress], Awaitable[None]],
            every: Callable[[], float | None] = lambda: None) -> None:
        self.loops.append(Loop(name, run, every))
        self.failures.labels(name)  # the series exists, at 0, from the first scrape

    @property
    def gave_up(self) -> list[str]:
        return [loop.name for loop in self.loops if loop.gave_up]

    def unhealthy(self) -> list[str]:
        """Loops that gave up or make no progress, in words: while there are any, the watchdog
        is not pinged."""
        return [text for _, text, fatal in self._conditions() if fatal]

    def not_ready(self) -> list[str]:
        """The unhealthy loops, and those that failed and wait for their restart."""
        return [text for _, text, _ in self._conditions()]

    def _conditions(self) -> list[tuple[Loop, str, bool]]:
        """Each loop in trouble, what is wrong with it, and whether that stops the watchdog."""
        now = time.monotonic()
        found = []
        for loop in self.loops:
            if loop.gave_up:
                found.append((loop, f"loop {loop.name} failed {len(loop.failed_at)} times "
                              f"({loop.error}): probe stops", True))
            elif loop.error is not None:
                found.append((loop, f"loop {loop.name} failed ({loop.error}): restarting", False))
            elif self.running and (late := self._late(loop, now)) is not None:
                silent, every = late
                found.append((loop, f"loop {loop.name} makes no progress: none for "
                              f"{silent:.0f}s, expected every {every:g}s", True))
        return found

    def _late(self, loop: Loop, now: float) -> tuple[float, float] | None:
        """(seconds since its last progress, its `every`) for a loop late by more than
        `late_after`."""
        every = loop.every()
        silent = now - loop.last_progress
        if every is None or silent <= every + self.late_after:
            return None
        return silent, every

    async def run(self, until: asyncio.Event) -> None:
        """Run every loop until `until` is set: by the daemon's stop, or here, when a loop
        keeps failing (`gave_up` then names it). A failure of the supervisor itself is not
        caught: the task group cancels the loops and it ends the daemon."""
        self.running = True
        for loop in self.loops:
            loop.progress()  # each is judged from its start, whichever task runs first
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._keep(loop, until), name=f"loop {loop.name}")
                         for loop in self.loops]
                await until.wait()
                for task in tasks:
                    task.cancel()
        finally:
            self.running = False

    async def _keep(self, loop: Loop, until: asyncio.Event) -> None:
        while True:
            loop.error = None
            loop.progress()
            failure: Exception | None = None
            try:
                await loop.run(loop.progress)
                loop.error = "it returned"  # a loop runs until cancelled: returning is a bug too
            except Exception as err:
                failure = err
                loop.error = f"{type(err).__name__}: {err}"[:MAX_ERROR]
            self.failures.labels(loop.name).inc()
            now = time.monotonic()
            loop.failed_at = [t for t in loop.failed_at if now - t < RESTART_WINDOW] + [now]
            if len(loop.failed_at) > RESTARTS:
                loop.gave_up = True
                log.error("loop failed again, probe stops %s", fields(
                    loop=loop.name, error=loop.error, failures=len(loop.failed_at),
                    within=f"{now - loop.failed_at[0]:.0f}s"), exc_info=failure)
                until.set()
                return
            backoff = FIRST_BACKOFF * 2 ** (len(loop.failed_at) - 1)
            log.error("loop failed, restarting %s", fields(
                loop=loop.name, error=loop.error, restart_in=f"{backoff:g}s"), exc_info=failure)
            await asyncio.sleep(backoff)

    async def _watch(self, progress: Progress) -> None:
        """Say when a loop stops making progress and when it makes some again; ping systemd's
        watchdog, at half its timeout, while no loop is stuck or has given up."""
        every = self.watchdog / 2 if self.watchdog else LOOK_EVERY
        while True:
            now = time.monotonic()
            late = {loop.name: found for loop in self.loops
                    if loop.error is None and (found := self._late(loop, now)) is not None}
            for name in late.keys() - self._stuck:
                silent, expected = late[name]
                log.error("loop makes no progress %s", fields(
                    loop=name, silent_for=f"{silent:.0f}s", expected_every=f"{expected:g}s",
                    watchdog="no longer pinged" if self.watchdog else None))
            for name in self._stuck - late.keys():
                log.warning("loop makes progress again %s", fields(loop=name))
            self._stuck = set(late)
            if self.watchdog and not self.unhealthy():
                sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(every)
