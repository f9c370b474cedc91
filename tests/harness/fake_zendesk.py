"""A Zendesk Support API v2 on loopback, as much of it as probe uses, speaking Zendesk's paths,
JSON shapes, status codes and error bodies, with its traps: external ids that are not unique,
the Idempotency-Key replay (and its refusal of a different body under the same key), solving
needs an assignee, a closed ticket refuses every update (422), the per-ticket update limit
(429 with Retry-After). Tickets live in memory, so a test asserts what the helpdesk holds."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from probe.helpdesks.zendesk import Route
from tests.harness.fakes import Fault, Faults, basic
from tests.harness.httpserver import serve_app

EMAIL = "probe@example.com"
TOKEN = "zd-api-token-6wH2"
ME = 90001  # the token's user, an agent
PRIORITIES = ("urgent", "high", "normal", "low")
TYPES = ("problem", "incident", "question", "task")
UPDATE_LIMITED = ("Rate limit for ticket updates exceeded, please wait before updating this "
                  "ticket again")


@dataclass
class FakeZendesk:
    port: int = 0
    tickets: dict[int, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    stall_creates: int = 0  # this many creates are made, then answered too late to be heard
    # Seconds a create takes before the ticket exists (and find() sees it), made even if the
    # client is gone by then: a helpdesk committing late, as Request Tracker under load does.
    create_delay: float = 0.0
    making: int = 0  # creates under way
    _planted: Faults = field(default_factory=Faults)
    _idempotency: dict[str, tuple[str, int, dict[str, Any]]] = field(default_factory=dict)
    _next_id: int = 1
    released: asyncio.Event = field(default_factory=asyncio.Event)  # ends stalled answers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route(self, tmp_path: Path, **settings: Any) -> Route:
        token = tmp_path / "zendesk-token"
        token.write_text(TOKEN + "\n")
        data = {"backend": "zendesk", "url": self.url, "email": EMAIL,
                "token_file": str(token), "timeout": "2s", **settings}
        return Route.model_validate(data)

    def answer(self, method: str, path: str, status: int, body: Any = "", *,
               headers: dict[str, str] | None = None, times: int = 1) -> None:
        """The next `times` requests to `path...` get this answer instead of Zendesk's."""
        self._planted.add(Fault(method, re.escape(path), status,
                                body if isinstance(body, dict) else str(body),
                                headers or {}, times))

    def comments(self, ticket_id: int) -> list[tuple[bool, str]]:
        return [(c["public"], c["body"]) for c in self.tickets[ticket_id]["comments"]]

    def human(self, ticket_id: int, **changes: Any) -> None:
        """What an agent does in Zendesk's own interface."""
        self.tickets[ticket_id].update(changes)

    # --- the API -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.router.add_get("/api/v2/tickets.json", self._list)
        app.router.add_post("/api/v2/tickets.json", self._create)
        app.router.add_get("/api/v2/tickets/{id:\\d+}.json", self._show)
        app.router.add_put("/api/v2/tickets/{id:\\d+}.json", self._update)
        app.router.add_get("/api/v2/users/me.json", self._me)
        return app

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.headers.get("Authorization") != basic(f"{EMAIL}/token", TOKEN):
            return web.json_response({"error": "Couldn't authenticate you"}, status=401)
        planted = self._planted.take(request)
        if planted is not None:
            return planted.response()
        response: web.StreamResponse = await handler(request)
        return response

    async def _list(self, request: web.Request) -> web.Response:
        wanted = request.query.get("external_id")
        found = [t for t in self.tickets.values()
                 if t["status"] != "deleted" and (wanted is None or t["external_id"] == wanted)]
        return web.json_response({"tickets": [_public(t) for t in found], "next_page": None,
                                  "previous_page": None, "count": len(found)})

    async def _create(self, request: web.Request) -> web.Response:
        raw = await request.read()
        key = request.headers.get("Idempotency-Key")
        digest = hashlib.sha256(raw).hexdigest()
        if key and key in self._idempotency:
            seen, status, body = self._idempotency[key]
            if seen != digest:
                return web.json_response({"error": "IdempotentRequestError", "description":
                                          "Request body does not match the original request"},
                                         status=400)
            return web.json_response(body, status=status, headers={"x-idempotency-lookup": "hit"})
        fields = json.loads(raw).get("ticket") or {}
        problems = _invalid(fields)
        if problems:
            return _record_invalid(problems)
        # Shielded: the ticket is made even when the client hangs up (or dies) meanwhile.
        body = await asyncio.shield(self._make(fields, key, digest))
        ticket_id = body["ticket"]["id"]
        if self.stall_creates:
            self.stall_creates -= 1
            await self.released.wait()  # made; the client gives up before it hears
        return web.json_response(body, status=201, headers={
            "Location": f"{self.url}/api/v2/tickets/{ticket_id}.json",
            **({"x-idempotency-lookup": "miss"} if key else {})})

    async def _make(self, fields: dict[str, Any], key: str | None,
                    digest: str) -> dict[str, Any]:
        self.making += 1
        try:
            await asyncio.sleep(self.create_delay)
        finally:
            self.making -= 1
        ticket_id, self._next_id = self._next_id, self._next_id + 1
        comment = fields["comment"]
        ticket = {
            "id": ticket_id,
            "subject": fields.get("subject"),
            "description": comment["body"],
            "priority": fields.get("priority"),
            "type": fields.get("type"),
            "status": "open" if fields.get("assignee_id") else "new",
            "external_id": fields.get("external_id"),
            "tags": sorted(set(fields.get("tags") or [])),
            "group_id": fields.get("group_id"),
            "assignee_id": fields.get("assignee_id"),
            "requester_id": ME,
            "via": {"channel": "api", "source": {"from": {}, "to": {}, "rel": None}},
            "comments": [{"body": comment["body"], "public": comment.get("public", True)}],
        }
        source = self.tickets.get(fields.get("via_followup_source_id") or 0)
        if source is not None and source["status"] == "closed":  # no effect on any other
            ticket["via"]["source"] = {"from": {"ticket_id": source["id"]}, "to": {},
                                       "rel": "follow_up"}
        self.tickets[ticket_id] = ticket
        body = {"ticket": _public(ticket)}
        if key:
            self._idempotency[key] = (digest, 201, body)
        return body

    async def _show(self, request: web.Request) -> web.Response:
        ticket = self.tickets.get(int(request.match_info["id"]))
        if ticket is None or ticket["status"] == "deleted":
            return _not_found()
        return web.json_response({"ticket": _public(ticket)})

    async def _update(self, request: web.Request) -> web.Response:
        ticket = self.tickets.get(int(request.match_info["id"]))
        if ticket is None or ticket["status"] == "deleted":
            return _not_found()
        if ticket["status"] == "closed":
            return _record_invalid({"status": "Status: closed prevents ticket update"})
        fields = (await request.json()).get("ticket") or {}
        status = fields.get("status", ticket["status"])
        assignee = fields.get("assignee_id", ticket["assignee_id"])
        if status == "new" and ticket["status"] != "new":
            return _record_invalid({"status": "Status: cannot be set back to New"})
        if status == "solved" and not assignee:
            return _record_invalid({"assignee": "Assignee: is required when solving"})
        if "comment" in fields:
            comment = fields["comment"]
            ticket["comments"].append({"body": comment["body"],
                                       "public": comment.get("public", True)})
        ticket["assignee_id"] = assignee
        ticket["status"] = "open" if status == "new" and assignee else status
        return web.json_response({"ticket": _public(ticket)})

    async def _me(self, request: web.Request) -> web.Response:
        return web.json_response({"user": {"id": ME, "email": EMAIL, "role": "agent"}})


def _public(ticket: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ticket.items() if k != "comments"}


def _invalid(fields: dict[str, Any]) -> dict[str, str]:
    problems = {}
    if not (fields.get("comment") or {}).get("body"):
        problems["description"] = "Description: cannot be blank"
    if fields.get("priority") not in (None, *PRIORITIES):
        problems["priority"] = f"Priority: {fields.get('priority')} is not valid"
    if fields.get("type") not in (None, *TYPES):
        problems["type"] = f"Type: {fields.get('type')} is not valid"
    return problems


def _record_invalid(problems: dict[str, str]) -> web.Response:
    details = {name: [{"description": text, "error": "InvalidValue"}]
               for name, text in problems.items()}
    return web.json_response({"error": "RecordInvalid", "description": "Record validation errors",
                              "details": details}, status=422)


def _not_found() -> web.Response:
    return web.json_response({"error": "RecordNotFound", "description": "Not found"}, status=404)


@contextlib.asynccontextmanager
async def serve_zendesk() -> AsyncIterator[FakeZendesk]:
    fake = FakeZendesk()
    async with serve_app(fake.app()) as port:
        fake.port = port
        try:
            yield fake
        finally:
            fake.released.set()
