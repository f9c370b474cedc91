"""`probe run`: the long-running service. It ties the pieces together — configuration, the
scheduler, the checks, the incident engine, the state database, metrics and the HTTP endpoint —
and handles reload (SIGHUP, POST /-/reload), stop (SIGTERM) and systemd's notify protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from psycopg import OperationalError
from psycopg_pool import PoolTimeout

from checks import execute
from checks.base import Result
from probe import alerts, control, history, sdnotify, status, webconfig
from probe.archive import Archive, Keep, Query, pg_epoch, pg_query, sqlite_query
from probe.cluster import claims, trouble, votes
from probe.cluster.claims import Taken
from probe.cluster.members import Membership
from probe.cluster.node import ClusterMetrics, Node
from probe.cluster.pgstate import PgState
from probe.config import Check, Config, ConfigError, Maintenance, load
from probe.engine import (
    CheckState,
    Engine,
    Transition,
    restore_check,
    restore_group,
    window_active,
    window_matches,
)
from probe.facts import Facts
from probe.log import fields
from probe.metrics import Metrics, View
from probe.pages.build import Pages
from probe.scheduler import Scheduler
from probe.secrets import SecretError, known
from probe.state import SqliteState, State
from probe.store import Batch, Snapshot, Store, StoreError
from probe.supervisor import EXIT_LOOP_FAILED, Progress, Supervisor
from probe.tickets import groups
from probe.tickets.groups import Context
from probe.tickets.ledger import Ledger, LedgerError, SqliteLedger
from probe.tickets.outbox import Dispatcher, OutboxMetrics
from probe.tickets.pgledger import PgLedger, Pool, Terms, open_pool
from probe.tickets.pool import Backends
from probe.tickets.watcher import GroupHealth, Watcher
from probe.web import serve_http
from probe.writer import FLUSH_EVERY, FLUSH_RETRY, Writer

log = logging.getLogger("probe")

TICK_EVERY = 1.0  # seconds between engine ticks (maintenance ends, notes due)
# Seconds after each minute's end when its history is written (probe.history): the results
# that began in it have been counted by then (a check's timeout at most later, in the next).
HISTORY_AFTER = 2.0
STATE_RETRY = 10.0  # seconds between attempts to open the state database at start
CLUSTER_FLUSH_EVERY = 1.0  # a cluster's state writes: fewer statements on the shared database
CLUSTER_RESULTS_EVERY = 5.0  # and its history of results, when nothing was decided
POOL_TIMEOUT = 10.0  # seconds a call waits for a connection to the cluster's database
VOTES_EVERY = 2.0  # when sites vote: seconds between reads of the votes, unless told sooner


class Daemon:
    """One agent. Alone, its state is a SQLite file in its state directory; in a cluster
    (`pool`: the cluster's database, opened by `open_database`) it is in PostgreSQL, shared,
    and the agent runs and decides for the groups its probe.cluster.node.Node holds."""

    def __init__(self, config_path: Path, config: Config, pool: Pool | None = None) -> None:
        self.config_path = config_path
        self.config = config
        self.checks: dict[str, Check] = checks_of(config)
        self.results: dict[str, Result] = {}
        self.recorder = history.Recorder()
        self._pages: Pages | None = None
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.metrics = Metrics(self.registry, self._view)
        self.database = config.agent.state_dir / Store.FILE  # the local helpdesk's too
        # Windows set at run time (probe maintenance): kept apart from the configuration's,
        # which a reload replaces. Read when serving starts.
        self.adhoc: dict[int, Maintenance] = {}
        self.store: Store | None = None
        self.pool = pool
        self.node: Node | None = None
        # When sites vote: this agent's site's votes on the checks it runs, and the count of
        # every site's votes on the checks of the groups it decides for.
        self.voter: votes.Voter | None = None
        self.tally: votes.Tally | None = None
        self.state: State
        self.ledger: Ledger
        if pool is None or config.cluster is None:
            self.store = Store(config.agent.state_dir, history=config.agent.history)
            snapshot = self.store.load()
            self.state, self.ledger = SqliteState(self.store), SqliteLedger(self.store)
            scope, checks = config.agent.name, list(self.checks.values())
        else:
            # The incident keys' prefix, the same whichever agent decides: the site's, or
            # when sites vote, theirs together.
            scope = "+".join(config.cluster.sites or [config.cluster.site])
            snapshot, checks = Snapshot({}, {}), []
            terms = Terms(config.agent.name)
            self.state = PgState(pool, history=config.agent.history, terms=terms,
                                 group_of=self._group_of, site=config.cluster.site)
            self.ledger = PgLedger(pool, terms)
            if config.cluster.voting:
                self.voter = votes.Voter(config.cluster.site)
                self.tally = votes.Tally(config.cluster.silent_after)
            self.node = Node(pool, terms, site=config.cluster.site,
                             agent_ttl=config.cluster.agent_ttl,
                             config_hash=lambda: self.config.config_hash(),
                             groups=self._dependencies, take=self._take, give=self._give,
                             metrics=ClusterMetrics(self.registry),
                             run=self._run if self.voter is not None else None)
            self.node.checks_of(lambda: {g: [n for n in names if n in self.checks]
                                         for g, names in self._groups_members().items()})
        # Alertmanager's groups (probe.alerts), decided one notification at a time, each written
        # before it is answered.
        self.alert_groups = {n: alerts.GroupState.restore(d)
                             for n, d in snapshot.alerts.items()}
        self._alerts_lock = asyncio.Lock()
        self.engine = Engine(
            config.agent.name,
            checks,
            self.windows(),
            check_states={n: restore_check(s) for n, s in snapshot.checks.items()},
            group_states={g: restore_group(s) for g, s in snapshot.groups.items()},
            scope=scope,
        )
        self.backends = Backends(config.routes, database=self.database)
        outbox = OutboxMetrics(self.registry)
        self.watcher = Watcher(self.ledger, self.backends, agent=scope,
                               mine=lambda group: self.node is None
                               or group in self.node.terms.held,
                               group_health=self._health,
                               wake=lambda: self.dispatcher.wake(),
                               duplicates=outbox.duplicates,
                               internal_error=outbox.internal_errors.inc,
                               poll_interval=config.ticketing.poll_interval)
        self.dispatcher = Dispatcher(self.ledger, self.backends, outbox,
                                     self._context, orphans=self.watcher.orphans,
                                     reconciled=self.watcher.reconciled, lost=self._lose)
        self.writer = Writer(self.state, self.metrics, written=self.dispatcher.wake,
                             fenced=self._fenced,
                             every=FLUSH_EVERY if self.node is None else CLUSTER_FLUSH_EVERY,
                             results_every=0.0 if self.node is None
                             else CLUSTER_RESULTS_EVERY)
        self.ready = False
        self.stopping = asyncio.Event()
        self._scheduler: Scheduler | None = None
        # Read when scraped, rather than counted up and down (two locked updates) per check.
        self.metrics.in_flight.set_function(
            lambda: self._scheduler.in_flight if self._scheduler is not None else 0)
        self.guard: webconfig.Guard | None = None
        self.reloads = 0
        self.loops = Supervisor(self.registry, watchdog=sdnotify.watchdog_timeout())
        self._check_started: Progress = lambda: None  # the scheduler's progress: see _schedule
        self._windows_seen = ""  # the heartbeat's version of the windows last read
        # When sites vote: the counter's loop is woken by a vote changed (the listener), or to
        # read every vote again (`_recount`: groups taken, a reload).
        self._count_wake = asyncio.Event()
        self._recount = False
        self._troubles: dict[str, tuple[str, str]] = {}  # probe's own checks, as last judged
        self._sites = tuple(config.cluster.sites or ()) if config.cluster is not None else ()
        self._deps: dict[str, set[str]] = {}
        self._deps_of: dict[str, Check] | None = None  # the checks _deps was worked out from

    @property
    def node_every(self) -> float:
        """The longest the node's loop goes between heartbeats: its period, and a call that
        waits its full time for a connection."""
        return (self.node.every if self.node else 0.0) + POOL_TIMEOUT

    def _health(self, group: str) -> GroupHealth:
        if alerts.is_alert_group(group):
            return alerts.health(self.alert_groups.get(group))
        return groups.health(self.engine, group)

    def _view(self) -> View:
        return View(self.checks, self.results, self.engine)

    def _members(self, group: str) -> list[Check]:
        return [self.checks[n] for n in self.engine.members.get(group, []) if n in self.checks]

    async def _context(self, group: str) -> Context:
        return await groups.context(self._members(group), self.state.recent_results)

    # --- the groups of a cluster ---------------------------------------------------------------

    def _group_of(self, name: str) -> str | None:
        check = self.checks.get(name)
        return check.group if check is not None else None

    def _groups_members(self) -> dict[str, list[str]]:
        members: dict[str, list[str]] = {}
        for check in self.checks.values():
            members.setdefault(check.group, []).append(check.name)
        return members

    def _dependencies(self) -> dict[str, set[str]]:
        """Each configured group → the groups its checks depend on: the same object until a
        reload changes the checks (the node works out its groups again only then)."""
        if self._deps_of is not self.checks:
            needs: dict[str, set[str]] = {}
            for check in self.checks.values():
                needs.setdefault(check.group, set()).update(
                    self.checks[p].group for p in check.depends_on if p in self.checks)
            self._deps, self._deps_of = needs, self.checks
        return self._deps

    def _decides(self) -> list[Check]:
        """The checks this agent decides for: all of them alone, its groups' in a cluster."""
        if self.node is None:
            return list(self.checks.values())
        held = self.node.terms.held
        return [c for c in self.checks.values() if c.group in held]

    def _runs(self) -> list[Check]:
        """The checks this agent runs: those it decides for; when sites vote, those of the
        groups its site gives it that run in its site."""
        if self.node is None or self.voter is None:
            return self._decides()
        running, site = self.node.view.running, self.voter.site
        return [c for c in self.checks.values() if c.group in running and site in c.sites]

    async def _take(self, taken: Taken) -> None:
        checks = [c for c in self.checks.values() if c.group in taken.groups]
        self._decided(self.engine.take(
            checks, {n: restore_check(d) for n, d in taken.checks.items()},
            {g: restore_group(d) for g, d in taken.group_states.items()}, time.time()))
        if self.voter is not None:
            self._recount = True  # every vote read again: those of the checks taken too
            self._count_wake.set()
            return
        if self._scheduler is not None:
            # Each runs at once (its last holder may have died since its last run), then goes
            # on at its pace: one interval after its last result, wherever that ran.
            now = time.time()
            resume = {c.name: taken.last_results.get(c.name, now) + c.interval - now
                      for c in checks}
            self._scheduler.update(self._runs(), resume)
            self._check_started()  # judged from now: it may have held no check until now

    async def _run(self, running: frozenset[str]) -> None:
        """When sites vote: the groups whose checks this agent runs in its site, as they are
        now. Checks given up have their streaks written; checks taken go on from the streaks
        the site's last agent wrote."""
        assert self.voter is not None and self.pool is not None
        checks = self._runs()
        names = {c.name for c in checks}
        before = set(self.voter.config)
        if names == before:
            return
        self._voted()  # the streaks of the checks given up, with the rest
        self.voter.configure(checks)
        new = names - before
        found: dict[str, tuple[CheckState, votes.Cast]] = {}
        if new:
            try:
                found = await votes.streaks_of(self.pool, self.voter.site, new)
            except LedgerError as err:
                log.warning("checks taken without their streaks %s", fields(error=err))
            self.voter.take(found)
            self._voted()
        if self._scheduler is not None:
            now = time.time()
            resume = {}
            for c in checks:
                if c.name in new:
                    last = found[c.name][0].last_result_at if c.name in found else None
                    resume[c.name] = (last or now) + c.interval - now
            self._scheduler.update(checks, resume)
            self._check_started()

    async def _give(self, given: frozenset[str]) -> None:
        """Stop running the groups' checks, forget them (a result still in flight is dropped)
        and write what was decided for them while their claims are still this agent's."""
        assert self.node is not None
        self.node.terms.leaving |= given  # no new delivery for them starts
        self._forget(given)
        self._decided([])  # their last changes, into the writer's batch
        self.engine.give(given)
        if not await self.dispatcher.quiesce(self.backends.longest_timeout() + 1):
            log.warning("groups handed over during a delivery: their new holder asks the "
                        "helpdesk before it sends again")
        if await self.writer.flush() is not None:
            log.warning("groups handed over before their last state was written %s",
                        fields(groups=len(given)))

    def _forget(self, given: Collection[str]) -> None:
        names = [n for n, c in self.checks.items() if c.group in given]
        if self.tally is not None:
            self.tally.forget(names)
            for name in names:
                self._troubles.pop(name, None)
            return  # what runs here is the site's business (_run), not the decision's
        if self._scheduler is not None:
            self._scheduler.update([c for c in self._runs() if c.group not in given])
        for name in names:
            self.results.pop(name, None)

    def _lose(self, lost: frozenset[str]) -> None:
        """Another agent took these groups (a write was refused under their old fence)."""
        if self.node is None:
            return
        self.node.lost(lost)
        self._forget(lost)
        self.engine.give(lost)

    def _fenced(self, batch: Batch, lost: frozenset[str]) -> Batch:
        """The batch without what it held for groups another agent decides for now."""
        self._lose(lost)
        names = {n for n, c in self.checks.items() if c.group in lost}
        return Batch({n: d for n, d in batch.checks.items() if n not in names},
                     {g: d for g, d in batch.groups.items() if g not in lost},
                     batch.results,
                     [(t, r) for t, r in batch.transitions if t.group not in lost],
                     batch.votes, batch.minutes)

    # --- the work of one check -------------------------------------------------------------

    async def _run_check(self, check: Check, lag: float) -> bool:
        self._check_started()
        self.metrics.schedule_lag.observe(lag)
        # A result may echo a secret (a redirect to a URL with a token, a body that repeats a
        # header): its reason and evidence reach logs, status and tickets.
        result = known.redact_result(await execute(check.spec, timeout=check.timeout))
        if self.voter is not None:
            if check.name not in self.voter.config:
                return False  # removed by a reload, or handed to another agent, while it ran
            self.results[check.name] = result
            self._record(check, result)
            if self.voter.observe(check.name, result.state, result.reason, time.time()):
                self.writer.soon()  # a vote changed: the deciding agent should hear of it
            self._voted()
            self.writer.pending.results.append((check.name, result))
            return result.state == "down"
        if check.name not in self.engine.config:
            return False  # removed by a reload, or handed to another agent, while it ran
        self.results[check.name] = result
        self._record(check, result)
        now = time.time()
        transitions = self.engine.observe(check.name, result.state, result.reason, now)
        self.writer.pending.results.append((check.name, result))
        self._decided(transitions)
        if result.state != "up":
            log.debug("check %s", fields(check=check.name, kind=check.kind, state=result.state,
                                         reason=result.reason))
        return result.state == "down"

    def _record(self, check: Check, result: Result) -> None:
        """The result in the history: the time it covers is maintenance when a window was
        active for the check."""
        at = result.started_at
        in_window = any(window_active(w, at) and window_matches(w, check)
                        for w in self.engine.maintenance)
        self.recorder.add(check.name, result, interval=check.interval, maintenance=in_window)

    async def _historian(self, progress: Progress) -> None:
        """The history's minutes into the next write, and the closed hours and days rolled up
        (probe.history)."""
        while True:
            progress()
            now = time.time()
            await asyncio.sleep(history.MINUTE - now % history.MINUTE + HISTORY_AFTER)
            now = time.time()
            self.writer.pending.minutes += self.recorder.rows(before=now - HISTORY_AFTER)
            try:
                await self.state.roll_up(now, self.history_keep())
            except StoreError as err:
                log.warning("history not rolled up %s", fields(error=err))

    def history_keep(self) -> dict[int, float]:
        kept = self.config.history
        return {history.MINUTE: kept.minutes, history.HOUR: kept.hours, history.DAY: kept.days}

    def _voted(self) -> None:
        """Queue the site's changed votes and streaks; run the parents a child waits for."""
        assert self.voter is not None
        if self.voter.wanted and self._scheduler is not None:
            for name in self.voter.wanted:
                self._scheduler.run_soon(name)
        self.voter.wanted.clear()
        self.writer.pending.votes.update(self.voter.take_changes())

    async def _count(self, progress: Progress) -> None:
        """When sites vote: read the votes as they change (told by the listener, or every
        VOTES_EVERY) and judge the checks of the groups this agent decides for; all of them
        again whenever the membership changed (a vote's freshness is its agent's liveness)."""
        assert self.tally is not None and self.pool is not None and self.node is not None
        since: float | None = None
        counted_for: object = None
        while True:
            progress()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(VOTES_EVERY):
                    await self._count_wake.wait()
            self._count_wake.clear()
            if self._recount:  # groups taken, a reload: every vote read, every check judged
                since, counted_for, self._recount = None, None, False
            try:
                rows, since = await votes.changed_since(self.pool, since)
            except LedgerError as err:
                log.debug("votes not read %s", fields(error=err))
                continue
            decided = {c.name: c for c in self._decides()}
            touched = self.tally.add(rows, decided)
            membership = self.node.view.membership
            if membership is None:
                continue
            # Every check judged again only when what a verdict rests on moved: which agents
            # are live (a vote's freshness), which sites are silent, which have left the vote.
            silent = membership.silent(self._sites)
            moved = (membership.agents_live, frozenset(silent),
                     frozenset(s for s, t in silent.items() if t >= self.tally.silent_after))
            if moved != counted_for:
                touched, counted_for = set(decided), moved
            self._judge(sorted(touched), decided, membership)

    def _judge(self, names: list[str], decided: dict[str, Check],
               membership: Membership) -> None:
        assert self.tally is not None
        out: list[Transition] = []
        voted: list[Check] | None = None  # the checks sites vote on, for probe's own
        for name in names:
            check = decided.get(name)
            if check is None:
                continue
            if check.kind in trouble.KINDS:
                voted = voted if voted is not None else [
                    c for c in self.checks.values() if c.sites]
                out += self._trouble(check, voted, membership)
                continue
            found, views = self.tally.count(check, membership)
            if self.tally.judged.get(name) == (found, views):
                continue
            self.tally.judged[name] = (found, views)
            why = votes.summary(found) if found.state == "failing" else found.rule()
            out += self.engine.judge(name, found.state,
                                     failing=self.tally.failing_streaks(name, found),
                                     views=views, why=why, now=time.time())
        self._decided(out)

    def _trouble(self, check: Check, voted: list[Check],
                 membership: Membership) -> list[Transition]:
        """One of probe's own checks, judged from the membership (`voted`: the checks the
        sites vote on)."""
        assert self.tally is not None
        state, reason, since = trouble.judge(check, voted, membership, self.tally.silent_after)
        if self._troubles.get(check.name) == (state, reason):
            return []
        self._troubles[check.name] = (state, reason)
        now = time.time()
        failing = [trouble.failing_state(reason, since, now)] if state == "failing" else []
        return self.engine.judge(check.name, state, failing=failing, views=(),
                                 why=reason or state, now=now)

    def _decided(self, transitions: list[Transition]) -> None:
        """Queue the engine's changed state with the transitions it caused: the next flush
        writes them in one transaction."""
        if self.engine.wanted and self._scheduler is not None:
            for name in self.engine.wanted:
                self._scheduler.run_soon(name)
            self.engine.wanted.clear()
        dirty_checks, dirty_groups = self.engine.take_dirty()
        self.writer.pending.checks.update(dirty_checks)
        self.writer.pending.groups.update(dirty_groups)
        for transition in transitions:
            facts = Facts.from_json(known.redact_data(transition.facts.to_json()))  # a token
            members = self._members(transition.group)
            if transition.kind == "open":
                facts = facts.with_ticket(groups.policy(members, self.results))
            transition = dataclasses.replace(transition, facts=facts)
            self.writer.pending.transitions.append((transition, groups.route(members)))
            log_transition(transition, self.metrics)
        if transitions:
            self.writer.soon()  # tickets should not wait for the next batch

    # --- background work -------------------------------------------------------------------

    async def _schedule(self, progress: Progress) -> None:
        """The scheduler's loop. Its progress is a check starting (or skipped, its previous run
        still going): _run_check and _skipped mark it."""
        assert self._scheduler is not None
        self._check_started = progress
        await self._scheduler.serve()

    def _skipped(self, check: Check) -> None:
        self.metrics.skipped.inc()
        self._check_started()

    def _cadence(self) -> float | None:
        """The longest the scheduler goes without starting a check: the shortest interval, and
        on top the longest timeout, for which every slot may be held."""
        checks = self._runs()  # in a cluster, an agent may hold no check for a while
        if not checks:
            return None
        return min(c.interval for c in checks) + max(c.timeout for c in checks)

    async def _ticker(self, progress: Progress) -> None:
        while True:
            progress()
            await asyncio.sleep(TICK_EVERY)
            self._decided(self.engine.tick(time.time()))
            await self._alerts_tick()
            if self.node is not None:
                await self._read_windows()

    # --- Alertmanager's groups (probe.alerts) ------------------------------------------------

    async def alert_notification(self, note: alerts.Notification) -> None:
        """Decide on a notification of a configured receiver and write it, with its ticket
        actions, before returning: Alertmanager hears 200 only for what is kept. Raises
        StoreError (nothing changed; Alertmanager sends it again)."""
        section = self.config.alertmanager
        assert section is not None and note.receiver in section.receivers
        name = alerts.group_name(note.receiver, note.group_key)
        async with self._alerts_lock:
            state, transitions = alerts.notify(
                self.alert_groups.get(name), note, section.receivers[note.receiver],
                scope=self.engine.scope, agent=self.config.agent.name, now=time.time())
            await self._write_alerts({name: state}, transitions)
        self.metrics.alert_notifications.labels(note.receiver, note.status).inc()

    async def _alerts_tick(self) -> None:
        """Status notes due, alerts not notified for resolve_after ended, the groups of a
        receiver removed by a reload resolved. A write the state refuses is tried again at
        the next tick."""
        section = self.config.alertmanager
        receivers = section.receivers if section is not None else {}
        now, scope, agent = time.time(), self.engine.scope, self.config.agent.name
        async with self._alerts_lock:
            changed, transitions = {}, []
            for name, state in self.alert_groups.items():
                receiver = receivers.get(state.receiver)
                if receiver is None:
                    new, happened = alerts.end(
                        state, "its receiver was removed from the configuration",
                        scope=scope, agent=agent, now=now)
                else:
                    new, happened = alerts.tick(state, receiver, scope=scope, agent=agent,
                                                now=now)
                if new is not state:
                    changed[name] = new
                    transitions += happened
            if not changed:
                return
            try:
                await self._write_alerts(changed, transitions)
            except StoreError as err:
                log.debug("alert groups not written, next tick %s", fields(error=err))

    async def _write_alerts(self, changed: dict[str, alerts.GroupState],
                            transitions: list[Transition]) -> None:
        section = self.config.alertmanager
        batch = Batch(alerts={name: state.dump() for name, state in changed.items()})
        for transition in transitions:
            facts = Facts.from_json(known.redact_data(transition.facts.to_json()))
            receiver = section.receivers.get(changed[transition.group].receiver) \
                if section is not None else None
            route = receiver.route if receiver is not None else None
            if route is None and len(self.config.routes) == 1:
                route = next(iter(self.config.routes))
            batch.transitions.append((dataclasses.replace(transition, facts=facts), route))
        await self.state.write(batch)
        self.alert_groups.update(changed)
        for transition, _ in batch.transitions:
            log_transition(transition, self.metrics)
        if transitions:
            self.dispatcher.wake()

    async def _read_windows(self) -> None:
        """The windows set at run time, as the database has them: in a cluster, any agent may
        have set or ended one. Read when the heartbeat says they changed."""
        assert self.node is not None
        membership = self.node.view.membership
        if membership is None or membership.windows == self._windows_seen:
            return
        try:
            stored = await self.state.windows(time.time())
        except StoreError as err:
            log.debug("maintenance windows not read %s", fields(error=err))
            return
        self._windows_seen = membership.windows
        if stored.keys() != self.adhoc.keys():
            self.adhoc = {n: Maintenance.model_validate(d) for n, d in stored.items()}
            self._maintenance_changed()

    # --- reload and stop ---------------------------------------------------------------------

    async def reload(self) -> list[str]:
        """Re-read the configuration; on errors keep the running one. Returns the errors, which
        `probe reload` also reads from the daemon's record."""
        sdnotify.notify("RELOADING=1")
        errors: list[str] = []
        try:
            try:
                config = await asyncio.to_thread(load, self.config_path)
            except ConfigError as err:
                self.metrics.reload_ok.set(0)
                for issue in err.issues:
                    log.error("reload refused %s", fields(error=issue))
                errors = [str(i) for i in err.issues]
                return errors
            if config.cluster != self.config.cluster:
                log.warning("the cluster: section changed: it takes effect at the next start")
            self.config = config
            self.checks = checks_of(config)
            for name in list(self.results):
                if name not in self.checks:
                    del self.results[name]
            self._decided(self.engine.reconfigure(self._decides(), self.windows(), time.time()))
            if self.voter is not None:
                self._voted()
                self.voter.configure(self._runs())
                self._recount = True
                self._count_wake.set()
            if self._scheduler is not None:
                self._scheduler.update(self._runs())
            if self.node is not None:
                self.node.wake.set()  # the groups may move
            self.backends.update(config.routes)
            self.dispatcher.wake()
            self.guard = secure(config, self.guard)
            self.watcher.poll_interval = config.ticketing.poll_interval
            self.metrics.reload_ok.set(1)
            self.metrics.reload_time.set(time.time())
            log.info("configuration reloaded %s", fields(summary=config.summary()))
            return []
        finally:
            self.reloads += 1
            control.write(self.config.agent.state_dir,
                          control.Record(os.getpid(), self.reloads, not errors, errors))
            sdnotify.notify("READY=1", f"STATUS={self._status_line()}")

    # --- maintenance set at run time ----------------------------------------------------------

    def windows(self) -> list[Maintenance]:
        return [*self.config.maintenance, *self.adhoc.values()]

    def maintenance_windows(self) -> list[tuple[int | None, Maintenance]]:
        """The configuration's windows (no number), then those set at run time."""
        return [*((None, w) for w in self.config.maintenance), *self.adhoc.items()]

    async def add_window(self, window: Maintenance) -> int:
        """Raises ValueError for a window that matches no check, StoreError when it cannot be
        recorded (a window that is not stored would not outlive a restart)."""
        if not any(window_matches(window, c) for c in self.checks.values()):
            raise ValueError("names no check or service that probe runs")
        assert window.end is not None
        number = await self.state.add_window(window.model_dump(mode="json"),
                                             window.end.timestamp())
        self.adhoc[number] = window
        self._maintenance_changed()
        log.warning("maintenance set %s", fields(id=number, checks=window.checks,
                                                 services=window.services,
                                                 until=window.end.isoformat(),
                                                 reason=window.reason))
        return number

    async def end_window(self, number: int) -> bool:
        """Raises StoreError, and leaves the window on, when that cannot be recorded."""
        if number not in self.adhoc:
            return False
        await self.state.end_window(number)
        del self.adhoc[number]
        self._maintenance_changed()
        log.warning("maintenance ended %s", fields(id=number))
        return True

    def _maintenance_changed(self) -> None:
        self._decided(self.engine.reconfigure(self._decides(), self.windows(), time.time()))

    def not_ready(self) -> str | None:
        if not self.ready:
            return "starting or stopping"
        if self.node is not None and self.node.view.error is not None:
            return f"the cluster's database cannot be reached: {self.node.view.error}"
        if not self.writer.writable:
            return "the state database cannot be written"
        return None

    @property
    def pages(self) -> Pages:
        """The pages' builder for the configuration in force (rebuilt after a reload)."""
        if self._pages is None or self._pages.config is not self.config:
            self._pages = Pages(self.config, self.archive(), self.recorder.peek)
        return self._pages

    def archive(self) -> Archive:
        if self.pool is not None:
            return archive_of(self.config, pg_query(self.pool), pg_epoch)
        return archive_of(self.config, sqlite_query(self.store))

    async def recent_results(self, name: str, limit: int = 10) -> list[dict[str, Any]]:
        try:
            return await self.state.recent_results(name, limit)
        except StoreError:
            return []

    async def snapshot(self) -> dict[str, Any]:
        return await status.document(self.config.agent.name, self.checks, self.results,
                                     self.engine, self.ledger, alert_groups=self.alert_groups,
                                     ready=self.ready,
                                     state_writable=self.writer.writable,
                                     cluster=await self._cluster_view())

    async def _cluster_view(self) -> status.ClusterView | None:
        """The whole cluster as its database has it (None alone, or while it is gone)."""
        if self.node is None or self.pool is None or not isinstance(self.state, PgState):
            return None
        try:
            snapshot = await self.state.load()
            latest = await self.state.latest()
            held = await claims.owners(self.pool)
            agents = await self.node.members.agents()
        except (StoreError, LedgerError) as err:
            log.debug("cluster view not read %s", fields(error=err))
            return None
        return status.ClusterView(
            self.node.site, held, {n: restore_check(d) for n, d in snapshot.checks.items()},
            {g: restore_group(d) for g, d in snapshot.groups.items()}, latest,
            [dataclasses.asdict(a) for a in agents])

    def _status_line(self) -> str:
        open_incidents = sum(1 for g in self.engine.groups.values() if g.incident)
        open_incidents += sum(1 for g in self.alert_groups.values() if g.key)
        return f"{len(self.checks)} checks, {open_incidents} open incidents"

    async def serve(self) -> None:
        """Run until SIGTERM, or until a loop keeps failing (`loops.gave_up` then names it)."""
        self.guard = guard = secure(self.config, self.guard)  # before any check runs, any answer
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        self.adhoc = {n: Maintenance.model_validate(d)
                      for n, d in (await self.state.windows(time.time())).items()}
        self._decided(self.engine.reconfigure(self._decides(), self.windows(), time.time()))
        scheduler = self._scheduler = Scheduler(
            self._run_check, self.config.agent.max_concurrency, on_skip=self._skipped,
        )
        if self.node is not None:
            await self.node.join()
            await self.node.beat()  # the groups it holds, before the first check
            self.loops.add("node", self.node.serve, every=lambda: self.node_every)
        if self.tally is not None and self.config.cluster is not None:
            listener = votes.Listener(self.config.cluster.dsn, wake=self._count_wake)
            self.loops.add("listener", listener.serve,
                           every=lambda: votes.LISTEN_EVERY + POOL_TIMEOUT)
            self.loops.add("counter", self._count, every=lambda: VOTES_EVERY + POOL_TIMEOUT)
        scheduler.update(self._runs())
        self.loops.add("scheduler", self._schedule, every=self._cadence)
        self.loops.add("flusher", self.writer.serve, every=lambda: FLUSH_RETRY)
        self.loops.add("ticker", self._ticker, every=lambda: TICK_EVERY)
        self.loops.add("historian", self._historian, every=lambda: 2 * history.MINUTE)
        self.loops.add("dispatcher", self.dispatcher.serve, every=self.dispatcher.every)
        self.loops.add("watcher", self.watcher.serve, every=self.watcher.every)
        # A full collection walks every live object: with 10,000 checks a pause of a quarter
        # second, which makes a thousand checks late. What start-up built lives as long as the
        # daemon: take it out of the collector's walks, and walk the old generation rarely
        # (young garbage, like the cycles a timeout leaves, is still collected young).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 1000)
        # The state is written by a thread. Each time the event loop comes back from a system
        # call it must win the GIL back, and by default waits up to 5ms for the writer to let
        # go: at a thousand checks a second that convoy made half of them late. 1ms bounds it.
        sys.setswitchinterval(0.001)
        runner = await serve_http(self, self.config.agent.listen, guard)
        self.metrics.reload_ok.set(1)
        self.metrics.reload_time.set(time.time())
        self.ready = True
        control.write(self.config.agent.state_dir, control.Record(os.getpid()))
        sdnotify.notify("READY=1", f"STATUS={self._status_line()}")
        log.info("probe started %s", fields(agent=self.config.agent.name,
                                           listen=self.config.agent.listen,
                                           web_config=self.config.agent.web_config,
                                           summary=self.config.summary()))
        await self.loops.run(until=self.stopping)  # set by SIGTERM, or by a loop that keeps failing
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        failed = self.loops.gave_up
        log.info("probe stopping")
        status = [f"STATUS=stopping: loop {', '.join(failed)} keeps failing"] if failed else []
        sdnotify.notify("STOPPING=1", *status)
        self.ready = False
        await scheduler.stop()
        with contextlib.suppress(Exception):
            await runner.cleanup()
        if self.node is not None:
            await self.node.leave()  # deliveries in flight end first (see _give)
        self.writer.pending.minutes += self.recorder.rows()
        try:
            if await self.writer.flush() is not None:
                log.error("state not saved at stop: the last decisions will be taken again")
        except Exception:  # the bug that stopped the flusher: said, and the stop goes on
            log.exception("state not saved at stop: the last decisions will be taken again")
        await self.dispatcher.close()
        await self.backends.close()
        await self.state.close()
        if self.pool is not None:
            await self.pool.close()
        control.remove(self.config.agent.state_dir, os.getpid())


def archive_of(config: Config, query: Query, epoch: Callable[[str], str] = str) -> Archive:
    """The state database's memory as the configuration keeps it, tickets linked to their
    helpdesks."""
    kept = config.history
    routes = config.routes

    def link(route: str, ref: str) -> str | None:
        found = routes.get(route)
        return found.link(ref) if found is not None else None

    return Archive(query, Keep(kept.minutes, kept.hours, kept.days), epoch=epoch, link=link)


def checks_of(config: Config) -> dict[str, Check]:
    """The checks the agent knows: the configuration's, and when sites vote probe's own (a
    site gone silent, a quorum out of reach: probe.cluster.trouble), never run, only judged."""
    return {c.name: c for c in [*config.effective_checks(), *trouble.checks(config)]}


def secure(config: Config, guard: webconfig.Guard | None) -> webconfig.Guard:
    """At start and on each reload: learn the configuration's secret values (so that logs,
    status and tickets never show them), apply the web configuration, and warn of what is
    left open."""
    known.add(config.secret_values())
    known.install()
    path = config.agent.web_config
    try:
        web = webconfig.load(path) if path is not None else None
        if guard is None:
            guard = webconfig.Guard(web)
        else:
            for note in guard.update(web):
                log.warning(note)
    except (ConfigError, webconfig.TlsFileError) as err:
        if guard is not None:  # a reload: the file changed after it was validated
            log.error("web_config not reloaded %s", fields(error=err))
            return guard
        log.error("cannot start %s", fields(error=err))
        raise SystemExit(2) from None
    for note in (web.notes() if web else []):
        log.info(note)
    for warning in security_warnings(config, web):
        log.warning(warning)
    return guard


def log_transition(t: Transition, metrics: Metrics) -> None:
    facts = t.facts
    if t.kind == "open":
        metrics.opened.labels(t.group).inc()
        log.warning("incident opened %s", fields(
            group=t.group, key=t.key, why=facts.why, reason=facts.reason,
            unreachable=",".join(facts.unreachable) or None))
    elif t.kind == "resolve":
        metrics.resolved.labels(t.group).inc()
        log.warning("incident resolved %s", fields(
            group=t.group, key=t.key, down_for=facts.down_for_text, how=facts.recovered))
    else:
        log.info("incident still open %s", fields(group=t.group, key=t.key, reason=facts.reason))


def security_warnings(config: Config, web: webconfig.WebConfig | None) -> list[str]:
    """What an operator should hear at start: an endpoint open to the network, a helpdesk
    whose certificate is not verified."""
    warnings = [webconfig.exposure_warning(config.agent.listen, web)]
    warnings += [f"route {name} does not verify the helpdesk's TLS certificate"
                 for name, route in config.routes.items()
                 if not route.tls_verify and route.backend != "local"]
    return [w for w in warnings if w]


async def open_database(config: Config) -> Pool | None:
    """The cluster's database, its schema brought up to date (None: no cluster). StoreError when
    it cannot be reached or its address read."""
    if config.cluster is None:
        return None
    try:
        config.agent.state_dir.mkdir(parents=True, exist_ok=True)  # the control record's
        return await open_pool(config.cluster.dsn(), max_size=4, timeout=POOL_TIMEOUT)
    except (SecretError, OSError, LedgerError, PoolTimeout, OperationalError) as err:
        raise StoreError(f"the cluster's database: {err}") from err


async def run(config_path: Path, config: Config) -> None:
    """Start, and wait for the state database if it cannot be opened yet (a read-only or
    missing state directory): retrying here beats a restart loop under systemd, and no
    decision can be taken safely without the state."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    said = False
    while True:
        try:
            daemon = Daemon(config_path, config, await open_database(config))
            break
        except StoreError as err:
            if not said:
                log.error("cannot open the state, retrying every %ss %s", STATE_RETRY,
                          fields(error=err))
                said = True
            sdnotify.notify(f"STATUS=waiting for the state database: {err}")
        try:
            async with asyncio.timeout(STATE_RETRY):
                await stop.wait()
            return
        except TimeoutError:
            pass
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    if said:
        log.warning("state database opened: starting")
    await daemon.serve()
    if daemon.loops.gave_up:
        raise SystemExit(EXIT_LOOP_FAILED)  # for systemd's Restart=on-failure
