"""The scenarios, each returning its figures as plain JSON-able dicts:

- `kinds`: CPU per check of each kind, probe's whole daemon side by side with blackbox_exporter;
- `scale`: 100 to 10,000 checks at a 10 s interval on one core: lag, missed runs, CPU, memory;
- `tickets`: time from the deciding result to the helpdesk's acknowledgement of the ticket;
- `cluster`: three agents sharing one PostgreSQL: statements and CPU per result, the handover
  of a killed agent's checks, the time to ticket;
- `sites`: three sites of two agents that vote, quorum 2: statements and CPU per result, the
  time from the deciding site's result to the ticket.
"""

from __future__ import annotations

import itertools
import json
import math
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench import blackbox, daemon, postgres, rt
from bench.desk import Desk
from bench.proc import Processes
from bench.targets import Targets
from probe import scheduler

KINDS = ("http", "https", "tcp", "tls", "dns", "icmp")
CONCURRENCY = 50
# The scale mix: mostly HTTP and ports, as in the configurations we see; tls and https the
# costliest, as a tenth.
MIX = {"http": 40, "tcp": 20, "dns": 15, "icmp": 15, "tls": 5, "https": 5}
SCALE_INTERVAL = 10.0
LAG_TARGET = 0.05


@dataclass
class Bench:
    """What every scenario gets: the processes it may start, a work directory, the targets,
    where the probe under test comes from."""

    processes: Processes
    directory: Path
    targets: Targets
    say: Callable[[str], None]
    source: Path = daemon.REPO


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# --- kinds --------------------------------------------------------------------------------------


def kinds(bench: Bench, rows: list[dict[str, Any]], *, count: int, checks: int, reps: int,
          which: Sequence[str] = KINDS) -> None:
    """For each kind, a row in `rows`: CPU-ms per check of the probe daemon and per probe of
    blackbox_exporter, each over `count` runs, `reps` times."""
    exporter = blackbox.start(bench.processes, bench.directory / "blackbox", bench.targets)
    for kind in which:
        module, target = blackbox.probe_of(kind, bench.targets)
        probe_ms: list[float] = []
        blackbox_ms: list[float] = []
        failures = not_up = 0
        for rep in range(reps):
            blackbox.load(exporter, module, target, min(count, 500))  # warm up
            before = exporter.process.cpu_seconds()
            failures += blackbox.load(exporter, module, target, count, CONCURRENCY)
            blackbox_ms.append((exporter.process.cpu_seconds() - before) * 1000 / count)
            cpu_ms, down = _probe_cpu(bench, kind, count=count, checks=checks, rep=rep)
            probe_ms.append(cpu_ms)
            not_up += down
            bench.say(f"  {kind} #{rep + 1}: probe {probe_ms[-1]:.3f} CPU-ms/check, "
                      f"blackbox {blackbox_ms[-1]:.3f} CPU-ms/probe")
        ratios = [p / b for p, b in zip(probe_ms, blackbox_ms, strict=True)]
        rows.append({
            "kind": kind, "probes": count, "repetitions": reps, "concurrency": CONCURRENCY,
            "probe_cpu_ms": spread(probe_ms), "blackbox_cpu_ms": spread(blackbox_ms),
            "ratio": spread(ratios), "blackbox_failures": failures, "probe_not_up": not_up,
        })
    bench.processes.stop(exporter.process)


def _probe_cpu(bench: Bench, kind: str, *, count: int, checks: int,
               rep: int) -> tuple[float, int]:
    """CPU-ms per check of a daemon running `checks` checks of `kind` every second, over a
    window of about `count` runs after start-up; and how many of its results were not up."""
    interval = 1.0
    specs = [{"name": f"{kind}-{n:04d}", **daemon.spec(kind, bench.targets)}
             for n in range(checks)]
    probe = daemon.start(
        bench.processes, bench.directory / f"kinds-{kind}-{rep}", specs,
        defaults={"interval": "1s", "retry_interval": "1s", "timeout": "1s",
                  "ticket": {"enabled": False}},
        agent={"max_concurrency": CONCURRENCY}, source=bench.source,
    )
    time.sleep(interval + 1)  # every check has run once: start-up is behind us
    first = probe.scrape()
    cpu = probe.process.cpu_seconds()
    time.sleep(count / (checks / interval))
    cpu = probe.process.cpu_seconds() - cpu
    last = probe.scrape()
    bench.processes.stop(probe.process)
    runs = last.lag_count - first.lag_count
    down: int = probe.query("SELECT COUNT(*) FROM results WHERE state != 'up'")[0][0]
    if down:
        reason = probe.query("SELECT reason FROM results WHERE state != 'up' LIMIT 1")[0][0]
        bench.say(f"  warning: {down} {kind} results were not up: {reason}")
    return cpu * 1000 / runs, down


# --- scale --------------------------------------------------------------------------------------


def mix(size: int, targets: Targets, shares: dict[str, float]) -> list[dict[str, Any]]:
    checks = []
    for kind, share in shares.items():
        n = round(size * share / sum(shares.values()))
        checks += [{"name": f"{kind}-{i:05d}", **daemon.spec(kind, targets)} for i in range(n)]
    return checks


def scale(bench: Bench, rows: list[dict[str, Any]], *, sizes: Sequence[int], duration: float,
          cpu: int, shares: dict[str, float]) -> None:
    """For each size, a row in `rows`."""
    for size in sizes:
        rows.append(_scale_one(bench, mix(size, bench.targets, shares), duration=duration,
                               cpu=cpu))
        rows[-1]["mix"] = shares
        r = rows[-1]
        bench.say(f"  {size} checks: lag p99 {r['lag_p99_ms']:.1f} ms, missed {r['missed']}, "
                  f"CPU {r['cpu_share']:.0%}, RSS {r['rss_max_mb']:.0f} MB")


def _scale_one(bench: Bench, checks: list[dict[str, Any]], *, duration: float,
               cpu: int) -> dict[str, Any]:
    size = len(checks)
    history = math.ceil((duration + 3 * SCALE_INTERVAL) / SCALE_INTERVAL) + 10
    started = time.monotonic()
    probe = daemon.start(
        bench.processes, bench.directory / f"scale-{size}", checks,
        defaults={"interval": "10s", "retry_interval": "10s", "timeout": "5s",
                  "ticket": {"enabled": False}},
        agent={"history": history}, cpus={cpu}, source=bench.source,
    )
    startup = time.monotonic() - started
    rss = probe.process.rss_bytes()

    def sleep(seconds: float) -> None:
        nonlocal rss
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(1.0, left))
            rss = max(rss, probe.process.rss_bytes())

    sleep(SCALE_INTERVAL + 2)
    first = probe.scrape()
    cpu_first = probe.process.cpu_seconds()
    sleep(duration)
    cpu_used = probe.process.cpu_seconds() - cpu_first
    last = probe.scrape()
    rss = max(rss, probe.process.rss_bytes())
    bench.processes.stop(probe.process)
    window = last.at - first.at
    runs = last.lag_count - first.lag_count
    expected = len(checks) * window / SCALE_INTERVAL
    lags, missed = _runs_from_db(probe, first.at, last.at)
    # Leave out the runs that fell due while the first scrape held the event loop (building
    # the answer, then freeing it: as long again, seen with 10,000 checks): what the scheduler
    # does between scrapes, apart from what a scrape costs it.
    quiet = [lag for due, lag in lags if not first.at - first.took <= due <= first.at + first.took]
    down = probe.query("SELECT COUNT(*) FROM results WHERE state != 'up'")[0][0]
    return {
        "checks": len(checks), "interval_s": SCALE_INTERVAL, "window_s": round(window, 1),
        "startup_s": round(startup, 2),
        "runs": int(runs), "runs_expected": round(expected),
        "skipped": int(last.skipped), "missed": missed, "not_up": down,
        "lag_p50_ms": daemon.quantile(0.50, first, last) * 1000,
        "lag_p99_ms": daemon.quantile(0.99, first, last) * 1000,
        "lag_max_bucket_ms": daemon.max_bucket(first, last) * 1000,
        "lag_within_50ms": daemon.share_within(LAG_TARGET, first, last),
        "db_lag_p50_ms": percentile([lag for _, lag in lags], 0.50) * 1000,
        "db_lag_p99_ms": percentile([lag for _, lag in lags], 0.99) * 1000,
        "db_lag_max_ms": max((lag for _, lag in lags), default=math.nan) * 1000,
        "quiet_lag_p99_ms": percentile(quiet, 0.99) * 1000,
        "quiet_lag_max_ms": max(quiet, default=math.nan) * 1000,
        "cpu_share": cpu_used / window, "cpu_ms_per_check": cpu_used * 1000 / runs,
        "rss_max_mb": rss / 2**20, "scrape_s": round(last.took, 3),
    }


def _runs_from_db(probe: daemon.Daemon, since: float,
                  until: float) -> tuple[list[tuple[float, float]], int]:
    """From each check's run history: (due time, spread) of each run in the window, how much
    later than the check's earliest run it started (the cadence is due + interval, so run k
    is due at first + k * interval), and the runs missed (gaps of more than 1.5 intervals).
    The scheduler starts checks due within 50 ms together, early, so the spread holds that
    too: it bounds the lag from above (the histogram has the lag itself)."""
    starts: dict[str, list[float]] = {}
    for name, at in probe.query("SELECT check_name, at FROM results ORDER BY check_name, seq"):
        starts.setdefault(name, []).append(at)
    lags: list[tuple[float, float]] = []
    missed = 0
    for ats in starts.values():
        offsets = [at - round((at - ats[0]) / SCALE_INTERVAL) * SCALE_INTERVAL for at in ats]
        base = min(offsets)
        lags += [(at - (o - base), o - base) for o, at in zip(offsets, ats, strict=True)
                 if since <= at <= until]
        for a, b in itertools.pairwise(ats):
            if b - a > 1.5 * SCALE_INTERVAL:
                missed += round((b - a) / SCALE_INTERVAL) - 1
    return lags, missed


# --- tickets ------------------------------------------------------------------------------------


def tickets(bench: Bench, *, backend: str, incidents: int, rate: float,
            rt_peer: rt.Rt | None = None) -> dict[str, Any]:
    """`incidents` tcp checks at closed ports, each its own incident on its first failure,
    their first runs evenly spaced at `rate` per second; time to ticket = the open's
    delivered_at - created_at (the deciding result's time) in the outbox."""
    interval = max(5.0, incidents / rate)
    names = _evenly_spread(incidents, interval)
    with ExitStack() as stack:
        closed = []
        for _ in range(incidents):
            # Bound, never listening: a connection is refused, and no one else takes the port.
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            closed.append(sock.getsockname()[1])
        checks = [{"name": name, "tcp": {"host": "127.0.0.1", "port": port}}
                  for name, port in zip(names, closed, strict=True)]
        if backend == "rt":
            assert rt_peer is not None
            token_file = bench.directory / "rt-token"
            token_file.write_text(rt_peer.token + "\n")
            route = {"backend": "rt", "url": rt_peer.url, "token_file": str(token_file),
                     "queue": "General", "key_field": rt.KEY_FIELD, "timeout": "30s"}
        else:
            route = {"backend": "local"}
        probe = daemon.start(
            bench.processes, bench.directory / f"tickets-{backend}-{time.time_ns()}", checks,
            defaults={
                "interval": f"{interval:g}s", "retry_interval": f"{interval:g}s",
                "timeout": "2s", "failure_threshold": 1, "success_threshold": 1,
                "flapping": {"enabled": False},
                "ticket": {"route": backend, "escalate_after": None},
            },
            ticketing={"routes": {backend: route}, "poll_interval": "1h"}, source=bench.source,
        )
        deadline = time.monotonic() + interval + 120
        sql = "SELECT COUNT(*) FROM outbox WHERE action = 'open' AND delivered_at IS NOT NULL"
        while probe.query(sql)[0][0] < incidents and time.monotonic() < deadline:
            time.sleep(0.5)
        bench.processes.stop(probe.process)
    rows = probe.query("SELECT delivered_at - created_at FROM outbox"
                       " WHERE action = 'open' AND delivered_at IS NOT NULL")
    if backend == "rt" and rt_peer is not None:
        rt.resolve(rt_peer, [ref for (ref,) in probe.query("SELECT ref FROM tickets")])
    seconds = [r[0] for r in rows]
    return {
        "backend": backend, "incidents": incidents, "delivered": len(seconds),
        "rate_per_s": incidents / interval,
        "p50_ms": percentile(seconds, 0.5) * 1000, "p99_ms": percentile(seconds, 0.99) * 1000,
        "max_ms": max(seconds, default=math.nan) * 1000,
    }


def _evenly_spread(count: int, interval: float) -> list[str]:
    """Check names whose start offsets (the scheduler spreads a check by a hash of its name)
    fall into `count` evenly spaced slots of the interval: incidents at the stated rate, not
    in the clusters a hash makes, which would measure the helpdesk's queue, not probe."""
    slot = interval / count
    names = []
    for n in range(count):
        for j in itertools.count():
            name = f"closed-{n:04d}-{j}"
            if 0 <= scheduler.spread(name, interval) - n * slot < slot / 10:
                names.append(name)
                break
    return names


def rt_create(rt_peer: rt.Rt, count: int) -> dict[str, Any]:
    seconds = rt.create_latency(rt_peer, count, str(time.time_ns()))
    return {"creates": count, "p50_ms": percentile(seconds, 0.5) * 1000,
            "p99_ms": percentile(seconds, 0.99) * 1000, "max_ms": max(seconds) * 1000}


# --- cluster ------------------------------------------------------------------------------------

CLUSTER_AGENTS = ("dc1-a", "dc1-b", "dc1-c")
CLUSTER_INTERVAL = 10.0
AGENT_TTL = 5.0  # the default


def cluster(bench: Bench, *, checks: int, failing: int, duration: float) -> dict[str, Any]:
    """Three agents sharing `checks` checks (http and tcp against nginx, and `failing` http
    checks of targets the benchmark breaks) and one PostgreSQL, every check its own incident
    group, at a 10 s interval. In order: a steady window (statements, CPU of the agents and of
    the database per result), `failing` incidents (deciding result → webhook arrival), one agent
    killed (-9: how long until its checks run elsewhere); then the same three agents, each alone
    on SQLite with its share of the checks, over the same window: the CPU baseline."""
    server = postgres.start(bench.processes)
    desk = Desk(bench.processes)
    specs, defaults, ticketing = _cluster_config(bench, desk, checks, failing)
    agents = {name: daemon.start(
        bench.processes, bench.directory / f"cluster-{name}", specs, defaults=defaults,
        agent={"name": name}, ticketing=ticketing, source=bench.source,
        cluster={"database": "env:PROBE_DATABASE", "site": "dc1", "agent_ttl": f"{AGENT_TTL:g}s"},
        env={"PROBE_DATABASE": server.dsn()}) for name in CLUSTER_AGENTS}
    with psycopg.connect(server.dsn(), autocommit=True) as db:
        owners = _until_shared(db, CLUSTER_AGENTS, len(specs), time.monotonic() + 60)
        bench.say(f"  checks held: {', '.join(f'{a} {n}' for a, n in sorted(owners.items()))}")
        time.sleep(CLUSTER_INTERVAL + 3)  # every check ran once under its owner
        steady = _steady(bench, db, server, agents, duration)
        bench.say(f"  steady: {steady['statements_per_result']:.3f} statements per result "
                  f"({steady['statements_per_result_no_tx']:.3f} without BEGIN/COMMIT), agents "
                  f"{steady['agent_cpu_ms_per_check']:.3f} CPU-ms/check, PostgreSQL "
                  f"{steady['postgres_cpu_s_per_1000']:.3f} CPU-s per 1,000 results")
        tickets = _cluster_tickets(db, desk, failing)
        bench.say(f"  tickets: {tickets['delivered']}/{failing}, p50 {tickets['p50_ms']:.0f} ms, "
                  f"p99 {tickets['p99_ms']:.0f} ms")
        handover = _handover(db, agents[CLUSTER_AGENTS[0]], CLUSTER_AGENTS[0])
        bench.say(f"  handover of {handover['checks']} checks: p50 {handover['p50_s']:.1f} s, "
                  f"p99 {handover['p99_s']:.1f} s, max {handover['max_s']:.1f} s")
    for agent in agents.values():
        bench.processes.stop(agent.process)
    baseline = _sqlite_baseline(bench, specs, owners, defaults, ticketing, duration)
    bench.say(f"  alone on SQLite: {baseline['cpu_ms_per_check']:.3f} CPU-ms/check")
    return {
        "agents": len(CLUSTER_AGENTS), "checks": len(specs), "interval_s": CLUSTER_INTERVAL,
        "agent_ttl_s": AGENT_TTL, "fsync": "on", "postgres": server.bindir.parent.name,
        "held": owners, "steady": steady, "sqlite": baseline,
        "cpu_ratio": steady["agent_cpu_ms_per_check"] / baseline["cpu_ms_per_check"],
        "tickets": tickets, "handover": handover,
    }


def _cluster_config(bench: Bench, desk: Desk, checks: int, failing: int
                    ) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """The checks (http and tcp against nginx, and `failing` http checks of the desk's targets),
    the defaults and the ticketing (a webhook route `desk`) of the cluster and sites scenarios."""
    specs = [{"name": f"{kind}-{n:04d}", **daemon.spec(kind, bench.targets)}
             for n in range(checks - failing) for kind in ("http", "tcp")][: checks - failing]
    specs += [{"name": f"flip-{n:03d}", "http": {"url": desk.target(n)}} for n in range(failing)]
    defaults = {"interval": f"{CLUSTER_INTERVAL:g}s", "retry_interval": "2s", "timeout": "5s",
                "failure_threshold": 3, "flapping": {"enabled": False},
                "ticket": {"route": "desk", "escalate_after": None}}
    ticketing = {"routes": {"desk": {"backend": "webhook", "url": desk.url, "timeout": "10s"}},
                 "poll_interval": "1h"}
    return specs, defaults, ticketing


def _until_shared(db: psycopg.Connection[Any], agents: Sequence[str], groups: int,
                  deadline: float) -> dict[str, int]:
    """Once every group is claimed, by all the agents: how many each holds."""
    while True:
        held = dict(db.execute("SELECT owner, count(*) FROM claims WHERE owner IS NOT NULL"
                               " GROUP BY 1").fetchall())
        if len(held) == len(agents) and sum(held.values()) == groups:
            return {str(a): int(n) for a, n in held.items()}
        if time.monotonic() > deadline:
            raise RuntimeError(f"the checks were not shared in time: {held}")
        time.sleep(0.5)


def _results_written(db: psycopg.Connection[Any]) -> int:
    """Every result ever written: each check's results are numbered (seq) by the database."""
    row = db.execute("SELECT coalesce(sum(m), 0) FROM"
                     " (SELECT max(seq) AS m FROM results GROUP BY check_name) s").fetchone()
    return int(row[0]) if row else 0


# Transaction control, counted apart: a statement of its own on the wire, but no work.
_TX = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


def _steady(bench: Bench, db: psycopg.Connection[Any], server: postgres.Postgres,
            agents: dict[str, daemon.Daemon], duration: float) -> dict[str, Any]:
    """Nothing changing for `duration`: what the database is asked and what it costs."""
    calls = server.statements()
    results = _results_written(db)
    scrapes = {name: a.scrape() for name, a in agents.items()}
    cpu = {name: a.process.cpu_seconds() for name, a in agents.items()}
    pg_cpu = server.cpu_seconds()
    started = time.monotonic()
    time.sleep(duration)
    window = time.monotonic() - started
    pg_cpu = server.cpu_seconds() - pg_cpu
    cpu = {name: a.process.cpu_seconds() - cpu[name] for name, a in agents.items()}
    runs = {name: a.scrape().lag_count - scrapes[name].lag_count for name, a in agents.items()}
    results = _results_written(db) - results
    after = server.statements()
    delta = {q: n - calls.get(q, 0) for q, n in after.items() if n > calls.get(q, 0)}
    total = sum(delta.values())
    tx = sum(n for q, n in delta.items() if q.lstrip().upper().startswith(_TX))
    top = sorted(delta.items(), key=lambda item: -item[1])[:10]
    kinds: dict[str, int] = {}
    for query, n in delta.items():
        kind = _kind(query)
        kinds[kind] = kinds.get(kind, 0) + n
    return {
        "window_s": round(window, 1), "results": results, "runs": int(sum(runs.values())),
        "statements": total, "transaction_control": tx,
        "statements_per_result": total / results, "statements_per_result_no_tx":
            (total - tx) / results,
        "statements_per_s": total / window,
        "top_statements": [{"per_s": round(n / window, 2), "query": " ".join(q.split())[:160]}
                           for q, n in top],
        "per_s_by_kind": {k: round(n / window, 2) for k, n in
                          sorted(kinds.items(), key=lambda item: -item[1])},
        "agent_cpu_ms_per_check": sum(cpu.values()) * 1000 / sum(runs.values()),
        "agent_cpu_ms_per_check_each": {
            name: cpu[name] * 1000 / runs[name] for name in agents},
        "postgres_cpu_share": pg_cpu / window,
        "postgres_cpu_s_per_1000": pg_cpu * 1000 / results,
    }


# What each statement the agents send is for, by a piece of its text; the first that matches.
_KINDS = (("votes read", "FROM votes WHERE"), ("votes write", "INSERT INTO votes"),
          ("heartbeat", "UPDATE agents SET heartbeat_at"), ("results insert", "INTO results"),
          ("outbox", "FROM outbox"), ("claims", "claims"), ("benchmark", "max(seq)"))


def _kind(query: str) -> str:
    if query.lstrip().upper().startswith(_TX):
        return "transaction control"
    return next((kind for kind, text in _KINDS if text in query), "other")


def _cluster_tickets(db: psycopg.Connection[Any], desk: Desk, count: int) -> dict[str, Any]:
    """Break `count` targets at once (their checks' slots spread them over the interval): for
    each incident, from the deciding result (incidents.opened_at, the engine's time of the
    result that reached failure_threshold) to its `open` arriving at the webhook."""
    desk.fail(range(count))
    deadline = time.monotonic() + CLUSTER_INTERVAL + 3 * 2 + 60
    while len(desk.arrivals()) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1)  # a second open for one incident would show now: counted below
    arrived = desk.arrivals()
    opened = dict(db.execute("SELECT key, extract(epoch FROM opened_at)::float8 FROM incidents"
                             ).fetchall())
    desk.fail(())
    seconds = [arrived[key] - float(at) for key, at in opened.items() if key in arrived]
    return {"incidents": count, "delivered": len(seconds), "opened": len(opened),
            "unknown_keys": len(set(arrived) - set(opened)),
            "p50_ms": percentile(seconds, 0.5) * 1000, "p99_ms": percentile(seconds, 0.99) * 1000,
            "max_ms": max(seconds, default=math.nan) * 1000}


def _handover(db: psycopg.Connection[Any], victim: daemon.Daemon, name: str) -> dict[str, Any]:
    """kill -9 of one agent: for each check it held, from the kill to the start of its first
    run by another agent (results.at, that agent's clock; a dead agent writes nothing)."""
    mine = [str(g) for (g,) in db.execute("SELECT grp FROM claims WHERE owner = %s",
                                           (name,)).fetchall()]
    killed = time.time()
    victim.process.popen.kill()
    victim.process.popen.wait()
    deadline = time.monotonic() + AGENT_TTL + 2 * CLUSTER_INTERVAL + 30
    first: dict[str, float] = {}
    while len(first) < len(mine) and time.monotonic() < deadline:
        time.sleep(0.5)
        first = {str(c): float(at) for c, at in db.execute(
            "SELECT check_name, min(extract(epoch FROM at))::float8 FROM results"
            " WHERE check_name = ANY(%s) AND at > to_timestamp(%s) GROUP BY 1",
            (mine, killed)).fetchall()}
    seconds = [at - killed for at in first.values()]
    return {"agent": name, "checks": len(mine), "ran_again": len(seconds),
            "p50_s": percentile(seconds, 0.5), "p99_s": percentile(seconds, 0.99),
            "max_s": max(seconds, default=math.nan),
            "target_s": AGENT_TTL + 1}


def _sqlite_baseline(bench: Bench, specs: list[dict[str, Any]], owners: dict[str, int],
                     defaults: dict[str, Any], ticketing: dict[str, Any],
                     duration: float) -> dict[str, Any]:
    """The same three agents, the same load on the machine, each alone on SQLite with as many
    of the checks as it held in the cluster."""
    agents = {}
    start = 0
    for name in CLUSTER_AGENTS:
        share = specs[start : start + owners.get(name, 0)]
        start += len(share)
        agents[name] = daemon.start(
            bench.processes, bench.directory / f"sqlite-{name}", share, defaults=defaults,
            agent={"name": name}, ticketing=ticketing, source=bench.source)
    time.sleep(CLUSTER_INTERVAL + 3)
    scrapes = {name: a.scrape() for name, a in agents.items()}
    cpu = {name: a.process.cpu_seconds() for name, a in agents.items()}
    time.sleep(duration)
    used = sum(a.process.cpu_seconds() - cpu[name] for name, a in agents.items())
    runs = sum(a.scrape().lag_count - scrapes[name].lag_count for name, a in agents.items())
    for agent in agents.values():
        bench.processes.stop(agent.process)
    return {"checks": sum(owners.values()), "runs": int(runs),
            "cpu_ms_per_check": used * 1000 / runs}


# --- sites that vote ----------------------------------------------------------------------------

SITES = ("eu-west", "us-east", "ap-south")
SITE_AGENTS = tuple(f"{site}-{x}" for site in SITES for x in "ab")
QUORUM = 2


def sites(bench: Bench, *, checks: int, failing: int, duration: float) -> dict[str, Any]:
    """Three sites of two agents each (every site sees the same targets on loopback) sharing
    the cluster scenario's checks and PostgreSQL, quorum 2 of 3: each site's agents run every
    check (shared among them), the agent holding a group's claim (among all six) counts the
    votes. In order: a steady window (statements and CPU per result, as in the cluster), then
    `failing` targets failing for every site at once (the deciding site's result → its vote in
    the database → the ticket at the webhook)."""
    server = postgres.start(bench.processes)
    desk = Desk(bench.processes)
    specs, defaults, ticketing = _cluster_config(bench, desk, checks, failing)
    ticketing["routes"]["oncall"] = dict(ticketing["routes"]["desk"])  # probe's own trouble
    agents = {name: daemon.start(
        bench.processes, bench.directory / f"sites-{name}", specs, defaults=defaults,
        agent={"name": name}, ticketing=ticketing, source=bench.source,
        cluster={"database": "env:PROBE_DATABASE", "site": name.rsplit("-", 1)[0],
                 "sites": list(SITES), "quorum": QUORUM, "alert_route": "oncall",
                 "agent_ttl": f"{AGENT_TTL:g}s"},
        env={"PROBE_DATABASE": server.dsn()}) for name in SITE_AGENTS}
    with psycopg.connect(server.dsn(), autocommit=True) as db:
        # the checks' groups and probe's own: one per site, one for the quorum (cluster.trouble)
        owners = _until_shared(db, SITE_AGENTS, len(specs) + len(SITES) + 1,
                               time.monotonic() + 60)
        bench.say(f"  groups held: {', '.join(f'{a} {n}' for a, n in sorted(owners.items()))}")
        _until_voted(db, len(specs) * len(SITES), time.monotonic() + 2 * CLUSTER_INTERVAL + 30)
        time.sleep(CLUSTER_INTERVAL + 3)
        steady = _steady(bench, db, server, agents, duration)
        bench.say(f"  steady: {steady['statements_per_result']:.3f} statements per result "
                  f"({steady['statements_per_s']:.1f}/s: " + ", ".join(
                      f"{k} {n:g}" for k, n in steady["per_s_by_kind"].items()) + "), agents "
                  f"{steady['agent_cpu_ms_per_check']:.3f} CPU-ms/check, PostgreSQL "
                  f"{steady['postgres_cpu_s_per_1000']:.3f} CPU-s per 1,000 results")
        owners = _until_shared(db, SITE_AGENTS, len(specs) + len(SITES) + 1,
                               time.monotonic() + 60)  # settled by now: the figure kept
        tickets = _vote_tickets(db, desk, failing)
        bench.say(f"  tickets: {tickets['delivered']}/{failing}; result → ticket p50 "
                  f"{tickets['p50_ms']:.0f} ms, p99 {tickets['p99_ms']:.0f} ms (result → vote "
                  f"p99 {tickets['vote']['p99_ms']:.0f} ms, vote → ticket p99 "
                  f"{tickets['decide']['p99_ms']:.0f} ms)")
    return {"sites": len(SITES), "agents": len(SITE_AGENTS), "quorum": QUORUM,
            "checks": len(specs), "interval_s": CLUSTER_INTERVAL, "agent_ttl_s": AGENT_TTL,
            "fsync": "on", "postgres": server.bindir.parent.name, "held": owners,
            "steady": steady, "tickets": tickets}


def _until_voted(db: psycopg.Connection[Any], votes: int, deadline: float) -> None:
    """Until every site votes healthy on every check."""
    while True:
        row = db.execute("SELECT count(*) FROM votes WHERE value = 'healthy'").fetchone()
        if row and row[0] >= votes:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{row[0] if row else 0} healthy votes of {votes} in time")
        time.sleep(0.5)


def _vote_tickets(db: psycopg.Connection[Any], desk: Desk, count: int) -> dict[str, Any]:
    """Break `count` targets for every site at once. The quorum's vote is the second site's to
    turn failing (votes.since, the database's now() in the transaction that wrote it); its
    result is the streak's `last_result_at` written with that vote (the agent's time.time()
    when the check's result came back: its duration is before it). For each incident: result →
    its vote in the database, vote → the `open` arriving at the webhook, and the sum. Each
    failing vote is read within 0.1 s of its writing, before a later result rewrites its
    streak."""
    desk.fail(range(count))
    deadline = time.monotonic() + CLUSTER_INTERVAL + 3 * 2 + 60
    first: dict[str, dict[str, tuple[float, float]]] = {}  # check → site → (since, result)

    def read() -> None:
        for name, site, since, streak in db.execute(
                "SELECT check_name, site, extract(epoch FROM since)::float8, streak FROM votes"
                " WHERE value = 'failing' AND check_name LIKE 'flip-%'").fetchall():
            first.setdefault(name, {}).setdefault(
                site, (float(since), float(json.loads(streak)["last_result_at"])))

    while len(desk.arrivals()) < count and time.monotonic() < deadline:
        read()
        time.sleep(0.1)
    time.sleep(1)  # a second open for one incident would show now: counted below
    read()
    arrived = desk.arrivals()
    group = dict(db.execute("SELECT key, grp FROM incidents").fetchall())
    desk.fail(())
    vote, decide, total = [], [], []
    for key, at in arrived.items():
        votes = sorted(first.get(group.get(key, ""), {}).values())
        if len(votes) < QUORUM:
            continue
        since, result = votes[QUORUM - 1]
        vote.append(since - result)
        decide.append(at - since)
        total.append(at - result)

    def ms(seconds: list[float]) -> dict[str, float]:
        return {"p50_ms": percentile(seconds, 0.5) * 1000,
                "p99_ms": percentile(seconds, 0.99) * 1000,
                "max_ms": max(seconds, default=math.nan) * 1000}

    return {"incidents": count, "delivered": len(total), "arrived": len(arrived),
            "opened": len(group), "unknown_keys": len(set(arrived) - set(group)),
            "measured": "the quorum's site (the 2nd to vote failing, by votes.since): its "
                        "result's end at the agent (streak last_result_at) → the vote's since "
                        "(database now()) → the open's arrival at the webhook; one clock",
            **ms(total), "vote": ms(vote), "decide": ms(decide),
            "samples_ms": sorted([round(v * 1000, 1), round(d * 1000, 1)]
                                 for v, d in zip(vote, decide, strict=True))}
