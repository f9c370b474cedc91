"""The freshservice backend against a Freshservice API v2 on loopback
(tests/harness/fake_freshservice.py), checked by reading what that helpdesk holds; then `probe
run` itself, as a subprocess, filing its incident tickets there for a flaky target, and `probe
test-ticket` on a Freshservice route."""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest

from probe.helpdesks.base import Ticket, TicketError
from probe.helpdesks.freshdesk import key_tag
from probe.helpdesks.freshservice import Backend, Route
from tests.harness.daemon import ProbeProcess, Target
from tests.harness.fake_freshservice import (
    DAY,
    KEY_FIELD,
    REQUESTER_EMAIL,
    FakeFreshservice,
    serve_freshservice,
)
from tests.harness.ports import free_port

KEY = "probe-eu-1/shop/3"
MakeBackend = Callable[..., Backend]


def ticket(key: str = KEY, **changes: Any) -> Ticket:
    fields: dict[str, Any] = {
        "key": key,
        "title": "shop is down",
        "body": "shop-443: connection refused\nsince 01:02 UTC",
        "body_markdown": "**shop-443**: connection refused",
        "priority": "urgent",
        "agent": "probe-eu-1",
        "group": "shop",
        **changes,
    }
    return Ticket(**fields)


def text(body: str) -> str:
    """What an agent reads in an HTML body probe wrote."""
    assert body.startswith("<pre>") and body.endswith("</pre>"), body
    return html.unescape(body[len("<pre>"):-len("</pre>")])


def notes(freshservice: FakeFreshservice, ref: str | int) -> list[tuple[bool, str]]:
    return [(n["private"], text(n["body"])) for n in freshservice.notes[int(ref)]]


@pytest.fixture
async def freshservice() -> AsyncIterator[FakeFreshservice]:
    async with serve_freshservice() as fake:
        yield fake


@pytest.fixture
async def make_backend(
    freshservice: FakeFreshservice, tmp_path: Path
) -> AsyncIterator[MakeBackend]:
    made: list[Backend] = []

    def make(**settings: Any) -> Backend:
        made.append(Backend("itdesk", freshservice.route(tmp_path, **settings)))
        return made[-1]

    yield make
    for backend in made:
        await backend.close()


@pytest.fixture
def desk(make_backend: MakeBackend) -> Backend:
    return make_backend()


async def test_open_creates_an_urgent_open_incident_carrying_the_key_and_the_text(
    desk: Backend, freshservice: FakeFreshservice
) -> None:
    ref = await desk.open(ticket())

    created = freshservice.tickets[int(ref)]
    assert (created["type"], created["subject"]) == ("Incident", "shop is down")
    assert text(created["description"]) == "shop-443: connection refused\nsince 01:02 UTC"
    assert (created["priority"], created["urgency"], created["impact"]) == (4, 3, 3)
    assert (created["status"], created["source"]) == (2, 2)
    assert created["requester_id"] == freshservice.requesters[REQUESTER_EMAIL]
    assert created["custom_fields"][KEY_FIELD] == KEY
    assert created["tags"] == ["probe", key_tag(KEY)]
    assert (created["group_id"], created["responder_id"]) == (None, None)


@pytest.mark.parametrize(("priority", "levels"), [
    ("urgent", (4, 3, 3)), ("high", (3, 3, 2)), ("normal", (2, 2, 2)), ("low", (1, 1, 1))])
async def test_each_priority_sets_freshservices_priority_urgency_and_impact(
    desk: Backend, freshservice: FakeFreshservice, priority: str, levels: tuple[int, ...]
) -> None:
    created = freshservice.tickets[int(await desk.open(ticket(priority=priority)))]
    assert (created["priority"], created["urgency"], created["impact"]) == levels


def test_a_level_freshservice_does_not_have_is_refused_when_the_route_is_read(
    freshservice: FakeFreshservice, tmp_path: Path
) -> None:
    with pytest.raises(pydantic.ValidationError, match="less than or equal to 3"):
        freshservice.route(tmp_path, urgencies={"urgent": 4, "high": 3, "normal": 2, "low": 1})
    with pytest.raises(pydantic.ValidationError, match="needs email or requester_id"):
        freshservice.route(tmp_path, email=None)
    # Freshservice shows no tags unless asked: only the custom field tells tickets apart.
    with pytest.raises(pydantic.ValidationError, match="key_field"):
        freshservice.route(tmp_path, key_field=None)


def test_the_link_is_the_agents_view_of_the_ticket(
    freshservice: FakeFreshservice, tmp_path: Path
) -> None:
    route = Route.model_validate({"backend": "freshservice",
                                  "url": "https://example.freshservice.com/",
                                  "email": REQUESTER_EMAIL, "api_key": "env:FS_KEY",
                                  "key_field": KEY_FIELD})
    assert route.link("42") == "https://example.freshservice.com/a/tickets/42"


async def test_a_requester_id_group_and_responder_go_with_the_ticket(
    make_backend: MakeBackend, freshservice: FakeFreshservice
) -> None:
    desk = make_backend(email=None, requester_id=7001, group_id=8001, responder_id=8003)
    created = freshservice.tickets[int(await desk.open(ticket()))]
    assert (created["requester_id"], created["group_id"], created["responder_id"]) == (
        7001, 8001, 8003)
    assert await desk.find(KEY) == str(created["id"])


async def test_tickets_filed_in_another_workspace_are_found_there(
    make_backend: MakeBackend, freshservice: FakeFreshservice
) -> None:
    desk = make_backend(workspace_id=5)
    ref = await desk.open(ticket())
    assert freshservice.tickets[int(ref)]["workspace_id"] == 5
    assert await make_backend().find(KEY) is None  # the primary workspace's view: not there
    assert await desk.find(KEY) == ref  # the list, in its workspace
    freshservice.tickets[int(ref)]["created"] -= 40 * DAY
    freshservice.catch_up()
    assert await desk.find(KEY) == ref  # the filter, in its workspace


async def test_a_create_answered_too_late_is_found_before_the_filter_index_has_it(
    make_backend: MakeBackend, freshservice: FakeFreshservice
) -> None:
    desk = make_backend(timeout="500ms")
    freshservice.stall_creates = 1
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert "no answer within 0.5s" in caught.value.message

    [made] = freshservice.tickets
    assert not freshservice.indexed  # the filter would not see it for minutes
    assert await desk.find(KEY) == str(made)
    assert ("GET", "/api/v2/tickets/filter") not in freshservice.requests


async def test_find_filters_by_tag_for_tickets_older_than_the_list_shows(
    desk: Backend, freshservice: FakeFreshservice
) -> None:
    old = await desk.open(ticket())
    freshservice.tickets[int(old)]["created"] -= 40 * DAY
    assert await desk.find(KEY) is None  # not listed any more, not indexed yet
    freshservice.catch_up()
    # The filter refuses a query on the key's text field (400): found by the tag, it answers.
    assert await desk.find(KEY) == old
    assert ("GET", "/api/v2/tickets/filter") in freshservice.requests


async def test_find_returns_the_newest_ticket_with_exactly_the_key_resolved_or_not(
    desk: Backend, freshservice: FakeFreshservice
) -> None:
    assert await desk.find(KEY) is None
    first = await desk.open(ticket())
    await desk.open(ticket(KEY + "0"))
    assert await desk.find(KEY) == first
    second = await desk.open(ticket(title="shop is down again"))
    await desk.resolve(second, "shop is back")
    assert await desk.find(KEY) == second
    freshservice.human(int(second), deleted=True)
    assert await desk.find(KEY) == first


async def test_the_per_minute_rate_limit_is_transient_with_freshservices_wait_and_makes_nothing(
    desk: Backend, freshservice: FakeFreshservice
) -> None:
    freshservice.per_minute = 2
    assert await desk.find(KEY) is None  # the minute's two requests: the list, the filter
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent and caught.value.refused
    assert caught.value.retry_after is not None and 1 <= caught.value.retry_after <= 60
    assert "HTTP 429: Rate Limit Exceeded" in caught.value.message
    assert freshservice.tickets == {}


async def test_an_html_error_page_from_the_proxy_is_transient_and_the_retry_makes_one_ticket(
    desk: Backend, freshservice: FakeFreshservice
) -> None:
    freshservice.proxy_errors = 1
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert caught.value.message == (
        "POST /tickets: HTTP 502: 502 Bad Gateway We're sorry, but something went wrong.")
    assert freshservice.tickets == {}

    ref = await desk.open(ticket())
    assert list(freshservice.tickets) == [int(ref)]


async def test_a_custom_field_freshservice_refuses_is_permanent_with_its_reasons(
    make_backend: MakeBackend, freshservice: FakeFreshservice
) -> None:
    desk = make_backend(key_field="no_such_field")
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert caught.value.permanent
    assert caught.value.message == (
        "POST /tickets: HTTP 400: Validation failed: no_such_field: Unexpected/invalid field "
        "in request")

    freshservice.required_fields = ("category_code",)  # the account made a field mandatory
    with pytest.raises(TicketError) as caught:
        await make_backend().open(ticket())
    assert caught.value.permanent
    assert caught.value.message == (
        "POST /tickets: HTTP 400: Validation failed: category_code: It should be a/an String")
    assert freshservice.tickets == {}


async def test_a_note_on_a_ticket_a_human_closed_is_refused_for_good_and_resolve_leaves_it(
    desk: Backend, freshservice: FakeFreshservice
) -> None:
    ref = await desk.open(ticket())
    freshservice.human(int(ref), status=5)
    with pytest.raises(TicketError) as caught:
        await desk.note(ref, "Still failing")
    assert caught.value.permanent
    assert caught.value.message == (f"POST /tickets/{ref}/notes: HTTP 400: Validation failed: "
                                    "ticket_id: Notes cannot be added to a closed ticket")
    await desk.resolve(ref, "shop is back")  # nothing to do: no error, no note, still closed
    assert freshservice.tickets[int(ref)]["status"] == 5
    assert notes(freshservice, ref) == []


async def test_resolve_resolves_with_a_private_closing_note_and_can_be_repeated(
    desk: Backend, freshservice: FakeFreshservice
) -> None:
    ref = await desk.open(ticket())
    await desk.resolve(ref, "shop is back after 12m")
    assert freshservice.tickets[int(ref)]["status"] == 4
    assert notes(freshservice, ref) == [(True, "shop is back after 12m")]
    assert await desk.status(ref) == "closed"


async def test_a_failed_resolve_is_transient_and_the_retry_adds_one_closing_note(
    desk: Backend, freshservice: FakeFreshservice
) -> None:
    ref = await desk.open(ticket())
    freshservice.answer("PUT", f"/api/v2/tickets/{ref}", 502)
    with pytest.raises(TicketError) as caught:
        await desk.resolve(ref, "shop is back")
    assert not caught.value.permanent
    assert freshservice.tickets[int(ref)]["status"] == 2

    freshservice.answer("POST", f"/api/v2/tickets/{ref}/notes", 500, {"message": "oops"})
    with pytest.raises(TicketError):
        await desk.resolve(ref, "shop is back")
    await desk.resolve(ref, "shop is back")
    assert freshservice.tickets[int(ref)]["status"] == 4
    assert notes(freshservice, ref) == [(True, "shop is back")]


@pytest.mark.parametrize("closed_as", [4, 5])
async def test_a_ticket_a_human_resolved_or_closed_is_reopened_with_a_private_note(
    desk: Backend, freshservice: FakeFreshservice, closed_as: int
) -> None:
    ref = await desk.open(ticket())
    freshservice.human(int(ref), status=closed_as)
    assert await desk.status(ref) == "closed"

    await desk.reopen(ref, "Reopened by probe: the outage goes on")
    assert freshservice.tickets[int(ref)]["status"] == 2
    assert notes(freshservice, ref) == [(True, "Reopened by probe: the outage goes on")]
    assert await desk.status(ref) == "open"


@pytest.mark.parametrize(("status", "responder", "route_responder", "expected"), [
    (2, None, None, "open"),
    (2, 8003, None, "acknowledged"),
    (2, 8003, 8003, "open"),  # the route's own responder: nobody took it yet
    (2, 8004, 8003, "acknowledged"),
    (3, None, None, "acknowledged"),  # pending
    (6, None, None, "acknowledged"),  # an account's own status, "Awaiting vendor"
    (4, 8003, None, "closed"),
    (5, None, None, "closed"),
])
async def test_status_says_who_has_the_ticket(
    make_backend: MakeBackend, freshservice: FakeFreshservice, status: int,
    responder: int | None, route_responder: int | None, expected: str,
) -> None:
    desk = make_backend(responder_id=route_responder)
    ref = await desk.open(ticket())
    freshservice.human(int(ref), status=status, responder_id=responder)
    assert await desk.status(ref) == expected


async def test_status_of_a_deleted_spam_or_unknown_ticket_is_gone(
    desk: Backend, freshservice: FakeFreshservice
) -> None:
    deleted, spam = await desk.open(ticket()), await desk.open(ticket(KEY + "/2"))
    freshservice.human(int(deleted), deleted=True)
    freshservice.human(int(spam), spam=True)
    assert [await desk.status(r) for r in (deleted, spam, "999999")] == ["gone"] * 3
    with pytest.raises(TicketError) as caught:
        await desk.status("INC-1")
    assert caught.value.permanent


async def test_a_wrong_api_key_is_a_permanent_error(
    make_backend: MakeBackend, freshservice: FakeFreshservice, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-key"
    wrong.write_text("not-the-key\n")
    with pytest.raises(TicketError) as caught:
        await make_backend(api_key_file=str(wrong)).open(ticket())
    assert caught.value.permanent
    assert caught.value.message == (
        "POST /tickets: HTTP 401: You have to be logged in to perform this action.")
    assert freshservice.tickets == {}


# --- probe itself, as a subprocess, filing its tickets in Freshservice ---------------------------

DAEMON = """
agent: {{name: t, state_dir: {state}, listen: "127.0.0.1:{listen}"}}
defaults:
  interval: 200ms
  retry_interval: 100ms
  timeout: 100ms
  failure_threshold: 3
  success_threshold: 2
  ticket: {{route: itdesk, priority: urgent, update_interval: 1s, escalate_after: 1s,
           on_human_close: reopen}}
ticketing:
  poll_interval: 200ms
  routes:
    itdesk:
      backend: freshservice
      url: "{url}"
      api_key_file: {api_key}
      email: {email}
      key_field: {key_field}
      group_id: 8001
      escalate_to: oncall
      timeout: 1s
    oncall:
      backend: freshservice
      url: "{url}"
      api_key_file: {api_key}
      email: {email}
      key_field: {key_field}
      group_id: 8002
      timeout: 1s
checks:
  - name: web
    service: shop
    http: {{url: "http://127.0.0.1:{port}/health"}}
"""


def daemon(freshservice: FakeFreshservice, target: Target, tmp_path: Path) -> ProbeProcess:
    listen = free_port()
    config = tmp_path / "probe.yaml"
    config.write_text(DAEMON.format(
        state=tmp_path / "state", listen=listen, url=freshservice.url,
        api_key=freshservice.route(tmp_path).api_key_file, email=REQUESTER_EMAIL,
        key_field=KEY_FIELD, port=target.port))
    return ProbeProcess(config, listen, tmp_path / "state")


def keyed(freshservice: FakeFreshservice, key: str) -> list[int]:
    return [i for i, t in freshservice.tickets.items() if t["custom_fields"][KEY_FIELD] == key]


async def test_probe_run_opens_informs_escalates_reopens_and_resolves_one_incident(
    freshservice: FakeFreshservice, target: Target, tmp_path: Path
) -> None:
    probe = daemon(freshservice, target, tmp_path).start()
    await probe.wait("a first result", lambda: probe.metric(
        'probe_success{check="web",kind="http",service="shop"}') == 1)
    target.down = True

    (made,) = await probe.wait("the ticket", lambda: keyed(freshservice, "t/shop/1"))
    created = freshservice.tickets[made]
    assert (created["type"], created["group_id"]) == ("Incident", 8001)
    assert (created["priority"], created["urgency"], created["impact"]) == (4, 3, 3)
    assert "3 consecutive failures" in text(created["description"])
    await probe.wait("a status note", lambda: [
        n for private, n in notes(freshservice, made) if private and n.startswith("Still failing")])

    # Nobody takes it: after escalate_after, a ticket on the oncall route, and a word here.
    (escalated,) = await probe.wait("the escalation",
                                    lambda: keyed(freshservice, "t/shop/1/escalation"))
    assert freshservice.tickets[escalated]["group_id"] == 8002
    await probe.wait("the escalation note", lambda: [
        n for _, n in notes(freshservice, made) if "escalated it to the oncall route" in n])

    freshservice.human(made, status=5)  # an agent closes it while the outage goes on
    await probe.wait("the reopen", lambda: freshservice.tickets[made]["status"] == 2)
    await probe.wait("the reopen note", lambda: notes(freshservice, made)[-1][1].startswith(
        "Reopened by probe"))

    target.down = False
    await probe.wait("the resolve", lambda: freshservice.tickets[made]["status"] == 4)
    await probe.wait("the closing note", lambda: notes(freshservice, made)[-1][1].startswith(
        "Recovered: web"))
    assert keyed(freshservice, "t/shop/1") == [made]  # one ticket for the incident, never two
    assert all(private for private, _ in notes(freshservice, made))
    probe.stop()


async def test_probe_test_ticket_opens_notes_and_resolves_on_a_freshservice_route(
    freshservice: FakeFreshservice, target: Target, tmp_path: Path
) -> None:
    started = time.monotonic()
    probe = daemon(freshservice, target, tmp_path)
    # In a thread: the fake answers from this test's event loop.
    output = await asyncio.to_thread(probe.command, "test-ticket", "--route", "itdesk")
    assert output.rstrip().endswith("route itdesk (freshservice): works"), output
    ((ref, made),) = freshservice.tickets.items()
    assert made["subject"].startswith("[probe] TEST ticket from t")
    assert (made["status"], notes(freshservice, ref)) == (4, [
        (True, "probe test-ticket: a note."), (True, "probe test-ticket: resolved.")])
    assert time.monotonic() - started < 30
