"""Sites that vote (issue 13), with real `probe run` agents on a real PostgreSQL, ticketing into
a local server that speaks Zendesk's API; what the helpdesk holds after each sequence.

Here every site sees the same targets (all on loopback): what the votes do when the sites agree,
and when a site falls silent. The sites that see differently, each its own network namespace,
are in tests/test_cluster_netns.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.harness.daemon import Target
from tests.harness.fake_zendesk import FakeZendesk, serve_zendesk
from tests.harness.httpserver import serve_app
from tests.harness.proc import PROBE
from tests.harness.voting import ONCALL, SITES, Voting
from tests.harness.wait import until


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


@pytest.fixture
def sites(tmp_path: Path, pg_database: str, zendesk: FakeZendesk) -> Iterator[
        Callable[..., Voting]]:
    made: list[Voting] = []

    def make(targets: list[Target], **options: Any) -> Voting:
        made.append(Voting(tmp_path, pg_database, zendesk, zendesk.url,
                           f"http://127.0.0.1:{targets[0].port}", len(targets), **options))
        return made[-1]

    yield make
    for s in made:
        s.stop()


async def start_sites(s: Voting, check: str) -> None:
    """An agent in each site; once every site votes healthy on `check`."""
    for site in SITES:
        s.start(f"{site}-a", site)
    await every_site_votes(s, check, "healthy")


async def every_site_votes(s: Voting, check: str, value: str) -> None:
    async def voted() -> bool:
        return await s.votes_of(check) == dict.fromkeys(SITES, value)

    await until(f"every site to vote {value} on {check}", voted, timeout=30,
                context=s.logs)


async def test_every_site_sees_it_failing_one_ticket_naming_the_sites_solved_on_recovery(
    sites: Callable[..., Voting], targets: list[Target]
) -> None:
    s = sites(targets)
    await start_sites(s, "web1")
    targets[1].down = True
    (ticket,) = await until("one ticket", s.tickets, timeout=30, context=s.logs)
    await asyncio.sleep(1.5)
    assert len(s.tickets()) == 1, s.tickets()
    body = Voting.text(ticket)
    for site in SITES:
        assert site in body, body
    # The agent that decides for web1 serves each site's vote and the verdict.
    def served(line: str) -> list[float]:
        return [v for a in s.agents.values() if (v := a.metric(line)) is not None]

    labels = 'check="web1",kind="http",service=""'
    assert served(f'probe_check_quorum{{{labels},state="failing"}}') == [1.0]
    for site in SITES:
        assert served(f'probe_check_site_vote{{{labels},site="{site}",vote="failing"}}') \
            == [1.0]
    assert served("probe_cluster_sites_live") == [3.0, 3.0, 3.0]
    targets[1].down = False
    await until("the ticket solved", lambda: s.tickets()[0]["status"] == "solved",
                timeout=30, context=s.logs)
    assert len(s.tickets()) == 1
    await until("the verdict healthy", lambda: served(
        f'probe_check_quorum{{{labels},state="healthy"}}') == [1.0], timeout=10)


async def test_probe_cluster_votes_shows_each_sites_vote_and_the_rule(
    sites: Callable[..., Voting], targets: list[Target]
) -> None:
    s = sites(targets)
    await start_sites(s, "web0")
    agent = next(iter(s.agents.values()))
    done = await asyncio.to_thread(
        subprocess.run, [*PROBE, "cluster", "votes", "web0", "-c", str(agent.config)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PROBE_DATABASE": s.dsn})
    assert done.returncode == 0, done.stdout + done.stderr
    for site in SITES:
        assert site in done.stdout
    assert "healthy: 3 healthy" in done.stdout


async def test_a_site_whose_agents_are_all_gone_is_ticketed_on_the_alert_route(
    sites: Callable[..., Voting], targets: list[Target]
) -> None:
    """And the other two sites still decide; the alert's ticket is solved when the site is
    heard again."""
    s = sites(targets, silent_after="4s")
    await start_sites(s, "web0")
    s.agents["ap-south-a"].kill9()
    alerts = await until("the alert", lambda: s.tickets(ONCALL), timeout=30, context=s.logs)
    (alert,) = alerts
    assert "site ap-south has been silent for 4s: its checks are decided by eu-west and " \
           "us-east" in Voting.text(alert)
    targets[0].down = True
    (ticket,) = await until("a ticket about web0", s.tickets, timeout=30, context=s.logs)
    assert "2 of 3 sites see it failing (eu-west, us-east)" in Voting.text(ticket)
    assert "ap-south: silent" in Voting.text(ticket)
    targets[0].down = False
    await until("web0's ticket solved", lambda: s.tickets()[0]["status"] == "solved",
                timeout=30, context=s.logs)
    agent = s.agents["eu-west-a"]
    done = await asyncio.to_thread(
        subprocess.run, [*PROBE, "cluster", "status", "-c", str(agent.config)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PROBE_DATABASE": s.dsn})
    assert done.returncode == 1, done.stdout + done.stderr  # a site has no live agent
    assert "ap-south: NO AGENT LIVE, silent for" in done.stdout, done.stdout
    assert "trouble: site ap-south has been silent for 4s" in done.stdout, done.stdout
    s.start("ap-south-a", "ap-south")
    await until("the alert solved", lambda: s.tickets(ONCALL)[0]["status"] == "solved",
                timeout=30, context=s.logs)
    assert len(s.tickets(ONCALL)) == 1 and len(s.tickets()) == 1


async def test_checks_no_quorum_can_decide_are_ticketed_on_the_alert_route(
    sites: Callable[..., Voting], targets: list[Target]
) -> None:
    s = sites(targets, silent_after="3s")
    await start_sites(s, "web0")
    s.agents["ap-south-a"].kill9()
    s.agents["us-east-a"].kill9()

    def said() -> list[str]:
        return [Voting.text(t) for t in s.tickets(ONCALL)]

    await until("the quorum's alert", lambda: any(
        "probe cannot decide 3 checks: only eu-west is alive, quorum is 2" in t
        for t in said()), timeout=30, context=s.logs)
    assert len(s.tickets(ONCALL)) == 3, said()  # and each silent site's
    # No ticket about a target: one site cannot make a quorum of 2, down or not.
    targets[1].down = True
    await asyncio.sleep(3)
    assert s.tickets() == []


async def test_an_internal_target_is_checked_and_decided_by_its_one_site(
    sites: Callable[..., Voting], targets: list[Target]
) -> None:
    s = sites(targets, only={2: ("eu-west",)})
    for site in SITES:
        s.start(f"{site}-a", site)
    async def eu_west_alone() -> bool:
        return await s.votes_of("web2") == {"eu-west": "healthy"}

    await until("eu-west alone to vote on web2", eu_west_alone, timeout=30, context=s.logs)
    targets[2].down = True
    (ticket,) = await until("a ticket about web2", s.tickets, timeout=30, context=s.logs)
    text = Voting.text(ticket)
    assert "1 of 1 site sees it failing (eu-west), quorum 1" in text, text
    assert "us-east" not in text.split("probe key:")[0].split("Why:")[1], text
    assert await s.votes_of("web2") == {"eu-west": "failing"}  # the others never ran it


async def test_status_shows_the_sites_verdict_and_each_sites_view(
    sites: Callable[..., Voting], targets: list[Target]
) -> None:
    s = sites(targets)
    await start_sites(s, "web0")
    targets[0].down = True
    await until("one ticket", s.tickets, timeout=30, context=s.logs)
    agent = s.agents["us-east-a"]  # any agent shows the whole cluster

    def web0() -> dict[str, Any]:
        return next(c for c in agent.status()["checks"] if c["name"] == "web0")

    # Every site's failing vote, as the deciding agent has it (the third may come after the
    # quorum's two).
    await until("the failing verdict in the status", lambda: web0().get("quorum") == "failing"
                and {v["vote"] for v in web0()["sites"]} == {"failing"}, timeout=10,
                context=lambda: str(web0()))
    assert [v["site"] for v in web0()["sites"]] == list(SITES)
    assert web0()["verdict"].startswith("3 of 3 sites see it failing") or \
        web0()["verdict"].startswith("2 of 3 sites see it failing")
    shown = await asyncio.to_thread(agent.command, "status")
    line = next(x for x in shown.splitlines() if x.startswith("web0 "))
    assert " FAILING " in line, shown
