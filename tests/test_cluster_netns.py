"""Sites that vote, each site its own network namespace (issue 13): real `probe run` agents in
three sites, the targets and a server that speaks Zendesk's API in a core namespace every site
reaches over its own link, PostgreSQL on a unix socket. A site is cut from the targets with an
nftables rule inside its namespace, as its own uplink or firewall would. What is asserted is
what the helpdesk holds.

- one site of three failing at quorum 2: no ticket, and the disagreement is in the votes;
- two sites failing: one ticket, naming what each site saw; solved when they see it again;
- agents killed at random while two sites fail: still one ticket;
- the target hung for every site: one ticket, solved on recovery;
- one site's agents frozen (SIGSTOP) and thawed: no duplicate, no false resolve;
- every agent of one site killed: the alert route hears of the silent site, and the two
  others still decide.

The targets and the helpdesk are served by the test's own event loop: nothing here may block
it (a blocking call makes every site's checks time out), hence the threads.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.harness.daemon import Target
from tests.harness.fake_zendesk import FakeZendesk
from tests.harness.sites import Sites, topology
from tests.harness.voting import ONCALL, SITES, TTL, Voting
from tests.harness.wait import until

CHECKS = 3


class Hanging(Target):
    """A target that, while `hung`, accepts and never answers."""

    def __init__(self) -> None:
        super().__init__()
        self.hung = False
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        if self.hung:
            await self.release.wait()
        return await super().handle(request)


@pytest.fixture
def net() -> Iterator[Sites]:
    with topology(list(SITES)) as made:
        yield made


@pytest.fixture
async def targets(net: Sites) -> AsyncIterator[tuple[list[Hanging], str]]:
    found = [Hanging() for _ in range(CHECKS)]
    app = web.Application()
    for n, t in enumerate(found):
        app.router.add_get(f"/{n}/health", t.handle)
    async with net.serve_app(app) as base:
        yield found, base
    for t in found:
        t.release.set()


@pytest.fixture
async def voting(net: Sites, targets: tuple[list[Hanging], str], tmp_path: Path,
                 pg_database: str) -> AsyncIterator[Voting]:
    desk = FakeZendesk()
    async with net.serve_app(desk.app()) as desk_url:
        desk.port = int(desk_url.rsplit(":", 1)[1])
        v = Voting(tmp_path, pg_database, desk, desk_url, targets[1], CHECKS)
        try:
            yield v
        finally:
            v.stop()
            desk.released.set()


def target_port(targets: tuple[list[Hanging], str]) -> int:
    return int(targets[1].rsplit(":", 1)[1])


async def start_all(v: Voting, net: Sites, per_site: int = 1) -> None:
    for site in SITES:
        for n in range(per_site):
            v.start(f"{site}-{'abc'[n]}", site, net[site])
    async def all_healthy() -> bool:
        for n in range(CHECKS):
            if await v.votes_of(f"web{n}") != dict.fromkeys(SITES, "healthy"):
                return False
        return True

    await until("every site to vote healthy on every check", all_healthy, timeout=60,
                context=v.logs)


async def one_ticket_each(v: Voting, checks: int = CHECKS) -> list[dict[str, Any]]:
    """One ticket per check (each is its own incident group), and still so a moment later:
    time enough for another agent to open a second."""
    await until(f"{checks} tickets", lambda: len(v.tickets()) >= checks, timeout=30,
                context=v.logs)
    await asyncio.sleep(2)
    tickets = v.tickets()
    keys = sorted(str(t["external_id"]) for t in tickets)
    assert len(tickets) == checks and len(set(keys)) == checks, keys
    return sorted(tickets, key=lambda t: str(t["subject"]))


def solved(v: Voting) -> bool:
    return all(t["status"] == "solved" for t in v.tickets())


async def heal_and_solve(net: Sites, v: Voting, *cut: str, timeout: float = 30) -> None:
    """The cut sites healed: every ticket solved, and still one per check."""
    for site in cut:
        net.heal(net[site])
    await until("the tickets solved", lambda: solved(v), timeout=timeout, context=v.logs)
    assert len(v.tickets()) == CHECKS


async def test_one_site_cut_from_the_targets_opens_no_ticket(
    net: Sites, targets: tuple[list[Hanging], str], voting: Voting
) -> None:
    await start_all(voting, net)
    net.cut(net["ap-south"], ports=[target_port(targets)])
    async def cut_votes_failing() -> bool:
        return (await voting.votes_of("web0"))["ap-south"] == "failing"

    await until("ap-south to vote failing", cut_votes_failing, timeout=30, context=voting.logs)
    await asyncio.sleep(3)  # failure_threshold 3 at 200 ms, many times over
    assert voting.tickets() == []
    assert await voting.votes_of("web0") == {"eu-west": "healthy", "us-east": "healthy",
                                             "ap-south": "failing"}
    agent = voting.agents["eu-west-a"]
    shown = await asyncio.to_thread(agent.command, "cluster", "votes", "web0")
    assert "HEALTHY" in shown and "ap-south: failing" in shown, shown


async def test_two_sites_cut_open_one_ticket_saying_what_each_site_saw(
    net: Sites, targets: tuple[list[Hanging], str], voting: Voting
) -> None:
    await start_all(voting, net)
    port = target_port(targets)
    net.cut(net["eu-west"], ports=[port], reject=True)
    net.cut(net["us-east"], ports=[port])
    for ticket in await one_ticket_each(voting):
        text = Voting.text(ticket)
        assert "eu-west: connection refused since" in text, text
        assert "us-east: timed out" in text and "ap-south: UP" in text, text
        assert "2 of 3 sites see it failing (eu-west, us-east), quorum 2" in text, text
    await heal_and_solve(net, voting, "eu-west", "us-east")


async def test_a_target_hung_for_every_site_is_one_ticket_solved_on_recovery(
    net: Sites, targets: tuple[list[Hanging], str], voting: Voting
) -> None:
    await start_all(voting, net)
    hung = targets[0][2]
    hung.hung = True
    (ticket,) = await one_ticket_each(voting, 1)
    # Opened at the quorum's vote; the third site's, when it comes, is a note.
    assert "of 3 sites see it failing" in Voting.text(ticket)
    everyone = "; ".join(f"{site}: timed out" for site in SITES)

    def all_three_said() -> bool:
        text = Voting.text(voting.tickets()[0])
        return all(f"{site}: timed out" in text.rsplit("Sites (web2): ", 1)[-1]
                   for site in SITES)

    await until(f"the ticket to say {everyone}", all_three_said, timeout=30,
                context=lambda: Voting.text(voting.tickets()[0]))
    hung.hung = False
    hung.release.set()
    await until("the ticket solved", lambda: solved(voting), timeout=30, context=voting.logs)
    assert len(voting.tickets()) == 1


async def test_agents_killed_at_random_while_two_sites_fail_still_one_ticket(
    net: Sites, targets: tuple[list[Hanging], str], voting: Voting
) -> None:
    await start_all(voting, net, per_site=2)
    port = target_port(targets)
    net.cut(net["eu-west"], ports=[port])
    net.cut(net["ap-south"], ports=[port])
    rng = random.Random(13)
    for _ in range(6):
        name = rng.choice(sorted(voting.agents))
        voting.agents[name].kill9()
        await asyncio.sleep(rng.uniform(0.5, 2 * TTL))
        voting.start(name, name.rsplit("-", 1)[0])
    await one_ticket_each(voting)
    await heal_and_solve(net, voting, "eu-west", "ap-south", timeout=60)


async def test_a_site_frozen_and_thawed_neither_doubles_nor_resolves_the_ticket(
    net: Sites, targets: tuple[list[Hanging], str], voting: Voting
) -> None:
    await start_all(voting, net)
    port = target_port(targets)
    net.cut(net["eu-west"], ports=[port])
    net.cut(net["us-east"], ports=[port])
    await one_ticket_each(voting)
    frozen = voting.agents["us-east-a"]
    assert frozen.proc is not None
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        # us-east's vote goes stale: failing is no longer proven, but neither is recovery.
        await asyncio.sleep(TTL * 3)
        assert not any(t["status"] == "solved" for t in voting.tickets()), voting.tickets()
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    await asyncio.sleep(TTL * 2)
    assert len(voting.tickets()) == CHECKS
    assert not any(t["status"] == "solved" for t in voting.tickets()), voting.tickets()
    await heal_and_solve(net, voting, "eu-west", "us-east")


async def test_a_site_whose_agents_all_died_is_reported_and_the_others_still_decide(
    net: Sites, targets: tuple[list[Hanging], str], voting: Voting
) -> None:
    voting.silent_after = "4s"
    await start_all(voting, net, per_site=2)
    for name in ("ap-south-a", "ap-south-b"):
        voting.agents[name].kill9()
    (alert,) = await until("the alert", lambda: voting.tickets(ONCALL), timeout=30,
                           context=voting.logs)
    assert "site ap-south has been silent for 4s: its checks are decided by eu-west and " \
           "us-east" in Voting.text(alert)
    port = target_port(targets)
    net.cut(net["eu-west"], ports=[port])
    net.cut(net["us-east"], ports=[port])
    for ticket in await one_ticket_each(voting):
        assert "2 of 3 sites see it failing (eu-west, us-east)" in Voting.text(ticket)
    await heal_and_solve(net, voting, "eu-west", "us-east")
    assert len(voting.tickets(ONCALL)) == 1
