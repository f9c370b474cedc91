"""The rt backend: Best Practical Request Tracker 5, through REST2 (`<url>/REST/2.0`).

RT facts it relies on (seen on RT 5.0.3):
- `Authorization: token <auth token>`; the token's user needs CreateTicket, ShowTicket,
  CommentOnTicket and ModifyTicket in the queue.
- POST /ticket takes Queue, Subject, Content, ContentType, Priority (a number), CustomFields
  {name: value} and links (RefersTo) and answers 201 {"id": "42"}. A custom field the queue does
  not carry is dropped without a word, so `open` first checks that the queue has `key_field`.
- Subject is cut to 200 bytes: without `key_field` the key ends the subject as `[probe:<key>]`
  and the title gives way to keep it whole. TicketSQL strings take backslash escapes, but LIKE
  leaves % and _ as wildcards, so subject matches are checked exactly here. A search without a
  Status clause finds every ticket but the deleted.
- REST2 takes no idempotency key on POST /ticket, and nothing in a ticket is unique: a create
  sent twice (a timeout, or a probe killed while RT was still creating) makes two tickets. The
  dispatcher asks find() before a retry of unknown outcome, not before the earlier call's
  timeout has passed (RT may commit late), and the watcher's reconcile closes a duplicate.
- A comment is not mailed to requestors and does not reopen a resolved ticket.
- PUT /ticket/{id} answers 200 with a list of messages even when it refused the change ("That
  ticket has unresolved dependencies", a bad status), and [] when nothing changed.
- GET /ticket/{id} of a deleted ticket still answers (Status "deleted"); an unknown id is 404.
  Setting any status on a deleted ticket brings it back, so `resolve` leaves those alone.

status(): resolved or rejected is "closed"; deleted or unknown is "gone"; a ticket with an
Owner other than Nobody, or stalled, is "acknowledged" (probe sets neither); anything else is
"open". Status "open" alone does not count as acknowledged: probe's own `reopen` sets it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote

from probe.helpdesks import base
from probe.helpdesks.base import BaseUrl, Priority, PriorityMap, RouteBase, TicketError, TicketState
from probe.helpdesks.http import Authorization, Fields, Http, shape_error
from probe.secrets import EnvRef

SUBJECT_BYTES = 200
CLOSED = ("resolved", "rejected")


class Route(RouteBase):
    backend: Literal["rt"]
    url: BaseUrl
    token: EnvRef | None = None
    token_file: Path | None = None
    queue: str = "General"
    key_field: str | None = None  # a ticket custom field that holds the incident key
    priorities: PriorityMap[int] = {"urgent": 99, "high": 75, "normal": 50, "low": 25}

    secrets: ClassVar[dict[str, bool]] = {"token": True}

    def priority(self, name: Priority) -> int:
        return self.priorities[name]

    def link(self, ref: str) -> str | None:
        return f"{self.url}/Ticket/Display.html?id={quote(ref, safe='')}"


class Backend(base.Backend[Route]):
    def __init__(self, name: str, route: Route, *, database: Path | None = None) -> None:
        super().__init__(name, route, database=database)
        token = Authorization("token", "token {}".format)
        self._http = Http(route, route.url + "/REST/2.0", authorization=token)
        self._key_field_checked = False

    async def find(self, key: str) -> str | None:
        field = self.route.key_field
        token = subject_token(key)
        if field:
            query = f"'CF.{{{field}}}'={sql_string(key)}"
        else:
            query = f"Subject LIKE {sql_string(token)}"
        # a big page: LIKE's wildcards may let other tickets in ahead of the one wanted
        params = {
            "query": query,
            "orderby": "id",
            "order": "DESC",
            "fields": "Subject",
            "per_page": "100",
        }
        found = (await self._http.request("GET", "/tickets", params=params)).fields()
        for item in found.objects("items"):
            ref = item.ref("id")
            if ref and (field or (item.text("Subject") or "").endswith(token)):
                return ref
        return None

    async def open_tickets(self, prefix: str) -> list[tuple[str, str]] | None:
        field = self.route.key_field
        column = f"'CF.{{{field}}}'" if field else "Subject"
        # LIKE matches anywhere and treats % and _ as wildcards: the prefix is checked here.
        query = f"{column} LIKE {sql_string(prefix if field else '[probe:' + prefix)}"
        params = {"query": f"({query}) AND Status = '__Active__'", "orderby": "id",
                  "order": "ASC", "per_page": "100", "fields": "Subject,CustomFields"}
        found = (await self._http.request("GET", "/tickets", params=params)).fields()
        tickets: list[tuple[str, str]] = []
        for item in found.objects("items"):
            ref = item.ref("id")
            keys = [
                value
                for cf in item.objects("CustomFields") if cf.get("name") == field
                for value in cf.texts("values")
            ] if field else [_key_in_subject(item.text("Subject") or "")]
            for key in keys:
                if key.startswith(prefix) and ref:
                    tickets.append((key, ref))
        return tickets

    async def open(self, ticket: base.Ticket) -> str:
        route = self.route
        body: dict[str, Any] = {
            "Queue": route.queue,
            "Subject": ticket.title,
            "Content": ticket.body,
            "ContentType": "text/plain",
            "Priority": route.priority(ticket.priority),
        }
        if route.key_field:
            await self._check_key_field(route.key_field)
            body["CustomFields"] = {route.key_field: ticket.key}
        else:
            body["Subject"] = subject(ticket.title, ticket.key)
        if ticket.follows:
            body["RefersTo"] = ticket.follows
        response = await self._http.request("POST", "/ticket", json_body=body)
        ref = response.fields().ref("id")
        if not ref:
            raise TicketError(f"{response.what}: HTTP {response.status} without a ticket id")
        return ref

    async def note(self, ref: str, text: str) -> None:
        body = {"Content": text, "ContentType": "text/plain"}
        await self._http.request("POST", f"{ticket_path(ref)}/comment", json_body=body)

    async def resolve(self, ref: str, text: str) -> None:
        ticket = await self._ticket(ref)
        if ticket is None or ticket.text("Status") == "deleted":
            return  # nothing left to resolve
        await self.note(ref, text)
        if ticket.text("Status") not in CLOSED:
            await self._set_status(ref, "resolved")

    async def reopen(self, ref: str, text: str) -> None:
        await self.note(ref, text)
        await self._set_status(ref, "open")

    async def status(self, ref: str) -> TicketState:
        ticket = await self._ticket(ref)
        state = None if ticket is None else ticket.text("Status")
        if ticket is None or state == "deleted":
            return "gone"
        if state in CLOSED:
            return "closed"
        # RT 5 sends the owner as {"id": name, ...}; older releases send the name
        owner = ticket.object("Owner") if isinstance(ticket.get("Owner"), dict) else None
        owner_name = owner.text("id") if owner is not None else ticket.text("Owner")
        if (owner_name and owner_name != "Nobody") or state == "stalled":
            return "acknowledged"
        return "open"

    async def close(self) -> None:
        await self._http.close()

    async def _ticket(self, ref: str) -> Fields | None:
        response = await self._http.request("GET", ticket_path(ref), ok=(404,))
        return None if response.status == 404 else response.fields()

    async def _set_status(self, ref: str, status: str) -> None:
        change = {"Status": status}
        response = await self._http.request("PUT", ticket_path(ref), json_body=change)
        messages = response.json()
        if not isinstance(messages, list):
            raise shape_error(response.what, "", "a list of messages", messages)
        if any(f"to '{status}'" in str(m) for m in messages):
            return
        # RT says 200 whether or not it made the change: ask it what the status is now.
        ticket = await self._ticket(ref)
        now = None if ticket is None else ticket.text("Status")
        if now != status:
            said = "; ".join(map(str, messages)) or "no reason given"
            raise TicketError(
                f"RT left ticket {ref} {now or 'missing'}, not {status}: {said}", permanent=True
            )

    async def _check_key_field(self, field: str) -> None:
        if self._key_field_checked:
            return
        queue = self.route.queue
        response = await self._http.request("GET", f"/queue/{quote(queue, safe='')}", ok=(404,))
        if response.status == 404:
            raise TicketError(f"RT has no queue {queue!r} that this token can see", permanent=True)
        fields = [cf.text("name") for cf in response.fields().objects("TicketCustomFields")]
        if field not in fields:
            raise TicketError(
                f"queue {queue!r} has no ticket custom field {field!r} "
                f"(it has: {', '.join(map(str, fields)) or 'none'})",
                permanent=True,
            )
        self._key_field_checked = True


def ticket_path(ref: str) -> str:
    if not ref.isdigit():
        raise TicketError(f"{ref!r} is not an RT ticket number", permanent=True)
    return f"/ticket/{ref}"


def subject_token(key: str) -> str:
    return f"[probe:{key}]"


def subject(title: str, key: str) -> str:
    """The title with the key at its end, within RT's 200 bytes; the title is what gives way."""
    token = " " + subject_token(key)
    room = max(0, SUBJECT_BYTES - len(token.encode()))
    return title.encode()[:room].decode(errors="ignore").rstrip() + token


def _key_in_subject(text: str) -> str:
    start = text.rfind("[probe:")
    return text[start + len("[probe:"):-1] if start >= 0 and text.endswith("]") else ""


def sql_string(value: str) -> str:
    """A TicketSQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


HELPDESK = base.Helpdesk(route=Route, backend=Backend)
