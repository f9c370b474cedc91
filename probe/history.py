"""History that lasts: each check's results rolled up per minute, per hour and per day, and
the time each check spent failing in an incident (its downtime).

- The daemon's `Recorder` counts results in memory, per check and per minute: how many, how
  many failed or could not run, their durations (sum, max, and per phase for http), and the
  seconds they cover. A result covers the time since the check's previous result, at most two
  intervals: a gap longer than that (the daemon stopped, the check was added) is time nobody
  watched, "n/a" in availability, never up. Covered seconds of a result that could not run
  are n/a too; those of a result taken in a maintenance window are maintenance.
- Closed minutes are written with the daemon's batches, added to what is stored (two agents
  that ran a check within one minute, as a check moves between them, add up).
- Once an hour is over (and `ROLL_AFTER` more, for agents late with their minutes), its minutes
  are rolled up into an hour row; once a day is over, its minutes into a day row. The latency
  quantiles of a rolled-up row are those of its minutes' mean durations, weighted by their
  results. Rows older than `history.minutes`, `.hours`, `.days` are deleted.
- Downtime is recorded with the engine's transitions, in their transaction: each check failing
  in an incident from its first failed result, until the incident resolves.

probe.availability computes availability from these; probe.pages and `probe report` show it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from checks.base import Result
from probe.engine import Transition

MINUTE, HOUR, DAY = 60, 3600, 86400
ROLL_AFTER = 180  # seconds after a bucket's end before it is rolled up

# (check, bucket start, results, failed, unknown, covered ms, n/a ms, maintenance ms,
#  duration sum ms, duration max ms, phases "name=ms,..." or None)
MinuteRow = tuple[str, int, int, int, int, int, int, int, int, int, str | None]


@dataclass(slots=True)
class _Minute:
    results: int = 0
    failed: int = 0
    unknown: int = 0
    covered: float = 0.0
    na: float = 0.0
    maintenance: float = 0.0
    duration_sum: float = 0.0
    duration_max: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)


class Recorder:
    """Results counted per check and minute, in memory until `rows` takes them."""

    def __init__(self) -> None:
        self._minutes: dict[tuple[str, int], _Minute] = {}
        self._last: dict[str, float] = {}

    def add(self, name: str, result: Result, *, interval: float, maintenance: bool) -> None:
        at = result.started_at
        last = self._last.get(name)
        self._last[name] = at
        covered = 0.0 if last is None else min(max(at - last, 0.0), 2 * interval)
        key = (name, int(at // MINUTE) * MINUTE)
        minute = self._minutes.get(key)
        if minute is None:
            minute = self._minutes[key] = _Minute()
        minute.results += 1
        minute.covered += covered
        if result.state == "unknown":
            minute.unknown += 1
            minute.na += covered
        else:
            if result.state != "up":
                minute.failed += 1
            if maintenance:
                minute.maintenance += covered
        minute.duration_sum += result.duration
        minute.duration_max = max(minute.duration_max, result.duration)
        for phase, seconds in result.phases.items():
            minute.phases[phase] = minute.phases.get(phase, 0.0) + seconds

    def forget(self, name: str) -> None:
        """A check no longer run here: its next result, if it comes back, starts a new span."""
        self._last.pop(name, None)

    def rows(self, before: float | None = None) -> list[MinuteRow]:
        """The minutes that began before `before` (all of them if None), taken out."""
        limit = math.inf if before is None else int(before // MINUTE) * MINUTE
        taken = [key for key in self._minutes if key[1] < limit]
        return [_row(key, self._minutes.pop(key)) for key in taken]

    def give_back(self, rows: Iterable[MinuteRow]) -> None:
        """Rows a write could not store, kept for the next one."""
        for row in rows:
            minute = self._minutes.setdefault((row[0], row[1]), _Minute())
            minute.results += row[2]
            minute.failed += row[3]
            minute.unknown += row[4]
            minute.covered += row[5] / 1000
            minute.na += row[6] / 1000
            minute.maintenance += row[7] / 1000
            minute.duration_sum += row[8] / 1000
            minute.duration_max = max(minute.duration_max, row[9] / 1000)
            for phase, ms in parse_phases(row[10]).items():
                minute.phases[phase] = minute.phases.get(phase, 0.0) + ms / 1000


def _row(key: tuple[str, int], m: _Minute) -> MinuteRow:
    phases = ",".join(f"{p}={round(s * 1000)}" for p, s in m.phases.items()) or None
    return (key[0], key[1], m.results, m.failed, m.unknown, round(m.covered * 1000),
            round(m.na * 1000), round(m.maintenance * 1000), round(m.duration_sum * 1000),
            round(m.duration_max * 1000), phases)


def parse_phases(text: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        name, _, value = part.partition("=")
        if name and value:
            out[name] = out.get(name, 0.0) + float(value)
    return out


# --- rolling up ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Bucket:
    """One stored row: a check's results in [start, start + size)."""

    start: int
    size: int
    results: int
    failed: int
    unknown: int
    covered: float  # seconds, at most `size`
    na: float
    maintenance: float
    duration_sum_ms: float
    duration_max_ms: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    phases_ms: Mapping[str, float]  # sums

    @property
    def mean_ms(self) -> float | None:
        return self.duration_sum_ms / self.results if self.results else None


# The columns of a stored row, after check and resolution.
COLUMNS = ("t", "n", "failed", "unknown", "covered", "na", "maintenance", "dsum", "dmax",
           "p50", "p95", "p99", "phases")


def bucket(size: int, row: Sequence[Any]) -> Bucket:
    """A stored row (its COLUMNS) as a Bucket. Covered time is capped at the bucket's size:
    two sites' results in one minute both count it (and their n/a and maintenance are
    scaled alike)."""
    t, n, failed, unknown, covered, na, maint, dsum, dmax, p50, p95, p99, phases = row
    covered_s = covered / 1000
    scale = size / covered_s if covered_s > size else 1.0
    return Bucket(int(t), size, int(n), int(failed), int(unknown), min(covered_s, size),
                  na / 1000 * scale, maint / 1000 * scale, float(dsum), float(dmax),
                  p50, p95, p99, parse_phases(phases))


def roll_up(rows: Iterable[Sequence[Any]], start: int) -> list[tuple[Any, ...]]:
    """Minute rows `(check_id, n, failed, unknown, covered, na, maintenance, dsum, dmax,
    phases)`, ordered by check, into one row per check starting at `start` (COLUMNS after the
    check id)."""
    out: list[tuple[Any, ...]] = []
    current: Any = None
    acc: list[Any] = []
    means: list[tuple[float, int]] = []
    phases: dict[str, float] = {}

    def close() -> None:
        if current is None:
            return
        p50, p95, p99 = (quantile(means, q) for q in (0.50, 0.95, 0.99))
        text = ",".join(f"{p}={round(v)}" for p, v in phases.items()) or None
        out.append((current, start, *acc, p50, p95, p99, text))

    for check_id, n, failed, unknown, covered, na, maint, dsum, dmax, phase_text in rows:
        if check_id != current:
            close()
            current, acc, means, phases = check_id, [0, 0, 0, 0, 0, 0, 0, 0], [], {}
        covered_capped = min(covered, MINUTE * 1000)
        scale = covered_capped / covered if covered else 1.0
        acc[0] += n
        acc[1] += failed
        acc[2] += unknown
        acc[3] += covered_capped
        acc[4] += round(na * scale)
        acc[5] += round(maint * scale)
        acc[6] += dsum
        acc[7] = max(acc[7], dmax)
        if n:
            means.append((dsum / n, n))
        for phase, ms in parse_phases(phase_text).items():
            phases[phase] = phases.get(phase, 0.0) + ms
    close()
    return out


def quantile(weighted: list[tuple[float, int]], q: float) -> int | None:
    """The q-quantile of values with weights (the nearest rank), None for none."""
    if not weighted:
        return None
    weighted.sort()
    total = sum(w for _, w in weighted)
    rank = q * total
    seen = 0
    for value, weight in weighted:
        seen += weight
        if seen >= rank:
            return round(value)
    return round(weighted[-1][0])


# --- downtime -----------------------------------------------------------------------------

def downtime_rows(transition: Transition) -> list[tuple[str, str, float]]:
    """(incident key, check, since) for each check failing in the transition's incident: a
    check that fails because a check it depends on does is not down in this incident."""
    facts = transition.facts
    out = []
    for name, member in facts.checks.items():
        failing = member.failing_since is not None or member.flapping
        if failing and not member.unreachable:
            out.append((transition.key, name, member.failing_since or facts.first_failure_at))
    if not out and facts.group in facts.checks:
        out.append((transition.key, facts.group, facts.first_failure_at))
    return out
