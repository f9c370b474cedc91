"""The redmine backend against a real Redmine 5 on loopback (tests/harness/redminepeer.py), checked
by reading Redmine's REST API directly: its traps (a value of a custom-field filter read as an
operator, open issues only unless asked, a status set to what does not exist answered 204, a
custom field dropped without a word), the issue's life as a person sees it in Redmine, and the
daemon end to end."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from probe.helpdesks.base import Ticket, TicketError
from probe.helpdesks.redmine import Backend, Route
from tests.harness.daemon import ProbeProcess, Target
from tests.harness.httpserver import serve_app
from tests.harness.ports import free_port
from tests.harness.redminepeer import RedmineApi, RedminePeer

MakeBackend = Callable[..., Backend]
ADMIN = 1  # the admin's user id in Redmine's default data


def ticket(key: str, **changes: Any) -> Ticket:
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


def new_key() -> str:
    """A key of its own: Redmine keeps its issues from one run to the next."""
    return f"probe-eu-1/shop/{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def make_backend(redmine_peer: RedminePeer, tmp_path: Path) -> AsyncIterator[MakeBackend]:
    """Backends on routes to the test Redmine; settings override the route's."""
    made: list[Backend] = []

    def make(**settings: Any) -> Backend:
        made.append(Backend("helpdesk", redmine_peer.route(tmp_path, **settings)))
        return made[-1]

    yield make
    for backend in made:
        await backend.close()


@pytest.fixture
def redmine(make_backend: MakeBackend) -> Backend:
    return make_backend()


async def test_open_files_an_issue_in_the_project_with_its_text_priority_and_key(
    redmine: Backend, redmine_api: RedmineApi
) -> None:
    key = new_key()
    ref = await redmine.open(ticket(key))

    issue = await redmine_api.issue(ref)
    assert issue["project"]["name"] == "ops"
    assert issue["subject"] == "shop is down"
    # (Redmine keeps text with CRLF line ends, as a browser's form sends it)
    assert issue["description"] == "shop-443: connection refused\r\nsince 01:02 UTC"
    assert issue["priority"]["name"] == "Urgent"
    assert issue["status"]["name"] == "New"
    assert issue["tracker"]["name"] == "Bug"  # the project's default
    assert await redmine_api.key_of(ref) == key
    assert issue["journals"] == []
    assert redmine.route.link(ref) == f"{redmine_api.peer.url}/issues/{ref}"


@pytest.mark.parametrize(("priority", "name"), [
    ("urgent", "Urgent"), ("high", "High"), ("normal", "Normal"), ("low", "Low")])
async def test_each_priority_becomes_its_redmine_priority_not_the_default(
    redmine: Backend, redmine_api: RedmineApi, priority: str, name: str
) -> None:
    # Redmine ignores a priority given by name without a word and files the issue as Normal:
    # only the id counts.
    ref = await redmine.open(ticket(new_key(), priority=priority))
    assert (await redmine_api.issue(ref))["priority"]["name"] == name


async def test_the_routes_tracker_and_priority_ids_are_used(
    make_backend: MakeBackend, redmine_api: RedmineApi
) -> None:
    redmine = make_backend(tracker=3, priorities={"urgent": 5, "high": 4, "normal": 3, "low": 2})
    ref = await redmine.open(ticket(new_key(), priority="urgent"))
    issue = await redmine_api.issue(ref)
    assert (issue["tracker"]["name"], issue["priority"]["name"]) == ("Support", "Immediate")


async def test_a_priority_id_redmine_has_not_is_a_permanent_error_and_no_issue(
    make_backend: MakeBackend, redmine_api: RedmineApi
) -> None:
    redmine = make_backend(priorities={"urgent": 99, "high": 3, "normal": 2, "low": 1})
    key = new_key()
    with pytest.raises(TicketError) as caught:
        await redmine.open(ticket(key))
    assert caught.value.permanent
    assert caught.value.message == "POST /issues.json: HTTP 422: Priority cannot be blank"
    assert await redmine_api.with_key(key) == []


async def test_a_long_title_is_cut_to_redmines_255_characters_on_one_line(
    redmine: Backend, redmine_api: RedmineApi
) -> None:
    ref = await redmine.open(ticket(new_key(), title="shop\nis down " + "é" * 300))
    subject = (await redmine_api.issue(ref))["subject"]
    assert len(subject) == 255
    assert subject.startswith("shop is down éé") and subject.endswith("é…")


async def test_an_issue_that_follows_another_names_it_where_redmine_links_it(
    redmine: Backend, redmine_api: RedmineApi
) -> None:
    key = new_key()
    earlier = await redmine.open(ticket(key))
    later = await redmine.open(ticket(key, follows=earlier))
    assert (await redmine_api.issue(later))["description"].startswith(
        f"Follows #{earlier}.\r\n\r\n")


@pytest.mark.parametrize("operator", ["~", "!", "*", "^", "$", "=", "!~", "!*"])
async def test_find_takes_a_key_that_starts_with_a_filter_operator_as_it_is(
    redmine: Backend, redmine_api: RedmineApi, operator: str
) -> None:
    plain = new_key()
    decoy = await redmine.open(ticket(plain))  # what the operator would match
    key = operator + plain
    field = f"cf_{redmine_api.peer.key_field}"
    # No issue has `key` yet, but Redmine's short filter reads the operator and answers the
    # decoy (~ ^ $ = *) or every other issue (! !~): what a find built on it would take.
    short = await redmine_api.call("GET", "/issues.json", query=[
        ("project_id", "ops"), ("status_id", "*"), (field, key)])
    assert short["issues"] or operator == "!*"  # ("none" has nothing to show here)

    assert await redmine.find(key) is None
    ref = await redmine.open(ticket(key))
    assert await redmine.find(key) == ref
    assert await redmine.find(plain) == decoy


async def test_find_takes_a_key_holding_a_bar_as_one_value_not_two(
    redmine: Backend, redmine_api: RedmineApi
) -> None:
    first, second = new_key(), new_key()
    await redmine.open(ticket(first))
    await redmine.open(ticket(second))
    key = f"{first}|{second}"
    field = f"cf_{redmine_api.peer.key_field}"
    short = await redmine_api.call("GET", "/issues.json", query=[
        ("project_id", "ops"), ("status_id", "*"), (field, key)])
    assert short["total_count"] == 2  # the short filter's OR: the trap is real

    assert await redmine.find(key) is None
    ref = await redmine.open(ticket(key))
    assert await redmine.find(key) == ref
    assert await redmine_api.with_key(key) == [int(ref)]


async def test_find_matches_the_key_exactly_not_its_case_or_a_part(redmine: Backend) -> None:
    key = new_key()
    ref = await redmine.open(ticket(key))
    assert await redmine.find(key) == ref
    assert await redmine.find(key.upper()) is None
    assert await redmine.find(key[:-1]) is None


async def test_find_sees_the_newest_issue_of_a_key_resolved_or_closed_by_hand(
    redmine: Backend, redmine_api: RedmineApi, redmine_peer: RedminePeer
) -> None:
    key = new_key()
    first = await redmine.open(ticket(key))
    second = await redmine.open(ticket(key, title="shop is down again"))
    assert await redmine.find(key) == second

    await redmine.resolve(second, "shop is back")
    assert await redmine.find(key) == second
    await redmine_api.update(second, status_id=redmine_peer.statuses["CLOSED"])
    await redmine_api.update(first, status_id=redmine_peer.statuses["CLOSED"])
    assert (await redmine_api.issue(second))["status"]["is_closed"]
    assert await redmine.find(key) == second


async def test_note_is_a_private_note_and_changes_nothing_else(
    redmine: Backend, redmine_api: RedmineApi
) -> None:
    ref = await redmine.open(ticket(new_key()))
    await redmine.note(ref, "Still failing after 1h.\n<b>not markup</b> & \"quotes\"")

    issue = await redmine_api.issue(ref)
    assert [(j["private_notes"], j["notes"], j["details"]) for j in issue["journals"]] == [
        (True, "Still failing after 1h.\n<b>not markup</b> & \"quotes\"", [])]
    assert issue["status"]["name"] == "New"


async def test_a_user_who_may_not_make_notes_private_gets_an_error_naming_the_permission(
    make_backend: MakeBackend, redmine_api: RedmineApi, tmp_path: Path
) -> None:
    (tmp_path / "reporter-key").write_text(await redmine_api.member("Reporter"))
    reporter = make_backend(key_file=str(tmp_path / "reporter-key"))
    ref = await reporter.open(ticket(new_key()))

    with pytest.raises(TicketError) as caught:
        await reporter.note(ref, "Still failing after 1h.")
    assert caught.value.permanent
    assert "lacks the Set notes as private permission in project 'ops'" in caught.value.message
    # Redmine answered 204 and made it public: what the error is there to say
    assert await redmine_api.notes(ref) == [("public note", "Still failing after 1h.")]


async def test_a_developer_makes_private_notes_as_the_admin_does(
    make_backend: MakeBackend, redmine_api: RedmineApi, tmp_path: Path
) -> None:
    (tmp_path / "developer-key").write_text(await redmine_api.member("Developer"))
    developer = make_backend(key_file=str(tmp_path / "developer-key"))
    ref = await developer.open(ticket(new_key()))
    await developer.note(ref, "Still failing after 1h.")
    await developer.resolve(ref, "shop is back")
    assert await redmine_api.notes(ref) == [("private note", "Still failing after 1h."),
                                            ("private note", "shop is back")]
    assert (await redmine_api.issue(ref))["status"]["name"] == "Resolved"


async def test_resolve_sets_resolved_with_a_private_closing_note_and_can_be_repeated(
    redmine: Backend, redmine_api: RedmineApi
) -> None:
    ref = await redmine.open(ticket(new_key()))
    await redmine.resolve(ref, "shop is back after 12m")

    issue = await redmine_api.issue(ref)
    assert issue["status"]["name"] == "Resolved"
    assert await redmine_api.notes(ref) == [("private note", "shop is back after 12m")]
    assert await redmine.status(ref) == "closed"
    await redmine.resolve(ref, "shop is back after 12m")
    assert (await redmine_api.issue(ref))["status"]["name"] == "Resolved"


async def test_resolve_leaves_an_issue_someone_rejected_rejected_with_the_note(
    redmine: Backend, redmine_api: RedmineApi
) -> None:
    ref = await redmine.open(ticket(new_key()))
    await redmine_api.update(ref, status_id=6)  # Rejected
    await redmine.resolve(ref, "shop is back")
    assert (await redmine_api.issue(ref))["status"]["name"] == "Rejected"
    assert await redmine_api.notes(ref) == [("private note", "shop is back")]


@pytest.mark.parametrize("setting", ["resolve_status", "reopen_status"])
async def test_a_status_redmine_does_not_set_is_a_permanent_error_naming_the_setting(
    make_backend: MakeBackend, redmine_api: RedmineApi, setting: str
) -> None:
    # Redmine answers 204 to a status_id it has not and leaves the status as it was.
    redmine = make_backend(**{setting: 99})
    ref = await redmine.open(ticket(new_key()))
    if setting == "reopen_status":
        await redmine_api.update(ref, status_id=5)  # closed by someone

    with pytest.raises(TicketError) as caught:
        if setting == "resolve_status":
            await redmine.resolve(ref, "shop is back")
        else:
            await redmine.reopen(ref, "shop is down again")
    assert caught.value.permanent
    assert setting in caught.value.message
    expected = "New" if setting == "resolve_status" else "Closed"
    assert f"in status {expected!r}, not status 99" in caught.value.message
    assert (await redmine_api.issue(ref))["status"]["name"] == expected


async def test_reopen_sets_new_with_a_private_note_and_the_issue_is_open_again(
    redmine: Backend, redmine_api: RedmineApi, redmine_peer: RedminePeer
) -> None:
    ref = await redmine.open(ticket(new_key()))
    await redmine_api.update(ref, status_id=redmine_peer.statuses["CLOSED"], notes="fixed?")
    assert await redmine.status(ref) == "closed"

    await redmine.reopen(ref, "shop is down again: connection refused")
    assert (await redmine_api.issue(ref))["status"]["name"] == "New"
    assert (await redmine_api.notes(ref))[-1] == (
        "private note", "shop is down again: connection refused")
    assert await redmine.status(ref) == "open"


async def test_reopen_of_an_issue_someone_reopened_only_notes_it(
    redmine: Backend, redmine_api: RedmineApi, redmine_peer: RedminePeer
) -> None:
    ref = await redmine.open(ticket(new_key()))
    await redmine_api.update(ref, status_id=redmine_peer.statuses["INPROGRESS"])
    await redmine.reopen(ref, "still down")
    assert (await redmine_api.issue(ref))["status"]["name"] == "In Progress"
    assert await redmine_api.notes(ref) == [("private note", "still down")]


async def test_status_follows_the_issue_from_new_to_taken_to_closed(
    redmine: Backend, redmine_api: RedmineApi, redmine_peer: RedminePeer
) -> None:
    assigned = await redmine.open(ticket(new_key()))
    worked = await redmine.open(ticket(new_key()))
    assert await redmine.status(assigned) == "open"

    await redmine_api.update(assigned, assigned_to_id=ADMIN)
    assert await redmine.status(assigned) == "acknowledged"
    await redmine_api.update(worked, status_id=redmine_peer.statuses["INPROGRESS"])
    assert await redmine.status(worked) == "acknowledged"
    await redmine_api.update(worked, status_id=4)  # Feedback: not a taken status by default
    assert await redmine.status(worked) == "open"

    await redmine_api.update(worked, status_id=6)  # Rejected
    assert await redmine.status(worked) == "closed"
    await redmine.resolve(assigned, "shop is back")
    assert await redmine.status(assigned) == "closed"


async def test_status_of_a_deleted_or_unknown_issue_is_gone(
    redmine: Backend, redmine_api: RedmineApi
) -> None:
    ref = await redmine.open(ticket(new_key()))
    await redmine_api.call("DELETE", f"/issues/{ref}.json")
    assert await redmine.status(ref) == "gone"
    await redmine.resolve(ref, "shop is back")  # nothing left to resolve
    with pytest.raises(TicketError) as caught:
        await redmine.reopen(ref, "down again")
    assert caught.value.permanent
    assert await redmine.status("999999999") == "gone"


async def test_a_key_field_that_is_no_issue_field_is_a_permanent_error_naming_it(
    make_backend: MakeBackend,
) -> None:
    # Redmine drops an unknown custom field without a word: the issue could never be found.
    redmine = make_backend(key_field=999)
    with pytest.raises(TicketError) as caught:
        await redmine.open(ticket(new_key()))
    assert caught.value.permanent
    assert "custom field 999 (the route's key_field)" in caught.value.message


async def test_an_unknown_project_is_a_permanent_error_with_redmines_words(
    make_backend: MakeBackend,
) -> None:
    redmine = make_backend(project="no-such-project")
    with pytest.raises(TicketError) as caught:
        await redmine.open(ticket(new_key()))
    assert caught.value.permanent
    assert "HTTP 422: Project cannot be blank; Tracker cannot be blank" in caught.value.message


async def test_a_wrong_key_is_a_permanent_error(make_backend: MakeBackend, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-key"
    wrong.write_text("0" * 40 + "\n", encoding="utf-8")
    redmine = make_backend(key_file=str(wrong))
    with pytest.raises(TicketError) as caught:
        await redmine.find(new_key())
    assert caught.value.permanent
    assert "HTTP 401" in caught.value.message


async def test_a_404_is_gone_only_once_redmine_says_the_key_works(
    redmine_peer: RedminePeer, tmp_path: Path
) -> None:
    # Without login_required (the test Redmine has it on) a bad key is anonymous, and an
    # issue anonymous may not see is 404: a Redmine that says so, on loopback.
    async def not_found(request: web.Request) -> web.Response:
        return web.json_response({}, status=404)

    async def who_are_you(request: web.Request) -> web.Response:
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="Redmine API"'})

    app = web.Application()
    app.router.add_get("/issues/{id}.json", not_found)
    app.router.add_get("/users/current.json", who_are_you)
    async with serve_app(app) as port:
        anonymous = Backend("helpdesk", redmine_peer.route(
            tmp_path, url=f"http://127.0.0.1:{port}"))
        try:
            with pytest.raises(TicketError) as caught:
                await anonymous.status("42")
        finally:
            await anonymous.close()
    assert caught.value.permanent
    assert caught.value.message.startswith("GET /users/current.json: HTTP 401")


def test_the_route_refuses_a_reopen_status_that_is_resolved_or_taken(
    redmine_peer: RedminePeer, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="reopen_status must differ from resolve_status"):
        redmine_peer.route(tmp_path, reopen_status=3)
    with pytest.raises(ValidationError, match="reopen_status must not be one of taken_statuses"):
        redmine_peer.route(tmp_path, taken_statuses=[1, 2])
    with pytest.raises(ValidationError, match="inline secrets are not allowed"):
        Route.model_validate({**redmine_peer.settings(tmp_path), "key_file": None, "key": "k"})


async def test_a_key_in_the_environment_is_used(
    make_backend: MakeBackend, redmine_peer: RedminePeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBE_TEST_REDMINE_KEY", redmine_peer.key)
    redmine = make_backend(key_file=None, key="env:PROBE_TEST_REDMINE_KEY")
    assert await redmine.find(new_key()) is None


async def test_open_tickets_lists_every_open_issue_of_the_agent_so_a_duplicate_shows(
    redmine: Backend, redmine_api: RedmineApi, redmine_peer: RedminePeer
) -> None:
    agent = f"probe-{uuid.uuid4().hex[:8]}/"
    twice, once, done, closed = (f"{agent}shop/1", f"{agent}db/1", f"{agent}web/1",
                                 f"{agent}dns/1")
    first = await redmine.open(ticket(twice))
    other = await redmine.open(ticket(once))
    second = await redmine.open(ticket(twice))  # the same issue created again
    await redmine.resolve(await redmine.open(ticket(done)), "web is back")  # open to Redmine
    await redmine_api.update(await redmine.open(ticket(closed)),
                             status_id=redmine_peer.statuses["CLOSED"])
    await redmine.open(ticket(f"probe-{uuid.uuid4().hex[:8]}/shop/1"))  # another agent's
    await redmine.open(ticket(f"x{agent}shop/1"))  # holds the prefix, does not start with it

    assert await redmine.open_tickets(agent) == [(twice, first), (once, other), (twice, second)]


async def test_open_tickets_reads_every_page(
    make_backend: MakeBackend, redmine_api: RedmineApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("probe.helpdesks.redmine.PAGE", 2)  # three pages, not 101 issues
    redmine = make_backend()
    agent = f"probe-{uuid.uuid4().hex[:8]}/"
    refs = [await redmine.open(ticket(f"{agent}shop/{n}")) for n in range(5)]
    assert await redmine.open_tickets(agent) == [(f"{agent}shop/{n}", ref)
                                                 for n, ref in enumerate(refs)]


# --- the daemon, end to end ------------------------------------------------------------------


def daemon_config(peer: RedminePeer, directory: Path, target: Target, agent: str) -> ProbeProcess:
    key_file = directory / "redmine-key"
    key_file.write_text(peer.key + "\n")
    route = (f"{{backend: redmine, url: \"{peer.url}\", key_file: {key_file}, "
             f"project: {peer.project}, key_field: {peer.key_field}, timeout: 10s")
    config, port = directory / "probe.yaml", free_port()
    config.write_text(f"""
agent: {{name: {agent}, state_dir: {directory}/state, listen: "127.0.0.1:{port}"}}
defaults:
  interval: 200ms
  retry_interval: 100ms
  timeout: 100ms
  failure_threshold: 3
  success_threshold: 2
  ticket: {{route: redmine, priority: high, update_interval: 1s, escalate_after: 1s,
            on_human_close: reopen}}
ticketing:
  poll_interval: 200ms
  routes:
    redmine: {route}, escalate_to: oncall}}
    oncall: {route}}}
checks:
  - name: web
    service: shop
    http: {{url: "http://127.0.0.1:{target.port}/health"}}
""")
    return ProbeProcess(config, port, directory / "state")


async def test_the_daemon_opens_notes_escalates_reopens_and_resolves_one_issue(
    redmine_peer: RedminePeer, redmine_api: RedmineApi, target: Target, tmp_path: Path
) -> None:
    agent = f"t-{uuid.uuid4().hex[:8]}"  # Redmine keeps the keys of earlier runs
    key = f"{agent}/shop/1"
    probe = daemon_config(redmine_peer, tmp_path, target, agent).start()
    await probe.wait("the daemon to start", lambda: "probe started" in probe.log_text())
    target.down = True

    (ref,) = await probe.wait("the issue", lambda: redmine_api.with_key(key), timeout=30)
    ref = str(ref)
    issue = await redmine_api.issue(ref)
    assert issue["priority"]["name"] == "High"
    assert f"probe key: {key}" in issue["description"]

    async def notes_starting(text: str) -> bool:
        return any(n.startswith(text) for _, n in await redmine_api.notes(ref))

    await probe.wait("a status note", lambda: notes_starting("Still failing"))
    await probe.wait("the escalation", lambda: redmine_api.with_key(f"{key}/escalation"))
    await probe.wait("the escalation's note", lambda: notes_starting("Nobody has taken"))

    await redmine_api.update(ref, status_id=redmine_peer.statuses["CLOSED"], notes="looks fine")

    async def status_is(name: str) -> bool:
        return str((await redmine_api.issue(ref))["status"]["name"]) == name

    await probe.wait("the reopen", lambda: status_is("New"))
    assert await notes_starting("Reopened by probe")

    target.down = False

    await probe.wait("the resolve", lambda: status_is("Resolved"))
    assert (await redmine_api.notes(ref))[-1][1].startswith("Recovered: web (http ")
    assert all(kind == "private note" for kind, text in await redmine_api.notes(ref)
               if text != "looks fine")
    assert await redmine_api.with_key(key) == [int(ref)]  # one issue, reopened, never doubled
    probe.stop()

    said = probe.command("test-ticket", "--route", "redmine")
    assert "route redmine (redmine): works" in said, said
    opened = next(line for line in said.splitlines() if line.startswith("OK    open "))
    test_issue = await redmine_api.issue(opened.rsplit("-> ", 1)[1])
    assert test_issue["subject"].startswith(f"[probe] TEST ticket from {agent}")
    assert test_issue["status"]["name"] == "Resolved"
