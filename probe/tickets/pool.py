"""The helpdesk clients of the configured routes, made when first needed and shared by the
dispatcher and the watcher; a reload that changes a route closes its client."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from probe.helpdesks import make_backend
from probe.helpdesks.base import Backend, RouteBase, TicketError


class Backends:
    def __init__(self, routes: Mapping[str, RouteBase], *, database: Path) -> None:
        self.routes = dict(routes)
        self._database = database
        self._made: dict[str, Backend[Any]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def __getitem__(self, route: str) -> Backend[Any]:
        """The client of `route`; a TicketError when no such route is configured (a reload may
        bring it back: transient)."""
        if route not in self._made:
            settings = self.routes.get(route)
            if settings is None:
                raise TicketError(f"route {route!r} is not configured (any more)")
            self._made[route] = make_backend(route, settings, database=self._database)
        return self._made[route]

    def update(self, routes: Mapping[str, RouteBase]) -> None:
        for name, backend in list(self._made.items()):
            if routes.get(name) != self.routes.get(name):
                del self._made[name]
                task = asyncio.ensure_future(backend.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        self.routes = dict(routes)

    def escalate_to(self, route: str) -> str | None:
        return getattr(self.routes.get(route), "escalate_to", None)

    def longest_timeout(self) -> float:
        return max((route.timeout for route in self.routes.values()), default=0.0)

    async def close(self) -> None:
        await asyncio.gather(*self._closing, return_exceptions=True)
        for backend in self._made.values():
            await backend.close()
