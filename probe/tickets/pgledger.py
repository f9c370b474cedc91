"""The ledger on PostgreSQL: the same tables as in SQLite (outbox, tickets, incidents), their
schema and its migrations, and every statement on them, behind `probe.tickets.ledger.Ledger`.
This is the store of a cluster of agents sharing one database; no other module runs SQL on
these tables. The schema's one list of migrations also creates the cluster's `agents` table,
whose statements are probe.cluster.members', and the daemon's state (check_state, group_state,
results, maintenance), whose statements are probe.cluster.pgstate's (one schema, one version for
an operator to read).

- Migrations (`MIGRATIONS`) are applied by `migrate` in one transaction that first locks the
  `schema_version` table (SHARE ROW EXCLUSIVE: migrators queue, readers do not wait), so that
  agents starting together apply each one exactly once: the others wait on the lock, then find
  the schema up to date. An agent that finds it up to date takes no lock and changes nothing.
  No advisory lock: they do not survive PgBouncer's transaction pooling. DDL is transactional
  in PostgreSQL, so a migration that fails leaves nothing half done.
- Times are `timestamptz` (an operator reads them in psql); the ledger's records carry them as
  seconds since the epoch, as SqliteLedger's do. When an action is next due is the database's
  clock (now(), and "in so many seconds" from it), told to each agent in its own clock by
  `heads()`: whichever agent delivers next compares it, and its clock may be minutes off the
  writer's. The other times (created, delivered, opened) are the writer's, for reading only.
- Facts and payloads are JSON kept as text, not jsonb: jsonb refuses NaN, NUL and lone
  surrogates, which a sick target's answer can put in a reason, and a decision must never fail
  to be written for the words of a reason.
- Each call takes a connection from the pool (autocommit); the calls that write more than one
  statement run them in a transaction. `record_transitions` runs in the caller's transaction,
  so that a decision and its actions are written together or not at all.

Designed for what comes next (issue 12, then the per-site votes of issue 13), built only for
what `Ledger` needs now. Incidents are keyed by their stable key and carry their group, so that
a decision taken under a lock on the group's row, with the votes behind it kept in tables of
their own (a check's vote per site, the snapshot behind each decision, referring to the
incident by key), writes here unchanged; `incidents_open` becomes unique (one open incident per
group, enforced by the database) in that step. The outbox is ordered per incident by its
identity column, so that a lease on an incident's stream (a table keyed by incident_key, with
its fencing token) keeps today's order of delivery.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from psycopg import AsyncConnection, OperationalError, errors
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from probe.engine import Transition
from probe.facts import Facts, Policy
from probe.tickets.ledger import (
    Action,
    Backlog,
    Failed,
    FenceRejected,
    Followup,
    Head,
    Heads,
    LedgerError,
    Row,
    Ticket,
    TicketState,
    Watched,
    watched_row,
)

Connection = AsyncConnection[TupleRow]
NO_FOLLOWUP = Followup()
Pool = AsyncConnectionPool[Connection]

# Each entry takes the schema from version i to i + 1. Never edit one that has shipped.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE incidents (
        key text PRIMARY KEY,
        grp text NOT NULL,
        opened_at timestamptz NOT NULL,
        resolved_at timestamptz,
        facts text NOT NULL
    );
    CREATE INDEX incidents_open ON incidents (grp) WHERE resolved_at IS NULL;

    CREATE TABLE outbox (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        incident_key text NOT NULL,
        action text NOT NULL,
        route text NOT NULL,
        created_at timestamptz NOT NULL,
        payload text NOT NULL,
        status text NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'delivered', 'failed')),
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at timestamptz NOT NULL,
        -- Set before a call that may create a ticket, cleared when the helpdesk answered
        -- that it did not: while set, the next attempt asks find() first.
        unknown_outcome boolean NOT NULL DEFAULT false,
        last_error text,
        delivered_at timestamptz
    );
    -- Only pending and failed actions are ever looked for; delivered ones are history.
    CREATE INDEX outbox_pending ON outbox (incident_key, id) WHERE status = 'pending';
    CREATE INDEX outbox_failed ON outbox (id) WHERE status = 'failed';
    CREATE INDEX outbox_incident ON outbox (incident_key, action);

    -- The helpdesk tickets of incidents: usually one, more when a human closed one and the
    -- policy opened a new one. `ticket_key` is what the helpdesk carries.
    CREATE TABLE tickets (
        ticket_key text PRIMARY KEY,
        incident_key text NOT NULL,
        route text NOT NULL,
        ref text NOT NULL,
        state text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'resolved', 'left')),
        opened_at timestamptz NOT NULL,
        escalated_at timestamptz,
        policy text NOT NULL DEFAULT '{}'
    );
    CREATE INDEX tickets_incident ON tickets (incident_key);
    CREATE INDEX tickets_ref ON tickets (ref);
    """,
    # The cluster's membership: one row per agent, kept by the agent itself. Every time is the
    # database's (now()), never an agent's. Its statements are in probe.cluster.members.
    """
    CREATE TABLE agents (
        name text PRIMARY KEY,
        site text NOT NULL,
        host text NOT NULL,
        version text NOT NULL,
        config_hash text NOT NULL,
        started_at timestamptz NOT NULL,
        heartbeat_at timestamptz NOT NULL,
        -- Still heartbeating, owning no checks: a stopping agent finishing what it holds.
        draining boolean NOT NULL DEFAULT false
    );
    -- No index beyond the key: a few rows, read whole, and an index on heartbeat_at would
    -- keep each heartbeat's update from being a HOT one (more bloat, once a second per agent).
    """,
    # The daemon's state, as probe.store keeps it in SQLite: check and group states (their
    # data as the engine saves it, JSON as text), the last results of each check in a ring of
    # `history` slots, and the maintenance windows set at run time. Its statements are in
    # probe.cluster.pgstate. A group's row is where its decisions will be taken under a lock.
    """
    CREATE TABLE check_state (name text PRIMARY KEY, data text NOT NULL);
    CREATE TABLE group_state (name text PRIMARY KEY, data text NOT NULL);
    CREATE TABLE results (
        check_name text NOT NULL,
        slot integer NOT NULL,          -- seq modulo the history kept
        seq bigint NOT NULL,            -- per check, counted by the database
        at timestamptz NOT NULL,
        state text NOT NULL,
        duration float8 NOT NULL,
        reason text NOT NULL,           -- JSON (a string): text refuses NUL
        evidence text NOT NULL,         -- JSON; '{}' for a success
        PRIMARY KEY (check_name, slot)
    );
    CREATE TABLE maintenance (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        data text NOT NULL,
        ends_at timestamptz NOT NULL
    );
    """,
    # Who decides for each incident group, and under which term (probe.cluster.claims). A
    # claim lives while its owner heartbeats; every write on a group's state, its incidents and
    # their actions carries the term's fence and is refused under another. One open incident
    # per group is the database's rule too, not only the engine's.
    """
    CREATE TABLE claims (
        grp text PRIMARY KEY,
        owner text,                     -- NULL: released, anyone may take it
        fence bigint NOT NULL
    );
    DROP INDEX incidents_open;
    CREATE UNIQUE INDEX incidents_open ON incidents (grp) WHERE resolved_at IS NULL;
    """,
    # Sites that vote (probe.cluster.votes): each site's vote on each check it runs, cast by
    # the agent of the site that runs it, with the site's streaks so that another agent of the
    # site goes on from them. `changed_at` moves when the vote or its reason changes: what the
    # deciding agents read. `sites`: when each site was last heard from (any agent's
    # heartbeat), so that a site whose agents are all gone is known silent, and for how long.
    """
    CREATE TABLE votes (
        check_name text NOT NULL,
        site text NOT NULL,
        value text NOT NULL,            -- failing | healthy | unknown
        since timestamptz NOT NULL,     -- when the site's vote became `value`
        reason text NOT NULL,           -- JSON (a string): what the site last saw failing
        agent text NOT NULL,            -- who cast it: fresh while that agent is live
        streak text NOT NULL,           -- JSON: the site's streaks (the engine's CheckState)
        changed_at timestamptz NOT NULL,
        PRIMARY KEY (check_name, site)
    );
    CREATE INDEX votes_changed ON votes (changed_at);
    CREATE TABLE sites (name text PRIMARY KEY, heard_at timestamptz NOT NULL);
    """,
    # The history (probe.history), as probe.store keeps it in SQLite: each check's results
    # per minute, hour and day (`res` in seconds, `t` the bucket's start in epoch seconds,
    # times in milliseconds), written by whoever ran the check and rolled up by any agent
    # (the same rows whoever does it); each check's downtime in incidents, written with the
    # transitions under the group's claim; when the helpdesk first said a ticket was taken.
    """
    CREATE TABLE history_checks (
        id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name text NOT NULL UNIQUE
    );
    CREATE TABLE history_minutes (
        check_id integer NOT NULL, t bigint NOT NULL,
        n integer NOT NULL, failed integer NOT NULL, unknown integer NOT NULL,
        covered bigint NOT NULL, na bigint NOT NULL, maintenance bigint NOT NULL,
        dsum bigint NOT NULL, dmax bigint NOT NULL,
        ph1 bigint, ph2 bigint, ph3 bigint, ph4 bigint, ph5 bigint,
        PRIMARY KEY (check_id, t)
    );
    CREATE TABLE history_hours (
        check_id integer NOT NULL, t bigint NOT NULL,
        n integer NOT NULL, failed integer NOT NULL, unknown integer NOT NULL,
        covered bigint NOT NULL, na bigint NOT NULL, maintenance bigint NOT NULL,
        dsum bigint NOT NULL, dmax bigint NOT NULL,
        ph1 bigint, ph2 bigint, ph3 bigint, ph4 bigint, ph5 bigint,
        p50 integer, p95 integer, p99 integer,
        PRIMARY KEY (check_id, t)
    );
    CREATE TABLE history_days (
        check_id integer NOT NULL, t bigint NOT NULL,
        n integer NOT NULL, failed integer NOT NULL, unknown integer NOT NULL,
        covered bigint NOT NULL, na bigint NOT NULL, maintenance bigint NOT NULL,
        dsum bigint NOT NULL, dmax bigint NOT NULL,
        ph1 bigint, ph2 bigint, ph3 bigint, ph4 bigint, ph5 bigint,
        p50 integer, p95 integer, p99 integer,
        PRIMARY KEY (check_id, t)
    );
    CREATE TABLE history_rolled (res integer PRIMARY KEY, upto bigint NOT NULL);
    CREATE TABLE downtime (
        incident_key text NOT NULL,
        check_name text NOT NULL,
        since float8 NOT NULL,
        until float8,
        PRIMARY KEY (incident_key, check_name)
    );
    CREATE INDEX downtime_check ON downtime (check_name, since);
    ALTER TABLE tickets ADD COLUMN acknowledged_at timestamptz;
    """,
]


class SchemaError(Exception):
    """The database's schema is newer than this probe knows."""


@dataclass
class Terms:
    """The groups an agent of a cluster decides for, each with the fence of its current term
    (probe.cluster.claims keeps it). `live` is False while the agent cannot tell it is still a
    member (its heartbeats fail): it then starts no delivery."""

    agent: str
    held: dict[str, int] = field(default_factory=dict)
    live: bool = False
    # Held still, being handed over: no new delivery starts for them.
    leaving: set[str] = field(default_factory=set)

    def delivering(self) -> list[str]:
        """The groups whose actions this agent delivers now."""
        return sorted(set(self.held) - self.leaving) if self.live else []


# The claim behind a write, locked FOR SHARE: a claim taken meanwhile (an UPDATE) waits for the
# write's transaction, and the write sees the claim as it is when it commits.
_CLAIM_OF: dict[str, str] = {
    "action": "SELECT c.grp, c.owner, c.fence FROM outbox o JOIN incidents i"
              " ON i.key = o.incident_key JOIN claims c ON c.grp = i.grp WHERE o.id = %s"
              " FOR SHARE OF c",
    "incident": "SELECT c.grp, c.owner, c.fence FROM incidents i JOIN claims c ON c.grp = i.grp"
                " WHERE i.key = %s FOR SHARE OF c",
    "ticket": "SELECT c.grp, c.owner, c.fence FROM tickets t JOIN incidents i"
              " ON i.key = t.incident_key JOIN claims c ON c.grp = i.grp"
              " WHERE t.ticket_key = %s FOR SHARE OF c",
}
By = Literal["action", "incident", "ticket"]


async def migrate(pool: Pool) -> int:
    """Bring the schema up to date; safe when several agents start at once. The version."""
    async with pool.connection() as conn:
        return await migrate_connection(conn)


async def migrate_connection(conn: Connection, migrations: Sequence[str] = MIGRATIONS) -> int:
    """`migrate` on one connection, with these migrations (the tests pass a release's next)."""
    # Two agents creating the table at once: one of them fails on the catalog's unique index
    # once the other commits, and then finds the table there on its second try.
    for attempt in range(3):
        try:
            async with conn.transaction():
                return await _migrate(conn, migrations)
        except (errors.UniqueViolation, errors.DuplicateTable):
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def _migrate(conn: Connection, migrations: Sequence[str]) -> int:
    # Up to date, as at nearly every start: read only, no lock taken, so that an agent whose
    # role may not change the schema starts all the same.
    if await _version(conn, migrations) == len(migrations):
        return len(migrations)
    await conn.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                       " one boolean PRIMARY KEY DEFAULT true CHECK (one),"
                       " version integer NOT NULL)")
    # SHARE ROW EXCLUSIVE conflicts with itself and not with readers: migrators queue here,
    # one at a time, and the next one finds what the first did.
    await conn.execute("LOCK TABLE schema_version IN SHARE ROW EXCLUSIVE MODE")
    version = await _version(conn, migrations)
    for number in range(version, len(migrations)):
        await conn.execute(migrations[number])  # several statements: no parameters
    await conn.execute("DELETE FROM schema_version")
    await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (len(migrations),))
    return len(migrations)


async def schema_version(pool: Pool) -> int:
    """The database's schema version (0: never migrated)."""
    async with connection(pool) as conn:
        return await _version(conn, MIGRATIONS)


async def _version(conn: Connection, migrations: Sequence[str]) -> int:
    found = await (await conn.execute("SELECT to_regclass('schema_version') IS NOT NULL")
                   ).fetchone()
    if not (found and found[0]):
        return 0
    found = await (await conn.execute("SELECT version FROM schema_version")).fetchone()
    version = int(found[0]) if found else 0
    if version > len(migrations):
        raise SchemaError(f"the database has schema version {version}, newer than this probe "
                          f"knows ({len(migrations)}): was it written by a newer release?")
    return version


async def open_pool(conninfo: str, *, min_size: int = 1, max_size: int = 4,
                    timeout: float = 10, migrated: bool = True) -> Pool:
    """A pool of autocommit connections to the database, opened, with the schema migrated
    (unless `migrated` is False: a reader that changes nothing). The caller closes it."""
    pool: Pool = AsyncConnectionPool(
        conninfo, min_size=min_size, max_size=max_size, timeout=timeout, open=False,
        # No server-side prepared statements: a pooler in transaction mode (PgBouncer before
        # 1.21) hands each transaction another server connection, which would not know them.
        kwargs={"autocommit": True, "prepare_threshold": None},
        # A connection the server dropped (a restart, a failover) is replaced at checkout
        # instead of failing the call that drew it.
        check=AsyncConnectionPool.check_connection,
    )
    await pool.open(wait=True, timeout=timeout)
    if not migrated:
        return pool
    try:
        await migrate(pool)
    except BaseException:
        await pool.close()
        raise
    return pool


@contextlib.asynccontextmanager
async def connection(pool: Pool) -> AsyncIterator[Connection]:
    """A connection from the pool; the database gone, restarting, read-only or out of reach
    (or the pool closed) is a LedgerError (the dispatcher pauses and tries again), a wrong
    statement stays what it is (a bug). Every call on the cluster's database goes through
    here, the ledger's and the membership's alike."""
    try:
        async with pool.connection() as conn:
            yield conn
    except (OperationalError, PoolTimeout, errors.ReadOnlySqlTransaction) as err:
        raise LedgerError(f"the cluster's database: {err}") from err


# A time column read as seconds since the epoch, as SqliteLedger's records carry times (they are
# written with to_timestamp).
def _epoch(column: str) -> str:
    return f"extract(epoch FROM {column})::float8"


class PgLedger:
    """The ledger in PostgreSQL, through a pool of autocommit connections (`open_pool`).

    In a cluster (`terms` given), the ledger is one agent's view: it delivers and watches the
    incidents of the groups it holds, and every write on an incident, its actions or its
    tickets is made under the claim on its group, with the agent's fence (FenceRejected
    otherwise)."""

    def __init__(self, pool: Pool, terms: Terms | None = None) -> None:
        self._pool = pool
        self._terms = terms

    def _connection(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        return connection(self._pool)

    async def _rows(self, query: str, params: tuple[Any, ...] = ()) -> list[TupleRow]:
        async with self._connection() as conn:
            return await (await conn.execute(query, params)).fetchall()

    async def _write(self, query: str, params: tuple[Any, ...], *, by: By, of: object) -> int:
        async with self._guarded(by, of) as conn:
            return (await conn.execute(query, params)).rowcount

    @contextlib.asynccontextmanager
    async def _guarded(self, by: By, of: object) -> AsyncIterator[Connection]:
        """A connection in a transaction that holds the claim on the group of the action,
        incident or ticket `of` under this agent's fence; outside a cluster, a transaction."""
        async with self._connection() as conn, conn.transaction():
            if self._terms is not None:
                await _check_claim(conn, self._terms, by, of)
            yield conn

    # --- delivery ------------------------------------------------------------------------------

    async def heads(self) -> Heads:
        # One statement, so that the heads and the count are of the same moment. In a
        # cluster, the pending actions of the groups this agent holds.
        mine, params = "", cast(tuple[Any, ...], ())
        if self._terms is not None:
            if not self._terms.delivering():
                return Heads([], 0)
            mine = (" AND incident_key IN (SELECT key FROM incidents"
                    "                      WHERE grp = ANY(%s))")
            params = (self._terms.delivering(),)
        rows = await self._rows(
            "WITH p AS (SELECT id, incident_key, route, next_attempt_at FROM outbox"
            "           WHERE status = 'pending'" + mine + ")"
            " SELECT h.id, h.incident_key, h.route, " + _epoch("h.next_attempt_at - now()") +
            ", (SELECT count(*) FROM p) FROM"
            " (SELECT DISTINCT ON (incident_key) * FROM p ORDER BY incident_key, id) h"
            " ORDER BY h.incident_key", params)
        # When each is due, by the database's clock, told in this agent's.
        now = time.time()
        return Heads([Head(i, key, route, now + due_in) for i, key, route, due_in, _ in rows],
                     rows[0][4] if rows else 0)

    async def load(self, action_id: int) -> Row | None:
        found = await self._rows(
            "SELECT id, incident_key, action, route, " + _epoch("created_at") + ", payload,"
            " attempts, unknown_outcome FROM outbox WHERE id = %s AND status = 'pending'",
            (action_id,))
        return Row(*found[0]) if found else None

    async def count_attempt(self, action_id: int, *, deadline: float) -> None:
        await self._write("UPDATE outbox SET attempts = attempts + 1, unknown_outcome = true,"
                          " next_attempt_at = " + _FROM_NOW + " WHERE id = %s",
                          (deadline - time.time(), action_id), by="action", of=action_id)

    async def refused(self, action_id: int) -> None:
        await self._write("UPDATE outbox SET unknown_outcome = false WHERE id = %s",
                          (action_id,), by="action", of=action_id)

    async def postpone(self, action_id: int, *, counted: int, until: float, error: str) -> None:
        await self._write("UPDATE outbox SET attempts = attempts + %s, next_attempt_at ="
                          " CASE WHEN unknown_outcome THEN greatest(next_attempt_at, "
                          + _FROM_NOW + ") ELSE " + _FROM_NOW + " END, last_error = %s"
                          " WHERE id = %s", (counted, until - time.time(), until - time.time(),
                                             error, action_id),
                          by="action", of=action_id)

    async def give_up(self, action_id: int, *, counted: int, error: str) -> None:
        await self._write("UPDATE outbox SET status = 'failed', last_error = %s,"
                          " attempts = attempts + %s WHERE id = %s", (error, counted, action_id),
                          by="action", of=action_id)

    async def delivered(self, action_id: int) -> None:
        await self._write(_DELIVERED, (time.time(), action_id), by="action", of=action_id)

    async def opened(self, action_id: int, ticket_key: str, incident_key: str, route: str,
                     ref: str, policy: Policy | None) -> None:
        policy_json = json.dumps(policy.to_json() if policy is not None else {})
        async with self._guarded("action", action_id) as conn:
            await conn.execute("INSERT INTO tickets (ticket_key, incident_key, route, ref,"
                               " opened_at, policy) VALUES (%s, %s, %s, %s, to_timestamp(%s), %s)"
                               " ON CONFLICT (ticket_key) DO NOTHING",
                               (ticket_key, incident_key, route, ref, time.time(), policy_json))
            await conn.execute(_DELIVERED, (time.time(), action_id))

    async def enqueue(self, incident_key: str, action: Action, route: str, facts: Facts,
                      followup: Followup = NO_FOLLOWUP) -> None:
        async with self._guarded("incident", incident_key) as conn:
            await _enqueue(conn, incident_key, action, route, facts, followup)

    # --- tickets -------------------------------------------------------------------------------

    async def ticket_ref(self, ticket_key: str) -> str | None:
        found = await self._rows("SELECT ref FROM tickets WHERE ticket_key = %s", (ticket_key,))
        return str(found[0][0]) if found else None

    async def open_tickets(self, incident_key: str) -> list[Ticket]:
        return [Ticket(*row) for row in await self._rows(
            "SELECT ticket_key, route, ref FROM tickets WHERE incident_key = %s"
            " AND state = 'open' ORDER BY opened_at, ticket_key", (incident_key,))]

    async def failed_open(self, incident_key: str) -> str | None:
        found = await self._rows("SELECT last_error FROM outbox WHERE incident_key = %s AND"
                                 " action = 'open' AND status = 'failed' ORDER BY id LIMIT 1",
                                 (incident_key,))
        return str(found[0][0]) if found else None

    async def set_state(self, ticket_key: str, state: TicketState) -> None:
        await self._write("UPDATE tickets SET state = %s WHERE ticket_key = %s",
                          (state, ticket_key), by="ticket", of=ticket_key)

    async def acknowledged(self, ticket_key: str, at: float) -> None:
        await self._write("UPDATE tickets SET acknowledged_at = to_timestamp(%s)"
                          " WHERE ticket_key = %s AND acknowledged_at IS NULL",
                          (at, ticket_key), by="ticket", of=ticket_key)

    async def knows(self, ticket_key: str, ref: str) -> bool:
        return bool(await self._rows("SELECT 1 FROM tickets WHERE ticket_key = %s OR ref = %s"
                                     " LIMIT 1", (ticket_key, ref)))

    async def adopt(self, ticket_key: str, incident_key: str, route: str, ref: str) -> None:
        # Taken up whole, as a ticket of its own opened now: whatever was known of one by that
        # key (its state, escalation, policy) is replaced.
        await self._write(
            "INSERT INTO tickets (ticket_key, incident_key, route, ref, opened_at)"
            " VALUES (%s, %s, %s, %s, to_timestamp(%s)) ON CONFLICT (ticket_key) DO UPDATE SET"
            " incident_key = excluded.incident_key, route = excluded.route,"
            " ref = excluded.ref, opened_at = excluded.opened_at, state = 'open',"
            " escalated_at = NULL, policy = '{}'",
            (ticket_key, incident_key, route, ref, time.time()), by="incident", of=incident_key)

    async def pending(self, incident_key: str, actions: Collection[Action] | None = None,
                      ) -> bool:
        if actions is None:
            return bool(await self._rows("SELECT 1 FROM outbox WHERE incident_key = %s"
                                         " AND status = 'pending' LIMIT 1", (incident_key,)))
        return bool(await self._rows("SELECT 1 FROM outbox WHERE incident_key = %s"
                                     " AND status = 'pending' AND action = ANY(%s) LIMIT 1",
                                     (incident_key, sorted(actions))))

    async def watched(self) -> list[Watched]:
        rows = await self._rows(
            "SELECT t.ticket_key, t.incident_key, t.route, t.ref, " + _epoch("t.opened_at") +
            ", " + _epoch("t.escalated_at") + ", t.policy, i.facts FROM tickets t"
            " JOIN incidents i ON i.key = t.incident_key"
            " WHERE t.state = 'open' AND i.resolved_at IS NULL"
            + ("" if self._terms is None else " AND i.grp = ANY(%s)") +
            " ORDER BY t.opened_at, t.ticket_key",
            () if self._terms is None else (self._terms.delivering(),))
        return [watched_row(*row) for row in rows]

    async def replace(self, ticket_key: str, incident_key: str, route: str, ref: str,
                      facts: Facts) -> None:
        async with self._guarded("incident", incident_key) as conn:
            # The ticket's row first: a second replace of it waits here for this one.
            await conn.execute("UPDATE tickets SET state = 'left' WHERE ticket_key = %s",
                               (ticket_key,))
            found = await (await conn.execute("SELECT count(*) FROM tickets"
                                              " WHERE incident_key = %s", (incident_key,))
                           ).fetchone()
            count = found[0] if found else 0
            await _enqueue(conn, incident_key, "new-ticket", route, facts,
                           Followup(ticket_key=f"{incident_key}+{count}", follows=ref))

    async def escalate(self, ticket_key: str, incident_key: str, route: str, facts: Facts,
                       followup: Followup) -> None:
        async with self._guarded("incident", incident_key) as conn:
            await conn.execute("UPDATE tickets SET escalated_at = to_timestamp(%s)"
                               " WHERE ticket_key = %s", (time.time(), ticket_key))
            await _enqueue(conn, incident_key, "escalate", route, facts, followup)

    # --- the operator's view -------------------------------------------------------------------

    async def failed(self, *, newest_first: bool = False, limit: int | None = None,
                     ) -> list[Failed]:
        order = "DESC" if newest_first else "ASC"
        rows = await self._rows(
            "SELECT id, incident_key, action, route, attempts, last_error FROM outbox"
            f" WHERE status = 'failed' ORDER BY id {order} LIMIT %s", (limit,))
        return [Failed(*row) for row in rows]

    async def retry_failed(self) -> int:
        # The operator's command, from any agent: the actions go back to their groups' owners.
        async with self._connection() as conn:
            return (await conn.execute("UPDATE outbox SET status = 'pending',"
                                       " next_attempt_at = to_timestamp(0)"
                                       " WHERE status = 'failed'")).rowcount

    async def backlog(self) -> Backlog:
        (count, oldest, attempts), = await self._rows(
            "SELECT count(*), " + _epoch("min(created_at)") + ", max(attempts) FROM outbox"
            " WHERE status = 'pending'")
        return Backlog(count, oldest, attempts or 0)

    # --- decisions -----------------------------------------------------------------------------

    async def record(self, transitions: Iterable[tuple[Transition, str | None]]) -> None:
        """The engine's transitions in a transaction of their own (`record_transitions` writes
        them in the caller's, with the decision's other changes)."""
        async with self._connection() as conn, conn.transaction():
            await record_transitions(conn, transitions)


async def record_transitions(conn: Connection,
                             transitions: Iterable[tuple[Transition, str | None]]) -> None:
    """The engine's transitions, in the caller's transaction: the incident opened or resolved,
    and each action queued on the route its ticket opens on (notes and the resolve go where the
    open went, whatever the configuration says by then; None: no ticket). As
    probe.tickets.ledger.record_transitions does in SQLite."""
    for transition, route in transitions:
        facts = json.dumps(transition.facts.to_json(), default=str)
        if transition.kind == "open":
            await conn.execute("INSERT INTO incidents (key, grp, opened_at, facts)"
                               " VALUES (%s, %s, to_timestamp(%s), %s)"
                               " ON CONFLICT (key) DO NOTHING",
                               (transition.key, transition.group, transition.at, facts))
        elif transition.kind == "resolve":
            await conn.execute("UPDATE incidents SET resolved_at = to_timestamp(%s),"
                               " facts = %s WHERE key = %s",
                               (transition.at, facts, transition.key))
        if transition.kind != "open":
            found = await (await conn.execute(
                "SELECT route FROM outbox WHERE incident_key = %s AND action = 'open'"
                " ORDER BY id LIMIT 1", (transition.key,))).fetchone()
            route = found[0] if found else None
        if route is not None:
            await conn.execute("INSERT INTO outbox (incident_key, action, route, created_at,"
                               " payload, next_attempt_at) VALUES (%s, %s, %s, to_timestamp(%s),"
                               " %s, now())",
                               (transition.key, transition.kind, route, transition.at, facts))


async def _check_claim(conn: Connection, terms: Terms, by: By, of: object) -> None:
    found = await (await conn.execute(_CLAIM_OF[by], (of,))).fetchone()
    if found is None:
        raise FenceRejected([f"the group of {by} {of}"])
    group, owner, fence = found
    if owner != terms.agent or fence != terms.held.get(group):
        raise FenceRejected([group])


# An agent's "in so many seconds", as a time of the database's clock: `next_attempt_at` is
# compared by whichever agent delivers next, whose clock may differ from the writer's.
_FROM_NOW = "now() + make_interval(secs => %s)"

_DELIVERED = ("UPDATE outbox SET status = 'delivered', delivered_at = to_timestamp(%s)"
              " WHERE id = %s")


async def _enqueue(conn: Connection, incident_key: str, action: Action, route: str,
                   facts: Facts, followup: Followup) -> None:
    now = time.time()
    payload = {**facts.to_json(), **followup.to_json()}
    await conn.execute("INSERT INTO outbox (incident_key, action, route, created_at, payload,"
                       " next_attempt_at) VALUES (%s, %s, %s, to_timestamp(%s), %s, now())",
                       (incident_key, action, route, now, json.dumps(payload, default=str)))
