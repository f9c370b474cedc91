"""Sites that vote: each site's agents turn their results into the site's vote on each check,
and the agent that decides for a group turns the sites' votes into verdicts.

- **Casting** (`Voter`). In each site, the agent that runs a check (rendezvous among the site's
  live agents, as for the groups of issue 12) keeps the check's streaks as probe alone would
  (thresholds, flapping; `unknown` counts neither way) and votes: `failing` once they say the
  check is failing, `healthy` once they say it has recovered, `unknown` while it cannot run the
  check; in between (a failure below the threshold) the vote stays what it was. A child's
  failing vote waits until its parents, run in the same site, have a result since the child
  began to fail, as probe alone waits before ticketing a child. A vote is written when it
  changes — its value, its reason, its agent — not on each result, with the site's streaks so
  that another agent of the site goes on from them.
- **Counting** (`Tally`). The agent that holds a group's claim reads the votes on its checks
  when they change (a notification, or its periodic read) and applies the rule of
  probe.cluster.quorum. A vote is fresh while the agent that cast it is live.
- The statements on the `votes` table (a migration of probe.tickets.pgledger) are here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from checks.base import State
from probe.cluster.members import Membership
from probe.cluster.quorum import Verdict, Vote, VoteValue, verdict
from probe.config import Check
from probe.engine import CheckState, dump_check, parents_unchecked, restore_check, step
from probe.facts import SiteView
from probe.log import fields
from probe.secrets import SecretError
from probe.supervisor import Progress
from probe.tickets.pgledger import Pool, connection

log = logging.getLogger("probe")

CHANNEL = "probe_votes"  # NOTIFY'd when a vote changes: a speed-up, the periodic read is the rule
OVERLAP = 2.0  # seconds each read of the changed votes goes back over the previous one


@dataclass(slots=True)
class Cast:
    """A site's vote as the agent that runs the check holds it."""

    value: VoteValue
    reason: str = ""


class Voter:
    """The votes of one site on the checks this agent runs there."""

    def __init__(self, site: str) -> None:
        self.site = site
        self.config: dict[str, Check] = {}
        self.streaks: dict[str, CheckState] = {}
        self.cast: dict[str, Cast] = {}
        self.dirty: set[str] = set()  # streaks to write
        self.changed: set[str] = set()  # votes to write now (value or reason changed)
        self.wanted: set[str] = set()  # parents to run now (a child waits for them)
        self._children: dict[str, list[str]] = {}

    def configure(self, checks: Iterable[Check]) -> None:
        """The checks this agent runs in its site now; the streaks of those it keeps are kept."""
        self.config = {c.name: c for c in checks}
        self._children = {}
        for check in self.config.values():
            for parent in check.depends_on:
                self._children.setdefault(parent, []).append(check.name)
        for name in [n for n in self.streaks if n not in self.config]:
            del self.streaks[name]
            self.cast.pop(name, None)
            self.dirty.discard(name)
            self.changed.discard(name)
        for name in self.config:
            self.streaks.setdefault(name, CheckState())

    def take(self, streaks: Mapping[str, tuple[CheckState, Cast]]) -> None:
        """Checks taken from another agent of the site: their streaks and votes go on. The
        votes are written again, now under this agent's name (its liveness is their
        freshness)."""
        for name, (state, cast) in streaks.items():
            if name in self.config:
                self.streaks[name], self.cast[name] = state, cast
                self.changed.add(name)

    def observe(self, name: str, state: State, reason: str, now: float) -> bool:
        """One result; True when the site's vote on it (or on a child waiting for it) changed."""
        check, st = self.config.get(name), self.streaks.get(name)
        if check is None or st is None:
            return False
        if step(check, st, state, reason, now) == "moved":
            self.dirty.add(name)
        moved = self._vote(name, reason if state == "unknown" else "")
        for child in self._children.get(name, ()):
            moved |= self._vote(child)
        return moved

    def _vote(self, name: str, unknown: str = "") -> bool:
        """The site's vote on `name` from its streaks (`unknown`: why it could not run)."""
        st, before = self.streaks[name], self.cast.get(name)
        value: VoteValue
        if st.last_state is None:
            return False  # never run here yet: no vote (a parent's result asks again)
        if st.last_state == "unknown":
            value = "unknown"
        elif st.bad or st.flapping:
            waiting = self._parents_unchecked(name)
            value = before.value if waiting and before is not None else (
                "unknown" if waiting else "failing")
        elif st.healthy:
            value = "healthy"
        else:
            value = before.value if before is not None else "unknown"
        if value == "unknown":
            reason = unknown or (before.reason if before is not None else "")
        else:
            reason = st.last_reason if value == "failing" else ""
        cast = Cast(value, reason)
        if cast == before:
            return False
        self.cast[name] = cast
        self.changed.add(name)
        return True

    def _parents_unchecked(self, name: str) -> list[str]:
        # A parent not run by this agent in this site has no streak here: its verdict is
        # the sites', not this site's to wait for.
        unchecked = parents_unchecked(self.config[name], self.streaks)
        self.wanted.update(unchecked)
        return unchecked

    def take_changes(self) -> dict[str, dict[str, Any]]:
        """The votes and streaks to write, each check's as one row (Batch.votes)."""
        out = {}
        for name in self.changed | self.dirty:
            if name in self.streaks:
                cast = self.cast.get(name, Cast("unknown"))
                out[name] = {"value": cast.value, "reason": cast.reason,
                             "streak": dump_check(self.streaks[name])}
        self.changed, self.dirty = set(), set()
        return out

    @property
    def urgent(self) -> bool:
        return bool(self.changed)


# --- counting ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """A vote as the database has it; times are the database's."""

    check: str
    site: str
    value: VoteValue
    since: float
    reason: str
    agent: str
    streak: CheckState
    changed_at: float


@dataclass(slots=True)
class Tally:
    """The votes on the checks of the groups this agent decides for, and their verdicts."""

    silent_after: float
    votes: dict[str, dict[str, Row]] = field(default_factory=dict)  # check → site → row
    judged: dict[str, tuple[Verdict, tuple[SiteView, ...]]] = field(default_factory=dict)

    def add(self, rows: Iterable[Row], watched: Collection[str]) -> set[str]:
        """Rows read from the database, for the checks in `watched`; the checks whose votes
        changed."""
        touched = set()
        for row in rows:
            if row.check not in watched:
                continue
            by_site = self.votes.setdefault(row.check, {})
            if by_site.get(row.site) != row:
                by_site[row.site] = row
                touched.add(row.check)
        return touched

    def forget(self, checks: Iterable[str]) -> None:
        for name in checks:
            self.votes.pop(name, None)
            self.judged.pop(name, None)

    def count(self, check: Check, membership: Membership) -> tuple[Verdict, tuple[SiteView, ...]]:
        """The verdict on `check` as the votes and the membership stand."""
        live = membership.agents_live
        rows = self.votes.get(check.name, {})
        cast = {site: Vote(site, row.value, row.agent in live, row.since, row.reason)
                for site, row in rows.items()}
        silent = membership.silent(check.sites)
        found = verdict(check.sites, check.quorum, cast, silent, self.silent_after)
        views = []
        for site in check.sites:
            row, vote = rows.get(site), cast.get(site)
            if site in found.left:
                views.append(SiteView(site, "silent"))
            elif row is None or vote is None or not vote.fresh:
                views.append(SiteView(site, "unheard"))
            else:
                since = row.streak.first_failure_at if row.value == "failing" else row.since
                views.append(SiteView(site, row.value, row.reason if row.value != "healthy"
                                      else "", since))
        return found, tuple(views)

    def failing_streaks(self, check: str, found: Verdict) -> list[CheckState]:
        rows = self.votes.get(check, {})
        return [rows[site].streak for site in found.failing if site in rows]


def summary(found: Verdict) -> str:
    """Why a check is failing for probe, as a ticket says it."""
    failing, total = len(found.failing), found.electorate + len(found.left)
    return (f"{failing} of {total} site{'' if total == 1 else 's'} "
            f"see{'s' if failing == 1 else ''} it failing ({', '.join(found.failing)}), "
            f"quorum {found.quorum}")


# --- statements -------------------------------------------------------------------------------

# A vote's `since` and `changed_at` are the database's now; `since` moves only with the value,
# `changed_at` with the value, the reason or the agent (readers need nothing else).
CAST = """
WITH cast_votes AS (
    INSERT INTO votes AS v (check_name, site, value, since, reason, agent, streak, changed_at)
    SELECT n, %(site)s, val, now(), r, %(agent)s, st, now()
    FROM unnest(%(names)s::text[], %(values)s::text[], %(reasons)s::text[],
                %(streaks)s::text[]) AS u(n, val, r, st)
    ORDER BY n
    ON CONFLICT (check_name, site) DO UPDATE SET
        value = excluded.value, reason = excluded.reason, agent = excluded.agent,
        streak = excluded.streak,
        since = CASE WHEN v.value = excluded.value THEN v.since ELSE excluded.since END,
        changed_at = CASE WHEN (v.value, v.reason, v.agent)
                               = (excluded.value, excluded.reason, excluded.agent)
                          THEN v.changed_at ELSE excluded.changed_at END
    RETURNING v.changed_at = now() AS moved
)
SELECT pg_notify('""" + CHANNEL + """', '') FROM cast_votes WHERE moved LIMIT 1
"""

_COLUMNS = ("check_name, site, value, extract(epoch FROM since)::float8, reason, agent, streak,"
            " extract(epoch FROM changed_at)::float8")


def _row(values: Sequence[Any]) -> Row:
    name, site, value, since, reason, agent, streak, changed_at = values
    return Row(str(name), str(site), value, float(since), json.loads(reason), str(agent),
               restore_check(json.loads(streak)), float(changed_at))


async def changed_since(pool: Pool, since: float | None) -> tuple[list[Row], float]:
    """The votes changed since `since` (the database's time a previous read returned, less
    OVERLAP: a vote committed late is read all the same), every vote when None; and the
    database's now, for the next read. One statement: the last row is the clock's."""
    async with connection(pool) as conn:
        rows = await (await conn.execute(
            f"SELECT {_COLUMNS}, NULL FROM votes"
            " WHERE %(all)s OR changed_at > to_timestamp(%(since)s)"
            " UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
            " extract(epoch FROM now())::float8",
            {"all": since is None, "since": (since or 0.0) - OVERLAP})).fetchall()
    now = next(float(r[8]) for r in rows if r[0] is None)
    return [_row(r[:8]) for r in rows if r[0] is not None], now


async def streaks_of(pool: Pool, site: str, names: Collection[str]
                     ) -> dict[str, tuple[CheckState, Cast]]:
    """The site's streaks and votes on these checks, for an agent taking them over."""
    async with connection(pool) as conn:
        rows = await (await conn.execute(
            "SELECT check_name, value, reason, streak FROM votes WHERE site = %s"
            " AND check_name = ANY(%s)", (site, sorted(names)))).fetchall()
    return {str(n): (restore_check(json.loads(s)), Cast(v, json.loads(r)))
            for n, v, r, s in rows}


async def of_check(pool: Pool, name: str) -> list[Row]:
    """Every site's vote on one check, for `probe cluster votes`."""
    async with connection(pool) as conn:
        rows = await (await conn.execute(
            f"SELECT {_COLUMNS} FROM votes WHERE check_name = %s ORDER BY site", (name,))
        ).fetchall()
    return [_row(r) for r in rows]


# --- hearing of changes ------------------------------------------------------------------------

LISTEN_EVERY = 5.0  # seconds the listener waits for a notification before it says it is alive
LISTEN_RETRY = 5.0  # seconds between attempts to listen again after losing the connection


class Listener:
    """LISTEN on the votes' channel, on a connection of its own, and set `wake` at each
    notification. A speed-up only: behind a pooler in transaction mode, or while the database
    is gone, it hears nothing and the counter's periodic read does the work."""

    def __init__(self, dsn: Callable[[], str], *, wake: asyncio.Event) -> None:
        self._dsn = dsn
        self.wake = wake
        self.listening = False

    async def serve(self, progress: Progress) -> None:
        said = False
        while True:
            progress()
            try:
                async with await psycopg.AsyncConnection.connect(
                        self._dsn(), autocommit=True, connect_timeout=10) as conn:
                    await conn.execute("LISTEN " + CHANNEL)
                    self.listening, said = True, False
                    self.wake.set()  # anything missed while not listening
                    while True:
                        progress()
                        async for _ in conn.notifies(timeout=LISTEN_EVERY):
                            self.wake.set()
                            progress()
            except (psycopg.Error, OSError, SecretError) as err:
                self.listening = False
                if not said:
                    log.info("votes heard every %ss only %s", LISTEN_RETRY, fields(error=err))
                    said = True
            await asyncio.sleep(LISTEN_RETRY)
