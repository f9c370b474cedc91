"""A Znuny on loopback for the tests: the GenericInterface ticket connector over REST, with the
routes of Znuny's example web service GenericTicketConnectorREST (SessionCreate, TicketCreate,
TicketSearch on GET /Ticket, TicketGet, TicketUpdate) and TicketSearch on POST /TicketSearch,
which the backend needs. Its tickets, articles and sessions are plain dicts, so that a test
asserts what the helpdesk holds.

It keeps Znuny's traps: an operation's error is HTTP 200 with {"Error": {ErrorCode,
ErrorMessage}}; a GET's body is not read; a path no route matches is HTTP 500; a session ends
when a test says so (`end_sessions`), and the next call with it answers <Operation>.AuthFail;
TicketSearch drops a condition on a dynamic field it does not know, or one that is no object
(matching every ticket), its Equals and Like follow a case-insensitive collation, as on MySQL,
and Like takes _ and % as the database's wildcards; a
ticket that does not exist answers TicketGet.AccessDenied, as one this user may not see; an
article on a closed ticket leaves it closed. `faults` lets a test make it fail or stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from tests.harness.fakes import Fault, Faults
from tests.harness.httpserver import serve_app

USER, PASSWORD = "probe", "znuny-password"
AGENT = "alice"  # a person working tickets
KEY_FIELD = "ProbeIncidentKey"
QUEUE, CUSTOMER_USER = "Monitoring", "monitoring@example.com"
BASE = "/otrs/nph-genericinterface.pl/Webservice/GenericTicketConnectorREST"
STATES = {"new": "new", "open": "open", "pending reminder": "pending reminder",
          "pending auto close+": "pending auto", "closed successful": "closed",
          "closed unsuccessful": "closed", "merged": "merged", "removed": "removed"}
PRIORITIES = ("1 very low", "2 low", "3 normal", "4 high", "5 very high")
TYPES = ("Unclassified", "Incident", "Problem")
DYNAMIC_FIELD = re.compile(r"DynamicField_([A-Za-z0-9]+)")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refused(Exception):
    """What an operation answers as its Error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class FakeZnuny:
    def __init__(self) -> None:
        self.url = ""
        self.users = {USER: PASSWORD, AGENT: "alice-password"}
        self.sessions: dict[str, str] = {}  # SessionID -> UserLogin
        self.dynamic_fields = {KEY_FIELD, "CostCenter"}  # the valid ticket fields
        self.tickets: dict[int, dict[str, Any]] = {}
        self.articles: dict[int, list[dict[str, Any]]] = {}
        self.faults = Faults()
        self.seen: list[tuple[str, str, str]] = []  # method, path, ErrorCode or ""
        self.logins = 0
        self._article_ids = 0

    # --- what a test does to the helpdesk ------------------------------------------------------

    def only(self) -> dict[str, Any]:
        (ticket,) = self.tickets.values()
        return ticket

    def notes(self, ticket_id: int) -> list[dict[str, Any]]:
        """The articles after the one the ticket was opened with."""
        return self.articles[ticket_id][1:]

    def end_sessions(self) -> None:
        """Every session ends (their maximum time, a restart): the next calls are AuthFail."""
        self.sessions.clear()

    def set_state(self, ticket_id: int, state: str) -> None:
        """A person sets the state (closes, reopens, merges)."""
        self.tickets[ticket_id].update(State=state, StateType=STATES[state])

    def fail(self, method: str, path: str, status: int = 503, **kwargs: Any) -> None:
        """The next request of `method` to a path `path` (a regular expression, after the web
        service's base) matches answers `status`, or stalls: see fakes.Fault."""
        self.faults.add(Fault(method, BASE + path, status, **kwargs))

    def add_ticket(self, key: str | None = None, **values: Any) -> int:
        """A ticket someone else opened (with the key field set to `key`, or empty)."""
        fields = {KEY_FIELD: key} if key is not None else {}
        return self._insert(AGENT, {"Title": "someone else's ticket", "Queue": QUEUE,
                                    "State": "new", "Priority": "3 normal", **values},
                            {"Subject": "hello", "Body": "hello"}, fields)

    # --- the API -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._faults])
        app.router.add_post(BASE + "/Session", self.session_create)
        app.router.add_post(BASE + "/Ticket", self.ticket_create)
        app.router.add_get(BASE + "/Ticket", self.ticket_search)  # the example's route
        app.router.add_post(BASE + "/TicketSearch", self.ticket_search)  # the one probe needs
        app.router.add_get(BASE + "/Ticket/{ids}", self.ticket_get)
        app.router.add_patch(BASE + "/Ticket/{id}", self.ticket_update)
        app.router.add_route("*", BASE + "/{tail:.*}", self.no_operation)
        return app

    async def no_operation(self, request: web.Request) -> web.Response:
        """What Znuny's REST transport answers when no route of the web service matches."""
        uri = request.path.removeprefix(BASE)
        self.seen.append((request.method, request.path, "500"))
        return web.Response(status=500, text=f"HTTP::REST Error while determine Operation for "
                                             f"request URI '{uri}'.")

    @web.middleware
    async def _faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = self.faults.take(request)
        if fault is not None and not fault.stall:
            self.seen.append((request.method, request.path, str(fault.status)))
            return fault.response()
        response = await handler(request)
        if fault is not None:
            await asyncio.sleep(fault.stall)  # done, but the client hears nothing in time
        return response

    async def _data(self, request: web.Request) -> dict[str, Any]:
        """The operation's data: the query string and the JSON body, as Znuny's REST
        transport merges them. It reads no body from a GET (Znuny's bug 14203)."""
        data: dict[str, Any] = dict(request.query)
        if request.can_read_body and request.method != "GET":
            body = await request.json()
            if isinstance(body, dict):
                data.update(body)
        return data

    def _auth(self, operation: str, data: dict[str, Any]) -> str:
        session = data.get("SessionID")
        if isinstance(session, str) and session in self.sessions:
            return self.sessions[session]
        login, password = data.get("UserLogin"), data.get("Password")
        if session is None and login in self.users and self.users[login] == password:
            return str(login)
        raise Refused(f"{operation}.AuthFail", f"{operation}: Authorization failing!")

    def _answer(self, request: web.Request, operation: Callable[[], dict[str, Any]]
                ) -> web.Response:
        try:
            data = operation()
            code = ""
        except Refused as refused:
            data = {"Error": {"ErrorCode": refused.code, "ErrorMessage": refused.message}}
            code = refused.code
        self.seen.append((request.method, request.path, code))
        return web.json_response(data)  # 200, whatever the operation said

    async def session_create(self, request: web.Request) -> web.Response:
        data = await self._data(request)

        def create() -> dict[str, Any]:
            login, password = data.get("UserLogin"), data.get("Password")
            if login not in self.users or self.users[login] != password:
                raise Refused("SessionCreate.AuthFail", "SessionCreate: Authorization failing!")
            session = uuid.uuid4().hex
            self.sessions[session] = str(login)
            self.logins += 1
            return {"SessionID": session}

        return self._answer(request, create)

    async def ticket_create(self, request: web.Request) -> web.Response:
        data = await self._data(request)

        def create() -> dict[str, Any]:
            user = self._auth("TicketCreate", data)
            ticket, article = data.get("Ticket"), data.get("Article")
            if not isinstance(ticket, dict) or not isinstance(article, dict):
                raise Refused("TicketCreate.MissingParameter",
                              "TicketCreate: Ticket and Article parameters are missing!")
            for name in ("Title", "Queue", "State", "Priority", "CustomerUser"):
                if not ticket.get(name):
                    raise Refused("TicketCreate.MissingParameter",
                                  f"TicketCreate: Ticket->{name} parameter is missing!")
            for name in ("Subject", "Body", "ContentType"):
                if not article.get(name):
                    raise Refused("TicketCreate.MissingParameter",
                                  f"TicketCreate: Article->{name} parameter is missing!")
            fields = {}
            for field in data.get("DynamicField") or []:
                if field.get("Name") not in self.dynamic_fields:
                    raise Refused("TicketCreate.InvalidParameter",
                                  "TicketCreate: DynamicField->Name parameter is invalid!")
                fields[field["Name"]] = field.get("Value")
            ticket_id = self._insert(user, ticket, article, fields)
            return {"TicketID": str(ticket_id), "ArticleID": str(self._article_ids),
                    "TicketNumber": self.tickets[ticket_id]["TicketNumber"]}

        return self._answer(request, create)

    async def ticket_search(self, request: web.Request) -> web.Response:
        data = await self._data(request)

        def search() -> dict[str, Any]:
            self._auth("TicketSearch", data)
            found = sorted(self.tickets.values(), key=lambda t: t["TicketID"], reverse=True)
            for name, condition in data.items():
                match = DYNAMIC_FIELD.fullmatch(name)
                if match is None or match[1] not in self.dynamic_fields:
                    continue  # a field Znuny does not know: the condition is dropped
                if not isinstance(condition, dict):
                    continue  # only an object is a condition: a flat value is dropped
                values = {t["TicketID"]: str(t["DynamicFields"].get(match[1]) or "").casefold()
                          for t in found}  # compared as the database's collation does
                if "Equals" in condition:
                    wanted = str(condition["Equals"]).casefold()
                    found = [t for t in found if values[t["TicketID"]] == wanted]
                if "Like" in condition:
                    # Znuny's * becomes SQL's %; _ and % stay the database's wildcards
                    like = "".join({"*": ".*", "%": ".*", "_": "."}.get(c, re.escape(c))
                                   for c in str(condition["Like"]).casefold())
                    found = [t for t in found if re.fullmatch(like, values[t["TicketID"]])]
            state_types = data.get("StateType")
            if state_types is not None:
                kinds = state_types if isinstance(state_types, list) else [state_types]
                found = [t for t in found if t["StateType"] in kinds]
            if data.get("OrderBy") == "Up":
                found.reverse()
            found = found[: int(data.get("Limit") or 500)]
            return {"TicketID": [str(t["TicketID"]) for t in found]} if found else {}

        return self._answer(request, search)

    async def ticket_get(self, request: web.Request) -> web.Response:
        data = await self._data(request)

        def get() -> dict[str, Any]:
            self._auth("TicketGet", data)
            ids = request.match_info["ids"].split(",")
            if not all(re.fullmatch(r"[1-9]\d*", i) for i in ids):
                raise Refused("TicketGet.WrongStructure",
                              "TicketGet: Invalid ticket ID parameter(s) found!")
            if any(int(i) not in self.tickets for i in ids):
                raise Refused("TicketGet.AccessDenied",
                              "TicketGet: User does not have access to the ticket!")
            with_fields = str(data.get("DynamicFields")) == "1"
            return {"Ticket": [self._shown(self.tickets[int(i)], with_fields) for i in ids]}

        return self._answer(request, get)

    async def ticket_update(self, request: web.Request) -> web.Response:
        data = await self._data(request)

        def update() -> dict[str, Any]:
            self._auth("TicketUpdate", data)
            ticket_id = int(request.match_info["id"]) if request.match_info["id"].isdigit() else 0
            ticket = self.tickets.get(ticket_id)
            if ticket is None:
                raise Refused("TicketUpdate.AccessDenied",
                              "TicketUpdate: User does not have access to the ticket!")
            change, article = data.get("Ticket") or {}, data.get("Article")
            state = change.get("State")
            if state is not None and state not in STATES:
                raise Refused("TicketUpdate.InvalidParameter",
                              "TicketUpdate: Ticket->State parameter is invalid!")
            if state is None and article is None:
                raise Refused("TicketUpdate.MissingParameter",
                              "TicketUpdate: Ticket or Article or DynamicField or Attachment "
                              "is required!")
            if state is not None:
                self.set_state(ticket_id, state)
            answer: dict[str, Any] = {"TicketID": str(ticket_id),
                                      "TicketNumber": ticket["TicketNumber"]}
            if article is not None:
                # An article alone leaves the state as it is: closed stays closed.
                self.articles[ticket_id].append(_article(article))
                self._article_ids += 1
                answer["ArticleID"] = str(self._article_ids)
            return answer

        return self._answer(request, update)

    def _insert(self, user: str, ticket: dict[str, Any], article: dict[str, Any],
                fields: dict[str, Any]) -> int:
        if ticket["Queue"] != QUEUE:
            raise Refused("TicketCreate.InvalidParameter",
                          "TicketCreate: Ticket->Queue parameter is invalid!")
        if ticket["State"] not in STATES:
            raise Refused("TicketCreate.InvalidParameter",
                          "TicketCreate: Ticket->State parameter is invalid!")
        if ticket["Priority"] not in PRIORITIES:
            raise Refused("TicketCreate.InvalidParameter",
                          "TicketCreate: Ticket->Priority parameter is invalid!")
        if ticket.get("Type") is not None and ticket["Type"] not in TYPES:
            raise Refused("TicketCreate.InvalidParameter",
                          "TicketCreate: Ticket->Type parameter is invalid!")
        ticket_id = max(self.tickets, default=0) + 1
        self.tickets[ticket_id] = {
            "TicketID": ticket_id, "TicketNumber": f"20261204{10000 + ticket_id}",
            "Title": ticket["Title"], "Queue": ticket["Queue"], "State": ticket["State"],
            "StateType": STATES[ticket["State"]], "Priority": ticket["Priority"],
            "CustomerUserID": ticket.get("CustomerUser"), "Type": ticket.get("Type"),
            "Lock": "unlock", "Owner": user, "DynamicFields": fields,
        }
        self.articles[ticket_id] = [_article(article)]
        self._article_ids += 1
        return ticket_id

    def _shown(self, ticket: dict[str, Any], with_fields: bool) -> dict[str, Any]:
        shown = {k: (str(v) if k == "TicketID" else v) for k, v in ticket.items()
                 if k != "DynamicFields"}
        if with_fields:  # every valid field, empty ones as null
            shown["DynamicField"] = [{"Name": name, "Value": ticket["DynamicFields"].get(name)}
                                     for name in sorted(self.dynamic_fields)]
        return shown


def _article(article: dict[str, Any]) -> dict[str, Any]:
    return {
        "CommunicationChannel": article.get("CommunicationChannel", "Email"),
        "IsVisibleForCustomer": int(article.get("IsVisibleForCustomer", 1)),
        "SenderType": article.get("SenderType", "agent"),
        "Subject": article.get("Subject"),
        "Body": article.get("Body"),
        "ContentType": article.get("ContentType"),
    }


def kind(article: dict[str, Any]) -> str:
    """An article as an agent sees it in the ticket zoom: "internal note", or its channel and
    who sees it."""
    if article["CommunicationChannel"] == "Internal" and not article["IsVisibleForCustomer"]:
        return "internal note"
    seen = "visible to the customer" if article["IsVisibleForCustomer"] else "agents only"
    return f"{article['CommunicationChannel']} article, {seen}"


@contextlib.asynccontextmanager
async def serve_znuny() -> AsyncIterator[FakeZnuny]:
    znuny = FakeZnuny()
    async with serve_app(znuny.app()) as port:
        znuny.url = f"http://127.0.0.1:{port}{BASE}"
        yield znuny
