"""`probe cluster import`: a single agent's live work moved from its SQLite state directory into
the cluster's PostgreSQL, so that the cluster goes on where the agent stopped.

What moves: the incidents still open, with their tickets (all of them: the watcher must still
know one a human closed) and their actions not yet delivered (pending or failed, in their order,
with their attempts); a resolved incident whose actions are not all delivered moves too, since
its ticket would otherwise never hear of the resolve. Every check's and group's state (so that
failure streaks go on), the last results of each check, and the maintenance windows set at run
time that have not ended. What stays behind, counted: resolved incidents whose actions were all
delivered, and delivered actions (history).

- All of it in one transaction, or nothing. The import first locks the cluster's `incidents`
  table (SHARE ROW EXCLUSIVE: agents may read, not open an incident, for the few milliseconds it
  takes), so that the checks below and the writes see the same cluster.
- It refuses, writing nothing, when the state is not a probe state of this release's schema,
  when a daemon runs on it (its `daemon.json` names a live process, or another process has its
  database open: the agent would go on delivering the same actions beside the cluster), when
  the cluster already holds one of the state's incidents, tickets or newest results (then it
  was imported already), or when the cluster has an open incident of a group that the state
  has one open for.
- An action that may have created a ticket is marked `unknown_outcome` in PostgreSQL, so that
  the cluster asks the helpdesk's find() before creating it again: an import never causes a
  second ticket. SQLite says so in its own `unknown_outcome`; an action counted before that
  column existed says so only by its attempts, so any attempted action that creates a ticket is
  marked too (the cost is one find() call).
- The SQLite state is read, never written (opened without create, in one read transaction).

The statements here write the tables of probe.tickets.pgledger and probe.cluster.pgstate in a
transaction of the import's own; they are the import's, one-off, not the daemon's.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probe import control
from probe.store import MIGRATIONS as SQLITE_MIGRATIONS
from probe.store import Store
from probe.tickets.pgledger import Connection, Pool, connection

# The actions whose delivery may create a ticket: the dispatcher asks find() before repeating
# one whose outcome is unknown.
CREATING = ("open", "new-ticket", "escalate")
_DMS = 128  # the byte of a WAL database's -shm file every open connection holds a lock on


class ImportRefused(Exception):
    """The import cannot be made as asked; nothing was written. In words for the operator."""


@dataclass(frozen=True)
class Imported:
    """What the import moved, and what it left behind, for the command to print."""

    incidents: int  # open ones, and resolved ones with actions still to deliver
    tickets: int
    actions: int  # pending or failed
    failed_actions: int  # of those, failed for good (probe tickets retry, in the cluster)
    checks: int
    groups: int
    results: int
    windows: int
    resolved_left: int  # resolved incidents, all their actions delivered: history
    delivered_left: int  # delivered actions: history

    def summary(self) -> str:
        return (f"imported {self.incidents} incidents, {self.tickets} tickets, "
                f"{self.actions} ticket actions ({self.failed_actions} failed), "
                f"{self.checks} check states, {self.groups} group states, {self.results} results, "
                f"{self.windows} maintenance windows; left behind (history): "
                f"{self.resolved_left} resolved incidents, {self.delivered_left} delivered "
                "actions")


@dataclass(frozen=True)
class _Agent:
    """The rows read from the agent's SQLite state, as the cluster's tables take them."""

    incidents: list[tuple[Any, ...]]  # key, grp, opened_at, resolved_at, facts
    tickets: list[tuple[Any, ...]]
    actions: list[tuple[Any, ...]]
    checks: list[tuple[str, str]]
    groups: list[tuple[str, str]]
    results: dict[str, list[tuple[Any, ...]]]  # per check, oldest first
    windows: list[tuple[str, float]]
    resolved_left: int
    delivered_left: int


async def import_state(state_dir: Path, pool: Pool, *, now: float | None = None,
                       history: int = 50) -> Imported:
    """Move the agent's state in `state_dir` into the cluster's database (`pool`, migrated),
    keeping the last `history` results of each check. Raises ImportRefused, having written
    nothing; the database out of reach is pgledger's LedgerError."""
    if history < 1:
        raise ValueError(f"history must be at least 1, not {history}")
    pid = _daemon(state_dir)
    if pid is not None:
        raise ImportRefused(
            f"a probe daemon (process {pid}) is running on {state_dir}: stop it first, or it "
            f"goes on delivering the same ticket actions beside the cluster (if process {pid} "
            f"is not probe, remove {state_dir / control.RECORD})")
    if _open_elsewhere(state_dir / Store.FILE):
        raise ImportRefused(
            f"another process has {state_dir / Store.FILE} open (a probe daemon starting, or a "
            "`probe tickets` command): stop it first")
    agent = _read(state_dir, time.time() if now is None else now, history)
    async with connection(pool) as conn, conn.transaction():
        await conn.execute("LOCK TABLE incidents IN SHARE ROW EXCLUSIVE MODE")
        await _refuse_conflicts(conn, agent)
        return await _write(conn, agent, history)


def _daemon(state_dir: Path) -> int | None:
    """The process of the daemon running on the state directory, as its record names it, or
    None. The record is written once the daemon has started and removed when it stops; one
    left by a daemon killed -9 names a process that is gone."""
    record = control.read(state_dir)
    if record is None:
        return None
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        return record.pid
    return record.pid


def _open_elsewhere(database: Path) -> bool:
    """Whether a process has the SQLite database open, the daemon at any moment of its life
    included (its record is written only once it has started). Each connection to a database in
    WAL mode holds a shared lock on byte 128 of its `-shm` file for as long as it is open
    (SQLite's "DMS" lock, https://sqlite.org/walformat.html): an exclusive lock on that byte is
    refused while any other process holds one. Tried and released at once, on a database this
    process does not have open (POSIX locks are the process's: releasing one would release its
    own connection's)."""
    try:
        fd = os.open(database.with_name(database.name + "-shm"), os.O_RDWR)
    except FileNotFoundError:  # removed by the last connection to close
        return False
    except OSError:
        return False  # unreadable here: the database itself will say so
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _DMS)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, _DMS)
        return False
    finally:
        os.close(fd)


def _read(state_dir: Path, now: float, history: int) -> _Agent:
    path = state_dir / Store.FILE
    if not path.is_file():
        raise ImportRefused(f"no probe state at {path}: is {state_dir} the agent's state_dir?")
    try:
        # mode=rw: never create a database where there was none.
        db = sqlite3.connect(path.absolute().as_uri() + "?mode=rw", uri=True,
                             isolation_level=None)
    except sqlite3.Error as err:
        raise ImportRefused(f"cannot open {path}: {err}") from err
    try:
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("BEGIN")  # one read transaction: every table as of the same moment
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version != len(SQLITE_MIGRATIONS):
            raise ImportRefused(_version_error(path, version))
        return _rows(db, now, history)
    except sqlite3.Error as err:
        raise ImportRefused(f"cannot read {path}: {err}") from err
    finally:
        db.close()


def _version_error(path: Path, version: int) -> str:
    known = len(SQLITE_MIGRATIONS)
    if version == 0:
        return f"{path} is not a probe state (it has no schema version)"
    if version > known:
        return (f"{path} has schema version {version}, newer than this probe knows ({known}): "
                "import it with the release that wrote it")
    return (f"{path} has schema version {version}, older than this probe's ({known}): start "
            "this release's probe on it once (or run `probe tickets`), then import it")


def _rows(db: sqlite3.Connection, now: float, history: int) -> _Agent:
    undelivered = "SELECT incident_key FROM outbox WHERE status != 'delivered'"
    incidents = db.execute(
        "SELECT key, grp, opened_at, resolved_at, facts FROM incidents"
        f" WHERE resolved_at IS NULL OR key IN ({undelivered}) ORDER BY opened_at, key"
    ).fetchall()
    (resolved_left,) = db.execute(
        f"SELECT COUNT(*) FROM incidents WHERE resolved_at IS NOT NULL AND key NOT IN"
        f" ({undelivered})").fetchone()
    keys = {key for key, *_ in incidents}
    tickets = [row for row in db.execute(
        "SELECT ticket_key, incident_key, route, ref, state, opened_at, escalated_at, policy"
        " FROM tickets ORDER BY opened_at, ticket_key") if row[1] in keys]
    actions = [
        (key, action, route, created, payload, status, attempts, next_at, last_error,
         bool(unknown) or (attempts > 0 and action in CREATING))
        for key, action, route, created, payload, status, attempts, next_at, last_error, unknown
        in db.execute(
            "SELECT incident_key, action, route, created_at, payload, status, attempts,"
            " next_attempt_at, last_error, unknown_outcome FROM outbox"
            " WHERE status != 'delivered' ORDER BY id")]
    (delivered_left,) = db.execute(
        "SELECT COUNT(*) FROM outbox WHERE status = 'delivered'").fetchone()
    results: dict[str, list[tuple[Any, ...]]] = {}
    for name, *row in db.execute("SELECT check_name, at, state, duration, reason, evidence"
                                 " FROM results ORDER BY check_name, seq"):
        # The reason as JSON: PostgreSQL's text refuses NUL (probe.cluster.pgstate).
        results.setdefault(name, []).append((*row[:3], json.dumps(row[3]), row[4]))
    return _Agent(
        incidents=incidents,
        tickets=tickets,
        actions=actions,
        checks=db.execute("SELECT name, data FROM check_state ORDER BY name").fetchall(),
        groups=db.execute("SELECT name, data FROM group_state ORDER BY name").fetchall(),
        results={name: rows[-history:] for name, rows in results.items()},
        windows=db.execute("SELECT data, ends_at FROM maintenance WHERE ends_at > ?"
                           " ORDER BY id", (now,)).fetchall(),
        resolved_left=resolved_left,
        delivered_left=delivered_left,
    )


async def _column(conn: Connection, query: str, params: tuple[Any, ...]) -> list[Any]:
    return [row[0] for row in await (await conn.execute(query, params)).fetchall()]


async def _refuse_conflicts(conn: Connection, agent: _Agent) -> None:
    keys = [key for key, *_ in agent.incidents]
    held = {
        "incidents": await _column(
            conn, "SELECT key FROM incidents WHERE key = ANY(%s) ORDER BY key", (keys,)),
        "tickets": await _column(
            conn, "SELECT ticket_key FROM tickets WHERE ticket_key = ANY(%s) ORDER BY 1",
            ([t[0] for t in agent.tickets],)),
        # A check's newest result, at the same instant: only an import of this state puts it
        # there.
        "newest results of": await _column(
            conn, "SELECT DISTINCT r.check_name FROM results r"
            " JOIN unnest(%s::text[], %s::float8[]) AS n(name, at)"
            " ON r.check_name = n.name AND r.at = to_timestamp(n.at) ORDER BY 1",
            ([name for name in agent.results], [rows[-1][0] for rows in agent.results.values()])),
    }
    if any(held.values()):
        found = "; ".join(f"{what} {', '.join(names)}" for what, names in held.items() if names)
        raise ImportRefused(f"already imported: the cluster holds this state's {found}; "
                            "nothing written")
    groups = sorted({grp for _, grp, _, resolved, _ in agent.incidents if resolved is None})
    open_elsewhere = await (await conn.execute(
        "SELECT grp, key FROM incidents WHERE resolved_at IS NULL AND grp = ANY(%s)"
        " ORDER BY grp, key", (groups,))).fetchall()
    if open_elsewhere:
        found = ", ".join(f"{grp} ({key})" for grp, key in open_elsewhere)
        raise ImportRefused(f"the cluster already has an open incident for group {found}, "
                            "which this state has one open for too: resolve it in the cluster "
                            "first; nothing written")


async def _write(conn: Connection, agent: _Agent, history: int) -> Imported:
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO incidents (key, grp, opened_at, resolved_at, facts)"
            " VALUES (%s, %s, to_timestamp(%s), to_timestamp(%s), %s)", agent.incidents)
        await cur.executemany(
            "INSERT INTO tickets (ticket_key, incident_key, route, ref, state, opened_at,"
            " escalated_at, policy) VALUES (%s, %s, %s, %s, %s, to_timestamp(%s),"
            " to_timestamp(%s), %s)", agent.tickets)
        # In the agent's order: the identity column orders each incident's actions.
        await cur.executemany(
            "INSERT INTO outbox (incident_key, action, route, created_at, payload, status,"
            " attempts, next_attempt_at, last_error, unknown_outcome) VALUES (%s, %s, %s,"
            " to_timestamp(%s), %s, %s, %s, to_timestamp(%s), %s, %s)", agent.actions)
        for table, rows in (("check_state", agent.checks), ("group_state", agent.groups)):
            # `table` is one of these two names, never an input.
            await cur.executemany(
                f"INSERT INTO {table} (name, data) VALUES (%s, %s)"
                " ON CONFLICT (name) DO UPDATE SET data = excluded.data", rows)
        await cur.executemany(
            "INSERT INTO maintenance (data, ends_at) VALUES (%s, to_timestamp(%s))",
            agent.windows)
        results = await _numbered(conn, agent.results, history)
        await cur.executemany(
            "INSERT INTO results (check_name, slot, seq, at, state, duration, reason, evidence)"
            " VALUES (%s, %s, %s, to_timestamp(%s), %s, %s, %s, %s)"
            " ON CONFLICT (check_name, slot) DO UPDATE SET seq = excluded.seq,"
            " at = excluded.at, state = excluded.state, duration = excluded.duration,"
            " reason = excluded.reason, evidence = excluded.evidence", results)
    return Imported(
        incidents=len(agent.incidents),
        tickets=len(agent.tickets),
        actions=len(agent.actions),
        failed_actions=sum(1 for a in agent.actions if a[5] == "failed"),
        checks=len(agent.checks),
        groups=len(agent.groups),
        results=len(results),
        windows=len(agent.windows),
        resolved_left=agent.resolved_left,
        delivered_left=agent.delivered_left,
    )


async def _numbered(conn: Connection, results: dict[str, list[tuple[Any, ...]]],
                    history: int) -> list[tuple[Any, ...]]:
    """The results in the cluster's ring, by pgstate's rule: each check's numbered on from the
    greatest seq the cluster holds for it, in slot seq modulo `history`."""
    names = sorted(results)
    stored: dict[str, int] = dict(await (await conn.execute(
        "SELECT check_name, max(seq) FROM results WHERE check_name = ANY(%s)"
        " GROUP BY check_name", (names,))).fetchall())
    rows = []
    for name in names:
        for number, row in enumerate(results[name], start=stored.get(name, 0) + 1):
            rows.append((name, number % history, number, *row))
    return rows
