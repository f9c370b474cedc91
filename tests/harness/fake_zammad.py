"""A Zammad REST API v1 on loopback, as much of it as probe uses, speaking Zammad's paths, JSON
shapes, status codes and error bodies ({"error", "error_human"}), with its traps: a search by
`query` asks an Elasticsearch index that lags the database (`index_lag`), while a search by
`condition` alone reads the database; the unassigned owner is user 1, not null; no
idempotency key, so a create sent twice is two tickets; a merged ticket refuses a new state;
and, planted per test (`answer`), a 429 with Retry-After or a reverse proxy's HTML error page.
Tickets live in memory, in Zammad's own terms (state names, priority ids, tags, articles), so a
test asserts what the helpdesk holds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from probe.helpdesks.zammad import Route
from tests.harness.fakes import Fault, Faults
from tests.harness.httpserver import serve_app

TOKEN = "zammad-token-Qx81"
NOBODY = 1  # Zammad's system user: the owner of an unassigned ticket
ME = 3  # the token's user, an agent
CUSTOMER = "monitoring@example.com"
GROUPS = ("Users", "Oncall")
STATES = ("new", "open", "pending reminder", "pending close", "closed", "merged", "removed")
PRIORITIES = {1: "1 low", 2: "2 normal", 3: "3 high"}
BAD_GATEWAY = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>"
               "502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n"
               "</html>\r\n")


@dataclass
class FakeZammad:
    port: int = 0
    tickets: dict[int, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    index_lag: float = 0.0  # seconds before a new ticket shows in a `query` search
    stall_creates: int = 0  # this many creates are made, then answered too late to be heard
    _planted: Faults = field(default_factory=Faults)
    _next_id: int = 1
    released: asyncio.Event = field(default_factory=asyncio.Event)  # ends stalled answers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route(self, tmp_path: Path, **settings: Any) -> Route:
        token = tmp_path / "zammad-token"
        token.write_text(TOKEN + "\n")
        data = {"backend": "zammad", "url": self.url, "token_file": str(token),
                "group": "Users", "customer": CUSTOMER, "timeout": "2s", **settings}
        return Route.model_validate(data)

    def answer(self, method: str, path: str, status: int, body: Any = "", *,
               headers: dict[str, str] | None = None, times: int = 1) -> None:
        """The next `times` requests to `path...` get this answer instead of Zammad's."""
        self._planted.add(Fault(method, re.escape(path), status,
                                body if isinstance(body, dict) else str(body),
                                headers or {}, times))

    def articles(self, ticket_id: int) -> list[tuple[bool, str]]:
        """(internal, body) of each article after the first, as an agent reads them."""
        return [(a["internal"], a["body"]) for a in self.tickets[ticket_id]["articles"][1:]]

    def human(self, ticket_id: int, **changes: Any) -> None:
        """What an agent does in Zammad's own interface."""
        self.tickets[ticket_id].update(changes)

    def merge(self, source: int, target: int) -> None:
        """An agent merges ticket `source` into `target`, as Zammad does it."""
        number = self.tickets[target]["number"]
        self.tickets[source]["state"] = "merged"
        self.tickets[source]["articles"].append({
            "body": f"merged into ticket #{number}", "internal": False, "type": "note",
            "content_type": "text/plain"})

    def with_tag(self, tag: str) -> list[int]:
        return [i for i, t in self.tickets.items() if tag in t["tags"]]

    # --- the API -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.router.add_post("/api/v1/tickets", self._create)
        app.router.add_get("/api/v1/tickets/search", self._search)
        app.router.add_get("/api/v1/tickets/{id:\\d+}", self._show)
        app.router.add_put("/api/v1/tickets/{id:\\d+}", self._update)
        app.router.add_post("/api/v1/ticket_articles", self._article)
        app.router.add_get("/api/v1/tags", self._tags)
        return app

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        planted = self._planted.take(request)  # first: the proxy in front answers these
        if planted is not None:
            response = planted.response()
            if isinstance(planted.body, str) and planted.body.startswith("<html>"):
                response.content_type = "text/html"  # a proxy's page, as nginx labels it
            return response
        if request.headers.get("Authorization") != f"Token token={TOKEN}":
            return _error(401, "Invalid token!")
        answer: web.StreamResponse = await handler(request)
        return answer

    async def _create(self, request: web.Request) -> web.Response:
        data = await request.json()
        article = data.get("article") or {}
        if data.get("group") not in GROUPS:
            return _no_lookup("group", data.get("group"))
        if data.get("customer") != CUSTOMER:  # looked up by login, then by email
            return _no_lookup("customer", data.get("customer"))
        if data.get("priority_id") not in PRIORITIES:
            return _error(422, "Validation failed: Priority can't be blank")
        if not article.get("body"):
            return _error(422, "Need at least an 'article body'")
        ticket_id, self._next_id = self._next_id, self._next_id + 1
        self.tickets[ticket_id] = {  # the ticket, its tags and its article: one transaction
            "id": ticket_id,
            "number": str(31000 + ticket_id),
            "title": data.get("title"),
            "group": data["group"],
            "customer": data["customer"],
            "priority_id": data["priority_id"],
            "state": data.get("state") or "new",
            "owner_id": data.get("owner_id") or NOBODY,
            "tags": [t.strip() for t in (data.get("tags") or "").split(",") if t.strip()],
            "articles": [_article(article)],
            "links": [(kind, other) for kind, others in
                      ((data.get("links") or {}).get("Ticket") or {}).items()
                      for other in others if other in self.tickets],
            "created": time.monotonic(),
        }
        if self.stall_creates:
            self.stall_creates -= 1
            await self.released.wait()  # made; the client gives up before it hears
        return web.json_response(self._attributes(ticket_id), status=201)

    async def _search(self, request: web.Request) -> web.Response:
        query = request.query.get("query")
        condition = {k: v for k, v in request.query.items() if k.startswith("condition[")}
        if query:  # Elasticsearch: what it indexed, some time after the commit
            now = time.monotonic()
            wanted = query.removeprefix("tags:").strip('"')
            found = [i for i, t in self.tickets.items()
                     if now - t["created"] >= self.index_lag and wanted in t["tags"]]
        elif condition:  # the database: selector2sql on the ticket's tags
            if condition.get("condition[ticket.tags][operator]") != "contains all":
                return _error(422, "Invalid condition")
            wanted = condition.get("condition[ticket.tags][value]", "")
            found = [i for i, t in self.tickets.items() if wanted in t["tags"]]
        else:
            found = list(self.tickets)
        found.sort(reverse=request.query.get("order_by") == "desc")
        found = found[: int(request.query.get("limit", "50"))]
        if request.query.get("expand") == "true":
            return web.json_response([self._expanded(i) for i in found])
        return web.json_response({"tickets": found, "tickets_count": len(found), "assets": {
            "Ticket": {str(i): self._attributes(i) for i in found}}})

    async def _show(self, request: web.Request) -> web.Response:
        ticket_id = int(request.match_info["id"])
        if ticket_id not in self.tickets:
            return _not_found(ticket_id)
        if request.query.get("expand") == "true":
            return web.json_response(self._expanded(ticket_id))
        return web.json_response(self._attributes(ticket_id))

    async def _update(self, request: web.Request) -> web.Response:
        ticket_id = int(request.match_info["id"])
        ticket = self.tickets.get(ticket_id)
        if ticket is None:
            return _not_found(ticket_id)
        data = await request.json()
        state = data.get("state", ticket["state"])
        if state not in STATES:
            return _no_lookup("state", state)
        if ticket["state"] == "merged" and state != "merged":
            return _error(422, "A merged ticket cannot be reopened: its articles went to the "
                               "ticket it was merged into")
        ticket["state"] = state
        if data.get("article"):
            ticket["articles"].append(_article(data["article"]))
        return web.json_response(self._attributes(ticket_id))

    async def _article(self, request: web.Request) -> web.Response:
        data = await request.json()
        ticket = self.tickets.get(data.get("ticket_id"))
        if ticket is None:
            return _not_found(data.get("ticket_id"))
        ticket["articles"].append(_article(data))
        return web.json_response({"id": len(ticket["articles"]), "ticket_id": ticket["id"],
                                  **_article(data)}, status=201)

    async def _tags(self, request: web.Request) -> web.Response:
        ticket = self.tickets.get(int(request.query.get("o_id", "0") or 0))
        if request.query.get("object") != "Ticket" or ticket is None:
            return _error(404, "Couldn't find Ticket")
        return web.json_response({"tags": ticket["tags"]})

    def _attributes(self, ticket_id: int) -> dict[str, Any]:
        ticket = self.tickets[ticket_id]
        return {"id": ticket_id, "number": ticket["number"], "title": ticket["title"],
                "group_id": GROUPS.index(ticket["group"]) + 1,
                "priority_id": ticket["priority_id"],
                "state_id": STATES.index(ticket["state"]) + 1,
                "owner_id": ticket["owner_id"], "customer_id": 2,
                "article_count": len(ticket["articles"])}

    def _expanded(self, ticket_id: int) -> dict[str, Any]:
        ticket = self.tickets[ticket_id]
        return {**self._attributes(ticket_id), "group": ticket["group"],
                "state": ticket["state"], "priority": PRIORITIES[ticket["priority_id"]],
                "owner": "-" if ticket["owner_id"] == NOBODY else f"agent{ticket['owner_id']}",
                "customer": ticket["customer"]}


def _article(data: dict[str, Any]) -> dict[str, Any]:
    return {"body": data.get("body"), "internal": bool(data.get("internal")),
            "type": data.get("type", "note"), "content_type": data.get("content_type")}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "error_human": message}, status=status)


def _no_lookup(name: str, value: object) -> web.Response:
    return _error(422, f"No lookup value found for '{name}': {json.dumps(value)}")  # Ruby's inspect


def _not_found(ticket_id: object) -> web.Response:
    return _error(404, f"Couldn't find Ticket with 'id'={ticket_id}")


@contextlib.asynccontextmanager
async def serve() -> AsyncIterator[FakeZammad]:
    fake = FakeZammad()
    async with serve_app(fake.app()) as port:
        fake.port = port
        try:
            yield fake
        finally:
            fake.released.set()
