"""What the fault-injection and hostile-input tests tried and what they found, collected for
docs/reliability.md.

Tests call `record(...)`; when PROBE_RELIABILITY_OUT names a file, each call appends a JSON
line to it. `python -m tests.reliability RESULTS.jsonl JUNIT.xml docs/reliability.md` turns
the lines, and pytest's JUnit report of the hostile-input tests, into the report;
`scripts/reliability` runs the suite and does both.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any


def record(
    area: str,
    fault: str,
    *,
    tried: int = 1,
    expected: int | None = None,
    found: int | None = None,
    lost: int = 0,
    duplicated: int = 0,
    false: int = 0,
    crashes: int = 0,
    outcome: str = "",
) -> None:
    """One fault tried `tried` times: tickets expected and found in the helpdesk's own records,
    and how many were lost, duplicated or false; crashes of the daemon or the check."""
    out = os.environ.get("PROBE_RELIABILITY_OUT")
    if not out:
        return
    line = {"area": area, "fault": fault, "tried": tried, "expected": expected,
            "found": found, "lost": lost, "duplicated": duplicated, "false": false,
            "crashes": crashes, "outcome": outcome}
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


HOSTILE = {
    "test_config_fuzz": "configuration files (hypothesis fuzzing, alias bombs, junk)",
    "test_hostile_targets": "targets that misbehave (DNS, HTTP, TLS, TCP)",
    "test_hostile_helpdesks": "helpdesk answers that break their API (every backend)",
    "test_security": "secrets planted and echoed back; the authenticated endpoint",
}


def _hostile(junit: Path) -> list[str]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        if module not in HOSTILE:
            continue
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "known" if "xfail" in (child.get("type") or "") else "skipped"
        counts[module][outcome] += 1
    out = ["", "## Hostile input", "",
           "| input | cases | handled | known crash | failed |",
           "| --- | ---: | ---: | ---: | ---: |"]
    for module, title in HOSTILE.items():
        c = counts.get(module, Counter())
        out.append(f"| {title} | {sum(c.values())} | {c['passed']} | {c['known']} | "
                   f"{c['failed']} |")
    out += ["", "A crash would be an exception other than TicketError out of a backend (a "
            "parser meeting JSON of the wrong type). Backends read answers through "
            "`probe.helpdesks.http.Fields`, whose getters turn a value of the wrong type into "
            "a transient TicketError that names the request and the place in the answer; had "
            "a crash escaped, it would be a bug in probe, which the outbox logs with its "
            "traceback and fails after a few attempts, where `probe tickets failed` lists it. "
            "The tests list any that remain (tests/test_hostile_helpdesks.py, KNOWN_CRASHES): "
            "none do, and a new one fails the test."]
    return out


def render(results: Path, junit: Path | None = None) -> str:
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    by_area: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_area[row["area"]].append(row)
    totals = {k: sum(r[k] for r in rows) for k in ("tried", "lost", "duplicated", "false",
                                                   "crashes")}
    out = [
        "# Reliability report",
        "",
        "Produced by `scripts/reliability` from the fault-injection and hostile-input tests' own",
        "results; tickets are counted in the helpdesk's records (Request Tracker's REST API, the",
        "local backend's tables, the test servers' records), not in probe's view of them.",
        "",
        f"Run on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores.",
        "",
        f"**{len(rows)} faults and hostile inputs, tried {totals['tried']} times: "
        f"{totals['lost']} tickets lost, {totals['duplicated']} duplicated, "
        f"{totals['false']} false, {totals['crashes']} crashes.**",
    ]
    for area, items in by_area.items():
        out += ["", f"## {area}", "",
                "| fault | tried | tickets expected | found | lost | duplicated | false "
                "| crashes | outcome |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in items:
            def show(v: Any) -> str:
                return "-" if v is None else str(v)
            out.append(f"| {r['fault']} | {r['tried']} | {show(r['expected'])} | "
                       f"{show(r['found'])} | {r['lost']} | {r['duplicated']} | {r['false']} | "
                       f"{r['crashes']} | {r['outcome']} |")
    if junit is not None and junit.exists():
        out += _hostile(junit)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    source, junit, target = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    target.write_text(render(source, junit), encoding="utf-8")
    print(f"wrote {target}")
