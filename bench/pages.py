"""How long the pages take to render (probe.pages.render): a dashboard of 1,000 checks, each with
a 96-point sparkline, and a check's page with 90 days and its 24h/7d/30d latency (http, five
phases). The models are built once, then each page rendered N times; the figures are the median
and the p95 of the milliseconds per render. The target (issue 14): a 1,000-check dashboard in
under 200 ms on the 2-core bench machine.

`python -m bench.pages [--checks N] [--reps N] [--write DIR]`; `--write` also saves each page
as an HTML file (for looking at them in a browser)."""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from probe.pages import render
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
RULE = ("Availability is the share of monitored time not spent in an incident; maintenance and "
        "time without results are left out of both sides.")
PHASES = ("resolve", "connect", "tls", "processing", "transfer")
STATES = ("up", "failing", "down", "maintenance", "unreachable", "unknown")


def availability(start: float, end: float, down: float, maintenance: float = 0.0,
                 na: float = 0.0, incidents: int = 0) -> Availability:
    monitored = end - start - na
    counted = monitored - maintenance
    if counted <= 0:
        return Availability(start, end, 0.0, 0.0, maintenance, end - start, incidents, None, "n/a")
    percent = 100.0 * (counted - down) / counted
    text = f"{percent:.3f}".rstrip("0").rstrip(".") + " %"
    if down > 0 and text == "100 %":
        text = "99.999 %"
    return Availability(start, end, monitored, down, maintenance, na, incidents, percent, text)


def days(rng: random.Random, count: int = 90) -> list[Day]:
    out = []
    for i in range(count):
        start = NOW - (count - i) * DAY
        stamp = time.strftime("%Y-%m-%d", time.gmtime(start))
        roll = rng.random()
        if i < 3:
            a = availability(start, start + DAY, 0.0, na=DAY)
        elif roll < 0.05:
            a = availability(start, start + DAY, rng.uniform(900, 7200), incidents=1)
        elif roll < 0.12:
            a = availability(start, start + DAY, rng.uniform(5, 60), incidents=1)
        elif roll < 0.15:
            a = availability(start, start + DAY, 0.0, maintenance=7200)
        else:
            a = availability(start, start + DAY, 0.0)
        out.append(Day(stamp, a))
    return out


def over(d: list[Day]) -> Availability:
    """The availability of a run of days, from the days'."""
    return availability(d[0].availability.start, d[-1].availability.end,
                        sum(x.availability.down for x in d),
                        sum(x.availability.maintenance for x in d),
                        sum(x.availability.na for x in d),
                        sum(x.availability.incidents for x in d))


def series(rng: random.Random, count: int, step: float, phases: bool = False,
           gaps: bool = True) -> list[Point]:
    out = []
    level = rng.uniform(20, 250)
    for i in range(count):
        at = NOW - (count - i) * step
        if gaps and rng.random() < 0.02:
            out.append(Point(at, step, None, None))
            continue
        mean = max(1.0, level * rng.uniform(0.7, 1.4) + (400 if rng.random() < 0.02 else 0))
        parts = {}
        if phases:
            shares = (0.05, 0.15, 0.25, 0.45, 0.10)
            parts = {name: mean * share for name, share in zip(PHASES, shares, strict=True)}
        out.append(Point(at, step, mean, mean * 1.8, mean * 1.5, parts,
                         failed=1 if rng.random() < 0.02 else 0))
    return out


def ticket(n: int) -> Ticket:
    return Ticket("zendesk-ops", f"ZD-{4700 + n}",
                  f"https://ops.zendesk.example/agent/tickets/{4700 + n}", "open",
                  NOW - 3000, NOW - 2400 if n % 2 else None, None)


def incident_row(n: int, group: str, service: bool = False) -> IncidentRow:
    return IncidentRow(
        key=f"{'service' if service else 'check'}/{group}/{n}", group=group, is_service=service,
        checks=(group,) if not service else (f"{group}-http", f"{group}-tcp"),
        first_failure_at=NOW - 3600 - n * 60, opened_at=NOW - 3500 - n * 60,
        resolved_at=None, why="3 consecutive failures",
        reason="connect: connection refused (10.0.3.17:443)", tickets=(ticket(n),))


def check_row(rng: random.Random, i: int, services: list[str]) -> CheckRow:
    kind = ("http", "tcp", "dns", "tls", "icmp")[i % 5]
    st = STATES[0] if rng.random() < 0.9 else rng.choice(STATES[1:])
    name = f"{services[i % len(services)]}-{kind}-{i}"
    return CheckRow(
        name=name, kind=kind, service=services[i % len(services)],
        target=(f"https://app{i}.internal.example:8443/healthz" if kind == "http"
                else f"10.0.{i // 250}.{i % 250}:443"),
        state=st, streak="12 successes" if st == "up" else "3 failures",
        last_at=NOW - rng.uniform(1, 120), last_duration_ms=rng.uniform(3, 400),
        last_reason="" if st == "up" else "HTTP 503 Service Unavailable",
        incident=f"check/{name}/1" if st == "down" else None,
        spark=series(rng, 96, 900.0), availability_24h=availability(NOW - DAY, NOW, 0.0))


def sample_dashboard(checks: int = 1000, seed: int = 14) -> Dashboard:
    rng = random.Random(seed)
    names = [f"svc-{n:02d}" for n in range(max(1, checks // 20))]
    rows = [check_row(rng, i, names) for i in range(checks)]
    services = [ServiceRow(n, "up" if k % 7 else "down", [r.name for r in rows if r.service == n],
                           None if k % 7 else f"service/{n}/1",
                           availability(NOW - DAY, NOW, 0.0 if k % 7 else 600.0))
                for k, n in enumerate(names)]
    windows = [Window(None, (), (names[0],), "weekly database patching", False, NOW + 3 * DAY,
                      NOW + 3 * DAY + 7200, "every sat 02:00 UTC for 2h"),
               Window(3, (rows[1].name,), (), "network switch swap", True, None, NOW + 1800,
                      "2026-12-04 10:00 to 11:00 UTC")]
    return Dashboard(
        generated_at=NOW, agent="probe-a.example", rule=RULE, services=services, checks=rows,
        incidents=[incident_row(n, rows[n].name) for n in range(3)]
        + [incident_row(9, names[0], service=True)],
        windows=windows, outbox=Outbox(2, 0, 45.0, ""), state_filter=None, service_filter=None,
        states=STATES, service_names=names)


def sample_detail(seed: int = 14) -> Detail:
    rng = random.Random(seed)
    d = days(rng)
    windows = {"24h": availability(NOW - DAY, NOW, 0.0), "7d": over(d[-7:]),
               "30d": over(d[-30:]), "90d": over(d)}
    latency = {"24h": series(rng, 288, 300.0, True), "7d": series(rng, 336, 1800.0, True),
               "30d": series(rng, 720, 3600.0, True)}
    results = [ResultRow(NOW - 30 * k, "up" if k > 3 else "down", rng.uniform(20, 300),
                         "" if k > 3 else "HTTP 503 Service Unavailable") for k in range(50)]
    me = check_row(rng, 0, ["shop"])
    return Detail(kind="check", name="shop-http-0", description="The shop's front page",
                  check_kind="http", target="https://shop.example/healthz", service="shop",
                  checks=(me,), state="down", days=d, availability=windows, sla_percent=99.9,
                  latency=latency, phases=PHASES, results=results,
                  incidents=[incident_row(n, "shop-http-0") for n in range(5)], rule=RULE,
                  generated_at=NOW)


def sample_service(seed: int = 14) -> Detail:
    rng = random.Random(seed)
    base = sample_detail(seed)
    checks = [check_row(rng, i, ["shop"]) for i in range(5)]
    latency = {w: [Point(p.at, p.step, p.mean_ms, p.max_ms, p.p95_ms) for p in ps]
               for w, ps in base.latency.items()}
    return Detail(kind="service", name="shop", description="Checkout and catalogue",
                  check_kind=None, target=None, service=None, checks=checks, state="down",
                  days=base.days, availability=base.availability, sla_percent=99.5,
                  latency=latency, phases=(), results=base.results, incidents=base.incidents,
                  rule=RULE, generated_at=NOW)


def sample_incident() -> IncidentPage:
    row = incident_row(1, "shop-http-0")
    row = IncidentRow(row.key, row.group, row.is_service, row.checks, row.first_failure_at,
                      row.opened_at, None, row.why, row.reason,
                      (row.tickets[0], Ticket("rt", "RT#88", None, "resolved", NOW - 3000,
                                              None, NOW - 1200)))
    timeline = [Event(NOW - 3660, "failing", "HTTP 503 Service Unavailable"),
                Event(NOW - 3560, "opened", "ZD-4701 opened on zendesk-ops"),
                Event(NOW - 2400, "acknowledged", "Agent Ana took ZD-4701"),
                Event(NOW - 1200, "escalated", "priority raised to urgent after 30m")]
    return IncidentPage(row, timeline, NOW)


def sample_status(seed: int = 14) -> StatusPage:
    rng = random.Random(seed)
    services = []
    for name, st, since in (("Shop", "outage", NOW - 3660), ("Catalogue", "operational", None),
                            ("Payments", "maintenance", None), ("Search", "operational", None)):
        d = days(rng)
        services.append(StatusService(name, st, d, over(d), since))
    return StatusPage("Example Shop status", "The state of our public services.", services,
                      RULE, NOW)


def sample_report(seed: int = 14) -> Report:
    rng = random.Random(seed)
    rows = []
    for kind, name, service in (("service", "shop", None), ("service", "payments", None),
                                ("check", "shop-http", "shop"), ("check", "shop-tcp", "shop"),
                                ("check", "payments-tls", "payments")):
        d = days(rng, 31)
        a = over(d)
        target = 99.9 if kind == "service" else None
        met = None if target is None or a.percent is None else a.percent >= target
        rows.append(ReportRow(kind, name, service, a, d,
                              [incident_row(1, name), incident_row(2, name)],
                              1500.0, 4100.0, target, met))
    return Report(NOW - 31 * DAY, NOW, RULE, rows, NOW)


def measure(work: Callable[[], object], reps: int) -> dict[str, float]:
    work()  # the first render compiles the templates: not what a page costs afterwards
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"median": statistics.median(times), "p95": times[min(len(times) - 1,
                                                                   int(len(times) * 0.95))],
            "min": times[0], "max": times[-1], "reps": reps}


def run(checks: int = 1000, reps: int = 20, say: Callable[[str], None] = print) -> dict[str, Any]:
    board, page = sample_dashboard(checks), sample_detail()
    figures = {
        f"dashboard_{checks}": measure(lambda: render.dashboard(board), reps),
        "detail_90d": measure(lambda: render.detail(page), reps),
    }
    figures["bytes"] = {"dashboard": len(render.dashboard(board).encode()),
                        "detail": len(render.detail(page).encode())}
    for name, f in figures.items():
        if name != "bytes":
            say(f"{name}: median {f['median']:.1f} ms, p95 {f['p95']:.1f} ms "
                f"({f['reps']} renders)")
    say(f"sizes: dashboard {figures['bytes']['dashboard'] / 1024:.0f} KiB, "
        f"detail {figures['bytes']['detail'] / 1024:.0f} KiB")
    return figures


def write(directory: Path, checks: int = 40) -> list[Path]:
    """Every page of the samples as a file, for a browser."""
    directory.mkdir(parents=True, exist_ok=True)
    pages = {"dashboard.html": render.dashboard(sample_dashboard(checks)),
             "check.html": render.detail(sample_detail()),
             "service.html": render.detail(sample_service()),
             "incident.html": render.incident(sample_incident()),
             "status.html": render.status(sample_status()),
             "report.html": render.report(sample_report())}
    out = []
    for name, html in pages.items():
        path = directory / name
        path.write_text(html, encoding="utf-8")
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pages", description=__doc__)
    parser.add_argument("--checks", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--write", type=Path, help="also write the sample pages here")
    args = parser.parse_args(argv)
    run(args.checks, args.reps)
    if args.write:
        for path in write(args.write):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
