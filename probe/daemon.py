"""`probe run`: the long-running service. It ties the pieces together — configuration, the
scheduler, the checks, the incident engine, the state database, metrics and the HTTP endpoint —
and handles reload (SIGHUP, POST /-/reload), stop (SIGTERM) and systemd's notify protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from pydantic import ValidationError

from checks import execute
from checks.base import Result
from checks.values import parse_duration
from probe import control, sdnotify, webconfig
from probe.config import Check, Config, ConfigError, Maintenance, error_text, load
from probe.engine import Engine, Transition, restore_check, restore_group, window_matches
from probe.log import fields
from probe.metrics import Metrics, View
from probe.scheduler import Scheduler
from probe.secrets import known
from probe.store import Batch, Store, StoreError
from probe.supervisor import EXIT_LOOP_FAILED, Progress, Supervisor
from probe.tickets.outbox import Context, Dispatcher, OutboxMetrics
from probe.web import serve_http

log = logging.getLogger("probe")

FLUSH_EVERY = 0.2  # seconds between state writes: batched, never on the check's path
FLUSH_RETRY = 1.0  # seconds between state writes while the database refuses them
TICK_EVERY = 1.0  # seconds between engine ticks (maintenance ends, notes due)
MAX_PENDING_RESULTS = 20_000  # results kept in memory while the state cannot be written
STATE_RETRY = 10.0  # seconds between attempts to open the state database at start


class Daemon:
    def __init__(self, config_path: Path, config: Config) -> None:
        self.config_path = config_path
        self.config = config
        self.checks: dict[str, Check] = {c.name: c for c in config.effective_checks()}
        self.results: dict[str, Result] = {}
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.metrics = Metrics(self.registry, self._view)
        self.store = Store(config.agent.state_dir, history=config.agent.history)
        snapshot = self.store.load()
        # Windows set at run time (probe maintenance): kept apart from the configuration's,
        # which a reload replaces.
        self.adhoc: dict[int, Maintenance] = {n: Maintenance.model_validate(d)
                      for n, d in self.store.windows(time.time()).items()}
        self.engine = Engine(
            config.agent.name,
            list(self.checks.values()),
            self.windows(),
            check_states={n: restore_check(s) for n, s in snapshot.checks.items()},
            group_states={g: restore_group(s) for g, s in snapshot.groups.items()},
        )
        self.dispatcher = Dispatcher(
            self.store, config.routes, OutboxMetrics(self.registry), self._context,
            agent=config.agent.name, group_state=self._group_state,
            poll_interval=config.ticketing.poll_interval,
        )
        self._flush_soon = asyncio.Event()
        self.pending = Batch()
        self.ready = False
        self.state_writable = True
        self.stopping = asyncio.Event()
        self._scheduler: Scheduler | None = None
        # Read when scraped, rather than counted up and down (two locked updates) per check.
        self.metrics.in_flight.set_function(
            lambda: self._scheduler.in_flight if self._scheduler is not None else 0)
        self.guard: webconfig.Guard | None = None
        self.reloads = 0
        self.loops = Supervisor(self.registry, watchdog=sdnotify.watchdog_timeout())
        self._check_started: Progress = lambda: None  # the scheduler's progress: see _schedule

    def _view(self) -> View:
        return View(self.checks, self.results, self.engine)

    def _group_state(self, group: str) -> tuple[str, str | None]:
        """For reconciling tickets: is the group's outage going on?"""
        state = self.engine.groups.get(group)
        if state is not None and state.incident is not None:
            return "open", state.incident.key
        members = [self.engine.checks[n] for n in self.engine.members.get(group, [])
                   if n in self.engine.checks]
        if any(m.failures or m.bad or m.flapping for m in members):
            return "failing", None
        if members and all(m.last_state == "up" for m in members):
            return "healthy", None
        return "unknown", None

    def _context(self, group: str) -> Context:
        members = [self.checks[n] for n in self.engine.members.get(group, []) if n in self.checks]
        recent = []
        for check in members:
            recent += [{**r, "check": check.name} for r in self.store.recent_results(check.name)]
        recent.sort(key=lambda r: r["at"], reverse=True)
        return Context(members, recent[:10])

    # --- the work of one check -------------------------------------------------------------

    async def _run_check(self, check: Check, lag: float) -> bool:
        self._check_started()
        self.metrics.schedule_lag.observe(lag)
        # A result may echo a secret (a redirect to a URL with a token, a body that repeats a
        # header): its reason and evidence reach logs, status and tickets.
        result = known.redact_result(await execute(check.spec, timeout=check.timeout))
        if self.checks.get(check.name) is not check and check.name not in self.checks:
            return False  # removed by a reload while it ran
        self.results[check.name] = result
        now = time.time()
        transitions = self.engine.observe(check.name, result.state, result.reason, now)
        self.pending.results.append((check.name, result))
        self._decided(transitions)
        if result.state != "up":
            log.debug("check %s", fields(check=check.name, kind=check.kind, state=result.state,
                                         reason=result.reason))
        return result.state == "down"

    def _decided(self, transitions: list[Transition]) -> None:
        """Queue the engine's changed state with the transitions it caused: the next flush
        writes them in one transaction."""
        if self.engine.wanted and self._scheduler is not None:
            for name in self.engine.wanted:
                self._scheduler.run_soon(name)
            self.engine.wanted.clear()
        checks, groups = self.engine.take_dirty()
        self.pending.checks.update(checks)
        self.pending.groups.update(groups)
        for transition in transitions:
            transition.facts.update(known.redact_data(transition.facts))  # a URL's token
            if transition.kind == "open":
                transition.facts["ticket"] = self._policy(transition.group)
            self.pending.transitions.append((transition, self._route(transition.group)))
            self._log_transition(transition)
        if transitions:
            self._flush_soon.set()  # tickets should not wait for the next batch

    def _policy(self, group: str) -> dict[str, object]:
        """What the ticket side needs to know of the checks' ticket settings, kept with the
        open so that notes and escalation follow what was configured when it opened."""
        members = [self.checks[n] for n in self.engine.members.get(group, []) if n in self.checks]
        if not members:
            return {}
        lead = members[0]
        policy = lead.ticket
        failing = [self.results[m.name] for m in members
                   if m.name in self.results and self.results[m.name].state == "down"]
        # Only certificates about to expire, still serving: a warning, not an outage.
        expiring = bool(failing) and all(r.evidence.get("expiring") for r in failing)
        return {
            "priority": policy.expiry_priority if expiring else policy.priority,
            "expiring": expiring,
            "escalate_after": policy.escalate_after,
            "on_human_close": policy.on_human_close,
            "title_template": policy.title_template,
            "body_template": policy.body_template,
            "runbook": lead.runbook,
            "dashboard": lead.dashboard,
        }

    def _route(self, group: str) -> str | None:
        for name in self.engine.members.get(group, []):
            policy = self.checks[name].ticket
            if policy.enabled and policy.route is not None:
                return policy.route
        return None

    def _log_transition(self, t: Transition) -> None:
        facts = t.facts
        if t.kind == "open":
            self.metrics.opened.labels(t.group).inc()
            log.warning("incident opened %s", fields(
                group=t.group, key=t.key, why=facts["why"], reason=facts["reason"],
                unreachable=",".join(facts["unreachable"]) or None))
        elif t.kind == "resolve":
            self.metrics.resolved.labels(t.group).inc()
            log.warning("incident resolved %s", fields(
                group=t.group, key=t.key, down_for=facts["down_for_text"],
                how=facts["recovered"]))
        else:
            log.info("incident still open %s", fields(group=t.group, key=t.key,
                                                      reason=facts["reason"]))

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
        checks = list(self.checks.values())
        if not checks:
            return None
        return min(c.interval for c in checks) + max(c.timeout for c in checks)

    async def _flusher(self, progress: Progress) -> None:
        failing_since: float | None = None
        while True:
            progress()
            try:
                async with asyncio.timeout(FLUSH_EVERY if failing_since is None else FLUSH_RETRY):
                    await self._flush_soon.wait()
            except TimeoutError:
                pass
            self._flush_soon.clear()
            failing_since = await self.flush(failing_since)

    async def flush(self, failing_since: float | None = None) -> float | None:
        """Write what is pending; on failure keep it, in order, for the next try."""
        if not self.pending:
            return failing_since
        batch, self.pending = self.pending, Batch()
        try:
            await asyncio.to_thread(self.store.write, batch)
        except StoreError as err:
            batch.merge(self.pending)
            # Decisions and states are kept whatever it costs; the history of results is
            # only history: while the disk refuses, keep its newest part, not all of it.
            del batch.results[:-MAX_PENDING_RESULTS]
            self.pending = batch
            self.metrics.state_errors.inc()
            self.metrics.state_ok.set(0)
            self.state_writable = False
            if failing_since is None:
                log.error("state not saved, retrying %s", fields(error=err))
            return failing_since or time.time()
        except Exception:
            # A bug, not the disk; the transaction's COMMIT is its last statement, so nothing
            # was written: keep the decisions for the flusher the supervisor restarts.
            batch.merge(self.pending)
            self.pending = batch
            raise
        if failing_since is not None:
            log.warning("state saved again %s", fields(after=f"{time.time() - failing_since:.0f}s"))
        self.metrics.state_ok.set(1)
        self.state_writable = True
        if batch.transitions:
            self.dispatcher.wake()
        return None

    async def _ticker(self, progress: Progress) -> None:
        while True:
            progress()
            await asyncio.sleep(TICK_EVERY)
            self._decided(self.engine.tick(time.time()))

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
            self.config = config
            self.checks = {c.name: c for c in config.effective_checks()}
            for name in list(self.results):
                if name not in self.checks:
                    del self.results[name]
            self._decided(self.engine.reconfigure(list(self.checks.values()),
                                                  self.windows(), time.time()))
            if self._scheduler is not None:
                self._scheduler.update(list(self.checks.values()))
            self.dispatcher.update_routes(config.routes)
            self._secure(config)
            self.dispatcher.poll_interval = config.ticketing.poll_interval
            self.metrics.reload_ok.set(1)
            self.metrics.reload_time.set(time.time())
            log.info("configuration reloaded %s", fields(summary=config.summary()))
            return []
        finally:
            self.reloads += 1
            control.write(self.store.path.parent,
                          control.Record(os.getpid(), self.reloads, not errors, errors))
            sdnotify.notify("READY=1", f"STATUS={self._status_line()}")

    # --- maintenance set at run time ----------------------------------------------------------

    def windows(self) -> list[Maintenance]:
        return [*self.config.maintenance, *self.adhoc.values()]

    def add_window(self, request: dict[str, Any]) -> tuple[int, Maintenance]:
        """A one-off window from now: `checks` and/or `services`, `reason`, and `duration` (or
        `end`). Raises ValueError in words (a window that matches no check is refused), and
        StoreError when it cannot be recorded."""
        if not isinstance(request, dict):
            raise ValueError("expected a JSON object")
        unknown = set(request) - {"checks", "services", "reason", "duration", "end"}
        if unknown:
            raise ValueError(f"unknown key {sorted(unknown)[0]!r}")
        if ("duration" in request) == ("end" in request):
            raise ValueError("give duration (like 2h) or end, one of them")
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        end: Any = request.get("end")
        if "duration" in request:
            try:
                end = (now + dt.timedelta(seconds=parse_duration(request["duration"]))).isoformat()
            except ValueError as err:
                raise ValueError(f"duration: {err}") from None
        data: dict[str, Any] = {k: request[k] for k in ("checks", "services", "reason")
                                if k in request}
        data.update(start=now.isoformat(), end=end)
        try:
            window = Maintenance.model_validate(data)
        except ValidationError as err:
            raise ValueError(error_text(err)) from None
        if not any(window_matches(window, c) for c in self.checks.values()):
            raise ValueError("names no check or service that probe runs")
        assert window.end is not None
        number = self.store.add_window(window.model_dump(mode="json"), window.end.timestamp())
        self.adhoc[number] = window
        self._maintenance_changed()
        log.warning("maintenance set %s", fields(id=number, checks=window.checks,
                                                 services=window.services, until=end,
                                                 reason=window.reason))
        return number, window

    def end_window(self, number: int) -> bool:
        """Raises StoreError, and leaves the window on, when that cannot be recorded."""
        if number not in self.adhoc:
            return False
        self.store.end_window(number)
        del self.adhoc[number]
        self._maintenance_changed()
        log.warning("maintenance ended %s", fields(id=number))
        return True

    def _maintenance_changed(self) -> None:
        self._decided(self.engine.reconfigure(list(self.checks.values()), self.windows(),
                                              time.time()))

    def _secure(self, config: Config) -> webconfig.Guard:
        """At start and on each reload: learn the configuration's secret values (so that logs,
        status and tickets never show them), apply the web configuration, and warn of what is
        left open."""
        known.add(config.secret_values())
        known.install()
        path = config.agent.web_config
        try:
            web = webconfig.load(path) if path is not None else None
            if self.guard is None:
                self.guard = webconfig.Guard(web)
            else:
                for note in self.guard.update(web):
                    log.warning(note)
        except (ConfigError, webconfig.TlsFileError) as err:
            if self.guard is not None:  # a reload: the file changed after it was validated
                log.error("web_config not reloaded %s", fields(error=err))
                return self.guard
            log.error("cannot start %s", fields(error=err))
            raise SystemExit(2) from None
        for note in (web.notes() if web else []):
            log.info(note)
        for warning in security_warnings(config, web):
            log.warning(warning)
        return self.guard

    def _status_line(self) -> str:
        open_incidents = sum(1 for g in self.engine.groups.values() if g.incident)
        return f"{len(self.checks)} checks, {open_incidents} open incidents"

    async def serve(self) -> None:
        """Run until SIGTERM, or until a loop keeps failing (`loops.gave_up` then names it)."""
        guard = self._secure(self.config)  # before any check runs or the endpoint answers
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        self._decided(self.engine.reconfigure(list(self.checks.values()),
                                              self.windows(), time.time()))
        scheduler = self._scheduler = Scheduler(
            self._run_check, self.config.agent.max_concurrency, on_skip=self._skipped,
        )
        scheduler.update(list(self.checks.values()))
        self.loops.add("scheduler", self._schedule, every=self._cadence)
        self.loops.add("flusher", self._flusher, every=lambda: FLUSH_RETRY)
        self.loops.add("ticker", self._ticker, every=lambda: TICK_EVERY)
        self.loops.add("dispatcher", self.dispatcher.serve, every=self.dispatcher.delivery_every)
        self.loops.add("watcher", self.dispatcher.watch, every=self.dispatcher.watch_every)
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
        control.write(self.store.path.parent, control.Record(os.getpid()))
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
        try:
            if await self.flush() is not None:
                log.error("state not saved at stop: the last decisions will be taken again")
        except Exception:  # the bug that stopped the flusher: said, and the stop goes on
            log.exception("state not saved at stop: the last decisions will be taken again")
        await self.dispatcher.close()
        self.store.close()
        control.remove(self.store.path.parent, os.getpid())


def security_warnings(config: Config, web: webconfig.WebConfig | None) -> list[str]:
    """What an operator should hear at start: an endpoint open to the network, a helpdesk
    whose certificate is not verified."""
    warnings = [webconfig.exposure_warning(config.agent.listen, web)]
    warnings += [f"route {name} does not verify the helpdesk's TLS certificate"
                 for name, route in config.routes.items()
                 if not route.tls_verify and route.backend != "local"]
    return [w for w in warnings if w]


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
            daemon = Daemon(config_path, config)
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
