"""The history's cost (probe.history), measured in-process on a real state database:

- CPU per result: counting a result (Recorder.add), writing each minute once it is over (as
  the daemon's historian does: one row per check and minute), rolling an hour and a day up,
  for `checks` checks at one result every `interval` seconds; the sum per result, to set
  beside the daemon's own CPU per check (the scale scenario: 0.32 CPU-ms at 10,000 checks).
- The database at steady state: 48 h of minutes, 30 days of hours, 400 days of days for
  `size_checks` checks (every row as the daemon writes it), the file's size and bytes per row,
  and that size for 10,000 checks (rows are alike: the size scales with the checks).
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from checks.base import Result
from probe import history
from probe.history import DAY, HOUR, MINUTE, Recorder
from probe.store import Batch, Store

KEEP = {MINUTE: 48 * HOUR, HOUR: 30 * DAY, DAY: 400 * DAY}


def _result(at: float, rng: random.Random) -> Result:
    failed = rng.random() < 0.01
    return Result(kind="http", target="http://127.0.0.1/", state="down" if failed else "up",
                  duration=rng.uniform(0.002, 0.2), started_at=at,
                  reason="HTTP 503" if failed else "",
                  phases={"resolve": 0.0001, "connect": 0.001, "processing": 0.01,
                          "transfer": 0.0005})


def cpu(checks: int, interval: float, minutes: int, say: Any) -> dict[str, float]:
    """CPU seconds of each part over `minutes` minutes of `checks` checks."""
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as directory:
        store = Store(Path(directory))
        recorder = Recorder()
        t0 = (int(time.time() // DAY) - 3) * DAY
        names = [f"check-{i:05d}" for i in range(checks)]
        add = write = 0.0
        results = 0
        at = float(t0)
        while at < t0 + minutes * MINUTE:
            # each check once every `interval` seconds, then the minutes that are over written
            batch = [(name, _result(at + rng.random() * interval, rng)) for name in names]
            started = time.process_time()
            for name, result in batch:
                recorder.add(name, result, interval=interval, maintenance=False)
            add += time.process_time() - started
            results += len(batch)
            at += interval
            started = time.process_time()
            store.write(Batch(minutes=recorder.rows(before=at)))
            write += time.process_time() - started
        started = time.process_time()
        hours = store.roll_up(t0 + minutes * MINUTE + history.ROLL_AFTER + 1, KEEP)
        roll = time.process_time() - started
        store.close()
    say(f"  history cpu: {checks} checks, {results} results, {hours} buckets rolled up")
    return {"checks": checks, "results": results, "add_s": add, "write_s": write,
            "roll_s": roll, "rolled": hours,
            "us_per_result": (add + write + roll) / results * 1e6}


def size(checks: int, say: Any) -> dict[str, float]:
    """The file for `checks` checks at steady state, rows as the daemon writes them."""
    rng = random.Random(2)
    with tempfile.TemporaryDirectory() as directory:
        store = Store(Path(directory))
        now = int(time.time() // DAY) * DAY
        ids = []
        for i in range(checks):
            store.write(Batch(minutes=[(f"check-{i:05d}", now, 1, 0, 0, 30000, 0, 0, 50, 50,
                                        0, 1, 0, 20, 1)]))
        ids = [row[0] for row in store.query("SELECT id FROM history_checks ORDER BY id")]
        rows = 0
        for size_, keep in ((MINUTE, KEEP[MINUTE]), (HOUR, KEEP[HOUR]), (DAY, KEEP[DAY])):
            count = int(keep // size_)
            n = size_ // 30  # an http check every 30 s, as by default
            marks = ", ".join("?" * (1 + len(history.columns(size_))))
            # Oldest first, every check's row of a bucket together: the order the daemon
            # writes them in (each check's run of rows grows at its end).
            for k in reversed(range(count)):
                batch = []
                for check_id in ids:
                    mean = rng.randint(2, 200)
                    quantiles = () if size_ == MINUTE else (
                        rng.randint(20, 80), rng.randint(80, 200), rng.randint(150, 400))
                    # ms: http's phases (resolve, connect, tls, processing, transfer)
                    batch.append((check_id, now - (k + 1) * size_, n, 0, 0, size_ * 1000, 0, 0,
                                  mean * n, rng.randint(mean, 400), n // 10, n * 2, n * 9,
                                  mean * n // 2, n, *quantiles))
                sql = f"INSERT OR REPLACE INTO {history.TABLES[size_]} VALUES ({marks})"
                store.run(partial(_insert, sql, batch))
                rows += len(batch)
        store.run(lambda db: db.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        store.close()
        total = sum(p.stat().st_size for p in Path(directory).iterdir() if p.is_file())
    say(f"  history size: {checks} checks, {rows:,} rows, {total / 1e6:.1f} MB")
    return {"checks": checks, "rows": rows, "bytes": total, "bytes_per_row": total / rows,
            "bytes_at_10000": total / checks * 10_000}


def _insert(sql: str, rows: list[tuple[Any, ...]], db: sqlite3.Connection) -> None:
    db.executemany(sql, rows)


def run(say: Any, *, smoke: bool) -> dict[str, Any]:
    from bench.proc import Unavailable

    out = {
        "cpu": cpu(10_000 if not smoke else 1_000, 30.0, 125 if not smoke else 65, say),
        "size": size(500 if not smoke else 20, say),
        "dashboard": dashboard(1_000, 20 if not smoke else 3, say),
    }
    try:
        out["pg_size"] = pg_size(100 if not smoke else 10, say)
    except Unavailable as why:
        say(f"  history size on PostgreSQL: skipped: {why}")
    return out


def dashboard(checks: int, reps: int, say: Any) -> dict[str, float]:
    """The dashboard of `checks` checks served from a real state database: the model built
    from the status document and 24 h of history (Pages.dashboard), then rendered; ms each."""
    import asyncio
    import statistics

    from probe.archive import Archive, Keep, sqlite_query
    from probe.config import Config
    from probe.pages import render
    from probe.pages.build import Pages

    rng = random.Random(3)
    names = [f"check-{i:04d}" for i in range(checks)]
    with tempfile.TemporaryDirectory() as directory:
        config = Config.model_validate({
            "agent": {"name": "bench", "state_dir": directory},
            "checks": [{"name": n, "service": f"svc-{i % 20}",
                        "http": {"url": f"http://127.0.0.1:8080/{n}"}}
                       for i, n in enumerate(names)]})
        store = Store(Path(directory))
        now = time.time()
        recorder = Recorder()
        for hour in range(25):
            for name in names:
                for k in range(0, 3600, 300):
                    at = now - (24 - hour) * HOUR + k
                    recorder.add(name, _result(at, rng), interval=30, maintenance=False)
        store.write(Batch(minutes=recorder.rows()))
        store.roll_up(now, KEEP)
        doc = {"agent": "bench", "incidents": [], "ticket_actions_pending": {"count": 0},
               "ticket_actions_failed": [],
               "checks": [{"name": n, "kind": "http", "target": f"http://127.0.0.1:8080/{n}",
                           "service": f"svc-{i % 20}", "state": "up", "reason": "",
                           "duration_seconds": 0.05, "last_run_at": now,
                           "consecutive_failures": 0, "consecutive_successes": 12}
                          for i, n in enumerate(names)]}
        pages = Pages(config, Archive(sqlite_query(store), Keep(48 * HOUR, 30 * DAY, 400 * DAY)))

        async def measure() -> list[tuple[float, float]]:
            # one event loop, as the daemon's: its reads go through the same thread pool
            times = []
            for _ in range(reps + 1):
                started = time.perf_counter()
                model = await pages.dashboard(doc, [], now)
                built = time.perf_counter()
                render.dashboard(model)
                times.append((built - started, time.perf_counter() - built))
            return times[1:]  # the first read the rolled-up hours, which later ones keep

        times = asyncio.run(measure())
        store.close()
    build = sorted(t[0] * 1000 for t in times)
    total = sorted((t[0] + t[1]) * 1000 for t in times)
    say(f"  dashboard of {checks} checks from the state database: median "
        f"{statistics.median(total):.0f} ms")
    return {"checks": checks, "reps": reps, "build_median_ms": statistics.median(build),
            "median_ms": statistics.median(total), "p95_ms": total[int(0.95 * (reps - 1))]}


def pg_size(checks: int, say: Any) -> dict[str, float]:
    """As `size`, on the cluster's PostgreSQL (the benchmark's own server, probe's schema):
    the history tables' size with their keys, after VACUUM."""
    import asyncio

    import psycopg

    from bench import postgres
    from bench.proc import Processes
    from probe.tickets.pgledger import migrate_connection

    rng = random.Random(2)
    with Processes() as processes:
        server = postgres.start(processes)

        async def migrate() -> None:
            conn = await psycopg.AsyncConnection.connect(server.dsn(), autocommit=True)
            await migrate_connection(conn)
            await conn.close()

        asyncio.run(migrate())
        now = int(time.time() // DAY) * DAY
        rows = 0
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            for i in range(checks):
                conn.execute("INSERT INTO history_checks (name) VALUES (%s)", (f"check-{i:05d}",))
            ids = [row[0] for row in conn.execute("SELECT id FROM history_checks ORDER BY id")]
            for size_, keep in ((MINUTE, KEEP[MINUTE]), (HOUR, KEEP[HOUR]), (DAY, KEEP[DAY])):
                count = int(keep // size_)
                n = size_ // 30
                names = history.columns(size_)
                sql = (f"INSERT INTO {history.TABLES[size_]} (check_id, {', '.join(names)})"
                       f" VALUES ({', '.join(['%s'] * (1 + len(names)))})")
                for k in reversed(range(count)):
                    batch = []
                    for check_id in ids:
                        mean = rng.randint(2, 200)
                        quantiles = () if size_ == MINUTE else (
                            rng.randint(20, 80), rng.randint(80, 200), rng.randint(150, 400))
                        batch.append((check_id, now - (k + 1) * size_, n, 0, 0, size_ * 1000,
                                      0, 0, mean * n, rng.randint(mean, 400), n // 10, n * 2,
                                      n * 9, mean * n // 2, n, *quantiles))
                    with conn.cursor() as cursor:
                        cursor.executemany(sql, batch)
                    rows += len(batch)
            conn.execute("VACUUM ANALYZE")
            total = sum(row[0] for table in history.TABLES.values() for row in conn.execute(
                "SELECT pg_total_relation_size(%s)", (table,)))
    say(f"  history size on PostgreSQL: {checks} checks, {rows:,} rows, {total / 1e6:.1f} MB")
    return {"checks": checks, "rows": rows, "bytes": total, "bytes_per_row": total / rows,
            "bytes_at_10000": total / checks * 10_000}
