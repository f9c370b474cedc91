"""The pages as a person sees them: each page is rendered from view models built here (plain
dataclasses) that carry markup where a target or a helpdesk could put it, and the tests read the
HTML back with html.parser: what was sent is shown as text and never becomes an element; every
page has its language, title, landmarks, headings in order, captions and labels; the public
status page says nothing internal. The last tests open the pages in Debian's Chromium (through
chromedriver): no page is wider than a phone, and the dark theme and the printed page are what
the style says."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from probe.pages import render, svg
from probe.pages.model import (
    Availability,
    CheckRow,
    Dashboard,
    Day,
    Detail,
    Event,
    IncidentPage,
    IncidentRow,
    Outbox,
    Point,
    Report,
    ReportRow,
    ResultRow,
    ServiceRow,
    StatusPage,
    StatusService,
    Ticket,
    Window,
)

NOW = 1_796_379_600.0  # 2026-12-04 10:20 UTC
DAY = 86_400.0
EVIL = "<script>alert(1)</script><img src=x onerror=alert(2)>"
EVIL_REF = '<b onclick="alert(3)">ZD-1</b>'
RULE = "Availability is monitored time not in an incident, maintenance left out."

# What only the operator may see; the status page is built from the same services.
TARGET = "db-primary.corp.internal:5432"
REASON = "TLS handshake: certificate signed by unknown authority (secret-ca)"
CHECK = "pg-primary-tcp"
TICKET_REF = "ZD-4711"
INTERNAL = (TARGET, REASON, CHECK, TICKET_REF, "zendesk-ops", EVIL, "connect refused")

VOID = {"meta", "link", "br", "hr", "img", "input", "source", "area", "base", "col", "embed",
        "param", "track", "wbr"}


# -- reading the HTML back ----------------------------------------------------------------

@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    children: list[Element] = field(default_factory=list)
    parent: Element | None = None

    def all(self, tag: str | None = None) -> Iterator[Element]:
        for child in self.children:
            if child.tag == "#text":
                continue
            if tag is None or child.tag == tag:
                yield child
            yield from child.all(tag)

    def words(self) -> str:
        return self.text + "".join(c.words() for c in self.children)


class Tree(HTMLParser):
    """The page as a tree; a misnested or unclosed element fails the test that parses it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.at = self.root
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Element(tag, {k: v or "" for k, v in attrs}, parent=self.at)
        self.at.children.append(node)
        if tag not in VOID:
            self.at = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.at.children.append(Element(tag, {k: v or "" for k, v in attrs}, parent=self.at))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if self.at.tag != tag:
            self.errors.append(f"</{tag}> closes <{self.at.tag}>")
            return
        self.at = self.at.parent or self.root

    def handle_data(self, data: str) -> None:
        self.at.children.append(Element("#text", {}, data, parent=self.at))


def parse(html: str) -> Element:
    tree = Tree()
    tree.feed(html)
    tree.close()
    assert not tree.errors, tree.errors[:5]
    assert tree.at is tree.root, f"<{tree.at.tag}> is never closed"
    return tree.root


def assert_a_good_page(html: str) -> Element:
    """What every page owes its reader, whatever its data."""
    doc = parse(html)
    (page,) = doc.all("html")
    assert page.attrs.get("lang") == "en"
    (head,) = doc.all("head")
    (title,) = head.all("title")
    assert title.words().strip()
    assert len(list(doc.all("main"))) == 1
    assert any(m.attrs.get("name") == "viewport" for m in doc.all("meta"))
    # headings in order: an h1 first, never a level skipped on the way down
    levels = [int(e.tag[1]) for e in doc.all() if re.fullmatch(r"h[1-6]", e.tag)]
    assert levels and levels[0] == 1
    assert all(b <= a + 1 for a, b in pairwise(levels)), levels
    for table in doc.all("table"):
        assert list(table.all("caption")), "a table without a caption"
        assert all(th.attrs.get("scope") in ("col", "row") for th in table.all("th"))
        assert table.parent is not None and "scroll" in table.parent.attrs.get("class", "")
    labelled = {lab.attrs.get("for") for lab in doc.all("label")}
    for control in [*doc.all("select"), *doc.all("input"), *doc.all("textarea")]:
        assert control.attrs.get("id") in labelled, f"<{control.tag}> without a label"
    for chart in doc.all("svg"):
        if chart.attrs.get("role") == "img":
            assert chart.attrs.get("aria-label")
            assert [t for t in chart.children if t.tag == "title"]
        else:
            assert chart.attrs.get("aria-hidden") == "true"
    # nothing sent by a target or a helpdesk became an element or an attribute that runs
    assert not list(doc.all("script")) and not list(doc.all("img"))
    assert not list(doc.all("iframe")) and not list(doc.all("object"))
    for element in doc.all():
        assert not [a for a in element.attrs if a.startswith("on")], element.attrs
        assert not element.attrs.get("href", "").lower().startswith("javascript:")
    assert "2026-12-04 10:20 UTC" in doc.words()  # generated_at
    return doc


def row(tr: Element) -> str:
    """A table row's cells as a person reads them, one space apart."""
    cells = [" ".join(c.words().split()) for c in tr.all() if c.tag in ("th", "td")
             and c.parent is tr]
    return " ".join(cells)


def links(doc: Element) -> list[str]:
    return [a.attrs["href"] for a in doc.all("a")]


# -- the models -------------------------------------------------------------------------

def avail(percent: float | None, text: str, down: float = 0.0, maintenance: float = 0.0,
          start: float = NOW - DAY) -> Availability:
    return Availability(start, NOW, DAY, down, maintenance, 0.0 if percent is not None else DAY,
                        1 if down else 0, percent, text)


def days(count: int = 90) -> list[Day]:
    out = []
    for i in range(count):
        date = f"2026-{9 + (i + 4) // 30:02d}-{(i + 4) % 30 + 1:02d}"
        if i == 0:
            a = avail(None, "n/a")
        elif i == 1:
            a = avail(99.95, "99.95 %", down=43.0)
        elif i == 2:
            a = avail(95.0, "95 %", down=4320.0)
        elif i == 3:
            a = avail(100.0, "100 %", maintenance=3600.0)
        else:
            a = avail(100.0, "100 %")
        out.append(Day(date, a))
    return out


def points(count: int, phases: bool = False) -> list[Point]:
    out = []
    for i in range(count):
        if i == 5:
            out.append(Point(NOW - (count - i) * 900, 900, None, None))
            continue
        parts = {"resolve": 2.0, "connect": 10.0, "tls": 20.0, "processing": 50.0,
                 "transfer": 8.0} if phases else {}
        out.append(Point(NOW - (count - i) * 900, 900, 90.0 + i % 7, 150.0, 120.0, parts,
                         failed=1 if i == 10 else 0))
    return out


def ticket(ref: str = EVIL_REF, url: str | None = "javascript:alert(4)") -> Ticket:
    return Ticket("zendesk-ops", ref, url, "open", NOW - 3000, NOW - 2400, None)


def incident_row(group: str = CHECK, resolved: float | None = None) -> IncidentRow:
    return IncidentRow(
        key=f"check/{group}/7", group=group, is_service=False, checks=(group,),
        first_failure_at=NOW - 3600, opened_at=NOW - 3500, resolved_at=resolved,
        why=f"3 consecutive failures {EVIL}", reason=f"{REASON} {EVIL}",
        tickets=(ticket(), ticket(TICKET_REF, "https://ops.zendesk.example/tickets/4711")))


def check_row(name: str = CHECK, state: str = "down") -> CheckRow:
    return CheckRow(name=name, kind="tcp", service="Database", target=f"{TARGET} {EVIL}",
                    state=state, streak="3 failures", last_at=NOW - 300,
                    last_duration_ms=8.5, last_reason=f"{REASON} {EVIL}",
                    incident=f"check/{name}/7", spark=points(96),
                    availability_24h=avail(99.999, "99.999 %", down=0.5))


def dashboard(**changes: Any) -> Dashboard:
    fields: dict[str, Any] = dict(
        generated_at=NOW, agent=f"agent-1 {EVIL}", rule=RULE,
        services=[ServiceRow("Database", "down", (CHECK,), f"service/Database/{EVIL}",
                             avail(99.5, "99.5 %", down=432.0))],
        checks=[check_row(), check_row(f"web/{EVIL}", "up")],
        incidents=[incident_row()],
        windows=[Window(2, (CHECK,), ("Database",), f"patching {EVIL}", True, NOW + 600,
                        NOW + 4200, f"every sat 02:00 UTC for 2h {EVIL}")],
        outbox=Outbox(3, 1, 620.0, f"HTTP 500 from the helpdesk: {EVIL}"),
        state_filter="down", service_filter=None,
        states=("up", "failing", "down", "maintenance"), service_names=("Database", EVIL))
    fields.update(changes)
    return Dashboard(**fields)


def detail(phases: bool = True) -> Detail:
    names = ("resolve", "connect", "tls", "processing", "transfer") if phases else ()
    return Detail(
        kind="check", name=CHECK, description=f"The primary {EVIL}", check_kind="tcp",
        target=f"{TARGET} {EVIL}", service="Database", checks=(check_row(),), state="down",
        days=days(), sla_percent=99.9,
        availability={"24h": avail(99.999, "99.999 %", down=0.5),
                      "7d": avail(99.95, "99.95 %", down=300.0),
                      "30d": avail(99.8, "99.8 %", down=5000.0),
                      "90d": avail(None, "n/a")},
        latency={"24h": points(96, phases), "7d": points(168, phases),
                 "30d": points(720, phases)},
        phases=names,
        results=[ResultRow(NOW - 60, "down", 3000.0, f"{REASON} {EVIL}"),
                 ResultRow(NOW - 120, "up", 12.0, "")],
        incidents=[incident_row(), incident_row(resolved=NOW - 600)], rule=RULE,
        generated_at=NOW)


def incident_page() -> IncidentPage:
    return IncidentPage(incident_row(), [
        Event(NOW - 3600, "failing", f"{REASON} {EVIL}"),
        Event(NOW - 3500, "opened", f"{TICKET_REF} opened {EVIL}"),
        Event(NOW - 2400, "acknowledged", "Ana took it"),
    ], NOW)


def status_page(states: tuple[str, ...] = ("outage", "operational")) -> StatusPage:
    names = ("Database", "Web shop")
    return StatusPage(
        title="Example status <em>page</em>", description="Our public services & more",
        services=[StatusService(name, st, days(), avail(99.95, "99.95 %", down=40.0),
                                NOW - 3600 if st == "outage" else None)
                  for name, st in zip(names, states, strict=False)],
        rule=RULE, generated_at=NOW)


def report_page() -> Report:
    rows = [ReportRow("service", "Database", None, avail(99.999, "99.999 %", down=2.0), days(31),
                      [incident_row()], 600.0, 7500.0, 99.9, True),
            ReportRow("check", CHECK, "Database", avail(99.5, "99.5 %", down=400.0), days(31),
                      [incident_row()], None, 7500.0, 99.9, False),
            ReportRow("check", "web-http", "Web shop", avail(None, "n/a"), days(31), [],
                      None, None, None, None)]
    return Report(NOW - 31 * DAY, NOW, RULE, rows, NOW)


PAGES = {
    "dashboard": lambda: render.dashboard(dashboard()),
    "check": lambda: render.detail(detail()),
    "check without phases": lambda: render.detail(detail(phases=False)),
    "incident": lambda: render.incident(incident_page()),
    "status": lambda: render.status(status_page()),
    "report": lambda: render.report(report_page()),
}


# -- every page -------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES)
def test_every_page_is_well_formed_accessible_and_shows_markup_as_text(page: str) -> None:
    html = PAGES[page]()
    doc = assert_a_good_page(html)
    if page == "report":  # a report shows no reasons, only the tickets' refs
        assert EVIL_REF in doc.words()
    elif page != "status":  # the status page shows none of it (below)
        assert EVIL in doc.words()
    assert "<script" not in html.lower() and "<img" not in html.lower()


@pytest.mark.parametrize("page", PAGES)
def test_every_page_carries_its_own_style_and_nothing_external(page: str) -> None:
    html = PAGES[page]()
    doc = parse(html)
    assert not [e for e in doc.all("link")]
    assert "@import" not in html and "url(http" not in html and "@font-face" not in html
    (style,) = doc.all("style")
    assert "prefers-color-scheme: dark" in style.words()


def test_a_ticket_ref_with_markup_is_text_and_a_javascript_link_is_not_a_link() -> None:
    doc = assert_a_good_page(render.incident(incident_page()))
    assert EVIL_REF in doc.words()
    assert not list(doc.all("b"))
    hrefs = links(doc)
    assert "https://ops.zendesk.example/tickets/4711" in hrefs
    assert not [h for h in hrefs if "alert" in h]


# -- the dashboard ----------------------------------------------------------------------

def test_the_dashboard_links_each_check_service_and_incident_with_its_name_quoted() -> None:
    doc = assert_a_good_page(render.dashboard(dashboard()))
    hrefs = links(doc)
    assert f"/checks/{CHECK}" in hrefs
    assert "/services/Database" in hrefs
    assert f"/incidents/check%2F{CHECK}%2F7" in hrefs  # a key's "/" stays in one segment
    assert "/checks/web%2F%3Cscript%3Ealert%281%29%3C%2Fscript%3E%3Cimg%20src%3Dx%20onerror%3D" \
        "alert%282%29%3E" in hrefs
    assert "https://ops.zendesk.example/tickets/4711" in hrefs


def test_the_dashboard_filter_form_works_without_javascript_and_echoes_the_filters() -> None:
    doc = assert_a_good_page(render.dashboard(dashboard()))
    (form,) = doc.all("form")
    assert form.attrs["method"] == "get" and form.attrs["action"] == "/"
    selects = {s.attrs["name"]: s for s in form.all("select")}
    assert set(selects) == {"state", "service"}
    chosen = [o.attrs["value"] for o in selects["state"].all("option") if "selected" in o.attrs]
    assert chosen == ["down"]
    assert [o.attrs["value"] for o in selects["service"].all("option")] == ["", "Database", EVIL]
    assert [b for b in form.all("button") if b.attrs.get("type") == "submit"]


def test_the_dashboard_shows_state_streak_last_result_sparkline_and_the_outbox() -> None:
    doc = assert_a_good_page(render.dashboard(dashboard()))
    words = doc.words()
    assert "✗ down" in words and "✓ up" in words  # state as a word, with a symbol
    assert "3 failures" in words
    assert "5 min ago, 8.5 ms" in words
    sparks = [s for s in doc.all("svg") if "spark" in s.attrs.get("class", "")]
    assert len(sparks) == 2
    assert "1 of 96 periods with failures" in sparks[0].attrs["aria-label"]
    assert "3 actions pending, the oldest for 10m; 1 failed." in " ".join(words.split())
    assert "99.999 %" in words
    assert "every sat 02:00 UTC for 2h" in words


def test_a_dashboard_with_nothing_in_it_says_so() -> None:
    html = render.dashboard(dashboard(services=[], checks=[], incidents=[], windows=[],
                                      state_filter=None, outbox=Outbox(0, 0, None, "")))
    words = " ".join(assert_a_good_page(html).words().split())
    assert "No open incidents." in words and "No check matches the filters." in words
    assert "No maintenance windows." in words and "0 actions pending; 0 failed." in words


# -- a check's page ---------------------------------------------------------------------

def test_the_check_page_draws_one_bar_per_day_with_its_date_and_words() -> None:
    doc = assert_a_good_page(render.detail(detail()))
    (bars,) = [s for s in doc.all("svg") if "days" in s.attrs.get("class", "")]
    rects = list(bars.all("rect"))
    assert len(rects) == 90
    titles = [r.words() for r in rects]
    assert titles[0] == "2026-09-05: n/a"
    assert titles[1] == "2026-09-06: 99.95 %"
    assert titles[3].endswith("100 %, maintenance")
    # each level has its class (colour and pattern) and the legend says it in words
    assert [r.attrs["class"] for r in rects[:5]] == ["d-na", "d-minor", "d-major", "d-maint",
                                                     "d-ok"]
    assert int(rects[0].attrs["height"]) < int(rects[1].attrs["height"])  # n/a is short too
    words = doc.words()
    for text in svg.LEVEL_WORDS.values():
        assert text in words
    assert "1 n/a (not monitored)" in bars.attrs["aria-label"]


def test_the_check_page_gives_each_window_its_availability_and_the_sla_in_words() -> None:
    doc = assert_a_good_page(render.detail(detail()))
    (table,) = [t for t in doc.all("table") if "by window" in t.words()]
    rows = {row(r).split(" ")[0]: row(r) for r in table.all("tr")}
    assert "99.999 %" in rows["24h"] and "met (≥ 99.9 %)" in rows["24h"]
    assert "not met (< 99.9 %)" in rows["30d"]
    assert "n/a" in rows["90d"]
    assert RULE in doc.words()


def test_the_check_page_draws_latency_per_window_stacked_by_phase_with_a_legend() -> None:
    doc = assert_a_good_page(render.detail(detail()))
    charts = [s for s in doc.all("svg") if "chart" in s.attrs.get("class", "")]
    assert len(charts) == 3
    for chart in charts:
        phases = [p for p in chart.all("path") if "ph " in p.attrs.get("class", "")]
        assert len(phases) == 5
        assert "stacked by phase: resolve, connect, tls, processing, transfer" in \
            chart.attrs["aria-label"]
        # the gap at point 5 lifts the pen: two runs, two closed shapes per phase
        assert phases[0].attrs["d"].count("Z") == 2
    legend = " ".join(doc.words().split())
    assert "resolve connect tls processing transfer p95 (dashed line)" in legend


def test_without_phases_the_chart_is_the_mean_as_an_area() -> None:
    doc = assert_a_good_page(render.detail(detail(phases=False)))
    charts = [s for s in doc.all("svg") if "chart" in s.attrs.get("class", "")]
    assert all([p for p in c.all("path") if p.attrs.get("class") == "mean"] for c in charts)
    assert "stacked" not in charts[0].attrs["aria-label"]


def test_the_check_page_lists_the_last_results_and_the_incidents() -> None:
    doc = assert_a_good_page(render.detail(detail()))
    rows = [row(r) for r in doc.all("tr")]
    assert f"2026-12-04 10:19 UTC (1 min ago) ✗ down 3000 ms {REASON} {EVIL}" in rows
    incidents = [r for r in rows if r.startswith(f"check/{CHECK}/7 ")]
    assert len(incidents) == 2
    # the open one has lasted an hour so far; the resolved one, until it was resolved
    assert "✗ open 1h 3 consecutive failures" in incidents[0]
    assert "2026-12-04 10:10 UTC 50m" in incidents[1]


# -- an incident's page -----------------------------------------------------------------

def test_the_incident_page_shows_its_tickets_and_its_timeline_oldest_first() -> None:
    doc = assert_a_good_page(render.incident(incident_page()))
    (timeline,) = [t for t in doc.all("table") if "oldest first" in t.words()]
    assert [row(r) for r in timeline.all("tr")][1:] == [
        f"2026-12-04 09:20 UTC (1 h ago) failing {REASON} {EVIL}",
        f"2026-12-04 09:21 UTC (58 min ago) opened {TICKET_REF} opened {EVIL}",
        "2026-12-04 09:40 UTC (40 min ago) acknowledged Ana took it"]
    (tickets,) = [t for t in doc.all("table") if "for this incident" in t.words()]
    rows = [row(r) for r in tickets.all("tr")][1:]
    assert rows[1] == ("ZD-4711 zendesk-ops ✗ open 2026-12-04 09:30 UTC (50 min ago) "
                       "2026-12-04 09:40 UTC (40 min ago) no")
    assert f"/checks/{CHECK}" in links(doc)


# -- the public status page -------------------------------------------------------------

def test_the_status_page_shows_nothing_internal() -> None:
    """The same services, checks, targets, reasons and tickets the other pages show: none of
    it reaches the public page, and it links to no internal page."""
    html = render.status(status_page())
    doc = assert_a_good_page(html)
    for secret in INTERNAL:
        assert secret not in html and secret not in doc.words()
    assert not list(doc.all("a")) and not list(doc.all("form"))
    words = " ".join(doc.words().split())
    assert "Example status <em>page</em>" in words  # the title is text too
    assert "Database: ✗ outage since 2026-12-04 09:20 UTC (1 h ago)" in words
    assert "99.95 % available over 90 days" in words


@pytest.mark.parametrize(("states", "banner"), [
    (("operational", "operational"), "✓ All services operational"),
    (("outage", "operational"), "✗ Some services have an outage"),
    (("outage", "maintenance"), "✗ Some services have an outage"),
    (("maintenance", "operational"), "⚙ Some services are under maintenance"),
    (("unknown", "operational"), "? The state of some services is unknown"),
])
def test_the_status_banner_says_the_worst_state(states: tuple[str, ...], banner: str) -> None:
    doc = assert_a_good_page(render.status(status_page(states)))
    (p,) = [p for p in doc.all("p") if "banner" in p.attrs.get("class", "")]
    assert " ".join(p.words().split()) == banner


# -- the report -------------------------------------------------------------------------

def test_the_report_gives_each_row_its_figures_tickets_and_sla_in_words() -> None:
    doc = assert_a_good_page(render.report(report_page()))
    rows = {row(r).split(" ")[0]: row(r) for r in doc.all("tr")}
    assert rows["Database"] == ("Database 99.999 % ✓ met (≥ 99.9 %) 2s 0s 0s 1: "
                                f"{EVIL_REF}, ZD-4711 10m 2h 5m")
    assert "✗ not met (< 99.9 %)" in rows[CHECK] and "n/a 2h 5m" in rows[CHECK]
    assert rows["web-http"].startswith("web-http (Web shop) n/a no target")
    assert len([s for s in doc.all("svg") if "days" in s.attrs.get("class", "")]) == 3


def test_the_report_prints_on_white_a4_without_breaking_rows() -> None:
    (style,) = parse(render.report(report_page())).all("style")
    css = style.words()
    printing = css[css.index("@media print"):]
    assert "size: A4" in printing and "page-break-inside: avoid" in printing
    assert "background: #fff" in printing
    # the dark theme is for screens only: a browser in dark mode still prints on white
    assert "@media screen and (prefers-color-scheme: dark)" in css


# -- the helpers ------------------------------------------------------------------------

@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (45, "45s"), (125, "2m 5s"), (720, "12m"), (7500, "2h 5m"), (7200, "2h"),
    (93_600, "1d 2h"), (None, "n/a"),
])
def test_durations_read_as_people_write_them(seconds: float | None, text: str) -> None:
    assert render.duration(seconds) == text


@pytest.mark.parametrize(("at", "text"), [
    (NOW - 3, "just now"), (NOW - 42, "42 s ago"), (NOW - 300, "5 min ago"),
    (NOW - 7300, "2 h ago"), (NOW - 3 * DAY, "3 d ago"), (NOW + 600, "in 10 min"),
])
def test_times_are_relative_to_when_the_page_was_made(at: float, text: str) -> None:
    assert render.relative(at, NOW) == text
    assert render.utc(NOW) == "2026-12-04 10:20 UTC"


# -- the colours ------------------------------------------------------------------------

def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def themes() -> dict[str, dict[str, str]]:
    css = (Path(render.__file__).parent / "templates" / "base.css").read_text()
    dark_at = css.index("@media screen and (prefers-color-scheme: dark)")
    found = {}
    for name, part in (("light", css[:dark_at]), ("dark", css[dark_at:css.index("}\n}", dark_at)])):
        found[name] = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-f]{6})", part))
    return found


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_every_text_colour_has_a_contrast_of_4_5_to_1_on_its_background(theme: str) -> None:
    colours = themes()[theme]
    pairs = [("fg", "bg"), ("muted", "bg"), ("link", "bg"), ("fg", "panel"), ("muted", "panel"),
             ("link", "panel")]
    pairs += [(f"{s}-fg", f"{s}-bg") for s in ("up", "down", "failing", "maint", "unknown")]
    low = {f"{fg} on {bg}": round(contrast(colours[fg], colours[bg]), 2) for fg, bg in pairs
           if contrast(colours[fg], colours[bg]) < 4.5}
    assert not low


# -- in a browser -----------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists() and shutil.which("chromium")),
    reason="Debian's chromium and chromium-driver are not installed")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    service = pytest.importorskip("selenium.webdriver.chrome.service")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=service.Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _open(browser: Any, path: Path, width: int, media: dict[str, Any]) -> None:
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 600})
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", media)
    browser.get(path.as_uri())


@needs_chromium
@pytest.mark.parametrize("page", ["dashboard", "check", "incident", "status", "report"])
def test_no_page_is_wider_than_a_phone(page: str, browser: Any, tmp_path: Path) -> None:
    """At 390 px only a table's own scrolling box may be wider than the screen."""
    path = tmp_path / f"{page}.html"
    path.write_text(PAGES[page](), encoding="utf-8")
    _open(browser, path, 390, {"media": "screen", "features": []})
    width, overflowing = browser.execute_script("""
        const out = [];
        for (const e of document.querySelectorAll('body *')) {
          const r = e.getBoundingClientRect();
          if (r.right > window.innerWidth + 1 && !e.closest('.scroll'))
            out.push(e.tagName + '.' + e.className.baseVal + e.className);
        }
        return [document.documentElement.scrollWidth, out.slice(0, 5)];""")
    assert width <= 390 and not overflowing


@needs_chromium
def test_the_dark_theme_and_the_printed_page_are_what_the_style_says(
        browser: Any, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text(PAGES["report"](), encoding="utf-8")
    colours = "return [getComputedStyle(document.body).backgroundColor, " \
              "getComputedStyle(document.body).color]"
    dark = {"name": "prefers-color-scheme", "value": "dark"}
    _open(browser, path, 1280, {"media": "screen", "features": [dark]})
    assert browser.execute_script(colours) == ["rgb(13, 17, 23)", "rgb(230, 237, 243)"]
    _open(browser, path, 1280, {"media": "print", "features": [dark]})
    assert browser.execute_script(colours) == ["rgb(255, 255, 255)", "rgb(0, 0, 0)"]
    # an A4 page inside 12 mm margins is about 700 CSS px: the report's tables fit in it
    _open(browser, path, 700, {"media": "print", "features": []})
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 700


# -- a probe that has just started ------------------------------------------------------

def test_pages_with_no_data_yet_render_and_say_so() -> None:
    """The first minute after a start: no results, no days, no latency, nothing counted."""
    none = avail(None, "n/a")
    fresh = CheckRow("new-check", "http", None, "https://example.org/", "unknown", "",
                     None, None, "", None, [Point(NOW - 900, 900, None, None)], None)
    board = dashboard(checks=[fresh], incidents=[], windows=[], state_filter=None,
                      services=[ServiceRow("Empty", "unknown", (), None, None)])
    words = " ".join(assert_a_good_page(render.dashboard(board)).words().split())
    assert "none yet" in words and "Latency, last 24 h: no results" in render.dashboard(board)
    page = Detail(kind="check", name="new-check", description="", check_kind="http",
                  target="https://example.org/", service=None, checks=(fresh,), state="unknown",
                  days=[], availability={w: none for w in ("24h", "7d", "30d", "90d")},
                  sla_percent=None, latency={"24h": [], "7d": [Point(NOW, 60, None, None)]},
                  phases=(), results=[], incidents=[], rule=RULE, generated_at=NOW)
    html = render.detail(page)
    words = " ".join(assert_a_good_page(html).words().split())
    assert "No days yet." in words and "No results yet." in words and "No incidents." in words
    assert "Latency over 7d: no results" in html and "no target" in words
    status = StatusPage("Status", "", [StatusService("Empty", "unknown", [], none, None)],
                        RULE, NOW)
    assert "Availability n/a: nothing counted yet" in \
        assert_a_good_page(render.status(status)).words()
    empty = Report(NOW - DAY, NOW, RULE, [], NOW)
    assert "Nothing to report" in assert_a_good_page(render.report(empty)).words()
