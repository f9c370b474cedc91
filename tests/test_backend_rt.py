"""The rt backend against a real Request Tracker 5 on loopback (tests/harness/rtpeer.py), checked by
reading RT's REST2 directly."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from probe.helpdesks.base import Ticket, TicketError
from probe.helpdesks.rt import Backend
from tests.harness.rtpeer import RtApi, RtPeer

MakeBackend = Callable[..., Backend]


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
    return f"probe-eu-1/shop/{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def make_backend(rt_peer: RtPeer, tmp_path: Path) -> AsyncIterator[MakeBackend]:
    """Backends on routes to the test RT; settings override the route's (key_field=None...)."""
    made: list[Backend] = []

    def make(**settings: Any) -> Backend:
        made.append(Backend("helpdesk", rt_peer.route(tmp_path, **settings)))
        return made[-1]

    yield make
    for backend in made:
        await backend.close()


@pytest.fixture
def rt(make_backend: MakeBackend) -> Backend:
    return make_backend()


async def test_open_creates_a_ticket_in_the_queue_with_priority_text_and_key(
    rt: Backend, rt_api: RtApi
) -> None:
    key = new_key()
    ref = await rt.open(ticket(key))

    created = await rt_api.ticket(ref)
    queue = await rt_api.call("GET", f"/queue/{created['Queue']['id']}")
    assert queue["Name"] == "General"
    assert created["Subject"] == "shop is down"
    assert created["Priority"] == "99"
    assert created["Status"] == "new"
    assert [cf["values"] for cf in created["CustomFields"] if cf["name"] == "IncidentKey"] == [
        [key]
    ]
    assert await rt_api.transactions(ref) == [
        ("Create", "shop-443: connection refused\nsince 01:02 UTC")
    ]


async def test_each_priority_maps_to_the_routes_number(
    make_backend: MakeBackend, rt_api: RtApi
) -> None:
    rt = make_backend(priorities={"urgent": 90, "high": 70, "normal": 40, "low": 10})
    ref = await rt.open(ticket(new_key(), priority="low"))
    assert (await rt_api.ticket(ref))["Priority"] == "10"


async def test_find_returns_the_newest_ticket_with_the_key_even_when_resolved(
    rt: Backend, rt_api: RtApi
) -> None:
    key = new_key()
    first = await rt.open(ticket(key))
    assert await rt.find(key) == first
    second = await rt.open(ticket(key, title="shop is down again"))
    assert await rt.find(key) == second

    await rt.resolve(second, "shop is back")
    assert (await rt_api.ticket(second))["Status"] == "resolved"
    assert await rt.find(key) == second


async def test_find_quotes_keys_with_quotes_and_backslashes(rt: Backend) -> None:
    key = new_key() + "/O'Brien\\d"
    ref = await rt.open(ticket(key))
    assert await rt.find(key) == ref
    assert await rt.find(key.replace("\\", "")) is None


async def test_without_a_key_field_the_key_ends_the_subject_and_find_uses_it(
    make_backend: MakeBackend, rt_api: RtApi
) -> None:
    rt = make_backend(key_field=None)
    key = new_key() + "/it's 5X"
    ref = await rt.open(ticket(key))

    assert (await rt_api.ticket(ref))["Subject"] == f"shop is down [probe:{key}]"
    assert await rt.find(key) == ref
    # RT's LIKE takes _ and % as wildcards: only the exact key may match
    assert await rt.find(key.replace("X", "_")) is None
    assert await rt.find(key.replace("5X", "%")) is None


async def test_a_long_title_gives_way_to_the_key_within_rts_200_bytes(
    make_backend: MakeBackend, rt_api: RtApi
) -> None:
    rt = make_backend(key_field=None)
    key = new_key()
    ref = await rt.open(ticket(key, title="é" * 150))

    subject = (await rt_api.ticket(ref))["Subject"]
    assert subject.endswith(f"é [probe:{key}]")
    assert len(subject.encode()) <= 200
    assert await rt.find(key) == ref


async def test_a_ticket_that_follows_another_refers_to_it(rt: Backend, rt_api: RtApi) -> None:
    key = new_key()
    earlier = await rt.open(ticket(key))
    later = await rt.open(ticket(key, follows=earlier))
    assert await rt_api.links(later, "refers-to") == [earlier]


async def test_resolve_adds_the_closing_note_and_resolves_and_can_be_repeated(
    rt: Backend, rt_api: RtApi
) -> None:
    ref = await rt.open(ticket(new_key()))
    await rt.resolve(ref, "shop is back after 12m")

    assert (await rt_api.ticket(ref))["Status"] == "resolved"
    assert ("Comment", "shop is back after 12m") in await rt_api.transactions(ref)
    await rt.resolve(ref, "shop is back after 12m")
    assert (await rt_api.ticket(ref))["Status"] == "resolved"


async def test_resolve_leaves_a_ticket_someone_rejected_rejected(
    rt: Backend, rt_api: RtApi
) -> None:
    ref = await rt.open(ticket(new_key()))
    await rt_api.call("PUT", f"/ticket/{ref}", {"Status": "rejected"})
    await rt.resolve(ref, "shop is back")
    assert (await rt_api.ticket(ref))["Status"] == "rejected"
    assert await rt.status(ref) == "closed"


async def test_resolve_does_not_bring_back_a_deleted_ticket(rt: Backend, rt_api: RtApi) -> None:
    ref = await rt.open(ticket(new_key()))
    await rt_api.call("PUT", f"/ticket/{ref}", {"Status": "deleted"})
    await rt.resolve(ref, "shop is back")
    assert (await rt_api.ticket(ref))["Status"] == "deleted"


async def test_resolve_refused_by_rt_is_a_permanent_error_with_rts_reason(
    rt: Backend, rt_api: RtApi
) -> None:
    blocker = await rt_api.create(Subject="the database is down")
    ref = await rt.open(ticket(new_key()))
    await rt_api.call("PUT", f"/ticket/{ref}", {"DependsOn": blocker})

    with pytest.raises(TicketError) as caught:
        await rt.resolve(ref, "shop is back")
    assert caught.value.permanent
    assert "unresolved dependencies" in caught.value.message
    assert (await rt_api.ticket(ref))["Status"] == "new"


async def test_reopen_comments_and_opens_the_ticket(rt: Backend, rt_api: RtApi) -> None:
    ref = await rt.open(ticket(new_key()))
    await rt.resolve(ref, "shop is back")
    await rt.reopen(ref, "shop is down again: connection refused")

    assert (await rt_api.ticket(ref))["Status"] == "open"
    assert (await rt_api.transactions(ref))[-1] == (
        "Comment",
        "shop is down again: connection refused",
    )
    assert await rt.status(ref) == "open"


async def test_status_follows_the_ticket_from_new_to_owned_to_resolved(
    rt: Backend, rt_api: RtApi
) -> None:
    ref = await rt.open(ticket(new_key()))
    assert await rt.status(ref) == "open"

    await rt_api.call("PUT", f"/ticket/{ref}", {"Owner": "root"})
    assert await rt.status(ref) == "acknowledged"

    await rt.resolve(ref, "shop is back")
    assert await rt.status(ref) == "closed"


async def test_a_stalled_ticket_counts_as_acknowledged(rt: Backend, rt_api: RtApi) -> None:
    ref = await rt.open(ticket(new_key()))
    await rt_api.call("PUT", f"/ticket/{ref}", {"Status": "stalled"})
    assert await rt.status(ref) == "acknowledged"


async def test_status_of_a_deleted_or_unknown_ticket_is_gone(rt: Backend, rt_api: RtApi) -> None:
    ref = await rt.open(ticket(new_key()))
    await rt_api.call("PUT", f"/ticket/{ref}", {"Status": "deleted"})
    assert await rt.status(ref) == "gone"
    assert await rt.status("999999999") == "gone"


async def test_a_wrong_token_is_a_permanent_error(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("1-14-00000000000000000000000000000000\n", encoding="utf-8")
    rt = make_backend(token_file=str(wrong))
    with pytest.raises(TicketError) as caught:
        await rt.open(ticket(new_key()))
    assert caught.value.permanent
    assert "HTTP 401" in caught.value.message


async def test_a_token_in_the_environment_is_used(
    make_backend: MakeBackend, rt_peer: RtPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBE_TEST_RT_TOKEN", rt_peer.token)
    rt = make_backend(token_file=None, token="env:PROBE_TEST_RT_TOKEN")
    key = new_key()
    assert await rt.find(key) is None


async def test_an_unknown_queue_is_a_permanent_error_with_rts_message(
    make_backend: MakeBackend,
) -> None:
    rt = make_backend(key_field=None, queue="NoSuchQueue")
    with pytest.raises(TicketError) as caught:
        await rt.open(ticket(new_key()))
    assert caught.value.permanent
    assert "No permission to create tickets in the queue 'NoSuchQueue'" in caught.value.message


async def test_a_key_field_the_queue_lacks_stops_open_before_a_ticket_is_made(
    make_backend: MakeBackend,
) -> None:
    # RT would create the ticket and drop the key without a word: a duplicate after each crash
    rt = make_backend(key_field="NoSuchField")
    key = new_key()
    with pytest.raises(TicketError) as caught:
        await rt.open(ticket(key))
    assert caught.value.permanent
    assert "queue 'General' has no ticket custom field 'NoSuchField'" in caught.value.message
    assert "IncidentKey" in caught.value.message
    assert await make_backend(key_field=None).find(key) is None

    rt = make_backend(queue="NoSuchQueue")
    with pytest.raises(TicketError) as caught:
        await rt.open(ticket(key))
    assert caught.value.permanent
    assert "no queue 'NoSuchQueue'" in caught.value.message



@pytest.mark.parametrize("key_field", ["IncidentKey", None])
async def test_open_tickets_lists_every_open_ticket_of_a_key_so_a_duplicate_shows(
    make_backend: MakeBackend, key_field: str | None
) -> None:
    rt = make_backend(key_field=key_field)
    agent = f"probe-{uuid.uuid4().hex[:8]}/"
    twice, once, done = f"{agent}shop/1", f"{agent}db/1", f"{agent}web/1"
    first = await rt.open(ticket(twice))
    other = await rt.open(ticket(once))
    second = await rt.open(ticket(twice))  # the same ticket created again
    await rt.resolve(await rt.open(ticket(done)), "web is back")
    await rt.open(ticket(f"probe-{uuid.uuid4().hex[:8]}/shop/1"))  # another agent's

    assert await rt.open_tickets(agent) == [(twice, first), (once, other), (twice, second)]
