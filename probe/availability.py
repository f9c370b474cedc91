"""Availability, and the rule it follows, said on every page and report that shows it.

- Down is the time a check was failing in an incident: from the first failed result of the
  failures that opened (or joined) the incident until the incident resolved. A failure that
  opened no incident (a blip under failure_threshold) is not down.
- Time nobody watched (before monitoring began, while the daemon was stopped) and the time
  covered by results that could not run are n/a: counted neither up nor down. A period with
  nothing counted has no availability ("n/a"), never 100 % or 0 %.
- Maintenance windows are excluded from the time counted, or counted as up, or as down
  (`history.maintenance`), as Checkmk offers.
- A service is down while any of its checks is down.
- The figure is cut, never rounded up: 99.9996 % is shown "99.9996 %", never "100 %".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import ROUND_DOWN, Decimal
from typing import Literal

from probe.history import MINUTE, Bucket
from probe.pages.model import Availability

Rule = Literal["exclude", "up", "down"]

_MAINTENANCE = {
    "exclude": "maintenance windows are left out of the time counted",
    "up": "maintenance windows count as up",
    "down": "maintenance windows count as down",
}


def rule_text(rule: Rule) -> str:
    """The rule, in one paragraph, as pages and reports state it."""
    return (
        "Availability is the share of the time counted that was not down. Down is the time a "
        "check was failing in an incident, from the first failed result to the recovery; a "
        "failure that opened no incident is not down. Time before monitoring began, while "
        "probe was not running, and results that could not run are n/a, counted neither way; "
        f"{_MAINTENANCE[rule]}. A service is down while any of its checks is down."
    )


Interval = tuple[float, float]


def merged(intervals: Iterable[tuple[float, float | None]], start: float,
           end: float) -> list[Interval]:
    """The intervals (an open one goes on to `end`) cut to [start, end) and merged."""
    cut = sorted((max(a, start), min(b if b is not None else end, end))
                 for a, b in intervals)
    out: list[Interval] = []
    for a, b in cut:
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def measure(intervals: Sequence[Interval], start: float, end: float) -> float:
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in intervals)


def compute(buckets: Iterable[Bucket], down: Sequence[Interval], start: float, end: float,
            rule: Rule, incidents: int = 0) -> Availability:
    """Availability over [start, end) from a check's (or a service's merged) buckets and its
    downtime (`merged` intervals). A minute counts whole when it begins in the period (the
    current one has only its results so far); hours and days partly in it count pro rata."""
    covered = na = maintenance = overlap = 0.0
    for b in buckets:
        b_end = b.start + b.size
        if b.size == MINUTE:
            part = 1.0 if start <= b.start < end else 0.0
        else:
            part = max(0.0, min(b_end, end) - max(b.start, start)) / b.size
        if part <= 0:
            continue
        covered += b.covered * part
        na += b.na * part
        maintenance += b.maintenance * part
        if b.maintenance:
            overlap += min(b.maintenance * part, measure(down, max(b.start, start),
                                                         min(b_end, end)))
    total = max(0.0, end - start)
    down_s = measure(down, start, end)
    if rule == "exclude":
        counted, down_counted = covered - na - maintenance, down_s - overlap
    elif rule == "up":
        counted, down_counted = covered - na, down_s - overlap
    else:
        counted, down_counted = covered - na, down_s - overlap + maintenance
    # Down while probe was not running (an outage it saw begin and end) is down all the same.
    counted = min(max(counted, down_counted, 0.0), total)
    down_counted = min(max(down_counted, 0.0), counted)
    not_counted = maintenance if rule == "exclude" else 0.0
    percent = (counted - down_counted) / counted * 100 if counted > 0 else None
    return Availability(
        start=start, end=end, monitored=covered, down=down_counted, maintenance=maintenance,
        na=max(0.0, total - counted - not_counted), incidents=incidents, percent=percent,
        text=percent_text(percent, down_counted))


def percent_text(percent: float | None, down: float) -> str:
    """The figure as shown: cut, never rounded up, to two decimals, or one more than its
    nines (99.9994 % stays "99.9994 %", which two decimals would show as 99.99 %); more
    while it would show 100 % for a period with any downtime; "n/a" without one."""
    if percent is None:
        return "n/a"
    if percent >= 100 and down <= 0:
        return "100 %"
    fraction = f"{percent:.10f}".partition(".")[2] if percent >= 99 else ""
    nines = len(fraction) - len(fraction.lstrip("9"))
    for decimals in range(max(2, nines + 1), 11):
        text = _cut(percent, decimals)
        if float(text) < 100 or down <= 0:
            return f"{text} %"
    return "99.9999999999 %"


def _cut(value: float, decimals: int) -> str:
    """`value` cut to `decimals` (from its shortest decimal form: 99.95 is 99.95, never
    99.9499...), trailing zeros dropped."""
    cut = Decimal(repr(value)).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_DOWN)
    text = f"{cut:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def merge_buckets(per_check: Sequence[Sequence[Bucket]]) -> list[Bucket]:
    """A service's buckets from its checks': watched while any check was watched (the most
    covered), n/a only as far as every watched check could not run, maintenance as far as
    any check was in one."""
    by_start: dict[tuple[int, int], list[Bucket]] = {}
    for buckets in per_check:
        for b in buckets:
            by_start.setdefault((b.start, b.size), []).append(b)
    out = []
    for (start, size), group in sorted(by_start.items()):
        lead = max(group, key=lambda b: b.covered)
        out.append(Bucket(
            start, size, sum(b.results for b in group), sum(b.failed for b in group),
            sum(b.unknown for b in group), lead.covered, min(b.na for b in group),
            max(b.maintenance for b in group), sum(b.duration_sum_ms for b in group),
            max(b.duration_max_ms for b in group), lead.p50_ms, lead.p95_ms, lead.p99_ms))
    return out
