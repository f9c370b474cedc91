"""The pagerduty backend: PagerDuty incidents through the Events API v2 (`url`), and, when the
route has an `api_token`, the REST API (`api_url`) for notes and for the incident's status.

PagerDuty facts it relies on:
- POST {url}/v2/enqueue {routing_key, event_action, dedup_key, payload: {summary (at most 1024
  characters), source, severity, component, group, custom_details}} answers 202 {"status":
  "success", "dedup_key": ...}. 400 is an invalid event (permanent; its "errors" say why),
  429 and 5xx are to be retried. The API is asynchronous: the incident appears a moment after
  the 202.
- The ticket's reference is its dedup_key: the incident key itself (at most 255 characters;
  a longer key is replaced by its SHA-256).
- Exactly once is PagerDuty's own deduplication: a trigger whose dedup_key names an open alert
  is added to that alert, not opened as a new incident. The Events API cannot look anything up,
  so `find` always returns None, and an open whose outcome was unknown is simply sent again.
  Once the alert is resolved, a trigger with the same dedup_key opens a new incident (that is
  how `reopen` works); a resolve for a resolved or unknown dedup_key is dropped, so sending one
  twice is harmless. Events only match when sent with the routing key of the first trigger.
- Notes and status need the REST API: `Authorization: Token token=<api_token>`, `From:
  <from_email>` (a PagerDuty user: required for writes), `Accept:
  application/vnd.pagerduty+json;version=2`. GET /incidents?incident_key=<dedup_key>&
  date_range=all finds the incidents (without date_range only the last 30 days are searched);
  POST /incidents/{id}/notes {note: {content}} adds a note.
- Without an api_token, notes are not sent (logged at debug level) and PagerDuty cannot be
  asked about the incident: the backend then does not track status (`tracks_status` is
  False), so neither escalation nor human-close detection apply to the route, like email.

status() (with an api_token), of the newest incident with the dedup_key: triggered is "open",
acknowledged is "acknowledged", resolved is "closed". No incident is an error, not "gone":
the Events API may not have made it yet.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import model_validator

from probe.helpdesks import base
from probe.helpdesks.base import BaseUrl, PriorityMap, RouteBase, TicketError, TicketState, reveal
from probe.helpdesks.http import Authorization, Fields, Http, Response
from probe.log import fields
from probe.secrets import EnvRef

log = logging.getLogger("probe.helpdesks")

Severity = Literal["critical", "error", "warning", "info"]

MAX_DEDUP_KEY = 255
MAX_SUMMARY = 1024
STATES: dict[str, TicketState] = {
    "triggered": "open",
    "acknowledged": "acknowledged",
    "resolved": "closed",
}


class Route(RouteBase):
    backend: Literal["pagerduty"]
    url: BaseUrl = "https://events.pagerduty.com"
    routing_key: EnvRef | None = None
    routing_key_file: Path | None = None
    severities: PriorityMap[Severity] = {
        "urgent": "critical",
        "high": "error",
        "normal": "warning",
        "low": "info",
    }
    # Notes need the REST API, with its own token and the email of a PagerDuty user.
    api_url: BaseUrl = "https://api.pagerduty.com"
    api_token: EnvRef | None = None
    api_token_file: Path | None = None
    from_email: str | None = None

    secrets: ClassVar[dict[str, bool]] = {"routing_key": True, "api_token": False}

    @model_validator(mode="after")
    def _notes(self) -> Route:
        if self.has_secret("api_token") and not self.from_email:
            raise ValueError("api_token is set: needs from_email, which PagerDuty requires")
        return self


class Backend(base.Backend[Route]):
    def __init__(self, name: str, route: Route, *, database: Path | None = None) -> None:
        super().__init__(name, route, database=database)
        # The dispatcher reads tracks_status per backend: only the REST API can tell it.
        self.tracks_status = route.has_secret("api_token")  # type: ignore[misc]
        self._events = Http(route, route.url, words=invalid_event)
        api_token = Authorization("api_token", "Token token={}".format)
        self._rest = Http(route, route.api_url, authorization=api_token, headers={
            "Accept": "application/vnd.pagerduty+json;version=2",
            "From": route.from_email or "",
        })

    async def find(self, key: str) -> str | None:
        return None  # the Events API cannot look up; a repeated trigger is deduplicated

    async def open(self, ticket: base.Ticket) -> str:
        details: dict[str, Any] = {
            "body": ticket.body,
            "incident_key": ticket.key,
            "priority": ticket.priority,
        }
        if ticket.follows:
            details["follows"] = ticket.follows
        return await self._trigger(dedup_key(ticket.key), ticket.title, ticket.agent,
                                   self.route.severities[ticket.priority], ticket.group, details)

    async def note(self, ref: str, text: str) -> None:
        if not self.tracks_status:
            log.debug("pagerduty note not sent: the route has no api_token %s",
                      fields(route=self.name, dedup_key=ref))
            return
        incident = await self._incident(ref)
        if incident is None:
            raise TicketError(f"PagerDuty has no incident with dedup_key {ref!r} (yet)")
        await self._add_note(incident, text)

    async def resolve(self, ref: str, text: str) -> None:
        # The resolve first: it stops the paging. The closing note follows when it can.
        await self._event({"event_action": "resolve", "dedup_key": ref})
        if not self.tracks_status:
            return
        incident = await self._incident(ref)
        if incident is None:
            return
        try:
            await self._add_note(incident, text)
        except TicketError as err:
            if not err.permanent:
                raise  # sent again with the resolve, which PagerDuty drops the second time
            log.warning("pagerduty closing note not added %s", fields(
                route=self.name, dedup_key=ref, error=err.message))

    async def reopen(self, ref: str, text: str) -> None:
        """A new trigger with the same dedup_key: PagerDuty opens a new incident for it. probe
        does not keep the first trigger, so the incident's title (when the REST API can be
        asked) or the text becomes the summary, and the severity is the route's for urgent."""
        incident = await self._incident(ref) if self.tracks_status else None
        title = (incident.text("title") if incident else None) or text
        source = ref.split("/", 1)[0] or "probe"  # keys begin with the agent's name
        await self._trigger(ref, title, source, self.route.severities["urgent"], None,
                            {"reopened": text, "incident_key": ref})

    async def status(self, ref: str) -> TicketState:
        if not self.tracks_status:
            return "open"
        incident = await self._incident(ref)
        if incident is None:
            raise TicketError(f"PagerDuty has no incident with dedup_key {ref!r} (yet)")
        status = incident.text("status")
        state = STATES.get(status or "")
        if state is None:
            raise TicketError(f"PagerDuty incident {incident.get('id')} has an unknown status "
                              f"{status!r}")
        return state

    async def close(self) -> None:
        await self._events.close()
        await self._rest.close()

    async def _trigger(
        self, key: str, summary: str, source: str, severity: str, group: str | None,
        details: dict[str, Any],
    ) -> str:
        payload: dict[str, Any] = {
            "summary": summary[:MAX_SUMMARY],
            "source": source,
            "severity": severity,
            "custom_details": details,
        }
        if group:
            payload["component"] = payload["group"] = group
        event = {"event_action": "trigger", "dedup_key": key, "client": "probe",
                 "payload": payload}
        return (await self._event(event)).fields().text("dedup_key") or key

    async def _event(self, event: dict[str, Any]) -> Response:
        # The Events API takes its credential in the body: the routing key.
        routing_key = reveal(self.route, "routing_key")
        return await self._events.request("POST", "/v2/enqueue",
                                          json_body={"routing_key": routing_key, **event})

    async def _incident(self, key: str) -> Fields | None:
        """The newest incident with the dedup_key, resolved or not."""
        params = {"incident_key": key, "date_range": "all", "sort_by": "created_at:desc"}
        response = await self._rest.request("GET", "/incidents", params=params)
        incidents = response.fields().objects("incidents")
        if not incidents:
            return None
        return max(incidents, key=lambda item: item.text("created_at") or "")

    async def _add_note(self, incident: Fields, text: str) -> None:
        incident_id = incident.text("id") or ""
        if not incident_id.isalnum():
            raise TicketError(f"PagerDuty answered an incident id {incident_id!r}")
        await self._rest.request("POST", f"/incidents/{incident_id}/notes",
                                 json_body={"note": {"content": text}})


def dedup_key(key: str) -> str:
    if len(key) <= MAX_DEDUP_KEY:
        return key
    return "probe:" + hashlib.sha256(key.encode()).hexdigest()


def invalid_event(error: dict[str, Any]) -> str:
    """PagerDuty's 400: the message ("Event object is invalid") and the errors that say why."""
    message, errors = error.get("message"), error.get("errors")
    said = message if isinstance(message, str) else ""
    if isinstance(errors, list) and errors:
        return f"{said} ({'; '.join(map(str, errors))})".lstrip()
    return said


HELPDESK = base.Helpdesk(route=Route, backend=Backend)
