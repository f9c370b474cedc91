"""The cluster's membership (probe.cluster.members) on a real PostgreSQL
(tests/harness/postgres.py): joining, heartbeats, leaving, liveness by the database's clock, sites
apart, restarts, configuration disagreement, and a database that refuses. Time is moved by
rewriting `heartbeat_at` with the database's own now(), never by sleeping."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Callable

import pytest

from probe.cluster import ownership
from probe.cluster.members import Members, Membership
from probe.cluster.pgstate import PgState
from probe.tickets.ledger import LedgerError
from probe.tickets.pgledger import Pool, open_pool

TTL = 5.0


@pytest.fixture
async def pool(pg_database: str) -> AsyncIterator[Pool]:
    opened = await open_pool(pg_database)
    yield opened
    await opened.close()


@pytest.fixture
def members(pool: Pool) -> Members:
    return Members(pool, agent_ttl=TTL)


async def silent(pool: Pool, agent: str, seconds: float) -> None:
    """The agent last heard from `seconds` ago, by the database's clock."""
    async with pool.connection() as conn:
        done = await conn.execute("UPDATE agents SET heartbeat_at = now()"
                                  " - make_interval(secs => %s) WHERE name = %s",
                                  (seconds, agent))
        assert done.rowcount == 1


async def join(members: Members, *agents: str, site: str = "dc1",
               config_hash: str = "h1") -> None:
    for agent in agents:
        await members.join(agent, site, f"{agent}.example", "1.0", config_hash)


# --- joining, heartbeats, leaving --------------------------------------------------------------


async def test_agents_that_joined_see_each_other_and_one_that_leaves_is_gone_at_once(
    members: Members,
) -> None:
    await join(members, "dc1-a", "dc1-b", "dc1-c")
    seen = await members.heartbeat("dc1-a", "h1")
    assert seen.joined
    assert seen.live == seen.owners == {"dc1-a", "dc1-b", "dc1-c"}
    assert [m.name for m in seen.members] == ["dc1-a", "dc1-b", "dc1-c"]
    # the heartbeat stamped its own row with the database's now, in the same statement
    assert seen.heartbeats["dc1-a"] == seen.now

    await members.leave("dc1-b")  # no waiting for agent_ttl: handover at once
    after = await members.heartbeat("dc1-a", "h1")
    assert after.live == {"dc1-a", "dc1-c"}
    assert after.now >= seen.now
    assert [a.name for a in await members.agents()] == ["dc1-a", "dc1-c"]


async def test_the_membership_feeds_ownership_and_every_agent_computes_the_same_owners(
    members: Members,
) -> None:
    await join(members, "dc1-a", "dc1-b", "dc1-c")
    checks = [f"check-{i}" for i in range(30)]
    views = [await members.heartbeat(agent, "h1") for agent in ("dc1-a", "dc1-b", "dc1-c")]
    shares = [ownership.owned(checks, view.owners) for view in views]
    assert shares[0] == shares[1] == shares[2]
    assert sorted(c for owned in shares[0].values() for c in owned) == sorted(checks)


async def test_an_agent_whose_row_is_gone_is_told_it_is_no_member(members: Members) -> None:
    await join(members, "dc1-a", "dc1-b")
    await members.leave("dc1-a")
    seen = await members.heartbeat("dc1-a", "h1")
    assert seen == Membership("dc1-a", seen.now, (), joined=False, windows=seen.windows)
    assert seen.now > 0 and seen.owners == set()
    assert [a.name for a in await members.agents()] == ["dc1-b"]  # the heartbeat wrote nothing


# --- liveness by the database's clock -----------------------------------------------------------


async def test_an_agent_silent_for_agent_ttl_has_left_and_one_silent_for_less_is_live(
    pool: Pool, members: Members,
) -> None:
    await join(members, "dc1-a", "dc1-b", "dc1-c", "dc1-d")
    await silent(pool, "dc1-b", TTL)  # exactly the ttl when set; more by the next statement
    await silent(pool, "dc1-c", TTL + 60)
    await silent(pool, "dc1-d", TTL - 2)  # the 2 s are the test's allowance to run on
    seen = await members.heartbeat("dc1-a", "h1")
    assert seen.live == {"dc1-a", "dc1-d"}
    # the SQL and the pure policy draw the same line on what the heartbeat returned
    assert ownership.live(seen.heartbeats, seen.now, TTL) == seen.live

    rows = {a.name: a for a in await members.agents()}
    assert {name for name, a in rows.items() if a.live} == {"dc1-a", "dc1-d"}
    assert all(a.live == (a.heartbeat_age < TTL) for a in rows.values())
    assert rows["dc1-c"].heartbeat_age >= TTL + 60
    assert TTL - 2 <= rows["dc1-d"].heartbeat_age < TTL

    # a heartbeat brings an agent back
    await members.heartbeat("dc1-b", "h1")
    assert (await members.heartbeat("dc1-a", "h1")).live == {"dc1-a", "dc1-b", "dc1-d"}


async def test_the_agents_own_clock_is_never_asked(
    members: Members, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # no call takes a time from the agent ...
    def parameters(method: Callable[..., object]) -> list[str]:
        return list(inspect.signature(method).parameters)

    assert parameters(Members.join) == ["self", "agent", "site", "host", "version",
                                        "config_hash"]
    assert parameters(Members.heartbeat) == ["self", "agent", "config_hash"]
    assert parameters(Members.leave) == ["self", "agent"]
    # ... and an agent whose clock is an hour fast is heard from now, by the database's clock
    real = time.time()
    monkeypatch.setattr(time, "time", lambda: real + 3600)
    await join(members, "dc1-a", "dc1-b")
    seen = await members.heartbeat("dc1-a", "h1")
    assert seen.live == {"dc1-a", "dc1-b"}
    assert abs(seen.now - real) < 60
    (row, _) = await members.agents()
    assert abs(row.heartbeat_at - real) < 60 and abs(row.started_at - real) < 60
    assert 0 <= row.heartbeat_age < 60


# --- sites, restarts, configuration -------------------------------------------------------------


async def test_agents_of_two_sites_do_not_see_each_other(members: Members) -> None:
    await join(members, "dc1-a", "dc1-b", site="dc1")
    await join(members, "dc2-a", site="dc2")
    assert (await members.heartbeat("dc1-a", "h1")).live == {"dc1-a", "dc1-b"}
    assert (await members.heartbeat("dc2-a", "h1")).live == {"dc2-a"}
    assert [(a.site, a.name) for a in await members.agents()] == [
        ("dc1", "dc1-a"), ("dc1", "dc1-b"), ("dc2", "dc2-a")]


async def test_a_restarted_agent_takes_over_its_own_row(pool: Pool, members: Members) -> None:
    await members.join("dc1-a", "dc1", "old.example", "1.0", "h1")
    await members.drain("dc1-a")
    await silent(pool, "dc1-a", 3600)
    (before,) = await members.agents()
    await members.join("dc1-a", "dc1", "new.example", "1.1", "h2")
    (after,) = await members.agents()
    assert (after.host, after.version, after.config_hash, after.draining, after.live) == (
        "new.example", "1.1", "h2", False, True)
    assert after.started_at > before.started_at
    assert after.heartbeat_age < 60


async def test_a_configuration_disagreement_is_visible_in_the_membership(
    members: Members,
) -> None:
    await join(members, "dc1-a", "dc1-c", config_hash="h1")
    await join(members, "dc1-b", config_hash="h2")
    seen = await members.heartbeat("dc1-a", "h1")
    assert seen.config_hashes == {"dc1-a": "h1", "dc1-b": "h2", "dc1-c": "h1"}
    assert seen.disagreeing == ["dc1-b"]
    assert (await members.heartbeat("dc1-b", "h2")).disagreeing == ["dc1-a", "dc1-c"]
    # b reloads the configuration the others read: its heartbeat says so
    await members.heartbeat("dc1-b", "h1")
    assert (await members.heartbeat("dc1-a", "h1")).disagreeing == []


async def test_a_draining_agent_stays_live_and_owns_no_checks(members: Members) -> None:
    await join(members, "dc1-a", "dc1-b")
    assert await members.drain("dc1-b")
    assert not await members.drain("dc1-z")
    seen = await members.heartbeat("dc1-a", "h1")
    assert seen.live == {"dc1-a", "dc1-b"} and seen.owners == {"dc1-a"}
    assert ownership.owned(["x", "y"], seen.owners) == {"dc1-a": ["x", "y"]}


# --- a database that refuses --------------------------------------------------------------------


async def test_a_closed_pool_is_a_ledger_error_for_every_call(pool: Pool,
                                                              members: Members) -> None:
    await join(members, "dc1-a")
    await pool.close()
    with pytest.raises(LedgerError):
        await join(members, "dc1-a")
    with pytest.raises(LedgerError):
        await members.heartbeat("dc1-a", "h1")
    with pytest.raises(LedgerError):
        await members.drain("dc1-a")
    with pytest.raises(LedgerError):
        await members.leave("dc1-a")
    with pytest.raises(LedgerError):
        await members.agents()


def test_agent_ttl_must_be_positive(pool: Pool) -> None:
    with pytest.raises(ValueError, match="agent_ttl must be positive, not 0"):
        Members(pool, agent_ttl=0)


async def test_the_heartbeat_says_when_a_maintenance_window_was_set_or_ended(
    pool: Pool, members: Members,
) -> None:
    """So that agents read the windows only when one changed, not on every beat."""
    state = PgState(pool)
    await join(members, "dc1-a")
    seen = [(await members.heartbeat("dc1-a", "h1")).windows]
    first = await state.add_window({"checks": ["web"]}, ends_at=time.time() + 600)
    seen.append((await members.heartbeat("dc1-a", "h1")).windows)
    seen.append((await members.heartbeat("dc1-a", "h1")).windows)  # nothing changed
    await state.end_window(first)
    seen.append((await members.heartbeat("dc1-a", "h1")).windows)
    second = await state.add_window({"checks": ["db"]}, ends_at=time.time() + 600)
    await state.add_window({"checks": ["dns"]}, ends_at=time.time() + 600)
    await state.end_window(second)  # one set, one ended between two beats
    seen.append((await members.heartbeat("dc1-a", "h1")).windows)
    # Each beat's version differs from the one before exactly when the windows did.
    assert [seen[i] != seen[i - 1] for i in range(1, 5)] == [True, False, True, True], seen


# --- several sites ---------------------------------------------------------------------------


async def test_a_heartbeat_sees_every_sites_agents_and_how_long_a_silent_site_has_been(
    pool: Pool, members: Members,
) -> None:
    await join(members, "eu-a", site="eu-west")
    await join(members, "us-a", "us-b", site="us-east")
    for agent in ("eu-a", "us-a", "us-b"):
        await members.heartbeat(agent, "h1")  # each site heard from once
    seen = await members.heartbeat("eu-a", "h1")
    assert seen.site == "eu-west"
    assert seen.live == seen.owners == {"eu-a"}  # the site's own, for its checks
    assert seen.everywhere == seen.agents_live == {"eu-a", "us-a", "us-b"}
    assert seen.owners_in("us-east") == {"us-a", "us-b"}
    assert seen.silent(["eu-west", "us-east"]) == {}
    await members.leave("us-a")
    await silent(pool, "us-b", TTL + 10)  # us-east's last agent gone
    async with pool.connection() as conn:  # and its site last heard 30 s ago
        await conn.execute("UPDATE sites SET heard_at = now() - interval '30 seconds'"
                           " WHERE name = 'us-east'")
    seen = await members.heartbeat("eu-a", "h1")
    silence = seen.silent(["eu-west", "us-east", "ap-south"])
    assert set(silence) == {"us-east", "ap-south"}
    assert 29 < silence["us-east"] < 40
    # never heard from: silent as long as the first site has been heard of, not for ever
    assert 29 < silence["ap-south"] < 40
    outside = await members.membership()  # what `probe cluster votes` reads, no heartbeat
    assert outside.agents_live == {"eu-a"}
    assert set(outside.silent(["eu-west", "us-east"])) == {"us-east"}
