"""The lease and fence rules for delivering an incident's actions (probe.cluster.lease): first
the documented cases as tables, then a hypothesis state machine in which several agents
acquire, renew, pause, write and release against one stream whose clock only the "database"
advances. Its properties: a write is accepted only when no other agent could take the stream
at that instant, so no two agents are ever accepted under overlapping terms; an agent whose
term was taken over while it was paused has every later write under that term rejected; the
fence only increases; a released stream is taken by another agent at once."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from probe.cluster.lease import FREE, Stream, accepts, acquire, release

TTL = 10.0
EXAMPLES = int(os.environ.get("PROBE_FUZZ_EXAMPLES", "300"))

# --- the documented cases --------------------------------------------------------------------


@pytest.mark.parametrize(("stream", "agent", "now", "granted"), [
    # a free stream: the first term is fence 1
    (FREE, "a", 100.0, Stream("a", 110.0, 1)),
    # released earlier: the next term continues the fence
    (Stream(None, 0.0, 7), "b", 100.0, Stream("b", 110.0, 8)),
    # its holder renews while the lease runs: same fence, later end
    (Stream("a", 105.0, 3), "a", 100.0, Stream("a", 110.0, 3)),
    # held by another, lease running: refused
    (Stream("a", 105.0, 3), "b", 100.0, None),
    (Stream("a", 105.0, 3), "b", 104.999, None),
    # held by another, lease ran out (at `until` exactly): a new term for the newcomer
    (Stream("a", 105.0, 3), "b", 105.0, Stream("b", 115.0, 4)),
    (Stream("a", 105.0, 3), "b", 200.0, Stream("b", 210.0, 4)),
    # its own lease ran out: a new term too, not a renewal (it may have raced a successor)
    (Stream("a", 105.0, 3), "a", 105.0, Stream("a", 115.0, 4)),
])
def test_who_is_granted_the_lease_and_under_which_fence(
    stream: Stream, agent: str, now: float, granted: Stream | None,
) -> None:
    assert acquire(stream, agent, now, TTL) == granted


@pytest.mark.parametrize("ttl", [0.0, -1.0])
def test_a_lease_without_a_positive_ttl_is_a_bug(ttl: float) -> None:
    with pytest.raises(ValueError, match="positive ttl"):
        acquire(FREE, "a", 100.0, ttl)


@pytest.mark.parametrize(("stream", "agent", "fence", "after"), [
    # the holder lets go: free at once, the fence kept for the next term to exceed
    (Stream("a", 110.0, 3), "a", 3, Stream(None, 0.0, 3)),
    # its lease ran out but nobody took it: letting go is still the holder's
    (Stream("a", 90.0, 3), "a", 3, Stream(None, 0.0, 3)),
    # another agent's term, or an older term of its own: nothing changes
    (Stream("b", 110.0, 4), "a", 3, Stream("b", 110.0, 4)),
    (Stream("a", 110.0, 4), "a", 3, Stream("a", 110.0, 4)),
    (Stream(None, 0.0, 3), "a", 3, Stream(None, 0.0, 3)),
])
def test_what_a_release_changes(stream: Stream, agent: str, fence: int, after: Stream) -> None:
    assert release(stream, agent, fence) == after


@pytest.mark.parametrize(("stream", "fence", "agent", "now", "accepted"), [
    (Stream("a", 110.0, 3), 3, "a", 100.0, True),  # the holder, its term, its lease running
    (Stream("a", 110.0, 3), 3, "a", 109.999, True),
    (Stream("a", 110.0, 3), 3, "a", 110.0, False),  # its lease ran out at 110
    (Stream("a", 110.0, 3), 2, "a", 100.0, False),  # an older term of the same agent
    (Stream("a", 110.0, 3), 3, "b", 100.0, False),  # the right fence, the wrong agent
    (Stream("b", 110.0, 4), 3, "a", 100.0, False),  # paused past its lease: b holds it now
    (Stream(None, 0.0, 3), 3, "a", 0.0, False),  # released: nobody writes
])
def test_which_writes_the_database_accepts(
    stream: Stream, fence: int, agent: str, now: float, accepted: bool,
) -> None:
    assert accepts(stream, fence, agent, now) is accepted


def test_a_paused_agent_is_fenced_off_by_its_successor() -> None:
    # a is granted the stream and starts delivering; it is stopped (SIGSTOP) for 30 s
    stream = acquire(FREE, "a", 0.0, TTL)
    assert stream == Stream("a", 10.0, 1)
    assert accepts(stream, 1, "a", 5.0)
    # its lease runs out at 10; b takes the stream at 12 under fence 2 and writes
    stream = acquire(stream, "b", 12.0, TTL)
    assert stream == Stream("b", 22.0, 2)
    assert accepts(stream, 2, "b", 12.0)
    # a wakes at 30 believing it still holds fence 1: refused, and it cannot renew b's term
    assert not accepts(stream, 1, "a", 30.0)
    assert release(stream, "a", 1) == stream
    # once b's lease has run out too, a may take a new term, never its old one back
    stream = acquire(stream, "a", 30.0, TTL)
    assert stream == Stream("a", 40.0, 3)
    assert not accepts(stream, 1, "a", 30.0)


def test_a_stopping_agent_hands_over_at_once() -> None:
    stream = acquire(FREE, "a", 0.0, TTL)
    assert stream is not None
    stream = release(stream, "a", 1)
    assert acquire(stream, "b", 0.5, TTL) == Stream("b", 10.5, 2)


# --- the properties --------------------------------------------------------------------------

AGENTS = ("a", "b", "c")


class Delivery(RuleBasedStateMachine):
    """One stream in the database, its clock, and three agents. An agent remembers the fence it
    was last granted and acts under it until it learns better (a refused renewal or a release);
    it cannot see its lease run out, nor that it was paused. A task of one of its earlier terms
    may also wake up late and write under that term's fence.

    The machine knows the truth the database cannot see: which *term* (one grant and its
    renewals) every task belongs to, numbered by the machine itself, not by the fence. The
    properties are stated in terms, so that a fence that failed to tell two terms apart is
    caught rather than trusted."""

    def __init__(self) -> None:
        super().__init__()
        self.stream = FREE
        self.now = 0.0
        self.term = 0  # the current term, 0 before the first grant
        self.holder: str | None = None  # the current term's agent, None once released
        self.held: dict[str, int] = {}  # agent -> the fence it believes it holds
        self.terms: dict[str, list[tuple[int, int]]] = {a: [] for a in AGENTS}  # (term, fence)
        self.paused: set[str] = set()
        self.accepted: list[tuple[int, str]] = []  # (term, agent), in the database's order
        self.highest = 0

    # Few steps, so that the clock often lands exactly on a lease's end, where an off-by-one
    # in the rules would let two agents overlap (actions within a step happen at one instant).
    @rule(dt=st.sampled_from([1.0, TTL / 2, TTL, 3 * TTL]))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule(agent=st.sampled_from(AGENTS))
    def acquire_or_renew(self, agent: str) -> None:
        if agent in self.paused:
            return
        running = self.holder is not None and self.now < self.stream.until
        granted = acquire(self.stream, agent, self.now, TTL)
        if granted is None:
            assert running and self.holder != agent, f"{agent} refused a free stream"
            self.held.pop(agent, None)
            return
        if running and self.holder == agent:  # a renewal: the same term, the same fence
            assert granted.fence == self.stream.fence
        else:  # a new term, under a fence no earlier term had
            assert not running, f"{agent} granted the stream while {self.holder} holds it"
            assert granted.fence == self.stream.fence + 1
            self.term += 1
            self.holder = agent
            self.terms[agent].append((self.term, granted.fence))
        self.stream = granted
        self.held[agent] = granted.fence

    @rule(agent=st.sampled_from(AGENTS))
    def pause(self, agent: str) -> None:
        self.paused.add(agent)

    @rule(agent=st.sampled_from(AGENTS))
    def thaw(self, agent: str) -> None:
        self.paused.discard(agent)

    @rule(agent=st.sampled_from(AGENTS), age=st.sampled_from([0, 0, 0, 1, 2]))
    def write(self, agent: str, age: int) -> None:
        # age 0: under its latest term; 1, 2: a task of an earlier term of the same agent
        if agent in self.paused or len(self.terms[agent]) <= age:
            return
        term, fence = self.terms[agent][-1 - age]
        if not accepts(self.stream, fence, agent, self.now):
            return
        # accepted: it is the current term, its lease runs, and no one else could take over
        assert term == self.term and self.holder == agent, (
            f"{agent}'s write of term {term} accepted during term {self.term} ({self.holder})")
        for other in AGENTS:
            if other != agent:
                assert acquire(self.stream, other, self.now, TTL) is None, (
                    f"{agent}'s write under fence {fence} accepted while {other} could take over")
        # so writes of two terms never interleave, nor one term carries two agents' writes
        if self.accepted:
            last_term, last_agent = self.accepted[-1]
            assert term >= last_term, f"term {term} accepted after term {last_term}"
            assert term > last_term or agent == last_agent
        self.accepted.append((term, agent))

    @rule(agent=st.sampled_from(AGENTS))
    def write_after_being_superseded(self, agent: str) -> None:
        # a term that is over (paused past its lease, released, or taken over) is refused for
        # good: neither a write under its fence nor a release changes anything
        for term, fence in self.terms[agent]:
            if term != self.term or self.holder is None:
                assert not accepts(self.stream, fence, agent, self.now), (
                    f"{agent}'s write of term {term} (fence {fence}) accepted during term "
                    f"{self.term} (fence {self.stream.fence})")
                assert release(self.stream, agent, fence) == self.stream

    @rule(agent=st.sampled_from(AGENTS))
    def let_go(self, agent: str) -> None:
        if agent in self.paused or agent not in self.held:
            return
        fence = self.held.pop(agent)
        before = self.stream
        self.stream = release(self.stream, agent, fence)
        if before.owner == agent and before.fence == fence:
            self.holder = None
            # handed over: any other agent takes it at once, under the next fence
            for other in AGENTS:
                if other != agent:
                    taken = acquire(self.stream, other, self.now, TTL)
                    assert taken is not None and taken.fence == fence + 1, (
                        f"{other} cannot take the stream {agent} released: {taken}")
        else:
            assert self.stream == before, f"{agent} released a term it did not hold"

    @invariant()
    def the_fence_only_increases(self) -> None:
        assert self.stream.fence >= self.highest
        self.highest = self.stream.fence


Delivery.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    derandomize="PROBE_FUZZ_EXAMPLES" not in os.environ,  # stable in CI, exploring when asked
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDelivery = Delivery.TestCase
