"""The jira backend: Jira Cloud or Data Center issues, and Jira Service Management requests.

Jira facts it relies on:
- Cloud speaks REST v3 with Basic auth (the account's email and an API token) and takes rich
  text as Atlassian Document Format (a `doc` of paragraphs and code blocks); Data Center speaks
  REST v2 with a personal access token (`Authorization: Bearer`) and takes wiki markup, which
  is why text goes there inside {noformat}.
- POST /issue takes {fields: project {key}, issuetype {name}, summary (one line, at most 255
  characters), priority {name}, labels (no spaces), description} and answers 201 {id, key}.
  Which fields are required depends on the project's screens: a 400 carries {errorMessages,
  errors: {field: message}}, passed on as a permanent error that names our setting.
- POST /issue takes no idempotency key (neither Cloud nor Data Center has one), and labels
  are not unique: an issue created twice is two issues.
- Cloud's search (POST /rest/api/3/search/jql) is eventually consistent: an issue created a
  moment ago may not be found for seconds (Atlassian: "the majority within seconds"). The
  dispatcher keeps the issue key and calls `find` only after an open whose outcome is unknown;
  `find` then keeps asking for `search_lag` before it answers "none". An issue that takes
  longer than that to reach the index can still be opened twice: the risk is narrowed, not
  closed. (`reconcileIssues` makes search consistent only for issue ids one already knows.)
  The key is carried as the label `probe-key-<hash of the key>`, exact where JQL's `~` is not.
- Comments (POST /issue/{key}/comment) on a Service Management project are public: with
  `service_desk` notes go through POST /rest/servicedeskapi/request/{key}/comment
  {"body", "public": false}, an internal comment the customer does not see.
- Statuses belong to one of the categories new, indeterminate and done. Resolving or reopening
  is a transition (GET then POST /issue/{key}/transitions) whose target is in the wanted
  category; which transitions exist depends on the workflow and on the current status. A
  transition screen may ask for a resolution (`?expand=transitions.fields`).
- A GET of an issue that does not exist, or that the caller may not see, is 404; so may be a
  request whose credentials Jira silently treated as anonymous, so a 404 is trusted only after
  GET /myself says the credentials work.
- A 429 comes with Retry-After (seconds) and X-RateLimit-Reset (an ISO time).

status(): category done is "closed"; an assignee or category indeterminate is "acknowledged";
category new without assignee is "open"; 404 is "gone". probe's own `reopen` prefers a
transition to category new, so a reopened issue escalates again.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import textwrap
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import quote

from pydantic import AfterValidator, model_validator

from checks.values import Duration
from probe.helpdesks import base
from probe.helpdesks.base import BaseUrl, PriorityMap, RouteBase, TicketError, TicketState
from probe.helpdesks.http import Authorization, Fields, Http, basic
from probe.secrets import EnvRef

KEY_LABEL = "probe-key-"
SUMMARY_CHARS = 255
TEXT_CHARS = 32_000  # Jira's text fields hold 32,767 characters
RESOLVE_NAMES = ("done", "resolve", "resolved", "resolve issue", "close", "closed", "close issue")
# our settings, by the Jira field a 400 complains about
SETTINGS = {"project": "project", "issuetype": "issue_type", "priority": "priorities",
            "labels": "labels", "resolution": "resolution"}


def _label(value: str) -> str:
    if not value or len(value) > 255 or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not a Jira label: 1 to 255 characters, no spaces")
    return value


Label = Annotated[str, AfterValidator(_label)]


class Route(RouteBase):
    backend: Literal["jira"]
    url: BaseUrl
    deployment: Literal["cloud", "data-center"] = "cloud"
    email: str | None = None  # Cloud: the account the API token belongs to
    token: EnvRef | None = None  # Cloud: an API token; Data Center: a personal access token
    token_file: Path | None = None
    project: str
    issue_type: str = "Task"
    service_desk: bool = False  # JSM: notes as internal comments
    labels: list[Label] = ["probe"]
    priorities: PriorityMap[str] = {
        "urgent": "Highest",
        "high": "High",
        "normal": "Medium",
        "low": "Low",
    }
    resolve_transition: str | None = None  # a transition (or target status) name; else "done"
    reopen_transition: str | None = None  # else a transition to category new (or in progress)
    resolution: str = "Done"  # set when the resolving transition's screen asks for one
    search_lag: Duration = 10.0  # how long find() waits for Jira's search to catch up

    secrets: ClassVar[dict[str, bool]] = {"token": True}

    @model_validator(mode="after")
    def _cloud_needs_email(self) -> Route:
        if self.deployment == "cloud" and not self.email:
            raise ValueError("Jira Cloud needs email: the account the API token belongs to")
        return self

    def link(self, ref: str) -> str | None:
        return f"{self.url}/browse/{quote(ref, safe='')}"


class Backend(base.Backend[Route]):
    def __init__(self, name: str, route: Route, *, database: Path | None = None) -> None:
        super().__init__(name, route, database=database)
        self._cloud = route.deployment == "cloud"
        self._api = "/rest/api/3" if self._cloud else "/rest/api/2"
        token = (Authorization("token", lambda token: basic(route.email or "", token))
                 if self._cloud else Authorization("token", "Bearer {}".format))
        self._http = Http(route, route.url, authorization=token, words=reasons,
                          headers={"Accept": "application/json"})

    async def find(self, key: str) -> str | None:
        label = key_label(key)
        body = {
            "jql": f'labels = "{label}" ORDER BY created DESC',
            "maxResults": 10,
            "fields": ["labels"],
        }
        path = f"{self._api}/search/jql" if self._cloud else f"{self._api}/search"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.route.search_lag
        pause = 0.25
        while True:
            found = (await self._http.request("POST", path, json_body=body)).fields()
            for issue in found.objects("issues"):
                issue_key, fields = issue.text("key"), issue.object("fields")
                if issue_key and fields is not None and label in fields.texts("labels"):
                    return issue_key
            left = deadline - loop.time()
            if left <= 0:
                return None
            # Not there yet may only mean not indexed yet.
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, 2.0)

    async def open(self, ticket: base.Ticket) -> str:
        route = self.route
        labels = list(dict.fromkeys([*route.labels, key_label(ticket.key),
                                     readable_label(ticket.key)]))
        fields = {
            "project": {"key": route.project},
            "issuetype": {"name": route.issue_type},
            "summary": summary(ticket.title),
            "priority": {"name": route.priorities[ticket.priority]},
            "labels": labels,
            "description": self._text(ticket.body[:TEXT_CHARS]),
        }
        response = await self._http.request("POST", f"{self._api}/issue",
                                            json_body={"fields": fields})
        ref = response.fields().text("key")
        if not ref:
            raise TicketError(f"{response.what}: HTTP {response.status} without an issue key")
        return ref

    async def note(self, ref: str, text: str) -> None:
        if self.route.service_desk:
            body: dict[str, Any] = {"body": text, "public": False}
            path = f"/rest/servicedeskapi/request/{_path(ref)}/comment"
            await self._http.request("POST", path, json_body=body)
        else:
            body = {"body": self._text(text)}
            path = f"{self._api}/issue/{_path(ref)}/comment"
            await self._http.request("POST", path, json_body=body)

    async def resolve(self, ref: str, text: str) -> None:
        issue = await self._issue(ref)
        if issue is None:
            return  # nothing left to resolve
        await self.note(ref, text)
        if _category(issue) != "done":
            await self._transition(ref, issue, "resolve")

    async def reopen(self, ref: str, text: str) -> None:
        issue = await self._issue(ref)
        if issue is None:
            raise TicketError(f"Jira issue {ref} no longer exists", permanent=True)
        await self.note(ref, text)
        if _category(issue) == "done":  # else someone reopened it already
            await self._transition(ref, issue, "reopen")

    async def status(self, ref: str) -> TicketState:
        issue = await self._issue(ref)
        if issue is None:
            return "gone"
        category = _category(issue)
        if category == "done":
            return "closed"
        fields = issue.object("fields")
        if (fields is not None and fields.object("assignee")) or category == "indeterminate":
            return "acknowledged"
        return "open"

    async def close(self) -> None:
        await self._http.close()

    # --- helpers -------------------------------------------------------------------------------

    def _text(self, text: str) -> Any:
        if self._cloud:
            return adf(text)
        return "{noformat}\n" + text.replace("{noformat}", "{ noformat}") + "\n{noformat}"

    async def _issue(self, ref: str) -> Fields | None:
        response = await self._http.request("GET", f"{self._api}/issue/{_path(ref)}",
                                            params={"fields": "status,assignee"}, ok=(404,))
        if response.status != 404:
            return response.fields()
        # Jira answers 404 to credentials it took for anonymous too: they must work.
        await self._http.request("GET", f"{self._api}/myself")
        return None

    async def _transition(self, ref: str, issue: Fields, purpose: str) -> None:
        path = f"{self._api}/issue/{_path(ref)}/transitions"
        response = await self._http.request("GET", path, params={"expand": "transitions.fields"})
        offered = [(transition_id, t) for t in response.fields().objects("transitions")
                   if (transition_id := t.ref("id"))]
        status = _status(issue)
        chosen_id, chosen = self._choose(offered, purpose, ref,
                                         (status.text("name") if status else None) or "?")
        body: dict[str, Any] = {"transition": {"id": chosen_id}}
        if purpose == "resolve":
            resolution = self._resolution(chosen)
            if resolution:
                body["fields"] = {"resolution": {"name": resolution}}
        await self._http.request("POST", path, json_body=body)

    def _choose(self, offered: list[tuple[str, Fields]], purpose: str, ref: str,
                status: str) -> tuple[str, Fields]:
        """The transition (its id, and itself) that does `purpose`, of those `offered`."""
        setting = f"{purpose}_transition"
        wanted: str | None = getattr(self.route, setting)
        listing = ", ".join(f"{t.get('name')} (to {_target(t)[0]}, {_target(t)[1]})"
                            for _, t in offered) or "none"
        where = f"Jira issue {ref} in status {status!r} offers"
        if wanted:
            for choice in offered:
                t = choice[1]
                if wanted.casefold() in (str(t.get("name")).casefold(),
                                         _target(t)[0].casefold()):
                    return choice
            raise TicketError(f"{where} no transition named {wanted!r} (the route's {setting}); "
                              f"it offers: {listing}", permanent=True)
        if purpose == "resolve":
            done = [c for c in offered if _target(c[1])[1] == "done"]
            named = [c for c in done if str(c[1].get("name")).casefold() in RESOLVE_NAMES
                     or _target(c[1])[0].casefold() in RESOLVE_NAMES]
            if len(done) == 1 or named:
                return (named or done)[0]
            problem = ("several transitions to a done status and none plainly resolves it"
                       if done else "no transition to a done status")
            raise TicketError(f"{where} {problem}; it offers: {listing}. Set the route's "
                              f"{setting} to the one that resolves it", permanent=True)
        for category in ("new", "indeterminate"):
            for choice in offered:
                if _target(choice[1])[1] == category:
                    return choice
        raise TicketError(f"{where} no transition back to an open status; it offers: "
                          f"{listing}. Set the route's {setting}, or on_human_close: new",
                          permanent=True)

    def _resolution(self, transition: Fields) -> str | None:
        fields = transition.object("fields")
        field = fields.object("resolution") if fields is not None else None
        if field is None:
            return None
        allowed = [str(v.get("name")) for v in field.objects("allowedValues")]
        wanted = self.route.resolution
        if wanted in allowed:
            return wanted
        if field.flag("required"):
            raise TicketError(
                f"the transition {transition.get('name')!r} needs a resolution and Jira has "
                f"none named {wanted!r} (the route's resolution); it has: "
                f"{', '.join(allowed) or 'none'}", permanent=True)
        return None


def key_label(key: str) -> str:
    """The label `find` looks for: exact, and free of what labels may not hold."""
    return KEY_LABEL + hashlib.sha256(key.encode()).hexdigest()[:20]


def readable_label(key: str) -> str:
    """The key as a person would search for it (not unique: `find` uses key_label)."""
    return ("probe-" + re.sub(r"[^A-Za-z0-9_.+-]+", "-", key).strip("-"))[:255]


def summary(title: str) -> str:
    line = " ".join(title.split()) or "probe"
    return line if len(line) <= SUMMARY_CHARS else line[: SUMMARY_CHARS - 1] + "…"


def adf(text: str) -> dict[str, Any]:
    """Plain text as an Atlassian Document: a paragraph per block of lines, and the indented
    lines (the checks, the timeline) in code blocks, which keep their alignment."""
    content: list[dict[str, Any]] = []
    for block in re.split(r"\n[ \t]*\n", text.strip("\n")):
        lines = block.rstrip().split("\n")
        indented = [line[:1] in (" ", "\t") for line in lines]
        if not indented[0] and len(lines) > 1 and all(indented[1:]):
            content.append(_paragraph(lines[:1]))
            content.append(_code(textwrap.dedent("\n".join(lines[1:]))))
        elif all(indented):
            content.append(_code(textwrap.dedent(block)))
        elif any(lines):
            content.append(_paragraph(lines))
    return {"type": "doc", "version": 1, "content": content or [_paragraph([])]}


def _paragraph(lines: list[str]) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if i:
            nodes.append({"type": "hardBreak"})
        if line:
            nodes.append({"type": "text", "text": line})
    return {"type": "paragraph", "content": nodes}


def _code(text: str) -> dict[str, Any]:
    return {"type": "codeBlock", "content": [{"type": "text", "text": text}]}


def reasons(error: dict[str, Any]) -> str:
    """Jira's reasons from an error body ({errorMessages, errors: {field: message}}), each
    field's naming the route setting behind it."""
    messages, errors = error.get("errorMessages"), error.get("errors")
    said = [str(m) for m in messages] if isinstance(messages, list) else []
    for field, message in errors.items() if isinstance(errors, dict) else ():
        if field in SETTINGS:
            hint = f" (the route's {SETTINGS[field]})"
        elif field in ("summary", "description"):
            hint = ""
        else:
            hint = " (probe does not set this field: make it optional or give it a default)"
        said.append(f"{field}: {message}{hint}")
    return "; ".join(said)


def _status(issue: Fields) -> Fields | None:
    fields = issue.object("fields")
    return fields.object("status") if fields is not None else None


def _category(issue: Fields) -> str | None:
    return _category_of(_status(issue))


def _category_of(status: Fields | None) -> str | None:
    """The key of a status's category: new, indeterminate or done."""
    category = status.object("statusCategory") if status is not None else None
    return (category.text("key") or None) if category is not None else None


def _target(transition: Fields) -> tuple[str, str | None]:
    """The name and category of the status a transition leads to."""
    to = transition.object("to")
    return (to.text("name") if to else None) or "?", _category_of(to)


def _path(ref: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_]+-\d+|\d+", ref):
        raise TicketError(f"{ref!r} is not a Jira issue key", permanent=True)
    return quote(ref, safe="")



HELPDESK = base.Helpdesk(route=Route, backend=Backend)
