"""The topdesk backend: TOPdesk incidents, through its REST API (`/tas/api/incidents`).

TOPdesk facts it relies on:
- Basic auth with an operator's login name and one of that operator's application passwords
  (made in the operator's settings, shown once). The operator needs the permissions to create,
  read and change first and second line incidents.
- POST /tas/api/incidents takes briefDescription (80 characters), request (the first text),
  externalNumber (60 characters: a longer key is stored as its hash), priority, callType,
  operatorGroup and operator as {"name"} or {"id"}, and a caller: an operator must give one,
  {"dynamicName"} for a caller who is not a registered person. It answers with the incident,
  whose `id` (a UUID) is the reference probe keeps; `number` is what people read ("I 2412 042").
- request and action take a few HTML tags (<b>, <i>, <br>...) and drop the others: probe's
  text is escaped, its line breaks sent as <br>.
- PATCH /tas/api/incidents/id/{id} changes an incident and answers with it: `action` adds an
  entry to the action history, with `actionInvisibleForCaller: true` one the caller never sees
  (probe's notes are those). `closed` / `completed` and `processingStatus` {"name"} close and
  reopen it; the processing statuses, and which of them close an incident, are the
  installation's own, so the route may name them (`resolved_status`, `reopened_status`).
- A closed incident refuses every change (4xx) except the one that reopens it; an archived one
  (`status` firstLineArchived, secondLineArchived..., `archivingReason` set) refuses every
  change until someone unarchives it, and probe never does: the archive is a person's decision.
- GET /tas/api/incidents?query=... takes FIQL. `externalNumber=='...'` is no exact match: the
  comparison ignores case, and a `*` in the value is a wildcard. So every incident that comes
  back is checked against the key, and those that do not carry it exactly are ignored. The
  list answers 204 with no body when nothing matches, 206 when there are more pages, and
  leaves archived incidents out: find() does not see an archived incident, which probe treats
  as closed for good anyway (a new incident follows it under its own key).
- Errors are a JSON list of {"message"}; a proxy or maintenance page in front is HTML. A 429
  (too many requests) may carry Retry-After.
- The operator field holds the operator group too, when only a group is assigned
  (operator.id == operatorGroup.id): that is nobody having taken the incident.

status(): closed, completed or archived is "closed"; an operator other than the incident's
group and the route's own `operator`, or a processing status in `taken_statuses`, is
"acknowledged"; anything else "open"; 404 is "gone".
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote

from probe.helpdesks import base
from probe.helpdesks.base import BaseUrl, PriorityMap, RouteBase, TicketError, TicketState
from probe.helpdesks.http import Authorization, Fields, Http, Response, basic
from probe.secrets import EnvRef

API = "/tas/api/incidents"
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
EXTERNAL_NUMBER_CHARS = 60
BRIEF_DESCRIPTION_CHARS = 80
REQUEST_CHARS = 60000  # far below what a memo field holds; a page of results is less
FIND_PAGE = 10  # incidents carrying one key, newest first: a key is almost always on one


class Route(RouteBase):
    backend: Literal["topdesk"]
    url: BaseUrl  # https://example.topdesk.net: the API is under /tas/api
    username: str  # the operator's login name
    application_password: EnvRef | None = None
    application_password_file: Path | None = None
    caller: str = "probe"  # the caller's name on each incident (an unregistered caller)
    call_type: str | None = None  # a call type's name: "Incident", "Malfunction"...
    operator_group: str | None = None  # the operator group's id (a UUID) or name
    operator: str | None = None  # an operator's id or name, assigned on open: not "taken"
    priorities: PriorityMap[str] = {"urgent": "P1", "high": "P2", "normal": "P3", "low": "P4"}
    resolved_status: str | None = None  # processing status a resolve sets; none: closed: true
    reopened_status: str | None = None  # processing status a reopen sets; none: closed: false
    taken_statuses: list[str] = []  # processing statuses that mean someone works on it

    secrets: ClassVar[dict[str, bool]] = {"application_password": True}

    def link(self, ref: str) -> str | None:
        return f"{self.url}/tas/secure/incident?action=show&unid={quote(ref, safe='')}"


class Backend(base.Backend[Route]):
    def __init__(self, name: str, route: Route, *, database: Path | None = None) -> None:
        super().__init__(name, route, database=database)
        password = Authorization("application_password",
                                 lambda password: basic(route.username, password))
        self._http = Http(route, route.url, authorization=password,
                          headers={"Accept": "application/json"})

    async def find(self, key: str) -> str | None:
        external = external_number(key)
        params = {"query": f"externalNumber=={fiql_string(external)}",
                  "sort": "creationDate:desc", "pageSize": str(FIND_PAGE),
                  "fields": "id,externalNumber,creationDate"}
        response = await self._http.request("GET", API, params=params)
        if response.status == 204:  # TOPdesk's "nothing matches": no body at all
            return None
        for incident in response.items():
            # The query ignores case and takes * as a wildcard: only the key itself will do.
            ref = incident.text("id")
            if incident.get("externalNumber") == external and ref:
                return ref
        return None

    async def open(self, ticket: base.Ticket) -> str:
        route = self.route
        record: dict[str, Any] = {
            "briefDescription": _cut(" ".join(ticket.title.split()), BRIEF_DESCRIPTION_CHARS),
            "request": as_html(_cut(ticket.body, REQUEST_CHARS)),
            "externalNumber": external_number(ticket.key),
            "priority": {"name": route.priorities[ticket.priority]},
            "caller": {"dynamicName": route.caller},
        }
        if route.call_type:
            record["callType"] = {"name": route.call_type}
        if route.operator_group:
            record["operatorGroup"] = _lookup(route.operator_group)
        if route.operator:
            record["operator"] = _lookup(route.operator)
        try:
            response = await self._http.request("POST", API, json_body=record)
        except TicketError as err:
            if err.permanent and ": HTTP 400" in err.message:  # what it would not take
                raise TicketError(f"{err.message} (check the route's priorities, call_type, "
                                  "operator_group and operator against this TOPdesk)",
                                  permanent=True, refused=err.refused) from None
            raise
        ref = response.fields().text("id")
        if not ref:
            raise TicketError(f"{response.what}: HTTP {response.status} without an id")
        return ref

    async def note(self, ref: str, text: str) -> None:
        await self._update(ref, _action(text))

    async def resolve(self, ref: str, text: str) -> None:
        incident = await self._incident(ref)
        if incident is None or incident.archived or incident.closed:
            return  # nothing left to resolve, and TOPdesk refuses changes to these
        change = _action(text)
        status = self.route.resolved_status
        change.update({"processingStatus": {"name": status}} if status else {"closed": True})
        now = await self._update(ref, change)
        if not now.closed:
            raise TicketError(
                f"TOPdesk left incident {incident.name(ref)} open ({now.described()}): "
                f"does the route's resolved_status {status!r} close incidents?", permanent=True)

    async def reopen(self, ref: str, text: str) -> None:
        incident = await self._incident(ref)
        if incident is None:
            raise TicketError(f"TOPdesk incident {ref} no longer exists", permanent=True)
        if incident.archived:
            raise TicketError(
                f"TOPdesk incident {incident.name(ref)} is archived, and probe does not "
                "unarchive what a person archived. Set on_human_close: new to get a new "
                "incident instead", permanent=True)
        if not incident.closed:
            await self.note(ref, text)  # someone reopened it already
            return
        change = _action(text)
        status = self.route.reopened_status
        change.update({"processingStatus": {"name": status}} if status
                      else {"closed": False, "completed": False})
        now = await self._update(ref, change)
        if now.closed:
            raise TicketError(
                f"TOPdesk left incident {incident.name(ref)} closed ({now.described()}): "
                f"does the route's reopened_status {status!r} reopen incidents?", permanent=True)

    async def status(self, ref: str) -> TicketState:
        incident = await self._incident(ref)
        if incident is None:
            return "gone"
        if incident.closed or incident.archived:
            return "closed"
        if incident.taken(self.route):
            return "acknowledged"
        return "open"

    async def close(self) -> None:
        await self._http.close()

    # --- helpers -------------------------------------------------------------------------------

    async def _incident(self, ref: str) -> Incident | None:
        response = await self._http.request("GET", f"{API}/id/{_uuid(ref)}", ok=(404,))
        return None if response.status == 404 else _incident_of(response)

    async def _update(self, ref: str, change: dict[str, Any]) -> Incident:
        response = await self._http.request("PATCH", f"{API}/id/{_uuid(ref)}", json_body=change)
        return _incident_of(response)


def external_number(key: str) -> str:
    """The key as stored in externalNumber: whole where it fits, else its hash."""
    if len(key) <= EXTERNAL_NUMBER_CHARS:
        return key
    return "probe-sha256:" + hashlib.sha256(key.encode()).hexdigest()[:40]


def fiql_string(value: str) -> str:
    """`value` as a quoted FIQL string: its quotes and backslashes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def as_html(text: str) -> str:
    """Plain text as TOPdesk's request and action fields show it: escaped, lines kept."""
    return "<br>".join(html.escape(line, quote=False) for line in text.split("\n"))


@dataclass(frozen=True, slots=True)
class Incident:
    """What probe reads of an incident."""

    number: str | None  # "I 2412 042"
    closed: bool  # closed or completed
    archived: bool
    processing_status: str | None
    operator: str | None  # the assigned operator's id, or the operator group's
    operator_name: str | None
    group: str | None  # the operator group's id

    def name(self, ref: str) -> str:
        return self.number or ref

    def described(self) -> str:
        return f"processing status {self.processing_status or 'none'}"

    def taken(self, route: Route) -> bool:
        if self.processing_status is not None and self.processing_status in route.taken_statuses:
            return True
        if self.operator is None or self.operator == self.group:
            return False  # nobody, or only the group
        return route.operator not in (self.operator, self.operator_name)


def _incident_of(response: Response) -> Incident:
    incident = response.fields()
    status = incident.text("status") or ""
    operator = incident.object("operator") or Fields({}, response.what)
    group = incident.object("operatorGroup") or Fields({}, response.what)
    processing = incident.object("processingStatus") or Fields({}, response.what)
    return Incident(
        number=incident.text("number"),
        closed=bool(incident.flag("closed")) or bool(incident.flag("completed")),
        archived=status.endswith("Archived") or incident.object("archivingReason") is not None,
        processing_status=processing.text("name"),
        operator=operator.text("id"),
        operator_name=operator.text("name"),
        group=group.text("id"),
    )


def _action(text: str) -> dict[str, Any]:
    return {"action": as_html(_cut(text, REQUEST_CHARS)), "actionInvisibleForCaller": True}


def _lookup(value: str) -> dict[str, str]:
    """A reference field as TOPdesk takes it: by id where the route gives a UUID."""
    return {"id": value} if UUID.fullmatch(value) else {"name": value}


def _uuid(ref: str) -> str:
    if not UUID.fullmatch(ref):
        raise TicketError(f"{ref!r} is not a TOPdesk incident id", permanent=True)
    return ref


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


HELPDESK = base.Helpdesk(route=Route, backend=Backend)
