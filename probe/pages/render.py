"""The pages as HTML: one function per page, each from its view model (probe.pages.model) to a
string. The templates are in probe/pages/templates; this module owns their environment and the
small formatting helpers they share (times in UTC and relative to the page's generated_at,
human durations, a state as a word with a symbol, links with their path parts quoted).

Everything a model holds is text to show, never markup: the environment autoescapes, and the
helpers that return Markup escape what they put in it. No page carries JavaScript."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import quote, urlsplit

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape

from probe.pages import svg
from probe.pages.model import (
    LATENCY_WINDOWS,
    WINDOWS,
    Availability,
    Dashboard,
    Day,
    Detail,
    IncidentPage,
    Report,
    ReportRow,
    StatusPage,
    Ticket,
)

# A state's word is always shown; the symbol repeats it for a glance, the colour for a third.
SYMBOLS: dict[str, str] = {
    "up": "✓", "operational": "✓", "failing": "!", "down": "✗", "outage": "✗",
    "maintenance": "⚙", "unreachable": "?", "unknown": "?",
}
# Words that are shown in another word's colours: an incident open or resolved.
ALIASES: dict[str, str] = {"open": "down", "resolved": "up"}
# What the dashboard says about the outbox, from its figures (a word for state()).
OUTBOX_FAILED = "down"


def utc(at: float | None) -> str:
    """'2026-12-04 10:20 UTC'."""
    if at is None:
        return "never"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def day(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")


def duration(seconds: float | None) -> str:
    """'45s', '12m', '2h 5m', '3d 4h'; the two largest units, rounded down."""
    if seconds is None or math.isnan(seconds):
        return "n/a"
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s}s" if s and m < 10 else f"{m}m"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h {m}m" if m else f"{h}h"
    d, h = divmod(h, 24)
    return f"{d}d {h}h" if h else f"{d}d"


def relative(at: float, now: float) -> str:
    """'5 min ago', 'just now', 'in 2 h' (a window that has not started)."""
    delta = now - at
    future = delta < 0
    delta = abs(delta)
    if delta < 10:
        return "just now"
    if delta < 60:
        text = f"{int(delta)} s"
    elif delta < 3600:
        text = f"{int(delta // 60)} min"
    elif delta < 86_400:
        text = f"{int(delta // 3600)} h"
    else:
        text = f"{int(delta // 86_400)} d"
    return f"in {text}" if future else f"{text} ago"


def when(at: float | None, now: float) -> Markup:
    """A moment in UTC with how long ago it was, in a <time> element."""
    if at is None:
        return Markup("never")
    iso = datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
    return Markup(f'<time datetime="{iso}">{utc(at)}</time> '
                  f'<span class="ago">({relative(at, now)})</span>')


def ago(at: float, now: float) -> Markup:
    """The relative time, with the UTC time as its tooltip (the dashboard's dense table)."""
    iso = datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
    return Markup(f'<time datetime="{iso}" title="{utc(at)}">{relative(at, now)}</time>')


def milliseconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value < 10:
        return f"{value:.1f} ms"
    if value < 10_000:
        return f"{value:.0f} ms"
    return f"{value / 1000:.1f} s"


_STATE_CACHE: dict[str, Markup] = {}


def state(word: str) -> Markup:
    """A state as a word with its symbol, in a coloured pill; the word is what it says."""
    found = _STATE_CACHE.get(word)
    if found is None:
        like = ALIASES.get(word, word)
        cls = like if like in SYMBOLS else "unknown"
        symbol = SYMBOLS.get(like, "?")
        found = Markup(f'<span class="state s-{cls}">'
                       f'<span aria-hidden="true">{symbol}</span> {escape(word)}</span>')
        if len(_STATE_CACHE) < 64:  # words come from a small set; never grow without bound
            _STATE_CACHE[word] = found
    return found


def href(section: str, name: str) -> str:
    """/checks/{name}: the name is one path segment, whatever it holds ('/' included)."""
    return f"/{section}/{quote(name, safe='')}"


def ticket(t: Ticket) -> Markup:
    """A ticket's reference, a link to the helpdesk where the backend knows one. Only http(s)
    links: a helpdesk's answer is not trusted to choose a scheme (javascript: would run)."""
    if t.url and urlsplit(t.url).scheme in ("http", "https"):
        return Markup(f'<a href="{escape(t.url)}" rel="noreferrer">{escape(t.ref)}</a>')
    return Markup(escape(t.ref))


def tickets(ts: Sequence[Ticket]) -> Markup:
    if not ts:
        return Markup("none")
    return Markup(", ").join(Markup(f"{ticket(t)} ({escape(t.state)})") for t in ts)


def sla(availability: Availability, target: float | None) -> Markup:
    """Whether the SLA target was met, as words: met, not met, no target, n/a."""
    if target is None:
        return Markup("no target")
    if availability.percent is None:
        return state_word("na", "n/a")
    if availability.percent >= target:
        return state_word("met", f"met (≥ {target:g} %)")
    return state_word("unmet", f"not met (< {target:g} %)")


def state_word(cls: str, text: str) -> Markup:
    symbol = {"met": "✓", "unmet": "✗"}.get(cls, "-")
    return Markup(f'<span class="state s-{cls}"><span aria-hidden="true">{symbol}</span> '
                  f"{escape(text)}</span>")


def report_met(row: ReportRow) -> Markup:
    if row.sla_percent is None:
        return Markup("no target")
    if row.sla_met is None:
        return state_word("na", f"n/a (target {row.sla_percent:g} %)")
    if row.sla_met:
        return state_word("met", f"met (≥ {row.sla_percent:g} %)")
    return state_word("unmet", f"not met (< {row.sla_percent:g} %)")


def bars(days: Sequence[Day], caption: str) -> Markup:
    """The day bar with its ends labelled."""
    if not days:
        return Markup('<p class="muted">No days yet.</p>')
    return Markup(f'{svg.day_bars(days, caption)}<div class="bar-scale" aria-hidden="true">'
                  f"<span>{escape(days[0].date)}</span><span>{escape(days[-1].date)}</span>"
                  "</div>")


def levels() -> Markup:
    """The legend of the day bars: each level's colour and pattern next to its words."""
    items = "".join(f"<li>{svg.legend_swatch('d-' + k)} {escape(text)}</li>"
                    for k, text in svg.LEVEL_WORDS.items())
    return Markup(f'<ul class="legend" aria-label="Legend of the daily bars">{items}</ul>')


ENV = Environment(
    loader=PackageLoader("probe.pages", "templates"),
    autoescape=select_autoescape(["html", "svg"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,
)
ENV.globals.update(
    utc=utc, day=day, dur=duration, ms=milliseconds, state=state, href=href, ticket=ticket,
    tickets=tickets, sla=sla, met=report_met, bars=bars, spark=svg.sparkline,
    chart=svg.latency_chart, svg_defs=svg.defs(), levels=levels(),
)


def _page(name: str, generated_at: float, **context: Any) -> str:
    now = generated_at
    helpers: dict[str, Callable[..., Markup]] = {
        "when": partial(when, now=now), "ago": partial(ago, now=now)}
    return ENV.get_template(name).render(generated_at=generated_at, **helpers, **context)


def _counts(words: Iterable[str]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    order = list(SYMBOLS)
    return sorted(counts.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)


def dashboard(model: Dashboard) -> str:
    outbox = model.outbox
    outbox_state = (OUTBOX_FAILED if outbox.failed else
                    "failing" if outbox.oldest_pending_age and outbox.oldest_pending_age > 300
                    else "up")
    return _page("dashboard.html", model.generated_at, m=model,
                 counts=_counts(c.state for c in model.checks), outbox_state=outbox_state)


def _windowed(mapping: Mapping[str, Any], order: Sequence[str]) -> list[tuple[str, Any]]:
    return [(w, mapping[w]) for w in order if w in mapping]


def detail(model: Detail) -> str:
    charts = []
    for window, points in _windowed(model.latency, LATENCY_WINDOWS):
        has_p95 = any(p.p95_ms is not None for p in points)
        charts.append((window, points, svg.chart_legend(model.phases, has_p95)))
    chart = partial(svg.latency_chart, phases=model.phases)
    return _page("detail.html", model.generated_at, m=model, chart=chart,
                 windows=_windowed(model.availability, WINDOWS), charts=charts,
                 incidents=model.incidents)


def incident(model: IncidentPage) -> str:
    return _page("incident.html", model.generated_at, m=model)


BANNERS = {
    "outage": ("Some services have an outage", "s-outage", "✗"),
    "maintenance": ("Some services are under maintenance", "s-maintenance", "⚙"),
    "unknown": ("The state of some services is unknown", "s-unknown", "?"),
    "operational": ("All services operational", "s-operational", "✓"),
}


def banner(model: StatusPage) -> tuple[str, str, str]:
    """The status page's headline, from the worst of its services' states."""
    states = {s.state for s in model.services}
    for word in ("outage", "maintenance", "unknown"):
        if word in states:
            return BANNERS[word]
    if states - {"operational"}:
        return BANNERS["unknown"]
    return BANNERS["operational"]


def status(model: StatusPage) -> str:
    text, cls, symbol = banner(model)
    current = [s for s in model.services if s.incident_since is not None]
    return _page("status.html", model.generated_at, m=model, banner=text, banner_class=cls,
                 banner_symbol=symbol, current=current)


def report(model: Report) -> str:
    services = [r for r in model.rows if r.kind == "service"]
    checks = [r for r in model.rows if r.kind == "check"]
    fed = [r for r in model.rows if r.kind == "alertmanager"]
    groups = [(title, rows) for title, rows in (("Services", services), ("Checks", checks),
                                                ("Alertmanager receivers", fed)) if rows]
    return _page("report.html", model.generated_at, m=model, groups=groups)
