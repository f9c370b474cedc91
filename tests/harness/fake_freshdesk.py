"""A Freshdesk API v2 on loopback, as much of it as probe uses, speaking Freshdesk's paths, JSON
shapes, status codes and error bodies, with its traps: a search index that lags behind the
tickets (nothing is searchable until the test says the index caught up), search results capped
at 30 a page, a ticket list that only covers the last 30 days, tags of at most 32 characters,
custom fields that must exist, a requester that must be given, 429 with Retry-After. Tickets
live in memory, so a test asserts what the helpdesk holds."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from probe.helpdesks.freshdesk import Route
from tests.harness.fakes import Fault, Faults, basic
from tests.harness.httpserver import serve_app

API_KEY = "fd-key-Qm9Y3"
REQUESTER_EMAIL = "monitoring@example.com"
KEY_FIELD = "cf_probe_key"
DAY = 86400.0
SEARCH_PAGE = 30


@dataclass
class FakeFreshdesk:
    port: int = 0
    tickets: dict[int, dict[str, Any]] = field(default_factory=dict)
    notes: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    contacts: dict[str, int] = field(default_factory=lambda: {REQUESTER_EMAIL: 5001})
    custom_fields: tuple[str, ...] = (KEY_FIELD,)
    requests: list[tuple[str, str]] = field(default_factory=list)
    indexed: set[int] = field(default_factory=set)  # what the search index has caught up with
    stall_creates: int = 0  # this many creates are made, then answered too late to be heard
    released: asyncio.Event = field(default_factory=asyncio.Event)  # ends stalled answers
    _planted: Faults = field(default_factory=Faults)
    _next_id: int = 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route(self, tmp_path: Path, **settings: Any) -> Route:
        key = tmp_path / "freshdesk-key"
        key.write_text(API_KEY + "\n")
        data = {"backend": "freshdesk", "url": self.url, "email": REQUESTER_EMAIL,
                "api_key_file": str(key), "key_field": KEY_FIELD, "timeout": "2s", **settings}
        return Route.model_validate(data)

    def answer(self, method: str, path: str, status: int, body: Any = None, *,
               headers: dict[str, str] | None = None, times: int = 1) -> None:
        """The next `times` requests to `path...` get this answer instead of Freshdesk's."""
        self._planted.add(Fault(method, re.escape(path), status,
                                "" if body is None else body, headers or {}, times))

    def catch_up(self) -> None:
        """The search index has caught up with every ticket."""
        self.indexed = set(self.tickets)

    def human(self, ticket_id: int, **changes: Any) -> None:
        """What an agent does in Freshdesk's own interface."""
        self.tickets[ticket_id].update(changes)

    # --- the API -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.router.add_get("/api/v2/tickets", self._list)
        app.router.add_post("/api/v2/tickets", self._create)
        app.router.add_get("/api/v2/tickets/{id:\\d+}", self._show)
        app.router.add_put("/api/v2/tickets/{id:\\d+}", self._update)
        app.router.add_post("/api/v2/tickets/{id:\\d+}/notes", self._note)
        app.router.add_get("/api/v2/search/tickets", self._search)
        return app

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.headers.get("Authorization") != basic(API_KEY, "X"):
            return web.json_response({"code": "invalid_credentials", "message":
                                      "You have to be logged in to perform this action."},
                                     status=401)
        planted = self._planted.take(request)
        if planted is not None:
            return planted.response()
        answer: web.StreamResponse = await handler(request)
        return answer

    async def _list(self, request: web.Request) -> web.Response:
        query = request.query
        since = time.time() - 30 * DAY  # by default, only tickets created in the last 30 days
        found = [t for t in self.tickets.values()
                 if t["created"] >= since and not t["deleted"] and not t["spam"]]
        if "email" in query:
            found = [t for t in found if t["requester_id"] == self.contacts.get(query["email"])]
        if "requester_id" in query:
            found = [t for t in found if str(t["requester_id"]) == query["requester_id"]]
        found.sort(key=lambda t: (t["created"], t["id"]), reverse=query.get("order_type") != "asc")
        per_page = min(int(query.get("per_page", "30")), 100)
        return web.json_response([_public(t) for t in found[:per_page]])

    async def _search(self, request: web.Request) -> web.Response:
        query = request.query.get("query", "")
        match = re.fullmatch(r"\"tag:'([^']*)'\"", query)
        if len(query) > 512 or not match:
            return _invalid([("query", f"Invalid query or not supported: {query}",
                              "invalid_value")])
        tag = match.group(1)
        found = [t for i, t in sorted(self.tickets.items())
                 if i in self.indexed and tag in t["tags"]]
        return web.json_response({"results": [_public(t) for t in found[:SEARCH_PAGE]],
                                  "total": len(found)})

    async def _create(self, request: web.Request) -> web.Response:
        data = await request.json()
        errors = self._problems(data)
        if errors:
            return _invalid(errors)
        requester = data.get("requester_id")
        if requester is None:
            email = data["email"]
            requester = self.contacts.setdefault(email, 5000 + len(self.contacts) + 1)
        ticket_id, self._next_id = self._next_id, self._next_id + 1
        ticket = {
            "id": ticket_id,
            "subject": data["subject"],
            "description": data["description"],
            "priority": data["priority"],
            "status": data["status"],
            "requester_id": requester,
            "responder_id": data.get("responder_id"),
            "group_id": data.get("group_id"),
            "tags": list(data.get("tags") or []),
            "custom_fields": {name: None for name in self.custom_fields}
            | (data.get("custom_fields") or {}),
            "source": 2,
            "deleted": False,
            "spam": False,
            "created": time.time(),
        }
        self.tickets[ticket_id] = ticket
        self.notes[ticket_id] = []
        if self.stall_creates:
            self.stall_creates -= 1
            await self.released.wait()  # made; the client gives up before it hears
        return web.json_response(_public(ticket), status=201)

    def _problems(self, data: dict[str, Any]) -> list[tuple[str, str, str]]:
        errors = []
        for name in ("subject", "description"):
            if not isinstance(data.get(name), str):
                errors.append((name, "It should be a/an String", "missing_field"))
        if "email" not in data and "requester_id" not in data:
            errors.append(("requester_id", "Please fill at least 1 of requester_id, phone, "
                           "email, twitter_id, facebook_id, unique_external_id fields",
                           "missing_field"))
        if data.get("requester_id") is not None and data["requester_id"] not in (
            self.contacts.values()
        ):
            errors.append(("requester_id", "There is no contact matching the given "
                           "requester_id", "invalid_value"))
        if data.get("priority") not in (1, 2, 3, 4):
            errors.append(("priority", "It should be one of these values: '1,2,3,4'",
                           "invalid_value"))
        if data.get("status") not in (2, 3, 4, 5):
            errors.append(("status", "It should be one of these values: '2,3,4,5'",
                           "invalid_value"))
        if any(len(tag) > 32 for tag in data.get("tags") or []):
            errors.append(("tags", "It should only contain elements that have maximum of 32 "
                           "characters", "invalid_value"))
        for name in data.get("custom_fields") or {}:
            if name not in self.custom_fields:
                errors.append((name, "Unexpected/invalid field in request", "invalid_field"))
        return errors

    async def _show(self, request: web.Request) -> web.Response:
        ticket = self.tickets.get(int(request.match_info["id"]))
        if ticket is None:
            return web.Response(status=404)
        return web.json_response(_public(ticket))

    async def _update(self, request: web.Request) -> web.Response:
        ticket = self.tickets.get(int(request.match_info["id"]))
        if ticket is None:
            return web.Response(status=404)
        data = await request.json()
        if data.get("status") not in (None, 2, 3, 4, 5):
            return _invalid([("status", "It should be one of these values: '2,3,4,5'",
                              "invalid_value")])
        ticket.update({k: v for k, v in data.items() if k in ("status", "responder_id")})
        return web.json_response(_public(ticket))

    async def _note(self, request: web.Request) -> web.Response:
        ticket_id = int(request.match_info["id"])
        if ticket_id not in self.tickets:
            return web.Response(status=404)
        data = await request.json()
        if not isinstance(data.get("body"), str):
            return _invalid([("body", "It should be a/an String", "missing_field")])
        note = {"body": data["body"], "private": data.get("private", True)}
        self.notes[ticket_id].append(note)
        return web.json_response({"id": 7000 + len(self.notes[ticket_id]), "ticket_id": ticket_id,
                                  **note}, status=201)


def _public(ticket: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ticket.items() if k != "created"}


def _invalid(errors: list[tuple[str, str, str]]) -> web.Response:
    return web.json_response(
        {"description": "Validation failed",
         "errors": [{"field": f, "message": m, "code": c} for f, m, c in errors]},
        status=400)


@contextlib.asynccontextmanager
async def serve_freshdesk() -> AsyncIterator[FakeFreshdesk]:
    fake = FakeFreshdesk()
    async with serve_app(fake.app()) as port:
        fake.port = port
        try:
            yield fake
        finally:
            fake.released.set()
