"""Sites that vote (issue 13), with real `probe run` agents on a real PostgreSQL, ticketing into
a local server that speaks Zendesk's API; what the helpdesk holds after each sequence.

Here every site sees the same targets (all on loopback): what the votes do when the sites agree,
and when a site falls silent. The sites that see differently, each its own network namespace,
are in tests/test_cluster_netns.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web

from tests.harness.daemon import ProbeProcess, Target
from tests.harness.fake_zendesk import EMAIL, TOKEN, FakeZendesk, serve_zendesk
from tests.harness.httpserver import serve_app
from tests.harness.ports import free_port
from tests.harness.proc import PROBE
from tests.harness.wait import until

TTL = 2.0
SITES = ("eu-west", "us-east", "ap-south")


@pytest.fixture
async def targets() -> AsyncIterator[list[Target]]:
    found = [Target() for _ in range(3)]
    app = web.Application()
    for n, t in enumerate(found):
        app.router.add_get(f"/{n}/health", t.handle)
    async with serve_app(app) as port:
        for t in found:
            t.port = port
        yield found


@pytest.fixture
async def zendesk() -> AsyncIterator[FakeZendesk]:
    async with serve_zendesk() as fake:
        yield fake


class Sites:
    """Agents of several sites on one database, each a `probe run` with its own directory."""

    def __init__(self, tmp_path: Path, dsn: str, desk: FakeZendesk, targets: list[Target],
                 quorum: int = 2, silent_after: str = "3m") -> None:
        self.tmp_path, self.dsn, self.desk, self.targets = tmp_path, dsn, desk, targets
        self.quorum, self.silent_after = quorum, silent_after
        self.agents: dict[str, ProbeProcess] = {}
        self.token = tmp_path / "zendesk-token"
        self.token.write_text(TOKEN + "\n")

    def config(self, name: str, site: str, port: int) -> str:
        checks = "\n".join(f"""
  - name: web{n}
    http: {{url: "http://127.0.0.1:{t.port}/{n}/health"}}""" for n, t in enumerate(self.targets))
        return f"""
agent: {{name: {name}, state_dir: {self.tmp_path}/{name}/state, listen: "127.0.0.1:{port}"}}
cluster:
  database: env:PROBE_DATABASE
  site: {site}
  sites: [{", ".join(SITES)}]
  quorum: {self.quorum}
  alert_route: oncall
  agent_ttl: {TTL}s
  silent_after: {self.silent_after}
defaults:
  interval: 300ms
  retry_interval: 200ms
  timeout: 300ms
  failure_threshold: 3
  success_threshold: 2
  ticket: {{route: desk}}
ticketing:
  routes:
    desk: {{backend: zendesk, url: "{self.desk.url}", email: {EMAIL},
            token_file: {self.token}, timeout: 5s}}
    oncall: {{backend: zendesk, url: "{self.desk.url}", email: {EMAIL},
              token_file: {self.token}, timeout: 5s, group_id: 99}}
checks:{checks}
"""

    def start(self, name: str, site: str) -> ProbeProcess:
        if name in self.agents:
            return self.agents[name].start()
        port = free_port()
        directory = self.tmp_path / name
        directory.mkdir(exist_ok=True)
        config = directory / "probe.yaml"
        config.write_text(self.config(name, site, port))
        agent = ProbeProcess(config, port, directory / "state", env={"PROBE_DATABASE": self.dsn})
        self.agents[name] = agent
        return agent.start()

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{a.log_text()[-3000:]}" for n, a in self.agents.items())

    def votes(self, check: str) -> dict[str, str]:
        with psycopg.connect(self.dsn) as conn:
            if conn.execute("SELECT to_regclass('votes')").fetchone() == (None,):
                return {}
            rows = conn.execute("SELECT site, value FROM votes WHERE check_name = %s",
                                (check,)).fetchall()
        return {str(s): str(v) for s, v in rows}

    def tickets(self, group: int | None = None) -> list[dict[str, Any]]:
        return [t for t in self.desk.tickets.values() if t.get("group_id") == group]


@pytest.fixture
def sites(tmp_path: Path, pg_database: str, zendesk: FakeZendesk) -> Iterator[
        Callable[..., Sites]]:
    made: list[Sites] = []

    def make(targets: list[Target], **options: Any) -> Sites:
        made.append(Sites(tmp_path, pg_database, zendesk, targets, **options))
        return made[-1]

    yield make
    for s in made:
        for agent in s.agents.values():
            agent.stop()


async def every_site_votes(s: Sites, check: str, value: str) -> None:
    await until(f"every site to vote {value} on {check}",
                lambda: s.votes(check) == dict.fromkeys(SITES, value), timeout=30,
                context=s.logs)


async def test_every_site_sees_it_failing_one_ticket_naming_the_sites_solved_on_recovery(
    sites: Callable[..., Sites], targets: list[Target]
) -> None:
    s = sites(targets)
    for site in SITES:
        s.start(f"{site}-a", site)
    await every_site_votes(s, "web1", "healthy")
    targets[1].down = True
    (ticket,) = await until("one ticket", s.tickets, timeout=30, context=s.logs)
    await asyncio.sleep(1.5)
    assert len(s.tickets()) == 1, s.tickets()
    body = ticket["comment"]["body"] if "comment" in ticket else json.dumps(ticket)
    for site in SITES:
        assert site in body, body
    targets[1].down = False
    await until("the ticket solved", lambda: s.tickets()[0]["status"] == "solved",
                timeout=30, context=s.logs)
    assert len(s.tickets()) == 1


async def test_probe_cluster_votes_shows_each_sites_vote_and_the_rule(
    sites: Callable[..., Sites], targets: list[Target]
) -> None:
    s = sites(targets)
    for site in SITES:
        s.start(f"{site}-a", site)
    await every_site_votes(s, "web0", "healthy")
    agent = next(iter(s.agents.values()))
    done = await asyncio.to_thread(
        subprocess.run, [*PROBE, "cluster", "votes", "web0", "-c", str(agent.config)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PROBE_DATABASE": s.dsn})
    assert done.returncode == 0, done.stdout + done.stderr
    for site in SITES:
        assert site in done.stdout
    assert "healthy: 3 healthy" in done.stdout
