"""The znuny backend: Znuny (and OTRS Community Edition) tickets, through the GenericInterface
ticket connector over REST, as Znuny's example web service GenericTicketConnectorREST defines it.

Znuny facts it relies on:
- The route's `url` is the web service's base URL
  (https://host/otrs/nph-genericinterface.pl/Webservice/GenericTicketConnectorREST), with the
  routes of the example: POST /Session (SessionCreate), POST /Ticket (TicketCreate), GET
  /Ticket/:TicketID (TicketGet), PATCH /Ticket/:TicketID (TicketUpdate). Data travels as a
  JSON body, a GET's as its query string: Znuny reads no body from a GET (its bug 14203).
- TicketSearch needs one route more: the example maps it to GET /Ticket, whose query string
  holds only flat values, and a dynamic field condition is an object (a flat
  DynamicField_<name>=value is dropped without a word). So the web service must also map
  TicketSearch to POST at the route's `search_path` (default /TicketSearch). A path no route
  matches answers HTTP 500 "Error while determine Operation": a permanent error that says so.
- SessionCreate takes UserLogin and Password and answers {"SessionID"}; every other call then
  carries SessionID. A session ends (idle or maximum time, a restart that drops the sessions)
  without a word: the next call answers "<Operation>.AuthFail", so the session is created
  again and the call sent once more; an AuthFail of a new session is a permanent error.
- An operation's error comes back as HTTP 200 with {"Error": {"ErrorCode", "ErrorMessage"}}:
  the status alone is never trusted. Znuny has no rate limit of its own; a proxy's 429 or 503
  is retried as for every helpdesk.
- TicketCreate takes Ticket {Title (255 characters), Queue, State, Priority, CustomerUser,
  Type}, Article {CommunicationChannel, IsVisibleForCustomer, Subject, Body, ContentType} and
  DynamicField [{Name, Value}], and answers {TicketID, TicketNumber, ArticleID}. It takes no
  idempotency key: a retry of unknown outcome asks find() first.
- The incident key lives in a ticket dynamic field (`key_field`: a Text field for tickets that
  the administrator creates; Znuny's names are letters and digits). TicketSearch takes
  DynamicField_<name>: {Equals: key} and answers {"TicketID": [...]}, or {} when nothing
  matches. A condition on a field Znuny does not know (or that is not valid) is dropped
  without a word, and the search then matches every ticket the user may see; and Equals
  follows the database's collation (MySQL: case-insensitive). So each ticket found is read
  back (TicketGet with DynamicFields=1) and kept only if its field holds the key exactly.
- Notes are articles on the Internal communication channel, IsVisibleForCustomer 0. An
  article alone leaves the state as it is: a closed ticket stays closed with a note.
- TicketGet answers {"Ticket": [{State, StateType, Lock, Owner, DynamicField, ...}]}. A ticket
  that does not exist and one this user may not see answer alike (TicketGet.AccessDenied; an
  id Znuny cannot read, TicketGet.NotValidTicketID): both are "gone".
- Priorities are names ("5 very high" ... "1 very low"), states are names whose StateType is
  new, open, pending reminder, pending auto, closed, merged or removed. A closed ticket is
  reopened by setting a state; a merged or removed one is not reopened.

open_tickets(): TicketSearch with Like "<prefix>*" on key_field and the StateTypes that are not
closed, each ticket read back and its key checked against the prefix.

status(): StateType closed, merged or removed is "closed"; locked, owned by someone other than
the route's user, or StateType open or pending is "acknowledged"; otherwise "open".
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import quote

from pydantic import AfterValidator

from probe.helpdesks import base
from probe.helpdesks.base import BaseUrl, PriorityMap, RouteBase, TicketError, TicketState, reveal
from probe.helpdesks.http import Fields, Http, Response, helpdesk_message, shape_error
from probe.secrets import EnvRef

TITLE_CHARS = 255
SEARCH_LIMIT = 20  # more tickets than one key ever has; each is read back to be sure
CONTENT_TYPE = "text/plain; charset=utf8"
OPEN_LIMIT = 200  # open tickets listed for reconciling: an agent's incidents at once
CLOSED_TYPES = ("closed", "merged", "removed")
OPEN_TYPES = ["new", "open", "pending reminder", "pending auto"]
WORKED_TYPES = ("open", "pending reminder", "pending auto")
GONE = ("TicketGet.AccessDenied", "TicketGet.NotValidTicketID")
FIELD_NAME = re.compile(r"[A-Za-z0-9]+")


def _field_name(value: str) -> str:
    if not FIELD_NAME.fullmatch(value):
        raise ValueError("Znuny's dynamic field names are letters and digits only")
    return value


def _path(value: str) -> str:
    if not re.fullmatch(r"(/[A-Za-z0-9_.-]+)+", value):
        raise ValueError("a path of the web service, such as /TicketSearch")
    return value


class Route(RouteBase):
    backend: Literal["znuny"]
    url: BaseUrl  # the web service: .../nph-genericinterface.pl/Webservice/<name>
    user: str  # an agent's UserLogin
    password: EnvRef | None = None
    password_file: Path | None = None
    queue: str
    customer_user: str
    key_field: Annotated[str, AfterValidator(_field_name)] = "ProbeIncidentKey"
    # TicketSearch mapped to POST here: the example's GET /Ticket cannot carry the condition
    search_path: Annotated[str, AfterValidator(_path)] = "/TicketSearch"
    ticket_type: str | None = None  # Ticket::Type on: the ticket type to create
    priorities: PriorityMap[str] = {"urgent": "5 very high", "high": "4 high",
                                    "normal": "3 normal", "low": "2 low"}
    open_state: str = "new"
    resolved_state: str = "closed successful"
    reopened_state: str = "open"

    secrets: ClassVar[dict[str, bool]] = {"password": True}

    def link(self, ref: str) -> str | None:
        root, found, _ = self.url.partition("/nph-genericinterface.pl/")
        if not found:
            return None
        return f"{root}/index.pl?Action=AgentTicketZoom;TicketID={quote(ref, safe='')}"


class Backend(base.Backend[Route]):
    def __init__(self, name: str, route: Route, *, database: Path | None = None) -> None:
        super().__init__(name, route, database=database)
        self._http = Http(route, route.url, headers={"Accept": "application/json"},
                          words=_words)
        self._session: str | None = None
        self._login = asyncio.Lock()

    async def find(self, key: str) -> str | None:
        search = {f"DynamicField_{self.route.key_field}": {"Equals": key},
                  "SortBy": "Age", "OrderBy": "Down", "Limit": SEARCH_LIMIT}
        answer = await self._call("TicketSearch", "POST", self.route.search_path, search)
        ids = _ids(answer)
        if not ids:
            return None
        tickets = await self._tickets(",".join(ids))
        found: list[str] = []
        for ticket in tickets:
            values = _field_values(ticket, self.route.key_field)
            if not values:
                # A ticket with the field empty matched: Znuny dropped the condition.
                raise TicketError(
                    f"Znuny's TicketSearch ignored the dynamic field {self.route.key_field!r} "
                    "(the route's key_field): is it a valid ticket field?", permanent=True)
            ref = ticket.ref("TicketID")
            if key in values and ref is not None and ref.isascii() and ref.isdigit():
                found.append(ref)
        return max(found, key=int, default=None)  # ids grow: the newest is the largest

    async def open_tickets(self, prefix: str) -> list[tuple[str, str]] | None:
        field = self.route.key_field
        # Like's * is a wildcard, and the database's LIKE may treat more as one: the prefix is
        # checked here, on each ticket read back.
        search = {f"DynamicField_{field}": {"Like": prefix + "*"}, "StateType": OPEN_TYPES,
                  "SortBy": "Age", "OrderBy": "Up", "Limit": OPEN_LIMIT}
        ids = _ids(await self._call("TicketSearch", "POST", self.route.search_path, search))
        if not ids:
            return []
        tickets: list[tuple[str, str]] = []
        for ticket in await self._tickets(",".join(ids)):
            ref = ticket.ref("TicketID")
            if ref is None or ticket.text("StateType") in CLOSED_TYPES:
                continue
            tickets += [(key, ref) for key in _field_values(ticket, field)
                        if key.startswith(prefix)]
        return tickets

    async def open(self, ticket: base.Ticket) -> str:
        route = self.route
        fields: dict[str, Any] = {
            "Title": _cut(" ".join(ticket.title.split()), TITLE_CHARS),
            "Queue": route.queue,
            "State": route.open_state,
            "Priority": route.priorities[ticket.priority],
            "CustomerUser": route.customer_user,
        }
        if route.ticket_type:
            fields["Type"] = route.ticket_type
        data = {
            "Ticket": fields,
            "Article": _article(fields["Title"], ticket.body),
            "DynamicField": [{"Name": route.key_field, "Value": ticket.key}],
        }
        answer = await self._call("TicketCreate", "POST", "/Ticket", data)
        ticket_id = answer.ref("TicketID")
        if not ticket_id:
            raise TicketError("POST /Ticket: Znuny answered without a TicketID")
        return ticket_id

    async def note(self, ref: str, text: str) -> None:
        await self._update(ref, {"Article": _article("Note from probe", text)})

    async def resolve(self, ref: str, text: str) -> None:
        ticket = await self._ticket(ref)
        if ticket is None or ticket.text("StateType") in ("merged", "removed"):
            return  # nothing left to resolve
        if ticket.text("StateType") == "closed":
            await self.note(ref, text)  # closed already, by a person or an earlier try
            return
        state = self.route.resolved_state
        await self._update(ref, {"Ticket": {"State": state},
                                 "Article": _article("Resolved by probe", text)},
                           setting=f"resolved_state {state!r}")

    async def reopen(self, ref: str, text: str) -> None:
        ticket = await self._ticket(ref)
        if ticket is None:
            raise TicketError(f"Znuny ticket {ref} no longer exists (or this user may not "
                              "see it)", permanent=True)
        kind = ticket.text("StateType")
        if kind in ("merged", "removed"):
            raise TicketError(
                f"Znuny does not reopen ticket {_number(ticket, ref)}: it is {kind}. Set "
                "on_human_close: new to get a new ticket instead", permanent=True)
        if kind != "closed":
            await self.note(ref, text)  # someone reopened it already
            return
        state = self.route.reopened_state
        await self._update(ref, {"Ticket": {"State": state},
                                 "Article": _article("Reopened by probe", text)},
                           setting=f"reopened_state {state!r}")

    async def status(self, ref: str) -> TicketState:
        ticket = await self._ticket(ref)
        if ticket is None:
            return "gone"
        kind = ticket.text("StateType")
        if kind in CLOSED_TYPES:
            return "closed"
        owner = ticket.text("Owner")
        if (ticket.text("Lock") in ("lock", "tmp_lock") or kind in WORKED_TYPES
                or (owner and owner != self.route.user)):
            return "acknowledged"
        return "open"

    async def close(self) -> None:
        await self._http.close()

    # --- helpers -------------------------------------------------------------------------------

    async def _ticket(self, ref: str) -> Fields | None:
        try:
            tickets = await self._tickets(_ticket_id(ref))
        except ZnunyError as err:
            if err.code in GONE:
                return None
            raise
        if len(tickets) != 1:
            raise TicketError(f"GET /Ticket/{ref}: Znuny answered {len(tickets)} tickets")
        return tickets[0]

    async def _tickets(self, ids: str) -> list[Fields]:
        answer = await self._call("TicketGet", "GET", f"/Ticket/{ids}", {"DynamicFields": "1"})
        return answer.objects("Ticket")

    async def _update(self, ref: str, change: dict[str, Any], setting: str = "") -> None:
        try:
            await self._call("TicketUpdate", "PATCH", f"/Ticket/{_ticket_id(ref)}", change)
        except TicketError as err:
            if err.permanent and setting:
                raise TicketError(f"{err.message} (with the route's {setting})",
                                  permanent=True) from None
            raise

    async def _call(self, operation: str, method: str, path: str, data: dict[str, Any]
                    ) -> Fields:
        """One operation, with the session; a session that ended is created again once."""
        for attempt in (1, 2):
            session = await self._session_id()
            response = await self._send(operation, method, path, {**data, "SessionID": session})
            try:
                return _answer(response)
            except ZnunyError as err:
                if not err.code.endswith(".AuthFail") or attempt == 2:
                    raise
                async with self._login:
                    if self._session == session:
                        self._session = None  # ended: log in again
        raise AssertionError("unreachable")

    async def _send(self, operation: str, method: str, path: str, data: dict[str, Any]
                    ) -> Response:
        # Znuny reads no body from a GET (its bug 14203): a GET's data is its query string.
        if method == "GET":
            response = await self._http.request(method, path, params=data, ok=(500,))
        else:
            response = await self._http.request(method, path, json_body=data, ok=(500,))
        if response.status == 500:
            detail = helpdesk_message(response.text)
            if "determine Operation" in detail:  # no route of the web service matched
                setting = " (the route's search_path)" if operation == "TicketSearch" else ""
                raise TicketError(
                    f"{response.what}: Znuny's web service maps no operation to {method} "
                    f"{path}{setting}: map {operation} to it", permanent=True)
            raise TicketError(f"{response.what}: HTTP 500: {detail}")
        return response

    async def _session_id(self) -> str:
        async with self._login:
            if self._session is None:
                login = {"UserLogin": self.route.user,
                         "Password": reveal(self.route, "password")}
                response = await self._send("SessionCreate", "POST", "/Session", login)
                try:
                    session = _answer(response).text("SessionID")
                except ZnunyError as err:
                    raise TicketError(f"{err.message} (logging in as the route's user "
                                      f"{self.route.user!r})", permanent=True) from None
                if not session:
                    raise TicketError("POST /Session: Znuny answered without a SessionID")
                self._session = session
            return self._session


class ZnunyError(TicketError):
    """An operation's {"Error": ...}: Znuny refused, and says why."""

    def __init__(self, what: str, code: str, message: str) -> None:
        super().__init__(f"{what}: {code}: {message}", permanent=True, refused=True)
        self.code = code


def _answer(response: Response) -> Fields:
    """The operation's data, or its error as a ZnunyError (Znuny sends errors with HTTP 200)."""
    answer = response.fields()
    error = answer.object("Error")
    if error is None:
        return answer
    return_code = error.text("ErrorCode") or "?"
    raise ZnunyError(response.what, return_code, error.text("ErrorMessage") or "")


def _words(data: dict[str, Any]) -> str:
    error = data.get("Error")
    if isinstance(error, dict):
        return " ".join(str(error.get(k) or "") for k in ("ErrorCode", "ErrorMessage")).strip()
    return ""


def _ids(answer: Fields) -> list[str]:
    """TicketSearch's TicketID: a list of ids (numbers or strings of digits), or one id;
    absent when nothing matches."""
    value = answer.get("TicketID")
    items = [] if value is None else value if isinstance(value, list) else [value]
    ids = []
    for i, item in enumerate(items):
        text = str(item) if isinstance(item, int | str) and not isinstance(item, bool) else ""
        if not (text.isascii() and text.isdigit()):
            raise shape_error("GET /Ticket", f"TicketID[{i}]", "a TicketID", item)
        ids.append(text)
    return ids


def _ticket_id(ref: str) -> str:
    if not ref.isascii() or not ref.isdigit() or ref.startswith("0"):
        raise TicketError(f"{ref!r} is not a Znuny TicketID", permanent=True)
    return ref


def _field_values(ticket: Fields, name: str) -> list[str]:
    """The values of dynamic field `name` on `ticket`: a Text field's one, a multiselect's
    several."""
    values: list[str] = []
    for field in ticket.objects("DynamicField"):
        if field.get("Name") != name:
            continue
        value = field.get("Value")
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item:
                values.append(item)
    return values


def _number(ticket: Fields, ref: str) -> str:
    return ticket.ref("TicketNumber") or ref


def _article(subject: str, body: str) -> dict[str, Any]:
    # Internal and not visible: agents read it, the customer user is never mailed. Sender
    # "system": written by a program, not by the agent whose login probe uses.
    return {"CommunicationChannel": "Internal", "IsVisibleForCustomer": 0,
            "SenderType": "system", "Subject": subject, "Body": body,
            "ContentType": CONTENT_TYPE}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


HELPDESK = base.Helpdesk(route=Route, backend=Backend)
