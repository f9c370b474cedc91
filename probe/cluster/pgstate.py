"""The daemon's state on PostgreSQL, the cluster's: what probe.store.Store keeps in SQLite, behind
probe.state.State. The tables (check_state, group_state, results, maintenance) are a migration of
probe.tickets.pgledger; every statement on them is here.

- A batch is one transaction, the engine's transitions in it (pgledger.record_transitions): a
  decision and its ticket actions are written together or not at all. A batch of results only
  (a steady agent's) is one statement, without a transaction around it. Each kind of change is one
  statement over arrays (unnest), whatever the batch's size, so that a batch costs a handful of
  statements, not one per result.
- The results are a ring per check, as in SQLite: `seq` counts a check's results, `slot` is seq
  modulo `history`. The database counts (the greatest seq stored, plus one), not the agent, so
  that a check that moves to another agent goes on where it was. Two agents writing the same
  check's results at once (only while it moves) may write one slot twice: the newer wins, the
  history is only history.
- Rows are written in the order of their keys, whichever agent writes them, so that two agents
  writing the same rows at once (a check moving between them) wait for each other instead of
  deadlocking.
- JSON as text, never jsonb (pgledger's note); the reason too is kept as JSON, since text
  refuses NUL and a reason comes from whatever a sick target answered.
- Times are timestamptz, carried as seconds since the epoch as Store's are; they are the
  agent's clock, as in SQLite, until decisions move into the database.
- The database refusing (gone, restarting, read-only, out of reach, the pool closed) is a
  StoreError, the writer's signal to keep the batch and try again; pgledger.connection says
  which errors those are, for every call on the cluster's database alike.

- In a cluster (`terms` given), a batch that changes a group (its state, its checks' states,
  its transitions) is written only under the claim on the group (probe.cluster.claims), locked
  for the transaction and held by this agent with its fence: otherwise nothing is written and
  FenceRejected names the groups another agent decides for now. The claim's row, not the
  group_state row, is the lock's anchor: it outlives a group deleted and configured again.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from checks.base import Result
from probe import history
from probe.cluster.votes import CAST as _CAST
from probe.engine import Changes, Transition
from probe.store import Batch, Snapshot, StoreError
from probe.tickets.ledger import FenceRejected, LedgerError
from probe.tickets.pgledger import (
    Connection,
    Pool,
    Terms,
    connection,
    record_transitions,
)


def _epoch(column: str) -> str:
    return f"extract(epoch FROM {column})::float8"


# The batch's results for each check numbered on from the greatest seq stored; only the newest
# `history` of each are written (one statement may not update a slot twice).
_RESULTS = """
WITH new AS (
    SELECT n.check_name, n.at, n.state, n.duration, n.reason, n.evidence,
           count(*) OVER (PARTITION BY n.check_name) AS total,
           row_number() OVER (PARTITION BY n.check_name ORDER BY n.ord) AS number
    FROM unnest(%(names)s::text[], %(ats)s::float8[], %(states)s::text[],
                %(durations)s::float8[], %(reasons)s::text[], %(evidences)s::text[])
         WITH ORDINALITY AS n(check_name, at, state, duration, reason, evidence, ord)
), numbered AS (
    SELECT new.*, coalesce((SELECT max(r.seq) FROM results r
                            WHERE r.check_name = new.check_name), 0) + number AS seq
    FROM new WHERE number > total - %(history)s
)
INSERT INTO results (check_name, slot, seq, at, state, duration, reason, evidence)
SELECT check_name, seq %% %(history)s, seq, to_timestamp(at), state, duration, reason, evidence
FROM numbered ORDER BY check_name, seq
ON CONFLICT (check_name, slot) DO UPDATE SET seq = excluded.seq, at = excluded.at,
    state = excluded.state, duration = excluded.duration, reason = excluded.reason,
    evidence = excluded.evidence
"""


class PgState:
    """The state in PostgreSQL, through the cluster's pool (pgledger.open_pool, which migrates
    the schema), keeping the last `history` results of each check."""

    def __init__(self, pool: Pool, *, history: int = 50, terms: Terms | None = None,
                 group_of: Callable[[str], str | None] = lambda name: None,
                 site: str = "") -> None:
        if history < 1:
            raise ValueError(f"history must be at least 1, not {history}")
        self._pool = pool
        self.history = history
        self._terms = terms
        self._group_of = group_of  # a check's group, for the claim its state is written under
        self._site = site  # whose votes a batch carries, when sites vote

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        try:
            async with connection(self._pool) as conn:
                yield conn
        except FenceRejected:
            raise
        except LedgerError as err:
            raise StoreError(str(err)) from err

    async def _check_claims(self, conn: Connection, batch: Batch) -> None:
        assert self._terms is not None
        groups = {*batch.groups, *(t.group for t, _ in batch.transitions)}
        groups.update(g for name in batch.checks if (g := self._group_of(name)) is not None)
        if not groups:
            return  # results only: history, written by whoever ran the check
        rows = await (await conn.execute(
            "SELECT grp, owner, fence FROM claims WHERE grp = ANY(%s) ORDER BY grp FOR SHARE",
            (sorted(groups),))).fetchall()
        held = {group for group, owner, fence in rows
                if owner == self._terms.agent and fence == self._terms.held.get(group)}
        if groups - held:
            raise FenceRejected(groups - held)

    async def close(self) -> None:
        """The pool is the caller's (the ledger and the membership share it): nothing to do."""

    async def load(self) -> Snapshot:
        async with self._connection() as conn:
            checks = await (await conn.execute("SELECT name, data FROM check_state")).fetchall()
            groups = await (await conn.execute("SELECT name, data FROM group_state")).fetchall()
        return Snapshot({n: json.loads(d) for n, d in checks},
                        {n: json.loads(d) for n, d in groups})

    async def write(self, batch: Batch) -> None:
        if batch.alerts:  # config refuses alertmanager with a cluster: never lose them quietly
            raise StoreError("Alertmanager's groups are kept on a single agent's SQLite state")
        if not (batch.checks or batch.groups or batch.transitions):
            # Results only, as every batch of a steady agent is: one statement, atomic by
            # itself. A transaction around it cost a BEGIN and a COMMIT, two of the three
            # statements of each flush (bench --only cluster). Votes, their own statement:
            # a site's votes are not fenced (no claim: the agent that runs the check casts
            # them, and its liveness is their freshness).
            if batch.results or batch.votes or batch.minutes:
                async with self._connection() as conn:
                    if batch.results:
                        await conn.execute(_RESULTS, self._results(batch.results))
                    if batch.votes:
                        await conn.execute(_CAST, self._votes(batch.votes))
                    await _minutes(conn, batch.minutes)
            return
        async with self._connection() as conn, conn.transaction():
            if self._terms is not None:
                await self._check_claims(conn, batch)
            await _upsert(conn, "check_state", batch.checks)
            await _upsert(conn, "group_state", batch.groups)
            if batch.results:
                await conn.execute(_RESULTS, self._results(batch.results))
            if batch.votes:
                await conn.execute(_CAST, self._votes(batch.votes))
            await _minutes(conn, batch.minutes)
            await record_transitions(conn, batch.transitions)
            await _downtime(conn, [t for t, _ in batch.transitions])

    def _votes(self, votes: dict[str, dict[str, Any]]) -> dict[str, Any]:
        assert self._terms is not None
        names = sorted(votes)
        return {"site": self._site, "agent": self._terms.agent, "names": names,
                "values": [votes[n]["value"] for n in names],
                "reasons": [json.dumps(votes[n]["reason"]) for n in names],
                "streaks": [json.dumps(votes[n]["streak"]) for n in names]}

    def _results(self, results: list[tuple[str, Result]]) -> dict[str, Any]:
        columns: dict[str, list[Any]] = {
            "names": [], "ats": [], "states": [], "durations": [], "reasons": [], "evidences": []}
        for name, result in results:
            columns["names"].append(name)
            columns["ats"].append(result.started_at)
            columns["states"].append(result.state)
            columns["durations"].append(result.duration)
            columns["reasons"].append(json.dumps(result.reason))
            # As Store: the evidence of a success is in /metrics already.
            columns["evidences"].append(
                "{}" if result.ok else json.dumps(result.evidence, default=str))
        return {**columns, "history": self.history}

    async def latest(self) -> dict[str, dict[str, Any]]:
        """Each check's latest result, as `recent_results` gives them (the status page's view
        of checks other agents run)."""
        async with self._connection() as conn:
            rows = await (await conn.execute(
                "SELECT DISTINCT ON (check_name) check_name, " + _epoch("at") + ", state,"
                " duration, reason FROM results ORDER BY check_name, seq DESC")).fetchall()
        return {name: {"at": at, "state": state, "duration": duration,
                       "reason": json.loads(reason)}
                for name, at, state, duration, reason in rows}

    async def recent_results(self, name: str, limit: int = 10) -> list[dict[str, Any]]:
        async with self._connection() as conn:
            rows = await (await conn.execute(
                "SELECT " + _epoch("at") + ", state, duration, reason, evidence FROM results"
                " WHERE check_name = %s ORDER BY seq DESC LIMIT %s", (name, limit))).fetchall()
        return [
            {"at": at, "state": state, "duration": duration, "reason": json.loads(reason),
             "evidence": json.loads(evidence)}
            for at, state, duration, reason, evidence in rows
        ]

    async def windows(self, since: float) -> dict[int, dict[str, Any]]:
        # One statement: the SELECT sees the table as it was before the DELETE, hence its own
        # test of the end.
        async with self._connection() as conn:
            rows = await (await conn.execute(
                "WITH gone AS (DELETE FROM maintenance WHERE ends_at <= to_timestamp(%(since)s))"
                " SELECT id, data FROM maintenance WHERE ends_at > to_timestamp(%(since)s)"
                " ORDER BY id", {"since": since})).fetchall()
        return {int(number): json.loads(data) for number, data in rows}

    async def add_window(self, data: dict[str, Any], ends_at: float) -> int:
        async with self._connection() as conn:
            found = await (await conn.execute(
                "INSERT INTO maintenance (data, ends_at) VALUES (%s, to_timestamp(%s))"
                " RETURNING id", (json.dumps(data), ends_at))).fetchone()
        assert found is not None
        return int(found[0])

    async def end_window(self, number: int) -> None:
        async with self._connection() as conn:
            await conn.execute("DELETE FROM maintenance WHERE id = %s", (number,))

    async def roll_up(self, now: float, keep: Mapping[int, float]) -> int:
        """As Store.roll_up. Any agent may roll a bucket up, several at once: each writes the
        same rows from the same minutes."""
        rolled = 0
        counts = ", ".join(f"h.{c}" for c in history.COUNTS[1:])
        for size in (history.HOUR, history.DAY):
            async with self._connection() as conn:
                row = await (await conn.execute(
                    "SELECT upto FROM history_rolled WHERE res = %s", (size,))).fetchone()
                if row is None:
                    row = await (await conn.execute(
                        "SELECT min(t) FROM history_minutes")).fetchone()
                    if row is None or row[0] is None:
                        continue
                    row = (int(row[0]) // size * size,)
            start = max(int(row[0]), int((now - keep[history.MINUTE]) // size) * size)
            table, names = history.TABLES[size], history.columns(size)
            while start + size + history.ROLL_AFTER <= now:
                async with self._connection() as conn, conn.transaction():
                    rows = await (await conn.execute(
                        # Each check's minutes through the key, not a scan of every minute
                        f"SELECT c.id, {counts} FROM history_checks c CROSS JOIN LATERAL"
                        " (SELECT * FROM history_minutes WHERE check_id = c.id AND t >= %s"
                        " AND t < %s) h ORDER BY c.id", (start, start + size))).fetchall()
                    done = history.roll_up(rows, start)
                    if done:
                        await conn.execute(_rolled(table, names), {
                            "ids": [r[0] for r in done],
                            **{c: [r[i + 1] for r in done] for i, c in enumerate(names)}})
                    await conn.execute(
                        "INSERT INTO history_rolled VALUES (%s, %s) ON CONFLICT (res)"
                        " DO UPDATE SET upto = GREATEST(history_rolled.upto, excluded.upto)",
                        (size, start + size))
                start += size
                rolled += 1
        if rolled:
            async with self._connection() as conn:
                for size, seconds in sorted(keep.items()):
                    await conn.execute(f"DELETE FROM {history.TABLES[size]} WHERE t < %s",
                                       (now - seconds,))
                await conn.execute("DELETE FROM downtime WHERE until < %s",
                                   (now - keep[history.DAY],))
        return rolled


def _rolled(table: str, names: tuple[str, ...]) -> str:
    """Rolled-up rows into `table` (one of history.TABLES), replacing what was there."""
    arrays = ", ".join(f"%({c})s::bigint[]" for c in names)
    return (f"INSERT INTO {table} (check_id, {', '.join(names)})"
            f" SELECT * FROM unnest(%(ids)s::int[], {arrays})"
            " ON CONFLICT (check_id, t) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in names if c != "t"))


# Minutes added to what is stored; a batch that waited through a failed write may hold a
# minute twice, summed first (one statement may not update a row twice).
_MINUTES = f"""
INSERT INTO history_minutes (check_id, {", ".join(history.COUNTS)})
SELECT c.id, m.t, sum(m.n), sum(m.failed), sum(m.unknown), sum(m.covered), sum(m.na),
       sum(m.maintenance), sum(m.dsum), max(m.dmax),
       {", ".join(f"sum(m.ph{i})" for i in range(1, history.PHASES + 1))}
FROM unnest(%(names)s::text[], {", ".join(f"%({c})s::bigint[]" for c in history.COUNTS)})
     AS m(name, {", ".join(history.COUNTS)})
JOIN history_checks c ON c.name = m.name
GROUP BY c.id, m.t
ORDER BY c.id, m.t
ON CONFLICT (check_id, t) DO UPDATE SET
    {", ".join(f"{c} = history_minutes.{c} + excluded.{c}" for c in history.COUNTS
               if c not in ("t", "dmax"))},
    dmax = GREATEST(history_minutes.dmax, excluded.dmax)
"""


async def _minutes(conn: Connection, rows: list[history.MinuteRow]) -> None:
    if not rows:
        return
    names = sorted({row[0] for row in rows})
    await conn.execute("INSERT INTO history_checks (name) SELECT unnest(%s::text[])"
                       " ON CONFLICT (name) DO NOTHING", (names,))
    await conn.execute(_MINUTES, {
        "names": [row[0] for row in rows],
        **{c: [row[i + 1] for row in rows] for i, c in enumerate(history.COUNTS)}})


async def _downtime(conn: Connection, transitions: list[Transition]) -> None:
    """As probe.store.record_downtime, in the batch's transaction (under its groups' claims)."""
    for transition in transitions:
        rows = history.downtime_rows(transition)
        if rows:
            await conn.execute(
                "INSERT INTO downtime (incident_key, check_name, since)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::float8[])"
                " ON CONFLICT DO NOTHING",
                ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]))
        if transition.kind == "resolve":
            await conn.execute("UPDATE downtime SET until = %s WHERE incident_key = %s"
                               " AND until IS NULL", (transition.at, transition.key))


async def _upsert(conn: Connection, table: str, changes: Changes) -> None:
    gone = sorted(name for name, data in changes.items() if data is None)
    kept = sorted((name, json.dumps(data)) for name, data in changes.items() if data is not None)
    # `table` is one of this module's two names, never an input.
    if gone:
        await conn.execute(f"DELETE FROM {table} WHERE name = ANY(%s)", (gone,))
    if kept:
        await conn.execute(
            f"INSERT INTO {table} (name, data) SELECT * FROM unnest(%s::text[], %s::text[])"
            " ON CONFLICT (name) DO UPDATE SET data = excluded.data",
            ([n for n, _ in kept], [d for _, d in kept]))
