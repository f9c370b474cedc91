"""The cluster's membership in the database: the `agents` table (its schema is a migration of
probe.tickets.pgledger) and every statement on it. No other module runs SQL on that table.

An agent joins (its row, taken over whole on a restart), heartbeats once a second, and leaves
when it stops (its row deleted, so that its checks move at once instead of after `agent_ttl`).
Every time is the database's clock (now()): no call takes a time from the agent, so an agent
whose clock is off by minutes changes nothing. An agent is live while
`heartbeat_at > now() - agent_ttl`, computed by the database — the boundary of
probe.cluster.ownership.live: an agent silent for exactly `agent_ttl` has left.

A heartbeat is one statement: it stamps the agent's row (and its site's: the `sites` table says
when each site was last heard from) and returns the live agents of every site, their
configuration hashes, how long each site has been silent and the database's now, from which the
caller computes the checks it owns (`ownership.owned(checks, membership.owners)`) and sees
whether the agents read the same configuration. A database that refuses is a
probe.tickets.ledger.LedgerError, as from the ledger on the same pool: the caller knows one
error for the one database.
"""

from __future__ import annotations

from collections.abc import Iterable
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
    site: str = ""


@dataclass(frozen=True, slots=True)
class Membership:
    """What a heartbeat returns: the database's now, and the live agents of every site (the
    heartbeating agent among them, sorted by name). `joined` is False when the agent's row was
    not there to stamp (deleted by someone else, or never joined): the agent is then no member,
    owns nothing, and should join again. `heard`: each site ever heard from → when it last was
    (the database's clock)."""

    agent: str
    now: float
    members: tuple[Member, ...]
    joined: bool = True
    windows: str = ""  # changes whenever a maintenance window is set or ended
    site: str = ""  # the heartbeating agent's
    heard: tuple[tuple[str, float], ...] = ()

    @property
    def live(self) -> frozenset[str]:
        """The live agents of this agent's site."""
        return frozenset(m.name for m in self.members if m.site == self.site)

    @property
    def owners(self) -> frozenset[str]:
        """The live agents of this agent's site that take checks: a draining agent takes
        none."""
        return self.owners_in(self.site)

    def owners_in(self, site: str) -> frozenset[str]:
        return frozenset(m.name for m in self.members if m.site == site and not m.draining)

    @property
    def everywhere(self) -> frozenset[str]:
        """The live agents of every site that take work: those that decide for the groups when
        sites vote."""
        return frozenset(m.name for m in self.members if not m.draining)

    @property
    def agents_live(self) -> frozenset[str]:
        """Every live agent, of every site, draining or not: whose votes are fresh."""
        return frozenset(m.name for m in self.members)

    def silent(self, sites: Iterable[str]) -> dict[str, float]:
        """Each of `sites` with no live agent → how long it has been silent. A site never heard
        from has been silent since the first site was: as long as the cluster has been up, so
        that a cluster brought up one site at a time raises no alarm for the sites still to
        come unless they take longer than `silent_after`."""
        speaking = {m.site for m in self.members}
        heard = dict(self.heard)
        first = min(heard.values(), default=self.now)
        return {site: self.now - heard.get(site, first) for site in sites
                if site not in speaking}

    @property
    def heartbeats(self) -> dict[str, float]:
        """name → last heartbeat, as probe.cluster.ownership.live takes them."""
        return {m.name: m.heartbeat_at for m in self.members}

    @property
    def config_hashes(self) -> dict[str, str]:
        return {m.name: m.config_hash for m in self.members}

    @property
    def disagreeing(self) -> list[str]:
        """The live agents whose configuration hash differs from this agent's."""
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
# The `sites` rows are read as they were before the statement: the agent's own site shows its
# previous heartbeat, which is as good (the site is live: this agent is).
_HEARTBEAT = (
    "WITH me AS (UPDATE agents SET heartbeat_at = now(), config_hash = %(config_hash)s"
    "            WHERE name = %(agent)s"
    "            RETURNING name, site, config_hash, heartbeat_at, draining),"
    " heard AS (INSERT INTO sites (name, heard_at) SELECT site, now() FROM me"
    "           ON CONFLICT (name) DO UPDATE SET heard_at = excluded.heard_at)"
    " SELECT 'me', name, site, config_hash, " + _epoch("heartbeat_at") + ", draining, "
    + _epoch("now()") + ", " + _WINDOWS + " FROM me"
    " UNION ALL"
    " SELECT 'agent', a.name, a.site, a.config_hash, " + _epoch("a.heartbeat_at") + ", "
    "a.draining, " + _epoch("now()") + ", NULL FROM agents a"
    " WHERE a.name <> %(agent)s AND a." + _LIVE + " AND EXISTS (SELECT FROM me)"
    " UNION ALL"
    " SELECT 'site', NULL, s.name, NULL, " + _epoch("s.heard_at") + ", NULL, "
    + _epoch("now()") + ", NULL FROM sites s WHERE EXISTS (SELECT FROM me)"
    " UNION ALL"
    " SELECT 'none', NULL, NULL, NULL, NULL, NULL, " + _epoch("now()") + ", " + _WINDOWS +
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
        now = float(rows[0][6])
        windows = next(str(row[7]) for row in rows if row[7] is not None)
        members = sorted((Member(name, hashed, at, draining, site)
                          for kind, name, site, hashed, at, draining, _, _ in rows
                          if kind in ("me", "agent")), key=lambda m: m.name)
        own = next((str(row[2]) for row in rows if row[0] == "me"), "")
        heard = tuple(sorted((str(row[2]), float(row[4])) for row in rows if row[0] == "site"))
        return Membership(agent, now, tuple(members), joined=bool(members), windows=windows,
                          site=own, heard=heard)

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

    async def heard(self) -> tuple[tuple[tuple[str, float], ...], float]:
        """When each site was last heard from, and the database's now (`Membership.heard`)."""
        async with connection(self._pool) as conn:
            rows = await (await conn.execute(
                "SELECT name, " + _epoch("heard_at") + ", " + _epoch("now()") + " FROM sites"
                " UNION ALL SELECT NULL, NULL, " + _epoch("now()") + " ORDER BY 1")).fetchall()
        now = float(rows[-1][2])
        return tuple((str(n), float(at)) for n, at, _ in rows if n is not None), now

    async def membership(self) -> Membership:
        """Every live agent and every site's silence, as an outsider reads them (`probe
        cluster votes`): no heartbeat of its own."""
        live = [Member(a.name, a.config_hash, a.heartbeat_at, a.draining, a.site)
                for a in await self.agents() if a.live]
        heard, now = await self.heard()
        return Membership("", now, tuple(live), heard=heard)

