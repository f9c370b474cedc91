"""The figures as tables for a person, and as JSON for the record; the machine they came from,
and the targets of issue 6 they are held against."""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any

RATIO_TARGET = {"http": 0.5, "tcp": 0.5, "dns": 0.5, "icmp": 0.5, "tls": 0.9, "https": 0.8}
SCALE_TARGET = {"checks": 10_000, "lag_p99_ms": 50.0, "missed": 0, "rss_max_mb": 150.0}
TICKET_MARGIN_MS = 100.0  # time to ticket in RT: below RT's own create latency + this
# Issue 12's targets for a cluster of agents sharing one PostgreSQL.
CLUSTER_TARGET = {"statements_per_result": 0.05, "cpu_ratio": 1.2, "ticket_p99_ms": 250.0}
# Issue 14: the dashboard of 1,000 checks renders in under this many milliseconds.
PAGES_TARGET_MS = 200.0


def machine() -> dict[str, Any]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = int(line.split()[1]) * 1024
    return {
        "nproc": os.cpu_count(), "cpu_model": model, "memory_gib": round(memory / 2**30, 1),
        "kernel": platform.release(), "python": platform.python_version(),
    }


def verdict(ok: bool) -> str:
    return "meets" if ok else "ABOVE"


def _table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _spread(s: dict[str, float], fmt: str = ".3f") -> str:
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def tables(results: dict[str, Any]) -> str:
    out = []
    m = results["machine"]
    out.append(f"machine: {m['nproc']} x {m['cpu_model']}, {m['memory_gib']} GiB, "
               f"Linux {m['kernel']}, Python {m['python']}; mode {results['mode']}; "
               f"probe: {results.get('probe', '?')}")
    if results.get("kinds"):
        rows = []
        for r in results["kinds"]:
            limit = RATIO_TARGET[r["kind"]]
            rows.append([r["kind"], _spread(r["probe_cpu_ms"]), _spread(r["blackbox_cpu_ms"]),
                         _spread(r["ratio"], ".2f"), f"≤ {limit}",
                         verdict(r["ratio"]["median"] <= limit),
                         str(r["probe_not_up"]), str(r["blackbox_failures"])])
        first = results["kinds"][0]
        out += ["", f"CPU per check, {first['probes']} checks at concurrency "
                f"{first['concurrency']}, median (min-max) of {first['repetitions']}:",
                _table(["kind", "probe CPU-ms/check", "blackbox CPU-ms/probe",
                        "probe/blackbox", "target", "", "probe not up", "blackbox failed"],
                       rows)]
    if results.get("scale"):
        rows = []
        for r in results["scale"]:
            ok: bool = (r["lag_within_50ms"] >= 0.99 and r["missed"] == 0 and r["skipped"] == 0
                  and r["rss_max_mb"] <= SCALE_TARGET["rss_max_mb"])
            rows.append([
                str(r["checks"]), f"{r['window_s']:.0f}s",
                f"{_ms(r['lag_p50_ms'])}/{_ms(r['lag_p99_ms'])}/≤{r['lag_max_bucket_ms']:g}",
                f"{r['lag_within_50ms']:.2%}",
                f"{_ms(r['db_lag_p50_ms'])}/{_ms(r['db_lag_p99_ms'])}/{_ms(r['db_lag_max_ms'])}",
                f"{_ms(r['quiet_lag_p99_ms'])}/{_ms(r['quiet_lag_max_ms'])}",
                f"{r['runs']}/{r['runs_expected']}", str(r["skipped"]), str(r["missed"]),
                str(r["not_up"]),
                f"{r['cpu_share']:.1%}", f"{r['cpu_ms_per_check']:.2f}",
                f"{r['rss_max_mb']:.0f}", f"{r['scrape_s']:.2f}", verdict(ok),
            ])
        out += ["", "Scale, 10 s interval, one core (lag in ms: p50/p99/max):",
                _table(["checks", "window", "lag (histogram)", "≤ 50 ms", "start spread (DB)",
                        "spread p99/max but scrape",
                        "runs/expected", "skipped", "missed", "not up", "CPU", "CPU-ms/check",
                        "RSS MB", "scrape s", ""], rows)]
    if results.get("tickets"):
        create = results.get("rt_create")
        rows = []
        for r in results["tickets"]:
            target = ""
            if r["backend"] == "rt" and create:
                limit = create["p99_ms"] + TICKET_MARGIN_MS
                target = f"p99 < {limit:.0f} {verdict(r['p99_ms'] < limit)}"
            rows.append([r["backend"], f"{r['delivered']}/{r['incidents']}",
                         f"{r['rate_per_s']:.1f}/s", _ms(r["p50_ms"]), _ms(r["p99_ms"]),
                         _ms(r["max_ms"]), target])
        if create:
            rows.append([f"RT create ({create['creates']}, direct)", "", "",
                         _ms(create["p50_ms"]), _ms(create["p99_ms"]), _ms(create["max_ms"]), ""])
        out += ["", "Time to ticket (ms, from the deciding result to the helpdesk's answer):",
                _table(["backend", "tickets", "incidents", "p50", "p99", "max", "target"],
                       rows)]
    if results.get("cluster"):
        out += ["", _cluster(results["cluster"])]
    if results.get("sites"):
        out += ["", _sites(results["sites"])]
    if results.get("pages"):
        out += ["", _pages(results["pages"])]
    if results.get("history"):
        out += ["", _history(results["history"])]
    if results.get("alerts"):
        out += ["", _alerts(results["alerts"])]
    for line in results.get("skipped", []):
        out.append(f"skipped: {line}")
    for line in results.get("errors", []):
        out.append(f"error: {line}")
    return "\n".join(out)


def _pages(p: dict[str, Any]) -> str:
    rows = []
    for name, f in p.items():
        if name == "bytes":
            continue
        target = ""
        if name.startswith("dashboard_"):
            target = f"< {PAGES_TARGET_MS:.0f} {verdict(f['median'] < PAGES_TARGET_MS)}"
        rows.append([name, str(f["reps"]), _ms(f["median"]), _ms(f["p95"]), _ms(f["max"]),
                     target])
    return "\n".join(["Rendering the pages (ms per render):",
                      _table(["page", "renders", "median", "p95", "max", "target"], rows)])


# The daemon's own CPU per check at 10,000 checks (docs/performance.md, the scale scenario):
# what the history may add 5 % to.
DAEMON_CPU_US_PER_CHECK = 320.0
HISTORY_DB_TARGET = 2e9  # bytes at 10,000 checks, steady state


def _alerts(a: dict[str, Any]) -> str:
    rows = [[wave, f"{a[wave]['per_second']:.0f}",
             f"{a[wave]['p50_ms']:.1f}/{a[wave]['p99_ms']:.1f}",
             f"{a[wave]['delivered_after_s']:.1f}s" if "delivered_after_s" in a[wave] else "-"]
            for wave in ("open", "repeat", "resolve")]
    return "\n".join([
        f"Alertmanager's webhook: {a['groups']} groups, {a['concurrency']} in flight, local "
        f"helpdesk; {a['tickets']} tickets, daemon RSS {a['rss_mb']:.0f} MB:",
        _table(["wave", "notifications/s", "answered p50/p99 ms", "all delivered after"],
               rows)])


def _history(h: dict[str, Any]) -> str:
    c, z, d = h["cpu"], h["size"], h["dashboard"]
    share = c["us_per_result"] / DAEMON_CPU_US_PER_CHECK
    rows = [
        [f"CPU per result ({c['checks']:,} checks, {c['results']:,} results)",
         f"{c['us_per_result']:.1f} µs (count {c['add_s'] / c['results'] * 1e6:.1f}, write "
         f"{c['write_s'] / c['results'] * 1e6:.1f}, roll up {c['roll_s'] / c['results'] * 1e6:.1f})"
         f" = {share:.1%} of {DAEMON_CPU_US_PER_CHECK:.0f} µs",
         "≤ 5 %", verdict(share <= 0.05)],
        [f"database at steady state ({z['checks']:,} checks, {z['rows']:,} rows)",
         f"{z['bytes'] / 1e6:.0f} MB, {z['bytes_per_row']:.1f} B/row; "
         f"{z['bytes_at_10000'] / 1e9:.2f} GB at 10,000 checks",
         "< 2 GB", verdict(z["bytes_at_10000"] < HISTORY_DB_TARGET)],
        [f"dashboard of {d['checks']:,} checks from the state database",
         f"{d['median_ms']:.0f} ms median ({d['build_median_ms']:.0f} building), "
         f"p95 {d['p95_ms']:.0f}", f"< {PAGES_TARGET_MS:.0f} ms",
         verdict(d["median_ms"] < PAGES_TARGET_MS)],
    ]
    if h.get("pg_size"):
        p = h["pg_size"]
        rows.append([f"the same on PostgreSQL ({p['checks']:,} checks, {p['rows']:,} rows)",
                     f"{p['bytes'] / 1e6:.0f} MB, {p['bytes_per_row']:.1f} B/row; "
                     f"{p['bytes_at_10000'] / 1e9:.2f} GB at 10,000 checks", "< 2 GB",
                     verdict(p["bytes_at_10000"] < HISTORY_DB_TARGET)])
    return "\n".join(["The history:", _table(["what", "measured", "target", ""], rows)])


def _cluster(c: dict[str, Any]) -> str:
    s, h, t, target = c["steady"], c["handover"], c["tickets"], CLUSTER_TARGET
    rows = [
        ["statements per check result, steady",
         f"{s['statements_per_result']:.3f} ({s['statements_per_result_no_tx']:.3f} "
         "without BEGIN/COMMIT)",
         f"≤ {target['statements_per_result']}",
         verdict(s["statements_per_result"] <= target["statements_per_result"])],
        ["agent CPU-ms per check, cluster / alone on SQLite",
         f"{s['agent_cpu_ms_per_check']:.3f} / {c['sqlite']['cpu_ms_per_check']:.3f} = "
         f"{c['cpu_ratio']:.2f}x", f"≤ {target['cpu_ratio']}x",
         verdict(c["cpu_ratio"] <= target["cpu_ratio"])],
        [f"killed agent's checks running elsewhere ({h['ran_again']}/{h['checks']}), "
         "p50/p99/max s",
         f"{h['p50_s']:.1f} / {h['p99_s']:.1f} / {h['max_s']:.1f}", f"p99 ≤ {h['target_s']:g}",
         verdict(h["p99_s"] <= h["target_s"] and h["ran_again"] == h["checks"])],
        [f"deciding result → ticket at the helpdesk ({t['delivered']}/{t['incidents']}), "
         "p50/p99/max ms",
         f"{_ms(t['p50_ms'])} / {_ms(t['p99_ms'])} / {_ms(t['max_ms'])}",
         f"p99 ≤ {target['ticket_p99_ms']:g}",
         verdict(t["p99_ms"] <= target["ticket_p99_ms"] and t["delivered"] == t["incidents"])],
        ["PostgreSQL CPU-s per 1,000 check results",
         f"{s['postgres_cpu_s_per_1000']:.3f} ({s['postgres_cpu_share']:.1%} of a core)",
         "report", ""],
    ]
    held = ", ".join(f"{a} {n}" for a, n in sorted(c["held"].items()))
    top = [f"  {q['per_s']:>7.2f}/s  {q['query']}" for q in s["top_statements"]]
    return "\n".join([
        f"Cluster: {c['agents']} agents, {c['checks']} checks at a {c['interval_s']:g} s interval "
        f"(held: {held}), PostgreSQL {c['postgres']} with fsync {c['fsync']}, agent_ttl "
        f"{c['agent_ttl_s']:g} s; steady window {s['window_s']:.0f} s, {s['results']} results, "
        f"{s['statements_per_s']:.1f} statements/s:",
        _table(["figure", "measured", "target", ""], rows),
        "Statements of the steady window, most frequent first:", *top])


def _sites(c: dict[str, Any]) -> str:
    s, t, target = c["steady"], c["tickets"], CLUSTER_TARGET
    rows = [
        ["statements per check result, steady", f"{s['statements_per_result']:.3f}",
         f"≤ {target['statements_per_result']}",
         verdict(s["statements_per_result"] <= target["statements_per_result"])],
        [f"quorum's result → ticket at the helpdesk ({t['delivered']}/{t['incidents']}), "
         "p50/p99/max ms", f"{_ms(t['p50_ms'])} / {_ms(t['p99_ms'])} / {_ms(t['max_ms'])}",
         f"p99 ≤ {target['ticket_p99_ms']:g}",
         verdict(t["p99_ms"] <= target["ticket_p99_ms"] and t["delivered"] == t["incidents"])],
        ["  of which result → vote in the database, p50/p99 ms",
         f"{_ms(t['vote']['p50_ms'])} / {_ms(t['vote']['p99_ms'])}", "", ""],
        ["  of which vote → ticket at the helpdesk, p50/p99 ms",
         f"{_ms(t['decide']['p50_ms'])} / {_ms(t['decide']['p99_ms'])}", "", ""],
        ["agent CPU-ms per check result", f"{s['agent_cpu_ms_per_check']:.3f}", "report", ""],
        ["PostgreSQL CPU-s per 1,000 check results",
         f"{s['postgres_cpu_s_per_1000']:.3f} ({s['postgres_cpu_share']:.1%} of a core)",
         "report", ""],
    ]
    kinds = ", ".join(f"{k} {n:g}" for k, n in s["per_s_by_kind"].items())
    top = [f"  {q['per_s']:>7.2f}/s  {q['query']}" for q in s["top_statements"]]
    return "\n".join([
        f"Sites: {c['sites']} sites of {c['agents'] // c['sites']} agents, quorum {c['quorum']}, "
        f"{c['checks']} checks at a {c['interval_s']:g} s interval in every site, PostgreSQL "
        f"{c['postgres']} with fsync {c['fsync']}; steady window {s['window_s']:.0f} s, "
        f"{s['results']} results, {s['statements_per_s']:.1f} statements/s ({kinds}):",
        _table(["figure", "measured", "target", ""], rows),
        f"Time to ticket: {t['measured']}.",
        "Statements of the steady window, most frequent first:", *top])


def _plain(value: Any) -> Any:
    """NaN (a figure that could not be had) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def write(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(results), indent=2, default=str) + "\n")
