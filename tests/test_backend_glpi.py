"""The glpi backend against a GLPI on loopback (tests/harness/fake_glpi.py) that speaks the
legacy REST API as GLPI documents it, with its traps: sessions that expire, the App-Token,
errors as ["ERROR_...", "message"], fields it drops without a word, searchText that is a LIKE,
tickets that take no followup once solved, HTML error pages from the proxy in front. What
counts is what the fake GLPI holds afterwards; the daemon end to end is `probe run` itself."""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from probe.helpdesks.base import Ticket, TicketError
from probe.helpdesks.glpi import Backend, Route
from tests.harness.daemon import ProbeProcess, Target
from tests.harness.fake_glpi import (
    APP_TOKEN,
    HTML_PAGE,
    USER_TOKEN,
    FakeGlpi,
    like,
    serve_glpi,
)
from tests.harness.ports import free_port
from tests.harness.proc import PROBE
from tests.harness.wait import until

KEY = "probe-eu-1/shop/3"
BODY = "shop is DOWN: <connection refused>\n\nprobe key: probe-eu-1/shop/3"


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
async def glpi() -> AsyncIterator[FakeGlpi]:
    async with serve_glpi() as fake:
        yield fake


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "user-token").write_text(USER_TOKEN + "\n")
    (tmp_path / "app-token").write_text(APP_TOKEN + "\n")
    return {"user_token_file": str(tmp_path / "user-token"),
            "app_token_file": str(tmp_path / "app-token")}


@pytest.fixture
async def make(glpi: FakeGlpi, secrets: dict[str, str]) -> AsyncIterator[MakeBackend]:
    """Backends on routes to the fake GLPI; keyword arguments override route settings."""
    made: list[Backend] = []

    def backend(**settings: Any) -> Backend:
        route = Route.model_validate({"backend": "glpi", "url": glpi.url, "timeout": "2s",
                                      **secrets, **settings})
        made.append(Backend("glpi", route))
        return made[-1]

    yield backend
    for b in made:
        await b.close()


@pytest.fixture
def desk(make: MakeBackend) -> Backend:
    return make()


# --- open --------------------------------------------------------------------------------------


async def test_open_creates_an_incident_ticket_with_urgency_impact_text_and_the_key(
    make: MakeBackend, glpi: FakeGlpi
) -> None:
    ref = await make(entities_id=2, category_id=9).open(ticket())

    created = glpi.tickets[int(ref)]
    assert created["name"] == ticket().title
    assert created["content"] == "<pre>shop is DOWN: &lt;connection refused&gt;\n\nprobe key: " \
                                 "probe-eu-1/shop/3</pre>"
    assert (created["type"], created["urgency"], created["impact"]) == (1, 5, 4)
    assert (created["entities_id"], created["itilcategories_id"]) == (2, 9)
    assert created["externalid"] == KEY
    assert created["status"] == 1
    assert glpi.notes(int(ref)) == []


async def test_each_priority_maps_to_the_routes_urgency_and_impact(
    desk: Backend, glpi: FakeGlpi
) -> None:
    normal = await desk.open(ticket(priority="normal"))
    low = await desk.open(ticket("probe-eu-1/shop/4", priority="low"))
    assert (glpi.tickets[int(normal)]["urgency"], glpi.tickets[int(normal)]["impact"]) == (3, 3)
    assert (glpi.tickets[int(low)]["urgency"], glpi.tickets[int(low)]["impact"]) == (2, 2)


async def test_a_ticket_for_the_routes_group_is_processing_at_once_and_still_nobodys(
    make: MakeBackend, glpi: FakeGlpi
) -> None:
    desk = make(group_id=3)
    ref = await desk.open(ticket())
    assert glpi.groups[int(ref)] == [3]
    assert glpi.tickets[int(ref)]["status"] == 2  # GLPI's doing, not a human's
    assert await desk.status(ref) == "open"  # so it may still be escalated
    glpi.assign(int(ref))
    assert await desk.status(ref) == "acknowledged"


async def test_a_glpi_without_ticket_externalid_is_a_permanent_error_that_says_so(
    desk: Backend, glpi: FakeGlpi
) -> None:
    glpi.knows_externalid = False  # GLPI 10.0: the field is dropped, and the answer is 201
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert caught.value.permanent
    (created,) = glpi.tickets
    assert caught.value.message == (
        f"GLPI ticket {created} was created without the incident key in its External ID "
        "(externalid): this GLPI has no such ticket field (GLPI 10.0 has none; GLPI 11 has it), "
        "and probe could not find the ticket again. Set key_in: title on the route to keep the "
        "key in the ticket's name")


async def test_a_503_on_open_is_transient_and_the_retry_opens_one_ticket(
    desk: Backend, glpi: FakeGlpi
) -> None:
    glpi.fail("POST", "/Ticket$", 503, body=["ERROR_SQL", "We suspect an SQL error"])
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert "HTTP 503" in caught.value.message and "ERROR_SQL" in caught.value.message

    assert await desk.find(KEY) is None
    ref = await desk.open(ticket())
    assert list(glpi.tickets) == [int(ref)]


async def test_an_open_that_times_out_after_glpi_created_it_is_found_by_the_next_try(
    make: MakeBackend, glpi: FakeGlpi
) -> None:
    desk = make(timeout="500ms")
    glpi.fail("POST", "/Ticket$", stall=1.5)
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert "no answer within 0.5s" in caught.value.message
    (created,) = glpi.tickets
    assert await desk.find(KEY) == str(created)  # so the dispatcher does not open a second one


async def test_an_html_error_page_from_the_proxy_is_transient_and_reads_as_words(
    desk: Backend, glpi: FakeGlpi
) -> None:
    glpi.fail("POST", "/Ticket$", 502, body=HTML_PAGE)
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    assert caught.value.message == "POST /Ticket: HTTP 502: 502 Bad Gateway 502 Bad Gateway nginx"
    assert glpi.tickets == {}


async def test_a_proxys_429_is_transient_and_says_when_to_try_again(
    desk: Backend, glpi: FakeGlpi
) -> None:
    glpi.fail("POST", "/Ticket$", 429, headers={"Retry-After": "30"}, body="Too Many Requests")
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent and caught.value.refused
    assert caught.value.retry_after == 30
    assert glpi.tickets == {}


# --- the session -------------------------------------------------------------------------------


async def test_one_session_serves_every_call_and_close_kills_it(
    make: MakeBackend, glpi: FakeGlpi
) -> None:
    desk = make()
    ref = await desk.open(ticket())
    await desk.note(ref, "Still failing.")
    assert await desk.status(ref) == "open"
    assert glpi.logins == 1
    (session,) = glpi.sessions
    await desk.close()
    assert glpi.killed == [session] and glpi.sessions == set()


async def test_an_expired_session_is_renewed_once_and_the_note_is_added_once(
    desk: Backend, glpi: FakeGlpi
) -> None:
    ref = await desk.open(ticket())
    glpi.expire_sessions()  # GLPI's session lifetime ran out between two calls
    await desk.note(ref, "Still failing.")
    assert glpi.notes(int(ref)) == [("private followup", "Still failing.")]
    assert glpi.logins == 2
    assert [s for _, p, s in glpi.seen if p == "/apirest.php/Ticket/" + ref] == [200, 401, 200]


async def test_a_session_glpi_refuses_again_at_once_is_a_transient_error(
    desk: Backend, glpi: FakeGlpi
) -> None:
    ref = await desk.open(ticket())
    glpi.fail("GET", "/Ticket/", 401, times=2,
              body=["ERROR_SESSION_TOKEN_INVALID", "session_token seems invalid"])
    with pytest.raises(TicketError) as caught:
        await desk.status(ref)
    assert not caught.value.permanent
    assert "ERROR_SESSION_TOKEN_INVALID" in caught.value.message
    assert glpi.logins == 2  # renewed once, not in a loop
    assert await desk.status(ref) == "open"  # the next try goes through


async def test_a_missing_app_token_is_a_permanent_error_with_glpis_code(
    make: MakeBackend, glpi: FakeGlpi
) -> None:
    with pytest.raises(TicketError) as caught:
        await make(app_token_file=None).open(ticket())
    assert caught.value.permanent
    assert caught.value.message == (
        "GET /initSession: HTTP 400: ERROR_APP_TOKEN_PARAMETERS_MISSING: parameter app_token "
        "is missing or empty")
    assert glpi.tickets == {} and glpi.logins == 0


async def test_a_route_without_app_token_works_where_glpi_asks_for_none(
    make: MakeBackend, glpi: FakeGlpi
) -> None:
    glpi.app_token = None
    ref = await make(app_token_file=None).open(ticket())
    assert glpi.tickets[int(ref)]["externalid"] == KEY


async def test_a_wrong_user_token_is_a_permanent_error_and_no_session_is_retried(
    make: MakeBackend, glpi: FakeGlpi, tmp_path: Path
) -> None:
    (tmp_path / "wrong").write_text("not-the-user-token")
    with pytest.raises(TicketError) as caught:
        await make(user_token_file=str(tmp_path / "wrong")).open(ticket())
    assert caught.value.permanent
    assert "HTTP 401" in caught.value.message
    assert "ERROR_GLPI_LOGIN_USER_TOKEN" in caught.value.message
    assert [p for _, p, _ in glpi.seen] == ["/apirest.php/initSession"]


async def test_a_missing_right_is_permanent_and_opens_no_new_session(
    desk: Backend, glpi: FakeGlpi
) -> None:
    ref = await desk.open(ticket())
    glpi.fail("POST", "/ITILFollowup", 401, body=["ERROR_RIGHT_MISSING", "You don't have "
                                                  "permission to perform this action."])
    with pytest.raises(TicketError) as caught:
        await desk.note(ref, "Still failing.")
    assert caught.value.permanent
    assert "ERROR_RIGHT_MISSING" in caught.value.message
    assert glpi.logins == 1 and glpi.notes(int(ref)) == []


# --- find --------------------------------------------------------------------------------------


async def test_find_returns_the_newest_ticket_with_exactly_the_key(
    desk: Backend, glpi: FakeGlpi
) -> None:
    first = await desk.open(ticket())
    assert await desk.find(KEY) == first
    second = await desk.open(ticket())
    await desk.resolve(second, "Recovered.")
    assert await desk.find(KEY) == second  # open or not
    assert await desk.find("probe-eu-1/shop/") is None  # a LIKE would match both


async def test_find_does_not_take_a_key_searchtexts_wildcards_match(
    desk: Backend, glpi: FakeGlpi
) -> None:
    # searchText is a LIKE: "_" matches any character, so GLPI answers with other tickets too.
    other = await desk.open(ticket("probe-eu-1/shopXa/1"))
    assert await desk.find("probe-eu-1/shop_a/1") is None
    assert await desk.find("probe-eu-1/shopXa/1") == other


async def test_find_leaves_tickets_in_the_trash_alone(desk: Backend, glpi: FakeGlpi) -> None:
    ref = await desk.open(ticket())
    glpi.tickets[int(ref)]["is_deleted"] = 1
    assert await desk.find(KEY) is None
    assert await desk.status(ref) == "gone"


async def test_a_key_longer_than_externalid_is_stored_and_found_as_its_hash(
    desk: Backend, glpi: FakeGlpi
) -> None:
    key = "probe-eu-1/" + "a-very-long-service-name-" * 12 + "/1"
    ref = await desk.open(ticket(key))
    stored = glpi.tickets[int(ref)]["externalid"]
    assert stored == "probe-sha256:" + hashlib.sha256(key.encode()).hexdigest()
    assert await desk.find(key) == ref


async def test_open_tickets_lists_every_open_ticket_of_the_agent_so_a_duplicate_shows(
    desk: Backend, glpi: FakeGlpi
) -> None:
    twice, other, again = [await desk.open(ticket(key)) for key in (
        "probe-eu-1/shop/1", "probe-eu-1/db/2", "probe-eu-1/shop/1")]
    planned, pending = [await desk.open(ticket(f"probe-eu-1/dns/{n}")) for n in (3, 4)]
    glpi.set_status(int(planned), 3)
    glpi.set_status(int(pending), 4)
    glpi.assign(int(other))
    solved, closed, trashed = [await desk.open(ticket(f"probe-eu-1/old/{n}")) for n in range(3)]
    glpi.set_status(int(solved), 5)
    glpi.set_status(int(closed), 6)
    glpi.tickets[int(trashed)]["is_deleted"] = 1
    await desk.open(ticket("probe-eu-2/shop/1"))  # another agent's
    await desk.open(ticket("probe-euX1/shop/1"))  # "_" would match it in a LIKE
    assert await desk.open_tickets("probe-eu_1/") == []
    assert await desk.open_tickets("probe-eu-1/") == [
        ("probe-eu-1/shop/1", twice), ("probe-eu-1/db/2", other),
        ("probe-eu-1/shop/1", again), ("probe-eu-1/dns/3", planned),
        ("probe-eu-1/dns/4", pending)]


# --- GLPI 10.0: the key in the ticket's name (key_in: title) ----------------------------------


def named(key: str) -> str:
    return f"{ticket().title} [probe:{key}]"


@pytest.fixture
def glpi10(glpi: FakeGlpi, make: MakeBackend) -> Backend:
    """A key_in: title route to a GLPI 10.0, whose tickets have no externalid."""
    glpi.knows_externalid = False
    return make(key_in="title")


async def test_a_title_route_ends_the_tickets_name_with_the_key_and_sends_no_externalid(
    glpi10: Backend, glpi: FakeGlpi, make: MakeBackend
) -> None:
    ref = await glpi10.open(ticket())
    created = glpi.tickets[int(ref)]
    assert created["name"] == named(KEY)
    assert "externalid" not in created and created["urgency"] == 5
    assert await glpi10.find(KEY) == ref

    glpi.knows_externalid = True  # GLPI 11 keeps an externalid sent: none is
    eleven = await make(key_in="title").open(ticket("probe-eu-1/db/1"))
    assert glpi.tickets[int(eleven)]["externalid"] is None


async def test_a_long_title_gives_way_to_the_key_and_a_long_key_goes_as_its_hash(
    glpi10: Backend, glpi: FakeGlpi
) -> None:
    # GLPI 10.0 stores "<" as "&#60;": the title is cut to what fits once stored so.
    long_title = "[probe] shop DOWN: <html> " * 20
    ref = await glpi10.open(ticket(title=long_title))
    name = glpi.tickets[int(ref)]["name"]
    assert name.endswith("… [probe:probe-eu-1/shop/3]")
    assert len(name) + 4 * sum(name.count(c) for c in "<>&") <= 255
    assert long_title.startswith(name.removesuffix("… [probe:probe-eu-1/shop/3]"))

    key = "probe-eu-1/" + "a-very-long-service-name-" * 9 + "/1"
    ref = await glpi10.open(ticket(key))
    name = glpi.tickets[int(ref)]["name"]
    hashed = "probe-sha256:" + hashlib.sha256(key.encode()).hexdigest()
    assert name.endswith(f" [probe:{hashed}]") and len(name) <= 255
    assert len(name) - len(f" [probe:{hashed}]") >= 40  # the title keeps its room
    assert await glpi10.find(key) == ref


async def test_a_title_route_finds_only_the_exact_key_not_what_like_matches(
    glpi10: Backend, glpi: FakeGlpi
) -> None:
    key = "probe-eu-1/shop_a%/1"
    # What GLPI's LIKE '%[probe:probe-eu-1/shop_a%/1]' also answers: "_" and "%" are
    # wildcards, and case is ignored.
    for other in ("probe-eu-1/shopXaYZ/1", "PROBE-EU-1/shop_a%/1", "probe-eu-1/shopQa/9/1"):
        look_alike = glpi.tickets[int(await glpi10.open(ticket(other)))]
        assert like(f"[probe:{key}]$").fullmatch(look_alike["name"])
    trashed = await glpi10.open(ticket(key))
    glpi.tickets[int(trashed)]["is_deleted"] = 1
    assert await glpi10.find(key) is None

    ref = await glpi10.open(ticket(key))
    assert await glpi10.find(key) == ref
    assert await glpi10.find("probe-eu-1/shopXaYZ/1") != ref
    assert await glpi10.find("probe-eu-1/shop") is None  # the token is whole, at the end


async def test_a_title_route_open_that_times_out_is_found_by_the_retry_not_opened_twice(
    glpi: FakeGlpi, make: MakeBackend
) -> None:
    glpi.knows_externalid = False
    desk = make(key_in="title", timeout="500ms")
    glpi.fail("POST", "/Ticket$", stall=1.5)
    with pytest.raises(TicketError) as caught:
        await desk.open(ticket())
    assert not caught.value.permanent
    (created,) = glpi.tickets
    assert await desk.find(KEY) == str(created)  # so the dispatcher does not open a second one
    assert list(glpi.tickets) == [created]


async def test_a_name_glpi_did_not_keep_whole_is_a_permanent_error_that_says_so(
    glpi10: Backend, glpi: FakeGlpi
) -> None:
    # As a GLPI would answer that cut the name short: the token lost.
    glpi.fail("GET", r"/Ticket/\d+$", 200,
              body={"id": 101, "status": 1, "is_deleted": 0, "name": "[probe] shop DOWN [pro"})
    with pytest.raises(TicketError) as caught:
        await glpi10.open(ticket())
    assert caught.value.permanent
    assert caught.value.message == (
        "GLPI ticket 101 was created without the incident key at the end of its name (GLPI "
        "kept '[probe] shop DOWN [pro'), and probe could not find the ticket again")


async def test_a_title_route_lists_the_agents_open_tickets_from_their_names(
    glpi10: Backend, glpi: FakeGlpi
) -> None:
    twice, other, again = [await glpi10.open(ticket(key)) for key in (
        "probe-eu-1/shop/1", "probe-eu-1/db/2", "probe-eu-1/shop/1")]
    pending = await glpi10.open(ticket("probe-eu-1/dns/4"))
    glpi.set_status(int(pending), 4)
    glpi.assign(int(other))
    solved, trashed = [await glpi10.open(ticket(f"probe-eu-1/old/{n}")) for n in range(2)]
    glpi.set_status(int(solved), 5)
    glpi.tickets[int(trashed)]["is_deleted"] = 1
    await glpi10.open(ticket("probe-eu-2/shop/1"))  # another agent's
    await glpi10.open(ticket("probe-euX1/shop/1"))  # "_" would match it in a LIKE
    await glpi10.open(ticket("PROBE-EU-1/shop/1"))  # and LIKE ignores case
    assert await glpi10.open_tickets("probe-eu_1/") == []
    assert await glpi10.open_tickets("probe-eu-1/") == [
        ("probe-eu-1/shop/1", twice), ("probe-eu-1/db/2", other),
        ("probe-eu-1/shop/1", again), ("probe-eu-1/dns/4", pending)]


# --- notes, resolve, reopen --------------------------------------------------------------------


async def test_a_note_on_a_solved_ticket_is_refused_with_a_reason_and_adds_nothing(
    desk: Backend, glpi: FakeGlpi
) -> None:
    ref = await desk.open(ticket())
    glpi.set_status(int(ref), 5)
    with pytest.raises(TicketError) as caught:
        await desk.note(ref, "Still failing.")
    assert caught.value.permanent
    assert caught.value.message == (
        f"GLPI ticket {ref} is Solved (5): GLPI takes no followup on it until it is reopened")
    assert glpi.notes(int(ref)) == []


async def test_resolve_adds_the_solution_once(desk: Backend, glpi: FakeGlpi) -> None:
    ref = await desk.open(ticket())
    await desk.resolve(ref, "Recovered: shop-443 OK.\nDown for 12m.")
    assert glpi.tickets[int(ref)]["status"] == 5
    assert glpi.notes(int(ref)) == [("solution", "Recovered: shop-443 OK.\nDown for 12m.")]
    await desk.resolve(ref, "Recovered again.")  # GLPI would refuse a second solution
    assert glpi.notes(int(ref)) == [("solution", "Recovered: shop-443 OK.\nDown for 12m.")]


async def test_resolve_leaves_closed_and_deleted_tickets_alone(
    desk: Backend, glpi: FakeGlpi
) -> None:
    closed, deleted = [int(await desk.open(ticket(f"{KEY}/{n}"))) for n in range(2)]
    glpi.set_status(closed, 6)
    del glpi.tickets[deleted]
    for ref in (closed, deleted):
        await desk.resolve(str(ref), "Recovered.")
    assert glpi.tickets[closed]["status"] == 6 and glpi.notes(closed) == []
    assert not [m for m, p, _ in glpi.seen if m == "POST" and p.endswith("ITILSolution")]


async def test_a_solution_that_closes_at_once_reads_as_closed(
    desk: Backend, glpi: FakeGlpi
) -> None:
    glpi.close_on_solve = True  # an entity that closes solved tickets after 0 days
    ref = await desk.open(ticket())
    await desk.resolve(ref, "Recovered.")
    assert glpi.tickets[int(ref)]["status"] == 6
    assert await desk.status(ref) == "closed"


async def test_reopen_of_a_solved_ticket_sets_it_new_with_a_private_followup(
    desk: Backend, glpi: FakeGlpi
) -> None:
    ref = await desk.open(ticket())
    glpi.set_status(int(ref), 5)  # solved by a human while the outage goes on
    assert await desk.status(ref) == "closed"
    await desk.reopen(ref, "Reopened by probe: the outage goes on.")
    assert glpi.tickets[int(ref)]["status"] == 1
    assert glpi.notes(int(ref)) == [("private followup",
                                     "Reopened by probe: the outage goes on.")]
    assert await desk.status(ref) == "open"


async def test_reopen_of_a_solved_ticket_with_a_technician_is_processing_again(
    desk: Backend, glpi: FakeGlpi
) -> None:
    ref = await desk.open(ticket())
    glpi.assign(int(ref))
    glpi.set_status(int(ref), 5)
    await desk.reopen(ref, "Reopened by probe.")
    assert glpi.tickets[int(ref)]["status"] == 2
    assert await desk.status(ref) == "acknowledged"


async def test_reopen_of_a_closed_ticket_is_refused_with_the_setting_that_helps(
    desk: Backend, glpi: FakeGlpi
) -> None:
    ref = await desk.open(ticket())
    glpi.set_status(int(ref), 6)
    with pytest.raises(TicketError) as caught:
        await desk.reopen(ref, "Reopened by probe.")
    assert caught.value.permanent
    assert caught.value.message == (
        f"GLPI does not reopen ticket {ref}: it is Closed (6), and closed tickets stay closed. "
        "Set on_human_close: new to get a new ticket instead")
    assert glpi.tickets[int(ref)]["status"] == 6 and glpi.notes(int(ref)) == []


async def test_reopen_of_a_ticket_someone_reopened_already_only_adds_the_followup(
    desk: Backend, glpi: FakeGlpi
) -> None:
    ref = await desk.open(ticket())
    await desk.reopen(ref, "Reopened by probe.")
    assert glpi.tickets[int(ref)]["status"] == 1
    assert not [m for m, _, _ in glpi.seen if m == "PUT"]
    assert glpi.notes(int(ref)) == [("private followup", "Reopened by probe.")]


# --- status ------------------------------------------------------------------------------------


async def test_status_follows_glpis_statuses_and_technicians(
    desk: Backend, glpi: FakeGlpi
) -> None:
    ref = await desk.open(ticket())
    assert await desk.status(ref) == "open"
    for status, expected in ((2, "acknowledged"), (3, "acknowledged"), (4, "acknowledged"),
                             (5, "closed"), (6, "closed"), (1, "open")):
        glpi.set_status(int(ref), status)
        assert await desk.status(ref) == expected, status
    glpi.technicians[int(ref)] = [7]
    assert await desk.status(ref) == "acknowledged"
    del glpi.tickets[int(ref)]
    assert await desk.status(ref) == "gone"


def test_the_link_is_the_tickets_form_in_glpi() -> None:
    route = Route.model_validate({"backend": "glpi", "url": "https://glpi.example.com/",
                                  "user_token": "env:GLPI_TOKEN"})
    assert route.link("42") == "https://glpi.example.com/front/ticket.form.php?id=42"


# --- the daemon, end to end --------------------------------------------------------------------


def daemon_config(glpi: FakeGlpi, target: Target, secrets: dict[str, str], port: int,
                  state: Path, key_in: str = "externalid") -> str:
    return f"""
agent: {{name: t, state_dir: {state}, listen: "127.0.0.1:{port}"}}
defaults:
  interval: 200ms
  retry_interval: 100ms
  timeout: 100ms
  failure_threshold: 3
  success_threshold: 2
  ticket: {{route: glpi, priority: high, update_interval: 1s, escalate_after: 1s,
            on_human_close: reopen}}
ticketing:
  poll_interval: 200ms
  routes:
    glpi:
      backend: glpi
      url: {glpi.url}
      user_token_file: {secrets["user_token_file"]}
      app_token_file: {secrets["app_token_file"]}
      group_id: 3
      key_in: {key_in}
      escalate_to: oncall
      timeout: 1s
    oncall:
      backend: glpi
      url: {glpi.url}
      user_token_file: {secrets["user_token_file"]}
      app_token_file: {secrets["app_token_file"]}
      group_id: 4
      key_in: {key_in}
      timeout: 1s
checks:
  - name: web
    service: shop
    http: {{url: "http://127.0.0.1:{target.port}/health"}}
"""


@pytest.mark.parametrize("key_in", ["externalid", "title"])
async def test_probe_run_opens_escalates_reopens_and_resolves_one_glpi_ticket(
    glpi: FakeGlpi, target: Target, secrets: dict[str, str], tmp_path: Path, key_in: str
) -> None:
    glpi.knows_externalid = key_in == "externalid"  # title: as on GLPI 10.0, which has none
    port = free_port()
    config = tmp_path / "probe.yaml"
    config.write_text(daemon_config(glpi, target, secrets, port, tmp_path / "state", key_in))
    probe = ProbeProcess(config, port).start()
    try:
        await probe.wait("the daemon to start", lambda: "probe started" in probe.log_text())
        target.down = True

        def with_key(key: str) -> list[dict[str, Any]]:
            return [t for t in glpi.tickets.values() if t.get("externalid") == key
                    or (key_in == "title" and t["name"].endswith(f" [probe:{key}]"))]

        (first,) = await probe.wait("the ticket", lambda: with_key("t/shop/1"))
        ticket_id = first["id"]
        assert (first["urgency"], first["impact"], first["type"]) == (4, 3, 1)  # high
        assert "DOWN    HTTP 503 (expected 2xx)" in first["content"]
        await probe.wait("a status note", lambda: any(
            kind == "private followup" and text.startswith("Still failing")
            for kind, text in glpi.notes(ticket_id)))

        # In its group's hands (status 2), but no technician took it: escalated.
        (escalation,) = await probe.wait("the escalation",
                                         lambda: with_key("t/shop/1/escalation"))
        assert glpi.groups[escalation["id"]] == [4]
        await probe.wait("the escalation note", lambda: any(
            "escalated it to the oncall route" in text for _, text in glpi.notes(ticket_id)))

        glpi.set_status(ticket_id, 5)  # solved by a human while the outage goes on
        await probe.wait("the reopen", lambda: any(
            text.startswith("Reopened by probe") for _, text in glpi.notes(ticket_id)))
        assert first["status"] == 2  # new again, and in its group's hands

        target.down = False
        await probe.wait("the resolve", lambda: first["status"] == 5)
        kind, text = glpi.notes(ticket_id)[-1]
        assert kind == "solution" and text.startswith("Recovered: web (http ")
        assert len(with_key("t/shop/1")) == 1
        assert all(kind in ("private followup", "solution")
                   for kind, _ in glpi.notes(ticket_id))

        # Stopped as systemd stops it, while this loop still serves GLPI's answers.
        probe.signal(signal.SIGTERM)
        await until("the daemon to stop", lambda: probe.proc and probe.proc.poll() is not None)
        assert glpi.sessions == set()  # each route's session killed as the daemon stopped
        assert len(glpi.killed) == glpi.logins
    finally:
        probe.stop()


async def test_probe_test_ticket_proves_a_glpi_route(
    glpi: FakeGlpi, target: Target, secrets: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "probe.yaml"
    config.write_text(daemon_config(glpi, target, secrets, free_port(), tmp_path / "state"))
    test = await asyncio.create_subprocess_exec(
        *PROBE, "test-ticket", "--route", "glpi", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output = (await asyncio.wait_for(test.communicate(), 60))[0].decode()
    assert test.returncode == 0, output
    assert output.rstrip().endswith("route glpi (glpi): works")
    (made,) = glpi.tickets.values()
    assert made["externalid"].startswith("t/probe-test-ticket/")
    assert (made["urgency"], made["impact"], made["status"]) == (2, 2, 5)  # low, solved
    assert [kind for kind, _ in glpi.notes(made["id"])] == ["private followup", "solution"]
    assert glpi.sessions == set()
