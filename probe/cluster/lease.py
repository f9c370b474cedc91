"""The lease and fence rules under which one agent at a time delivers an incident's actions.

Each incident has a stream row `(owner, until, fence)` in the store. An agent delivers the
incident's actions only while it holds the stream's lease, and every write it makes carries the
fence it was granted; the database accepts the write only if that fence is still the current
one, its holder is the writer and the lease has not run out. The lease alone cannot protect: a
holder paused past its lease (SIGSTOP, a long GC, a VM migration) does not know it was paused,
and wakes up believing it still holds. The fence, checked at the write site, is what rejects it
(Kleppmann, "How to do distributed locking", 2016).

Every time here is the database's clock (`now()` on the server), never an agent's. A lease
covers `[granted, until)`: at `until` exactly the holder's writes are refused and another agent
may take the stream, so there is no instant at which two agents could both be accepted.

These functions are the rules; the store states the same ones in its UPDATE ... WHERE clauses.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Stream:
    """An incident's delivery lease: its holder (None when free), the database time at which
    the lease runs out, and the fence of the latest grant (0 before the first)."""

    owner: str | None
    until: float
    fence: int


FREE = Stream(owner=None, until=0.0, fence=0)  # a stream never leased


def acquire(stream: Stream, agent: str, now: float, ttl: float) -> Stream | None:
    """The stream after `agent` asks for its lease at `now`, or None when another agent holds
    it. The holder of a lease still running renews it and keeps its fence (its writes in flight
    stay valid). Any other grant — a free stream, another agent's expired lease, or the agent's
    own lease that ran out — is a new term and takes the next fence: whatever was written under
    an expired lease may have raced a successor, so the new term must not vouch for it."""
    if ttl <= 0:
        raise ValueError(f"a lease needs a positive ttl, not {ttl}")
    if stream.owner == agent and now < stream.until:
        return Stream(owner=agent, until=now + ttl, fence=stream.fence)
    if stream.owner is None or now >= stream.until:
        return Stream(owner=agent, until=now + ttl, fence=stream.fence + 1)
    return None


def release(stream: Stream, agent: str, fence: int) -> Stream:
    """The stream after `agent` gives up the lease it holds under `fence`: free at once, so that
    another agent takes it without waiting for it to run out (a stopping agent hands over). The
    fence stays, so the next grant is greater still. A release by an agent that no longer holds
    that term (another holds it now, or the fence is stale) changes nothing."""
    if stream.owner != agent or stream.fence != fence:
        return stream
    return Stream(owner=None, until=0.0, fence=stream.fence)


def accepts(stream: Stream, fence: int, agent: str, now: float) -> bool:
    """Whether the database accepts, at `now`, a write that `agent` makes under `fence`: only
    the current term's holder, while its lease runs."""
    return stream.owner == agent and stream.fence == fence and now < stream.until
