"""The github backend against a fake GitHub on loopback (tests/harness/fake_github.py) that keeps
the issues in memory: what GitHub holds after each call, and, at the end of every test, every
request probe sent checked against GitHub's published OpenAPI description (the contract)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from probe.helpdesks.base import Ticket, TicketError
from probe.helpdesks.github import Backend, Route, key_label
from tests.harness import fake_github
from tests.harness.daemon import Target
from tests.harness.fake_github import REPOSITORY, TOKEN, FakeGitHub
from tests.harness.inloop import Runner, sqlite
from tests.harness.openapi import INSTALL_GITHUB, Request, github_description, load
from tests.harness.wait import until

KEY = "probe-eu-1/shop/3"
TICKET = Ticket(
    key=KEY,
    title="[probe] shop DOWN — connection refused from shop.example.com:443",
    body="shop is DOWN: connection refused",
    body_markdown="**shop is DOWN**: connection refused\n\nprobe key: `probe-eu-1/shop/3`",
    priority="urgent",
    agent="probe-eu-1",
    group="shop",
)

MakeBackend = Callable[..., Backend]


@pytest.fixture
async def github() -> AsyncIterator[FakeGitHub]:
    """The fake GitHub; when the test is over, every request it received must conform to
    GitHub's OpenAPI description (when that is installed: see test_the_contract_is_checked)."""
    async with fake_github.serve() as fake:
        yield fake
    description = github_description()
    if description is not None:
        api = load(description)
        problems = [problem for seen in fake.requests for problem in api.violations(seen.request)]
        assert not problems, "requests GitHub does not take:\n" + "\n".join(problems)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "github-token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
async def make_backend(github: FakeGitHub, token_file: Path) -> AsyncIterator[MakeBackend]:
    made: list[Backend] = []

    def make(**settings: Any) -> Backend:
        route = Route.model_validate({
            "backend": "github", "url": github.url, "repository": REPOSITORY,
            "token_file": str(token_file), "timeout": "2s", **settings})
        made.append(Backend("github", route))
        return made[-1]

    yield make
    for backend in made:
        await backend.close()


@pytest.fixture
def gh(make_backend: MakeBackend) -> Backend:
    return make_backend()


def comments(github: FakeGitHub, number: str | int) -> list[str]:
    return github.comments.get(int(number), [])


# --- the contract ------------------------------------------------------------------------------


def test_the_contract_is_checked() -> None:
    description = github_description()
    if description is None:
        pytest.skip(f"GitHub's OpenAPI description is not installed, so the requests of these "
                    f"tests are not checked against it: {INSTALL_GITHUB}")
    api = load(description)
    assert api.operation("POST", "/repos/acme/ops/issues")[1]["operationId"] == "issues/create"


def test_the_contract_check_flags_what_github_does_not_take() -> None:
    description = github_description()
    if description is None:
        pytest.skip(f"GitHub's OpenAPI description is not installed: {INSTALL_GITHUB}")
    api = load(description)
    problems = api.violations(Request(
        "PATCH", "/repos/acme/ops/issues/7", body={"state": "resolved", "reason": "fixed"},
        has_body=True, content_type="application/json"))
    assert any("'resolved' is not one of ['open', 'closed']" in p for p in problems)
    assert any("body property 'reason' is not declared" in p for p in problems)
    problems = api.violations(Request("GET", "/repos/acme/ops/issues",
                                      query=(("state", "any"), ("label", "x"))))
    assert any("state='any'" in p for p in problems)
    assert any("query parameter 'label' is not declared" in p for p in problems)
    assert api.violations(Request("PUT", "/repos/acme/ops/issues/7")) == [
        "PUT /repos/acme/ops/issues/7: no such operation in the description"]


# --- open and find -----------------------------------------------------------------------------


async def test_open_creates_an_issue_with_title_markdown_body_and_labels(
    gh: Backend, github: FakeGitHub
) -> None:
    ref = await gh.open(TICKET)

    issue = github.issues[int(ref)]
    assert issue["title"] == TICKET.title
    assert issue["body"] == TICKET.body_markdown
    assert [label["name"] for label in issue["labels"]] == [
        "probe", "priority:urgent", key_label(KEY)]
    assert issue["assignees"] == []
    assert issue["state"] == "open"
    headers = github.requests[-1].headers
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Accept"] == "application/vnd.github+json"
    assert headers["X-GitHub-Api-Version"] == "2022-11-28"


async def test_each_priority_maps_to_the_routes_label_and_assignees_are_set(
    make_backend: MakeBackend, github: FakeGitHub
) -> None:
    gh = make_backend(labels=["outage"], assignees=["oncall-bot"],
                      priorities={"urgent": "P1", "high": "P2", "normal": "P3", "low": "P4"})
    ref = await gh.open(dataclasses.replace(TICKET, priority="low"))

    issue = github.issues[int(ref)]
    assert [label["name"] for label in issue["labels"]] == ["outage", "P4", key_label(KEY)]
    assert [user["login"] for user in issue["assignees"]] == ["oncall-bot"]


async def test_the_key_label_fits_githubs_50_characters_whatever_the_key(
    gh: Backend, github: FakeGitHub
) -> None:
    key = "probe-eu-1/" + "a-very-long-service-name-" * 8 + "/1"
    ref = await gh.open(dataclasses.replace(TICKET, key=key))

    assert len(key_label(key)) <= 50
    assert key_label(key) != key_label(KEY)
    assert await gh.find(key) == ref


async def test_find_returns_the_newest_issue_with_the_key_open_or_closed(
    gh: Backend, github: FakeGitHub
) -> None:
    first = await gh.open(TICKET)
    second = await gh.open(TICKET)
    await gh.resolve(second, "recovered")

    assert github.issues[int(second)]["state"] == "closed"
    assert await gh.find(KEY) == second
    assert first != second


async def test_find_skips_pull_requests_that_carry_the_label(
    gh: Backend, github: FakeGitHub
) -> None:
    ref = await gh.open(TICKET)
    github.open_pull_request("fix shop", [key_label(KEY)])

    assert await gh.find(KEY) == ref


async def test_a_ticket_that_follows_another_links_it_in_its_first_line(
    gh: Backend, github: FakeGitHub
) -> None:
    earlier = await gh.open(TICKET)
    later = await gh.open(dataclasses.replace(TICKET, key=KEY + "+1", follows=earlier))

    body = github.issues[int(later)]["body"]
    assert body.startswith(f"Follows #{earlier}, closed while the outage went on.\n\n")
    assert body.endswith(TICKET.body_markdown)


async def test_a_503_on_open_is_transient_and_the_retry_makes_one_issue(
    gh: Backend, github: FakeGitHub
) -> None:
    github.fail("POST", 503)
    with pytest.raises(TicketError) as caught:
        await gh.open(TICKET)
    assert not caught.value.permanent
    assert "HTTP 503" in caught.value.message

    assert await gh.find(KEY) is None
    ref = await gh.open(TICKET)
    assert [issue["number"] for issue in github.labelled(key_label(KEY))] == [int(ref)]


async def test_an_open_that_times_out_after_github_made_the_issue_is_found_by_its_key(
    make_backend: MakeBackend, github: FakeGitHub
) -> None:
    gh = make_backend(timeout="500ms")
    github.stall_creates = 1
    with pytest.raises(TicketError) as caught:
        await gh.open(TICKET)
    assert not caught.value.permanent
    assert "no answer within 0.5s" in caught.value.message

    ref = await gh.find(KEY)
    assert ref is not None
    assert len(github.labelled(key_label(KEY))) == 1


async def test_without_push_access_github_drops_the_labels_and_probe_says_so(
    gh: Backend, github: FakeGitHub, caplog: pytest.LogCaptureFixture
) -> None:
    github.push_access = False
    with caplog.at_level(logging.WARNING, logger="probe.helpdesks"):
        ref = await gh.open(TICKET)

    assert github.issues[int(ref)]["labels"] == []
    assert "GitHub dropped the labels of a new issue" in caplog.text
    assert await gh.find(KEY) is None


# --- notes, resolve, reopen ----------------------------------------------------------------


async def test_a_note_longer_than_github_takes_is_cut(gh: Backend, github: FakeGitHub) -> None:
    ref = await gh.open(TICKET)
    await gh.note(ref, "x" * 70_000)

    (comment,) = comments(github, ref)
    assert len(comment) <= 65536
    assert comment.endswith("(cut to fit GitHub)")


async def test_resolve_closes_the_issue_as_completed_with_the_closing_note(
    gh: Backend, github: FakeGitHub
) -> None:
    ref = await gh.open(TICKET)
    await gh.resolve(ref, "Recovered: shop OK. Down for 12m.")

    issue = github.issues[int(ref)]
    assert (issue["state"], issue["state_reason"]) == ("closed", "completed")
    assert comments(github, ref) == ["Recovered: shop OK. Down for 12m."]
    assert await gh.status(ref) == "closed"


async def test_a_resolve_that_failed_is_retried_without_a_second_closing_note(
    gh: Backend, github: FakeGitHub
) -> None:
    ref = await gh.open(TICKET)
    github.fail("PATCH", 502)
    with pytest.raises(TicketError) as caught:
        await gh.resolve(ref, "Recovered.")
    assert not caught.value.permanent
    assert github.issues[int(ref)]["state"] == "open"

    github.fail("POST", 503)  # this time the close goes through and the comment does not
    with pytest.raises(TicketError):
        await gh.resolve(ref, "Recovered.")
    assert github.issues[int(ref)]["state"] == "closed"

    await gh.resolve(ref, "Recovered.")
    assert comments(github, ref) == ["Recovered."]
    assert github.issues[int(ref)]["state_reason"] == "completed"


async def test_resolving_a_deleted_issue_does_nothing(gh: Backend, github: FakeGitHub) -> None:
    ref = await gh.open(TICKET)
    github.delete(int(ref))
    await gh.resolve(ref, "Recovered.")
    assert comments(github, ref) == []


async def test_reopen_comments_and_reopens_a_closed_issue(
    gh: Backend, github: FakeGitHub
) -> None:
    ref = await gh.open(TICKET)
    github.close_by_hand(int(ref), "not_planned")
    assert await gh.status(ref) == "closed"

    await gh.reopen(ref, "Reopened by probe: the outage goes on.")
    issue = github.issues[int(ref)]
    assert (issue["state"], issue["state_reason"]) == ("open", "reopened")
    assert comments(github, ref) == ["Reopened by probe: the outage goes on."]
    assert await gh.status(ref) == "open"


# --- status --------------------------------------------------------------------------------


async def test_status_is_open_until_a_human_takes_the_issue(
    make_backend: MakeBackend, github: FakeGitHub
) -> None:
    gh = make_backend(assignees=["oncall-bot"])
    ref = await gh.open(TICKET)
    assert await gh.status(ref) == "open"  # probe's own assignee has not taken it

    github.assign(int(ref), "alice")
    assert await gh.status(ref) == "acknowledged"

    github.close_by_hand(int(ref))
    assert await gh.status(ref) == "closed"


async def test_status_of_a_deleted_or_unknown_issue_is_gone(
    gh: Backend, github: FakeGitHub
) -> None:
    ref = await gh.open(TICKET)
    github.delete(int(ref))
    assert await gh.status(ref) == "gone"
    assert await gh.status("999") == "gone"


async def test_a_ref_that_is_not_an_issue_number_is_a_permanent_error(gh: Backend) -> None:
    with pytest.raises(TicketError) as caught:
        await gh.status("probe-eu-1/shop/3")
    assert caught.value.permanent
    assert "is not a GitHub issue number" in caught.value.message


# --- errors --------------------------------------------------------------------------------


async def test_a_repository_without_issues_is_a_permanent_error_in_githubs_words(
    gh: Backend, github: FakeGitHub
) -> None:
    github.issues_enabled = False
    with pytest.raises(TicketError) as caught:
        await gh.open(TICKET)
    assert caught.value.permanent
    assert caught.value.message == (
        "POST /repos/acme/ops/issues: HTTP 410: Issues are disabled for this repo")


async def test_an_assignee_github_refuses_is_named_in_the_permanent_error(
    make_backend: MakeBackend, github: FakeGitHub
) -> None:
    gh = make_backend(assignees=["mallory"])
    with pytest.raises(TicketError) as caught:
        await gh.open(TICKET)
    assert caught.value.permanent
    assert caught.value.message == (
        "POST /repos/acme/ops/issues: HTTP 422: Validation Failed "
        "(Issue assignees 'mallory' invalid)")
    assert github.issues == {}


async def test_a_wrong_token_is_a_permanent_error(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("ghp_wrong")
    gh = make_backend(token_file=str(wrong))
    with pytest.raises(TicketError) as caught:
        await gh.open(TICKET)
    assert caught.value.permanent
    assert "HTTP 401: Bad credentials" in caught.value.message


async def test_an_unreadable_token_file_is_a_permanent_error(
    make_backend: MakeBackend, tmp_path: Path, github: FakeGitHub
) -> None:
    gh = make_backend(token_file=str(tmp_path / "missing"))
    with pytest.raises(TicketError) as caught:
        await gh.find(KEY)
    assert caught.value.permanent
    assert "github token: token_file: cannot read" in caught.value.message
    assert github.requests == []


@pytest.mark.parametrize(
    ("status", "headers", "message", "wait"),
    [
        (429, {"Retry-After": "7"}, "", (7, 7)),
        (403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "+30"},
         "API rate limit exceeded for user ID 1.", (25, 30)),
        (429, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "+30"},
         "API rate limit exceeded for user ID 1.", (25, 30)),
        (403, {"Retry-After": "60", "X-RateLimit-Remaining": "4000"},
         "You have exceeded a secondary rate limit.", (60, 60)),
        (403, {"X-RateLimit-Remaining": "4000"},
         "You have exceeded a secondary rate limit. Please wait a few minutes.", (60, 60)),
    ],
    ids=["429-retry-after", "403-primary", "429-primary", "403-secondary",
         "403-secondary-no-header"],
)
async def test_a_rate_limit_is_transient_and_says_when_to_retry(
    gh: Backend, github: FakeGitHub, status: int, headers: dict[str, str], message: str,
    wait: tuple[float, float],
) -> None:
    if headers.get("X-RateLimit-Reset", "").startswith("+"):
        headers = {**headers, "X-RateLimit-Reset": str(int(time.time()) + 30)}
    github.fail("POST", status, headers, message)
    with pytest.raises(TicketError) as caught:
        await gh.note("1", "still down")
    assert not caught.value.permanent
    assert caught.value.retry_after is not None
    assert wait[0] <= caught.value.retry_after <= wait[1]
    assert f"HTTP {status}" in caught.value.message


async def test_a_403_that_is_not_a_rate_limit_is_permanent(
    gh: Backend, github: FakeGitHub
) -> None:
    github.fail("POST", 403, {"X-RateLimit-Remaining": "4999"},
                "Resource not accessible by personal access token")
    with pytest.raises(TicketError) as caught:
        await gh.open(TICKET)
    assert caught.value.permanent
    assert "Resource not accessible by personal access token" in caught.value.message


# --- through the daemon ----------------------------------------------------------------------

DAEMON = """
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
      backend: github
      url: "{url}"
      repository: {repository}
      token_file: {token}
      timeout: {timeout}
checks:
  - name: web
    service: shop
    http: {{url: "http://127.0.0.1:{port}/health"}}
"""


def daemon_config(github: FakeGitHub, target: Target, token_file: Path, policy: str = "",
                  timeout: str = "2s") -> str:
    return DAEMON.format(url=github.url, repository=REPOSITORY, token=token_file,
                         port=target.port, policy=policy, timeout=timeout)


async def test_the_daemon_opens_one_issue_informs_it_and_closes_it_after_recovery(
    github: FakeGitHub, target: Target, run: Runner, token_file: Path
) -> None:
    daemon, _ = await run(daemon_config(github, target, token_file))
    await until("a first result", lambda: "web" in daemon.results)
    target.down = True
    label = key_label("t/shop/1")
    (issue,) = await until("the issue", lambda: github.labelled(label))
    assert [item["name"] for item in issue["labels"]] == ["probe", "priority:high", label]
    assert issue["title"] == (f"[probe] shop DOWN — HTTP 503 (expected 2xx) from "
                              f"http://127.0.0.1:{target.port}/health")
    assert "- **Why:** 3 consecutive failures" in issue["body"]
    assert issue["body"].count("DOWN    HTTP 503 (expected 2xx)") == 3  # the three that decided
    assert "probe key: `t/shop/1`" in issue["body"]

    number = issue["number"]
    await until("the triage note", lambda: any(
        c.startswith("Triage at open time") for c in comments(github, number)))
    await until("a status note", lambda: any(
        c.startswith("Still failing") for c in comments(github, number)), timeout=5)

    target.down = False
    await until("the close", lambda: github.issues[number]["state"] == "closed")
    assert github.issues[number]["state_reason"] == "completed"
    # closed first, then the closing note (so that a retry never posts it twice)
    await until("the closing note", lambda: comments(github, number)[-1].startswith(
        "Recovered: web (http "))
    assert len(github.labelled(label)) == 1


async def test_the_daemon_finds_the_issue_made_by_an_open_that_timed_out(
    github: FakeGitHub, target: Target, run: Runner, token_file: Path
) -> None:
    github.stall_creates = 1
    daemon, _ = await run(daemon_config(github, target, token_file, timeout="500ms"))
    target.down = True
    label = key_label("t/shop/1")
    await until("the ticket recorded", lambda: sqlite(daemon).query(
        "SELECT ref FROM tickets WHERE ticket_key = 't/shop/1'"))
    (ref,) = sqlite(daemon).query("SELECT ref FROM tickets WHERE ticket_key = 't/shop/1'")[0]
    assert [issue["number"] for issue in github.labelled(label)] == [int(ref)]
    assert any(seen.request.query and ("labels", label) in seen.request.query
               for seen in github.requests)  # find() asked before opening again


@pytest.mark.parametrize("policy", ["reopen", "new", "leave"])
async def test_an_issue_closed_by_a_human_during_the_outage(
    github: FakeGitHub, target: Target, run: Runner, token_file: Path, policy: str
) -> None:
    daemon, _ = await run(daemon_config(github, target, token_file,
                                        policy=f", on_human_close: {policy}"))
    target.down = True
    (issue,) = await until("the issue", lambda: github.labelled(key_label("t/shop/1")))
    number = issue["number"]
    github.close_by_hand(number)
    if policy == "reopen":
        await until("the reopen", lambda: github.issues[number]["state"] == "open")
        assert github.issues[number]["state_reason"] == "reopened"
        assert any(c.startswith("Reopened by probe") for c in comments(github, number))
    elif policy == "new":
        (second,) = await until("a new issue", lambda: github.labelled(key_label("t/shop/1+1")))
        assert second["body"].startswith(f"Follows #{number}, closed while the outage went on.")
    else:
        await asyncio.sleep(1.5)  # a note interval and more: nothing may happen
        assert github.issues[number]["state"] == "closed"
        assert len(github.labelled(key_label("t/shop/1+1"))) == 0
        before = comments(github, number)
    target.down = False
    await until("the incident to resolve", lambda: not daemon.engine.groups["shop"].incident)
    # The resolve written (the engine decides before the writer writes), then delivered.
    await until("the resolve delivered", lambda: sqlite(daemon).query(
        "SELECT 1 FROM outbox WHERE action = 'resolve'") and not sqlite(daemon).query(
        "SELECT 1 FROM outbox WHERE status = 'pending'"))
    if policy == "leave":
        assert comments(github, number) == before  # left alone
    else:
        assert all(i["state"] == "closed" for i in github.issues.values())
