"""Every helpdesk backend paired with its peer on loopback, for the contract every backend keeps
(tests/test_helpdesk_contract.py): the backend built as the daemon builds it
(`probe.helpdesks.make_backend` on a validated route), and the ticket read back from the peer's
own records — the fake's tickets and comments, Request Tracker's and Redmine's REST answers, the
mails the SMTP server took, the webhook deliveries, the local backend's tables — never from what
the backend returned.

`serve(name, directory)` starts the peer of helpdesk `name` (Request Tracker and Redmine are the
session's `rt_peer` and `redmine_peer`, passed in) and yields a `Desk`; `Desk.record(ref)` is
that ticket as the helpdesk holds it, in the helpdesk's own words (RT's "Comment", Zendesk's
"solved", ServiceNow's state "6"), so that a table of what each one promises can be checked
against it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import email
import email.policy
import hashlib
import hmac
import html
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from probe.helpdesks import HELPDESKS as BACKENDS
from probe.helpdesks import ROUTES, make_backend
from probe.helpdesks.base import Backend
from probe.helpdesks.github import key_label as github_label
from probe.helpdesks.jira import key_label as jira_label
from probe.helpdesks.zammad import key_tag as zammad_tag
from probe.store import Store
from tests.harness import (
    fake_freshservice,
    fake_github,
    fake_glpi,
    fake_jira,
    fake_pagerduty,
    fake_servicenow,
    fake_topdesk,
    fake_zammad,
    fake_zendesk,
    fake_znuny,
)
from tests.harness.fake_freshdesk import API_KEY, REQUESTER_EMAIL, FakeFreshdesk, serve_freshdesk
from tests.harness.fake_freshdesk import KEY_FIELD as FRESHDESK_KEY_FIELD
from tests.harness.fake_freshservice import FakeFreshservice, serve_freshservice
from tests.harness.fake_github import REPOSITORY, FakeGitHub
from tests.harness.fake_glpi import FakeGlpi, serve_glpi
from tests.harness.fake_jira import FakeJira, serve_jira
from tests.harness.fake_pagerduty import API_TOKEN, ROUTING_KEY, USER_EMAIL, FakePagerDuty
from tests.harness.fake_servicenow import FakeServiceNow, serve_servicenow
from tests.harness.fake_topdesk import FakeTopdesk
from tests.harness.fake_zammad import FakeZammad
from tests.harness.fake_zendesk import FakeZendesk, serve_zendesk
from tests.harness.fake_znuny import FakeZnuny, serve_znuny
from tests.harness.fake_znuny import kind as znuny_kind
from tests.harness.helpdesk import Helpdesk
from tests.harness.httpserver import serve_app
from tests.harness.openapi import github_description, load
from tests.harness.redminepeer import RedmineApi, RedminePeer
from tests.harness.rtpeer import KEY_FIELD as RT_KEY_FIELD
from tests.harness.rtpeer import RtApi, RtPeer

HELPDESKS = tuple(BACKENDS)  # the daemon's map of helpdesks: a new one joins the contract
TIMEOUT = "10s"  # generous: the machine is shared, and RT is slow under load


@dataclass(frozen=True)
class Record:
    """One ticket as the helpdesk itself holds it."""

    keys: frozenset[str]  # what it holds where probe puts the incident key (field, labels, tags)
    priority: str  # its own priority field, as text
    state: str | None  # its own word for the ticket's state; None where it keeps none
    notes: tuple[tuple[str, str], ...]  # (its kind of entry, text) after the opening, in order


class Desk(abc.ABC):
    """A helpdesk's peer and the backends on routes to it; `close` releases them all."""

    name: ClassVar[str]
    unknown_ref: ClassVar[str]  # of the form the backend's refs take, and no ticket's

    def __init__(self, directory: Path, settings: dict[str, Any]) -> None:
        self.directory = directory
        self.settings = {"timeout": TIMEOUT, **settings, "backend": self.name}
        self._made: list[Backend[Any]] = []

    def backend(self, **changes: Any) -> Backend[Any]:
        """A backend on this desk's route (with `changes`), as the daemon makes one: each call
        is a new one, as after a restart."""
        route = ROUTES[self.name].model_validate({**self.settings, **changes})
        made = make_backend("desk", route, database=self.directory / "state" / Store.FILE)
        self._made.append(made)
        return made

    def unreachable(self, port: int) -> Backend[Any]:
        """A backend on this desk's route, pointed at `port` on loopback instead."""
        return self.backend(**self.elsewhere(port))

    def elsewhere(self, port: int) -> dict[str, Any]:
        """The route's settings that point it at `port`."""
        return {"url": f"http://127.0.0.1:{port}"}

    @abc.abstractmethod
    async def record(self, ref: str) -> Record:
        """The ticket `ref` as the helpdesk holds it."""

    @abc.abstractmethod
    async def tickets(self, key: str) -> int:
        """How many tickets the helpdesk holds for `key`, once it dropped what it deduplicates."""

    async def close(self) -> None:
        for made in self._made:
            await made.close()


def _secret(directory: Path, name: str, value: str) -> str:
    path = directory / name
    path.write_text(value + "\n")
    return str(path)


# --- local: probe's own state database --------------------------------------------------------


class LocalDesk(Desk):
    name = "local"
    unknown_ref = "999999"

    def __init__(self, directory: Path) -> None:
        Store(directory / "state").close()  # the daemon's start creates the tables
        super().__init__(directory, {})
        self.helpdesk = Helpdesk(directory / "state" / Store.FILE)

    def elsewhere(self, port: int) -> dict[str, Any]:
        raise AssertionError("the local helpdesk is the state database: it has no address")

    async def record(self, ref: str) -> Record:
        ((key, priority, status),) = self.helpdesk.rows(
            "SELECT key, priority, status FROM local_tickets WHERE id = ?", (int(ref),))
        return Record(frozenset([key]), priority, status, tuple(self.helpdesk.notes(int(ref))))

    async def tickets(self, key: str) -> int:
        return len(self.helpdesk.rows("SELECT id FROM local_tickets WHERE key = ?", (key,)))


# --- webhook: a receiver that checks the signature --------------------------------------------

WEBHOOK_SECRET = "s3cret-shared-with-the-receiver"


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    payload: dict[str, Any]


@dataclass
class Receiver:
    """Takes each POST whose X-Probe-Signature-256 is right, as a careful receiver does."""

    deliveries: list[Delivery] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("X-Probe-Signature-256", "")):
            return web.json_response({"error": "signature does not match"}, status=401)
        self.deliveries.append(Delivery(dict(request.headers), json.loads(raw)))
        return web.Response(status=204)


class WebhookDesk(Desk):
    name = "webhook"
    unknown_ref = "probe-eu-1/no-such-incident/1"  # a webhook's ref is the incident key

    def __init__(self, directory: Path, receiver: Receiver, port: int) -> None:
        super().__init__(directory, {
            "url": f"http://127.0.0.1:{port}/hooks/probe",
            "secret_file": _secret(directory, "hook-secret", WEBHOOK_SECRET)})
        self.receiver = receiver

    def elsewhere(self, port: int) -> dict[str, Any]:
        return {"url": f"http://127.0.0.1:{port}/hooks/probe"}

    def _of(self, key: str) -> list[Delivery]:
        return [d for d in self.receiver.deliveries if d.headers.get("X-Probe-Key") == key]

    async def record(self, ref: str) -> Record:
        deliveries = self._of(ref)
        opening = [d.payload for d in deliveries if d.payload["action"] == "open"]
        return Record(
            frozenset(k for d in deliveries for k in (d.headers["X-Probe-Key"], d.payload["key"])),
            str(opening[0]["priority"]) if opening else "",
            None,
            tuple((d.payload["action"], d.payload["text"]) for d in deliveries
                  if d.payload["action"] != "open"),
        )

    async def tickets(self, key: str) -> int:
        return len({d.headers["Idempotency-Key"] for d in self._of(key)
                    if d.payload["action"] == "open"})


@contextlib.asynccontextmanager
async def _webhook(directory: Path) -> AsyncIterator[Desk]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/probe", receiver.handle)
    async with serve_app(app) as port:
        yield WebhookDesk(directory, receiver, port)


# --- email: an SMTP server ------------------------------------------------------------------


@dataclass
class Mailbox:
    """The mails the SMTP server took. (No properties: aiosmtpd's handler lookup evaluates
    every attribute of its handler.)"""

    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 queued"


class EmailDesk(Desk):
    name = "email"
    # A reference of the form the backend makes, for a thread the helpdesk never saw.
    unknown_ref = json.dumps({"message_id": "<probe.no-such-thread@example.net>",
                              "subject": "shop is down", "key": "probe-eu-1/no-such/1"})

    def __init__(self, directory: Path, mailbox: Mailbox, port: int) -> None:
        super().__init__(directory, {
            "smtp": f"127.0.0.1:{port}", "starttls": False, "from": "probe@example.net",
            "to": ["helpdesk@example.net"]})
        self.mailbox = mailbox

    def elsewhere(self, port: int) -> dict[str, Any]:
        return {"smtp": f"127.0.0.1:{port}"}

    async def record(self, ref: str) -> Record:
        """The thread `ref` names, as a mail client shows it: the mail and the replies to it."""
        thread = json.loads(ref)["message_id"]
        opening = [m for m in self.mailbox.messages if m["Message-ID"] == thread]
        replies = [m for m in self.mailbox.messages
                   if m["In-Reply-To"] == thread and m["References"] == thread]
        return Record(
            frozenset(str(m["X-Probe-Key"]) for m in opening),
            str(opening[0]["X-Priority"]) if opening else "",
            None,
            tuple((str(m["X-Probe-Action"]), _text(m)) for m in replies),
        )

    async def tickets(self, key: str) -> int:
        return len({m["Message-ID"] for m in self.mailbox.messages
                    if m["X-Probe-Key"] == key and m["In-Reply-To"] is None})


def _text(message: EmailMessage) -> str:
    """The body's lines, as a mail client shows them (they travel with CRLF)."""
    content = message.get_content()
    assert isinstance(content, str)
    return "\n".join(content.splitlines()).strip()


@contextlib.asynccontextmanager
async def _email(directory: Path) -> AsyncIterator[Desk]:
    mailbox = Mailbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(mailbox, hostname="mail.test", loop=loop), "127.0.0.1", 0)
    try:
        yield EmailDesk(directory, mailbox, server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


# --- Request Tracker, the real one ----------------------------------------------------------


class RtDesk(Desk):
    name = "rt"
    unknown_ref = "999999999"

    def __init__(self, directory: Path, peer: RtPeer, api: RtApi) -> None:
        super().__init__(directory, {
            "url": peer.url, "token_file": _secret(directory, "rt-token", peer.token),
            "key_field": RT_KEY_FIELD})
        self.api = api

    async def record(self, ref: str) -> Record:
        ticket = await self.api.ticket(ref)
        keys = [value for cf in ticket["CustomFields"] if cf["name"] == RT_KEY_FIELD
                for value in cf["values"]]
        notes = [(kind, text) for kind, text in await self.api.transactions(ref)
                 if kind != "Create"]
        return Record(frozenset(keys), str(ticket["Priority"]), str(ticket["Status"]),
                      tuple(notes))

    async def tickets(self, key: str) -> int:
        found = await self.api.call("GET", "/tickets", query=f"'CF.{{{RT_KEY_FIELD}}}'='{key}'")
        return len(found["items"])


@contextlib.asynccontextmanager
async def _rt(directory: Path, peer: RtPeer) -> AsyncIterator[Desk]:
    headers = {"Authorization": f"token {peer.token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        yield RtDesk(directory, peer, RtApi(peer, session))


# --- Redmine, the real one ----------------------------------------------------------------


class RedmineDesk(Desk):
    name = "redmine"
    unknown_ref = "999999999"

    def __init__(self, directory: Path, peer: RedminePeer, api: RedmineApi) -> None:
        super().__init__(directory, peer.settings(directory))
        self.api = api

    async def record(self, ref: str) -> Record:
        issue = await self.api.issue(ref)
        keys = [cf["value"] for cf in issue["custom_fields"] if cf["id"] == self.api.peer.key_field]
        return Record(frozenset(keys), issue["priority"]["name"], issue["status"]["name"],
                      tuple(await self.api.notes(ref)))

    async def tickets(self, key: str) -> int:
        return len(await self.api.with_key(key))


@contextlib.asynccontextmanager
async def _redmine(directory: Path, peer: RedminePeer) -> AsyncIterator[Desk]:
    async with aiohttp.ClientSession(headers={"X-Redmine-API-Key": peer.key}) as session:
        yield RedmineDesk(directory, peer, RedmineApi(peer, session))


# --- the fakes: Zendesk, Freshdesk, Freshservice, Jira, ServiceNow, GitHub, PagerDuty, TOPdesk,
# Zammad, GLPI, Znuny ------------------------------------------------------------------------


class ZendeskDesk(Desk):
    name = "zendesk"
    unknown_ref = "999999"

    def __init__(self, directory: Path, fake: FakeZendesk) -> None:
        super().__init__(directory, {
            "url": fake.url, "email": fake_zendesk.EMAIL,
            "token_file": _secret(directory, "zendesk-token", fake_zendesk.TOKEN)})
        self.fake = fake

    async def record(self, ref: str) -> Record:
        ticket = self.fake.tickets[int(ref)]
        _description, *comments = self.fake.comments(int(ref))
        return Record(
            frozenset([ticket["external_id"]]), str(ticket["priority"]), ticket["status"],
            tuple(("public comment" if public else "private comment", body)
                  for public, body in comments))

    async def tickets(self, key: str) -> int:
        return sum(t["external_id"] == key for t in self.fake.tickets.values())


class FreshdeskDesk(Desk):
    name = "freshdesk"
    unknown_ref = "999999"

    def __init__(self, directory: Path, fake: FakeFreshdesk) -> None:
        super().__init__(directory, {
            "url": fake.url, "email": REQUESTER_EMAIL, "key_field": FRESHDESK_KEY_FIELD,
            "api_key_file": _secret(directory, "freshdesk-key", API_KEY)})
        self.fake = fake

    async def record(self, ref: str) -> Record:
        ticket = self.fake.tickets[int(ref)]
        keys = [ticket["custom_fields"][FRESHDESK_KEY_FIELD], *ticket["tags"]]
        return Record(
            frozenset(k for k in keys if k is not None), str(ticket["priority"]),
            str(ticket["status"]),
            tuple(("private note" if note["private"] else "public note", _shown(note["body"]))
                  for note in self.fake.notes[int(ref)]))

    async def tickets(self, key: str) -> int:
        return sum(t["custom_fields"][FRESHDESK_KEY_FIELD] == key
                   for t in self.fake.tickets.values())


class FreshserviceDesk(Desk):
    name = "freshservice"
    unknown_ref = "999999"

    def __init__(self, directory: Path, fake: FakeFreshservice) -> None:
        super().__init__(directory, {
            "url": fake.url, "email": fake_freshservice.REQUESTER_EMAIL,
            "key_field": fake_freshservice.KEY_FIELD,
            "api_key_file": _secret(directory, "freshservice-key", fake_freshservice.API_KEY)})
        self.fake = fake

    async def record(self, ref: str) -> Record:
        ticket = self.fake.tickets[int(ref)]
        keys = [ticket["custom_fields"][fake_freshservice.KEY_FIELD], *ticket["tags"]]
        return Record(
            frozenset(k for k in keys if k is not None),
            f"priority {ticket['priority']}, urgency {ticket['urgency']}, "
            f"impact {ticket['impact']}",
            str(ticket["status"]),
            tuple(("private note" if note["private"] else "public note", _shown(note["body"]))
                  for note in self.fake.notes[int(ref)]))

    async def tickets(self, key: str) -> int:
        return sum(t["custom_fields"][fake_freshservice.KEY_FIELD] == key
                   for t in self.fake.tickets.values())


def _shown(body: str) -> str:
    """What an agent reads of an HTML body probe wrote: escaped text in <pre>."""
    assert body.startswith("<pre>") and body.endswith("</pre>"), body
    return html.unescape(body[len("<pre>"):-len("</pre>")])


class JiraDesk(Desk):
    name = "jira"
    unknown_ref = "OPS-999999"

    def __init__(self, directory: Path, fake: FakeJira) -> None:
        super().__init__(directory, {
            "url": fake.url, "email": fake_jira.EMAIL,
            "token_file": _secret(directory, "jira-token", fake_jira.TOKEN),
            "project": "OPS", "search_lag": "1s"})
        self.fake = fake

    async def record(self, ref: str) -> Record:
        issue = self.fake.issues[ref]
        return Record(
            frozenset(issue.fields["labels"]), issue.fields["priority"]["name"], issue.status,
            tuple((_jira_kind(c.via, c.public), FakeJira.text(c.body).rstrip("\n"))
                  for c in issue.comments))

    async def tickets(self, key: str) -> int:
        return sum(jira_label(key) in i.fields["labels"] for i in self.fake.issues.values())


def _jira_kind(via: str, public: bool) -> str:
    if via == "platform":
        return "comment"  # Jira Software has no internal comments: whoever sees the issue
    return "public comment" if public else "internal comment"


class ServiceNowDesk(Desk):
    name = "servicenow"
    unknown_ref = "0" * 32

    def __init__(self, directory: Path, fake: FakeServiceNow) -> None:
        super().__init__(directory, {
            "url": fake.url, "username": fake_servicenow.USERNAME,
            "password_file": _secret(directory, "snow-password", fake_servicenow.PASSWORD)})
        self.fake = fake

    async def record(self, ref: str) -> Record:
        incident = self.fake.incidents[ref]
        closing = [("close_notes", incident["close_notes"])] if incident["close_notes"] else []
        return Record(
            frozenset([incident["correlation_id"]]),
            f"urgency {incident['urgency']}, impact {incident['impact']}", incident["state"],
            (*self.fake.journal[ref], *closing))

    async def tickets(self, key: str) -> int:
        return sum(i["correlation_id"] == key for i in self.fake.incidents.values())


class GitHubDesk(Desk):
    name = "github"
    unknown_ref = "999999"

    def __init__(self, directory: Path, fake: FakeGitHub) -> None:
        super().__init__(directory, {
            "url": fake.url, "repository": REPOSITORY,
            "token_file": _secret(directory, "github-token", fake_github.TOKEN)})
        self.fake = fake

    async def record(self, ref: str) -> Record:
        issue = self.fake.issues[int(ref)]
        labels = [label["name"] for label in issue["labels"]]
        return Record(
            frozenset(labels),
            ", ".join(n for n in labels if n != "probe" and not n.startswith("probe:")),
            issue["state"],
            tuple(("public comment", text) for text in self.fake.comments.get(int(ref), [])))

    async def tickets(self, key: str) -> int:
        return len(self.fake.labelled(github_label(key)))

    def violations(self) -> list[str]:
        """What GitHub's OpenAPI description says of the requests probe sent (nothing when the
        description is not installed: tests/test_backend_github.py says how to install it)."""
        description = github_description()
        if description is None:
            return []
        api = load(description)
        return [problem for seen in self.fake.requests for problem in api.violations(seen.request)]


class PagerDutyDesk(Desk):
    name = "pagerduty"
    unknown_ref = "probe-eu-1/no-such-incident/1"  # a dedup_key

    def __init__(self, directory: Path, fake: FakePagerDuty) -> None:
        super().__init__(directory, {  # with the REST API: notes and status need it
            "url": fake.url, "api_url": fake.url, "from_email": USER_EMAIL,
            "routing_key_file": _secret(directory, "pd-routing-key", ROUTING_KEY),
            "api_token_file": _secret(directory, "pd-api-token", API_TOKEN)})
        self.fake = fake

    def elsewhere(self, port: int) -> dict[str, Any]:
        return {"url": f"http://127.0.0.1:{port}", "api_url": f"http://127.0.0.1:{port}"}

    async def record(self, ref: str) -> Record:
        """The incidents with dedup_key `ref`, newest last, and the triggers that made them."""
        incidents = self.fake.with_key(ref)
        triggers = [e for e in self.fake.events
                    if e.get("dedup_key") == ref and e["event_action"] == "trigger"]
        reopened = [e["payload"]["custom_details"]["reopened"] for e in triggers
                    if "reopened" in e["payload"]["custom_details"]]
        return Record(
            frozenset(i.incident_key for i in incidents),
            str(triggers[0]["payload"]["severity"]) if triggers else "",
            incidents[-1].status if incidents else None,
            (*(("note", text) for i in incidents for _, text in i.notes),
             *(("trigger", text) for text in reopened)))

    async def tickets(self, key: str) -> int:
        return len(self.fake.with_key(key))


class TopdeskDesk(Desk):
    name = "topdesk"
    unknown_ref = "00000000-0000-4000-8000-000000000000"

    def __init__(self, directory: Path, fake: FakeTopdesk) -> None:
        super().__init__(directory, {
            "url": fake.url, "username": fake_topdesk.USERNAME,
            "application_password_file": _secret(directory, "topdesk-password",
                                                 fake_topdesk.PASSWORD)})
        self.fake = fake

    async def record(self, ref: str) -> Record:
        incident = self.fake.incidents[ref]
        return Record(frozenset([incident["externalNumber"]]), incident["priority"]["name"],
                      incident["processingStatus"]["name"], tuple(self.fake.shown(ref)))

    async def tickets(self, key: str) -> int:
        return sum(i["externalNumber"] == key for i in self.fake.incidents.values())
class ZammadDesk(Desk):
    name = "zammad"
    unknown_ref = "999999"

    def __init__(self, directory: Path, fake: FakeZammad) -> None:
        super().__init__(directory, {
            "url": fake.url, "group": "Users", "customer": fake_zammad.CUSTOMER,
            "token_file": _secret(directory, "zammad-token", fake_zammad.TOKEN)})
        self.fake = fake

    async def record(self, ref: str) -> Record:
        ticket = self.fake.tickets[int(ref)]
        return Record(
            frozenset(ticket["tags"]), fake_zammad.PRIORITIES[ticket["priority_id"]],
            ticket["state"],
            tuple(("internal note" if internal else "public note", body)
                  for internal, body in self.fake.articles(int(ref))))

    async def tickets(self, key: str) -> int:
        return len(self.fake.with_tag(zammad_tag(key)))


class GlpiDesk(Desk):
    name = "glpi"
    unknown_ref = "999999"

    def __init__(self, directory: Path, fake: FakeGlpi) -> None:
        super().__init__(directory, {
            "url": fake.url,
            "user_token_file": _secret(directory, "glpi-user-token", fake_glpi.USER_TOKEN),
            "app_token_file": _secret(directory, "glpi-app-token", fake_glpi.APP_TOKEN)})
        self.fake = fake

    async def record(self, ref: str) -> Record:
        ticket = self.fake.tickets[int(ref)]
        return Record(
            frozenset([ticket["externalid"]]),
            f"urgency {ticket['urgency']}, impact {ticket['impact']}", str(ticket["status"]),
            tuple(self.fake.notes(int(ref))))

    async def tickets(self, key: str) -> int:
        return sum(t["externalid"] == key for t in self.fake.tickets.values())


class ZnunyDesk(Desk):
    name = "znuny"
    unknown_ref = "999999"

    def __init__(self, directory: Path, fake: FakeZnuny) -> None:
        super().__init__(directory, {
            "url": fake.url, "user": fake_znuny.USER,
            "password_file": _secret(directory, "znuny-password", fake_znuny.PASSWORD),
            "queue": fake_znuny.QUEUE, "customer_user": fake_znuny.CUSTOMER_USER,
            "key_field": fake_znuny.KEY_FIELD})
        self.fake = fake

    async def record(self, ref: str) -> Record:
        ticket = self.fake.tickets[int(ref)]
        key = ticket["DynamicFields"].get(fake_znuny.KEY_FIELD)
        return Record(
            frozenset([key] if key else []), ticket["Priority"], ticket["State"],
            tuple((znuny_kind(a), a["Body"]) for a in self.fake.notes(int(ref))))

    async def tickets(self, key: str) -> int:
        return sum(t["DynamicFields"].get(fake_znuny.KEY_FIELD) == key
                   for t in self.fake.tickets.values())


# --- start one ------------------------------------------------------------------------------


def _fake(
    serve_fake: Callable[[], contextlib.AbstractAsyncContextManager[Any]],
    desk: Callable[[Path, Any], Desk],
) -> Callable[[Path], contextlib.AbstractAsyncContextManager[Desk]]:
    @contextlib.asynccontextmanager
    async def start(directory: Path) -> AsyncIterator[Desk]:
        async with serve_fake() as fake:
            yield desk(directory, fake)

    return start


@contextlib.asynccontextmanager
async def _local(directory: Path) -> AsyncIterator[Desk]:
    yield LocalDesk(directory)


PEERS: dict[str, Callable[[Path], contextlib.AbstractAsyncContextManager[Desk]]] = {
    "local": _local,
    "webhook": _webhook,
    "email": _email,
    "zendesk": _fake(serve_zendesk, ZendeskDesk),
    "freshdesk": _fake(serve_freshdesk, FreshdeskDesk),
    "freshservice": _fake(serve_freshservice, FreshserviceDesk),
    "jira": _fake(serve_jira, JiraDesk),
    "servicenow": _fake(serve_servicenow, ServiceNowDesk),
    "github": _fake(fake_github.serve, GitHubDesk),
    "pagerduty": _fake(fake_pagerduty.serve, PagerDutyDesk),
    "topdesk": _fake(fake_topdesk.serve, TopdeskDesk),
    "zammad": _fake(fake_zammad.serve, ZammadDesk),
    "glpi": _fake(serve_glpi, GlpiDesk),
    "znuny": _fake(serve_znuny, ZnunyDesk),
}


@contextlib.asynccontextmanager
async def serve(
    name: str, directory: Path, *, rt_peer: RtPeer | None = None,
    redmine_peer: RedminePeer | None = None,
) -> AsyncIterator[Desk]:
    """Helpdesk `name` on loopback, its route's files in `directory` (Request Tracker's and
    Redmine's peers are the session's: `rt_peer`, `redmine_peer`). Every backend made on it is
    closed at the end."""
    peer: contextlib.AbstractAsyncContextManager[Desk]
    if name == "rt":
        assert rt_peer is not None, "Request Tracker is the session's peer: pass rt_peer"
        peer = _rt(directory, rt_peer)
    elif name == "redmine":
        assert redmine_peer is not None, "Redmine is the session's peer: pass redmine_peer"
        peer = _redmine(directory, redmine_peer)
    else:
        peer = PEERS[name](directory)
    async with peer as desk:
        try:
            yield desk
        finally:
            await desk.close()
