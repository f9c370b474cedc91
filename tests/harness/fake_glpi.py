"""A GLPI on loopback for the tests: the legacy REST API (`/apirest.php`) as GLPI documents it,
only what the glpi backend uses — sessions, tickets, their technicians, followups and solutions
— kept in plain dicts so that a test asserts what the helpdesk holds.

It keeps GLPI's traps: every call needs a session from initSession (user_token) and the
App-Token the API client is set up with; a session can expire or be killed at any time (401
ERROR_SESSION_TOKEN_INVALID); errors are a JSON list ["ERROR_...", "message"]; input fields it
does not know are dropped without a word (with `knows_externalid` off, as GLPI 10.0 has no
ticket externalid); searchText is a LIKE, not an equality (on every field, the name
included: "_" and "%" are wildcards, and case is ignored as GLPI's collation ignores it);
assigning a group or a technician moves a new ticket to "processing (assigned)" by itself; a
solved or closed ticket takes no followup and no second solution until it is reopened, and a
closed one is read-only. `fail` plants a failure, a stall or an HTML error page for the next
matching request.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from tests.harness.fakes import Fault, Faults
from tests.harness.httpserver import serve_app

USER_TOKEN = "glpi-user-token-0123456789abcdef"
APP_TOKEN = "glpi-app-token-fedcba9876543210"
API = "/apirest.php"
TICKET_FIELDS = {"name", "content", "type", "urgency", "impact", "priority", "status",
                 "entities_id", "itilcategories_id", "externalid"}
NEW, ASSIGNED, SOLVED, CLOSED = 1, 2, 5, 6
TECHNICIAN = 2
HTML_PAGE = ("<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><center>"
             "<h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeGlpi:
    def __init__(self) -> None:
        self.url = ""  # GLPI's base: the API is at url + /apirest.php
        self.app_token: str | None = APP_TOKEN  # None: the API client asks for none
        self.knows_externalid = True  # False: GLPI 10.0, which drops it
        self.close_on_solve = False  # an entity that closes solved tickets at once
        self.sessions: set[str] = set()
        self.logins = 0  # initSession calls that opened a session
        self.killed: list[str] = []
        self.tickets: dict[int, dict[str, Any]] = {}
        self.technicians: dict[int, list[int]] = {}  # ticket id -> users assigned (type 2)
        self.groups: dict[int, list[int]] = {}  # ticket id -> groups assigned
        self.timeline: dict[int, list[dict[str, Any]]] = {}  # followups and solutions, in order
        self.faults = Faults()
        self.seen: list[tuple[str, str, int]] = []
        self._ids = 100

    # --- what a test does to the helpdesk ------------------------------------------------------

    def only(self) -> dict[str, Any]:
        (ticket,) = self.tickets.values()
        return ticket

    def fail(self, method: str | None, path: str, status: int = 503, **kwargs: Any) -> None:
        """The next requests of `method` to a path `path` (a regular expression, after
        /apirest.php) matches answer `status`, or stall: see fakes.Fault. A body that starts
        with "<" is sent as an HTML page."""
        self.faults.add(Fault(method, API + path, status, **kwargs))

    def expire_sessions(self) -> None:
        """GLPI's session lifetime ran out (or an admin killed them): every token is invalid."""
        self.sessions.clear()

    def assign(self, ticket_id: int, user_id: int = 7) -> None:
        """A technician takes the ticket, as GLPI's form does it."""
        self.technicians.setdefault(ticket_id, []).append(user_id)
        if self.tickets[ticket_id]["status"] == NEW:
            self.tickets[ticket_id]["status"] = ASSIGNED

    def set_status(self, ticket_id: int, status: int) -> None:
        """A human solves (5) or closes (6) the ticket, or moves it on."""
        self.tickets[ticket_id]["status"] = status

    def notes(self, ticket_id: int) -> list[tuple[str, str]]:
        """The ticket's timeline as a technician reads it: (kind, text)."""
        return [(entry["kind"], shown(entry["content"])) for entry in self.timeline[ticket_id]]

    # --- the API -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.router.add_get(f"{API}/initSession", self.init_session)
        app.router.add_get(f"{API}/killSession", self.kill_session)
        app.router.add_get(f"{API}/Ticket", self.list_tickets)
        app.router.add_post(f"{API}/Ticket", self.create_ticket)
        app.router.add_get(f"{API}/Ticket/{{id}}", self.get_ticket)
        app.router.add_put(f"{API}/Ticket/{{id}}", self.update_ticket)
        app.router.add_get(f"{API}/Ticket/{{id}}/Ticket_User", self.ticket_users)
        app.router.add_post(f"{API}/ITILFollowup", self.add_followup)
        app.router.add_post(f"{API}/ITILSolution", self.add_solution)
        return app

    @web.middleware
    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = self.faults.take(request)
        if fault is not None and not fault.stall:
            self.seen.append((request.method, request.path, fault.status))
            if isinstance(fault.body, str) and fault.body.startswith("<"):
                return web.Response(status=fault.status, text=fault.body,
                                    content_type="text/html", headers=fault.headers)
            return fault.response()
        response = self._refusal(request) or await handler(request)
        self.seen.append((request.method, request.path, response.status))
        if fault is not None:
            await asyncio.sleep(fault.stall)  # done, but the client hears nothing in time
        return response

    def _refusal(self, request: web.Request) -> web.Response | None:
        """What GLPI answers before it looks at the call: the App-Token, then the session."""
        if self.app_token is not None:
            given = request.headers.get("App-Token")
            if given is None:
                return error(400, "ERROR_APP_TOKEN_PARAMETERS_MISSING",
                             "parameter app_token is missing or empty")
            if given != self.app_token:
                return error(400, "ERROR_WRONG_APP_TOKEN_PARAMETER",
                             "parameter app_token seems wrong")
        if request.path == f"{API}/initSession":
            return None
        token = request.headers.get("Session-Token")
        if not token:
            return error(400, "ERROR_SESSION_TOKEN_MISSING",
                         "parameter session_token is missing or empty")
        if token not in self.sessions:
            return error(401, "ERROR_SESSION_TOKEN_INVALID", "session_token seems invalid")
        return None

    async def init_session(self, request: web.Request) -> web.Response:
        authorization = request.headers.get("Authorization", "")
        if not authorization:
            return error(400, "ERROR_LOGIN_PARAMETERS_MISSING",
                         "parameter(s) login, password or user_token are missing")
        if authorization != f"user_token {USER_TOKEN}":
            return error(401, "ERROR_GLPI_LOGIN_USER_TOKEN", "parameter user_token seems invalid")
        token = uuid.uuid4().hex
        self.sessions.add(token)
        self.logins += 1
        return web.json_response({"session_token": token})

    async def kill_session(self, request: web.Request) -> web.Response:
        token = request.headers["Session-Token"]
        self.sessions.discard(token)
        self.killed.append(token)
        return web.json_response(True)

    async def list_tickets(self, request: web.Request) -> web.Response:
        rows = [t for t in self.tickets.values()
                if request.query.get("is_deleted") == "true" or not t["is_deleted"]]
        for name, value in request.query.items():
            found = re.fullmatch(r"searchText\[(\w+)\]", name)
            if found and value:
                pattern = like(value)
                rows = [t for t in rows if pattern.fullmatch(str(t.get(found[1]) or ""))]
        start, end = (int(n) for n in request.query.get("range", "0-50").split("-"))
        return web.json_response(rows[start:end + 1])

    async def get_ticket(self, request: web.Request) -> web.Response:
        ticket = self.tickets.get(_id(request))
        if ticket is None:
            return error(404, "ERROR_ITEM_NOT_FOUND", "Item not found")
        return web.json_response(ticket)

    async def create_ticket(self, request: web.Request) -> web.Response:
        given = (await request.json())["input"]
        self._ids += 1
        known = TICKET_FIELDS - (set() if self.knows_externalid else {"externalid"})
        ticket: dict[str, Any] = {
            "id": self._ids, "name": "", "content": "", "type": 1, "status": NEW,
            "urgency": 3, "impact": 3, "entities_id": 0, "itilcategories_id": 0,
            "is_deleted": 0, "date_creation": "2026-12-04 10:00:00",
            **({"externalid": None} if self.knows_externalid else {}),
            **{k: v for k, v in given.items() if k in known},  # the others: dropped, silently
        }
        ticket["priority"] = priority(ticket["urgency"], ticket["impact"])
        self.tickets[ticket["id"]] = ticket
        self.timeline[ticket["id"]] = []
        if given.get("_groups_id_assign"):
            self.groups[ticket["id"]] = [given["_groups_id_assign"]]
            ticket["status"] = ASSIGNED  # GLPI's own rule: an assigned ticket is processing
        return web.json_response({"id": ticket["id"], "message": ""}, status=201,
                                 headers={"Location": f"{self.url}{API}/Ticket/{ticket['id']}"})

    async def update_ticket(self, request: web.Request) -> web.Response:
        ticket_id = _id(request)
        ticket = self.tickets.get(ticket_id)
        if ticket is None:
            return error(400, "ERROR_GLPI_UPDATE", "Item not found")
        if ticket["status"] == CLOSED:
            return error(400, "ERROR_GLPI_UPDATE",
                         "You don't have permission to perform this action.")
        given = {k: v for k, v in (await request.json())["input"].items() if k in TICKET_FIELDS}
        ticket.update(given)
        if ticket["status"] == NEW and (self.technicians.get(ticket_id)
                                        or self.groups.get(ticket_id)):
            ticket["status"] = ASSIGNED
        return web.json_response([{str(ticket_id): True, "message": ""}])

    async def ticket_users(self, request: web.Request) -> web.Response:
        ticket_id = _id(request)
        if ticket_id not in self.tickets:
            return error(404, "ERROR_ITEM_NOT_FOUND", "Item not found")
        return web.json_response([
            {"id": 1000 + n, "tickets_id": ticket_id, "users_id": user, "type": TECHNICIAN,
             "use_notification": 1, "alternative_email": ""}
            for n, user in enumerate(self.technicians.get(ticket_id, []))])

    async def add_followup(self, request: web.Request) -> web.Response:
        return await self._add_to_ticket(request, "followup")

    async def add_solution(self, request: web.Request) -> web.Response:
        return await self._add_to_ticket(request, "solution")

    async def _add_to_ticket(self, request: web.Request, kind: str) -> web.Response:
        given = (await request.json())["input"]
        ticket = self.tickets.get(int(given.get("items_id", 0)))
        if given.get("itemtype") != "Ticket" or ticket is None or ticket["is_deleted"]:
            return error(400, "ERROR_GLPI_ADD", "You don't have permission to perform this "
                                                "action.")
        if ticket["status"] in (SOLVED, CLOSED):  # reopen it first
            return error(400, "ERROR_GLPI_ADD", "You don't have permission to perform this "
                                                "action.")
        if not given.get("content"):
            return error(400, "ERROR_GLPI_ADD", "Description is mandatory")
        entry_kind = kind if kind == "solution" else (
            "private followup" if given.get("is_private") else "public followup")
        self.timeline[ticket["id"]].append({"kind": entry_kind, "content": given["content"]})
        if kind == "solution":
            ticket["status"] = CLOSED if self.close_on_solve else SOLVED
        self._ids += 1
        return web.json_response({"id": self._ids, "message": ""}, status=201)


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response([code, message], status=status)


def like(value: str) -> re.Pattern[str]:
    """GLPI's searchText: a LIKE '%value%', "^" and "$" anchoring it; "%" and "_" are
    wildcards, and case is ignored (GLPI's tables use a case-insensitive collation)."""
    start, end = value.startswith("^"), value.endswith("$")
    value = value[1 if start else 0: -1 if end else None]
    body = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in value)
    return re.compile(("" if start else ".*") + body + ("" if end else ".*"),
                      re.DOTALL | re.IGNORECASE)


def priority(urgency: int, impact: int) -> int:
    """GLPI's default priority matrix, near enough: the rounded mean, 6 (major) at the top."""
    if urgency == 5 and impact == 5:
        return 6
    return max(1, min(5, round((urgency + impact) / 2)))


def shown(content: str) -> str:
    """What a technician reads of a rich text field probe wrote: escaped text in <pre>."""
    assert content.startswith("<pre>") and content.endswith("</pre>"), content
    return html.unescape(content[len("<pre>"):-len("</pre>")])


def _id(request: web.Request) -> int:
    value = request.match_info["id"]
    return int(value) if value.isdigit() else -1


@contextlib.asynccontextmanager
async def serve_glpi() -> AsyncIterator[FakeGlpi]:
    glpi = FakeGlpi()
    async with serve_app(glpi.app()) as port:
        glpi.url = f"http://127.0.0.1:{port}"
        yield glpi
