"""The HTTP endpoint: /metrics for Prometheus, /-/healthy, /-/ready and POST /-/reload as
Prometheus and blackbox_exporter have them, /api/status, which `probe status` prints, and
/api/maintenance (GET the windows, POST one from now, DELETE /api/maintenance/ID to end it
early), which `probe maintenance` drives, and POST /api/alertmanager, Alertmanager's webhook
(probe.alerts), which answers 200 once the notification is written to the state. /-/healthy
and /-/ready answer 503 naming the loops in trouble (probe.supervisor says which count for
which).

TLS, basic auth and response headers come from `agent.web_config` (probe.webconfig's Guard);
what the endpoint answers has every known secret redacted."""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import time
from typing import Any, Protocol

from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from checks.values import parse_duration
from probe import alerts
from probe.config import Alertmanager, Maintenance, error_text
from probe.engine import window_active
from probe.log import fields
from probe.metrics import Metrics, exposition
from probe.pages import routes
from probe.secrets import SecretError, known
from probe.store import StoreError
from probe.supervisor import Supervisor
from probe.webconfig import Guard


class Status(routes.Site, Protocol):
    """What the endpoint asks of the running daemon (probe.daemon.Daemon): the daemon imports
    this module, never the other way round."""

    metrics: Metrics
    loops: Supervisor  # which loops are in trouble

    def not_ready(self) -> str | None:
        """Why the daemon is not ready (starting, stopping, state not writable), else None."""

    async def snapshot(self) -> dict[str, Any]:
        """The status document (probe.status)."""

    def maintenance_windows(self) -> list[tuple[int | None, Maintenance]]:
        """The windows: the configuration's (no number), then those set at run time."""

    async def add_window(self, window: Maintenance) -> int:
        """Set a window at run time. Raises ValueError, StoreError."""

    async def end_window(self, number: int) -> bool: ...

    async def reload(self) -> list[str]: ...

    async def alert_notification(self, note: alerts.Notification) -> None:
        """Decide on an Alertmanager notification and write it. Raises StoreError."""


STATUS: web.AppKey[Status] = web.AppKey("status")
GUARD: web.AppKey[Guard] = web.AppKey("guard")
ALERTMANAGER = "/api/alertmanager"
log = logging.getLogger("probe")


async def serve_http(daemon: Status, listen: str, guard: Guard | None = None) -> web.AppRunner:
    guard = guard or Guard(None)
    app = web.Application(middlewares=[guard.middleware])
    app.on_response_prepare.append(guard.add_headers)
    app[STATUS] = daemon
    app[GUARD] = guard
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/maintenance", maintenance)
    app.router.add_post("/api/maintenance", add_maintenance)
    app.router.add_delete("/api/maintenance/{id:[0-9]+}", end_maintenance)
    app.router.add_post(ALERTMANAGER, alertmanager)
    routes.add(app, daemon)
    # The receiver checks credentials itself: Alertmanager may send a bearer token instead of
    # web_config's basic auth.
    guard.public = lambda path: path == ALERTMANAGER or routes.public(daemon.config, path)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host.strip("[]"), int(port), ssl_context=guard.ssl_context).start()
    return runner


async def metrics(request: web.Request) -> web.StreamResponse:
    chunks = await exposition(request.app[STATUS].metrics)
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
    problems = request.app[STATUS].loops.unhealthy()
    if problems:
        return web.Response(status=503, text=_lines("Unhealthy", problems))
    return web.Response(text="Healthy\n")


async def ready(request: web.Request) -> web.Response:
    daemon = request.app[STATUS]
    problems = daemon.loops.not_ready()  # first: a loop that gave up also stops the daemon
    if problems:
        return web.Response(status=503, text=_lines("Not ready", problems))
    why = daemon.not_ready()
    if why is not None:
        return web.Response(status=503, text=f"Not ready: {why}\n")
    return web.Response(text="Ready\n")


def _lines(verdict: str, problems: list[str]) -> str:
    # An exception's message, which the loop problems carry, may echo a secret.
    return known.redact("".join(f"{verdict}: {problem}\n" for problem in problems))


async def reload(request: web.Request) -> web.Response:
    errors = await request.app[STATUS].reload()
    if errors:
        text = "\n".join(["reload refused:", *errors]) + "\n"
        return web.Response(status=500, text=known.redact(text))
    return web.Response(text="Reloaded\n")


async def status(request: web.Request) -> web.Response:
    # Failed ticket actions carry the helpdesk's words, which may echo a credential.
    return web.json_response(known.redact_data(await request.app[STATUS].snapshot()))


async def maintenance(request: web.Request) -> web.Response:
    now = time.time()
    windows = request.app[STATUS].maintenance_windows()
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
        window = window_request(await request.json())
        number = await request.app[STATUS].add_window(window)
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        return web.json_response({"error": str(err)}, status=400)
    except StoreError as err:
        return web.json_response({"error": str(err)}, status=503)
    return web.json_response({"id": number, **window.model_dump(mode="json")}, status=201)


async def end_maintenance(request: web.Request) -> web.Response:
    number = int(request.match_info["id"])
    try:
        ended = await request.app[STATUS].end_window(number)
    except StoreError as err:
        return web.json_response({"error": str(err)}, status=503)
    if not ended:
        return web.json_response({"error": f"no maintenance window {number} set at run time"},
                                 status=404)
    return web.json_response({"ended": number})


async def alertmanager(request: web.Request) -> web.Response:
    """Alertmanager's webhook. 200 once written; 4xx for what Alertmanager should not send
    again (it does not retry those); 503 while the state cannot be written (it retries)."""
    daemon, guard = request.app[STATUS], request.app[GUARD]
    section = daemon.config.alertmanager
    if section is None:
        return _refused(daemon, 404, "", "no alertmanager section in the configuration")
    allowed = await _allowed(section, guard, request.headers.get(hdrs.AUTHORIZATION))
    if not allowed:
        return _refused(daemon, 401, "", "send the receiver's bearer token "
                        "(http_config.authorization) or web_config's basic auth credentials",
                        headers={hdrs.WWW_AUTHENTICATE: "Bearer"})
    if request.content_type != "application/json":
        return _refused(daemon, 415, "", "send Alertmanager's webhook payload as "
                        "application/json")
    try:
        # Over aiohttp's client_max_size (1 MiB): 413, before anything is parsed.
        note = alerts.parse(await request.json())
    except (ValueError, UnicodeDecodeError) as err:  # Invalid and JSONDecodeError too
        return _refused(daemon, 400, "", str(err) or "not JSON")
    if note.receiver not in section.receivers:
        return _refused(daemon, 422, "", f"receiver {note.receiver!r}"[:200] + " is not in "
                        "alertmanager.receivers of probe's configuration")
    if note.receiver not in allowed:
        return _refused(daemon, 401, note.receiver, "these credentials are not this "
                        "receiver's", headers={hdrs.WWW_AUTHENTICATE: "Bearer"})
    try:
        await daemon.alert_notification(note)
    except StoreError as err:
        return _refused(daemon, 503, note.receiver, f"not written, send it again: {err}")
    return web.json_response({"status": "ok", "group": alerts.group_name(
        note.receiver, note.group_key)})


async def _allowed(section: Alertmanager, guard: Guard, header: str | None) -> set[str]:
    """The receivers these credentials may notify for: those whose token is the bearer sent;
    or with web_config's users, every receiver for a user's basic auth; without users, the
    receivers that have no token."""
    if header is not None and header[:7].lower() == "bearer ":
        sent = header[7:].strip().encode()
        found = set()
        for name, receiver in section.receivers.items():
            if not receiver.has_secret("token"):
                continue
            try:
                token = receiver.reveal("token").encode()
            except SecretError as err:
                log.error("alertmanager receiver's token not read %s",
                          fields(receiver=name, error=err))
                continue
            if token and hmac.compare_digest(sent, token):
                found.add(name)
        return found
    users = guard.config.users
    if users:
        return set(section.receivers) if await guard.authorized(users, header) else set()
    return {name for name, r in section.receivers.items() if not r.has_secret("token")}


def _refused(daemon: Status, code: int, receiver: str, message: str,
             headers: dict[str, str] | None = None) -> web.Response:
    status = {401: "unauthorized", 503: "unavailable"}.get(code, "invalid")
    daemon.metrics.alert_notifications.labels(receiver, status).inc()
    return web.json_response({"error": known.redact(message)}, status=code, headers=headers)


def window_request(request: Any) -> Maintenance:
    """A one-off window from now, as POST /api/maintenance takes it: `checks` and/or
    `services`, `reason`, and `duration` (or `end`). Raises ValueError in words."""
    if not isinstance(request, dict):
        raise ValueError("expected a JSON object")
    unknown = set(request) - {"checks", "services", "reason", "duration", "end"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r}")
    if ("duration" in request) == ("end" in request):
        raise ValueError("give duration (like 2h) or end, one of them")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    end: Any = request.get("end")
    if "duration" in request:
        try:
            end = (now + dt.timedelta(seconds=parse_duration(request["duration"]))).isoformat()
        except ValueError as err:
            raise ValueError(f"duration: {err}") from None
    data: dict[str, Any] = {k: request[k] for k in ("checks", "services", "reason")
                            if k in request}
    data.update(start=now.isoformat(), end=end)
    try:
        return Maintenance.model_validate(data)
    except ValidationError as err:
        raise ValueError(error_text(err)) from None
