"""The pagerduty backend against a fake PagerDuty on loopback (tests/harness/fake_pagerduty.py): the
events it accepted and the incidents and notes it holds after each call; and, through the
daemon, an incident paged after exactly three failures, and PagerDuty as the escalation
target of another route."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from probe.helpdesks.base import Priority, Ticket, TicketError
from probe.helpdesks.pagerduty import Backend, Route
from tests.harness import fake_pagerduty
from tests.harness.daemon import Target
from tests.harness.fake_pagerduty import API_TOKEN, ROUTING_KEY, USER_EMAIL, FakePagerDuty
from tests.harness.inloop import Runner, sqlite
from tests.harness.wait import until

KEY = "probe-eu-1/shop/3"
TICKET = Ticket(
    key=KEY,
    title="[probe] shop DOWN — connection refused from shop.example.com:443",
    body="shop is DOWN: connection refused\n\nprobe key: probe-eu-1/shop/3",
    body_markdown="**shop is DOWN**: connection refused",
    priority="urgent",
    agent="probe-eu-1",
    group="shop",
)

MakeBackend = Callable[..., Backend]


@pytest.fixture
async def pagerduty() -> AsyncIterator[FakePagerDuty]:
    async with fake_pagerduty.serve() as fake:
        yield fake


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, Path]:
    files = {"routing_key_file": tmp_path / "routing-key", "api_token_file": tmp_path / "api"}
    files["routing_key_file"].write_text(ROUTING_KEY + "\n")
    files["api_token_file"].write_text(API_TOKEN + "\n")
    return files


@pytest.fixture
async def make_backend(
    pagerduty: FakePagerDuty, secrets: dict[str, Path]
) -> AsyncIterator[MakeBackend]:
    """Backends on routes to the fake; `rest=True` adds the REST API's token and user."""
    made: list[Backend] = []

    def make(rest: bool = False, **settings: Any) -> Backend:
        values: dict[str, Any] = {
            "backend": "pagerduty", "url": pagerduty.url, "api_url": pagerduty.url,
            "routing_key_file": str(secrets["routing_key_file"]), "timeout": "2s"}
        if rest:
            values |= {"api_token_file": str(secrets["api_token_file"]),
                       "from_email": USER_EMAIL}
        made.append(Backend("oncall", Route.model_validate(values | settings)))
        return made[-1]

    yield make
    for backend in made:
        await backend.close()


@pytest.fixture
def pd(make_backend: MakeBackend) -> Backend:
    return make_backend()


@pytest.fixture
def pd_rest(make_backend: MakeBackend) -> Backend:
    return make_backend(rest=True)


# --- open ----------------------------------------------------------------------------------


async def test_open_triggers_an_incident_keyed_by_the_incident_key(
    pd: Backend, pagerduty: FakePagerDuty
) -> None:
    ref = await pd.open(TICKET)

    assert ref == KEY
    (event,) = pagerduty.events
    assert event == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": KEY,
        "client": "probe",
        "payload": {
            "summary": TICKET.title,
            "source": "probe-eu-1",
            "severity": "critical",
            "component": "shop",
            "group": "shop",
            "custom_details": {"body": TICKET.body, "incident_key": KEY, "priority": "urgent"},
        },
    }
    (incident,) = pagerduty.incidents
    assert (incident.incident_key, incident.title, incident.status) == (
        KEY, TICKET.title, "triggered")
    assert pagerduty.requests[0].path == "/v2/enqueue"
    assert "Authorization" not in pagerduty.requests[0].headers  # the routing key is the auth


@pytest.mark.parametrize(("priority", "severity"), [("high", "warning"), ("low", "info")])
async def test_each_priority_maps_to_the_routes_severity(
    make_backend: MakeBackend, pagerduty: FakePagerDuty, priority: Priority, severity: str
) -> None:
    pd = make_backend(severities={"urgent": "critical", "high": "warning", "normal": "warning",
                                  "low": "info"})
    await pd.open(dataclasses.replace(TICKET, priority=priority))
    assert pagerduty.events[0]["payload"]["severity"] == severity


async def test_a_long_title_and_a_long_key_fit_pagerdutys_limits(
    pd: Backend, pagerduty: FakePagerDuty
) -> None:
    key = "probe-eu-1/" + "x" * 300 + "/1"
    ref = await pd.open(dataclasses.replace(TICKET, key=key, title="t" * 2000))

    assert len(ref) <= 255
    (event,) = pagerduty.events
    assert event["dedup_key"] == ref
    assert len(event["payload"]["summary"]) == 1024
    assert event["payload"]["custom_details"]["incident_key"] == key
    await pd.resolve(ref, "recovered")
    assert pagerduty.incidents[0].status == "resolved"


async def test_opening_twice_is_deduplicated_by_pagerduty_and_find_cannot_look(
    pd: Backend, pagerduty: FakePagerDuty
) -> None:
    assert await pd.find(KEY) is None  # the Events API has no lookup
    await pd.open(TICKET)
    await pd.open(TICKET)

    (incident,) = pagerduty.incidents
    assert incident.triggers == 2
    assert await pd.find(KEY) is None


async def test_a_503_on_open_is_transient_and_the_retry_makes_one_incident(
    pd: Backend, pagerduty: FakePagerDuty
) -> None:
    pagerduty.fail("/v2/enqueue", 503)
    with pytest.raises(TicketError) as caught:
        await pd.open(TICKET)
    assert not caught.value.permanent
    assert "HTTP 503" in caught.value.message

    await pd.open(TICKET)
    assert len(pagerduty.with_key(KEY)) == 1


async def test_an_open_that_times_out_after_pagerduty_took_it_is_sent_again_harmlessly(
    make_backend: MakeBackend, pagerduty: FakePagerDuty
) -> None:
    pd = make_backend(timeout="500ms")
    pagerduty.stall_events = 1
    with pytest.raises(TicketError) as caught:
        await pd.open(TICKET)
    assert not caught.value.permanent
    assert "no answer within 0.5s" in caught.value.message

    assert await pd.find(KEY) is None
    assert await pd.open(TICKET) == KEY
    (incident,) = pagerduty.with_key(KEY)
    assert incident.triggers == 2


async def test_an_invalid_event_is_permanent_with_pagerdutys_reasons(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    short = tmp_path / "short-key"
    short.write_text("not-a-routing-key")
    pd = make_backend(routing_key_file=str(short))
    with pytest.raises(TicketError) as caught:
        await pd.open(TICKET)
    assert caught.value.permanent
    assert caught.value.message == (
        "POST /v2/enqueue: HTTP 400: Event object is invalid (Length of 'routing_key' is "
        "incorrect (should be 32 characters))")


@pytest.mark.parametrize(("headers", "wait"), [({}, None), ({"Retry-After": "30"}, 30.0)],
                         ids=["429", "429-retry-after"])
async def test_a_rate_limit_is_transient(
    pd: Backend, pagerduty: FakePagerDuty, headers: dict[str, str], wait: float | None
) -> None:
    pagerduty.fail("/v2/enqueue", 429, headers)
    with pytest.raises(TicketError) as caught:
        await pd.open(TICKET)
    assert not caught.value.permanent
    assert caught.value.retry_after == wait
    assert "HTTP 429" in caught.value.message
    assert pagerduty.incidents == []


async def test_an_unreadable_routing_key_is_a_permanent_error(
    make_backend: MakeBackend, tmp_path: Path, pagerduty: FakePagerDuty
) -> None:
    pd = make_backend(routing_key_file=str(tmp_path / "missing"))
    with pytest.raises(TicketError) as caught:
        await pd.open(TICKET)
    assert caught.value.permanent
    assert "routing_key_file: cannot read" in caught.value.message
    assert pagerduty.requests == []


def test_an_api_token_without_a_pagerduty_user_is_refused_at_load() -> None:
    with pytest.raises(pydantic.ValidationError, match="needs from_email"):
        Route.model_validate({"backend": "pagerduty", "routing_key": "env:PD_KEY",
                              "api_token": "env:PD_TOKEN"})


# --- resolve, notes, status without the REST API ----------------------------------------------


async def test_resolve_resolves_the_incident_and_a_second_resolve_is_harmless(
    pd: Backend, pagerduty: FakePagerDuty
) -> None:
    ref = await pd.open(TICKET)
    await pd.resolve(ref, "Recovered.")
    await pd.resolve(ref, "Recovered.")

    (incident,) = pagerduty.incidents
    assert incident.status == "resolved"
    resolves = [e for e in pagerduty.events if e["event_action"] == "resolve"]
    assert resolves[0] == {"routing_key": ROUTING_KEY, "event_action": "resolve",
                           "dedup_key": KEY}


async def test_a_resolve_that_failed_is_retried(pd: Backend, pagerduty: FakePagerDuty) -> None:
    ref = await pd.open(TICKET)
    pagerduty.fail("/v2/enqueue", 502)
    with pytest.raises(TicketError) as caught:
        await pd.resolve(ref, "Recovered.")
    assert not caught.value.permanent
    assert pagerduty.incidents[0].status == "triggered"

    await pd.resolve(ref, "Recovered.")
    assert pagerduty.incidents[0].status == "resolved"


async def test_without_an_api_token_notes_are_not_sent_and_status_is_not_tracked(
    pd: Backend, pagerduty: FakePagerDuty
) -> None:
    ref = await pd.open(TICKET)
    await pd.note(ref, "Still failing after 1h.")

    assert not pd.tracks_status
    assert await pd.status(ref) == "open"
    assert [r.path for r in pagerduty.requests] == ["/v2/enqueue"]


# --- with the REST API -------------------------------------------------------------------------


async def test_a_note_goes_to_the_incident_through_the_rest_api(
    pd_rest: Backend, pagerduty: FakePagerDuty
) -> None:
    ref = await pd_rest.open(TICKET)
    await pd_rest.note(ref, "Still failing after 1h.")

    assert pd_rest.tracks_status
    (incident,) = pagerduty.incidents
    assert incident.notes == [(USER_EMAIL, "Still failing after 1h.")]
    lookup, post = pagerduty.requests[-2:]
    assert lookup.query == {"incident_key": KEY, "date_range": "all",
                            "sort_by": "created_at:desc"}
    assert post.headers["Authorization"] == f"Token token={API_TOKEN}"
    assert post.headers["Accept"] == "application/vnd.pagerduty+json;version=2"
    assert post.headers["From"] == USER_EMAIL


async def test_a_note_finds_an_incident_older_than_pagerdutys_default_30_days(
    pd_rest: Backend, pagerduty: FakePagerDuty
) -> None:
    incident = pagerduty.old_incident(KEY, days=45)
    await pd_rest.note(KEY, "an old one")
    assert incident.notes == [(USER_EMAIL, "an old one")]
    assert await pd_rest.status(KEY) == "closed"


async def test_a_note_before_pagerduty_made_the_incident_is_transient(
    pd_rest: Backend, pagerduty: FakePagerDuty
) -> None:
    pagerduty.lag = 0.5
    ref = await pd_rest.open(TICKET)
    with pytest.raises(TicketError) as caught:
        await pd_rest.note(ref, "Triage at open time")
    assert not caught.value.permanent
    assert caught.value.message == f"PagerDuty has no incident with dedup_key {KEY!r} (yet)"
    with pytest.raises(TicketError):
        await pd_rest.status(ref)

    await until("the incident", lambda: pagerduty.incidents, timeout=5)
    await pd_rest.note(ref, "Triage at open time")
    assert pagerduty.incidents[0].notes == [(USER_EMAIL, "Triage at open time")]


async def test_resolve_adds_the_closing_note(pd_rest: Backend, pagerduty: FakePagerDuty) -> None:
    ref = await pd_rest.open(TICKET)
    await pd_rest.resolve(ref, "Recovered: shop OK.")

    (incident,) = pagerduty.incidents
    assert incident.status == "resolved"
    assert incident.notes == [(USER_EMAIL, "Recovered: shop OK.")]


async def test_a_closing_note_pagerduty_refuses_does_not_undo_the_resolve(
    make_backend: MakeBackend, pagerduty: FakePagerDuty, caplog: pytest.LogCaptureFixture
) -> None:
    pd = make_backend(rest=True, from_email="nobody@example.com")
    ref = await pd.open(TICKET)
    await pd.resolve(ref, "Recovered.")

    assert pagerduty.incidents[0].status == "resolved"
    assert "pagerduty closing note not added" in caplog.text
    assert "Requester User Not Found" in caplog.text


async def test_status_follows_the_incident(pd_rest: Backend, pagerduty: FakePagerDuty) -> None:
    ref = await pd_rest.open(TICKET)
    assert await pd_rest.status(ref) == "open"
    pagerduty.acknowledge(pagerduty.incidents[0])
    assert await pd_rest.status(ref) == "acknowledged"
    pagerduty.resolve_by_hand(pagerduty.incidents[0])
    assert await pd_rest.status(ref) == "closed"


async def test_reopen_triggers_a_new_incident_with_the_same_key_and_title(
    pd_rest: Backend, pagerduty: FakePagerDuty
) -> None:
    ref = await pd_rest.open(dataclasses.replace(TICKET, priority="low"))
    pagerduty.resolve_by_hand(pagerduty.incidents[0])

    await pd_rest.reopen(ref, "Reopened by probe: the outage goes on.")
    first, second = pagerduty.with_key(KEY)
    assert (first.status, second.status) == ("resolved", "triggered")
    assert second.title == TICKET.title
    event = pagerduty.events[-1]
    assert event["payload"]["severity"] == "critical"  # the route's urgent: see reopen()
    assert event["payload"]["custom_details"]["reopened"] == (
        "Reopened by probe: the outage goes on.")
    assert await pd_rest.status(ref) == "open"


async def test_a_wrong_api_token_is_a_permanent_error_in_pagerdutys_words(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    pd = make_backend(rest=True, api_token_file=str(wrong))
    with pytest.raises(TicketError) as caught:
        await pd.status(KEY)
    assert caught.value.permanent
    assert "GET /incidents: HTTP 401" in caught.value.message
    assert "Unauthorized" in caught.value.message


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
    oncall:
      backend: pagerduty
      url: "{url}"
      api_url: "{url}"
      routing_key_file: {routing_key}
      api_token_file: {api_token}
      from_email: {email}
checks:
  - name: web
    service: shop
    http: {{url: "http://127.0.0.1:{port}/health"}}
"""


def daemon_config(pagerduty: FakePagerDuty, target: Target, secrets: dict[str, Path],
                  policy: str = "") -> str:
    return DAEMON.format(url=pagerduty.url, routing_key=secrets["routing_key_file"],
                         api_token=secrets["api_token_file"], email=USER_EMAIL,
                         port=target.port, policy=policy)


async def test_the_daemon_pages_once_informs_the_incident_and_resolves_it(
    pagerduty: FakePagerDuty, target: Target, run: Runner, secrets: dict[str, Path]
) -> None:
    daemon, _ = await run(daemon_config(pagerduty, target, secrets))
    await until("a first result", lambda: "web" in daemon.results)
    target.down = True
    (incident,) = await until("the incident", lambda: pagerduty.with_key("t/shop/1"))
    (trigger,) = [e for e in pagerduty.events if e["event_action"] == "trigger"]
    assert trigger["payload"]["severity"] == "error"  # high
    assert trigger["payload"]["source"] == "t"
    assert trigger["payload"]["summary"] == (
        f"[probe] shop DOWN — HTTP 503 (expected 2xx) from http://127.0.0.1:{target.port}/health")
    body = trigger["payload"]["custom_details"]["body"]
    assert "Why:        3 consecutive failures" in body
    assert body.count("DOWN    HTTP 503 (expected 2xx)") == 3  # the three that decided

    await until("the triage note", lambda: any(
        text.startswith("Triage at open time") for _, text in incident.notes))
    await until("a status note", lambda: any(
        text.startswith("Still failing") for _, text in incident.notes), timeout=5)

    target.down = False
    await until("the resolve", lambda: incident.status == "resolved")
    await until("the closing note", lambda: incident.notes[-1][1].startswith("Recovered: web"))
    assert len(pagerduty.incidents) == 1


async def test_an_untaken_local_ticket_is_escalated_to_pagerduty(
    pagerduty: FakePagerDuty, target: Target, run: Runner, secrets: dict[str, Path]
) -> None:
    config = yaml.safe_load(daemon_config(pagerduty, target, secrets, ", escalate_after: 500ms"))
    routes = config["ticketing"]["routes"]
    config["ticketing"]["routes"] = {"desk": {"backend": "local", "escalate_to": "oncall"},
                                     **routes}
    config["checks"][0]["ticket"] = {"route": "desk"}
    _daemon, desk = await run(config)
    target.down = True
    (incident,) = await until("the page", lambda: pagerduty.with_key("t/shop/1/escalation"))
    (trigger,) = pagerduty.events
    assert trigger["payload"]["severity"] == "error"
    assert trigger["payload"]["summary"].startswith("[probe] shop DOWN")
    assert [t[1] for t in desk.tickets()] == ["t/shop/1"]
    await until("the escalation note", lambda: any(
        "probe escalated it to the oncall route" in text for _, text in desk.notes(1)))
    assert incident.status == "triggered"


@pytest.mark.parametrize("policy", ["reopen", "new", "leave"])
async def test_an_incident_resolved_by_a_human_during_the_outage(
    pagerduty: FakePagerDuty, target: Target, run: Runner, secrets: dict[str, Path],
    policy: str,
) -> None:
    daemon, _ = await run(daemon_config(pagerduty, target, secrets,
                                        f", on_human_close: {policy}"))
    target.down = True
    (incident,) = await until("the incident", lambda: pagerduty.with_key("t/shop/1"))
    pagerduty.resolve_by_hand(incident)
    if policy == "reopen":
        await until("a new trigger", lambda: pagerduty.with_key("t/shop/1")[1:])
    elif policy == "new":
        await until("a new incident", lambda: pagerduty.with_key("t/shop/1+1"))
        trigger = next(e for e in pagerduty.events if e.get("dedup_key") == "t/shop/1+1")
        assert trigger["payload"]["custom_details"]["follows"] == "t/shop/1"
    else:
        await asyncio.sleep(1.5)  # a note interval and more: nothing may happen
        assert pagerduty.incidents == [incident]
        events = len(pagerduty.events)
    target.down = False
    if policy != "leave":
        await until("every incident resolved", lambda: all(
            i.status == "resolved" for i in pagerduty.incidents))
        return
    await until("the incident to resolve", lambda: not daemon.engine.groups["shop"].incident)
    # Written with the decision (the next flush), then delivered: drained only after both.
    await until("the resolve queued", lambda: sqlite(daemon).query(
        "SELECT 1 FROM outbox WHERE action = 'resolve'"))
    await until("the outbox to drain", lambda: not sqlite(daemon).query(
        "SELECT 1 FROM outbox WHERE status = 'pending'"))
    assert len(pagerduty.events) == events  # left alone: not even a resolve
