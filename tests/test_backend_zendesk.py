"""The zendesk backend against a Zendesk Support API v2 on loopback (tests/harness/fake_zendesk.py),
checked by reading what that helpdesk holds; then the daemon itself, in the test, filing its
tickets there for a flaky target."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from probe.helpdesks.base import Ticket, TicketError
from probe.helpdesks.zendesk import Backend
from tests.harness.daemon import Target
from tests.harness.fake_zendesk import EMAIL, ME, UPDATE_LIMITED, FakeZendesk, serve_zendesk
from tests.harness.inloop import Runner, sqlite
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


@pytest.fixture
async def zendesk() -> AsyncIterator[FakeZendesk]:
    async with serve_zendesk() as fake:
        yield fake


@pytest.fixture
async def make_backend(zendesk: FakeZendesk, tmp_path: Path) -> AsyncIterator[MakeBackend]:
    made: list[Backend] = []

    def make(**settings: Any) -> Backend:
        made.append(Backend("helpdesk", zendesk.route(tmp_path, **settings)))
        return made[-1]

    yield make
    for backend in made:
        await backend.close()


@pytest.fixture
def desk(make_backend: MakeBackend) -> Backend:
    return make_backend()


async def test_open_creates_an_urgent_incident_carrying_the_key_and_the_text(
    desk: Backend, zendesk: FakeZendesk
) -> None:
    ref = await desk.open(ticket())

    created = zendesk.tickets[int(ref)]
    assert created["subject"] == "shop is down"
    assert created["description"] == "shop-443: connection refused\nsince 01:02 UTC"
    assert (created["priority"], created["type"], created["status"]) == ("urgent", "incident",
                                                                         "new")
    assert created["external_id"] == KEY
    assert created["tags"] == ["probe"]
    assert (created["group_id"], created["assignee_id"]) == (None, None)


@pytest.mark.parametrize("priority", ["urgent", "high", "normal", "low"])
async def test_each_priority_is_zendesks_own(
    desk: Backend, zendesk: FakeZendesk, priority: str
) -> None:
    ref = await desk.open(ticket(priority=priority))
    assert zendesk.tickets[int(ref)]["priority"] == priority


async def test_the_routes_group_assignee_and_tags_go_with_the_ticket(
    make_backend: MakeBackend, zendesk: FakeZendesk
) -> None:
    desk = make_backend(group_id=360001, assignee_id=360002, tags=["probe", "noc"])
    created = zendesk.tickets[int(await desk.open(ticket()))]
    assert (created["group_id"], created["assignee_id"]) == (360001, 360002)
    assert created["tags"] == ["noc", "probe"]
    assert created["status"] == "open"  # Zendesk opens an assigned ticket itself


async def test_a_503_on_open_is_transient_and_the_retry_makes_one_ticket(
    desk: Backend, zendesk: FakeZendesk
) -> None:
    zendesk.answer("POST", "/api/v2/tickets.json", 503, "<html><body>Maintenance</body></html>")
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert "HTTP 503: Maintenance" in caught.value.message

    ref = await desk.open(ticket())
    assert list(zendesk.tickets) == [int(ref)]


async def test_a_create_answered_too_late_is_found_by_its_key_and_not_made_twice(
    make_backend: MakeBackend, zendesk: FakeZendesk
) -> None:
    desk = make_backend(timeout="500ms")
    zendesk.stall_creates = 1
    started = time.monotonic()
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert "no answer within 0.5s" in caught.value.message
    assert time.monotonic() - started < 5

    [made] = zendesk.tickets
    assert await desk.find(KEY) == str(made)
    # the same request again is answered by Zendesk's Idempotency-Key replay, not a new ticket
    assert await desk.open(ticket()) == str(made)
    assert list(zendesk.tickets) == [made]


async def test_a_re_rendered_open_never_reuses_an_idempotency_key_with_another_body(
    desk: Backend, zendesk: FakeZendesk
) -> None:
    # Zendesk refuses a known key with a different body: newer evidence must not make the
    # open fail for good (find() is what guards a re-rendered retry)
    first = await desk.open(ticket())
    second = await desk.open(ticket(body="shop-443: connection refused\nsince 01:03 UTC"))
    assert first != second


async def test_find_returns_the_newest_ticket_with_exactly_the_key_solved_or_not(
    desk: Backend, zendesk: FakeZendesk
) -> None:
    assert await desk.find(KEY) is None
    first = await desk.open(ticket())
    await desk.open(ticket(KEY + "0"))
    assert await desk.find(KEY) == first
    second = await desk.open(ticket(title="shop is down again"))
    await desk.resolve(second, "shop is back")
    assert await desk.find(KEY) == second


async def test_resolve_solves_with_a_private_closing_comment_and_can_be_repeated(
    desk: Backend, zendesk: FakeZendesk
) -> None:
    ref = await desk.open(ticket())
    await desk.resolve(ref, "shop is back after 12m")

    solved = zendesk.tickets[int(ref)]
    assert solved["status"] == "solved"
    assert solved["assignee_id"] == ME  # Zendesk solves nothing unassigned
    assert zendesk.comments(int(ref))[-1] == (False, "shop is back after 12m")
    await desk.resolve(ref, "shop is back after 12m")
    assert zendesk.tickets[int(ref)]["status"] == "solved"
    assert await desk.status(ref) == "closed"


async def test_resolve_keeps_the_agent_who_has_the_ticket(
    desk: Backend, zendesk: FakeZendesk
) -> None:
    ref = await desk.open(ticket())
    zendesk.human(int(ref), assignee_id=777, status="open")
    await desk.resolve(ref, "shop is back")
    assert (zendesk.tickets[int(ref)]["status"], zendesk.tickets[int(ref)]["assignee_id"]) == (
        "solved", 777)


async def test_a_failed_resolve_is_transient_and_the_retry_solves(
    desk: Backend, zendesk: FakeZendesk
) -> None:
    ref = await desk.open(ticket())
    zendesk.answer("PUT", f"/api/v2/tickets/{ref}.json", 500, {"error": "InternalError"})
    with pytest.raises(TicketError) as caught:
        await desk.resolve(ref, "shop is back")
    assert not caught.value.permanent
    assert zendesk.tickets[int(ref)]["status"] == "new"

    await desk.resolve(ref, "shop is back")
    assert zendesk.tickets[int(ref)]["status"] == "solved"
    assert [body for _, body in zendesk.comments(int(ref))].count("shop is back") == 1


async def test_resolve_leaves_a_closed_or_deleted_ticket_alone(
    desk: Backend, zendesk: FakeZendesk
) -> None:
    closed, deleted = await desk.open(ticket()), await desk.open(ticket(KEY + "/x"))
    zendesk.human(int(closed), status="closed", assignee_id=777)
    zendesk.human(int(deleted), status="deleted")
    await desk.resolve(closed, "shop is back")
    await desk.resolve(deleted, "shop is back")
    assert len(zendesk.comments(int(closed))) == 1
    assert await desk.status(deleted) == "gone"


async def test_a_refused_update_is_permanent_with_zendesks_reason(
    desk: Backend, zendesk: FakeZendesk
) -> None:
    ref = await desk.open(ticket())
    zendesk.human(int(ref), status="closed", assignee_id=777)
    with pytest.raises(TicketError) as caught:
        await desk.note(ref, "still down")
    assert caught.value.permanent
    assert caught.value.message == (f"PUT /tickets/{ref}.json: HTTP 422: Record validation "
                                    "errors: Status: closed prevents ticket update")

    with pytest.raises(TicketError) as caught:
        await desk.note("999999", "still down")
    assert caught.value.permanent
    assert "HTTP 404: Not found" in caught.value.message


async def test_a_wrong_token_is_a_permanent_error(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token\n")
    desk = make_backend(token_file=str(wrong))
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert caught.value.permanent
    assert caught.value.message == "POST /tickets.json: HTTP 401: Couldn't authenticate you"


async def test_a_token_from_the_environment_is_used_and_a_missing_one_is_permanent(
    make_backend: MakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBE_TEST_ZENDESK_TOKEN", "zd-api-token-6wH2")
    assert await make_backend(token_file=None, token="env:PROBE_TEST_ZENDESK_TOKEN").find(
        KEY) is None
    with pytest.raises(TicketError) as caught:
        await make_backend(token_file=None, token="env:PROBE_TEST_NO_SUCH_TOKEN").find(KEY)
    assert caught.value.permanent
    assert "PROBE_TEST_NO_SUCH_TOKEN is not set" in caught.value.message


async def test_the_per_ticket_update_limit_is_transient_with_zendesks_wait(
    desk: Backend, zendesk: FakeZendesk
) -> None:
    ref = await desk.open(ticket())
    zendesk.answer("PUT", f"/api/v2/tickets/{ref}.json", 429, UPDATE_LIMITED,
                   headers={"Retry-After": "93"})
    with pytest.raises(TicketError) as caught:
        await desk.note(ref, "still down")
    assert not caught.value.permanent
    assert caught.value.retry_after == 93
    assert UPDATE_LIMITED in caught.value.message


async def test_a_conflicting_update_is_retried(desk: Backend, zendesk: FakeZendesk) -> None:
    ref = await desk.open(ticket())
    zendesk.answer("PUT", f"/api/v2/tickets/{ref}.json", 409,
                   {"error": "Conflict", "description": "The ticket was updated concurrently"})
    with pytest.raises(TicketError) as caught:
        await desk.note(ref, "still down")
    assert not caught.value.permanent
    assert "HTTP 409: The ticket was updated concurrently" in caught.value.message
    await desk.note(ref, "still down")
    assert zendesk.comments(int(ref))[-1] == (False, "still down")


async def test_the_account_limit_reset_header_is_honoured(
    desk: Backend, zendesk: FakeZendesk
) -> None:
    zendesk.answer("GET", "/api/v2/tickets.json", 429, {"error": "TooManyRequests"},
                   headers={"ratelimit-reset": "41"})
    with pytest.raises(TicketError) as caught:
        await desk.find(KEY)
    assert not caught.value.permanent
    assert caught.value.retry_after == 41


async def test_a_solved_ticket_is_reopened_with_a_private_comment(
    desk: Backend, zendesk: FakeZendesk
) -> None:
    ref = await desk.open(ticket())
    zendesk.human(int(ref), status="solved", assignee_id=777)
    assert await desk.status(ref) == "closed"

    await desk.reopen(ref, "Reopened by probe: the outage goes on")
    assert zendesk.tickets[int(ref)]["status"] == "open"
    assert zendesk.comments(int(ref))[-1] == (False, "Reopened by probe: the outage goes on")
    assert await desk.status(ref) == "acknowledged"  # agent 777 still has it


async def test_a_closed_ticket_cannot_be_reopened_but_gets_a_follow_up(
    desk: Backend, zendesk: FakeZendesk
) -> None:
    ref = await desk.open(ticket())
    zendesk.human(int(ref), status="closed", assignee_id=777)
    assert await desk.status(ref) == "closed"
    with pytest.raises(TicketError) as caught:
        await desk.reopen(ref, "Reopened by probe")
    assert caught.value.permanent
    assert "never reopens a closed ticket: set on_human_close: new" in caught.value.message
    assert zendesk.tickets[int(ref)]["status"] == "closed"

    follow_up = zendesk.tickets[int(await desk.open(ticket(KEY + "+1", follows=ref)))]
    assert follow_up["via"]["source"] == {"from": {"ticket_id": int(ref)}, "to": {},
                                          "rel": "follow_up"}
    assert follow_up["external_id"] == KEY + "+1"


@pytest.mark.parametrize(("status", "assignee", "route_assignee", "expected"), [
    ("new", None, None, "open"),
    ("open", None, None, "open"),
    ("open", 777, None, "acknowledged"),
    ("open", 360002, 360002, "open"),  # the route's own assignee: nobody took it yet
    ("open", 777, 360002, "acknowledged"),
    ("pending", None, None, "acknowledged"),
    ("hold", None, None, "acknowledged"),
    ("solved", 777, None, "closed"),
    ("closed", 777, None, "closed"),
])
async def test_status_says_who_has_the_ticket(
    make_backend: MakeBackend, zendesk: FakeZendesk, status: str, assignee: int | None,
    route_assignee: int | None, expected: str,
) -> None:
    desk = make_backend(assignee_id=route_assignee)
    ref = await desk.open(ticket())
    zendesk.human(int(ref), status=status, assignee_id=assignee)
    assert await desk.status(ref) == expected


async def test_status_of_an_unknown_ticket_is_gone(desk: Backend) -> None:
    assert await desk.status("999999") == "gone"
    with pytest.raises(TicketError) as caught:
        await desk.status("ZD-1")
    assert caught.value.permanent


# --- the daemon, filing its tickets in Zendesk ------------------------------------------------

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
    desk:
      backend: zendesk
      url: "{url}"
      email: {email}
      token_file: {token}
      timeout: {timeout}
checks:
  - name: web
    service: shop
    http: {{url: "http://127.0.0.1:{port}/health"}}
"""


def config(zendesk: FakeZendesk, target: Target, tmp_path: Path, policy: str = "",
           timeout: str = "1s") -> str:
    token = zendesk.route(tmp_path).token_file
    return FAST.format(url=zendesk.url, email=EMAIL, token=token, port=target.port,
                       policy=f", on_human_close: {policy}" if policy else "", timeout=timeout)


async def test_the_daemon_files_one_ticket_informs_it_and_solves_it(
    zendesk: FakeZendesk, target: Target, run: Runner, tmp_path: Path
) -> None:
    zendesk.stall_creates = 1  # the first create is made, but its answer comes too late
    daemon, _ = await run(config(zendesk, target, tmp_path))
    await until("a first result", lambda: "web" in daemon.results)
    target.down = True

    (made,) = await until("the ticket", lambda: list(zendesk.tickets))
    created = zendesk.tickets[made]
    assert (created["external_id"], created["priority"]) == ("t/shop/1", "high")
    assert "Why:        3 consecutive failures" in created["description"]
    assert created["description"].count("DOWN    HTTP 503 (expected 2xx)") == 3
    await until("a status note", lambda: [
        b for public, b in zendesk.comments(made) if not public and b.startswith("Still failing")])

    target.down = False
    await until("the solve", lambda: zendesk.tickets[made]["status"] == "solved")
    assert zendesk.comments(made)[-1][0] is False
    assert zendesk.comments(made)[-1][1].startswith("Recovered: web (http ")
    assert list(zendesk.tickets) == [made]  # the stalled create was found, not made again


async def test_a_restarted_daemon_waits_out_a_create_zendesk_is_still_making(
    zendesk: FakeZendesk, target: Target, run: Runner, tmp_path: Path
) -> None:
    """probe stops while Zendesk is still making its ticket (it appears 2s after the request,
    within the route's 4s timeout). The restarted probe must not ask find() before that
    timeout has passed: asked sooner, it finds nothing and opens a second ticket."""
    zendesk.create_delay = 2.0
    daemon, _ = await run(config(zendesk, target, tmp_path, timeout="4s"))
    target.down = True
    await until("the create sent", lambda: ("POST", "/api/v2/tickets.json") in zendesk.requests)
    await run.stop(daemon)
    zendesk.create_delay = 0.0
    daemon, _ = await run(config(zendesk, target, tmp_path, timeout="4s"))

    await until("the open delivered", lambda: sqlite(daemon).run(lambda db: db.execute(
        "SELECT 1 FROM outbox WHERE action = 'open' AND status = 'delivered'").fetchall()),
        timeout=15)
    await until("Zendesk done making tickets", lambda: not zendesk.making)
    assert len(zendesk.tickets) == 1  # the first create, found: not made a second time
    assert ("GET", "/api/v2/tickets.json") in zendesk.requests  # by find()


@pytest.mark.parametrize("policy", ["reopen", "new", "leave"])
async def test_a_ticket_a_human_closes_during_the_outage(
    zendesk: FakeZendesk, target: Target, run: Runner, tmp_path: Path, policy: str
) -> None:
    daemon, _ = await run(config(zendesk, target, tmp_path, policy))
    target.down = True
    (first,) = await until("the ticket", lambda: list(zendesk.tickets))
    # reopen: a solved ticket can be; new: a closed one cannot, so it gets a follow-up
    zendesk.human(first, status="closed" if policy == "new" else "solved", assignee_id=777)
    if policy == "reopen":
        await until("the reopen", lambda: zendesk.tickets[first]["status"] == "open")
        assert zendesk.comments(first)[-1][1].startswith("Reopened by probe")
    elif policy == "new":
        second = await until("a follow-up", lambda: [t for t in zendesk.tickets if t != first])
        follow_up = zendesk.tickets[second[0]]
        assert follow_up["external_id"] == "t/shop/1+1"
        assert follow_up["via"]["source"]["from"] == {"ticket_id": first}
    else:
        await asyncio.sleep(1.5)  # a note interval and more: nothing may happen
        assert len(zendesk.tickets) == 1
        before = zendesk.comments(first)
    target.down = False
    await until("the incident to resolve", lambda: not daemon.engine.groups["shop"].incident)
    if policy == "leave":
        await asyncio.sleep(0.5)
        assert zendesk.comments(first) == before
        assert zendesk.tickets[first]["status"] == "solved"
    else:
        await until("the open ticket to be solved", lambda: all(
            t["status"] in ("solved", "closed") for t in zendesk.tickets.values()))


async def test_a_closed_ticket_that_cannot_be_reopened_gets_a_follow_up_instead(
    zendesk: FakeZendesk, target: Target, run: Runner, tmp_path: Path
) -> None:
    """on_human_close: reopen, but Zendesk refuses to reopen a closed ticket: probe opens a
    follow-up once, instead of asking again at every poll."""
    await run(config(zendesk, target, tmp_path, "reopen"))
    target.down = True
    (first,) = await until("the ticket", lambda: list(zendesk.tickets))
    zendesk.human(first, status="closed", assignee_id=777)
    second = await until("a follow-up", lambda: [t for t in zendesk.tickets if t != first])
    assert zendesk.tickets[second[0]]["via"]["source"]["from"] == {"ticket_id": first}
    await asyncio.sleep(1.5)  # several polls: no second follow-up, no more reopen attempts
    assert len(zendesk.tickets) == 2
