"""The rule that turns the sites' votes on a check into probe's verdict. Pure: no I/O, no clock.

Each site that runs a check votes: `failing` (its agent's thresholds and flapping say so),
`healthy`, or `unknown` (it could not run the check). A vote is fresh while the agent that
cast it is live. A site with no fresh vote is *unheard*; a site unheard for `silent_after`
(all its agents gone) has *left* the electorate, so that a dead site cannot hold an incident
open for ever. With E the sites that run the check and have not left, D and U the fresh
failing and healthy votes among them, and N the check's quorum:

| votes (E)                                   | verdict    | why                                   |
|---------------------------------------------|------------|---------------------------------------|
| D ≥ N                                       | failing    | N sites see it failing                |
| U ≥ 1 and D + (E - D - U) < N               | healthy    | even if every unheard site said       |
|                                             |            | failing, N could not be reached       |
| anything else                               | undecided  | the incident, open or not, stays so   |

So a check recovers only on positive evidence: a healthy vote, and no way left for the unheard
sites to make a quorum — never because sites fell silent. Datadog's `min_location_failed`
recovers as soon as fewer than N locations fail, which a location going silent mid-outage is
enough for. When fewer sites than N can vote (|E| < N), failing is out of reach: the verdict
is healthy on a healthy vote, undecided otherwise, and probe reports that it cannot decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

VoteValue = Literal["failing", "healthy", "unknown"]
VerdictState = Literal["failing", "healthy", "undecided"]


@dataclass(frozen=True, slots=True)
class Vote:
    """A site's vote on a check. `fresh`: its agent is live. `since`: when the site's vote
    became `value` (the database's clock); `reason`: what the site last saw failing."""

    site: str
    value: VoteValue
    fresh: bool
    since: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    state: VerdictState
    quorum: int
    failing: tuple[str, ...]  # sites, fresh votes, in the order of `sites`
    healthy: tuple[str, ...]
    unheard: tuple[str, ...]  # in the electorate, without a fresh failing or healthy vote
    left: tuple[str, ...]  # silent for silent_after: out of the electorate

    @property
    def electorate(self) -> int:
        return len(self.failing) + len(self.healthy) + len(self.unheard)

    @property
    def out_of_reach(self) -> bool:
        """Fewer sites can vote than the quorum: failing cannot be decided."""
        return self.electorate < self.quorum

    def rule(self) -> str:
        """The rule that produced the verdict, as `probe cluster votes` prints it."""
        n, d, u = self.quorum, len(self.failing), len(self.healthy)
        q = len(self.unheard)
        voting = f"{self.electorate} site{'' if self.electorate == 1 else 's'} voting"
        counts = f"{d} failing, {u} healthy, {q} unheard of {voting}"
        if self.left:
            counts += f" ({', '.join(self.left)} silent too long: out of the vote)"
        if self.state == "failing":
            return f"failing: {d} failing ≥ quorum {n}; {counts}"
        if self.state == "healthy":
            return (f"healthy: {u} healthy, and {d} failing + {q} unheard < quorum {n}; "
                    f"{counts}")
        if self.out_of_reach:
            return f"undecided: quorum {n} is out of reach with {voting} and none healthy; " \
                   f"{counts}"
        return f"undecided: {d} failing < quorum {n}, and {d} failing + {q} unheard could " \
               f"still reach it; {counts}"


def verdict(sites: Iterable[str], quorum: int, votes: Mapping[str, Vote],
            silent: Mapping[str, float], silent_after: float) -> Verdict:
    """The verdict on one check run by `sites`, from each site's vote (a site may have none)
    and how long each silent site has been silent (a site absent from `silent` has a live
    agent)."""
    failing, healthy, unheard, left = [], [], [], []
    for site in sites:
        vote = votes.get(site)
        if vote is not None and vote.fresh and vote.value == "failing":
            failing.append(site)
        elif vote is not None and vote.fresh and vote.value == "healthy":
            healthy.append(site)
        elif silent.get(site, 0.0) >= silent_after:
            left.append(site)
        else:
            unheard.append(site)
    if len(failing) >= quorum:
        state: VerdictState = "failing"
    elif healthy and len(failing) + len(unheard) < quorum:
        state = "healthy"
    else:
        state = "undecided"
    return Verdict(state, quorum, tuple(failing), tuple(healthy), tuple(unheard), tuple(left))
