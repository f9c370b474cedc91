"""Waiting in tests: poll a condition until it holds, or fail after a deadline with a message
that says what was awaited (and, given `context`, what the daemon logged meanwhile).

`until` is for coroutines: it sleeps with asyncio, so the peers served in the test's own event
loop keep answering while it waits. `until_blocking` is the same for code that runs outside a
loop (module-scoped fixtures, plain test functions)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Callable
from typing import Any

EVERY = 0.05  # seconds between two looks: short against the daemons' 100 ms-1 s intervals


def _timed_out(what: str, context: Callable[[], str] | None) -> AssertionError:
    return AssertionError(f"timed out waiting for {what}"
                          + (f"\n{context()}" if context is not None else ""))


async def until(
    what: str, condition: Callable[[], Any], timeout: float = 15, *,
    context: Callable[[], str] | None = None, tolerate: tuple[type[Exception], ...] = (),
) -> Any:
    """Returns the first true value of `condition()` (awaited if it is awaitable). An exception
    in `tolerate` counts as not yet (a port not listening yet); any other ends the wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(*tolerate):
            value = condition()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
        await asyncio.sleep(EVERY)
    raise _timed_out(what, context)


def until_blocking(
    what: str, condition: Callable[[], Any], timeout: float = 15, *,
    context: Callable[[], str] | None = None, tolerate: tuple[type[Exception], ...] = (),
) -> Any:
    """`until` for code outside an event loop: the same, sleeping in the thread."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(*tolerate):
            value = condition()
            if value:
                return value
        time.sleep(EVERY)
    raise _timed_out(what, context)
