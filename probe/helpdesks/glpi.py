"""The glpi backend: GLPI tickets, through the legacy REST API (`<url>/apirest.php`).

GLPI facts it relies on (from GLPI's apirest.md, and its source where that says more: the
API's errors, ITILFollowup, the ticket's fields):
- A session first: GET /initSession with `Authorization: user_token <token>` (the user's
  "API token") answers {"session_token": ...}; every other call carries `Session-Token`. Where
  the API client is set up with an application token, every call also carries `App-Token`
  (without it: 400 ERROR_APP_TOKEN_PARAMETERS_MISSING). A session expires on the server after
  a while, or is killed: then a call answers 401 ERROR_SESSION_TOKEN_INVALID, and the backend
  opens a new session once and sends the call again. close() ends the session (killSession).
- Errors are a JSON list, ["ERROR_CODE", "message"]; a 401 is also ERROR_RIGHT_MISSING or a
  bad user token (ERROR_GLPI_LOGIN_USER_TOKEN), which no new session mends.
- POST /Ticket {"input": {name, content, type: 1 (incident), urgency, impact, externalid,
  entities_id, itilcategories_id, _groups_id_assign}} answers 201 {"id": N}; GLPI derives the
  priority from urgency and impact (1 very low to 5 very high) with its priority matrix.
  Content is rich text (HTML): probe's text goes as escaped text in <pre>.
- The incident key goes where the route's `key_in` says. `externalid` (the default): the
  ticket's External ID (255 characters: a longer key is stored as its hash). GLPI drops input
  fields it does not know without a word, and GLPI 10.0's tickets have no externalid (it came
  with GLPI 11): open() reads the ticket back and refuses, naming the cause and `key_in:
  title`, a GLPI that did not keep the key. `title`: the key ends the ticket's name as a
  subject token, `TITLE [probe:KEY]`, the title cut to leave it room in the name's 255
  characters (counted as GLPI 10.0 stores them: <, > and & as five-character HTML entities);
  a key that would leave the title under TITLE_ROOM characters goes as its hash. open() reads
  the name back to check the token was kept whole.
- The API takes no idempotency key and neither externalid nor a name is unique: a retry of
  unknown outcome asks find() first. GET /Ticket?searchText[externalid]=^KEY$ (or
  searchText[name]=[probe:KEY]$) lists tickets whose field is LIKE the value ("^" and "$"
  anchor it; "%" stays a wildcard, "_" too where the GLPI version does not escape it, and the
  collation ignores case), so every row is checked to carry the key exactly; tickets in the
  trash are left out. (GET /search/Ticket
  would need the search option of externalid, which only recent GLPI versions declare.)
  open_tickets() asks the same with the agent's prefix, once for each status that is not
  solved or closed.
- GLPI itself sends no rate limit; a proxy's 429 or 503, with Retry-After, is retried then.
- Followups: POST /ITILFollowup {"input": {itemtype: "Ticket", items_id, content, is_private:
  1}}: private followups are seen by technicians only (and a public one may assign probe's
  user to the ticket, where its preferences say "followup assigns me"). GLPI refuses a
  followup on a closed ticket, and one on a solved ticket from its requester (probe's user,
  who opened it) reopens it: note() leaves solved and closed tickets alone, with a permanent
  error that says why, so that a human's solve stays theirs until on_human_close decides.
- Solving: POST /ITILSolution {"input": {itemtype, items_id, content}} sets status 5 (or 6
  where the entity closes solved tickets at once). A ticket with a solution pending takes no
  other. Reopening a solved ticket is PUT /Ticket/{id} {"input": {status: 1}} (GLPI makes it
  2 when a technician is assigned); probe takes Closed as final, as GLPI's form does for most
  profiles: reopen() then fails for good, saying to use on_human_close: new.
- Statuses: 1 new, 2 processing (assigned), 3 processing (planned), 4 pending, 5 solved,
  6 closed. GLPI sets 2 by itself as soon as a group or a technician is assigned, so a ticket
  assigned to the route's own group is in 2 with nobody on it. The ticket's actors are
  GET /Ticket/{id}/Ticket_User (type 1 requester, 2 assigned technician, 3 observer).
- GLPI 11 also has a new high-level API (api.php, version 2, with OAuth 2); this backend
  speaks apirest.php, which GLPI 10 and 11 both serve.

status(): 5 and 6 are "closed"; 3 and 4 (a human planned it or set it pending), an assigned
technician, or 2 on a route that assigns no group, are "acknowledged"; else "open". A ticket
that is not found, or is in the trash, is "gone".
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import html
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from probe.helpdesks import base
from probe.helpdesks.base import (
    BaseUrl,
    PriorityMap,
    RouteBase,
    TicketError,
    TicketState,
    reveal,
)
from probe.helpdesks.http import Fields, Http, Response, helpdesk_message
from probe.secrets import EnvRef

NEW, ASSIGNED, PLANNED, WAITING, SOLVED, CLOSED = 1, 2, 3, 4, 5, 6
STATUSES = {NEW: "New", ASSIGNED: "Processing (assigned)", PLANNED: "Processing (planned)",
            WAITING: "Pending", SOLVED: "Solved", CLOSED: "Closed"}
INCIDENT = 1  # Ticket.type: 1 incident, 2 request
TECHNICIAN = 2  # Ticket_User.type: 1 requester, 2 assigned, 3 observer
EXTERNALID_CHARS = 255
NAME_CHARS = 255
TITLE_ROOM = 40  # of the name, kept for the title: a ticket list shows the name, not the key
LISTED = 1000  # open tickets of one status open_tickets() reads: far more than an agent keeps
SESSION_EXPIRED = "ERROR_SESSION_TOKEN_INVALID"
Level = Annotated[int, Field(ge=1, le=5)]  # GLPI's urgency and impact: 1 very low, 5 very high


class Route(RouteBase):
    backend: Literal["glpi"]
    url: BaseUrl  # GLPI itself (https://glpi.example.com); the API is <url>/apirest.php
    user_token: EnvRef | None = None
    user_token_file: Path | None = None
    app_token: EnvRef | None = None  # where GLPI's API client is set up with one
    app_token_file: Path | None = None
    entities_id: int | None = None
    group_id: int | None = None  # the group assigned to each ticket
    category_id: int | None = None  # itilcategories_id
    urgency: PriorityMap[Level] = {"urgent": 5, "high": 4, "normal": 3, "low": 2}
    impact: PriorityMap[Level] = {"urgent": 4, "high": 3, "normal": 3, "low": 2}
    key_in: Literal["externalid", "title"] = "externalid"  # title: GLPI 10.0, no externalid

    secrets: ClassVar[dict[str, bool]] = {"user_token": True, "app_token": False}

    def link(self, ref: str) -> str | None:
        return f"{self.url}/front/ticket.form.php?id={ref}" if ref.isdigit() else None


@dataclass(frozen=True, slots=True)
class GlpiTicket:
    """What probe reads of a ticket."""

    status: int
    name: str
    key: str | None  # as the route keeps it: in externalid, or in the token ending the name

    def described(self) -> str:
        return f"{STATUSES.get(self.status, 'status')} ({self.status})"


class Backend(base.Backend[Route]):
    def __init__(self, name: str, route: Route, *, database: Path | None = None) -> None:
        super().__init__(name, route, database=database)
        self._http = Http(route, route.url + "/apirest.php",
                          headers={"Accept": "application/json"})
        self._token: str | None = None
        self._login = asyncio.Lock()  # one initSession at a time for the route's shared client
        self._in_title = route.key_in == "title"
        self._search = "searchText[name]" if self._in_title else "searchText[externalid]"

    async def find(self, key: str) -> str | None:
        stored = self._stored(key)
        wanted = f"{token(stored)}$" if self._in_title else f"^{stored}$"
        params = {self._search: wanted, "range": "0-199", "get_hateoas": "false",
                  "is_deleted": "false"}
        response = await self._call("GET", "/Ticket", params=params)
        ids = [ticket_id for row in _rows(response)
               if self._key(row) == stored and not row.number("is_deleted")
               and (ticket_id := row.number("id"))]
        return str(max(ids)) if ids else None

    async def open_tickets(self, prefix: str) -> list[tuple[str, str]] | None:
        tickets: list[tuple[str, str]] = []
        for status in (NEW, ASSIGNED, PLANNED, WAITING):  # searchText cannot say "not solved"
            params = {self._search: token(prefix)[:-1] if self._in_title else f"^{prefix}",
                      "searchText[status]": f"^{status}$", "range": f"0-{LISTED - 1}",
                      "get_hateoas": "false"}
            for row in _rows(await self._call("GET", "/Ticket", params=params)):
                key, ticket_id = self._key(row), row.number("id")
                # searchText is a LIKE: "_" in the prefix matches any character, in any case
                if key and key.startswith(prefix) and ticket_id and row.get("status") == status:
                    tickets.append((key, str(ticket_id)))
        return sorted(tickets, key=lambda found: int(found[1]))

    async def open(self, ticket: base.Ticket) -> str:
        route = self.route
        stored, title = self._stored(ticket.key), " ".join(ticket.title.split())
        if self._in_title:
            title = f"{_cut(title, NAME_CHARS - len(token(stored)) - 1)} {token(stored)}"
        fields: dict[str, Any] = {
            "name": _cut(title, NAME_CHARS),
            "content": _rich(ticket.body),
            "type": INCIDENT,
            "urgency": route.urgency[ticket.priority],
            "impact": route.impact[ticket.priority],
        }
        if not self._in_title:
            fields["externalid"] = stored
        for name, value in (("entities_id", route.entities_id),
                            ("itilcategories_id", route.category_id),
                            ("_groups_id_assign", route.group_id)):
            if value is not None:
                fields[name] = value
        response = await self._call("POST", "/Ticket", json_body={"input": fields})
        created = response.fields().number("id")
        if not created:
            raise TicketError(f"{response.what}: HTTP {response.status} without a ticket id")
        ref = str(created)
        kept = await self._ticket(ref)
        if kept is not None and kept.key != stored:
            if self._in_title:
                raise TicketError(
                    f"GLPI ticket {ref} was created without the incident key at the end of its "
                    f"name (GLPI kept {kept.name!r}), and probe could not find the ticket again",
                    permanent=True)
            raise TicketError(
                f"GLPI ticket {ref} was created without the incident key in its External ID "
                "(externalid): this GLPI has no such ticket field (GLPI 10.0 has none; GLPI 11 "
                "has it), and probe could not find the ticket again. Set key_in: title on the "
                "route to keep the key in the ticket's name", permanent=True)
        return ref

    async def note(self, ref: str, text: str) -> None:
        ticket = await self._existing(ref)
        if ticket.status in (SOLVED, CLOSED):
            raise TicketError(f"GLPI ticket {ref} is {ticket.described()}: GLPI takes no "
                              "followup on it until it is reopened", permanent=True)
        await self._followup(ref, text)

    async def resolve(self, ref: str, text: str) -> None:
        ticket = await self._ticket(ref)
        if ticket is None or ticket.status in (SOLVED, CLOSED):
            return  # gone, or solved already: GLPI takes neither a second solution nor a note
        solution = {"itemtype": "Ticket", "items_id": int(ref), "content": _rich(text)}
        await self._call("POST", "/ITILSolution", json_body={"input": solution})

    async def reopen(self, ref: str, text: str) -> None:
        ticket = await self._existing(ref)
        if ticket.status == CLOSED:
            raise TicketError(
                f"GLPI does not reopen ticket {ref}: it is {ticket.described()}, and closed "
                "tickets stay closed. Set on_human_close: new to get a new ticket instead",
                permanent=True)
        if ticket.status == SOLVED:
            await self._call("PUT", ticket_path(ref), json_body={"input": {"status": NEW}})
            now = await self._existing(ref)
            if now.status in (SOLVED, CLOSED):
                raise TicketError(f"GLPI left ticket {ref} {now.described()}, not reopened: "
                                  "may the route's user change a ticket's status?", permanent=True)
        await self._followup(ref, text)  # someone reopened it already, or probe just did

    async def status(self, ref: str) -> TicketState:
        ticket = await self._ticket(ref)
        if ticket is None:
            return "gone"
        if ticket.status in (SOLVED, CLOSED):
            return "closed"
        if ticket.status in (PLANNED, WAITING):
            return "acknowledged"
        if ticket.status == ASSIGNED and self.route.group_id is None:
            return "acknowledged"  # nothing of probe's assigned it: a human did
        response = await self._call("GET", f"{ticket_path(ref)}/Ticket_User",
                                    params={"get_hateoas": "false"})
        if any(actor.number("type") == TECHNICIAN for actor in _rows(response)):
            return "acknowledged"
        return "open"

    async def close(self) -> None:
        token, self._token = self._token, None
        try:
            if token is not None:  # the session would otherwise live on in GLPI until it expires
                await self._http.request("GET", "/killSession", headers=self._headers(token))
        except TicketError:
            pass  # gone already, or GLPI unreachable: it expires there in the end
        finally:
            await self._http.close()

    # --- helpers -------------------------------------------------------------------------------

    def _stored(self, key: str) -> str:
        """The key as the route stores it: whole where it fits, else its hash."""
        if not self._in_title:
            return hashed(key, EXTERNALID_CHARS)
        return hashed(key, NAME_CHARS - TITLE_ROOM - len(token("")) - 1)

    def _key(self, ticket: Fields) -> str | None:
        """The key a ticket carries where the route keeps it (as stored: maybe a hash)."""
        if not self._in_title:
            return ticket.text("externalid")
        name = ticket.text("name") or ""
        start = name.rfind("[probe:")  # no check or service name holds "[", nor a hash
        return name[start + len("[probe:"):-1] if start >= 0 and name.endswith("]") else None

    async def _followup(self, ref: str, text: str) -> None:
        followup = {"itemtype": "Ticket", "items_id": int(ref), "content": _rich(text),
                    "is_private": 1}
        await self._call("POST", "/ITILFollowup", json_body={"input": followup})

    async def _existing(self, ref: str) -> GlpiTicket:
        ticket = await self._ticket(ref)
        if ticket is None:
            raise TicketError(f"GLPI ticket {ref} no longer exists", permanent=True)
        return ticket

    async def _ticket(self, ref: str) -> GlpiTicket | None:
        response = await self._call("GET", ticket_path(ref), params={"get_hateoas": "false"},
                                    ok=(404,))
        if response.status == 404:
            return None
        fields = response.fields()
        status = fields.number("status")
        if status is None:
            raise TicketError(f"{response.what}: HTTP {response.status} without a status")
        if fields.number("is_deleted"):
            return None  # in the trash: what a person sees as deleted
        return GlpiTicket(status=status, name=fields.text("name") or "", key=self._key(fields))

    async def _call(self, method: str, path: str, *, ok: tuple[int, ...] = (),
                    **kwargs: Any) -> Response:
        """One API call in the session, opening a new session once if GLPI ended it."""
        for attempt in (1, 2):
            token = await self._session()
            response = await self._http.request(method, path, headers=self._headers(token),
                                                ok=(401, *ok), **kwargs)
            if response.status != 401:
                return response
            expired = _code(response.text) == SESSION_EXPIRED
            if expired and self._token == token:  # not renewed by another call meanwhile
                self._token = None
            if not expired or attempt == 2:
                # A bad token, a missing right: no new session mends those. A session that
                # GLPI ends again at once is retried later.
                raise TicketError(f"{response.what}: HTTP 401: "
                                  f"{helpdesk_message(response.text)}",
                                  permanent=not expired, refused=True)
        raise AssertionError("unreachable")

    async def _session(self) -> str:
        async with self._login:
            if self._token is None:
                user = reveal(self.route, "user_token")
                headers = {**self._headers(None), "Authorization": f"user_token {user}"}
                response = await self._http.request("GET", "/initSession", headers=headers)
                token = response.fields().text("session_token")
                if not token:
                    raise TicketError(f"{response.what}: HTTP {response.status} without a "
                                      "session_token")
                self._token = token
            return self._token

    def _headers(self, token: str | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if token is not None:
            headers["Session-Token"] = token
        if self.route.has_secret("app_token"):
            headers["App-Token"] = reveal(self.route, "app_token")
        return headers


def hashed(key: str, limit: int) -> str:
    """The key whole where it fits in `limit` characters, else its hash."""
    if len(key) <= limit:
        return key
    return "probe-sha256:" + hashlib.sha256(key.encode()).hexdigest()


def token(key: str) -> str:
    """The subject token that ends a ticket's name on a `key_in: title` route."""
    return f"[probe:{key}]"


def ticket_path(ref: str) -> str:
    if not ref.isdigit():
        raise TicketError(f"{ref!r} is not a GLPI ticket id", permanent=True)
    return f"/Ticket/{ref}"


def _rows(response: Response) -> list[Fields]:
    """A list answer; an empty one may come as {} (PHP's empty array)."""
    return [] if response.json() == {} else response.items()


def _code(text: str) -> str | None:
    """GLPI's error code: the first item of its ["ERROR_...", "message"] body."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, list) and data and isinstance(data[0], str):
        return data[0]
    return None


def _rich(text: str) -> str:
    """Plain text as GLPI's rich text shows it: escaped, lines kept."""
    return f"<pre>{html.escape(text, quote=False)}</pre>"


def _cut(text: str, limit: int) -> str:
    """The text in `limit` characters as GLPI 10.0 stores them, with an ellipsis if cut: it
    writes <, > and & as HTML entities (&#60;), and a name too long for its column is refused
    or cut short, which would cut off the key's token."""
    totals = list(itertools.accumulate(5 if char in "<>&" else 1 for char in text))
    if not totals or totals[-1] <= limit:
        return text
    return text[:bisect.bisect_right(totals, limit - 1)] + "…"


HELPDESK = base.Helpdesk(route=Route, backend=Backend)
