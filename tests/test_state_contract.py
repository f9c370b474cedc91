"""The state's contract: what every call of probe.state.State does that the daemon can see, asked
of each state alike — SqliteState over a Store in a state directory, PgState in a database of a
real PostgreSQL (tests/harness/postgres.py): states written and loaded, the ring of results,
maintenance windows, a batch written whole or not at all with its transitions, and a database
that refuses (a StoreError; the batch, kept by the caller, written whole once it is back)."""

from __future__ import annotations

import asyncio
import copy
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from checks.base import Result
from checks.base import State as ResultState
from probe import history
from probe.archive import Archive, Keep, pg_epoch, pg_query, sqlite_query
from probe.cluster.pgstate import PgState
from probe.config import Config
from probe.engine import Engine, Transition
from probe.facts import Facts
from probe.history import DAY, HOUR, MINUTE, Recorder
from probe.state import SqliteState, State
from probe.store import Batch, Snapshot, Store, StoreError
from probe.tickets.ledger import Ledger, SqliteLedger
from probe.tickets.pgledger import PgLedger, Pool, open_pool
from tests.harness.postgres import Postgres

HISTORY = 3
# Nothing pruned and every minute kept: what is read back is what was written.
KEEP = Keep(1000 * DAY, 1000 * DAY, 1000 * DAY)


@dataclass
class Subject:
    state: State
    ledger: Ledger  # on the same database: where the transitions' actions go
    refuse: Callable[[], Awaitable[None]]  # the database refuses every write from now on
    restore: Callable[[], Awaitable[None]]  # and takes them again
    archive: Archive  # what pages and reports read of the same database


@pytest.fixture(params=["sqlite", "postgres"])
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    if request.param == "sqlite":
        store = Store(tmp_path, history=HISTORY)

        def full(on: bool) -> Callable[[], Awaitable[None]]:
            # As a full disk refuses: each statement that writes fails, the first one of a
            # transaction or one half-way through it.
            statements = [
                f"DROP TRIGGER IF EXISTS temp.full_{table}_{op}" if not on else
                f"CREATE TEMP TRIGGER full_{table}_{op} BEFORE {op} ON {table}"
                " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
                for table in ("check_state", "group_state", "results", "maintenance", "outbox",
                              "incidents")
                for op in ("INSERT", "UPDATE", "DELETE")]

            async def switch() -> None:
                store.run(lambda db: [db.execute(s) for s in statements])
            return switch

        yield Subject(SqliteState(store), SqliteLedger(store), full(True), full(False),
                      Archive(sqlite_query(store), KEEP))
        store.close()
    else:
        dsn = request.getfixturevalue("pg_database")
        server: Postgres = request.getfixturevalue("postgres")
        name = conninfo_to_dict(dsn)["dbname"]
        assert isinstance(name, str)
        pool = await open_pool(dsn, timeout=1)

        def connections(allowed: bool) -> Callable[[], Awaitable[None]]:
            async def switch() -> None:
                # The database gone as an agent sees it: its sessions cut, new ones refused.
                with psycopg.connect(server.dsn(), autocommit=True) as admin:
                    admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                        sql.Identifier(name), sql.Literal(allowed)))
                    if not allowed:
                        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                      " WHERE datname = %s", (name,))
            return switch

        pg = PgState(pool, history=HISTORY)
        yield Subject(pg, PgLedger(pool), connections(False), connections(True),
                      Archive(pg_query(pool), KEEP, epoch=pg_epoch))
        await pg.close()
        await pool.close()


def result(state: ResultState = "down", reason: str = "connection refused", at: float = 1000.0,
           evidence: dict[str, object] | None = None) -> Result:
    return Result("tcp", "db:5432", state, 0.25, reason if state != "up" else "",
                  evidence={"port": 5432} if evidence is None else evidence, started_at=at)


def facts(reason: str = "connection refused") -> Facts:
    return Facts(agent="dc1-a", group="web", service=None, why="3 consecutive failures",
                 reason=reason, previous_reason="", first_failure_at=1000.0, opened_at=1030.0,
                 down_for=30.0, failed_checks=3, unreachable=())


def opening(key: str = "web#1", reason: str = "connection refused") -> Transition:
    return Transition("open", "web", key, 1030.0, facts(reason))


class Unprintable:
    """A value that cannot be written as JSON, not even as its str()."""

    def __str__(self) -> str:
        raise ValueError("cannot be written")


def a_decision() -> Batch:
    """What one decision writes: states, results and the transition it caused."""
    return Batch(
        checks={"web-a": {"failures": 3, "last_state": "down"}, "web-b": {"failures": 0}},
        groups={"web": {"incident": {"key": "web#1", "opened_at": 1030.0}}},
        results=[("web-a", result(at=1030.0)), ("web-b", result("up", at=1030.5))],
        transitions=[(opening(), "desk")],
    )


@dataclass
class Written:
    """All a subject shows of what was written."""

    checks: dict[str, Any]
    groups: dict[str, Any]
    results: list[list[dict[str, Any]]]  # of web-a and web-b
    pending: int  # actions in the ledger's outbox


NOTHING = Written({}, {}, [[], []], 0)


async def written(subject: Subject) -> Written:
    snapshot = await subject.state.load()
    return Written(snapshot.checks, snapshot.groups,
                   [await subject.state.recent_results(n) for n in ("web-a", "web-b")],
                   (await subject.ledger.heads()).pending)


async def answering(state: State, within: float = 15.0) -> Snapshot:
    """The state loaded once the database answers again, tried as the writer tries (a pool
    reconnects at its own pace)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await state.load()
        except StoreError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


# --- states --------------------------------------------------------------------------------------


async def test_states_written_are_loaded_as_written(subject: Subject) -> None:
    state = subject.state
    empty = await state.load()
    assert (empty.checks, empty.groups) == ({}, {})
    await state.write(a_decision())
    await state.write(Batch(checks={"web-a": {"failures": 4, "reason": "bad\x00byte ☃"}}))
    snapshot = await state.load()
    assert snapshot.checks == {"web-a": {"failures": 4, "reason": "bad\x00byte ☃"},
                               "web-b": {"failures": 0}}
    assert snapshot.groups == {"web": {"incident": {"key": "web#1", "opened_at": 1030.0}}}


async def test_a_state_written_as_none_is_gone(subject: Subject) -> None:
    state = subject.state
    await state.write(a_decision())
    await state.write(Batch(checks={"web-b": None, "never-there": None}, groups={"web": None}))
    snapshot = await state.load()
    assert (snapshot.checks, snapshot.groups) == ({"web-a": {"failures": 3,
                                                            "last_state": "down"}}, {})


async def test_a_batch_with_nothing_in_it_writes_nothing(subject: Subject) -> None:
    await subject.state.write(Batch())
    assert await written(subject) == NOTHING


# --- results -------------------------------------------------------------------------------------


async def test_recent_results_are_newest_first_with_the_evidence_of_failures_only(
    subject: Subject,
) -> None:
    state = subject.state
    await state.write(Batch(results=[("web-a", result("up", at=1000.0)),
                                     ("web-a", result("down", "timed out", at=1010.0))]))
    await state.write(Batch(results=[("web-a", result("unknown", "no route", at=1020.0)),
                                     ("web-b", result("down", at=1015.0))]))
    recent = await state.recent_results("web-a")
    assert [(r["state"], r["reason"], r["evidence"]) for r in recent] == [
        ("unknown", "no route", {"port": 5432}),
        ("down", "timed out", {"port": 5432}),
        ("up", "", {}),  # a success's evidence is not kept
    ]
    assert [r["at"] for r in recent] == pytest.approx([1020.0, 1010.0, 1000.0])
    assert recent[0]["duration"] == pytest.approx(0.25)
    assert [r["state"] for r in await state.recent_results("web-a", limit=2)] == [
        "unknown", "down"]
    assert len(await state.recent_results("web-b")) == 1
    assert await state.recent_results("nobody") == []


async def test_the_results_kept_are_the_newest_history_of_each_check(subject: Subject) -> None:
    state = subject.state
    # More than the history in one batch, then one at a time: the ring goes round.
    await state.write(Batch(results=[("web-a", result(at=1000.0 + i)) for i in range(5)]))
    assert [r["at"] for r in await state.recent_results("web-a")] == pytest.approx(
        [1004.0, 1003.0, 1002.0])
    for i in range(5, 9):
        await state.write(Batch(results=[("web-a", result(at=1000.0 + i)),
                                         ("web-b", result(at=2000.0 + i))]))
        assert [r["at"] for r in await state.recent_results("web-a", limit=10)] == (
            pytest.approx([1000.0 + i, 999.0 + i, 998.0 + i]))
    assert [r["at"] for r in await state.recent_results("web-b")] == pytest.approx(
        [2008.0, 2007.0, 2006.0])


async def test_a_hostile_reason_and_evidence_are_kept_as_they_came(subject: Subject) -> None:
    """NUL, and what JSON cannot say strictly (NaN), come from targets' answers: written and
    read back, never a failed write."""
    reason = "bad\x00byte ☃ \"quoted\""
    await subject.state.write(Batch(results=[
        ("web-a", result(reason=reason, evidence={"body": "\x00", "ratio": float("nan")}))]))
    (recent,) = await subject.state.recent_results("web-a")
    assert recent["reason"] == reason
    assert recent["evidence"]["body"] == "\x00"
    assert math.isnan(recent["evidence"]["ratio"])


# --- maintenance windows set at run time ---------------------------------------------------------


async def test_windows_are_added_ended_and_gone_once_over(subject: Subject) -> None:
    state = subject.state
    assert await state.windows(1000.0) == {}
    first = await state.add_window({"checks": ["web-a"], "reason": "upgrade"}, 2000.0)
    second = await state.add_window({"services": ["db"], "reason": "move"}, 3000.0)
    third = await state.add_window({"checks": ["web-b"], "reason": "gone"}, 4000.0)
    assert first < second < third
    assert await state.windows(1000.0) == {
        first: {"checks": ["web-a"], "reason": "upgrade"},
        second: {"services": ["db"], "reason": "move"},
        third: {"checks": ["web-b"], "reason": "gone"},
    }
    await state.end_window(third)
    await state.end_window(third)  # ended twice: nothing to do
    assert set(await state.windows(1000.0)) == {first, second}
    # A window ending at `since` is over, and goes for good.
    assert set(await state.windows(2000.0)) == {second}
    assert set(await state.windows(1000.0)) == {second}
    # A number is never given twice, not even after the last window went.
    assert await state.add_window({"checks": ["web-a"]}, 5000.0) > third


# --- a batch whole or not at all -----------------------------------------------------------------


async def test_a_decision_is_written_with_its_actions(subject: Subject) -> None:
    await subject.state.write(a_decision())
    seen = await written(subject)
    assert set(seen.checks) == {"web-a", "web-b"} and set(seen.groups) == {"web"}
    assert [len(r) for r in seen.results] == [1, 1]
    assert seen.pending == 1  # queued, to be delivered
    (head,) = (await subject.ledger.heads()).rows
    assert (head.incident_key, head.route) == ("web#1", "desk")


async def test_a_write_that_fails_half_way_writes_nothing(subject: Subject) -> None:
    batch = a_decision()
    # The states and results go first, the transitions last: the second one cannot be written.
    bad = Transition("open", "db", "db#1", 1030.0, facts(cast(str, Unprintable())))
    batch.transitions.append((bad, "desk"))
    with pytest.raises(ValueError, match="cannot be written"):
        await subject.state.write(batch)
    assert await written(subject) == NOTHING
    await subject.ledger.adopt("web#1", "web#1", "desk", "T-1")
    assert await subject.ledger.watched() == []  # no incident web#1 either
    # and the next write is not taken down with it
    await subject.state.write(a_decision())
    assert (await written(subject)).pending == 1


async def test_a_database_that_refuses_is_a_store_error_and_the_batch_is_kept_whole(
    subject: Subject,
) -> None:
    state = subject.state
    await state.write(Batch(checks={"web-a": {"failures": 2}}))
    window = await state.add_window({"checks": ["web-a"]}, 9e9)
    batch = a_decision()
    before = copy.deepcopy(batch)
    await subject.refuse()
    with pytest.raises(StoreError):
        await state.write(batch)
    with pytest.raises(StoreError):
        await state.add_window({"checks": ["web-b"]}, 9e9)
    with pytest.raises(StoreError):
        await state.end_window(window)
    assert batch == before  # the writer keeps it, unchanged, for the next try
    await subject.restore()
    assert (await answering(state)).checks == {"web-a": {"failures": 2}}
    await state.write(batch)
    seen = await written(subject)
    assert seen.checks == before.checks and seen.groups == before.groups
    assert [len(r) for r in seen.results] == [1, 1] and seen.pending == 1
    assert list(await state.windows(0)) == [window]


# --- PostgreSQL's own: agents sharing the database --------------------------------------------


async def test_a_check_that_moves_to_another_agent_goes_on_with_its_results(
    pg_database: str,
) -> None:
    # The database counts each check's results, not the agent: the agent that takes a check
    # over writes after the last result its predecessor wrote, not over it.
    first, second = await open_pool(pg_database), await open_pool(pg_database)
    try:
        agents = [PgState(first, history=HISTORY), PgState(second, history=HISTORY)]
        for i in range(7):
            await agents[i % 2].write(Batch(results=[("web-a", result(at=1000.0 + i))]))
        for agent in agents:
            assert [r["at"] for r in await agent.recent_results("web-a")] == pytest.approx(
                [1006.0, 1005.0, 1004.0])
    finally:
        await first.close()
        await second.close()


def test_a_history_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="history must be at least 1, not 0"):
        PgState(cast(Pool, None), history=0)


async def test_a_refused_write_costs_no_place_in_the_ring(subject: Subject) -> None:
    # The results of a write the database refused, written on the next try, take the places
    # after the last ones written: none of those is pushed out before its time.
    state = subject.state
    await state.write(Batch(results=[("web-a", result(at=1000.0)), ("web-a", result(at=1001.0))]))
    batch = Batch(results=[("web-a", result(at=1002.0))])
    await subject.refuse()
    with pytest.raises(StoreError):
        await state.write(batch)
    await subject.restore()
    await answering(state)
    await state.write(batch)
    assert [r["at"] for r in await state.recent_results("web-a")] == pytest.approx(
        [1002.0, 1001.0, 1000.0])


async def test_the_history_is_kept_rolled_up_and_read_alike(subject: Subject) -> None:
    """Minutes added up as two agents write them, rolled up into hours and days, downtime
    recorded with the transitions, and the archive reading them back the same on both."""
    t0 = 1_764_547_200.0  # a UTC midnight
    config = Config.model_validate({"agent": {"name": "a"}, "defaults": {"failure_threshold": 2},
                                    "checks": [{"name": "web",
                                                "http": {"url": "http://127.0.0.1/"}}]})
    engine = Engine("a", config.effective_checks())
    one, other = Recorder(), Recorder()
    transitions = []
    states: list[ResultState] = ["up", "down", "down", "down", "up", "up"]
    for i, state in enumerate(states):
        at = t0 + i * 10
        # the same check, by two agents in turn (a check moving between them)
        (one if i % 2 else other).add("web", result(state, at=at), interval=10,
                                      maintenance=False)
        transitions += engine.observe("web", state, "refused", at)
    await subject.state.write(Batch(minutes=one.rows() + other.rows(),
                                    transitions=[(t, None) for t in transitions]))
    now = t0 + DAY + history.ROLL_AFTER + 1
    keep = {MINUTE: KEEP.minutes, HOUR: KEEP.hours, DAY: KEEP.days}
    assert await subject.state.roll_up(now, keep) == 24 + 1
    assert await subject.state.roll_up(now, keep) == 0

    (minute,) = (await subject.archive.buckets(["web"], t0, t0 + HOUR, now))["web"]
    assert (minute.results, minute.failed) == (6, 3)
    # each agent's results cover 40 s of it (their first, nothing): together no more than the
    # minute itself
    assert minute.covered == 60.0
    assert await subject.archive.downtime(["web"], t0, now) == {
        "web": [("a/web/1", t0 + 10, t0 + 50)]}  # resolved by the second success
    (incident,) = await subject.archive.incidents()
    assert (incident.key, incident.first_failure_at, incident.resolved_at) == (
        "a/web/1", t0 + 10, t0 + 50)
    later = t0 + 400 * DAY  # the minutes no longer answer: the day does
    (day,) = (await Archive(subject.archive._query, Keep(HOUR * 26, DAY * 2, DAY * 1000),
                            epoch=subject.archive._epoch).buckets(["web"], t0, t0 + DAY,
                                                                  later))["web"]
    assert (day.size, day.results, day.failed, day.covered) == (DAY, 6, 3, 60.0)
