"""Which agent decides for each incident group: the `claims` table (a migration of
probe.tickets.pgledger) and every statement on it.

A claim is `(group, owner, fence)`. It lives as long as its owner heartbeats (probe.cluster.
members): the heartbeat renews every claim of the agent at once, so holding a thousand groups
costs no statement more than holding one. An agent takes a group that is free, its own from an
earlier life, or held by an agent that is no longer live — by the database's clock — and each
taking is a new term with the next fence. Every write on the group (its state, its incidents,
their actions and tickets) is made under a lock on the claim's row and only with the current
fence (pgstate and pgledger check it): an agent paused past its lease, which a successor has
taken over from, wakes up to find its writes refused instead of overwriting the successor's
(the rules of probe.cluster.lease, with the lease's end being the heartbeat's).

Taking a group reads its state in the same transaction, so that the new owner goes on from
where the last write left it: failure streaks, the open incident, its notes.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from probe.tickets.pgledger import Pool, Terms, connection

_TAKE = """
INSERT INTO claims AS c (grp, owner, fence)
SELECT g, %(agent)s, 1 FROM unnest(%(groups)s::text[]) AS g ORDER BY g
ON CONFLICT (grp) DO UPDATE SET owner = excluded.owner, fence = c.fence + 1
WHERE c.owner IS NULL OR c.owner = excluded.owner
   OR NOT EXISTS (SELECT FROM agents a WHERE a.name = c.owner
                  AND a.heartbeat_at > now() - make_interval(secs => %(agent_ttl)s))
RETURNING grp, fence
"""

_RELEASE = """
UPDATE claims AS c SET owner = NULL
FROM unnest(%(groups)s::text[], %(fences)s::bigint[]) AS h(grp, fence)
WHERE c.grp = h.grp AND c.owner = %(agent)s AND c.fence = h.fence
"""


@dataclass(frozen=True, slots=True)
class Taken:
    """Groups just taken, with the states their last owner wrote (absent: none yet)."""

    groups: frozenset[str]
    checks: dict[str, dict[str, Any]]
    group_states: dict[str, dict[str, Any]]
    last_results: dict[str, float]  # check → the time of its latest result recorded


class Claims:
    """One agent's claims, kept in `terms` (which the agent's ledger and state read)."""

    def __init__(self, pool: Pool, terms: Terms, agent_ttl: float) -> None:
        self._pool = pool
        self.terms = terms
        self._ttl = float(agent_ttl)
        self._releasing: dict[str, int] = {}  # given up, the database not told yet

    async def take(self, groups: Collection[str], members: Mapping[str, Collection[str]],
                   ) -> Taken:
        """Take those of `groups` that nobody live holds, and read their states (`members`:
        each group's checks). Groups held by a live agent stay where they are: it gives them
        up when it sees this agent join, and a later call takes them then."""
        wanted = sorted(set(groups) - set(self.terms.held))
        if not wanted:
            return Taken(frozenset(), {}, {}, {})
        async with connection(self._pool) as conn, conn.transaction():
            rows = await (await conn.execute(_TAKE, {
                "agent": self.terms.agent, "groups": wanted, "agent_ttl": self._ttl})).fetchall()
            taken = {str(group): int(fence) for group, fence in rows}
            if not taken:  # all held by live agents still: they give them up soon
                return Taken(frozenset(), {}, {}, {})
            names = sorted(n for g in taken for n in members.get(g, ()))
            group_rows = await (await conn.execute(
                "SELECT name, data FROM group_state WHERE name = ANY(%s)", (sorted(taken),))
            ).fetchall()
            check_rows = await (await conn.execute(
                "SELECT name, data FROM check_state WHERE name = ANY(%s)", (names,))
            ).fetchall()
            last = await (await conn.execute(
                "SELECT check_name, extract(epoch FROM max(at))::float8 FROM results"
                " WHERE check_name = ANY(%s) GROUP BY check_name", (names,))).fetchall()
        self.terms.held.update(taken)
        for group in taken:
            self._releasing.pop(group, None)
        return Taken(frozenset(taken), {n: json.loads(d) for n, d in check_rows},
                     {n: json.loads(d) for n, d in group_rows}, {n: at for n, at in last})

    async def release(self, groups: Collection[str]) -> None:
        """Give up these groups at once (a stopping agent, or one that saw another join):
        whoever owns them now takes them without waiting. They are forgotten here at once;
        should the database not hear of it, `settle` tells it again (a claim runs out only
        when its owner stops heartbeating)."""
        for group in groups:
            if group in self.terms.held:
                self._releasing[group] = self.terms.held.pop(group)
            self.terms.leaving.discard(group)
        await self.settle()

    async def settle(self) -> None:
        """Tell the database of the releases it has not heard of yet."""
        if not self._releasing:
            return
        held = dict(self._releasing)
        async with connection(self._pool) as conn:
            await conn.execute(_RELEASE, {"agent": self.terms.agent, "groups": list(held),
                                          "fences": list(held.values())})
        for group, fence in held.items():
            if self._releasing.get(group) == fence:
                del self._releasing[group]

    async def strays(self) -> int:
        """Release the claims the database gives this agent that it does not hold: after the
        database lost its last commits (a crash with asynchronous commit, a failover to a
        replica behind), a claim given up may be back under this agent's name, and no other
        agent could take it while this one lives. How many there were."""
        held = sorted(self.terms.held)
        async with connection(self._pool) as conn:
            done = await conn.execute("UPDATE claims SET owner = NULL WHERE owner = %s"
                                      " AND NOT (grp = ANY(%s))", (self.terms.agent, held))
        self._releasing.clear()  # any release not yet told is told now
        return done.rowcount

    def lost(self, groups: Collection[str]) -> None:
        """Groups whose write was refused: another agent holds them under a newer fence."""
        for group in groups:
            self.terms.held.pop(group, None)
            self.terms.leaving.discard(group)


async def held_by(pool: Pool) -> dict[str, int]:
    """How many groups each agent holds the claim of, for `probe cluster status`."""
    async with connection(pool) as conn:
        rows = await (await conn.execute(
            "SELECT owner, count(*) FROM claims WHERE owner IS NOT NULL GROUP BY owner")
        ).fetchall()
    return {str(owner): int(count) for owner, count in rows}


async def owners(pool: Pool) -> dict[str, str]:
    """Each claimed group's holder, for the status page."""
    async with connection(pool) as conn:
        rows = await (await conn.execute(
            "SELECT grp, owner FROM claims WHERE owner IS NOT NULL")).fetchall()
    return {str(group): str(owner) for group, owner in rows}
