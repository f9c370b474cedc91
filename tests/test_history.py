"""The history (probe.history) on a real state database, and availability (probe.availability)
as its rule says: a blip under the threshold is not down, time nobody watched is n/a, never
100 % with downtime, maintenance excluded or counted as configured."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from checks.base import Result
from probe import history
from probe.archive import Archive, Keep, sqlite_query
from probe.availability import compute, merged, percent_text
from probe.config import Config
from probe.engine import Engine
from probe.history import DAY, HOUR, MINUTE, Bucket, Recorder
from probe.store import Batch, Store

KEEP = Keep(48 * HOUR, 30 * DAY, 400 * DAY)
KEEP_BY_SIZE = {MINUTE: KEEP.minutes, HOUR: KEEP.hours, DAY: KEEP.days}
T0 = 1_764_547_200.0  # 2025-12-01T00:00:00Z, a Monday


def result(at: float, state: str = "up", duration: float = 0.05,
           phases: dict[str, float] | None = None) -> Result:
    return Result(kind="http", target="http://127.0.0.1/", state=state,  # type: ignore[arg-type]
                  duration=duration, started_at=at, reason="" if state == "up" else "HTTP 503",
                  phases=phases or {})


def record(store: Store, recorder: Recorder, name: str, start: float, seconds: int,
           every: float = 10.0, state: str = "up", maintenance: bool = False) -> None:
    t = start
    while t < start + seconds:
        recorder.add(name, result(t, state), interval=every, maintenance=maintenance)
        t += every
    store.write(Batch(minutes=recorder.rows()))


def test_minutes_roll_up_into_hours_and_days_with_their_quantiles(tmp_path: Path) -> None:
    store = Store(tmp_path)
    recorder = Recorder()
    # Two hours of results every 10 s; in the second hour a third of them take 900 ms.
    for i in range(720):
        at = T0 + i * 10
        slow = i >= 360 and i % 3 == 0
        recorder.add("web", result(at, duration=0.9 if slow else 0.1,
                                   phases={"connect": 0.01, "processing": 0.05}),
                     interval=10, maintenance=False)
    store.write(Batch(minutes=recorder.rows()))
    assert store.query("SELECT count(*) FROM history_minutes") == [(120,)]

    assert store.roll_up(T0 + DAY + 2 * history.ROLL_AFTER, KEEP_BY_SIZE) == 24 + 1
    hours = store.query("SELECT t, n, covered, dsum, dmax, p50, p95, ph2, ph4 FROM"
                        " history_hours WHERE n > 0 ORDER BY t")
    assert [(t - T0, n) for t, n, *_ in hours] == [(0, 360), (HOUR, 360)]
    # The first result covers nothing: monitoring began with it.
    assert hours[0][2] == (359 * 10) * 1000 and hours[1][2] == 360 * 10 * 1000
    assert hours[0][5:7] == (100, 100)  # p50, p95 of the minutes' means
    assert hours[1][3] == 120 * 900 + 240 * 100 and hours[1][4] == 900
    assert hours[1][6] > 300  # the slow minutes show at p95
    # http's phases in their order: resolve, connect, tls, processing, transfer
    assert hours[0][7:] == (3600, 18000)
    ((n, covered),) = store.query("SELECT n, covered FROM history_days")
    assert (n, covered) == (720, 719 * 10 * 1000)
    # Rolled once: nothing more to do until the next hour closes.
    assert store.roll_up(T0 + DAY + 2 * history.ROLL_AFTER, KEEP_BY_SIZE) == 0


def test_the_minutes_being_counted_are_seen_and_left_in_place() -> None:
    recorder = Recorder()
    for i in range(3):
        recorder.add("web", result(T0 + i * 10, "down" if i else "up"), interval=10,
                     maintenance=False)
    (row,) = recorder.peek(["web", "api"])["web"]
    assert row[:6] == ("web", T0, 3, 2, 0, 20_000)  # 3 results, 2 failed, 20 s covered
    assert recorder.rows(before=T0 + 59) == []  # the minute is not over
    assert recorder.rows(before=T0 + 60) == [row]
    assert recorder.peek(["web"]) == {}


def test_a_minute_written_twice_adds_up_and_old_rows_go(tmp_path: Path) -> None:
    """Two agents (or one, before and after a restart) writing one minute add to it; rows
    older than what each resolution keeps are deleted when the next hour is rolled up."""
    store = Store(tmp_path)
    first, second = Recorder(), Recorder()
    record(store, first, "web", T0, 30, every=10)
    record(store, second, "web", T0 + 30, 30, every=10)
    assert store.query("SELECT n FROM history_minutes") == [(6,)]
    later = T0 + 3 * DAY
    record(store, Recorder(), "web", later, 60)
    store.roll_up(later + HOUR + 2 * history.ROLL_AFTER, KEEP_BY_SIZE)
    assert store.query("SELECT min(t) FROM history_minutes") == [(later,)]


def bucket(start: float, size: int = MINUTE, covered: float | None = None, na: float = 0,
           maintenance: float = 0) -> Bucket:
    return Bucket(int(start), size, 6, 0, 0, size if covered is None else covered, na,
                  maintenance, 300, 60, None, None, None)


def test_availability_counts_down_only_in_incidents_and_time_unwatched_as_na() -> None:
    start, end = T0, T0 + HOUR
    minutes = [bucket(start + i * MINUTE) for i in range(30, 60)]  # watched from :30 only
    blip_free = compute(minutes, [], start, end, "exclude")
    assert blip_free.percent == 100 and blip_free.text == "100 %"
    assert blip_free.na == pytest.approx(30 * MINUTE)

    down = merged([(start + 40 * MINUTE, start + 40 * MINUTE + 1.5)], start, end)
    figure = compute(minutes, down, start, end, "exclude")
    assert figure.down == pytest.approx(1.5)
    assert figure.percent == pytest.approx((1800 - 1.5) / 1800 * 100)
    assert figure.text == "99.91 %"

    tiny = compute([bucket(start, size=DAY)], merged([(start, start + 0.5)], start, start + DAY),
                   start, start + DAY, "exclude")
    assert tiny.text == "99.9994 %"  # never "100 %" with downtime
    assert compute([], [], start, end, "exclude").text == "n/a"
    assert percent_text(99.99999, 1) == "99.99999 %"
    assert percent_text(99.996, 10) == "99.996 %"  # cut, never rounded up
    assert percent_text(97.456, 10) == "97.45 %"
    assert percent_text(99.95, 10) == "99.95 %"


@pytest.mark.parametrize(("rule", "percent"), [("exclude", 100.0), ("up", 100.0),
                                               ("down", 50.0)])
def test_maintenance_is_excluded_or_counted_as_configured(rule: str, percent: float) -> None:
    start, end = T0, T0 + 2 * MINUTE
    buckets = [bucket(start), bucket(start + MINUTE, maintenance=MINUTE)]
    figure = compute(buckets, [], start, end, rule)  # type: ignore[arg-type]
    assert figure.percent == pytest.approx(percent)
    assert figure.maintenance == MINUTE
    assert figure.na == 0  # maintenance is its own column, never n/a


def test_downtime_follows_the_incident_from_the_first_failed_result(tmp_path: Path) -> None:
    config = Config.model_validate({"agent": {"name": "a", "state_dir": str(tmp_path)},
                                    "defaults": {"failure_threshold": 3},
                                    "checks": [{"name": "web",
                                                "http": {"url": "http://127.0.0.1/"}}]})
    store = Store(tmp_path)
    engine = Engine("a", config.effective_checks())
    transitions = []
    # a blip of two failures (under the threshold), then an outage of four, then recovery
    states = ["up", "down", "down", "up", "up", "down", "down", "down", "down", "up", "up"]
    for i, state in enumerate(states):
        transitions += engine.observe("web", state, "HTTP 503", T0 + i * 10)  # type: ignore[arg-type]
    store.write(Batch(transitions=[(t, None) for t in transitions]))
    assert [t.kind for t in transitions] == ["open", "resolve"]
    assert store.query("SELECT check_name, since, until FROM downtime") == [
        ("web", T0 + 50, T0 + 100)]

    archive = Archive(sqlite_query(store), KEEP)
    downs = asyncio.run(archive.downtime(["web"], T0, T0 + HOUR))
    assert downs == {"web": [("a/web/1", T0 + 50, T0 + 100)]}
    (row,) = asyncio.run(archive.incidents())
    assert (row.key, row.checks, row.first_failure_at, row.resolved_at) == (
        "a/web/1", ["web"], T0 + 50, T0 + 100)
