"""The freshdesk backend: Freshdesk tickets, through API v2 (`<url>/api/v2`).

Freshdesk facts it relies on (from Freshdesk's API v2 reference):
- Basic auth with the API key as the user name and `X` as the password.
- POST /tickets takes subject, description (HTML), priority (1 low .. 4 urgent), status (2 open,
  3 pending, 4 resolved, 5 closed; accounts may add their own above 5), a requester (`email`,
  which Freshdesk makes a contact of if it has none, or `requester_id`), group_id,
  responder_id, tags and custom_fields {"cf_...": value}, and answers 201 with the ticket.
  The text is HTML-escaped inside <pre>, so that evidence keeps its lines and columns.
- POST /tickets takes no idempotency key (API v2 has none), and neither tags nor custom fields
  are unique: a ticket created twice is two tickets, so a retry of unknown outcome asks find()
  first.
- POST /tickets/{id}/notes {"body", "private": true} is an internal note and changes no status;
  PUT /tickets/{id} {"status": 4} resolves, {"status": 2} reopens (a resolved or closed ticket
  can be). A note cannot ride along with the status change, so `resolve` is two calls.
  Freshdesk has no follow-up link for a new ticket: the body names the one it follows.
- Finding a ticket by key: the search API (GET /search/tickets?query="...") is built on an
  index that lags "a few minutes" behind, returns 30 results a page and 10 pages at most, and
  does not say how a quote inside a value is escaped. So every ticket also carries a tag made
  from a hash of the key (letters, digits and dashes; Freshdesk's 32-character tag limit), and
  find() first reads the requester's newest tickets from the list endpoint (the database: a
  ticket created a second ago is there, but only tickets of the last 30 days are), and only
  then searches by that tag, for older tickets (listed tickets carry custom_fields and tags as
  a ticket does; the first search page is read, which is plenty for one key). `key_field`,
  when set, holds the key itself, for humans and as the exact check on what comes back; the
  search uses the tag either way, as the docs do not pin down how a custom text field is
  named in a query.
- Errors are {"description": "Validation failed", "errors": [{"field", "message", "code"}]};
  the errors say why, so they go into the message. 429 comes with Retry-After.

status(): pending (3) or any custom status is "acknowledged" (a human set it: probe never
does); open (2) is "acknowledged" when an agent other than the route's own `responder_id` is
assigned (a ticket the route assigns is assigned from the start, which proves nothing);
resolved or closed is "closed"; deleted, spam or unknown is "gone".
"""

from __future__ import annotations

import hashlib
import html
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote

from pydantic import model_validator

from probe.helpdesks import base
from probe.helpdesks.base import BaseUrl, PriorityMap, RouteBase, TicketError, TicketState
from probe.helpdesks.http import Authorization, Fields, Http, basic
from probe.secrets import EnvRef

OPEN, PENDING, RESOLVED, CLOSED = 2, 3, 4, 5
RECENT = 100  # the requester's newest tickets that find() reads before it searches


class Route(RouteBase):
    backend: Literal["freshdesk"]
    url: BaseUrl
    api_key: EnvRef | None = None
    api_key_file: Path | None = None
    email: str | None = None  # the requester the tickets are raised for
    requester_id: int | None = None
    group_id: int | None = None
    responder_id: int | None = None
    key_field: str | None = None  # a custom field (cf_...) for the incident key; else a tag
    tags: list[str] = ["probe"]
    priorities: PriorityMap[int] = {"urgent": 4, "high": 3, "normal": 2, "low": 1}

    secrets: ClassVar[dict[str, bool]] = {"api_key": True}

    @model_validator(mode="after")
    def _requester(self) -> Route:
        if self.email is None and self.requester_id is None:
            raise ValueError("needs email or requester_id: Freshdesk tickets need a requester")
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
        params = {**requester, "order_by": "created_at", "order_type": "desc",
                  "per_page": str(RECENT)}
        recent = (await self._http.request("GET", "/tickets", params=params)).items()
        ref = self._newest(recent, key)
        if ref is None:
            query = f"\"tag:'{key_tag(key)}'\""
            found = await self._http.request("GET", "/search/tickets", params={"query": query})
            ref = self._newest(found.fields().objects("results"), key)
        return ref

    async def open(self, ticket: base.Ticket) -> str:
        route = self.route
        body: dict[str, Any] = {
            "subject": ticket.title,
            "description": as_html(ticket.body),
            "priority": route.priorities[ticket.priority],
            "status": OPEN,
            "tags": [*route.tags, key_tag(ticket.key)],
        }
        if route.requester_id is not None:
            body["requester_id"] = route.requester_id
        else:
            body["email"] = route.email
        if route.group_id is not None:
            body["group_id"] = route.group_id
        if route.responder_id is not None:
            body["responder_id"] = route.responder_id
        if route.key_field:
            body["custom_fields"] = {route.key_field: ticket.key}
        response = await self._http.request("POST", "/tickets", json_body=body)
        ref = response.fields().number("id")
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
        # The status first: a retry after a failed note then adds the note alone, not twice
        # (a private note leaves a resolved ticket resolved).
        if ticket.number("status") not in (RESOLVED, CLOSED):
            await self._set_status(ref, RESOLVED)
        await self.note(ref, text)

    async def reopen(self, ref: str, text: str) -> None:
        await self._set_status(ref, OPEN)  # first, as in resolve
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
        """The id of the newest ticket in `tickets` that carries `key`."""
        field, tag = self.route.key_field, key_tag(key)
        ids = []
        for item in tickets:
            ticket_id = item.number("id")
            if not ticket_id or binned(item):
                continue
            custom = item.object("custom_fields")
            in_field = bool(field and custom is not None and custom.get(field) == key)
            if in_field or tag in item.texts("tags"):
                ids.append(ticket_id)
        return str(max(ids)) if ids else None

    async def _ticket(self, ref: str) -> Fields | None:
        response = await self._http.request("GET", ticket_path(ref), ok=(404,))
        return None if response.status == 404 else response.fields()

    async def _set_status(self, ref: str, status: int) -> None:
        await self._http.request("PUT", ticket_path(ref), json_body={"status": status})


def ticket_path(ref: str) -> str:
    if not ref.isdigit():
        raise TicketError(f"{ref!r} is not a Freshdesk ticket id", permanent=True)
    return f"/tickets/{ref}"


def key_tag(key: str) -> str:
    """The tag that carries `key`: any key, in the characters and length a tag allows."""
    return "probe-key-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def as_html(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def binned(ticket: Fields) -> bool:
    """Deleted or marked as spam: as good as gone (Freshdesk's and Freshservice's flags)."""
    return bool(ticket.flag("deleted") or ticket.flag("spam"))


def reasons(error: dict[str, Any]) -> str:
    """Freshdesk's reasons (and Freshservice's: the same Freshworks error body): "Validation
    failed" alone says little, the per-field errors say why."""
    words: list[str] = []
    said = error.get("description") or error.get("message")
    if isinstance(said, str) and said:
        words.append(said)
    errors = error.get("errors")
    for problem in errors if isinstance(errors, list) else []:
        if isinstance(problem, dict):
            field, text = problem.get("field"), problem.get("message") or problem.get("code")
            words.append(f"{field}: {text}" if field else str(text))
    return ": ".join(words)


HELPDESK = base.Helpdesk(route=Route, backend=Backend)
