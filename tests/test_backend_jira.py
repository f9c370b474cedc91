"""The jira backend against a Jira on loopback (tests/harness/fake_jira.py) that speaks the REST
API as Atlassian documents it, with its traps: a search index that lags behind writes, workflows
whose transitions differ, fields the project requires, public comments on service desks. What
counts is what the fake Jira holds afterwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from probe.helpdesks.base import Ticket, TicketError
from probe.helpdesks.jira import Backend, Route, key_label
from tests.harness.daemon import Target
from tests.harness.fake_jira import EMAIL, PAT, TOKEN, FakeJira, reset_in, serve_jira
from tests.harness.inloop import Runner
from tests.harness.wait import until

KEY = "probe-eu-1/shop/3"
BODY = """shop is DOWN: connection refused from shop.example.com:443

Since:      2026-05-01 10:00:00 UTC (3m ago)
Seen from:  probe-eu-1

Checks:
  shop-443 (tcp shop.example.com:443): FAILING — connection refused (3 in a row)

probe key: probe-eu-1/shop/3 (probe finds this ticket by it: please keep it)"""


def ticket(key: str = KEY, **changes: Any) -> Ticket:
    fields: dict[str, Any] = {
        "key": key,
        "title": "[probe] shop DOWN — connection refused from shop.example.com:443",
        "body": BODY,
        "body_markdown": "**shop** is DOWN",
        "priority": "urgent",
        "agent": "probe-eu-1",
        "group": "shop",
        **changes,
    }
    return Ticket(**fields)


MakeBackend = Callable[..., Backend]


@pytest.fixture
async def jira() -> AsyncIterator[FakeJira]:
    async with serve_jira() as fake:
        yield fake


@pytest.fixture
async def make(jira: FakeJira, tmp_path: Path) -> AsyncIterator[MakeBackend]:
    """Backends on routes to the fake Jira; keyword arguments override the route's settings."""
    made: list[Backend] = []
    (tmp_path / "jira-token").write_text(TOKEN + "\n")
    (tmp_path / "jira-pat").write_text(PAT + "\n")

    def backend(**settings: Any) -> Backend:
        data_center = settings.get("deployment") == "data-center"
        route = Route.model_validate({
            "backend": "jira",
            "url": jira.url,
            "email": EMAIL,
            "token_file": str(tmp_path / ("jira-pat" if data_center else "jira-token")),
            "project": "OPS",
            "timeout": "2s",
            "search_lag": "1s",
            **settings,
        })
        made.append(Backend("desk", route))
        return made[-1]

    yield backend
    for b in made:
        await b.close()


@pytest.fixture
def desk(make: MakeBackend) -> Backend:
    return make()


# --- open ------------------------------------------------------------------------------------


async def test_open_creates_an_issue_with_the_mapped_priority_the_key_label_and_adf_text(
    desk: Backend, jira: FakeJira
) -> None:
    ref = await desk.open(ticket())

    issue = jira.issues[ref]
    assert ref == "OPS-1"
    assert issue.fields["project"] == {"key": "OPS"}
    assert issue.fields["issuetype"] == {"name": "Task"}
    assert issue.fields["summary"] == ticket().title
    assert issue.fields["priority"] == {"name": "Highest"}
    assert issue.fields["labels"] == ["probe", key_label(KEY), "probe-probe-eu-1-shop-3"]
    assert key_label(KEY).startswith("probe-key-") and " " not in key_label(KEY)
    description = issue.fields["description"]
    assert description["type"] == "doc" and description["version"] == 1
    text = jira.text(description)
    assert text.startswith("shop is DOWN: connection refused from shop.example.com:443\n")
    assert "Seen from:  probe-eu-1" in text
    # the indented lines keep their alignment in a code block
    assert {"type": "codeBlock", "content": [{"type": "text", "text": (
        "shop-443 (tcp shop.example.com:443): FAILING — connection refused (3 in a row)")}]} in (
        description["content"])
    assert "probe key: probe-eu-1/shop/3" in text
    assert issue.status == "To Do" and issue.comments == []


async def test_each_priority_maps_to_the_routes_jira_priority_name(make: MakeBackend,
                                                                   jira: FakeJira) -> None:
    desk = make(priorities={"urgent": "High", "high": "Medium", "normal": "Low", "low": "Lowest"})
    ref = await desk.open(ticket(priority="low"))
    assert jira.issues[ref].fields["priority"] == {"name": "Lowest"}


async def test_a_long_title_on_several_lines_becomes_a_one_line_summary_jira_takes(
    desk: Backend, jira: FakeJira
) -> None:
    ref = await desk.open(ticket(title="shop\nis down " + "x" * 400))
    summary = jira.issues[ref].fields["summary"]
    assert summary.startswith("shop is down xxx") and summary.endswith("…")
    assert len(summary) == 255


async def test_a_503_on_open_is_transient_and_the_retry_opens_one_issue(
    desk: Backend, jira: FakeJira
) -> None:
    jira.fail("POST", "/rest/api/3/issue$", 503, body={"message": "Service Unavailable"})
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert "HTTP 503" in caught.value.message

    assert await desk.find(KEY) is None  # nothing was created: the next attempt opens
    ref = await desk.open(ticket())
    assert list(jira.issues) == [ref]


async def test_an_open_that_times_out_after_jira_created_the_issue_is_found_by_the_next_try(
    make: MakeBackend, jira: FakeJira
) -> None:
    desk = make(timeout="500ms", search_lag="5s")
    jira.index_lag = 0.5
    jira.fail("POST", "/rest/api/3/issue$", stall=1.5)
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert "no answer within 0.5s" in caught.value.message

    assert await desk.find(KEY) == "OPS-1"  # so the dispatcher does not open a second one
    assert list(jira.issues) == ["OPS-1"]


async def test_jiras_field_errors_are_permanent_and_name_the_route_setting(
    make: MakeBackend, jira: FakeJira
) -> None:
    desk = make(priorities={"urgent": "P1", "high": "P2", "normal": "P3", "low": "P4"},
                issue_type="Story")
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert caught.value.permanent
    message = caught.value.message
    assert message.startswith("POST /rest/api/3/issue: HTTP 400: ")
    assert "priority: Priority name 'P1' is not valid (the route's priorities)" in message
    assert "issuetype: Specify a valid issue type (the route's issue_type)" in message
    assert jira.issues == {}


async def test_a_field_the_projects_screen_requires_is_named_in_the_permanent_error(
    desk: Backend, jira: FakeJira
) -> None:
    jira.required = {"components": "Component/s is required."}
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert caught.value.permanent
    assert ("components: Component/s is required. (probe does not set this field: make it "
            "optional or give it a default)") in caught.value.message


async def test_wrong_credentials_are_a_permanent_error_with_jiras_message(
    make: MakeBackend, tmp_path: Path
) -> None:
    (tmp_path / "wrong").write_text("not-the-token")
    desk = make(token_file=str(tmp_path / "wrong"))
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert caught.value.permanent
    assert "HTTP 401" in caught.value.message
    assert "Client must be authenticated" in caught.value.message


async def test_a_missing_token_file_is_a_permanent_error_naming_it(
    make: MakeBackend, tmp_path: Path
) -> None:
    desk = make(token_file=str(tmp_path / "nowhere"))
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert caught.value.permanent
    assert caught.value.message.startswith("jira token: token_file: cannot read")


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Retry-After": "7", "X-RateLimit-Reset": "in 120s"}, (7, 7)),
    ({"X-RateLimit-Reset": "in 120s"}, (60, 120)),  # to the minute, as Jira writes it
])
async def test_a_429_is_transient_and_says_when_to_try_again(
    desk: Backend, jira: FakeJira, headers: dict[str, str], expected: tuple[float, float]
) -> None:
    # the reset time is written when the test runs, not when it was collected
    headers = {k: reset_in(120) if v == "in 120s" else v for k, v in headers.items()}
    jira.fail("POST", "/rest/api/3/issue$", 429, headers=headers,
              body={"errorMessages": ["Rate limit exceeded."]})
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert "Rate limit exceeded." in caught.value.message
    assert caught.value.retry_after is not None
    assert expected[0] <= caught.value.retry_after <= expected[1]
    assert jira.issues == {}


# --- find ------------------------------------------------------------------------------------


async def test_find_returns_the_newest_issue_carrying_the_key(desk: Backend) -> None:
    first = await desk.open(ticket())
    assert await desk.find(KEY) == first
    second = await desk.open(ticket())
    other = await desk.open(ticket("probe-eu-1/shop/4"))
    assert await desk.find(KEY) == second
    assert await desk.find("probe-eu-1/shop/4") == other
    await desk.resolve(second, "recovered")
    assert await desk.find(KEY) == second


async def test_find_waits_for_the_search_index_to_catch_up_with_a_new_issue(
    make: MakeBackend, jira: FakeJira
) -> None:
    desk = make(search_lag="5s")
    jira.index_lag = 0.6
    ref = await desk.open(ticket())
    started = time.monotonic()
    assert await desk.find(KEY) == ref
    assert 0.5 < time.monotonic() - started < 4


async def test_find_gives_up_after_search_lag_so_a_slower_index_risks_a_duplicate(
    make: MakeBackend, jira: FakeJira
) -> None:
    # The residual risk, shown: Jira took longer to index the issue than search_lag.
    desk = make(search_lag="300ms")
    jira.index_lag = 60
    await desk.open(ticket())
    started = time.monotonic()
    assert await desk.find(KEY) is None
    assert time.monotonic() - started < 3


# --- notes -----------------------------------------------------------------------------------


async def test_note_adds_a_comment_in_adf(desk: Backend, jira: FakeJira) -> None:
    ref = await desk.open(ticket())
    await desk.note(ref, "Still failing after 1h.\nLatest: connection refused.")
    (comment,) = jira.issues[ref].comments
    assert comment.via == "platform"
    assert jira.text(comment.body) == "Still failing after 1h.\nLatest: connection refused.\n"
    assert jira.issues[ref].status == "To Do"


async def test_on_a_service_desk_notes_are_internal_comments(make: MakeBackend,
                                                             jira: FakeJira) -> None:
    desk = make(project="HELP", issue_type="Incident", service_desk=True)
    ref = await desk.open(ticket())
    await desk.note(ref, "Still failing after 1h.")
    await desk.resolve(ref, "Recovered after 1h12m.")

    comments = jira.issues[ref].comments
    assert [(c.via, c.public, c.body) for c in comments] == [
        ("servicedesk", False, "Still failing after 1h."),
        ("servicedesk", False, "Recovered after 1h12m."),
    ]
    assert jira.issues[ref].status == "Done"


# --- resolve ---------------------------------------------------------------------------------


async def test_resolve_comments_the_closing_note_then_moves_the_issue_to_done(
    desk: Backend, jira: FakeJira
) -> None:
    ref = await desk.open(ticket())
    await desk.resolve(ref, "Recovered: shop-443 OK.\nDown for 12m.")
    issue = jira.issues[ref]
    assert issue.status == "Done"  # "Done", not the other done status, "Won't Do"
    assert jira.text(issue.comments[-1].body) == "Recovered: shop-443 OK.\nDown for 12m.\n"
    # the comment went first: the closing note is on the issue before it closes
    posts = [p for m, p, _ in jira.seen if m == "POST" and p.startswith(f"/rest/api/3/issue/{ref}")]
    assert posts == [f"/rest/api/3/issue/{ref}/comment", f"/rest/api/3/issue/{ref}/transitions"]


async def test_resolve_works_from_in_progress_and_leaves_a_done_issue_done(
    desk: Backend, jira: FakeJira
) -> None:
    ref = await desk.open(ticket())
    jira.issues[ref].status = "In Progress"
    await desk.resolve(ref, "Recovered.")
    assert jira.issues[ref].status == "Done"
    jira.issues[ref].status = "Won't Do"
    await desk.resolve(ref, "Recovered.")
    assert jira.issues[ref].status == "Won't Do"


async def test_resolve_gives_the_resolution_a_transition_screen_asks_for(
    make: MakeBackend, jira: FakeJira
) -> None:
    jira.resolution_screen = True
    ref = await make().open(ticket())
    await make().resolve(ref, "Recovered.")
    assert (jira.issues[ref].status, jira.issues[ref].resolution) == ("Done", "Done")

    other = await make().open(ticket("probe-eu-1/shop/4"))
    with pytest.raises(TicketError) as caught:
        await make(resolution="Fixed").resolve(other, "Recovered.")
    assert caught.value.permanent
    assert caught.value.message == (
        "the transition 'Done' needs a resolution and Jira has none named 'Fixed' (the route's "
        "resolution); it has: Done, Won't Do, Duplicate")
    assert jira.issues[other].status == "To Do"


async def test_resolve_without_a_done_transition_names_the_transitions_and_the_setting(
    desk: Backend, jira: FakeJira
) -> None:
    jira.workflow["To Do"] = [("11", "Start Progress", "In Progress")]
    ref = await desk.open(ticket())
    with pytest.raises(TicketError) as caught:
        await desk.resolve(ref, "Recovered.")
    assert caught.value.permanent
    assert caught.value.message == (
        "Jira issue OPS-1 in status 'To Do' offers no transition to a done status; it offers: "
        "Start Progress (to In Progress, indeterminate). Set the route's resolve_transition to "
        "the one that resolves it")
    assert jira.issues[ref].status == "To Do"


async def test_resolve_asks_for_resolve_transition_when_the_done_transitions_are_unclear(
    make: MakeBackend, jira: FakeJira
) -> None:
    jira.workflow["To Do"] = [("61", "Ship it", "Shipped"), ("62", "Bin it", "Binned")]
    ref = await make().open(ticket())
    with pytest.raises(TicketError) as caught:
        await make().resolve(ref, "Recovered.")
    assert caught.value.permanent
    assert "several transitions to a done status" in caught.value.message
    assert "Set the route's resolve_transition" in caught.value.message

    await make(resolve_transition="ship IT").resolve(ref, "Recovered.")
    assert jira.issues[ref].status == "Shipped"


async def test_resolve_transition_that_the_status_does_not_offer_is_named(
    make: MakeBackend, jira: FakeJira
) -> None:
    ref = await make().open(ticket())
    with pytest.raises(TicketError) as caught:
        await make(resolve_transition="Close Issue").resolve(ref, "Recovered.")
    assert caught.value.permanent
    assert caught.value.message.startswith(
        "Jira issue OPS-1 in status 'To Do' offers no transition named 'Close Issue' (the "
        "route's resolve_transition); it offers: Start Progress (to In Progress, "
        "indeterminate), Done (to Done, done), Won't Do (to Won't Do, done)")


async def test_a_503_on_the_transition_is_transient_and_the_retry_resolves(
    desk: Backend, jira: FakeJira
) -> None:
    ref = await desk.open(ticket())
    jira.fail("POST", r"/rest/api/3/issue/OPS-1/transitions", 503)
    with pytest.raises(TicketError) as caught:
        await desk.resolve(ref, "Recovered.")
    assert not caught.value.permanent
    assert jira.issues[ref].status == "To Do"
    await desk.resolve(ref, "Recovered.")
    assert jira.issues[ref].status == "Done"


async def test_resolve_of_a_deleted_issue_does_nothing(desk: Backend, jira: FakeJira) -> None:
    ref = await desk.open(ticket())
    del jira.issues[ref]
    await desk.resolve(ref, "Recovered.")
    assert jira.issues == {}


# --- status and human closes -----------------------------------------------------------------


async def test_status_follows_the_category_and_the_assignee(desk: Backend,
                                                            jira: FakeJira) -> None:
    ref = await desk.open(ticket())
    issue = jira.issues[ref]
    assert await desk.status(ref) == "open"
    issue.assignee = "alice"
    assert await desk.status(ref) == "acknowledged"
    issue.assignee = None
    issue.status = "In Progress"
    assert await desk.status(ref) == "acknowledged"
    for closed in ("Done", "Won't Do"):
        issue.status = closed
        assert await desk.status(ref) == "closed"
    del jira.issues[ref]
    assert await desk.status(ref) == "gone"


async def test_status_with_credentials_jira_takes_for_anonymous_is_an_error_not_gone(
    make: MakeBackend, jira: FakeJira, tmp_path: Path
) -> None:
    ref = await make().open(ticket())
    (tmp_path / "revoked").write_text("revoked-token")
    with pytest.raises(TicketError) as caught:
        await make(token_file=str(tmp_path / "revoked")).status(ref)
    assert caught.value.permanent
    assert caught.value.message.startswith("GET /rest/api/3/myself: HTTP 401")


async def test_reopen_of_an_issue_a_human_closed_comments_and_moves_it_to_to_do(
    desk: Backend, jira: FakeJira
) -> None:
    ref = await desk.open(ticket())
    jira.close_by_hand(ref, "Done")
    assert await desk.status(ref) == "closed"

    await desk.reopen(ref, "Reopened by probe: the outage goes on.")
    assert jira.issues[ref].status == "To Do"
    assert jira.text(jira.issues[ref].comments[-1].body).startswith("Reopened by probe")
    assert await desk.status(ref) == "open"  # untaken again: it may be escalated


async def test_reopen_without_a_way_back_is_permanent_and_names_the_settings(
    desk: Backend, jira: FakeJira
) -> None:
    jira.workflow["Done"] = []
    ref = await desk.open(ticket())
    jira.close_by_hand(ref, "Done")
    with pytest.raises(TicketError) as caught:
        await desk.reopen(ref, "Reopened by probe.")
    assert caught.value.permanent
    assert caught.value.message == (
        "Jira issue OPS-1 in status 'Done' offers no transition back to an open status; it "
        "offers: none. Set the route's reopen_transition, or on_human_close: new")


async def test_a_new_issue_after_a_human_close_is_found_by_its_own_key(
    desk: Backend, jira: FakeJira
) -> None:
    old = await desk.open(ticket())
    jira.close_by_hand(old, "Done")
    new = await desk.open(ticket(f"{KEY}+1", follows=old))
    assert (old, new) == ("OPS-1", "OPS-2")
    assert await desk.find(KEY) == old
    assert await desk.find(f"{KEY}+1") == new
    assert jira.issues[old].status == "Done"  # on_human_close: new leaves the old one be


# --- Data Center -----------------------------------------------------------------------------


async def test_data_center_takes_a_personal_access_token_v2_and_wiki_text(
    make: MakeBackend, jira: FakeJira
) -> None:
    desk = make(deployment="data-center", email=None)
    ref = await desk.open(ticket())
    assert await desk.find(KEY) == ref
    await desk.note(ref, "Still *failing*.")
    await desk.resolve(ref, "Recovered.")

    issue = jira.issues[ref]
    assert issue.fields["description"] == "{noformat}\n" + BODY + "\n{noformat}"
    assert [c.body for c in issue.comments] == ["{noformat}\nStill *failing*.\n{noformat}",
                                                "{noformat}\nRecovered.\n{noformat}"]
    assert issue.status == "Done"
    assert {p.split("/")[3] for _, p, _ in jira.seen} == {"2"}


def test_the_route_refuses_labels_with_spaces_and_cloud_without_email() -> None:
    base = {"backend": "jira", "url": "https://example.atlassian.net", "token": "env:T",
            "project": "OPS"}
    with pytest.raises(ValidationError, match="Jira Cloud needs email"):
        Route.model_validate(base)
    with pytest.raises(ValidationError, match="'on call' is not a Jira label"):
        Route.model_validate({**base, "email": EMAIL, "labels": ["on call"]})
    assert Route.model_validate({**base, "deployment": "data-center"}).email is None


# --- the daemon, end to end ------------------------------------------------------------------


def config(jira: FakeJira, flaky: Target, token: Path) -> str:
    return f"""
defaults:
  interval: 200ms
  retry_interval: 100ms
  timeout: 100ms
  failure_threshold: 3
  success_threshold: 2
  ticket: {{route: jira, priority: high, update_interval: 1s}}
ticketing:
  poll_interval: 200ms
  routes:
    jira:
      backend: jira
      url: {jira.url}
      email: {EMAIL}
      token_file: {token}
      project: OPS
      timeout: 1s
      search_lag: 3s
checks:
  - name: web
    service: shop
    http: {{url: "http://127.0.0.1:{flaky.port}/health"}}
"""


async def test_the_daemon_opens_one_issue_informs_it_and_resolves_it(
    jira: FakeJira, target: Target, run: Runner, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text(TOKEN)
    daemon, _ = await run(config(jira, target, tmp_path / "token"))
    await until("a first result", lambda: "web" in daemon.results)
    target.down = True

    await until("the issue", lambda: jira.issues)
    issue = jira.only()
    assert issue.fields["priority"] == {"name": "High"}
    assert key_label("t/shop/1") in issue.fields["labels"]
    description = jira.text(issue.fields["description"])
    assert description.count("DOWN    HTTP 503 (expected 2xx)") == 3  # exactly the three
    assert "probe key: t/shop/1" in description

    await until("a status note", lambda: any(
        jira.text(c.body).startswith("Still failing") for c in issue.comments), timeout=5)
    target.down = False
    await until("the resolve", lambda: issue.status == "Done")
    assert jira.text(issue.comments[-1].body).startswith("Recovered: web (http ")
    assert len(jira.issues) == 1


async def test_the_daemon_does_not_open_twice_when_the_create_call_timed_out(
    jira: FakeJira, target: Target, run: Runner, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text(TOKEN)
    jira.index_lag = 0.5
    jira.fail("POST", "/rest/api/3/issue$", stall=2)  # created, then no answer within 1s
    daemon, _ = await run(config(jira, target, tmp_path / "token"))
    await until("a first result", lambda: "web" in daemon.results)
    target.down = True

    await until("the issue", lambda: jira.issues)
    searched = await until("the search after the timeout", lambda: [
        p for _, p, _ in jira.seen if p.endswith("/search/jql")])
    assert searched
    await until("the triage note the dispatcher adds once it knows the issue",
                lambda: jira.only().comments, timeout=10)
    await asyncio.sleep(0.5)
    creates = [s for m, p, s in jira.seen if m == "POST" and p == "/rest/api/3/issue"]
    assert creates == [201]
    assert list(jira.issues) == ["OPS-1"]


async def test_the_daemon_reopens_an_issue_a_human_closed_during_the_outage(
    jira: FakeJira, target: Target, run: Runner, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text(TOKEN)
    daemon, _ = await run(config(jira, target, tmp_path / "token"))  # on_human_close: reopen
    await until("a first result", lambda: "web" in daemon.results)
    target.down = True
    issue = await until("the issue", lambda: jira.issues and jira.only())
    jira.close_by_hand(issue.key, "Won't Do")

    await until("the reopen", lambda: issue.status == "To Do")
    assert any(jira.text(c.body).startswith("Reopened by probe") for c in issue.comments)
    target.down = False
    await until("the resolve", lambda: issue.status == "Done")
    assert len(jira.issues) == 1
