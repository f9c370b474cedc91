"""Claims on incident groups (probe.cluster.claims) and the fence on every write
(probe.cluster.pgstate, probe.tickets.pgledger), on a real PostgreSQL: who may take a group,
what taking it reads, and that a write under a term that has passed is refused and changes
nothing. Time is moved by rewriting `heartbeat_at` with the database's own now()."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from checks.base import Result
from probe.cluster.claims import Claims
from probe.cluster.members import Members
from probe.cluster.pgstate import PgState
from probe.engine import Transition
from probe.facts import Facts
from probe.store import Batch
from probe.tickets.ledger import FenceRejected
from probe.tickets.pgledger import PgLedger, Pool, Terms, open_pool

TTL = 5.0
MEMBERS = {"web": ["web"], "db": ["db"]}


@pytest.fixture
async def pool(pg_database: str) -> AsyncIterator[Pool]:
    opened = await open_pool(pg_database)
    members = Members(opened, agent_ttl=TTL)
    for agent in ("dc1-a", "dc1-b"):
        await members.join(agent, "dc1", f"{agent}.example", "1.0", "h1")
    yield opened
    await opened.close()


def claims(pool: Pool, agent: str) -> Claims:
    return Claims(pool, Terms(agent, live=True), TTL)


async def silent(pool: Pool, agent: str) -> None:
    """The agent last heard from longer ago than agent_ttl: it has left."""
    async with pool.connection() as conn:
        await conn.execute("UPDATE agents SET heartbeat_at = now() - make_interval(secs => %s)"
                           " WHERE name = %s", (TTL + 1, agent))


def facts() -> Facts:
    return Facts(agent="dc1-a", group="web", service=None, why="3 consecutive failures",
                 reason="connection refused", previous_reason="", first_failure_at=1000.0,
                 opened_at=1030.0, down_for=30.0, failed_checks=3, unreachable=())


def batch(state: str, *, opens: str | None = None) -> Batch:
    """The web group's state (and web's), with an open of incident `opens` if given."""
    out = Batch(checks={"web": {"failures": 3, "note": state}},
                groups={"web": {"seq": 1, "incident": None, "note": state}})
    if opens is not None:
        out.transitions.append((Transition("open", "web", opens, 1030.0, facts()), "desk"))
    return out


def state(pool: Pool, claims_: Claims) -> PgState:
    return PgState(pool, terms=claims_.terms, group_of=lambda name: name)


async def stored_note(pool: Pool) -> str | None:
    async with pool.connection() as conn:
        found = await (await conn.execute(
            "SELECT data FROM group_state WHERE name = 'web'")).fetchone()
    return json.loads(found[0])["note"] if found else None


async def test_a_free_group_is_taken_with_the_state_its_last_owner_wrote(pool: Pool) -> None:
    await PgState(pool).write(batch("left by the last owner"))
    a = claims(pool, "dc1-a")
    taken = await a.take(["web", "db"], MEMBERS)
    assert taken.groups == {"web", "db"}
    assert a.terms.held == {"web": 1, "db": 1}
    assert taken.group_states["web"]["note"] == "left by the last owner"
    assert taken.checks["web"]["failures"] == 3  # the streak goes on where it was
    assert "db" not in taken.group_states  # none written yet: starts afresh


async def test_a_group_held_by_a_live_agent_is_not_taken_until_it_has_left(pool: Pool) -> None:
    a, b = claims(pool, "dc1-a"), claims(pool, "dc1-b")
    await a.take(["web"], MEMBERS)
    assert (await b.take(["web"], MEMBERS)).groups == set()
    assert b.terms.held == {}
    await silent(pool, "dc1-a")
    assert (await b.take(["web"], MEMBERS)).groups == {"web"}
    assert b.terms.held == {"web": 2}  # a new term: the next fence


async def test_a_released_group_is_taken_at_once_though_its_last_owner_lives(
        pool: Pool) -> None:
    a, b = claims(pool, "dc1-a"), claims(pool, "dc1-b")
    await a.take(["web"], MEMBERS)
    await a.release(["web"])
    assert a.terms.held == {}
    assert (await b.take(["web"], MEMBERS)).groups == {"web"}


async def test_a_write_under_a_passed_term_is_refused_and_writes_nothing(pool: Pool) -> None:
    a, b = claims(pool, "dc1-a"), claims(pool, "dc1-b")
    await a.take(["web"], MEMBERS)
    await state(pool, a).write(batch("a's"))
    await silent(pool, "dc1-a")  # frozen past its lease
    await b.take(["web"], MEMBERS)
    await state(pool, b).write(batch("b's", opens="dc1/web/1"))
    # a wakes up believing it still holds web: its decision must not land.
    with pytest.raises(FenceRejected) as refused:
        await state(pool, a).write(batch("a's, late", opens="dc1/web/2"))
    assert refused.value.groups == {"web"}
    assert await stored_note(pool) == "b's"
    async with pool.connection() as conn:
        keys = await (await conn.execute("SELECT key FROM incidents")).fetchall()
    assert keys == [("dc1/web/1",)]


async def test_results_alone_are_history_and_need_no_claim(pool: Pool) -> None:
    a = claims(pool, "dc1-a")  # holds nothing
    result = Result(kind="http", target="http://web/", state="up", duration=0.01,
                    started_at=1000.0)
    await state(pool, a).write(Batch(results=[("web", result)]))
    assert [r["state"] for r in await PgState(pool).recent_results("web")] == ["up"]


async def test_a_restarted_agent_takes_its_groups_again_under_a_new_fence(pool: Pool) -> None:
    before = claims(pool, "dc1-a")
    await before.take(["web"], MEMBERS)
    await state(pool, before).write(batch("a's", opens="dc1/web/1"))
    (head,) = (await PgLedger(pool, before.terms).heads()).rows
    after = claims(pool, "dc1-a")  # the same name, a new process: it knows no fence
    assert (await after.take(["web"], MEMBERS)).groups == {"web"}
    assert after.terms.held == {"web": 2}
    # Whatever the old process still had in flight (a frozen one thawed) is refused.
    with pytest.raises(FenceRejected):
        await state(pool, before).write(batch("the old process's"))
    with pytest.raises(FenceRejected):
        await PgLedger(pool, before.terms).count_attempt(head.id, deadline=2000.0)
    await PgLedger(pool, after.terms).count_attempt(head.id, deadline=2000.0)


async def test_only_the_holder_delivers_and_a_late_delivery_record_is_refused(
        pool: Pool) -> None:
    a, b = claims(pool, "dc1-a"), claims(pool, "dc1-b")
    await a.take(["web"], MEMBERS)
    await state(pool, a).write(batch("a's", opens="dc1/web/1"))
    ledger_a, ledger_b = PgLedger(pool, a.terms), PgLedger(pool, b.terms)
    (head,) = (await ledger_a.heads()).rows
    assert (await ledger_b.heads()).rows == []  # not b's to deliver
    await ledger_a.count_attempt(head.id, deadline=2000.0)
    await silent(pool, "dc1-a")
    await b.take(["web"], MEMBERS)
    # a's helpdesk call returns after b took over: its record of it is refused...
    with pytest.raises(FenceRejected):
        await ledger_a.opened(head.id, "dc1/web/1", "dc1/web/1", "desk", "T-1", None)
    # ...and b, which delivers now, sees the create of unknown outcome, to look for first.
    (head_b,) = (await ledger_b.heads()).rows
    row = await ledger_b.load(head_b.id)
    assert row is not None and row.unknown_outcome
    await ledger_b.opened(head_b.id, "dc1/web/1", "dc1/web/1", "desk", "T-1", None)
    assert await ledger_b.ticket_ref("dc1/web/1") == "T-1"


async def test_an_agent_that_cannot_tell_it_is_a_member_delivers_nothing(pool: Pool) -> None:
    a = claims(pool, "dc1-a")
    await a.take(["web"], MEMBERS)
    await state(pool, a).write(batch("a's", opens="dc1/web/1"))
    a.terms.live = False  # its heartbeats failed for agent_ttl
    assert (await PgLedger(pool, a.terms).heads()).rows == []


async def test_a_group_being_handed_over_starts_no_new_delivery(pool: Pool) -> None:
    a = claims(pool, "dc1-a")
    await a.take(["web"], MEMBERS)
    await state(pool, a).write(batch("a's", opens="dc1/web/1"))
    ledger = PgLedger(pool, a.terms)
    assert len((await ledger.heads()).rows) == 1
    a.terms.leaving.add("web")  # its deliveries in flight end; none starts
    assert (await ledger.heads()).rows == []
    await a.release(["web"])
    assert a.terms.leaving == set() and a.terms.held == {}


async def test_a_claim_the_database_gives_back_to_an_agent_that_gave_it_up_is_released(
        pool: Pool) -> None:
    """The database lost its last commits (a crash with asynchronous commit, a failover to a
    replica behind): a group this agent gave up is under its name again. While it lives no
    other agent could take it: it releases what it does not hold."""
    a, b = claims(pool, "dc1-a"), claims(pool, "dc1-b")
    await a.take(["web", "db"], MEMBERS)
    a.terms.held.pop("db")  # what the lost commit had released
    assert (await b.take(["db"], MEMBERS)).groups == set()
    assert await a.strays() == 1
    assert a.terms.held == {"web": 1}
    assert (await b.take(["db"], MEMBERS)).groups == {"db"}
