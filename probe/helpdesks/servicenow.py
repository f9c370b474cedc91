"""The servicenow backend: ServiceNow incidents, through the Table API (`/api/now/table`).

ServiceNow facts it relies on:
- Basic auth with a user that has the itil role (create, read and update incidents; read
  groups and users). Every answer wraps the record, or the list of records, in {"result": ...};
  errors are {"error": {"message", "detail"}, "status": "failure"}.
- POST /incident takes short_description (160 characters), description, urgency and impact
  ("1" high to "3" low: ServiceNow derives the priority from both), correlation_id (100
  characters: a longer key is stored as its hash) and correlation_display, assignment_group
  and caller_id. Reference fields take a sys_id: a name is stored as it is, pointing nowhere,
  so names in the route are looked up first (sys_user_group by name, sys_user by user_name).
- The Table API takes no idempotency key, and correlation_id is an ordinary field, not unique:
  an incident created twice is two incidents (only an Import Set with a coalesce field, set up
  on the instance, would merge them), so a retry of unknown outcome asks find() first.
- A query (`sysparm_query`) condition on a field ServiceNow does not know, or may not show
  this user, is dropped without a word: the query then matches EVERY row. So each row that
  comes back is checked against what was asked, and rows that do not match are ignored.
- `work_notes` are seen by the fulfillers only; `comments` go to the caller: notes are work
  notes.
- States: 1 New, 2 In Progress, 3 On Hold, 6 Resolved, 7 Closed, 8 Canceled. Resolving sets
  state 6 with close_code (one of the instance's resolution codes) and close_notes; a business
  rule or data policy that refuses answers 403 "Operation Failed", or leaves the state as it
  was. A resolved incident reopens to In Progress; a closed or canceled one is read-only and
  is never reopened.
- A 429 carries Retry-After and X-RateLimit-Reset (epoch seconds).

status(): 6, 7 and 8 are "closed"; an assigned_to or state 2 or 3 is "acknowledged"; state 1
without assigned_to is "open"; 404 is "gone".
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote

from probe.helpdesks import base
from probe.helpdesks.base import BaseUrl, PriorityMap, RouteBase, TicketError, TicketState
from probe.helpdesks.http import Authorization, Fields, Http, Response, basic
from probe.secrets import EnvRef

TABLE = "/api/now/table/incident"
SYS_ID = re.compile(r"[0-9a-f]{32}")
CORRELATION_CHARS = 100
SHORT_DESCRIPTION_CHARS = 160
DESCRIPTION_CHARS = 4000
NEW, IN_PROGRESS, ON_HOLD, RESOLVED, CLOSED, CANCELED = "1", "2", "3", "6", "7", "8"
STATES = {NEW: "New", IN_PROGRESS: "In Progress", ON_HOLD: "On Hold", RESOLVED: "Resolved",
          CLOSED: "Closed", CANCELED: "Canceled"}
FIELDS = "sys_id,number,state,assigned_to,correlation_id"


class Route(RouteBase):
    backend: Literal["servicenow"]
    url: BaseUrl
    username: str
    password: EnvRef | None = None
    password_file: Path | None = None
    assignment_group: str | None = None  # a group's name or sys_id
    caller_id: str | None = None  # a user's user_name or sys_id
    close_code: str = "Solved (Permanently)"
    urgency: PriorityMap[int] = {"urgent": 1, "high": 1, "normal": 2, "low": 3}
    impact: PriorityMap[int] = {"urgent": 1, "high": 2, "normal": 2, "low": 3}

    secrets: ClassVar[dict[str, bool]] = {"password": True}

    def link(self, ref: str) -> str | None:
        return f"{self.url}/nav_to.do?uri=incident.do%3Fsys_id%3D{quote(ref, safe='')}"


class Backend(base.Backend[Route]):
    def __init__(self, name: str, route: Route, *, database: Path | None = None) -> None:
        super().__init__(name, route, database=database)
        password = Authorization("password", lambda password: basic(route.username, password))
        self._http = Http(route, route.url, authorization=password,
                          headers={"Accept": "application/json"})
        self._references: dict[tuple[str, str], str] = {}

    async def find(self, key: str) -> str | None:
        correlation = correlation_id(key)
        params = {
            "sysparm_query": f"correlation_id={correlation}^ORDERBYDESCsys_created_on",
            "sysparm_limit": "1",
            "sysparm_fields": "sys_id,correlation_id",
        }
        for row in _rows(await self._request("GET", TABLE, params=params)):
            # A query ServiceNow could not apply returns other incidents: never take those.
            sys_id = row.text("sys_id")
            if row.get("correlation_id") == correlation and sys_id:
                return sys_id
        return None

    async def open(self, ticket: base.Ticket) -> str:
        route = self.route
        record: dict[str, Any] = {
            "short_description": _cut(" ".join(ticket.title.split()), SHORT_DESCRIPTION_CHARS),
            "description": _cut(ticket.body, DESCRIPTION_CHARS),
            "urgency": str(route.urgency[ticket.priority]),
            "impact": str(route.impact[ticket.priority]),
            "correlation_id": correlation_id(ticket.key),
            "correlation_display": "probe",
        }
        if route.assignment_group:
            record["assignment_group"] = await self._reference(
                "sys_user_group", "name", route.assignment_group, "assignment_group")
        if route.caller_id:
            record["caller_id"] = await self._reference(
                "sys_user", "user_name", route.caller_id, "caller_id")
        response = await self._request("POST", TABLE, json_body=record,
                                       params={"sysparm_fields": FIELDS})
        sys_id = _record(response).text("sys_id")
        if not sys_id:
            raise TicketError(f"{response.what}: HTTP {response.status} without a sys_id")
        return sys_id

    async def note(self, ref: str, text: str) -> None:
        await self._update(ref, {"work_notes": text})

    async def resolve(self, ref: str, text: str) -> None:
        incident = await self._incident(ref)
        if incident is None or incident.state in (CLOSED, CANCELED):
            return  # nothing left to resolve, and closed incidents are read-only
        if incident.state == RESOLVED:
            await self.note(ref, text)
            return
        code = self.route.close_code
        change = {"state": RESOLVED, "close_code": code, "close_notes": text}
        try:
            now = await self._update(ref, change)
        except TicketError as err:
            if err.permanent:
                raise TicketError(f"{err.message} (resolving with the route's close_code "
                                  f"{code!r})", permanent=True) from None
            raise
        if now.state != RESOLVED:
            raise TicketError(
                f"ServiceNow left incident {incident.name(ref)} {now.described()}, not Resolved: "
                f"is the route's close_code {code!r} one of this instance's resolution codes?",
                permanent=True)

    async def reopen(self, ref: str, text: str) -> None:
        incident = await self._incident(ref)
        if incident is None:
            raise TicketError(f"ServiceNow incident {ref} no longer exists", permanent=True)
        if incident.state in (CLOSED, CANCELED):
            raise TicketError(
                f"ServiceNow does not reopen incident {incident.name(ref)}: it is "
                f"{incident.described()}, and closed incidents stay closed. Set "
                "on_human_close: new to get a new incident instead", permanent=True)
        if incident.state != RESOLVED:
            await self.note(ref, text)  # someone reopened it already
            return
        now = await self._update(ref, {"state": IN_PROGRESS, "work_notes": text})
        if now.state != IN_PROGRESS:
            raise TicketError(f"ServiceNow left incident {incident.name(ref)} "
                              f"{now.described()}, not In Progress", permanent=True)

    async def status(self, ref: str) -> TicketState:
        incident = await self._incident(ref)
        if incident is None:
            return "gone"
        if incident.state in (RESOLVED, CLOSED, CANCELED):
            return "closed"
        if incident.assigned or incident.state in (IN_PROGRESS, ON_HOLD):
            return "acknowledged"
        return "open"

    async def close(self) -> None:
        await self._http.close()

    # --- helpers -------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                       **kwargs: Any) -> Response:
        # reference fields as plain sys_ids rather than {link, value}
        params = {**(params or {}), "sysparm_exclude_reference_link": "true"}
        return await self._http.request(method, path, params=params, **kwargs)

    async def _incident(self, ref: str) -> Incident | None:
        response = await self._request("GET", f"{TABLE}/{_sys_id(ref)}",
                                       params={"sysparm_fields": FIELDS}, ok=(404,))
        return None if response.status == 404 else _incident_of(response)

    async def _update(self, ref: str, change: dict[str, str]) -> Incident:
        response = await self._request("PATCH", f"{TABLE}/{_sys_id(ref)}", json_body=change,
                                       params={"sysparm_fields": FIELDS})
        return _incident_of(response)

    async def _reference(self, table: str, field: str, value: str, setting: str) -> str:
        """The sys_id of the record a route setting names."""
        if SYS_ID.fullmatch(value):
            return value
        if (table, value) in self._references:
            return self._references[(table, value)]
        if "^" in value:  # it would split the query
            raise TicketError(f"the route's {setting} {value!r} cannot be looked up: give its "
                              "sys_id", permanent=True)
        params = {"sysparm_query": f"{field}={value}", "sysparm_fields": f"sys_id,{field}",
                  "sysparm_limit": "2"}
        rows = _rows(await self._request("GET", f"/api/now/table/{table}", params=params))
        sys_ids = [sys_id for row in rows
                   if row.get(field) == value and (sys_id := row.text("sys_id"))]
        if len(sys_ids) != 1:
            problem = "no" if not sys_ids else "more than one"
            raise TicketError(f"ServiceNow has {problem} {table} record with {field} {value!r} "
                              f"(the route's {setting}): give its exact {field} or its sys_id",
                              permanent=True)
        self._references[(table, value)] = sys_ids[0]
        return sys_ids[0]


def correlation_id(key: str) -> str:
    """The key as stored in correlation_id: whole where it fits, else its hash."""
    if len(key) <= CORRELATION_CHARS and "^" not in key:
        return key
    return "probe-sha256:" + hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Incident:
    """What probe reads of an incident record."""

    state: str  # a choice value: "1", not 1
    number: str | None  # INC0010042
    assigned: bool

    def name(self, ref: str) -> str:
        return self.number or ref

    def described(self) -> str:
        return f"{STATES.get(self.state, 'state')} ({self.state})"


def _rows(response: Response) -> list[Fields]:
    answer = response.fields()
    if answer.get("result") is None:
        raise TicketError(f"{response.what}: HTTP {response.status} without a list of records")
    return answer.objects("result")


def _record(response: Response) -> Fields:
    result = response.fields().object("result")
    if result is None:
        raise TicketError(f"{response.what}: HTTP {response.status} without a record")
    return result


def _incident_of(response: Response) -> Incident:
    record = _record(response)
    return Incident(state=record.ref("state") or "", number=record.text("number"),
                    assigned=bool(record.text("assigned_to")))


def _sys_id(ref: str) -> str:
    if not SYS_ID.fullmatch(ref):
        raise TicketError(f"{ref!r} is not a ServiceNow sys_id", permanent=True)
    return ref


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"



HELPDESK = base.Helpdesk(route=Route, backend=Backend)
