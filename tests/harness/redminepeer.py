"""A real Redmine 5 on loopback for the redmine backend's tests.

`start-redmine.sh` (shared/peers/redmine, next to the repository; REDMINE_START_SCRIPT
overrides) installs Redmine from Debian's packages, starts it on 127.0.0.1:8282 with its own
SQLite database, a project `ops` and an issue custom field IncidentKey, and prints what a client
needs (URL, API key, ids). It is idempotent: the first call takes about 20 s (two minutes on a
slow mirror), later ones 0.1 s. Redmine's database outlives the test run, so every test uses
keys of its own.

`RedmineApi` reads and changes Redmine through its REST API directly, to check what the backend
did (and to act as the human who takes or closes an issue) without going through the code
under test.

tests/conftest.py registers this module as a plugin: a test asks for the fixtures by the names
`redmine_peer` and `redmine_api`. Without root, or where Redmine cannot be installed, the tests
that need it are skipped, unless PROBE_REQUIRE_REDMINE is set (CI): then they fail.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from probe.helpdesks.redmine import Route

REPO = Path(__file__).resolve().parents[2]
SCRIPT_PLACES = (
    REPO / "shared/peers/redmine/start-redmine.sh",
    REPO.parent / "shared/peers/redmine/start-redmine.sh",
)


@dataclass(frozen=True)
class RedminePeer:
    url: str  # http://127.0.0.1:8282
    key: str  # the admin's API key
    project: str  # ops
    key_field: int  # the id of the IncidentKey custom field
    statuses: dict[str, int]  # NEW, INPROGRESS, RESOLVED, CLOSED
    priorities: dict[str, int]  # LOW, NORMAL, HIGH, URGENT, IMMEDIATE

    def settings(self, directory: Path) -> dict[str, Any]:
        """A route's settings for this Redmine, the key in a file in `directory`."""
        key_file = directory / "redmine-key"
        key_file.write_text(self.key + "\n", encoding="utf-8")
        return {"backend": "redmine", "url": self.url, "key_file": str(key_file),
                "project": self.project, "key_field": self.key_field, "timeout": "10s"}

    def route(self, directory: Path, **settings: Any) -> Route:
        return Route.model_validate({**self.settings(directory), **settings})


def _script() -> Path | None:
    if "REDMINE_START_SCRIPT" in os.environ:
        return Path(os.environ["REDMINE_START_SCRIPT"])
    return next((place for place in SCRIPT_PLACES if place.is_file()), None)


def _unavailable(why: str) -> None:
    if os.environ.get("PROBE_REQUIRE_REDMINE"):
        pytest.fail(why)  # CI tests against the real Redmine: a missing peer fails, never skips
    pytest.skip(why)


def _start() -> RedminePeer:
    script = _script()
    if script is None:
        _unavailable(f"no start-redmine.sh in {', '.join(map(str, SCRIPT_PLACES))} "
                     "(set REDMINE_START_SCRIPT)")
        raise AssertionError("unreachable")
    if os.geteuid() != 0:
        _unavailable("start-redmine.sh installs Redmine with apt-get and needs root")
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=900,
                          check=False)
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        if "apt" in done.stderr:
            _unavailable(f"cannot install Redmine: {why[0]}")
        pytest.fail(f"start-redmine.sh failed: {done.stderr[-2000:]}")
    env: dict[str, str] = {}
    for line in done.stdout.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            env[name] = value

    def ids(prefix: str) -> dict[str, int]:
        return {name.removeprefix(prefix): int(value) for name, value in env.items()
                if name.startswith(prefix)}

    return RedminePeer(url=env["REDMINE_URL"], key=env["REDMINE_KEY"],
                       project=env["REDMINE_PROJECT"], key_field=int(env["REDMINE_CF_ID"]),
                       statuses=ids("REDMINE_STATUS_"), priorities=ids("REDMINE_PRIORITY_"))


@pytest.fixture(scope="session", name="redmine_peer")
def redmine_peer_fixture() -> Iterator[RedminePeer]:
    yield _start()


class RedmineApi:
    """Redmine's REST API, straight: what a test uses to see for itself."""

    def __init__(self, peer: RedminePeer, session: aiohttp.ClientSession) -> None:
        self.peer = peer
        self._session = session

    async def call(self, method: str, path: str, body: Any = None,
                   query: list[tuple[str, str]] | None = None) -> Any:
        url = self.peer.url + path + (f"?{urlencode(query)}" if query else "")
        async with self._session.request(method, url, json=body) as response:
            assert response.status < 300, (
                f"{method} {path}: {response.status} {await response.text()}")
            return await response.json(content_type=None) if response.status != 204 else None

    async def issue(self, ref: str) -> dict[str, Any]:
        data = await self.call("GET", f"/issues/{ref}.json", query=[("include", "journals")])
        issue: dict[str, Any] = data["issue"]
        return issue

    async def update(self, ref: str, **fields: Any) -> None:
        await self.call("PUT", f"/issues/{ref}.json", {"issue": fields})

    async def key_of(self, ref: str) -> str | None:
        return next((cf["value"] for cf in (await self.issue(ref))["custom_fields"]
                     if cf["id"] == self.peer.key_field), None)

    async def notes(self, ref: str) -> list[tuple[str, str]]:
        """("private note" or "public note", text) of each journal with text, oldest first."""
        return [("private note" if j["private_notes"] else "public note", j["notes"])
                for j in (await self.issue(ref))["journals"] if j["notes"]]

    async def member(self, role: str) -> str:
        """The API key of a new user who is `role` (Reporter, Developer) in the project."""
        login = f"probe-{uuid.uuid4().hex[:12]}"
        roles = (await self.call("GET", "/roles.json"))["roles"]
        made = await self.call("POST", "/users.json", {"user": {
            "login": login, "firstname": "Test", "lastname": role, "mail": f"{login}@example.net",
            "password": uuid.uuid4().hex}})
        await self.call("POST", f"/projects/{self.peer.project}/memberships.json", {"membership": {
            "user_id": made["user"]["id"],
            "role_ids": [r["id"] for r in roles if r["name"] == role]}})
        key: str = made["user"]["api_key"]
        return key

    async def with_key(self, key: str) -> list[int]:
        """The issues whose key field is exactly `key`, open or closed (the long form of the
        filter: the short one reads ~, ! and | in a value as operators)."""
        field = f"cf_{self.peer.key_field}"
        found = await self.call("GET", "/issues.json", query=[
            ("project_id", self.peer.project), ("f[]", "status_id"), ("op[status_id]", "*"),
            ("f[]", field), (f"op[{field}]", "="), (f"v[{field}][]", key), ("limit", "100")])
        return [issue["id"] for issue in found["issues"]]


@pytest.fixture(name="redmine_api")
async def redmine_api_fixture(redmine_peer: RedminePeer) -> AsyncIterator[RedmineApi]:
    async with aiohttp.ClientSession(headers={"X-Redmine-API-Key": redmine_peer.key}) as session:
        yield RedmineApi(redmine_peer, session)
