"""The webhook backend: a signed JSON POST for each ticket action.

Each `open`, `note`, `resolve` and `reopen` is one POST of a JSON object to the route's `url`
(payload version 1; docs/webhook.md is the receiver's guide):

    {
      "version": 1,
      "id": "probe-eu-1/shop/3:open:5f0c2a9e41b7d3c8",  # same on a retry, differs per action
      "action": "open",                      # open | note | resolve | reopen
      "key": "probe-eu-1/shop/3",            # the incident: every action of it carries the same
      "sent_at": "2026-11-23T10:15:02Z",     # UTC, when this attempt was sent
      "text": "...",                         # plain text: the ticket body on open, else the note
      "title": "...",                        # on open; null on the other actions
      "body_markdown": "...",                # on open; null on the other actions
      "priority": "urgent",                  # urgent | high | normal | low on open; else null
      "agent": "probe-eu-1",                 # on open; else null
      "group": "shop",                       # on open; else null
      "follows": null                        # on open: key of the ticket this one follows
    }

Every key is always present. Headers: `Content-Type: application/json`, `X-Probe-Event`
(the action), `X-Probe-Key`, `Idempotency-Key` (the `id`), and, when the route has a secret,
`X-Probe-Signature-256: sha256=<hex HMAC-SHA256(secret, raw body)>` as GitHub signs its hooks.
The route's own `headers` are sent too, read again for each request: a value may be
`env:NAME`, or come from the file `headers_file` names, and a credential (Authorization, a
key or token) must. A webhook has no ticket ids: the reference is the key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, model_validator

from checks.values import ENV_REF, SENSITIVE_NAME, HeaderSettings, HeaderUnavailable
from probe.helpdesks import base
from probe.helpdesks.base import (
    RouteBase,
    Ticket,
    TicketError,
    TicketState,
    endpoint_url,
    reveal,
)
from probe.helpdesks.http import Http
from probe.secrets import EnvRef, SecretError, known

VERSION = 1
Action = Literal["open", "note", "resolve", "reopen"]


def _url_or_ref(value: str) -> str:
    return value if ENV_REF.fullmatch(value) else endpoint_url(value)


class Route(RouteBase, HeaderSettings):
    backend: Literal["webhook"]
    # A URL that holds a secret (Slack's, Teams', a token in the path) belongs in url_file or
    # the environment: read at each request, never logged.
    url: Annotated[str, AfterValidator(_url_or_ref)] | None = None
    url_file: Path | None = None
    secret: EnvRef | None = None  # HMAC-SHA256 signature of each body
    secret_file: Path | None = None

    secrets: ClassVar[dict[str, bool]] = {"secret": False}

    @model_validator(mode="after")
    def _one_url(self) -> Route:
        if self.url is not None and self.url_file is not None:
            raise ValueError("set url or url_file, not both")
        if self.url is None and self.url_file is None:
            raise ValueError("needs url (or url_file, or url: env:NAME)")
        return self

    def endpoint(self) -> tuple[str, bool]:
        """The URL to post to, and whether it is a secret. Raises SecretError."""
        if self.url is not None and not ENV_REF.fullmatch(self.url):
            return self.url, False
        value = self.reveal("url")  # from the environment or url_file, like any secret
        try:
            return endpoint_url(value), True
        except ValueError:
            where = self.url if self.url is not None else f"url_file {self.url_file}"
            raise SecretError(f"{where} does not hold an http:// or https:// URL") from None


class Backend(base.Backend[Route]):
    tracks_status = False

    def __init__(self, name: str, route: Route, *, database: Path | None = None) -> None:
        super().__init__(name, route, database=database)
        self._http = Http(route, "")  # for the origin of the first URL read

    async def find(self, key: str) -> str | None:
        return None

    async def open(self, ticket: Ticket) -> str:
        await self._send(
            "open",
            ticket.key,
            ticket.body,
            title=ticket.title,
            body_markdown=ticket.body_markdown,
            priority=ticket.priority,
            agent=ticket.agent,
            group=ticket.group,
            follows=ticket.follows,
        )
        return ticket.key

    async def note(self, ref: str, text: str) -> None:
        await self._send("note", ref, text)

    async def resolve(self, ref: str, text: str) -> None:
        await self._send("resolve", ref, text)

    async def reopen(self, ref: str, text: str) -> None:
        await self._send("reopen", ref, text)

    async def status(self, ref: str) -> TicketState:
        return "open"

    async def close(self) -> None:
        await self._http.close()

    async def _send(self, action: Action, key: str, text: str, **ticket: str | None) -> None:
        fields: dict[str, Any] = {
            "text": text,
            "title": None,
            "body_markdown": None,
            "priority": None,
            "agent": None,
            "group": None,
            "follows": None,
            **ticket,
        }
        event_id = idempotency_id(key, action, fields)
        payload = {
            "version": VERSION,
            "id": event_id,
            "action": action,
            "key": key,
            "sent_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **fields,
        }
        body = json.dumps(payload, ensure_ascii=False).encode()
        try:
            extra = self.route.header_values()
        except HeaderUnavailable as err:
            raise TicketError(f"webhook {err}", permanent=True) from None
        known.add(v for n, v in extra.items() if SENSITIVE_NAME.search(n))
        headers = {
            **extra,
            "Content-Type": "application/json",
            "X-Probe-Event": action,
            "X-Probe-Key": key,
            "Idempotency-Key": event_id,
        }
        if self.route.has_secret("secret"):
            headers["X-Probe-Signature-256"] = signature(reveal(self.route, "secret"), body)
        try:
            url, url_is_secret = self.route.endpoint()
        except SecretError as err:
            raise TicketError(f"webhook {err}", permanent=True) from None
        # Split so that error messages read "POST /hooks/probe: HTTP 503".
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        path = url[len(origin) :] or "/"
        if url_is_secret:  # then its path is one too: Slack's and Teams' URLs end in their token
            known.add([path])
        if self._http.base_url != origin:  # a URL file rewritten for another host
            await self._http.close()
            self._http = Http(self.route, origin)
        await self._http.request("POST", path, data=body, headers=headers)


def idempotency_id(key: str, action: str, fields: dict[str, Any]) -> str:
    """The same for a retry of one action (sent_at left out), different for two notes."""
    canonical = json.dumps([key, action, fields], sort_keys=True, ensure_ascii=False)
    return f"{key}:{action}:{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"


def signature(secret: str, body: bytes) -> str:
    """The `X-Probe-Signature-256` value of `body`: GitHub's `sha256=<hex>` scheme."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


HELPDESK = base.Helpdesk(route=Route, backend=Backend)
