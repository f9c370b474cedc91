"""The ledger's contract: what every method of probe.tickets.ledger.Ledger does that its users
(the dispatcher, the watcher, the commands) can see, asked of each ledger alike — SqliteLedger in
a state database, PgLedger in a database of a real PostgreSQL (tests/harness/postgres.py). Then
PostgreSQL's own: migrations applied by several agents starting at once."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest

from probe.engine import Transition, TransitionKind
from probe.facts import Facts, Policy
from probe.store import Batch, Store
from probe.tickets.ledger import Followup, Ledger, LedgerError, SqliteLedger
from probe.tickets.pgledger import (
    MIGRATIONS,
    PgLedger,
    SchemaError,
    migrate_connection,
    open_pool,
)

Transitions = Iterable[tuple[Transition, str | None]]


@dataclass
class Subject:
    ledger: Ledger
    # The engine's transitions, written as the writer writes them (record_transitions)
    record: Callable[[Transitions], Awaitable[None]]
    lose: Callable[[], Awaitable[None]]  # the database goes away under the ledger


@pytest.fixture(params=["sqlite", "postgres"])
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    if request.param == "sqlite":
        store = Store(tmp_path)
        sqlite: Ledger = SqliteLedger(store)

        async def write(transitions: Transitions) -> None:
            await asyncio.to_thread(store.write, Batch(transitions=list(transitions)))

        async def lose() -> None:
            store.close()

        yield Subject(sqlite, write, lose)
        store.close()
    else:
        pool = await open_pool(request.getfixturevalue("pg_database"))
        pg = PgLedger(pool)
        ledger: Ledger = pg
        yield Subject(ledger, pg.record, pool.close)
        await pool.close()


def facts(group: str = "web", reason: str = "connection refused") -> Facts:
    return Facts(agent="dc1-a", group=group, service=None, why="3 consecutive failures",
                 reason=reason, previous_reason="", first_failure_at=1000.0, opened_at=1030.0,
                 down_for=30.0, failed_checks=3, unreachable=())


def approx(seconds: float) -> Any:
    """A time as the ledger gives it back: PostgreSQL's is the database's clock told in the
    agent's, a few microseconds off."""
    return pytest.approx(seconds, abs=1)


def transition(kind: TransitionKind, key: str, at: float = 1030.0, group: str = "web",
               reason: str = "connection refused") -> Transition:
    return Transition(kind, group, key, at, facts(group, reason))


async def opened(subject: Subject, key: str, route: str = "desk", *, ticket: str | None = None,
                 ref: str = "T-1", policy: Policy | None = None) -> None:
    """An incident opened, and its open delivered as ticket `ref`."""
    await subject.record([(transition("open", key, group=key.split("#")[0]), route)])
    ledger = subject.ledger
    head = next(h for h in (await ledger.heads()).rows if h.incident_key == key)
    await ledger.opened(head.id, ticket or key, key, route, ref, policy)


class Unprintable:
    """A value that cannot be written as JSON, not even as its str(): what makes the second
    statement of a two-statement call fail after the first succeeded."""

    def __str__(self) -> str:
        raise ValueError("cannot be written")


def unwritable_facts() -> Facts:
    return facts(reason=cast(str, Unprintable()))


# --- a database that refuses ------------------------------------------------------------------


async def test_a_database_gone_is_a_ledger_error_for_the_dispatcher_to_wait_out(
    subject: Subject,
) -> None:
    # The dispatcher pauses delivery on a LedgerError (a delivery it cannot record would be
    # made twice) and takes anything else for a bug: each ledger says which is which.
    await opened(subject, "web#1")
    await subject.lose()
    with pytest.raises(LedgerError):
        await subject.ledger.heads()
    with pytest.raises(LedgerError):
        await subject.ledger.enqueue("web#1", "reopen", "desk", facts())


# --- delivery --------------------------------------------------------------------------------


async def test_heads_are_the_oldest_pending_action_of_each_incident(subject: Subject) -> None:
    ledger = subject.ledger
    assert await ledger.heads() == type(await ledger.heads())([], 0)
    await subject.record([(transition("open", "web#1", at=1030.0), "desk")])
    await subject.record([(transition("open", "db#1", at=1040.0, group="db"), "pager")])
    await subject.record([(transition("still-open", "web#1", at=1090.0), None)])
    heads = await ledger.heads()
    assert heads.pending == 3
    by_key = {h.incident_key: h for h in heads.rows}
    assert set(by_key) == {"web#1", "db#1"}
    assert (by_key["web#1"].route, by_key["db#1"].route) == ("desk", "pager")
    assert by_key["web#1"].next_attempt_at <= time.time() + 1  # due at once
    first = by_key["web#1"].id

    await ledger.delivered(first)
    heads = await ledger.heads()
    assert heads.pending == 2
    second = next(h for h in heads.rows if h.incident_key == "web#1")
    assert second.id > first
    assert second.next_attempt_at <= time.time() + 1
    row = await ledger.load(second.id)
    assert row is not None and row.action == "still-open"


async def test_notes_and_the_resolve_go_where_the_open_went(subject: Subject) -> None:
    ledger = subject.ledger
    await subject.record([(transition("open", "web#1"), "desk"),
                          (transition("still-open", "web#1", at=1100.0), "elsewhere"),
                          (transition("resolve", "web#1", at=1200.0), None)])
    rows = []
    while (heads := await ledger.heads()).rows:
        row = await ledger.load(heads.rows[0].id)
        assert row is not None
        rows.append((row.action, row.route, row.created_at))
        await ledger.delivered(row.id)
    assert [(a, r) for a, r, _ in rows] == [("open", "desk"), ("still-open", "desk"),
                                            ("resolve", "desk")]
    assert [at for _, _, at in rows] == pytest.approx([1030.0, 1100.0, 1200.0])


async def test_an_incident_without_a_ticket_queues_nothing(subject: Subject) -> None:
    await subject.record([(transition("open", "web#1"), None),
                          (transition("still-open", "web#1"), "desk"),
                          (transition("resolve", "web#1"), "desk")])
    assert (await subject.ledger.heads()).pending == 0
    assert await subject.ledger.backlog() == type(await subject.ledger.backlog())(0, None, 0)


async def test_load_reads_a_pending_action_whole(subject: Subject) -> None:
    ledger = subject.ledger
    await subject.record([(transition("open", "web#1", reason="HTTP 503"), "desk")])
    (head,) = (await ledger.heads()).rows
    row = await ledger.load(head.id)
    assert row is not None
    assert (row.id, row.incident_key, row.action, row.route) == (head.id, "web#1", "open", "desk")
    assert (row.attempts, row.unknown_outcome) == (0, False)
    assert row.created_at == pytest.approx(1030.0)
    assert row.facts == facts(reason="HTTP 503")
    assert row.followup == Followup()

    await ledger.delivered(head.id)
    assert await ledger.load(head.id) is None
    assert await ledger.load(head.id + 1000) is None


async def test_an_attempt_is_counted_and_its_outcome_unknown_until_refused(
        subject: Subject) -> None:
    ledger = subject.ledger
    await subject.record([(transition("open", "web#1"), "desk")])
    (head,) = (await ledger.heads()).rows
    await ledger.count_attempt(head.id, deadline=2000.0)
    row = await ledger.load(head.id)
    assert row is not None and (row.attempts, row.unknown_outcome) == (1, True)
    await ledger.refused(head.id)
    row = await ledger.load(head.id)
    assert row is not None and (row.attempts, row.unknown_outcome) == (1, False)


async def test_a_create_of_unknown_outcome_holds_the_next_attempt_until_its_deadline(
        subject: Subject) -> None:
    # The restarted probe's (or this one's, after a timeout) next attempt asks find(): not
    # before the helpdesk may have finished making the ticket, whatever the backoff says.
    ledger = subject.ledger
    await subject.record([(transition("open", "web#1"), "desk")])
    (head,) = (await ledger.heads()).rows
    await ledger.count_attempt(head.id, deadline=5000.0)
    assert [h.next_attempt_at for h in (await ledger.heads()).rows] == [approx(5000.0)]
    await ledger.postpone(head.id, counted=0, until=2000.0, error="HTTP 502")  # a short backoff
    assert [h.next_attempt_at for h in (await ledger.heads()).rows] == [approx(5000.0)]
    await ledger.postpone(head.id, counted=0, until=6000.0, error="HTTP 502")  # a long one
    assert [h.next_attempt_at for h in (await ledger.heads()).rows] == [approx(6000.0)]
    await ledger.count_attempt(head.id, deadline=7000.0)
    await ledger.refused(head.id)  # nothing made: nothing to wait for
    await ledger.postpone(head.id, counted=0, until=2000.0, error="HTTP 503")
    assert [h.next_attempt_at for h in (await ledger.heads()).rows] == [approx(2000.0)]


async def test_postpone_counts_attempts_and_moves_the_next_one(subject: Subject) -> None:
    ledger = subject.ledger
    await subject.record([(transition("open", "web#1"), "desk")])
    (head,) = (await ledger.heads()).rows
    await ledger.postpone(head.id, counted=2, until=5000.5, error="HTTP 502")
    (head,) = (await ledger.heads()).rows
    assert head.next_attempt_at == pytest.approx(5000.5, abs=1)
    row = await ledger.load(head.id)
    assert row is not None and row.attempts == 2
    assert (await ledger.backlog()).most_attempts == 2


async def test_give_up_fails_an_action_for_good_and_retry_sends_it_again(
        subject: Subject) -> None:
    ledger = subject.ledger
    await subject.record([(transition("open", "web#1"), "desk"),
                          (transition("open", "db#1", group="db"), "desk")])
    heads = {h.incident_key: h for h in (await ledger.heads()).rows}
    await ledger.give_up(heads["web#1"].id, counted=1, error="HTTP 401: bad token")
    assert await ledger.load(heads["web#1"].id) is None
    assert await ledger.failed_open("web#1") == "HTTP 401: bad token"
    assert await ledger.failed_open("db#1") is None
    (failed,) = await ledger.failed()
    assert (failed.id, failed.incident_key, failed.action, failed.route, failed.attempts,
            failed.error) == (heads["web#1"].id, "web#1", "open", "desk", 1,
                              "HTTP 401: bad token")
    assert not await ledger.pending("web#1")
    assert (await ledger.heads()).pending == 1

    assert await ledger.retry_failed() == 1
    assert await ledger.failed() == []
    assert await ledger.retry_failed() == 0
    head = next(h for h in (await ledger.heads()).rows if h.incident_key == "web#1")
    assert head.next_attempt_at <= time.time()  # due at once
    row = await ledger.load(head.id)
    assert row is not None and row.attempts == 1


async def test_failed_lists_oldest_or_newest_first_up_to_a_limit(subject: Subject) -> None:
    ledger = subject.ledger
    keys = [f"web#{n}" for n in range(1, 5)]
    for n, key in enumerate(keys):
        await subject.record([(transition("open", key, group=f"web{n}"), "desk")])
        head = next(h for h in (await ledger.heads()).rows if h.incident_key == key)
        await ledger.give_up(head.id, counted=0, error=f"error of {key}")
    assert [f.incident_key for f in await ledger.failed()] == keys
    assert [f.incident_key for f in await ledger.failed(newest_first=True)] == keys[::-1]
    assert [f.incident_key for f in await ledger.failed(limit=2)] == keys[:2]
    assert [f.incident_key for f in await ledger.failed(newest_first=True, limit=1)] == keys[3:]


async def test_backlog_counts_pending_actions_their_age_and_attempts(subject: Subject) -> None:
    ledger = subject.ledger
    await subject.record([(transition("open", "web#1", at=1030.0), "desk"),
                          (transition("open", "db#1", at=1010.0, group="db"), "desk"),
                          (transition("open", "dns#1", at=1000.0, group="dns"), "desk")])
    heads = {h.incident_key: h for h in (await ledger.heads()).rows}
    await ledger.postpone(heads["web#1"].id, counted=3, until=9e9, error="HTTP 503")
    await ledger.delivered(heads["dns#1"].id)
    backlog = await ledger.backlog()
    assert (backlog.count, backlog.most_attempts) == (2, 3)
    assert backlog.oldest_at == pytest.approx(1010.0)


async def test_enqueue_adds_the_watchers_followup_to_the_facts(subject: Subject) -> None:
    ledger = subject.ledger
    before = time.time()
    await ledger.enqueue("web#1", "reopen", "desk", facts(), Followup(ticket_key="web#1"))
    (head,) = (await ledger.heads()).rows
    row = await ledger.load(head.id)
    assert row is not None
    assert (row.action, row.route, row.facts) == ("reopen", "desk", facts())
    assert row.followup == Followup(ticket_key="web#1")
    assert before - 1 <= row.created_at <= time.time() + 1
    assert head.next_attempt_at <= time.time() + 1  # due at once


async def test_pending_with_and_without_kinds_of_action(subject: Subject) -> None:
    ledger = subject.ledger
    assert not await ledger.pending("web#1")
    await subject.record([(transition("open", "web#1"), "desk")])
    assert await ledger.pending("web#1")
    assert await ledger.pending("web#1", ["open", "reopen"])
    assert not await ledger.pending("web#1", ["reopen", "new-ticket"])
    assert not await ledger.pending("web#1", [])
    assert not await ledger.pending("db#1")
    (head,) = (await ledger.heads()).rows
    await ledger.delivered(head.id)
    assert not await ledger.pending("web#1")
    assert not await ledger.pending("web#1", ["open"])


# --- tickets ---------------------------------------------------------------------------------


async def test_opened_records_the_ticket_and_delivers_its_action_together(
        subject: Subject) -> None:
    ledger = subject.ledger
    assert await ledger.ticket_ref("web#1") is None
    await opened(subject, "web#1", ref="T-7")
    assert await ledger.ticket_ref("web#1") == "T-7"
    assert not await ledger.pending("web#1")
    assert [(t.ticket_key, t.route, t.ref) for t in await ledger.open_tickets("web#1")] == [
        ("web#1", "desk", "T-7")]
    assert await ledger.open_tickets("db#1") == []


async def test_a_second_opened_keeps_the_first_ticket(subject: Subject) -> None:
    ledger = subject.ledger
    await opened(subject, "web#1", ref="T-7")
    await ledger.enqueue("web#1", "new-ticket", "desk", facts(), Followup(ticket_key="web#1"))
    (head,) = (await ledger.heads()).rows
    await ledger.opened(head.id, "web#1", "web#1", "desk", "T-8", None)
    assert await ledger.ticket_ref("web#1") == "T-7"
    assert not await ledger.pending("web#1")


async def test_set_state_takes_a_ticket_out_of_the_open_ones(subject: Subject) -> None:
    ledger = subject.ledger
    await opened(subject, "web#1")
    await ledger.set_state("web#1", "resolved")
    assert await ledger.open_tickets("web#1") == []
    assert await ledger.ticket_ref("web#1") == "T-1"  # still known
    await ledger.set_state("web#1", "open")
    assert len(await ledger.open_tickets("web#1")) == 1


async def test_knows_a_ticket_by_its_key_or_its_ref(subject: Subject) -> None:
    ledger = subject.ledger
    await opened(subject, "web#1", ref="T-7")
    assert await ledger.knows("web#1", "T-999")
    assert await ledger.knows("other", "T-7")
    assert not await ledger.knows("other", "T-999")


async def test_adopt_takes_up_a_lost_ticket_whole(subject: Subject) -> None:
    ledger = subject.ledger
    await subject.record([(transition("open", "web#1"), "desk")])
    await ledger.adopt("web#1", "web#1", "desk", "T-3")
    assert await ledger.ticket_ref("web#1") == "T-3"
    assert [t.ref for t in await ledger.open_tickets("web#1")] == ["T-3"]
    (watched,) = await ledger.watched()
    assert (watched.ref, watched.escalated_at, watched.policy) == ("T-3", None, Policy())

    # Taken up again (a new ref, after it was left and escalated): the ticket as adopted now
    await ledger.escalate("web#1", "web#1", "desk", facts(), Followup(escalate_to="boss"))
    await ledger.set_state("web#1", "left")
    await ledger.adopt("web#1", "web#1", "desk", "T-4")
    (watched,) = await ledger.watched()
    assert (watched.ref, watched.escalated_at) == ("T-4", None)


async def test_watched_is_the_open_tickets_of_incidents_still_going_on(
        subject: Subject) -> None:
    ledger = subject.ledger
    policy = Policy(priority="high", escalate_after=600.0)
    await opened(subject, "web#1", ref="T-1", policy=policy)
    await opened(subject, "db#1", ref="T-2")
    await opened(subject, "dns#1", ref="T-3")
    await ledger.adopt("lost#1", "lost#1", "desk", "T-4")  # no incident: not watched
    await ledger.set_state("db#1", "left")  # a human closed it for good
    await subject.record([(transition("resolve", "dns#1", at=2000.0), None)])

    (watched,) = await ledger.watched()
    assert (watched.ticket_key, watched.incident_key, watched.route, watched.ref) == (
        "web#1", "web#1", "desk", "T-1")
    assert watched.policy == policy
    assert watched.facts == facts().with_ticket(policy)
    assert watched.escalated_at is None
    assert abs(watched.opened_at - time.time()) < 60


async def test_escalate_marks_the_ticket_and_queues_the_escalation(subject: Subject) -> None:
    ledger = subject.ledger
    await opened(subject, "web#1")
    followup = Followup(escalate_to="boss", ref="T-1", after=600.0)
    await ledger.escalate("web#1", "web#1", "desk", facts(), followup)
    (watched,) = await ledger.watched()
    assert watched.escalated_at is not None and abs(watched.escalated_at - time.time()) < 60
    assert await ledger.pending("web#1", ["escalate"])
    (head,) = (await ledger.heads()).rows
    row = await ledger.load(head.id)
    assert row is not None and (row.action, row.followup) == ("escalate", followup)


async def test_escalate_is_all_or_nothing(subject: Subject) -> None:
    ledger = subject.ledger
    await opened(subject, "web#1")
    with pytest.raises(ValueError, match="cannot be written"):
        await ledger.escalate("web#1", "web#1", "desk", unwritable_facts(),
                              Followup(escalate_to="boss"))
    (watched,) = await ledger.watched()
    assert watched.escalated_at is None
    assert not await ledger.pending("web#1")


async def test_replace_leaves_the_ticket_and_queues_one_that_follows_it(
        subject: Subject) -> None:
    ledger = subject.ledger
    await opened(subject, "web#1", ref="T-1")
    await ledger.replace("web#1", "web#1", "desk", "T-1", facts())
    assert await ledger.open_tickets("web#1") == []
    assert await ledger.watched() == []
    (head,) = (await ledger.heads()).rows
    row = await ledger.load(head.id)
    assert row is not None
    assert (row.action, row.route) == ("new-ticket", "desk")
    assert row.followup == Followup(ticket_key="web#1+1", follows="T-1")

    # The new one opens; when it too is closed for good, the next follows it
    await ledger.opened(row.id, "web#1+1", "web#1", "desk", "T-2", None)
    await ledger.replace("web#1+1", "web#1", "desk", "T-2", facts())
    (head,) = (await ledger.heads()).rows
    row = await ledger.load(head.id)
    assert row is not None and row.followup == Followup(ticket_key="web#1+2", follows="T-2")


async def test_replace_is_all_or_nothing(subject: Subject) -> None:
    ledger = subject.ledger
    await opened(subject, "web#1", ref="T-1")
    with pytest.raises(ValueError, match="cannot be written"):
        await ledger.replace("web#1", "web#1", "desk", "T-1", unwritable_facts())
    assert [t.ref for t in await ledger.open_tickets("web#1")] == ["T-1"]
    assert not await ledger.pending("web#1")


async def test_a_decision_is_written_whole_or_not_at_all(subject: Subject) -> None:
    ledger = subject.ledger
    bad = Transition("open", "db", "db#1", 1030.0, unwritable_facts())
    with pytest.raises(ValueError, match="cannot be written"):
        await subject.record([(transition("open", "web#1"), "desk"), (bad, "desk")])
    assert (await ledger.heads()).pending == 0
    await ledger.adopt("web#1", "web#1", "desk", "T-1")
    assert await ledger.watched() == []  # no incident web#1 either


async def test_a_hostile_reason_is_kept_as_it_came(subject: Subject) -> None:
    """NUL and what JSON cannot say strictly (NaN) come from targets' answers: written and read
    back, never a failed decision."""
    ledger = subject.ledger
    reason = "bad\x00byte \ud800 ☃"
    hostile = Transition("open", "web", "web#1", 1030.0,
                         dataclasses.replace(facts(reason=reason), down_for=float("nan")))
    await subject.record([(hostile, "desk")])
    (head,) = (await ledger.heads()).rows
    row = await ledger.load(head.id)
    assert row is not None and row.facts.reason == reason


# --- PostgreSQL: the schema ----------------------------------------------------------------


async def tables(dsn: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        rows = await (await conn.execute(
            "SELECT tablename, 1 FROM pg_tables WHERE schemaname = 'public'")).fetchall()
        version = await (await conn.execute("SELECT version FROM schema_version")).fetchall()
    return {**dict(rows), "version": version[0][0] if len(version) == 1 else -len(version)}


async def test_agents_starting_together_migrate_the_schema_once(pg_database: str) -> None:
    """One agent is half-way through the migrations; three more start: they wait for it, then
    find the schema up to date (applying a migration twice would fail: its tables exist)."""
    async def connect() -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(pg_database, autocommit=True)

    first, *others = [await connect() for _ in range(4)]
    try:
        async with first.transaction():
            assert await migrate_connection(first) == len(MIGRATIONS)
            waiting = [asyncio.create_task(migrate_connection(c)) for c in others]
            await asyncio.sleep(0.5)
            assert not any(task.done() for task in waiting)
        assert await asyncio.gather(*waiting) == [len(MIGRATIONS)] * 3
    finally:
        for conn in (first, *others):
            await conn.close()
    assert await tables(pg_database) == {"schema_version": 1, "incidents": 1, "outbox": 1,
                                         "tickets": 1, "agents": 1, "check_state": 1,
                                         "group_state": 1, "results": 1, "maintenance": 1,
                                         "claims": 1, "votes": 1, "sites": 1,
                                         "history_checks": 1, "history_minutes": 1,
                                         "history_hours": 1, "history_days": 1,
                                         "history_rolled": 1, "downtime": 1,
                                         "version": len(MIGRATIONS)}


async def test_agents_upgrading_together_apply_the_next_migration_once(
        pg_database: str) -> None:
    """A release adds a migration; four agents of it start at once on the database the last
    one left: the first applies it, the others wait, then find it applied."""
    upgrade = [*MIGRATIONS, "ALTER TABLE outbox ADD COLUMN fence bigint NOT NULL DEFAULT 0"]
    conns = [await psycopg.AsyncConnection.connect(pg_database, autocommit=True)
             for _ in range(4)]
    first, *others = conns
    try:
        await migrate_connection(first)
        async with first.transaction():
            assert await migrate_connection(first, upgrade) == len(upgrade)
            waiting = [asyncio.create_task(migrate_connection(c, upgrade)) for c in others]
            await asyncio.sleep(0.5)
            assert not any(task.done() for task in waiting)
        assert await asyncio.gather(*waiting) == [len(upgrade)] * 3
        found = await (await first.execute("SELECT count(*) FROM information_schema.columns"
                                           " WHERE table_name = 'outbox'"
                                           " AND column_name = 'fence'")).fetchone()
        assert found == (1,)
    finally:
        for conn in conns:
            await conn.close()
    assert (await tables(pg_database))["version"] == len(upgrade)


AGENT = """
import asyncio, sys
from probe.tickets.pgledger import open_pool
async def main():
    pool = await open_pool(sys.argv[1])
    await pool.close()
asyncio.run(main())
"""


def test_processes_starting_together_on_a_new_database_both_succeed(pg_database: str) -> None:
    agents = [subprocess.Popen([sys.executable, "-c", AGENT, pg_database],
                               stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for agent in agents:
        _, err = agent.communicate(timeout=60)
        assert agent.returncode == 0, err
    assert asyncio.run(tables(pg_database))["version"] == len(MIGRATIONS)


async def test_a_schema_newer_than_this_probe_is_refused(pg_database: str) -> None:
    pool = await open_pool(pg_database)
    await pool.close()
    async with await psycopg.AsyncConnection.connect(pg_database, autocommit=True) as conn:
        await conn.execute("UPDATE schema_version SET version = version + 1")
    newer = len(MIGRATIONS) + 1
    with pytest.raises(SchemaError, match=f"schema version {newer}, newer than this probe knows"):
        await open_pool(pg_database)
