"""The zammad backend against a Zammad REST API v1 on loopback (tests/harness/fake_zammad.py),
checked by reading what that helpdesk holds: its tickets' tags, states, owners and articles.
Then the daemon: `probe run` as a subprocess filing, noting, escalating, reopening and closing
its tickets there, `probe test-ticket` on the route, and, in the test's own loop, a merged
ticket followed up rather than reopened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from probe.helpdesks.base import Ticket, TicketError
from probe.helpdesks.zammad import Backend, Route, key_tag
from tests.harness.daemon import ProbeProcess, Target
from tests.harness.fake_zammad import BAD_GATEWAY, CUSTOMER, NOBODY, TOKEN, FakeZammad, serve
from tests.harness.inloop import Runner
from tests.harness.ports import free_port
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
async def zammad() -> AsyncIterator[FakeZammad]:
    async with serve() as fake:
        yield fake


@pytest.fixture
async def make_backend(zammad: FakeZammad, tmp_path: Path) -> AsyncIterator[MakeBackend]:
    made: list[Backend] = []

    def make(**settings: Any) -> Backend:
        made.append(Backend("helpdesk", zammad.route(tmp_path, **settings)))
        return made[-1]

    yield make
    for backend in made:
        await backend.close()


@pytest.fixture
def desk(make_backend: MakeBackend) -> Backend:
    return make_backend()


async def test_open_creates_a_new_ticket_in_the_group_carrying_the_key_tag_and_the_text(
    desk: Backend, zammad: FakeZammad
) -> None:
    ref = await desk.open(ticket())

    created = zammad.tickets[int(ref)]
    assert (created["title"], created["group"], created["customer"]) == (
        "shop is down", "Users", CUSTOMER)
    assert (created["state"], created["priority_id"], created["owner_id"]) == ("new", 3, NOBODY)
    assert created["tags"] == ["probe", key_tag(KEY)]
    [opening] = created["articles"]
    assert opening == {"body": "shop-443: connection refused\nsince 01:02 UTC",
                       "internal": False, "type": "note", "content_type": "text/plain"}


@pytest.mark.parametrize(("priority", "expected"),
                         [("urgent", 3), ("high", 3), ("normal", 2), ("low", 1)])
async def test_each_priority_is_zammads_priority_id(
    desk: Backend, zammad: FakeZammad, priority: str, expected: int
) -> None:
    ref = await desk.open(ticket(priority=priority))
    assert zammad.tickets[int(ref)]["priority_id"] == expected


async def test_the_routes_owner_tags_and_priorities_go_with_the_ticket(
    make_backend: MakeBackend, zammad: FakeZammad
) -> None:
    desk = make_backend(owner_id=12, tags=["probe", "noc"],
                        priorities={"urgent": 2, "high": 2, "normal": 1, "low": 1})
    created = zammad.tickets[int(await desk.open(ticket()))]
    assert (created["owner_id"], created["priority_id"]) == (12, 2)
    assert created["tags"] == ["probe", "noc", key_tag(KEY)]


def test_a_tag_zammad_would_split_is_refused_when_the_route_is_read(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="is not a Zammad tag: 1 to 100 characters, no "
                                              "comma"):
        Route.model_validate({"backend": "zammad", "url": "https://zammad.example.net",
                              "token_file": str(tmp_path / "token"), "group": "Users",
                              "customer": CUSTOMER, "tags": ["probe,noc"]})


async def test_a_refused_create_is_permanent_with_zammads_words(
    make_backend: MakeBackend, zammad: FakeZammad
) -> None:
    with pytest.raises(TicketError) as caught:
        await make_backend(group="Network").open(ticket())
    assert caught.value.permanent
    assert caught.value.message == ("POST /tickets: HTTP 422: No lookup value found for "
                                    "'group': \"Network\"")
    assert zammad.tickets == {}


async def test_a_create_answered_too_late_is_found_at_once_though_the_search_index_lags(
    make_backend: MakeBackend, zammad: FakeZammad
) -> None:
    desk = make_backend(timeout="500ms")
    zammad.index_lag = 60.0  # Elasticsearch has not seen the ticket, and will not for a minute
    zammad.stall_creates = 1
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert "no answer within 0.5s" in caught.value.message

    [made] = zammad.tickets
    assert await searched(zammad, {"query": f"tags:{key_tag(KEY)}"}) == []  # the index: not yet
    started = time.monotonic()
    assert await desk.find(KEY) == str(made)  # from the database
    assert time.monotonic() - started < 2
    assert list(zammad.tickets) == [made]  # the outbox opens nothing more: one ticket
    zammad.index_lag = 0.0
    assert await searched(zammad, {"query": f"tags:{key_tag(KEY)}"}) == [made]  # indexed now


async def searched(zammad: FakeZammad, params: dict[str, str]) -> list[int]:
    """The ticket ids Zammad's search answers `params` with, as an agent's client asks."""
    headers = {"Authorization": f"Token token={TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session, session.get(
            f"{zammad.url}/api/v1/tickets/search", params={**params, "expand": "true"}) as r:
        return [t["id"] for t in await r.json()]


async def test_a_long_title_is_cut_to_zammads_250_characters(
    desk: Backend, zammad: FakeZammad
) -> None:
    ref = await desk.open(ticket(title="shop is down: " + "x" * 300))
    title = zammad.tickets[int(ref)]["title"]
    assert len(title) == 250
    assert title.startswith("shop is down: xxx") and title.endswith("x…")


async def test_find_returns_the_newest_ticket_with_exactly_the_key_closed_or_not(
    desk: Backend, zammad: FakeZammad
) -> None:
    assert await desk.find(KEY) is None
    first = await desk.open(ticket())
    await desk.open(ticket(KEY + "0"))
    assert await desk.find(KEY) == first
    second = await desk.open(ticket(title="shop is down again"))
    await desk.resolve(second, "shop is back")
    assert await desk.find(KEY) == second
    assert zammad.tickets[int(second)]["state"] == "closed"


async def test_a_note_is_an_internal_article_and_leaves_the_state_alone(
    desk: Backend, zammad: FakeZammad
) -> None:
    ref = await desk.open(ticket())
    await desk.note(ref, "Still failing after 1h")
    assert zammad.articles(int(ref)) == [(True, "Still failing after 1h")]
    assert zammad.tickets[int(ref)]["state"] == "new"


async def test_a_note_on_an_unknown_ticket_is_permanent_with_zammads_words(
    desk: Backend,
) -> None:
    with pytest.raises(TicketError) as caught:
        await desk.note("999999", "still down")
    assert caught.value.permanent
    assert caught.value.message == ("POST /ticket_articles: HTTP 404: Couldn't find Ticket "
                                    "with 'id'=999999")


async def test_resolve_closes_with_an_internal_closing_note_and_can_be_repeated(
    desk: Backend, zammad: FakeZammad
) -> None:
    ref = await desk.open(ticket())
    await desk.resolve(ref, "shop is back after 12m")
    await desk.resolve(ref, "shop is back after 12m")

    assert zammad.tickets[int(ref)]["state"] == "closed"
    assert zammad.articles(int(ref)) == [(True, "shop is back after 12m")]
    assert await desk.status(ref) == "closed"


async def test_a_proxys_html_error_page_is_transient_and_the_retry_notes_once(
    desk: Backend, zammad: FakeZammad
) -> None:
    ref = await desk.open(ticket())
    zammad.answer("POST", "/api/v1/ticket_articles", 502, BAD_GATEWAY)
    with pytest.raises(TicketError) as caught:
        await desk.note(ref, "still down")
    assert not caught.value.permanent
    assert caught.value.message == ("POST /ticket_articles: HTTP 502: 502 Bad Gateway 502 Bad "
                                    "Gateway nginx")
    assert zammad.articles(int(ref)) == []

    await desk.note(ref, "still down")
    assert zammad.articles(int(ref)) == [(True, "still down")]


async def test_a_rate_limit_is_transient_with_zammads_wait(
    desk: Backend, zammad: FakeZammad
) -> None:
    ref = await desk.open(ticket())
    zammad.answer("PUT", f"/api/v1/tickets/{ref}", 429, {"error": "Too many requests"},
                  headers={"Retry-After": "17"})
    with pytest.raises(TicketError) as caught:
        await desk.resolve(ref, "shop is back")
    assert not caught.value.permanent
    assert caught.value.retry_after == 17
    assert "HTTP 429: Too many requests" in caught.value.message
    assert zammad.tickets[int(ref)]["state"] == "new"


async def test_a_wrong_token_is_a_permanent_error(
    make_backend: MakeBackend, tmp_path: Path, zammad: FakeZammad
) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token\n")
    with pytest.raises(TicketError) as caught:
        await make_backend(token_file=str(wrong)).open(ticket())
    assert caught.value.permanent
    assert caught.value.message == "POST /tickets: HTTP 401: Invalid token!"
    assert zammad.tickets == {}


async def test_a_token_from_the_environment_is_used_and_a_missing_one_is_permanent(
    make_backend: MakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBE_TEST_ZAMMAD_TOKEN", "zammad-token-Qx81")
    assert await make_backend(token_file=None, token="env:PROBE_TEST_ZAMMAD_TOKEN").find(
        KEY) is None
    with pytest.raises(TicketError) as caught:
        await make_backend(token_file=None, token="env:PROBE_TEST_NO_SUCH_TOKEN").find(KEY)
    assert caught.value.permanent
    assert "PROBE_TEST_NO_SUCH_TOKEN is not set" in caught.value.message


async def test_a_ticket_a_human_closed_is_reopened_with_an_internal_note(
    desk: Backend, zammad: FakeZammad
) -> None:
    ref = await desk.open(ticket())
    zammad.human(int(ref), state="closed", owner_id=7)
    assert await desk.status(ref) == "closed"

    await desk.reopen(ref, "Reopened by probe: the outage goes on")
    assert zammad.tickets[int(ref)]["state"] == "open"
    assert zammad.articles(int(ref)) == [(True, "Reopened by probe: the outage goes on")]
    assert await desk.status(ref) == "acknowledged"  # agent 7 still owns it


async def test_a_merged_ticket_is_not_reopened_and_a_follow_up_links_to_it(
    desk: Backend, zammad: FakeZammad
) -> None:
    ref = await desk.open(ticket())
    other = await desk.open(ticket(KEY + "/other"))
    zammad.merge(int(ref), int(other))
    assert await desk.status(ref) == "closed"
    with pytest.raises(TicketError) as caught:
        await desk.reopen(ref, "Reopened by probe")
    assert caught.value.permanent
    assert "merged into another ticket" in caught.value.message
    assert "set on_human_close: new" in caught.value.message
    await desk.resolve(ref, "shop is back")  # left alone: its conversation is elsewhere
    assert zammad.tickets[int(ref)]["state"] == "merged"
    assert len(zammad.articles(int(ref))) == 1  # Zammad's own "merged into" article

    follow_up = zammad.tickets[int(await desk.open(ticket(KEY + "+1", follows=ref)))]
    assert follow_up["links"] == [("normal", int(ref))]
    assert follow_up["tags"] == ["probe", key_tag(KEY + "+1")]


@pytest.mark.parametrize(("state", "owner", "route_owner", "expected"), [
    ("new", NOBODY, None, "open"),
    ("open", NOBODY, None, "open"),  # opened, but nobody owns it: Zammad's "unassigned"
    ("new", 7, None, "acknowledged"),
    ("open", 12, 12, "open"),  # the route's own preset owner: nobody took it yet
    ("open", 7, 12, "acknowledged"),
    ("pending reminder", NOBODY, None, "acknowledged"),
    ("pending close", NOBODY, None, "acknowledged"),
    ("closed", 7, None, "closed"),
    ("merged", NOBODY, None, "closed"),
    ("removed", NOBODY, None, "gone"),
])
async def test_status_follows_zammads_owner_and_state(
    make_backend: MakeBackend, zammad: FakeZammad, state: str, owner: int,
    route_owner: int | None, expected: str,
) -> None:
    desk = make_backend(owner_id=route_owner)
    ref = await desk.open(ticket())
    zammad.human(int(ref), state=state, owner_id=owner)
    assert await desk.status(ref) == expected


async def test_status_of_an_unknown_ticket_is_gone_and_a_ref_that_is_no_id_is_permanent(
    desk: Backend,
) -> None:
    assert await desk.status("999999") == "gone"
    with pytest.raises(TicketError) as caught:
        await desk.status("#31001")
    assert caught.value.permanent


def test_the_link_is_the_tickets_page_in_zammads_interface(tmp_path: Path) -> None:
    route = Route.model_validate({"backend": "zammad", "url": "https://zammad.example.net/",
                                  "token_file": str(tmp_path / "token"), "group": "Users",
                                  "customer": CUSTOMER})
    assert route.link("42") == "https://zammad.example.net/#ticket/zoom/42"


# --- the daemon, filing its tickets in Zammad ---------------------------------------------------

DAEMON = """
agent: {{name: t, state_dir: {state}, listen: "127.0.0.1:{listen}"}}
defaults:
  interval: 200ms
  retry_interval: 100ms
  timeout: 100ms
  failure_threshold: 3
  success_threshold: 2
  ticket: {{route: desk, priority: urgent, update_interval: 1s, escalate_after: 1s{policy}}}
ticketing:
  poll_interval: 200ms
  routes:
    desk:
      backend: zammad
      url: "{url}"
      token_file: {token}
      group: Users
      customer: {customer}
      escalate_to: oncall
      timeout: 2s
    oncall:
      backend: zammad
      url: "{url}"
      token_file: {token}
      group: Oncall
      customer: {customer}
      timeout: 2s
checks:
  - name: web
    service: shop
    http: {{url: "http://127.0.0.1:{port}/health"}}
"""


def daemon_config(zammad: FakeZammad, target: Target, tmp_path: Path, policy: str = "",
                  listen: int = 0) -> str:
    return DAEMON.format(state=tmp_path / "state", listen=listen or free_port(), url=zammad.url,
                         token=zammad.route(tmp_path).token_file, customer=CUSTOMER,
                         port=target.port,
                         policy=f", on_human_close: {policy}" if policy else "")


def tagged(zammad: FakeZammad, key: str) -> list[int]:
    return zammad.with_tag(key_tag(key))


def last_article(zammad: FakeZammad, ticket_id: int) -> tuple[bool, str]:
    articles = zammad.articles(ticket_id)
    return articles[-1] if articles else (False, "")


async def test_probe_run_opens_notes_escalates_reopens_and_resolves_one_zammad_ticket(
    zammad: FakeZammad, target: Target, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "probe.yaml"
    config.write_text(daemon_config(zammad, target, tmp_path, "reopen", listen=port))
    probe = ProbeProcess(config, port, tmp_path / "state").start()
    await probe.wait("the daemon to start", lambda: "probe started" in probe.log_text())
    target.down = True

    (first,) = await probe.wait("the ticket", lambda: tagged(zammad, "t/shop/1"))
    created = zammad.tickets[first]
    assert (created["group"], created["priority_id"], created["state"]) == ("Users", 3, "new")
    assert "Why:        3 consecutive failures" in created["articles"][0]["body"]
    await probe.wait("a status note", lambda: any(
        internal and text.startswith("Still failing")
        for internal, text in zammad.articles(first)))

    # nobody takes it: after escalate_after, a ticket on the oncall route, and a note here
    (escalation,) = await probe.wait("the escalation",
                                     lambda: tagged(zammad, "t/shop/1/escalation"))
    assert zammad.tickets[escalation]["group"] == "Oncall"
    await probe.wait("the escalation note", lambda: any(
        internal and "probe escalated it to the oncall route" in text
        for internal, text in zammad.articles(first)))

    # an agent takes it and closes it while the outage goes on: probe reopens it
    zammad.human(first, state="closed", owner_id=7)
    await probe.wait("the reopen", lambda: zammad.tickets[first]["state"] == "open")
    await probe.wait("the reopen note", lambda: last_article(zammad, first)[1].startswith(
        "Reopened by probe"))
    assert last_article(zammad, first)[0] is True

    target.down = False
    await probe.wait("the resolve", lambda: zammad.tickets[first]["state"] == "closed")
    await probe.wait("the closing note", lambda: last_article(zammad, first)[1].startswith(
        "Recovered: web (http "))
    assert last_article(zammad, first)[0] is True
    assert tagged(zammad, "t/shop/1") == [first]  # one ticket for the incident, never two
    probe.stop()
    assert probe.proc is not None and probe.proc.returncode == 0, probe.log_text()


async def test_probe_test_ticket_opens_notes_and_closes_a_ticket_on_the_route(
    zammad: FakeZammad, target: Target, tmp_path: Path
) -> None:
    config = tmp_path / "probe.yaml"
    config.write_text(daemon_config(zammad, target, tmp_path))
    probe = ProbeProcess(config, free_port(), tmp_path / "state")
    # in a thread: the fake answers in this test's event loop
    output = await asyncio.to_thread(probe.command, "test-ticket", "--route", "desk")

    assert "FAIL" not in output, output
    (made,) = zammad.tickets
    created = zammad.tickets[made]
    assert created["title"].startswith("[probe] TEST ticket from t")
    assert (created["state"], created["priority_id"]) == ("closed", 1)
    assert zammad.articles(made) == [(True, "probe test-ticket: a note."),
                                     (True, "probe test-ticket: resolved.")]


async def test_a_merged_ticket_is_followed_up_once_instead_of_reopened(
    zammad: FakeZammad, target: Target, run: Runner, tmp_path: Path, desk: Backend
) -> None:
    """on_human_close: reopen, but an agent merged probe's ticket into another: probe opens a
    follow-up linked to it, once, rather than asking Zammad to reopen it at every poll."""
    text = daemon_config(zammad, target, tmp_path, "reopen")
    await run(text[text.index("defaults:"):])  # the Runner writes the agent section
    target.down = True
    (first,) = await until("the ticket", lambda: tagged(zammad, "t/shop/1"))
    elsewhere = await desk.open(ticket("human/merge/target"))  # what an agent merges into
    zammad.merge(first, int(elsewhere))

    (follow_up,) = await until("a follow-up", lambda: tagged(zammad, "t/shop/1+1"))
    assert zammad.tickets[follow_up]["links"] == [("normal", first)]
    await asyncio.sleep(1.0)  # several polls: no second follow-up, no reopen attempt
    assert tagged(zammad, "t/shop/1+1") == [follow_up]
    assert zammad.tickets[first]["state"] == "merged"
    assert ("PUT", f"/api/v1/tickets/{first}") not in zammad.requests

