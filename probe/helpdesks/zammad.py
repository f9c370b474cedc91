"""The zammad backend: Zammad tickets, through its REST API v1 (`<url>/api/v1`).

Zammad facts it relies on (from docs.zammad.org's REST API pages and Zammad's own controllers):
- Token auth: `Authorization: Token token=<access token>`; the token's user must be an agent
  of the route's group (permission ticket.agent).
- POST /tickets takes {title, group (a name), customer (a user's login or email), priority_id,
  state, owner_id, tags (one comma-separated string), article: {subject, body, content_type,
  type, internal}} and answers 201 with the ticket's attributes ({"id", "number", ...}). The
  ticket, its tags and its first article are written in one database transaction: a ticket
  that exists carries its tags. `links` ({"Ticket": {"normal": [id]}}) links a follow-up
  ticket to the one it follows, as a split does. There is no idempotency key: an open sent
  twice is two tickets, which is what find() guards.
- Priorities are ids: 1 low, 2 normal, 3 high (the defaults; `priorities` maps ours). States
  are named: new, open, pending reminder, pending close, closed, merged, removed.
- The incident key is the tag `probe-key-<hash of the key>` (tags are exact, where a search for
  a title's words is not). Searching by it is the trap: GET /tickets/search?query=tags:... asks
  the Elasticsearch index, which lags the database by seconds, so a ticket just made is not
  found, and the open retried after a timeout makes a second one. The same endpoint with only a
  `condition` (no `query`) is answered from the database (Zammad's CanSearch: "we only search
  in elastic search when we have a query present"), and a tag condition (`ticket.tags`,
  `contains all`) is what Zammad's overviews and triggers use; find() asks that, so it sees a
  ticket the moment it exists, and confirms each candidate's tags with GET
  /tags?object=Ticket&o_id=ID. Each incident makes a new tag: the token's user needs Zammad's
  "New tags" setting on (the default) or the admin.tag permission, and the tag list grows by
  one probe-key-... tag per incident.
- Notes: POST /ticket_articles {ticket_id, body, content_type: text/plain, type: note,
  internal: true}, an internal note the customer does not see. Resolving and reopening are
  one PUT /tickets/{id} with the new state and an internal note as its `article`, written
  under the ticket's lock.
- A ticket merged into another (state merged) has moved its conversation to the other ticket:
  probe does not reopen it (that would split the thread again), it raises the permanent error
  that makes the outbox open a follow-up ticket.
- Errors are {"error", "error_human"}; a 404 is an unknown (or deleted) ticket. The reverse
  proxy in front (nginx, as Zammad's packages ship it) answers 502/503/504 with an HTML page
  while Zammad restarts, and a rate limit in front of it is 429 with Retry-After: both are
  transient (http.py).

status(): the "unassigned" owner is Zammad's system user, id 1 (its overviews' "Unassigned &
Open"): an owner other than that and the route's own `owner_id` is "acknowledged", and so is a
pending state (a human set it: probe never does); closed and merged are "closed"; removed, or a
404, is "gone"; anything else is "open".
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import quote

from pydantic import AfterValidator

from probe.helpdesks import base
from probe.helpdesks.base import BaseUrl, PriorityMap, RouteBase, TicketError, TicketState
from probe.helpdesks.http import Authorization, Fields, Http
from probe.secrets import EnvRef

KEY_TAG = "probe-key-"
NOBODY = 1  # Zammad's system user, the owner of an unassigned ticket
TITLE_CHARS = 250  # tickets.title is a 250-character column
CLOSED = ("closed", "merged")
CANDIDATES = "10"  # tickets find() looks at: more than one only after a duplicate


def _tag(value: str) -> str:
    if not value.strip() or "," in value or len(value) > 100:
        raise ValueError(f"{value!r} is not a Zammad tag: 1 to 100 characters, no comma")
    return value


Tag = Annotated[str, AfterValidator(_tag)]


class Route(RouteBase):
    backend: Literal["zammad"]
    url: BaseUrl
    token: EnvRef | None = None
    token_file: Path | None = None
    group: str  # the group the tickets go to, by name
    customer: str  # the customer of the tickets: an existing user's login or email
    owner_id: int | None = None  # a preset owner: being owned by it is not being taken
    tags: list[Tag] = ["probe"]
    priorities: PriorityMap[int] = {"urgent": 3, "high": 3, "normal": 2, "low": 1}

    secrets: ClassVar[dict[str, bool]] = {"token": True}

    def link(self, ref: str) -> str | None:
        return f"{self.url}/#ticket/zoom/{quote(ref, safe='')}"


class Backend(base.Backend[Route]):
    def __init__(self, name: str, route: Route, *, database: Path | None = None) -> None:
        super().__init__(name, route, database=database)
        token = Authorization("token", "Token token={}".format)
        self._http = Http(route, route.url + "/api/v1", authorization=token)

    async def find(self, key: str) -> str | None:
        tag = key_tag(key)
        params = {  # a condition and no query: the database answers, not the lagging index
            "condition[ticket.tags][operator]": "contains all",
            "condition[ticket.tags][value]": tag,
            "sort_by": "id", "order_by": "desc", "limit": CANDIDATES, "expand": "true",
        }
        found = await self._http.request("GET", "/tickets/search", params=params)
        ids = sorted({i for item in found.items() if (i := item.number("id"))}, reverse=True)
        for candidate in ids:
            tags = await self._http.request(
                "GET", "/tags", params={"object": "Ticket", "o_id": str(candidate)})
            if tag in tags.fields().texts("tags"):
                return str(candidate)
        return None

    async def open(self, ticket: base.Ticket) -> str:
        route = self.route
        title = ticket.title if len(ticket.title) <= TITLE_CHARS else (
            ticket.title[: TITLE_CHARS - 1] + "…")
        body: dict[str, Any] = {
            "title": title,
            "group": route.group,
            "customer": route.customer,
            "priority_id": route.priorities[ticket.priority],
            "state": "new",
            "tags": ",".join(dict.fromkeys([*route.tags, key_tag(ticket.key)])),
            "article": {"subject": title, "body": ticket.body, "content_type": "text/plain",
                        "type": "note", "internal": False},
        }
        if route.owner_id is not None:
            body["owner_id"] = route.owner_id
        if ticket.follows and ticket.follows.isdigit():  # linked, as Zammad's split links
            body["links"] = {"Ticket": {"normal": [int(ticket.follows)]}}
        response = await self._http.request("POST", "/tickets", json_body=body)
        ref = response.fields().number("id")
        if not ref:
            raise TicketError(f"{response.what}: HTTP {response.status} without a ticket id")
        return str(ref)

    async def note(self, ref: str, text: str) -> None:
        await self._http.request("POST", "/ticket_articles",
                                 json_body={"ticket_id": ticket_id(ref), **_note(text)})

    async def resolve(self, ref: str, text: str) -> None:
        ticket = await self._ticket(ref)
        if ticket is None or ticket.text("state") in (*CLOSED, "removed"):
            return  # gone, or closed already: by a human, or by this very call before a retry
        await self._update(ref, {"state": "closed", "article": _note(text)})

    async def reopen(self, ref: str, text: str) -> None:
        ticket = await self._ticket(ref)
        if ticket is None or ticket.text("state") == "removed":
            raise TicketError(f"Zammad ticket {ref} is gone: nothing to reopen", permanent=True)
        if ticket.text("state") == "merged":
            raise TicketError(
                f"Zammad ticket {ref} was merged into another ticket, and reopening it would "
                "split the conversation again: set on_human_close: new to open a follow-up "
                "ticket instead",
                permanent=True,
            )
        await self._update(ref, {"state": "open", "article": _note(text)})

    async def status(self, ref: str) -> TicketState:
        ticket = await self._ticket(ref)
        state = None if ticket is None else ticket.text("state")
        if ticket is None or state == "removed":
            return "gone"
        if state in CLOSED:
            return "closed"
        if state is not None and state.startswith("pending"):
            return "acknowledged"
        owner = ticket.number("owner_id")
        if owner and owner not in (NOBODY, self.route.owner_id):
            return "acknowledged"
        return "open"

    async def close(self) -> None:
        await self._http.close()

    async def _ticket(self, ref: str) -> Fields | None:
        response = await self._http.request("GET", ticket_path(ref), params={"expand": "true"},
                                            ok=(404,))
        return None if response.status == 404 else response.fields()

    async def _update(self, ref: str, change: dict[str, Any]) -> None:
        await self._http.request("PUT", ticket_path(ref), json_body=change)


def _note(text: str) -> dict[str, Any]:
    return {"body": text, "content_type": "text/plain", "type": "note", "internal": True}


def ticket_id(ref: str) -> int:
    if not ref.isdigit():
        raise TicketError(f"{ref!r} is not a Zammad ticket id", permanent=True)
    return int(ref)


def ticket_path(ref: str) -> str:
    return f"/tickets/{ticket_id(ref)}"


def key_tag(key: str) -> str:
    """The tag that carries `key`: its hash, as a key may hold a comma, which separates tags
    on create, and Zammad may compare tags without regard to case."""
    return KEY_TAG + hashlib.sha256(key.encode()).hexdigest()[:32]


HELPDESK = base.Helpdesk(route=Route, backend=Backend)
