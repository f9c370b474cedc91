"""The inline SVG of the pages: the dashboard's sparkline, the 90-day bar and the latency chart.

Pure functions from the view models to markup. The markup is built from numbers the functions
format themselves and from text passed through markupsafe.escape, nothing else, so it is safe
to mark as Markup. Colours are not here: each shape carries a class and the page's style gives
it a colour for the light and the dark theme (and, for the day bars, a pattern, so a day's
meaning does not rest on colour alone). The patterns are defined once per page by `defs()`.

Each chart has role="img", an aria-label and a <title> saying in words what it shows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache

from markupsafe import Markup, escape

from probe.pages.model import Availability, Day, Point

# A day with downtime but at least this availability is "minor"; below it, "major".
MINOR_PERCENT = 99.0

LEVEL_WORDS: dict[str, str] = {
    "ok": "no downtime",
    "minor": f"some downtime (≥ {MINOR_PERCENT:g} %)",
    "major": f"major downtime (< {MINOR_PERCENT:g} %)",
    "maint": "maintenance, no downtime",
    "na": "n/a (not monitored)",
}


def level(availability: Availability) -> str:
    """The day bar's class for a period: ok, minor, major, maint or na."""
    if availability.percent is None:
        return "na"
    if availability.down <= 0:
        return "maint" if availability.maintenance > 0 else "ok"
    return "minor" if availability.percent >= MINOR_PERCENT else "major"


def _n(value: float) -> str:
    """A coordinate, short: '12', '12.5', '3.33'."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value < 10_000 else f"{value / 1000:.1f} s"


def _axis(value: float) -> str:
    """An axis label, short: '500 ms', '1.5 s'."""
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:g} s"


def _open(cls: str, width: float, height: float, label: str, *, size: bool = True,
          stretch: bool = False) -> str:
    text = escape(label)
    dims = f' width="{_n(width)}" height="{_n(height)}"' if size else ""
    # the day bars fill the width they are given, however wide: they hold no text to distort
    fit = ' preserveAspectRatio="none"' if stretch else ""
    return (f'<svg class="{cls}" viewBox="0 0 {_n(width)} {_n(height)}"{dims}{fit} role="img" '
            f'aria-label="{text}"><title>{text}</title>')


def defs() -> Markup:
    """The patterns the day bars and legends refer to, once per page (hidden, zero-sized)."""
    return Markup(
        '<svg class="defs" width="0" height="0" aria-hidden="true" focusable="false"><defs>'
        '<pattern id="p-minor" width="4" height="4" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="4" height="4" class="f-minor"/>'
        '<rect width="1.5" height="4" class="f-stripe"/></pattern>'
        '<pattern id="p-major" width="4" height="4" patternUnits="userSpaceOnUse">'
        '<rect width="4" height="4" class="f-major"/>'
        '<path d="M0 0L4 4M4 0L0 4" class="s-stripe"/></pattern>'
        '<pattern id="p-maint" width="4" height="4" patternUnits="userSpaceOnUse">'
        '<rect width="4" height="4" class="f-maint"/><rect width="4" height="1.5" '
        'class="f-stripe"/></pattern>'
        '</defs></svg>')


def _run_path(xs: Sequence[float], ys: Sequence[float | None]) -> str:
    """A polyline through the points with a value; a gap (None) lifts the pen."""
    parts: list[str] = []
    pen = "M"
    for x, y in zip(xs, ys, strict=True):
        if y is None:
            pen = "M"
            continue
        parts.append(f"{pen}{_n(x)} {_n(y)}")
        pen = "L"
    return "".join(parts)


@lru_cache(maxsize=16)
def _spark_xs(count: int, width: int) -> tuple[int, ...]:
    step = width / max(count - 1, 1)
    return tuple(round(i * step) for i in range(count))


def sparkline(points: Sequence[Point], width: int = 100, height: int = 20) -> Markup:
    """The dashboard's 24 h latency line (mean per step), failed steps marked below it.

    The coordinates are integers in tenths of a pixel (the viewBox is ten times the size):
    a dashboard draws a thousand of these, and formatting floats was half its render time
    (110 of 200 ms for 1,000 checks of 96 points; integers: about 35 ms)."""
    means = [p.mean_ms for p in points]
    known = [m for m in means if m is not None]
    failed = sum(1 for p in points if p.failed)
    if not known:
        label = "Latency, last 24 h: no results"
    else:
        label = (f"Latency, last 24 h: mean {_ms(sum(known) / len(known))}, "
                 f"highest {_ms(max(known))}")
    if failed:
        label += f"; {failed} of {len(points)} periods with failures"
    text = escape(label)
    w10, h10 = width * 10, height * 10
    out = [f'<svg class="spark" viewBox="0 0 {w10} {h10}" width="{width}" height="{height}" '
           f'role="img" aria-label="{text}"><title>{text}</title>']
    if known:
        xs = _spark_xs(len(points), w10)
        base = h10 - 50  # room at the bottom for the failure marks
        scale = (base - 20) / (max(known) or 1.0)
        parts: list[str] = []
        pen = "M"
        for x, m in zip(xs, means, strict=True):
            if m is None:
                pen = "M"
                continue
            parts.append(f"{pen}{x} {int(base - m * scale)}")
            pen = "L"
        out.append(f'<path class="line" d="{"".join(parts)}"/>')
        out.extend(f'<rect class="fail" x="{max(x - 10, 0)}" y="{h10 - 30}" width="20" '
                   f'height="30"/>' for x, p in zip(xs, points, strict=True) if p.failed)
    out.append("</svg>")
    return Markup("".join(out))


def day_title(day: Day) -> str:
    """The tooltip of one day's bar: '2026-12-01: 99.95 %', '2026-12-02: n/a'."""
    text = day.availability.text if day.availability.percent is not None else "n/a"
    extra = ""
    if day.availability.maintenance > 0:
        extra = ", maintenance"
    return f"{day.date}: {text}{extra}"


def day_bars(days: Sequence[Day], caption: str = "Daily availability") -> Markup:
    """One bar per day, oldest first; each bar's level is a class (a colour and a pattern) and
    its <title> says the date and the availability; n/a days are short and grey."""
    counts = dict.fromkeys(LEVEL_WORDS, 0)
    bars: list[str] = []
    for i, day in enumerate(days):
        lv = level(day.availability)
        counts[lv] += 1
        y, h = (12, 12) if lv == "na" else (0, 24)
        bars.append(f'<rect class="d-{lv}" x="{i * 5}" y="{y}" width="4" height="{h}">'
                    f"<title>{escape(day_title(day))}</title></rect>")
    if days:
        span = f"{days[0].date} to {days[-1].date}"
        said = ", ".join(f"{counts[k]} {LEVEL_WORDS[k]}" for k in LEVEL_WORDS if counts[k])
        label = f"{caption}, {len(days)} days, {span}: {said}"
    else:
        label = f"{caption}: no days"
    width = max(len(days) * 5 - 1, 1)
    head = _open("days", width, 24, label, size=False, stretch=True)
    return Markup(head + "".join(bars) + "</svg>")


def legend_swatch(cls: str) -> Markup:
    """A small square in a class's colour (and pattern), for a legend next to its words."""
    return Markup(f'<svg class="swatch" viewBox="0 0 12 12" width="12" height="12" '
                  f'aria-hidden="true" focusable="false"><rect class="{escape(cls)}" '
                  f'width="12" height="12"/></svg>')


def _nice(value: float) -> float:
    """The smallest 1, 2 or 5 times 10^k at or above value: the chart's top."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if value <= m * power:
            return float(m * power)
    return float(10 * power)


def _stamp(at: float, span: float) -> str:
    moment = datetime.fromtimestamp(at, UTC)
    return moment.strftime("%H:%M" if span <= 86_400 else "%m-%d %H:%M")


def latency_chart(points: Sequence[Point], window: str,
                  phases: Sequence[str] = ()) -> Markup:
    """The latency over a window: the mean as an area (stacked by phase when phases are given),
    the p95 as a dashed line where known, failed steps marked on the time axis."""
    width, height, left, bottom, top_pad = 600, 170, 60, 20, 8
    plot_w, plot_h = width - left - 4, height - bottom - top_pad
    means = [p.mean_ms for p in points]
    known = [m for m in means if m is not None]
    p95s = [p.p95_ms for p in points]
    failed = sum(1 for p in points if p.failed)
    if known:
        label = (f"Latency over {window}: mean {_ms(sum(known) / len(known))}, "
                 f"highest mean {_ms(max(known))}")
        if phases:
            label += ", stacked by phase: " + ", ".join(phases)
    else:
        label = f"Latency over {window}: no results"
    if failed:
        label += f"; {failed} periods with failures"
    out = [_open("chart", width, height, label, size=False)]
    stacks: list[list[float]] = []
    if phases:
        for p in points:
            total, row = 0.0, []
            for name in phases:
                total += p.phases_ms.get(name, 0.0)
                row.append(total)
            stacks.append(row)
    highest = max([*known, *(v for v in p95s if v is not None),
                   *(row[-1] for row in stacks if row)], default=0.0)
    ceiling = _nice(highest)
    base_y = top_pad + plot_h

    def y_of(ms: float) -> float:
        return base_y - plot_h * ms / ceiling

    # grid and y labels: 0, half, top
    for frac in (0.0, 0.5, 1.0):
        gy = y_of(ceiling * frac)
        out.append(f'<path class="grid" d="M{left} {_n(gy)}H{width - 4}"/>'
                   f'<text class="axis" x="{left - 4}" y="{_n(gy + 4)}" '
                   f'text-anchor="end">{escape(_axis(ceiling * frac))}</text>')
    if points:
        start, end = points[0].at, points[-1].at + points[-1].step
        span = end - start
        step = plot_w / len(points)
        xs = [left + (i + 0.5) * step for i in range(len(points))]
        out.append(f'<text class="axis" x="{left}" y="{height - 5}">'
                   f"{escape(_stamp(start, span))}</text>"
                   f'<text class="axis" x="{width - 4}" y="{height - 5}" text-anchor="end">'
                   f"{escape(_stamp(end, span))} UTC</text>")
        runs: list[list[int]] = []
        for i, m in enumerate(means):
            if m is None:
                continue
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        if phases:
            for k in range(len(phases)):
                d = []
                for run in runs:
                    upper = [f"{_n(xs[i])} {_n(y_of(stacks[i][k]))}" for i in run]
                    lower = [f"{_n(xs[i])} {_n(y_of(stacks[i][k - 1] if k else 0.0))}"
                             for i in reversed(run)]
                    d.append("M" + "L".join(upper + lower) + "Z")
                out.append(f'<path class="ph ph-{k % 6}" d="{"".join(d)}"/>')
        else:
            d = []
            for run in runs:
                line = [f"{_n(xs[i])} {_n(y_of(means[i] or 0.0))}" for i in run]
                d.append(f"M{_n(xs[run[0]])} {_n(base_y)}L" + "L".join(line)
                         + f"L{_n(xs[run[-1]])} {_n(base_y)}Z")
            out.append(f'<path class="mean" d="{"".join(d)}"/>')
        if any(v is not None for v in p95s):
            ys = [None if v is None else y_of(v) for v in p95s]
            out.append(f'<path class="p95" d="{_run_path(xs, ys)}"/>')
        for x, p in zip(xs, points, strict=True):
            if p.failed:
                out.append(f'<rect class="fail" x="{_n(x - 1)}" y="{_n(base_y - 4)}" '
                           f'width="2" height="4"/>')
    out.append(f'<path class="axisline" d="M{left} {top_pad}V{_n(base_y)}H{width - 4}"/>')
    out.append("</svg>")
    return Markup("".join(out))


def chart_legend(phases: Sequence[str], has_p95: bool) -> Markup:
    """The words for a latency chart's shapes, as an HTML list."""
    items: list[str] = []
    if phases:
        for k, name in enumerate(phases):
            items.append(f"<li>{legend_swatch(f'ph ph-{k % 6}')} {escape(name)}</li>")
    else:
        items.append(f"<li>{legend_swatch('mean')} mean</li>")
    if has_p95:
        items.append(f"<li>{legend_swatch('p95-swatch')} p95 (dashed line)</li>")
    items.append(f"<li>{legend_swatch('fail')} a period with failures (mark on the axis)</li>")
    return Markup('<ul class="legend">' + "".join(items) + "</ul>")
