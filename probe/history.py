"""History that lasts: each check's results rolled up per minute, per hour and per day, and
the time each check spent failing in an incident (its downtime).

- The daemon's `Recorder` counts results in memory, per check and per minute: how many, how
  many failed or could not run, their durations (sum, max, and per phase for http), and the
  seconds they cover. A result covers the time since the check's previous result, at most two
  intervals: a gap longer than that (the daemon stopped, the check was added) is time nobody
  watched, "n/a" in availability, never up. Covered seconds of a result that could not run
  are n/a too; those of a result taken in a maintenance window are maintenance.
- Just after each minute ends (probe.daemon's historian), its counts are written with the
  daemon's batch and added to what is stored of it: once per check and minute, and two agents
  that ran a check within one minute (as it moves between them) add up.
- Once an hour is over (and `ROLL_AFTER` more, for agents late with their minutes), its minutes
  are rolled up into an hour row; once a day is over, its minutes into a day row. The latency
  quantiles of a rolled-up row are those of its minutes' mean durations, weighted by their
  results. Rows older than `history.minutes`, `.hours`, `.days` are deleted.
- Downtime is recorded with the engine's transitions, in their transaction: each check failing
  in an incident from its first failed result, until the incident resolves.

probe.availability computes availability from these; probe.pages and `probe report` show it.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from checks import KINDS
from checks.base import Result
from probe.engine import Transition

MINUTE, HOUR, DAY = 60, 3600, 86400
ROLL_AFTER = 180  # seconds after a bucket's end before it is rolled up
# Each resolution's table: apart, so that the minutes (most of the rows) carry no resolution
# and no quantiles (rows of 40-odd bytes: 10,000 checks' 48 hours in 1.3 GB).
TABLES = {MINUTE: "history_minutes", HOUR: "history_hours", DAY: "history_days"}
# A check's phases in its kind's order (checks.KINDS[kind].phases), as columns ph1..ph5.
PHASES = 5
assert all(len(kind.phases) <= PHASES for kind in KINDS.values())

# (check, minute's start, results, failed, unknown, covered ms, n/a ms, maintenance ms,
#  duration sum ms, duration max ms, phase sums ms ph1..ph5)
MinuteRow = tuple[Any, ...]


# A check's minute in memory: one array of doubles (no object per number: 10,000 checks' minutes
# in under 2 MB), in MinuteRow's order after the check and the minute.
_RESULTS, _FAILED, _UNKNOWN, _COVERED, _NA, _MAINTENANCE, _SUM, _MAX, _PHASE = range(9)
_EMPTY = array("d", [0.0] * (_PHASE + PHASES))


class Recorder:
    """Results counted per check and minute, in memory until `rows` takes them."""

    def __init__(self) -> None:
        self._minutes: dict[tuple[str, int], array[float]] = {}
        self._last: dict[str, float] = {}

    def add(self, name: str, result: Result, *, interval: float, maintenance: bool) -> None:
        at = result.started_at
        last = self._last.get(name)
        self._last[name] = at
        covered = 0.0 if last is None else min(max(at - last, 0.0), 2 * interval)
        key = (name, int(at // MINUTE) * MINUTE)
        m = self._minutes.get(key)
        if m is None:
            m = self._minutes[key] = array("d", _EMPTY)
        m[_RESULTS] += 1
        m[_COVERED] += covered
        if result.state == "unknown":
            m[_UNKNOWN] += 1
            m[_NA] += covered
        else:
            if result.state != "up":
                m[_FAILED] += 1
            if maintenance:
                m[_MAINTENANCE] += covered
        m[_SUM] += result.duration
        m[_MAX] = max(m[_MAX], result.duration)
        kind = KINDS.get(result.kind)
        if kind is not None:
            for i, phase in enumerate(kind.phases, _PHASE):
                m[i] += result.phases.get(phase, 0.0)

    def peek(self, names: Iterable[str]) -> dict[str, list[MinuteRow]]:
        """The minutes of `names` counted and not yet taken, left in place: what the pages
        add to the stored ones, so that they are fresh to the result."""
        wanted = set(names)
        out: dict[str, list[MinuteRow]] = {}
        for key, minute in list(self._minutes.items()):
            if key[0] in wanted:
                out.setdefault(key[0], []).append(_row(key, minute))
        return out

    def rows(self, before: float | None = None) -> list[MinuteRow]:
        """The minutes that ended by `before` (all, if None), taken out. Written, each is
        added to what is stored of it (another agent's, or this one's before a restart)."""
        taken = [key for key in self._minutes
                 if before is None or key[1] + MINUTE <= before]
        return [_row(key, self._minutes.pop(key)) for key in taken]


def _row(key: tuple[str, int], m: array[float]) -> MinuteRow:
    """Counts as integers, times in milliseconds."""
    return (key[0], key[1], int(m[_RESULTS]), int(m[_FAILED]), int(m[_UNKNOWN]),
            *(round(v * 1000) for v in m[_COVERED:]))


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
    phase_sums_ms: tuple[float, ...] = ()  # in the check's kind's order of phases

    @property
    def mean_ms(self) -> float | None:
        return self.duration_sum_ms / self.results if self.results else None


# The columns of a stored row after the check: the minutes' (COUNTS), and the quantiles of
# the hours and days.
COUNTS = ("t", "n", "failed", "unknown", "covered", "na", "maintenance", "dsum", "dmax",
          *(f"ph{i}" for i in range(1, PHASES + 1)))
QUANTILES = ("p50", "p95", "p99")


def columns(size: int) -> tuple[str, ...]:
    return COUNTS if size == MINUTE else (*COUNTS, *QUANTILES)


def bucket(size: int, row: Sequence[Any]) -> Bucket:
    """A stored row (its `columns`) as a Bucket. Covered time is capped at the bucket's size:
    two sites' results in one minute both count it (and their n/a and maintenance are
    scaled alike)."""
    t, n, failed, unknown, covered, na, maint, dsum, dmax = row[:9]
    phases = tuple(float(p or 0) for p in row[9:9 + PHASES])
    p50, p95, p99 = row[9 + PHASES:] if size != MINUTE else (None, None, None)
    covered_s = covered / 1000
    scale = size / covered_s if covered_s > size else 1.0
    return Bucket(int(t), size, int(n), int(failed), int(unknown), min(covered_s, size),
                  na / 1000 * scale, maint / 1000 * scale, float(dsum), float(dmax),
                  p50, p95, p99, phases)


def roll_up(rows: Iterable[Sequence[Any]], start: int) -> list[tuple[Any, ...]]:
    """Minute rows `(check_id, *COUNTS[1:])`, ordered by check, into one row per check
    starting at `start`: `(check_id, *COUNTS, *QUANTILES)`."""
    out: list[tuple[Any, ...]] = []
    current: Any = None
    acc: list[Any] = []
    means: list[tuple[float, int]] = []

    def close() -> None:
        if current is not None:
            out.append((current, start, *acc,
                        *(quantile(means, q) for q in (0.50, 0.95, 0.99))))

    for check_id, n, failed, unknown, covered, na, maint, dsum, dmax, *phases in rows:
        if check_id != current:
            close()
            current, acc, means = check_id, [0] * (8 + PHASES), []
        capped = min(covered, MINUTE * 1000)
        scale = capped / covered if covered else 1.0
        acc[0] += n
        acc[1] += failed
        acc[2] += unknown
        acc[3] += capped
        acc[4] += round(na * scale)
        acc[5] += round(maint * scale)
        acc[6] += dsum
        acc[7] = max(acc[7], dmax)
        for i, ms in enumerate(phases):
            acc[8 + i] += ms or 0
        if n:
            means.append((dsum / n, n))
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
