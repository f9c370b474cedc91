"""A ServiceNow instance on loopback for the tests: the Table API as ServiceNow documents it
(`/api/now/table/<table>`, records wrapped in {"result": ...}, errors as {"error": {message,
detail}, "status": "failure"}), incidents, groups and users kept in memory so that a test
asserts what the helpdesk holds.

It keeps ServiceNow's traps: a query condition on a field the table does not have (or that
`hidden` keeps from this user) is dropped, so the query matches every row; reference fields
store whatever string they are given; strings longer than the field are cut; closed and
canceled incidents are read-only; resolving needs close_code and close_notes, and this
instance's business rule refuses resolution codes it does not know. `faults` lets a test make
it fail, stall or rate-limit on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from tests.harness.fakes import Fault, Faults, basic
from tests.harness.httpserver import serve_app

USERNAME, PASSWORD = "probe", "snow-password"
INCIDENT_FIELDS = {
    "sys_id", "number", "short_description", "description", "urgency", "impact", "priority",
    "state", "assigned_to", "assignment_group", "caller_id", "correlation_id",
    "correlation_display", "close_code", "close_notes", "sys_created_on", "work_notes",
    "comments",
}
REFERENCES = {"assigned_to", "assignment_group", "caller_id"}
MAX_LENGTH = {"short_description": 160, "correlation_id": 100, "description": 4000}
CLOSE_CODES = ["Solved (Work Around)", "Solved (Permanently)", "Solved Remotely (Work Around)",
               "Solved Remotely (Permanently)", "Not Solved (Not Reproducible)",
               "Not Solved (Too Costly)", "Closed/Resolved by Caller"]
# ServiceNow's default priority lookup: (urgency, impact) -> priority
PRIORITY = {("1", "1"): "1", ("1", "2"): "2", ("2", "1"): "2", ("1", "3"): "3", ("2", "2"): "3",
            ("3", "1"): "3", ("2", "3"): "4", ("3", "2"): "4", ("3", "3"): "5"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeServiceNow:
    def __init__(self) -> None:
        self.url = ""
        self.tables: dict[str, dict[str, dict[str, str]]] = {
            "incident": {},
            "sys_user_group": {_id(): {"name": "Network Operations"},
                               _id(): {"name": "Service Desk"}},
            "sys_user": {_id(): {"user_name": "probe", "name": "probe monitoring"},
                         _id(): {"user_name": "alice", "name": "Alice Agent"}},
        }
        for rows in self.tables.values():
            for sys_id, row in rows.items():
                row["sys_id"] = sys_id
                row.setdefault("sys_created_on", "2026-01-01 00:00:00")
        self.hidden: set[str] = set()  # fields this user may not query on
        self.journal: dict[str, list[tuple[str, str]]] = {}  # sys_id -> (field, text)
        self.faults = Faults()
        self.seen: list[tuple[str, str, int]] = []
        self._numbers = 10000
        self._clock = 0

    # --- what a test does to the helpdesk ------------------------------------------------------

    @property
    def incidents(self) -> dict[str, dict[str, str]]:
        return self.tables["incident"]

    def only(self) -> dict[str, str]:
        (incident,) = self.incidents.values()
        return incident

    def sys_id(self, table: str, field_name: str, value: str) -> str:
        return next(s for s, row in self.tables[table].items() if row.get(field_name) == value)

    def fail(self, method: str, path: str, status: int = 503, **kwargs: Any) -> None:
        """The next requests of `method` to a path `path` (a regular expression) matches
        answer `status`, or stall: see fakes.Fault."""
        self.faults.add(Fault(method, path, status, **kwargs))

    def add_incident(self, **values: str) -> str:
        """An incident someone else opened."""
        return self._insert({"short_description": "someone else's incident", **values})

    # --- the API -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._faults])
        app.router.add_get("/api/now/table/{table}", self.query)
        app.router.add_post("/api/now/table/{table}", self.create)
        app.router.add_get("/api/now/table/{table}/{sys_id}", self.get)
        app.router.add_patch("/api/now/table/{table}/{sys_id}", self.update)
        return app

    @web.middleware
    async def _faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = self.faults.take(request)
        if fault is not None and not fault.stall:
            self.seen.append((request.method, request.path, fault.status))
            return fault.response()
        if request.headers.get("Authorization") != basic(USERNAME, PASSWORD):
            self.seen.append((request.method, request.path, 401))
            return _error(401, "User Not Authenticated", "Required to provide Auth information")
        response = await handler(request)
        self.seen.append((request.method, request.path, response.status))
        if fault is not None:
            await asyncio.sleep(fault.stall)  # done, but the client hears nothing in time
        return response

    def _table(self, request: web.Request) -> dict[str, dict[str, str]] | None:
        return self.tables.get(request.match_info["table"])

    async def query(self, request: web.Request) -> web.Response:
        table = self._table(request)
        if table is None:
            return _error(400, "Invalid table", f"Invalid table {request.match_info['table']}")
        rows = list(table.values())
        known = INCIDENT_FIELDS if request.match_info["table"] == "incident" else {
            name for row in rows for name in row}
        for part in request.query.get("sysparm_query", "").split("^"):
            if part.startswith("ORDERBY"):
                descending = part.startswith("ORDERBYDESC")
                order = part.removeprefix("ORDERBYDESC" if descending else "ORDERBY")
                rows.sort(key=lambda r: r.get(order, ""), reverse=descending)
            elif "=" in part:
                name, value = part.split("=", 1)
                if name in known and name not in self.hidden:  # else: dropped, as ServiceNow
                    rows = [r for r in rows if r.get(name) == value]
        rows = rows[: int(request.query.get("sysparm_limit", "10000"))]
        return web.json_response({"result": [self._shown(r, request) for r in rows]})

    async def get(self, request: web.Request) -> web.Response:
        row = (self._table(request) or {}).get(request.match_info["sys_id"])
        if row is None:
            return _error(404, "No Record found",
                          "Record doesn't exist or ACL restricts the record retrieval")
        return web.json_response({"result": self._shown(row, request)})

    async def create(self, request: web.Request) -> web.Response:
        if request.match_info["table"] != "incident":
            return _error(403, "Operation Failed", "ACL Exception Insert Failed due to "
                                                   "security constraints")
        body = await request.json()
        sys_id = self._insert({k: str(v) for k, v in body.items() if k in INCIDENT_FIELDS})
        return web.json_response({"result": self._shown(self.incidents[sys_id], request)},
                                 status=201)

    async def update(self, request: web.Request) -> web.Response:
        row = (self._table(request) or {}).get(request.match_info["sys_id"])
        if row is None:
            return _error(404, "No Record found",
                          "Record doesn't exist or ACL restricts the record retrieval")
        if row.get("state") in ("7", "8"):
            return _error(403, "Operation Failed",
                          "ACL Exception Update Failed due to security constraints")
        body = {k: str(v) for k, v in (await request.json()).items() if k in INCIDENT_FIELDS}
        if body.get("state") == "6":
            merged = {**row, **body}
            if not merged.get("close_code") or not merged.get("close_notes"):
                return _error(403, "Operation Failed",
                              "Data Policy Exception: \n Resolution code, Resolution notes")
            if merged["close_code"] not in CLOSE_CODES:
                return _error(403, "Operation Failed",
                              f"Invalid resolution code: {merged['close_code']}")
        for journal_field in ("work_notes", "comments"):
            if body.get(journal_field):
                self.journal[row["sys_id"]].append((journal_field, body.pop(journal_field)))
        row.update(_cut(body))
        return web.json_response({"result": self._shown(row, request)})

    def _insert(self, values: dict[str, str]) -> str:
        sys_id = _id()
        self._numbers += 1
        self._clock += 1
        journal = [(f, values.pop(f)) for f in ("work_notes", "comments") if values.get(f)]
        row = {
            "sys_id": sys_id,
            "number": f"INC{self._numbers:07d}",
            "state": "1",
            "assigned_to": "",
            "assignment_group": "",
            "caller_id": "",
            "urgency": "3",
            "impact": "3",
            "close_code": "",
            "close_notes": "",
            "correlation_id": "",
            "correlation_display": "",
            "sys_created_on": f"2026-05-01 00:{self._clock // 60:02d}:{self._clock % 60:02d}",
            **_cut(values),
        }
        row["priority"] = PRIORITY.get((row["urgency"], row["impact"]), "5")
        self.tables["incident"][sys_id] = row
        self.journal[sys_id] = journal
        return sys_id

    def _shown(self, row: dict[str, str], request: web.Request) -> dict[str, Any]:
        wanted = [f for f in request.query.get("sysparm_fields", "").split(",") if f]
        plain = request.query.get("sysparm_exclude_reference_link") == "true"
        shown: dict[str, Any] = {}
        for name in wanted or list(row):
            if name not in row:
                continue  # an unknown field in sysparm_fields is left out, silently
            value = row[name]
            if name in REFERENCES and value and not plain:
                shown[name] = {"link": f"{self.url}/api/now/table/x/{value}", "value": value}
            else:
                shown[name] = value
        return shown


def _id() -> str:
    return uuid.uuid4().hex


def _cut(values: dict[str, str]) -> dict[str, str]:
    return {k: v[: MAX_LENGTH[k]] if k in MAX_LENGTH else v for k, v in values.items()}


def _error(status: int, message: str, detail: str) -> web.Response:
    return web.json_response({"error": {"message": message, "detail": detail},
                              "status": "failure"}, status=status)


@contextlib.asynccontextmanager
async def serve_servicenow() -> AsyncIterator[FakeServiceNow]:
    snow = FakeServiceNow()
    async with serve_app(snow.app()) as port:
        snow.url = f"http://127.0.0.1:{port}"
        yield snow
