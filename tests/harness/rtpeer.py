"""A real Request Tracker 5 on loopback for the rt backend's tests.

`start-rt.sh` (shared/peers/rt, next to the repository; RT_START_SCRIPT overrides) installs RT
from Debian's packages, starts it on 127.0.0.1:8181 with its own SQLite database and a ticket
custom field IncidentKey on queue General, and prints its credentials. It is idempotent: the
first call takes about 40 s, later ones 0.1 s. RT's database outlives the test run, so every
test uses keys of its own.

`RtApi` reads and changes RT through REST2 directly, to check what the backend did (and to act
as the human who takes a ticket) without going through the code under test.

tests/conftest.py registers this module as a plugin: a test asks for the fixtures by the names
`rt_peer` and `rt_api`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from probe.helpdesks.rt import Route

KEY_FIELD = "IncidentKey"
REPO = Path(__file__).resolve().parents[2]
SCRIPT_PLACES = (
    REPO / "shared/peers/rt/start-rt.sh",
    REPO.parent / "shared/peers/rt/start-rt.sh",
)


@dataclass(frozen=True)
class RtPeer:
    url: str  # http://127.0.0.1:8181
    token: str  # root's auth token

    def route(self, tmp_path: Path, **settings: Any) -> Route:
        """A route to this RT with the token in a file, queue General and the key field."""
        token_file = tmp_path / "rt-token"
        token_file.write_text(self.token + "\n", encoding="utf-8")
        return Route.model_validate(
            {
                "backend": "rt",
                "url": self.url,
                "token_file": str(token_file),
                "key_field": KEY_FIELD,
                "timeout": "10s",
                **settings,
            }
        )


def _script() -> Path | None:
    if "RT_START_SCRIPT" in os.environ:
        return Path(os.environ["RT_START_SCRIPT"])
    return next((place for place in SCRIPT_PLACES if place.is_file()), None)


def _unavailable(why: str) -> None:
    if os.environ.get("PROBE_REQUIRE_RT"):
        pytest.fail(why)  # CI tests against the real RT: a missing peer fails, never skips
    pytest.skip(why)


def _start() -> RtPeer:
    script = _script()
    if script is None:
        _unavailable(f"no start-rt.sh in {', '.join(map(str, SCRIPT_PLACES))} "
                     "(set RT_START_SCRIPT)")
        raise AssertionError("unreachable")
    if os.geteuid() != 0:
        _unavailable("start-rt.sh installs RT with apt-get and needs root")
    done = subprocess.run(
        [str(script)],
        env={**os.environ, "RT_CF": KEY_FIELD},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        if "apt" in done.stderr:
            _unavailable(f"cannot install Request Tracker: {why[0]}")
        pytest.fail(f"start-rt.sh failed: {done.stderr[-2000:]}")
    env: dict[str, str] = {}
    for line in done.stdout.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            env[name] = value
    return RtPeer(url=env["RT_URL"], token=env["RT_TOKEN"])


@pytest.fixture(scope="session", name="rt_peer")
def rt_peer_fixture() -> Iterator[RtPeer]:
    yield _start()


class RtApi:
    """RT's REST2, straight: what a test uses to see for itself."""

    def __init__(self, peer: RtPeer, session: aiohttp.ClientSession) -> None:
        self.base = peer.url + "/REST/2.0"
        self._session = session

    async def call(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        async with self._session.request(
            method, self.base + path, json=body, params=params or None
        ) as response:
            assert response.status < 300, (
                f"{method} {path}: {response.status} {await response.text()}"
            )
            return await response.json(content_type=None)

    async def ticket(self, ref: str) -> dict[str, Any]:
        data: dict[str, Any] = await self.call("GET", f"/ticket/{ref}")
        return data

    async def create(self, **fields: Any) -> str:
        body = {"Queue": "General", "Content": "made by the test", "ContentType": "text/plain"}
        created = await self.call("POST", "/ticket", {**body, **fields})
        return str(created["id"])

    async def transactions(self, ref: str) -> list[tuple[str, str]]:
        """(transaction type, text) of each message on the ticket, oldest first."""
        types = {
            item["id"]: item["Type"]
            for item in (await self.call("GET", f"/ticket/{ref}/history", fields="Type"))["items"]
        }
        found = await self.call(
            "GET", f"/ticket/{ref}/attachments", fields="Content,TransactionId", per_page="100"
        )
        return [
            (types.get(item["TransactionId"], "?"), item["Content"].strip())
            for item in found["items"]
            if item.get("Content")
        ]

    async def links(self, ref: str, kind: str) -> list[str]:
        return [
            str(link["id"])
            for link in (await self.ticket(ref))["_hyperlinks"]
            if link.get("ref") == kind
        ]


@pytest.fixture(name="rt_api")
async def rt_api_fixture(rt_peer: RtPeer) -> AsyncIterator[RtApi]:
    headers = {"Authorization": f"token {rt_peer.token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        yield RtApi(rt_peer, session)
