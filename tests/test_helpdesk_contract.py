"""One contract, every helpdesk: each backend, built as the daemon builds it, against its peer on
loopback (tests/harness/desks.py: the fakes, an SMTP server, a webhook receiver, the real Request
Tracker and Redmine, the local backend's state database), and checked by what the helpdesk
itself holds afterwards — not by what the backend answered.

What differs between helpdesks by design is in PROMISES, one row per backend, as README's
Helpdesks table has it. Each backend's own quirks (human closes, rate limits, lagging search
indexes, field limits, the daemon end to end) stay in tests/test_backend_<name>.py."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from probe.helpdesks import webhook
from probe.helpdesks.base import Backend, Helpdesk, RouteBase, Ticket, TicketError
from probe.helpdesks.freshdesk import key_tag
from probe.helpdesks.github import key_label as github_label
from probe.helpdesks.http import SHAPE
from probe.helpdesks.jira import key_label as jira_label
from probe.helpdesks.zammad import key_tag as zammad_tag
from tests.harness import desks
from tests.harness.desks import HELPDESKS, Desk, GitHubDesk
from tests.harness.hostile_helpdesk import FIELDS, Misbehaviour, serve_helpdesk
from tests.harness.ports import closed_port

Outcome = Literal["gone", "open", "delivered", "permanent error", "transient error"]
Call = Literal["find", "open", "note", "resolve", "reopen", "status", "open_tickets"]
# What a backend answers, without asking the helpdesk, where the helpdesk cannot be asked.
UNASKED: dict[Call, object] = {"find": None, "status": "open", "open_tickets": None}


@dataclass(frozen=True)
class Promise:
    """What one backend promises, in its helpdesk's own words (see desks.Record)."""

    keys: Callable[[str], set[str]]  # where the incident key lives
    high: str  # what the priority "high" becomes
    states: tuple[str | None, str | None, str | None]  # opened, resolved, reopened
    note: str  # what kind of entry a note is
    closing: str  # ... the closing text of a resolve
    reopening: str  # ... the reason of a reopen
    finds: bool  # find() answers the ref; if not, it answers None and the helpdesk itself
    #              drops an open sent again (Idempotency-Key, Message-ID, dedup_key)
    unknown_status: Outcome  # status() of a ref no ticket has
    unknown_note: Outcome  # note() on it
    unasked: frozenset[Call] = frozenset({"open_tickets"})  # answered without asking (UNASKED)


UNTRACKED = frozenset[Call]({"find", "status", "open_tickets"})  # Backend.tracks_status False

PROMISES: dict[str, Promise] = {
    "local": Promise(
        keys=lambda key: {key}, high="high", states=("new", "resolved", "open"),
        note="note", closing="resolve", reopening="reopen", finds=True,
        unknown_status="gone", unknown_note="permanent error", unasked=frozenset()),
    "webhook": Promise(  # X-Probe-Key; a re-sent open keeps its Idempotency-Key
        keys=lambda key: {key}, high="high", states=(None, None, None),
        note="note", closing="resolve", reopening="reopen", finds=False,
        unknown_status="open", unknown_note="delivered", unasked=UNTRACKED),
    "email": Promise(  # X-Probe-Key; a re-sent open keeps its Message-ID; notes are replies
        keys=lambda key: {key}, high="2 (High)", states=(None, None, None),
        note="note", closing="resolve", reopening="reopen", finds=False,
        unknown_status="open", unknown_note="delivered", unasked=UNTRACKED),
    "rt": Promise(  # the key_field custom field; comments, not correspondence
        keys=lambda key: {key}, high="75", states=("new", "resolved", "open"),
        note="Comment", closing="Comment", reopening="Comment", finds=True,
        unknown_status="gone", unknown_note="permanent error", unasked=frozenset()),
    "zendesk": Promise(  # external_id
        keys=lambda key: {key}, high="high", states=("new", "solved", "open"),
        note="private comment", closing="private comment", reopening="private comment",
        finds=True, unknown_status="gone", unknown_note="permanent error"),
    "freshdesk": Promise(  # the key_field custom field and a hash tag
        keys=lambda key: {key, key_tag(key)}, high="3", states=("2", "4", "2"),
        note="private note", closing="private note", reopening="private note", finds=True,
        unknown_status="gone", unknown_note="permanent error"),
    "freshservice": Promise(  # the key_field custom text field and a hash tag
        keys=lambda key: {key, key_tag(key)}, high="priority 3, urgency 3, impact 2",
        states=("2", "4", "2"), note="private note", closing="private note",
        reopening="private note", finds=True, unknown_status="gone",
        unknown_note="permanent error"),
    "jira": Promise(  # a probe-key-... label; Jira Software comments (JSM: internal ones)
        keys=lambda key: {jira_label(key)}, high="High", states=("To Do", "Done", "To Do"),
        note="comment", closing="comment", reopening="comment", finds=True,
        unknown_status="gone", unknown_note="permanent error"),
    "servicenow": Promise(  # correlation_id; work_notes, never comments
        keys=lambda key: {key}, high="urgency 1, impact 2", states=("1", "6", "2"),
        note="work_notes", closing="close_notes", reopening="work_notes", finds=True,
        unknown_status="gone", unknown_note="permanent error"),
    "github": Promise(  # a probe:... label; comments public to whoever reads the repository
        keys=lambda key: {github_label(key)}, high="priority:high",
        states=("open", "closed", "open"), note="public comment", closing="public comment",
        reopening="public comment", finds=True, unknown_status="gone",
        unknown_note="permanent error"),
    "redmine": Promise(  # the key_field custom field; private notes (private_notes)
        keys=lambda key: {key}, high="High", states=("New", "Resolved", "New"),
        note="private note", closing="private note", reopening="private note", finds=True,
        unknown_status="gone", unknown_note="permanent error", unasked=frozenset()),
    # The dedup_key; with api_token, notes through the REST API. The Events API cannot look up
    # (find: None), and an incident not found may not be made yet: an error, retried, not gone.
    # A reopen is a new trigger with the same dedup_key, its reason in the trigger's details.
    "pagerduty": Promise(
        keys=lambda key: {key}, high="error", states=("triggered", "resolved", "triggered"),
        note="note", closing="note", reopening="trigger", finds=False,
        unknown_status="transient error", unknown_note="transient error",
        unasked=frozenset({"find", "open_tickets"})),
    # externalNumber; actions invisible for the caller. Closed by closed: true, reopened by
    # closed: false (TOPdesk's processing statuses: the fake's defaults).
    "topdesk": Promise(
        keys=lambda key: {key}, high="P2", states=("Logged", "Closed", "Logged"),
        note="invisible action", closing="invisible action", reopening="invisible action",
        finds=True, unknown_status="gone", unknown_note="permanent error"),
    "zammad": Promise(  # a probe-key-... tag; internal notes
        keys=lambda key: {zammad_tag(key)}, high="3 high", states=("new", "closed", "open"),
        note="internal note", closing="internal note", reopening="internal note", finds=True,
        unknown_status="gone", unknown_note="permanent error"),
    "glpi": Promise(  # externalid; private followups, a solution to resolve
        keys=lambda key: {key}, high="urgency 4, impact 3", states=("1", "5", "1"),
        note="private followup", closing="solution", reopening="private followup",
        finds=True, unknown_status="gone", unknown_note="permanent error",
        unasked=frozenset()),
    "znuny": Promise(  # the key_field dynamic field; internal articles, never for the customer
        keys=lambda key: {key}, high="4 high", states=("new", "closed successful", "open"),
        note="internal note", closing="internal note", reopening="internal note", finds=True,
        unknown_status="gone", unknown_note="permanent error", unasked=frozenset()),
}
assert set(PROMISES) == set(HELPDESKS), "each helpdesk needs its row here and its peer in desks"

NOTE = 'Still failing after 1h.\nLatest: <connection refused> & "5xx"'  # lines, HTML, JSON
CLOSING = "Recovered: shop-443 OK. Down for 12m."
REOPENING = "Reopened by probe: the outage goes on."


def every_backend(**marks: pytest.MarkDecorator) -> list[Any]:
    """The backends, ids their names, `marks` on some: where a helpdesk has no such thing."""
    return [pytest.param(name, id=name, marks=[marks[name]] if name in marks else [])
            for name in HELPDESKS]


@pytest.fixture
async def desk(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Desk]:
    """The backend named by the test's parameter, with its peer. Request Tracker and Redmine
    are the session's: started on first use (about 40 s and 20 s the first time), skipped
    where they cannot be."""
    name: str = request.param
    rt_peer = request.getfixturevalue("rt_peer") if name == "rt" else None
    redmine_peer = request.getfixturevalue("redmine_peer") if name == "redmine" else None
    async with desks.serve(name, tmp_path, rt_peer=rt_peer,
                           redmine_peer=redmine_peer) as served:
        yield served
        if isinstance(served, GitHubDesk):
            problems = served.violations()
            assert not problems, "requests GitHub does not take:\n" + "\n".join(problems)


def new_key() -> str:
    """A key of its own: Request Tracker keeps its tickets from one run to the next."""
    return f"probe-eu-1/shop/{uuid.uuid4().hex[:12]}"


def ticket(key: str) -> Ticket:
    return Ticket(
        key=key,
        title="[probe] shop DOWN — connection refused from shop.example.com:443",
        body="shop is DOWN: connection refused\n\nprobe key: " + key,
        body_markdown="**shop is DOWN**: connection refused",
        priority="high",
        agent="probe-eu-1",
        group="shop",
    )


def calls(backend: Backend[Any], key: str, ref: str) -> dict[Call, Callable[[], Awaitable[object]]]:
    """Every call of the contract, on `key` and its ticket `ref`."""
    return {
        "find": lambda: backend.find(key),
        "open": lambda: backend.open(ticket(key)),
        "note": lambda: backend.note(ref, NOTE),
        "resolve": lambda: backend.resolve(ref, CLOSING),
        "reopen": lambda: backend.reopen(ref, REOPENING),
        "status": lambda: backend.status(ref),
        "open_tickets": lambda: backend.open_tickets("probe-eu-1/"),
    }


async def outcome(call: Awaitable[object]) -> object:
    """What a call came to: its answer, or the kind of TicketError it raised."""
    try:
        return await call
    except TicketError as err:
        return "permanent error" if err.permanent else "transient error"


# --- the contract ------------------------------------------------------------------------------


@pytest.mark.parametrize("desk", every_backend(), indirect=True)
async def test_open_carries_the_incident_key_in_the_helpdesks_own_field_with_the_priority_mapped(
    desk: Desk,
) -> None:
    promise = PROMISES[desk.name]
    key = new_key()
    ref = await desk.backend().open(ticket(key))

    record = await desk.record(ref)
    assert promise.keys(key) <= record.keys
    assert record.priority == promise.high
    assert record.state == promise.states[0]
    assert record.notes == ()


@pytest.mark.parametrize("desk", every_backend(), indirect=True)
async def test_find_recovers_the_answer_of_an_open_that_was_lost(desk: Desk) -> None:
    promise = PROMISES[desk.name]
    key = new_key()
    ref = await desk.backend().open(ticket(key))

    restarted = desk.backend()  # a new backend on the route: the daemon after a crash
    if promise.finds:
        assert await restarted.find(key) == ref
    else:
        assert await restarted.find(key) is None
        assert await restarted.open(ticket(key)) == ref  # sent again, and dropped as a copy
    assert await desk.tickets(key) == 1
    assert await restarted.find(new_key()) is None


@pytest.mark.parametrize("desk", every_backend(), indirect=True)
async def test_note_adds_an_internal_note_and_leaves_the_ticket_as_it_was(desk: Desk) -> None:
    promise = PROMISES[desk.name]
    backend = desk.backend()
    ref = await backend.open(ticket(new_key()))
    await backend.note(ref, NOTE)

    record = await desk.record(ref)
    assert record.notes == ((promise.note, NOTE),)
    assert record.state == promise.states[0]


@pytest.mark.parametrize("desk", every_backend(), indirect=True)
async def test_resolve_closes_the_ticket_with_the_closing_text(desk: Desk) -> None:
    promise = PROMISES[desk.name]
    backend = desk.backend()
    ref = await backend.open(ticket(new_key()))
    await backend.resolve(ref, CLOSING)

    record = await desk.record(ref)
    assert record.notes == ((promise.closing, CLOSING),)
    assert record.state == promise.states[1]
    assert await backend.status(ref) == ("closed" if backend.tracks_status else "open")


@pytest.mark.parametrize("desk", every_backend(), indirect=True)
async def test_reopen_opens_the_resolved_ticket_again_with_the_reason(desk: Desk) -> None:
    promise = PROMISES[desk.name]
    backend = desk.backend()
    ref = await backend.open(ticket(new_key()))
    await backend.resolve(ref, CLOSING)
    await backend.reopen(ref, REOPENING)

    record = await desk.record(ref)
    assert (promise.reopening, REOPENING) in record.notes
    assert record.state == promise.states[2]
    assert await backend.status(ref) in ("open", "acknowledged")


@pytest.mark.parametrize("desk", every_backend(), indirect=True)
async def test_an_unknown_ref_gets_the_answer_the_helpdesk_documents(desk: Desk) -> None:
    promise = PROMISES[desk.name]
    backend = desk.backend()

    assert await outcome(backend.status(desk.unknown_ref)) == promise.unknown_status
    noted = await outcome(backend.note(desk.unknown_ref, NOTE))
    if promise.unknown_note == "delivered":  # the helpdesk takes it, and decides
        assert noted is None
        assert (await desk.record(desk.unknown_ref)).notes == ((promise.note, NOTE),)
    else:
        assert noted == promise.unknown_note


@pytest.mark.parametrize("desk", every_backend(local=pytest.mark.skip(
    reason="the local helpdesk is probe's own state database: there is no address to be "
           "unreachable")), indirect=True)
async def test_an_unreachable_helpdesk_is_a_transient_error_for_every_call(desk: Desk) -> None:
    promise = PROMISES[desk.name]
    backend = desk.unreachable(closed_port())
    started = time.monotonic()
    for name, call in calls(backend, new_key(), desk.unknown_ref).items():
        if name in promise.unasked:
            assert await call() == UNASKED[name], name
            continue
        with pytest.raises(TicketError) as caught:
            await call()
        assert not caught.value.permanent, name
        assert caught.value.message.endswith("cannot connect: connection refused"), name
    assert time.monotonic() - started < 5  # refused at once: nothing waits for a timeout


ANSWERS_NOTHING = pytest.mark.skip(reason="reads no answer of the helpdesk's: nothing to misshape")


@pytest.mark.parametrize("desk", every_backend(local=ANSWERS_NOTHING, email=ANSWERS_NOTHING,
                                               webhook=ANSWERS_NOTHING), indirect=True)
async def test_an_answer_of_the_wrong_shape_is_a_transient_error_that_says_so(desk: Desk) -> None:
    promise = PROMISES[desk.name]
    # 200 to everything, and every field any backend reads a list of a number: no call that
    # reads the answer can take it for what its API promises. (A note that reads nothing back
    # has nothing to doubt.)
    every_field_a_list = json.dumps({field: [7] for field in FIELDS}).encode()
    async with serve_helpdesk() as helpdesk:
        helpdesk.now = Misbehaviour("every-field-a-list", body=every_field_a_list)
        backend = desk.backend(**desk.elsewhere(int(helpdesk.url.rsplit(":", 1)[1])))
        doubted = set()
        for name, call in calls(backend, new_key(), desk.unknown_ref).items():
            if name in promise.unasked:
                continue
            try:
                await call()
            except TicketError as err:
                assert not err.permanent, f"{name}: {err.message}"
                assert SHAPE in err.message, f"{name}: {err.message}"
                doubted.add(name)
    assert {"find", "open", "status"} - promise.unasked <= doubted


@pytest.mark.parametrize("desk", every_backend(), indirect=True)
async def test_a_secret_that_cannot_be_read_is_a_permanent_error_that_names_the_setting(
    desk: Desk, tmp_path: Path
) -> None:
    files = {name: str(tmp_path / "missing") for name in desk.settings
             if name.endswith("_file")}
    if not files:
        pytest.skip(f"the {desk.name} route of the contract has no secret")
    key = new_key()
    with pytest.raises(TicketError) as caught:
        await desk.backend(**files).open(ticket(key))
    assert caught.value.permanent
    # (the redactor takes "api_key: api_key_file:" for a credential: freshdesk's reads
    # "api_key: <redacted> cannot read")
    assert re.fullmatch(rf"{desk.name} (\w+): (\1_file:|<redacted>) cannot read "
                        rf"{tmp_path}/missing: No such file or directory",
                        caught.value.message), caught.value.message
    assert await desk.tickets(key) == 0


# --- the registry ------------------------------------------------------------------------------


def test_a_helpdesk_whose_route_does_not_name_it_is_refused_where_it_is_declared() -> None:
    class Unnamed(RouteBase):
        backend: str  # any name: the configuration could not tell this route from another

    with pytest.raises(TypeError, match=r'Unnamed: backend must be Literal\["<name of the'):
        Helpdesk[Any](route=Unnamed, backend=webhook.Backend)



async def test_a_bug_in_a_backend_propagates_as_itself_not_as_a_helpdesk_error() -> None:
    # A backend's own mistake is no flaky helpdesk: the outbox must see the KeyError, to log
    # its traceback and fail the action after a few attempts (tests/test_internal_errors.py),
    # not a transient TicketError that it would retry for ever.
    class Mistaken(webhook.Backend):
        async def find(self, key: str) -> str | None:
            known: dict[str, str] = {}
            return known[key]

    route = webhook.Route.model_validate({"backend": "webhook", "url": "http://127.0.0.1:9/"})
    with pytest.raises(KeyError):
        await Mistaken("desk", route).find("probe-eu-1/shop/1")
