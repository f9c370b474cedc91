"""A PagerDuty for the tests, on loopback: the Events API v2 (`/v2/enqueue`) and the REST API's
incident list and notes, as PagerDuty documents them — 202 with the dedup_key, 400 "invalid
event" with its errors, deduplication of triggers into an open alert, a new incident for a
trigger after the resolve, resolves of unknown keys dropped, `From` required for notes, the
list limited to the last 30 days unless date_range=all — and their traps: the Events API is
asynchronous (the incident may appear after the 202). Incidents are kept in memory."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.harness.fakes import Fault, Faults
from tests.harness.httpserver import serve_app

ROUTING_KEY = "0123456789abcdef0123456789abcdef"  # 32 characters, as PagerDuty's are
API_TOKEN = "u+pd-test-token"
USER_EMAIL = "oncall@example.com"
SEVERITIES = ("critical", "error", "warning", "info")


@dataclass
class Incident:
    id: str
    number: int
    incident_key: str
    title: str
    created_at: dt.datetime
    status: str = "triggered"
    triggers: int = 1
    notes: list[tuple[str, str]] = field(default_factory=list)  # (From, content)

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "incident",
            "incident_number": self.number,
            "title": self.title,
            "status": self.status,
            "incident_key": self.incident_key,
            "urgency": "high",
            "created_at": self.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "html_url": f"https://acme.pagerduty.com/incidents/{self.id}",
        }


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class FakePagerDuty:
    port: int = 0
    incidents: list[Incident] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # every accepted event
    requests: list[Received] = field(default_factory=list)
    lag: float = 0.0  # seconds between the 202 and the incident, as in PagerDuty
    stall_events: int = 0  # this many events are processed, then answered only on release
    failures: Faults = field(default_factory=Faults)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, path: str, status: int, headers: dict[str, str] | None = None,
             times: int = 1) -> None:
        self.failures.add(Fault(None, re.escape(path), status,
                                {"status": "error", "message": "try again later"},
                                headers or {}, times))

    def with_key(self, key: str) -> list[Incident]:
        return [i for i in self.incidents if i.incident_key == key]

    def old_incident(self, key: str, days: int) -> Incident:
        """An incident triggered `days` ago, resolved since."""
        incident = self._create(key, "an old outage")
        incident.created_at -= dt.timedelta(days=days)
        incident.status = "resolved"
        return incident

    # --- what people do in PagerDuty --------------------------------------------------------

    def acknowledge(self, incident: Incident) -> None:
        incident.status = "acknowledged"

    def resolve_by_hand(self, incident: Incident) -> None:
        incident.status = "resolved"

    # --- the APIs ------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = ValueError
        self.requests.append(Received(request.method, request.path, dict(request.query),
                                      dict(request.headers), body))
        failure = self.failures.take(request)
        if failure is not None:
            return failure.response()
        if request.path == "/v2/enqueue" and request.method == "POST":
            return await self._enqueue(body)
        if not request.path.startswith("/incidents"):
            return _rest_error(404, "Not Found", 2100)
        if request.headers.get("Authorization") != f"Token token={API_TOKEN}":
            return _rest_error(401, "Unauthorized", 2006)
        if request.path == "/incidents" and request.method == "GET":
            return self._list(request)
        parts = request.path.split("/")
        if len(parts) == 4 and parts[3] == "notes" and request.method == "POST":
            return self._note(parts[2], request.headers.get("From"), body)
        return _rest_error(404, "Not Found", 2100)

    async def _enqueue(self, event: Any) -> web.Response:
        if not isinstance(event, dict):
            return _invalid("Unrecognized object", "Event object format is unrecognized",
                            ["JSON parse error"])
        errors = []
        if len(str(event.get("routing_key", ""))) != 32:
            errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
        action = event.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            errors.append("'event_action' is invalid (must be one of trigger, acknowledge,"
                          " resolve)")
        key = event.get("dedup_key")
        if key is not None and len(str(key)) > 255:
            errors.append("Length of 'dedup_key' is too long (maximum is 255 characters)")
        if action != "trigger" and not key:
            errors.append("'dedup_key' is missing or blank")
        payload = event.get("payload")
        if action == "trigger":
            if not isinstance(payload, dict):
                errors.append("'payload' is missing or blank")
            else:
                for name in ("summary", "source", "severity"):
                    if not payload.get(name):
                        errors.append(f"'payload.{name}' is missing or blank")
                if len(str(payload.get("summary", ""))) > 1024:
                    errors.append("Length of 'payload.summary' is too long (maximum is 1024)")
                if payload.get("severity") and payload["severity"] not in SEVERITIES:
                    errors.append("'payload.severity' is invalid (must be one of critical,"
                                  " error, warning, info)")
        if errors:
            return _invalid("invalid event", "Event object is invalid", errors)
        key = str(key or f"generated-{next(self._numbers)}")
        self.events.append(event)
        if self.lag:
            task = asyncio.create_task(self._process_later(event, key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._process(event, key)
        if self.stall_events:
            self.stall_events -= 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.released.wait(), 30)
        return web.json_response({"status": "success", "message": "Event processed",
                                  "dedup_key": key}, status=202)

    async def _process_later(self, event: dict[str, Any], key: str) -> None:
        await asyncio.sleep(self.lag)
        self._process(event, key)

    def _process(self, event: dict[str, Any], key: str) -> None:
        open_incidents = [i for i in self.with_key(key) if i.status != "resolved"]
        if event["event_action"] == "trigger":
            if open_incidents:
                open_incidents[-1].triggers += 1  # deduplicated into the open alert
            else:
                self._create(key, event["payload"]["summary"])
        elif event["event_action"] == "resolve":
            for incident in open_incidents:
                incident.status = "resolved"
        elif open_incidents:  # acknowledge
            open_incidents[-1].status = "acknowledged"

    def _create(self, key: str, title: str) -> Incident:
        number = next(self._numbers)
        incident = Incident(f"Q{number:06d}ABC", number, key, title, dt.datetime.now(dt.UTC))
        self.incidents.append(incident)
        return incident

    def _list(self, request: web.Request) -> web.Response:
        found = self.incidents
        if "incident_key" in request.query:
            found = self.with_key(request.query["incident_key"])
        if request.query.get("date_range") != "all":
            since = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)  # PagerDuty's default range
            found = [i for i in found if i.created_at >= since]
        if request.query.get("sort_by") == "created_at:desc":
            found = sorted(found, key=lambda i: i.created_at, reverse=True)
        return web.json_response({"incidents": [i.json() for i in found[:25]], "limit": 25,
                                  "offset": 0, "more": len(found) > 25, "total": None})

    def _note(self, incident_id: str, sender: str | None, body: Any) -> web.Response:
        incident = next((i for i in self.incidents if i.id == incident_id), None)
        if incident is None:
            return _rest_error(404, "Not Found", 2100)
        if sender != USER_EMAIL:
            return _rest_error(400, "Invalid Input Provided", 2001,
                               ["Requester User Not Found"])
        note = body.get("note") if isinstance(body, dict) else None
        if not isinstance(note, dict) or not note.get("content"):
            return _rest_error(400, "Invalid Input Provided", 2001, ["Note content is missing"])
        incident.notes.append((sender, str(note["content"])))
        return web.json_response({"note": {
            "id": f"N{len(incident.notes):06d}", "content": note["content"],
            "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "user": {"id": "PUSER01", "type": "user_reference", "summary": "On Call"},
        }}, status=201)


def _invalid(status: str, message: str, errors: list[str]) -> web.Response:
    return web.json_response({"status": status, "message": message, "errors": errors},
                             status=400)


def _rest_error(status: int, message: str, code: int,
                errors: list[str] | None = None) -> web.Response:
    error: dict[str, Any] = {"message": message, "code": code}
    if errors:
        error["errors"] = errors
    return web.json_response({"error": error}, status=status)


@contextlib.asynccontextmanager
async def serve() -> AsyncIterator[FakePagerDuty]:
    pagerduty = FakePagerDuty()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", pagerduty.handle)
    async with serve_app(app) as port:
        pagerduty.port = port
        try:
            yield pagerduty
        finally:
            pagerduty.released.set()
            for task in list(pagerduty._tasks):
                task.cancel()
