"""The cluster's membership in the database: the `agents` table (its schema is a migration of
probe.tickets.pgledger) and every statement on it. No other module runs SQL on that table.

An agent joins (its row, taken over whole on a restart), heartbeats once a second, and leaves
when it stops (its row deleted, so that its checks move at once instead of after `agent_ttl`).
Every time is the database's clock (now()): no call takes a time from the agent, so an agent
whose clock is off by minutes changes nothing. An agent is live while
`heartbeat_at > now() - agent_ttl`, computed by the database — the boundary of
probe.cluster.ownership.live: an agent silent for exactly `agent_ttl` has left.

A heartbeat is one statement: it stamps the agent's row and returns its site's live agents,
their configuration hashes and the database's now, from which the caller computes the checks it
owns (`ownership.owned(checks, membership.owners)`) and sees whether the site's agents read the
same configuration. A database that refuses is a probe.tickets.ledger.LedgerError, as from the
ledger on the same pool: the caller knows one error for the one database.
"""

from __future__ import annotations

from dataclasses import dataclass

from probe.tickets.pgledger import Pool, connection


@dataclass(frozen=True, slots=True)
class Member:
    """A live agent of the site, as a heartbeat sees it; `heartbeat_at` is the database's time,
    in seconds since the epoch."""

    name: str
    config_hash: str
    heartbeat_at: float
    draining: bool


@dataclass(frozen=True, slots=True)
class Membership:
    """What a heartbeat returns: the database's now, and the live agents of the heartbeating
    agent's site (itself among them, sorted by name). `joined` is False when the agent's row was
    not there to stamp (deleted by someone else, or never joined): the agent is then no member,
    owns nothing, and should join again."""

    agent: str
    now: float
    members: tuple[Member, ...]
    joined: bool = True
    windows: str = ""  # changes whenever a maintenance window is set or ended

    @property
    def live(self) -> frozenset[str]:
        return frozenset(m.name for m in self.members)

    @property
    def owners(self) -> frozenset[str]:
        """The live agents that take checks: a draining agent takes none."""
        return frozenset(m.name for m in self.members if not m.draining)

    @property
    def heartbeats(self) -> dict[str, float]:
        """name → last heartbeat, as probe.cluster.ownership.live takes them."""
        return {m.name: m.heartbeat_at for m in self.members}

    @property
    def config_hashes(self) -> dict[str, str]:
        return {m.name: m.config_hash for m in self.members}

    @property
    def disagreeing(self) -> list[str]:
        """The live agents of the site whose configuration hash differs from this agent's."""
        own = self.config_hashes.get(self.agent)
        return sorted(m.name for m in self.members if m.config_hash != own)


@dataclass(frozen=True, slots=True)
class Agent:
    """An agent's row, for `probe cluster status`: times are the database's, in seconds since
    the epoch, `heartbeat_age` is the database's now minus the last heartbeat, and `live` is
    the heartbeat's own test of liveness."""

    name: str
    site: str
    host: str
    version: str
    config_hash: str
    started_at: float
    heartbeat_at: float
    heartbeat_age: float
    draining: bool
    live: bool


def _epoch(expression: str) -> str:
    return f"extract(epoch FROM {expression})::float8"


# Liveness, in one place for every statement: strictly younger than the ttl, as ownership.live.
_LIVE = "heartbeat_at > now() - make_interval(secs => %(agent_ttl)s)"


# One statement. The UPDATE's own row comes from RETURNING: the outer SELECT reads the table as
# it was before the statement, so it would see the agent's previous heartbeat. The last branch
# gives the database's now when the agent's row is gone (no row to return otherwise).
# The maintenance windows' version rides along: ids only grow, so (greatest id, count) changes
# whenever a window is set or ended, and an agent reads the windows only then.
_WINDOWS = "(SELECT coalesce(max(id), 0) || ':' || count(*) FROM maintenance)"
_HEARTBEAT = (
    "WITH me AS (UPDATE agents SET heartbeat_at = now(), config_hash = %(config_hash)s"
    "            WHERE name = %(agent)s"
    "            RETURNING name, site, config_hash, heartbeat_at, draining)"
    " SELECT name, config_hash, " + _epoch("heartbeat_at") + ", draining, "
    + _epoch("now()") + ", " + _WINDOWS + " FROM me"
    " UNION ALL"
    " SELECT a.name, a.config_hash, " + _epoch("a.heartbeat_at") + ", a.draining, "
    + _epoch("now()") + ", NULL FROM agents a JOIN me ON a.site = me.site"
    " AND a.name <> me.name WHERE a." + _LIVE +
    " UNION ALL"
    " SELECT NULL, NULL, NULL, NULL, " + _epoch("now()") + ", " + _WINDOWS +
    " WHERE NOT EXISTS (SELECT FROM me)"
)


class Members:
    """The `agents` table, through the cluster's pool (probe.tickets.pgledger.open_pool, which
    migrates the schema), for a cluster whose agents leave after `agent_ttl` seconds of
    silence."""

    def __init__(self, pool: Pool, agent_ttl: float) -> None:
        if agent_ttl <= 0:
            raise ValueError(f"agent_ttl must be positive, not {agent_ttl}")
        self._pool = pool
        self._ttl = float(agent_ttl)

    async def join(self, agent: str, site: str, host: str, version: str,
                   config_hash: str) -> None:
        """The agent's row, new or taken over whole: a restarted agent is the same member (its
        name is its identity), started now, not draining, heard from now."""
        async with connection(self._pool) as conn:
            await conn.execute(
                "INSERT INTO agents (name, site, host, version, config_hash, started_at,"
                " heartbeat_at, draining) VALUES (%s, %s, %s, %s, %s, now(), now(), false)"
                " ON CONFLICT (name) DO UPDATE SET site = excluded.site, host = excluded.host,"
                " version = excluded.version, config_hash = excluded.config_hash,"
                " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,"
                " draining = false",
                (agent, site, host, version, config_hash))

    async def heartbeat(self, agent: str, config_hash: str) -> Membership:
        """Stamp the agent's row with the database's now (and its configuration hash, which a
        reload may have changed); its site's live agents, in one round trip."""
        async with connection(self._pool) as conn:
            rows = await (await conn.execute(
                _HEARTBEAT, {"agent": agent, "config_hash": config_hash,
                             "agent_ttl": self._ttl})).fetchall()
        now = float(rows[0][4])
        windows = next(str(row[5]) for row in rows if row[5] is not None)
        members = sorted((Member(name, config_hash_, heartbeat_at, draining)
                          for name, config_hash_, heartbeat_at, draining, _, _ in rows
                          if name is not None), key=lambda m: m.name)
        return Membership(agent, now, tuple(members), joined=bool(members), windows=windows)

    async def drain(self, agent: str) -> bool:
        """Mark the agent draining: it stays a member, owning no checks. False: no such agent."""
        async with connection(self._pool) as conn:
            return (await conn.execute("UPDATE agents SET draining = true WHERE name = %s",
                                       (agent,))).rowcount == 1

    async def leave(self, agent: str) -> None:
        """The stopping agent's row deleted: the others stop counting it at their next
        heartbeat, without waiting for `agent_ttl`."""
        async with connection(self._pool) as conn:
            await conn.execute("DELETE FROM agents WHERE name = %s", (agent,))

    async def agents(self) -> list[Agent]:
        """Every agent's row, live or not, by site and name, with its heartbeat's age by the
        database's clock."""
        async with connection(self._pool) as conn:
            rows = await (await conn.execute(
                "SELECT name, site, host, version, config_hash, " + _epoch("started_at") + ", "
                + _epoch("heartbeat_at") + ", " + _epoch("now() - heartbeat_at") + ", draining, "
                + _LIVE + " FROM agents ORDER BY site, name", {"agent_ttl": self._ttl})
            ).fetchall()
        return [Agent(*row) for row in rows]
