"""The zendesk backend: Zendesk Support tickets, through API v2 (`<url>/api/v2`).

Zendesk facts it relies on (from Zendesk's API reference and its "Creating and updating
tickets", "Rate limits" and "native system ticket rules" pages):
- Basic auth as `{email}/token` with an API token; the user must be an agent.
- POST /tickets.json takes {"ticket": {subject, comment: {body}, priority, type, external_id,
  tags, group_id, assignee_id}} and answers 201 {"ticket": {"id": ...}}. Priority is native
  (urgent, high, normal, low). An `Idempotency-Key` header makes a repeated create answer the
  first ticket (`x-idempotency-lookup: hit`) instead of making another. probe derives the key
  from the whole request, so an identical retry is deduplicated by Zendesk while a re-rendered
  one (newer evidence) never reuses a key with a different body; the dispatcher's find() before
  a retry is what guards that case. The ticket key itself is not the Idempotency-Key for that
  reason: Zendesk refuses a key sent again with another body (400 IdempotentRequestError), a
  refusal that would fail the re-rendered retry for good.
- GET /tickets.json?external_id=K lists the tickets carrying K (external ids need not be
  unique, so the newest is taken). It reads the database, not the search index: a ticket is
  found the moment it exists, which the search API does not promise.
- PUT /tickets/{id}.json with {"ticket": {"comment": {"body", "public": false}}} is an
  internal note. Solving is the same PUT with status "solved", in one request: Zendesk
  rate-limits updates per ticket (429, "Rate limit for ticket updates exceeded", Retry-After),
  and the dispatcher already sends one action per incident at a time.
- A ticket cannot be solved without an assignee unless the account auto-assigns on solve, so
  an unassigned ticket is assigned to the token's user as it is solved (what that setting
  does). That user must be allowed in the ticket's group.
- "solved" can be set back to "open"; "closed" (solved, then closed by Zendesk after some days,
  or closed by an automation) cannot be updated at all (422 "closed prevents ticket update"):
  reopen then fails for good with a message that says to use on_human_close: new, and a new
  ticket is created as a follow-up of the closed one (`via_followup_source_id`).
- Errors are {"error", "description", "details": {field: [{"description"}]}}; the details are
  what says why, so they go into the message. 409 means another update of the ticket was
  under way at the same moment (a human's, a trigger's): it is retried.

status(): new is "open"; pending or on-hold is "acknowledged" (a human set it: probe never
does); open is "acknowledged" when someone other than the route's own `assignee_id` is assigned
(Zendesk opens a ticket created with an assignee itself, so being assigned by the route proves
nothing, and a ticket probe reopens is "open" with no new owner); solved or closed is
"closed"; a deleted or unknown ticket is "gone".
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote

from probe.helpdesks import base
from probe.helpdesks.base import BaseUrl, RouteBase, TicketError, TicketState
from probe.helpdesks.http import Authorization, Fields, Http, basic
from probe.secrets import EnvRef

CLOSED = ("solved", "closed")
CONFLICT = 409  # two updates of one ticket at once: Zendesk asks for a retry


class Route(RouteBase):
    backend: Literal["zendesk"]
    url: BaseUrl
    email: str
    token: EnvRef | None = None
    token_file: Path | None = None
    group_id: int | None = None
    assignee_id: int | None = None
    tags: list[str] = ["probe"]

    secrets: ClassVar[dict[str, bool]] = {"token": True}

    def link(self, ref: str) -> str | None:
        return f"{self.url}/agent/tickets/{quote(ref, safe='')}"


class Backend(base.Backend[Route]):
    def __init__(self, name: str, route: Route, *, database: Path | None = None) -> None:
        super().__init__(name, route, database=database)
        token = Authorization("token", lambda token: basic(f"{route.email}/token", token))
        self._http = Http(route, route.url + "/api/v2", authorization=token, words=_reasons,
                          transient=(CONFLICT,))
        self._me: int | None = None

    async def find(self, key: str) -> str | None:
        params = {"external_id": key, "per_page": "100"}
        found = (await self._http.request("GET", "/tickets.json", params=params)).fields()
        ids = []
        for item in found.objects("tickets"):
            ticket_id = item.number("id")
            if ticket_id and item.get("external_id") == key and item.get("status") != "deleted":
                ids.append(ticket_id)
        return str(max(ids)) if ids else None

    async def open(self, ticket: base.Ticket) -> str:
        route = self.route
        fields: dict[str, Any] = {
            "subject": ticket.title,
            "comment": {"body": ticket.body},
            "priority": ticket.priority,
            "type": "incident",
            "external_id": ticket.key,
            "tags": route.tags,
        }
        if route.group_id is not None:
            fields["group_id"] = route.group_id
        if route.assignee_id is not None:
            fields["assignee_id"] = route.assignee_id
        if ticket.follows and ticket.follows.isdigit():
            fields["via_followup_source_id"] = int(ticket.follows)
        body = {"ticket": fields}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        headers = {"Idempotency-Key": f"probe-{digest}"}
        response = await self._http.request("POST", "/tickets.json", json_body=body,
                                            headers=headers)
        created = response.fields().object("ticket")
        ref = created.number("id") if created is not None else None
        if not ref:
            raise TicketError(f"{response.what}: HTTP {response.status} without a ticket id")
        return str(ref)

    async def note(self, ref: str, text: str) -> None:
        await self._update(ref, {"comment": {"body": text, "public": False}})

    async def resolve(self, ref: str, text: str) -> None:
        ticket = await self._ticket(ref)
        if ticket is None or ticket.text("status") == "closed":
            return  # gone, or closed for good: Zendesk takes no more comments on it
        change: dict[str, Any] = {
            "comment": {"body": text, "public": False},
            "status": "solved",
        }
        if not ticket.number("assignee_id"):
            change["assignee_id"] = await self._my_id()
        await self._update(ref, change)

    async def reopen(self, ref: str, text: str) -> None:
        ticket = await self._ticket(ref)
        if ticket is None:
            raise TicketError(f"Zendesk ticket {ref} is gone: nothing to reopen", permanent=True)
        if ticket.text("status") == "closed":
            raise TicketError(
                f"Zendesk ticket {ref} is closed, and Zendesk never reopens a closed ticket: "
                "set on_human_close: new to open a follow-up ticket instead",
                permanent=True,
            )
        await self._update(ref, {"comment": {"body": text, "public": False}, "status": "open"})

    async def status(self, ref: str) -> TicketState:
        ticket = await self._ticket(ref)
        state = None if ticket is None else ticket.text("status")
        if ticket is None or state == "deleted":
            return "gone"
        if state in CLOSED:
            return "closed"
        if state in ("pending", "hold"):
            return "acknowledged"
        assignee = ticket.number("assignee_id")
        if state == "open" and assignee and assignee != self.route.assignee_id:
            return "acknowledged"
        return "open"

    async def close(self) -> None:
        await self._http.close()

    async def _ticket(self, ref: str) -> Fields | None:
        response = await self._http.request("GET", ticket_path(ref), ok=(404,))
        if response.status == 404:
            return None
        ticket = response.fields().object("ticket")
        if ticket is None:
            raise TicketError(f"{response.what}: HTTP {response.status} without a ticket")
        return ticket

    async def _update(self, ref: str, change: dict[str, Any]) -> None:
        await self._http.request("PUT", ticket_path(ref), json_body={"ticket": change})

    async def _my_id(self) -> int:
        if self._me is None:
            response = await self._http.request("GET", "/users/me.json")
            user = response.fields().object("user")
            me = user.number("id") if user is not None else None
            if not me:
                raise TicketError(f"{response.what}: Zendesk did not say who this token is")
            self._me = me
        return self._me


def ticket_path(ref: str) -> str:
    if not ref.isdigit():
        raise TicketError(f"{ref!r} is not a Zendesk ticket id", permanent=True)
    return f"/tickets/{ref}.json"


def _reasons(error: dict[str, Any]) -> str:
    """Zendesk's reasons: its `error` alone ("RecordInvalid") says little, the description and
    the per-field details say why."""
    words: list[str] = []
    for name in ("description", "error"):
        value = error.get(name)
        if isinstance(value, str) and value and not words:
            words.append(value)
    details = error.get("details")
    if isinstance(details, dict):
        for problems in details.values():
            for problem in problems if isinstance(problems, list) else [problems]:
                said = problem.get("description") if isinstance(problem, dict) else problem
                if said:
                    words.append(str(said))
    return ": ".join(words)


HELPDESK = base.Helpdesk(route=Route, backend=Backend)
