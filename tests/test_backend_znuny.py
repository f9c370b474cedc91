"""The znuny backend against a Znuny on loopback (tests/harness/fake_znuny.py) that speaks the
GenericInterface ticket connector over REST as Znuny documents it, with its traps: errors that
come back as HTTP 200, sessions that end, a search condition on an unknown dynamic field that
is dropped (matching every ticket) and a case-insensitive Equals, a closed ticket a note leaves
closed. What counts is what the fake Znuny holds afterwards; and the daemon, end to end, as
`probe run` in its own process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from probe.config import load
from probe.helpdesks.base import Ticket, TicketError
from probe.helpdesks.znuny import Backend, Route
from probe.tickets.admin import test_ticket as run_test_ticket
from tests.harness.daemon import ProbeProcess, Target
from tests.harness.fake_znuny import (
    AGENT,
    CUSTOMER_USER,
    KEY_FIELD,
    PASSWORD,
    QUEUE,
    USER,
    FakeZnuny,
    kind,
    serve_znuny,
)
from tests.harness.inloop import Runner
from tests.harness.ports import free_port
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
async def znuny() -> AsyncIterator[FakeZnuny]:
    async with serve_znuny() as fake:
        yield fake


@pytest.fixture
async def make(znuny: FakeZnuny, tmp_path: Path) -> AsyncIterator[MakeBackend]:
    """Backends on routes to the fake Znuny; keyword arguments override route settings."""
    made: list[Backend] = []
    (tmp_path / "znuny-password").write_text(PASSWORD + "\n")

    def backend(**settings: Any) -> Backend:
        route = Route.model_validate({
            "backend": "znuny", "url": znuny.url, "user": USER,
            "password_file": str(tmp_path / "znuny-password"), "queue": QUEUE,
            "customer_user": CUSTOMER_USER, "key_field": KEY_FIELD, "timeout": "2s",
            **settings,
        })
        made.append(Backend("znuny", route))
        return made[-1]

    yield backend
    for b in made:
        await b.close()


@pytest.fixture
def desk(make: MakeBackend) -> Backend:
    return make()


def notes(znuny: FakeZnuny, ref: str) -> list[tuple[str, str]]:
    return [(kind(a), a["Body"]) for a in znuny.notes(int(ref))]


# --- open ------------------------------------------------------------------------------------


async def test_open_creates_a_ticket_in_the_queue_with_the_key_in_its_dynamic_field(
    make: MakeBackend, znuny: FakeZnuny
) -> None:
    ref = await make(ticket_type="Incident").open(ticket())

    created = znuny.tickets[int(ref)]
    assert created["Title"] == ticket().title
    assert (created["Queue"], created["State"], created["Priority"]) == (
        QUEUE, "new", "5 very high")
    assert (created["CustomerUserID"], created["Type"]) == (CUSTOMER_USER, "Incident")
    assert created["DynamicFields"] == {KEY_FIELD: KEY}
    (opening,) = znuny.articles[int(ref)]
    assert (kind(opening), opening["Body"]) == ("internal note", BODY)  # never to the customer


async def test_each_priority_maps_to_the_routes_znuny_priority(
    make: MakeBackend, znuny: FakeZnuny
) -> None:
    desk = make(priorities={"urgent": "5 very high", "high": "4 high", "normal": "3 normal",
                            "low": "1 very low"})
    normal = await desk.open(ticket(priority="normal"))
    low = await desk.open(ticket("probe-eu-1/shop/4", priority="low"))
    assert znuny.tickets[int(normal)]["Priority"] == "3 normal"
    assert znuny.tickets[int(low)]["Priority"] == "1 very low"


async def test_an_error_znuny_answers_with_http_200_is_a_permanent_error_in_its_words(
    make: MakeBackend, znuny: FakeZnuny
) -> None:
    with pytest.raises(TicketError) as caught:
        await make(queue="Monitoring::Network").open(ticket())
    assert caught.value.permanent
    assert caught.value.message == ("POST /Ticket: TicketCreate.InvalidParameter: TicketCreate: "
                                    "Ticket->Queue parameter is invalid!")
    assert znuny.tickets == {}


async def test_a_session_znuny_ended_is_created_again_and_the_note_lands_once(
    desk: Backend, znuny: FakeZnuny
) -> None:
    ref = await desk.open(ticket())
    assert znuny.logins == 1
    znuny.end_sessions()  # the session's maximum time, or a restart of Znuny

    await desk.note(ref, "Still failing after 1h.")
    assert notes(znuny, ref) == [("internal note", "Still failing after 1h.")]
    assert znuny.logins == 2
    assert [code for _, path, code in znuny.seen if code] == ["TicketUpdate.AuthFail"]


async def test_a_wrong_password_is_a_permanent_error_naming_the_user(
    make: MakeBackend, znuny: FakeZnuny, tmp_path: Path
) -> None:
    (tmp_path / "wrong").write_text("not-the-password\n")
    with pytest.raises(TicketError) as caught:
        await make(password_file=str(tmp_path / "wrong")).open(ticket())
    assert caught.value.permanent
    assert caught.value.message == ("POST /Session: SessionCreate.AuthFail: SessionCreate: "
                                    "Authorization failing! (logging in as the route's user "
                                    "'probe')")
    assert znuny.tickets == {}


async def test_a_503_on_open_is_transient_and_the_retry_opens_one_ticket(
    desk: Backend, znuny: FakeZnuny
) -> None:
    znuny.fail("POST", "/Ticket$", 503, body="Service Unavailable")
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert await desk.find(KEY) is None
    ref = await desk.open(ticket())
    assert list(znuny.tickets) == [int(ref)]


async def test_an_open_that_times_out_after_znuny_created_it_is_found_by_the_next_try(
    make: MakeBackend, znuny: FakeZnuny
) -> None:
    desk = make(timeout="300ms")
    znuny.fail("POST", "/Ticket$", stall=1.0)
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    (created,) = znuny.tickets
    assert await desk.find(KEY) == str(created)  # so the dispatcher opens no second one


# --- find ------------------------------------------------------------------------------------


async def test_find_returns_the_newest_ticket_whose_field_holds_exactly_the_key(
    desk: Backend, znuny: FakeZnuny
) -> None:
    first = await desk.open(ticket())
    second = await desk.open(ticket())
    other = await desk.open(ticket("probe-eu-1/shop/4"))
    assert await desk.find(KEY) == second != first
    assert await desk.find("probe-eu-1/shop/4") == other
    # Znuny's Equals follows the database's collation: a key that differs only in case
    # matches in the search, and is no ticket of this incident.
    assert await desk.find("PROBE-EU-1/shop/3") is None
    assert await desk.find("probe-eu-1/nothing/1") is None


async def test_find_refuses_to_guess_when_znuny_ignored_the_key_field(
    make: MakeBackend, znuny: FakeZnuny
) -> None:
    # A search on a dynamic field Znuny does not know drops the condition and finds every
    # ticket: none of them may be taken for this incident's.
    znuny.add_ticket()
    znuny.add_ticket(key=KEY)
    with pytest.raises(TicketError) as caught:
        await make(key_field="ProbeKey").find(KEY)
    assert caught.value.permanent
    assert caught.value.message == (
        "Znuny's TicketSearch ignored the dynamic field 'ProbeKey' (the route's key_field): "
        "is it a valid ticket field?")


async def test_a_web_service_without_the_search_route_is_a_permanent_error_naming_it(
    make: MakeBackend, znuny: FakeZnuny
) -> None:
    # The example web service has TicketSearch on GET /Ticket only, and Znuny reads no body
    # from a GET: the dynamic field condition needs the POST route of search_path.
    await make().open(ticket())
    with pytest.raises(TicketError) as caught:
        await make(search_path="/Search").find(KEY)
    assert caught.value.permanent
    assert caught.value.message == (
        "POST /Search: Znuny's web service maps no operation to POST /Search (the route's "
        "search_path): map TicketSearch to it")


async def test_open_tickets_lists_every_open_ticket_of_the_agent_so_a_duplicate_shows(
    desk: Backend, znuny: FakeZnuny
) -> None:
    twice, once = "probe_eu/shop/3", "probe_eu/db/1"
    first = await desk.open(ticket(twice))
    other = await desk.open(ticket(once))
    second = await desk.open(ticket(twice))
    closed = await desk.open(ticket("probe_eu/dns/2"))
    znuny.set_state(int(closed), "closed successful")
    await desk.open(ticket("probe_us/shop/3"))  # another agent's
    # The database's LIKE takes them too: _ is its wildcard, and its collation ignores case.
    await desk.open(ticket("probe-eu/shop/3"))
    await desk.open(ticket("PROBE_EU/shop/3"))
    znuny.add_ticket()
    assert await desk.open_tickets("probe_eu/") == [
        (twice, first), (once, other), (twice, second)]


def test_a_key_field_znuny_could_not_name_is_refused_when_the_route_is_read() -> None:
    with pytest.raises(ValueError, match="letters and digits only"):
        Route.model_validate({"backend": "znuny", "url": "https://znuny.example.net/x",
                              "user": USER, "password": "env:ZNUNY_PASSWORD", "queue": QUEUE,
                              "customer_user": CUSTOMER_USER, "key_field": "probe_key"})


# --- notes, resolve, reopen, status ------------------------------------------------------------


async def test_a_note_on_a_closed_ticket_leaves_it_closed_and_reopen_sets_the_state(
    desk: Backend, znuny: FakeZnuny
) -> None:
    ref = await desk.open(ticket())
    znuny.set_state(int(ref), "closed successful")  # a person closed it
    await desk.note(ref, "Still failing after 1h.")
    assert znuny.tickets[int(ref)]["State"] == "closed successful"
    assert await desk.status(ref) == "closed"

    await desk.reopen(ref, "Reopened by probe: the outage goes on.")
    assert znuny.tickets[int(ref)]["State"] == "open"
    assert notes(znuny, ref) == [("internal note", "Still failing after 1h."),
                                 ("internal note", "Reopened by probe: the outage goes on.")]


async def test_resolve_closes_with_the_closing_note_and_a_repeat_only_adds_a_note(
    desk: Backend, znuny: FakeZnuny
) -> None:
    ref = await desk.open(ticket())
    await desk.resolve(ref, "Recovered: shop-443 OK.\nDown for 12m.")
    assert znuny.tickets[int(ref)]["State"] == "closed successful"
    await desk.resolve(ref, "Recovered again.")
    assert znuny.tickets[int(ref)]["State"] == "closed successful"
    assert notes(znuny, ref) == [("internal note", "Recovered: shop-443 OK.\nDown for 12m."),
                                 ("internal note", "Recovered again.")]


async def test_a_resolved_state_znuny_does_not_know_is_a_permanent_error_naming_the_setting(
    make: MakeBackend, znuny: FakeZnuny
) -> None:
    desk = make(resolved_state="solved")
    ref = await desk.open(ticket())
    with pytest.raises(TicketError) as caught:
        await desk.resolve(ref, "Recovered.")
    assert caught.value.permanent
    assert caught.value.message == (
        f"PATCH /Ticket/{ref}: TicketUpdate.InvalidParameter: TicketUpdate: Ticket->State "
        "parameter is invalid! (with the route's resolved_state 'solved')")
    assert znuny.tickets[int(ref)]["State"] == "new" and notes(znuny, ref) == []


async def test_reopen_of_a_merged_ticket_is_refused_with_the_setting_that_helps(
    desk: Backend, znuny: FakeZnuny
) -> None:
    ref = await desk.open(ticket())
    znuny.set_state(int(ref), "merged")
    assert await desk.status(ref) == "closed"
    with pytest.raises(TicketError) as caught:
        await desk.reopen(ref, "Reopened by probe.")
    assert caught.value.permanent
    number = znuny.tickets[int(ref)]["TicketNumber"]
    assert caught.value.message == (f"Znuny does not reopen ticket {number}: it is merged. Set "
                                    "on_human_close: new to get a new ticket instead")
    assert znuny.tickets[int(ref)]["State"] == "merged" and notes(znuny, ref) == []


async def test_status_follows_the_lock_the_owner_and_the_state_type(
    desk: Backend, znuny: FakeZnuny
) -> None:
    ref = await desk.open(ticket())
    record = znuny.tickets[int(ref)]
    assert await desk.status(ref) == "open"
    record["Lock"] = "lock"
    assert await desk.status(ref) == "acknowledged"
    record["Lock"] = "unlock"
    record["Owner"] = AGENT
    assert await desk.status(ref) == "acknowledged"
    record["Owner"] = USER
    for state, expected in (("open", "acknowledged"), ("pending reminder", "acknowledged"),
                            ("closed successful", "closed"), ("removed", "closed"),
                            ("new", "open")):
        znuny.set_state(int(ref), state)
        assert await desk.status(ref) == expected, state
    del znuny.tickets[int(ref)]
    assert await desk.status(ref) == "gone"  # Znuny: AccessDenied, as for a ticket not shown


def test_link_opens_the_ticket_in_the_agent_interface(make: MakeBackend) -> None:
    route = make().route
    assert route.link("42") == (route.url.split("/nph-genericinterface.pl/")[0]
                                + "/index.pl?Action=AgentTicketZoom;TicketID=42")


async def test_probe_test_ticket_opens_notes_and_resolves_a_ticket(
    znuny: FakeZnuny, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "password").write_text(PASSWORD)
    (tmp_path / "probe.yaml").write_text(f"""
agent: {{name: t, state_dir: {tmp_path}/state}}
ticketing:
  routes:
    znuny:
      backend: znuny
      url: {znuny.url}
      user: {USER}
      password_file: {tmp_path}/password
      queue: {QUEUE}
      customer_user: {CUSTOMER_USER}
      key_field: {KEY_FIELD}
""")
    assert await run_test_ticket(load(tmp_path / "probe.yaml"), "znuny") == 0
    assert "route znuny (znuny): works" in capsys.readouterr().out
    created = znuny.only()
    assert (created["State"], created["Priority"]) == ("closed successful", "2 low")
    assert [a["Body"] for a in znuny.notes(created["TicketID"])] == [
        "probe test-ticket: a note.", "probe test-ticket: resolved."]


# --- the daemon, end to end ------------------------------------------------------------------


async def test_the_daemon_opens_notes_escalates_reopens_and_resolves_one_ticket(
    znuny: FakeZnuny, target: Target, tmp_path: Path
) -> None:
    """`probe run` as an operator runs it: the incident opens one ticket with the priority
    mapped, a status note, an escalation while nobody takes it, a reopen after a person closed
    it during the outage, and the resolve when the target recovers."""
    (tmp_path / "password").write_text(PASSWORD)
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
  ticket: {{route: znuny, priority: high, update_interval: 1s, escalate_after: 1s,
            on_human_close: reopen}}
ticketing:
  poll_interval: 200ms
  routes:
    znuny:
      backend: znuny
      url: {znuny.url}
      user: {USER}
      password_file: {tmp_path}/password
      queue: {QUEUE}
      customer_user: {CUSTOMER_USER}
      key_field: {KEY_FIELD}
      escalate_to: oncall
      timeout: 1s
    oncall:
      backend: local
checks:
  - name: web
    service: shop
    http: {{url: "http://127.0.0.1:{target.port}/health"}}
""")
    probe = ProbeProcess(config, port, tmp_path / "state").start()
    await probe.wait("the daemon to start", lambda: "probe started" in probe.log_text())
    await probe.wait("a first result", lambda: probe.status()["checks"])
    target.down = True

    created = await probe.wait("the ticket", lambda: znuny.tickets and znuny.only())
    assert created["Priority"] == "4 high"
    assert created["DynamicFields"] == {KEY_FIELD: "t/shop/1"}
    ref = created["TicketID"]

    def bodies() -> list[str]:
        return [a["Body"] for a in znuny.notes(ref)]

    await probe.wait("a status note", lambda: any(b.startswith("Still failing")
                                                  for b in bodies()))
    await probe.wait("the escalation", lambda: probe.db(
        "SELECT key FROM local_tickets WHERE key = 't/shop/1/escalation'"))
    await probe.wait("the note that says so", lambda: any(
        "probe escalated it to the oncall route" in b for b in bodies()))

    znuny.set_state(ref, "closed successful")  # a person closed it; the outage goes on
    await probe.wait("the reopen", lambda: created["State"] == "open")
    assert any(b.startswith("Reopened by probe") for b in bodies())

    target.down = False
    await probe.wait("the resolve", lambda: created["State"] == "closed successful")
    assert bodies()[-1].startswith("Recovered: web (http ")
    assert all(kind(a) == "internal note" for a in znuny.articles[ref])
    await asyncio.sleep(0.5)  # a poll or two more: nothing else may happen
    assert len(znuny.tickets) == 1 and created["State"] == "closed successful"
    probe.stop()


async def test_the_daemon_opens_a_follow_up_when_a_person_merged_the_ticket(
    znuny: FakeZnuny, target: Target, run: Runner, tmp_path: Path
) -> None:
    (tmp_path / "password").write_text(PASSWORD)
    daemon, _ = await run(f"""
defaults:
  interval: 200ms
  retry_interval: 100ms
  timeout: 100ms
  failure_threshold: 3
  success_threshold: 2
  ticket: {{route: znuny, priority: high, update_interval: 1h, on_human_close: reopen}}
ticketing:
  poll_interval: 200ms
  routes:
    znuny:
      backend: znuny
      url: {znuny.url}
      user: {USER}
      password_file: {tmp_path}/password
      queue: {QUEUE}
      customer_user: {CUSTOMER_USER}
      key_field: {KEY_FIELD}
      timeout: 1s
checks:
  - name: web
    service: shop
    http: {{url: "http://127.0.0.1:{target.port}/health"}}
""")
    await until("a first result", lambda: "web" in daemon.results)
    target.down = True
    first = await until("the ticket", lambda: znuny.tickets and znuny.only())
    znuny.set_state(first["TicketID"], "merged")  # into another ticket: it cannot reopen

    await until("a follow-up ticket", lambda: len(znuny.tickets) == 2)
    second = znuny.tickets[max(znuny.tickets)]
    assert second["DynamicFields"] == {KEY_FIELD: "t/shop/1+1"}
    (opening,) = znuny.articles[second["TicketID"]]
    assert f"Follows:    ticket {first['TicketID']}" in opening["Body"]
    target.down = False
    await until("the resolve", lambda: second["State"] == "closed successful")
    assert first["State"] == "merged"
    assert not [a for a in znuny.notes(first["TicketID"]) if "Reopened" in a["Body"]]
