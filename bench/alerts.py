"""Alertmanager's webhook (probe.alerts) under a storm, on a real daemon with the local
helpdesk: `groups` alert groups start firing at once, `concurrency` notifications in flight
(Alertmanager sends each group's on its own), then the same notifications again (a
repeat_interval, or a second replica: nothing to decide), then each group resolved.

For each wave: notifications a second and the answer's latency (each answer waits for its
notification to be written to the state), then how long until every ticket action was
delivered, and the daemon's memory at the end.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import daemon
from bench.proc import Processes
from bench.scenarios import percentile

TOKEN = "bench-alertmanager-token-0123456789"


def notification(group: int, status: str) -> dict[str, Any]:
    labels = {"alertname": f"Bench{group}", "severity": "critical", "instance": f"h{group}"}
    return {"version": "4", "receiver": "ops", "status": status,
            "groupKey": f'{{}}:{{alertname="Bench{group}"}}', "groupLabels": {
                "alertname": f"Bench{group}"}, "commonLabels": labels,
            "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093",
            "truncatedAlerts": 0,
            "alerts": [{"status": status, "labels": labels,
                        "annotations": {"summary": f"bench group {group}"},
                        "startsAt": "2027-01-15T08:00:00Z",
                        "endsAt": "0001-01-01T00:00:00Z" if status == "firing"
                        else "2027-01-15T09:00:00Z",
                        "generatorURL": "http://127.0.0.1:9090/graph",
                        "fingerprint": f"{group:016x}"}]}


async def _wave(url: str, groups: int, status: str, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    limit = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def one(session: aiohttp.ClientSession, group: int) -> None:
        async with limit:
            sent = time.perf_counter()
            async with session.post(url, json=notification(group, status),
                                    headers=headers) as answer:
                await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"HTTP {answer.status}: {await answer.text()}")
            latencies.append(time.perf_counter() - sent)

    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, g) for g in range(groups)))
    took = time.perf_counter() - started
    return {"per_second": groups / took, "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000, "seconds": took}


def _delivered(probe: daemon.Daemon, groups: int, action: str, timeout: float) -> float:
    """Seconds until every `action` of the groups was delivered to the local helpdesk."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        done = probe.query(f"SELECT COUNT(*) FROM outbox WHERE action = '{action}'"
                           " AND status = 'delivered'")[0][0]
        if done >= groups:
            return time.monotonic() - started
        time.sleep(0.1)
    raise RuntimeError(f"{action}: not every ticket action delivered in {timeout:.0f}s")


def run(processes: Processes, directory: Path, say: Any, *, groups: int,
        concurrency: int = 20) -> dict[str, Any]:
    token = directory / "token"
    directory.mkdir(parents=True, exist_ok=True)
    token.write_text(TOKEN)
    probe = daemon.start(
        processes, directory, [], defaults={},
        ticketing={"routes": {"desk": {"backend": "local"}}},
        extra={"alertmanager": {"receivers": {"ops": {"route": "desk",
                                                      "token_file": str(token)}}}})
    url = probe.url + "/api/alertmanager"
    out: dict[str, Any] = {"groups": groups, "concurrency": concurrency}
    for wave, status, action in (("open", "firing", "open"), ("repeat", "firing", None),
                                 ("resolve", "resolved", "resolve")):
        figures = asyncio.run(_wave(url, groups, status, concurrency))
        if action is not None:
            figures["delivered_after_s"] = _delivered(probe, groups, action, timeout=600)
        say(f"  {wave}: {figures['per_second']:.0f} notifications/s, answered in "
            f"{figures['p50_ms']:.1f}/{figures['p99_ms']:.1f} ms (p50/p99)"
            + (f", every ticket action delivered {figures['delivered_after_s']:.1f}s later"
               if action else ""))
        out[wave] = figures
    out["rss_mb"] = probe.process.rss_bytes() / 2**20
    tickets = probe.query("SELECT COUNT(*) FROM local_tickets")[0][0]
    if tickets != groups:
        raise RuntimeError(f"{tickets} tickets for {groups} groups")
    out["tickets"] = tickets
    say(f"  {tickets} tickets for {groups} groups; daemon RSS {out['rss_mb']:.0f} MB")
    return out
