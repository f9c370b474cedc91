"""The scheduler: interval, retry_interval while failing, spread start times, the concurrency
bound, and a hanging check that delays no other. Counts are asserted with generous margins;
how late checks start at scale is the benchmark's business, not a test's."""

from __future__ import annotations

import asyncio
from collections import Counter

import yaml

from probe.config import Check, Config
from probe.scheduler import Scheduler, spread


def checks(text: str) -> list[Check]:
    return Config.model_validate(yaml.safe_load(text)).effective_checks()


async def run_for(scheduler: Scheduler, seconds: float) -> None:
    task = asyncio.create_task(scheduler.serve())
    await asyncio.sleep(seconds)
    await scheduler.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_failing_check_runs_every_retry_interval_and_a_healthy_one_every_interval() -> None:
    runs: Counter[str] = Counter()

    async def run(check: Check, lag: float) -> bool:
        runs[check.name] += 1
        return check.name == "failing"

    scheduler = Scheduler(run, 10)
    scheduler.update(checks("""
defaults: {interval: 200ms, retry_interval: 50ms, timeout: 50ms}
checks:
  - {name: healthy, tcp: {host: h, port: 1}}
  - {name: failing, tcp: {host: h, port: 2}}
"""))
    await run_for(scheduler, 1.0)
    assert 4 <= runs["healthy"] <= 6  # every 200ms for 1s
    assert 12 <= runs["failing"] <= 21  # every 50ms once it failed


async def test_a_hanging_check_delays_no_other() -> None:
    runs: Counter[str] = Counter()
    lags: list[float] = []

    async def run(check: Check, lag: float) -> bool:
        runs[check.name] += 1
        if check.name == "hangs":
            await asyncio.sleep(3600)
        lags.append(lag)
        return False

    scheduler = Scheduler(run, 10)
    scheduler.update(checks("""
defaults: {interval: 100ms, timeout: 100ms}
checks:
  - {name: hangs, tcp: {host: h, port: 1}}
  - {name: quick, tcp: {host: h, port: 2}}
"""))
    await run_for(scheduler, 1.0)
    assert runs["hangs"] == 1  # still running: its later turns are skipped, not stacked
    assert runs["quick"] >= 8
    assert max(lags) < 0.1


async def test_no_more_than_max_concurrency_run_at_once() -> None:
    running, peak = 0, 0

    async def run(check: Check, lag: float) -> bool:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return False

    scheduler = Scheduler(run, 3)
    scheduler.update(checks(
        "defaults: {interval: 100ms, timeout: 100ms}\nchecks:\n"
        + "".join(f"  - {{name: c{i}, tcp: {{host: h, port: 1}}}}\n" for i in range(20))
    ))
    await run_for(scheduler, 0.5)
    assert peak == 3


async def test_removed_checks_stop_and_new_ones_start() -> None:
    runs: Counter[str] = Counter()

    async def run(check: Check, lag: float) -> bool:
        runs[check.name] += 1
        return False

    scheduler = Scheduler(run, 10)
    base = "defaults: {interval: 50ms, timeout: 50ms}\nchecks:\n"
    scheduler.update(checks(base + "  - {name: old, tcp: {host: h, port: 1}}\n"))
    task = asyncio.create_task(scheduler.serve())
    await asyncio.sleep(0.3)
    scheduler.update(checks(base + "  - {name: new, tcp: {host: h, port: 1}}\n"))
    before = runs["old"]
    await asyncio.sleep(0.3)
    await scheduler.stop()
    await asyncio.gather(task, return_exceptions=True)
    assert runs["old"] - before <= 1  # at most the run in flight at the reload
    assert runs["new"] >= 3


def test_start_times_are_spread_over_the_interval() -> None:
    offsets = sorted(spread(f"check-{i}", 10.0) for i in range(1000))
    assert offsets[0] >= 0 and offsets[-1] < 10
    # no second of the interval gets much more than its share
    per_second = Counter(int(o) for o in offsets)
    assert max(per_second.values()) < 150
    assert spread("web", 10.0) == spread("web", 10.0)  # a restart keeps the phase


async def test_under_overload_a_failing_checks_retries_go_before_healthy_checks() -> None:
    # One slot, and twenty healthy checks that need twice the time there is: every check is
    # late. The failing one is where a ticket is being decided: its retries must not wait in
    # line behind checks that are fine.
    runs: Counter[str] = Counter()

    async def run(check: Check, lag: float) -> bool:
        runs[check.name] += 1
        await asyncio.sleep(0.05)
        return check.name == "failing"

    scheduler = Scheduler(run, 1)
    healthy = "\n".join(f"  - {{name: ok{i}, tcp: {{host: h, port: {i + 10}}}}}"
                        for i in range(20))
    scheduler.update(checks(f"""
defaults: {{interval: 500ms, retry_interval: 100ms, timeout: 100ms}}
checks:
  - {{name: failing, tcp: {{host: h, port: 1}}}}
{healthy}
"""))
    await run_for(scheduler, 2.0)
    # In line with the others it would run about once a second; first, about every 150 ms.
    assert runs["failing"] >= 8, runs


async def test_a_check_taken_over_runs_at_once_then_at_its_own_pace() -> None:
    """A check another agent ran (and may have died before running again) runs at once, then
    one interval after its last result there, never later than one interval from now."""
    started: dict[str, list[float]] = {}
    loop = asyncio.get_running_loop()

    async def run(check: Check, lag: float) -> bool:
        started.setdefault(check.name, []).append(loop.time())
        return False

    scheduler = Scheduler(run, 10)
    taken = checks("defaults: {interval: 1s, timeout: 50ms}\nchecks:\n"
                   "  - {name: overdue, tcp: {host: h, port: 1}}\n"
                   "  - {name: recent, tcp: {host: h, port: 1}}\n"
                   "  - {name: far, tcp: {host: h, port: 1}}\n")
    begun = loop.time()
    scheduler.update(taken, {"overdue": -4.0, "recent": 0.5, "far": 3600.0})
    await run_for(scheduler, 1.8)
    first = {name: runs[0] - begun for name, runs in started.items()}
    second = {name: runs[1] - begun for name, runs in started.items()}
    assert max(first.values()) < 0.3  # all at once
    assert 0.9 < second["overdue"] < 1.5  # then every interval
    assert 0.4 < second["recent"] < 0.9  # one interval after its run on the other agent
    assert 0.9 < second["far"] < 1.5  # a clock far off: one interval at most
