"""The HTTP endpoint: /metrics for Prometheus, /-/healthy, /-/ready and POST /-/reload as
Prometheus and blackbox_exporter have them, /api/status, which `probe status` prints, and
/api/maintenance (GET the windows, POST one from now, DELETE /api/maintenance/ID to end it
early), which `probe maintenance` drives. /-/healthy and /-/ready answer 503 naming the loops in
trouble (probe.supervisor says which count for which).

TLS, basic auth and response headers come from `agent.web_config` (probe.webconfig's Guard);
what the endpoint answers has every known secret redacted."""

from __future__ import annotations

import time
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from checks.base import Result
from probe import __version__
from probe.config import Check, Config, Maintenance
from probe.engine import Engine, window_active
from probe.metrics import Metrics, exposition
from probe.secrets import known
from probe.store import Store, StoreError
from probe.supervisor import Supervisor
from probe.webconfig import Guard


class Daemon(Protocol):
    """What the endpoint reads of the running daemon (probe.daemon.Daemon), and may ask of it:
    the daemon imports this module, never the other way round."""

    config: Config
    checks: dict[str, Check]
    results: dict[str, Result]
    adhoc: dict[int, Maintenance]
    engine: Engine
    store: Store
    metrics: Metrics
    loops: Supervisor
    ready: bool
    state_writable: bool

    async def reload(self) -> list[str]: ...

    def add_window(self, request: dict[str, Any]) -> tuple[int, Maintenance]: ...

    def end_window(self, number: int) -> bool: ...


DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")


async def serve_http(daemon: Daemon, listen: str, guard: Guard | None = None) -> web.AppRunner:
    guard = guard or Guard(None)
    app = web.Application(middlewares=[guard.middleware])
    app.on_response_prepare.append(guard.add_headers)
    app[DAEMON] = daemon
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/maintenance", maintenance)
    app.router.add_post("/api/maintenance", add_maintenance)
    app.router.add_delete("/api/maintenance/{id:[0-9]+}", end_maintenance)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host.strip("[]"), int(port), ssl_context=guard.ssl_context).start()
    return runner


async def metrics(request: web.Request) -> web.StreamResponse:
    chunks = await exposition(request.app[DAEMON].metrics)
    response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE_LATEST})
    response.content_length = sum(len(chunk) for chunk in chunks)
    await response.prepare(request)
    for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


async def healthy(request: web.Request) -> web.Response:
    """503 exactly when systemd's watchdog is not pinged: a loop gave up or makes no progress
    (probe.supervisor), which a restart is for."""
    problems = request.app[DAEMON].loops.unhealthy()
    if problems:
        return web.Response(status=503, text=_lines("Unhealthy", problems))
    return web.Response(text="Healthy\n")


async def ready(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    problems = daemon.loops.not_ready()  # first: a loop that gave up also stops the daemon
    if problems:
        return web.Response(status=503, text=_lines("Not ready", problems))
    if not daemon.ready:
        return web.Response(status=503, text="Not ready: starting or stopping\n")
    if not daemon.state_writable:
        return web.Response(status=503, text="Not ready: the state database cannot be written\n")
    return web.Response(text="Ready\n")


def _lines(verdict: str, problems: list[str]) -> str:
    # An exception's message, which the loop problems carry, may echo a secret.
    return known.redact("".join(f"{verdict}: {problem}\n" for problem in problems))


async def reload(request: web.Request) -> web.Response:
    errors = await request.app[DAEMON].reload()
    if errors:
        text = "\n".join(["reload refused:", *errors]) + "\n"
        return web.Response(status=500, text=known.redact(text))
    return web.Response(text="Reloaded\n")


async def status(request: web.Request) -> web.Response:
    # Failed ticket actions carry the helpdesk's words, which may echo a credential.
    return web.json_response(known.redact_data(snapshot(request.app[DAEMON])))


async def maintenance(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    now = time.time()
    windows: list[tuple[int | None, Maintenance]] = [(None, w) for w in daemon.config.maintenance]
    windows += daemon.adhoc.items()
    return web.json_response({"windows": [
        {"id": number, "set_by": "configuration" if number is None else "api",
         "active": window_active(window, now), **window.model_dump(mode="json")}
        for number, window in windows
    ]})


async def add_maintenance(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        # What a browser sends cross-site without asking first is never JSON: a page the
        # operator visits cannot silence probe.
        return web.json_response({"error": "send the window as application/json"}, status=415)
    try:
        number, window = request.app[DAEMON].add_window(await request.json())
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        return web.json_response({"error": str(err)}, status=400)
    except StoreError as err:
        return web.json_response({"error": str(err)}, status=503)
    return web.json_response({"id": number, **window.model_dump(mode="json")}, status=201)


async def end_maintenance(request: web.Request) -> web.Response:
    number = int(request.match_info["id"])
    try:
        ended = request.app[DAEMON].end_window(number)
    except StoreError as err:
        return web.json_response({"error": str(err)}, status=503)
    if not ended:
        return web.json_response({"error": f"no maintenance window {number} set at run time"},
                                 status=404)
    return web.json_response({"ended": number})


def snapshot(daemon: Daemon) -> dict[str, Any]:
    engine = daemon.engine
    checks = []
    for name, check in daemon.checks.items():
        st = engine.checks.get(name)
        result = daemon.results.get(name)
        checks.append({
            "name": name,
            "kind": check.kind,
            "target": check.spec.target,
            "service": check.service,
            "state": result.state if result else None,
            "reason": result.reason if result else "",
            "duration_seconds": result.duration if result else None,
            "last_run_at": result.started_at if result else None,
            "consecutive_failures": st.failures if st else 0,
            "consecutive_successes": st.successes if st else 0,
            "flapping": st.flapping if st else False,
            "unreachable": st.unreachable if st else False,
            "in_maintenance": st.in_maintenance if st else False,
        })
    incidents = []
    for group, gs in engine.groups.items():
        if gs.incident is not None:
            i = gs.incident
            incidents.append({
                "group": group, "key": i.key, "opened_at": i.opened_at,
                "first_failure_at": i.first_failure_at, "why": i.why, "reason": i.reason,
                "checks": i.members, "unreachable": i.unreachable,
            })
    failed = daemon.store.query(
        "SELECT id, incident_key, action, route, attempts, last_error FROM outbox"
        " WHERE status = 'failed' ORDER BY id DESC LIMIT 20")
    pending = daemon.store.query(
        "SELECT COUNT(*), MIN(created_at), MAX(attempts) FROM outbox WHERE status = 'pending'")
    count, oldest, attempts = pending[0]
    return {
        "agent": daemon.config.agent.name,
        "ticket_actions_pending": {"count": count, "oldest_at": oldest,
                                   "most_attempts": attempts or 0},
        "ticket_actions_failed": [
            {"id": i, "incident": key, "action": action, "route": route, "attempts": n,
             "error": error}
            for i, key, action, route, n, error in failed
        ],
        "version": __version__,
        "ready": daemon.ready,
        "state_writable": daemon.state_writable,
        "checks": checks,
        "incidents": incidents,
    }
