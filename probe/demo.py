"""`probe demo`: the daemon, offline, against a target of its own that fails for a while and
recovers, with the local ticket backend, so that a newcomer sees within a minute what probe
does: a ticket opens, receives its notes, and closes by itself."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from aiohttp import web

from probe.config import load
from probe.daemon import Daemon
from probe.helpdesks.local import LocalTickets

UP_FIRST, DOWN_FOR = 6.0, 25.0


async def _target(started: float) -> tuple[web.AppRunner, int]:
    async def health(request: web.Request) -> web.Response:
        elapsed = time.monotonic() - started
        if UP_FIRST <= elapsed < UP_FIRST + DOWN_FOR:
            return web.Response(status=503, text="database connection pool exhausted")
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


def _config(directory: Path, port: int, listen: str) -> Path:
    path = directory / "demo.yaml"
    path.write_text(f"""
agent: {{name: demo, state_dir: {directory}/state, listen: "{listen}"}}
defaults:
  interval: 2s
  retry_interval: 1s
  timeout: 1s
  failure_threshold: 3
  success_threshold: 2
  ticket: {{update_interval: 10s}}
ticketing:
  routes:
    local: {{backend: local}}
checks:
  - name: shop-health
    service: shop
    runbook: https://wiki.example.net/runbooks/shop
    http: {{url: "http://127.0.0.1:{port}/health", body_contains: ok}}
  - name: shop-port
    service: shop
    tcp: {{host: 127.0.0.1, port: {port}}}
""")
    return path


async def demo(listen: str = "127.0.0.1:9469") -> int:
    started = time.monotonic()
    runner, port = await _target(started)
    with tempfile.TemporaryDirectory(prefix="probe-demo-") as tmp:
        directory = Path(tmp)
        config_path = _config(directory, port, listen)
        daemon = Daemon(config_path, load(config_path))
        print(f"probe demo: a shop whose health endpoint fails from {UP_FIRST:.0f}s to "
              f"{UP_FIRST + DOWN_FOR:.0f}s; metrics on http://{listen}/metrics\n")
        task = asyncio.create_task(daemon.serve())
        tickets = LocalTickets(daemon.database)
        shown: set[tuple[str, float]] = set()
        try:
            while time.monotonic() - started < 90:
                await asyncio.sleep(0.5)
                for line in _news(tickets, shown):
                    print(line, flush=True)
                if any(ticket.status == "resolved" for ticket in tickets.all()):
                    break
        finally:
            daemon.stopping.set()
            await task
            tickets.close()
            await runner.cleanup()
        print("\nThe ticket, as `probe tickets show 1` prints it:\n")
        tickets = LocalTickets(directory / "state" / "probe.sqlite3")
        print(tickets.show(1))
        tickets.close()
    return 0


def _news(tickets: LocalTickets, shown: set[tuple[str, float]]) -> list[str]:
    out = []
    for ticket in reversed(tickets.all()):  # oldest first
        if ("open", ticket.created_at) not in shown:
            shown.add(("open", ticket.created_at))
            out.append(f"{time.strftime('%H:%M:%S')}  ticket #{ticket.id} opened "
                       f"({ticket.priority}): {ticket.title}")
    for note in tickets.notes():
        if (note.kind, note.at) not in shown:
            shown.add((note.kind, note.at))
            first = note.text.splitlines()[0]
            label = {"resolve": "resolved", "note": "note"}.get(note.kind, note.kind)
            out.append(f"{time.strftime('%H:%M:%S')}  ticket #{note.ticket_id} {label}: "
                       f"{first}")
    return out
