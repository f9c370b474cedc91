"""probe's own trouble, when sites vote: a site gone silent, and checks that no quorum can
decide. Each is an incident group of its own — one per site, one for the quorum — decided like
any other (its claim, its engine, its exactly-once tickets) and ticketed on `alert_route`:

- `probe-site-<site>`: failing once the site has been silent for `silent_after` (every agent
  of it gone: it has left the vote), healthy once one of its agents is heard again;
- `probe-quorum`: failing while some checks cannot be decided because fewer of their sites are
  left in the vote than their quorum, healthy when every check can be decided again.

They are judged from the membership alone (which sites are heard, and for how long each has
not been), never from a target's result: the checks are made here, never run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from checks.base import Spec
from checks.values import format_duration
from probe.cluster.members import Membership
from probe.config import Check, Config
from probe.engine import CheckState

KINDS = ("site", "quorum")
QUORUM = "probe-quorum"

Judged = tuple[Literal["failing", "healthy", "undecided"], str, float | None]


class SiteSpec(Spec):
    kind: ClassVar[str] = "site"
    site: str

    @property
    def target(self) -> str:
        return f"site {self.site}"


class QuorumSpec(Spec):
    kind: ClassVar[str] = "quorum"

    @property
    def target(self) -> str:
        return "the sites' quorum"


def site_check(site: str) -> str:
    return f"probe-site-{site}"


def checks(config: Config) -> list[Check]:
    """probe's own checks for a cluster whose sites vote (none otherwise)."""
    cluster = config.cluster
    if cluster is None or not cluster.sites:
        return []
    d = config.defaults
    ticket = d.ticket.model_copy(update={"route": cluster.alert_route, "enabled": True,
                                         "priority": "high"})
    made: list[tuple[str, str, Spec, str]] = [(site_check(site), "site", SiteSpec(site=site),
             f"whether site {site} is heard from") for site in cluster.sites]
    made.append((QUORUM, "quorum", QuorumSpec(), "whether every check can reach its quorum"))
    return [Check(name=name, kind=kind, spec=spec, service=None, depends_on=(),
                  interval=cluster.agent_ttl, retry_interval=cluster.agent_ttl,
                  timeout=cluster.agent_ttl, failure_threshold=1, success_threshold=1,
                  flapping=d.flapping.model_copy(update={"enabled": False}), ticket=ticket,
                  description=description, runbook=None, dashboard=None)
            for name, kind, spec, description in made]


def judge(check: Check, voted: Sequence[Check], membership: Membership,
          silent_after: float) -> Judged:
    """The state of one of probe's own checks, its reason, and since when it fails."""
    every = sorted({site for c in voted for site in c.sites})
    silent = membership.silent(every)
    heard = [s for s in every if s not in silent]
    if isinstance(check.spec, SiteSpec):
        site = check.spec.site
        if site not in silent:
            return "healthy", "", None
        if silent[site] < silent_after:
            return "undecided", "", None
        others = [s for s in heard if s != site]
        deciders = _and(others) if others else "no other site"
        reason = (f"site {site} has been silent for {format_duration(silent_after)}: its "
                  f"checks are decided by {deciders}")
        return "failing", reason, membership.now - silent[site]
    left = {s for s, t in silent.items() if t >= silent_after}
    stuck = [c for c in voted if len([s for s in c.sites if s not in left]) < c.quorum]
    if not stuck:
        return "healthy", "", None
    alive = _and(heard) if heard else "no site"
    verb = "is" if len(heard) == 1 else "are"
    quorums = sorted({c.quorum for c in stuck})
    quorum = f"quorum is {quorums[0]}" if len(quorums) == 1 else \
        f"quorums are {', '.join(map(str, quorums))}"
    noun = "check" if len(stuck) == 1 else "checks"
    return "failing", f"probe cannot decide {len(stuck)} {noun}: only {alive} {verb} " \
                      f"alive, {quorum}", None


def failing_state(reason: str, since: float | None, now: float) -> CheckState:
    """The streak the engine takes for one of probe's own checks failing."""
    return CheckState(failures=1, bad=True, first_failure_at=since or now, failed_checks=1,
                      last_state="down", last_reason=reason, last_result_at=now)


def _and(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
