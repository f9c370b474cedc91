"""Which live agent owns each check: membership by heartbeat, ownership by rendezvous hashing.

An agent is live while its last heartbeat is younger than `agent_ttl`; every time here is the
database's clock, so an agent whose own clock is off changes nothing. Each check belongs to the
live agent with the highest weight `blake2b(check, agent)` (rendezvous, or highest-random-weight,
hashing): every agent computes the same owner from the same membership without asking anyone,
an agent that leaves gives up only its own checks, and one that joins takes checks only for
itself — the others keep theirs, so their failure streaks stay where they are.

The weight is part of the protocol between agents, not an implementation detail: agents of two
versions of probe (a rolling upgrade) must agree on every owner. Hence blake2b over a fixed
encoding, never Python's `hash()` (salted per process), and a test that pins known weights.

Agents of one site share its checks: the caller passes the live agents of one site.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping


def live(agents: Mapping[str, float], now: float, ttl: float) -> set[str]:
    """The agents (name → last heartbeat) heard from within `ttl` of `now`: one silent for
    `ttl` or longer has left, as the store's `heartbeat_at > now() - agent_ttl` says."""
    return {agent for agent, heartbeat_at in agents.items() if now - heartbeat_at < ttl}


def weight(check: str, agent: str) -> int:
    """The pair's rendezvous weight, the same in every process and every version of probe. Each
    name is prefixed by its length so that no two pairs encode alike ("ab", "c" vs "a", "bc")."""
    digest = hashlib.blake2b(digest_size=8)
    for name in (check, agent):
        data = name.encode("utf-8")
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
    return int.from_bytes(digest.digest(), "big")


def owner(check: str, live_agents: Iterable[str]) -> str | None:
    """The live agent that owns `check`, or None when no agent lives. A tie of 64-bit weights
    (never seen, but possible) goes to the greater name, so that the answer does not depend on
    the order the agents are given in."""
    return max(live_agents, key=lambda agent: (weight(check, agent), agent), default=None)


def owned(checks: Iterable[str], live_agents: Collection[str]) -> dict[str, list[str]]:
    """Every live agent's checks, sorted by name; an agent that owns none is listed with none
    (so that a per-agent gauge exists for it). Nobody owns anything when no agent lives."""
    shares: dict[str, list[str]] = {agent: [] for agent in sorted(live_agents)}
    for check in sorted(set(checks)):
        holder = owner(check, live_agents)
        if holder is not None:
            shares[holder].append(check)
    return shares


def shards(groups: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """Each incident group's shard, the unit an agent owns: groups joined by a dependency (a
    member of one depends on a check of the other: `groups` maps each group to the groups it
    depends on) are one shard, so that the engine that decides for a child sees its parents'
    states as it always did. A shard is named by its least group, the same for every agent
    reading the same configuration."""
    parent: dict[str, str] = {}

    def root(group: str) -> str:
        while parent.setdefault(group, group) != group:
            parent[group] = parent[parent[group]]
            group = parent[group]
        return group

    for group, needs in groups.items():
        for other in needs:
            a, b = root(group), root(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
        root(group)
    return {group: root(group) for group in parent}
