"""A Jira on loopback for the tests: the parts of the REST API v3 (Cloud) and v2 (Data Center)
and of the Service Management API that probe uses, as Atlassian documents them, with issues
kept in memory so that a test asserts what the helpdesk holds.

It keeps Jira's traps: search lags behind writes (`index_lag`), which fields a create needs
depends on the project (`required`), what a transition leads to depends on the workflow and
the current status (`workflow`), a transition screen may ask for a resolution
(`resolution_screen`), a comment on a service desk project is public unless made through the
Service Management API, and a GET of an issue with credentials Jira does not accept is a 404,
as for an anonymous user. `faults` lets a test make it fail, stall or rate-limit on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.harness.fakes import Fault, Faults, basic
from tests.harness.httpserver import serve_app

EMAIL, TOKEN, PAT = "ops@example.com", "jira-api-token", "jira-dc-personal-token"
CATEGORIES = {"To Do": "new", "In Progress": "indeterminate", "Done": "done", "Won't Do": "done",
              "Shipped": "done", "Binned": "done"}
# status -> the transitions it offers: (id, name, target status)
WORKFLOW: dict[str, list[tuple[str, str, str]]] = {
    "To Do": [("11", "Start Progress", "In Progress"), ("31", "Done", "Done"),
              ("41", "Won't Do", "Won't Do")],
    "In Progress": [("21", "Stop Progress", "To Do"), ("31", "Done", "Done")],
    "Done": [("51", "Reopen", "To Do")],
    "Won't Do": [("51", "Reopen", "To Do")],
}
ADF_NODES = {"doc", "paragraph", "text", "hardBreak", "codeBlock", "heading", "bulletList",
             "listItem"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Comment:
    body: Any  # an ADF document (v3), wiki text (v2) or plain text (Service Management)
    public: bool
    via: str  # "platform" or "servicedesk"


@dataclass
class Issue:
    id: int
    key: str
    fields: dict[str, Any]
    created: float
    status: str = "To Do"
    resolution: str | None = None
    assignee: str | None = None
    comments: list[Comment] = field(default_factory=list)

    @property
    def category(self) -> str:
        return CATEGORIES[self.status]


class FakeJira:
    def __init__(self) -> None:
        self.url = ""
        self.projects = {"OPS": {"Task", "Bug"}, "HELP": {"Incident", "Task"}}
        self.service_desks = {"HELP"}
        self.priorities = ["Highest", "High", "Medium", "Low", "Lowest"]
        self.required: dict[str, str] = {}  # field -> Jira's message when it is missing
        self.workflow = {status: list(ts) for status, ts in WORKFLOW.items()}
        self.resolution_screen = False
        self.resolutions = ["Done", "Won't Do", "Duplicate"]
        self.index_lag = 0.0  # seconds before a new issue shows in search
        self.issues: dict[str, Issue] = {}
        self.faults = Faults()
        self.seen: list[tuple[str, str, int]] = []  # (method, path, status)
        self._next_id = 10000

    # --- what a test does to the helpdesk ------------------------------------------------------

    def fail(self, method: str, path: str, status: int = 503, **kwargs: Any) -> None:
        """The next requests of `method` to a path `path` (a regular expression) matches
        answer `status`, or stall: see fakes.Fault."""
        self.faults.add(Fault(method, path, status, **kwargs))

    def only(self) -> Issue:
        (issue,) = self.issues.values()
        return issue

    def close_by_hand(self, key: str, status: str = "Done") -> None:
        self.issues[key].status = status

    @staticmethod
    def text(document: Any) -> str:
        """What a reader sees of an ADF document: its text, a line per paragraph or break."""
        if isinstance(document, str):
            return document
        if document.get("type") == "text":
            return str(document["text"])
        if document.get("type") == "hardBreak":
            return "\n"
        inner = "".join(FakeJira.text(node) for node in document.get("content") or [])
        return inner + "\n" if document.get("type") in ("paragraph", "codeBlock") else inner

    # --- the API -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._faults])
        for api in ("3", "2"):
            r = f"/rest/api/{api}"
            app.router.add_post(f"{r}/issue", self.create)
            app.router.add_get(f"{r}/issue/{{key}}", self.get)
            app.router.add_post(f"{r}/issue/{{key}}/comment", self.comment)
            app.router.add_get(f"{r}/issue/{{key}}/transitions", self.transitions)
            app.router.add_post(f"{r}/issue/{{key}}/transitions", self.transition)
            app.router.add_get(f"{r}/myself", self.myself)
        app.router.add_post("/rest/api/3/search/jql", self.search)
        app.router.add_post("/rest/api/2/search", self.search)
        app.router.add_post("/rest/servicedeskapi/request/{key}/comment", self.request_comment)
        return app

    @web.middleware
    async def _faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = self.faults.take(request)
        if fault is not None and not fault.stall:
            self.seen.append((request.method, request.path, fault.status))
            return fault.response()
        if not self._authorised(request):
            status = 404 if request.method == "GET" and "/issue/" in request.path else 401
            self.seen.append((request.method, request.path, status))
            if status == 404:  # as for anyone who may not see the issue
                return _errors(404, ["Issue does not exist or you do not have permission to "
                                     "see it."])
            return _errors(401, ["Client must be authenticated to access this resource."])
        response = await handler(request)
        self.seen.append((request.method, request.path, response.status))
        if fault is not None:
            await asyncio.sleep(fault.stall)  # done, but the client hears nothing in time
        return response

    def _authorised(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        cloud = basic(EMAIL, TOKEN)
        if request.path.startswith("/rest/api/3"):
            return given == cloud
        if request.path.startswith("/rest/api/2"):
            return given == f"Bearer {PAT}"
        return given in (cloud, f"Bearer {PAT}")

    async def create(self, request: web.Request) -> web.Response:
        v3 = request.path.startswith("/rest/api/3")
        fields = (await request.json()).get("fields") or {}
        errors: dict[str, str] = {}
        project = (fields.get("project") or {}).get("key")
        if project not in self.projects:
            errors["project"] = "Specify a valid project ID or key"
        elif (fields.get("issuetype") or {}).get("name") not in self.projects[project]:
            errors["issuetype"] = "Specify a valid issue type"
        summary = fields.get("summary")
        if not summary:
            errors["summary"] = "You must specify a summary of the issue."
        elif len(summary) > 255 or "\n" in summary:
            errors["summary"] = "Summary must be less than 255 characters and on one line."
        priority = (fields.get("priority") or {}).get("name")
        if priority not in self.priorities:
            errors["priority"] = f"Priority name '{priority}' is not valid"
        for label in fields.get("labels") or []:
            if " " in label:
                errors["labels"] = f"The label '{label}' contains spaces which is invalid."
        if not _valid_text(fields.get("description"), v3):
            errors["description"] = ("Operation value must be an Atlassian Document (see the "
                                     "Atlassian Document Format)" if v3
                                     else "Operation value must be a string")
        for name, message in self.required.items():
            if name not in fields:
                errors[name] = message
        if errors:
            return _errors(400, [], errors)
        self._next_id += 1
        key = f"{project}-{sum(k.startswith(f'{project}-') for k in self.issues) + 1}"
        self.issues[key] = Issue(self._next_id, key, fields, time.monotonic())
        return web.json_response({"id": str(self._next_id), "key": key,
                                  "self": f"{self.url}/rest/api/3/issue/{self._next_id}"},
                                 status=201)

    async def get(self, request: web.Request) -> web.Response:
        issue = self.issues.get(request.match_info["key"])
        if issue is None:
            return _errors(404, ["Issue does not exist or you do not have permission to see "
                                 "it."])
        wanted = request.query.get("fields", "*all").split(",")
        everything = {
            **issue.fields,
            "status": _status(issue.status),
            "assignee": ({"accountId": issue.assignee, "displayName": issue.assignee}
                         if issue.assignee else None),
            "resolution": {"name": issue.resolution} if issue.resolution else None,
        }
        shown = everything if "*all" in wanted else {k: everything.get(k) for k in wanted}
        return web.json_response({"id": str(issue.id), "key": issue.key, "fields": shown})

    async def myself(self, request: web.Request) -> web.Response:
        return web.json_response({"accountId": "probe", "emailAddress": EMAIL})

    async def search(self, request: web.Request) -> web.Response:
        body = await request.json()
        match = re.fullmatch(r'labels = "([^"]+)" ORDER BY created DESC', body.get("jql", ""))
        if not match:
            return _errors(400, [f"Error in the JQL Query: cannot parse {body.get('jql')!r}"])
        now = time.monotonic()
        indexed = [i for i in self.issues.values() if now - i.created >= self.index_lag]
        found = sorted((i for i in indexed if match[1] in i.fields.get("labels", [])),
                       key=lambda i: i.id, reverse=True)[: int(body.get("maxResults", 50))]
        wanted = body.get("fields") or []
        issues = [{"id": str(i.id), "key": i.key,
                   "fields": {f: i.fields.get(f) for f in wanted}} for i in found]
        if request.path.endswith("/search/jql"):
            return web.json_response({"issues": issues, "nextPageToken": None})
        return web.json_response({"issues": issues, "startAt": 0, "total": len(issues)})

    async def comment(self, request: web.Request) -> web.Response:
        issue = self.issues.get(request.match_info["key"])
        if issue is None:
            return _errors(404, ["Issue does not exist or you do not have permission to see "
                                 "it."])
        body = (await request.json()).get("body")
        if not _valid_text(body, request.path.startswith("/rest/api/3")):
            return _errors(400, ["Comment body is not valid!"])
        issue.comments.append(Comment(body, public=True, via="platform"))
        return web.json_response({"id": str(len(issue.comments))}, status=201)

    async def request_comment(self, request: web.Request) -> web.Response:
        issue = self.issues.get(request.match_info["key"])
        project = request.match_info["key"].split("-")[0]
        if issue is None or project not in self.service_desks:
            return web.json_response({"errorMessage": "The request could not be found."},
                                     status=404)
        body = await request.json()
        if not isinstance(body.get("body"), str) or not body["body"]:
            return web.json_response({"errorMessage": "The comment body is required."},
                                     status=400)
        issue.comments.append(Comment(body["body"], public=bool(body.get("public", True)),
                                      via="servicedesk"))
        return web.json_response({"id": str(len(issue.comments)), "public": body.get("public")},
                                 status=201)

    def _offered(self, issue: Issue) -> list[dict[str, Any]]:
        offered = []
        for tid, name, target in self.workflow.get(issue.status, []):
            transition: dict[str, Any] = {"id": tid, "name": name, "to": _status(target),
                                          "hasScreen": False, "isAvailable": True}
            if self.resolution_screen and CATEGORIES[target] == "done":
                transition["hasScreen"] = True
                transition["fields"] = {"resolution": {
                    "required": True, "name": "Resolution", "key": "resolution",
                    "allowedValues": [{"id": str(i), "name": n}
                                      for i, n in enumerate(self.resolutions, 1)]}}
            offered.append(transition)
        return offered

    async def transitions(self, request: web.Request) -> web.Response:
        issue = self.issues.get(request.match_info["key"])
        if issue is None:
            return _errors(404, ["Issue does not exist or you do not have permission to see "
                                 "it."])
        offered = self._offered(issue)
        if "transitions.fields" not in request.query.get("expand", ""):
            for t in offered:
                t.pop("fields", None)
        return web.json_response({"expand": "transitions", "transitions": offered})

    async def transition(self, request: web.Request) -> web.Response:
        issue = self.issues.get(request.match_info["key"])
        if issue is None:
            return _errors(404, ["Issue does not exist or you do not have permission to see "
                                 "it."])
        body = await request.json()
        wanted = str((body.get("transition") or {}).get("id"))
        chosen = next((t for t in self._offered(issue) if t["id"] == wanted), None)
        if chosen is None:
            return _errors(400, [f"Transition id '{wanted}' is not valid for this issue."])
        resolution = ((body.get("fields") or {}).get("resolution") or {}).get("name")
        if "fields" in chosen and resolution not in self.resolutions:
            return _errors(400, [], {"resolution": "Resolution is required."})
        if "fields" not in chosen and resolution:
            return _errors(400, [], {"resolution": "Field 'resolution' cannot be set. It is "
                                                   "not on the appropriate screen, or unknown."})
        issue.status = chosen["to"]["name"]
        issue.resolution = resolution or ("Done" if issue.category == "done" else None)
        return web.Response(status=204)


def _status(name: str) -> dict[str, Any]:
    key = CATEGORIES[name]
    return {"name": name, "id": str(abs(hash(name)) % 1000),
            "statusCategory": {"key": key, "name": {"new": "To Do", "done": "Done"}.get(
                key, "In Progress")}}


def _errors(status: int, messages: list[str], errors: dict[str, str] | None = None,
            ) -> web.Response:
    return web.json_response({"errorMessages": messages, "errors": errors or {}}, status=status)


def _valid_text(value: Any, adf: bool) -> bool:
    if not adf:
        return isinstance(value, str)
    return (isinstance(value, dict) and value.get("type") == "doc" and value.get("version") == 1
            and isinstance(value.get("content"), list) and _valid_nodes(value["content"]))


def _valid_nodes(nodes: list[Any]) -> bool:
    for node in nodes:
        if not isinstance(node, dict) or node.get("type") not in ADF_NODES:
            return False
        if node["type"] == "text" and not (isinstance(node.get("text"), str) and node["text"]):
            return False  # ADF forbids empty text nodes
        if not _valid_nodes(node.get("content") or []):
            return False
    return True


def reset_in(seconds: int) -> str:
    """An X-RateLimit-Reset value as Jira Cloud writes it (yyyy-MM-ddTHH:mmZ)."""
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%MZ")


@contextlib.asynccontextmanager
async def serve_jira() -> AsyncIterator[FakeJira]:
    jira = FakeJira()
    async with serve_app(jira.app()) as port:
        jira.url = f"http://127.0.0.1:{port}"
        yield jira
