"""A GitHub for the tests, on loopback: the REST API's issue endpoints as GitHub documents them
(paths, JSON shapes, status codes, error bodies, rate-limit headers) and their traps — pull
requests in the issue list, the open-only default of that list, labels and assignees silently
dropped without push access, labels of at most 50 characters, 410 for a deleted issue and for a
repository without issues. It keeps the issues in memory and records every request, so that a
test asserts what GitHub holds and checks each request against GitHub's OpenAPI description."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web

from tests.harness.fakes import Fault, Faults
from tests.harness.httpserver import serve_app
from tests.harness.openapi import Request

TOKEN = "ghp_probe_test_token"
REPOSITORY = "acme/ops"
DOCS = "https://docs.github.com/rest"


@dataclass
class Recorded:
    request: Request
    headers: dict[str, str]


@dataclass
class FakeGitHub:
    port: int = 0
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    comments: dict[int, list[str]] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)  # the repository's labels
    collaborators: set[str] = field(default_factory=lambda: {"alice", "bob", "oncall-bot"})
    requests: list[Recorded] = field(default_factory=list)
    push_access: bool = True
    issues_enabled: bool = True
    stall_creates: int = 0  # this many creates are made, then answered only on release
    failures: Faults = field(default_factory=Faults)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, method: str, status: int, headers: dict[str, str] | None = None,
             message: str = "", times: int = 1) -> None:
        """Answer the next `times` requests of `method` with `status` instead of serving them."""
        body = {"message": message or HTTPStatus(status).phrase, "documentation_url": DOCS,
                "status": str(status)}
        self.failures.add(Fault(method, "", status, body, headers or {}, times))

    # --- what people do on GitHub ----------------------------------------------------------

    def close_by_hand(self, number: int, reason: str = "completed") -> None:
        self.issues[number].update(state="closed", state_reason=reason, closed_at=_now())

    def assign(self, number: int, login: str) -> None:
        issue = self.issues[number]
        issue["assignees"].append(_user(login))
        issue["assignee"] = issue["assignees"][0]

    def delete(self, number: int) -> None:
        self.deleted.add(number)

    def open_pull_request(self, title: str, labels: list[str]) -> int:
        """A pull request: GitHub lists it among the issues."""
        number = next(self._numbers)
        issue = self._new_issue(number, title, "", labels, [])
        issue["pull_request"] = {"url": f"{self.url}/repos/{REPOSITORY}/pulls/{number}"}
        self.issues[number] = issue
        return number

    def labelled(self, label: str) -> list[dict[str, Any]]:
        return [issue for issue in self.issues.values() if label in _names(issue)
                and "pull_request" not in issue]

    # --- the API -------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        content_type = request.headers.get("Content-Type")
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return _error(400, "Problems parsing JSON")
        self.requests.append(Recorded(
            Request(request.method, request.path, tuple(request.query.items()), body,
                    bool(raw), content_type),
            dict(request.headers)))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _error(401, "Bad credentials")
        failure = self.failures.take(request)
        if failure is not None:
            return failure.response()
        prefix = f"/repos/{REPOSITORY}/issues"
        if not request.path.startswith(prefix):
            return _error(404, "Not Found")
        rest = request.path.removeprefix(prefix).strip("/").split("/") if request.path != prefix \
            else []
        if not rest and request.method == "GET":
            return self._list(request)
        if not rest and request.method == "POST":
            return await self._create(body)
        if not rest[0].isdigit():
            return _error(404, "Not Found")
        number = int(rest[0])
        if number in self.deleted:
            return _error(410, "This issue was deleted")
        if number not in self.issues:
            return _error(404, "Not Found")
        if rest[1:] == ["comments"] and request.method == "POST":
            return self._comment(number, body)
        if len(rest) == 1 and request.method == "GET":
            return web.json_response(self.issues[number])
        if len(rest) == 1 and request.method == "PATCH":
            return self._update(number, body)
        return _error(404, "Not Found")

    def _list(self, request: web.Request) -> web.Response:
        state = request.query.get("state", "open")  # GitHub's default: open issues only
        wanted = [name for name in request.query.get("labels", "").split(",") if name]
        found = [issue for issue in self.issues.values()
                 if issue["number"] not in self.deleted
                 and state in ("all", issue["state"])
                 and all(name in _names(issue) for name in wanted)]
        found.sort(key=lambda issue: issue["number"],
                   reverse=request.query.get("direction", "desc") == "desc")
        per_page = min(100, int(request.query.get("per_page", "30")))
        return web.json_response(found[:per_page])

    async def _create(self, body: Any) -> web.Response:
        if not self.issues_enabled:
            return _error(410, "Issues are disabled for this repo")
        if not isinstance(body, dict) or not body.get("title"):
            return _invalid({"resource": "Issue", "code": "missing_field", "field": "title"})
        labels = [str(name) for name in body.get("labels") or []]
        assignees = [str(login) for login in body.get("assignees") or []]
        for name in labels:
            if len(name) > 50:
                return _invalid({"resource": "Label", "code": "invalid", "field": "name",
                                 "value": name})
        for login in assignees:
            if login not in self.collaborators:
                return _invalid({"resource": "Issue", "code": "invalid", "field": "assignees",
                                 "value": login})
        if not self.push_access:
            labels, assignees = [], []  # "silently dropped" without push access
        self.labels.update(labels)  # a label that does not exist yet is created
        number = next(self._numbers)
        issue = self._new_issue(number, str(body["title"]), str(body.get("body") or ""), labels,
                                assignees)
        self.issues[number] = issue
        if self.stall_creates:
            self.stall_creates -= 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.released.wait(), 30)
        return web.json_response(issue, status=201)

    def _comment(self, number: int, body: Any) -> web.Response:
        if not isinstance(body, dict) or not isinstance(body.get("body"), str):
            return _invalid({"resource": "IssueComment", "code": "missing_field",
                             "field": "body"})
        self.comments.setdefault(number, []).append(body["body"])
        comment_id = 1000 + sum(len(c) for c in self.comments.values())
        return web.json_response({
            "id": comment_id,
            "body": body["body"],
            "user": _user("probe-bot"),
            "created_at": _now(),
            "html_url": f"https://github.com/{REPOSITORY}/issues/{number}#issuecomment-"
                        f"{comment_id}",
        }, status=201)

    def _update(self, number: int, body: Any) -> web.Response:
        issue = self.issues[number]
        if not isinstance(body, dict):
            return _invalid({"resource": "Issue", "code": "invalid"})
        state, reason = body.get("state"), body.get("state_reason")
        if state not in (None, "open", "closed"):
            return _invalid({"resource": "Issue", "code": "invalid", "field": "state",
                             "value": state})
        if reason not in (None, "completed", "not_planned", "duplicate", "reopened"):
            return _invalid({"resource": "Issue", "code": "invalid", "field": "state_reason",
                             "value": reason})
        if state == "closed" and issue["state"] != "closed":
            issue.update(state="closed", closed_at=_now(), state_reason=reason or "completed")
        elif state == "open" and issue["state"] != "open":
            issue.update(state="open", closed_at=None, state_reason="reopened")
        issue["updated_at"] = _now()
        return web.json_response(issue)

    def _new_issue(self, number: int, title: str, body: str, labels: list[str],
                   assignees: list[str]) -> dict[str, Any]:
        users = [_user(login) for login in assignees]
        return {
            "id": 9_000_000 + number,
            "node_id": f"I_kwDO{number:08d}",
            "url": f"{self.url}/repos/{REPOSITORY}/issues/{number}",
            "html_url": f"https://github.com/{REPOSITORY}/issues/{number}",
            "number": number,
            "title": title,
            "body": body,
            "state": "open",
            "state_reason": None,
            "locked": False,
            "labels": [{"id": abs(hash(name)) % 10**9, "name": name, "color": "ededed",
                        "default": False, "description": None} for name in labels],
            "assignee": users[0] if users else None,
            "assignees": users,
            "user": _user("probe-bot"),
            "comments": 0,
            "created_at": _now(),
            "updated_at": _now(),
            "closed_at": None,
        }


def _names(issue: dict[str, Any]) -> set[str]:
    return {label["name"] for label in issue["labels"]}


def _user(login: str) -> dict[str, Any]:
    return {"login": login, "id": abs(hash(login)) % 10**7, "type": "User"}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message, "documentation_url": DOCS,
                              "status": str(status)}, status=status)


def _invalid(error: dict[str, Any]) -> web.Response:
    return web.json_response({"message": "Validation Failed", "errors": [error],
                              "documentation_url": DOCS, "status": "422"}, status=422)


@contextlib.asynccontextmanager
async def serve() -> AsyncIterator[FakeGitHub]:
    github = FakeGitHub()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", github.handle)
    async with serve_app(app) as port:
        github.port = port
        try:
            yield github
        finally:
            github.released.set()
