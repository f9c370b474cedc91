"""The topdesk backend against a TOPdesk on loopback (tests/harness/fake_topdesk.py) that speaks
the incidents API as TOPdesk documents it, with its traps: a FIQL match that ignores case and
takes * as a wildcard, 204 for an empty list, field limits, closed and archived incidents that
refuse changes, HTML tags dropped from texts, an operator group standing in the operator field.
What counts is what the fake TOPdesk holds afterwards; the daemon's test runs `probe run` as a
subprocess against it."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from probe.helpdesks.base import Ticket, TicketError
from probe.helpdesks.topdesk import Backend, Route
from tests.harness.daemon import ProbeProcess, Target
from tests.harness.fake_topdesk import MAINTENANCE, PASSWORD, USERNAME, FakeTopdesk, serve
from tests.harness.ports import free_port
from tests.harness.proc import PROBE

KEY = "probe-eu-1/shop/3"
BODY = "shop is DOWN: <connection refused> & \"5xx\"\n\nprobe key: probe-eu-1/shop/3"


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
async def topdesk() -> AsyncIterator[FakeTopdesk]:
    async with serve() as fake:
        yield fake


@pytest.fixture
def password(tmp_path: Path) -> Path:
    path = tmp_path / "topdesk-password"
    path.write_text(PASSWORD + "\n")
    return path


@pytest.fixture
async def make(topdesk: FakeTopdesk, password: Path) -> AsyncIterator[MakeBackend]:
    """Backends on routes to the fake TOPdesk; keyword arguments override route settings."""
    made: list[Backend] = []

    def backend(**settings: Any) -> Backend:
        route = Route.model_validate({
            "backend": "topdesk", "url": topdesk.url, "username": USERNAME,
            "application_password_file": str(password), "timeout": "2s", **settings})
        made.append(Backend("topdesk", route))
        return made[-1]

    yield backend
    for b in made:
        await b.close()


@pytest.fixture
def desk(make: MakeBackend) -> Backend:
    return make()


def patches(topdesk: FakeTopdesk) -> list[str]:
    return [path for method, path, _ in topdesk.seen if method == "PATCH"]


# --- open ------------------------------------------------------------------------------------


async def test_open_files_an_incident_with_the_key_priority_caller_and_escaped_text(
    make: MakeBackend, topdesk: FakeTopdesk
) -> None:
    desk = make(operator_group="Network", call_type="Malfunction", caller="probe monitoring")
    ref = await desk.open(ticket())

    incident = topdesk.incidents[ref]
    assert incident["externalNumber"] == KEY
    assert incident["priority"]["name"] == "P1"
    assert incident["callType"]["name"] == "Malfunction"
    assert incident["caller"]["dynamicName"] == "probe monitoring"
    assert incident["operatorGroup"] == {"id": topdesk.groups["Network"], "name": "Network"}
    assert incident["briefDescription"] == ticket().title
    # what an operator reads: the angle brackets kept (not dropped as a tag), lines kept
    assert incident["request"].count("<br>") == 2
    assert "&lt;connection refused&gt;" in incident["request"]
    assert topdesk.actions[ref] == []
    assert await desk.status(ref) == "open"  # the group alone, in the operator field: nobody


async def test_each_priority_maps_to_the_routes_priority_name(
    make: MakeBackend, topdesk: FakeTopdesk
) -> None:
    desk = make(priorities={"urgent": "P1", "high": "P1", "normal": "P3", "low": "P4"})
    refs = [await desk.open(ticket(f"{KEY}/{p}", priority=p))
            for p in ("urgent", "high", "normal", "low")]
    assert [topdesk.incidents[r]["priority"]["name"] for r in refs] == ["P1", "P1", "P3", "P4"]


async def test_a_priority_topdesk_does_not_know_is_a_permanent_error_naming_the_settings(
    make: MakeBackend, topdesk: FakeTopdesk
) -> None:
    desk = make(priorities={"urgent": "Critical", "high": "P2", "normal": "P3", "low": "P4"})
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert caught.value.permanent
    assert caught.value.message.startswith("POST /tas/api/incidents: HTTP 400: ")
    assert "No priority found with name 'Critical'" in caught.value.message
    assert caught.value.message.endswith("(check the route's priorities, call_type, "
                                         "operator_group and operator against this TOPdesk)")
    assert topdesk.incidents == {}


async def test_a_long_title_is_cut_to_topdesks_80_characters(desk: Backend,
                                                             topdesk: FakeTopdesk) -> None:
    ref = await desk.open(ticket(title="shop is down\n" + "x" * 300))
    brief = topdesk.incidents[ref]["briefDescription"]
    assert len(brief) == 80 and brief.startswith("shop is down xxx") and brief.endswith("…")


async def test_a_key_longer_than_external_number_is_stored_and_found_as_its_hash(
    desk: Backend, topdesk: FakeTopdesk
) -> None:
    key = "probe-eu-1/" + "a-very-long-service-name-" * 3 + "/1"
    ref = await desk.open(ticket(key))
    stored = topdesk.incidents[ref]["externalNumber"]
    assert stored == "probe-sha256:" + hashlib.sha256(key.encode()).hexdigest()[:40]
    assert len(stored) <= 60
    assert await desk.find(key) == ref


async def test_wrong_credentials_are_a_permanent_error(make: MakeBackend,
                                                       tmp_path: Path) -> None:
    (tmp_path / "wrong").write_text("not-the-application-password")
    with pytest.raises(TicketError) as caught:
        await make(application_password_file=str(tmp_path / "wrong")).open(ticket())
    assert caught.value.permanent
    assert "HTTP 401" in caught.value.message and "Invalid credentials" in caught.value.message


async def test_a_429_is_transient_says_when_to_try_again_and_opens_nothing(
    desk: Backend, topdesk: FakeTopdesk
) -> None:
    topdesk.fail("POST", "/tas/api/incidents$", 429, headers={"Retry-After": "30"},
                 body=[{"message": "Too many requests"}])
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert caught.value.retry_after == 30
    # TOPdesk's list of {"message"} read as words, not as JSON
    assert caught.value.message == "POST /tas/api/incidents: HTTP 429: Too many requests"
    assert topdesk.incidents == {}
    ref = await desk.open(ticket())  # the retry
    assert list(topdesk.incidents) == [ref]


async def test_a_maintenance_page_is_transient_and_says_what_topdesk_said(
    desk: Backend, topdesk: FakeTopdesk
) -> None:
    topdesk.page = (503, MAINTENANCE)
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert "HTTP 503" in caught.value.message
    assert "TOPdesk is being updated" in caught.value.message
    assert "<h1>" not in caught.value.message


async def test_an_html_page_with_200_is_transient_not_an_incident(
    desk: Backend, topdesk: FakeTopdesk
) -> None:
    # A login page, say, where the url misses the API: never taken for an incident.
    topdesk.page = (200, "<html><body><form>Log in to TOPdesk</form></body></html>")
    calls: tuple[Callable[[], Awaitable[object]], ...] = (
        lambda: desk.open(ticket()), lambda: desk.find(KEY),
        lambda: desk.status("0123abcd-4567-4890-abcd-0123456789ab"))
    for call in calls:
        with pytest.raises(TicketError) as caught:
            await call()
        assert not caught.value.permanent
        assert "not JSON" in caught.value.message
    topdesk.page = None
    assert topdesk.incidents == {}


async def test_an_open_that_times_out_after_topdesk_filed_it_is_found_by_the_next_try(
    make: MakeBackend, topdesk: FakeTopdesk
) -> None:
    desk = make(timeout="500ms")
    topdesk.fail("POST", "/tas/api/incidents$", stall=1.5)
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    (created,) = topdesk.incidents
    assert await desk.find(KEY) == created  # so the dispatcher does not open a second one


# --- find ------------------------------------------------------------------------------------


async def test_find_takes_only_the_key_itself_not_what_topdesks_match_lets_through(
    desk: Backend, topdesk: FakeTopdesk
) -> None:
    # TOPdesk's == ignores case and takes * as a wildcard: these all match the queries below.
    topdesk.add_incident(externalNumber=KEY.upper())
    topdesk.add_incident(externalNumber="probe-eu-1/shop/3-and-more")
    assert await desk.find(KEY) is None
    assert await desk.find("probe-eu-1/shop/*") is None

    ref = await desk.open(ticket())
    assert await desk.find(KEY) == ref
    starred = await desk.open(ticket("probe-eu-1/shop/*"))
    assert await desk.find("probe-eu-1/shop/*") == starred


async def test_find_returns_the_newest_incident_with_the_key_and_none_on_204(
    desk: Backend, topdesk: FakeTopdesk
) -> None:
    assert await desk.find(KEY) is None
    assert ("GET", "/tas/api/incidents", 204) in topdesk.seen  # TOPdesk's empty answer
    first = await desk.open(ticket())
    second = await desk.open(ticket())
    await desk.open(ticket("probe-eu-1/shop/4"))
    assert first != second
    assert await desk.find(KEY) == second
    await desk.resolve(second, "Recovered.")
    assert await desk.find(KEY) == second  # closed incidents too


async def test_a_quote_in_the_key_does_not_break_the_query(desk: Backend) -> None:
    key = "probe-eu-1/o'brien's shop/1"
    ref = await desk.open(ticket(key))
    assert await desk.find(key) == ref


# --- notes, resolve, reopen ------------------------------------------------------------------


async def test_notes_are_actions_the_caller_does_not_see_with_the_text_as_written(
    desk: Backend, topdesk: FakeTopdesk
) -> None:
    ref = await desk.open(ticket())
    await desk.note(ref, 'Still failing.\nLatest: <connection refused> & "5xx"')
    assert topdesk.shown(ref) == [
        ("invisible action", 'Still failing.\nLatest: <connection refused> & "5xx"')]
    assert topdesk.incidents[ref]["closed"] is False


async def test_resolve_closes_with_the_closing_action_and_leaves_closed_incidents_alone(
    desk: Backend, topdesk: FakeTopdesk
) -> None:
    ref = await desk.open(ticket())
    await desk.resolve(ref, "Recovered: shop-443 OK.")
    incident = topdesk.incidents[ref]
    assert (incident["closed"], incident["processingStatus"]["name"]) == (True, "Closed")
    assert topdesk.shown(ref) == [("invisible action", "Recovered: shop-443 OK.")]
    assert await desk.status(ref) == "closed"

    before = len(patches(topdesk))
    await desk.resolve(ref, "Recovered again.")  # TOPdesk would refuse any change: none sent
    assert len(patches(topdesk)) == before
    assert len(topdesk.actions[ref]) == 1


async def test_resolve_with_the_routes_processing_status(make: MakeBackend,
                                                         topdesk: FakeTopdesk) -> None:
    desk = make(resolved_status="Completed")
    ref = await desk.open(ticket())
    await desk.resolve(ref, "Recovered.")
    incident = topdesk.incidents[ref]
    assert incident["processingStatus"]["name"] == "Completed"
    assert (incident["completed"], incident["closed"]) == (True, False)
    assert await desk.status(ref) == "closed"


async def test_a_resolved_status_that_does_not_close_is_a_permanent_error_naming_it(
    make: MakeBackend, topdesk: FakeTopdesk
) -> None:
    desk = make(resolved_status="Waiting for user")
    ref = await desk.open(ticket())
    with pytest.raises(TicketError) as caught:
        await desk.resolve(ref, "Recovered.")
    assert caught.value.permanent
    number = topdesk.incidents[ref]["number"]
    assert caught.value.message == (
        f"TOPdesk left incident {number} open (processing status Waiting for user): does the "
        "route's resolved_status 'Waiting for user' close incidents?")


async def test_a_closed_incident_refuses_notes_until_probe_reopens_it(
    desk: Backend, topdesk: FakeTopdesk
) -> None:
    ref = await desk.open(ticket())
    topdesk.set_status(ref, "Closed")  # a person closed it during the outage
    assert await desk.status(ref) == "closed"
    with pytest.raises(TicketError) as caught:
        await desk.note(ref, "Still failing.")
    assert caught.value.permanent
    assert "The incident is closed and cannot be changed" in caught.value.message

    await desk.reopen(ref, "Reopened by probe: the outage goes on.")
    incident = topdesk.incidents[ref]
    assert (incident["closed"], incident["processingStatus"]["name"]) == (False, "Logged")
    assert topdesk.shown(ref) == [("invisible action", "Reopened by probe: the outage goes on.")]
    await desk.note(ref, "Still failing.")
    assert len(topdesk.actions[ref]) == 2


async def test_reopen_with_the_routes_processing_status(make: MakeBackend,
                                                        topdesk: FakeTopdesk) -> None:
    desk = make(reopened_status="In progress")
    ref = await desk.open(ticket())
    topdesk.set_status(ref, "Closed")
    await desk.reopen(ref, "Reopened by probe.")
    assert topdesk.incidents[ref]["processingStatus"]["name"] == "In progress"
    assert topdesk.incidents[ref]["closed"] is False


async def test_an_archived_incident_is_closed_to_probe_and_never_unarchived(
    desk: Backend, topdesk: FakeTopdesk
) -> None:
    ref = await desk.open(ticket())
    topdesk.archive(ref)
    assert await desk.status(ref) == "closed"
    with pytest.raises(TicketError) as caught:
        await desk.reopen(ref, "Reopened by probe.")
    assert caught.value.permanent
    number = topdesk.incidents[ref]["number"]
    assert caught.value.message == (
        f"TOPdesk incident {number} is archived, and probe does not unarchive what a person "
        "archived. Set on_human_close: new to get a new incident instead")
    await desk.resolve(ref, "Recovered.")  # nothing to resolve
    assert patches(topdesk) == []
    assert topdesk.incidents[ref]["status"] == "firstLineArchived"


async def test_a_new_incident_after_an_archive_is_found_by_its_own_key(
    desk: Backend, topdesk: FakeTopdesk
) -> None:
    old = await desk.open(ticket())
    topdesk.archive(old)
    assert await desk.find(KEY) is None  # TOPdesk's list leaves archived incidents out
    new = await desk.open(ticket(f"{KEY}+1", follows=old))
    assert new != old
    assert await desk.find(f"{KEY}+1") == new


# --- status ----------------------------------------------------------------------------------


async def test_status_follows_who_has_the_incident_and_the_routes_statuses(
    make: MakeBackend, topdesk: FakeTopdesk
) -> None:
    desk = make(operator_group="Network", operator=USERNAME, taken_statuses=["In progress"])
    ref = await desk.open(ticket())
    assert topdesk.incidents[ref]["operator"]["name"] == USERNAME
    assert await desk.status(ref) == "open"  # the route's own operator is nobody taking it
    topdesk.take(ref, "alice")
    assert await desk.status(ref) == "acknowledged"
    topdesk.incidents[ref]["operator"] = dict(topdesk.incidents[ref]["operatorGroup"])
    assert await desk.status(ref) == "open"  # back to the group alone
    topdesk.set_status(ref, "In progress")
    assert await desk.status(ref) == "acknowledged"
    topdesk.set_status(ref, "Completed")
    assert await desk.status(ref) == "closed"
    del topdesk.incidents[ref]
    assert await desk.status(ref) == "gone"


def test_the_link_shows_the_incident_in_topdesk(password: Path) -> None:
    route = Route.model_validate({"backend": "topdesk", "url": "https://example.topdesk.net/",
                                  "username": USERNAME,
                                  "application_password_file": str(password)})
    assert route.link("0123abcd-4567-4890-abcd-0123456789ab") == (
        "https://example.topdesk.net/tas/secure/incident?action=show"
        "&unid=0123abcd-4567-4890-abcd-0123456789ab")


# --- probe test-ticket and the daemon, as an operator runs them -----------------------------


def route_yaml(topdesk: FakeTopdesk, password: Path) -> str:
    return f"""
    td:
      backend: topdesk
      url: {topdesk.url}
      username: {USERNAME}
      application_password_file: {password}
      operator_group: Network
      priorities: {{urgent: P1, high: P2, normal: P3, low: P4}}
      escalate_to: oncall
      timeout: 1s
    oncall:
      backend: local"""


async def test_probe_test_ticket_opens_notes_and_resolves_an_incident(
    topdesk: FakeTopdesk, password: Path, tmp_path: Path
) -> None:
    config = tmp_path / "probe.yaml"
    config.write_text(f"""
agent: {{name: t, state_dir: {tmp_path}/state}}
ticketing:
  routes:{route_yaml(topdesk, password)}
checks: []
""")
    done = await asyncio.to_thread(
        subprocess.run, [*PROBE, "test-ticket", "--route", "td", "--config", str(config)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.endswith("route td (topdesk): works\n")
    incident = topdesk.only()
    assert incident["externalNumber"].startswith("t/probe-test-ticket/")
    assert incident["priority"]["name"] == "P4"
    assert incident["closed"] is True
    assert [kind for kind, _ in topdesk.shown(incident["id"])] == ["invisible action"] * 2


async def test_the_daemon_opens_notes_escalates_reopens_and_resolves_one_incident(
    topdesk: FakeTopdesk, target: Target, password: Path, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "probe.yaml"
    config.write_text(f"""
agent: {{name: t, state_dir: {tmp_path}/state, listen: "127.0.0.1:{port}"}}
defaults:
  interval: 200ms
  retry_interval: 100ms
  timeout: 100ms
  failure_threshold: 3
  success_threshold: 2
  ticket: {{route: td, priority: high, update_interval: 1s, escalate_after: 1s,
            on_human_close: reopen}}
ticketing:
  poll_interval: 200ms
  routes:{route_yaml(topdesk, password)}
checks:
  - name: web
    service: shop
    http: {{url: "http://127.0.0.1:{target.port}/health"}}
""")
    probe = ProbeProcess(config, port).start()
    try:
        await probe.wait("the daemon", lambda: probe.get("/-/ready") == "Ready\n", timeout=60)
        target.down = True

        incident = await probe.wait("the incident", lambda: topdesk.incidents and topdesk.only())
        ref = incident["id"]
        assert incident["externalNumber"] == "t/shop/1"
        assert incident["priority"]["name"] == "P2"  # high
        assert incident["briefDescription"].startswith("[probe] shop DOWN")

        def shown() -> list[tuple[str, str]]:
            return topdesk.shown(ref)

        await probe.wait("a status note", lambda: any(
            text.startswith("Still failing") for _, text in shown()))
        # nobody took it (the group alone is nobody): escalated to the oncall route
        await probe.wait("the escalation note", lambda: any(
            "probe escalated it to the oncall route" in text for _, text in shown()))
        assert probe.db("SELECT key FROM local_tickets") == [("t/shop/1/escalation",)]

        topdesk.set_status(ref, "Closed")  # a person closes it while the outage goes on
        await probe.wait("the reopen", lambda: not incident["closed"])
        assert any(text.startswith("Reopened by probe") for _, text in shown())

        target.down = False
        await probe.wait("the resolve", lambda: incident["closed"])
        assert shown()[-1][1].startswith("Recovered: web")
        assert all(kind == "invisible action" for kind, _ in shown())
        assert len(topdesk.incidents) == 1
    finally:
        probe.stop()
