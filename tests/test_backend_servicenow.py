"""The servicenow backend against a ServiceNow instance on loopback
(tests/harness/fake_servicenow.py) that speaks the Table API as ServiceNow documents it, with
its traps: query conditions it cannot apply are dropped (matching every row), reference fields
take any string, closed incidents are read-only. What counts is what the fake instance holds
afterwards."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from probe.helpdesks.base import Ticket, TicketError
from probe.helpdesks.servicenow import Backend, Route
from tests.harness.daemon import Target
from tests.harness.fake_servicenow import PASSWORD, USERNAME, FakeServiceNow, serve_servicenow
from tests.harness.inloop import Runner
from tests.harness.wait import until

KEY = "probe-eu-1/shop/3"
BODY = "shop is DOWN: connection refused\n\nprobe key: probe-eu-1/shop/3"


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
async def snow() -> AsyncIterator[FakeServiceNow]:
    async with serve_servicenow() as fake:
        yield fake


@pytest.fixture
async def make(snow: FakeServiceNow, tmp_path: Path) -> AsyncIterator[MakeBackend]:
    """Backends on routes to the fake instance; keyword arguments override route settings."""
    made: list[Backend] = []
    (tmp_path / "snow-password").write_text(PASSWORD + "\n")

    def backend(**settings: Any) -> Backend:
        route = Route.model_validate({
            "backend": "servicenow",
            "url": snow.url,
            "username": USERNAME,
            "password_file": str(tmp_path / "snow-password"),
            "timeout": "2s",
            **settings,
        })
        made.append(Backend("snow", route))
        return made[-1]

    yield backend
    for b in made:
        await b.close()


@pytest.fixture
def desk(make: MakeBackend) -> Backend:
    return make()


# --- open ------------------------------------------------------------------------------------


async def test_open_creates_an_incident_with_urgency_impact_text_and_the_key(
    make: MakeBackend, snow: FakeServiceNow
) -> None:
    desk = make(assignment_group="Network Operations", caller_id="probe")
    ref = await desk.open(ticket())

    incident = snow.incidents[ref]
    assert incident["short_description"] == ticket().title
    assert incident["description"] == BODY
    assert (incident["urgency"], incident["impact"], incident["priority"]) == ("1", "1", "1")
    assert incident["correlation_id"] == KEY
    assert incident["correlation_display"] == "probe"
    assert incident["state"] == "1"
    # names in the route become the sys_ids ServiceNow's reference fields need
    assert incident["assignment_group"] == snow.sys_id("sys_user_group", "name",
                                                       "Network Operations")
    assert incident["caller_id"] == snow.sys_id("sys_user", "user_name", "probe")
    assert snow.journal[ref] == []


async def test_each_priority_maps_to_the_routes_urgency_and_impact(
    desk: Backend, snow: FakeServiceNow
) -> None:
    normal = await desk.open(ticket(priority="normal"))
    low = await desk.open(ticket("probe-eu-1/shop/4", priority="low"))
    assert (snow.incidents[normal]["urgency"], snow.incidents[normal]["impact"]) == ("2", "2")
    assert (snow.incidents[low]["urgency"], snow.incidents[low]["impact"]) == ("3", "3")


async def test_a_group_servicenow_does_not_know_is_a_permanent_error_naming_the_setting(
    make: MakeBackend, snow: FakeServiceNow
) -> None:
    with pytest.raises(TicketError) as caught:
        await make(assignment_group="Network Ops").open(ticket())
    assert caught.value.permanent
    assert caught.value.message == (
        "ServiceNow has no sys_user_group record with name 'Network Ops' (the route's "
        "assignment_group): give its exact name or its sys_id")
    assert snow.incidents == {}


async def test_a_sys_id_in_the_route_is_used_as_it_is(make: MakeBackend,
                                                      snow: FakeServiceNow) -> None:
    group = snow.sys_id("sys_user_group", "name", "Service Desk")
    ref = await make(assignment_group=group).open(ticket())
    assert snow.incidents[ref]["assignment_group"] == group
    assert not [p for _, p, _ in snow.seen if "sys_user_group" in p]


async def test_a_long_title_is_cut_to_servicenows_160_characters(
    desk: Backend, snow: FakeServiceNow
) -> None:
    ref = await desk.open(ticket(title="shop is down\n" + "x" * 300))
    short = snow.incidents[ref]["short_description"]
    assert len(short) == 160 and short.startswith("shop is down xxx") and short.endswith("…")


async def test_a_503_on_open_is_transient_and_the_retry_opens_one_incident(
    desk: Backend, snow: FakeServiceNow
) -> None:
    snow.fail("POST", "/api/now/table/incident$", 503, body={"error": {
        "message": "Instance unavailable", "detail": ""}, "status": "failure"})
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert "HTTP 503" in caught.value.message and "Instance unavailable" in caught.value.message

    assert await desk.find(KEY) is None
    ref = await desk.open(ticket())
    assert list(snow.incidents) == [ref]


async def test_an_open_that_times_out_after_servicenow_created_it_is_found_by_the_next_try(
    make: MakeBackend, snow: FakeServiceNow
) -> None:
    desk = make(timeout="500ms")
    snow.fail("POST", "/api/now/table/incident$", stall=1.5)
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert "no answer within 0.5s" in caught.value.message

    (created,) = snow.incidents
    assert await desk.find(KEY) == created  # so the dispatcher does not open a second one


async def test_wrong_credentials_are_a_permanent_error_with_servicenows_message(
    make: MakeBackend, tmp_path: Path
) -> None:
    (tmp_path / "wrong").write_text("not-the-password")
    with pytest.raises(TicketError) as caught:
        await make(password_file=str(tmp_path / "wrong")).open(ticket())
    assert caught.value.permanent
    assert "HTTP 401" in caught.value.message
    assert "User Not Authenticated" in caught.value.message


async def test_a_missing_password_is_a_permanent_error_naming_it(
    make: MakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROBE_TEST_SNOW_PASSWORD", raising=False)
    desk = make(password_file=None, password="env:PROBE_TEST_SNOW_PASSWORD")
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert caught.value.permanent
    assert caught.value.message == (
        "servicenow password: password: environment variable PROBE_TEST_SNOW_PASSWORD is not set")


@pytest.mark.parametrize(("retry_after", "expected"), [("30", (30, 30)), (None, (500, 600))])
async def test_a_429_is_transient_and_says_when_to_try_again(
    desk: Backend, snow: FakeServiceNow, retry_after: str | None, expected: tuple[float, float]
) -> None:
    # The reset time is made now, not when the tests were collected (minutes before, in a
    # whole run).
    headers = {"X-RateLimit-Reset": str(int(time.time()) + 600),
               **({"Retry-After": retry_after} if retry_after else {})}
    snow.fail("POST", "/api/now/table/incident$", 429, headers={
        "X-RateLimit-Limit": "100", **headers}, body={"error": {
            "message": "Rate limit exceeded", "detail": "Exceeded 100 requests per hour"},
            "status": "failure"})
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert "Rate limit exceeded" in caught.value.message
    assert caught.value.retry_after is not None
    assert expected[0] <= caught.value.retry_after <= expected[1]
    assert snow.incidents == {}


# --- find ------------------------------------------------------------------------------------


async def test_find_returns_the_newest_incident_with_the_key(desk: Backend,
                                                             snow: FakeServiceNow) -> None:
    first = await desk.open(ticket())
    assert await desk.find(KEY) == first
    second = await desk.open(ticket())
    other = await desk.open(ticket("probe-eu-1/shop/4"))
    assert await desk.find(KEY) == second
    assert await desk.find("probe-eu-1/shop/4") == other
    await desk.resolve(second, "Recovered.")
    assert await desk.find(KEY) == second
    assert await desk.find("probe-eu-1/nothing/1") is None


async def test_find_ignores_the_rows_a_query_servicenow_dropped_returns(
    desk: Backend, snow: FakeServiceNow
) -> None:
    # If ServiceNow cannot apply the condition it drops it and answers with every incident:
    # none of them may be taken for ours.
    snow.add_incident(correlation_id="someone-elses-key")
    snow.add_incident()
    await desk.open(ticket())
    snow.hidden = {"correlation_id"}
    assert await desk.find("probe-eu-1/shop/4") is None


async def test_a_key_longer_than_correlation_id_is_stored_and_found_as_its_hash(
    desk: Backend, snow: FakeServiceNow
) -> None:
    key = "probe-eu-1/" + "a-very-long-service-name-" * 5 + "/1"
    ref = await desk.open(ticket(key))
    stored = snow.incidents[ref]["correlation_id"]
    assert stored == "probe-sha256:" + hashlib.sha256(key.encode()).hexdigest()
    assert len(stored) <= 100
    assert await desk.find(key) == ref


# --- notes, resolve --------------------------------------------------------------------------


async def test_resolve_sets_resolved_with_the_close_code_and_the_closing_note(
    desk: Backend, snow: FakeServiceNow
) -> None:
    ref = await desk.open(ticket())
    await desk.resolve(ref, "Recovered: shop-443 OK.\nDown for 12m.")
    incident = snow.incidents[ref]
    assert incident["state"] == "6"
    assert incident["close_code"] == "Solved (Permanently)"
    assert incident["close_notes"] == "Recovered: shop-443 OK.\nDown for 12m."

    await desk.resolve(ref, "Recovered again.")  # a repeat only adds a work note
    assert snow.incidents[ref]["state"] == "6"
    assert snow.journal[ref] == [("work_notes", "Recovered again.")]


async def test_a_close_code_servicenow_refuses_is_a_permanent_error_naming_the_setting(
    make: MakeBackend, snow: FakeServiceNow
) -> None:
    desk = make(close_code="Fixed")
    ref = await desk.open(ticket())
    with pytest.raises(TicketError) as caught:
        await desk.resolve(ref, "Recovered.")
    assert caught.value.permanent
    message = caught.value.message
    assert message.startswith(f"PATCH /api/now/table/incident/{ref}: HTTP 403: ")
    assert "Operation Failed" in message and "Invalid resolution code: Fixed" in message
    assert message.endswith("(resolving with the route's close_code 'Fixed')")
    assert snow.incidents[ref]["state"] == "1"


async def test_a_503_on_resolve_is_transient_and_the_retry_resolves(
    desk: Backend, snow: FakeServiceNow
) -> None:
    ref = await desk.open(ticket())
    snow.fail("PATCH", "/api/now/table/incident/", 503)
    with pytest.raises(TicketError) as caught:
        await desk.resolve(ref, "Recovered.")
    assert not caught.value.permanent
    assert snow.incidents[ref]["state"] == "1"
    await desk.resolve(ref, "Recovered.")
    assert snow.incidents[ref]["state"] == "6"


async def test_resolve_leaves_closed_canceled_and_deleted_incidents_alone(
    desk: Backend, snow: FakeServiceNow
) -> None:
    closed, canceled, deleted = [await desk.open(ticket(f"{KEY}/{n}")) for n in range(3)]
    snow.incidents[closed]["state"] = "7"
    snow.incidents[canceled]["state"] = "8"
    del snow.incidents[deleted]
    for ref in (closed, canceled, deleted):
        await desk.resolve(ref, "Recovered.")
    assert (snow.incidents[closed]["state"], snow.incidents[canceled]["state"]) == ("7", "8")
    assert not [m for m, _, _ in snow.seen if m == "PATCH"]


# --- status and human closes -----------------------------------------------------------------


async def test_status_follows_the_state_and_the_assignee(desk: Backend,
                                                         snow: FakeServiceNow) -> None:
    ref = await desk.open(ticket())
    incident = snow.incidents[ref]
    assert await desk.status(ref) == "open"
    incident["assigned_to"] = snow.sys_id("sys_user", "user_name", "alice")
    assert await desk.status(ref) == "acknowledged"
    incident["assigned_to"] = ""
    for state, expected in (("2", "acknowledged"), ("3", "acknowledged"), ("6", "closed"),
                            ("7", "closed"), ("8", "closed"), ("1", "open")):
        incident["state"] = state
        assert await desk.status(ref) == expected, state
    del snow.incidents[ref]
    assert await desk.status(ref) == "gone"


async def test_reopen_of_a_resolved_incident_puts_it_in_progress_with_a_work_note(
    desk: Backend, snow: FakeServiceNow
) -> None:
    ref = await desk.open(ticket())
    snow.incidents[ref].update(state="6", close_code="Solved (Work Around)", close_notes="done")
    assert await desk.status(ref) == "closed"

    await desk.reopen(ref, "Reopened by probe: the outage goes on.")
    assert snow.incidents[ref]["state"] == "2"
    assert snow.journal[ref] == [("work_notes", "Reopened by probe: the outage goes on.")]


async def test_reopen_of_a_closed_incident_is_refused_with_the_setting_that_helps(
    desk: Backend, snow: FakeServiceNow
) -> None:
    ref = await desk.open(ticket())
    snow.incidents[ref]["state"] = "7"
    assert await desk.status(ref) == "closed"
    with pytest.raises(TicketError) as caught:
        await desk.reopen(ref, "Reopened by probe.")
    assert caught.value.permanent
    number = snow.incidents[ref]["number"]
    assert caught.value.message == (
        f"ServiceNow does not reopen incident {number}: it is Closed (7), and closed incidents "
        "stay closed. Set on_human_close: new to get a new incident instead")
    assert snow.incidents[ref]["state"] == "7" and snow.journal[ref] == []


async def test_a_new_incident_after_a_human_close_is_found_by_its_own_key(
    desk: Backend, snow: FakeServiceNow
) -> None:
    old = await desk.open(ticket())
    snow.incidents[old]["state"] = "7"
    new = await desk.open(ticket(f"{KEY}+1", follows=old))
    assert new != old
    assert await desk.find(KEY) == old
    assert await desk.find(f"{KEY}+1") == new


# --- the daemon, end to end ------------------------------------------------------------------


def config(snow: FakeServiceNow, flaky: Target, password: Path, policy: str = "reopen") -> str:
    return f"""
defaults:
  interval: 200ms
  retry_interval: 100ms
  timeout: 100ms
  failure_threshold: 3
  success_threshold: 2
  ticket: {{route: snow, priority: high, update_interval: 1s, on_human_close: {policy}}}
ticketing:
  poll_interval: 200ms
  routes:
    snow:
      backend: servicenow
      url: {snow.url}
      username: {USERNAME}
      password_file: {password}
      assignment_group: Network Operations
      timeout: 1s
checks:
  - name: web
    service: shop
    http: {{url: "http://127.0.0.1:{flaky.port}/health"}}
"""


async def test_the_daemon_opens_one_incident_informs_it_and_resolves_it(
    snow: FakeServiceNow, target: Target, run: Runner, tmp_path: Path
) -> None:
    (tmp_path / "password").write_text(PASSWORD)
    daemon, _ = await run(config(snow, target, tmp_path / "password"))
    await until("a first result", lambda: "web" in daemon.results)
    target.down = True

    await until("the incident", lambda: snow.incidents)
    incident = snow.only()
    assert (incident["urgency"], incident["impact"]) == ("1", "2")  # high
    assert incident["correlation_id"] == "t/shop/1"
    assert incident["description"].count("DOWN    HTTP 503 (expected 2xx)") == 3
    journal = snow.journal[incident["sys_id"]]
    await until("a status note", lambda: any(
        f == "work_notes" and t.startswith("Still failing") for f, t in journal), timeout=5)

    target.down = False
    await until("the resolve", lambda: incident["state"] == "6")
    assert incident["close_notes"].startswith("Recovered: web (http ")
    assert incident["close_code"] == "Solved (Permanently)"
    assert len(snow.incidents) == 1
    assert all(f == "work_notes" for f, _ in journal)


async def test_the_daemon_opens_a_new_incident_when_a_human_closed_the_first(
    snow: FakeServiceNow, target: Target, run: Runner, tmp_path: Path
) -> None:
    (tmp_path / "password").write_text(PASSWORD)
    daemon, _ = await run(config(snow, target, tmp_path / "password", policy="new"))
    await until("a first result", lambda: "web" in daemon.results)
    target.down = True
    first = await until("the incident", lambda: snow.incidents and snow.only())
    first["state"] = "7"  # closed by a human while the outage goes on

    await until("a second incident", lambda: len(snow.incidents) == 2)
    second = next(i for i in snow.incidents.values() if i is not first)
    assert second["correlation_id"] == "t/shop/1+1"
    assert f"Follows:    ticket {first['sys_id']}" in second["description"]
    target.down = False
    await until("the resolve", lambda: second["state"] == "6")
    await asyncio.sleep(0.3)
    assert first["state"] == "7"


@pytest.mark.parametrize("policy", ["reopen", "leave"])
async def test_the_daemon_and_an_incident_a_human_resolved_during_the_outage(
    snow: FakeServiceNow, target: Target, run: Runner, tmp_path: Path, policy: str
) -> None:
    (tmp_path / "password").write_text(PASSWORD)
    daemon, _ = await run(config(snow, target, tmp_path / "password", policy=policy))
    await until("a first result", lambda: "web" in daemon.results)
    target.down = True
    incident = await until("the incident", lambda: snow.incidents and snow.only())
    incident.update(state="6", close_code="Solved (Work Around)", close_notes="rebooted")
    journal = snow.journal[incident["sys_id"]]

    if policy == "reopen":
        await until("the reopen", lambda: incident["state"] == "2")
        assert any(t.startswith("Reopened by probe") for _, t in journal)
    else:
        await asyncio.sleep(1.5)  # a note interval and more: nothing may happen
        assert incident["state"] == "6"
        before = list(journal)
    target.down = False
    await until("the incident to resolve", lambda: not daemon.engine.groups["shop"].incident)
    if policy == "reopen":
        await until("the resolve", lambda: incident["state"] == "6")
        assert incident["close_notes"].startswith("Recovered: web (http ")
    else:
        await asyncio.sleep(0.5)
        assert journal == before and incident["close_notes"] == "rebooted"
    assert len(snow.incidents) == 1
