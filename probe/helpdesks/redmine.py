"""The redmine backend: issues in a Redmine 5 project, through its REST API (`<url>/*.json`).

Redmine facts it relies on (its REST API pages, and seen on Redmine 5.0.4):
- `X-Redmine-API-Key: <the user's API key>`, with the REST API enabled in the settings. A bad
  key is 401 with login_required on; without it a bad key is anonymous, who gets 403, or 404
  for an issue it may not see, so a 404 counts as "gone" only once GET /users/current.json
  (401 for anonymous) says the key works.
  The body must be sent as `Content-Type: application/json`, or Redmine ignores it.
- POST /issues.json {"issue": {project_id, tracker_id, subject (at most 255 characters),
  description, priority_id, custom_fields: [{id, value}]}} answers 201 with the whole issue.
  A priority given by name is ignored without a word (the issue gets the default), hence
  `priority_id`; an unknown priority_id is 422. A custom field id that does not apply to the
  project and tracker is dropped without a word, so `open` checks that the created issue
  carries the key (and fails for good if not: the route's key_field is wrong).
- Nothing makes a create idempotent: a create sent twice is two issues. The dispatcher asks
  find() before a retry of unknown outcome.
- GET /issues.json filters by a custom field, but the short form `cf_N=value` reads a value
  that starts with ~ ! * ^ $ = as an operator and splits it at |. `find` uses the long form
  (`f[]=cf_N`, `op[cf_N]==`, `v[cf_N][]=value`), which takes the value whole, and checks each
  answer's value exactly besides. The short form lists open issues only unless `status_id` says
  otherwise; `find` names the status filter `*` (any) in the long form, where leaving it out
  would also list every status. `sort=id:desc` puts the newest first. `op[cf_N]=^` is
  "starts with" (open_tickets); `limit` is at most 100, with `offset` and `total_count`.
- PUT /issues/N.json {"issue": {notes, private_notes: true, status_id}} answers 204 with no
  body, and a private note is seen only by those allowed to see private notes. The user needs
  the "Set notes as private" permission: without it Redmine makes the note public, silently;
  without "Add notes" it drops the note, silently. So `note` reads the issue's journals back and
  fails for good, naming the permission, when its newest note is not this one, private (a
  check that cannot be made is let go: a retry would add the note again).
  A status_id that does not exist, or that the workflow does not allow the user, is ignored
  with 204 too, so a status change is read back and an unchanged status is a permanent error.
- An issue that does not exist is 404; errors are 422 {"errors": ["Subject cannot be blank"]}.
- The status of an issue carries `is_closed` (as 5.0.4 sends it). Redmine's default
  "Resolved" is not closed in Redmine's sense: probe resolves to `resolve_status` (Resolved, 3)
  and counts that status as closed too.

status(): a closed status or `resolve_status` is "closed"; an assignee, or a status in
`taken_statuses` (In Progress), is "acknowledged"; anything else is "open"; 404 is "gone".
probe's own `reopen` sets `reopen_status` (New), which may not be a taken status, so a reopened
issue nobody is assigned to counts as open again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlencode

from pydantic import PositiveInt, model_validator

from probe.helpdesks import base
from probe.helpdesks.base import BaseUrl, PriorityMap, RouteBase, TicketError, TicketState
from probe.helpdesks.http import Authorization, Fields, Http
from probe.secrets import EnvRef

SUBJECT_CHARS = 255
PAGE = 100  # Redmine's largest page
MAX_PAGES = 100  # open_tickets reads at most 10,000 issues: a helpdesk's total_count is data


class Route(RouteBase):
    backend: Literal["redmine"]
    url: BaseUrl
    key: EnvRef | None = None  # the API key of the user probe acts as
    key_file: Path | None = None
    project: str  # its identifier ("ops") or number
    key_field: PositiveInt  # the id of the issue custom field (string) that holds the key
    tracker: PositiveInt | None = None  # a tracker id; else the project's default
    priorities: PriorityMap[PositiveInt] = {"urgent": 4, "high": 3, "normal": 2, "low": 1}
    resolve_status: PositiveInt = 3  # Resolved, in Redmine's default data
    reopen_status: PositiveInt = 1  # New
    taken_statuses: list[PositiveInt] = [2]  # In Progress: someone works the issue

    secrets: ClassVar[dict[str, bool]] = {"key": True}

    @model_validator(mode="after")
    def _reopen_is_open_and_untaken(self) -> Route:
        if self.reopen_status == self.resolve_status:
            raise ValueError("reopen_status must differ from resolve_status: a reopened issue "
                             "would still count as resolved")
        if self.reopen_status in self.taken_statuses:
            raise ValueError("reopen_status must not be one of taken_statuses: an issue probe "
                             "reopens would count as taken, and never escalate")
        return self

    def link(self, ref: str) -> str | None:
        return f"{self.url}/issues/{quote(ref, safe='')}"


class Backend(base.Backend[Route]):
    def __init__(self, name: str, route: Route, *, database: Path | None = None) -> None:
        super().__init__(name, route, database=database)
        key = Authorization("key", str, header="X-Redmine-API-Key")
        self._http = Http(route, route.url, authorization=key, words=reasons,
                          headers={"Accept": "application/json"})
        self._me: int | None = None  # the user id of the route's key

    async def find(self, key: str) -> str | None:
        field = f"cf_{self.route.key_field}"
        query = urlencode([
            ("project_id", self.route.project), ("sort", "id:desc"), ("limit", "100"),
            ("f[]", "status_id"), ("op[status_id]", "*"),
            ("f[]", field), (f"op[{field}]", "="), (f"v[{field}][]", key),
        ])
        found = (await self._http.request("GET", f"/issues.json?{query}")).fields()
        ids = [issue_id for issue in found.objects("issues")
               if (issue_id := issue.number("id")) and self._key_of(issue) == key]
        return str(max(ids)) if ids else None

    async def open_tickets(self, prefix: str) -> list[tuple[str, str]] | None:
        field = f"cf_{self.route.key_field}"
        tickets: list[tuple[str, str]] = []
        for page in range(MAX_PAGES):
            query = urlencode([
                ("project_id", self.route.project), ("sort", "id"), ("limit", str(PAGE)),
                ("offset", str(page * PAGE)),
                ("f[]", "status_id"), ("op[status_id]", "o"),
                ("f[]", field), (f"op[{field}]", "^"), (f"v[{field}][]", prefix),
            ])
            found = (await self._http.request("GET", f"/issues.json?{query}")).fields()
            issues = found.objects("issues")
            for issue in issues:
                key, issue_id = self._key_of(issue), issue.number("id")
                # "starts with" is a LIKE, and Resolved is open to Redmine: both checked here
                if key and key.startswith(prefix) and issue_id and not self._closed(issue):
                    tickets.append((key, str(issue_id)))
            if len(issues) < PAGE or (page + 1) * PAGE >= (found.number("total_count") or 0):
                break
        return tickets

    async def open(self, ticket: base.Ticket) -> str:
        route = self.route
        description = ticket.body
        if ticket.follows and ticket.follows.isdigit():
            description = f"Follows #{ticket.follows}.\n\n{description}"  # Redmine links #N
        fields: dict[str, Any] = {
            "project_id": route.project,
            "subject": subject(ticket.title),
            "description": description,
            "priority_id": route.priorities[ticket.priority],
            "custom_fields": [{"id": route.key_field, "value": ticket.key}],
        }
        if route.tracker is not None:
            fields["tracker_id"] = route.tracker
        response = await self._http.request("POST", "/issues.json", json_body={"issue": fields})
        created = response.fields().object("issue")
        ref = created.number("id") if created is not None else None
        if created is None or not ref:
            raise TicketError(f"{response.what}: HTTP {response.status} without an issue id")
        if self._key_of(created) != ticket.key:
            raise TicketError(
                f"Redmine made issue {ref} without the incident key: custom field "
                f"{route.key_field} (the route's key_field) is not an issue field of project "
                f"{route.project!r} and its tracker, so probe could not find the issue again",
                permanent=True)
        return str(ref)

    async def note(self, ref: str, text: str) -> None:
        await self._update(ref, {"notes": text, "private_notes": True})
        try:
            journal = await self._my_last_note(ref)
        except TicketError as err:
            if err.permanent:
                raise
            return  # the note is in: a retry would add it twice, for a check that can wait
        project = self.route.project
        if journal is None or _lines(journal.text("notes")) != _lines(text):
            raise TicketError(f"Redmine dropped probe's note on issue {ref} without a word: "
                              f"the user lacks the Add notes permission in project {project!r}",
                              permanent=True)
        if not journal.flag("private_notes"):
            raise TicketError(f"Redmine made probe's note on issue {ref} public: the user lacks "
                              f"the Set notes as private permission in project {project!r}",
                              permanent=True)

    async def resolve(self, ref: str, text: str) -> None:
        issue = await self._issue(ref)
        if issue is None:
            return  # nothing left to resolve
        if self._closed(issue):
            await self.note(ref, text)  # closed by someone: it stays as they left it
        else:
            await self._move(ref, text, self.route.resolve_status)

    async def reopen(self, ref: str, text: str) -> None:
        issue = await self._issue(ref)
        if issue is None:
            raise TicketError(f"Redmine issue {ref} no longer exists", permanent=True)
        if self._closed(issue):
            await self._move(ref, text, self.route.reopen_status)
        else:
            await self.note(ref, text)  # someone reopened it already

    async def status(self, ref: str) -> TicketState:
        issue = await self._issue(ref)
        if issue is None:
            return "gone"
        if self._closed(issue):
            return "closed"
        status = issue.object("status")
        status_id = status.number("id") if status is not None else None
        if issue.object("assigned_to") is not None or status_id in self.route.taken_statuses:
            return "acknowledged"
        return "open"

    async def close(self) -> None:
        await self._http.close()

    # --- helpers -------------------------------------------------------------------------------

    async def _issue(self, ref: str) -> Fields | None:
        response = await self._http.request("GET", issue_path(ref), ok=(404,))
        if response.status == 404:
            # Without login_required a bad key is anonymous, who sees 404 for what it may not
            # see: the key must work before the issue counts as gone.
            await self._http.request("GET", "/users/current.json")
            return None
        issue = response.fields().object("issue")
        if issue is None:
            raise TicketError(f"{response.what}: HTTP {response.status} without an issue")
        return issue

    async def _my_last_note(self, ref: str) -> Fields | None:
        """The newest journal with text that this key's user wrote on the issue."""
        if self._me is None:
            response = await self._http.request("GET", "/users/current.json")
            user = response.fields().object("user")
            self._me = user.number("id") if user is not None else None
            if not self._me:
                raise TicketError(f"{response.what}: Redmine did not say who this key is")
        response = await self._http.request("GET", issue_path(ref),
                                            params={"include": "journals"})
        issue = response.fields().object("issue")
        journals = issue.objects("journals") if issue is not None else []
        for journal in reversed(journals):
            user = journal.object("user")
            if user is not None and user.number("id") == self._me and journal.text("notes"):
                return journal
        return None

    async def _update(self, ref: str, change: dict[str, Any]) -> None:
        await self._http.request("PUT", issue_path(ref), json_body={"issue": change})

    async def _move(self, ref: str, text: str, status_id: int) -> None:
        """The note and the new status in one update, then the status read back: Redmine
        answers 204 to a status it did not set."""
        await self._update(ref, {"notes": text, "private_notes": True, "status_id": status_id})
        issue = await self._issue(ref)
        status = issue.object("status") if issue is not None else None
        now = status.number("id") if status is not None else None
        if now != status_id:
            name = (status.text("name") if status is not None else None) or "missing"
            raise TicketError(
                f"Redmine left issue {ref} in status {name!r}, not status {status_id}: no such "
                "status, or the workflow does not let this user set it (the route's "
                "resolve_status and reopen_status)", permanent=True)

    def _closed(self, issue: Fields) -> bool:
        status = issue.object("status")
        if status is None:
            return False
        return bool(status.flag("is_closed")) or status.number("id") == self.route.resolve_status

    def _key_of(self, issue: Fields) -> str | None:
        for field in issue.objects("custom_fields"):
            if field.number("id") == self.route.key_field:
                return field.text("value")
        return None


def issue_path(ref: str) -> str:
    if not ref.isdigit():
        raise TicketError(f"{ref!r} is not a Redmine issue number", permanent=True)
    return f"/issues/{ref}.json"


def _lines(text: str | None) -> str:
    """Text as Redmine may give it back: with CRLF line ends."""
    return (text or "").replace("\r\n", "\n")


def subject(title: str) -> str:
    line = " ".join(title.split()) or "probe"
    return line if len(line) <= SUBJECT_CHARS else line[: SUBJECT_CHARS - 1] + "…"


def reasons(error: dict[str, Any]) -> str:
    """Redmine's reasons from an error body ({"errors": [...]})."""
    errors = error.get("errors")
    return "; ".join(map(str, errors)) if isinstance(errors, list) else ""


HELPDESK = base.Helpdesk(route=Route, backend=Backend)
