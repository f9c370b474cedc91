"""The three scenarios, each returning its figures as plain JSON-able dicts:

- `kinds`: CPU per check of each kind, probe's whole daemon side by side with blackbox_exporter;
- `scale`: 100 to 10,000 checks at a 10 s interval on one core: lag, missed runs, CPU, memory;
- `tickets`: time from the deciding result to the helpdesk's acknowledgement of the ticket.
"""

from __future__ import annotations

import itertools
import math
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import blackbox, daemon, rt
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
