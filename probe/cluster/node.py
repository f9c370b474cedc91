"""One agent's part in a cluster: it heartbeats, learns who else is live in its site, and
decides for the incident groups rendezvous hashing gives it — taking them from the database
with the state their last owner left, and giving up at once those another agent should have.

Ownership is by shard (probe.cluster.ownership.shards: groups joined by dependencies), so that
the engine deciding for a child holds its parents too. Every agent computes the same owners
from the same membership and the same configuration; an agent whose configuration differs is
counted (probe_cluster_config_mismatch) and cannot cause a double decision: the claims decide
who writes, whatever each agent believes.

The database gone: the agent keeps running what it holds (results, metrics); its decisions
wait in the writer, its deliveries stop once it cannot tell whether it is still a member
(`Terms.live`, false after `agent_ttl` without a heartbeat), and everything goes on when the
database answers again — under the fence, so that a group taken over meanwhile is dropped, not
written twice.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from probe import __version__
from probe.cluster.claims import Claims, Taken
from probe.cluster.members import Members, Membership
from probe.cluster.ownership import owner, shards
from probe.log import fields
from probe.supervisor import Progress
from probe.tickets.ledger import LedgerError
from probe.tickets.pgledger import Pool, Terms

log = logging.getLogger("probe")

STRAYS_EVERY = 6  # heartbeats between looks for claims the database lost track of


class ClusterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.agents = Gauge("probe_cluster_agents", "Live agents of this agent's site, as its "
                            "last heartbeat saw them.", ["site"], registry=registry)
        self.owned = Gauge("probe_cluster_checks_owned", "Checks this agent runs and decides "
                           "for.", ["agent"], registry=registry)
        self.groups = Gauge("probe_cluster_groups_held", "Incident groups this agent holds the "
                            "claim of.", ["agent"], registry=registry)
        self.handover = Histogram(
            "probe_cluster_handover_seconds", "For a check taken from another agent, how long "
            "it had gone without a result when taken.", registry=registry,
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300))
        self.lease_lost = Counter("probe_outbox_lease_lost_total", "Groups this agent lost to "
                                  "another agent while it believed it held them.",
                                  registry=registry)
        self.fence_rejected = Counter("probe_outbox_fence_rejected_total", "Writes refused "
                                      "because another agent holds the group under a newer "
                                      "fence.", registry=registry)
        self.db_up = Gauge("probe_cluster_db_up", "1 when the last heartbeat reached the "
                           "cluster's database.", registry=registry)
        self.db_latency = Histogram("probe_cluster_db_latency_seconds", "Round trip of a "
                                    "heartbeat to the cluster's database.", registry=registry,
                                    buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1,
                                             2.5))
        self.mismatch = Gauge("probe_cluster_config_mismatch", "Live agents whose "
                              "configuration differs from this agent's.", registry=registry)
        self.sites_live = Gauge("probe_cluster_sites_live", "Sites with a live agent, as this "
                                "agent's last heartbeat saw them.", registry=registry)
        self.site_silent = Gauge("probe_cluster_site_silent_seconds", "How long each site "
                                 "heard of has had no live agent (0 while it has one).",
                                 ["site"], registry=registry)


@dataclass
class View:
    """What the node last saw, for /-/ready, /api/status and logs."""

    membership: Membership | None = None
    error: str | None = None  # why the database cannot be reached, while it cannot
    since: float | None = None  # monotonic: when the heartbeats began to fail
    owned: dict[str, str] = field(default_factory=dict)  # group → shard
    running: frozenset[str] = frozenset()  # when sites vote: the groups run in this site


class Node:
    """`take` is called with groups just taken (their states read); `give` with groups to give
    up, before their claims are released: the caller stops their checks and writes what it
    decided for them."""

    def __init__(self, pool: Pool, terms: Terms, *, site: str, agent_ttl: float,
                 config_hash: Callable[[], str],
                 groups: Callable[[], Mapping[str, Collection[str]]],
                 take: Callable[[Taken], Awaitable[None]],
                 give: Callable[[frozenset[str]], Awaitable[None]],
                 metrics: ClusterMetrics,
                 run: Callable[[frozenset[str]], Awaitable[None]] | None = None) -> None:
        """`run`, when sites vote: called with the groups whose checks this agent runs in its
        site whenever they change; the groups it decides for are then worked out among the
        live agents of every site."""
        self.terms = terms
        self.site = site
        self.ttl = agent_ttl
        self.every = agent_ttl / 3  # a heartbeat: three chances before the others move on
        self.members = Members(pool, agent_ttl)
        self.claims = Claims(pool, terms, agent_ttl)
        self._config_hash = config_hash
        self._groups = groups  # each group → the groups it depends on, as configured now
        self._members: Callable[[], Mapping[str, Collection[str]]] = lambda: {}
        self._take, self._give, self._run = take, give, run
        self._running_for: tuple[Mapping[str, Collection[str]], frozenset[str]] | None = None
        self.metrics = metrics
        self.view = View()
        self._last_ok = time.monotonic()
        self._beats = 0
        self._wanted_for: tuple[Mapping[str, Collection[str]], frozenset[str]] | None = None
        self.wake = asyncio.Event()

    def checks_of(self, members: Callable[[], Mapping[str, Collection[str]]]) -> None:
        """Where each group's checks are read from (group → check names), for `take`."""
        self._members = members

    async def join(self) -> None:
        await self.members.join(self.terms.agent, self.site, socket.gethostname(),
                                __version__, self._config_hash())

    async def serve(self, progress: Progress) -> None:
        while True:
            progress()
            await self.beat()
            try:
                async with asyncio.timeout(self._next_beat()):
                    await self.wake.wait()
            except TimeoutError:
                pass
            self.wake.clear()

    def _next_beat(self) -> float:
        """The period; or sooner, the moment another agent's silence reaches agent_ttl, so
        that its groups move as soon as it has left rather than up to a period later."""
        membership, wait = self.view.membership, self.every
        if membership is not None and self.view.error is None:
            for member in membership.members:
                expires = member.heartbeat_at + self.ttl - membership.now
                if member.name != self.terms.agent and 0 <= expires < wait:
                    wait = expires + 0.05
        return wait

    async def beat(self) -> None:
        """One heartbeat, and the groups it moves."""
        started = time.monotonic()
        try:
            membership = await self.members.heartbeat(self.terms.agent, self._config_hash())
            if not membership.joined:
                await self.join()
                membership = await self.members.heartbeat(self.terms.agent,
                                                          self._config_hash())
            recovered = self.view.error is not None
            self._reached(membership, time.monotonic() - started)
            self._beats += 1
            if recovered or self._beats % STRAYS_EVERY == 1:
                strays = await self.claims.strays()
                if strays:
                    log.warning("claims this agent did not hold released %s",
                                fields(groups=strays))
            await self.claims.settle()
            await self._rebalance(membership)
        except LedgerError as err:
            self._unreached(err)

    def _reached(self, membership: Membership, latency: float) -> None:
        if self.view.error is not None:
            log.warning("cluster database reached again %s", fields(
                after=f"{time.monotonic() - (self.view.since or 0):.0f}s"))
        self._last_ok = time.monotonic()
        self.terms.live = True
        self.view = View(membership, owned=self.view.owned, running=self.view.running)
        self.metrics.db_up.set(1)
        self.metrics.db_latency.observe(latency)
        sites: dict[str, int] = {}
        for member in membership.members:
            sites[member.site] = sites.get(member.site, 0) + 1
        for site, _ in membership.heard:
            sites.setdefault(site, 0)  # a site gone quiet shows 0, not its last count
        for site, count in sites.items():
            self.metrics.agents.labels(site).set(count)
        silent = membership.silent(sites)
        self.metrics.sites_live.set(len(sites) - len(silent))
        for site in sites:
            self.metrics.site_silent.labels(site).set(silent.get(site, 0.0))
        self.metrics.mismatch.set(len(membership.disagreeing))

    def _unreached(self, err: LedgerError) -> None:
        if self.view.error is None:
            log.error("cluster database unreachable: checks go on, decisions wait %s",
                      fields(error=err))
            self.view.since = time.monotonic()
        self.view.error = str(err)
        self.metrics.db_up.set(0)
        if time.monotonic() - self._last_ok >= self.ttl:
            # The others may have taken this agent's groups by now: deliver nothing until a
            # heartbeat says whether it is still a member.
            self.terms.live = False

    def wanted(self, membership: Membership) -> set[str]:
        """The groups rendezvous hashing gives this agent among the site's live agents (among
        every site's, when sites vote). Worked out again only when the agents or the
        configuration changed: hashing every group on every heartbeat was most of a steady
        agent's work."""
        groups = self._groups()
        owners = membership.everywhere if self._run is not None else membership.owners
        if (self._wanted_for is None or groups is not self._wanted_for[0]
                or owners != self._wanted_for[1]):
            self.view.owned = self._mine(groups, owners)
            self._wanted_for = (groups, owners)
        return set(self.view.owned)

    def running(self, membership: Membership) -> frozenset[str]:
        """When sites vote: the groups whose checks this agent runs in its site — rendezvous
        among the site's live agents, on the same shards, so that the agent deciding for a
        group also runs its checks in its own site (the greatest weight among all agents is
        the greatest among its site's)."""
        groups, owners = self._groups(), membership.owners
        if (self._running_for is None or groups is not self._running_for[0]
                or owners != self._running_for[1]):
            self.view.running = frozenset(self._mine(groups, owners))
            self._running_for = (groups, owners)
        return self.view.running

    def _mine(self, groups: Mapping[str, Collection[str]],
              owners: frozenset[str]) -> dict[str, str]:
        """The groups (→ their shard) rendezvous hashing gives this agent among `owners`."""
        by_shard = shards(groups)
        mine = {shard for shard in set(by_shard.values())
                if owner(shard, owners) == self.terms.agent}
        return {g: s for g, s in by_shard.items() if s in mine}

    async def _rebalance(self, membership: Membership) -> None:
        if self._run is not None:
            await self._run(self.running(membership))
        wanted = self.wanted(membership)
        held = set(self.terms.held)
        if held - wanted:
            lose = frozenset(held - wanted)
            await self._give(lose)
            await self.claims.release(lose)
            log.info("groups handed over %s", fields(groups=len(lose)))
        if wanted - held:
            taken = await self.claims.take(wanted - held, self._members())
            if taken.groups:
                log.info("groups taken %s", fields(groups=len(taken.groups)))
                for at in taken.last_results.values():
                    self.metrics.handover.observe(max(0.0, membership.now - at))
                await self._take(taken)
        self.metrics.groups.labels(self.terms.agent).set(len(self.terms.held))
        members = self._members()
        self.metrics.owned.labels(self.terms.agent).set(
            sum(len(members.get(g, ())) for g in self.terms.held))

    def lost(self, groups: Collection[str]) -> None:
        """Writes on these groups were refused: another agent holds them now."""
        held = [g for g in groups if g in self.terms.held]
        self.metrics.fence_rejected.inc()
        self.metrics.lease_lost.inc(len(held))
        self.claims.lost(groups)
        log.warning("groups lost to another agent %s", fields(groups=",".join(sorted(groups))))

    async def leave(self) -> None:
        """At stop: give everything up and leave, so that the others take over at once."""
        held = frozenset(self.terms.held)
        try:
            if held:
                await self._give(held)
                await self.claims.release(held)
            await self.members.leave(self.terms.agent)
        except LedgerError as err:
            log.warning("left the cluster without telling it: the others take over after "
                        "agent_ttl %s", fields(error=err))
