"""The github backend: issues in one GitHub repository, through the REST API (`url`:
https://api.github.com, or https://HOST/api/v3 for GitHub Enterprise Server).

PUBLIC: GitHub has no internal notes. The issue, its evidence (addresses, status codes,
certificate details, triage) and every note probe adds are ordinary issue comments that anyone
who can read the repository reads. Point this route at a private repository unless all of that
may be public.

GitHub facts it relies on (REST API version 2022-11-28; the tests check every request against
GitHub's published OpenAPI description):
- `Authorization: Bearer <token>`, `Accept: application/vnd.github+json`,
  `X-GitHub-Api-Version: 2022-11-28`. The token needs to write issues (fine-grained: Issues read
  and write; classic: repo) with push access: without push access GitHub silently drops the
  labels and assignees of a new issue, and with them the label `find` looks for (`open` then
  logs a warning, since the issue exists all the same).
- POST /repos/{owner}/{repo}/issues {title, body, labels, assignees} answers 201 with the issue;
  labels that do not exist yet are created. It answers 410 when the repository has issues
  turned off. A label name is at most 50 characters: the incident key is carried as the label
  `probe:<16 hex digits of the key's SHA-256>` (the body shows the key itself).
- Creating an issue takes no idempotency key (the REST API has none): an issue created twice
  is two issues, so a retry of unknown outcome asks find() first.
- GET /repos/{owner}/{repo}/issues lists open issues only unless state=all, and lists pull
  requests too (they carry "pull_request"): `find` asks for state=all and skips those.
- Bodies and comments are Markdown, at most 65536 characters. "#12" links issue 12: a ticket
  that follows another says so in its first line.
- Notes are comments (POST .../issues/{n}/comments); PATCH .../issues/{n} with {state: closed,
  state_reason: completed} closes, {state: open, state_reason: reopened} reopens.
- GET .../issues/{n} answers 404 for an unknown issue (or one the token cannot see), 410 for a
  deleted one, 301 for one transferred to another repository (not followed: the error says
  where it went).
- Rate limits: 403 or 429, with x-ratelimit-remaining: 0 and x-ratelimit-reset (epoch) for the
  primary limit, or with retry-after for a secondary one (probe.helpdesks.http makes both
  transient). A secondary limit may come with neither header, only its message: then probe
  waits a minute, as GitHub asks.

status(): closed is "closed"; 404 or 410 is "gone"; an open issue with an assignee other than
the route's own `assignees` is "acknowledged" (those probe assigns itself, nobody took);
any other open issue is "open".
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import quote

from pydantic import AfterValidator, model_validator

from probe.helpdesks import base
from probe.helpdesks.base import BaseUrl, PriorityMap, RouteBase, TicketError, TicketState
from probe.helpdesks.http import Authorization, Fields, Http, Response
from probe.log import fields
from probe.secrets import EnvRef

log = logging.getLogger("probe.helpdesks")

API_VERSION = "2022-11-28"
MAX_LABEL = 50
MAX_TEXT = 65536
SECONDARY_LIMIT_WAIT = 60.0  # GitHub: "wait for at least one minute before retrying"


def _repository(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", value):
        raise ValueError(f"{value!r} is not owner/name")
    return value


class Route(RouteBase):
    backend: Literal["github"]
    url: BaseUrl = "https://api.github.com"
    repository: Annotated[str, AfterValidator(_repository)]
    token: EnvRef | None = None
    token_file: Path | None = None
    labels: list[str] = ["probe"]
    assignees: list[str] = []
    priorities: PriorityMap[str] = {
        "urgent": "priority:urgent",
        "high": "priority:high",
        "normal": "priority:normal",
        "low": "priority:low",
    }

    secrets: ClassVar[dict[str, bool]] = {"token": True}

    @model_validator(mode="after")
    def _label_names(self) -> Route:
        for label in [*self.labels, *self.priorities.values()]:
            if not label or len(label) > MAX_LABEL:
                raise ValueError(f"label {label!r}: GitHub takes 1 to {MAX_LABEL} characters")
        return self

    def link(self, ref: str) -> str | None:
        # The API's address is not the site's: api.github.com is github.com, an Enterprise
        # server's API is under /api/v3.
        site = ("https://github.com" if self.url == "https://api.github.com"
                else self.url.removesuffix("/api/v3"))
        return f"{site}/{self.repository}/issues/{quote(ref, safe='')}"


class Backend(base.Backend[Route]):
    def __init__(self, name: str, route: Route, *, database: Path | None = None) -> None:
        super().__init__(name, route, database=database)
        token = Authorization("token", "Bearer {}".format)
        self._http = Http(route, route.url, authorization=token, words=reasons, headers={
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
        })
        self._issues = f"/repos/{route.repository}/issues"

    async def find(self, key: str) -> str | None:
        params = {
            "state": "all",
            "labels": key_label(key),
            "sort": "created",
            "direction": "desc",
            "per_page": "100",
        }
        response = await self._request("GET", self._issues, params=params)
        for item in response.items():
            number = item.number("number")
            if number and "pull_request" not in item:
                return str(number)
        return None

    async def open(self, ticket: base.Ticket) -> str:
        route = self.route
        label = key_label(ticket.key)
        body = ticket.body_markdown
        if ticket.follows:
            body = f"Follows #{ticket.follows}, closed while the outage went on.\n\n{body}"
        issue: dict[str, Any] = {
            "title": ticket.title,
            "body": cut(body),
            "labels": list(dict.fromkeys([*route.labels, route.priorities[ticket.priority],
                                          label])),
        }
        if route.assignees:
            issue["assignees"] = route.assignees
        response = await self._request("POST", self._issues, json_body=issue)
        created = response.fields()
        number = created.number("number")
        if number is None:
            raise TicketError(f"{response.what}: HTTP {response.status} without an issue number")
        labels = {item.text("name") for item in created.objects("labels")}
        if label not in labels:
            log.warning("GitHub dropped the labels of a new issue: the token lacks push access,"
                        " and probe cannot find the issue again after a crash %s",
                        fields(route=self.name, issue=number, label=label))
        return str(number)

    async def note(self, ref: str, text: str) -> None:
        await self._request("POST", f"{self._issue(ref)}/comments", json_body={"body": cut(text)})

    async def resolve(self, ref: str, text: str) -> None:
        issue = await self._get(ref)
        if issue is None:
            return  # nothing left to resolve
        # Closed first: a retry after a failed comment then finds it closed and only comments,
        # so no closing note is posted twice.
        if issue.text("state") != "closed":
            change = {"state": "closed", "state_reason": "completed"}
            await self._request("PATCH", self._issue(ref), json_body=change)
        await self.note(ref, text)

    async def reopen(self, ref: str, text: str) -> None:
        await self.note(ref, text)
        change = {"state": "open", "state_reason": "reopened"}
        await self._request("PATCH", self._issue(ref), json_body=change)

    async def status(self, ref: str) -> TicketState:
        issue = await self._get(ref)
        if issue is None:
            return "gone"
        if issue.text("state") == "closed":
            return "closed"
        assignees = {item.text("login") for item in issue.objects("assignees")}
        if assignees - set(self.route.assignees):
            return "acknowledged"
        return "open"

    async def close(self) -> None:
        await self._http.close()

    def _issue(self, ref: str) -> str:
        if not ref.isdigit():
            raise TicketError(f"{ref!r} is not a GitHub issue number", permanent=True)
        return f"{self._issues}/{ref}"

    async def _get(self, ref: str) -> Fields | None:
        response = await self._request("GET", self._issue(ref), ok=(404, 410))
        return None if response.status in (404, 410) else response.fields()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except TicketError as err:
            # A secondary rate limit may come as a 403 with neither header, only its message.
            if err.permanent and " HTTP 403: " in err.message and (
                "rate limit" in err.message.lower()
            ):
                raise TicketError(err.message, retry_after=SECONDARY_LIMIT_WAIT) from err
            raise


def key_label(key: str) -> str:
    """The label that carries `key`: a label holds at most 50 characters, a key may hold more."""
    return "probe:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def cut(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    return text[: MAX_TEXT - 30].rstrip() + "\n\n… (cut to fit GitHub)"


def reasons(error: dict[str, Any]) -> str:
    """GitHub's reasons: on a 422, "Validation Failed" says little; the errors list says what
    failed."""
    message = error.get("message")
    said = message if isinstance(message, str) else ""
    errors = error.get("errors")
    details = []
    for problem in errors if isinstance(errors, list) else []:
        if isinstance(problem, dict):
            what = " ".join(str(problem[k]) for k in ("resource", "field") if problem.get(k))
            text = problem.get("message") or problem.get("code") or ""
            value = f" {problem['value']!r}" if "value" in problem else ""
            details.append(f"{what}{value} {text}".strip())
        else:
            details.append(str(problem))
    return f"{said} ({'; '.join(details)})".lstrip() if details else said


HELPDESK = base.Helpdesk(route=Route, backend=Backend)
