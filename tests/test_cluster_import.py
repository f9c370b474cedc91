"""`probe cluster import`: a single agent's state moved into the cluster's PostgreSQL (a real
server, tests/harness/postgres.py). The state is probe's own: written by a real `probe run`
whose target went down, or through Store and SqliteLedger for the cases a daemon reaches only
by chance (an attempt whose outcome is unknown, an action failed for good). What the cluster
then sees is read through its own ledger and state (PgLedger, PgState), as its agents will."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from checks.base import Result
from probe import control
from probe.cluster.importer import Imported, ImportRefused, import_state
from probe.cluster.pgstate import PgState
from probe.engine import Transition
from probe.facts import Facts
from probe.store import Batch, Store
from probe.tickets.ledger import SqliteLedger
from probe.tickets.pgledger import PgLedger, Pool, open_pool
from tests.harness.daemon import ProbeProcess, Target
from tests.harness.ports import free_port
from tests.harness.proc import PROBE

NOW = 10_000.0


@pytest.fixture
async def pool(pg_database: str) -> AsyncIterator[Pool]:
    cluster = await open_pool(pg_database, timeout=5)
    yield cluster
    await cluster.close()


def facts(group: str) -> Facts:
    return Facts(agent="solo", group=group, service=None, why="3 consecutive failures",
                 reason="connection refused", previous_reason="", first_failure_at=1000.0,
                 opened_at=1030.0, down_for=30.0, failed_checks=3, unreachable=())


def transition(kind: str, group: str, key: str, at: float) -> Transition:
    return Transition(kind, group, key, at, facts(group))  # type: ignore[arg-type]


async def pending_ids(ledger: SqliteLedger) -> dict[str, int]:
    """The head action of each incident, by incident key."""
    return {h.incident_key: h.id for h in (await ledger.heads()).rows}


async def agent_state(state_dir: Path) -> None:
    """A single agent's state, written by probe's own store and ledger:

    - web#1, open: its ticket opened (REF-1), then a note pending whose first attempt has an
      unknown outcome (counted, never answered);
    - db#1, open: its open failed for good (no ticket);
    - old#1, resolved, every action delivered: history;
    - mail#1, resolved, its ticket opened, the resolve still pending;
    - two maintenance windows set at run time, one ended.
    """
    store = Store(state_dir, history=5)
    ledger = SqliteLedger(store)
    store.write(Batch(
        checks={"web-a": {"failures": 4}, "db-a": {"failures": 7}, "ok-a": {"failures": 0}},
        groups={"web": {"incident": "web#1"}, "db": {"incident": "db#1"}},
        transitions=[(transition("open", g, f"{g}#1", 1030.0), "desk")
                     for g in ("web", "db", "old", "mail")]))
    for at in range(8):  # more than the history kept
        store.write(Batch(results=[("web-a", Result("tcp", "web:80", "down", 0.25,
                                                    f"refused {at}", {"port": 80},
                                                    started_at=2000.0 + at))]))
    heads = await pending_ids(ledger)
    await ledger.opened(heads["web#1"], "web#1", "web#1", "desk", "REF-1", None)
    await ledger.opened(heads["mail#1"], "mail#1", "mail#1", "desk", "REF-2", None)
    await ledger.give_up(heads["db#1"], counted=1, error="HTTP 403: no such queue")
    await ledger.opened(heads["old#1"], "old#1", "old#1", "desk", "REF-0", None)
    store.write(Batch(transitions=[(transition("note", "web", "web#1", 1100.0), None),
                                   (transition("resolve", "old", "old#1", 1200.0), None),
                                   (transition("resolve", "mail", "mail#1", 1300.0), None)]))
    heads = await pending_ids(ledger)
    await ledger.delivered(heads["old#1"])
    await ledger.count_attempt(heads["web#1"], deadline=NOW)
    store.add_window({"checks": ["web-a"], "reason": "ended"}, ends_at=NOW - 1)
    store.add_window({"checks": ["db-a"], "reason": "upgrade"}, ends_at=NOW + 3600)
    store.close()


async def count(pool: Pool, table: str) -> int:
    async with pool.connection() as conn:
        found = await (await conn.execute(f"SELECT count(*) FROM {table}")).fetchone()
    assert found is not None
    return int(found[0])


async def everything(pool: Pool) -> dict[str, int]:
    return {t: await count(pool, t) for t in ("incidents", "tickets", "outbox", "check_state",
                                              "group_state", "results", "maintenance")}


# --- what moves ----------------------------------------------------------------------------------


async def test_the_open_incidents_tickets_and_undelivered_actions_move(
        tmp_path: Path, pool: Pool) -> None:
    await agent_state(tmp_path)
    imported = await import_state(tmp_path, pool, now=NOW, history=5)
    assert imported == Imported(incidents=3, tickets=2, actions=3, failed_actions=1, checks=3,
                                groups=2, results=5, windows=1, resolved_left=1,
                                delivered_left=4)
    ledger = PgLedger(pool)
    # The watcher knows web#1's ticket; mail#1's, resolved, is not watched but its resolve
    # is on its way to REF-2.
    assert [(w.incident_key, w.ref) for w in await ledger.watched()] == [("web#1", "REF-1")]
    assert await ledger.ticket_ref("mail#1") == "REF-2"
    heads = {h.incident_key: h.id for h in (await ledger.heads()).rows}
    assert sorted(heads) == ["mail#1", "web#1"]
    note = await ledger.load(heads["web#1"])
    assert note is not None
    # The note was attempted with no answer: the cluster asks find() before anything else.
    assert (note.action, note.attempts, note.unknown_outcome) == ("note", 1, True)
    resolve = await ledger.load(heads["mail#1"])
    assert resolve is not None and (resolve.action, resolve.unknown_outcome) == ("resolve", False)
    assert [(f.incident_key, f.action, f.error) for f in await ledger.failed()] == [
        ("db#1", "open", "HTTP 403: no such queue")]
    assert await ledger.failed_open("db#1") == "HTTP 403: no such queue"
    state = PgState(pool, history=5)
    snapshot = await state.load()
    assert snapshot.checks == {"web-a": {"failures": 4}, "db-a": {"failures": 7},
                               "ok-a": {"failures": 0}}
    assert snapshot.groups == {"web": {"incident": "web#1"}, "db": {"incident": "db#1"}}
    assert [r["reason"] for r in await state.recent_results("web-a")] == [
        f"refused {at}" for at in (7, 6, 5, 4, 3)]
    assert list((await state.windows(NOW)).values()) == [{"checks": ["db-a"],
                                                          "reason": "upgrade"}]
    async with pool.connection() as conn:
        left = await (await conn.execute("SELECT key FROM incidents WHERE key = 'old#1'")
                      ).fetchall()
    assert left == []


async def test_the_ring_of_results_goes_on_after_the_imported_ones(
        tmp_path: Path, pool: Pool) -> None:
    await agent_state(tmp_path)
    await import_state(tmp_path, pool, now=NOW, history=5)
    state = PgState(pool, history=5)
    await state.write(Batch(results=[("web-a", Result("tcp", "web:80", "up", 0.1, "", {},
                                                      started_at=3000.0))]))
    assert [r["state"] for r in await state.recent_results("web-a", 2)] == ["up", "down"]
    assert len(await state.recent_results("web-a", 50)) == 5


async def test_an_attempted_open_from_before_the_outcome_was_kept_asks_find_first(
        tmp_path: Path, pool: Pool) -> None:
    store = Store(tmp_path)
    store.write(Batch(transitions=[(transition("open", "web", "web#1", 1030.0), "desk")]))
    # Counted by a release that kept no unknown_outcome: only the attempts say it was tried.
    store.run(lambda db: db.execute("UPDATE outbox SET attempts = 2, unknown_outcome = 0"))
    store.close()
    await import_state(tmp_path, pool, now=NOW)
    ledger = PgLedger(pool)
    (head,) = (await ledger.heads()).rows
    row = await ledger.load(head.id)
    assert row is not None and (row.action, row.attempts, row.unknown_outcome) == ("open", 2, True)


# --- what refuses --------------------------------------------------------------------------------


async def test_a_second_import_refuses_and_writes_nothing(tmp_path: Path, pool: Pool) -> None:
    await agent_state(tmp_path)
    await import_state(tmp_path, pool, now=NOW, history=5)
    before = await everything(pool)
    with pytest.raises(ImportRefused, match=(
            "already imported: the cluster holds this state's incidents db#1, mail#1, web#1; "
            "tickets mail#1, web#1; newest results of web-a; nothing written")):
        await import_state(tmp_path, pool, now=NOW, history=5)
    assert await everything(pool) == before


async def test_a_second_import_of_a_state_without_incidents_refuses_too(
        tmp_path: Path, pool: Pool) -> None:
    store = Store(tmp_path)
    store.write(Batch(checks={"web-a": {"failures": 1}},
                      results=[("web-a", Result("tcp", "web:80", "down", 0.25, "refused", {},
                                                started_at=2000.0))]))
    store.close()
    await import_state(tmp_path, pool, now=NOW)
    before = await everything(pool)
    with pytest.raises(ImportRefused, match="already imported: the cluster holds this state's "
                                            "newest results of web-a"):
        await import_state(tmp_path, pool, now=NOW)
    assert await everything(pool) == before


async def test_an_open_incident_of_the_same_group_in_the_cluster_refuses_the_import(
        tmp_path: Path, pool: Pool) -> None:
    await agent_state(tmp_path)
    await PgLedger(pool).record([(transition("open", "web", "dc2/web/9", 1050.0), "desk")])
    before = await everything(pool)
    with pytest.raises(ImportRefused, match=r"open incident for group web \(dc2/web/9\)"):
        await import_state(tmp_path, pool, now=NOW, history=5)
    assert await everything(pool) == before


async def test_an_incident_key_the_cluster_holds_refuses_the_import(
        tmp_path: Path, pool: Pool) -> None:
    await agent_state(tmp_path)
    ledger = PgLedger(pool)
    # Held resolved: still the same incident, not to be opened twice.
    await ledger.record([(transition("open", "db", "db#1", 1030.0), "desk"),
                         (transition("resolve", "db", "db#1", 1040.0), "desk")])
    before = await everything(pool)
    with pytest.raises(ImportRefused,
                       match="the cluster holds this state's incidents db#1; nothing"):
        await import_state(tmp_path, pool, now=NOW, history=5)
    assert await everything(pool) == before


async def test_a_daemon_running_on_the_state_refuses_the_import(
        tmp_path: Path, pool: Pool) -> None:
    await agent_state(tmp_path)
    daemon = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        control.write(tmp_path, control.Record(daemon.pid))
        with pytest.raises(ImportRefused, match=f"daemon \\(process {daemon.pid}\\) is running"):
            await import_state(tmp_path, pool, now=NOW, history=5)
        assert await count(pool, "incidents") == 0
    finally:
        daemon.kill()
        await daemon.wait()
    # The record of a daemon killed -9 names a process that is gone: no longer in the way.
    await import_state(tmp_path, pool, now=NOW, history=5)
    assert await count(pool, "incidents") == 3


def newer(path: Path) -> None:
    Store(path).close()
    with sqlite3.connect(path / Store.FILE) as db:
        db.execute("PRAGMA user_version = 99")


def older(path: Path) -> None:
    Store(path).close()
    with sqlite3.connect(path / Store.FILE) as db:
        db.execute("PRAGMA user_version = 3")


def foreign(path: Path) -> None:
    with sqlite3.connect(path / Store.FILE) as db:
        db.execute("CREATE TABLE notes (text TEXT)")


def garbage(path: Path) -> None:
    (path / Store.FILE).write_bytes(b"not a database at all, " * 100)


@pytest.mark.parametrize(("make", "error"), [
    (lambda path: None, "no probe state at .*probe.sqlite3"),
    (newer, "schema version 99, newer than this probe knows"),
    (older, "schema version 3, older than this probe's .* start this release's probe on it"),
    (foreign, "is not a probe state"),
    (garbage, "cannot read .*probe.sqlite3: file is not a database"),
])
async def test_what_is_not_this_probes_state_is_refused(
        tmp_path: Path, pool: Pool, make: object, error: str) -> None:
    assert callable(make)
    make(tmp_path)
    with pytest.raises(ImportRefused, match=error):
        await import_state(tmp_path, pool, now=NOW)
    assert set((await everything(pool)).values()) == {0}


async def test_no_state_directory_is_refused_and_none_is_made(tmp_path: Path, pool: Pool) -> None:
    with pytest.raises(ImportRefused, match="no probe state"):
        await import_state(tmp_path / "missing", pool)
    assert not (tmp_path / "missing").exists()


# --- the command, with a real agent --------------------------------------------------------------


async def command(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *PROBE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def rows(state_dir: Path, query: str) -> list[tuple[Any, ...]]:
    """Read the agent's database, and close it: one left open in this process would count as
    a process using it (ProbeProcess.db leaves closing to the garbage collector)."""
    with contextlib.closing(sqlite3.connect(state_dir / Store.FILE)) as db:
        return db.execute(query).fetchall()


async def test_an_agent_stopped_with_an_open_incident_goes_on_in_the_cluster(
        tmp_path: Path, target: Target, pg_database: str, pool: Pool) -> None:
    port = free_port()
    config = tmp_path / "probe.yaml"
    config.write_text(f"""
agent: {{name: solo, state_dir: {tmp_path}/state, listen: "127.0.0.1:{port}", history: 4}}
defaults: {{interval: 300ms, retry_interval: 200ms, timeout: 200ms, failure_threshold: 3}}
ticketing: {{routes: {{local: {{backend: local}}}}}}
checks:
  - name: web
    service: shop
    http: {{url: "http://127.0.0.1:{target.port}/health"}}
""")
    agent = ProbeProcess(config, port, tmp_path / "state")
    target.down = True
    agent.start()
    await agent.wait("the daemon to start", lambda: "probe started" in agent.log_text())
    await agent.wait("the ticket", lambda: rows(agent.state, "SELECT ref FROM tickets"))
    env = dict(agent.env, PROBE_DATABASE=pg_database)
    move = ("cluster", "import", "--from", str(agent.state), "-c", str(config))

    code, out, err = await command(*move, env=env)
    assert (code, out) == (1, "")
    assert f"a probe daemon (process {agent.proc.pid if agent.proc else 0}) is running" in err
    # Without its record (as while it starts, before writing one): its open database says so.
    (agent.state / control.RECORD).unlink()
    code, out, err = await command(*move, env=env)
    assert (code, out) == (1, "")
    assert f"another process has {agent.state}/probe.sqlite3 open" in err
    assert await count(pool, "incidents") == 0

    agent.stop()
    ((ref,),) = rows(agent.state, "SELECT ref FROM tickets")
    streak = json.loads(rows(agent.state, "SELECT data FROM check_state WHERE name = 'web'")[0][0])
    code, out, err = await command(*move, env=env)
    assert (code, err) == (0, "")
    assert out.startswith(f"{agent.state}: imported 1 incidents, 1 tickets, 0 ticket actions")
    ledger = PgLedger(pool)
    assert [(w.incident_key, w.route, w.ref, w.facts.reason) for w in await ledger.watched()
            ] == [("solo/shop/1", "local", ref, "HTTP 503 (expected 2xx)")]
    snapshot = await PgState(pool, history=4).load()
    assert snapshot.checks["web"] == streak
    assert 1 <= len(await PgState(pool, history=4).recent_results("web")) <= 4

    before = await everything(pool)
    code, out, err = await command(*move, env=env)
    assert (code, out) == (1, "")
    assert "already imported: the cluster holds this state's incidents solo/shop/1;" in err
    assert await everything(pool) == before


async def test_the_command_reads_the_database_from_the_environment_only(
        tmp_path: Path, pool: Pool) -> None:
    config = tmp_path / "probe.yaml"
    config.write_text(f"agent: {{state_dir: {tmp_path}/state}}\nchecks: []\n")
    env = {"PATH": "/usr/bin:/bin"}
    code, out, err = await command("cluster", "import", "--from", str(tmp_path), "-c",
                                   str(config), "--database-env", "CLUSTER_DSN", env=env)
    assert (code, out) == (2, "")
    assert "the environment variable CLUSTER_DSN is not set" in err
    code, _, err = await command("cluster", "import", "-c", str(config), env=env)
    assert code == 2 and "--from" in err
    code, _, err = await command("cluster", "import", "--from", str(tmp_path), "-c",
                                 str(config), env={**env, "PROBE_DATABASE": "host=/nonexistent"})
    assert code == 1 and "cluster import: the cluster's database:" in err


async def test_a_refusal_is_said_on_stderr_with_exit_1(tmp_path: Path, pg_database: str) -> None:
    config = tmp_path / "probe.yaml"
    config.write_text(f"agent: {{state_dir: {tmp_path}/state}}\nchecks: []\n")
    code, out, err = await command("cluster", "import", "--from", str(tmp_path / "nothing"),
                                   "-c", str(config),
                                   env={"PATH": "/usr/bin:/bin", "PROBE_DATABASE": pg_database})
    assert (code, out) == (1, "")
    assert err.startswith("cluster import refused: no probe state at")
    with psycopg.connect(pg_database) as db:
        assert db.execute("SELECT count(*) FROM incidents").fetchone() == (0,)


async def test_an_import_that_fails_half_way_writes_nothing(tmp_path: Path, pool: Pool) -> None:
    await agent_state(tmp_path)
    # An action with no route, which the cluster's outbox refuses: written after the incidents
    # and tickets, before the states, results and windows.
    store = Store(tmp_path)
    store.run(lambda db: db.execute("UPDATE outbox SET route = NULL WHERE incident_key = 'db#1'"))
    store.close()
    with pytest.raises(psycopg.errors.NotNullViolation):
        await import_state(tmp_path, pool, now=NOW, history=5)
    assert set((await everything(pool)).values()) == {0}
