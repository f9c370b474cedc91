"""Which live agent owns each check (probe.cluster.ownership): first the documented cases as
tables, then the properties that make rendezvous hashing worth having, searched by hypothesis:
one owner per check while any agent lives; an agent leaving moves only its own checks; one
joining takes checks only for itself; the answer does not depend on the order of the input."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe.cluster.ownership import live, owned, owner, shards, weight

EXAMPLES = int(os.environ.get("PROBE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize="PROBE_FUZZ_EXAMPLES" not in os.environ,  # stable in CI, exploring when asked
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

THREE = {"dc1-a", "dc1-b", "dc1-c"}


# --- the documented cases --------------------------------------------------------------------


@pytest.mark.parametrize(("heartbeats", "now", "alive"), [
    ({"a": 100.0, "b": 96.0}, 100.0, {"a", "b"}),  # heard from 4 s ago: still here
    ({"a": 100.0, "b": 95.0}, 100.0, {"a"}),  # silent for agent_ttl exactly: left
    ({"a": 100.0, "b": 10.0}, 100.0, {"a"}),  # long gone
    ({"a": 101.0}, 100.0, {"a"}),  # a heartbeat "ahead" of now (the same clock, read earlier)
    ({}, 100.0, set()),
    ({"a": 0.0, "b": 0.0}, 100.0, set()),  # everyone left: nobody owns anything
])
def test_an_agent_silent_for_agent_ttl_has_left(
    heartbeats: dict[str, float], now: float, alive: set[str],
) -> None:
    assert live(heartbeats, now, ttl=5.0) == alive


@pytest.mark.parametrize(("check", "agent", "pinned"), [
    # The weight is the protocol between agents (a rolling upgrade runs two versions at once):
    # change it and every agent of the old version disagrees with every one of the new.
    ("web", "dc1-a", 0x73461B8C59AC7CF2),
    ("web", "dc1-b", 0xFA8A223568B81177),
    ("db", "dc1-a", 0x95D11C279E43B671),
])
def test_the_weight_is_the_same_in_every_process_and_version(
    check: str, agent: str, pinned: int,
) -> None:
    assert weight(check, agent) == pinned


def test_no_two_pairs_of_names_hash_alike_by_running_together() -> None:
    assert weight("ab", "c") != weight("a", "bc")
    assert weight("a", "") != weight("", "a")


def test_with_no_agent_alive_no_check_has_an_owner() -> None:
    assert owner("web", set()) is None
    assert owned(["web", "db"], set()) == {}


def test_a_single_agent_owns_everything() -> None:
    assert owned(["web", "db", "dns"], {"dc1-a"}) == {"dc1-a": ["db", "dns", "web"]}


def test_an_agent_that_owns_nothing_is_still_listed() -> None:
    assert owned([], THREE) == {"dc1-a": [], "dc1-b": [], "dc1-c": []}


def test_a_check_named_twice_is_owned_once() -> None:
    shares = owned(["web", "web"], THREE)
    assert [check for share in shares.values() for check in share] == ["web"]


@pytest.mark.parametrize("agents", [
    ["dc1-a", "dc1-b", "dc1-c"],
    ["agent-1", "agent-2", "agent-3"],
    ["probe01.example.net", "probe02.example.net", "probe03.example.net"],
    ["a", "b", "c"],
])
def test_1000_checks_are_shared_evenly_enough_between_3_agents(agents: list[str]) -> None:
    # A fair share is 333 (standard deviation 15); 250 and 420 are more than five deviations
    # off. The hash is deterministic, so this cannot flake: it fails only if the hash is poor.
    shares = owned([f"check-{i:04d}" for i in range(1000)], set(agents))
    assert {agent: 250 <= len(share) <= 420 for agent, share in shares.items()} == {
        agent: True for agent in agents}


# --- the properties --------------------------------------------------------------------------

names = st.text(st.characters(codec="utf-8"), max_size=12)  # any name YAML can hold
agent_sets = st.sets(names, min_size=1, max_size=7)
check_lists = st.lists(names, max_size=40)


@FUZZ
@given(checks=check_lists, agents=agent_sets)
def test_every_check_has_exactly_one_live_owner(checks: list[str], agents: set[str]) -> None:
    shares = owned(checks, agents)
    assert set(shares) == agents
    everything = [check for share in shares.values() for check in share]
    assert sorted(everything) == sorted(set(checks))  # each check once, none lost
    for agent, share in shares.items():
        assert all(owner(check, agents) == agent for check in share)


@FUZZ
@given(checks=check_lists, agents=agent_sets, data=st.data())
def test_an_agent_leaving_moves_only_its_own_checks(
    checks: list[str], agents: set[str], data: st.DataObject,
) -> None:
    leaving = data.draw(st.sampled_from(sorted(agents)))
    rest = agents - {leaving}
    for check in checks:
        before = owner(check, agents)
        after = owner(check, rest)
        if before != leaving:
            assert after == before, f"{check!r} moved from {before!r} to {after!r}"
        else:
            assert after in rest | {None}


@FUZZ
@given(checks=check_lists, agents=agent_sets, joining=names)
def test_an_agent_joining_takes_checks_only_for_itself(
    checks: list[str], agents: set[str], joining: str,
) -> None:
    for check in checks:
        after = owner(check, agents | {joining})
        assert after in {owner(check, agents), joining}


@FUZZ
@given(checks=check_lists, agents=agent_sets, data=st.data())
def test_the_owners_do_not_depend_on_the_order_of_agents_or_checks(
    checks: list[str], agents: set[str], data: st.DataObject,
) -> None:
    agents_shuffled = data.draw(st.permutations(sorted(agents)))
    checks_shuffled = data.draw(st.permutations(checks))
    assert owned(checks_shuffled, agents_shuffled) == owned(checks, sorted(agents))
    for check in checks:
        assert owner(check, agents_shuffled) == owner(check, sorted(agents))


# --- shards: groups joined by dependencies move together -----------------------------------------


def test_groups_joined_by_a_dependency_are_one_shard_named_by_its_least_group() -> None:
    assert shards({"web": ["gateway"], "db": ["gateway"], "gateway": [], "dns": []}) == {
        "web": "db", "db": "db", "gateway": "db", "dns": "dns"}
    assert shards({"b": ["c"], "c": ["a"], "a": []}) == {"a": "a", "b": "a", "c": "a"}


GROUPS = st.sampled_from([f"g{n}" for n in range(12)])


@given(st.dictionaries(GROUPS, st.lists(GROUPS, max_size=3), max_size=12), st.randoms())
def test_shards_are_the_components_of_the_dependencies_whatever_their_order(
        needs: dict[str, list[str]], rng: random.Random) -> None:
    found = shards(needs)
    for group, others in needs.items():
        for other in others:
            assert found[group] == found[other]  # joined by a dependency: together
    for group, shard in found.items():
        assert shard <= group and found[shard] == shard  # named by its least member
    # Every agent reads the same configuration in its own order: the same shards.
    shuffled = list(needs.items())
    rng.shuffle(shuffled)
    assert shards(dict(shuffled)) == found
    # Groups with no path between them are apart.
    if len(set(found.values())) > 1:
        a, b = sorted(set(found.values()))[:2]
        assert not any(found[g] == a and found[o] == b for g, os_ in needs.items() for o in os_)
