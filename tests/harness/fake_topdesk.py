"""A TOPdesk on loopback for the tests: the incidents API as TOPdesk documents it
(`/tas/api/incidents`, basic auth with an operator's application password, errors as a JSON list
of {"message"}), its incidents and their action history kept in plain dicts so that a test
asserts what the helpdesk holds.

It keeps TOPdesk's traps: the list's FIQL `externalNumber=='...'` ignores case and takes `*` as
a wildcard, and the list answers 204 without a body when nothing matches; briefDescription (80)
and externalNumber (60) longer than the field are refused; HTML tags other than the few TOPdesk
allows are dropped from request and action texts; an action is visible to the caller unless
`actionInvisibleForCaller` says otherwise; a closed incident refuses every change but the one
that reopens it (closed: false, or a processing status that does not close); an archived one
refuses every change; an incident assigned to an operator group only has the group in its
operator field. `faults` lets a test make it fail, stall or rate-limit on purpose; `page`
makes every answer an HTML page (a maintenance page, a login page).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from tests.harness.fakes import Fault, Faults
from tests.harness.httpserver import serve_app

USERNAME, PASSWORD = "probe-api", "topdesk-application-password-0123456789"
API = "/tas/api/incidents"
PRIORITIES = ("P1", "P2", "P3", "P4")
CALL_TYPES = ("Incident", "Malfunction", "Request")
# processing status -> (completed, closed)
PROCESSING = {"Logged": (False, False), "In progress": (False, False),
              "Waiting for user": (False, False), "Completed": (True, False),
              "Closed": (True, True)}
ALLOWED_TAGS = {"b", "i", "u", "em", "strong", "br", "h5", "h6", "a", "img"}
MAX_LENGTH = {"briefDescription": 80, "externalNumber": 60}
MAINTENANCE = ("<!DOCTYPE html><html><head><title>TOPdesk - Maintenance</title></head><body>"
               "<h1>TOPdesk is being updated</h1><p>Please try again in a few minutes.</p>"
               "</body></html>")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeTopdesk:
    def __init__(self) -> None:
        self.url = ""
        self.incidents: dict[str, dict[str, Any]] = {}  # id -> the incident, as TOPdesk's API
        self.actions: dict[str, list[tuple[bool, str]]] = {}  # id -> (invisible, stored html)
        self.operators = {"alice": _id(), USERNAME: _id()}  # login name -> id
        self.groups = {"Network": _id(), "Service Desk": _id()}  # name -> id
        self.faults = Faults()
        self.page: tuple[int, str] | None = None  # every answer this HTML page, with its status
        self.seen: list[tuple[str, str, int]] = []
        self._numbers = 0

    # --- what a test does to the helpdesk ------------------------------------------------------

    def only(self) -> dict[str, Any]:
        (incident,) = self.incidents.values()
        return incident

    def fail(self, method: str, path: str, status: int = 503, **kwargs: Any) -> None:
        """The next requests of `method` to a path `path` (a regular expression) matches
        answer `status`, or stall: see fakes.Fault."""
        self.faults.add(Fault(method, path, status, **kwargs))

    def add_incident(self, **values: Any) -> str:
        """An incident someone else opened."""
        return self._insert({"briefDescription": "someone else's incident", **values})

    def take(self, ref: str, login: str = "alice") -> None:
        """An operator takes the incident."""
        self.incidents[ref]["operator"] = {"id": self.operators[login], "name": login}

    def set_status(self, ref: str, name: str) -> None:
        """A person sets the processing status, as the operator's screen does."""
        incident = self.incidents[ref]
        completed, closed = PROCESSING[name]
        incident.update(processingStatus={"id": name, "name": name}, completed=completed,
                        closed=closed)

    def archive(self, ref: str) -> None:
        incident = self.incidents[ref]
        incident["status"] = incident["status"] + "Archived"
        incident["archivingReason"] = {"id": _id(), "name": "No longer needed"}

    def shown(self, ref: str) -> list[tuple[str, str]]:
        """The action history as an operator reads it: (who sees it, text), oldest first."""
        return [("invisible action" if invisible else "visible action", shown(text))
                for invisible, text in self.actions[ref]]

    # --- the API -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._edge])
        app.router.add_get(API, self.query)
        app.router.add_post(API, self.create)
        app.router.add_get(API + "/id/{id}", self.get)
        app.router.add_patch(API + "/id/{id}", self.update)
        return app

    @web.middleware
    async def _edge(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.page is not None:
            self.seen.append((request.method, request.path, self.page[0]))
            return web.Response(status=self.page[0], text=self.page[1], content_type="text/html")
        fault = self.faults.take(request)
        if fault is not None and not fault.stall:
            self.seen.append((request.method, request.path, fault.status))
            return fault.response()
        expected = "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            self.seen.append((request.method, request.path, 401))
            return _error(401, "Invalid credentials")
        response = await handler(request)
        self.seen.append((request.method, request.path, response.status))
        if fault is not None:
            await asyncio.sleep(fault.stall)  # done, but the client hears nothing in time
        return response

    async def query(self, request: web.Request) -> web.StreamResponse:
        rows = [i for i in self.incidents.values() if not i["status"].endswith("Archived")]
        query = request.query.get("query", "")
        if query:
            match = re.fullmatch(r"externalNumber==(?:'((?:[^'\\]|\\.)*)'|([^;,'\"()]+))", query)
            if match is None:
                return _error(400, f"Invalid query: {query}")
            value = re.sub(r"\\(.)", r"\1", match[1]) if match[1] is not None else match[2]
            # As TOPdesk's database compares: case ignored, * any run of characters.
            pattern = re.compile(".*".join(re.escape(p) for p in value.split("*")),
                                 re.IGNORECASE | re.DOTALL)
            rows = [i for i in rows if pattern.fullmatch(i["externalNumber"])]
        sort = request.query.get("sort", "")
        if sort.startswith("creationDate"):
            rows.sort(key=lambda i: i["creationDate"], reverse=sort.endswith(":desc"))
        size = int(request.query.get("pageSize", "10"))
        if not rows:
            return web.Response(status=204)
        wanted = [f for f in request.query.get("fields", "").split(",") if f]
        shown = [{k: v for k, v in i.items() if not wanted or k in wanted} for i in rows[:size]]
        return web.json_response(shown, status=206 if len(rows) > size else 200)

    async def get(self, request: web.Request) -> web.Response:
        incident = self.incidents.get(request.match_info["id"])
        if incident is None:
            return _error(404, f"No incident found with id {request.match_info['id']}")
        return web.json_response(incident)

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        caller = body.get("caller") or {}
        if not caller.get("dynamicName") and not (body.get("callerLookup") or {}).get("id"):
            return _error(400, "An operator must specify a caller")
        try:
            incident = self._fields(body)
        except ValueError as err:
            return _error(400, str(err))
        ref = self._insert(incident)
        action = body.get("action")
        if action:
            self.actions[ref].append((body.get("actionInvisibleForCaller") is True,
                                      _allowed(action)))
        return web.json_response(self.incidents[ref], status=201)

    async def update(self, request: web.Request) -> web.Response:
        incident = self.incidents.get(request.match_info["id"])
        if incident is None:
            return _error(404, f"No incident found with id {request.match_info['id']}")
        if incident["status"].endswith("Archived"):
            return _error(400, "The incident is archived and cannot be changed")
        body = await request.json()
        status = (body.get("processingStatus") or {}).get("name")
        if status is not None and status not in PROCESSING:
            return _error(400, f"Processing status '{status}' not found")
        reopens = body.get("closed") is False or (status is not None and not PROCESSING[status][1])
        if incident["closed"] and not reopens:
            return _error(400, "The incident is closed and cannot be changed")
        try:
            changed = self._fields(body)
        except ValueError as err:
            return _error(400, str(err))
        incident.update(changed)
        if status is not None:
            self.set_status(incident["id"], status)
        elif body.get("closed") is True:
            self.set_status(incident["id"], "Closed")
        elif body.get("closed") is False or body.get("completed") is False:
            self.set_status(incident["id"], "Logged")
        elif body.get("completed") is True:
            self.set_status(incident["id"], "Completed")
        if body.get("action"):
            self.actions[incident["id"]].append(
                (body.get("actionInvisibleForCaller") is True, _allowed(body["action"])))
        return web.json_response(incident)

    def _fields(self, body: dict[str, Any]) -> dict[str, Any]:
        """The fields of a create or a change, as TOPdesk stores them; ValueError: refused."""
        values: dict[str, Any] = {}
        for name in ("briefDescription", "externalNumber"):
            if name in body:
                if len(body[name]) > MAX_LENGTH[name]:
                    raise ValueError(f"The value for field '{name}' is too long "
                                     f"(maximum {MAX_LENGTH[name]} characters)")
                values[name] = body[name]
        if "request" in body:
            values["request"] = _allowed(body["request"])
        if "caller" in body:
            values["caller"] = {"id": None, "dynamicName": body["caller"].get("dynamicName")}
        for name, known in (("priority", PRIORITIES), ("callType", CALL_TYPES)):
            if name in body:
                value = body[name].get("name")
                if value not in known:
                    raise ValueError(f"No {name} found with name '{value}'")
                values[name] = {"id": value, "name": value}
        if "operatorGroup" in body:
            values["operatorGroup"] = self._lookup(body["operatorGroup"], self.groups,
                                                   "operatorGroup")
        if "operator" in body:
            values["operator"] = self._lookup(body["operator"], self.operators, "operator")
        return values

    def _lookup(self, given: dict[str, str], known: dict[str, str], field: str) -> dict[str, str]:
        for name, ident in known.items():
            if given.get("id") == ident or given.get("name") == name:
                return {"id": ident, "name": name}
        raise ValueError(f"No {field} found for {given}")

    def _insert(self, values: dict[str, Any]) -> str:
        ref = _id()
        self._numbers += 1
        group = values.get("operatorGroup")
        incident: dict[str, Any] = {
            "id": ref,
            "number": f"I 2412 {self._numbers:03d}",
            "status": "secondLine" if group else "firstLine",
            "briefDescription": "",
            "request": "",
            "externalNumber": "",
            "caller": {"id": None, "dynamicName": "someone"},
            "callType": None,
            "priority": None,
            "operatorGroup": None,
            # assigned to a group only, the group stands in the operator field
            "operator": dict(group) if group else None,
            "processingStatus": {"id": "Logged", "name": "Logged"},
            "completed": False,
            "closed": False,
            "archivingReason": None,
            "creationDate": f"2026-12-04T10:{self._numbers // 60:02d}:{self._numbers % 60:02d}"
                            ".000+0000",
            **values,
        }
        self.incidents[ref] = incident
        self.actions[ref] = []
        return ref


def shown(text: str) -> str:
    """What an operator reads of a text stored as TOPdesk's HTML."""
    return html.unescape(re.sub(r"<br\s*/?>", "\n", text))


def _allowed(text: str) -> str:
    """The text as TOPdesk keeps it: tags other than the few it takes are dropped."""
    def keep(tag: re.Match[str]) -> str:
        return tag[0] if tag[1].lower() in ALLOWED_TAGS else ""
    return re.sub(r"</?([A-Za-z][A-Za-z0-9]*)[^>]*>", keep, text)


def _id() -> str:
    return str(uuid.uuid4())


def _error(status: int, message: str) -> web.Response:
    return web.json_response([{"message": message}], status=status)


@contextlib.asynccontextmanager
async def serve() -> AsyncIterator[FakeTopdesk]:
    topdesk = FakeTopdesk()
    async with serve_app(topdesk.app()) as port:
        topdesk.url = f"http://127.0.0.1:{port}"
        yield topdesk
