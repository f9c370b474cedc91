"""A Freshservice API v2 on loopback, as much of it as probe uses, speaking Freshservice's paths,
wrapped JSON answers ({"ticket": ...}, {"tickets": [...]}), status codes and error bodies, with
its traps: a filter endpoint whose index lags behind the tickets (nothing is found until the test
says the index caught up) and that takes only some fields (not a custom text field), 30 tickets
a page; a ticket list that only covers the last 30 days; a rate limit per minute (429 with
Retry-After); custom fields that must exist and may be required (400 with an errors list); a
closed ticket that refuses notes; tags left out of every answer (they take `include=tags`);
workspaces, of which the list and the filter show only the primary one unless asked; a proxy in
front that answers HTML error pages. Tickets live in plain dicts, so a test asserts what the
helpdesk holds."""

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

from probe.helpdesks.freshservice import Route
from tests.harness.fakes import Fault, Faults, basic
from tests.harness.httpserver import serve_app

API_KEY = "fs-key-7Hq2Lx"
REQUESTER_EMAIL = "monitoring@example.com"
KEY_FIELD = "probe_incident_key"  # a custom single-line text field
DAY = 86400.0
FILTER_PAGE = 30
PRIMARY = 2  # the account's primary workspace
# What the filter's query takes: numbers and tags, never a text field.
FILTERABLE = ("status", "priority", "urgency", "impact", "agent_id", "group_id", "tag")
PROXY_PAGE = ("<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>"
              "<h1>We're sorry, but something went wrong.</h1></body></html>")


@dataclass
class FakeFreshservice:
    port: int = 0
    tickets: dict[int, dict[str, Any]] = field(default_factory=dict)
    notes: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    requesters: dict[str, int] = field(default_factory=lambda: {REQUESTER_EMAIL: 7001})
    custom_fields: tuple[str, ...] = (KEY_FIELD,)
    workspaces: tuple[int, ...] = (PRIMARY, 5)
    required_fields: tuple[str, ...] = ()  # custom fields the account made mandatory
    requests: list[tuple[str, str]] = field(default_factory=list)
    indexed: set[int] = field(default_factory=set)  # what the filter's index has caught up with
    per_minute: int | None = None  # the plan's rate limit; None: unlimited
    proxy_errors: int = 0  # this many requests meet the proxy's HTML error page
    stall_creates: int = 0  # this many creates are made, then answered too late to be heard
    released: asyncio.Event = field(default_factory=asyncio.Event)  # ends stalled answers
    _planted: Faults = field(default_factory=Faults)
    _window: tuple[float, int] = (-float("inf"), 0)  # (when the minute began, requests in it)
    _next_id: int = 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route(self, tmp_path: Path, **settings: Any) -> Route:
        key = tmp_path / "freshservice-key"
        key.write_text(API_KEY + "\n")
        data = {"backend": "freshservice", "url": self.url, "email": REQUESTER_EMAIL,
                "api_key_file": str(key), "key_field": KEY_FIELD, "timeout": "2s", **settings}
        return Route.model_validate(data)

    def answer(self, method: str, path: str, status: int, body: Any = None, *,
               headers: dict[str, str] | None = None, times: int = 1) -> None:
        """The next `times` requests to `path...` get this answer instead of Freshservice's."""
        self._planted.add(Fault(method, re.escape(path), status,
                                "" if body is None else body, headers or {}, times))

    def catch_up(self) -> None:
        """The filter's index has caught up with every ticket."""
        self.indexed = set(self.tickets)

    def human(self, ticket_id: int, **changes: Any) -> None:
        """What an agent does in Freshservice's own interface."""
        self.tickets[ticket_id].update(changes)

    # --- the API -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.router.add_get("/api/v2/tickets", self._list)
        app.router.add_get("/api/v2/tickets/filter", self._filter)
        app.router.add_post("/api/v2/tickets", self._create)
        app.router.add_get("/api/v2/tickets/{id:\\d+}", self._show)
        app.router.add_put("/api/v2/tickets/{id:\\d+}", self._update)
        app.router.add_post("/api/v2/tickets/{id:\\d+}/notes", self._note)
        return app

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if self.proxy_errors:
            self.proxy_errors -= 1
            return web.Response(status=502, text=PROXY_PAGE, content_type="text/html")
        limited = self._limited()  # "even invalid requests will count"
        if limited is not None:
            return limited
        if request.headers.get("Authorization") != basic(API_KEY, "X"):
            return web.json_response({"code": "invalid_credentials", "message":
                                      "You have to be logged in to perform this action."},
                                     status=401)
        planted = self._planted.take(request)
        if planted is not None:
            return planted.response()
        answer: web.StreamResponse = await handler(request)
        return answer

    def _limited(self) -> web.Response | None:
        """429 past the plan's requests in a minute, counted from the minute's first request
        (so that a test's few requests never straddle two minutes)."""
        if self.per_minute is None:
            return None
        now = time.monotonic()
        started, used = self._window
        if now - started >= 60:
            started, used = now, 0
        used += 1
        self._window = (started, used)
        if used <= self.per_minute:
            return None
        wait = str(max(1, int(started + 60 - now)))
        return web.json_response(
            {"message": "Rate Limit Exceeded"}, status=429,
            headers={"Retry-After": wait, "X-Ratelimit-Total": str(self.per_minute),
                     "X-Ratelimit-Remaining": "0", "X-Ratelimit-Used-CurrentRequest": "1"})

    async def _list(self, request: web.Request) -> web.Response:
        query = request.query
        since = time.time() - 30 * DAY  # by default, only tickets created in the last 30 days
        found = [t for t in self.tickets.values()
                 if t["created"] >= since and not t["deleted"] and not t["spam"]]
        if "email" in query:
            found = [t for t in found if t["requester_id"] == self.requesters.get(query["email"])]
        if "requester_id" in query:
            found = [t for t in found if str(t["requester_id"]) == query["requester_id"]]
        found = [t for t in found if str(t["workspace_id"]) == query.get("workspace_id",
                                                                         str(PRIMARY))]
        found.sort(key=lambda t: (t["created"], t["id"]), reverse=query.get("order_type") != "asc")
        per_page = min(int(query.get("per_page", "30")), 100)
        return web.json_response({"tickets": [_public(t) for t in found[:per_page]]})

    async def _filter(self, request: web.Request) -> web.Response:
        query = request.query.get("query", "")
        match = re.fullmatch(r'"(.*)"', query)
        if match is None or len(query) > 512:
            return _invalid([("query", "The query must be enclosed in double quotes and be "
                              "at most 512 characters long", "invalid_value")])
        conditions = []
        for part in match.group(1).split(" AND "):
            condition = re.fullmatch(r"(\w+):(?:'([^']*)'|(\d+)|(null))", part.strip())
            if condition is None or condition.group(1) not in FILTERABLE:
                return _invalid([("query", f"Invalid query or field not supported: {part}",
                                  "invalid_value")])
            name, text, number, _null = condition.groups()
            conditions.append((name, text if text is not None else
                               int(number) if number is not None else None))
        workspace = request.query.get("workspace_id", str(PRIMARY))
        found = [t for i, t in sorted(self.tickets.items(), reverse=True)
                 if i in self.indexed and not t["deleted"] and not t["spam"]
                 and str(t["workspace_id"]) == workspace
                 and all(_matches(t, name, value) for name, value in conditions)]
        return web.json_response({"tickets": [_public(t) for t in found[:FILTER_PAGE]],
                                  "total": len(found)})

    async def _create(self, request: web.Request) -> web.Response:
        data = await request.json()
        errors = self._problems(data)
        if errors:
            return _invalid(errors)
        requester = data.get("requester_id")
        if requester is None:
            email = data["email"]
            requester = self.requesters.setdefault(email, 7000 + len(self.requesters) + 1)
        ticket_id, self._next_id = self._next_id, self._next_id + 1
        ticket = {
            "id": ticket_id,
            "type": data.get("type", "Incident"),
            "subject": data["subject"],
            "description": data["description"],
            "priority": data["priority"],
            "urgency": data.get("urgency", 1),
            "impact": data.get("impact", 1),
            "status": data["status"],
            "source": data.get("source", 2),
            "requester_id": requester,
            "responder_id": data.get("responder_id"),
            "group_id": data.get("group_id"),
            "workspace_id": data.get("workspace_id", PRIMARY),
            "tags": list(data.get("tags") or []),
            "custom_fields": {name: None for name in self.custom_fields}
            | (data.get("custom_fields") or {}),
            "deleted": False,
            "spam": False,
            "created": time.time(),
        }
        self.tickets[ticket_id] = ticket
        self.notes[ticket_id] = []
        if self.stall_creates:
            self.stall_creates -= 1
            await self.released.wait()  # made; the client gives up before it hears
        return web.json_response({"ticket": _public(ticket)}, status=201)

    def _problems(self, data: dict[str, Any]) -> list[tuple[str, str, str]]:
        errors = []
        for name in ("subject", "description"):
            if not isinstance(data.get(name), str):
                errors.append((name, "It should be a/an String", "missing_field"))
        if "email" not in data and "requester_id" not in data:
            errors.append(("requester_id", "Please fill at least 1 of email, phone, "
                           "requester_id fields", "missing_field"))
        if data.get("requester_id") is not None and data["requester_id"] not in (
            self.requesters.values()
        ):
            errors.append(("requester_id", "There is no requester matching the given "
                           "requester_id", "invalid_value"))
        if data.get("type", "Incident") != "Incident":
            errors.append(("type", "It should be one of these values: 'Incident'",
                           "invalid_value"))
        for name, levels in (("priority", (1, 2, 3, 4)), ("urgency", (1, 2, 3)),
                             ("impact", (1, 2, 3)), ("status", (2, 3, 4, 5))):
            required = name in ("priority", "status")
            if (required or name in data) and data.get(name) not in levels:
                allowed = ",".join(map(str, levels))
                errors.append((name, f"It should be one of these values: '{allowed}'",
                               "invalid_value"))
        if data.get("workspace_id", PRIMARY) not in self.workspaces:
            errors.append(("workspace_id", "There is no workspace matching the given "
                           "workspace_id", "invalid_value"))
        custom = data.get("custom_fields") or {}
        for name in custom:
            if name not in self.custom_fields:
                errors.append((name, "Unexpected/invalid field in request", "invalid_field"))
        for name in self.required_fields:
            if custom.get(name) in (None, ""):
                errors.append((name, "It should be a/an String", "missing_field"))
        return errors

    async def _show(self, request: web.Request) -> web.Response:
        ticket = self.tickets.get(int(request.match_info["id"]))
        if ticket is None:
            return _not_found()
        return web.json_response({"ticket": _public(ticket)})

    async def _update(self, request: web.Request) -> web.Response:
        ticket = self.tickets.get(int(request.match_info["id"]))
        if ticket is None:
            return _not_found()
        data = await request.json()
        if data.get("status") not in (None, 2, 3, 4, 5):
            return _invalid([("status", "It should be one of these values: '2,3,4,5'",
                              "invalid_value")])
        ticket.update({k: v for k, v in data.items() if k in ("status", "responder_id")})
        return web.json_response({"ticket": _public(ticket)})

    async def _note(self, request: web.Request) -> web.Response:
        ticket_id = int(request.match_info["id"])
        ticket = self.tickets.get(ticket_id)
        if ticket is None:
            return _not_found()
        if ticket["status"] == 5:
            return _invalid([("ticket_id", "Notes cannot be added to a closed ticket",
                              "invalid_value")])
        data = await request.json()
        if not isinstance(data.get("body"), str):
            return _invalid([("body", "It should be a/an String", "missing_field")])
        note = {"body": data["body"], "private": data.get("private", True)}
        self.notes[ticket_id].append(note)
        return web.json_response({"conversation": {
            "id": 9000 + len(self.notes[ticket_id]), "ticket_id": ticket_id, **note}},
            status=201)


def _matches(ticket: dict[str, Any], name: str, value: Any) -> bool:
    if name == "tag":
        return value in ticket["tags"]
    return bool(ticket["responder_id" if name == "agent_id" else name] == value)


def _public(ticket: dict[str, Any]) -> dict[str, Any]:
    """A ticket as the API shows it: without its tags, which take `include=tags`."""
    return {k: v for k, v in ticket.items() if k not in ("created", "tags")}


def _not_found() -> web.Response:
    return web.json_response({"code": "not_found", "message": "Record not found"}, status=404)


def _invalid(errors: list[tuple[str, str, str]]) -> web.Response:
    return web.json_response(
        {"description": "Validation failed",
         "errors": [{"field": f, "message": m, "code": c} for f, m, c in errors]},
        status=400)


@contextlib.asynccontextmanager
async def serve_freshservice() -> AsyncIterator[FakeFreshservice]:
    fake = FakeFreshservice()
    async with serve_app(fake.app()) as port:
        fake.port = port
        try:
            yield fake
        finally:
            fake.released.set()
