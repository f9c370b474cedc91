"""The freshservice backend: Freshservice incident tickets, through API v2 (`<url>/api/v2`).

Freshservice facts it relies on (from Freshservice's API v2 reference, api.freshservice.com;
close to Freshdesk's, but not the same API: answers are wrapped, the search is another
endpoint with other fields):
- Basic auth with the API key as the user name and `X` as the password, on the account's
  <domain>.freshservice.com (API v2 does not answer on a custom portal domain).
- POST /tickets takes subject, description (HTML), a requester (`email`, which Freshservice
  makes a requester of if it has none, or `requester_id`), priority (1 low .. 4 urgent),
  urgency and impact (1 low .. 3 high), status (2 open, 3 pending, 4 resolved, 5 closed;
  accounts may add their own), source, type ("Incident"), group_id, responder_id,
  workspace_id, tags and custom_fields {"<field name>": value}, and answers 201
  {"ticket": {...}}. All three of priority, urgency and impact are sent, so that an account
  whose priority matrix derives the priority from the other two gets what the route says
  either way. The text is HTML-escaped inside <pre>, so that evidence keeps its lines and
  columns.
- POST /tickets takes no idempotency key, and neither tags nor custom fields are unique: a
  ticket created twice is two tickets, so a retry of unknown outcome asks find() first.
- GET /tickets/{id} answers {"ticket": {...}} with status, responder_id, deleted, spam and
  custom_fields; 404 when there is no such ticket. Tags are left out of every answer unless
  asked for (`include=tags`, one more API credit), so what comes back is checked by the
  custom field, never by a tag.
- POST /tickets/{id}/notes {"body", "private": true} is a private note (agents only) and
  changes no status; a closed ticket (5) takes no more notes (a 4xx), so a ticket a human
  closed gets no closing note. PUT /tickets/{id} {"status": 4} resolves, {"status": 2}
  reopens a resolved or closed ticket. A note cannot ride along with the status change, so
  `resolve` and `reopen` are two calls: the status first, so that a retry after a failed
  note adds the note alone.
- Finding a ticket by key: GET /tickets/filter?query="..." reads an index that lags "a few
  minutes" behind, returns 30 tickets a page, newest first, and takes only some fields
  (status, priority, urgency, impact, agent_id, group_id, tag, dates, and some kinds of custom
  field: not a free-text one, which the key would need; quotes in a value need escaping). So
  the key lives in `key_field`, a custom text field the account creates (for humans, and the
  exact check on what comes back), and every ticket also carries a tag made from a hash of
  the key, for the filter. find() first reads the requester's newest tickets from the list
  endpoint (GET /tickets?email=...&order_type=desc, {"tickets": [...]}, the database: a
  ticket created a second ago is there, but only tickets of the last 30 days are; 100 a page
  at most, as on every list), and only then filters by that tag, for older tickets.
- An account with workspaces lists and filters only its primary workspace's tickets unless
  `workspace_id` is given: a route that files into another workspace sends its
  `workspace_id` with every create, list and filter, or find() would never see its tickets.
- Errors are {"description": "Validation failed", "errors": [{"field", "message", "code"}]};
  the errors say why, so they go into the message. Rate limits are per minute and account-wide
  (other clients spend the same budget): 429 with Retry-After.

status(): pending (3) or any account's own status is "acknowledged" (a human set it: probe
never does); open (2) is "acknowledged" when an agent other than the route's own
`responder_id` is assigned (a ticket the route assigns is assigned from the start, which proves
nothing); resolved or closed is "closed"; deleted, spam or unknown is "gone".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import quote

from pydantic import Field, model_validator

from probe.helpdesks import base
from probe.helpdesks.base import BaseUrl, PriorityMap, RouteBase, TicketError, TicketState

# Freshworks' helpdesks share these: the key's tag, the HTML body, the bin, the error words.
from probe.helpdesks.freshdesk import as_html, binned, key_tag, reasons
from probe.helpdesks.http import Authorization, Fields, Http, basic
from probe.secrets import EnvRef

OPEN, PENDING, RESOLVED, CLOSED = 2, 3, 4, 5
RECENT = 100  # the requester's newest tickets that find() reads before it filters
PORTAL = 2  # Freshservice's source for a ticket raised through the portal or the API

Level4 = Annotated[int, Field(ge=1, le=4)]  # Freshservice's priority: 1 low .. 4 urgent
Level3 = Annotated[int, Field(ge=1, le=3)]  # its urgency and impact: 1 low .. 3 high


class Route(RouteBase):
    backend: Literal["freshservice"]
    url: BaseUrl  # https://<domain>.freshservice.com: API v2 does not answer on a custom domain
    api_key: EnvRef | None = None
    api_key_file: Path | None = None
    email: str | None = None  # the requester the tickets are raised for
    requester_id: int | None = None
    group_id: int | None = None
    responder_id: int | None = None
    key_field: str  # the custom text field (its API name) that holds the incident key
    workspace_id: int | None = None  # where the tickets go, on an account with workspaces
    tags: list[str] = ["probe"]
    source: int = PORTAL
    priorities: PriorityMap[Level4] = {"urgent": 4, "high": 3, "normal": 2, "low": 1}
    urgencies: PriorityMap[Level3] = {"urgent": 3, "high": 3, "normal": 2, "low": 1}
    impacts: PriorityMap[Level3] = {"urgent": 3, "high": 2, "normal": 2, "low": 1}

    secrets: ClassVar[dict[str, bool]] = {"api_key": True}

    @model_validator(mode="after")
    def _requester(self) -> Route:
        if self.email is None and self.requester_id is None:
            raise ValueError("needs email or requester_id: Freshservice tickets need a requester")
        return self

    def link(self, ref: str) -> str | None:
        return f"{self.url}/a/tickets/{quote(ref, safe='')}"


class Backend(base.Backend[Route]):
    def __init__(self, name: str, route: Route, *, database: Path | None = None) -> None:
        super().__init__(name, route, database=database)
        api_key = Authorization("api_key", lambda api_key: basic(api_key, "X"))
        self._http = Http(route, route.url + "/api/v2", authorization=api_key, words=reasons)

    async def find(self, key: str) -> str | None:
        route = self.route
        requester = (
            {"requester_id": str(route.requester_id)} if route.requester_id is not None
            else {"email": str(route.email)}
        )
        workspace = self._workspace()
        params = {**requester, **workspace, "order_type": "desc", "per_page": str(RECENT)}
        recent = await self._http.request("GET", "/tickets", params=params)
        ref = self._newest(recent.fields().objects("tickets"), key)
        if ref is None:
            params = {"query": f"\"tag:'{key_tag(key)}'\"", **workspace}
            found = await self._http.request("GET", "/tickets/filter", params=params)
            ref = self._newest(found.fields().objects("tickets"), key)
        return ref

    async def open(self, ticket: base.Ticket) -> str:
        route = self.route
        body: dict[str, Any] = {
            "subject": ticket.title,
            "description": as_html(ticket.body),
            "type": "Incident",
            "priority": route.priorities[ticket.priority],
            "urgency": route.urgencies[ticket.priority],
            "impact": route.impacts[ticket.priority],
            "status": OPEN,
            "source": route.source,
            "tags": [*route.tags, key_tag(ticket.key)],
            "custom_fields": {route.key_field: ticket.key},
        }
        if route.requester_id is not None:
            body["requester_id"] = route.requester_id
        else:
            body["email"] = route.email
        if route.group_id is not None:
            body["group_id"] = route.group_id
        if route.responder_id is not None:
            body["responder_id"] = route.responder_id
        if route.workspace_id is not None:
            body["workspace_id"] = route.workspace_id
        response = await self._http.request("POST", "/tickets", json_body=body)
        created = response.fields().object("ticket")
        ref = created.number("id") if created is not None else None
        if not ref:
            raise TicketError(f"{response.what}: HTTP {response.status} without a ticket id")
        return str(ref)

    async def note(self, ref: str, text: str) -> None:
        body = {"body": as_html(text), "private": True}
        await self._http.request("POST", f"{ticket_path(ref)}/notes", json_body=body)

    async def resolve(self, ref: str, text: str) -> None:
        ticket = await self._ticket(ref)
        if ticket is None or binned(ticket):
            return  # nothing left to resolve
        state = ticket.number("status")
        if state == CLOSED:
            return  # closed by a human: Freshservice takes no more notes on it
        if state != RESOLVED:
            await self._set_status(ref, RESOLVED)
        await self.note(ref, text)  # a resolved ticket takes a private note and stays resolved

    async def reopen(self, ref: str, text: str) -> None:
        await self._set_status(ref, OPEN)  # first: a closed ticket takes no note until then
        await self.note(ref, text)

    async def status(self, ref: str) -> TicketState:
        ticket = await self._ticket(ref)
        if ticket is None or binned(ticket):
            return "gone"
        state = ticket.number("status")
        if state in (RESOLVED, CLOSED):
            return "closed"
        responder = ticket.number("responder_id")
        if state != OPEN or (responder and responder != self.route.responder_id):
            return "acknowledged"
        return "open"

    async def close(self) -> None:
        await self._http.close()

    def _newest(self, tickets: list[Fields], key: str) -> str | None:
        """The id of the newest ticket in `tickets` whose key field holds `key`."""
        ids = []
        for item in tickets:
            ticket_id = item.number("id")
            custom = item.object("custom_fields")
            if not ticket_id or binned(item) or custom is None:
                continue
            if custom.get(self.route.key_field) == key:
                ids.append(ticket_id)
        return str(max(ids)) if ids else None

    def _workspace(self) -> dict[str, str]:
        workspace = self.route.workspace_id
        return {} if workspace is None else {"workspace_id": str(workspace)}

    async def _ticket(self, ref: str) -> Fields | None:
        response = await self._http.request("GET", ticket_path(ref), ok=(404,))
        if response.status == 404:
            return None
        ticket = response.fields().object("ticket")
        if ticket is None:
            raise TicketError(f"{response.what}: HTTP {response.status} without the ticket")
        return ticket

    async def _set_status(self, ref: str, status: int) -> None:
        await self._http.request("PUT", ticket_path(ref), json_body={"status": status})


def ticket_path(ref: str) -> str:
    if not ref.isdigit():
        raise TicketError(f"{ref!r} is not a Freshservice ticket id", permanent=True)
    return f"/tickets/{ref}"


HELPDESK = base.Helpdesk(route=Route, backend=Backend)
