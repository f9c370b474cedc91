"""The freshdesk backend against a Freshdesk API v2 on loopback (tests/harness/fake_freshdesk.py),
checked by reading what that helpdesk holds; then the daemon itself, in the test, filing its
tickets there for a flaky target."""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from probe.helpdesks.base import Ticket, TicketError
from probe.helpdesks.freshdesk import Backend, key_tag
from tests.harness.daemon import Target
from tests.harness.fake_freshdesk import (
    DAY,
    KEY_FIELD,
    REQUESTER_EMAIL,
    FakeFreshdesk,
    serve_freshdesk,
)
from tests.harness.inloop import Runner
from tests.harness.wait import until

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
    assert body.startswith("<pre>") and body.endswith("</pre>")
    return html.unescape(body[len("<pre>"):-len("</pre>")])


def notes(freshdesk: FakeFreshdesk, ref: str) -> list[tuple[bool, str]]:
    return [(n["private"], text(n["body"])) for n in freshdesk.notes[int(ref)]]


@pytest.fixture
async def freshdesk() -> AsyncIterator[FakeFreshdesk]:
    async with serve_freshdesk() as fake:
        yield fake


@pytest.fixture
async def make_backend(freshdesk: FakeFreshdesk, tmp_path: Path) -> AsyncIterator[MakeBackend]:
    made: list[Backend] = []

    def make(**settings: Any) -> Backend:
        made.append(Backend("servicedesk", freshdesk.route(tmp_path, **settings)))
        return made[-1]

    yield make
    for backend in made:
        await backend.close()


@pytest.fixture
def desk(make_backend: MakeBackend) -> Backend:
    return make_backend()


async def test_open_creates_an_urgent_open_ticket_carrying_the_key_and_the_text(
    desk: Backend, freshdesk: FakeFreshdesk
) -> None:
    ref = await desk.open(ticket())

    created = freshdesk.tickets[int(ref)]
    assert created["subject"] == "shop is down"
    assert text(created["description"]) == "shop-443: connection refused\nsince 01:02 UTC"
    assert (created["priority"], created["status"]) == (4, 2)
    assert created["requester_id"] == freshdesk.contacts[REQUESTER_EMAIL]
    assert created["custom_fields"][KEY_FIELD] == KEY
    assert created["tags"] == ["probe", key_tag(KEY)]
    assert (created["group_id"], created["responder_id"]) == (None, None)


async def test_the_key_tag_fits_freshdesks_tags_whatever_the_key(desk: Backend) -> None:
    long_key = "probe-eu-1/" + "a very long service name, with 'quotes' " * 5 + "/12"
    tag = key_tag(long_key)
    assert len(tag) <= 32 and tag.replace("-", "").isalnum()
    assert key_tag(long_key) == tag != key_tag(long_key + "3")
    ref = await desk.open(ticket(long_key))  # Freshdesk refuses a tag over 32 characters
    assert await desk.find(long_key) == ref


async def test_the_text_is_escaped_html_that_keeps_its_lines(
    desk: Backend, freshdesk: FakeFreshdesk
) -> None:
    body = "HTTP 503 <html><script>alert(1)</script>\n  a < b & c\n    columns  stay"
    ref = await desk.open(ticket(body=body))
    description = freshdesk.tickets[int(ref)]["description"]
    assert "<script>" not in description
    assert text(description) == body


@pytest.mark.parametrize(("priority", "number"), [("urgent", 40), ("high", 30),
                                                  ("normal", 20), ("low", 10)])
async def test_each_priority_maps_to_the_routes_number(
    make_backend: MakeBackend, freshdesk: FakeFreshdesk, priority: str, number: int
) -> None:
    desk = make_backend(priorities={"urgent": 4, "high": 3, "normal": 2, "low": 1})
    ref = await desk.open(ticket(priority=priority))
    assert freshdesk.tickets[int(ref)]["priority"] == number // 10


async def test_a_requester_id_group_and_responder_go_with_the_ticket(
    make_backend: MakeBackend, freshdesk: FakeFreshdesk
) -> None:
    desk = make_backend(email=None, requester_id=5001, group_id=8001, responder_id=8003,
                        key_field=None)
    created = freshdesk.tickets[int(await desk.open(ticket()))]
    assert (created["requester_id"], created["group_id"], created["responder_id"]) == (
        5001, 8001, 8003)
    assert created["custom_fields"][KEY_FIELD] is None  # no key_field: the tag carries it
    assert await desk.find(KEY) == str(created["id"])


async def test_a_503_on_open_is_transient_and_the_retry_makes_one_ticket(
    desk: Backend, freshdesk: FakeFreshdesk
) -> None:
    freshdesk.answer("POST", "/api/v2/tickets", 503, {"message": "Service Unavailable"})
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert "HTTP 503: Service Unavailable" in caught.value.message

    ref = await desk.open(ticket())
    assert list(freshdesk.tickets) == [int(ref)]


async def test_a_create_answered_too_late_is_found_before_the_search_index_has_it(
    make_backend: MakeBackend, freshdesk: FakeFreshdesk
) -> None:
    desk = make_backend(timeout="500ms")
    freshdesk.stall_creates = 1
    started = time.monotonic()
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert "no answer within 0.5s" in caught.value.message
    assert time.monotonic() - started < 5

    [made] = freshdesk.tickets
    assert not freshdesk.indexed  # the search would not see it for minutes
    assert await desk.find(KEY) == str(made)


async def test_find_searches_by_tag_for_tickets_older_than_the_list_shows(
    desk: Backend, freshdesk: FakeFreshdesk
) -> None:
    old = await desk.open(ticket())
    freshdesk.tickets[int(old)]["created"] -= 40 * DAY
    assert await desk.find(KEY) is None  # not listed any more, not indexed yet
    freshdesk.catch_up()
    assert await desk.find(KEY) == old
    assert ("GET", "/api/v2/search/tickets") in freshdesk.requests


async def test_find_returns_the_newest_ticket_with_exactly_the_key_resolved_or_not(
    desk: Backend, freshdesk: FakeFreshdesk
) -> None:
    assert await desk.find(KEY) is None
    first = await desk.open(ticket())
    await desk.open(ticket(KEY + "0"))
    assert await desk.find(KEY) == first
    second = await desk.open(ticket(title="shop is down again"))
    await desk.resolve(second, "shop is back")
    assert await desk.find(KEY) == second
    freshdesk.human(int(second), deleted=True)
    assert await desk.find(KEY) == first


async def test_resolve_resolves_with_a_private_closing_note_and_can_be_repeated(
    desk: Backend, freshdesk: FakeFreshdesk
) -> None:
    ref = await desk.open(ticket())
    await desk.resolve(ref, "shop is back after 12m")
    assert freshdesk.tickets[int(ref)]["status"] == 4
    assert notes(freshdesk, ref) == [(True, "shop is back after 12m")]
    await desk.resolve(ref, "shop is back after 12m")
    assert freshdesk.tickets[int(ref)]["status"] == 4
    assert await desk.status(ref) == "closed"


async def test_a_failed_resolve_is_transient_and_the_retry_adds_one_closing_note(
    desk: Backend, freshdesk: FakeFreshdesk
) -> None:
    ref = await desk.open(ticket())
    freshdesk.answer("PUT", f"/api/v2/tickets/{ref}", 502)
    with pytest.raises(TicketError) as caught:
        await desk.resolve(ref, "shop is back")
    assert not caught.value.permanent
    assert freshdesk.tickets[int(ref)]["status"] == 2

    freshdesk.answer("POST", f"/api/v2/tickets/{ref}/notes", 500, {"message": "oops"})
    with pytest.raises(TicketError):
        await desk.resolve(ref, "shop is back")
    await desk.resolve(ref, "shop is back")
    assert freshdesk.tickets[int(ref)]["status"] == 4
    assert notes(freshdesk, ref) == [(True, "shop is back")]


async def test_resolve_leaves_a_closed_ticket_closed_and_a_deleted_one_alone(
    desk: Backend, freshdesk: FakeFreshdesk
) -> None:
    closed, deleted = await desk.open(ticket()), await desk.open(ticket(KEY + "/x"))
    freshdesk.human(int(closed), status=5)
    freshdesk.human(int(deleted), deleted=True)
    await desk.resolve(closed, "shop is back")
    await desk.resolve(deleted, "shop is back")
    assert freshdesk.tickets[int(closed)]["status"] == 5
    assert notes(freshdesk, closed) == [(True, "shop is back")]
    assert notes(freshdesk, deleted) == []


async def test_a_refused_ticket_is_permanent_with_freshdesks_reasons(
    make_backend: MakeBackend, freshdesk: FakeFreshdesk
) -> None:
    desk = make_backend(key_field="cf_no_such_field", tags=["probe", "x" * 33])
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert caught.value.permanent
    assert caught.value.message == (
        "POST /tickets: HTTP 400: Validation failed: tags: It should only contain elements "
        "that have maximum of 32 characters: cf_no_such_field: Unexpected/invalid field in "
        "request")
    assert freshdesk.tickets == {}

    with pytest.raises(TicketError) as caught:
        await desk.note("999999", "still down")
    assert caught.value.permanent
    assert caught.value.message == "POST /tickets/999999/notes: HTTP 404"


async def test_a_wrong_api_key_is_a_permanent_error(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-key"
    wrong.write_text("not-the-key\n")
    desk = make_backend(api_key_file=str(wrong))
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert caught.value.permanent
    assert caught.value.message == (
        "POST /tickets: HTTP 401: You have to be logged in to perform this action.")


async def test_rate_limiting_is_transient_with_freshdesks_wait(
    desk: Backend, freshdesk: FakeFreshdesk
) -> None:
    freshdesk.answer("GET", "/api/v2/tickets", 429, {"message": "Too many requests"},
                     headers={"Retry-After": "37", "X-RateLimit-Total": "200",
                              "X-RateLimit-Remaining": "0"})
    with pytest.raises(TicketError) as caught:
        await desk.find(KEY)
    assert not caught.value.permanent
    assert caught.value.retry_after == 37
    assert "HTTP 429: Too many requests" in caught.value.message


@pytest.mark.parametrize("closed_as", [4, 5])
async def test_a_ticket_a_human_resolved_or_closed_is_reopened_with_a_private_note(
    desk: Backend, freshdesk: FakeFreshdesk, closed_as: int
) -> None:
    ref = await desk.open(ticket())
    freshdesk.human(int(ref), status=closed_as)
    assert await desk.status(ref) == "closed"

    await desk.reopen(ref, "Reopened by probe: the outage goes on")
    assert freshdesk.tickets[int(ref)]["status"] == 2
    assert notes(freshdesk, ref) == [(True, "Reopened by probe: the outage goes on")]
    assert await desk.status(ref) == "open"


@pytest.mark.parametrize(("status", "responder", "route_responder", "expected"), [
    (2, None, None, "open"),
    (2, 8003, None, "acknowledged"),
    (2, 8003, 8003, "open"),  # the route's own responder: nobody took it yet
    (2, 8004, 8003, "acknowledged"),
    (3, None, None, "acknowledged"),
    (6, None, None, "acknowledged"),  # an account's own status, "Waiting on Customer"
    (4, 8003, None, "closed"),
    (5, None, None, "closed"),
])
async def test_status_says_who_has_the_ticket(
    make_backend: MakeBackend, freshdesk: FakeFreshdesk, status: int, responder: int | None,
    route_responder: int | None, expected: str,
) -> None:
    desk = make_backend(responder_id=route_responder)
    ref = await desk.open(ticket())
    freshdesk.human(int(ref), status=status, responder_id=responder)
    assert await desk.status(ref) == expected


async def test_status_of_a_deleted_spam_or_unknown_ticket_is_gone(
    desk: Backend, freshdesk: FakeFreshdesk
) -> None:
    deleted, spam = await desk.open(ticket()), await desk.open(ticket(KEY + "/2"))
    freshdesk.human(int(deleted), deleted=True)
    freshdesk.human(int(spam), spam=True)
    assert [await desk.status(r) for r in (deleted, spam, "999999")] == ["gone"] * 3
    with pytest.raises(TicketError) as caught:
        await desk.status("FD-1")
    assert caught.value.permanent


# --- the daemon, filing its tickets in Freshdesk ----------------------------------------------

FAST = """
defaults:
  interval: 200ms
  retry_interval: 100ms
  timeout: 100ms
  failure_threshold: 3
  success_threshold: 2
  ticket: {{priority: high, update_interval: 1s{policy}}}
ticketing:
  poll_interval: 200ms
  routes:
    servicedesk:
      backend: freshdesk
      url: "{url}"
      api_key_file: {api_key}
      email: {email}
      key_field: {key_field}
      timeout: 1s
checks:
  - name: web
    service: shop
    http: {{url: "http://127.0.0.1:{port}/health"}}
"""


def config(freshdesk: FakeFreshdesk, target: Target, tmp_path: Path, policy: str = "") -> str:
    api_key = freshdesk.route(tmp_path).api_key_file
    return FAST.format(url=freshdesk.url, api_key=api_key, email=REQUESTER_EMAIL,
                       key_field=KEY_FIELD, port=target.port,
                       policy=f", on_human_close: {policy}" if policy else "")


async def test_the_daemon_files_one_ticket_informs_it_and_resolves_it(
    freshdesk: FakeFreshdesk, target: Target, run: Runner, tmp_path: Path
) -> None:
    freshdesk.stall_creates = 1  # the first create is made, but its answer comes too late
    daemon, _ = await run(config(freshdesk, target, tmp_path))
    await until("a first result", lambda: "web" in daemon.results)
    target.down = True

    (made,) = await until("the ticket", lambda: list(freshdesk.tickets))
    ref = str(made)
    created = freshdesk.tickets[made]
    assert (created["custom_fields"][KEY_FIELD], created["priority"]) == ("t/shop/1", 3)
    description = text(created["description"])
    assert "Why:        3 consecutive failures" in description
    assert description.count("DOWN    HTTP 503 (expected 2xx)") == 3
    await until("a status note", lambda: [
        n for private, n in notes(freshdesk, ref) if private and n.startswith("Still failing")])

    target.down = False
    await until("the resolve", lambda: freshdesk.tickets[made]["status"] == 4)
    await until("the closing note", lambda: notes(freshdesk, ref)[-1][1].startswith(
        "Recovered: web (http "))
    assert list(freshdesk.tickets) == [made]  # the stalled create was found, not made again


@pytest.mark.parametrize("policy", ["reopen", "new", "leave"])
async def test_a_ticket_a_human_closes_during_the_outage(
    freshdesk: FakeFreshdesk, target: Target, run: Runner, tmp_path: Path, policy: str
) -> None:
    daemon, _ = await run(config(freshdesk, target, tmp_path, policy))
    target.down = True
    (first,) = await until("the ticket", lambda: list(freshdesk.tickets))
    freshdesk.human(first, status=5)
    if policy == "reopen":
        await until("the reopen", lambda: freshdesk.tickets[first]["status"] == 2)
        await until("the reopen note", lambda: notes(freshdesk, str(first))[-1][1].startswith(
            "Reopened by probe"))
    elif policy == "new":
        second = await until("a new ticket", lambda: [t for t in freshdesk.tickets if t != first])
        created = freshdesk.tickets[second[0]]
        assert created["custom_fields"][KEY_FIELD] == "t/shop/1+1"
        assert f"ticket {first}, closed while the outage went on" in text(
            created["description"])
    else:
        await asyncio.sleep(1.5)  # a note interval and more: nothing may happen
        assert len(freshdesk.tickets) == 1
        before = notes(freshdesk, str(first))
    target.down = False
    await until("the incident to resolve", lambda: not daemon.engine.groups["shop"].incident)
    if policy == "leave":
        await asyncio.sleep(0.5)
        assert notes(freshdesk, str(first)) == before
        assert freshdesk.tickets[first]["status"] == 5
    else:
        await until("the open ticket to be resolved", lambda: all(
            t["status"] in (4, 5) for t in freshdesk.tickets.values()))
