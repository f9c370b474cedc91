"""Several `probe run` processes sharing one real PostgreSQL, ticketing into a local server that
speaks Zendesk's API: what the helpdesk holds after each sequence, never what probe says it did.

- three agents share the checks, and one incident is one ticket, resolved after recovery;
- an agent killed with -9 gives its checks up after agent_ttl: another agent goes on with the
  failure streak where the database has it, and the incident still gets one ticket;
- a stopping agent hands its checks over at once;
- the last agent standing still tickets.
"""

from __future__ import annotations

import asyncio
import functools
import glob
import json
import os
import random
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web

from probe.cluster import ownership
from tests.harness.daemon import ProbeProcess, Target
from tests.harness.fake_zendesk import EMAIL, TOKEN, FakeZendesk, serve_zendesk
from tests.harness.httpserver import serve_app
from tests.harness.ports import free_port
from tests.harness.postgres import Postgres
from tests.harness.proc import PROBE
from tests.harness.wait import until

TTL = 2.0  # agent_ttl: short, so that a killed agent's checks move within the test


@pytest.fixture
async def targets6() -> AsyncIterator[list[Target]]:
    """Six flaky HTTP targets, one app: /0/health ... /5/health."""
    targets = [Target() for _ in range(6)]
    app = web.Application()
    for n, t in enumerate(targets):
        app.router.add_get(f"/{n}/health", t.handle)
    async with serve_app(app) as port:
        for t in targets:
            t.port = port
        yield targets


@pytest.fixture
async def zendesk() -> AsyncIterator[FakeZendesk]:
    async with serve_zendesk() as fake:
        yield fake


class Cluster:
    """Agents of one site on one database, each a `probe run` with its own directory."""

    def __init__(self, tmp_path: Path, dsn: str, desk: FakeZendesk, targets: list[Target],
                 ) -> None:
        self.tmp_path, self.dsn, self.desk, self.targets = tmp_path, dsn, desk, targets
        self.agents: dict[str, ProbeProcess] = {}
        token = tmp_path / "zendesk-token"
        token.write_text(TOKEN + "\n")
        self.token = token

    def config(self, name: str, port: int) -> str:
        checks = "\n".join(f"""
  - name: web{n}
    http: {{url: "http://127.0.0.1:{t.port}/{n}/health"}}""" for n, t in enumerate(self.targets))
        return f"""
agent: {{name: {name}, state_dir: {self.tmp_path}/{name}/state, listen: "127.0.0.1:{port}"}}
cluster: {{database: env:PROBE_DATABASE, site: dc1, agent_ttl: {TTL}s}}
defaults:
  interval: 300ms
  retry_interval: 200ms
  timeout: 300ms
  failure_threshold: 4
  success_threshold: 2
ticketing:
  routes:
    desk: {{backend: zendesk, url: "{self.desk.url}", email: {EMAIL},
            token_file: {self.token}, timeout: 5s}}
checks:{checks}
"""

    def start(self, name: str, env: Mapping[str, str] | None = None) -> ProbeProcess:
        """Start agent `name` (again: same directory, same port), with `env` added."""
        if name in self.agents:
            again = self.agents[name]
            return again.start()
        port = free_port()
        directory = self.tmp_path / name
        directory.mkdir(exist_ok=True)
        config = directory / "probe.yaml"
        config.write_text(self.config(name, port))
        agent = ProbeProcess(config, port, directory / "state",
                             env={"PROBE_DATABASE": self.dsn, **(env or {})})
        self.agents[name] = agent
        return agent.start()

    def owners(self) -> dict[str, str]:
        """check → the agent whose claim holds its group, as the database has it."""
        with psycopg.connect(self.dsn) as conn:
            if conn.execute("SELECT to_regclass('claims')").fetchone() == (None,):
                return {}  # no agent has migrated the schema yet
            rows = conn.execute("SELECT grp, owner FROM claims WHERE owner IS NOT NULL"
                                ).fetchall()
        return {str(g): str(o) for g, o in rows}

    async def run(self, *names: str) -> dict[str, str]:
        """Start these agents; once each check is where rendezvous puts it, check → agent."""
        for name in names:
            self.start(name)
        return await all_owned(self, len(self.targets))

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{a.log_text()[-3000:]}" for n, a in self.agents.items())

    def live(self) -> list[ProbeProcess]:
        return [a for a in self.agents.values() if a.proc is not None and a.proc.poll() is None]

    def tickets(self) -> list[dict[str, Any]]:
        return list(self.desk.tickets.values())

    def ticket_keys(self) -> list[str]:
        """The incident key each ticket carries (probe writes it in every ticket)."""
        keys = []
        for ticket in self.tickets():
            found = re.search(r"dc1/[\w.-]+/\d+", ticket.get("external_id") or "")
            keys.append(found.group(0) if found else str(ticket.get("external_id")))
        return keys


@pytest.fixture
def cluster(tmp_path: Path, pg_database: str, zendesk: FakeZendesk) -> Iterator[
        Callable[[list[Target]], Cluster]]:
    made: list[Cluster] = []

    def make(targets: list[Target]) -> Cluster:
        made.append(Cluster(tmp_path, pg_database, zendesk, targets))
        return made[-1]

    yield make
    for c in made:
        for agent in c.agents.values():
            agent.stop()


def started(agent: ProbeProcess) -> bool:
    return "probe started" in agent.log_text()


async def all_owned(cluster: Cluster, count: int) -> dict[str, str]:
    """Once every agent started: each check where rendezvous hashing puts it among them."""
    for agent in cluster.agents.values():
        await agent.wait("the agent to start", functools.partial(started, agent), timeout=30)
    names = list(cluster.agents)
    expected = {f"web{n}": str(ownership.owner(f"web{n}", names)) for n in range(count)}
    await until("the checks shared as rendezvous says", lambda: cluster.owners() == expected,
                timeout=30)
    return expected


async def recovers_with_one_ticket(c: Cluster, target: Target, timeout: float = 30) -> None:
    """The target back up: the incident's one ticket solved, and no second one."""
    target.down = False
    await until("the ticket solved", lambda: c.tickets()[0]["status"] == "solved",
                timeout=timeout, context=c.logs)
    assert len(c.tickets()) == 1, c.tickets()


async def one_ticket(c: Cluster, timeout: float = 30) -> None:
    """A ticket, and still one a moment later: the other agents had time to open another."""
    await until("one ticket", c.tickets, timeout=timeout, context=c.logs)
    await asyncio.sleep(1.5)
    assert len(c.tickets()) == 1, c.tickets()


async def test_three_agents_share_the_checks_and_one_incident_is_one_ticket(
    cluster: Callable[[list[Target]], Cluster], targets6: list[Target]
) -> None:
    c = cluster(targets6)
    for name in ("dc1-a", "dc1-b", "dc1-c"):
        c.start(name)
    # Once all three have joined, each check is where rendezvous hashing puts it.
    names = ["dc1-a", "dc1-b", "dc1-c"]
    expected = {f"web{n}": ownership.owner(f"web{n}", names) for n in range(6)}
    assert len(set(expected.values())) >= 2  # the test means something with these names
    await until("the checks shared as rendezvous says", lambda: c.owners() == expected,
                timeout=30)
    # Each agent runs exactly the checks it holds: /metrics shows probe_success for them only.
    for name, agent in c.agents.items():
        mine = {g for g, o in c.owners().items() if o == name}

        def successes(agent: ProbeProcess = agent, mine: set[str] = mine) -> bool:
            return all(agent.metric(f'probe_success{{check="{g}",kind="http",service=""}}') == 1
                       for g in mine)

        await agent.wait("its checks' results", successes, timeout=20)

    # Any agent's configuration shows the whole cluster, as the database has it.
    status = json.loads(c.agents["dc1-a"].command("cluster", "status", "--json"))
    assert status["live"] == 3
    assert sorted(a["name"] for a in status["agents"]) == ["dc1-a", "dc1-b", "dc1-c"]
    assert all(a["config_agrees"] for a in status["agents"])
    assert sum(a["groups_held"] for a in status["agents"]) == len(targets6)

    targets6[0].down = True
    await until("one ticket", c.tickets, timeout=30)
    await asyncio.sleep(2)  # the other agents had time to open a second one: they must not
    (ticket,) = c.tickets()
    assert ticket["priority"] == "urgent"
    assert "web0" in ticket["subject"]
    # Any agent's status shows the whole cluster: every check, with the agent that runs it,
    # and the incident, whoever holds it.
    for name, agent in c.agents.items():
        doc = agent.status()
        assert {ch["name"]: ch["agent"] for ch in doc["checks"]} == c.owners(), name
        assert {ch["name"]: ch["state"] for ch in doc["checks"]}["web0"] == "down", name
        assert [i["group"] for i in doc["incidents"]] == ["web0"], name
        assert sorted(a["name"] for a in doc["cluster"]["agents"]) == sorted(c.agents)
    # The ticket says which agent saw the failure: the one that holds web0.
    assert re.search(rf"Seen from\W+{c.owners()['web0']}\b", ticket["description"]), ticket

    await recovers_with_one_ticket(c, targets6[0])


async def test_an_agent_killed_gives_its_checks_up_and_the_streak_goes_on(
    cluster: Callable[[list[Target]], Cluster], targets6: list[Target]
) -> None:
    c = cluster(targets6)
    owners = await c.run(*("dc1-a", "dc1-b", "dc1-c"))
    victim = owners["web0"]
    targets6[0].down = True
    # Two failures seen by the victim (threshold 4), written: then it dies.
    agent = c.agents[victim]
    failures = 'probe_check_consecutive_failures{check="web0",kind="http",service=""}'
    await agent.wait("two failures of web0", lambda: (agent.metric(failures) or 0) >= 2,
                     timeout=20)
    killed_at = time.monotonic()
    agent.kill9()
    owners = await until("web0 taken by another agent", lambda: (
        o := c.owners()).get("web0") not in (None, victim) and o, timeout=3 * TTL + 5)
    moved_after = time.monotonic() - killed_at
    assert moved_after < TTL + 2, f"web0 moved after {moved_after:.1f}s"
    await one_ticket(c)
    await recovers_with_one_ticket(c, targets6[0])


async def test_a_stopping_agent_hands_over_at_once_and_the_last_one_still_tickets(
    cluster: Callable[[list[Target]], Cluster], targets6: list[Target]
) -> None:
    c = cluster(targets6)
    await c.run(*("dc1-a", "dc1-b"))
    stopped_at = time.monotonic()
    c.agents["dc1-a"].stop()
    await until("dc1-b owns every check", lambda: set(c.owners().values()) == {"dc1-b"}
                and len(c.owners()) == len(targets6), timeout=TTL + 5)
    assert time.monotonic() - stopped_at < TTL, "the handover waited for agent_ttl"
    targets6[3].down = True
    await until("one ticket", c.tickets, timeout=30)
    await recovers_with_one_ticket(c, targets6[3])
    # No agent left: `probe cluster status` says so, and fails.
    c.agents["dc1-b"].stop()
    done = await asyncio.to_thread(
        subprocess.run, [*PROBE, "cluster", "status", "-c", str(c.agents["dc1-b"].config)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PROBE_DATABASE": c.dsn})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "0 agents live" in done.stdout


async def test_an_agent_frozen_past_its_lease_cannot_write_over_its_successor(
    cluster: Callable[[list[Target]], Cluster], targets6: list[Target]
) -> None:
    """SIGSTOP, as a long pause or a VM migration would: the others take its groups after
    agent_ttl; thawed, it finds its fence stale, and its decisions are refused, not doubled."""
    c = cluster(targets6)
    owners = await c.run(*("dc1-a", "dc1-b", "dc1-c"))
    victim = c.agents[owners["web1"]]
    targets6[1].down = True
    failures = 'probe_check_consecutive_failures{check="web1",kind="http",service=""}'
    await victim.wait("a failure of web1", lambda: (victim.metric(failures) or 0) >= 1,
                      timeout=20)
    victim.signal(signal.SIGSTOP)
    try:
        await until("web1 taken over", lambda: c.owners().get("web1") not in (
            None, owners["web1"]), timeout=3 * TTL + 5)
        await until("one ticket", c.tickets, timeout=30)
    finally:
        victim.signal(signal.SIGCONT)
    # Thawed, it still believes it holds web1 until its first write or heartbeat says not.
    await victim.wait("the frozen agent back", lambda: victim.metric("probe_cluster_db_up") == 1)
    await asyncio.sleep(2 * TTL)
    assert len(c.tickets()) == 1, c.tickets()
    # What it had decided while frozen was refused by the fence, not written.
    assert (victim.metric("probe_outbox_fence_rejected_total") or 0) >= 1, victim.log_text()
    await recovers_with_one_ticket(c, targets6[1])


async def test_postgresql_restarting_mid_incident_delays_the_ticket_and_never_doubles_it(
    cluster: Callable[[list[Target]], Cluster], targets6: list[Target], postgres: Postgres
) -> None:
    c = cluster(targets6)
    await c.run(*("dc1-a", "dc1-b"))
    postgres.pg_ctl("stop", "-m", "immediate")
    try:
        targets6[2].down = True
        agent = c.agents["dc1-a"]
        await agent.wait("the database seen gone", lambda: agent.metric(
            "probe_cluster_db_up") == 0, timeout=15)
        # Still checking, still serving; not ready, and saying why.
        with pytest.raises(urllib.error.HTTPError) as refused:
            agent.get("/-/ready")
        assert "cluster's database" in refused.value.read().decode()
        await asyncio.sleep(3)
        assert c.tickets() == []  # no ticket while the database is gone
    finally:
        postgres.pg_ctl("start")
    await one_ticket(c, timeout=40)
    await recovers_with_one_ticket(c, targets6[2], timeout=40)


async def test_kill_9_of_random_agents_in_a_loop_loses_and_doubles_no_ticket(
    cluster: Callable[[list[Target]], Cluster], targets6: list[Target]
) -> None:
    """Thirty rounds: kill -9 a random agent (one always stays), start it again a moment
    later, flip a random service. Then everything recovers. Per service, the helpdesk holds
    incidents 1..n with one ticket each, every one solved."""
    rng = random.Random(1203)
    c = cluster(targets6)
    names = ["dc1-a", "dc1-b", "dc1-c"]
    for name in names:
        c.start(name)
    await all_owned(c, len(targets6))
    flipped = targets6[:3]
    for _ in range(30):
        live = [a.config.parent.name for a in c.live()]
        if len(live) > 1:
            victim = rng.choice(live)
            c.agents[victim].kill9()
        target = rng.choice(flipped)
        target.down = not target.down
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        for name in names:  # the dead come back, as systemd restarts them
            agent = c.agents[name]
            if agent.proc is not None and agent.proc.poll() is not None:
                c.start(name)
        await asyncio.sleep(rng.uniform(0.2, 1.5))
    for target in flipped:
        target.down = False
    for name in names:
        agent = c.agents[name]
        if agent.proc is not None and agent.proc.poll() is not None:
            c.start(name)

    def settled() -> bool:
        tickets = c.tickets()
        return bool(tickets) and all(t["status"] == "solved" for t in tickets) and not pending(
            c.dsn)

    await until("every ticket solved", settled, timeout=90, context=c.logs)
    keys = sorted(t["external_id"] for t in c.tickets())
    assert keys, "no outage lasted long enough for a ticket: the test proved nothing"
    assert len(keys) == len(set(keys)), f"a ticket opened twice: {keys}"
    for service in sorted({k.split("/")[1] for k in keys}):
        numbers = sorted(int(k.rsplit("/", 1)[1]) for k in keys if k.split("/")[1] == service)
        assert numbers == list(range(1, len(numbers) + 1)), (service, numbers)
    with psycopg.connect(c.dsn) as conn:
        incidents = conn.execute("SELECT key FROM incidents ORDER BY key").fetchall()
        still_open = conn.execute("SELECT key FROM incidents WHERE resolved_at IS NULL"
                                  ).fetchall()
    assert still_open == []
    # Every incident the database knows has exactly its one ticket.
    assert sorted(k for (k,) in incidents) == keys


def pending(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT id, action FROM outbox WHERE status <> 'delivered'"
                            ).fetchall()


async def test_an_agent_whose_clock_is_minutes_off_changes_nothing(
    cluster: Callable[[list[Target]], Cluster], targets6: list[Target]
) -> None:
    """One agent's clock 10 minutes ahead (libfaketime): liveness and claims are the
    database's clock, so it neither looks dead to the others nor takes their groups."""
    # The library itself, preloaded into probe (the faketime command would stand between
    # the test and probe's process, and not pass the signals on).
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        pytest.fail("libfaketime is not installed (Debian: apt-get install faketime)")
    c = cluster(targets6)
    c.start("dc1-a")
    skewed = c.start("dc1-b", env={"LD_PRELOAD": str(found[0]), "FAKETIME": "+10m"})
    await skewed.wait("the skewed clock", lambda: "probe started" in skewed.log_text())
    stamp = re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", skewed.log_text())
    assert stamp is not None, skewed.log_text()
    ahead = time.mktime(time.strptime(stamp.group(0), "%Y-%m-%d %H:%M:%S")) - time.time()
    assert ahead > 500, f"the agent's clock is not skewed: {ahead:.0f}s"
    owners = await all_owned(c, len(targets6))
    await asyncio.sleep(3 * TTL)  # long enough for a wrong clock to make someone look dead
    assert c.owners() == owners
    web = next(n for n, o in owners.items() if o == "dc1-b")
    targets6[int(web[3:])].down = True
    await one_ticket(c)
    await recovers_with_one_ticket(c, targets6[int(web[3:])])


async def test_a_maintenance_window_set_through_one_agent_holds_on_the_agent_that_decides(
    cluster: Callable[[list[Target]], Cluster], targets6: list[Target]
) -> None:
    c = cluster(targets6)
    owners = await c.run(*("dc1-a", "dc1-b", "dc1-c"))
    check = next(n for n, o in owners.items() if o != "dc1-a")
    holder = c.agents[owners[check]]
    request = urllib.request.Request(
        f"http://127.0.0.1:{c.agents['dc1-a'].port}/api/maintenance", method="POST",
        data=json.dumps({"checks": [check], "duration": "10m", "reason": "upgrade"}).encode(),
        headers={"Content-Type": "application/json"})
    with await asyncio.to_thread(urllib.request.urlopen, request, timeout=10) as answer:
        assert answer.status == 201
    in_window = f'probe_check_in_maintenance{{check="{check}",kind="http",service=""}}'
    await holder.wait("the window on the agent that holds the check",
                      lambda: holder.metric(in_window) == 1, timeout=3 * TTL)
    targets6[int(check[3:])].down = True
    await asyncio.sleep(3)  # failure_threshold is 4 results 300 ms apart: long past
    assert c.tickets() == []


async def test_an_agent_that_holds_no_check_is_healthy_and_ready(
    cluster: Callable[[list[Target]], Cluster], targets6: list[Target]
) -> None:
    """More agents than groups: the idle ones are spares, not stuck loops."""
    c = cluster(targets6[:1])
    for name in ("dc1-a", "dc1-b", "dc1-c"):
        # As under systemd with WatchdogSec=2: a loop 2 s late is stuck, and said so.
        c.start(name, env={"WATCHDOG_USEC": "2000000"})
    owners = await all_owned(c, 1)
    idle = [c.agents[n] for n in c.agents if n not in owners.values()]
    assert len(idle) == 2
    await asyncio.sleep(5)  # past the scheduler's cadence and the watchdog, many times
    for agent in idle:
        assert "makes no progress" not in agent.log_text(), agent.log_text()
        assert agent.get("/-/ready")
